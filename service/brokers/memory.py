"""The in-memory broker: one process, nothing to install.

Each execution keeps a bounded deque of events, its next seq, its
idempotency keys, whether it has finished, and its epoch. Everything happens
on the event loop without awaiting, so a publish is atomic by construction and
the listener sees events in seq order. Epochs come from
:func:`~service.brokers.base.new_epoch`, so a restarted process, and a stream
that expired and came back, have new ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field

from ..errors import ExecutionFinished
from ..events import Event, EventDraft
from .base import Broker, HistoryPage, PublishResult, new_epoch

__all__ = ["MemoryBroker"]


@dataclass(slots=True)
class _Log:
    events: deque[Event]
    epoch: str
    latest_seq: int = 0
    terminal: bool = False
    updated_at: float = 0.0  # wall clock, reported to clients
    touched: float = 0.0  # monotonic, for expiry
    keys: dict[str, int] = field(default_factory=dict)


class MemoryBroker(Broker):
    """History and live delivery inside this process."""

    needs_subscribe = False  # every publish reaches the listener

    def __init__(self, history_size: int, history_ttl: int, sweep_interval: float = 30.0) -> None:
        super().__init__(history_size, history_ttl)
        self._logs: dict[str, _Log] = {}
        self._sweep_interval = sweep_interval
        self._sweeper: asyncio.Task[None] | None = None
        self.published = 0
        self.idempotency_keys_forgotten = 0
        self._revoked: dict[tuple[str, str], tuple[float, float]] = {}  # (kind, value) -> (at, until)

    async def start(self) -> None:
        """Start the task that forgets expired executions."""
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def close(self) -> None:
        """Stop the sweeper."""
        if self._sweeper:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    def _live_log(self, execution_id: str, now: float | None = None) -> _Log | None:
        """The execution's log, unless it expired (``now``: the monotonic clock, if already read)."""
        log = self._logs.get(execution_id)
        if log is not None and (time.monotonic() if now is None else now) - log.touched > self.history_ttl:
            del self._logs[execution_id]
            return None
        return log

    def _new_log(self, execution_id: str) -> _Log:
        log = self._logs[execution_id] = _Log(deque(maxlen=self.history_size), new_epoch(), touched=time.monotonic())
        return log

    async def publish(self, draft: EventDraft) -> PublishResult:
        """Assign the next seq, append, remember the key, and hand to the listener."""
        eid = draft.execution_id
        now = time.monotonic()  # read once: the expiry check and the touch of one publish
        log = self._logs.get(eid)  # _live_log, inline: every publish comes here
        if log is None or now - log.touched > self.history_ttl:
            log = self._new_log(eid)  # none yet, or expired: a new stream (a new epoch)
        key = draft.idempotency_key
        if key is not None and key in log.keys:
            return PublishResult(eid, log.keys[key], True, None, log.epoch)
        if log.terminal:
            raise ExecutionFinished()
        seq = log.latest_seq = log.latest_seq + 1
        accepted_at = log.updated_at = time.time()
        # draft.with_seq(seq, log.epoch), inline: every publish comes here.
        event = Event(seq, draft.event, draft.terminal, f"{draft.head}{seq}{draft.tail}", accepted_at, log.epoch)
        log.events.append(event)
        log.terminal = draft.terminal
        log.touched = now
        if key is not None:
            log.keys[key] = seq
            if len(log.keys) > 2 * self.history_size:
                self._forget_keys(log)
        self.published += 1
        if self._listener is not None:
            self._listener(eid, event)
        return PublishResult(eid, seq, False, event, log.epoch)

    def _forget_keys(self, log: _Log) -> None:
        """Drop the idempotency keys of events no longer retained (as the Redis broker's script does)."""
        oldest = log.latest_seq - self.history_size
        kept = {key: seq for key, seq in log.keys.items() if seq > oldest}
        self.idempotency_keys_forgotten += len(log.keys) - len(kept)
        log.keys = kept

    async def history(
        self, execution_id: str, after: int = 0, limit: int | None = None, *, create: bool = True
    ) -> HistoryPage:
        """Retained events after ``after``; seqs are contiguous, so slice by offset."""
        log = self._live_log(execution_id)
        if log is None:
            if not create:
                return HistoryPage()
            log = self._new_log(execution_id)
        events = log.events
        first = events[0].seq if events else 0
        start = max(0, after + 1 - first) if first else 0
        stop = len(events) if limit is None else min(len(events), start + limit)
        selected = [events[i] for i in range(start, stop)] if start < stop else []
        return HistoryPage(selected, log.latest_seq, first, log.terminal, log.updated_at, log.epoch)

    async def subscribe(self, execution_id: str) -> None:
        """Nothing to do: every publish already reaches the listener."""

    async def unsubscribe(self, execution_id: str) -> None:
        """Nothing to do."""

    async def ping(self) -> None:
        """Always reachable."""

    async def revoke(self, kind: str, value: str, at: float, until: float) -> None:
        """Remember the revocation until ``until`` and tell the listener at once."""
        self._revoked[(kind, value)] = (at, until)
        if self._on_revoke is not None:
            self._on_revoke(kind, value, at)

    async def is_revoked(self, jti: str | None, sub: str, iat: int | None) -> bool:
        """Check the token's jti, and its sub against revocations made after it was issued."""
        now = time.time()
        if jti is not None:
            entry = self._revoked.get(("jti", jti))
            if entry is not None and entry[1] > now:
                return True
        entry = self._revoked.get(("sub", sub))
        return entry is not None and entry[1] > now and (iat is None or iat <= entry[0])

    def sweep(self) -> int:
        """Forget executions idle for longer than the TTL; return how many."""
        now = time.time()
        for key in [k for k, (_, until) in self._revoked.items() if until <= now]:
            del self._revoked[key]
        limit = time.monotonic() - self.history_ttl
        expired = [eid for eid, log in self._logs.items() if log.touched < limit]
        for eid in expired:
            del self._logs[eid]
        return len(expired)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            self.sweep()

    def stats(self) -> dict[str, int]:
        """Executions held and events accepted."""
        return {
            "executions_retained": len(self._logs),
            "events_accepted": self.published,
            "idempotency_keys_forgotten": self.idempotency_keys_forgotten,
        }
