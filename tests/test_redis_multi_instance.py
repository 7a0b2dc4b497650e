"""Several service processes sharing one Redis behave like one service.

Each test starts real ``python -m service`` processes on free ports with
``RELAY_BROKER_URL`` pointing at the test Redis and a key prefix of its own,
and talks to them over HTTP and WebSocket like a scheduler and browsers would.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import psutil
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import PUBLISH_KEY, make_token
from tests.redis_util import ServiceProcess, redis_prefix, redis_url  # noqa: F401

pytestmark = [pytest.mark.redis, pytest.mark.slow]
AUTH = {"Authorization": f"Bearer {PUBLISH_KEY}"}


def start_instances(count: int, url: str, prefix: str, **env: str) -> list[ServiceProcess]:
    """Start ``count`` service processes sharing ``url`` and ``prefix`` (in parallel)."""
    procs = [ServiceProcess(RELAY_BROKER_URL=url, RELAY_REDIS_PREFIX=prefix, **env) for _ in range(count)]
    try:
        for proc in procs:
            proc.spawn()
        for proc in procs:
            proc.wait_ready()
    except BaseException:
        for proc in procs:
            proc.stop()
        raise
    return procs


@pytest.fixture
def pair(redis_url: str, redis_prefix: str) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """Instances A and B on one Redis."""
    a, b = start_instances(2, redis_url, redis_prefix)
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the publisher side."""
    async with httpx.AsyncClient(timeout=10.0) as client:
        yield client


async def publish(
    http: httpx.AsyncClient,
    proc: ServiceProcess,
    execution_id: str,
    event: str = "progress",
    key: str | None = None,
    **data: Any,
) -> httpx.Response:
    """POST one event to ``proc``."""
    if event == "progress":
        data = {"progress": 10, "stage": "ai_fetching", **data}
    body: dict[str, Any] = {"event": event, "data": data}
    if key is not None:
        body["idempotency_key"] = key
    return await http.post(f"{proc.base}/internal/v1/executions/{execution_id}/events", json=body, headers=AUTH)


async def until_stats(http: httpx.AsyncClient, proc: ServiceProcess, check: Any, timeout: float = 10) -> None:
    """Wait until ``check`` holds for the instance's /internal/v1/stats."""
    headers = {"Authorization": f"Bearer {PUBLISH_KEY}"}
    async with asyncio.timeout(timeout):
        while not check((await http.get(f"{proc.base}/internal/v1/stats", headers=headers)).json()):
            await asyncio.sleep(0.02)


async def subscribe(
    proc: ServiceProcess, execution_id: str, last_seq: int | None = None
) -> tuple[ClientConnection, dict[str, Any]]:
    """Open a WebSocket on ``proc`` and read its ``connected`` frame."""
    ws = await connect(proc.ws_url(execution_id, make_token(execution_id), last_seq))
    hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert hello["type"] == "connected", hello
    return ws, hello


async def read_until_closed(ws: ClientConnection, timeout: float = 15.0) -> list[int]:
    """The seqs of every frame until the server closes the socket."""
    seqs = []
    async with asyncio.timeout(timeout):
        async for message in ws:
            seqs.append(json.loads(message)["seq"])
    return seqs


async def test_publish_on_a_reaches_subscribers_on_a_and_b(
    pair: tuple[ServiceProcess, ServiceProcess], http: httpx.AsyncClient
) -> None:
    """Events published on A reach subscribers on A and on B, all of them, in order, then close 1000."""
    a, b = pair
    (ws_a, _), (ws_b, _) = await subscribe(a, "x1"), await subscribe(b, "x1")
    readers = [asyncio.create_task(read_until_closed(ws)) for ws in (ws_a, ws_b)]
    for i in range(20):
        assert (await publish(http, a, "x1", progress=i)).status_code == 202
    assert (await publish(http, a, "x1", "complete")).json()["seq"] == 21
    assert await readers[0] == list(range(1, 22))
    assert await readers[1] == list(range(1, 22))
    assert ws_a.close_code == ws_b.close_code == 1000


async def test_resume_on_another_instance_gets_exactly_the_missing_events(
    pair: tuple[ServiceProcess, ServiceProcess], http: httpx.AsyncClient
) -> None:
    """A subscriber leaves A after seq 5 and resumes on B with last_seq=5: it gets 6.. and nothing twice."""
    a, b = pair
    ws, _ = await subscribe(a, "x2")
    for _ in range(5):
        await publish(http, a, "x2")
    seen = [json.loads(await asyncio.wait_for(ws.recv(), 5))["seq"] for _ in range(5)]
    await ws.close()
    for _ in range(4):
        await publish(http, a, "x2")
    ws, hello = await subscribe(b, "x2", last_seq=seen[-1])
    assert (hello["resumed"], hello["latest_seq"], hello.get("gap", False)) == (True, 9, False)
    reader = asyncio.create_task(read_until_closed(ws))
    await publish(http, b, "x2", "complete")
    assert seen + await reader == list(range(1, 11))


async def test_concurrent_publishers_on_a_and_b_get_seqs_without_gap_or_duplicate(
    pair: tuple[ServiceProcess, ServiceProcess], http: httpx.AsyncClient
) -> None:
    """Two publishers, one per instance, 60 events each to one execution: seqs 1..120, delivered in order."""
    a, b = pair
    ws, _ = await subscribe(b, "x3")
    reader = asyncio.create_task(read_until_closed(ws))

    async def publisher(proc: ServiceProcess) -> list[int]:
        seqs = []
        for _ in range(60):
            response = await publish(http, proc, "x3")
            assert response.status_code == 202, response.text
            seqs.append(response.json()["seq"])
        return seqs

    from_a, from_b = await asyncio.gather(publisher(a), publisher(b))
    assert sorted(from_a + from_b) == list(range(1, 121))
    assert from_a == sorted(from_a) and from_b == sorted(from_b)
    await publish(http, a, "x3", "complete")
    assert await reader == list(range(1, 122))


async def test_long_poll_and_sse_on_b_wake_up_for_events_published_on_a(
    pair: tuple[ServiceProcess, ServiceProcess], http: httpx.AsyncClient
) -> None:
    """A long poll and an SSE stream on B return / stream as soon as A accepts events."""
    a, b = pair
    token = make_token("x4")
    poll = asyncio.create_task(
        http.get(f"{b.base}/v1/executions/x4/events", params={"after": 0, "wait": 20, "token": token})
    )
    sse_lines: list[str] = []

    async def read_sse() -> None:
        async with http.stream(
            "GET", f"{b.base}/v1/executions/x4/stream", params={"token": token}, timeout=20.0
        ) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                sse_lines.append(line)

    sse = asyncio.create_task(read_sse())

    def waiting_on_b(stats: dict[str, Any]) -> bool:
        return stats["gauges"]["connections_open"].get("sse") == 1 and stats["executions"] == 1

    await until_stats(http, b, waiting_on_b)  # the stream is registered on B, and so is the poll or about to
    assert not poll.done()
    await publish(http, a, "x4")
    response = await asyncio.wait_for(poll, 10)  # far less than wait=20: woken, not timed out
    assert [e["seq"] for e in response.json()["events"]] == [1]
    await publish(http, a, "x4")
    await publish(http, a, "x4", "complete")
    await asyncio.wait_for(sse, 10)
    ids = [int(line[4:].rpartition(":")[2]) for line in sse_lines if line.startswith("id: ")]
    assert ids == [1, 2, 3]


async def test_kill_9_of_an_instance_loses_nothing(
    pair: tuple[ServiceProcess, ServiceProcess], http: httpx.AsyncClient
) -> None:
    """A is killed with SIGKILL while events flow: its clients resume on B and see every event exactly once."""
    a, b = pair
    total = 80
    progress = asyncio.Event()

    async def publisher() -> None:
        for i in range(1, total + 1):
            event = "complete" if i == total else "progress"
            key = f"event-{i}"  # retried on B after A died: never twice
            try:
                response = await publish(http, a if i % 2 else b, "k1", event, key=key)
                if response.status_code != 202:
                    raise httpx.HTTPError(str(response.status_code))
            except httpx.HTTPError:
                response = await publish(http, b, "k1", event, key=key)
            assert response.status_code == 202, response.text
            if i == 25:
                progress.set()
            await asyncio.sleep(0.01)

    async def subscriber(first: ServiceProcess) -> tuple[list[int], int]:
        seqs: list[int] = []
        target = first
        for attempt in range(1, 6):
            ws, _ = await subscribe(target, "k1", last_seq=seqs[-1] if seqs else None)
            try:
                async for message in ws:
                    seqs.append(json.loads(message)["seq"])
            except ConnectionClosed:
                pass
            if ws.close_code == 1000:
                return seqs, attempt
            target = b  # A is gone: resume on the other instance
        raise AssertionError(f"never finished; got {seqs}")

    subscribers = [asyncio.create_task(subscriber(a)) for _ in range(3)] + [asyncio.create_task(subscriber(b))]
    for proc, sockets in ((a, 3), (b, 1)):
        await until_stats(http, proc, lambda stats, n=sockets: stats["gauges"]["connections_open"].get("ws") == n)
    pub = asyncio.create_task(publisher())
    await asyncio.wait_for(progress.wait(), 10)
    a.kill()
    assert not pub.done()  # events were still flowing
    await asyncio.wait_for(pub, 15)
    results = await asyncio.wait_for(asyncio.gather(*subscribers), 15)
    for seqs, _ in results:
        assert seqs == list(range(1, total + 1))
    assert [connections for _, connections in results] == [2, 2, 2, 1]  # A's clients resumed once, on B


async def test_two_workers_on_redis_start_and_serve(redis_url: str, redis_prefix: str, http: httpx.AsyncClient) -> None:
    """RELAY_WORKERS=2 with Redis runs two worker processes, and events cross between them."""
    (proc,) = start_instances(1, redis_url, redis_prefix, RELAY_WORKERS="2")
    try:
        assert proc.proc is not None
        workers = [p for p in psutil.Process(proc.proc.pid).children(recursive=True) if "python" in p.name()]
        assert len(workers) >= 2, proc.output()
        sockets = [(await subscribe(proc, "w1"))[0] for _ in range(6)]
        readers = [asyncio.create_task(read_until_closed(ws)) for ws in sockets]
        for i in range(10):
            async with httpx.AsyncClient(timeout=10.0) as fresh:  # a new connection: any worker may take it
                assert (await publish(fresh, proc, "w1", progress=i)).status_code == 202
        await publish(http, proc, "w1", "complete")
        for reader in readers:
            assert await reader == list(range(1, 12))
    finally:
        proc.stop()
