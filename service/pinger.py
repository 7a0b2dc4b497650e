"""Protocol-level pings for every socket of this process, from one task.

Not to be confused with the *heartbeat* of the contract: the client's own
``{"type": "ping"}`` messages every ``heartbeat_interval`` seconds (announced
in the ``connected`` frame), answered with ``pong``. This module is the
server's side of the WebSocket protocol: ping frames and their pongs.

Sanic starts a sleeping keepalive task per WebSocket; at tens of thousands
of idle connections those tasks are a large share of memory. Here one loop
visits every open socket: it sends a ping frame when the last one is older
than ``RELAY_WS_PING_INTERVAL`` and fails a peer whose pong has not arrived
within ``RELAY_WS_PING_TIMEOUT`` (close 1011), the same policy as Sanic's.

A sweep over all sockets is spread over ``SLICES`` turns: sockets that
connected together (a crowd, a reconnect storm) fall due together, and a
ping costs tens of microseconds (a frame, a write), so pinging them all in
one turn would hold the event loop, and every event in flight, for 40 ms
per 2,000 sockets. A slice at a time, no turn holds more than a slice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Sequence
from typing import Protocol

__all__ = ["SLICES", "Pingable", "Pinger", "ping_payload"]

#: Turns a sweep over every socket is spread over.
SLICES = 32


class Pingable(Protocol):
    """A socket the pinger can ping."""

    def ping_if_due(self, now: float, interval: float, timeout: float) -> None:
        """Ping if due; fail the connection if the last ping went unanswered too long."""


class Pinger:
    """Pings every registered socket on a schedule, from a single task, a slice per turn."""

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self.sockets: set[Pingable] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the loop on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def visit(self, sockets: Sequence[Pingable] | None = None) -> None:
        """Visit every socket once (or those of ``sockets`` still registered)."""
        now = time.monotonic()
        for sock in tuple(self.sockets) if sockets is None else sockets:
            if sock in self.sockets:  # not closed since the sweep began
                sock.ping_if_due(now, self.interval, self.timeout)

    async def _run(self) -> None:
        # Sweep often enough to notice a missing pong about `timeout` after the ping.
        sweep = max(0.05, min(self.interval, self.timeout) / 2)
        while True:
            sockets = tuple(self.sockets)  # who is open now; one joining meanwhile waits for the next sweep
            for index in range(SLICES):
                await asyncio.sleep(sweep / SLICES)
                self.visit(sockets[index::SLICES])


def ping_payload() -> bytes:
    """Four random bytes that identify one ping."""
    return os.urandom(4)
