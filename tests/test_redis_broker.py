"""What only the Redis broker does: key layout, scripts, connections, URLs.

The behaviour every broker shares is in ``test_broker_contract.py``; these
tests check the Redis side of it directly in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from service import metrics
from service.brokers.redis import RedisBroker
from service.errors import BrokerUnavailable
from service.events import Event, parse_draft
from tests.redis_util import RedisServer, redis_prefix, redis_server_binary, redis_url  # noqa: F401

pytestmark = pytest.mark.redis


def progress(execution_id: str) -> Any:
    """A progress draft."""
    return parse_draft(execution_id, {"event": "progress", "data": {"progress": 1, "stage": "s"}})


@pytest.fixture
async def make_broker(redis_url: str, redis_prefix: str) -> AsyncIterator[Callable[..., Any]]:
    """Factory of started brokers on the test Redis and prefix."""
    brokers: list[RedisBroker] = []

    async def make(url: str | None = None, **options: Any) -> RedisBroker:
        broker = RedisBroker(
            url or redis_url,
            options.pop("history_size", 10),
            options.pop("history_ttl", 300),
            prefix=redis_prefix,
            **options,
        )
        broker.set_listener(lambda eid, event: None)
        await broker.start()
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        await broker.close()


async def test_one_executions_keys_share_a_hash_tag_and_carry_the_ttl(
    make_broker: Callable[..., Any], redis_url: str
) -> None:
    """stream, meta and idem keys are named <prefix>:{<id>}:..., hold the event, and expire after history_ttl."""
    broker: RedisBroker = await make_broker(history_ttl=300)
    await broker.publish(
        parse_draft("ex-1", {"event": "progress", "data": {"progress": 1, "stage": "s"}, "idempotency_key": "k"})
    )
    stream, meta, idem = broker.keys("ex-1")
    assert [stream, meta, idem] == [
        f"{broker.prefix}:{{ex-1}}:stream",
        f"{broker.prefix}:{{ex-1}}:meta",
        f"{broker.prefix}:{{ex-1}}:idem",
    ]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        entries = client.xrange(stream)
        assert [entry_id for entry_id, _ in entries] == ["1-0"]
        assert entries[0][1]["e"] == "progress" and entries[0][1]["t"] == "0"
        assert '"seq":1,' in entries[0][1]["f"]
        assert client.hgetall(meta)["seq"] == "1" and client.hget(idem, "k") == "1"
        for key in (stream, meta, idem):
            assert 290 <= client.ttl(key) <= 300
    finally:
        client.close()


async def test_publish_survives_a_script_flush(make_broker: Callable[..., Any], redis_url: str) -> None:
    """After SCRIPT FLUSH (a restart or failover), EVALSHA falls back to loading the script again."""
    broker: RedisBroker = await make_broker()
    await broker.publish(progress("ex-2"))
    client = redis.Redis.from_url(redis_url)
    try:
        client.script_flush()
    finally:
        client.close()
    assert (await broker.publish(progress("ex-2"))).seq == 2
    client = redis.Redis.from_url(redis_url)
    try:
        client.script_flush()
    finally:
        client.close()
    results = await broker.publish_many([progress("ex-2"), progress("ex-2")])
    assert [r.seq for r in results] == [3, 4]  # type: ignore[union-attr]


async def test_one_pubsub_connection_subscribed_only_to_executions_with_local_subscribers() -> None:
    """Two brokers, three executions: each broker holds one pub/sub connection with just its channels."""
    server = RedisServer(redis_server_binary())
    server.start()
    brokers = []
    try:
        for _ in range(2):
            broker = RedisBroker(server.url, 10, 300, prefix="pc")
            broker.set_listener(lambda eid, event: None)
            await broker.start()
            brokers.append(broker)
        a, b = brokers
        for eid in ("e1", "e2", "e3"):
            await a.subscribe(eid)
        await b.subscribe("e3")
        client = server.client()
        try:
            pubsub_clients = [c for c in client.client_list() if int(c["sub"]) > 0]
            assert sorted(int(c["sub"]) for c in pubsub_clients) == [2, 4]  # control channel + executions
            await a.unsubscribe("e1")
            await a.unsubscribe("e3")
            await asyncio.sleep(0.2)
            channels = sorted(ch.decode() for ch in client.pubsub_channels("pc:{*}:live"))
            assert channels == ["pc:{e2}:live", "pc:{e3}:live"]
            counts = dict(client.pubsub_numsub("pc:{e2}:live", "pc:{e3}:live"))
            assert counts == {b"pc:{e2}:live": 1, b"pc:{e3}:live": 1}
        finally:
            client.close()
    finally:
        for broker in brokers:
            await broker.close()
        server.close()


async def test_live_message_carries_seq_event_and_frame_without_json(make_broker: Callable[..., Any]) -> None:
    """The listener gets Event(seq, event, terminal, frame) with the very frame the publish built."""
    broker: RedisBroker = await make_broker()
    got: list[Event] = []
    broker.set_listener(lambda eid, event: got.append(event))
    await broker.subscribe("ex-3")
    drafts = [
        parse_draft("ex-3", {"event": "result", "data": {"text": "a|b|c 中文"}}),
        parse_draft("ex-3", {"event": "complete"}),
    ]
    results = [await broker.publish(d) for d in drafts]
    async with asyncio.timeout(5):
        while len(got) < 2:
            await asyncio.sleep(0.01)
    assert got == [d.with_seq(r.seq, r.epoch) for d, r in zip(drafts, results, strict=True)]


async def test_a_live_event_carries_its_arrival_time(make_broker: Callable[..., Any]) -> None:
    """An event read from pub/sub is stamped when it arrives, for the accept-to-socket latency metric."""
    broker: RedisBroker = await make_broker()
    got: list[Event] = []
    arrived = asyncio.Event()

    def listener(execution_id: str, event: Event) -> None:
        got.append(event)
        arrived.set()

    broker.set_listener(listener)
    await broker.subscribe("ex-4")
    before = time.time()
    await broker.publish(progress("ex-4"))
    async with asyncio.timeout(5):
        await arrived.wait()
    assert before <= got[0].accepted_at <= time.time()


async def test_a_seq_past_1e14_keeps_an_exact_stream_id(make_broker: Callable[..., Any], redis_url: str) -> None:
    """The script writes the seq as an integer (Lua would print 10**15 + 1 as 1e+15, an invalid stream id)."""
    broker: RedisBroker = await make_broker()
    await broker.publish(progress("ex-big"))
    stream, meta, _ = broker.keys("ex-big")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.hset(meta, "seq", 10**15)
    result = await broker.publish(progress("ex-big"))
    assert result.seq == 10**15 + 1
    newest = client.xrevrange(stream, count=1)
    assert newest and newest[0][0] == f"{10**15 + 1}-0"
    assert client.hget(meta, "seq") == str(10**15 + 1)
    client.close()


async def test_password_in_the_url_is_used() -> None:
    """A Redis with requirepass: the right password works, a wrong one is BrokerUnavailable and never ready."""
    server = RedisServer(redis_server_binary(), password="pa55-word")
    server.start()
    good = RedisBroker(server.url, 10, 300, prefix="pw")
    bad = RedisBroker(server.url.replace("pa55-word", "wrong"), 10, 300, prefix="pw", connect_timeout=0.5)
    try:
        await good.start()
        await good.ping()
        assert (await good.publish(progress("ex-4"))).seq == 1
        await bad.start()
        with pytest.raises(BrokerUnavailable):
            await bad.ping()
        with pytest.raises(BrokerUnavailable):
            await bad.publish(progress("ex-4"))
    finally:
        await good.close()
        await bad.close()
        server.close()


def test_rediss_url_builds_a_tls_connection_pool() -> None:
    """rediss:// selects TLS connections (with the password and db from the URL); nothing connects yet."""
    from redis.asyncio.connection import SSLConnection

    broker = RedisBroker("rediss://:secret@redis.example.invalid:6380/3", 10, 300)
    pool = broker._redis.connection_pool
    assert pool.connection_class is SSLConnection
    assert pool.connection_kwargs["password"] == "secret" and pool.connection_kwargs["db"] == 3


async def test_stats_report_channels_and_connection(make_broker: Callable[..., Any]) -> None:
    """stats() counts accepted events, subscribed channels and the pub/sub state."""
    broker: RedisBroker = await make_broker()
    await broker.subscribe("ex-5")
    await broker.publish(progress("ex-5"))
    stats = broker.stats()
    assert stats["events_accepted"] == 1 and stats["redis_channels_subscribed"] == 1
    assert stats["redis_pubsub_connected"] == 1 and stats["redis_resyncs"] == 0


async def test_concurrent_publishes_share_round_trips_and_keep_their_own_results(
    make_broker: Callable[..., Any],
) -> None:
    """200 concurrent publishes are coalesced into pipelines; each caller gets its own seq, none lost."""
    broker: RedisBroker = await make_broker(history_size=500)
    results = await asyncio.gather(*(broker.publish(progress(f"c{i % 4}")) for i in range(200)))
    by_execution: dict[str, list[int]] = {}
    for result in results:
        by_execution.setdefault(result.execution_id, []).append(result.seq)
    assert {eid: sorted(seqs) for eid, seqs in by_execution.items()} == {f"c{i}": list(range(1, 51)) for i in range(4)}


async def test_publishes_pending_at_close_answer_broker_unavailable(make_broker: Callable[..., Any]) -> None:
    """Closing the broker with publishes queued: each caller gets a result or BrokerUnavailable, none hangs."""
    broker: RedisBroker = await make_broker()
    tasks = [asyncio.create_task(broker.publish(progress("closing"))) for _ in range(100)]
    await asyncio.sleep(0)
    await broker.close()
    async with asyncio.timeout(5):
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(not isinstance(o, BaseException) or isinstance(o, BrokerUnavailable) for o in outcomes), outcomes


async def test_a_stream_written_before_epochs_keeps_its_history_and_gets_an_epoch(
    make_broker: Callable[..., Any], redis_url: str
) -> None:
    """A meta hash with a seq but no epoch (v1 data) is adopted: history kept, seq goes on, one epoch from then on."""
    broker: RedisBroker = await make_broker()
    await broker.publish(progress("legacy"))
    await broker.publish(progress("legacy"))
    _, meta, _ = broker.keys("legacy")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        client.hdel(meta, "epoch")
    finally:
        client.close()
    assert (await broker.history("legacy", create=False)).epoch == ""  # a state read changes nothing
    page = await broker.history("legacy")
    assert [e.seq for e in page.events] == [1, 2] and page.epoch
    result = await broker.publish(progress("legacy"))
    assert (result.seq, result.epoch) == (3, page.epoch)


async def test_a_half_evicted_stream_starts_over_instead_of_failing(
    make_broker: Callable[..., Any], redis_url: str
) -> None:
    """Meta gone but the stream and keys left (eviction, or expiry reaping one key first): seq 1 in a new epoch."""
    broker: RedisBroker = await make_broker()
    old = await broker.publish(
        parse_draft("half", {"event": "progress", "data": {"progress": 1, "stage": "s"}, "idempotency_key": "k"})
    )
    await broker.publish(progress("half"))
    _, meta, _ = broker.keys("half")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        client.delete(meta)
    finally:
        client.close()
    again = await broker.publish(
        parse_draft("half", {"event": "progress", "data": {"progress": 1, "stage": "s"}, "idempotency_key": "k"})
    )
    assert (again.seq, again.duplicate) == (1, False) and again.epoch != old.epoch
    page = await broker.history("half")
    assert [e.seq for e in page.events] == [1] and page.epoch == again.epoch


async def test_a_new_instance_on_an_intact_redis_keeps_the_epoch(make_broker: Callable[..., Any]) -> None:
    """A relay restarted with Redis intact reads the same epoch: no reset for its subscribers."""
    first: RedisBroker = await make_broker()
    result = await first.publish(progress("kept"))
    await first.close()
    second: RedisBroker = await make_broker()
    page = await second.history("kept")
    assert (page.epoch, page.latest_seq) == (result.epoch, 1)


@contextlib.asynccontextmanager
async def private_broker(prefix: str) -> AsyncIterator[tuple[RedisServer, RedisBroker]]:
    """A started broker on a redis-server of its own (which the test may restart)."""
    server = RedisServer(redis_server_binary())
    server.start()
    broker = RedisBroker(server.url, 10, 300, prefix=prefix)
    broker.set_listener(lambda eid, event: None)
    await broker.start()
    try:
        yield server, broker
    finally:
        await broker.close()
        server.close()


async def test_a_history_read_after_a_redis_restart_finds_its_way_on_idle_pooled_connections() -> None:
    """Redis restarted under idle pooled connections: the next history reads succeed (a read is retried once)."""
    async with private_broker("stale") as (server, broker):
        await broker.publish(parse_draft("e1", {"event": "progress", "data": {"progress": 1, "stage": "s"}}))
        # Several connections in the pool, all idle, all to the server about to go away.
        pages = await asyncio.gather(*(broker.history("e1") for _ in range(6)))
        assert all(page.latest_seq == 1 for page in pages)
        server.stop()
        server.start()
        for _ in range(6):
            page = await broker.history("e1")  # nothing persisted: a new, empty stream
            assert page.latest_seq == 0


async def test_a_revocation_check_after_a_redis_restart_finds_its_way_on_idle_pooled_connections() -> None:
    """Redis restarted under idle pooled connections: the next token checks answer (a read is retried once)."""
    async with private_broker("stale-revocations") as (server, broker):
        await broker.revoke("sub", "u1", time.time(), time.time() + 60)
        # Several connections in the pool, all idle, all to the server about to go away.
        checks = await asyncio.gather(*(broker.is_revoked(None, "u1", None) for _ in range(6)))
        assert all(checks)
        server.stop()
        server.start()
        for _ in range(6):
            assert await broker.is_revoked("j1", "u1", None) is False  # nothing persisted


async def _until(condition: Callable[[], bool]) -> None:
    """Yield to the event loop until ``condition()`` holds (a guard, not a timing: 5 s at most)."""
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0)


def _publish_turn(broker: RedisBroker, execution_id: str, n: int) -> list[asyncio.Task[Any]]:
    """``n`` publishes started in one loop turn (so they form one pipeline)."""
    return [asyncio.create_task(broker.publish(progress(execution_id))) for _ in range(n)]


async def _two_pipelines_in_flight(
    broker: RedisBroker, execution_id: str, n: int
) -> tuple[list[asyncio.Task[Any]], list[asyncio.Task[Any]]]:
    """Two pipelines of ``n`` publishes each, both written to a paused Redis and unanswered."""
    first = _publish_turn(broker, execution_id, n)
    await _until(lambda: len(broker._lane.in_flight) == 1)
    second = _publish_turn(broker, execution_id, n)
    await _until(lambda: len(broker._lane.in_flight) == 2)
    return first, second


async def test_pipelines_in_flight_together_keep_order_and_answer_each_caller() -> None:
    """Two pipelines in flight on the lane (a third waits): seqs follow the send order, each caller gets its own."""
    async with private_broker("inflight") as (server, broker):
        admin = server.client()
        try:
            admin.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")  # replies wait until unpaused
            first, second = await _two_pipelines_in_flight(broker, "ordered", 3)
            third = _publish_turn(broker, "ordered", 3)
            await _until(lambda: len(broker._queued) == 3 and not broker._kicked)
            assert len(broker._lane.in_flight) == 2  # at most two in flight: the third waits its turn
            admin.execute_command("CLIENT", "UNPAUSE")
            results = await asyncio.gather(*first, *second, *third)
        finally:
            admin.close()
        assert [r.seq for r in results] == list(range(1, 10))
        page = await broker.history("ordered")
        assert [e.seq for e in page.events] == list(range(1, 10))


def publishes_timed() -> tuple[float, float]:
    """How many broker publishes the histogram holds so far, and their summed seconds."""
    metrics.flush()
    count = REGISTRY.get_sample_value("relay_broker_operation_duration_seconds_count", {"operation": "publish"})
    total = REGISTRY.get_sample_value("relay_broker_operation_duration_seconds_sum", {"operation": "publish"})
    return count or 0.0, total or 0.0


async def test_coalesced_publishes_are_timed_once_each_per_pipeline_round_trip() -> None:
    """Each publish of a pipeline is observed once, with the pipeline's time from its write to its replies."""
    async with private_broker("timed") as (server, broker):
        metrics.instrument_broker(broker)
        assert not hasattr(broker.publish, "_relay_timed")  # no timing coroutine around each call
        count, total = publishes_timed()
        admin = server.client()
        started = time.monotonic()
        try:
            admin.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")  # replies wait until unpaused
            first, second = await _two_pipelines_in_flight(broker, "timed", 3)
            admin.execute_command("CLIENT", "UNPAUSE")
            await asyncio.gather(*first, *second)
        finally:
            admin.close()
        elapsed = time.monotonic() - started
        after_count, after_total = publishes_timed()
        assert after_count - count == 6
        # Each of the six observations is its pipeline's time in flight: more than nothing, at most the whole test.
        assert 0 < after_total - total <= 6 * elapsed


async def test_a_connection_broken_with_two_pipelines_in_flight_fails_both_and_resends_nothing() -> None:
    """The lane's connection dies with two pipelines unanswered: all six callers get 503, nothing is sent again."""
    async with private_broker("inflight-broken") as (server, broker):
        admin = server.client()
        try:
            admin.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
            first, second = await _two_pipelines_in_flight(broker, "broken", 3)
            connection = broker._lane.connection
            assert connection is not None and connection._writer is not None
            host, port = connection._writer.get_extra_info("sockname")[:2]
            admin.execute_command("CLIENT", "KILL", "ADDR", f"{host}:{port}")  # its queued commands never run
            outcomes = await asyncio.gather(*first, *second, return_exceptions=True)
            admin.execute_command("CLIENT", "UNPAUSE")
        finally:
            admin.close()
        assert all(isinstance(o, BrokerUnavailable) for o in outcomes), outcomes
        assert (await broker.publish(progress("broken"))).seq == 1  # the lane reconnects; nothing was resent
        assert [e.seq for e in (await broker.history("broken")).events] == [1]


async def test_pipelines_in_flight_after_a_script_flush_are_reloaded_and_resent_in_order() -> None:
    """Redis lost the script under two pipelines in flight: both are answered NOSCRIPT, resent in order, none lost."""
    async with private_broker("inflight-noscript") as (server, broker):
        admin = server.client()
        try:
            await broker.publish(progress("reloaded"))  # seq 1, the script loaded
            admin.script_flush()
            admin.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
            first, second = await _two_pipelines_in_flight(broker, "reloaded", 3)
            admin.execute_command("CLIENT", "UNPAUSE")
            results = await asyncio.gather(*first, *second)
        finally:
            admin.close()
        assert [r.seq for r in results] == list(range(2, 8))
        assert [e.seq for e in (await broker.history("reloaded")).events] == list(range(1, 8))


async def test_closing_with_two_pipelines_in_flight_answers_every_caller_broker_unavailable() -> None:
    """close() with two pipelines unanswered and more queued: every caller gets BrokerUnavailable, none hangs."""
    async with private_broker("inflight-close") as (server, broker):
        admin = server.client()
        try:
            admin.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
            first, second = await _two_pipelines_in_flight(broker, "closing", 2)
            queued = _publish_turn(broker, "closing", 2)
            await broker.close()
            outcomes = await asyncio.gather(*first, *second, *queued, return_exceptions=True)
            admin.execute_command("CLIENT", "UNPAUSE")
        finally:
            admin.close()
        assert len(outcomes) == 6 and all(isinstance(o, BrokerUnavailable) for o in outcomes), outcomes


async def test_packed_names_stay_bounded_and_each_publish_lands_in_its_own_execution(
    make_broker: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the kept count the packed keys are dropped and packed again: every event still lands in its own stream."""
    import service.brokers.redis as redis_module

    monkeypatch.setattr(redis_module, "_NAMES_KEPT", 2)
    broker: RedisBroker = await make_broker()
    for execution_id in ("n1", "n2", "n3", "n1", "n3"):
        await broker.publish(progress(execution_id))
        assert len(broker._packed_names) <= 2
    latest = {eid: (await broker.history(eid, create=False)).latest_seq for eid in ("n1", "n2", "n3")}
    assert latest == {"n1": 2, "n2": 1, "n3": 2}


async def test_a_pipeline_that_cannot_be_written_answers_503_and_the_one_in_flight_still_completes() -> None:
    """The lane's transport refuses a second pipeline: its callers get 503 at once; the first is answered."""
    async with private_broker("inflight-write") as (server, broker):
        admin = server.client()
        try:
            admin.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
            first = _publish_turn(broker, "refused", 2)
            await _until(lambda: len(broker._lane.in_flight) == 1)
            connection = broker._lane.connection
            assert connection is not None and connection._writer is not None
            writer = connection._writer

            def closed(data: bytes) -> None:
                raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")

            writer.write = closed  # type: ignore[method-assign]  # as uvloop does on a closed transport
            async with asyncio.timeout(5):  # a guard: without the answer, the callers would wait forever
                refused = await asyncio.gather(*_publish_turn(broker, "refused", 2), return_exceptions=True)
            del writer.write  # the transport's own write again
            admin.execute_command("CLIENT", "UNPAUSE")
            results = await asyncio.gather(*first)
        finally:
            admin.close()
        assert all(isinstance(o, BrokerUnavailable) for o in refused), refused
        assert [r.seq for r in results] == [1, 2]


async def test_a_silent_redis_fails_every_pipeline_in_flight_after_the_command_timeout() -> None:
    """Replies that never come: after command_timeout all pipelines in flight answer 503; the lane recovers."""
    server = RedisServer(redis_server_binary())
    server.start()
    broker = RedisBroker(server.url, 10, 300, prefix="inflight-silent", command_timeout=0.2)
    broker.set_listener(lambda eid, event: None)
    await broker.start()
    admin = server.client()
    try:
        admin.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")  # Redis holds every script call
        first, second = await _two_pipelines_in_flight(broker, "silent", 2)
        outcomes = await asyncio.gather(*first, *second, return_exceptions=True)
        admin.execute_command("CLIENT", "UNPAUSE")
        assert all(isinstance(o, BrokerUnavailable) and "in time" in str(o) for o in outcomes), outcomes
        assert not broker._lane.in_flight
        await broker.publish(progress("silent-after"))  # a fresh connection takes the next pipeline
    finally:
        admin.close()
        await broker.close()
        server.close()


async def test_a_stray_reply_on_the_idle_lane_is_never_taken_for_a_publish(make_broker: Callable[..., Any]) -> None:
    """A reply nobody asked for arrives on the idle lane: the next publish takes a fresh connection, not that reply."""
    broker = await make_broker()
    assert (await broker.publish(progress("stray"))).seq == 1
    connection, feed = broker._lane.connection, broker._lane.feed
    assert connection is not None and connection._writer is not None and feed is not None
    connection._writer.write(b"*2\r\n$4\r\nECHO\r\n$5\r\nstray\r\n")  # its reply is parsed as it arrives
    await _until(lambda: bool(feed.replies))
    async with asyncio.timeout(10):  # taken for the publish's, the stray reply leaves the real one unmatched
        result = await broker.publish(progress("stray"))
    assert result.seq == 2 and not result.duplicate
    assert broker._lane.feed is not feed  # connected again


async def test_live_events_reach_the_listener_in_order_from_the_pubsub_connection(
    make_broker: Callable[..., Any],
) -> None:
    """Events published by another instance reach this one's listener in seq order, each once."""
    receiver = await make_broker()
    seen: list[int] = []
    receiver.set_listener(lambda eid, event: seen.append(event.seq))
    await receiver.subscribe("ordered-live")
    sender = await make_broker()
    results = await asyncio.gather(*[sender.publish(progress("ordered-live")) for _ in range(20)])
    assert sorted(r.seq for r in results) == list(range(1, 21))
    await _until(lambda: len(seen) == 20)
    assert seen == list(range(1, 21))
