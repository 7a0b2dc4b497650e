"""Sanic's WebSocket protocol, extended to negotiate permessage-deflate.

Sanic 25.12 builds its ``ServerProtocol`` without extensions, so no client
ever gets compression. :class:`RelayWebSocketProtocol` performs the same
handshake with the extensions configured for the app
(``RELAY_WS_COMPRESSION*``); everything after the handshake is Sanic's.

Two ways to compress (``RELAY_WS_COMPRESSION_CONTEXT_TAKEOVER``):

- ``true`` (default): *server context takeover without a compressor per
  socket*. The client keeps its inflate window across messages, so a message
  may refer back to the one before; event frames repeat most of their keys,
  and that is what makes them small. Instead of a zlib compressor held by
  each socket (tens of KB), every message is compressed by a fresh
  compressor primed with the socket's previous compressed messages (their
  last 2 KB) as its dictionary, which is exactly the tail of the client's
  window. A socket keeps only a reference to those bytes, shared with the
  other sockets of its execution; as they receive the same messages, each
  event is compressed once for all of them (:class:`_Compressed`).
- ``false``: every message compressed on its own, no context at all.

Client-to-server messages are always negotiated without context takeover
(they are tiny pings), so the server holds no inflate window either.
Messages shorter than ``RELAY_WS_COMPRESSION_MIN_SIZE`` go uncompressed.

In both modes a socket's next compressed message depends only on the message
and the socket's window (none at all without context takeover), so a fan-out
compresses each event once and hands every socket in the same state the same
serialized frame (:func:`shared_text_frame`), as it does for uncompressed
sockets: no zlib stream and no websockets frame building per socket.

Sanic internals relied on, checked against Sanic 25.12.1 and websockets 17.4
(``tests/test_wsproto.py::test_sanic_internals_keep_their_shape`` fails,
naming what moved, when an upgrade changes any of them; ``hardening.py``
lists and tests its own):

- ``sanic.server.protocols.websocket_protocol.WebSocketProtocol``, subclassed
  as :class:`RelayWebSocketProtocol`: ``HTTP_CLASS`` is replaced and
  ``__slots__`` extended (Sanic's metaclass gives no ``__dict__``);
  ``websocket_handshake(self, request, subprotocols=None)`` is replaced and
  reads ``app``, ``websocket_max_size``, ``websocket_ping_interval``,
  ``websocket_ping_timeout``, ``websocket_timeout``, ``_can_write``,
  ``transport`` and ``_http.request`` (``url``, ``client_ip``, ``port``), calls
  ``log_websocket``, sets ``_time``, ``websocket``, ``websocket_url`` and
  ``websocket_peer``, and cancels ``_callback_check_timeouts`` (Sanic's timeout
  timer); it leaves the 101 in websockets' ``ServerProtocol.writes``
  (written with the handler's first frame) and relies on Sanic's
  ``_websocket_handler`` starting the handler's task in the same turn (else the
  101 is only written alone, a turn later; ``tests/test_wsproto.py`` checks);
  ``data_received``, ``close(timeout)``, ``connection_made(transport)``,
  ``connection_lost(exc)`` and ``check_timeouts()`` are extended, reading
  ``_http.stage`` (``sanic.http.constants.Stage.IDLE``), ``_time``,
  ``transport`` and ``loop``; ``connection_lost`` then sets ``websocket`` to
  ``None``, closes websockets' ``ServerProtocol.parser`` (a generator) and
  drops the traceback of its ``parser_exc`` (reference cycles otherwise);
  ``__init__`` replaces the ``_can_write`` and ``_data_received`` events with
  :class:`LeanEvent`.
- ``sanic.server.websockets.impl.WebsocketImplProtocol``, subclassed as
  ``_LeanImpl``: built as ``(ws_proto, ping_interval=, ping_timeout=,
  close_timeout=)``; its ``__init__`` is replaced (Sanic's attributes less
  ``assembler``, ``recv_lock`` and ``process_event_mutex``, which only
  ``recv()``, ``recv_burst()``, ``recv_streaming()`` and ``process_events``
  use: those are replaced too); started with ``await connection_made(io_proto,
  loop=)``, which is replaced: it sets ``loop``, ``io_proto``,
  ``connection_lost_waiter``, ``data_finished_fut`` (a plain future whose
  callback starts ``auto_close_connection()``), ``keepalive_ping_task`` and
  ``auto_closer_task`` (a placeholder until then); ``data_received`` and
  ``process_events(events)`` are replaced: messages go to a listener
  (:func:`listen`), a pong resolves its ping's future in ``pings`` (as Sanic's
  ``process_pong``, without a task when the read needs no answer), what must be
  written through ``async_data_received(data_to_send, events)``; ``fail_connection``
  is extended (it discards websockets' pending writes: a pending 101 is written first).
- ``routes/ws.py`` (``WsSink``) writes frames and pings past Sanic's ``send``:
  it reads ``ws_proto`` (websockets' ``ServerProtocol``: ``state``,
  ``extensions``, ``writes``, ``send_text``, ``send_ping``,
  ``data_to_send``), ``io_proto.transport``, ``conn_mutex`` and ``pings``
  (ping payload -> future, resolved by Sanic's pong handling), and calls
  ``end_connection`` and ``fail_connection``.
- Elsewhere in this package: ``shutdown.py`` counts ``app.websocket_tasks``;
  ``serve.py`` patches ``sanic.worker.manager.WorkerManager.shutdown_signal``
  (reading ``_shutting_down``, posting to ``monitor_publisher``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, cast

from sanic.exceptions import RequestCancelled, SanicException
from sanic.http.constants import Stage
from sanic.log import websockets_logger
from sanic.server.protocols.http_protocol import HttpProtocol
from sanic.server.protocols.websocket_protocol import WebSocketProtocol
from sanic.server.websockets.impl import WebsocketImplProtocol
from websockets.datastructures import Headers, MultipleValuesError, is_valid_header_value
from websockets.exceptions import InvalidHeader, InvalidHeaderValue
from websockets.extensions.base import Extension, ServerExtensionFactory
from websockets.extensions.permessage_deflate import PerMessageDeflate, ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import ExtensionParameter, Subprotocol

from .. import metrics
from ..gcpolicy import policy as gc_policy
from ..limits import FrameGuard, PeerLimit, Turnstile
from . import direct
from .hardening import LINGER, RelayHttp

__all__ = ["Listener", "RelayWebSocketProtocol", "compression_extensions", "listen", "shared_text_frame"]

_DATA = (Opcode.TEXT, Opcode.BINARY)
_SYNC_TAIL = b"\x00\x00\xff\xff"  # ends every sync-flushed message; RFC 7692 drops it on the wire
COMPRESS_LEVEL = 6
COMPRESS_MEM_LEVEL = 5  # websockets' own choice for servers: a 4 KB hash table instead of 128 KB
# How much of the previous compressed frames primes the next one. Event frames alternate
# (progress, result, ...), so the frame before the last matters too: for the demo execution,
# the last frame alone gives 2.6 KB, 2 KB of them 1.5 KB, a real 32 KB context 1.4 KB.
DICTIONARY_SIZE = 2048
# A client refused for what it sent gets a close frame; if it does not read it (its
# buffer is this full, or the frame is still unsent after CLOSE_GRACE s) it is aborted.
WRITE_BUFFER_HIGH = 64 * 1024
CLOSE_GRACE = 1.0
PARSE_SLICE = 4096  # bytes of client data parsed before its frames are checked
_TOO_MANY_BODY = b'{"error":"rate_limited","message":"too many connections from this address; retry later"}'
_TOO_MANY_CONNECTIONS = (
    b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_TOO_MANY_BODY), _TOO_MANY_BODY)
)
log = logging.getLogger("relay.ws")


def _text_frame(payload: bytes, compressed: bool) -> bytes:
    """A final, unmasked text frame (RFC 6455 section 5.2); RSV1 marks a compressed message (RFC 7692)."""
    head = 0x81 | (0x40 if compressed else 0)
    length = len(payload)
    if length < 126:
        return struct.pack("!BB", head, length) + payload
    if length < 65536:
        return struct.pack("!BBH", head, 126, length) + payload
    return struct.pack("!BBQ", head, 127, length) + payload


class _MinSizeDeflate(PerMessageDeflate):
    """permessage-deflate without server context takeover; short messages go uncompressed (RFC 7692 allows it).

    Each message is compressed alone, so its compressed form is the same for every
    socket with the same window size: it comes from the shared cache (an empty
    dictionary), not from a zlib stream per socket.
    """

    def __init__(self, *args: Any, min_size: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.min_size = min_size

    def encode(self, frame: Frame) -> Frame:
        """Compress data frames of at least ``min_size`` bytes (fragments as websockets does)."""
        if frame.opcode not in _DATA or not frame.fin:
            return super().encode(frame)
        if len(frame.data) < self.min_size:
            return frame
        payload, _ = _cache.get(b"", bytes(frame.data), self.local_max_window_bits)
        return Frame(frame.opcode, payload, True, True, frame.rsv2, frame.rsv3)

    def text_frame(self, data: bytes, plain: bytes) -> bytes:
        """The serialized frame of the text message ``data`` (``plain``: its uncompressed frame)."""
        if len(data) < self.min_size:
            return plain
        return _cache.frame(b"", data, self.local_max_window_bits)[0]


class _Compressed:
    """Compressed messages by (dictionary, message, window bits), shared by every socket.

    Sockets of one execution receive the same frames in the same order, so they
    ask for the same entries: the first one compresses, the others look it up.
    An entry holds the payload, the next dictionary and the serialized text frame.
    Bounded by entries and by bytes: cleared when either is full (a miss only
    costs one compression); a message larger than ``max_entry`` is never cached
    (each socket compresses it), so no stream of large distinct events can grow
    the cache (``relay_compression_cache_bytes``, ``relay_compression_uncached_total``).
    """

    limit = 4096
    max_bytes = 8 << 20
    max_entry = 64 << 10

    def __init__(self) -> None:
        self.entries: dict[tuple[bytes, bytes, int], tuple[bytes, bytes, bytes]] = {}
        self.size = 0  # bytes held: keys' dictionaries and messages, payloads, next dictionaries and frames

    def get(self, dictionary: bytes, data: bytes, wbits: int) -> tuple[bytes, bytes]:
        """The compressed payload of ``data`` and the shared copy of ``data`` (the next dictionary)."""
        entry = self.entries.get((dictionary, data, wbits)) or self._add(dictionary, data, wbits)
        return entry[0], entry[1]

    def frame(self, dictionary: bytes, data: bytes, wbits: int) -> tuple[bytes, bytes]:
        """The text message ``data`` compressed and serialized as a frame, and the next dictionary."""
        entry = self.entries.get((dictionary, data, wbits)) or self._add(dictionary, data, wbits)
        return entry[2], entry[1]

    def _add(self, dictionary: bytes, data: bytes, wbits: int) -> tuple[bytes, bytes, bytes]:
        payload, following = self._compress(dictionary, data, wbits)
        entry = (payload, following, _text_frame(payload, True))
        if len(data) > self.max_entry:
            metrics.compression_cache(self.size, uncached=True)
            return entry
        cost = len(dictionary) + len(data) + len(payload) + len(following) + len(entry[2])
        if len(self.entries) >= self.limit or self.size + cost > self.max_bytes:
            self.entries.clear()
            self.size = 0
        self.entries[dictionary, data, wbits] = entry
        self.size += cost
        metrics.compression_cache(self.size)
        return entry

    @staticmethod
    def _compress(dictionary: bytes, data: bytes, wbits: int) -> tuple[bytes, bytes]:
        if dictionary:
            compressor = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, -wbits, COMPRESS_MEM_LEVEL, zdict=dictionary)
        else:
            compressor = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, -wbits, COMPRESS_MEM_LEVEL)
        payload = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        # The client's window now ends with ``data``; keep (at most) its last DICTIONARY_SIZE bytes.
        limit = min(1 << wbits, DICTIONARY_SIZE)
        following = data[-limit:] if len(data) >= limit else (dictionary + data)[-limit:]
        return payload[: -len(_SYNC_TAIL)], following


_cache = _Compressed()


class _SharedContextDeflate(PerMessageDeflate):
    """Server context takeover without a compressor per socket (see the module's docstring)."""

    def __init__(self, remote_max_window_bits: int, local_max_window_bits: int, min_size: int) -> None:
        # local_no_context_takeover=True only keeps websockets from building a compressor;
        # what was negotiated (and what the client does) is context takeover.
        super().__init__(True, True, remote_max_window_bits, local_max_window_bits)
        self.min_size = min_size
        self.window = b""  # the end of the client's window: the last compressed messages' text

    def encode(self, frame: Frame) -> Frame:
        """Compress a whole data message against the previous one; leave the rest as is."""
        # Fragmented messages stay uncompressed (their first frame has RSV1 clear), and
        # uncompressed messages never enter the client's inflate window.
        if frame.opcode not in _DATA or not frame.fin or len(frame.data) < self.min_size:
            return frame
        payload, self.window = _cache.get(self.window, bytes(frame.data), self.local_max_window_bits)
        return Frame(frame.opcode, payload, True, True, frame.rsv2, frame.rsv3)

    def text_frame(self, data: bytes, plain: bytes) -> bytes:
        """The serialized frame of the text message ``data`` (``plain``: its uncompressed frame); moves the window."""
        if len(data) < self.min_size:
            return plain
        wire, self.window = _cache.frame(self.window, data, self.local_max_window_bits)
        return wire


_medium_text_head = struct.Struct("!BBH").pack


class _Latest:
    """The last text message handed to a socket: its UTF-8 bytes and its uncompressed frame, made once."""

    __slots__ = ("data", "plain", "text")

    def __init__(self) -> None:
        self.text = ""
        self.data = b""
        self.plain = _text_frame(b"", False)

    def set(self, text: str) -> None:
        data = self.data = text.encode()
        length = len(data)
        # _text_frame(data, False), inline for the size of an event (126 to 65,535 bytes): a call less per fan-out.
        self.plain = _medium_text_head(0x81, 126, length) + data if 125 < length < 65536 else _text_frame(data, False)
        self.text = text


_latest = _Latest()
# A tuple made once: ``A | B`` in isinstance() builds a union each call (160 ns against 40 ns),
# and shared_text_frame runs once per compressing socket of every fan-out.
_SHARED_DEFLATES = (_SharedContextDeflate, _MinSizeDeflate)


def shared_text_frame(extensions: Sequence[Extension], text: str) -> bytes | None:
    """``text`` serialized as the next frame of a socket with these extensions (None: only websockets can).

    Sockets that receive the same message in the same state get the very same
    bytes: the message is encoded, compressed (per window) and framed once per
    fan-out, not once per socket. A compressing socket's window moves on as if
    websockets had sent the frame, so whatever it sends next through websockets
    (``send_text``, the extension's ``encode``) follows on correctly.
    """
    latest = _latest
    if text is not latest.text:  # a fan-out hands the same str object to every socket in a row
        latest.set(text)
    if not extensions:
        return latest.plain
    if len(extensions) == 1:
        extension = extensions[0]
        if isinstance(extension, _SHARED_DEFLATES):
            return extension.text_frame(latest.data, latest.plain)
    return None


class _Factory(ServerPerMessageDeflateFactory):
    """Negotiates :class:`_SharedContextDeflate` or :class:`_MinSizeDeflate`."""

    def __init__(self, min_size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.min_size = min_size

    def process_request_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Any]
    ) -> tuple[list[ExtensionParameter], PerMessageDeflate]:
        """Agree on parameters as websockets does, with our extension class."""
        response, ext = super().process_request_params(params, accepted_extensions)
        if not ext.local_no_context_takeover:
            return response, _SharedContextDeflate(ext.remote_max_window_bits, ext.local_max_window_bits, self.min_size)
        return response, _MinSizeDeflate(
            ext.remote_no_context_takeover,
            ext.local_no_context_takeover,
            ext.remote_max_window_bits,
            ext.local_max_window_bits,
            {"memLevel": COMPRESS_MEM_LEVEL},
            min_size=self.min_size,
        )


def compression_extensions(enabled: bool, min_size: int, context_takeover: bool) -> list[ServerExtensionFactory]:
    """The extension factories for the configured compression (empty when off)."""
    if not enabled:
        return []
    # The client never compresses with context (its messages are tiny pings): no inflate window here.
    return [
        _Factory(min_size, server_no_context_takeover=not context_takeover, client_no_context_takeover=True),
    ]


class LeanEvent:
    """``asyncio.Event`` with the same behaviour and no deque until someone waits.

    Each ``asyncio.Event`` allocates a deque (about 600 bytes) up front; Sanic keeps
    four per WebSocket that are almost never awaited concurrently. At tens of
    thousands of idle sockets that is a large share of memory.
    """

    __slots__ = ("_loop", "_value", "_waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        # The loop waiters are made on, if known: on Python 3.11 asyncio.get_running_loop()
        # makes a getpid() system call each time, once per request for the protocol's events.
        self._loop = loop
        self._value = False
        self._waiters: list[asyncio.Future[bool]] | None = None

    def is_set(self) -> bool:
        """Whether the flag is set."""
        return self._value

    def set(self) -> None:
        """Set the flag and wake every waiter."""
        if not self._value:
            self._value = True
            for waiter in self._waiters or ():
                if not waiter.done():
                    waiter.set_result(True)

    def clear(self) -> None:
        """Reset the flag."""
        self._value = False

    async def wait(self) -> bool:
        """Return True once the flag is set."""
        if self._value:
            return True
        waiter: asyncio.Future[bool] = (self._loop or asyncio.get_running_loop()).create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            self._waiters.remove(waiter)


class _NotStarted:
    """Stands for Sanic's closing task until the data phase ends (see ``_LeanImpl.connection_made``)."""

    __slots__ = ()

    def done(self) -> bool:
        """Not done: the socket is still open."""
        return False

    def cancel(self) -> bool:
        """Nothing to cancel (Sanic cancels only a closer that is running, never this one)."""
        return False


_CLOSER_NOT_STARTED = cast(asyncio.Task[None], _NotStarted())


def _lean_event(loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Event:
    """A LeanEvent where Sanic declares an ``asyncio.Event``: it has every method Sanic calls."""
    return cast(asyncio.Event, LeanEvent(loop))


Refused = Callable[[int, str], None]
#: Takes each message a client sends (``str`` for text, ``bytes`` for binary), then ``None`` when it closes.
Listener = Callable[[str | bytes | None], None]
#: Messages held for a socket nobody listens to yet; past this, reading pauses until someone does.
HELD_MESSAGES = 16
_tasks: set[asyncio.Task[Any]] = set()


def _keep(task: asyncio.Task[Any]) -> None:
    """Hold a reference to ``task`` until it is done (the loop keeps only a weak one)."""
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


class _LeanImpl(WebsocketImplProtocol):
    """Sanic's WebSocket implementation with lighter per-connection objects and a frame guard.

    Every frame the client sends goes through a :class:`~service.limits.FrameGuard`
    before Sanic acts on it. Sanic answers pings and assembles messages in tasks
    it starts per read, unthrottled, and its assembler raises inside such a task
    on invalid UTF-8 (a traceback per frame, and the partial message left behind
    to be spliced onto the next one; see docs/reliability.md). A frame the guard
    refuses closes the connection with its code at once, and nothing in that read
    reaches Sanic.
    """

    def __init__(
        self,
        ws_proto: ServerProtocol,
        *,
        ping_interval: float | None,
        ping_timeout: float | None,
        close_timeout: float,
        guard: FrameGuard | None = None,
        refused: Refused | None = None,
    ) -> None:
        # Sanic's __init__ (not called) less what only recv() uses: the frame assembler (two
        # locks, a queue, two events), recv_lock and process_event_mutex. Messages go to the
        # listener instead (listen()); recv() refuses. About 2 % of a connect.
        self.ws_proto = ws_proto
        self.io_proto = None
        self.loop = None
        self.max_queue = None  # type: ignore[assignment]  # Sanic's default; typed int there
        self.close_timeout = close_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.pings = {}
        self.conn_mutex = asyncio.Lock()
        self.recv_cancel = None
        self.data_finished_fut = None
        self.can_pause = True
        self.pause_frame_fut = None
        self.keepalive_ping_task = None
        self.auto_closer_task = None
        self.connection_lost_waiter = None
        self.guard = guard
        self.refused = refused
        self.closing_by_guard = False
        self.listener: Listener | None = None
        self.held: list[str | bytes | None] | None = None  # messages received before listen()
        self.parts: list[bytes] | None = None  # the fragments of a message still being received
        self.parts_text = False

    async def connection_made(self, io_proto: Any, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Sanic's, except that the closing task starts when the data phase ends, not with the socket.

        Sanic starts a task per socket that only waits for the end of the data phase
        (a task, a shielded future and its callbacks: about 1 KB per idle connection).
        Here the future's callback starts that same task then; until it does,
        ``auto_closer_task`` is a placeholder that says "running", so Sanic's closing
        paths choose the graceful close as they would.
        """
        loop = loop or io_proto.loop
        self.loop = loop
        self.io_proto = io_proto
        self.connection_lost_waiter = loop.create_future()
        finished = loop.create_future()
        finished.add_done_callback(self._start_closing)
        self.data_finished_fut = finished
        if self.ping_interval:  # off in the relay (one Pinger task pings every socket)
            self.keepalive_ping_task = loop.create_task(self.keepalive_ping())
        self.auto_closer_task = _CLOSER_NOT_STARTED

    async def recv(self, timeout: float | None = None) -> str | bytes | None:
        """Not available: messages go to the listener (:func:`listen`)."""
        raise TypeError("a relay socket hands its messages to listen(), it has no recv()")

    async def recv_burst(self, max_recv: int = 256) -> Sequence[str | bytes]:
        """Not available: messages go to the listener (:func:`listen`)."""
        raise TypeError("a relay socket hands its messages to listen(), it has no recv_burst()")

    async def recv_streaming(self) -> AsyncIterator[str | bytes]:
        """Not available: messages go to the listener (:func:`listen`)."""
        raise TypeError("a relay socket hands its messages to listen(), it has no recv_streaming()")
        yield b""  # an async generator, as Sanic's

    def _start_closing(self, finished: asyncio.Future[None]) -> None:
        if self.auto_closer_task is _CLOSER_NOT_STARTED and self.loop is not None:
            self.auto_closer_task = self.loop.create_task(self.auto_close_connection())

    def listen(self, listener: Listener) -> None:
        """Hand every message to ``listener`` as it arrives, and ``None`` once the peer closes.

        Used instead of ``recv()``: a socket then needs no task (nor futures) waiting on
        its reads, about 3 KB per idle connection. Messages that arrived before are
        handed over at once, in order.
        """
        self.listener = listener
        held, self.held = self.held, None
        if held is None:
            return
        if len(held) >= HELD_MESSAGES and self.io_proto is not None and self.io_proto.transport is not None:
            self.io_proto.transport.resume_reading()
        for message in held:
            listener(message)

    def _deliver(self, message: str | bytes | None) -> None:
        listener = self.listener
        if listener is not None:
            listener(message)
            return
        held = self.held
        if held is None:
            held = self.held = []
        held.append(message)
        if len(held) == HELD_MESSAGES and self.io_proto is not None and self.io_proto.transport is not None:
            self.io_proto.transport.pause_reading()  # nobody listens yet: stop reading until someone does

    def _take_messages(self, events: Sequence[Any]) -> list[Frame]:
        """Deliver the data messages in ``events`` now; return the pongs and the close left to handle."""
        rest: list[Frame] = []
        for frame in events:
            if not isinstance(frame, Frame):
                continue
            opcode = frame.opcode
            if opcode is Opcode.PONG or opcode is Opcode.CLOSE:
                rest.append(frame)
            elif opcode is Opcode.PING:
                continue  # websockets has answered it
            elif opcode is Opcode.CONT:
                if self.parts is None:
                    continue  # websockets refuses a continuation outside a message
                self.parts.append(bytes(frame.data))
                if frame.fin:
                    data, self.parts = b"".join(self.parts), None
                    self._deliver(data.decode() if self.parts_text else data)
            elif frame.fin:
                data = bytes(frame.data)
                self._deliver(data.decode() if opcode is Opcode.TEXT else data)
            else:
                self.parts = [bytes(frame.data)]
                self.parts_text = opcode is Opcode.TEXT
        return rest

    async def process_events(self, events: Sequence[Any]) -> None:
        """Messages go to the listener; a pong resolves its ping; the peer's close ends the listening."""
        for frame in self._take_messages(events):
            if frame.opcode is Opcode.PONG:
                self._acknowledge(frame)
            else:  # CLOSE, after websockets' answer to it was written (async_data_received)
                self._deliver(None)

    def _acknowledge(self, pong: Frame) -> None:
        """Resolve the ping ``pong`` answers, and every ping before it (Sanic's ``process_pong``)."""
        pings = self.pings
        data = bytes(pong.data)
        if data not in pings:
            return  # unsolicited, or answers a ping already acknowledged
        for ping_id in list(pings):
            waiter = pings.pop(ping_id)
            if not waiter.done():
                waiter.set_result(None)
            if ping_id == data:
                return

    def flush_pending(self) -> None:
        """Write what waits in websockets' outgoing buffer: the 101, when nothing took it with a frame yet.

        Anything written to the socket is taken from that buffer in order, so the
        101 always goes first; this only makes sure it goes out when the handler
        writes nothing at once, and before any path that would discard the buffer
        (Sanic's ``fail_connection``, the frame guard) or hand it to a task.
        """
        proto = self.ws_proto
        if not proto.writes:
            return
        io = self.io_proto
        transport = io.transport if io is not None else None
        pending = proto.data_to_send()
        if transport is not None and not transport.is_closing():
            transport.writelines(pending)

    def fail_connection(self, code: int = 1006, reason: str = "") -> bool:
        """Sanic's, after writing the pending 101 (Sanic discards the outgoing buffer first)."""
        self.flush_pending()
        return super().fail_connection(code, reason)

    def data_received(self, data: bytes) -> None:
        """Parse ``data``, check every frame in it, and hand it to Sanic only if all pass."""
        if self.ws_proto.writes:
            # The 101 still waits (a client writing before it was sent): write it now, before
            # answers to this data are taken into a task, or dropped on a refusal.
            self.flush_pending()
        guard = self.guard
        if guard is None:
            super().data_received(data)  # type: ignore[no-untyped-call]
            return
        if self.closing_by_guard:
            return  # refused: whatever else arrives is dropped unread
        proto = self.ws_proto
        events: list[Any] = []
        refusal = None
        # Parsed a slice at a time: a flood read in one go (hundreds of KB of tiny frames)
        # is refused after its first slice, not parsed whole first (a stall for everyone).
        for start in range(0, len(data), PARSE_SLICE):
            proto.receive_data(data[start : start + PARSE_SLICE])
            parsed = proto.events_received()
            refusal = guard.check(parsed) if parsed else None
            if refusal is not None:
                index, code, reason, why = refusal
                refusal = (len(events) + index, code, reason, why)
                events.extend(parsed)
                break
            events.extend(parsed)
        if refusal is None:
            self._act_on(proto.data_to_send(), events)
            return
        # Refused: read nothing more, answer none of this read's pings (a flood can hold thousands),
        # let the frames before the refused one be handled (briefly), then close.
        index, code, reason, why = refusal
        self.closing_by_guard = True
        if proto.state is State.OPEN:  # else websockets already failed it: keep its close frame
            proto.data_to_send()
        if self.io_proto is not None and self.io_proto.transport is not None:
            self.io_proto.transport.pause_reading()
        _keep(asyncio.get_running_loop().create_task(self._handle_then_refuse(events[:index], code, reason, why)))

    def _act_on(self, data_to_send: list[bytes], events: list[Any]) -> None:
        """Hand a read's messages over now; write its answers and handle its pongs and close in a task.

        A read with nothing to write and at most pongs (the answers to the keepalive
        pings, the usual read on an idle socket) is settled here, without a task.
        """
        rest = self._take_messages(events) if events else events
        if not data_to_send and all(frame.opcode is Opcode.PONG for frame in rest):
            for frame in rest:
                self._acknowledge(frame)
            return
        _keep(asyncio.get_running_loop().create_task(self.async_data_received(data_to_send, rest)))  # type: ignore[no-untyped-call]

    async def _handle_then_refuse(self, events: list[Any], code: int, reason: str, why: str) -> None:
        """Hand the frames that passed to Sanic (for at most ``CLOSE_GRACE`` s), then close with ``code``."""
        if events:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.process_events(events), CLOSE_GRACE)
        self._refuse(code, reason, why)

    def _refuse(self, code: int, reason: str, why: str) -> None:
        """Close with ``code`` now, without waiting on the peer; abort a peer that does not read."""
        proto = self.ws_proto
        if proto.state is State.OPEN:
            proto.send_close(code, reason)
        if self.refused is not None:
            self.refused(code, why)
        io = self.io_proto
        transport = io.transport if io is not None else None
        if transport is None:
            return
        for chunk in proto.data_to_send():
            if chunk:
                transport.write(chunk)
        if transport.get_write_buffer_size() > WRITE_BUFFER_HIGH:
            transport.abort()
            return
        if transport.can_write_eof():
            # Closing a socket with unread input resets it, and a reset can destroy what the peer
            # has not read yet (the close frame): half-close instead, and read and drop what the
            # peer still sends (data_received drops everything now) until it closes or the grace ends.
            transport.write_eof()
            transport.resume_reading()
        else:
            transport.close()  # sends what is buffered (the close frame), then FIN
        asyncio.get_running_loop().call_later(CLOSE_GRACE, transport.abort)  # no-op once closed


def _end_parser(ws_proto: ServerProtocol) -> None:
    """Close a lost socket's frame parser, and drop the traceback of the error that ended it.

    websockets' parser is a generator whose frame holds the protocol, which
    holds the parser; the error that ended it (an EOF, a protocol error) is kept
    as ``parser_exc`` with a traceback holding the same frame. Both are
    reference cycles: they left a dropped socket's whole graph (its task,
    subscription, delivery, ~40 objects) to the cycle collector. No data comes
    after the connection is lost, so the parser has nothing left to read; the
    error stays (it is the close's cause).
    """
    ws_proto.parser.close()
    error = ws_proto.parser_exc
    if error is not None:
        error.__traceback__ = None


class RelayWebSocketProtocol(WebSocketProtocol):
    """Sanic's protocol with extension negotiation, a frame guard, a per-address cap and a head deadline."""

    HTTP_CLASS = RelayHttp
    __slots__ = ("discarding", "head_started", "linger", "peer_address", "served")  # no __dict__ (Sanic's metaclass)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request_handler = direct.handle  # the publish route served past Sanic's router (direct.py)
        can_write = _lean_event(self.loop)
        can_write.set()
        self._can_write = can_write
        self._data_received = _lean_event(self.loop)
        self.head_started: float | None = None  # when the awaited request head started (None: none awaited)
        self.served = False  # a head was read on this connection (the next ones start with their first byte)
        self.peer_address: str | None = None  # counted in the app's PeerLimit while connected
        self.linger = False  # set by hardening.refuse_body: close gently, the peer may still be sending
        self.discarding = False

    def data_received(self, data: bytes) -> None:
        """Sanic's, except while lingering after a refused body (input discarded); starts a head's deadline.

        ``WebSocketProtocol.data_received`` only hands the bytes to the socket, or
        to ``HttpProtocol.data_received`` before the upgrade: done here, a call less
        for every request and every client frame.
        """
        if self.discarding:
            return
        websocket = self.websocket
        if websocket is not None:
            websocket.data_received(data)
            return
        http = getattr(self, "_http", None)
        if http is not None and self.head_started is None and http.stage is Stage.IDLE:
            self.head_started = time.monotonic()  # the first byte of the next request (or of a drained body)
        HttpProtocol.data_received(self, data)

    def close(self, timeout: float | None = None) -> None:
        """Close, or after a refused body linger: half-close now, close after ``LINGER`` s."""
        transport = self.transport
        if self.linger and transport is not None and not transport.is_closing() and transport.can_write_eof():
            self.linger = False
            self.discarding = True
            transport.write_eof()
            self.loop.call_later(LINGER, super().close)
            return
        super().close(timeout)

    def connection_made(self, transport: Any) -> None:
        """Accept the connection, or answer 429 and close when its address has too many open."""
        gc_policy.connection_opened()
        super().connection_made(transport)  # type: ignore[no-untyped-call]
        self.head_started = time.monotonic()  # the first head is timed from the accept
        peers: PeerLimit | None = getattr(self.app.ctx, "peers", None)
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) and peer else None
        if peers is None or not isinstance(address, str):
            return
        if peers.acquire(address):
            self.peer_address = address
            return
        metrics.limit_exceeded("connections_per_ip")
        transport.write(_TOO_MANY_CONNECTIONS)
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection in the per-address count, then let Sanic clean up; no more timeout checks.

        Sanic's ``close()`` cancels its timeout timer, a lost connection kept it: the
        timer held the closed connection's objects for up to half the handshake
        timeout, past the compaction that should reclaim them (service/gcpolicy.py).
        """
        address, self.peer_address = self.peer_address, None
        peers: PeerLimit | None = getattr(self.app.ctx, "peers", None)
        if address is not None and peers is not None:
            peers.release(address)
        websocket = self.websocket
        super().connection_lost(exc)  # type: ignore[no-untyped-call]
        if websocket is not None:
            _end_parser(websocket.ws_proto)
            self.websocket = None  # it refers back to this protocol (io_proto): nothing reaches it from here on
        if self._callback_check_timeouts:
            self._callback_check_timeouts.cancel()
        gc_policy.connection_closed()

    def check_timeouts(self) -> None:
        """Sanic's timeouts, with a request head timed from a fixed start instead of its last byte."""
        started = self.head_started
        if started is not None and self._time > started:
            # Sanic times a waiting head from ``_time``, which every received byte moves forward.
            self._time = started
        super().check_timeouts()  # type: ignore[no-untyped-call]

    async def websocket_handshake(
        self, request: Any, subprotocols: Sequence[str] | None = None
    ) -> WebsocketImplProtocol:
        """Accept the upgrade like Sanic does, offering the app's extensions (a few per turn of the loop)."""
        handshakes: Turnstile | None = getattr(self.app.ctx, "handshakes", None)
        if handshakes is not None:
            await handshakes.enter()
        extensions = getattr(self.app.ctx, "ws_extensions", None) or None
        try:
            ws_proto = ServerProtocol(
                extensions=extensions,
                max_size=self.websocket_max_size,
                subprotocols=[Subprotocol(s) for s in subprotocols] if subprotocols is not None else None,
                state=State.OPEN,
                logger=websockets_logger,
            )
            resp = ws_proto.accept(_ws_request(request))
        except InvalidHeader as exc:
            # A header websockets cannot hold (a non-ASCII byte, say): the client's fault, not
            # ours. Name the header only: its value may be a token.
            raise SanicException(f"invalid {exc.name} header", status_code=400) from None
        except Exception:
            raise SanicException("Failed to open a WebSocket connection.", status_code=500) from None
        if not 100 <= resp.status_code <= 299:
            raise SanicException(
                bytes(resp.body).decode(errors="replace"), resp.status_code, headers=_refusal_headers(ws_proto, resp)
            )
        if not self._can_write.is_set():
            await self._can_write.wait()
        if self.transport is None or self.transport.is_closing():
            raise RequestCancelled
        # The 101 is not written here: it waits in websockets' own outgoing buffer, where
        # everything written to the socket is taken from in order, so it leaves with the
        # handler's first frame (the `connected` frame, or a close) in one system call
        # instead of two. If the handler writes nothing in its first step (it awaits a
        # broker), _LeanImpl.flush_pending writes it alone on the turn after.
        ws_proto.writes.append(resp.serialize())
        self._time = time.monotonic()  # as Sanic's send() after writing the head
        # Sanic stops timing a connection once it is a WebSocket, but only when its check next
        # runs, half the handshake timeout after the accept: a wake-up per socket for nothing
        # (a crowd's all together), and the timer holds the connection until then.
        if self._callback_check_timeouts is not None:
            self._callback_check_timeouts.cancel()
            self._callback_check_timeouts = None
        impl = self.websocket = _LeanImpl(
            ws_proto,
            ping_interval=self.websocket_ping_interval,
            ping_timeout=self.websocket_ping_timeout,
            close_timeout=self.websocket_timeout,
            guard=_guard(self.app),
            refused=_refused_counter(self.app),
        )
        loop = getattr(getattr(request, "transport", None), "loop", None)
        await impl.connection_made(self, loop=loop)
        # Two hops: Sanic schedules the handler's task after this returns, so one call_soon
        # would run before the handler's first step, and the 101 would go out alone.
        running = impl.loop
        assert running is not None  # set by connection_made
        running.call_soon(running.call_soon, impl.flush_pending)
        # Read by Sanic's log_websocket only, which says nothing with the access log off (as the relay
        # serves): the full URL (and its ?token=) is not built for every socket then.
        self.websocket_url = self._http.request.url if self.access_log else self._http.request.path
        self.websocket_peer = f"{id(self):X}"[-5:-1] + "unx"
        if ip := self._http.request.client_ip:
            self.websocket_peer = f"{ip}:{self._http.request.port}"
        self.log_websocket("OPEN")
        return impl


def listen(ws: WebsocketImplProtocol, listener: Listener) -> None:
    """Hand ``ws``'s messages to ``listener`` as they arrive (``None`` when the peer closes), instead of ``recv()``."""
    if not isinstance(ws, _LeanImpl):
        raise TypeError("listen() needs a socket served by RelayWebSocketProtocol")
    ws.listen(listener)


def stop_listening(ws: WebsocketImplProtocol) -> None:
    """Forget ``ws``'s listener (what arrives from now on is held): the socket no longer refers to it."""
    if isinstance(ws, _LeanImpl):
        ws.listener = None


def _guard(app: Any) -> FrameGuard | None:
    settings = getattr(app.ctx, "settings", None)
    if settings is None:
        return None
    return FrameGuard(settings.ws_max_frames_per_second, settings.ws_max_frames_per_message)


def _refused_counter(app: Any) -> Refused:
    """Counts and logs a socket the frame guard closed (a client's doing: info, not error).

    Every such close is counted in ``relay_ws_closes_total{code, initiator="server"}`` when
    the handler ends; a broken limit also in ``relay_limit_exceeded_total{limit}``.
    """

    def refused(code: int, why: str) -> None:
        if why != "invalid_utf8":
            metrics.limit_exceeded(why)
        log.info("websocket refused", extra={"fields": {"close_code": code, "reason": why}})

    return refused


class _SanicHeaders(Headers):
    """Sanic's request headers, read through websockets' ``Headers`` interface instead of copied into one.

    Copying every header line into a ``Headers`` cost about 40 Python calls per
    connect; websockets' handshake only reads a handful, through ``get_all``,
    ``[]``, ``get`` and ``in``, which answer here from Sanic's multidict with
    websockets' semantics (every line of a repeated header; ``MultipleValuesError``
    where it expects one). Anything else (iterating, ``raw_items``, ``str``) sees
    every line too; nothing writes to a request's headers. Values are checked as
    websockets checks each one it stores (``InvalidHeaderValue``: the handshake's 400),
    all in one match.
    """

    __slots__ = ("_sanic",)

    def __init__(self, headers: Any) -> None:  # Headers.__init__ not called: there is no copy
        # A tab is a valid value character: the joined values are valid iff each one is.
        if not is_valid_header_value("\t".join(headers.values())):
            for name, value in headers.items():
                if not is_valid_header_value(value):
                    raise InvalidHeaderValue(name, value)
        self._sanic = headers

    def get_all(self, key: str) -> list[str]:
        """Every value of ``key`` (case-insensitive), in the order received."""
        return cast(list[str], self._sanic.getall(key, []))

    def __getitem__(self, key: str) -> str:
        values = self._sanic.getall(key, ())
        if len(values) == 1:
            return cast(str, values[0])
        if not values:
            raise KeyError(key)
        raise MultipleValuesError(key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._sanic

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name.lower() for name in self._sanic))

    def __len__(self) -> int:
        return len(set(name.lower() for name in self._sanic))

    def raw_items(self) -> Iterator[tuple[str, str]]:
        """Every header line as received."""
        return iter(self._sanic.items())

    def __str__(self) -> str:
        return "".join(f"{name}: {value}\r\n" for name, value in self._sanic.items()) + "\r\n"


def _ws_request(request: Any) -> Request:
    """The handshake request for websockets, every header line kept.

    Sanic's own conversion keeps only the first value of a repeated header (each
    ``Connection`` line reads as the first), so ``Connection: keep-alive`` and
    ``Connection: Upgrade`` on two lines were refused with 426, and extensions
    offered on a second line were declined. RFC 9110 section 5.3: repeated lines
    are one comma-separated list.
    """
    return Request(path=request.path, headers=_SanicHeaders(request.headers))


def _refusal_headers(ws_proto: ServerProtocol, response: Any) -> dict[str, str]:
    """Headers of a refused handshake: websockets' (``Upgrade`` on a 426), and the versions we speak.

    RFC 6455 section 4.4: a server that does not speak the client's version answers
    with ``Sec-WebSocket-Version`` listing the ones it does.
    """
    headers = {k: v for k, v in response.headers.raw_items() if k.lower() in ("upgrade", "sec-websocket-version")}
    failure = ws_proto.handshake_exc
    if isinstance(failure, InvalidHeader) and failure.name.lower() == "sec-websocket-version":
        headers["Sec-WebSocket-Version"] = "13"
    return headers
