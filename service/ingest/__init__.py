"""Ingest: events handed over through the scheduler's own infrastructure.

Two optional consumers feed the relay's batch publish path (the same
validation, idempotency, seq and terminal rules as ``POST /internal/v1/events``):

- :mod:`service.ingest.amqp`: a RabbitMQ queue (``RELAY_AMQP_URL``);
- :mod:`service.ingest.outbox`: a PostgreSQL transactional outbox table
  (``RELAY_OUTBOX_DSN``).

Neither imports Sanic. :func:`start_consumers` builds and starts the ones the
settings switch on (their drivers are imported only then); the application's
lifecycle hooks call it and :func:`stop_consumers`. A consumer that cannot
reach its source keeps retrying in the background and never fails the
instance: subscribers are still served (``/readyz`` ignores ingest), and the
state is shown in ``/internal/v1/stats`` and the metrics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Consumer, Outcome, backoff, classify, draft_from_item

if TYPE_CHECKING:
    from ..config import Settings
    from ..relay import Relay

__all__ = [
    "Consumer",
    "Outcome",
    "backoff",
    "classify",
    "draft_from_item",
    "start_consumers",
    "stop_consumers",
]


async def start_consumers(relay: Relay, settings: Settings) -> list[Consumer]:
    """Start every consumer ``settings`` switch on; return them (empty when none is configured)."""
    consumers: list[Consumer] = []
    if settings.amqp_url:
        from .amqp import AmqpConsumer

        consumers.append(AmqpConsumer(relay, settings))
    if settings.outbox_dsn:
        from .outbox import OutboxConsumer

        consumers.append(OutboxConsumer(relay, settings))
    for consumer in consumers:
        consumer.start()
    return consumers


async def stop_consumers(consumers: list[Consumer]) -> None:
    """Stop ``consumers``: the batch in hand finishes or stays unacknowledged / in the table."""
    for consumer in consumers:
        await consumer.stop()
