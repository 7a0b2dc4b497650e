"""Configurable limits: connections, frame rate, handshake time; each answers 4029 or drops."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.exceptions import ConnectionClosed

from service.limits import Turnstile
from tests.conftest import Server, StartServer, counted, make_token, recv_json


async def refused_code(server: Server, execution_id: str, token: str) -> int:
    """Connect and return the close code of an immediate refusal."""
    ws = await server.connect(execution_id, token=token)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code is not None
    return ws.close_code


async def test_connections_per_execution_limit_closes_4029(start_server: StartServer) -> None:
    """Past RELAY_MAX_CONNECTIONS_PER_EXECUTION, a new socket of that execution gets 4029; others are fine."""
    server = await start_server(RELAY_MAX_CONNECTIONS_PER_EXECUTION="2")
    refused = counted("limit_exceeded", "per_execution")
    for i in range(2):
        assert (await recv_json(await server.connect("e1", token=make_token("e1", sub=f"u{i}"))))["type"] == "connected"
    assert await refused_code(server, "e1", make_token("e1", sub="u9")) == 4029
    assert (await recv_json(await server.connect("e2", token=make_token("e2"))))["type"] == "connected"
    assert counted("limit_exceeded", "per_execution") == refused + 1


async def test_connections_per_sub_limit_and_release(start_server: StartServer) -> None:
    """Past RELAY_MAX_CONNECTIONS_PER_SUB, the same user gets 4029 until one of its sockets closes."""
    server = await start_server(RELAY_MAX_CONNECTIONS_PER_SUB="2")
    first = await server.connect("e1", token=make_token("e1", sub="alice"))
    await recv_json(first)
    await recv_json(await server.connect("e2", token=make_token("e2", sub="alice")))
    assert await refused_code(server, "e3", make_token("e3", sub="alice")) == 4029
    await recv_json(await server.connect("e3", token=make_token("e3", sub="bob")))
    await first.close()
    limits = server.app.ctx.limits
    async with asyncio.timeout(5):
        while limits._by_sub.get("alice") != 1:  # the server has seen the close and released the slot
            await asyncio.sleep(0.01)
    assert (await recv_json(await server.connect("e3", token=make_token("e3", sub="alice"))))["type"] == "connected"


async def test_total_connection_limit(start_server: StartServer) -> None:
    """Past RELAY_MAX_CONNECTIONS on the instance, new sockets get 4029."""
    server = await start_server(RELAY_MAX_CONNECTIONS="3")
    for i in range(3):
        await recv_json(await server.connect(f"e{i}", token=make_token(f"e{i}", sub=f"u{i}")))
    assert await refused_code(server, "e9", make_token("e9", sub="u9")) == 4029


async def test_client_sending_too_fast_is_closed_4029(start_server: StartServer) -> None:
    """A client flooding frames beyond RELAY_WS_MAX_FRAMES_PER_SECOND (burst 2x) is closed with 4029."""
    server = await start_server(RELAY_WS_MAX_FRAMES_PER_SECOND="5")
    ws = await server.connect("e1")
    await recv_json(ws)
    pongs = 0
    with pytest.raises(ConnectionClosed):
        for _ in range(100):
            await ws.send(json.dumps({"type": "ping"}))
        while True:
            frame = await recv_json(ws)
            pongs += frame["type"] == "pong"
    assert ws.close_code == 4029
    assert 5 <= pongs <= 12  # the burst was answered, the flood was not


async def test_a_polite_client_is_never_rate_limited(start_server: StartServer) -> None:
    """Pings at the advertised heartbeat pace are always answered."""
    server = await start_server(RELAY_WS_MAX_FRAMES_PER_SECOND="5")
    ws = await server.connect("e1")
    await recv_json(ws)
    for _ in range(12):
        await ws.send(json.dumps({"type": "ping"}))
        assert (await recv_json(ws))["type"] == "pong"
        await asyncio.sleep(0.25)


async def test_silent_tcp_connection_is_dropped_after_handshake_timeout(start_server: StartServer) -> None:
    """A client that opens TCP and sends nothing is disconnected after RELAY_HANDSHAKE_TIMEOUT."""
    server = await start_server(RELAY_HANDSHAKE_TIMEOUT="0.5")
    reader, writer = await asyncio.open_connection(server.host, server.port)
    data = await asyncio.wait_for(reader.read(), 5)  # returns at EOF: the server hung up
    assert reader.at_eof()
    assert data == b"" or data.startswith(b"HTTP/1.1 408")
    writer.close()


async def test_sse_streams_count_toward_the_connection_limits(start_server: StartServer) -> None:
    """An open SSE stream holds a slot like a socket: past the per-user limit a new stream gets 429."""
    server = await start_server(RELAY_MAX_CONNECTIONS_PER_SUB="1")
    token = make_token("e1", sub="carol")
    async with server.http.stream("GET", f"/v1/executions/e1/stream?token={token}") as first:
        assert first.status_code == 200
        second = await server.http.get(f"/v1/executions/e1/stream?token={token}")
        assert second.status_code == 429 and second.json()["error"] == "rate_limited"
        assert await refused_code(server, "e1", token) == 4029


async def _turns(count: int) -> None:
    """Let ``count`` turns of the event loop pass."""
    for _ in range(count):
        await asyncio.sleep(0)


async def test_turnstile_lets_a_few_through_per_turn_in_arrival_order() -> None:
    """Five callers in one turn: two go through at once, then two per later turn, first come first through."""
    gate = Turnstile(per_turn=2)
    through: list[int] = []
    turns: list[int] = []  # the turn each caller went through in
    turn = 0

    async def caller(index: int) -> None:
        await gate.enter()
        through.append(index)
        turns.append(turn)

    tasks = [asyncio.get_running_loop().create_task(caller(i)) for i in range(5)]
    while not all(task.done() for task in tasks):
        await asyncio.sleep(0)
        turn += 1
    assert through == [0, 1, 2, 3, 4]
    # No turn lets more than two through, and the last one waited for later turns.
    assert max(turns.count(t) for t in set(turns)) == 2
    assert turns[4] > turns[0]


async def test_turnstile_skips_a_caller_that_left_while_waiting() -> None:
    """A waiting caller cancelled (its client left) takes no place; the ones behind it go through."""
    gate = Turnstile(per_turn=1)
    through: list[int] = []

    async def caller(index: int) -> None:
        await gate.enter()
        through.append(index)

    tasks = [asyncio.get_running_loop().create_task(caller(i)) for i in range(3)]
    await asyncio.sleep(0)  # 0 went through; 1 and 2 wait
    tasks[1].cancel()
    await asyncio.wait_for(asyncio.gather(tasks[0], tasks[2]), 5)
    assert through == [0, 2]


async def test_turnstile_is_open_again_when_idle() -> None:
    """Once nobody waits, a caller of a later turn goes straight through."""
    gate = Turnstile(per_turn=1)
    await gate.enter()
    await _turns(3)
    entered = asyncio.get_running_loop().create_task(gate.enter())
    await asyncio.sleep(0)
    assert entered.done()


async def test_a_crowd_of_handshakes_all_connect(start_server: StartServer) -> None:
    """Forty sockets opened at once all get `connected` (the server lets a few handshakes through per turn)."""
    server = await start_server()
    sockets = await asyncio.gather(
        *(server.connect(f"crowd-{i}", token=make_token(f"crowd-{i}", sub=f"u{i}")) for i in range(40))
    )
    frames = await asyncio.gather(*(recv_json(ws) for ws in sockets))
    assert [frame["type"] for frame in frames] == ["connected"] * 40
