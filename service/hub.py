"""The hub: this process's subscribers, per execution.

The broker hands every live event of a subscribed execution to
:meth:`Hub.dispatch`, which offers it to each local subscriber without
awaiting anything, so one slow socket never delays another; the frames
written at once are counted in the metrics once per event. The hub asks
the broker to subscribe to an execution when its first local subscriber
arrives and to unsubscribe when the last one leaves; those calls run one at
a time, in the order they were asked for. A broker that delivers every
publish anyway (the memory broker) is not asked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any, Protocol

from . import metrics
from .brokers.base import Broker
from .events import Event

__all__ = ["Hub", "Subscriber"]

log = logging.getLogger("relay.hub")


class Subscriber(Protocol):
    """Anything that takes live events of one execution."""

    def offer(self, event: Event) -> bool:
        """Take one live event; must not block. True if its frame went into the socket at once."""

    def resync(self) -> None:
        """Live events may have been missed; re-read history."""


class _Channel:
    __slots__ = ("ready", "subscribers")

    def __init__(self, ready: asyncio.Future[None]) -> None:
        self.subscribers: set[Subscriber] = set()
        self.ready = ready


class Hub:
    """Tracks local subscribers per execution and fans events out to them."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._channels: dict[str, _Channel] = {}
        self._ops: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def dispatch(self, execution_id: str, event: Event) -> None:
        """Offer ``event`` to every local subscriber of ``execution_id``."""
        channel = self._channels.get(execution_id)
        if channel is None:
            return
        if not event.accepted_at:  # came through a network broker: latency counts from its arrival here
            event = replace(event, accepted_at=time.time())
        written = 0
        for subscriber in tuple(channel.subscribers):
            if subscriber.offer(event):
                written += 1
        metrics.delivered_live(written, event.accepted_at)  # once per fan-out: it costs a clock read

    def resync(self) -> None:
        """Tell every subscriber that live events may have been missed."""
        for channel in tuple(self._channels.values()):
            for subscriber in tuple(channel.subscribers):
                subscriber.resync()

    async def add(self, execution_id: str, subscriber: Subscriber) -> None:
        """Register ``subscriber``; return once the broker delivers its live events.

        Raises what the broker's subscribe raised (the subscriber is then removed).
        """
        channel = self._channels.get(execution_id)
        if channel is None:
            channel = _Channel(asyncio.get_running_loop().create_future())
            self._channels[execution_id] = channel
            if self.broker.needs_subscribe:
                self._run(self._subscribe(execution_id, channel))
            else:  # nothing to ask the broker: no task, and no turn of the loop before the subscriber is live
                channel.ready.set_result(None)
        channel.subscribers.add(subscriber)
        ready = channel.ready
        try:
            if ready.done():  # live already (always, with the memory broker): no shield, no task
                ready.result()  # raises what the broker's subscribe raised
            else:
                await asyncio.shield(ready)
        except BaseException:
            self.remove(execution_id, subscriber)
            raise

    def remove(self, execution_id: str, subscriber: Subscriber) -> None:
        """Unregister ``subscriber`` (idempotent)."""
        channel = self._channels.get(execution_id)
        if channel is None or subscriber not in channel.subscribers:
            return
        channel.subscribers.discard(subscriber)
        if not channel.subscribers:
            del self._channels[execution_id]
            if self.broker.needs_subscribe:
                self._run(self._unsubscribe(execution_id, channel))

    def all_subscribers(self) -> list[Subscriber]:
        """Every local subscriber of every execution (a snapshot, for rare sweeps such as revocation)."""
        return [s for channel in tuple(self._channels.values()) for s in tuple(channel.subscribers)]

    @property
    def executions(self) -> int:
        """Executions with at least one local subscriber."""
        return len(self._channels)

    @property
    def connections(self) -> int:
        """Local subscribers in all."""
        return sum(len(c.subscribers) for c in self._channels.values())

    def _run(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _lock(self) -> asyncio.Lock:
        if self._ops is None:
            self._ops = asyncio.Lock()
        return self._ops

    async def _subscribe(self, execution_id: str, channel: _Channel) -> None:
        async with self._lock():
            try:
                await self.broker.subscribe(execution_id)
            except Exception as exc:  # reported to every waiting add()
                if not channel.ready.done():
                    channel.ready.set_exception(exc)
                    channel.ready.exception()  # mark retrieved; add() re-raises it
                if self._channels.get(execution_id) is channel:
                    del self._channels[execution_id]
                return
        if not channel.ready.done():
            channel.ready.set_result(None)

    async def _unsubscribe(self, execution_id: str, channel: _Channel) -> None:
        _mark_retrieved(channel.ready)
        async with self._lock():
            if execution_id in self._channels:
                return  # someone subscribed again meanwhile
            try:
                await self.broker.unsubscribe(execution_id)
            except Exception:
                log.warning("unsubscribe of an execution failed", exc_info=True)

    async def close(self) -> None:
        """Wait for pending subscribe/unsubscribe calls."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _mark_retrieved(future: asyncio.Future[None]) -> None:
    """Silence 'exception never retrieved' on a channel nobody awaits any more."""
    if future.done() and not future.cancelled():
        future.exception()
