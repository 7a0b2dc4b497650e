"""The AMQP (RabbitMQ) consumer: one message is one batch item.

The queue ``RELAY_AMQP_QUEUE`` is declared durable with RabbitMQ's
``x-single-active-consumer``: with several relay instances subscribed, the
broker delivers to one of them at a time and switches to another only when
that one's channel closes (its unacknowledged messages go back to the queue,
in order). That is what keeps one execution's events in queue order across
instances. Within the instance, messages are published in the order they
arrive, one batch at a time (up to ``RELAY_AMQP_PREFETCH`` in flight), and
acknowledged only after the relay accepted each one (or found it a
duplicate). A message refused for good is copied to ``<queue>.dead`` with
header ``x-relay-error`` (confirmed by the broker) before its ack; a
transient failure (Redis unreachable) keeps the batch unacknowledged and
retries it, in order, after a back-off.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from ..brokers import PublishResult
from ..errors import BadRequest, RelayError
from ..events import EventDraft
from ..publisher import AMQP_QUEUE_ARGUMENTS
from .base import Consumer, Outcome, backoff, classify, draft_from_item, error_text, log, publish_outcomes

if TYPE_CHECKING:
    from ..config import Settings
    from ..relay import Relay

__all__ = ["DEAD_SUFFIX", "ERROR_HEADER", "AmqpConsumer", "queue_arguments"]

DEAD_SUFFIX = ".dead"
ERROR_HEADER = "x-relay-error"


def queue_arguments() -> dict[str, Any]:
    """The arguments the event queue is declared with (producers declaring it must use the same)."""
    return dict(AMQP_QUEUE_ARGUMENTS)


class AmqpConsumer(Consumer):
    """Consumes ``RELAY_AMQP_QUEUE`` into ``Relay.publish_many``."""

    source = "amqp"

    def __init__(self, relay: Relay, settings: Settings) -> None:
        super().__init__()
        self.relay = relay
        self.url = settings.amqp_url
        self.queue_name = settings.amqp_queue
        self.dead_name = settings.amqp_queue + DEAD_SUFFIX
        self.prefetch = settings.amqp_prefetch
        self.batch_size = min(settings.amqp_prefetch, settings.max_batch_size)
        self._holding = 0  # messages of the batch being published
        self._inbox: asyncio.Queue[AbstractIncomingMessage] | None = None

    async def run(self) -> None:
        """Connect, declare, consume until stopped or the connection drops (then raise)."""
        connection = await aio_pika.connect(self.url, timeout=10)
        try:
            lost = asyncio.Event()
            connection.close_callbacks.add(lambda *_: lost.set())
            channel = await connection.channel(publisher_confirms=True)
            await channel.set_qos(prefetch_count=self.prefetch)
            queue = await channel.declare_queue(self.queue_name, durable=True, arguments=queue_arguments())
            await channel.declare_queue(self.dead_name, durable=True)
            inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
            self._inbox = inbox

            async def received(message: AbstractIncomingMessage) -> None:
                inbox.put_nowait(message)

            await queue.consume(received, no_ack=False)
            self.up, self.last_error = True, ""
            log.info("ingest amqp: consuming queue %s", self.queue_name)
            worker = asyncio.create_task(self._work(inbox, channel))
            waits = [worker, asyncio.create_task(lost.wait()), asyncio.create_task(self._stopping.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waits:
                    task.cancel()
                await asyncio.gather(*waits, return_exceptions=True)
            if worker.done() and not worker.cancelled() and worker.exception() is not None:
                raise worker.exception()  # type: ignore[misc]  # checked just above
            if not self.stopping:
                raise ConnectionError("the AMQP connection closed")
        finally:
            self.up = self.leader = False
            self._inbox, self._holding, self.oldest = None, 0, None
            await connection.close()

    async def _work(self, inbox: asyncio.Queue[AbstractIncomingMessage], channel: AbstractChannel) -> None:
        """Publish what arrived, one batch at a time, in arrival order."""
        while True:
            batch = [await inbox.get()]
            while len(batch) < self.batch_size and not inbox.empty():
                batch.append(inbox.get_nowait())
            # A waiting single-active consumer receives nothing, so a delivery means this one is active.
            self.leader = True
            self._holding = len(batch)
            self.oldest = min(_sent_at(message) for message in batch)
            await self._handle(batch, channel)
            self._holding = 0
            self.oldest = None if inbox.empty() else time.time()

    async def _handle(self, batch: list[AbstractIncomingMessage], channel: AbstractChannel) -> None:
        """Publish ``batch``; ack, dead-letter, or keep and retry from the first transient failure."""
        attempt = 0
        while batch:
            outcomes = await self._publish(batch)
            done = duplicates = dead = 0
            finished = 0
            for message, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, PublishResult):
                    done += 1
                    duplicates += outcome.duplicate
                elif classify(outcome) is Outcome.DEAD:
                    await self._dead_letter(channel, message, outcome)
                    dead += 1
                else:
                    self.last_error = error_text(outcome)
                    break
                finished += 1
            if finished:
                await batch[finished - 1].ack(multiple=True)  # every earlier delivery of the batch is settled
            self.counted(done, duplicates, dead)
            batch = batch[finished:]
            self._holding = len(batch)
            if batch:
                self.retries += 1
                log.warning("ingest amqp: %d messages kept unacknowledged (%s); retrying", len(batch), self.last_error)
                await asyncio.sleep(backoff(attempt))
                attempt += 1
        self.last_error = ""

    async def _publish(self, batch: list[AbstractIncomingMessage]) -> list[PublishResult | RelayError]:
        """One outcome per message: the relay's answer, or why the message could not be read."""
        outcomes: list[PublishResult | RelayError | EventDraft] = []
        for message in batch:
            try:
                item = json.loads(message.body)
            except ValueError:
                outcomes.append(BadRequest("message body is not valid UTF-8 JSON"))
                continue
            try:
                outcomes.append(draft_from_item(item, message.message_id))
            except RelayError as exc:
                outcomes.append(exc)
        return await publish_outcomes(self.relay.publish_many, outcomes, self.source)

    async def _dead_letter(self, channel: AbstractChannel, message: AbstractIncomingMessage, error: RelayError) -> None:
        """Copy ``message`` to ``<queue>.dead`` with the reason (confirmed before the original is acked)."""
        reason = error_text(error)
        headers = {**(message.headers or {}), ERROR_HEADER: reason}
        copy = aio_pika.Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            timestamp=message.timestamp,
            type=message.type,
            app_id=message.app_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await channel.default_exchange.publish(copy, routing_key=self.dead_name)
        log.warning(
            "ingest amqp: message dead-lettered",
            extra={"fields": {"queue": self.dead_name, "message_id": message.message_id, "reason": reason}},
        )

    @property
    def in_hand(self) -> int:
        """Messages received and not yet acknowledged."""
        return self._holding + (self._inbox.qsize() if self._inbox is not None else 0)

    def stats(self) -> dict[str, Any]:
        """The common state plus the queue names and messages in hand."""
        return {**super().stats(), "queue": self.queue_name, "dead_queue": self.dead_name, "in_hand": self.in_hand}


def _sent_at(message: AbstractIncomingMessage) -> float:
    """When the producer sent ``message`` (its ``timestamp`` property), else now."""
    stamp = message.timestamp
    if isinstance(stamp, datetime):
        return stamp.timestamp()
    return time.time()
