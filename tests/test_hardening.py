"""Hostile clients, one rule each: raw bytes on a real socket against a real server (issue 15).

Every test speaks HTTP or WebSocket by hand, because the attacks are exactly
what a well-behaved client library never sends: a body behind a missing key,
pings by the thousand, invalid UTF-8, a head dribbled a byte at a time,
header lines a lenient proxy would read differently.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import struct
from types import SimpleNamespace
from typing import Any

import pytest
from sanic.http.http1 import Http
from websockets.frames import Frame, Opcode

from service.limits import FrameGuard, PeerLimit
from service.web.app import RelayRequest
from service.web.hardening import head_problem
from tests.conftest import PUBLISH_KEY, Server, StartServer, counted, make_token

INTERNAL_POSTS = (
    "/internal/v1/executions/e1/events",
    "/internal/v1/events",
    "/internal/v1/tokens",
    "/internal/v1/revocations",
)


# -- raw HTTP --------------------------------------------------------------------


async def open_raw(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A plain TCP connection to the server."""
    return await asyncio.open_connection(server.host, server.port)


async def read_response(reader: asyncio.StreamReader, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response: status, headers (last value wins), body (by Content-Length)."""
    async with asyncio.timeout(timeout):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    async with asyncio.timeout(timeout):
        try:
            return await reader.read()
        except ConnectionResetError:
            return b""


def key_header(key: str = PUBLISH_KEY) -> bytes:
    """``Authorization: Bearer <key>`` as a header line."""
    return f"Authorization: Bearer {key}\r\n".encode()


# -- item 1: the publisher key before any body byte -----------------------------------


@pytest.mark.parametrize("path", INTERNAL_POSTS)
async def test_expect_continue_without_a_key_gets_401_and_no_continue(server: Server, path: str) -> None:
    """``Expect: 100-continue`` without a valid key is answered 401 at once: no ``100 Continue``, no body read."""
    for auth in (b"", key_header("wrong-key")):
        reader, writer = await open_raw(server)
        writer.write(
            b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: 1048576\r\n" + auth + b"\r\n"
        )
        status, headers, body = await read_response(reader)
        assert status == 401, (path, status)
        assert json.loads(body)["reason"] == "publisher_key"
        assert headers["connection"] == "close"
        assert await closed_by_server(reader) == b""  # nothing more, in particular no 100 Continue
        writer.close()


async def test_a_body_behind_a_missing_key_is_never_waited_for(server: Server) -> None:
    """A request without a key is answered 401 after its head, while its (announced) 1 MiB body never comes."""
    reader, writer = await open_raw(server)
    writer.write(b"POST /internal/v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n" + b"x" * 1000)
    status, _, _ = await read_response(reader)
    assert status == 401
    writer.close()


async def test_with_the_key_the_body_is_read_after_100_continue(server: Server) -> None:
    """With a valid key, ``Expect: 100-continue`` gets ``100 Continue``, then the body is read and published."""
    body = json.dumps({"event": "progress", "data": {"progress": 1, "stage": "s"}}).encode()
    reader, writer = await open_raw(server)
    writer.write(
        b"POST /internal/v1/executions/e1/events HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        + key_header()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    async with asyncio.timeout(5):
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(body)
    status, _, answer = await read_response(reader)
    assert status == 202 and json.loads(answer)["seq"] == 1
    writer.close()


def publish_request(body: bytes, chunked: bool = False) -> tuple[bytes, bytes]:
    """The head and body of a publish to e1, by Content-Length or chunked."""
    if chunked:
        framed = b"".join(b"%x\r\n%b\r\n" % (len(part), part) for part in (body[:10], body[10:])) + b"0\r\n\r\n"
        return b"POST /internal/v1/executions/e1/events HTTP/1.1\r\nHost: x\r\n" + key_header() + (
            b"Transfer-Encoding: chunked\r\n\r\n"
        ), framed
    head = b"POST /internal/v1/executions/e1/events HTTP/1.1\r\nHost: x\r\n" + key_header()
    return head + f"Content-Length: {len(body)}\r\n\r\n".encode(), body


async def test_streamed_bodies_end_where_they_should_on_a_kept_alive_connection(server: Server) -> None:
    """Bodies read to their end (RelayRequest.receive_body ends a Content-Length body without Sanic's last read).

    Pipelined requests, a body arriving in pieces after its head and a chunked body: each
    is read whole, and the request after it on the same connection is parsed from the right byte.
    """
    body = json.dumps({"event": "progress", "data": {"progress": 1, "stage": "s"}}).encode()
    reader, writer = await open_raw(server)
    writer.write(b"".join(b"".join(publish_request(body)) for _ in range(3)))  # three at once
    seqs = []
    for _ in range(3):
        status, _, answer = await read_response(reader)
        assert status == 202
        seqs.append(json.loads(answer)["seq"])
    head, rest = publish_request(body)
    writer.write(head.replace(b"Host: x\r\n", b"Host: x\r\nExpect: 100-continue\r\n"))
    async with asyncio.timeout(5):  # the handler is reading: the pieces come in as it waits for them
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    for piece in (rest[:5], rest[5:20], rest[20:]):
        writer.write(piece)
        await writer.drain()
    status, _, answer = await read_response(reader)
    assert status == 202
    seqs.append(json.loads(answer)["seq"])
    writer.write(b"".join(publish_request(body, chunked=True)) + b"".join(publish_request(body)))
    for _ in range(2):
        status, _, answer = await read_response(reader)
        assert status == 202
        seqs.append(json.loads(answer)["seq"])
    assert seqs == [1, 2, 3, 4, 5, 6]
    writer.close()


@pytest.mark.parametrize("pieces", [[b"0123456789ab"], [b"0123", b"45", b"6789ab"], [b"0123456789abNEXT"]])
async def test_receive_body_leaves_sanic_stream_as_sanic_own_reads_do(pieces: list[bytes]) -> None:
    """RelayRequest.receive_body ends a Content-Length body itself, in the state Sanic's last read() leaves.

    Both loops run over Sanic's real ``Http.read`` (checked against Sanic 25.12.1): the
    same body, the body ended (``request_body`` None), the same bytes left in the buffer
    for the next request, and one ``read()`` per piece instead of one more at the end.
    """

    def stream() -> tuple[Http, list[int]]:
        http = Http.__new__(Http)  # only what read() uses
        queued = iter(pieces[1:])
        calls = [0]

        async def receive_more() -> None:
            http.recv_buffer += next(queued)

        async def dispatch(*args: Any, **kwargs: Any) -> None:
            calls[0] += 1  # read() dispatches "http.lifecycle.read_body" once per piece it returns

        http.recv_buffer, http.expecting_continue = bytearray(pieces[0]), False
        http.request_body, http.request_bytes_left, http.request_bytes, http.request_max_size = True, 12, 12, 100
        http._receive_more, http.dispatch = receive_more, dispatch
        return http, calls

    sanic_stream, _ = stream()
    chunks = []
    while sanic_stream.request_body:  # Sanic's own loop (Request.receive_body's async generator)
        data = await sanic_stream.read()
        if data:
            chunks.append(data)
    ours, reads = stream()
    request = SimpleNamespace(body=b"", stream=ours)
    await RelayRequest.receive_body(request)  # type: ignore[arg-type]  # only body and stream are used
    assert request.body == b"".join(chunks) == b"0123456789ab"
    assert ours.request_body is sanic_stream.request_body is None
    assert ours.recv_buffer == sanic_stream.recv_buffer == b"".join(pieces)[12:]  # the next request's bytes
    assert reads[0] == len(pieces)


async def test_internal_bodies_keep_their_limit_and_public_ones_are_small(start_server: StartServer) -> None:
    """With the key, a body over RELAY_MAX_BODY_SIZE is 413; a public route takes no large body before its checks."""
    server = await start_server(RELAY_MAX_BODY_SIZE="2048")
    auth = {"Authorization": f"Bearer {PUBLISH_KEY}"}
    big = {"event": "progress", "data": {"progress": 1, "stage": "x" * 4000}}
    r = await server.http.post("/internal/v1/executions/e1/events", json=big, headers=auth)
    assert r.status_code == 413
    r = await server.http.post(
        "/internal/v1/executions/e1/events", json={**big, "data": {"progress": 1, "stage": "s"}}, headers=auth
    )
    assert r.status_code == 202
    r = await server.http.post("/demo/api/executions", content=b"x" * 100_000)  # read before its handler runs
    assert r.status_code == 413


# -- item 2: every frame counts ---------------------------------------------------


async def ws_open(server: Server, path: str = "/ws/executions/e1", extra: bytes = b"") -> Any:
    """A WebSocket opened by hand (token in the query); returns (reader, writer) after the 101."""
    reader, writer = await open_raw(server)
    key = base64.b64encode(os.urandom(16))
    token = make_token("e1")
    writer.write(
        f"GET {path}?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n".encode()
        + b"Sec-WebSocket-Key: "
        + key
        + b"\r\nSec-WebSocket-Version: 13\r\n"
        + extra
        + b"\r\n"
    )
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


def frame(opcode: Opcode, data: bytes = b"", fin: bool = True) -> bytes:
    """One masked client frame."""
    return Frame(opcode, data, fin).serialize(mask=True, extensions=[])


async def server_frames(reader: asyncio.StreamReader, timeout: float = 5.0) -> list[tuple[int, bytes]]:
    """(opcode, payload) of every frame the server sends until it closes the connection."""
    data = await closed_by_server(reader, timeout)
    frames = []
    while len(data) >= 2:
        opcode, length, offset = data[0] & 0x0F, data[1] & 0x7F, 2
        if length == 126:
            length, offset = struct.unpack("!H", data[2:4])[0], 4
        elif length == 127:
            length, offset = struct.unpack("!Q", data[2:10])[0], 10
        frames.append((opcode, data[offset : offset + length]))
        data = data[offset + length :]
    return frames


def close_code(frames: list[tuple[int, bytes]]) -> int | None:
    """The code of the server's close frame, if it sent one."""
    for opcode, payload in frames:
        if opcode == Opcode.CLOSE:
            return int(struct.unpack("!H", payload[:2])[0])
    return None


@pytest.mark.parametrize(
    "flood",
    [
        pytest.param(b"".join(frame(Opcode.PING, b"p") for _ in range(200)), id="pings"),
        pytest.param(b"".join(frame(Opcode.PONG, b"unsolicited") for _ in range(200)), id="unsolicited-pongs"),
        pytest.param(
            frame(Opcode.TEXT, b"", fin=False) + b"".join(frame(Opcode.CONT, b"", fin=False) for _ in range(200)),
            id="empty-fragments",
        ),
    ],
)
async def test_control_and_continuation_frames_count_against_the_rate(start_server: StartServer, flood: bytes) -> None:
    """Pings, unsolicited pongs and empty continuation frames count as frames: a flood is closed with 4029."""
    server = await start_server(RELAY_WS_MAX_FRAMES_PER_SECOND="5", RELAY_WS_MAX_FRAMES_PER_MESSAGE="100000")
    before = counted("limit_exceeded", "frame_rate")
    reader, writer = await ws_open(server)
    writer.write(flood)
    frames = await server_frames(reader)
    assert close_code(frames) == 4029
    assert sum(op == Opcode.PONG for op, _ in frames) <= 10  # at most the burst was answered
    assert counted("limit_exceeded", "frame_rate") == before + 1
    writer.close()


async def test_a_message_in_too_many_frames_is_closed_1008(start_server: StartServer) -> None:
    """A message split into more than RELAY_WS_MAX_FRAMES_PER_MESSAGE frames closes with 1008."""
    server = await start_server(RELAY_WS_MAX_FRAMES_PER_MESSAGE="4", RELAY_WS_MAX_FRAMES_PER_SECOND="1000")
    reader, writer = await ws_open(server)
    writer.write(frame(Opcode.TEXT, b"{", fin=False) + b"".join(frame(Opcode.CONT, b"", fin=False) for _ in range(5)))
    assert close_code(await server_frames(reader)) == 1008
    writer.close()


async def test_a_message_over_the_size_limit_across_fragments_is_closed_1009(start_server: StartServer) -> None:
    """Fragments adding up to more than RELAY_WS_MAX_MESSAGE_SIZE close with 1009."""
    server = await start_server(RELAY_WS_MAX_MESSAGE_SIZE="1024", RELAY_WS_MAX_FRAMES_PER_SECOND="1000")
    reader, writer = await ws_open(server)
    writer.write(frame(Opcode.TEXT, b" " * 600, fin=False) + frame(Opcode.CONT, b" " * 600, fin=True))
    assert close_code(await server_frames(reader)) == 1009
    writer.close()


async def test_connections_per_address_are_capped(start_server: StartServer) -> None:
    """Past RELAY_MAX_CONNECTIONS_PER_IP open connections from one address, the next gets 429 and is closed."""
    server = await start_server(RELAY_MAX_CONNECTIONS_PER_IP="3")
    before = counted("limit_exceeded", "connections_per_ip")
    held = [await open_raw(server) for _ in range(3)]
    reader, writer = await open_raw(server)
    status, headers, body = await read_response(reader)
    assert status == 429 and headers["connection"] == "close" and json.loads(body)["error"] == "rate_limited"
    assert await closed_by_server(reader) == b""
    writer.close()
    r = await server.http.get("/healthz")  # still refused: three are held
    assert r.status_code == 429
    for _, w in held:
        w.close()
    async with asyncio.timeout(5):
        while (await server.http.get("/healthz")).status_code != 200:  # the held ones are released as they close
            await asyncio.sleep(0.02)
    assert counted("limit_exceeded", "connections_per_ip") >= before + 2


def test_peer_limit_zero_is_off() -> None:
    """RELAY_MAX_CONNECTIONS_PER_IP=0 counts nothing against any address."""
    peers = PeerLimit(0)
    assert all(peers.acquire("10.0.0.1") for _ in range(10_000))


# -- item 3: invalid UTF-8 ---------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(frame(Opcode.TEXT, b'{"type":"ping"\xff}'), id="whole-frame"),
        pytest.param(frame(Opcode.TEXT, b'{"type":', fin=False) + frame(Opcode.CONT, b"\xc3"), id="truncated-sequence"),
        pytest.param(
            frame(Opcode.TEXT, b'{"type":', fin=False) + frame(Opcode.CONT, b"\xed\xa0\x80", fin=False), id="surrogate"
        ),
    ],
)
async def test_invalid_utf8_closes_1007_without_a_traceback(
    server: Server, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Invalid UTF-8 in a text message closes with 1007, is counted, and logs no error."""
    caplog.set_level(logging.INFO)
    before = counted("ws_closes", "1007", "server")
    reader, writer = await ws_open(server)
    writer.write(payload)
    frames = await server_frames(reader)
    assert close_code(frames) == 1007
    async with asyncio.timeout(5):  # counted when the handler has ended
        while counted("ws_closes", "1007", "server") == before:
            await asyncio.sleep(0.01)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    writer.close()


async def test_an_invalid_fragment_is_never_spliced_onto_the_next_message(server: Server) -> None:
    """A message whose continuation is invalid is discarded: the next message in the same write is not acted on."""
    reader, writer = await ws_open(server)
    # The valid start '{"type":', an invalid continuation, then a text message '"ping"}' that,
    # spliced onto the start, would read as {"type":"ping"} and earn a pong.
    writer.write(
        frame(Opcode.TEXT, b'{"type":', fin=False) + frame(Opcode.CONT, b"\xff") + frame(Opcode.TEXT, b'"ping"}')
    )
    frames = await server_frames(reader)
    assert close_code(frames) == 1007
    texts = [json.loads(p)["type"] for op, p in frames if op == Opcode.TEXT]
    assert texts == ["connected"]
    writer.close()


def test_frame_guard_accepts_utf8_split_across_fragments() -> None:
    """A multi-byte character split between two fragments is valid UTF-8."""
    guard = FrameGuard(100, 16)
    snowman = "☃".encode()
    frames = [Frame(Opcode.TEXT, b'"' + snowman[:1], fin=False), Frame(Opcode.CONT, snowman[1:] + b'"')]
    assert guard.check(frames) is None


# -- item 4: a fixed deadline for the request head -----------------------------------


async def test_a_dribbled_head_is_cut_at_the_deadline(start_server: StartServer) -> None:
    """A request head sent a byte at a time is answered 408 and closed at RELAY_HANDSHAKE_TIMEOUT, not kept alive."""
    server = await start_server(RELAY_HANDSHAKE_TIMEOUT="0.6")
    reader, writer = await open_raw(server)
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200
    read = asyncio.ensure_future(closed_by_server(reader, timeout=30))
    for byte in head:  # 200+ bytes at 20 ms: about 4.5 s, far past the deadline
        if read.done():
            break
        writer.write(bytes([byte]))
        await asyncio.sleep(0.02)
    assert read.done(), "the server kept a dribbled head past its deadline"
    answer = await read
    # 408, unless the reset (the client was still writing when the server closed) destroyed it.
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408")
    writer.close()


async def test_an_idle_keep_alive_connection_dribbling_its_next_head_is_cut(start_server: StartServer) -> None:
    """After a response, the next head on the connection has the same fixed deadline."""
    server = await start_server(RELAY_HANDSHAKE_TIMEOUT="0.6")
    reader, writer = await open_raw(server)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    read = asyncio.ensure_future(closed_by_server(reader, timeout=30))
    for byte in b"GET /healthz HTTP/1.1\r\nX-Padding: " + b"a" * 200:
        if read.done():
            break
        writer.write(bytes([byte]))
        await asyncio.sleep(0.02)
    assert read.done(), "the server kept a dribbled head past its deadline"
    writer.close()


# -- item 7: logs --------------------------------------------------------------------------


async def test_a_client_that_goes_away_is_logged_499(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that disconnects mid-request (mid-body, or during a long poll) is logged 499, never 500."""
    caplog.set_level(logging.INFO, logger="relay.access")
    server = await start_server(RELAY_ACCESS_LOG="true")

    def access_lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "relay.access"]

    # Mid-body: the handler asked for the body (100 Continue), the client sends a byte and leaves.
    reader, writer = await open_raw(server)
    writer.write(
        b"POST /internal/v1/executions/e1/events HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        + key_header()
        + b"Content-Length: 100\r\n\r\n"
    )
    async with asyncio.timeout(5):
        await reader.readuntil(b"\r\n\r\n")
    writer.write(b"{")
    await writer.drain()
    writer.transport.abort()
    # During a long poll: the client leaves while the poll waits.
    reader, writer = await open_raw(server)
    writer.write(f"GET /v1/executions/e1/events?wait=20&token={make_token('e1')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    async with asyncio.timeout(5):
        while server.relay.connections == 0:
            await asyncio.sleep(0.01)
    writer.transport.abort()
    async with asyncio.timeout(5):
        while len(access_lines()) < 2:
            await asyncio.sleep(0.01)
    assert [getattr(r, "fields", {})["status"] for r in access_lines()] == [499, 499]


@pytest.mark.parametrize("target", [b"/x\x01y?token=abc", b"/v1/executions/e1\x7f?token=abc", b"/\x00"])
async def test_a_url_with_control_bytes_is_400_not_an_error(
    server: Server, target: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """A request target with a control byte is answered 400, and nothing is logged as an error."""
    reader, writer = await open_raw(server)
    writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, _ = await read_response(reader)
    assert status == 400
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    writer.close()


# -- item 9: the handshake and the head, to the letter --------------------------------------


async def test_connection_header_on_two_lines_upgrades(server: Server) -> None:
    """``Connection: keep-alive`` and ``Connection: Upgrade`` on separate lines are one list: 101."""
    reader, writer = await open_raw(server)
    key = base64.b64encode(os.urandom(16))
    writer.write(
        f"GET /ws/executions/e1?token={make_token('e1')} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n".encode()
        + b"Connection: keep-alive\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
        + key
        + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    async with asyncio.timeout(5):
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    writer.close()


async def test_extensions_offered_on_a_second_line_are_negotiated(server: Server) -> None:
    """permessage-deflate offered on the second ``Sec-WebSocket-Extensions`` line is accepted."""
    reader, writer = await open_raw(server)
    key = base64.b64encode(os.urandom(16))
    writer.write(
        f"GET /ws/executions/e1?token={make_token('e1')} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n".encode()
        + b"Connection: Upgrade\r\nSec-WebSocket-Key: "
        + key
        + b"\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: x-unknown\r\n"
        + b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    )
    async with asyncio.timeout(5):
        head = (await reader.readuntil(b"\r\n\r\n")).lower()
    assert head.startswith(b"http/1.1 101") and b"sec-websocket-extensions: permessage-deflate" in head
    writer.close()


@pytest.mark.parametrize("version", [b"8", b"12", b"14", b"13, 8"])
async def test_a_version_mismatch_names_the_version_spoken(server: Server, version: bytes) -> None:
    """RFC 6455 section 4.4: an unsupported Sec-WebSocket-Version gets 400 with ``Sec-WebSocket-Version: 13``."""
    reader, writer = await open_raw(server)
    writer.write(
        f"GET /ws/executions/e1?token={make_token('e1')} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n".encode()
        + b"Connection: Upgrade\r\nSec-WebSocket-Key: "
        + base64.b64encode(os.urandom(16))
        + b"\r\nSec-WebSocket-Version: "
        + version
        + b"\r\n\r\n"
    )
    status, headers, _ = await read_response(reader)
    assert status == 400 and headers["sec-websocket-version"] == "13"
    writer.close()


@pytest.mark.parametrize(
    "line",
    [
        b"Transfer-Encoding : chunked",
        b"Content-Length\t: 5",
        b"X-Folded: a\r\n  continued",
        b"X-Bare: a\nTransfer-Encoding: chunked",
        b"X-Bare-CR: a\rb",
        b"X-Nul: a\x00b",
        b"Bad Name: x",
        b"no colon at all",
    ],
)
async def test_malformed_header_lines_get_400(server: Server, line: bytes) -> None:
    """Whitespace before the colon, folding, bare CR or LF, NUL, names that are not tokens: 400 and closed."""
    reader, writer = await open_raw(server)
    writer.write(b"POST /internal/v1/executions/e1/events HTTP/1.1\r\nHost: x\r\n" + key_header() + line + b"\r\n\r\n")
    status, headers, _ = await read_response(reader)
    assert status == 400 and headers["connection"] == "close"
    writer.close()


def test_well_formed_heads_pass() -> None:
    """Ordinary heads, with every token character in names and anything printable in values, pass."""
    assert head_problem(b"GET / HTTP/1.1\r\nHost: x\r\nX-A!#$%&'*+.^_`|~9: v a l\tue:;\"\r\nA:") is None


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\r\nA: b",
        b"GET / HTTP/1.1\r\nHost: x\n\rA: b",
        b"GET / HTTP/1.1\r\nHost: x\r",
        b"\nGET / HTTP/1.1\r\nHost: x",
        b"GET / HTTP/1.1\r\nHost: x\r\n\nA: b",
        b"GET / HTTP/1.1\r\nHost: x\x00",
    ],
)
def test_heads_with_a_stray_cr_lf_or_nul_are_refused(head: bytes) -> None:
    """A CR not followed by LF, an LF not preceded by CR, or a NUL, anywhere in the head, is a problem."""
    assert head_problem(head) == "a bare CR or LF, or a NUL, in the request head"


def test_config_keys_read_per_request_are_found_without_getattr(monkeypatch: pytest.MonkeyPatch) -> None:
    """KEEP_ALIVE and REQUEST_BUFFER_SIZE are read without Config.__getattr__, and still live in the dict."""
    from sanic.config import Config

    from service.web.app import create_app
    from tests.conftest import make_settings

    app = create_app(make_settings())
    misses: list[str] = []
    original = Config.__getattr__

    def spy(config: Config, attr: str) -> Any:
        if attr in ("KEEP_ALIVE", "REQUEST_BUFFER_SIZE"):
            misses.append(attr)
        return original(config, attr)

    monkeypatch.setattr(Config, "__getattr__", spy)
    config = app.config
    assert (config["KEEP_ALIVE"], config["REQUEST_BUFFER_SIZE"]) == (config.KEEP_ALIVE, config.REQUEST_BUFFER_SIZE)
    config.update({"KEEP_ALIVE": False, "REQUEST_BUFFER_SIZE": 4096})  # Sanic's way of setting them
    assert (config.KEEP_ALIVE, config["KEEP_ALIVE"], config.REQUEST_BUFFER_SIZE) == (False, False, 4096)
    assert misses == []


def test_routes_resolve_without_sanic_lookup_cache() -> None:
    """The app's router resolves every path afresh (nothing kept per path), with Sanic's answers and errors."""
    from sanic.exceptions import MethodNotAllowed, NotFound
    from sanic.router import Router

    from service.web.app import RelayRouter, create_app
    from tests.conftest import make_settings

    app = create_app(make_settings())
    app.router.finalize()
    assert isinstance(app.router, RelayRouter)
    assert hasattr(Router.get, "cache_info") and not hasattr(RelayRouter.get, "cache_info")
    before = Router.get.cache_info().currsize  # type: ignore[attr-defined]  # Sanic's lru_cache
    route, _handler, params = app.router.get("/internal/v1/executions/exec-7/events", "POST", None)
    assert route.name.endswith("publish_one") and params == {"execution_id": "exec-7"}
    again = app.router.get("/internal/v1/executions/exec-7/events", "POST", None)[2]
    assert again == params and again is not params  # a fresh answer, not a cached one shared by requests
    assert Router.get.cache_info().currsize == before  # type: ignore[attr-defined]
    assert Router.get(app.router, "/internal/v1/executions/exec-7/events", "POST", None)[0] is route  # Sanic's own
    with pytest.raises(NotFound):
        app.router.get("/nowhere", "GET", None)
    with pytest.raises(MethodNotAllowed):
        app.router.get("/internal/v1/executions/exec-7/events", "GET", None)


def test_sanic_websocket_protocol_only_hands_bytes_on() -> None:
    """RelayWebSocketProtocol.data_received does WebSocketProtocol's part itself: that part must only dispatch.

    Sanic's layer hands the bytes to the open socket, else to HttpProtocol's
    data_received; if it ever does more, the relay's copy must learn it.
    """
    from sanic.server.protocols.http_protocol import HttpProtocol
    from sanic.server.protocols.websocket_protocol import WebSocketProtocol

    assert WebSocketProtocol.__mro__[1] is HttpProtocol
    assert set(WebSocketProtocol.data_received.__code__.co_names) == {"websocket", "data_received", "super"}
