"""/metrics: a known workload against a real server, then the counters checked against it.

The metrics of one process are global (prometheus' model), and other tests
in this process move them too, so workload tests compare two scrapes and
check the differences.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed

from service import metrics
from service.brokers.memory import MemoryBroker
from service.closecodes import Disconnect
from service.cursor import Cursor
from service.events import Event
from service.hub import Hub
from service.metrics import _Buckets
from service.subscription import Subscription
from tests.conftest import Server, counted, make_settings, make_token, recv_json, recv_until_closed

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "k8s" / "grafana-dashboard.json"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, keyed by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent: a labelled child not created yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(server: Server) -> Samples:
    """GET /metrics from ``server``, parsed."""
    r = await server.http.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


async def eventually(check: Callable[[], Any], timeout: float = 5.0) -> None:
    """Retry the async ``check`` until it stops raising AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


# -- the counting machinery --------------------------------------------------------------


def test_bulk_histogram_matches_prometheus_observe() -> None:
    """Observations added in bulk export exactly what one observe() per value exports."""
    values = [0.0, 0.0004, 0.0005, 0.0007, 0.003, 0.02, 0.5, 0.75, 4.0, 99.0, 1e-9]
    buckets = (0.0005, 0.001, 0.01, 0.5, 1.0)
    reference_registry, bulk_registry = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("h_seconds", "h", ["op"], buckets=buckets, registry=reference_registry)
    bulk = Histogram("h_seconds", "h", ["op"], buckets=buckets, registry=bulk_registry)
    pending = _Buckets(bulk, buckets)
    for v in values:
        reference.labels("x").observe(v)
        pending.observe(v, ("x",))
    pending.flush()
    pending.flush()  # a second flush adds nothing
    assert parse(generate_latest(bulk_registry).decode()) == parse(generate_latest(reference_registry).decode())


def test_allowlist_matches_addresses_and_networks() -> None:
    """An empty allowlist admits everyone; otherwise only listed addresses and networks (IPv4-mapped too)."""
    assert metrics.address_allowed("203.0.113.9", ())
    allow = metrics.parse_allowlist(["127.0.0.1", "10.0.0.0/8", "fd00::/8"])
    assert metrics.address_allowed("127.0.0.1", allow)
    assert metrics.address_allowed("10.42.3.7", allow)
    assert metrics.address_allowed("::ffff:10.1.2.3", allow)
    assert metrics.address_allowed("fd00::1", allow)
    assert not metrics.address_allowed("192.168.1.1", allow)
    assert not metrics.address_allowed("not-an-ip", allow)
    with pytest.raises(ValueError):
        metrics.parse_allowlist(["10.0.0.0/33"])


def test_allowlist_setting_is_validated() -> None:
    """A RELAY_METRICS_ALLOWLIST item that is no address stops the start with a sentence naming it."""
    from service.config import ConfigError

    with pytest.raises(ConfigError, match="RELAY_METRICS_ALLOWLIST"):
        make_settings(RELAY_METRICS_ALLOWLIST="10.0.0.0/8,prometheus")
    assert make_settings(RELAY_METRICS_ALLOWLIST="10.0.0.0/8, ::1").metrics_allowlist == ("10.0.0.0/8", "::1")


# -- a real server ------------------------------------------------------------------------


async def test_metrics_answer_prometheus_text(start_server: Callable[..., Any]) -> None:
    """/metrics answers the Prometheus text format with every relay metric family declared."""
    server = await start_server()
    r = await server.http.get("/metrics")
    assert r.status_code == 200
    families = {f.name for f in text_string_to_metric_families(r.text)}
    declared = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in metrics.METRIC_NAMES}
    assert declared <= families, declared - families


async def test_metrics_allowlist_refuses_other_peers(start_server: Callable[..., Any]) -> None:
    """With RELAY_METRICS_ALLOWLIST set, a peer outside it gets 403 and one inside it the metrics."""
    outside = await start_server(RELAY_METRICS_ALLOWLIST="10.0.0.0/8")
    r = await outside.http.get("/metrics")
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    inside = await start_server(RELAY_METRICS_ALLOWLIST="10.0.0.0/8,127.0.0.0/8")
    assert (await inside.http.get("/metrics")).status_code == 200


def test_published_single_exports_what_published_and_observe_publish_do() -> None:
    """The publish path's one call counts and times exactly like the two calls it stands for."""

    def publish_figures() -> Samples:
        return {
            key: v
            for key, v in parse(metrics.render().decode()).items()
            if key[0].startswith(("relay_events_", "relay_publish_duration_seconds"))
        }

    def delta(after: Samples, before: Samples) -> Samples:
        return {key: v - before.get(key, 0.0) for key, v in after.items() if v != before.get(key, 0.0)}

    cases = [("progress", False, 0.0003), ("complete", False, 0.02), ("result", True, 0.5), ("error", False, 7.0)]
    start = publish_figures()
    for event, duplicate, seconds in cases:
        metrics.published(event, duplicate)
        metrics.observe_publish(seconds, "single")
    middle = publish_figures()
    for event, duplicate, seconds in cases:
        metrics.published_single(event, duplicate, seconds)
    end = publish_figures()
    assert delta(end, middle) == delta(middle, start)
    assert delta(middle, start)[("relay_publish_duration_seconds_count", frozenset({("mode", "single")}))] == 4
    for event, duplicate, seconds in cases:  # both ways between two flushes: added up
        metrics.published(event, duplicate)
        metrics.observe_publish(seconds, "single")
        metrics.published_single(event, duplicate, seconds)
    both = publish_figures()
    assert delta(both, end) == {key: 2 * v for key, v in delta(middle, start).items()}


async def test_known_workload_is_counted(start_server: Callable[..., Any]) -> None:
    """Publishes, deliveries, replays, refusals and closes of a known workload show up exactly in /metrics."""
    server = await start_server()
    before = await scrape(server)
    eid = "metrics-exec-1"

    # Two live subscribers, then 5 progress events, a duplicate and a result.
    live = [await server.connect(eid), await server.connect(eid)]
    for ws in live:
        assert (await recv_json(ws))["type"] == "connected"
    mid = await scrape(server)
    assert value(mid, "relay_connections_open", transport="ws") == 2
    assert value(mid, "relay_executions_subscribed") >= 1
    for i in range(5):
        assert (await server.publish(eid, data={"progress": i * 10, "stage": "s"})).status_code == 202
    first = await server.publish(eid, "result", data={"part": 1}, idempotency_key="k1")
    again = await server.publish(eid, "result", data={"part": 1}, idempotency_key="k1")
    assert first.status_code == again.status_code == 202 and again.json()["duplicate"] is True
    for ws in live:
        assert [(await recv_json(ws))["seq"] for _ in range(6)] == [1, 2, 3, 4, 5, 6]

    # A late subscriber resuming from seq 2 gets 4 events replayed.
    late = await server.connect(eid, last_seq=2)
    assert (await recv_json(late))["resumed"] is True
    assert [(await recv_json(late))["seq"] for _ in range(4)] == [3, 4, 5, 6]

    # The terminal event ends all three streams with 1000; a publish after it is refused.
    assert (await server.publish(eid, "complete", data={})).status_code == 202
    for ws in [*live, late]:
        frames = await recv_until_closed(ws)
        assert frames[-1]["event"] == "complete"
        assert ws.close_code == 1000
    assert (await server.publish(eid, data={"progress": 99, "stage": "s"})).status_code == 409

    # Refused credentials, each for a known reason.
    refusals = {
        "expired": make_token(eid, ttl=-60),
        "signature": make_token(eid, secret="another-secret-0123456789-abcdefghijk"),
        "other_execution": make_token("someone-else"),
        "malformed": "not-a-jwt",
    }
    for token in refusals.values():
        ws = await server.connect(eid, token=token)
        with pytest.raises(ConnectionClosed):
            await recv_json(ws)
    bad_key = await server.publish(eid, key="not-the-publisher-key-0123456789-abcdef")
    assert bad_key.status_code == 401

    async def counted() -> None:
        after = await scrape(server)

        def delta(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert delta("relay_events_accepted_total", event="progress") == 5
        assert delta("relay_events_accepted_total", event="result") == 1
        assert delta("relay_events_accepted_total", event="complete") == 1
        assert delta("relay_events_duplicate_total") == 1
        assert delta("relay_publish_rejected_total", error="execution_finished") == 1
        # 7 events to each live socket, 4 replayed + 1 live to the late one.
        assert delta("relay_frames_delivered_total") == 2 * 7 + 5
        assert delta("relay_replays_total") == 1
        assert delta("relay_replayed_events_total") == 4
        # Replayed frames have no accept-to-socket latency; the 15 live ones do.
        assert delta("relay_delivery_latency_seconds_count") == 2 * 7 + 1
        assert delta("relay_delivery_failures_total") == 0
        assert delta("relay_slow_consumer_closes_total") == 0
        for reason in refusals:
            assert delta("relay_auth_failures_total", reason=reason) == 1, reason
        assert delta("relay_auth_failures_total", reason="publisher_key") == 1
        assert delta("relay_ws_closes_total", code="1000", initiator="server") == 3
        assert delta("relay_ws_closes_total", code="4001", initiator="server") == 1
        assert delta("relay_ws_closes_total", code="4500", initiator="server") == 2
        assert delta("relay_ws_closes_total", code="4503", initiator="server") == 1
        # 9 publish calls reached the relay (the 401 did not).
        assert delta("relay_publish_duration_seconds_count", mode="single") == 9
        # The memory broker's operations are not timed (they are dictionary lookups); Redis's are.
        assert delta("relay_broker_operation_duration_seconds_count", operation="publish") == 0
        assert value(after, "relay_connections_open", transport="ws") == 0
        assert value(after, "relay_draining") == 0

    await eventually(counted)


async def test_batch_publish_is_counted_per_event(start_server: Callable[..., Any]) -> None:
    """A batch counts each accepted event by type, each refused item by error, and one batch latency."""
    server = await start_server()
    before = await scrape(server)
    events = [
        {"execution_id": "mb-1", "event": "progress", "data": {"progress": 1, "stage": "a"}},
        {"execution_id": "mb-1", "event": "complete", "data": {}},
        {"execution_id": "mb-1", "event": "progress", "data": {"progress": 2, "stage": "b"}},
        {"execution_id": "mb-2", "event": "error", "data": {"error": "boom"}},
    ]
    r = await server.http.post(
        "/internal/v1/events",
        json={"events": events},
        headers={"Authorization": f"Bearer {server.relay.settings.publish_keys[0]}"},
    )
    assert [item["status"] for item in r.json()["results"]] == [202, 202, 409, 202]
    after = await scrape(server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("relay_events_accepted_total", event="progress") == 1
    assert delta("relay_events_accepted_total", event="complete") == 1
    assert delta("relay_events_accepted_total", event="error") == 1
    assert delta("relay_publish_rejected_total", error="execution_finished") == 1
    assert delta("relay_publish_duration_seconds_count", mode="batch") == 1


async def test_fan_out_costs_no_prometheus_call_per_frame(
    start_server: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Delivering one event to many sockets touches no prometheus metric until the next flush."""
    server = await start_server()
    eid = "metrics-fanout"
    sockets = [await server.connect(eid, token=make_token(eid, sub=f"user-{i}")) for i in range(20)]
    for ws in sockets:
        await recv_json(ws)
    calls: list[str] = []
    from prometheus_client import Counter

    for name in ("inc",):
        original = getattr(Counter, name)

        def spy(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            calls.append(self._name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Counter, name, spy)
    assert (await server.publish(eid)).status_code == 202
    for ws in sockets:
        assert (await recv_json(ws))["seq"] == 1
    assert calls == []
    monkeypatch.undo()
    assert value(await scrape(server), "relay_frames_delivered_total") >= 20


class _ClockedSink:
    """A socket that always has room; each write moves the fake clock one second on."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.frames: list[str] = []

    async def send(self, frame: str) -> None:
        self.try_write(frame)

    def try_write(self, frame: str) -> bool:
        self.frames.append(frame)
        self.clock[0] += 1.0
        return True

    def close_now(self, disconnect: Disconnect) -> None:
        """Never closed here."""


async def test_a_fan_out_counts_its_frames_once_each_timed_when_the_last_socket_has_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three sockets written in one fan-out: three frames and three latencies, each the fan-out's end."""
    broker = MemoryBroker(history_size=10, history_ttl=60)
    hub = Hub(broker)
    clock = [1000.0]
    sinks = [_ClockedSink(clock) for _ in range(3)]
    for sink in sinks:
        sub = Subscription(hub, broker, "metrics-clock", Cursor(), sink, 8)
        await sub.open()
        sub.start()

    def latency() -> tuple[float, float, float]:
        metrics.flush()
        samples = parse(metrics.render().decode())
        return (
            value(samples, "relay_frames_delivered_total"),
            value(samples, "relay_delivery_latency_seconds_count"),
            value(samples, "relay_delivery_latency_seconds_sum"),
        )

    frames, count, total = latency()
    with monkeypatch.context() as patched:
        patched.setattr(time, "time", lambda: clock[0])
        hub.dispatch("metrics-clock", Event(1, "progress", False, '{"seq":1}', 1000.0))
    assert [len(sink.frames) for sink in sinks] == [1, 1, 1]
    after = latency()
    # Written at 1001, 1002 and 1003; all three are recorded when the last one was: 3 s each.
    assert (after[0] - frames, after[1] - count, after[2] - total) == (3, 3, 9.0)


# -- several workers -----------------------------------------------------------------------

_CHILD = textwrap.dedent("""
    import sys
    from service import metrics
    events, connections = int(sys.argv[1]), int(sys.argv[2])
    for _ in range(events):
        metrics.published("progress", False)
    for _ in range(connections):
        metrics.connection_opened("ws")
    metrics.delivered(0.0)
    metrics.flush()
    if sys.argv[3] == "render":
        sys.stdout.write(metrics.render().decode())
""")


def test_multiprocess_mode_aggregates_workers(tmp_path: Path) -> None:
    """Two worker processes' counters add up; a stopped worker's gauges drop out, its counters stay."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), metrics.MULTIPROC_ENV: str(tmp_path)}

    def child(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", _CHILD, *args], env=env, capture_output=True, text=True, timeout=60, check=True
        )

    first = subprocess.Popen([sys.executable, "-c", _CHILD, "3", "2", "quiet"], env=env)
    assert first.wait(60) == 0
    samples = parse(child("4", "1", "render").stdout)
    assert value(samples, "relay_events_accepted_total", event="progress") == 7
    assert value(samples, "relay_frames_delivered_total") == 2
    assert value(samples, "relay_connections_open", transport="ws") == 3

    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(first.pid, str(tmp_path))
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
    samples = parse(generate_latest(registry).decode())
    assert value(samples, "relay_events_accepted_total", event="progress") == 7
    assert value(samples, "relay_connections_open", transport="ws") == 1


def test_prepare_multiprocess_gives_workers_an_empty_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One worker needs no directory; several get a fresh one, or the operator's with old files removed."""
    monkeypatch.setenv(metrics.MULTIPROC_ENV, "placeholder")  # so that the test's changes are undone
    monkeypatch.delenv(metrics.MULTIPROC_ENV)
    assert metrics.prepare_multiprocess(1) is None
    assert metrics.MULTIPROC_ENV not in os.environ
    created = metrics.prepare_multiprocess(2)
    assert created is not None and os.environ[metrics.MULTIPROC_ENV] == created and Path(created).is_dir()
    metrics.remove_multiprocess_dir(created)
    assert not Path(created).exists()
    (tmp_path / "counter_123.db").write_bytes(b"old")
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    assert metrics.prepare_multiprocess(4) is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.redis
@pytest.mark.slow
def test_two_workers_report_the_same_totals() -> None:
    """With RELAY_WORKERS=2 on Redis, /metrics and /internal/v1/stats, whichever worker answers, report all workers'."""
    from tests.redis_util import ServiceProcess, delete_prefix, require_redis

    url = require_redis()
    prefix = f"relaytest-metrics-{os.getpid()}"
    service = ServiceProcess(RELAY_WORKERS="2", RELAY_BROKER_URL=url, RELAY_REDIS_PREFIX=prefix)
    try:
        service.start(timeout=30)
        headers = {"Authorization": f"Bearer {service.env['RELAY_PUBLISH_KEYS']}"}
        # New connections each time, so the kernel spreads them over both workers.
        for i in range(20):
            r = httpx.post(
                f"{service.base}/internal/v1/executions/mw-{i}/events",
                headers=headers,
                json={"event": "progress", "data": {"progress": 1, "stage": "a"}},
                timeout=5,
            )
            assert r.status_code == 202, r.text
        # Every worker flushes once a second: wait until a scrape has all 20, then every scrape must.
        deadline = time.monotonic() + 10
        while (
            value(
                parse(httpx.get(f"{service.base}/metrics", timeout=5).text),
                "relay_events_accepted_total",
                event="progress",
            )
            < 20
        ):
            assert time.monotonic() < deadline, "the workers' counts never added up to 20"
        for _ in range(6):
            samples = parse(httpx.get(f"{service.base}/metrics", timeout=5).text)
            assert value(samples, "relay_events_accepted_total", event="progress") == 20
            assert value(samples, "relay_publish_duration_seconds_count", mode="single") == 20
            assert value(samples, "relay_publish_duration_seconds_bucket", mode="single", le="+Inf") == 20
            assert value(samples, "relay_broker_operation_duration_seconds_count", operation="publish") == 20
        # /internal/v1/stats speaks for the instance too: both workers answer with the same total.
        answered: set[int] = set()
        for _ in range(200):
            stats = httpx.get(f"{service.base}/internal/v1/stats", headers=headers, timeout=5).json()
            assert (stats["scope"], stats["workers"]) == ("instance", 2)
            assert stats["counters"]["events_accepted"]["progress"] == 20, stats
            answered.add(stats["pid"])
            if len(answered) == 2:
                break
        assert len(answered) == 2, "one worker answered 200 new connections"
    finally:
        service.stop()
        delete_prefix(url, prefix)


def test_every_broker_figure_is_exported() -> None:
    """Each key of both brokers' stats() has a relay_broker_* family (or is counted elsewhere), so none is lost."""
    from service.brokers.memory import MemoryBroker
    from service.brokers.redis import RedisBroker

    keys = set(MemoryBroker(10, 60).stats()) | set(RedisBroker("redis://127.0.0.1:1/0", 10, 60).stats())
    assert "redis_resyncs" in keys and keys <= metrics.BROKER_STATS


async def test_broker_figures_reach_metrics_and_stats() -> None:
    """A relay's broker figures are read at each flush: counters by their increments, gauges as they are."""
    figures = {"redis_resyncs": 0, "redis_channels_subscribed": 3, "redis_pubsub_connected": 1}
    owner = object()
    resyncs = counted("broker_resyncs")
    await metrics.start(owner, lambda: 0, lambda: figures)
    try:
        figures["redis_resyncs"] = 2
        snapshot = metrics.snapshot()
        assert snapshot["counters"]["broker_resyncs"] == resyncs + 2
        assert snapshot["gauges"]["broker_channels_subscribed"] >= 3
        figures["redis_resyncs"] = 3
        figures["redis_pubsub_connected"] = 0
        assert counted("broker_resyncs") == resyncs + 3
        assert metrics.snapshot()["gauges"]["broker_connected"] == 0
        samples = parse(metrics.render().decode())
        assert value(samples, "relay_broker_resyncs_total") == resyncs + 3
        assert value(samples, "relay_broker_connected") == 0
    finally:
        await metrics.stop(owner)
    assert metrics.snapshot()["gauges"]["broker_connected"] == 1


# -- the dashboard ------------------------------------------------------------------------


def dashboard_metric_names() -> set[str]:
    """Metric names used in the dashboard's queries."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, item in node.items():
                if key in ("expr", "query") and isinstance(item, str):
                    exprs.append(item)
                else:
                    walk(item)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(dashboard)
    assert exprs, "the dashboard has no queries"
    return {name for expr in exprs for name in re.findall(r"\b(relay_[a-z_]+|process_[a-z_]+)\b", expr)}


async def test_dashboard_uses_only_exported_metric_names(start_server: Callable[..., Any]) -> None:
    """Every metric name in k8s/grafana-dashboard.json is one /metrics exports."""
    server = await start_server()
    exported = {name for name, _ in await scrape(server)}
    exported |= metrics.METRIC_NAMES  # labelled families without a child yet have no sample
    used = dashboard_metric_names()
    assert used, "the dashboard uses no relay metric"
    assert used <= exported, sorted(used - exported)
    assert used & {n for n in metrics.METRIC_NAMES}, "the dashboard shows none of the relay's own metrics"


async def test_polling_state_and_sse_requests_are_counted(start_server: Callable[..., Any]) -> None:
    """Polls, long polls, state reads and SSE streams count by kind; their refused tokens by reason."""
    server = await start_server()
    eid = "metrics-fallback"
    assert (await server.publish(eid, "complete", data={})).status_code == 202
    before = await scrape(server)
    token = make_token(eid)
    assert (await server.http.get(f"/v1/executions/{eid}/events", params={"token": token})).status_code == 200
    r = await server.http.get(f"/v1/executions/{eid}/events", params={"token": token, "wait": 1, "after": 1})
    assert r.status_code == 200
    assert (await server.http.get(f"/v1/executions/{eid}", params={"token": token})).status_code == 200
    async with server.http.stream("GET", f"/v1/executions/{eid}/stream", params={"token": token}) as stream:
        assert stream.status_code == 200
        async for _ in stream.aiter_text():
            pass
    expired = make_token(eid, ttl=-60)
    assert (await server.http.get(f"/v1/executions/{eid}", params={"token": expired})).status_code == 401

    async def counted() -> None:
        after = await scrape(server)

        def delta(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert delta("relay_fallback_requests_total", kind="poll") == 1
        assert delta("relay_fallback_requests_total", kind="long_poll") == 1
        assert delta("relay_fallback_requests_total", kind="state") == 1
        assert delta("relay_fallback_requests_total", kind="sse") == 1
        assert delta("relay_auth_failures_total", reason="expired") == 1
        assert delta("relay_replayed_events_total") == 1  # the SSE stream replayed the one event
        assert value(after, "relay_connections_open", transport="sse") == 0

    await eventually(counted)


def test_dashboard_is_importable_json_with_a_clean_layout() -> None:
    """The dashboard parses, picks its Prometheus data source on import, and no two panels overlap."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    assert any(v["type"] == "datasource" for v in dashboard["templating"]["list"])
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    boxes = [p["gridPos"] for p in panels]
    for i, a in enumerate(boxes):
        assert a["x"] >= 0 and a["x"] + a["w"] <= 24
        for b in boxes[i + 1 :]:
            overlap = (
                a["x"] < b["x"] + b["w"]
                and b["x"] < a["x"] + a["w"]
                and a["y"] < b["y"] + b["h"]
                and b["y"] < a["y"] + a["h"]
            )
            assert not overlap, (panels[i]["title"], b)
    for p in panels:
        assert p["type"] == "row" or p["targets"], p["title"]


async def test_garbage_collection_pauses_are_timed(start_server: Callable[..., Any]) -> None:
    """Every cycle collection is timed by generation: a full one shows up in relay_gc_pause_seconds{generation="2"}."""
    import gc

    server = await start_server()
    before = await scrape(server)
    junk = [[] for _ in range(1000)]
    for item in junk:
        item.append(item)  # cycles only the collector can free
    del junk, item
    gc.collect()  # the test server runs in this process: its hook sees this full collection
    after = await scrape(server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("relay_gc_pause_seconds_count", generation="2") >= 1
    assert delta("relay_gc_pause_seconds_sum", generation="2") > 0
    assert delta("relay_gc_pause_seconds_bucket", generation="2", le="+Inf") >= 1
