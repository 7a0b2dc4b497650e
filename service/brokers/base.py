"""The broker interface: history and live events of executions.

A broker stores each execution's history and carries live events between
instances. It does not fan out to sockets: it hands each live event of a
subscribed execution to one listener (the :class:`~service.hub.Hub`), which
does. Every implementation passes the same contract suite
(``tests/test_broker_contract.py``).

Guarantees every broker gives:

- ``publish`` assigns ``seq`` (1, 2, 3, ... per execution, no gaps), appends
  to history, records the idempotency key, refuses events after a terminal
  one, and makes the event visible to listeners, as one atomic step.
- The listener receives the events of one execution in seq order. A broker
  that may miss live events (a network broker reconnecting) calls
  ``on_resync`` afterwards so subscribers re-read history.
- Every stream has an *epoch* (contract v2, "Stream epochs"): an opaque string
  created with the stream, at its first publish or its first subscriber's
  history read, whichever comes first, and never changed while the stream's
  history lives. A stream whose history was lost (a restarted memory broker, a
  flushed or failed-over Redis, an expired stream whose id is used again) gets
  a new epoch and starts again at seq 1, without the old epoch's idempotency
  keys. Every history page and every event says which epoch it belongs to, so a
  subscriber can tell "seq 3 of the stream I followed" from "seq 3 of a new one".
"""

from __future__ import annotations

import abc
import itertools
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import RelayError
from ..events import Event, EventDraft

__all__ = ["EPOCH_MAX_LENGTH", "Broker", "HistoryPage", "Listener", "PublishResult", "RevocationListener", "new_epoch"]

Listener = Callable[[str, Event], None]
RevocationListener = Callable[[str, str, float], None]  # (kind, value, revoked at)


#: The longest epoch the contract allows (of ``A-Za-z0-9_-``).
EPOCH_MAX_LENGTH = 32

# A random part per process and a counter: unique across processes and restarts
# (16 random characters) and within a process (the counter), at the cost of a format.
_EPOCH_BASE = secrets.token_urlsafe(12)
_epoch_counter = itertools.count(1)


def new_epoch() -> str:
    """A fresh stream epoch: never returned before, by any process (at most 32 of ``A-Za-z0-9_-``)."""
    return f"{_EPOCH_BASE}{next(_epoch_counter):x}"


@dataclass(slots=True)  # not frozen: built once per publish, and a frozen __init__ costs 3x as much
class PublishResult:
    """The outcome of one publish: the seq, whether it was a duplicate, and the stream's epoch."""

    execution_id: str
    seq: int
    duplicate: bool
    #: The accepted event, from a broker that hands it to the listener in-process (memory); None for a
    #: duplicate (nothing new to deliver) and from a remote broker, whose listener gets it over the wire.
    event: Event | None = None
    epoch: str = ""


@dataclass(slots=True)
class HistoryPage:
    """Retained events with ``seq > after``, oldest first, and where history stands."""

    events: list[Event] = field(default_factory=list)
    latest_seq: int = 0  # newest seq assigned (0: execution unknown)
    first_seq: int = 0  # oldest seq still retained (0: none retained)
    terminal: bool = False
    updated_at: float = 0.0  # unix time of the last event
    epoch: str = ""  # the stream's epoch ("" only when the stream does not exist and was not created)

    @property
    def exists(self) -> bool:
        """Whether the execution has any (unexpired) history."""
        return self.latest_seq > 0

    def gap_after(self, after: int) -> bool:
        """Whether events right after ``after`` are no longer retained."""
        return self.latest_seq > after and (self.first_seq == 0 or self.first_seq > after + 1)


class Broker(abc.ABC):
    """Stores history and delivers live events for subscribed executions."""

    #: Whether operations leave the process (a network round trip worth timing in metrics).
    remote: ClassVar[bool] = False
    #: Whether live events reach the listener only for executions passed to :meth:`subscribe`
    #: (False: every publish reaches it, and subscribe/unsubscribe do nothing).
    needs_subscribe: ClassVar[bool] = True

    def __init__(self, history_size: int, history_ttl: int) -> None:
        self.history_size = history_size
        self.history_ttl = history_ttl
        self._listener: Listener | None = None
        self._on_resync: Callable[[], None] | None = None
        self._on_revoke: RevocationListener | None = None

    def set_listener(self, listener: Listener, on_resync: Callable[[], None] | None = None) -> None:
        """Register the callback that receives live events (and resync notices)."""
        self._listener = listener
        self._on_resync = on_resync

    def set_revocation_listener(self, on_revoke: RevocationListener) -> None:
        """Register the callback told of every revocation, made on any instance."""
        self._on_revoke = on_revoke

    async def revoke(self, kind: str, value: str, at: float, until: float) -> None:
        """Revoke tokens: ``kind`` ``jti`` (that token) or ``sub`` (that user's tokens issued up to ``at``).

        Kept until ``until`` (unix time) and announced to every instance's revocation listener.
        """
        raise NotImplementedError

    async def is_revoked(self, jti: str | None, sub: str, iat: int | None) -> bool:
        """Whether a token with these claims has been revoked (a token without ``iat`` counts as old)."""
        raise NotImplementedError

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect and start background work."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop background work and release connections."""

    @abc.abstractmethod
    async def publish(self, draft: EventDraft) -> PublishResult:
        """Accept one event atomically; raise ExecutionFinished or BrokerUnavailable."""

    async def publish_many(self, drafts: Sequence[EventDraft]) -> list[PublishResult | RelayError]:
        """Accept several events in order; one result or error per item."""
        results: list[PublishResult | RelayError] = []
        for draft in drafts:
            try:
                results.append(await self.publish(draft))
            except RelayError as exc:
                results.append(exc)
        return results

    @abc.abstractmethod
    async def history(
        self, execution_id: str, after: int = 0, limit: int | None = None, *, create: bool = True
    ) -> HistoryPage:
        """Retained events with ``seq > after`` (at most ``limit``), oldest first, and the stream's epoch.

        With ``create`` (a subscriber's read), a stream that does not exist yet
        is created with a fresh epoch and no events, so that the epoch the
        subscriber is told is the one the first publish will use. Without it
        (a state read) an unknown stream stays unknown (epoch ``""``).
        ``after`` may be any non-negative integer, however large.
        """

    @abc.abstractmethod
    async def subscribe(self, execution_id: str) -> None:
        """Start delivering this execution's live events to the listener."""

    @abc.abstractmethod
    async def unsubscribe(self, execution_id: str) -> None:
        """Stop delivering this execution's live events."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Return when the broker is reachable; raise BrokerUnavailable otherwise."""

    def stats(self) -> dict[str, int]:
        """Counters for /internal/v1/stats."""
        return {}
