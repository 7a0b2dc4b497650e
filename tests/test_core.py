"""The core without sockets: event model, subscriptions, hub, publisher keys, tokens."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime

import jwt
import pytest

from auth import Claims, PublisherKeys, TokenExpired, TokenForbidden, TokenInvalid, TokenMinter, TokenVerifier
from service.brokers.memory import MemoryBroker
from service.closecodes import Disconnect
from service.cursor import Cursor
from service.errors import ExecutionFinished, ValidationFailed
from service.events import MAX_STAGE, Event, EventDraft, parse_draft
from service.hub import Hub
from service.relay import Relay
from service.subscription import Subscription
from tests.conftest import SECRET, counted, make_settings, make_token


class ListSink:
    """A sink that records frames; can be made to stall."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.closed: tuple[int, str] | None = None
        self.gate = asyncio.Event()
        self.gate.set()

    async def send(self, frame: str) -> None:
        await self.gate.wait()
        self.frames.append(frame)

    def close_now(self, disconnect: Disconnect) -> None:
        self.closed = (int(disconnect.code), disconnect.reason)

    def seqs(self) -> list[int]:
        return [json.loads(f)["seq"] for f in self.frames if '"seq"' in f]


def progress(eid: str, n: int, **extra: object) -> EventDraft:
    """A progress draft."""
    return parse_draft(eid, {"event": "progress", "data": {"progress": n % 101, "stage": "s"}, **extra})


async def settle() -> None:
    """Let the writer tasks run."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_frame_is_encoded_once_with_seq_in_place() -> None:
    """A draft's frame is the contract's event object with the seq filled in, Chinese kept as UTF-8."""
    draft = parse_draft(
        "exec-001",
        {
            "event": "progress",
            "timestamp": "2026-02-27T21:30:00Z",
            "data": {"progress": 50, "stage": "ai_fetching", "status_text": "查询中"},
        },
    )
    event = draft.with_seq(7, "e1")
    assert json.loads(event.frame) == {
        "type": "diagnosis_update",
        "execution_id": "exec-001",
        "seq": 7,
        "timestamp": "2026-02-27T21:30:00Z",
        "event": "progress",
        "data": {"progress": 50, "stage": "ai_fetching", "status_text": "查询中"},
    }
    assert "查询中" in event.frame and not event.terminal


def test_frame_without_a_timestamp_gets_the_time_of_acceptance() -> None:
    """A draft without ``timestamp`` gets the UTC time of acceptance in ms as valid JSON; ids keep their punctuation."""
    before = time.time()
    frame = json.loads(parse_draft("a:b.c-d_E9", {"event": "complete"}).with_seq(1, "e1").frame)
    after = time.time()
    stamp = frame["timestamp"]
    assert frame["execution_id"] == "a:b.c-d_E9"
    assert len(stamp) == 24 and stamp.endswith("Z")
    accepted = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    assert int(before * 1000) / 1000 <= accepted <= after


@pytest.mark.parametrize(
    ("body", "terminal"),
    [
        ({"event": "complete"}, True),
        ({"event": "error", "data": {"error": "x"}}, True),
        ({"event": "error", "data": {"error": "x", "recoverable": True}}, False),
        ({"event": "error", "data": {"error": "x", "recoverable": False}}, True),
        ({"event": "result", "data": {}}, False),
    ],
)
def test_terminal_events(body: dict[str, object], terminal: bool) -> None:
    """``complete`` and non-recoverable errors are terminal; nothing else is."""
    assert parse_draft("e", body).terminal is terminal


def test_validation_collects_every_failing_field() -> None:
    """All failing fields are reported at once, not only the first."""
    with pytest.raises(ValidationFailed) as exc:
        parse_draft("bad id!", {"event": "progress", "data": {"progress": "x"}, "extra": 1})
    assert {f["field"] for f in exc.value.fields} == {"execution_id", "extra", "data.progress", "data.stage"}


async def test_memory_broker_assigns_seq_and_refuses_after_terminal() -> None:
    """Seqs are 1..n per execution; after a terminal event, publish raises ExecutionFinished."""
    broker = MemoryBroker(history_size=10, history_ttl=60)
    seen: list[tuple[str, int]] = []
    broker.set_listener(lambda eid, ev: seen.append((eid, ev.seq)))
    assert (await broker.publish(progress("a", 1))).seq == 1
    assert (await broker.publish(progress("b", 1))).seq == 1
    assert (await broker.publish(progress("a", 2))).seq == 2
    await broker.publish(parse_draft("a", {"event": "complete"}))
    with pytest.raises(ExecutionFinished):
        await broker.publish(progress("a", 3))
    assert seen == [("a", 1), ("b", 1), ("a", 2), ("a", 3)]


async def test_memory_broker_accepts_the_event_draft_with_seq_makes() -> None:
    """The memory broker builds its event inline: the one EventDraft.with_seq makes, with the stream's time."""
    broker = MemoryBroker(history_size=10, history_ttl=60)
    seen: list[Event] = []
    broker.set_listener(lambda eid, ev: seen.append(ev))
    for draft in (progress("w", 1), parse_draft("w", {"event": "complete"})):
        before = time.time()
        result = await broker.publish(draft)
        made = draft.with_seq(result.seq, result.epoch)
        assert result.event is seen[-1] and result.event == made  # seq, type, terminal, frame, epoch
        assert before <= result.event.accepted_at <= time.time()
        page = await broker.history("w", result.seq - 1)
        assert page.events == [made] and page.updated_at == result.event.accepted_at
        assert page.terminal is draft.terminal


async def test_memory_broker_bounds_history_and_expires_it() -> None:
    """History keeps the newest RELAY_HISTORY_SIZE events and is forgotten after the TTL."""
    broker = MemoryBroker(history_size=3, history_ttl=1)
    for i in range(5):
        await broker.publish(progress("a", i))
    page = await broker.history("a")
    assert [e.seq for e in page.events] == [3, 4, 5] and page.first_seq == 3 and page.gap_after(0)
    assert [e.seq for e in (await broker.history("a", after=3, limit=1)).events] == [4]
    assert not page.gap_after(2)
    broker._logs["a"].touched -= 5  # as if the last event were 5 s old
    assert not (await broker.history("a")).exists
    assert (await broker.publish(progress("a", 0))).seq == 1  # a new history starts


async def relay_with(**env: str) -> Relay:
    """A relay on the memory broker."""
    relay = Relay(make_settings(**env))
    await relay.start()
    return relay


class Core:
    """A memory broker, its hub and subscriptions on them: the delivery core without a relay."""

    def __init__(self, queue_size: int = 256) -> None:
        self.broker = MemoryBroker(history_size=1000, history_ttl=3600)
        self.hub = Hub(self.broker)
        self.broker.set_listener(self.hub.dispatch, self.hub.resync)
        self.queue_size = queue_size

    def subscription(self, cursor: int, sink: ListSink) -> Subscription:
        """A subscription of execution ``e`` after ``cursor`` (a v1 cursor)."""
        return Subscription(self.hub, self.broker, "e", Cursor(cursor), sink, self.queue_size)

    async def publish(self, draft: EventDraft) -> None:
        """Publish through the broker (the listener is the hub)."""
        await self.broker.publish(draft)


async def test_hub_registers_at_once_when_the_broker_needs_no_subscribe() -> None:
    """With the memory broker, a new execution's first subscriber is live without a task or a turn of the loop."""
    core = Core()
    sink = ListSink()
    sub = core.subscription(0, sink)
    turned: list[bool] = []
    asyncio.get_running_loop().call_soon(turned.append, True)
    await core.hub.add("e", sub)
    assert turned == [] and core.hub.executions == 1
    core.hub.remove("e", sub)
    assert core.hub.executions == 0
    await core.hub.close()  # nothing pending
    assert turned == []


async def test_subscription_merges_replay_and_buffered_live_events_without_duplicates() -> None:
    """Events published between registering and reading history are delivered once, in order."""
    core = Core()
    for i in range(3):
        await core.publish(progress("e", i))
    sink = ListSink()
    sub = core.subscription(1, sink)
    page = await sub.open()
    # Published after history was read but before going live: buffered, and seq 3 is in both.
    await core.publish(progress("e", 3))
    sub.offer(page.events[-1])  # a duplicate delivery of seq 3 must be ignored
    sub.start('{"type":"connected"}')
    await core.publish(progress("e", 4))
    await settle()
    assert sink.frames[0] == '{"type":"connected"}'
    assert sink.seqs() == [2, 3, 4, 5]


async def test_subscription_rereads_history_on_a_seq_hole() -> None:
    """A live event that skips seqs makes the subscription re-read history instead of losing events."""
    core = Core()
    sink = ListSink()
    sub = core.subscription(0, sink)
    await sub.open()
    sub.start()
    core.hub.remove("e", sub)  # simulate a lost live channel: publishes do not reach it
    for i in range(3):
        await core.publish(progress("e", i))
    await core.hub.add("e", sub)
    await core.publish(progress("e", 3))  # seq 4 arrives live; 1..3 were missed
    await settle()
    assert sink.seqs() == [1, 2, 3, 4]


async def test_resync_recovers_events_missed_without_a_later_event() -> None:
    """After resync (a broker reconnected), a subscription fetches what it missed, terminal included."""
    core = Core()
    sink = ListSink()
    sub = core.subscription(0, sink)
    await sub.open()
    sub.start()
    core.hub.remove("e", sub)
    await core.publish(progress("e", 1))
    await core.publish(parse_draft("e", {"event": "complete"}))
    await core.hub.add("e", sub)
    core.hub.resync()
    await settle()
    assert sink.seqs() == [1, 2]
    assert sink.closed == (1000, "execution finished")


async def test_a_resync_that_finds_a_new_epoch_closes_4009() -> None:
    """The stream was lost while the live channel was down: the re-read sees another epoch and closes 4009."""
    core = Core()
    sink = ListSink()
    sub = core.subscription(0, sink)
    await sub.open()
    sub.start()
    await core.publish(progress("e", 1))
    core.broker._logs["e"].touched -= 7200  # the stream expires ...
    await core.publish(progress("e", 2))  # ... and comes back in a new epoch, while this subscriber is not told
    core.hub.resync()
    await settle()
    assert sink.closed == (4009, "stream reset") and sub.close_code == 4009


async def test_overflowing_queue_closes_only_that_subscriber_with_4008() -> None:
    """A stalled sink overflows its bounded queue and is closed with 4008; another keeps receiving."""
    relay = await relay_with(RELAY_SEND_QUEUE_SIZE="4")
    closes = counted("slow_consumer_closes")
    stalled, healthy = ListSink(), ListSink()
    stalled.gate.clear()
    for sink in (stalled, healthy):
        sub = await relay.open_stream("e", Cursor(), sink, claims_for("e"))
        sub.start()
    for i in range(10):
        await relay.publish(progress("e", i))
        await settle()
    assert stalled.closed == (4008, "slow consumer")
    assert healthy.closed is None and healthy.seqs() == list(range(1, 11))
    assert relay.connections == 1
    assert counted("slow_consumer_closes") == closes + 1
    await relay.close()


class RoomSink(ListSink):
    """A socket that takes a frame at once while its buffer has room (try_write); else the frame waits for send()."""

    def __init__(self) -> None:
        super().__init__()
        self.room = True

    def try_write(self, frame: str) -> bool:
        if self.room:
            self.frames.append(frame)
        return self.room


async def test_frames_written_at_once_or_held_arrive_in_order_and_the_stream_finishes() -> None:
    """Events go into the socket at once while it has room, wait while it is full; the terminal event ends it (1000)."""
    relay = await relay_with(RELAY_SEND_QUEUE_SIZE="4")
    sink = RoomSink()
    sub = await relay.open_stream("e", Cursor(), sink, claims_for("e"))
    sub.start()
    await relay.publish(progress("e", 1))
    assert sink.seqs() == [1]  # written during the publish itself
    sink.room = False
    sink.gate.clear()
    for i in (2, 3, 4):
        await relay.publish(progress("e", i))
        await settle()
    assert sink.seqs() == [1] and sink.closed is None  # three wait, under the bound of four
    sink.room = True
    sink.gate.set()
    await settle()
    assert sink.seqs() == [1, 2, 3, 4]
    await relay.publish(progress("e", 5))
    assert sink.seqs() == [1, 2, 3, 4, 5] and sub.sent == 5
    await relay.publish(parse_draft("e", {"event": "complete"}))
    await settle()
    assert sink.seqs() == [1, 2, 3, 4, 5, 6] and sink.closed == (1000, "execution finished")
    full = RoomSink()  # held frames count against the bound like queued ones: the fifth waiting closes 4008
    full.room = False
    full.gate.clear()
    sub = await relay.open_stream("f", Cursor(), full, claims_for("f"))
    sub.start()
    for i in range(1, 5):
        await relay.publish(progress("f", i))
    assert full.closed is None
    await relay.publish(progress("f", 5))
    assert full.closed == (4008, "slow consumer")
    await relay.close()


async def test_long_poll_wakes_on_publish_and_times_out_empty() -> None:
    """Poll returns as soon as an event is published, or an empty page at the timeout."""
    relay = await relay_with()
    waiter = asyncio.create_task(relay.poll("e", Cursor(0), wait=10))
    await settle()
    assert not waiter.done()
    await relay.publish(progress("e", 1))
    page, _ = await asyncio.wait_for(waiter, 1)
    assert [e.seq for e in page.events] == [1]
    empty, _ = await relay.poll("e", Cursor(1), wait=0.05)
    assert empty.events == [] and empty.latest_seq == 1
    assert relay.executions == 0  # waiters unregister
    await relay.close()


def claims_for(execution_id: str) -> Claims:
    """Claims of a valid token for ``execution_id``."""
    return TokenVerifier("HS256", [("", SECRET)], "progress-relay").verify(make_token(execution_id), execution_id)


def test_publisher_keys_compare_every_key() -> None:
    """Any configured key matches; near misses, empty and None do not."""
    keys = PublisherKeys(["alpha-key", "beta-key"])
    assert keys.check("alpha-key") and keys.check("beta-key")
    assert not keys.check("alpha-ke") and not keys.check("") and not keys.check(None)


def test_publisher_keys_compare_every_key_even_after_a_match(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first key matching still has the second compared: timing does not say which key matched."""
    import hmac

    compared: list[bytes] = []
    real = hmac.compare_digest

    def counted_compare(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    keys = PublisherKeys(["alpha-key", "beta-key"])
    monkeypatch.setattr(hmac, "compare_digest", counted_compare)
    assert keys.check("alpha-key")
    assert compared == [b"alpha-key", b"beta-key"]


def test_verifier_outcomes() -> None:
    """The verifier returns claims, or the error class that maps to each close code."""
    v = TokenVerifier("HS256", [("default", SECRET)], "progress-relay", leeway=5)
    claims = v.verify(make_token("e1", sub="u"), "e1")
    assert claims.execution_id == "e1" and claims.sub == "u"
    with pytest.raises(TokenForbidden):
        v.verify(make_token("e1"), "e2")
    with pytest.raises(TokenExpired):
        v.verify(make_token(ttl=-30))
    v.verify(make_token(ttl=-3))  # within the leeway
    with pytest.raises(TokenInvalid) as exc:
        v.verify(make_token(algorithm="HS512", secret=SECRET))
    assert exc.value.reason == "algorithm"
    with pytest.raises(TokenInvalid) as exc:
        v.verify("e" * 8193)
    assert exc.value.reason == "too_large"
    token = make_token(headers={"jku": "https://evil.example/jwks", "x5u": "https://evil.example/cert"})
    assert v.verify(token).sub == "user-1"  # such headers are ignored, never fetched


def test_verifier_refuses_bad_configuration() -> None:
    """Unknown algorithms (none included), empty key sets and leeway above 30 s are refused."""
    with pytest.raises(ValueError):
        TokenVerifier("none", [("k", "s")], "a")
    with pytest.raises(ValueError):
        TokenVerifier("HS256", [], "a")
    with pytest.raises(ValueError):
        TokenVerifier("HS256", [("k", "s")], "a", leeway=31)


def test_minted_tokens_verify_and_carry_kid() -> None:
    """Minted tokens name their kid and pass the verifier for the same key set."""
    minter = TokenMinter("HS256", "k2", SECRET, "progress-relay", issuer="backend")
    token, exp = minter.mint("e1", "u1", ttl=60)
    assert jwt.get_unverified_header(token)["kid"] == "k2"
    assert abs(exp - time.time() - 60) < 5
    v = TokenVerifier("HS256", [("k1", "other" * 8), ("k2", SECRET)], "progress-relay", issuer="backend")
    assert v.verify(token, "e1").sub == "u1"


def test_the_configured_secret_is_checked_once_not_at_every_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyJWT's check that an HMAC secret is no PEM/SSH/DER/JWK key runs when the verifier is made, not per token."""
    tokens = [make_token(f"e{n}") for n in range(3)]
    forged = make_token("e1", secret="wrong-secret-0123456789abcdefghijklmnop")
    checked: list[object] = []  # keys PyJWT checked (signing the tokens above checked theirs)
    real = jwt.algorithms.HMACAlgorithm.prepare_key

    def spy(self: jwt.algorithms.HMACAlgorithm, key: str | bytes) -> bytes:
        checked.append(key)
        return real(self, key)

    monkeypatch.setattr(jwt.algorithms.HMACAlgorithm, "prepare_key", spy)
    v = TokenVerifier("HS256", [("k1", SECRET), ("k2", "other" * 8)], "progress-relay")
    assert sorted(map(str, checked)) == sorted(["other" * 8, SECRET])
    for n, token in enumerate(tokens):
        assert v.verify(token, f"e{n}").execution_id == f"e{n}"
    assert len(checked) == 2
    with pytest.raises(TokenInvalid) as exc:  # a token signed with another key still fails
        v.verify(forged, "e1")
    assert exc.value.reason == "signature"


def test_pyjwt_internals_keep_their_shape() -> None:
    """The verifier gives a PyJWT of its own an algorithm through its private ``_jws`` (auth/tokens.py)."""
    decoder = jwt.PyJWT()
    assert isinstance(decoder._jws, jwt.PyJWS)
    assert "HS256" in decoder._jws.get_algorithms()


def test_verified_tokens_are_cached_but_still_expire_and_stay_scoped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A token verified once skips the signature check next time, yet still expires and opens only its execution."""
    v = TokenVerifier("HS256", [("default", SECRET)], "progress-relay", leeway=0)
    token = make_token("e1", ttl=60)
    assert v.verify(token, "e1").execution_id == "e1"
    calls = 0
    real = v._decode

    def counting(*args: object) -> object:
        nonlocal calls
        calls += 1
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(v, "_decode", counting)
    assert v.verify(token, "e1").sub == "user-1"
    assert calls == 0  # served from the cache
    with pytest.raises(TokenForbidden):
        v.verify(token, "e2")
    with pytest.raises(TokenInvalid):
        v.verify(token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1], "e1")  # tampered: not cached
    monkeypatch.setattr(time, "time", lambda: 10**10)
    with pytest.raises(TokenExpired):
        v.verify(token, "e1")


class _Text(str):
    """A str subclass (ujson never makes one; isinstance accepts it, the fast check does not)."""


class _Object(dict):  # type: ignore[type-arg]
    """A dict subclass (ujson never makes one): parse_draft's shortcut to the progress check passes it by."""


@pytest.mark.parametrize("through", [dict, _Object], ids=["parse_draft's shortcut", "_check_data"])
@pytest.mark.parametrize(
    ("data", "problems"),
    [
        ({"progress": 0, "stage": "s"}, set()),
        ({"progress": 100, "stage": "s" * MAX_STAGE, "status": "", "status_text": "排队中"}, set()),
        ({"progress": 42, "stage": _Text("s"), "status": _Text("x")}, set()),  # the field-by-field path accepts
        ({"progress": 101, "stage": "s"}, {"data.progress"}),
        ({"progress": -1, "stage": "s"}, {"data.progress"}),
        ({"progress": True, "stage": "s"}, {"data.progress"}),
        ({"progress": 1.0, "stage": "s"}, {"data.progress"}),
        ({"progress": 1, "stage": ""}, {"data.stage"}),
        ({"progress": 1, "stage": "s" * (MAX_STAGE + 1)}, {"data.stage"}),
        ({"progress": 1, "stage": "s", "status": None}, {"data.status"}),
        ({"progress": 1, "stage": "s", "status_text": 3}, {"data.status_text"}),
        (
            {"stage": None, "status": [], "status_text": {}},
            {"data.progress", "data.stage", "data.status", "data.status_text"},
        ),
    ],
)
def test_progress_data_is_checked_field_by_field_whatever_path_it_takes(
    data: dict[str, object], problems: set[str], through: type[dict[str, object]]
) -> None:
    """The one-expression check of the usual progress event accepts nothing the field-by-field check refuses.

    The same answers whether parse_draft goes straight to the progress check or through ``_check_data``.
    """
    body = {"event": "progress", "data": through(data)}
    if not problems:
        assert parse_draft("exec-1", body).event == "progress"
        return
    with pytest.raises(ValidationFailed) as refused:
        parse_draft("exec-1", body)
    assert {e["field"] for e in refused.value.fields} == problems


def test_progress_data_that_is_no_object_is_named() -> None:
    """A progress event whose data is not a JSON object is refused naming ``data``, as every other event."""
    for data in ([1], "x", None, 3):
        with pytest.raises(ValidationFailed) as refused:
            parse_draft("exec-1", {"event": "progress", "data": data})
        assert [e["field"] for e in refused.value.fields] == ["data"]
    with pytest.raises(ValidationFailed) as refused:
        parse_draft("exec-1", {"event": "progress"})
    assert [e["field"] for e in refused.value.fields] == ["data"]
