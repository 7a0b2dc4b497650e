"""The relay on a real 3-master Redis Cluster (``redis+cluster://``), started by the tests.

Two relay instances share the cluster; executions are chosen by ``CLUSTER
KEYSLOT`` so that every node owns some. The cluster is the module's own
(free loopback ports, never 6379) and is killed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from service.config import ConfigError
from tests.conftest import PUBLISH_KEY, Server, StartServer, make_settings, make_token, recv_json
from tests.redis_topology import ClusterSetup, redis_cluster  # noqa: F401
from tests.redis_util import ServiceProcess

pytestmark = [pytest.mark.redis, pytest.mark.slow]
AUTH = {"Authorization": f"Bearer {PUBLISH_KEY}"}


def executions_on_every_node(cluster: ClusterSetup, prefix: str, per_node: int = 2) -> list[str]:
    """Execution ids whose slots (``CLUSTER KEYSLOT`` of their keys) cover every node, ``per_node`` each."""
    chosen: dict[int, list[str]] = {n.port: [] for n in cluster.nodes}
    i = 0
    while any(len(ids) < per_node for ids in chosen.values()):
        eid = f"{prefix}-{i}"
        i += 1
        port = cluster.owner(cluster.keyslot(f"relay:{{{eid}}}:meta")).port
        if len(chosen[port]) < per_node:
            chosen[port].append(eid)
    return [eid for ids in chosen.values() for eid in ids]


async def read_seqs(ws: Any, timeout: float = 20.0) -> list[int]:
    """Seqs of event frames until the server closes the socket."""
    seqs = []
    async with asyncio.timeout(timeout):
        async for message in ws:
            frame = json.loads(message)
            if "seq" in frame and frame.get("type") != "connected":
                seqs.append(frame["seq"])
    return seqs


async def close_code(ws: Any) -> int | None:
    """Read until the server closes the socket; its close code."""
    with contextlib.suppress(ConnectionClosed):
        async with asyncio.timeout(5):
            async for _ in ws:
                pass
    return ws.close_code  # type: ignore[no-any-return]


async def two_instances(start_server: StartServer, cluster: ClusterSetup) -> tuple[Server, Server, str]:
    """Instances A and B on the cluster with a key prefix of their own."""
    prefix = f"c{uuid.uuid4().hex[:8]}"
    a = await start_server(RELAY_BROKER_URL=cluster.url, RELAY_REDIS_PREFIX=prefix)
    b = await start_server(RELAY_BROKER_URL=cluster.url, RELAY_REDIS_PREFIX=prefix)
    for server in (a, b):
        assert (await server.http.get("/readyz")).status_code == 200
    return a, b, prefix


async def test_exactly_once_across_two_instances_on_every_node_without_cluster_wide_publish(
    start_server: StartServer, redis_cluster: ClusterSetup
) -> None:
    """Executions on all three nodes, published through A and B alternately, reach B's sockets once each, in order.

    ``cluster_stats_messages_publish_sent`` does not move: every delivery is sharded (SPUBLISH).
    """
    a, b, prefix = await two_instances(start_server, redis_cluster)
    ids = executions_on_every_node(redis_cluster, "x")
    sockets = [await b.connect(eid) for eid in ids]
    for ws in sockets:
        assert (await recv_json(ws))["type"] == "connected"
    readers = [asyncio.create_task(read_seqs(ws)) for ws in sockets]
    before = redis_cluster.publish_messages_sent()

    async def publish_all(eid: str) -> list[int]:
        seqs = []
        for n in range(30):
            r = await (a if n % 2 else b).publish(eid)
            assert r.status_code == 202, r.text
            seqs.append(r.json()["seq"])
        r = await a.publish(eid, "complete")
        return [*seqs, r.json()["seq"]]

    published = await asyncio.gather(*(publish_all(eid) for eid in ids))
    assert all(seqs == list(range(1, 32)) for seqs in published)
    assert [await r for r in readers] == [list(range(1, 32))] * len(ids)
    assert redis_cluster.publish_messages_sent() == before
    stats = (await a.http.get("/internal/v1/stats", headers=AUTH)).json()
    assert stats["gauges"]["broker_shard_connections"] >= 1, (prefix, stats["gauges"])


async def test_a_batch_spanning_every_node_is_one_result_per_item_in_order(
    start_server: StartServer, redis_cluster: ClusterSetup
) -> None:
    """One batch of events for executions on all nodes: each item gets its own seq, in order per execution."""
    a, _, _ = await two_instances(start_server, redis_cluster)
    ids = executions_on_every_node(redis_cluster, "batch")
    items = [
        {"execution_id": eid, "event": "progress", "data": {"progress": n, "stage": "s"}}
        for n in range(5)
        for eid in ids
    ]
    r = await a.http.post("/internal/v1/events", json={"events": items}, headers=AUTH)
    assert r.status_code == 202, r.text
    results = r.json()["results"]
    assert [res["seq"] for res in results] == [n + 1 for n in range(5) for _ in ids]


async def test_slot_migrated_mid_stream_loses_and_doubles_nothing(
    start_server: StartServer, redis_cluster: ClusterSetup
) -> None:
    """A subscribed execution's slot moves to another node while events flow: the socket gets 1..N once each."""
    a, b, _ = await two_instances(start_server, redis_cluster)
    eid = f"mig-{uuid.uuid4().hex[:6]}"
    slot = redis_cluster.keyslot(f"x:{{{eid}}}")
    source = redis_cluster.owner(slot)
    target = next(n for n in redis_cluster.nodes if n is not source)
    ws = await b.connect(eid)
    assert (await recv_json(ws))["type"] == "connected"
    reader = asyncio.create_task(read_seqs(ws, timeout=30))
    accepted: list[int] = []
    migrated = asyncio.Event()

    async def publisher() -> None:
        n = 0
        while not migrated.is_set() or n < len(accepted) + 20:
            r = await (a if n % 2 else b).publish(eid)
            n += 1
            if r.status_code == 202:
                accepted.append(r.json()["seq"])
            else:
                assert r.status_code == 503, r.text  # refused, never half-done: retried by the loop
            if len(accepted) >= 400:
                break
            await asyncio.sleep(0.002)

    task = asyncio.create_task(publisher())
    while len(accepted) < 40:
        await asyncio.sleep(0.01)
    await asyncio.to_thread(redis_cluster.migrate, slot, target)
    migrated.set()
    await task
    final = await a.publish(eid, "complete")
    assert final.status_code == 202, final.text
    accepted.append(final.json()["seq"])
    assert accepted == list(range(1, len(accepted) + 1))
    assert await reader == accepted
    assert redis_cluster.owner(slot) is target
    stats = (await b.http.get("/internal/v1/stats", headers=AUTH)).json()
    assert stats["counters"]["broker_slot_migrations"] >= 1, stats["counters"]


async def test_revocation_by_sub_reaches_sockets_on_another_instance(
    start_server: StartServer, redis_cluster: ClusterSetup
) -> None:
    """Revoking a user on A closes that user's sockets on B (4500), executions on every node, and refuses them again."""
    a, b, _ = await two_instances(start_server, redis_cluster)
    ids = executions_on_every_node(redis_cluster, "rev", per_node=1)
    sub = f"user-{uuid.uuid4().hex[:6]}"
    issued = int(time.time()) - 5  # before the revocation, whatever the clock's second
    tokens = {eid: make_token(eid, sub=sub, iat=issued) for eid in ids}
    sockets = [await b.connect(eid, token=tokens[eid]) for eid in ids]
    for ws in sockets:
        assert (await recv_json(ws))["type"] == "connected"
    r = await a.http.post("/internal/v1/revocations", json={"sub": sub}, headers=AUTH)
    assert r.status_code == 202, r.text
    for ws in sockets:
        assert await close_code(ws) == 4500
    assert await close_code(await a.connect(ids[0], token=tokens[ids[0]])) == 4500


@pytest.mark.parametrize("database", [0, 3])
def test_plain_url_to_a_cluster_node_refuses_to_start(redis_cluster: ClusterSetup, database: int) -> None:
    """``redis://`` to one cluster node (any database): the service exits with one sentence naming the variable
    and the scheme, never "unreachable".
    """
    proc = ServiceProcess(RELAY_BROKER_URL=f"redis://127.0.0.1:{redis_cluster.nodes[0].port}/{database}").spawn()
    try:
        assert proc.proc is not None
        code = proc.proc.wait(30)
        output = proc.output()
        assert code == 2, output
        assert "RELAY_BROKER_URL" in output and "redis+cluster://" in output, output
        assert "Traceback" not in output
    finally:
        proc.stop()


def test_a_database_other_than_0_on_a_cluster_is_a_clear_error() -> None:
    """``redis+cluster://h:p/3`` is refused at start with a sentence saying a cluster has only database 0."""
    with pytest.raises(ConfigError, match="RELAY_BROKER_URL names database 3, but a Redis Cluster has only database 0"):
        make_settings(RELAY_BROKER_URL="redis+cluster://127.0.0.1:7000/3")


async def test_publish_follows_ask_while_a_slot_is_half_migrated(redis_cluster: ClusterSetup) -> None:
    """Keys moved, slot not yet handed over: the source answers ASK, the relay sends ASKING + the script to the target.

    The events land on the target with the next seqs, and a publish after the handover (MOVED) goes on from there.
    (Every draft has an idempotency key, so all three keys of the execution exist and moved together: with a key
    missing, the target would answer TRYAGAIN until the handover, which the relay retries for up to ~1 s.)
    """
    from service.brokers import create_broker
    from service.events import parse_draft

    prefix = f"ask{uuid.uuid4().hex[:6]}"
    broker = create_broker(redis_cluster.url, 100, 600, prefix=prefix)
    await broker.start()
    try:
        eid = f"ask-{uuid.uuid4().hex[:6]}"
        slot = redis_cluster.keyslot(f"{prefix}:{{{eid}}}:meta")
        source = redis_cluster.owner(slot)
        target = next(n for n in redis_cluster.nodes if n is not source)

        def draft() -> Any:
            body = {"event": "progress", "data": {"progress": 1, "stage": "s"}, "idempotency_key": uuid.uuid4().hex}
            return parse_draft(eid, body)

        assert (await broker.publish(draft())).seq == 1
        src, dst = redis_cluster.client(source), redis_cluster.client(target)
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", redis_cluster.node_id(source))
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", redis_cluster.node_id(target))
        keys = src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100)
        src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        results = await broker.publish_many([draft(), draft()])
        assert [r.seq for r in results] == [2, 3]  # type: ignore[union-attr]
        assert int(dst.execute_command("DBSIZE")) >= 2 and not src.execute_command("CLUSTER GETKEYSINSLOT", slot, 10)
        for node in redis_cluster.nodes:
            redis_cluster.client(node).execute_command("CLUSTER SETSLOT", slot, "NODE", redis_cluster.node_id(target))
        assert (await broker.publish(draft())).seq == 4
        page = await broker.history(eid)
        assert [e.seq for e in page.events] == [1, 2, 3, 4]
    finally:
        await broker.close()
