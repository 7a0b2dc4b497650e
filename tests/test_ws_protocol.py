"""WebSocket protocol: replay, resume, heartbeats, bad frames, slow consumers."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from tests.conftest import Server, StartServer, counted, make_token, recv_json, recv_until_closed


async def publish_n(server: Server, execution_id: str, n: int, start: int = 0) -> None:
    """Publish n progress events."""
    for i in range(n):
        r = await server.publish(execution_id, "progress", {"progress": min(100, start + i), "stage": f"s{start + i}"})
        assert r.status_code == 202, r.text


async def test_replay_then_live_for_a_late_subscriber(server: Server) -> None:
    """A subscriber joining mid-execution gets the history first, then live events, seq 1..n."""
    await publish_n(server, "e1", 3)
    ws = await server.connect("e1")
    hello = await recv_json(ws)
    assert hello["latest_seq"] == 3 and hello["resumed"] is False and "gap" not in hello
    assert [(await recv_json(ws))["seq"] for _ in range(3)] == [1, 2, 3]
    await publish_n(server, "e1", 2, start=3)
    assert [(await recv_json(ws))["seq"] for _ in range(2)] == [4, 5]


async def test_resume_with_last_seq_sends_only_newer_events(server: Server) -> None:
    """Reconnecting with last_seq=k gets exactly k+1..n, nothing lost or doubled."""
    await publish_n(server, "e1", 6)
    ws = await server.connect("e1", last_seq=4)
    hello = await recv_json(ws)
    assert hello["resumed"] is True and hello["latest_seq"] == 6
    assert [(await recv_json(ws))["seq"] for _ in range(2)] == [5, 6]
    await publish_n(server, "e1", 1, start=6)
    assert (await recv_json(ws))["seq"] == 7
    with pytest.raises(TimeoutError):
        await recv_json(ws, timeout=0.3)


async def test_resume_while_events_are_published_during_replay(server: Server) -> None:
    """Events published while a subscriber connects and replays arrive once each, in order."""
    await publish_n(server, "e1", 50)

    async def publisher() -> None:
        for i in range(50, 150):
            await server.publish("e1", "progress", {"progress": i % 101, "stage": f"s{i}"})
        await server.publish("e1", "complete", {"report": {}})

    task = asyncio.create_task(publisher())
    clients = []
    for last in (None, 10, 40, 49):
        clients.append((last, await server.connect("e1", last_seq=last)))
        await asyncio.sleep(0.01)
    await task
    for last, ws in clients:
        frames = await recv_until_closed(ws)
        assert frames[0]["type"] == "connected"
        seqs = [f["seq"] for f in frames[1:]]
        assert seqs == list(range((last or 0) + 1, 152)), f"last_seq={last}"
        assert ws.close_code == 1000


async def test_join_after_complete_gets_replay_then_1000(server: Server) -> None:
    """Connecting to a finished execution replays it and closes with 1000."""
    await publish_n(server, "e1", 2)
    await server.publish("e1", "complete", {"report": {"score": 9}})
    ws = await server.connect("e1")
    frames = await recv_until_closed(ws)
    assert [f.get("seq") for f in frames] == [None, 1, 2, 3]
    assert frames[-1]["data"] == {"report": {"score": 9}}
    assert ws.close_code == 1000


async def test_resume_after_complete_with_everything_seen_closes_1000(server: Server) -> None:
    """A client that already has the terminal event gets connected, then 1000 after its last frame."""
    await server.publish("e1", "complete", {})
    ws = await server.connect("e1", last_seq=1)
    frames = await recv_until_closed(ws)
    assert [f["type"] for f in frames] == ["connected"]
    assert frames[0]["latest_seq"] == 1
    assert ws.close_code == 1000


async def test_recoverable_error_does_not_end_the_stream(server: Server) -> None:
    """A recoverable error is delivered and the stream goes on; a fatal one ends it with 1000."""
    ws = await server.connect("e1")
    await recv_json(ws)
    await server.publish("e1", "error", {"error": "timeout on platform A", "recoverable": True})
    await server.publish("e1", "progress", {"progress": 60, "stage": "analyzing"})
    await server.publish("e1", "error", {"error": "all platforms failed", "error_type": "fatal"})
    frames = await recv_until_closed(ws)
    assert [f["event"] for f in frames] == ["error", "progress", "error"]
    assert ws.close_code == 1000
    r = await server.publish("e1", "progress", {"progress": 70, "stage": "x"})
    assert r.status_code == 409


async def test_ping_gets_pong(server: Server) -> None:
    """{"type": "ping"} is answered with a pong carrying a timestamp."""
    ws = await server.connect("e1")
    await recv_json(ws)
    await ws.send(json.dumps({"type": "ping"}))
    pong = await recv_json(ws)
    assert pong["type"] == "pong" and pong["timestamp"].endswith("Z")


async def test_unknown_frame_gets_error_frame_and_socket_stays(server: Server) -> None:
    """An unknown message type is answered with an error frame; the stream continues."""
    ws = await server.connect("e1")
    await recv_json(ws)
    await ws.send(json.dumps({"type": "subscribe", "channel": "other"}))
    err = await recv_json(ws)
    assert err["type"] == "error" and err["error"] == "unknown_message_type"
    await server.publish("e1")
    assert (await recv_json(ws))["seq"] == 1


@pytest.mark.parametrize("frame", ["{not json", b"\x00\x01binary"])
async def test_malformed_or_binary_frame_closes_1008(server: Server, frame: str | bytes) -> None:
    """Malformed JSON or a binary frame closes with 1008."""
    ws = await server.connect("e1")
    await recv_json(ws)
    await ws.send(frame)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 1008


async def test_oversized_frame_closes_1009(server: Server) -> None:
    """A client frame above RELAY_WS_MAX_MESSAGE_SIZE closes with 1009."""
    ws = await server.connect("e1")
    await recv_json(ws)
    await ws.send(json.dumps({"type": "ping", "pad": "x" * 10_000}))
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 1009


async def test_bad_last_seq_closes_1008(server: Server) -> None:
    """A last_seq that is not a non-negative integer closes with 1008 before any frame."""
    ws = await server.connect("e1", last_seq="abc")  # type: ignore[arg-type]
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 1008


async def test_last_seq_beyond_trimmed_history_reports_gap(start_server: StartServer) -> None:
    """With history bounded to 3 events, resuming from seq 1 of 6 says gap and replays what is left."""
    server = await start_server(RELAY_HISTORY_SIZE="3")
    await publish_n(server, "e1", 6)
    ws = await server.connect("e1", last_seq=1)
    hello = await recv_json(ws)
    assert hello["gap"] is True
    assert [(await recv_json(ws))["seq"] for _ in range(3)] == [4, 5, 6]


async def test_other_executions_events_are_not_delivered(server: Server) -> None:
    """A subscriber of e1 never sees e2's events."""
    ws = await server.connect("e1")
    await recv_json(ws)
    await server.publish("e2")
    await server.publish("e1")
    frame = await recv_json(ws)
    assert frame["execution_id"] == "e1" and frame["seq"] == 1
    with pytest.raises(TimeoutError):
        await recv_json(ws, timeout=0.3)


async def test_slow_client_is_closed_4008_while_fast_client_keeps_receiving(start_server: StartServer) -> None:
    """A client that stops reading is closed with 4008; a fast one on the same execution gets every event."""
    server = await start_server(RELAY_SEND_QUEUE_SIZE="8")
    closes = counted("slow_consumer_closes")
    # Uncompressed, so the blobs really fill the socket buffers.
    slow = await server.connect("e1", max_queue=1, max_size=None, compression=None)
    fast = await server.connect("e1", max_size=None, compression=None)
    await recv_json(fast)
    blob = "x" * 60_000
    total = 250  # ~15 MB: more than the kernel's socket buffers can hide

    received: list[int] = []

    async def read_fast() -> None:
        while len(received) < total:
            received.append((await recv_json(fast, timeout=20))["seq"])

    reader = asyncio.create_task(read_fast())
    for i in range(total):
        r = await server.publish("e1", "result", {"i": i, "blob": blob})
        assert r.status_code == 202
    await asyncio.wait_for(reader, 30)
    assert received == list(range(1, total + 1))
    assert counted("slow_consumer_closes") == closes + 1
    frames = []
    with pytest.raises(ConnectionClosed):
        while True:
            frames.append(json.loads(await asyncio.wait_for(slow.recv(), 10)))
    assert slow.close_code == 4008
    assert len(frames) < total


async def test_many_subscribers_of_one_execution_all_receive(server: Server) -> None:
    """Fan-out: 50 subscribers of one execution each receive every event once, in order."""
    sockets = [await server.connect("e1", token=make_token("e1", sub=f"u{i}")) for i in range(50)]
    for ws in sockets:
        await recv_json(ws)
    await publish_n(server, "e1", 5)
    await server.publish("e1", "complete", {})
    for ws in sockets:
        frames = await recv_until_closed(ws)
        assert [f["seq"] for f in frames] == [1, 2, 3, 4, 5, 6]


async def test_token_reused_by_query_and_header_is_redacted_from_logs(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """No log record carries the token, whichever way it travelled (and the records checked do exist)."""
    token = make_token("e1")
    caplog.set_level(logging.INFO, logger="relay")
    ws = await server.connect("e1", token=token)
    await recv_json(ws)
    await ws.close()
    refused = await server.connect("e1", token=token + "x")
    with pytest.raises(ConnectionClosed):
        await refused.recv()
    messages = [record.getMessage() for record in caplog.records]
    assert "websocket opened" in messages and "websocket refused" in messages, messages
    for record in caplog.records:
        assert token not in record.getMessage()
        assert token not in str(getattr(record, "fields", ""))


async def test_server_pings_and_drops_a_peer_that_stops_answering(start_server: StartServer) -> None:
    """Protocol pings keep a live peer connected; a peer that stops answering is dropped (1011)."""
    server = await start_server(RELAY_WS_PING_INTERVAL="0.2", RELAY_WS_PING_TIMEOUT="0.3")
    alive = await server.connect("e1")
    dead = await server.connect("e1")
    await recv_json(alive)
    await recv_json(dead)
    sinks = server.app.ctx.pinger.sockets

    async def until(check: Any, what: str) -> None:
        async with asyncio.timeout(10):
            while not check():
                await asyncio.sleep(0.02)
        assert check(), what

    # Both answer a ping: every socket's last ping is settled.
    await until(
        lambda: len(sinks) == 2 and all(s.ping_waiter is not None and s.ping_waiter.done() for s in sinks), "pongs"
    )
    assert not alive.close_code and not dead.close_code
    dead.transport.pause_reading()  # stops answering pings, as a vanished peer would
    await until(lambda: len(sinks) == 1, "the silent peer dropped")
    dead.transport.resume_reading()
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(dead.recv(), 5)
    assert dead.close_code in (1011, 1006)
    await server.publish("e1")
    assert (await recv_json(alive))["seq"] == 1  # the live one was kept


@pytest.mark.parametrize("value", ["-1", " 7", "1_0", "\u0663", "7.0"])
async def test_last_seq_must_be_plain_digits(server: Server, value: str) -> None:
    """last_seq accepts only plain ASCII digits; anything else closes with 1008."""
    from urllib.parse import quote

    ws = await server.connect("e1", last_seq=quote(value))  # type: ignore[arg-type]
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 1008


async def test_unexpected_error_while_opening_closes_1011(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug while reading history closes with 1011 (never 1000, which would mean 'finished')."""

    async def broken_history(*args: object, **kwargs: object) -> None:
        raise AttributeError("simulated bug")

    monkeypatch.setattr(server.relay._broker, "history", broken_history)  # a fault injected into a private part
    ws = await server.connect("e1")
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 1011
