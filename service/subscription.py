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

Frames are written straight into the socket when nothing is waiting and its
buffer has room (``Sink.try_write``): no task and no queue for the common
case, which keeps idle connections small and delivery cheap. Otherwise they
wait in a bounded queue (``RELAY_SEND_QUEUE_SIZE``) drained by a task that
exists only while frames wait; a client that falls that far behind is closed
with 4008 at once, without waiting on its socket, so it never delays anyone
else. After the terminal event the sink is closed with 1000.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from . import metrics
from .brokers.base import HistoryPage
from .closecodes import FINISHED, SEND_FAILED, SLOW_CONSUMER, STREAM_RESET, Disconnect
from .cursor import Cursor
from .delivery import Resume, resume
from .errors import RelayError
from .events import Event

if TYPE_CHECKING:
    from auth import Claims

    from .relay import Relay

__all__ = ["Sink", "Subscription"]


def _cannot_write_now(frame: str) -> bool:
    """For sinks without a synchronous path: always queue."""
    return False


log = logging.getLogger("relay.subscription")

_BUFFERING, _LIVE, _CLOSED = 0, 1, 2


class Sink(Protocol):
    """Where a subscription writes: a WebSocket or an SSE response."""

    async def send(self, frame: str) -> None:
        """Write one frame; may wait for the peer to read."""

    def close_now(self, disconnect: Disconnect) -> None:
        """Close without waiting on the peer (it may not be reading)."""

    # Optional: ``try_write(frame) -> bool`` writes at once if the peer's buffer has
    # room, and returns False (nothing written) otherwise.


class Subscription:
    """Delivers one execution's events after a cursor to one sink, exactly once."""

    __slots__ = (
        "_buffer",
        "_catch_up",
        "_finished",
        "_queue",
        "_state",
        "_try_write",
        "_writer",
        "claims",
        "closed",
        "cursor",
        "disconnect",
        "epoch",
        "execution_id",
        "queue_size",
        "relay",
        "replayed_to",
        "requested",
        "resume",
        "sent",
        "sink",
    )

    def __init__(
        self, relay: Relay, execution_id: str, cursor: Cursor, sink: Sink, queue_size: int, claims: Claims | None = None
    ) -> None:
        self.relay = relay
        self.claims = claims  # whose token opened it: revoking that token closes it
        self.execution_id = execution_id
        self.requested = cursor
        self.cursor = cursor.seq
        self.epoch = ""  # the stream's epoch, known once open() read history
        self.resume = Resume(cursor.seq)
        self.sink = sink
        self.queue_size = queue_size
        self.sent = 0
        self.replayed_to = cursor.seq  # events up to this seq came from history (no delivery latency)
        self.disconnect: Disconnect | None = None
        self.closed: asyncio.Future[Disconnect] = asyncio.get_running_loop().create_future()
        self._state = _BUFFERING
        self._buffer: list[Event] = []
        self._queue: deque[Event | str] = deque()
        self._writer: asyncio.Task[None] | None = None  # exists only while frames wait
        self._try_write: Callable[[str], bool] = getattr(sink, "try_write", _cannot_write_now)
        self._catch_up: asyncio.Task[None] | None = None
        self._finished = False  # history says terminal: close once the queue is written

    async def open(self) -> HistoryPage:
        """Register for live events, then read history after the cursor (from the start after a reset)."""
        await self.relay.hub.add(self.execution_id, self)
        try:
            page = await self.relay.broker.history(self.execution_id, after=self.cursor)
            self.resume = resume(page, self.requested)
            if self.resume.reset:
                page = await self.relay.broker.history(self.execution_id)
                self.resume = resume(page, self.requested)
        except BaseException:
            self.relay.hub.remove(self.execution_id, self)
            raise
        self.epoch = page.epoch
        self.cursor = self.replayed_to = self.resume.after
        return page

    @property
    def close_code(self) -> int | None:
        """The close code the subscription ended with (None while open)."""
        return int(self.disconnect.code) if self.disconnect is not None else None

    def start(self, page: HistoryPage, first_frame: str | None = None) -> None:
        """Queue ``first_frame``, the history and the buffered events; go live."""
        if self._state == _CLOSED:
            return
        if first_frame is not None:
            self._queue.append(first_frame)
        replay = [e for e in page.events if e.seq > self.cursor]
        if replay:
            self.replayed_to = replay[-1].seq
        metrics.replayed(len(replay), self.resume.gap)
        # Already finished: close once what is queued is written, even if nothing newer.
        self._finished = page.terminal
        self._merge(page.events)

    def send_control(self, frame: str) -> None:
        """Queue a non-event frame (``pong``, ``error``) behind pending events."""
        self._push(frame)

    # -- live side, called by the hub; never awaits --------------------------

    def offer(self, event: Event) -> None:
        """Take a live event: queue it, buffer it, or ignore a duplicate."""
        if event.epoch and event.epoch != self.epoch and self.epoch:
            self.close(STREAM_RESET)  # the stream was lost and started again underneath us
            return
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
                self.close(SLOW_CONSUMER)

    def resync(self) -> None:
        """Live events may have been lost: re-read history from the cursor."""
        if self._state == _LIVE:
            self._state = _BUFFERING
            self._start_catch_up()

    # -- internals -------------------------------------------------------------

    def _push(self, item: Event | str) -> None:
        if self._state == _CLOSED:
            return
        # Nothing waiting and the socket has room: write now, no task, no queue.
        if self._writer is None and not self._queue and self._try_write(item if isinstance(item, str) else item.frame):
            self._written(item)
            return
        if len(self._queue) >= self.queue_size:
            self.close(SLOW_CONSUMER)
            return
        self._queue.append(item)
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._drain())

    def _merge(self, history: list[Event]) -> None:
        """Queue history (authoritative, may start after a trimmed hole), then the buffer."""
        for event in history:
            if event.seq > self.cursor:
                self.cursor = event.seq
                self._queue.append(event)  # replay is bounded by the history size
        pending = sorted(self._buffer, key=lambda e: e.seq)
        self._buffer = []
        if any(e.epoch and e.epoch != self.epoch for e in pending):
            self.close(STREAM_RESET)  # buffered while the stream was lost and started again
            return
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
        if len(self._queue) > self.queue_size + self.relay.broker.history_size:
            self.close(SLOW_CONSUMER)
            return
        self._flush()

    def _flush(self) -> None:
        """Write queued frames while the socket has room; leave the rest to a drain task."""
        queue = self._queue
        while queue and self._writer is None:
            item = queue[0]
            if not self._try_write(item if isinstance(item, str) else item.frame):
                self._writer = asyncio.get_running_loop().create_task(self._drain())
                return
            queue.popleft()
            if self._written(item):
                return
        if not queue and self._writer is None and self._finished:
            self.close(FINISHED)

    def _written(self, item: Event | str) -> bool:
        """Account for a written frame; return True when that ended the stream."""
        if isinstance(item, str):
            return False
        self.sent += 1
        metrics.delivered(item.accepted_at if item.seq > self.replayed_to else 0.0)
        if item.terminal:
            self.close(FINISHED)
            return True
        return False

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
            if page.epoch != self.epoch:
                self.close(STREAM_RESET)  # found on re-reading: the stream was lost while we were not listening
                return
            if page.gap_after(self.cursor):
                self.close(SLOW_CONSUMER)  # history moved past us: resuming says gap, never a silent skip
                return
            self._merge(page.events)
            return

    async def _drain(self) -> None:
        """Write queued frames, waiting for the socket to drain; exit when the queue is empty."""
        queue = self._queue
        try:
            while queue:
                item = queue.popleft()
                frame = item if isinstance(item, str) else item.frame
                if not self._try_write(frame):
                    await self.sink.send(frame)
                if self._written(item):
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.debug("writing to a subscriber failed", exc_info=True)
            metrics.delivery_failed()
            self.close(SEND_FAILED)
            return
        self._writer = None
        if self._finished and self._state != _CLOSED:
            self.close(FINISHED)

    def close(self, disconnect: Disconnect) -> None:
        """Stop delivering, unregister, and close the sink without waiting (idempotent)."""
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        self.disconnect = disconnect
        self._queue.clear()
        self._buffer = []
        self.relay.hub.remove(self.execution_id, self)
        current = asyncio.current_task()
        for task in (self._writer, self._catch_up):
            if task is not None and task is not current and not task.done():
                task.cancel()
        if disconnect is SLOW_CONSUMER:
            metrics.slow_consumer()
        with contextlib.suppress(Exception):
            self.sink.close_now(disconnect)
        if not self.closed.done():
            self.closed.set_result(disconnect)
