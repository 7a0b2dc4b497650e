"""The PostgreSQL outbox consumer against the machine's real PostgreSQL (docs/ingest.md)."""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import httpx
import pytest

from service.ingest.outbox import OutboxConsumer
from service.publisher import outbox_insert
from tests.conftest import PUBLISH_KEY, Server, StartServer, make_token
from tests.ingest_util import PG_DSN, frames, outbox_table, until  # noqa: F401
from tests.redis_util import RedisServer, ServiceProcess, redis_prefix, redis_server, redis_url  # noqa: F401


def settings_env(table: str, **extra: str) -> dict[str, str]:
    """RELAY_ settings that switch the outbox consumer on for ``table``."""
    return {
        "RELAY_OUTBOX_DSN": PG_DSN,
        "RELAY_OUTBOX_TABLE": table,
        "RELAY_OUTBOX_POLL_INTERVAL": "0.2",
        "RELAY_OUTBOX_HOLE_TIMEOUT": "30",
        **extra,
    }


async def insert(conn: Any, table: str, execution_id: str, event: str, data: Any, key: str | None = None) -> None:
    """Insert one row the way a producer does, through the publisher helper."""
    sql, params = outbox_insert(execution_id, event, data, key, table=table, paramstyle="numeric")
    await conn.execute(sql, *params)


def consumer(server: Server) -> OutboxConsumer:
    found: OutboxConsumer = server.app.ctx.ingest[0]
    return found


async def remaining(conn: Any, table: str) -> int:
    count: int = await conn.fetchval(f'SELECT count(*) FROM "{table}"')
    return count


async def test_rows_written_while_the_relay_is_down_are_delivered_after_start_in_order_once(
    outbox_table: str, start_server: StartServer
) -> None:
    """200 rows committed before any relay runs are all published after it starts, in id order, once."""
    conn = await asyncpg.connect(PG_DSN)
    try:
        for n in range(200):
            await insert(conn, outbox_table, f"down-{n % 4}", "progress", {"progress": n // 4, "stage": "s"})
        server = await start_server(**settings_env(outbox_table, RELAY_OUTBOX_BATCH_SIZE="64"))
        await until(lambda: _empty(conn, outbox_table), what="every row published")
        for e in range(4):
            page = await server.relay.history(f"down-{e}")
            got = frames(page)
            assert [f["seq"] for f in got] == list(range(1, 51))
            assert [f["data"]["progress"] for f in got] == list(range(50))
        assert consumer(server).consumed == 200 and consumer(server).duplicates == 0
    finally:
        await conn.close()


async def _empty(conn: Any, table: str) -> bool:
    return await remaining(conn, table) == 0


async def test_an_open_transaction_holds_later_rows_and_a_rolled_back_one_is_never_delivered(
    outbox_table: str, start_server: StartServer
) -> None:
    """A hole left by an open transaction holds the rows above it until it commits; rolled-back rows vanish."""
    server = await start_server(**settings_env(outbox_table))
    slow = await asyncpg.connect(PG_DSN)
    fast = await asyncpg.connect(PG_DSN)
    try:
        await until(lambda: consumer(server).leader, what="outbox leadership")
        tx = slow.transaction()
        await tx.start()
        await insert(slow, outbox_table, "hole", "progress", {"progress": 1, "stage": "first"})  # id 1, open
        await insert(fast, outbox_table, "hole", "progress", {"progress": 2, "stage": "second"})  # id 2, committed
        await until(lambda: consumer(server).hole is not None, what="the hole to be seen")
        assert not (await server.relay.history("hole")).events  # id 2 waits for id 1
        await tx.commit()
        await until(lambda: _empty(fast, outbox_table), what="both rows published")
        assert [f["data"]["stage"] for f in frames(await server.relay.history("hole"))] == ["first", "second"]

        tx = slow.transaction()
        await tx.start()
        await insert(slow, outbox_table, "undone", "progress", {"progress": 1, "stage": "rolled-back"})
        await insert(fast, outbox_table, "undone", "progress", {"progress": 2, "stage": "kept"})
        await until(lambda: consumer(server).hole is not None, what="the second hole to be seen")
        await tx.rollback()
        await until(lambda: _empty(fast, outbox_table), what="the committed row published")
        assert [f["data"]["stage"] for f in frames(await server.relay.history("undone"))] == ["kept"]
        assert consumer(server).late == 0
    finally:
        await slow.close()
        await fast.close()


async def test_a_hole_is_given_up_after_the_hole_timeout_and_its_row_published_late(
    outbox_table: str, start_server: StartServer
) -> None:
    """A transaction open past RELAY_OUTBOX_HOLE_TIMEOUT no longer holds others back; its row still arrives."""
    server = await start_server(**settings_env(outbox_table, RELAY_OUTBOX_HOLE_TIMEOUT="0.3"))
    slow = await asyncpg.connect(PG_DSN)
    fast = await asyncpg.connect(PG_DSN)
    try:
        await until(lambda: consumer(server).leader, what="outbox leadership")
        tx = slow.transaction()
        await tx.start()
        await insert(slow, outbox_table, "late-a", "progress", {"progress": 1, "stage": "slow"})
        await insert(fast, outbox_table, "late-b", "progress", {"progress": 1, "stage": "fast"})
        await until(lambda: _empty(fast, outbox_table), what="the row above the hole published")
        await tx.commit()
        await until(lambda: _empty(fast, outbox_table), what="the late row published")
        await until(lambda: consumer(server).late == 1, what="the late row counted")
        assert [f["data"]["stage"] for f in frames(await server.relay.history("late-a"))] == ["slow"]
    finally:
        await slow.close()
        await fast.close()


async def test_duplicate_idempotency_keys_and_poison_rows(outbox_table: str, start_server: StartServer) -> None:
    """A repeated key is delivered once; refused rows move to <table>_dead with the reason; the rest flows."""
    conn = await asyncpg.connect(PG_DSN)
    try:
        await insert(conn, outbox_table, "mix", "progress", {"progress": 1, "stage": "a"}, key="k-1")
        await insert(conn, outbox_table, "mix", "progress", {"progress": 1, "stage": "a"}, key="k-1")
        await insert(conn, outbox_table, "mix", "progress", {"stage": "no progress"})  # 422
        await insert(conn, outbox_table, "bad id!", "progress", {"progress": 2, "stage": "b"})  # 422
        await insert(conn, outbox_table, "mix", "progress", {"progress": 3, "stage": "c"})
        await insert(conn, outbox_table, "mix", "complete", {})
        await insert(conn, outbox_table, "mix", "progress", {"progress": 4, "stage": "after the end"})  # 409
        server = await start_server(**settings_env(outbox_table))
        await until(lambda: _empty(conn, outbox_table), what="every row handled")
        assert [(f["seq"], f["event"]) for f in frames(await server.relay.history("mix"))] == [
            (1, "progress"),
            (2, "progress"),
            (3, "complete"),
        ]
        dead = await conn.fetch(f'SELECT id, execution_id, error FROM "{outbox_table}_dead" ORDER BY id')
        assert [(row["execution_id"], row["error"].split(" ")[0]) for row in dead] == [
            ("mix", "422"),
            ("bad id!", "422"),
            ("mix", "409"),
        ]
        assert "data.progress" in dead[0]["error"] and "execution_id" in dead[1]["error"]
        state = consumer(server)
        assert (state.consumed, state.duplicates, state.dead_lettered) == (4, 1, 3)
        stats = (await server.http.get("/internal/v1/stats", headers={"Authorization": f"Bearer {PUBLISH_KEY}"})).json()
        assert stats["ingest"][0]["dead_lettered"] == 3 and stats["ingest"][0]["leader"] is True
        metrics = (await server.http.get("/metrics")).text
        assert 'relay_ingest_dead_lettered_total{source="outbox"}' in metrics
        assert 'relay_ingest_leader{source="outbox"} 1.0' in metrics
    finally:
        await conn.close()


@pytest.mark.redis
async def test_a_redis_outage_keeps_the_rows_until_it_recovers(
    outbox_table: str, start_server: StartServer, redis_server: RedisServer
) -> None:
    """While Redis is down, rows stay in the table (retried); after it returns all are delivered in order."""
    server = await start_server(**settings_env(outbox_table, RELAY_BROKER_URL=redis_server.url))
    conn = await asyncpg.connect(PG_DSN)
    try:
        await until(lambda: consumer(server).leader, what="outbox leadership")
        redis_server.stop()
        for n in range(20):
            await insert(conn, outbox_table, "outage", "progress", {"progress": n, "stage": "s"})
        await until(lambda: consumer(server).retries >= 2, what="retries while Redis is down")
        assert await remaining(conn, outbox_table) == 20
        assert (await server.http.get("/healthz")).status_code == 200
        redis_server.start()
        await until(lambda: _empty(conn, outbox_table), timeout=20, what="rows published after recovery")
        got = frames(await server.relay.history("outage"))
        assert [f["data"]["progress"] for f in got] == list(range(20))
        assert [f["seq"] for f in got] == list(range(1, 21))
    finally:
        await conn.close()


@pytest.mark.redis
@pytest.mark.slow
async def test_the_other_instance_takes_over_within_10_s_of_a_kill_9(
    outbox_table: str, redis_url: str, redis_prefix: str
) -> None:
    """Two instances share the outbox; the consumer is killed -9; the other finishes, losing or doubling nothing."""
    env = settings_env(outbox_table, RELAY_BROKER_URL=redis_url, RELAY_REDIS_PREFIX=redis_prefix)
    first, second = ServiceProcess(**env).spawn(), ServiceProcess(**env).spawn()
    conn = await asyncpg.connect(PG_DSN)
    headers = {"Authorization": f"Bearer {PUBLISH_KEY}"}
    try:
        first.wait_ready()
        second.wait_ready()
        async with httpx.AsyncClient() as http:

            async def leader_of(service: ServiceProcess) -> bool:
                answer = await http.get(f"{service.base}/internal/v1/stats", headers=headers)
                return bool(answer.json()["ingest"][0]["leader"])

            async def one_leads() -> bool:
                return await leader_of(first) or await leader_of(second)

            await until(one_leads, what="a leader")
            leader, other = (first, second) if await leader_of(first) else (second, first)
            assert not await leader_of(other)
            for n in range(100):
                await insert(conn, outbox_table, f"kill-{n % 2}", "progress", {"progress": n // 2, "stage": "s"})
            leader.kill()  # maybe in the middle of a batch: published, not yet deleted
            killed_at = time.monotonic()
            for n in range(100, 200):
                await insert(conn, outbox_table, f"kill-{n % 2}", "progress", {"progress": n // 2, "stage": "s"})
            await until(lambda: leader_of(other), timeout=10, what="takeover")
            took = time.monotonic() - killed_at
            await until(lambda: _empty(conn, outbox_table), what="all rows published")
            for e in range(2):
                token = make_token(f"kill-{e}")
                answer = await http.get(
                    f"{other.base}/v1/executions/kill-{e}/events", params={"after": 0, "token": token}
                )
                events = answer.json()["events"]
                assert [event["data"]["progress"] for event in events] == list(range(100)), took
                assert [event["seq"] for event in events] == list(range(1, 101))
    finally:
        await conn.close()
        first.stop()
        second.stop()
