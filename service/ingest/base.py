"""What both consumers share: one item -> one draft, outcomes, back-off, state.

Every item goes through :func:`service.events.parse_draft`, exactly as an
item of ``POST /internal/v1/events`` does, and then through
``Relay.publish_many``. What happens to an item afterwards depends only on the
relay's answer (:func:`classify`):

- accepted, or a duplicate of its idempotency key: done (acknowledged / deleted);
- refused for good, a 4xx other than 429 (400 unreadable, 409 after a terminal
  event, 422 invalid): moved to the dead letters with the reason;
- anything else (503 broker unreachable, 429, an unexpected error): kept, and
  tried again, in order, after a back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from enum import Enum
from typing import Any

from ..brokers import PublishResult
from ..errors import BrokerUnavailable, RelayError, ValidationFailed
from ..events import EventDraft, parse_draft

__all__ = ["Consumer", "Outcome", "backoff", "classify", "draft_from_item", "error_text"]

log = logging.getLogger("relay.ingest")
_PASSWORD_RE = re.compile(r"(://[^/@:\s]*:)[^/@\s]*@")


class Outcome(Enum):
    """What to do with an item after the relay answered."""

    DONE = "done"
    DEAD = "dead"
    RETRY = "retry"


def classify(error: RelayError) -> Outcome:
    """Dead-letter a refusal for good (4xx but 429); retry everything else."""
    return Outcome.DEAD if 400 <= error.status < 500 and error.status != 429 else Outcome.RETRY


def error_text(error: RelayError) -> str:
    """The reason stored with a dead letter: ``<status> <code>: <message>`` (no credential ever in it)."""
    return f"{error.status} {error.code}: {error.message}"[:1000]


def draft_from_item(item: Any, idempotency_key: str | None = None) -> EventDraft:
    """Validate one batch item; ``idempotency_key`` applies when the item has none.

    Raises :class:`RelayError` (422 naming the field, 400 for unencodable JSON), as
    the batch route does for one of its items.
    """
    if not isinstance(item, dict):
        raise ValidationFailed([{"field": "body", "message": "must be a JSON object"}])
    execution_id = item.get("execution_id")
    if not isinstance(execution_id, str):
        raise ValidationFailed([{"field": "execution_id", "message": "required, a string"}])
    if idempotency_key is not None and item.get("idempotency_key") is None:
        item = {**item, "idempotency_key": idempotency_key}
    return parse_draft(execution_id, item)


#: ``Relay.publish_many``: one result or refusal per draft, in order.
PublishMany = Callable[[Sequence[EventDraft]], Awaitable[list[PublishResult | RelayError]]]


async def publish_outcomes(
    publish_many: PublishMany, outcomes: Sequence[PublishResult | RelayError | EventDraft], source: str
) -> list[PublishResult | RelayError]:
    """Publish the drafts among ``outcomes`` as one batch; items refused before stay refused, in place.

    A broker error answers every draft with it (the batch is kept and retried), and so does an
    unexpected error, logged: an item is never lost to a bug.
    """
    drafts = [o for o in outcomes if isinstance(o, EventDraft)]
    answers: list[PublishResult | RelayError]
    try:
        answers = await publish_many(drafts) if drafts else []
    except RelayError as exc:
        answers = [exc] * len(drafts)
    except Exception as exc:
        log.exception("ingest %s: publishing failed", source)
        answers = [BrokerUnavailable(f"publishing failed: {exc.__class__.__name__}")] * len(drafts)
    published = iter(answers)
    return [next(published) if isinstance(o, EventDraft) else o for o in outcomes]


def backoff(attempt: int, base: float = 0.2, cap: float = 5.0) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based): doubling from ``base`` up to ``cap``."""
    return min(cap, base * (1 << min(attempt, 16)))


class Consumer:
    """A background consumer with a state that stats and metrics read.

    Subclasses implement :meth:`run`, which owns its connection and returns
    only when stopped; :meth:`start` restarts it after an unexpected error.
    """

    source = "none"

    def __init__(self) -> None:
        self.up = False  # connected to its source
        self.leader = False  # the instance consuming (single active consumer / advisory lock holder)
        self.consumed = 0  # items accepted (duplicates included)
        self.duplicates = 0
        self.dead_lettered = 0
        self.retries = 0  # batches held back by a transient failure
        self.oldest: float | None = None  # unix time of the oldest item known and not yet consumed
        self.last_error = ""
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def lag(self) -> float:
        """Age in seconds of the oldest item not yet consumed (0 when none is waiting)."""
        if self.oldest is None:
            return 0.0
        return max(0.0, time.time() - self.oldest)

    def start(self) -> None:
        """Run the consumer in a background task."""
        from .. import metrics

        metrics.ingest_consumer(self)
        self._task = asyncio.get_running_loop().create_task(self._forever(), name=f"ingest-{self.source}")

    async def stop(self) -> None:
        """Stop consuming and close the connection."""
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.up = self.leader = False

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping.is_set()

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the consumer is stopped meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _forever(self) -> None:
        attempt = 0
        while not self.stopping:
            try:
                await self.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a lost connection or a driver error: reconnect after a back-off
                self.up = self.leader = False
                self.note_error(exc)
                await self.sleep(backoff(attempt, 0.5, 5.0))
                attempt += 1

    def note_error(self, exc: BaseException) -> None:
        """Remember and log a connection problem (the message, never the DSN or URL)."""
        # Driver messages may quote the URL or DSN: never its password.
        self.last_error = _PASSWORD_RE.sub(r"\1***@", f"{exc.__class__.__name__}: {exc}")[:500]
        log.warning("ingest %s: %s", self.source, self.last_error)

    async def run(self) -> None:
        """Connect and consume until stopped (raise to be restarted after a back-off)."""
        raise NotImplementedError

    def counted(self, done: int, duplicates: int, dead: int) -> None:
        """Count one batch's outcomes."""
        self.consumed += done
        self.duplicates += duplicates
        self.dead_lettered += dead

    def stats(self) -> dict[str, Any]:
        """The consumer's state for ``/internal/v1/stats``."""
        return {
            "source": self.source,
            "up": self.up,
            "leader": self.leader,
            "consumed": self.consumed,
            "duplicates": self.duplicates,
            "dead_lettered": self.dead_lettered,
            "retries": self.retries,
            "lag_seconds": round(self.lag, 3),
            "last_error": self.last_error,
        }
