"""The pure delivery state machine, without sockets, tasks or brokers.

A small simulated world (a stream with epochs, trimming and a terminal event;
a live channel that can drop, duplicate and resync; a driver that writes
frames and reads history when told) is run through random interleavings by
Hypothesis. Whatever happens, every run ends in one of the contract's
outcomes: each seq of the epoch delivered once and in order (and the stream
finished with 1000 after its terminal event), or a close with 4009 (the
stream was lost) or 4008 (the reader fell behind what history keeps or what
its queue holds).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from service.brokers.base import HistoryPage
from service.closecodes import FINISHED, SLOW_CONSUMER, STREAM_RESET
from service.cursor import Cursor
from service.delivery import Delivery, Frame, Step, resume
from service.events import Event


def event(epoch: str, seq: int, terminal: bool = False) -> Event:
    """An event whose frame names its epoch and seq."""
    return Event(seq, "complete" if terminal else "progress", terminal, f"{epoch}:{seq}", 0.0, epoch)


@dataclass
class World:
    """One stream as a broker holds it: epochs, retained events, terminal flag."""

    history_size: int
    epoch_no: int = 1
    events: list[Event] = field(default_factory=list)
    latest: int = 0
    terminal: bool = False

    @property
    def epoch(self) -> str:
        return f"E{self.epoch_no}"

    def publish(self, terminal: bool = False) -> Event | None:
        if self.terminal:
            return None
        self.latest += 1
        e = event(self.epoch, self.latest, terminal)
        self.events = [*self.events, e][-self.history_size :]
        self.terminal = terminal
        return e

    def lose(self) -> None:
        """The broker lost the stream: a new epoch, seq starts again."""
        self.epoch_no += 1
        self.events, self.latest, self.terminal = [], 0, False

    def page(self, after: int) -> HistoryPage:
        first = self.events[0].seq if self.events else 0
        return HistoryPage(
            [e for e in self.events if e.seq > after], self.latest, first, self.terminal, 0.0, self.epoch
        )


@dataclass
class Driver:
    """Does what the machine answers, like Subscription but synchronously."""

    machine: Delivery
    written: list[Frame] = field(default_factory=list)
    queue: list[Frame] = field(default_factory=list)
    reads: list[int] = field(default_factory=list)
    closed_with: str | None = None

    def apply(self, step: Step) -> None:
        if self.closed_with is not None:
            return
        self.queue.extend(step.send)
        if step.close is not None:
            self.closed_with = step.close.name
            self.queue.clear()
        elif step.read_after is not None:
            self.reads.append(step.read_after)

    def offer(self, e: Event, room: bool = True) -> None:
        """A live event as Subscription.offer hands it: take() when nothing waits, else live().

        ``room``: whether the socket takes the frame at once (else it is held and
        queued). Checked against live(), then written() for a frame written at once,
        on a twin machine: the same answer and the same state, or take() declines
        and changes nothing.
        """
        machine = self.machine
        twin = copy.copy(machine)
        twin._buffer = list(machine._buffer)
        expected = twin.live(e)
        before = state(machine)
        if not self.queue and machine.take(e):
            assert (list(expected.send), expected.read_after, expected.close) == ([e], None, None)
            if room:
                self.written.append(e)
                assert twin.written(e).close is None
            else:
                machine.held()
                self.queue.append(e)
            assert state(machine) == state(twin)
            return
        assert state(machine) == before
        step = machine.live(e)
        assert (list(step.send), step.read_after, step.close) == (
            list(expected.send),
            expected.read_after,
            expected.close,
        )
        assert state(machine) == state(twin)
        self.apply(step)

    def write(self, n: int) -> None:
        for _ in range(n):
            if not self.queue or self.closed_with is not None:
                return
            frame = self.queue.pop(0)
            self.written.append(frame)
            self.apply(self.machine.written(frame))


def state(machine: Delivery) -> tuple[Any, ...]:
    """Everything the machine holds, buffers copied (to compare two machines, or one before and after)."""
    return tuple(copy.copy(getattr(machine, name)) for name in Delivery.__slots__)


ACTIONS = st.lists(
    st.sampled_from(
        [
            "publish",
            "publish",
            "publish",
            "finish",
            "deliver",
            "deliver",
            "deliver_held",
            "drop",
            "duplicate",
            "disconnect",
            "reconnect",
            "read",
            "write",
            "write",
            "lose",
            "pong",
        ]
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    actions=ACTIONS,
    history_size=st.integers(2, 12),
    queue_size=st.integers(1, 8),
    before=st.integers(0, 6),
    cursor_seq=st.integers(0, 8),
    cursor_epoch=st.sampled_from([None, "E1", "E0"]),
    write_batch=st.integers(1, 4),
    eager=st.booleans(),
)
def test_every_interleaving_delivers_each_seq_once_in_order_or_closes_with_the_contracts_code(
    actions: list[str],
    history_size: int,
    queue_size: int,
    before: int,
    cursor_seq: int,
    cursor_epoch: str | None,
    write_batch: int,
    eager: bool,
) -> None:
    """Live events, history pages, duplicates, holes, resyncs and epoch changes, in any order: a contract outcome."""
    world = World(history_size)
    for _ in range(before):
        world.publish()
    cursor = Cursor(min(cursor_seq, world.latest) if cursor_epoch == "E1" else cursor_seq, cursor_epoch, True)
    machine = Delivery(cursor, queue_size, history_size)
    driver = Driver(machine)
    channel: list[Event] = []  # live messages on their way, in order
    connected = True
    resyncs_owed = False
    sent_live: list[Event] = []

    # Opening: registered first (live events buffer), then the read, maybe again from 0 after a reset.
    page = world.page(machine.read_from)
    again = machine.opened(page, machine.read_from)
    if again is not None:
        page = world.page(again)
        assert machine.opened(page, again) is None
    verdict = machine.resume
    assert verdict == resume(page, cursor)
    start_epoch = world.epoch
    start_after = verdict.after
    gap_at_start = verdict.gap
    first_retained = page.first_seq
    driver.apply(machine.start(page, "connected"))
    losses_after_start = 0

    def step(action: str) -> None:
        nonlocal connected, resyncs_owed, losses_after_start
        if action in ("publish", "finish"):
            e = world.publish(terminal=action == "finish")
            if e is not None and connected:
                channel.append(e)
        elif action in ("deliver", "deliver_held") and channel:
            e = channel.pop(0)
            sent_live.append(e)
            if eager:  # a socket with room has written everything handed out (Subscription writes at once)
                driver.write(len(driver.queue))
            driver.offer(e, room=action == "deliver")
        elif action == "drop" and channel:
            channel.pop(0)
            connected, resyncs_owed = False, True  # a lost message means the connection broke
        elif action == "duplicate" and sent_live:
            driver.offer(sent_live[len(sent_live) // 2])
        elif action == "disconnect":
            channel.clear()
            connected, resyncs_owed = False, True
        elif action == "reconnect" and not connected:
            connected, resyncs_owed = True, False
            driver.apply(machine.resync())
        elif action == "read" and driver.reads:
            driver.apply(machine.history(world.page(driver.reads.pop(0))))
        elif action == "write":
            driver.write(write_batch)
        elif action == "lose":
            world.lose()
            losses_after_start += 1
        elif action == "pong":
            driver.apply(machine.control("pong"))

    for action in actions:
        step(action)
    # Quiesce: the connection comes back, every message arrives, every read and write completes.
    for _ in range(1000):
        if driver.closed_with is not None:
            break
        if not connected:
            step("reconnect")
        elif channel:
            step("deliver")
        elif driver.reads:
            step("read")
        elif driver.queue:
            driver.write(len(driver.queue))
        else:
            break
    assert not resyncs_owed or driver.closed_with is not None

    events = [f for f in driver.written if isinstance(f, Event)]
    closed_before_writing = driver.closed_with in (SLOW_CONSUMER.name, STREAM_RESET.name)
    assert driver.written[:1] == ["connected"] or (not driver.written and closed_before_writing)
    # Whatever the outcome: one epoch, consecutive seqs, each once, from where the cursor resumed.
    assert {e.epoch for e in events} <= {start_epoch}
    seqs = [e.seq for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True
    if seqs:
        expected_first = max(start_after + 1, first_retained) if gap_at_start else start_after + 1
        assert seqs[0] == expected_first, (seqs, start_after, first_retained)
    if verdict.reset:
        assert cursor_epoch != start_epoch and start_after == 0

    outcome = driver.closed_with
    if outcome == FINISHED.name:
        # The terminal event was written, or the cursor was already at or past it (a v1 cursor is trusted).
        terminal_seq = world.latest if world.terminal and world.epoch == start_epoch else page.latest_seq
        assert (events and events[-1].terminal) or (not events and start_after >= terminal_seq)
    elif outcome == STREAM_RESET.name:
        assert losses_after_start > 0  # only a lost stream is reported lost
    elif outcome == SLOW_CONSUMER.name:
        pass  # the queue or buffer bound, or history trimmed past the cursor: the client resumes with gap
    else:
        assert outcome is None, outcome
        # Still open: everything of the epoch after the cursor has been delivered. A stream lost since
        # can only leave it open while the new one has nothing it could have missed (4009 comes with
        # the new epoch's first event or the next re-read).
        if world.epoch != start_epoch:
            assert world.latest == 0
            return
        assert seqs == list(range(start_after + 1, world.latest + 1)) or (
            gap_at_start and seqs == list(range(first_retained, world.latest + 1))
        )
        assert not world.terminal or not seqs  # a delivered terminal event would have finished it


def test_a_hole_asks_for_history_and_the_page_fills_it() -> None:
    """Seq 3 arriving after 1 asks to re-read after 1; the page's 2 and 3 are sent once, in order."""
    world = World(10)
    machine = Delivery(Cursor(), 10)
    machine.opened(world.page(0), 0)
    machine.start(world.page(0))
    one, two, three = world.publish(), world.publish(), world.publish()
    assert one and two and three
    assert list(machine.live(one).send) == [one]
    step = machine.live(three)
    assert (list(step.send), step.read_after) == ([], 1)
    assert machine.live(two).send == ()  # buffered while catching up
    assert list(machine.history(world.page(1)).send) == [two, three]
    assert machine.live(three).send == ()  # a duplicate now


def test_a_cursor_from_another_epoch_reads_again_from_the_start_and_resets() -> None:
    """A resume with an old epoch gets the current epoch from seq 1, with reset."""
    world = World(10)
    world.lose()
    for _ in range(3):
        world.publish()
    machine = Delivery(Cursor(2, "E1", True), 10)
    assert machine.opened(world.page(2), 2) == 0
    assert machine.opened(world.page(0), 0) is None
    assert (machine.resume.reset, machine.resume.after) == (True, 0)
    assert [e.seq for e in machine.start(world.page(0)).send if isinstance(e, Event)] == [1, 2, 3]


def test_a_live_event_of_another_epoch_closes_4009() -> None:
    """The stream started again underneath a live subscriber: close with 4009."""
    machine = Delivery(Cursor(), 10)
    machine.opened(World(10).page(0), 0)
    machine.start(World(10).page(0))
    assert machine.live(event("E2", 1)).close is STREAM_RESET and machine.closed


def test_the_queue_bound_closes_4008_and_terminal_closes_1000_once_written() -> None:
    """Past queue_size unwritten frames: 4008. The terminal event written: 1000."""
    world = World(10)
    machine = Delivery(Cursor(), 2)
    machine.opened(world.page(0), 0)
    machine.start(world.page(0))
    a, b, c = (world.publish() for _ in range(3))
    assert a and b and c
    machine.live(a)
    machine.live(b)
    assert machine.live(c).close is SLOW_CONSUMER
    other = Delivery(Cursor(), 2, replay_allowance=10)
    other.opened(world.page(0), 0)
    done = world.publish(terminal=True)
    assert done
    step = other.start(world.page(0))
    assert [f.seq for f in step.send if isinstance(f, Event)] == [1, 2, 3, 4]
    closes = [other.written(f).close for f in step.send]
    assert closes == [None, None, None, FINISHED]


def test_take_answers_only_the_next_event_of_a_live_stream_with_room() -> None:
    """take() takes the next seq of the epoch; a duplicate, hole, other epoch, full queue, terminal event: live()."""
    world = World(10)
    machine = Delivery(Cursor(), 2)
    machine.opened(world.page(0), 0)
    machine.start(world.page(0))
    a, b, c, d = (world.publish() for _ in range(4))
    assert a and b and c and d
    assert not machine.take(event("E2", 1))  # another epoch: live() closes 4009
    assert not machine.take(b)  # a hole: live() asks for history
    assert machine.take(a) and (machine.cursor, machine.pending) == (1, 0)  # written at once: nothing pending
    assert not machine.take(a)  # a duplicate: live() drops it
    assert machine.take(b)
    machine.held()  # the socket's buffer was full: b waits
    assert machine.take(c)
    machine.held()
    assert machine.pending == 2
    assert not machine.take(d)  # the queue bound: live() closes 4008
    assert machine.written(b).close is None and machine.written(c).close is None
    assert machine.take(d) and machine.pending == 0
    done = world.publish(terminal=True)
    assert done and not machine.take(done)  # terminal: live() hands it out, written() then ends the stream
    assert list(machine.live(done).send) == [done]
    assert not machine.take(event("E1", 6))  # finished: nothing follows the terminal event
    assert machine.written(done).close is FINISHED
    assert not machine.take(event("E1", 6))  # closed


def test_take_takes_an_event_without_an_epoch_as_live_does() -> None:
    """An event that carries no epoch is the next one if its seq is (live() does not refuse it either)."""
    machine = Delivery(Cursor(), 2)
    machine.opened(World(10).page(0), 0)
    machine.start(World(10).page(0))
    assert machine.take(event("", 1)) and (machine.cursor, machine.pending) == (1, 0)
