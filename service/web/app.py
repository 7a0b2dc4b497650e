"""The Sanic application factory: thin edges around the Sanic-free core."""

from __future__ import annotations

import itertools
import logging
import re
import time
import uuid
from operator import itemgetter
from typing import Any

from sanic import Request, Sanic
from sanic.compat import Header
from sanic.config import Config
from sanic.exceptions import RequestCancelled, SanicException
from sanic.response import BaseHTTPResponse, HTTPResponse
from sanic.router import Router

from .. import metrics
from ..config import Settings, load_settings
from ..errors import RelayError
from ..ingest import start_consumers, stop_consumers
from ..limits import ConnectionLimits, PeerLimit, Turnstile
from ..logs import redact, request_id
from ..pinger import Pinger
from ..relay import Relay
from . import shutdown
from .http import error_response, json_response
from .routes import internal, ops, public, ws
from .wsproto import RelayWebSocketProtocol, compression_extensions

__all__ = ["SERVER_PROTOCOL", "create_app"]

#: Pass as ``protocol=`` when serving the app: Sanic's WebSocket protocol plus compression.
SERVER_PROTOCOL = RelayWebSocketProtocol

log = logging.getLogger("relay.app")
access = logging.getLogger("relay.access")
_names = itertools.count()
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
#: Largest body of a request outside /internal (the demo page's API takes the most, a few hundred bytes).
PUBLIC_BODY_LIMIT = 16384


def create_app(settings: Settings | None = None, name: str | None = None) -> Sanic[Any, Any]:
    """Build the application for ``settings`` (read from the environment if omitted)."""
    settings = settings or load_settings()
    app = Sanic(
        name or f"progress_relay_{next(_names)}",
        config=RelayConfig(),
        router=RelayRouter(),
        configure_logging=False,
        request_class=RelayRequest,
    )
    app.config.update(
        {
            "WEBSOCKET_MAX_SIZE": settings.ws_max_message_size,
            # Protocol pings come from one Pinger task, not one Sanic task per socket.
            "WEBSOCKET_PING_INTERVAL": None,
            "WEBSOCKET_PING_TIMEOUT": None,
            # Bodies Sanic reads before any handler runs (every route but /internal, whose
            # routes stream: the publisher key is checked first, then up to RELAY_MAX_BODY_SIZE
            # is read). Nothing public takes more than a few hundred bytes.
            "REQUEST_MAX_SIZE": PUBLIC_BODY_LIMIT,
            # Room for an over-long token to reach the verifier and get its 4500.
            "REQUEST_MAX_HEADER_SIZE": 16384,
            "ACCESS_LOG": False,  # ours below redacts tokens
            "FALLBACK_ERROR_FORMAT": "json",
            "GRACEFUL_SHUTDOWN_TIMEOUT": 5.0,
            # A client that opens TCP and sends nothing, or never completes its request (the
            # WebSocket handshake included), is dropped. Sanic times a silent new connection,
            # like an idle keep-alive one, by KEEP_ALIVE_TIMEOUT.
            "REQUEST_TIMEOUT": settings.handshake_timeout,
            "KEEP_ALIVE_TIMEOUT": settings.handshake_timeout,
        }
    )
    app.ctx.settings = settings
    app.ctx.ws_extensions = compression_extensions(
        settings.ws_compression, settings.ws_compression_min_size, settings.ws_compression_context_takeover
    )
    app.ctx.draining = False
    app.ctx.peers = PeerLimit(settings.max_connections_per_ip)
    app.ctx.handshakes = Turnstile()  # a few WebSocket handshakes per turn of the loop
    app.blueprint(ops.bp)
    app.blueprint(ws.bp)
    app.blueprint(internal.bp)
    app.blueprint(public.bp)

    @app.before_server_start
    async def start_relay(app: Sanic[Any, Any]) -> None:
        relay = Relay(settings)
        await relay.start()
        app.ctx.relay = relay
        app.ctx.pinger = Pinger(settings.ws_ping_interval, settings.ws_ping_timeout)
        app.ctx.pinger.start()
        app.ctx.limits = ConnectionLimits(
            settings.max_connections, settings.max_connections_per_execution, settings.max_connections_per_sub
        )
        await metrics.start(relay, lambda: relay.executions, relay.broker_stats)
        app.ctx.ingest = await start_consumers(relay, settings)  # none unless RELAY_AMQP_URL / RELAY_OUTBOX_DSN

    @app.after_server_stop
    async def stop_relay(app: Sanic[Any, Any]) -> None:
        await stop_consumers(app.ctx.ingest)
        await app.ctx.pinger.stop()
        await metrics.stop(app.ctx.relay)
        await app.ctx.relay.close()

    app.error_handler.add(RequestCancelled, _client_gone)
    app.error_handler.add(RelayError, _relay_error)
    app.error_handler.add(SanicException, _sanic_error)
    app.error_handler.add(Exception, _unexpected_error)
    shutdown.install(app)  # last: shutdown listeners run in reverse, so the drain runs first
    return app


def _stored(key: str) -> property:
    """A config key as a property over the dict entry that Sanic's ``Config`` keeps it in.

    Read by ``itemgetter``, in C: a getter of ours would be a Python call per read.
    """

    def set_(config: Config, value: Any) -> None:
        dict.__setitem__(config, key, value)

    return property(itemgetter(key), set_)


class RelayConfig(Config):
    """Sanic's config, with the keys it reads on every request found as class attributes.

    ``Config`` answers ``config.KEY`` from ``__getattr__``: the normal lookup
    fails first and formats an AttributeError that is then discarded, for
    ``REQUEST_BUFFER_SIZE`` (every chunk received) and ``KEEP_ALIVE`` (every
    request head), ~2k instructions each (callgrind). As properties over the
    same dict entries they are found at once; ``Config.update`` sets them
    through the setter (checked against Sanic 25.12.1: it treats every
    property as a setter).
    """

    REQUEST_BUFFER_SIZE = _stored("REQUEST_BUFFER_SIZE")
    KEEP_ALIVE = _stored("KEEP_ALIVE")


class RelayRouter(Router):
    """Sanic's router without its cache of resolved paths.

    Sanic memoizes ``Router.get`` per (router, path, method, host) in an LRU
    cache of 1,024 entries. The relay's paths name executions, so with more
    than 1,024 of them in turn (the bench's closed loop: 2,000) every lookup
    misses, pays for the cache, and leaves its key and answer tuples in it
    for the next thousand requests: two more objects per publish for the
    cycle collector to scan, in every generation, while they age out (its
    young collections held ~2 cache tuples per retained event; closed-loop
    POST under bench/closed_probe.py). Resolved every time instead, as a
    miss was anyway. Checked against Sanic 25.12.1 (``Router.get`` calls
    ``Router._get``; tests/test_hardening.py fails if that changes).
    """

    #: Sanic's resolution itself, without the ``lru_cache`` wrapped around it (no extra call either).
    get = Router._get  # type: ignore[assignment]


class RelayRequest(Request):
    """Sanic's request with the relay's request id, ``X-Request-ID`` and access log line.

    Done here rather than in request and response middleware: Sanic's middleware
    machinery cost about a tenth of the CPU time of a publish (bench/, closed loop).
    """

    __slots__ = ("request_id", "started")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Sanic builds the request in the task that handles it, so the log context is set for it.
        self.started = time.monotonic()
        given = self.headers.get("x-request-id")
        self.request_id = (given and _request_id(given)) or next(_request_ids)
        request_id.set(self.request_id)

    async def receive_body(self) -> None:
        """Read the whole body, as Sanic does, without its async generator (every publish reads here)."""
        if self.body:
            return
        stream: Any = self.stream
        chunks = []
        while stream.request_body:
            data = await stream.read()
            if data:
                chunks.append(data)
                if stream.request_body is True and getattr(stream, "request_bytes_left", None) == 0:
                    # A Content-Length body read to its end: Sanic's next read() would only
                    # find that out and end the body so; done here, one call less per
                    # publish (~40 bytecodes and a coroutine). Checked against Sanic 25.12.1
                    # by tests/test_hardening.py. (ASGI streams have no request_bytes_left.)
                    stream.request_body = None
        self.body = b"".join(chunks)

    async def respond(
        self,
        response: BaseHTTPResponse | None = None,
        *,
        status: int = 200,
        headers: Header | dict[str, str] | None = None,
        content_type: str | None = None,
    ) -> Any:
        """Add ``X-Request-ID`` and write the access log line, then send ``response``."""
        if response is None:  # a streamed response (SSE), built here the way Sanic would
            response = HTTPResponse(status=status, headers=headers, content_type=content_type)
        response.headers["x-request-id"] = self.request_id
        self.log_access(response.status)
        return await super().respond(response)

    def log_access(self, status: int) -> None:
        """Write the access log line of this request, answered with ``status`` (if ``RELAY_ACCESS_LOG`` is on)."""
        if not self.app.ctx.settings.access_log:
            return
        access.info(
            "request",
            extra={
                "fields": {
                    "request_id": self.request_id,
                    "method": self.method,
                    "path": redact(self.path),
                    "status": status,
                    "duration_ms": round((time.monotonic() - self.started) * 1000, 2),
                }
            },
        )


# Request ids: a per-process random prefix and a counter. Unique enough to correlate
# log lines, and far cheaper than uuid4 (no system call) on the publish hot path.
# An iterator made of C parts (map, str.format, count): next() on it runs no Python frame.
_ID_PREFIX = uuid.uuid4().hex[:8]
_request_ids = map(f"{_ID_PREFIX}{{:08x}}".format, itertools.count(1))


def _request_id(value: str) -> str:
    """A caller's X-Request-ID if it is a plain id (it ends up in every log line of the request)."""
    return value if _REQUEST_ID.fullmatch(value) else ""


#: What the access log says of a request whose client went away before the answer (nginx's convention).
CLIENT_CLOSED_REQUEST = 499


def _client_gone(request: Request, exc: BaseException) -> HTTPResponse:
    """The client closed the connection mid-request: not a server error (no 500, no error line)."""
    return json_response(
        {"error": "client_closed_request", "message": "client closed the connection"}, CLIENT_CLOSED_REQUEST
    )


def _relay_error(request: Request, exc: RelayError) -> HTTPResponse:
    return error_response(exc)


def _sanic_error(request: Request, exc: SanicException) -> HTTPResponse:
    status = getattr(exc, "status_code", 500) or 500
    codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 400: "bad_request"}
    message = str(exc) if status < 500 else "internal error"
    if status >= 500:
        log.error("server error on %s", redact(request.path), exc_info=exc)
    headers = getattr(exc, "headers", None) or None  # e.g. Sec-WebSocket-Version on a refused handshake
    return json_response(
        {"error": codes.get(status, "error"), "message": redact(message)}, status=status, headers=headers
    )


def _unexpected_error(request: Request, exc: Exception) -> HTTPResponse:
    log.error("unhandled error on %s %s", request.method, redact(request.path), exc_info=exc)
    return json_response({"error": "internal_error", "message": "internal error"}, status=500)
