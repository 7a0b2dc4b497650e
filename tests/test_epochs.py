"""Stream epochs over a real server (contract v2): a lost history is a reset, never a silent skip.

- A memory relay restarted: resuming with the old epoch on the socket,
  polling and SSE gives ``reset`` and the new epoch's events from seq 1.
- Two instances on a Redis restarted empty: a connected socket is closed with
  4009, and reconnecting with its cursor gets the new epoch's events.
- A relay restarted with Redis intact keeps the epoch: no reset.
- The same cursor text gets the same verdict on all three transports, on
  both brokers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import Server, make_token, recv_json
from tests.redis_util import RedisServer, delete_prefix, redis_server, redis_server_binary, require_redis  # noqa: F401


def ws_url(server: Server, execution_id: str, **query: str) -> str:
    """The socket URL with a token and the given (already textual) query values."""
    params = "".join(f"&{k}={quote(v, safe='')}" for k, v in query.items())
    return f"ws://{server.host}:{server.port}/ws/executions/{execution_id}?token={make_token(execution_id)}{params}"


async def socket_frames(server: Server, execution_id: str, **query: str) -> tuple[list[dict[str, Any]], int | None]:
    """Every frame a socket gets until the server closes it, and the close code."""
    frames: list[dict[str, Any]] = []
    async with connect(ws_url(server, execution_id, **query)) as ws:
        with contextlib.suppress(ConnectionClosed):  # an error close ends the iteration with an exception
            async with asyncio.timeout(10):
                async for message in ws:
                    frames.append(json.loads(message))
        return frames, ws.close_code


async def poll(server: Server, execution_id: str, **query: str) -> httpx.Response:
    """One poll with the given query values."""
    return await server.http.get(
        f"/v1/executions/{execution_id}/events", params={**query, "token": make_token(execution_id)}
    )


async def sse(
    server: Server, execution_id: str, headers: dict[str, str] | None = None, **query: str
) -> tuple[int, list[dict[str, str]]]:
    """The status and messages of an SSE stream read to its end."""
    messages: list[dict[str, str]] = []
    async with server.http.stream(
        "GET",
        f"/v1/executions/{execution_id}/stream",
        params={**query, "token": make_token(execution_id)},
        headers=headers,
        timeout=10,
    ) as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code, []
        current: dict[str, str] = {}
        async for line in response.aiter_lines():
            if not line:
                if current:
                    messages.append(current)
                current = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                current[name] = value.removeprefix(" ")
    return 200, messages


async def publish_n(server: Server, execution_id: str, n: int, finish: bool = False) -> list[int]:
    """Publish ``n`` progress events (and a complete); return the seqs."""
    seqs = []
    for i in range(n):
        r = await server.publish(execution_id, "progress", {"progress": i, "stage": "s"})
        assert r.status_code == 202, r.text
        seqs.append(r.json()["seq"])
    if finish:
        r = await server.publish(execution_id, "complete")
        seqs.append(r.json()["seq"])
    return seqs


async def current_epoch(server: Server, execution_id: str) -> str:
    """The stream's epoch, from the state endpoint."""
    r = await server.http.get(f"/v1/executions/{execution_id}", params={"token": make_token(execution_id)})
    assert r.status_code == 200, r.text
    epoch: str = r.json()["epoch"]
    return epoch


async def test_memory_relay_restarted_resets_old_cursors_on_every_transport(start_server: Callable[..., Any]) -> None:
    """After a memory relay restarts, the old epoch's cursor gets reset and the new epoch from seq 1 everywhere."""
    eid = "ep-mem"
    before = await start_server()
    await publish_n(before, eid, 3)
    old = await current_epoch(before, eid)
    after = await start_server()  # a new process: its memory broker knows nothing of the old stream
    await publish_n(after, eid, 2, finish=True)
    new = await current_epoch(after, eid)
    assert new != old

    frames, code = await socket_frames(after, eid, last_seq="3", epoch=old)
    assert frames[0]["reset"] is True and frames[0]["epoch"] == new and frames[0]["resumed"] is True
    assert "gap" not in frames[0] and [f["seq"] for f in frames[1:]] == [1, 2, 3] and code == 1000

    body = (await poll(after, eid, after="3", epoch=old)).json()
    assert body["reset"] is True and body["epoch"] == new and [e["seq"] for e in body["events"]] == [1, 2, 3]

    for headers, query in (({"Last-Event-ID": f"{old}:3"}, {}), (None, {"last_seq": "3", "epoch": old})):
        status, messages = await sse(after, eid, headers, **query)
        connected = json.loads(messages[0]["data"])
        assert status == 200 and connected["reset"] is True and connected["epoch"] == new
        assert [m["id"] for m in messages if "id" in m] == [f"{new}:1", f"{new}:2", f"{new}:3"]

    # The same cursors in the current epoch, and v1 cursors, resume as before: no reset.
    frames, _ = await socket_frames(after, eid, last_seq="1", epoch=new)
    assert "reset" not in frames[0] and [f["seq"] for f in frames[1:]] == [2, 3]
    body = (await poll(after, eid, after="2")).json()
    assert "reset" not in body and [e["seq"] for e in body["events"]] == [3]
    status, messages = await sse(after, eid, {"Last-Event-ID": "2"})
    assert "reset" not in json.loads(messages[0]["data"]) and [m["id"] for m in messages if "id" in m] == [f"{new}:3"]


async def test_redis_restarted_empty_closes_live_sockets_4009_and_they_resume_into_the_new_epoch(
    start_server: Callable[..., Any], redis_server: RedisServer
) -> None:
    """Two instances on a Redis restarted empty: a live socket closes 4009; reconnecting resets to the new epoch."""
    prefix = f"epochs-{time.time_ns()}"
    a = await start_server(RELAY_BROKER_URL=redis_server.url, RELAY_REDIS_PREFIX=prefix)
    b = await start_server(RELAY_BROKER_URL=redis_server.url, RELAY_REDIS_PREFIX=prefix)
    eid = "ep-redis"
    ws = await connect(ws_url(a, eid))
    hello = await recv_json(ws)
    await publish_n(b, eid, 3)
    assert [(await recv_json(ws))["seq"] for _ in range(3)] == [1, 2, 3]

    redis_server.stop()  # kill -9: nothing saved
    redis_server.start()
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), 20)
    assert ws.close_code == 4009 and ws.close_reason == "stream reset"

    async with asyncio.timeout(15):  # b publishes again once its own connection noticed
        while (await b.publish(eid, "progress", {"progress": 1, "stage": "s"})).status_code != 202:
            await asyncio.sleep(0.05)
    await publish_n(b, eid, 1, finish=True)
    frames, code = await socket_frames(a, eid, last_seq="3", epoch=hello["epoch"])
    assert frames[0]["reset"] is True and frames[0]["epoch"] != hello["epoch"]
    assert [f["seq"] for f in frames[1:]] == [1, 2, 3] and code == 1000


async def test_a_relay_restarted_with_redis_intact_keeps_the_epoch(start_server: Callable[..., Any]) -> None:
    """A relay restarted on a Redis that kept its data: same epoch, the cursor resumes without a reset."""
    url, prefix = require_redis(), f"epochs-keep-{time.time_ns()}"
    try:
        first = await start_server(RELAY_BROKER_URL=url, RELAY_REDIS_PREFIX=prefix)
        await publish_n(first, "ep-keep", 3)
        epoch = await current_epoch(first, "ep-keep")
        second = await start_server(RELAY_BROKER_URL=url, RELAY_REDIS_PREFIX=prefix)
        await publish_n(second, "ep-keep", 1, finish=True)
        frames, code = await socket_frames(second, "ep-keep", last_seq="2", epoch=epoch)
        assert frames[0]["epoch"] == epoch and "reset" not in frames[0]
        assert [f["seq"] for f in frames[1:]] == [3, 4, 5] and code == 1000
    finally:
        delete_prefix(url, prefix)


# -- one verdict per cursor, on every transport and broker --------------------------------

SEQS = ["", "0", "3", "007", str(2**53 - 1), str(2**53), str(10**25), "9" * 30, "-1", "+1", " 1", "1 ", "1_0", "1.0"]
SEQS += ["\u0663", "x", "0x1"]
EPOCHS = ["", "e", "A-z_09", "a" * 32, "a" * 33, "a b", "a:b", "a.b", "\u00e9"]


def accepted(seq: str, epoch: str) -> bool:
    """What docs/protocol.md ("Cursors") says about a seq and an epoch."""
    seq_ok = seq == "" or (seq.isascii() and seq.isdigit() and len(seq) <= 16 and int(seq) <= 2**53 - 1)
    epoch_ok = epoch == "" or (len(epoch) <= 32 and all(c.isascii() and (c.isalnum() or c in "_-") for c in epoch))
    return seq_ok and epoch_ok


@pytest.mark.parametrize("broker", ["memory", "redis"])
async def test_the_same_cursor_gets_the_same_verdict_on_every_transport(
    start_server: Callable[..., Any], broker: str
) -> None:
    """Each seq and epoch text is accepted by socket, polling and SSE alike, or refused by all (1008 / 422)."""
    env = (
        {}
        if broker == "memory"
        else {"RELAY_BROKER_URL": require_redis(), "RELAY_REDIS_PREFIX": f"cur-{time.time_ns()}"}
    )
    server = await start_server(**env)
    eid = "ep-cursor"
    try:
        await publish_n(server, eid, 2, finish=True)
        cases = [(seq, "") for seq in SEQS] + [("1", epoch) for epoch in EPOCHS]
        for seq, epoch in cases:
            query = {k: v for k, v in (("last_seq", seq), ("epoch", epoch)) if v}
            frames, code = await socket_frames(server, eid, **query)
            socket_ok = bool(frames) and frames[0]["type"] == "connected"
            assert socket_ok or code == 1008, (seq, epoch, code)
            polled = await poll(server, eid, **{("after" if k == "last_seq" else k): v for k, v in query.items()})
            assert polled.status_code in (200, 422), (seq, epoch, polled.text)
            status, _ = await sse(server, eid, **query)
            assert status in (200, 204, 422), (seq, epoch, status)
            verdicts = {"socket": socket_ok, "polling": polled.status_code == 200, "sse": status != 422}
            assert set(verdicts.values()) == {accepted(seq, epoch)}, (seq, epoch, verdicts)
            if polled.status_code == 422:
                assert polled.json()["fields"][0]["field"] == ("epoch" if epoch and seq == "1" else "after")
        for header in ("x", ":1", "e:", "e:x", "e:1:2", f"{'a' * 33}:1", "1 2", str(2**53)):
            status, _ = await sse(server, eid, {"Last-Event-ID": header})
            assert status == 422, header
        for header in ("1", "e:1", "A-z_09:0", ""):
            status, _ = await sse(server, eid, {"Last-Event-ID": header})
            assert status == 200, header
    finally:
        if broker == "redis":
            delete_prefix(env["RELAY_BROKER_URL"], env["RELAY_REDIS_PREFIX"])
