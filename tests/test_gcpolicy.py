"""The collection policy (service/gcpolicy.py) on a real server with real sockets.

Full collections must not scan open connections' objects (they are what made
the relay's full collections last 100+ ms after a crowd connected), and what
closed connections leave in reference cycles must still be reclaimed.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from websockets.server import ServerProtocol

from service.events import Event
from service.gcpolicy import CollectionPolicy
from service.subscription import Subscription
from service.web import wsproto
from service.web.hardening import RelayHttp
from service.web.wsproto import RelayWebSocketProtocol
from tests.conftest import make_token, recv_json


def scanned(kind: type) -> int:
    """How many objects of ``kind`` a collection would scan (not frozen)."""
    return sum(1 for o in gc.get_objects() if isinstance(o, kind))


def scanned_protocols() -> int:
    """How many of the server's connection protocols a collection would scan (not frozen)."""
    return sum(1 for o in gc.get_objects() if isinstance(o, RelayWebSocketProtocol))


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds (checked on every loop turn), or fail."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.fixture
async def policy(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[CollectionPolicy]:
    """A fresh policy the server's protocols report to, uninstalled afterwards."""
    fresh = CollectionPolicy(min_closed=10)
    monkeypatch.setattr(wsproto, "gc_policy", fresh)
    yield fresh
    fresh.uninstall()


async def test_full_collections_skip_open_connections(start_server: Callable[..., Any], policy: Any) -> None:
    """After a full collection, the open sockets' protocol objects are frozen: no collection scans them again."""
    server = await start_server()
    policy.install()
    sockets = [await server.connect(f"gc-open-{i}") for i in range(12)]
    for ws in sockets:
        assert (await recv_json(ws))["type"] == "connected"
    await wait_for(lambda: policy.open >= 12)

    gc.collect()

    assert scanned_protocols() == 0  # every live one was moved out of reach of the collector
    assert gc.get_freeze_count() > 12 * 50  # with the ~130 objects each connection holds
    for ws in sockets:  # and the sockets still work
        await ws.ping()


async def test_young_collections_freeze_events_kept_in_history(server: Any, policy: Any) -> None:
    """Events kept in history are frozen by the first young collection they survive: none rescans them."""
    policy.install()
    gc.disable()  # no collection before the one below
    try:
        for _ in range(50):
            assert (await server.publish("gc-history")).status_code == 202
        assert scanned(Event) >= 50  # young: the next collection sees them

        gc.collect(0)
    finally:
        gc.enable()

    assert scanned(Event) == 0  # not promoted to the middle generation: frozen
    assert [e.seq for e in (await server.relay.history("gc-history")).events][-1] == 50  # and still kept


async def test_compaction_reclaims_closed_connections(start_server: Callable[..., Any], policy: Any) -> None:
    """Once four times as many connections closed as are open (at least min_closed), a compaction runs."""
    server = await start_server()
    policy.install()
    sockets = [await server.connect(f"gc-closed-{i}") for i in range(policy.min_closed)]
    for ws in sockets:
        assert (await recv_json(ws))["type"] == "connected"
    gc.collect()  # frozen, cycles and all
    assert scanned_protocols() == 0
    assert policy.compactions == 0

    for ws in sockets:
        await ws.close()
    server.sockets.clear()
    await wait_for(lambda: policy.compactions == 1)

    assert policy.closed == 0
    policy.uninstall()  # unfreezes (without collecting): closed ones not reclaimed would be visible again
    assert scanned_protocols() == 0


async def test_a_crowd_leaving_makes_no_compaction_due(start_server: Callable[..., Any], policy: Any) -> None:
    """Fewer closes than four times the sockets still open: no compaction (it would stall those sockets)."""
    server = await start_server()
    policy.install()
    staying = [await server.connect(f"gc-stay-{i}") for i in range(5)]
    leaving = [await server.connect(f"gc-leave-{i}") for i in range(3 * len(staying))]
    for ws in staying + leaving:
        assert (await recv_json(ws))["type"] == "connected"
    for ws in leaving:
        ws.transport.abort()  # dropped all at once
    await wait_for(lambda: policy.open == len(staying))

    assert policy.closed == len(leaving) >= policy.min_closed  # enough closes, but not four times the open ones
    assert policy.compactions == 0 and not policy._compaction_due


#: What each connection has on the server side (a cycle through any of them holds its whole graph). Not
#: the request: the contexts of asyncio's timers hold it until they are due, cancelled ones too (it
#: holds none of these).
PER_CONNECTION = (RelayWebSocketProtocol, RelayHttp, ServerProtocol, Subscription)


def per_connection() -> list[Any]:
    """The per-connection server objects in memory."""
    return [o for o in gc.get_objects() if issubclass(type(o), PER_CONNECTION)]


async def close_ws(server: Any, how: str) -> None:
    """Open sockets (refused ones too) and end them: a close handshake, or a dropped TCP connection."""
    token = "not-a-token" if how == "refused" else None
    sockets = [await server.connect(f"gc-cycles-{i}", token=token) for i in range(5)]
    for ws in sockets:
        if how == "refused":
            await ws.wait_closed()
            assert ws.close_code == 4500  # the token was refused
        else:
            assert (await recv_json(ws))["type"] == "connected"
            if how == "abort":
                ws.transport.abort()
            else:
                await ws.close()
    server.sockets.clear()


async def close_http(server: Any, how: str) -> None:
    """Publish over keep-alive; read a stream (SSE) and a long poll; then close the client's connections."""
    assert (await server.publish("gc-cycles-http")).status_code == 202
    token = make_token("gc-cycles-http")
    if how == "sse":
        async with server.http.stream("GET", f"/v1/executions/gc-cycles-http/stream?token={token}") as response:
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    break  # the first event: the client leaves mid-stream
    elif how == "poll":
        response = await server.http.get(f"/v1/executions/gc-cycles-http/events?token={token}&after=0")
        assert response.status_code == 200
    await server.http.aclose()


@pytest.mark.parametrize("how", ["ws-close", "ws-abort", "ws-refused", "publish", "sse", "poll"])
async def test_a_closed_connection_leaves_no_reference_cycle(
    start_server: Callable[..., Any], policy: Any, how: str
) -> None:
    """Whichever way a connection ends, refcounting frees all its server objects: nothing waits for a collection.

    Frozen by the policy while open, an object in a cycle could only be freed by a
    compaction (a full collection of everything, standing the loop still): after a
    crowd of clients drops at once, that was the one long pause left.
    """
    server = await start_server()
    gc.collect()
    before = per_connection()  # earlier tests' (kept alive here, so no new object takes one's id)
    earlier = {id(o) for o in before}

    def left_over() -> list[str]:
        return sorted(type(o).__qualname__ for o in per_connection() if id(o) not in earlier)

    gc.disable()  # from here, only reference counting frees anything
    try:
        if how.startswith("ws-"):
            await close_ws(server, how.removeprefix("ws-"))
        else:
            await close_http(server, how)
        await wait_for(lambda: policy.open == 0)  # every connection_lost has run
        await wait_for(lambda: not left_over())  # and what each held is freed (their tasks end a turn or two later)
    finally:
        gc.enable()


def test_uninstall_restores_cpython_policy() -> None:
    """Uninstalling puts the thresholds back and makes frozen objects collectable again."""
    before = gc.get_threshold()
    policy = CollectionPolicy()
    policy.install()
    try:
        assert gc.get_threshold()[2] == 1
        assert policy._after_collection in gc.callbacks
        policy.install()  # idempotent
        assert gc.callbacks.count(policy._after_collection) == 1
    finally:
        policy.uninstall()
    assert gc.get_threshold() == before
    assert policy._after_collection not in gc.callbacks
    assert gc.get_freeze_count() == 0
