"""Redis goes away and comes back: nothing is reported accepted that is not in Redis.

Every test runs a ``redis-server`` of its own on a free port (stopping the
shared one would disturb everyone else), stops it, and starts it again on the
same port with its data (``SHUTDOWN SAVE``, like a Redis with persistence).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from service.brokers.redis import RedisBroker
from service.errors import BrokerUnavailable
from service.events import parse_draft
from tests.conftest import PUBLISH_KEY, Server, recv_json, recv_until_closed
from tests.redis_util import RedisServer, free_port, redis_server, redis_server_binary  # noqa: F401

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def progress(execution_id: str, value: int = 10, key: str | None = None) -> Any:
    """A progress draft."""
    body: dict[str, Any] = {"event": "progress", "data": {"progress": value, "stage": "ai_fetching"}}
    if key:
        body["idempotency_key"] = key
    return parse_draft(execution_id, body)


async def wait_ready(server: Server, status: int, timeout: float = 15.0) -> dict[str, Any]:
    """Poll /readyz until it answers ``status``; return its body."""
    deadline = time.monotonic() + timeout
    while True:
        response = await server.http.get("/readyz")
        if response.status_code == status:
            body: dict[str, Any] = response.json()
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz still {response.status_code} {response.text} after {timeout} s")
        await asyncio.sleep(0.05)


async def start_on(start_server: Callable[..., Any], redis: RedisServer) -> Server:
    """A relay on ``redis`` with a prefix of its own."""
    server: Server = await start_server(RELAY_BROKER_URL=redis.url, RELAY_REDIS_PREFIX=f"outage-{time.time_ns()}")
    return server


async def test_publish_answers_503_and_readyz_503_while_redis_is_down(
    start_server: Callable[..., Any], redis_server: RedisServer
) -> None:
    """While Redis is down: publish and batch items answer 503 with a clear body, /readyz 503; then all recovers."""
    server = await start_on(start_server, redis_server)
    assert (await server.publish("o1")).status_code == 202
    await wait_ready(server, 200)
    redis_server.stop(save=True)

    response = await server.publish("o1", idempotency_key="during-outage")
    assert response.status_code == 503
    body = response.json()
    assert body["error"] == "broker_unavailable"
    assert "unreachable" in body["message"] and "not accepted" in body["message"]
    batch = await server.http.post(
        "/internal/v1/events",
        headers={"Authorization": f"Bearer {PUBLISH_KEY}"},
        json={"events": [{"execution_id": "o1", "event": "progress", "data": {"progress": 1, "stage": "s"}}] * 2},
    )
    assert [r["status"] for r in batch.json()["results"]] == [503, 503]
    ready = await wait_ready(server, 503)
    assert ready["status"] == "broker_unavailable"

    redis_server.start()
    await wait_ready(server, 200)
    response = await server.publish("o1", idempotency_key="during-outage")
    assert response.status_code == 202
    assert response.json() == {"execution_id": "o1", "seq": 2, "duplicate": False}  # nothing was half-accepted


async def test_live_socket_survives_an_outage_and_gets_what_was_published_meanwhile(
    start_server: Callable[..., Any], redis_server: RedisServer
) -> None:
    """A socket stays open through the outage; after it, it receives every event once, in order, then closes 1000."""
    server = await start_on(start_server, redis_server)
    ws = await server.connect("o2")
    assert (await recv_json(ws))["type"] == "connected"
    for _ in range(2):
        await server.publish("o2")
    assert [(await recv_json(ws))["seq"] for _ in range(2)] == [1, 2]

    redis_server.stop(save=True)
    await wait_ready(server, 503)
    await ws.send('{"type": "ping"}')
    assert (await recv_json(ws))["type"] == "pong"  # the socket is alive and answering

    redis_server.start()
    # Another instance reaches Redis first and publishes before this one's pub/sub is back.
    other = RedisBroker(redis_server.url, 1000, 3600, prefix=server.relay.settings.redis_prefix)
    try:
        for _ in range(3):
            await other.publish(progress("o2"))
    finally:
        await other.close()
    await wait_ready(server, 200)
    assert (await server.publish("o2")).json()["seq"] == 6
    assert (await server.publish("o2", "complete")).json()["seq"] == 7
    frames = await recv_until_closed(ws)
    assert [f["seq"] for f in frames] == [3, 4, 5, 6, 7]
    assert ws.close_code == 1000
    stats = server.relay.broker_stats()
    assert stats["redis_resyncs"] >= 1 and stats["redis_pubsub_connected"] == 1


async def test_pubsub_connection_killed_reconnects_resubscribes_and_resyncs(
    start_server: Callable[..., Any], redis_server: RedisServer
) -> None:
    """CLIENT KILL of the pub/sub connection alone: the broker reconnects by itself and the socket misses nothing."""
    server = await start_on(start_server, redis_server)
    ws = await server.connect("o3")
    await recv_json(ws)
    await server.publish("o3")
    assert (await recv_json(ws))["seq"] == 1
    client = redis_server.client()
    try:
        killed = client.client_kill_filter(_type="pubsub")
        assert killed >= 1
    finally:
        client.close()
    for _ in range(3):  # published while the pub/sub connection is being rebuilt
        assert (await server.publish("o3")).status_code == 202
    await wait_ready(server, 200)
    await server.publish("o3", "complete")
    frames = await recv_until_closed(ws)
    assert [f["seq"] for f in frames] == [2, 3, 4, 5]


async def test_instance_starts_without_redis_and_becomes_ready_when_it_appears(
    start_server: Callable[..., Any],
) -> None:
    """With Redis down at start the instance still serves (/readyz 503, publish 503) and is ready once Redis is up."""
    redis = RedisServer(redis_server_binary())
    redis.port = free_port()
    try:
        server = await start_on(start_server, redis)
        assert (await server.http.get("/healthz")).status_code == 200
        await wait_ready(server, 503)
        assert (await server.publish("o4")).status_code == 503
        redis.start()
        await wait_ready(server, 200)
        assert (await server.publish("o4")).status_code == 202
    finally:
        redis.close()


async def test_broker_raises_broker_unavailable_for_every_operation_while_down(redis_server: RedisServer) -> None:
    """publish, publish_many, history, subscribe and ping all answer BrokerUnavailable while Redis is down."""
    broker = RedisBroker(redis_server.url, 100, 3600, prefix=f"down-{time.time_ns()}")
    broker.set_listener(lambda eid, event: None)
    await broker.start()
    try:
        await broker.publish(progress("d"))
        redis_server.stop()
        with pytest.raises(BrokerUnavailable):
            await broker.publish(progress("d"))
        with pytest.raises(BrokerUnavailable):
            await broker.history("d")
        with pytest.raises(BrokerUnavailable):
            await broker.ping()
        results = await broker.publish_many([progress("d"), progress("e")])
        assert [type(r) for r in results] == [BrokerUnavailable, BrokerUnavailable]
        async with asyncio.timeout(5):
            while broker.stats()["redis_pubsub_connected"]:
                await asyncio.sleep(0.02)
        with pytest.raises(BrokerUnavailable):
            await broker.subscribe("d")
    finally:
        await broker.close()
