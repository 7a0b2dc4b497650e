"""Delivery's rules, free of I/O: where a subscriber resumes, what it is told first, what it gets next.

Nothing here awaits, touches a socket or calls a broker: it is given what
happened and answers what to do, so every transport (socket, SSE, polling)
follows the same rules and they can be tested alone (python-websockets'
sans-I/O ``Protocol`` and centrifuge's ``MergePublications`` are the models).
:class:`Delivery` is one subscriber's state machine;
:class:`~service.subscription.Subscription` is its asyncio driver.

:func:`resume` decides where a cursor resumes in a history page (contract v2,
"Stream epochs"): a cursor without an epoch is a v1 cursor, trusted as it is;
a cursor whose epoch is not the stream's current one resumes from the start of
the current epoch, with ``reset``; ``gap`` says history no longer reaches back
to the first event wanted. :func:`connected_message` builds the ``connected``
frame the socket and SSE open with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .brokers.base import HistoryPage
from .closecodes import FINISHED, SLOW_CONSUMER, STREAM_RESET, Disconnect
from .cursor import Cursor
from .events import Event

__all__ = ["NOTHING", "Delivery", "Frame", "Resume", "Step", "connected_message", "resume"]


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a cursor resumes: deliver seqs after ``after``; ``reset`` and ``gap`` as the contract says."""

    after: int
    reset: bool = False
    gap: bool = False

    def fields(self) -> dict[str, bool]:
        """``reset`` / ``gap`` for an answer, only when true (as the contract shows them)."""
        out = {}
        if self.reset:
            out["reset"] = True
        if self.gap:
            out["gap"] = True
        return out


def resume(page: HistoryPage, cursor: Cursor) -> Resume:
    """Where ``cursor`` resumes in the stream ``page`` was read from."""
    reset = cursor.epoch is not None and cursor.epoch != page.epoch
    after = 0 if reset else cursor.seq
    return Resume(after, reset, page.gap_after(after))


def connected_message(
    execution_id: str, page: HistoryPage, cursor: Cursor, verdict: Resume, **intervals: float
) -> dict[str, Any]:
    """The ``connected`` frame: where the stream stands and how the cursor resumed.

    ``intervals`` are the transport's own (``heartbeat_interval`` on the socket,
    ``keepalive_interval`` on SSE).
    """
    return {
        "type": "connected",
        "execution_id": execution_id,
        "latest_seq": page.latest_seq,
        "epoch": page.epoch,
        "resumed": cursor.given,
        **intervals,
        **verdict.fields(),
    }


# -- the delivery state machine ------------------------------------------------------

_OPENING, _LIVE, _CATCHING_UP, _CLOSED = "opening", "live", "catching_up", "closed"

Frame = Event | str  # an event, or a control frame (connected, pong, keep-alive) written as it is


class Step:
    """What to do next: write ``send`` (in order), re-read history after ``read_after``, close with ``close``.

    ``close`` comes after ``send``: a stream that finished has its last frames
    written first; any other disconnect makes the driver drop what it has not
    written yet.
    """

    __slots__ = ("close", "read_after", "send")

    def __init__(
        self, send: Sequence[Frame] = (), read_after: int | None = None, close: Disconnect | None = None
    ) -> None:
        self.send = send
        self.read_after = read_after
        self.close = close

    def __repr__(self) -> str:
        """For test failures: how many frames, where to read, how to close."""
        return f"Step(send={len(self.send)}, read_after={self.read_after}, close={self.close and self.close.name})"


#: Nothing to do.
NOTHING = Step()

_last_alone: list[Step] = [Step(("",))]  # starts with a frame that is no event, so the first event misses


def _alone(event: Event) -> Step:
    """The Step that sends ``event`` alone: made once per event and shared by every subscriber.

    It is the answer to the common live event (in order) for each socket of a
    fan-out, which asks for it once per socket, in a row. Steps are never
    changed once made.
    """
    step = _last_alone[0]
    if step.send[0] is not event:
        step = _last_alone[0] = Step((event,))
    return step


class Delivery:
    """One subscriber's delivery rules, with no I/O: told what happened, it answers a :class:`Step`.

    It delivers every seq of the stream's current epoch after the cursor once
    and in order, or ends the stream with the contract's code:

    - **opening**: live events are buffered while the first history page is
      read (the driver registered for live events *before* reading, so nothing
      falls between). :meth:`opened` says whether the page will do (or whether
      the cursor's epoch is not the stream's and history must be read again
      from the start); :meth:`start` queues the history, then the buffered
      events, deduplicated by seq.
    - **live**: an event ``cursor + 1`` is sent; a seq at or below the cursor
      is a duplicate and dropped; a higher one is a hole (a network broker
      missed something): buffer, and re-read history after the cursor.
    - **catching up**: live events are buffered until :meth:`history` brings
      the page asked for; it is merged like at the start.
    - a **broker resync** (live events may have been missed) re-reads history.
    - an **epoch** other than the stream's, on a live event or a re-read page,
      means the stream was lost underneath: close 4009 (reconnect; the
      reconnect gets the reset). A re-read page that no longer reaches back to
      the cursor closes 4008, like any reader that fell behind: never a silent
      skip.
    - the **queue bound**: more than ``queue_size`` frames handed out and not
      yet written (plus ``replay_allowance`` for the replay at the start), or
      more than ``queue_size`` events buffered, closes 4008.
    - **terminal**: the stream finishes (1000) once the terminal event, or
      everything of a stream history says is finished, has been written.
    """

    __slots__ = (
        "_again",
        "_buffer",
        "_finished",
        "_page_after",
        "_state",
        "cursor",
        "disconnect",
        "epoch",
        "pending",
        "queue_size",
        "replay_allowance",
        "replayed_to",
        "requested",
        "resume",
    )

    def __init__(self, cursor: Cursor, queue_size: int, replay_allowance: int = 0) -> None:
        self.requested = cursor
        self.queue_size = queue_size
        self.replay_allowance = replay_allowance
        self.cursor = cursor.seq  # the last seq handed out (or skipped past by a reset/gap)
        self.epoch = ""  # the stream's epoch, once the first page was read
        self.resume = Resume(cursor.seq)
        self.replayed_to = cursor.seq  # seqs up to here came from history (for the latency metric)
        self.pending = 0  # frames handed out and not yet written
        self.disconnect: Disconnect | None = None
        self._state = _OPENING
        self._buffer: list[Event] = []
        self._finished = False  # nothing will follow what was handed out
        self._again = False  # a resync came while a re-read was in flight: read once more
        self._page_after = cursor.seq  # where the opening read started

    # -- questions -----------------------------------------------------------------

    @property
    def read_from(self) -> int:
        """Where the first history read starts (the cursor's seq)."""
        return self.requested.seq

    @property
    def closed(self) -> bool:
        """Whether the stream has ended (``disconnect`` says how)."""
        return self._state == _CLOSED

    # -- what happened -------------------------------------------------------------

    def opened(self, page: HistoryPage, after: int) -> int | None:
        """The opening page, read after ``after``: None when it will do, else where to read again.

        A cursor whose epoch is not the stream's resumes from the current
        epoch's start, so a page read after the cursor's seq is read again from 0.
        """
        self.resume = resume(page, self.requested)
        self._page_after = after
        if self.resume.after < after:
            return self.resume.after
        return None

    def start(self, page: HistoryPage, first_frame: str | None = None) -> Step:
        """Go live: ``first_frame`` (the ``connected`` frame), the page's events after the cursor, the buffer."""
        if self._state == _CLOSED:
            return NOTHING
        self.epoch = page.epoch
        self.cursor = self.resume.after
        self.replayed_to = max(self.cursor, page.events[-1].seq if page.events else 0)
        send: list[Frame] = [first_frame] if first_frame is not None else []
        self._finished = page.terminal  # already finished: end once what is handed out is written
        return self._merge(page, send, self.queue_size + self.replay_allowance)

    def take(self, event: Event) -> bool:
        """Take the usual live event without a :class:`Step` or a :meth:`written`: True if it is to be written now.

        The usual event is the next seq of the stream's epoch, not terminal,
        while live, with room under the queue bound and the stream not
        finished. For it, True changes the state as :meth:`live` and then
        :meth:`written` would: the driver writes it at once, alone (every
        socket of every fan-out comes here first, so neither call is made).
        A driver that cannot write it at once calls :meth:`held` and queues it,
        and :meth:`written` follows when it goes. For any other event, False
        and nothing changed: ask :meth:`live`.
        """
        if (
            event.seq == self.cursor + 1
            and self._state == _LIVE
            and (event.epoch == self.epoch or not event.epoch or not self.epoch)  # as live() checks it
            and not event.terminal
            and not self._finished
            and self.pending < self.queue_size
        ):
            self.cursor = event.seq
            return True
        return False

    def held(self) -> None:
        """The event :meth:`take` answered waits to be written: it counts as pending until :meth:`written`."""
        self.pending += 1

    def live(self, event: Event) -> Step:
        """A live event from the broker (:meth:`take` first answers the usual one without a Step)."""
        state = self._state
        if state == _CLOSED:
            return NOTHING
        # The usual event carries the very epoch string the stream's page did: `!=` first answers at once.
        if event.epoch != self.epoch and event.epoch and self.epoch:
            return self._close(STREAM_RESET)  # the stream was lost and started again underneath us
        if state == _LIVE:
            seq = event.seq
            if seq == self.cursor + 1:  # the common case: in order
                if self._finished:
                    return NOTHING
                if self.pending >= self.queue_size:
                    return self._close(SLOW_CONSUMER)
                self.cursor = seq
                self.pending += 1
                if event.terminal:
                    self._finished = True
                return _alone(event)
            if seq <= self.cursor:
                return NOTHING  # a duplicate (also seen in history)
            self._state = _CATCHING_UP  # a hole: re-read history from the cursor
            self._buffer.append(event)
            return Step(read_after=self.cursor)
        self._buffer.append(event)  # opening or catching up
        if len(self._buffer) > self.queue_size:
            return self._close(SLOW_CONSUMER)
        return NOTHING

    def resync(self) -> Step:
        """The broker reconnected: live events may have been missed; re-read history after the cursor."""
        if self._state == _LIVE:
            self._state = _CATCHING_UP
            return Step(read_after=self.cursor)
        if self._state == _CATCHING_UP:
            self._again = True  # the read in flight may predate the reconnect
        return NOTHING  # opening: the opening read comes after the reconnect anyway

    def history(self, page: HistoryPage) -> Step:
        """The page a Step asked for (read after the cursor) while catching up."""
        if self._state != _CATCHING_UP:
            return NOTHING
        if page.epoch != self.epoch:
            return self._close(STREAM_RESET)  # found on re-reading: the stream was lost meanwhile
        if page.gap_after(self.cursor):
            return self._close(SLOW_CONSUMER)  # history moved past the cursor
        if page.terminal:
            self._finished = True
        if self._again:
            self._again = False
            step = self._merge(page, [], self.queue_size)
            if step.close is not None:
                return step
            self._state = _CATCHING_UP
            return Step(step.send, self.cursor)
        return self._merge(page, [], self.queue_size)

    def control(self, frame: str) -> Step:
        """A frame that is not an event (``pong``, a keep-alive), sent behind what is handed out."""
        if self._state == _CLOSED:
            return NOTHING
        if self.pending >= self.queue_size:
            return self._close(SLOW_CONSUMER)
        self.pending += 1
        return Step((frame,))

    def written(self, frame: Frame) -> Step:
        """The driver wrote ``frame``; after the terminal event (or a finished stream's last frame) close 1000."""
        self.pending -= 1
        if self._state == _CLOSED:
            return NOTHING
        if (isinstance(frame, Event) and frame.terminal) or (self._finished and self.pending == 0):
            return self._close(FINISHED)
        return NOTHING

    def close(self, disconnect: Disconnect) -> bool:
        """End the stream from outside (token expired, revoked, client gone); False if it had ended already."""
        if self._state == _CLOSED:
            return False
        self._close(disconnect)
        return True

    # -- internals -------------------------------------------------------------------

    def _close(self, disconnect: Disconnect) -> Step:
        self._state = _CLOSED
        self.disconnect = disconnect
        self._buffer = []
        return Step(close=disconnect)

    def _merge(self, page: HistoryPage, send: list[Frame], bound: int) -> Step:
        """Hand out the page's events after the cursor (authoritative), then the buffered ones in order."""
        for event in page.events:
            if event.seq > self.cursor and not self._finished_by(send):
                self.cursor = event.seq
                send.append(event)
        pending = sorted(self._buffer, key=lambda e: e.seq)
        self._buffer = []
        for i, event in enumerate(pending):
            if event.epoch and event.epoch != self.epoch:
                return self._close(STREAM_RESET)  # buffered while the stream was lost and started again
            if event.seq <= self.cursor or self._finished_by(send):
                continue
            if event.seq != self.cursor + 1:  # still a hole: keep the rest and read again
                self._buffer = pending[i:]
                self._state = _CATCHING_UP
                self.pending += len(send)
                return Step(send, self.cursor)
            self.cursor = event.seq
            send.append(event)
        self._state = _LIVE
        self.pending += len(send)
        if self.pending > bound:
            return self._close(SLOW_CONSUMER)
        if self._finished_by(send):
            self._finished = True
        if self._finished and self.pending == 0:
            return self._close(FINISHED)
        return Step(send)

    @staticmethod
    def _finished_by(send: list[Frame]) -> bool:
        last = send[-1] if send else None
        return isinstance(last, Event) and last.terminal
