"""One subscriber's stream: replay merged with live events, then a bounded queue.

A :class:`Subscription` is what a WebSocket (or SSE response) reads from. It
keeps a *cursor*, the highest seq handed to its sink, and guarantees that the
sink sees every event after the starting cursor exactly once, in seq order:

1. :meth:`open` registers with the hub first, so live events published from
   then on are *buffered*, and only then reads history after the cursor.
2. :meth:`start` queues the history, then the buffered events, skipping any
   seq at or below the cursor, and switches to *live*.
3. Live events join the queue only if they are exactly ``cursor + 1``. A hole
   (a network broker missed something) switches back to buffering and
   re-reads history from the cursor.

The queue is bounded (``RELAY_SEND_QUEUE_SIZE``): a client that falls that
far behind is closed with 4008 at once, without waiting on its socket, so it
never delays anyone else. One writer task per subscription drains the queue
into the sink, and closes with 1000 after the terminal event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Protocol

from . import metrics
from .brokers.base import HistoryPage
from .closecodes import CloseCode
from .errors import RelayError
from .events import Event

if TYPE_CHECKING:
    from .relay import Relay

__all__ = ["Sink", "Subscription"]

log = logging.getLogger("relay.subscription")

_BUFFERING, _LIVE, _CLOSED = 0, 1, 2


class Sink(Protocol):
    """Where a subscription writes: a WebSocket or an SSE response."""

    async def send(self, frame: str) -> None:
        """Write one frame; may wait for the peer to read."""

    def close_now(self, code: int, reason: str) -> None:
        """Close without waiting on the peer (it may not be reading)."""


class Subscription:
    """Delivers one execution's events after a cursor to one sink, exactly once."""

    __slots__ = (
        "_buffer",
        "_catch_up",
        "_finished",
        "_queue",
        "_state",
        "_wakeup",
        "_writer",
        "close_code",
        "closed",
        "cursor",
        "execution_id",
        "queue_size",
        "relay",
        "replayed_to",
        "sent",
        "sink",
    )

    def __init__(self, relay: Relay, execution_id: str, cursor: int, sink: Sink, queue_size: int) -> None:
        self.relay = relay
        self.execution_id = execution_id
        self.cursor = cursor
        self.sink = sink
        self.queue_size = queue_size
        self.sent = 0
        self.replayed_to = cursor  # events up to this seq came from history (no delivery latency)
        self.close_code: int | None = None
        self.closed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._state = _BUFFERING
        self._buffer: list[Event] = []
        self._queue: deque[Event | str] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._catch_up: asyncio.Task[None] | None = None
        self._finished = False  # history says terminal: close once the queue is written

    async def open(self) -> HistoryPage:
        """Register for live events, then read history after the cursor."""
        await self.relay.hub.add(self.execution_id, self)
        try:
            return await self.relay.broker.history(self.execution_id, after=self.cursor)
        except BaseException:
            self.relay.hub.remove(self.execution_id, self)
            raise

    def start(self, page: HistoryPage, first_frame: str | None = None) -> None:
        """Queue ``first_frame``, the history and the buffered events; go live."""
        if self._state == _CLOSED:
            return
        if first_frame is not None:
            self._queue.append(first_frame)
        replay = [e for e in page.events if e.seq > self.cursor]
        if replay:
            self.replayed_to = replay[-1].seq
        metrics.replayed(len(replay), page.gap_after(self.cursor))
        self._merge(page.events)
        # Already finished and nothing newer for this client: close after what is queued.
        self._finished = page.terminal
        self._writer = asyncio.get_running_loop().create_task(self._write())

    def send_control(self, frame: str) -> None:
        """Queue a non-event frame (``pong``, ``error``) behind pending events."""
        self._push(frame)

    # -- live side, called by the hub; never awaits --------------------------

    def offer(self, event: Event) -> None:
        """Take a live event: queue it, buffer it, or ignore a duplicate."""
        if self._state == _LIVE:
            if event.seq <= self.cursor:
                return
            if event.seq == self.cursor + 1:
                self.cursor = event.seq
                self._push(event)
                return
            self._state = _BUFFERING  # a hole: re-read history from the cursor
            self._start_catch_up()
        if self._state == _BUFFERING:
            self._buffer.append(event)
            if len(self._buffer) > self.queue_size:
                self.close(CloseCode.SLOW_CONSUMER, "slow consumer")

    def resync(self) -> None:
        """Live events may have been lost: re-read history from the cursor."""
        if self._state == _LIVE:
            self._state = _BUFFERING
            self._start_catch_up()

    # -- internals -------------------------------------------------------------

    def _push(self, item: Event | str) -> None:
        if self._state == _CLOSED:
            return
        if len(self._queue) >= self.queue_size:
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer")
            return
        self._queue.append(item)
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _merge(self, history: list[Event]) -> None:
        """Queue history (authoritative, may start after a trimmed hole), then the buffer."""
        for event in history:
            if event.seq > self.cursor:
                self.cursor = event.seq
                self._queue.append(event)  # replay is bounded by the history size
        pending = sorted(self._buffer, key=lambda e: e.seq)
        self._buffer = []
        for i, event in enumerate(pending):
            if event.seq <= self.cursor:
                continue
            if event.seq != self.cursor + 1:
                self._buffer = pending[i:]
                self._start_catch_up()
                return
            self.cursor = event.seq
            self._queue.append(event)
        self._state = _LIVE
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)
        if len(self._queue) > self.queue_size + self.relay.broker.history_size:
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer")

    def _start_catch_up(self) -> None:
        if self._catch_up is None or self._catch_up.done():
            self._catch_up = asyncio.get_running_loop().create_task(self._read_missed())

    async def _read_missed(self) -> None:
        delay = 0.05
        while self._state == _BUFFERING:
            try:
                page = await self.relay.broker.history(self.execution_id, after=self.cursor)
            except RelayError:
                await asyncio.sleep(delay)  # broker down: keep buffering, try again
                delay = min(delay * 2, 2.0)
                continue
            self._merge(page.events)
            return

    async def _write(self) -> None:
        try:
            while True:
                while not self._queue:
                    if self._finished:
                        self.close(CloseCode.NORMAL, "execution finished")
                        return
                    self._wakeup = asyncio.get_running_loop().create_future()
                    await self._wakeup
                item = self._queue.popleft()
                if isinstance(item, str):
                    await self.sink.send(item)
                    continue
                await self.sink.send(item.frame)
                self.sent += 1
                metrics.delivered(item.accepted_at if item.seq > self.replayed_to else 0.0)
                if item.terminal:
                    self.close(CloseCode.NORMAL, "execution finished")
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.debug("writing to a subscriber failed", exc_info=True)
            metrics.delivery_failed()
            self.close(CloseCode.INTERNAL_ERROR, "send failed")

    def close(self, code: int, reason: str) -> None:
        """Stop delivering, unregister, and close the sink without waiting (idempotent)."""
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        self.close_code = code
        self._queue.clear()
        self._buffer = []
        self.relay.hub.remove(self.execution_id, self)
        current = asyncio.current_task()
        for task in (self._writer, self._catch_up):
            if task is not None and task is not current and not task.done():
                task.cancel()
        if code == CloseCode.SLOW_CONSUMER:
            self.relay.counters["slow_consumer_closes"] += 1
            metrics.slow_consumer()
        with contextlib.suppress(Exception):
            self.sink.close_now(code, reason)
        if not self.closed.done():
            self.closed.set_result(code)
