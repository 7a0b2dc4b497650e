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
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Sequence
from typing import Any, cast

from sanic.exceptions import SanicException
from sanic.log import websockets_logger
from sanic.server.protocols.websocket_protocol import WebSocketProtocol
from sanic.server.websockets.impl import WebsocketImplProtocol
from websockets.exceptions import InvalidHeader
from websockets.extensions.base import ServerExtensionFactory
from websockets.extensions.permessage_deflate import PerMessageDeflate, ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import ExtensionParameter, Subprotocol

from .gcpolicy import policy as gc_policy

__all__ = ["RelayWebSocketProtocol", "compression_extensions"]

_DATA = (Opcode.TEXT, Opcode.BINARY)
_SYNC_TAIL = b"\x00\x00\xff\xff"  # ends every sync-flushed message; RFC 7692 drops it on the wire
COMPRESS_LEVEL = 6
COMPRESS_MEM_LEVEL = 5  # websockets' own choice for servers: a 4 KB hash table instead of 128 KB
# How much of the previous compressed frames primes the next one. Event frames alternate
# (progress, result, ...), so the frame before the last matters too: for the demo execution,
# the last frame alone gives 2.6 KB, 2 KB of them 1.5 KB, a real 32 KB context 1.4 KB.
DICTIONARY_SIZE = 2048


class _MinSizeDeflate(PerMessageDeflate):
    """permessage-deflate that leaves short messages uncompressed (allowed by RFC 7692)."""

    def __init__(self, *args: Any, min_size: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.min_size = min_size

    def encode(self, frame: Frame) -> Frame:
        """Compress data frames of at least ``min_size`` bytes."""
        if frame.opcode in _DATA and frame.fin and len(frame.data) < self.min_size:
            return frame
        return super().encode(frame)


class _Compressed:
    """Compressed messages by (dictionary, message, window bits), shared by every socket.

    Sockets of one execution receive the same frames in the same order, so they
    ask for the same entries: the first one compresses, the others look it up.
    Bounded: cleared when full (a miss only costs one compression).
    """

    limit = 4096

    def __init__(self) -> None:
        self.entries: dict[tuple[bytes, bytes, int], tuple[bytes, bytes]] = {}

    def get(self, dictionary: bytes, data: bytes, wbits: int) -> tuple[bytes, bytes]:
        """The compressed payload of ``data`` and the shared copy of ``data`` (the next dictionary)."""
        key = (dictionary, data, wbits)
        hit = self.entries.get(key)
        if hit is not None:
            return hit
        if dictionary:
            compressor = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, -wbits, COMPRESS_MEM_LEVEL, zdict=dictionary)
        else:
            compressor = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, -wbits, COMPRESS_MEM_LEVEL)
        payload = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        if len(self.entries) >= self.limit:
            self.entries.clear()
        # The client's window now ends with ``data``; keep (at most) its last DICTIONARY_SIZE bytes.
        limit = min(1 << wbits, DICTIONARY_SIZE)
        following = data[-limit:] if len(data) >= limit else (dictionary + data)[-limit:]
        entry = self.entries[key] = (payload[: -len(_SYNC_TAIL)], following)
        return entry


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

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
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
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            self._waiters.remove(waiter)


def _lean_event() -> asyncio.Event:
    """A LeanEvent where Sanic declares an ``asyncio.Event``: it has every method Sanic calls."""
    return cast(asyncio.Event, LeanEvent())


class _LeanImpl(WebsocketImplProtocol):
    """Sanic's WebSocket implementation with lighter per-connection objects."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assembler = self.assembler
        assembler.message_complete = _lean_event()
        assembler.message_fetched = _lean_event()
        # Created by Sanic, never used: dropping it frees the queue.
        assembler.completed_queue = None  # type: ignore[assignment]  # Sanic types it Queue, never reads it


class RelayWebSocketProtocol(WebSocketProtocol):
    """Sanic's protocol with extension negotiation in the opening handshake."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        can_write = _lean_event()
        can_write.set()
        self._can_write = can_write
        self._data_received = _lean_event()

    def connection_made(self, transport: Any) -> None:
        """Sanic's, counted for the collection policy."""
        gc_policy.connection_opened()
        super().connection_made(transport)  # type: ignore[no-untyped-call]  # Sanic leaves it untyped

    def connection_lost(self, exc: Exception | None) -> None:
        """Sanic's, counted for the collection policy; no more timeout checks.

        Sanic's ``close()`` cancels its timeout timer, a lost connection kept it: the
        timer held the closed connection's objects for up to half the handshake
        timeout, past the compaction that should reclaim them (service/gcpolicy.py).
        """
        super().connection_lost(exc)  # type: ignore[no-untyped-call]  # Sanic leaves it untyped
        if self._callback_check_timeouts:
            self._callback_check_timeouts.cancel()
        gc_policy.connection_closed()

    async def websocket_handshake(
        self, request: Any, subprotocols: Sequence[str] | None = None
    ) -> WebsocketImplProtocol:
        """Accept the upgrade like Sanic does, offering the app's extensions."""
        extensions = getattr(self.app.ctx, "ws_extensions", None) or None
        try:
            ws_proto = ServerProtocol(
                extensions=extensions,
                max_size=self.websocket_max_size,
                subprotocols=[Subprotocol(s) for s in subprotocols] if subprotocols is not None else None,
                state=State.OPEN,
                logger=websockets_logger,
            )
            resp = ws_proto.accept(self.sanic_request_to_ws_request(request))
        except InvalidHeader as exc:
            # A header websockets cannot hold (a non-ASCII byte, say): the client's fault, not
            # ours. Name the header only: its value may be a token.
            raise SanicException(f"invalid {exc.name} header", status_code=400) from None
        except Exception:
            raise SanicException("Failed to open a WebSocket connection.", status_code=500) from None
        if not 100 <= resp.status_code <= 299:
            raise SanicException(bytes(resp.body), resp.status_code)
        head = f"HTTP/1.1 {resp.status_code} {resp.reason_phrase}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in resp.headers.items()) + "\r\n"
        await self.send(head.encode())
        self.websocket = _LeanImpl(
            ws_proto,
            ping_interval=self.websocket_ping_interval,
            ping_timeout=self.websocket_ping_timeout,
            close_timeout=self.websocket_timeout,
        )
        loop = getattr(getattr(request, "transport", None), "loop", None)
        await self.websocket.connection_made(self, loop=loop)
        self.websocket_url = self._http.request.url
        self.websocket_peer = f"{id(self):X}"[-5:-1] + "unx"
        if ip := self._http.request.client_ip:
            self.websocket_peer = f"{ip}:{self._http.request.port}"
        self.log_websocket("OPEN")
        return self.websocket
