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
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import RelayError
from ..events import Event, EventDraft

__all__ = ["Broker", "HistoryPage", "Listener", "PublishResult", "RevocationListener"]

Listener = Callable[[str, Event], None]
RevocationListener = Callable[[str, str, float], None]  # (kind, value, revoked at)


@dataclass(slots=True)  # not frozen: built once per publish, and a frozen __init__ costs 3x as much
class PublishResult:
    """The outcome of one publish: the seq and whether it was a duplicate."""

    execution_id: str
    seq: int
    duplicate: bool
    event: Event | None = None  # None for a duplicate: nothing new to deliver


@dataclass(slots=True)
class HistoryPage:
    """Retained events with ``seq > after``, oldest first, and where history stands."""

    events: list[Event] = field(default_factory=list)
    latest_seq: int = 0  # newest seq assigned (0: execution unknown)
    first_seq: int = 0  # oldest seq still retained (0: none retained)
    terminal: bool = False
    updated_at: float = 0.0  # unix time of the last event

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
    async def history(self, execution_id: str, after: int = 0, limit: int | None = None) -> HistoryPage:
        """Retained events with ``seq > after`` (at most ``limit``), oldest first."""

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
