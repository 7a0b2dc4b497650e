"""The relay on a Sentinel-managed Redis (``redis+sentinel://``): failover, replicas, RELAY_REDIS_MIN_REPLICAS.

Each test gets a fresh primary, replica and three Sentinels of its own on
free loopback ports (``down-after-milliseconds 500``, so a failover takes
about two seconds), kills and pauses them with signals, and checks what
publishers and subscribers saw against what Redis kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import Server, StartServer
from tests.redis_topology import SentinelSetup, TopologyServer, sentinel_setup  # noqa: F401

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@dataclass
class Load:
    """Publishes at a steady rate over several executions, recording every answer."""

    server: Server
    executions: list[str]
    rate: float  # events per second, in total
    accepted: dict[str, dict[int, int]] = field(default_factory=dict)  # eid -> seq -> n (the event's own number)
    answers: list[tuple[float, float, int]] = field(default_factory=list)  # (sent, answered, status)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run_one(self, eid: str) -> None:
        """Publish to ``eid`` at its share of the rate until stopped; each event carries a unique ``n``."""
        period = len(self.executions) / self.rate
        n = 0
        while not self.stop.is_set():
            sent = time.monotonic()
            n += 1
            r = await self.server.publish(eid, data={"progress": n % 100, "stage": f"n{n}"}, idempotency_key=f"k{n}")
            self.answers.append((sent, time.monotonic(), r.status_code))
            if r.status_code == 202:
                seq = r.json()["seq"]
                assert seq not in self.accepted.setdefault(eid, {}) or self.accepted[eid][seq] == n, "seq reused"
                self.accepted[eid][seq] = n
            else:
                assert r.status_code == 503, r.text
            await asyncio.sleep(max(0.0, period - (time.monotonic() - sent)))

    def start(self) -> list[asyncio.Task[None]]:
        """One publishing task per execution."""
        for eid in self.executions:
            self.accepted[eid] = {}
        return [asyncio.create_task(self.run_one(eid)) for eid in self.executions]

    def accepted_count(self) -> int:
        """Events answered 202 so far."""
        return sum(len(seqs) for seqs in self.accepted.values())

    async def check_history(self) -> None:
        """Every accepted event is in history under its seq (by its ``n``), and no seq was given twice."""
        for eid, seqs in self.accepted.items():
            page = await self.server.relay.history(eid)
            stored = {e.seq: json.loads(e.frame)["data"]["stage"] for e in page.events}
            missing = {seq: n for seq, n in seqs.items() if stored.get(seq) != f"n{n}"}
            assert not missing, f"{eid}: acknowledged events missing or replaced: {sorted(missing.items())[:10]}"


async def wait_for(check: Callable[[], bool | Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll ``check()`` (plain or awaitable) until it is true; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout} s")
        await asyncio.sleep(0.05)


async def ready(server: Server) -> bool:
    """Whether ``/readyz`` answers 200."""
    return (await server.http.get("/readyz")).status_code == 200


def restart_empty(server: TopologyServer) -> None:
    """Start a killed server again on its port with no data (as after losing its disk)."""
    for name in ("dump.rdb", "appendonly.aof"):
        (Path(server.dir) / name).unlink(missing_ok=True)
    server.start()


async def test_primary_killed_under_load_fails_over_and_keeps_every_acknowledged_event(
    start_server: StartServer, sentinel_setup: SentinelSetup
) -> None:
    """Kill -9 of the primary at 240 events/s: 202s again within 10 s, /readyz 200, every 202 event kept, no seq reused.

    The old primary, restarted empty, runs as a primary until the Sentinels demote it: the relay never writes there.
    """
    setup = sentinel_setup
    server = await start_server(RELAY_BROKER_URL=setup.url, RELAY_REDIS_PREFIX=f"s{uuid.uuid4().hex[:6]}")
    assert await ready(server)
    load = Load(server, [f"fo-{i}" for i in range(4)], rate=240)
    tasks = load.start()
    await wait_for(lambda: load.accepted_count() >= 200, 10, "200 events before the kill")
    old = setup.primary
    killed = time.monotonic()
    old.stop()  # kill -9
    await wait_for(lambda: any(s == 503 for _, _, s in load.answers), 10, "a publish refused after the kill")
    await wait_for(lambda: any(s == 202 and sent > killed + 0.2 for sent, _, s in load.answers), 10, "202 again")
    recovered = min(done for sent, done, s in load.answers if s == 202 and sent > killed + 0.2)
    print(f"\nfailover: publishes succeed again {recovered - killed:.1f} s after the kill")
    assert recovered - killed < 10.0
    await wait_for(lambda: ready(server), 15, "/readyz 200 after the failover")
    assert setup.master_port() == setup.replica.port

    restart_empty(old)
    await asyncio.to_thread(setup.wait_promoted, setup.replica)
    await asyncio.to_thread(_wait_role, old, "slave")
    before_stop = load.accepted_count()
    await wait_for(lambda: load.accepted_count() >= before_stop + 100, 10, "100 more events")
    load.stop.set()
    await asyncio.gather(*tasks)
    assert "cmdstat_evalsha" not in old.info("commandstats"), "the relay wrote to the old primary"
    await load.check_history()
    assert load.accepted_count() >= 400


def _wait_role(server: TopologyServer, role: str) -> None:
    """Wait until ``server`` reports ``role`` (the Sentinels kill clients while they reconfigure it: retried)."""
    import redis

    from tests.redis_topology import wait_until

    def has_role() -> bool:
        try:
            return server.info("replication").get("role") == role
        except redis.RedisError:
            return False

    wait_until(has_role, 20, f"port {server.port} role {role}")


async def test_pointed_at_a_replica_is_not_ready_and_says_why(
    start_server: StartServer, sentinel_setup: SentinelSetup, caplog: pytest.LogCaptureFixture
) -> None:
    """A plain URL to the replica: /readyz 503 naming the replica, the log says so, a publish says READONLY."""
    caplog.set_level(logging.WARNING, logger="relay.broker.redis")
    server = await start_server(RELAY_BROKER_URL=sentinel_setup.replica.url)
    r = await server.http.get("/readyz")
    assert r.status_code == 503
    assert "read-only replica" in r.json()["message"] and "RELAY_BROKER_URL" in r.json()["message"]
    assert any("read-only replica" in rec.getMessage() for rec in caplog.records)
    p = await server.publish("ro-1")
    assert p.status_code == 503
    assert p.json()["message"].startswith("Redis refused the write because the server is a read-only replica")
    metrics = (await server.http.get("/metrics")).text
    assert 'relay_broker_errors_total{kind="readonly"}' in metrics


async def test_min_replicas_refuses_with_503_while_the_replica_is_paused(
    start_server: StartServer, sentinel_setup: SentinelSetup
) -> None:
    """RELAY_REDIS_MIN_REPLICAS=1: a paused replica turns 202 into 503 with a clear body; the retry is a duplicate."""
    server = await start_server(
        RELAY_BROKER_URL=sentinel_setup.url, RELAY_REDIS_MIN_REPLICAS="1", RELAY_REDIS_MIN_REPLICAS_TIMEOUT="0.3"
    )
    first = await server.publish("mr-1", idempotency_key="a")
    assert first.status_code == 202 and first.json()["seq"] == 1
    sentinel_setup.replica.pause()
    try:
        refused = await server.publish("mr-1", idempotency_key="b")
        assert refused.status_code == 503
        body = refused.json()
        assert body["error"] == "replicas_unavailable"
        assert "0 of the 1 replicas required by RELAY_REDIS_MIN_REPLICAS" in body["message"]
        assert "same idempotency_key" in body["message"]
    finally:
        sentinel_setup.replica.resume()
    retry = await server.publish("mr-1", idempotency_key="b")
    assert (retry.status_code, retry.json()["seq"], retry.json()["duplicate"]) == (202, 2, True)
    assert 'relay_broker_errors_total{kind="replicas"}' in (await server.http.get("/metrics")).text


async def test_min_replicas_keeps_every_acknowledged_event_when_the_replica_was_cut_before_the_primary_died(
    start_server: StartServer, sentinel_setup: SentinelSetup
) -> None:
    """RELAY_REDIS_MIN_REPLICAS=1: replica cut, primary killed, replica promoted: no 202 event is missing.

    The old primary comes back empty as the new primary's replica, so that publishes are acknowledged again.
    """
    setup = sentinel_setup
    server = await start_server(
        RELAY_BROKER_URL=setup.url, RELAY_REDIS_MIN_REPLICAS="1", RELAY_REDIS_MIN_REPLICAS_TIMEOUT="0.2"
    )
    load = Load(server, [f"cut-{i}" for i in range(4)], rate=200)
    tasks = load.start()
    await wait_for(lambda: load.accepted_count() >= 100, 10, "100 events before the cut")
    setup.replica.pause()
    cut = time.monotonic()
    await wait_for(lambda: any(s == 503 and sent > cut for sent, _, s in load.answers), 10, "503 after the cut")
    setup.primary.stop()  # kill -9: whatever only the primary had is gone
    setup.replica.resume()
    await asyncio.to_thread(setup.wait_promoted, setup.replica)
    # The promoted replica has no replica of its own, so every publish is 503 until the old
    # primary comes back (empty) and the Sentinels make it the new primary's replica.
    restart_empty(setup.primary)
    before = load.accepted_count()
    await wait_for(lambda: load.accepted_count() >= before + 100, 30, "100 events after the promotion")
    load.stop.set()
    await asyncio.gather(*tasks)
    await load.check_history()
