"""The AMQP consumer against the machine's real RabbitMQ (docs/ingest.md)."""

from __future__ import annotations

import json
import time
from typing import Any

import aio_pika
import httpx
import pytest

from service.ingest.amqp import AmqpConsumer
from service.publisher import AMQP_QUEUE_ARGUMENTS, amqp_message
from tests.conftest import PUBLISH_KEY, Server, StartServer, make_token
from tests.ingest_util import AMQP_URL, amqp_queue, frames, until  # noqa: F401
from tests.redis_util import RedisServer, ServiceProcess, redis_prefix, redis_server, redis_url  # noqa: F401


def settings_env(queue: str, **extra: str) -> dict[str, str]:
    """RELAY_ settings that switch the AMQP consumer on for ``queue``."""
    return {"RELAY_AMQP_URL": AMQP_URL, "RELAY_AMQP_QUEUE": queue, "RELAY_AMQP_PREFETCH": "50", **extra}


class Producer:
    """A scheduler's side: publishes messages built by service.publisher.amqp_message."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.connection: Any = None
        self.channel: Any = None

    async def __aenter__(self) -> Producer:
        """Connect and declare the queue as the relay does."""
        self.connection = await aio_pika.connect(AMQP_URL)
        self.channel = await self.connection.channel()
        await self.channel.declare_queue(self.queue, durable=True, arguments=AMQP_QUEUE_ARGUMENTS)
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Disconnect."""
        await self.connection.close()

    async def send(self, execution_id: str, event: str, data: dict[str, Any], key: str | None = None) -> None:
        message = amqp_message(execution_id, event, data, key, queue=self.queue)
        await self.channel.default_exchange.publish(
            aio_pika.Message(message.body, **message.properties), routing_key=message.routing_key
        )

    async def send_raw(self, body: bytes, message_id: str | None = None) -> None:
        await self.channel.default_exchange.publish(
            aio_pika.Message(body, message_id=message_id), routing_key=self.queue
        )

    async def count(self, queue: str) -> int:
        declared = await self.channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count)


def consumer(server: Server) -> AmqpConsumer:
    found: AmqpConsumer = server.app.ctx.ingest[0]
    return found


async def test_messages_queued_while_the_relay_is_down_are_delivered_in_order_once(
    amqp_queue: str, start_server: StartServer
) -> None:
    """200 messages queued before any relay runs are all published after it starts, in queue order, once."""
    async with Producer(amqp_queue) as producer:
        for n in range(200):
            await producer.send(f"q-{n % 4}", "progress", {"progress": n // 4, "stage": "s"})
        server = await start_server(**settings_env(amqp_queue))
        await until(lambda: consumer(server).consumed == 200, what="200 consumed")
        for e in range(4):
            got = frames(await server.relay.history(f"q-{e}"))
            assert [f["seq"] for f in got] == list(range(1, 51))
            assert [f["data"]["progress"] for f in got] == list(range(50))
        await until(lambda: consumer(server).in_hand == 0, what="every message acknowledged")
        assert await producer.count(amqp_queue) == 0


async def test_duplicate_message_ids_and_poison_messages(amqp_queue: str, start_server: StartServer) -> None:
    """A repeated message id is delivered once; refused messages go to <queue>.dead with x-relay-error."""
    server = await start_server(**settings_env(amqp_queue))
    async with Producer(amqp_queue) as producer:
        item = {"execution_id": "m", "event": "progress", "data": {"progress": 1, "stage": "a"}}
        await producer.send_raw(json.dumps(item).encode(), message_id="mid-1")
        await producer.send_raw(json.dumps(item).encode(), message_id="mid-1")  # the same event again
        await producer.send_raw(b"{not json", message_id="poison-1")
        await producer.send_raw(json.dumps({**item, "data": {"stage": "x"}}).encode(), message_id="poison-2")
        await producer.send("m", "complete", {})
        await producer.send("m", "progress", {"progress": 5, "stage": "late"}, key="poison-3")  # 409
        await until(lambda: consumer(server).consumed + consumer(server).dead_lettered == 6, what="all handled")
        assert [(f["seq"], f["event"]) for f in frames(await server.relay.history("m"))] == [
            (1, "progress"),
            (2, "complete"),
        ]
        assert consumer(server).duplicates == 1
        dead = await producer.channel.declare_queue(f"{amqp_queue}.dead", durable=True)
        reasons = {}
        for _ in range(3):
            message = await dead.get(timeout=5)
            reasons[message.message_id] = message.headers["x-relay-error"]
            await message.ack()
        assert reasons["poison-1"].startswith("400 bad_request")
        assert reasons["poison-2"].startswith("422 validation_failed") and "data.progress" in reasons["poison-2"]
        assert reasons["poison-3"].startswith("409 execution_finished")
        await until(lambda: consumer(server).in_hand == 0, what="every message acknowledged")
        assert await producer.count(amqp_queue) == 0


@pytest.mark.redis
async def test_a_redis_outage_leaves_messages_unacknowledged_until_it_recovers(
    amqp_queue: str, start_server: StartServer, redis_server: RedisServer
) -> None:
    """While Redis is down messages stay unacknowledged (retried); after it returns all are delivered in order."""
    server = await start_server(**settings_env(amqp_queue, RELAY_BROKER_URL=redis_server.url))
    async with Producer(amqp_queue) as producer:
        await until(lambda: consumer(server).up, what="the consumer connected")
        redis_server.stop()
        for n in range(20):
            await producer.send("outage", "progress", {"progress": n, "stage": "s"})
        await until(
            lambda: consumer(server).retries >= 2 and consumer(server).in_hand == 20,
            what="all 20 in hand, unacknowledged, and retried while Redis is down",
        )
        assert consumer(server).consumed == 0
        assert await producer.count(amqp_queue) == 0  # none is ready in the queue: all are held, unacked
        redis_server.start()
        await until(lambda: consumer(server).consumed == 20, timeout=20, what="delivered after recovery")
        got = frames(await server.relay.history("outage"))
        assert [f["data"]["progress"] for f in got] == list(range(20))


@pytest.mark.redis
async def test_two_instances_keep_each_executions_order(
    amqp_queue: str, start_server: StartServer, redis_url: str, redis_prefix: str
) -> None:
    """With two relays on the queue, every execution's events keep queue order (single active consumer)."""
    env = settings_env(
        amqp_queue, RELAY_BROKER_URL=redis_url, RELAY_REDIS_PREFIX=redis_prefix, RELAY_AMQP_PREFETCH="10"
    )
    first = await start_server(**env)
    second = await start_server(**env)
    await until(lambda: consumer(first).up and consumer(second).up, what="both consumers connected")
    async with Producer(amqp_queue) as producer:
        for n in range(300):
            await producer.send(f"two-{n % 3}", "progress", {"progress": n // 3, "stage": "s"})
        await until(lambda: consumer(first).consumed + consumer(second).consumed == 300, what="300 consumed")
    for e in range(3):
        got = frames(await first.relay.history(f"two-{e}"))
        assert [f["data"]["progress"] for f in got] == list(range(100))
    assert {consumer(first).leader, consumer(second).leader} == {True, False}


@pytest.mark.redis
@pytest.mark.slow
async def test_the_other_instance_takes_over_within_10_s_of_a_kill_9(
    amqp_queue: str, redis_url: str, redis_prefix: str
) -> None:
    """The consuming instance is killed -9; the other takes over and nothing is lost or doubled."""
    env = settings_env(amqp_queue, RELAY_BROKER_URL=redis_url, RELAY_REDIS_PREFIX=redis_prefix)
    first, second = ServiceProcess(**env).spawn(), ServiceProcess(**env).spawn()
    headers = {"Authorization": f"Bearer {PUBLISH_KEY}"}
    try:
        first.wait_ready()
        second.wait_ready()
        async with httpx.AsyncClient() as http, Producer(amqp_queue) as producer:

            async def state(service: ServiceProcess) -> dict[str, Any]:
                answer = await http.get(f"{service.base}/internal/v1/stats", headers=headers)
                found: dict[str, Any] = answer.json()["ingest"][0]
                return found

            await until(lambda: _both_up(state, first, second), what="both consumers connected")
            for n in range(100):
                await producer.send(f"kill-{n % 2}", "progress", {"progress": n // 2, "stage": "s"})
            await until(lambda: _consumed(state, first, second, 100), what="the first messages")
            leader, other = (first, second) if (await state(first))["leader"] else (second, first)
            leader.kill()
            killed_at = time.monotonic()
            for n in range(100, 200):
                await producer.send(f"kill-{n % 2}", "progress", {"progress": n // 2, "stage": "s"})

            async def took_over() -> bool:
                return bool((await state(other))["consumed"] >= 100)

            await until(took_over, timeout=10, what="takeover")
            took = time.monotonic() - killed_at
            for e in range(2):
                token = make_token(f"kill-{e}")

                async def complete(e: int = e, token: str = token) -> bool:
                    answer = await http.get(
                        f"{other.base}/v1/executions/kill-{e}/events", params={"after": 0, "token": token}
                    )
                    return len(answer.json()["events"]) >= 100

                await until(complete, what=f"kill-{e} complete")
                url = f"{other.base}/v1/executions/kill-{e}/events"
                answer = await http.get(url, params={"after": 0, "token": token})
                events = answer.json()["events"]
                assert [event["data"]["progress"] for event in events] == list(range(100)), took
                assert [event["seq"] for event in events] == list(range(1, 101))
    finally:
        first.stop()
        second.stop()


async def _both_up(state: Any, *services: ServiceProcess) -> bool:
    return all([(await state(service))["up"] for service in services])


async def _consumed(state: Any, first: ServiceProcess, second: ServiceProcess, count: int) -> bool:
    return bool((await state(first))["consumed"] + (await state(second))["consumed"] >= count)
