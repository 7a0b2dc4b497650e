"""WebSocket edge: ``GET /ws/executions/{execution_id}[?last_seq=N&epoch=E]``.

The token is verified before the socket is registered for anything and
before any frame is sent; a refusal closes with the contract's code. Events
are written by the subscription's own task, never from the publish path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import unquote

import ujson
from sanic import Blueprint, Request
from sanic.server.websockets.impl import WebsocketImplProtocol
from websockets.protocol import State

from auth import Claims

from ... import closecodes, metrics
from ...closecodes import Disconnect
from ...config import WS_WRITE_BUFFER_HIGH
from ...cursor import Cursor, CursorError, parse_cursor
from ...errors import RelayError
from ...events import dumps, now_iso
from ...limits import ConnectionLimits, FrameRate
from ...pinger import ping_payload
from ...relay import Refused, Relay
from ...subscription import Subscription
from ..http import bearer_or_query_token
from ..wsproto import listen, shared_text_frame, stop_listening

__all__ = ["bp"]

bp = Blueprint("ws")
log = logging.getLogger("relay.ws")
# Looked up once: reading an enum member through its class costs ~250 ns on Python 3.11
# (a descriptor call), and try_write reads it once per socket of every fan-out.
_OPEN = State.OPEN


class WsSink:
    """Adapts a Sanic websocket to the subscription's sink (and to the pinger)."""

    __slots__ = ("ping_sent", "ping_waiter", "ws")

    def __init__(self, ws: WebsocketImplProtocol) -> None:
        self.ws = ws
        self.ping_waiter: asyncio.Future[None] | None = None
        self.ping_sent = time.monotonic()

    def ping_if_due(self, now: float, interval: float, timeout: float) -> None:
        """Send a ping when one is due; fail the peer if the last one is unanswered after ``timeout``."""
        waiter = self.ping_waiter
        if waiter is not None and not waiter.done():
            if now - self.ping_sent > timeout:
                timeout_ = closecodes.KEEPALIVE_TIMEOUT
                self.ws.fail_connection(timeout_.code, timeout_.reason)
            return
        if now - self.ping_sent < interval:
            return
        ws = self.ws
        proto = ws.ws_proto
        transport = ws.io_proto.transport if ws.io_proto is not None else None
        if transport is None or ws.conn_mutex.locked() or proto.state is not _OPEN:
            return  # busy or closing: try on the next beat
        data = ping_payload()
        waiter = asyncio.get_running_loop().create_future()
        ws.pings[data] = waiter  # Sanic's pong handler resolves it
        proto.send_ping(data)
        for chunk in proto.data_to_send():
            transport.write(chunk)
        self.ping_waiter = waiter
        self.ping_sent = now

    async def send(self, frame: str) -> None:
        """Write one text frame (waits for the transport to drain)."""
        await self.ws.send(frame)

    def try_write(self, frame: str) -> bool:
        """Write one text frame now if the socket's buffer has room; never waits.

        Sanic's ``send`` takes a lock and awaits the drain even when nothing is
        pending; this does the same two steps (frame, write) synchronously, and
        declines whenever ``send`` holds the lock or the buffer is full, so the
        order of frames is kept.
        """
        ws = self.ws
        proto = ws.ws_proto
        io = ws.io_proto
        transport = io.transport if io is not None else None
        if (
            transport is None
            or ws.conn_mutex.locked()
            or proto.state is not _OPEN
            or transport.get_write_buffer_size() > WS_WRITE_BUFFER_HIGH
        ):
            return False
        wire = shared_text_frame(proto.extensions, frame)  # the bytes every socket in this state gets
        if wire is None:
            proto.send_text(frame.encode())
            transport.writelines(proto.data_to_send())
        elif proto.writes:
            # Something waits before it (the 101, before the `connected` frame): one system call for all.
            transport.writelines([*proto.data_to_send(), wire])
        else:
            transport.write(wire)
        return True

    def close_now(self, disconnect: Disconnect) -> None:
        """Send a close frame without waiting; Sanic aborts a peer that never answers."""
        self.ws.end_connection(int(disconnect.code), disconnect.reason)


def _refuse(ws: WebsocketImplProtocol, relay: Relay, disconnect: Disconnect, why: str) -> None:
    log.info("websocket refused", extra={"fields": {"close_code": int(disconnect.code), "reason": why}})
    metrics.ws_closed(int(disconnect.code), "server")
    ws.end_connection(int(disconnect.code), disconnect.reason)


async def execution_socket(request: Request, ws: WebsocketImplProtocol, execution_id: str) -> None:
    """Stream one execution's events to an authorized subscriber."""
    execution_id = unquote(execution_id)  # a client may percent-encode ids ("a%3Ab" is "a:b")
    relay: Relay = request.app.ctx.relay
    if request.app.ctx.draining:
        _refuse(ws, relay, closecodes.SERVER_RESTARTING, "draining")
        return
    try:
        claims = relay.check_subscriber(bearer_or_query_token(request), request.headers.get("origin"), execution_id)
    except Refused as refused:
        _refuse(ws, relay, refused.disconnect, refused.why)
        return
    try:
        cursor = parse_cursor(request.args.get("last_seq"), request.args.get("epoch"))
    except CursorError as exc:
        _refuse(ws, relay, closecodes.BAD_CURSOR.because(exc.detail), "bad_cursor")
        return
    limits: ConnectionLimits = request.app.ctx.limits
    exceeded = limits.acquire(execution_id, claims.sub)
    if exceeded is not None:
        metrics.limit_exceeded(exceeded)
        _refuse(ws, relay, closecodes.CONNECTION_LIMIT.because(f"connection limit ({exceeded})"), f"limit_{exceeded}")
        return
    try:
        await _serve(request, ws, relay, execution_id, claims, cursor)
    finally:
        limits.release(execution_id, claims.sub)


# Registered by a call rather than @bp.websocket: Sanic's decorators return Callable[..., Any],
# which would leave the handler untyped for mypy.
bp.add_websocket_route(execution_socket, "/ws/executions/<execution_id>")


async def _serve(
    request: Request, ws: WebsocketImplProtocol, relay: Relay, execution_id: str, claims: Claims, cursor: Cursor
) -> None:
    """Replay and stream to an authorized socket until either side ends it."""
    sink = WsSink(ws)
    try:
        sub = await relay.open_stream(execution_id, cursor, sink, claims)
    except Refused as refused:
        _refuse(ws, relay, refused.disconnect, refused.why)
        return
    except RelayError:
        _refuse(ws, relay, closecodes.BROKER_UNAVAILABLE, "broker")
        return
    except Exception:  # a bug, not the client: say 1011 (Sanic would close with 1000)
        log.exception("opening a subscription failed")
        _refuse(ws, relay, closecodes.INTERNAL_ERROR, "internal")
        return
    page = sub.page
    connected = sub.connected_message(heartbeat_interval=relay.settings.heartbeat_interval)
    opened = time.monotonic()
    log.info(
        "websocket opened",
        extra={
            "fields": {
                "execution_id": execution_id,
                "sub": claims.sub,
                "last_seq": cursor.seq if cursor.given else None,
                "latest_seq": page.latest_seq,
                "reset": sub.resume.reset,
            }
        },
    )
    metrics.connection_opened("ws")
    pinger = request.app.ctx.pinger
    pinger.sockets.add(sink)
    try:
        sub.start(dumps(connected))
        task = asyncio.current_task()
        assert task is not None  # a handler runs in a task
        listen(ws, _Reader(sub, FrameRate(relay.settings.ws_max_frames_per_second), task))
        await sub.closed  # the reader answers the client meanwhile; no task waits on its reads
    except Exception:
        log.exception("websocket handler failed")
        sub.close(closecodes.INTERNAL_ERROR)
    finally:
        pinger.sockets.discard(sink)
        metrics.connection_closed("ws")
        if sub.disconnect is not None:
            metrics.ws_closed(sub.close_code, "server")
        elif (sent := getattr(ws.ws_proto, "close_sent", None)) is not None:  # the frame guard closed it
            metrics.ws_closed(sent.code, "server")
        else:  # the client left (or the server stops): record what it sent, if anything
            received = getattr(ws.ws_proto, "close_rcvd", None)
            metrics.ws_closed(received.code if received is not None else None, "client")
        sub.close(closecodes.GOING_AWAY)  # no-op if already closed; unregisters
        stop_listening(ws)  # socket -> reader -> subscription -> sink -> socket: no cycle left to collect
        log.info(
            "websocket closed",
            extra={
                "fields": {
                    "execution_id": execution_id,
                    "close_code": sub.close_code,
                    "frames_sent": sub.sent,
                    "duration_s": round(time.monotonic() - opened, 3),
                }
            },
        )


class _Reader:
    """Answers a client's messages as the socket hands them over (it never waits on a read)."""

    __slots__ = ("rate", "sub", "task")

    def __init__(self, sub: Subscription, rate: FrameRate, task: asyncio.Task[None]) -> None:
        self.sub = sub
        self.rate = rate
        self.task = task  # the handler's: ended when the client closes, as Sanic's recv() ends it

    def __call__(self, message: str | bytes | None) -> None:
        sub = self.sub
        if sub.disconnect is not None:
            return
        if message is None:
            self.task.cancel()
            return
        if not self.rate.allow():
            metrics.limit_exceeded("frame_rate")
            sub.close(closecodes.FRAME_RATE)
            return
        if isinstance(message, bytes):
            sub.close(closecodes.BINARY_FRAME)
            return
        try:
            frame = ujson.loads(message)
        except ValueError:
            sub.close(closecodes.MALFORMED_JSON)
            return
        kind = frame.get("type") if isinstance(frame, dict) else None
        if kind == "ping":
            sub.send_control(dumps({"type": "pong", "timestamp": now_iso()}))
        else:
            sub.send_control(_UNKNOWN_TYPE)


_UNKNOWN_TYPE = dumps(
    {"type": "error", "error": "unknown_message_type", "message": 'the server understands only {"type": "ping"}'}
)
