"""PostgreSQL and RabbitMQ for the ingest tests: reachability, throwaway tables and queues.

The servers are the machine's own (``RELAY_TEST_PG_DSN``, default
``postgresql://postgres@127.0.0.1:5432/test``; ``RELAY_TEST_AMQP_URL``, default
``amqp://guest:guest@127.0.0.1:5672/``). When one is unreachable its tests
*fail* in CI (``.ci/run`` starts both) and *skip* locally with a message. Each
test gets its own table or queue, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import asyncpg
import pytest

from service.ingest.outbox import outbox_ddl
from tests.redis_util import in_ci

__all__ = ["AMQP_URL", "PG_DSN", "amqp_queue", "frames", "outbox_table", "progress_item", "require_postgres", "until"]

PG_DSN = os.environ.get("RELAY_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
AMQP_URL = os.environ.get("RELAY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _unavailable(what: str, exc: BaseException) -> None:
    message = f"{what} is unreachable ({exc.__class__.__name__}: {exc})"
    if in_ci():
        pytest.fail(f"{message} (CI=true: ingest tests must run; .ci/run starts it)")
    pytest.skip(f"{message}; start it (see scripts/ensure-ingest-services.sh)")


async def until(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> None:
    """Wait until ``check()`` (or its awaited value) is true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.02)


async def require_postgres() -> None:
    """Fail (CI) or skip (locally) unless PostgreSQL answers at PG_DSN."""
    try:
        conn = await asyncpg.connect(PG_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        _unavailable(f"PostgreSQL at {PG_DSN}", exc)
    await conn.close()


@pytest.fixture
async def outbox_table() -> AsyncIterator[str]:
    """A fresh outbox table (and its dead-letter table and trigger), dropped afterwards.

    Set-up and clean-up each use their own short connection with bounded waits: a connection
    held idle across the test once left a CI run hanging in this teardown.
    """
    name = f"relay_test_{uuid.uuid4().hex[:12]}"
    try:
        conn = await asyncpg.connect(PG_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        _unavailable(f"PostgreSQL at {PG_DSN}", exc)
    try:
        await conn.execute(outbox_ddl(name), timeout=30)
    finally:
        await conn.close(timeout=5)
    try:
        yield name
    finally:
        async with asyncio.timeout(60):
            conn = await asyncpg.connect(PG_DSN, timeout=5)
            try:
                await conn.execute(
                    f'DROP TABLE IF EXISTS "{name}", "{name}_dead"; DROP FUNCTION IF EXISTS "{name}_notify"()',
                    timeout=30,
                )
            finally:
                await conn.close(timeout=5)


@pytest.fixture
async def amqp_queue() -> AsyncIterator[str]:
    """A fresh queue name; the queue and ``<queue>.dead`` are deleted afterwards (own connection, bounded)."""
    name = f"relay-test-{uuid.uuid4().hex[:12]}"
    try:
        connection = await aio_pika.connect(AMQP_URL, timeout=5)
    except (OSError, aio_pika.exceptions.AMQPError) as exc:
        _unavailable(f"RabbitMQ at {AMQP_URL}", exc)
    await connection.close()
    try:
        yield name
    finally:
        async with asyncio.timeout(60):
            connection = await aio_pika.connect(AMQP_URL, timeout=5)
            try:
                channel = await connection.channel()
                for queue in (name, f"{name}.dead"):
                    await channel.queue_delete(queue)
            finally:
                await connection.close()


def progress_item(execution_id: str, n: int, **extra: Any) -> dict[str, Any]:
    """A progress batch item whose ``progress`` is ``n`` (0..100), for order checks."""
    return {"execution_id": execution_id, "event": "progress", "data": {"progress": n, "stage": f"s{n}"}, **extra}


def frames(page: Any) -> list[dict[str, Any]]:
    """The decoded events of a history page."""
    return [event.as_dict() for event in page.events]
