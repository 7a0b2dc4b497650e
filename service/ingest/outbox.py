"""The PostgreSQL transactional-outbox consumer.

Producers insert rows into ``RELAY_OUTBOX_TABLE`` inside their own
transactions (see :func:`service.publisher.outbox_insert`). One relay
instance at a time holds a session advisory lock on the table and publishes
committed rows in ``id`` order, a batch at a time, through
``Relay.publish_many``; each accepted row is deleted, each refused row is
moved to ``<table>_dead`` with the reason, both in one transaction. A row with
no ``idempotency_key`` gets ``outbox:<id>:<created_at µs>``, so a row
published again after a crash (published, not yet deleted) is answered as a
duplicate: delivered once. Other instances retry the lock every poll interval
and take over when the holder's session ends (process killed, connection
lost: PostgreSQL releases the lock with the session).

Latency comes from LISTEN/NOTIFY (a statement trigger notifies on insert; a
notification is sent at commit); a poll every ``RELAY_OUTBOX_POLL_INTERVAL``
is the safety net for notifications lost while disconnected.

**Holes (choice).** ``bigserial`` ids are taken before commit, so a slow
transaction can commit row 5 after row 6 became visible. The consumer never
keeps a cursor (every remaining row is a candidate, so no row is ever skipped
for good) and tracks the next id it expects. When the first visible row is
above it, the missing ids belong either to a rolled-back transaction (a hole
for ever) or to one still open. The consumer reads the rows and the list of
running transactions in one snapshot, and waits, publishing nothing past the
hole, until every transaction that was running when the hole was first seen
has ended (then the hole is either filled, and published in order, or
permanent) or until ``RELAY_OUTBOX_HOLE_TIMEOUT`` seconds passed (a
transaction left open that long no longer holds the others back; its rows are
published when it commits, after the rows that overtook it, and counted as
``late``). The same wait applies when an instance starts consuming.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from ..brokers import PublishResult
from ..config import OUTBOX_TABLE_RE
from ..errors import BadRequest, RelayError
from ..events import EventDraft
from .base import Consumer, Outcome, backoff, classify, draft_from_item, error_text, log, publish_outcomes

if TYPE_CHECKING:
    from ..config import Settings
    from ..relay import Relay

__all__ = ["LOCK_CLASS", "OutboxConsumer", "Tables", "outbox_ddl"]

#: The first key of the advisory lock (the second is ``hashtext(<table>)``): "Re" in ASCII.
LOCK_CLASS = 0x5265


@dataclass(frozen=True, slots=True)
class Tables:
    """The quoted SQL names derived from one outbox table name."""

    name: str  # as configured, e.g. ``relay_outbox`` or ``app.relay_outbox``; also the NOTIFY channel

    def _quoted(self, suffix: str = "") -> str:
        parts = self.name.split(".")
        parts[-1] += suffix
        return ".".join(f'"{part}"' for part in parts)

    @property
    def outbox(self) -> str:
        """The outbox table."""
        return self._quoted()

    @property
    def dead(self) -> str:
        """The dead-letter table."""
        return self._quoted("_dead")

    @property
    def notify_function(self) -> str:
        """The trigger function that notifies the channel."""
        return self._quoted("_notify")

    @property
    def trigger(self) -> str:
        """The trigger's own name (unqualified: a trigger lives in its table's schema)."""
        return f'"{self.name.split(".")[-1]}_notify"'

    @property
    def dead_index(self) -> str:
        """The dead-letter table's index (unqualified, like every index name)."""
        return f'"{self.name.split(".")[-1]}_dead_execution"'


def outbox_ddl(table: str) -> str:
    """The DDL that creates the outbox, its dead-letter table, index and NOTIFY trigger (idempotent)."""
    if not OUTBOX_TABLE_RE.fullmatch(table):
        raise ValueError(f"{table!r} is not a valid outbox table name (lower case, [schema.]name)")
    t = Tables(table)
    return f"""-- progress-relay outbox for {table} (safe to run again)
CREATE TABLE IF NOT EXISTS {t.outbox} (
    id bigserial PRIMARY KEY,  -- the consumer reads ORDER BY id LIMIT n: an index scan of this key
    execution_id text NOT NULL,
    event text NOT NULL,
    data jsonb NOT NULL,
    idempotency_key text,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- A queue table: every row is deleted soon after it is written, so vacuum it early and often.
ALTER TABLE {t.outbox} SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
                           autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 1000);
CREATE TABLE IF NOT EXISTS {t.dead} (
    id bigint PRIMARY KEY,
    execution_id text NOT NULL,
    event text NOT NULL,
    data jsonb NOT NULL,
    idempotency_key text,
    created_at timestamptz NOT NULL,
    error text NOT NULL,  -- why the relay refused the row: "<status> <code>: <message>"
    dead_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS {t.dead_index} ON {t.dead} (execution_id, id);
-- One notification per inserting statement, delivered at commit (rolled-back rows notify nobody).
CREATE OR REPLACE FUNCTION {t.notify_function}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{table}', '');
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS {t.trigger} ON {t.outbox};
CREATE TRIGGER {t.trigger} AFTER INSERT ON {t.outbox} FOR EACH STATEMENT EXECUTE FUNCTION {t.notify_function}();
"""


@dataclass(slots=True)
class _Hole:
    """Ids missing below a visible row: from which id, since when, and who was running then."""

    start: int
    seen_at: float
    running: frozenset[str]


class OutboxConsumer(Consumer):
    """Publishes ``RELAY_OUTBOX_TABLE`` rows through ``Relay.publish_many``, one instance at a time."""

    source = "outbox"

    def __init__(self, relay: Relay, settings: Settings) -> None:
        super().__init__()
        self.relay = relay
        self.dsn = settings.outbox_dsn
        self.tables = Tables(settings.outbox_table)
        self.batch_size = min(settings.outbox_batch_size, settings.max_batch_size)
        self.poll_interval = settings.outbox_poll_interval
        self.hole_timeout = settings.outbox_hole_timeout
        self.late = 0  # rows published after rows with higher ids (their transaction outlived the hole timeout)
        self.next_id: int | None = None
        self.hole: _Hole | None = None
        self._wake = asyncio.Event()
        t = self.tables
        # One statement, so one snapshot: the rows and the transactions running when they were read.
        # (pg_current_snapshot() is the statement's snapshot.) At least one line comes back, with
        # NULL row columns when the table is empty.
        self._select = (
            f"WITH s AS (SELECT array(SELECT x::text FROM pg_snapshot_xip(pg_current_snapshot()) x) AS running) "
            f"SELECT s.running, o.id, o.execution_id, o.event, o.data, o.idempotency_key, o.created_at FROM s "
            f"LEFT JOIN LATERAL (SELECT id, execution_id, event, data::text AS data, idempotency_key, created_at "
            f"FROM {t.outbox} ORDER BY id LIMIT $1) o ON true"
        )
        self._move_dead = (
            f"INSERT INTO {t.dead} (id, execution_id, event, data, idempotency_key, created_at, error) "
            f"SELECT o.id, o.execution_id, o.event, o.data, o.idempotency_key, o.created_at, r.error "
            f"FROM {t.outbox} o JOIN unnest($1::bigint[], $2::text[]) AS r(id, error) ON r.id = o.id "
            f"ON CONFLICT (id) DO NOTHING"
        )
        self._delete = f"DELETE FROM {t.outbox} WHERE id = ANY($1::bigint[])"

    async def run(self) -> None:
        """Connect; wait for the lock; consume while holding it (raise when the session is lost)."""
        conn: asyncpg.Connection = await asyncpg.connect(self.dsn, timeout=10)
        try:
            self.up, self.last_error = True, ""
            while not self.stopping and not await self._try_lock(conn):
                await self.sleep(self.poll_interval)
            if self.stopping:
                return
            self.leader, self.next_id, self.hole = True, None, None
            log.info("ingest outbox: this instance consumes %s", self.tables.name)
            await conn.add_listener(self.tables.name, self._notified)
            while not self.stopping:
                if not await self._step(conn):
                    await self._idle()
        finally:
            self.up = self.leader = False
            self.oldest = None
            conn.terminate()  # also releases the advisory lock at once

    async def _try_lock(self, conn: asyncpg.Connection) -> bool:
        query = "SELECT pg_try_advisory_lock($1, hashtext($2))"
        locked: bool = await conn.fetchval(query, LOCK_CLASS, self.tables.name)
        return locked

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    async def _idle(self) -> None:
        """Wait for a notification, or the poll interval (shorter while a hole is being waited for)."""
        timeout = self.poll_interval if self.hole is None else min(self.poll_interval, 0.1)
        stop = asyncio.ensure_future(self._stopping.wait())
        wake = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait((stop, wake), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            wake.cancel()
        self._wake.clear()

    async def _fetch(self, conn: asyncpg.Connection) -> tuple[list[asyncpg.Record], frozenset[str]]:
        """The first rows by id and the transactions running, both from one snapshot."""
        lines = await conn.fetch(self._select, self.batch_size)
        rows = [line for line in lines if line["id"] is not None]
        return rows, frozenset(lines[0]["running"])

    async def _step(self, conn: asyncpg.Connection) -> bool:
        """Publish one batch; return whether to go on at once (more rows may be waiting)."""
        self._wake.clear()
        rows, running = await self._fetch(conn)
        self.oldest = rows[0]["created_at"].timestamp() if rows else None
        ready = self._publishable(rows, running)
        if not ready:
            return False
        attempt = 0
        while ready and not self.stopping:
            ready = await self._publish(conn, ready)
            if ready:
                self.retries += 1
                log.warning("ingest outbox: %d rows kept (%s); retrying", len(ready), self.last_error)
                await self.sleep(backoff(attempt))
                attempt += 1
        self.last_error = ""
        return len(rows) == self.batch_size

    def _publishable(self, rows: list[asyncpg.Record], running: frozenset[str]) -> list[asyncpg.Record]:
        """The leading rows that may go now: everything up to a hole that may still fill."""
        ready: list[asyncpg.Record] = []
        for row in rows:
            row_id: int = row["id"]
            if self.next_id is None or row_id > self.next_id:
                if not self._hole_closed(self.next_id or 0, running):
                    break
            elif row_id < self.next_id:
                self.late += 1  # committed after its hole was given up on
            ready.append(row)
            self.next_id = max(self.next_id or 0, row_id + 1)
        return ready

    def _hole_closed(self, start: int, running: frozenset[str]) -> bool:
        """Whether ids from ``start`` up to the next visible row can no longer appear (or waited long enough)."""
        now = time.monotonic()
        if self.hole is None or self.hole.start != start:
            self.hole = _Hole(start, now, running)
        hole = self.hole
        if not hole.running & running:
            self.hole = None  # every transaction that could hold the missing ids has ended
            return True
        if now - hole.seen_at >= self.hole_timeout:
            log.warning(
                "ingest outbox: ids from %d still missing after %.1f s; publishing past them", start, self.hole_timeout
            )
            self.hole = None
            return True
        return False

    async def _publish(self, conn: asyncpg.Connection, rows: list[asyncpg.Record]) -> list[asyncpg.Record]:
        """Publish ``rows``; delete the accepted, move the refused; return the rows kept for a retry."""
        outcomes = await self._outcomes(rows)
        done: list[int] = []
        dead: list[tuple[int, str]] = []
        duplicates = 0
        kept: list[asyncpg.Record] = []
        for i, (row, outcome) in enumerate(zip(rows, outcomes, strict=True)):
            if isinstance(outcome, PublishResult):
                done.append(row["id"])
                duplicates += outcome.duplicate
            elif classify(outcome) is Outcome.DEAD:
                dead.append((row["id"], error_text(outcome)))
                log.warning(
                    "ingest outbox: row dead-lettered",
                    extra={"fields": {"table": self.tables.name, "id": row["id"], "reason": dead[-1][1]}},
                )
            else:
                self.last_error = error_text(outcome)
                kept = rows[i:]
                break
        if dead:
            async with conn.transaction():
                await conn.execute(self._move_dead, [d[0] for d in dead], [d[1] for d in dead])
                await conn.execute(self._delete, done + [d[0] for d in dead])
        elif done:
            await conn.execute(self._delete, done)  # one statement: no explicit transaction needed
        self.counted(len(done), duplicates, len(dead))
        return kept

    async def _outcomes(self, rows: list[asyncpg.Record]) -> list[PublishResult | RelayError]:
        outcomes: list[PublishResult | RelayError | EventDraft] = []
        for row in rows:
            try:
                outcomes.append(draft_from_item(_item(row), _default_key(row)))
            except RelayError as exc:
                outcomes.append(exc)
        return await publish_outcomes(self.relay.publish_many, outcomes, self.source)

    def stats(self) -> dict[str, Any]:
        """The common state plus the table and the late-row count."""
        return {**super().stats(), "table": self.tables.name, "late": self.late}


def _item(row: asyncpg.Record) -> dict[str, Any]:
    """A batch item from an outbox row; ``created_at`` becomes the event's timestamp."""
    try:
        data = json.loads(row["data"])
    except ValueError:  # jsonb always reads back as JSON; kept for safety
        raise BadRequest("data is not JSON") from None
    item: dict[str, Any] = {
        "execution_id": row["execution_id"],
        "event": row["event"],
        "data": data,
        "timestamp": _iso(row["created_at"]),
    }
    if row["idempotency_key"] is not None:
        item["idempotency_key"] = row["idempotency_key"]
    return item


def _default_key(row: asyncpg.Record) -> str:
    """The idempotency key of a row without one: its id and creation time (unique even if the table is recreated)."""
    created: datetime = row["created_at"]
    return f"outbox:{row['id']}:{int(created.timestamp() * 1_000_000)}"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
