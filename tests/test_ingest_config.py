"""Ingest settings and the ``progress-relay outbox init`` command."""

from __future__ import annotations

import subprocess
import sys
import uuid

import asyncpg
import pytest

from service.config import ConfigError
from tests.conftest import PUBLISH_KEY, StartServer, make_settings
from tests.ingest_util import AMQP_URL, PG_DSN, amqp_queue, until  # noqa: F401
from tests.redis_util import free_port
from tests.test_cli import ROOT, clean_env


def test_ingest_is_off_by_default_and_reads_its_settings() -> None:
    """No URL, no consumer; the tuning settings parse with their documented defaults."""
    settings = make_settings()
    assert (settings.amqp_url, settings.outbox_dsn) == ("", "")
    assert (settings.amqp_queue, settings.amqp_prefetch) == ("progress-relay.events", 100)
    assert (settings.outbox_table, settings.outbox_batch_size) == ("relay_outbox", 500)
    assert (settings.outbox_poll_interval, settings.outbox_hole_timeout) == (1.0, 10.0)
    custom = make_settings(
        RELAY_AMQP_URL="amqps://u:p@mq.example:5671/vh",
        RELAY_OUTBOX_DSN="postgresql://u:p@db/app",
        RELAY_OUTBOX_TABLE="app.events_outbox",
    )
    assert custom.amqp_url.startswith("amqps://") and custom.outbox_table == "app.events_outbox"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RELAY_AMQP_URL": "http://guest:secret@mq/"}, "RELAY_AMQP_URL must start with amqp:// or amqps://"),
        ({"RELAY_AMQP_URL": "amqp://"}, "RELAY_AMQP_URL must name a host"),
        ({"RELAY_AMQP_URL": "amqp://h:port/"}, "RELAY_AMQP_URL is not a valid URL"),
        ({"RELAY_AMQP_QUEUE": "amq.events"}, "RELAY_AMQP_QUEUE must be"),
        ({"RELAY_AMQP_QUEUE": "a queue"}, "RELAY_AMQP_QUEUE must be"),
        ({"RELAY_AMQP_PREFETCH": "0"}, "RELAY_AMQP_PREFETCH must be between 1 and 1000"),
        ({"RELAY_OUTBOX_DSN": "mysql://u:secret@db/x"}, "RELAY_OUTBOX_DSN must start with postgres://"),
        ({"RELAY_OUTBOX_TABLE": "Outbox"}, "RELAY_OUTBOX_TABLE must be a lower-case table name"),
        ({"RELAY_OUTBOX_TABLE": 'x"; drop'}, "RELAY_OUTBOX_TABLE must be a lower-case table name"),
        ({"RELAY_OUTBOX_BATCH_SIZE": "5000"}, "RELAY_OUTBOX_BATCH_SIZE must be between 1 and 1000"),
        ({"RELAY_OUTBOX_POLL_INTERVAL": "0"}, "RELAY_OUTBOX_POLL_INTERVAL must be between"),
        ({"RELAY_OUTBOX_HOLE_TIMEOUT": "soon"}, "RELAY_OUTBOX_HOLE_TIMEOUT must be a number"),
    ],
)
def test_wrong_ingest_settings_fail_with_a_sentence_naming_them(env: dict[str, str], message: str) -> None:
    """Each wrong value is refused at start with the variable's name, and no password in the message."""
    with pytest.raises(ConfigError) as exc:
        make_settings(**env)
    assert message in str(exc.value)
    assert "secret" not in str(exc.value)


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``progress-relay`` with ``env`` only (no developer .env)."""
    return subprocess.run(
        [sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main())", *args],
        capture_output=True,
        text=True,
        env=clean_env(**env),
        cwd=ROOT / "tests",
        timeout=60,
        check=False,
    )


def test_outbox_init_prints_the_ddl_for_the_configured_table() -> None:
    """`outbox init` prints the tables, the dead-letter index and the NOTIFY trigger for RELAY_OUTBOX_TABLE."""
    result = run_cli("outbox", "init", RELAY_OUTBOX_TABLE="app.ev")
    assert result.returncode == 0, result.stderr
    ddl = result.stdout
    assert 'CREATE TABLE IF NOT EXISTS "app"."ev" (' in ddl and 'CREATE TABLE IF NOT EXISTS "app"."ev_dead" (' in ddl
    assert "pg_notify('app.ev', '')" in ddl and "FOR EACH STATEMENT" in ddl
    bad = run_cli("outbox", "init", "--table", "Bad-Name")
    assert bad.returncode == 2 and "lower-case" in bad.stderr
    missing = run_cli("outbox", "init", "--apply")
    assert missing.returncode == 2 and "RELAY_OUTBOX_DSN" in missing.stderr


async def test_outbox_init_apply_creates_the_tables_and_can_run_again() -> None:
    """`outbox init --apply` creates a working outbox (insert notifies) and is safe to run twice."""
    table = f"relay_cli_{uuid.uuid4().hex[:10]}"
    for _ in range(2):
        result = run_cli("outbox", "init", "--apply", RELAY_OUTBOX_DSN=PG_DSN, RELAY_OUTBOX_TABLE=table)
        assert result.returncode == 0, result.stderr
    conn = await asyncpg.connect(PG_DSN)
    try:
        notified: list[str] = []
        await conn.add_listener(table, lambda *args: notified.append(args[2]))
        await conn.execute(f"INSERT INTO {table} (execution_id, event, data) VALUES ('e', 'complete', '{{}}')")
        await until(lambda: notified == [table], what="the insert's notification")
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position",
            f"{table}_dead",
        )
        assert [c["column_name"] for c in columns][-2:] == ["error", "dead_at"]
    finally:
        await conn.execute(f'DROP TABLE IF EXISTS "{table}", "{table}_dead"; DROP FUNCTION "{table}_notify"()')
        await conn.close()


async def test_an_unreachable_ingest_source_leaves_the_instance_ready_and_shows_in_stats(
    start_server: StartServer,
) -> None:
    """RabbitMQ and PostgreSQL unreachable: /readyz stays 200, stats and metrics show the consumers down."""
    server = await start_server(
        RELAY_AMQP_URL=f"amqp://guest:hidden-pw@127.0.0.1:{free_port()}/",
        RELAY_OUTBOX_DSN=f"postgresql://postgres:hidden-pw@127.0.0.1:{free_port()}/test",
    )
    headers = {"Authorization": f"Bearer {PUBLISH_KEY}"}

    async def both_failed() -> bool:
        stats = (await server.http.get("/internal/v1/stats", headers=headers)).json()
        return all(entry["last_error"] for entry in stats["ingest"])

    await until(both_failed, what="both consumers to report their error")
    assert (await server.http.get("/readyz")).status_code == 200
    stats = (await server.http.get("/internal/v1/stats", headers=headers)).json()
    assert [(e["source"], e["up"], e["leader"]) for e in stats["ingest"]] == [
        ("amqp", False, False),
        ("outbox", False, False),
    ]
    assert "hidden-pw" not in str(stats)
    metrics = (await server.http.get("/metrics")).text
    assert 'relay_ingest_up{source="amqp"} 0.0' in metrics and 'relay_ingest_up{source="outbox"} 0.0' in metrics
    assert (await server.publish("still-served")).status_code == 202


async def test_a_queue_declared_otherwise_and_a_missing_outbox_table_are_reported(
    start_server: StartServer, amqp_queue: str
) -> None:
    """A queue declared without single active consumer, and an outbox table never created: both named in stats."""
    import aio_pika

    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        await channel.declare_queue(amqp_queue, durable=True)  # no x-single-active-consumer
        server = await start_server(
            RELAY_AMQP_URL=AMQP_URL,
            RELAY_AMQP_QUEUE=amqp_queue,
            RELAY_OUTBOX_DSN=PG_DSN,
            RELAY_OUTBOX_TABLE=f"relay_missing_{uuid.uuid4().hex[:8]}",
        )
        headers = {"Authorization": f"Bearer {PUBLISH_KEY}"}

        async def errors() -> dict[str, str]:
            stats = (await server.http.get("/internal/v1/stats", headers=headers)).json()
            return {entry["source"]: entry["last_error"] for entry in stats["ingest"]}

        found: dict[str, str] = {}

        async def both_reported() -> bool:
            # kept from the read that saw both: a consumer retrying clears its error while it reconnects
            found.update(await errors())
            return bool(found["amqp"] and found["outbox"])

        await until(both_reported, what="both misconfigurations reported")
        assert "PRECONDITION_FAILED" in found["amqp"] and "x-single-active-consumer" in found["amqp"]
        assert "does not exist" in found["outbox"]
        assert (await server.http.get("/readyz")).status_code == 200
    finally:
        await connection.close()
