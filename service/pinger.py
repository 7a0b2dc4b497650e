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

A sweep over all sockets is spread over many turns of the loop, a few
sockets a turn: sockets that connected together fall due together, and a
ping costs tens of microseconds (a frame, a write), its pong about as much
when it comes back. Pinging them all in one turn held the event loop, and
every event in flight, for 40 ms per 2,000 sockets; a 32nd of them per turn
(62 of 2,000) still held it 1.2-2 ms every 0.3 s during half of every ping
interval (``bench/tail_probe.py``), and their 62 pongs came back together. So a turn visits
``PER_TURN`` sockets at most (more only past ``sweep / MIN_GAP * PER_TURN``
sockets), and a sweep takes as many turns as that needs, at least ``SLICES``.
With fewer sockets than ``SLICES``, a turn visits one socket, so a process
with no sockets wakes once a sweep instead of ``SLICES`` times.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Sequence
from typing import Protocol

__all__ = ["MIN_GAP", "PER_TURN", "SLICES", "Pingable", "Pinger", "ping_payload", "turns"]

#: Turns a sweep over every socket is spread over, at least.
SLICES = 32
#: Sockets visited (so pinged at most) in one turn of the loop.
PER_TURN = 8
#: Seconds between two turns of a sweep of more than SLICES turns, at least: past 40,000 sockets
#: (10 s sweeps), a turn visits more than PER_TURN sockets rather than wake the loop more often.
MIN_GAP = 0.002


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
            count = turns(len(sockets), sweep)
            for index in range(count):
                await asyncio.sleep(sweep / count)
                self.visit(sockets[index::count])


def turns(sockets: int, sweep: float) -> int:
    """Turns of the loop a sweep over ``sockets`` sockets lasting ``sweep`` seconds is spread over."""
    if sockets < SLICES:
        return max(1, sockets)  # a socket a turn; none: one turn, to look again a sweep later
    wanted = -(-sockets // PER_TURN)  # PER_TURN sockets a turn at most
    return max(SLICES, min(wanted, int(sweep / MIN_GAP)))


def ping_payload() -> bytes:
    """Four random bytes that identify one ping."""
    return os.urandom(4)
