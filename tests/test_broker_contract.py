"""The broker contract: every broker passes the same suite, memory and Redis alike.

Each test runs once per backend. The Redis runs use a real server
(``RELAY_TEST_REDIS_URL``, default ``redis://127.0.0.1:6379/15``) and a key
prefix of their own. Where a test needs "another instance", the memory backend
hands back the same broker (one process is all it serves) and the Redis
backend a second broker on the same prefix, with its own connections.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import pytest

from service.brokers import Broker, PublishResult, create_broker
from service.brokers.memory import MemoryBroker
from service.errors import ExecutionFinished
from service.events import Event, EventDraft, parse_draft
from tests.redis_util import delete_prefix, require_redis


def draft(execution_id: str, event: str = "progress", key: str | None = None, **data: Any) -> EventDraft:
    """A valid draft of ``event`` for ``execution_id``."""
    if event == "progress":
        data = {"progress": 10, "stage": "ai_fetching", **data}
    elif event == "error" and "error" not in data:
        data = {"error": "boom", **data}
    body: dict[str, Any] = {"event": event, "data": data}
    if key is not None:
        body["idempotency_key"] = key
    return parse_draft(execution_id, body)


class Recorder:
    """A listener that records live events per execution and can wait for them."""

    def __init__(self) -> None:
        self.events: dict[str, list[Event]] = defaultdict(list)
        self.resyncs = 0
        self._changed = asyncio.Event()

    def __call__(self, execution_id: str, event: Event) -> None:
        self.events[execution_id].append(event)
        self._changed.set()

    def resync(self) -> None:
        self.resyncs += 1

    def seqs(self, execution_id: str) -> list[int]:
        return [e.seq for e in self.events[execution_id]]

    async def wait_for(self, execution_id: str, count: int, timeout: float = 5.0) -> list[int]:
        """Wait until ``count`` events of ``execution_id`` arrived; return their seqs."""
        async with asyncio.timeout(timeout):
            while len(self.events[execution_id]) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.seqs(execution_id)


class Backend:
    """Creates started brokers of one kind and closes them afterwards."""

    def __init__(self, kind: str, url: str, prefix: str) -> None:
        self.kind = kind
        self.url = url
        self.prefix = prefix
        self.brokers: list[Broker] = []

    @property
    def filters(self) -> bool:
        """Whether the broker delivers only subscribed executions (memory hands the hub everything)."""
        return self.kind != "memory"

    async def make(self, history_size: int = 100, history_ttl: int = 3600) -> tuple[Broker, Recorder]:
        """A started broker with a recording listener."""
        broker = create_broker(self.url, history_size, history_ttl, prefix=self.prefix)
        recorder = Recorder()
        broker.set_listener(recorder, recorder.resync)
        await broker.start()
        self.brokers.append(broker)
        return broker, recorder

    async def peer(self, broker: Broker) -> Broker:
        """Another instance sharing ``broker``'s storage (the same broker for memory)."""
        if self.kind == "memory":
            return broker
        other, _ = await self.make(broker.history_size, broker.history_ttl)
        return other

    async def lose_history(self, broker: Broker) -> Broker:
        """The storage loses every stream: a restarted memory process, a Redis emptied under a live instance.

        Returns the broker to go on with (a new one for memory, ``broker`` itself for Redis).
        """
        if self.kind == "memory":
            await broker.close()
            replacement, _ = await self.make(broker.history_size, broker.history_ttl)
            return replacement
        delete_prefix(self.url, self.prefix)
        return broker

    async def close(self) -> None:
        for broker in self.brokers:
            await broker.close()


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """One backend per run of each test."""
    prefix = f"relaytest-{time.monotonic_ns()}"
    url = "memory://" if request.param == "memory" else require_redis()
    b = Backend(request.param, url, prefix)
    try:
        yield b
    finally:
        await b.close()
        if request.param == "redis":
            delete_prefix(url, prefix)


async def test_seq_starts_at_one_and_counts_up_per_execution(backend: Backend) -> None:
    """Seqs are 1, 2, 3 per execution, independent between executions, and the frame carries them."""
    broker, _ = await backend.make()
    results = [await broker.publish(draft("a")) for _ in range(3)]
    other = await broker.publish(draft("b"))
    assert [r.seq for r in results] == [1, 2, 3]
    assert other.seq == 1
    assert not any(r.duplicate for r in results)
    event = (await broker.history("a")).events[2]
    assert event.seq == 3 and '"seq":3,' in event.frame and event.event == "progress"
    # The result carries the event only where the listener gets that same object in-process.
    assert all((r.event is not None) == (backend.kind == "memory") for r in results)


async def test_concurrent_publishers_on_two_instances_get_unique_contiguous_seqs(backend: Backend) -> None:
    """40 tasks on two instances publish 400 events to one execution: seqs are exactly 1..400."""
    a, _ = await backend.make(history_size=1000)
    b = await backend.peer(a)

    async def publisher(broker: Broker, n: int) -> list[int]:
        return [(await broker.publish(draft("x"))).seq for _ in range(n)]

    batches = await asyncio.gather(*(publisher(a if i % 2 else b, 10) for i in range(40)))
    seqs = sorted(s for batch in batches for s in batch)
    assert seqs == list(range(1, 401))
    assert all(batch == sorted(batch) for batch in batches)  # one publisher's events keep their order
    page = await a.history("x")
    assert [e.seq for e in page.events] == list(range(1, 401))
    assert page.latest_seq == 400


async def test_history_keeps_the_newest_history_size_events_contiguously(backend: Backend) -> None:
    """With history_size 5, 12 events leave seqs 8..12; first_seq and gap_after say so."""
    broker, _ = await backend.make(history_size=5)
    for _ in range(12):
        await broker.publish(draft("h"))
    page = await broker.history("h")
    assert [e.seq for e in page.events] == [8, 9, 10, 11, 12]
    assert (page.latest_seq, page.first_seq, page.terminal, page.exists) == (12, 8, False, True)
    assert page.gap_after(0) and page.gap_after(6)
    assert not page.gap_after(7) and not page.gap_after(12)


async def test_history_after_and_limit(backend: Backend) -> None:
    """``after`` skips seqs up to it, ``limit`` caps the page; latest_seq stays the newest."""
    broker, _ = await backend.make()
    for i in range(6):
        await broker.publish(draft("p", progress=i))
    page = await broker.history("p", after=2, limit=2)
    assert [e.seq for e in page.events] == [3, 4]
    assert page.latest_seq == 6 and page.first_seq == 1
    assert [e.seq for e in (await broker.history("p", after=4)).events] == [5, 6]
    assert (await broker.history("p", after=6)).events == []
    assert (await broker.history("p", after=60)).events == []
    huge = await broker.history("p", after=2**53 - 1)  # the largest seq a client may name
    assert (huge.events, huge.latest_seq) == ([], 6)
    assert page.events[0].as_dict()["data"]["progress"] == 2


async def test_history_of_an_unknown_execution_is_empty(backend: Backend) -> None:
    """An execution nobody published to has no history and latest_seq 0."""
    broker, _ = await backend.make()
    page = await broker.history("nobody")
    assert (page.events, page.latest_seq, page.first_seq, page.terminal, page.exists) == ([], 0, 0, False, False)
    assert not page.gap_after(0)


async def test_history_frames_are_the_published_frames(backend: Backend) -> None:
    """History hands out the very text the publish produced, with its type and terminal flag."""
    broker, _ = await backend.make()
    drafts = [draft("f", stage="中文阶段"), draft("f", "complete", report={"score": 87})]
    results = [await broker.publish(d) for d in drafts]
    page = await broker.history("f")
    assert page.events == [d.with_seq(r.seq, r.epoch) for d, r in zip(drafts, results, strict=True)]
    assert page.events[1].terminal and page.events[1].event == "complete"
    assert page.terminal and abs(page.updated_at - time.time()) < 5


async def test_history_expires_after_ttl_and_publishing_refreshes_it(backend: Backend) -> None:
    """History lives history_ttl seconds after the last publish; then the execution starts over at seq 1."""
    broker, _ = await backend.make(history_ttl=3)
    await broker.publish(draft("t", key="k1"))
    await asyncio.sleep(1.8)
    await broker.publish(draft("t"))  # refreshes the TTL
    await asyncio.sleep(1.8)
    assert (await broker.history("t")).latest_seq == 2  # 3.6 s after the first publish: still there
    await asyncio.sleep(3.5)
    assert not (await broker.history("t")).exists
    again = await broker.publish(draft("t", key="k1"))
    assert (again.seq, again.duplicate) == (1, False)  # idempotency keys expired with the history


async def test_idempotency_key_returns_the_first_seq_and_delivers_nothing(backend: Backend) -> None:
    """The same key again answers the first seq with duplicate=True; nothing new is stored or delivered."""
    broker, recorder = await backend.make()
    await broker.subscribe("i")
    first_draft = draft("i", key="step-1")
    first = await broker.publish(first_draft)
    await broker.publish(draft("i", key="step-2"))
    again = await broker.publish(draft("i", key="step-1", progress=99))
    assert (again.seq, again.duplicate, again.event) == (1, True, None)
    other = await broker.publish(draft("j", key="step-1"))  # keys are per execution
    assert (other.seq, other.duplicate) == (1, False)
    await broker.publish(draft("i"))
    assert await recorder.wait_for("i", 3) == [1, 2, 3]
    page = await broker.history("i")
    assert [e.seq for e in page.events] == [1, 2, 3] and page.events[0] == first_draft.with_seq(1, first.epoch)


async def test_idempotency_keys_are_bounded_by_the_retained_history(backend: Backend) -> None:
    """Keys live while their event is retained: at most twice the history size are held, older ones are forgotten."""
    broker, _ = await backend.make(history_size=5)
    forgotten = broker.stats()["idempotency_keys_forgotten"]
    for i in range(40):
        await broker.publish(draft("bounded", key=f"k{i}"))
    assert broker.stats()["idempotency_keys_forgotten"] - forgotten >= 40 - 2 * 5
    for i in (35, 39):  # events 36 and 40 are retained: their keys still answer duplicates
        again = await broker.publish(draft("bounded", key=f"k{i}"))
        assert (again.seq, again.duplicate) == (i + 1, True)
    old = await broker.publish(draft("bounded", key="k0"))  # event 1 left the history long ago: published again
    assert (old.seq, old.duplicate) == (41, False)


async def test_idempotency_holds_across_instances(backend: Backend) -> None:
    """A retry that lands on another instance is still recognised as a duplicate."""
    a, _ = await backend.make()
    b = await backend.peer(a)
    first = await a.publish(draft("r", key="once"))
    retry = await b.publish(draft("r", key="once"))
    assert (retry.seq, retry.duplicate) == (first.seq, True)


async def test_no_event_is_accepted_after_a_terminal_one(backend: Backend) -> None:
    """After complete, publish raises ExecutionFinished; a retried key still answers duplicate."""
    broker, _ = await backend.make()
    await broker.publish(draft("z", key="a"))
    done = await broker.publish(draft("z", "complete", key="b"))
    assert done.seq == 2 and not done.duplicate
    with pytest.raises(ExecutionFinished):
        await broker.publish(draft("z"))
    with pytest.raises(ExecutionFinished):
        await broker.publish(draft("z", "complete", key="c"))
    retry = await broker.publish(draft("z", "complete", key="b"))
    assert (retry.seq, retry.duplicate) == (2, True)
    page = await broker.history("z")
    assert page.terminal and page.latest_seq == 2 and [e.terminal for e in page.events] == [False, True]


async def test_error_is_terminal_unless_recoverable(backend: Backend) -> None:
    """A recoverable error lets the execution go on; a plain error ends it."""
    broker, _ = await backend.make()
    soft = await broker.publish(draft("e", "error", recoverable=True))
    assert soft.seq == 1 and not (await broker.history("e")).events[0].terminal
    await broker.publish(draft("e", "error"))
    with pytest.raises(ExecutionFinished):
        await broker.publish(draft("e"))


async def test_listener_receives_each_execution_in_seq_order(backend: Backend) -> None:
    """Events from two instances and two executions reach the listener in seq order, none missing."""
    a, recorder = await backend.make(history_size=1000)
    b = await backend.peer(a)
    await a.subscribe("o1")
    await a.subscribe("o2")

    async def publisher(broker: Broker, eid: str) -> None:
        for _ in range(50):
            await broker.publish(draft(eid))

    await asyncio.gather(publisher(a, "o1"), publisher(b, "o1"), publisher(a, "o2"), publisher(b, "o2"))
    assert await recorder.wait_for("o1", 100) == list(range(1, 101))
    assert await recorder.wait_for("o2", 100) == list(range(1, 101))


async def test_unsubscribe_stops_delivery_and_subscribe_again_resumes(backend: Backend) -> None:
    """Events published while unsubscribed are not delivered by filtering brokers; new ones are after resubscribing."""
    broker, recorder = await backend.make()
    publisher = await backend.peer(broker)
    await broker.subscribe("u")
    await publisher.publish(draft("u"))
    assert await recorder.wait_for("u", 1) == [1]
    await broker.unsubscribe("u")
    await publisher.publish(draft("u"))
    await broker.subscribe("u")
    await publisher.publish(draft("u"))
    seqs = await recorder.wait_for("u", 2 if backend.filters else 3)
    assert seqs == ([1, 3] if backend.filters else [1, 2, 3])
    await broker.unsubscribe("u")
    await broker.unsubscribe("u")  # idempotent


async def test_only_subscribed_executions_are_delivered(backend: Backend) -> None:
    """A filtering broker hands the listener only executions subscribed on this instance."""
    broker, recorder = await backend.make()
    await broker.subscribe("wanted")
    await broker.publish(draft("unwanted"))
    await broker.publish(draft("wanted"))
    await recorder.wait_for("wanted", 1)
    assert recorder.seqs("unwanted") == ([] if backend.filters else [1])


async def test_publish_many_keeps_order_with_one_result_per_item(backend: Backend) -> None:
    """A batch answers in order: seqs, duplicates and ExecutionFinished each in its place."""
    broker, recorder = await backend.make()
    await broker.subscribe("m1")
    await broker.publish(draft("m2", "complete"))
    drafts = [draft("m1", key="k"), draft("m1"), draft("m2"), draft("m1", key="k"), draft("m3"), draft("m1")]
    results = await broker.publish_many(drafts)
    assert len(results) == 6
    summary = [(r.execution_id, r.seq, r.duplicate) if isinstance(r, PublishResult) else type(r) for r in results]
    assert summary == [
        ("m1", 1, False),
        ("m1", 2, False),
        ExecutionFinished,
        ("m1", 1, True),
        ("m3", 1, False),
        ("m1", 3, False),
    ]
    assert await recorder.wait_for("m1", 3) == [1, 2, 3]
    assert await broker.publish_many([]) == []


async def test_ping_answers_when_reachable(backend: Backend) -> None:
    """A reachable broker answers ping without error."""
    broker, _ = await backend.make()
    await broker.ping()


# -- stream epochs (contract v2) ---------------------------------------------------------


EPOCH_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


async def test_a_stream_has_one_epoch_on_every_instance_in_results_history_and_live_events(backend: Backend) -> None:
    """The epoch is a short opaque string, one per stream: in results, history pages, events, on every instance."""
    broker, recorder = await backend.make()
    other = await backend.peer(broker)
    await broker.subscribe("ep")
    first = await broker.publish(draft("ep", key="k"))
    second = await other.publish(draft("ep"))
    duplicate = await other.publish(draft("ep", key="k"))
    epoch = first.epoch
    assert 1 <= len(epoch) <= 32 and set(epoch) <= EPOCH_CHARS
    assert second.epoch == duplicate.epoch == epoch
    page = await other.history("ep")
    assert page.epoch == epoch and {e.epoch for e in page.events} == {epoch}
    await recorder.wait_for("ep", 2)
    assert {e.epoch for e in recorder.events["ep"]} == {epoch}
    assert (await broker.publish(draft("ep-other"))).epoch != epoch  # epochs are per stream


async def test_a_subscribers_read_creates_the_epoch_the_first_publish_uses(backend: Backend) -> None:
    """A subscriber arriving before the first event learns its events' epoch; a state read creates none."""
    broker, _ = await backend.make()
    peek = await broker.history("early", create=False)
    assert (peek.epoch, peek.exists) == ("", False)
    page = await broker.history("early")
    assert page.epoch and not page.exists and page.events == []
    assert (await broker.history("early", create=False)).epoch == page.epoch
    assert (await broker.history("early")).epoch == page.epoch
    result = await broker.publish(draft("early"))
    assert (result.seq, result.epoch) == (1, page.epoch)


async def test_a_lost_stream_comes_back_in_a_new_epoch_without_its_idempotency_keys(backend: Backend) -> None:
    """After the storage lost the stream, seq restarts at 1 in a new epoch, and an old key is stored again."""
    broker, _ = await backend.make()
    old = [await broker.publish(draft("lost", key=f"k{i}")) for i in range(3)]
    broker = await backend.lose_history(broker)
    page = await broker.history("lost")
    assert page.epoch and page.epoch != old[0].epoch and page.latest_seq == 0
    retry = await broker.publish(draft("lost", key="k2"))
    assert (retry.seq, retry.duplicate, retry.epoch) == (1, False, page.epoch)


async def test_an_expired_stream_that_comes_back_has_a_new_epoch(backend: Backend) -> None:
    """A stream that outlived its TTL and is published to again is a new stream: new epoch, seq 1."""
    broker, _ = await backend.make(history_ttl=1)
    old = await broker.publish(draft("exp"))
    if backend.kind == "memory":
        assert isinstance(broker, MemoryBroker)
        broker._logs["exp"].touched -= 5  # expire it without waiting
    else:
        async with asyncio.timeout(5):
            while (await broker.history("exp", create=False)).exists:
                await asyncio.sleep(0.1)
    again = await broker.publish(draft("exp"))
    assert again.seq == 1 and again.epoch != old.epoch


async def test_history_after_any_large_seq_is_an_empty_page_not_an_error(backend: Backend) -> None:
    """A cursor far beyond any seq (10**25, 2**64) reads nothing, with the stream's epoch and latest seq."""
    broker, _ = await backend.make()
    result = await broker.publish(draft("big"))
    for after in (2**64 - 2, 2**64 - 1, 2**64, 10**25):
        page = await broker.history("big", after=after)
        assert (page.events, page.latest_seq, page.epoch) == ([], 1, result.epoch), after
