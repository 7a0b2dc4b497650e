"""Graceful shutdown: SIGTERM to a real server process with connected clients.

Each test starts ``python -m service`` (tests/redis_util.ServiceProcess) and
drives it over real sockets, so what is checked is what Kubernetes sees: the
readiness answers, the close codes clients receive, the exit code and time.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import time
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from service.web.shutdown import LEAD, MIN_CLOSE_RATE, TICK, schedule
from tests.conftest import PUBLISH_KEY, make_settings, make_token
from tests.redis_util import ServiceProcess, delete_prefix, require_redis

AUTH = {"Authorization": f"Bearer {PUBLISH_KEY}"}


def test_schedule_spreads_closes_in_small_batches() -> None:
    """Many sockets are closed in batches at least TICK apart over the window, each exactly once."""
    plan = schedule(1000, 10.0)
    assert len(plan) == int(10.0 / TICK)
    assert plan[0][0] > LEAD, "the first batch waits, so readiness turns 503 before any close"
    assert plan[-1][0] == pytest.approx(LEAD + 10.0)
    assert all(b[0] - a[0] >= TICK - 1e-9 for a, b in itertools.pairwise(plan))
    covered = [i for _, start, stop in plan for i in range(start, stop)]
    assert covered == list(range(1000))
    assert max(stop - start for _, start, stop in plan) <= 1000 // len(plan) + 1


def test_schedule_does_not_hold_back_a_few_sockets() -> None:
    """A handful of sockets closes at MIN_CLOSE_RATE at least, not over the whole window; none, no batch."""
    plan = schedule(5, 10.0)
    assert plan[-1][0] == pytest.approx(LEAD + 5 / MIN_CLOSE_RATE)
    assert schedule(0, 10.0) == []
    assert schedule(3, 0.0) == [(0.0, 0, 3)]


def test_shutdown_settings_are_validated() -> None:
    """The close window defaults to half the timeout and must stay below it."""
    from service.config import ConfigError

    settings = make_settings(RELAY_SHUTDOWN_TIMEOUT="8")
    assert (settings.shutdown_timeout, settings.shutdown_close_window) == (8.0, 4.0)
    with pytest.raises(ConfigError, match="RELAY_SHUTDOWN_CLOSE_WINDOW"):
        make_settings(RELAY_SHUTDOWN_TIMEOUT="5", RELAY_SHUTDOWN_CLOSE_WINDOW="5")


class Client:
    """One subscriber socket that records every event seq and how and when it was closed."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seqs: list[int] = []
        self.close_code: int | None = None
        self.closed_at = 0.0
        self.ws: ClientConnection | None = None

    async def open(self) -> None:
        self.ws = await connect(self.url, open_timeout=5)
        first = json.loads(await asyncio.wait_for(self.ws.recv(), 5))
        assert first["type"] == "connected"

    async def read(self) -> None:
        assert self.ws is not None
        try:
            async for message in self.ws:
                frame = json.loads(message)
                if frame.get("type") == "diagnosis_update":
                    self.seqs.append(frame["seq"])
        except ConnectionClosed:
            pass
        self.closed_at = time.monotonic()
        self.close_code = self.ws.close_code


async def publish(
    base: str, execution_id: str, event: str = "progress", http: httpx.AsyncClient | None = None, **data: Any
) -> httpx.Response:
    """One event through the internal API (on ``http`` when given, else a fresh connection)."""
    body = {"event": event, "data": data or {"progress": 1, "stage": "running"}}
    if http is not None:
        return await http.post(f"{base}/internal/v1/executions/{execution_id}/events", json=body, headers=AUTH)
    async with httpx.AsyncClient(timeout=5) as fresh:
        return await publish(base, execution_id, event, fresh, **data)


def wait_exit(service: ServiceProcess, timeout: float) -> tuple[int | None, float]:
    """SIGTERM the service; its exit code and seconds until it exited (None if still running)."""
    assert service.proc is not None
    started = time.monotonic()
    os.kill(service.proc.pid, signal.SIGTERM)
    try:
        code = service.proc.wait(timeout)
    except Exception:
        return None, time.monotonic() - started
    return code, time.monotonic() - started


async def test_sigterm_drains_then_exits_zero() -> None:
    """SIGTERM: /readyz 503 first, then every client gets 1012 in spread batches, new sockets 1012, exit 0 in time."""
    timeout = 6.0
    service = ServiceProcess(
        RELAY_SHUTDOWN_TIMEOUT=str(timeout), RELAY_SHUTDOWN_CLOSE_WINDOW="3", RELAY_LOG_LEVEL="INFO"
    )
    service.start()
    try:
        eid = "drain-1"
        clients = [Client(service.ws_url(eid, make_token(eid, sub=f"user-{i}"))) for i in range(40)]
        await asyncio.gather(*(c.open() for c in clients))
        readers = [asyncio.create_task(c.read()) for c in clients]
        for _ in range(3):
            assert (await publish(service.base, eid)).status_code == 202

        readiness: list[tuple[float, int]] = []
        refused: list[int | None] = []
        published_during_drain: list[int] = []
        stop = asyncio.Event()

        async def probe() -> None:
            async with httpx.AsyncClient(timeout=2) as http:
                while not stop.is_set():
                    try:
                        r = await http.get(f"{service.base}/readyz")
                    except httpx.HTTPError:
                        return  # the listener is closed: the drain is over
                    readiness.append((time.monotonic(), r.status_code))
                    if r.status_code == 503 and not refused:
                        refused.append(None)
                        late = await connect(service.ws_url(eid, make_token(eid)), open_timeout=5)
                        with pytest.raises(ConnectionClosed):
                            await asyncio.wait_for(late.recv(), 5)
                        refused[0] = late.close_code
                        r = await publish(service.base, eid)  # a publish during the drain is still accepted
                        published_during_drain.append(r.status_code)

        prober = asyncio.create_task(probe())
        for _ in range(100):
            if len(readiness) >= 3:
                break
            await asyncio.sleep(0.05)
        assert readiness and all(status == 200 for _, status in readiness)
        code, elapsed = await asyncio.to_thread(wait_exit, service, timeout + 5)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*readers, prober), 10)

        assert code == 0, service.output()
        assert elapsed < timeout, f"exited after {elapsed:.1f} s"
        assert [c.close_code for c in clients] == [1012] * len(clients)
        first_503 = min(t for t, status in readiness if status == 503)
        first_close = min(c.closed_at for c in clients)
        assert first_503 < first_close, "readiness must turn 503 before the first socket is closed"
        spread = max(c.closed_at for c in clients) - first_close
        assert spread > 0.3, f"all closes within {spread:.3f} s: not spread in batches"
        assert refused == [1012]
        assert published_during_drain == [202]
        # Every client got every event accepted before it was closed, in order.
        for c in clients:
            assert c.seqs == list(range(1, len(c.seqs) + 1)) and len(c.seqs) >= 3
    finally:
        service.stop()


async def test_sigterm_without_clients_exits_at_once() -> None:
    """An idle server exits 0 well before the timeout: the window is only used when there are sockets."""
    service = ServiceProcess(RELAY_SHUTDOWN_TIMEOUT="10").start()
    try:
        code, elapsed = await asyncio.to_thread(wait_exit, service, 15)
        assert code == 0, service.output()
        assert elapsed < 3, f"an idle server took {elapsed:.1f} s to stop"
    finally:
        service.stop()


@pytest.mark.redis
@pytest.mark.slow
async def test_clients_resume_on_the_other_instance_without_loss() -> None:
    """Two instances on Redis: SIGTERM one mid-stream; its clients resume on the other and miss no event."""
    url = require_redis()
    prefix = f"relaytest-shutdown-{os.getpid()}"
    env = {
        "RELAY_BROKER_URL": url,
        "RELAY_REDIS_PREFIX": prefix,
        "RELAY_SHUTDOWN_TIMEOUT": "6",
        "RELAY_SHUTDOWN_CLOSE_WINDOW": "2",
    }
    a, b = ServiceProcess(**env).start(), ServiceProcess(**env).start()
    total = 60
    try:
        eids = [f"roll-{i}" for i in range(4)]
        received: dict[tuple[str, int], list[int]] = {}
        codes: list[int | None] = []
        on_a: list[tuple[str, int]] = []
        all_on_a, midway = asyncio.Event(), asyncio.Event()

        async def subscriber(eid: str, n: int) -> None:
            seqs = received.setdefault((eid, n), [])
            token = make_token(eid, sub=f"user-{n}")
            current = a
            while True:
                last = seqs[-1] if seqs else None
                async with connect(current.ws_url(eid, token, last), open_timeout=5) as ws:
                    try:
                        async for message in ws:
                            frame = json.loads(message)
                            if frame.get("type") == "diagnosis_update":
                                seqs.append(frame["seq"])
                            elif frame.get("type") == "connected" and current is a:
                                on_a.append((eid, n))
                                if len(on_a) == len(eids) * 5:
                                    all_on_a.set()
                    except ConnectionClosed:
                        pass
                    codes.append(ws.close_code)
                    if ws.close_code == 1000:
                        return
                    assert ws.close_code == 1012, ws.close_code
                current = b  # resume on the instance that stays

        subscribers = [asyncio.create_task(subscriber(eid, n)) for eid in eids for n in range(5)]
        await asyncio.wait_for(all_on_a.wait(), 15)

        async def publisher() -> None:
            async with httpx.AsyncClient(timeout=5) as http:
                for seq in range(1, total + 1):
                    for eid in eids:
                        event = "complete" if seq == total else "progress"
                        data = {"report": {}} if seq == total else {"progress": 1, "stage": "s"}
                        r = await publish(b.base, eid, event, http, **data)
                        assert r.status_code == 202 and r.json()["seq"] == seq
                    if seq == 10:
                        midway.set()
                    await asyncio.sleep(0.04)  # a steady stream, still flowing when A drains

        publishing = asyncio.create_task(publisher())
        await asyncio.wait_for(midway.wait(), 15)  # events are flowing: SIGTERM mid-stream
        code, elapsed = await asyncio.to_thread(wait_exit, a, 10)
        assert code == 0, a.output()
        assert elapsed < 6
        await asyncio.wait_for(publishing, 30)
        await asyncio.wait_for(asyncio.gather(*subscribers), 30)
        assert codes.count(1012) == len(subscribers)
        for key, seqs in received.items():
            assert seqs == list(range(1, total + 1)), key
    finally:
        a.stop()
        b.stop()
        delete_prefix(url, prefix)


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.parametrize("target", ["main", "group"])
async def test_sigterm_drains_every_worker(target: str) -> None:
    """RELAY_WORKERS=2: SIGTERM to the main process (or to the whole group) drains each worker in time."""
    url = require_redis()
    prefix = f"relaytest-workers-{os.getpid()}-{target}"
    service = ServiceProcess(
        RELAY_WORKERS="2",
        RELAY_BROKER_URL=url,
        RELAY_REDIS_PREFIX=prefix,
        RELAY_SHUTDOWN_TIMEOUT="6",
        RELAY_LOG_LEVEL="INFO",
    )
    service.start(timeout=30)
    try:
        for _ in range(300):  # /readyz answers once one worker is up; wait for both
            if service.output().count("Worker ready") >= 2:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail(f"the second worker never became ready:\n{service.output()}")
        clients = [Client(service.ws_url("workers", make_token("workers", sub=f"u{i}"))) for i in range(12)]
        for c in clients:
            await c.open()  # one connection at a time: the kernel spreads them over the workers
        readers = [asyncio.create_task(c.read()) for c in clients]
        assert service.proc is not None
        started = time.monotonic()
        if target == "group":
            os.killpg(service.proc.pid, signal.SIGTERM)  # what `kill -TERM -<pgid>` or a shell wrapper does
        else:
            os.kill(service.proc.pid, signal.SIGTERM)
        try:
            code = await asyncio.to_thread(service.proc.wait, 15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 15 s after SIGTERM:\n{service.output()}")
        elapsed = time.monotonic() - started
        await asyncio.wait_for(asyncio.gather(*readers), 10)
        if target == "main":  # what Kubernetes does: PID 1 alone gets SIGTERM
            assert code == 0, service.output()
        # else: Sanic's shared-state manager process is in the group too and dies of the signal, which the
        # main process may report as a BrokenPipeError (exit 1) once the workers are done; they drained.
        assert elapsed < 6
        assert [c.close_code for c in clients] == [1012] * len(clients), service.output()
        assert "KeyboardInterrupt" not in service.output()
    finally:
        service.stop()
        delete_prefix(url, prefix)


async def test_drain_waits_for_publishes_in_flight_and_ends_long_polls(start_server: Any) -> None:
    """The drain answers waiting long polls at once and returns only after a publish in flight finished."""
    from service.web import shutdown

    server = await start_server(RELAY_SHUTDOWN_TIMEOUT="5")
    relay = server.relay
    token = make_token("inflight")
    poll = asyncio.create_task(server.http.get("/v1/executions/inflight/events", params={"token": token, "wait": 20}))
    original = relay._broker.publish  # a slow broker, injected into a private part
    gate = asyncio.Event()

    async def slow_publish(draft: Any) -> Any:
        await gate.wait()
        return await original(draft)

    relay._broker.publish = slow_publish
    pending = asyncio.create_task(server.publish("inflight"))
    for _ in range(200):
        if relay.publishing and relay.connections:
            break
        await asyncio.sleep(0.01)
    assert relay.publishing == 1 and relay.connections == 1
    started = time.monotonic()
    drain = asyncio.create_task(shutdown.drain(server.app))
    r = await asyncio.wait_for(poll, 2)
    assert r.status_code == 200 and r.json()["events"] == []  # answered now, not after 20 s
    assert (await server.http.get("/readyz")).status_code == 503
    done, _ = await asyncio.wait({drain}, timeout=0.3)
    assert not done, "the drain must wait for the publish in flight"
    gate.set()
    assert (await pending).status_code == 202
    await asyncio.wait_for(drain, 3)
    assert relay.publishing == 0 and time.monotonic() - started < 3
    assert (await server.http.get("/metrics")).text.count("relay_draining 1.0") == 1
