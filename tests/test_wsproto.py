"""The WebSocket protocol extension (service/web/wsproto.py) without a server: negotiation, frames, events.

The real handshake and real browsers are covered by tests/test_compression.py.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from typing import Any

import pytest
import sanic
import websockets
from sanic.http.constants import Stage
from sanic.server.protocols.websocket_protocol import WebSocketProtocol
from sanic.server.websockets.impl import WebsocketImplProtocol
from sanic.worker.manager import WorkerManager
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory, PerMessageDeflate
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from service.limits import FrameGuard
from service.web import wsproto
from service.web.wsproto import LeanEvent, RelayWebSocketProtocol, compression_extensions
from tests.conftest import Server, recv_json


def frames(n: int) -> list[bytes]:
    """Event frames that repeat most of their keys, as the relay's do, with a few short ones between."""
    out = []
    for seq in range(1, n + 1):
        body = {"type": "diagnosis_update", "execution_id": "exec-1", "seq": seq, "event": "progress"}
        out.append(json.dumps({**body, "data": {"progress": seq, "stage": f"stage-{seq % 3}"}}).encode())
        if seq % 4 == 0:
            out.append(b'{"type":"pong"}')  # below the minimum size: sent as is
    return out


def negotiate(
    offer: ClientPerMessageDeflateFactory, context_takeover: bool
) -> tuple[PerMessageDeflate, PerMessageDeflate]:
    """Run the permessage-deflate negotiation both sides do; return (server extension, client extension)."""
    (factory,) = compression_extensions(True, 64, context_takeover)
    response, server = factory.process_request_params(offer.get_request_params(), [])
    client = offer.process_response_params(response, [])
    assert isinstance(server, PerMessageDeflate) and isinstance(client, PerMessageDeflate)
    return server, client


def test_compression_off_offers_no_extension() -> None:
    """RELAY_WS_COMPRESSION=false: no extension factory at all."""
    assert compression_extensions(False, 64, True) == []


@pytest.mark.parametrize("context_takeover", [True, False])
@pytest.mark.parametrize("window_bits", [None, 9])
def test_every_message_decodes_on_a_standard_client(context_takeover: bool, window_bits: int | None) -> None:
    """What the server extension encodes, websockets' own client decodes to the same bytes, in either mode."""
    offer = ClientPerMessageDeflateFactory(client_max_window_bits=True, server_max_window_bits=window_bits)
    server, client = negotiate(offer, context_takeover)
    expected_class = "_SharedContextDeflate" if context_takeover else "_MinSizeDeflate"
    assert type(server).__name__ == expected_class
    assert server.remote_no_context_takeover  # the client never keeps a context: no inflate window here
    for data in frames(40):
        wire = server.encode(Frame(Opcode.TEXT, data))
        assert wire.rsv1 == (len(data) >= 64)  # short messages go uncompressed
        assert client.decode(wire).data == data


def test_context_takeover_compresses_harder_than_each_message_alone() -> None:
    """Frames that repeat their keys shrink more when each may refer back to the previous one."""
    sizes = {}
    for takeover in (True, False):
        server, _ = negotiate(ClientPerMessageDeflateFactory(), takeover)
        sizes[takeover] = sum(len(server.encode(Frame(Opcode.TEXT, data)).data) for data in frames(40))
    assert sizes[True] < sizes[False] * 0.7


def test_control_and_fragmented_frames_pass_unchanged() -> None:
    """Pings, pongs, closes and fragments are never compressed (and never enter the client's window)."""
    server, _ = negotiate(ClientPerMessageDeflateFactory(), True)
    big = b"x" * 500
    for frame in (Frame(Opcode.PING, big), Frame(Opcode.CLOSE, b"\x03\xe8"), Frame(Opcode.TEXT, big, fin=False)):
        assert server.encode(frame) is frame
    assert server.window == b""


def test_sockets_with_the_same_history_share_one_compression() -> None:
    """Two sockets sent the same messages get the same compressed bytes from one shared entry."""
    first, _ = negotiate(ClientPerMessageDeflateFactory(), True)
    second, _ = negotiate(ClientPerMessageDeflateFactory(), True)
    for data in frames(5):
        a, b = first.encode(Frame(Opcode.TEXT, data)), second.encode(Frame(Opcode.TEXT, data))
        assert a.data == b.data
        assert (len(data) < 64) or a.data is b.data  # the very same object: compressed once


@pytest.mark.parametrize("context_takeover", [True, False])
@pytest.mark.parametrize("window_bits", [None, 9])
def test_shared_frames_are_what_websockets_would_send(context_takeover: bool, window_bits: int | None) -> None:
    """A socket sent shared frames gets, byte for byte, what websockets would have sent it; a client decodes them."""
    offer = ClientPerMessageDeflateFactory(client_max_window_bits=True, server_max_window_bits=window_bits)
    shared, client = negotiate(offer, context_takeover)
    reference, _ = negotiate(offer, context_takeover)
    # each message alone: websockets' own extension (a zlib stream per message), short ones left as they are
    own = PerMessageDeflate(
        True, True, reference.remote_max_window_bits, reference.local_max_window_bits, {"memLevel": 5}
    )
    for i, data in enumerate(frames(40)):
        text = data.decode()
        expected = Frame(Opcode.TEXT, data).serialize(mask=False, extensions=[reference])
        if not context_takeover and len(data) >= 64:
            assert expected == Frame(Opcode.TEXT, data).serialize(mask=False, extensions=[own])
        if i % 3 == 2:  # now and then through websockets' path: the window follows either way
            wire = Frame(Opcode.TEXT, data).serialize(mask=False, extensions=[shared])
        else:
            wire = wsproto.shared_text_frame([shared], text)
        assert wire == expected
        parser = websockets.ClientProtocol(websockets.uri.parse_uri("ws://x/"), state=websockets.protocol.State.OPEN)
        parser.extensions = [client]
        parser.receive_data(wire)
        (event,) = parser.events_received()
        assert event.data == data


def test_sockets_in_the_same_state_get_the_very_same_frame() -> None:
    """A fan-out builds each frame once: plain sockets, and compressing ones with the same window, share the bytes."""
    first, _ = negotiate(ClientPerMessageDeflateFactory(), True)
    second, _ = negotiate(ClientPerMessageDeflateFactory(), True)
    alone, _ = negotiate(ClientPerMessageDeflateFactory(), False)
    other, _ = negotiate(ClientPerMessageDeflateFactory(), False)
    for data in frames(8):
        text = data.decode()
        plain = wsproto.shared_text_frame([], text)
        assert plain is wsproto.shared_text_frame([], text)
        assert wsproto.shared_text_frame([first], text) is wsproto.shared_text_frame([second], text)
        assert wsproto.shared_text_frame([alone], text) is wsproto.shared_text_frame([other], text)
        if len(data) < 64:
            assert wsproto.shared_text_frame([alone], text) is plain


def test_a_socket_with_unknown_extensions_is_left_to_websockets() -> None:
    """Extensions the relay did not build (or several) get no shared frame: websockets frames those."""
    offer = ClientPerMessageDeflateFactory()
    assert wsproto.shared_text_frame([offer.process_response_params([], [])], "x" * 100) is None
    server, _ = negotiate(offer, True)
    assert wsproto.shared_text_frame([server, server], "x" * 100) is None


def test_the_shared_cache_is_bounded() -> None:
    """Past its limit the cache starts over instead of growing."""
    cache = wsproto._Compressed()
    cache.limit = 3
    for i in range(10):
        payload, following = cache.get(b"", f"message {i}".encode() * 10, 15)
        assert payload and following.endswith(f"message {i}".encode())
        assert len(cache.entries) <= 3


async def test_a_lean_event_given_its_loop_never_asks_asyncio_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Waiting on a LeanEvent made with its loop does not call get_running_loop (a getpid() each on 3.11)."""
    event = LeanEvent(asyncio.get_running_loop())
    asked: list[bool] = []
    real = asyncio.get_running_loop
    monkeypatch.setattr(asyncio, "get_running_loop", lambda: asked.append(True) or real())
    waiter = asyncio.create_task(event.wait())
    await asyncio.sleep(0)  # one loop turn: the task runs to its wait
    event.set()
    assert await waiter and asked == []
    unbound = LeanEvent()
    pending = asyncio.create_task(unbound.wait())
    await asyncio.sleep(0)
    unbound.set()
    assert await pending and asked == [True]  # without a loop it asks, as asyncio.Event does


async def test_lean_event_behaves_like_asyncio_event() -> None:
    """Setting wakes every waiter, wait returns at once while set, clear resets, a cancelled waiter leaves no trace."""
    event = LeanEvent()
    assert not event.is_set()
    waiters = [asyncio.create_task(event.wait()) for _ in range(3)]
    cancelled = asyncio.create_task(event.wait())
    await asyncio.sleep(0)  # one loop turn: every task runs to its wait
    assert event._waiters is not None and len(event._waiters) == 4
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    event.set()
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert event.is_set() and await asyncio.wait_for(event.wait(), 1)
    assert event._waiters == []
    event.clear()
    late = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    assert not late.done()
    event.set()
    assert await asyncio.wait_for(late, 1)


# -- the Sanic internals the extension relies on (listed in service/web/wsproto.py's docstring) --

#: The versions the docstring's list was checked against.
CHECKED_SANIC = "25.12.1"
CHECKED_WEBSOCKETS = "17.4"


def _parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def _source(function: Any) -> str:
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return ""


def _class_shape_problems() -> list[str]:
    """What no longer matches in the classes and signatures relied on."""
    problems: list[str] = []

    def expect(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    expect(
        _parameters(WebSocketProtocol.websocket_handshake) == ["self", "request", "subprotocols"],
        "WebSocketProtocol.websocket_handshake(self, request, subprotocols)",
    )
    expect(isinstance(getattr(WebSocketProtocol, "HTTP_CLASS", None), type), "WebSocketProtocol.HTTP_CLASS")
    for name, params in {
        "data_received": ["self", "data"],
        "close": ["self", "timeout"],
        "connection_made": ["self", "transport"],
        "connection_lost": ["self", "exc"],
        "check_timeouts": ["self"],
    }.items():
        expect(
            _parameters(getattr(WebSocketProtocol, name)) == params, f"WebSocketProtocol.{name}({', '.join(params)})"
        )
    expect(callable(getattr(WebSocketProtocol, "log_websocket", None)), "WebSocketProtocol.log_websocket")
    expect(callable(getattr(Response, "serialize", None)), "websockets.http11.Response.serialize (the 101's bytes)")
    expect(
        {"ws_proto", "ping_interval", "ping_timeout", "close_timeout"}
        <= set(_parameters(WebsocketImplProtocol.__init__)),
        "WebsocketImplProtocol(ws_proto, ping_interval=, ping_timeout=, close_timeout=)",
    )
    for name, params in {
        "connection_made": ["self", "io_proto", "loop"],
        "async_data_received": ["self", "data_to_send", "events_to_process"],
        "process_events": ["self", "events"],
        "auto_close_connection": ["self"],
        "keepalive_ping": ["self"],
    }.items():
        function = getattr(WebsocketImplProtocol, name)
        expect(
            inspect.iscoroutinefunction(function) and _parameters(function) == params,
            f"async WebsocketImplProtocol.{name}({', '.join(params)})",
        )
    expect(_parameters(WebsocketImplProtocol.data_received) == ["self", "data"], "WebsocketImplProtocol.data_received")
    # _LeanImpl.connection_made sets what Sanic's sets, and the closing paths read them.
    impl_source = inspect.getsource(WebsocketImplProtocol)
    for name in ("auto_closer_task", "data_finished_fut", "connection_lost_waiter", "keepalive_ping_task"):
        expect(f"self.{name}" in impl_source, f"WebsocketImplProtocol.{name}")
    for name in ("end_connection", "fail_connection"):
        expect(_parameters(getattr(WebsocketImplProtocol, name))[:3] == ["self", "code", "reason"], name)
    # _LeanImpl.__init__ sets what Sanic's sets, less what only recv() and process_events use.
    sanic_attributes = set(vars(WebsocketImplProtocol(ServerProtocol())))
    lean = wsproto._LeanImpl(ServerProtocol(), ping_interval=None, ping_timeout=None, close_timeout=1)
    expect(
        sanic_attributes - set(vars(lean)) == {"assembler", "recv_lock", "process_event_mutex"},
        f"WebsocketImplProtocol.__init__ sets {sorted(sanic_attributes)}",
    )
    for name in ("assembler", "recv_lock", "process_event_mutex"):
        used = [m for m, f in vars(WebsocketImplProtocol).items() if callable(f) and f"self.{name}" in _source(f)]
        expect(set(used) <= {"__init__", "recv", "recv_burst", "recv_streaming", "process_events"}, f"{name} in {used}")
    expect(Stage.IDLE is not None, "sanic.http.constants.Stage.IDLE")
    expect(
        _parameters(WorkerManager.shutdown_signal) == ["self", "signal", "frame"],
        "WorkerManager.shutdown_signal(self, signal, frame)",
    )
    manager_init = inspect.getsource(WorkerManager.__init__)
    for name in ("_shutting_down", "monitor_publisher"):
        expect(f"self.{name}" in manager_init, f"WorkerManager.{name}")
    return problems


async def test_sanic_internals_keep_their_shape(server: Server) -> None:
    """Every Sanic (and websockets) internal the module docstring lists still has the shape relied on.

    Classes and signatures are checked, then the objects of a live socket on a real server, so an
    upgrade that renames or drops one fails here, by name, instead of breaking pings, compression,
    the frame guard or shutdown at run time.
    """
    problems = _class_shape_problems()

    def expect(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    client = await server.connect("shape")
    await recv_json(client)
    (sink,) = server.app.ctx.pinger.sockets
    ws = sink.ws
    io = ws.io_proto
    expect(type(ws).__name__ == "_LeanImpl" and isinstance(ws, WebsocketImplProtocol), "_LeanImpl is used")
    expect(isinstance(io, RelayWebSocketProtocol), "io_proto is RelayWebSocketProtocol")
    for name in ("app", "websocket_max_size", "websocket_ping_interval", "websocket_ping_timeout", "websocket_timeout"):
        expect(hasattr(io, name), f"WebSocketProtocol.{name}")
    expect(
        isinstance(io._can_write, LeanEvent) and isinstance(io._data_received, LeanEvent), "_can_write/_data_received"
    )
    expect(io._can_write._loop is io._data_received._loop is io.loop, "the protocol's events know its loop")
    expect(isinstance(io._http.stage, Stage) and isinstance(io._time, float), "_http.stage, _time")
    expect(hasattr(io, "_callback_check_timeouts"), "WebSocketProtocol._callback_check_timeouts")
    expect(io.transport is not None and io.loop is asyncio.get_running_loop(), "transport, loop")
    request = io._http.request
    expect(all(hasattr(request, n) for n in ("url", "client_ip", "port")), "_http.request.url/client_ip/port")
    expect(io.websocket is ws and bool(io.websocket_url) and bool(io.websocket_peer), "websocket(_url, _peer)")
    proto = ws.ws_proto
    expect(isinstance(proto, ServerProtocol), "ws_proto is websockets' ServerProtocol")
    expect(isinstance(proto.writes, list) and isinstance(proto.extensions, list), "ServerProtocol.writes/extensions")
    for name in ("send_text", "send_ping", "send_close", "data_to_send", "receive_data", "events_received"):
        expect(callable(getattr(proto, name, None)), f"ServerProtocol.{name}")
    expect(inspect.isgenerator(proto.parser) and proto.parser_exc is None, "ServerProtocol.parser/parser_exc")
    expect(io._http.response_func is not None, "Http.response_func (cleared when http1() ends: hardening.py)")
    expect(ws.io_proto.transport is io.transport, "io_proto.transport")
    expect(isinstance(ws.conn_mutex, asyncio.Lock), "conn_mutex")
    expect(isinstance(ws.pings, dict), "pings")
    expect(len(getattr(server.app, "websocket_tasks", ())) >= 1, "app.websocket_tasks")
    await client.close()
    versions = (
        f"checked against Sanic {CHECKED_SANIC}, websockets {CHECKED_WEBSOCKETS}; "
        f"installed {sanic.__version__}, {websockets.__version__}"
    )
    assert problems == [], f"Sanic internals changed shape ({versions}); see service/web/wsproto.py: {problems}"
    assert f"Sanic {CHECKED_SANIC} and websockets {CHECKED_WEBSOCKETS}" in (wsproto.__doc__ or "").replace("\n", " ")


async def test_a_relay_socket_has_no_frame_assembler_and_no_recv(server: Server) -> None:
    """A socket is built without Sanic's frame assembler and receive locks; recv() says to use listen()."""
    client = await server.connect("lean")
    await recv_json(client)
    (sink,) = server.app.ctx.pinger.sockets
    ws = sink.ws
    assert not any(hasattr(ws, name) for name in ("assembler", "recv_lock", "process_event_mutex"))
    with pytest.raises(TypeError, match="listen"):
        await ws.recv()
    await client.send(json.dumps({"type": "ping"}))  # the listener still answers
    assert (await recv_json(client))["type"] == "pong"
    await client.close()


async def test_an_open_socket_keeps_no_timeout_timer(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sanic's timeout timer, armed at the accept, is cancelled once the connection is a WebSocket."""
    armed: list[asyncio.TimerHandle] = []
    check = RelayWebSocketProtocol.check_timeouts

    def recording_check(self: RelayWebSocketProtocol) -> None:  # the real check, its timer noted
        check(self)
        if self._callback_check_timeouts is not None:
            armed.append(self._callback_check_timeouts)

    monkeypatch.setattr(RelayWebSocketProtocol, "check_timeouts", recording_check)
    client = await server.connect("no-timer")
    assert (await recv_json(client))["type"] == "connected"
    (sink,) = server.app.ctx.pinger.sockets
    io = sink.ws.io_proto
    assert armed, "Sanic armed no timer at the accept"
    assert all(timer.cancelled() for timer in armed)
    assert io._callback_check_timeouts is None
    await client.close()


def _client_frame(opcode: Opcode, data: bytes) -> bytes:
    """A frame as a client sends it (masked)."""
    return Frame(opcode, data).serialize(mask=True, extensions=[])


async def test_a_pong_settles_its_ping_and_the_ones_before_it() -> None:
    """A pong resolves the ping it answers and every earlier one, at once; later pings stay pending."""
    impl = wsproto._LeanImpl(
        ServerProtocol(state=State.OPEN),
        ping_interval=None,
        ping_timeout=None,
        close_timeout=1,
        guard=FrameGuard(rate=100, max_frames_per_message=8),
    )
    loop = asyncio.get_running_loop()
    impl.pings = {payload: loop.create_future() for payload in (b"one", b"two", b"three")}
    waiters = dict(impl.pings)
    impl.data_received(_client_frame(Opcode.PONG, b"unsolicited"))
    assert not any(w.done() for w in waiters.values()) and len(impl.pings) == 3
    impl.data_received(_client_frame(Opcode.PONG, b"two"))  # settled in this call, not by a task later
    assert waiters[b"one"].done() and waiters[b"two"].done() and not waiters[b"three"].done()
    assert list(impl.pings) == [b"three"]
    impl.data_received(_client_frame(Opcode.PONG, b"three"))
    assert waiters[b"three"].done() and impl.pings == {}


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_matches_websockets_serialization(size: int) -> None:
    """The relay's own text frame is byte for byte what websockets serializes, at every length encoding."""
    payload = b"x" * size
    assert wsproto._text_frame(payload, False) == Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_the_shared_plain_frame_is_the_text_frame_at_every_length(size: int) -> None:
    """The frame a fan-out shares (its head built inline for an event's usual size) is _text_frame's, at any size."""
    text = "é" * (size // 2) + "x" * (size % 2)  # UTF-8: the frame's length counts bytes, not characters
    assert wsproto.shared_text_frame([], text) == wsproto._text_frame(text.encode(), False)


class _CountingTransport:
    """A server transport that records each write call (one bytes object per system call asked for)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.calls.append(bytes(data))
        self.inner.write(data)

    def writelines(self, chunks: Any) -> None:
        chunks = [bytes(chunk) for chunk in chunks]
        self.calls.append(b"".join(chunks))
        self.inner.writelines(chunks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def server_writes(monkeypatch: pytest.MonkeyPatch) -> list[_CountingTransport]:
    """The counting transports of the connections the relay accepts from now on."""
    transports: list[_CountingTransport] = []
    accept = RelayWebSocketProtocol.connection_made

    def connection_made(self: RelayWebSocketProtocol, transport: Any) -> None:
        counting = _CountingTransport(transport)
        transports.append(counting)
        accept(self, counting)

    monkeypatch.setattr(RelayWebSocketProtocol, "connection_made", connection_made)
    return transports


@pytest.mark.parametrize("compression", ["deflate", None])
async def test_the_101_and_the_connected_frame_leave_in_one_write(
    server: Server, server_writes: list[_CountingTransport], compression: str | None
) -> None:
    """The handshake response waits for the handler's first frame and leaves with it, in one write."""
    client = await server.connect("one-write", compression=compression)
    assert (await recv_json(client))["type"] == "connected"
    (transport,) = server_writes
    head, _, frame = transport.calls[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), transport.calls
    assert frame[:1] == (b"\xc1" if compression else b"\x81"), transport.calls  # a final text frame (RSV1: deflated)


async def test_the_101_leaves_alone_while_the_handler_waits(
    server: Server, server_writes: list[_CountingTransport], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler that writes nothing in its first step (a slow broker) does not hold the handshake back."""
    relay = server.relay
    release = asyncio.Event()
    open_stream = relay.open_stream

    async def slow_open_stream(*args: Any) -> Any:
        await release.wait()
        return await open_stream(*args)

    monkeypatch.setattr(relay, "open_stream", slow_open_stream)
    client = await server.connect("slow-broker")  # returns once the 101 arrived: the handler still waits
    (transport,) = server_writes
    assert len(transport.calls) == 1 and transport.calls[0].startswith(b"HTTP/1.1 101 "), transport.calls
    release.set()
    assert (await recv_json(client))["type"] == "connected"


async def test_a_refused_token_gets_the_101_then_the_close(
    server: Server, server_writes: list[_CountingTransport]
) -> None:
    """A refusal in the handler's first step still sends the handshake response before its close frame."""
    client = await server.connect("refused", token="not-a-token")
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(client.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4500
    (transport,) = server_writes
    assert transport.calls[0].startswith(b"HTTP/1.1 101 "), transport.calls


def test_sanic_headers_answer_as_websockets_headers_do() -> None:
    """The handshake reads Sanic's headers in place and gets the answers a full copy into its Headers gives."""
    from sanic.compat import Header
    from websockets.datastructures import Headers, MultipleValuesError

    lines = [
        ("Host", "relay"),
        ("Connection", "keep-alive"),
        ("connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Extensions", "permessage-deflate"),
        ("sec-websocket-extensions", "x-other"),
        ("Origin", "https://a.example"),
        ("origin", "https://b.example"),
    ]
    copied = Headers()
    for name, value in lines:
        copied[name] = value
    seen = wsproto._SanicHeaders(Header(lines))

    def item(view: Headers, key: str) -> Any:
        try:
            return view[key]
        except (KeyError, MultipleValuesError) as exc:
            return type(exc)

    for key in ("Host", "CONNECTION", "upgrade", "Sec-WebSocket-Key", "Sec-WebSocket-Extensions", "Origin", "Absent"):
        assert seen.get_all(key) == copied.get_all(key), key
        assert (key in seen) == (key in copied), key
        assert item(seen, key) == item(copied, key), key
    assert list(seen) == list(copied) and len(seen) == len(copied)
    assert list(seen.raw_items()) == list(copied.raw_items()) and str(seen) == str(copied)


@pytest.mark.parametrize("value", ["Bearer x\u20acy", "a\x00b", "line\r\nbreak"])
def test_sanic_headers_refuse_the_values_websockets_refuses(value: str) -> None:
    """A header value websockets' Headers would not store is refused by name, as the copy refused it."""
    from sanic.compat import Header
    from websockets.datastructures import Headers
    from websockets.exceptions import InvalidHeaderValue

    lines = [("Host", "relay"), ("Authorization", value), ("Upgrade", "websocket")]
    with pytest.raises(InvalidHeaderValue) as copied:
        Headers(lines)
    with pytest.raises(InvalidHeaderValue) as seen:
        wsproto._SanicHeaders(Header(lines))
    assert seen.value.name == copied.value.name == "Authorization"
