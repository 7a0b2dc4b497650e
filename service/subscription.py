"""One subscriber's stream: the asyncio driver of :class:`~service.delivery.Delivery`.

A :class:`Subscription` is what a WebSocket (or SSE response) reads from. The
rules (replay merged with live events, duplicates and holes, epochs, the queue
bound, terminal events) are the pure state machine's; this class only does
what it answers: it registers with the hub, reads history when asked, writes
frames and closes the sink.

1. :meth:`open` registers with the hub first, so live events published from
   then on are buffered by the machine, and only then reads history after the
   cursor (again from the start when the cursor's epoch is not the stream's).
2. :meth:`start` hands the machine the page and writes what it answers.
3. Live events, resyncs and written frames go to the machine; a re-read it
   asks for runs in a task (retried while the broker is down).

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
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from auth import Claims

from . import metrics
from .brokers.base import Broker, HistoryPage
from .closecodes import SEND_FAILED, SLOW_CONSUMER, TOKEN_EXPIRED, Disconnect
from .cursor import Cursor
from .delivery import Delivery, Frame, Resume, Step, connected_message
from .errors import RelayError
from .events import Event
from .hub import Hub

__all__ = ["Sink", "Subscription"]


def _cannot_write_now(frame: str) -> bool:
    """For sinks without a synchronous path: always queue."""
    return False


log = logging.getLogger("relay.subscription")


class _Expiries:
    """Subscriptions to end at their token's expiry: one timer per second of expiry, not one each.

    Tokens minted together expire together, so thousands of sockets share a few
    timers (a timer handle is about 500 bytes; a set entry a few dozen).
    """

    __slots__ = ("due", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.due: dict[int, set[Subscription]] = {}

    def add(self, at: int, sub: Subscription) -> None:
        """Close ``sub`` with 4001 at unix time ``at``."""
        subs = self.due.get(at)
        if subs is None:
            subs = self.due[at] = set()
            self.loop.call_later(max(0.0, at - time.time()), self._expire, at)
        subs.add(sub)

    def discard(self, at: int, sub: Subscription) -> None:
        """Forget ``sub`` (it ended first)."""
        subs = self.due.get(at)
        if subs is not None:
            subs.discard(sub)

    def _expire(self, at: int) -> None:
        for sub in self.due.pop(at, ()):
            sub.close(TOKEN_EXPIRED)


_expiries: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Expiries] = weakref.WeakKeyDictionary()


def _expiries_here() -> _Expiries:
    loop = asyncio.get_running_loop()
    expiries = _expiries.get(loop)
    if expiries is None:
        expiries = _expiries[loop] = _Expiries(loop)
    return expiries


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
        "_broker",
        "_catch_up",
        "_delivery",
        "_expiry",
        "_hub",
        "_queue",
        "_try_write",
        "_writer",
        "claims",
        "closed",
        "disconnect",
        "execution_id",
        "page",
        "sent",
        "sink",
    )

    def __init__(
        self,
        hub: Hub,
        broker: Broker,
        execution_id: str,
        cursor: Cursor,
        sink: Sink,
        queue_size: int,
        claims: Claims | None = None,
    ) -> None:
        self._hub = hub
        self._broker = broker
        self.claims = claims  # whose token opened it: revoking that token closes it (and its exp ends it)
        self.execution_id = execution_id
        self.sink = sink
        self.sent = 0
        self.page = HistoryPage()  # the opening page, once open() returned
        self.disconnect: Disconnect | None = None
        self.closed: asyncio.Future[Disconnect] = asyncio.get_running_loop().create_future()
        # The replay at the start may exceed the queue bound by up to one history.
        self._delivery = Delivery(cursor, queue_size, broker.history_size)
        self._expiry: _Expiries | None = None  # where it waits for its token's expiry
        self._queue: deque[Frame] | None = None  # made when a frame first has to wait (a deque is ~600 bytes)
        self._writer: asyncio.Task[None] | None = None  # exists only while frames wait
        self._try_write: Callable[[str], bool] = getattr(sink, "try_write", _cannot_write_now)
        self._catch_up: asyncio.Task[None] | None = None

    @property
    def resume(self) -> Resume:
        """How the cursor resumed (``reset``, ``gap``), known once :meth:`open` returned."""
        return self._delivery.resume

    @property
    def epoch(self) -> str:
        """The stream's epoch, known once :meth:`start` ran."""
        return self._delivery.epoch

    @property
    def close_code(self) -> int | None:
        """The close code the subscription ended with (None while open)."""
        return int(self.disconnect.code) if self.disconnect is not None else None

    async def open(self) -> HistoryPage:
        """Register for live events, then read history after the cursor (from the start after a reset)."""
        await self._hub.add(self.execution_id, self)
        try:
            after = self._delivery.read_from
            page = await self._broker.history(self.execution_id, after=after)
            again = self._delivery.opened(page, after)
            if again is not None:
                page = await self._broker.history(self.execution_id, after=again)
                self._delivery.opened(page, again)
        except BaseException:
            self._hub.remove(self.execution_id, self)
            raise
        self.page = page
        return page

    def connected_message(self, **intervals: float) -> dict[str, Any]:
        """The ``connected`` frame for this stream (``intervals``: the transport's own heartbeat or keep-alive)."""
        return connected_message(self.execution_id, self.page, self._delivery.requested, self.resume, **intervals)

    def start(self, first_frame: str | None = None) -> None:
        """Write ``first_frame``, the history and the buffered events; go live; end at the token's expiry."""
        page = self.page
        if self.claims is not None and self.disconnect is None:
            self._expiry = _expiries_here()
            self._expiry.add(self.claims.exp, self)
        after = self._delivery.resume.after
        metrics.replayed(sum(1 for e in page.events if e.seq > after), self._delivery.resume.gap)
        self._apply(self._delivery.start(page, first_frame))

    def send_control(self, frame: str) -> None:
        """Queue a non-event frame (``pong``, ``error``, a keep-alive) behind pending events."""
        self._apply(self._delivery.control(frame))

    # -- live side, called by the hub; never awaits --------------------------

    def offer(self, event: Event) -> bool:
        """Take a live event (the machine sends it, buffers it, or drops a duplicate).

        Returns whether the event went into the socket at once: the hub counts
        those in the delivery metrics once per fan-out, not once per socket.
        """
        delivery = self._delivery
        if self._writer is not None or self._queue or not delivery.take(event):
            self._apply(delivery.live(event))  # frames waiting, or not the usual event: the machine says
            return False
        # The common case, once per socket of every fan-out: the next event, nothing waiting
        # before it, taken by the machine with no Step and no written() (a closed
        # subscription's machine takes nothing). The hub records its delivery latency,
        # once for the whole fan-out.
        if self._try_write(event.frame):
            self.sent += 1
            return True
        delivery.held()  # the socket's buffer is full: it waits, and counts as pending until written
        self._enqueue(event)
        return False

    def resync(self) -> None:
        """Live events may have been lost: let the machine re-read history."""
        self._apply(self._delivery.resync())

    # -- doing what the machine says --------------------------------------------

    def _apply(self, step: Step) -> None:
        for item in step.send:
            self._push(item)
        if step.close is not None:
            self._shutdown(step.close)
        elif step.read_after is not None and (self._catch_up is None or self._catch_up.done()):
            self._catch_up = asyncio.get_running_loop().create_task(self._read_missed(step.read_after))

    def _push(self, item: Frame) -> None:
        if self.disconnect is not None:
            return
        # Nothing waiting and the socket has room: write now, no task, no queue.
        if self._writer is None and not self._queue and self._try_write(item if isinstance(item, str) else item.frame):
            self._written(item)
            return
        self._enqueue(item)

    def _enqueue(self, item: Frame) -> None:
        """Queue ``item`` behind the frames waiting; start the task that writes them if none runs."""
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        queue.append(item)
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._drain())

    def _written(self, item: Frame) -> None:
        """Count a written frame, its delivery latency included; the machine says whether that ended the stream."""
        if isinstance(item, Event):
            metrics.delivered(item.accepted_at if item.seq > self._delivery.replayed_to else 0.0)
            self.sent += 1
        step = self._delivery.written(item)
        if step.close is not None:
            self._shutdown(step.close)

    async def _read_missed(self, after: int) -> None:
        """Read history after ``after`` for the machine, as often as it asks; retry while the broker is down."""
        delay = 0.05
        while not self._delivery.closed:
            try:
                page = await self._broker.history(self.execution_id, after=after)
            except RelayError:
                await asyncio.sleep(delay)  # broker down: the machine keeps buffering; try again
                delay = min(delay * 2, 2.0)
                continue
            step = self._delivery.history(page)
            for item in step.send:
                self._push(item)
            if step.close is not None:
                self._shutdown(step.close)
                return
            if step.read_after is None:
                return
            after = step.read_after

    async def _drain(self) -> None:
        """Write queued frames, waiting for the socket to drain; exit when the queue is empty."""
        queue = self._queue
        try:
            while queue:
                item = queue.popleft()
                frame = item if isinstance(item, str) else item.frame
                if not self._try_write(frame):
                    await self.sink.send(frame)
                self._written(item)
                if self.disconnect is not None:
                    return
            self._queue = None  # drained: most sockets never need one again
        except asyncio.CancelledError:
            raise
        except Exception:
            log.debug("writing to a subscriber failed", exc_info=True)
            metrics.delivery_failed()
            self.close(SEND_FAILED)
            return
        self._writer = None

    def close(self, disconnect: Disconnect) -> None:
        """Stop delivering, unregister, and close the sink without waiting (idempotent)."""
        if self._delivery.close(disconnect):
            self._shutdown(disconnect)

    def _shutdown(self, disconnect: Disconnect) -> None:
        """Carry out the end of the stream the machine decided (idempotent)."""
        if self.disconnect is not None:
            return
        self.disconnect = disconnect
        if self._queue is not None:
            self._queue.clear()
        if self._expiry is not None and self.claims is not None:
            self._expiry.discard(self.claims.exp, self)
        self._hub.remove(self.execution_id, self)
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
