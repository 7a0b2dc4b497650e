"""HTTP edges on the same history as the socket: polling, state, SSE, and /demo.

- ``GET /v1/executions/{id}/events?after=N&wait=S&limit=L``: events after a
  seq, as a long poll when ``wait`` > 0 (one waiter per request, woken by the
  hub; no sleep loop).
- ``GET /v1/executions/{id}``: the state folded from the events.
- ``GET /v1/executions/{id}/stream``: Server-Sent Events through a
  :class:`~service.subscription.Subscription`, so an SSE reader gets the same
  replay-then-live guarantee and the same bounded queue as a socket.

All three check the subscriber token exactly like the socket does (401 with
``reason`` ``expired`` / ``invalid``, 403 for another execution or an Origin
not allowed) and answer CORS for ``RELAY_ALLOWED_ORIGINS``. Event objects are
never re-encoded: bodies are built from the frames the broker already holds.

Outside production it also serves the demo page from ``service/static/`` at
``/demo/``, and the page's small API: ``POST /demo/api/executions`` starts a
simulated diagnosis in this process, ``POST /demo/api/tokens`` mints a fresh
token for one of those (and for no other execution).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from functools import wraps
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote

from sanic import Blueprint, Request, Sanic
from sanic.response import BaseHTTPResponse, HTTPResponse, file, redirect

from auth import Claims

from ... import closecodes, metrics
from ...brokers import HistoryPage
from ...closecodes import Disconnect
from ...config import LONG_POLL_MAX_WAIT, POLL_DEFAULT_LIMIT, POLL_MAX_LIMIT, SSE_RETRY_MS
from ...cursor import Cursor, parse_cursor, parse_last_event_id
from ...delivery import Resume
from ...demo import simulate
from ...errors import Forbidden, NotFound, RateLimited, RelayError, Unauthorized, ValidationFailed
from ...events import decode_frame, dumps
from ...limits import ConnectionLimits
from ...relay import Refused, Relay, TokenRevokedWhileWaiting
from ...subscription import Subscription
from ..http import bearer_or_query_token, error_response, json_body, json_response, query_int, raw_json_response

__all__ = [
    "STATIC_DIR",
    "bp",
    "cors_headers",
    "sse_message",
]

log = logging.getLogger("relay.public")
bp = Blueprint("public")

#: Files of the demo page, served under /demo outside production.
STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
#: The demo page's API: default and largest pace, simulations at once, ids remembered for tokens.
DEMO_DEFAULT_PACE = 0.6
DEMO_MAX_PACE = 5.0
DEMO_MAX_RUNNING = 20
DEMO_MAX_REMEMBERED = 1000

_EXECUTION = "/v1/executions/<execution_id>"
_NO_STORE = {"cache-control": "no-store"}
_KEEPALIVE = ": keepalive\n\n"
# The frame head is fixed by events.parse_draft, and execution ids and
# timestamps cannot contain quotes, so seq and event are read without decoding.
_FRAME_HEAD = re.compile(
    r'\{"type":"diagnosis_update","execution_id":"[^"]*","seq":(\d+),"timestamp":"[^"]*","event":"(\w+)"'
)

Handler = Callable[[Request, str, Claims, dict[str, str]], Awaitable[BaseHTTPResponse | None]]


# -- CORS and authorization -----------------------------------------------------


def cors_headers(relay: Relay, origin: str | None) -> dict[str, str]:
    """CORS response headers: ``*`` with no allow-list, else the Origin when listed."""
    allowed = relay.settings.allowed_origins
    if not allowed:
        return {"access-control-allow-origin": "*"}
    if origin and origin.rstrip("/") in allowed:
        return {"access-control-allow-origin": origin, "vary": "Origin"}
    return {"vary": "Origin"}


def _public(handler: Handler) -> Callable[[Request, str], Awaitable[BaseHTTPResponse | None]]:
    """Authorize, then run ``handler``; every answer, errors included, carries CORS headers."""

    @wraps(handler)
    async def route(request: Request, execution_id: str) -> BaseHTTPResponse | None:
        execution_id = unquote(execution_id)  # a client may percent-encode ids ("a%3Ab" is "a:b")
        relay: Relay = request.app.ctx.relay
        headers = cors_headers(relay, request.headers.get("origin"))
        try:
            try:
                claims = await relay.authorize(
                    bearer_or_query_token(request), request.headers.get("origin"), execution_id
                )
            except Refused as refused:
                raise refused.error from None
            return await handler(request, execution_id, claims, headers)
        except RelayError as exc:
            extra = {"www-authenticate": 'Bearer error="invalid_token"'} if isinstance(exc, Unauthorized) else {}
            return error_response(exc, headers={**headers, **_NO_STORE, **extra})

    return route


async def preflight(request: Request, execution_id: str) -> HTTPResponse:
    """Answer a CORS preflight for the public endpoints (no token needed)."""
    relay: Relay = request.app.ctx.relay
    origin = request.headers.get("origin")
    headers = cors_headers(relay, origin)
    if not relay.origin_allowed(origin):
        return error_response(Forbidden("origin not allowed"), headers=headers)
    headers.update(
        {
            "access-control-allow-methods": "GET, OPTIONS",
            "access-control-allow-headers": "Authorization, Last-Event-ID",
            "access-control-max-age": "600",
        }
    )
    return HTTPResponse(status=204, headers=headers)


for _name, _path in (("state", _EXECUTION), ("events", f"{_EXECUTION}/events"), ("stream", f"{_EXECUTION}/stream")):
    bp.add_route(preflight, _path, methods=["OPTIONS"], name=f"preflight_{_name}")


# -- query values ---------------------------------------------------------------


def _query_seconds(request: Request, name: str, high: float) -> float:
    """A number of seconds within ``0..high`` (fractions allowed), default 0."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= high:  # also refuses nan
        raise ValidationFailed([{"field": name, "message": f"must be a number of seconds from 0 to {high}"}])
    return value


# -- polling ----------------------------------------------------------------------


def _held_connection(request: Request, execution_id: str, claims: Claims) -> ConnectionLimits:
    """Count one more held connection (waiting poll or SSE stream) like a socket; 429 past the limits.

    The caller releases it with ``limits.release(execution_id, claims.sub)``.
    """
    limits: ConnectionLimits = request.app.ctx.limits
    exceeded = limits.acquire(execution_id, claims.sub)
    if exceeded is not None:
        metrics.limit_exceeded(exceeded)
        raise RateLimited(f"connection limit ({exceeded}); retry later")
    return limits


async def _long_poll(
    request: Request, relay: Relay, execution_id: str, cursor: Cursor, wait: float, limit: int, claims: Claims
) -> tuple[HistoryPage, Resume]:
    """A waiting poll: counted like a socket (429 past the limits), over by the token's expiry.

    A revocation of its token wakes it, here or on any instance, and it answers 401 ``revoked``.
    """
    limits = _held_connection(request, execution_id, claims)
    try:
        return await relay.poll(execution_id, cursor, wait, limit, claims)
    except TokenRevokedWhileWaiting:
        raise Unauthorized("token revoked", reason="revoked") from None
    finally:
        limits.release(execution_id, claims.sub)


@bp.get(f"{_EXECUTION}/events")
@_public
async def poll_events(request: Request, execution_id: str, claims: Claims, headers: dict[str, str]) -> HTTPResponse:
    """Events with ``seq > after``, oldest first; with ``wait``, a long poll."""
    relay: Relay = request.app.ctx.relay
    cursor = parse_cursor(request.args.get("after"), request.args.get("epoch"), "after")
    wait = _query_seconds(request, "wait", LONG_POLL_MAX_WAIT)
    limit = query_int(request, "limit", POLL_DEFAULT_LIMIT, 1, POLL_MAX_LIMIT) or POLL_DEFAULT_LIMIT
    metrics.fallback_request("long_poll" if wait > 0 else "poll")
    if getattr(request.app.ctx, "draining", False):
        wait = 0.0  # shutting down: answer with what there is; the next poll goes elsewhere
    if wait > 0:
        page, verdict = await _long_poll(request, relay, execution_id, cursor, wait, limit, claims)
    else:
        page, verdict = await relay.poll(execution_id, cursor, 0.0, limit)
    next_after = page.events[-1].seq if page.events else verdict.after
    tail: dict[str, Any] = {
        "latest_seq": page.latest_seq,
        "epoch": page.epoch,
        "terminal": page.terminal,
        "next_after": next_after,
        "has_more": next_after < page.latest_seq,
        **verdict.fields(),
    }
    # The frames are JSON already: splice them in rather than decode and re-encode.
    body = "".join(
        (
            '{"execution_id":',
            dumps(execution_id),
            ',"events":[',
            ",".join(event.frame for event in page.events),
            "],",
            dumps(tail)[1:],
        )
    )
    response = raw_json_response(body)
    response.headers.update({**headers, **_NO_STORE})
    return response


# -- state --------------------------------------------------------------------------


@bp.get(_EXECUTION)
@_public
async def execution_state(request: Request, execution_id: str, claims: Claims, headers: dict[str, str]) -> HTTPResponse:
    """The execution's state folded from its events; 404 when unknown or expired."""
    metrics.fallback_request("state")
    state = await request.app.ctx.relay.state(execution_id)
    if state is None:
        raise NotFound("execution unknown, or its history has expired")
    return json_response(state.as_dict(), headers={**headers, **_NO_STORE})


# -- server-sent events -----------------------------------------------------------


def sse_message(frame: str, epoch: str) -> str:
    """The SSE message for one event frame: ``id`` its ``<epoch>:<seq>``, ``event`` its type."""
    match = _FRAME_HEAD.match(frame)
    if match is not None:
        seq, kind = match.group(1), match.group(2)
    else:  # not the relay's own head (cannot happen today): read it the slow way
        value = decode_frame(frame)
        seq, kind = str(value["seq"]), str(value["event"])
    return f"id: {epoch}:{seq}\nevent: {kind}\ndata: {frame}\n\n"


class SseSink:
    """Adapts a streaming HTTP response to the subscription's sink.

    Event frames (JSON objects) become SSE messages; any other text is already
    SSE (the opening message, keep-alive comments) and is written as it is.
    """

    __slots__ = ("epoch", "request", "response")

    def __init__(self, request: Request) -> None:
        self.request = request
        self.epoch = ""  # the stream's epoch, for message ids (a new epoch ends the stream with 4009)
        self.response: HTTPResponse | None = None  # set once the stream's headers are sent

    async def send(self, frame: str) -> None:
        """Write one message (waits for the transport to drain)."""
        assert self.response is not None
        await self.response.send(sse_message(frame, self.epoch) if frame.startswith("{") else frame)

    def close_now(self, disconnect: Disconnect) -> None:
        """Drop a reader that fell behind (or broke) at once; other endings are written by the handler."""
        if disconnect.code in (closecodes.CloseCode.SLOW_CONSUMER, closecodes.CloseCode.INTERNAL_ERROR):
            with contextlib.suppress(Exception):
                # Sanic types it as its TransportProtocol; it is the loop's asyncio transport.
                cast(asyncio.Transport, self.request.transport).abort()


def _sse_cursor(request: Request) -> Cursor:
    """Where to resume: ``Last-Event-ID`` (sent by EventSource on reconnect) wins over ``?last_seq=&epoch=``."""
    query = parse_cursor(request.args.get("last_seq"), request.args.get("epoch"))
    header = parse_last_event_id(request.headers.get("last-event-id"))
    return header if header is not None else query


def _streams(app: Sanic[Any, Any]) -> set[Subscription]:
    streams: set[Subscription] | None = getattr(app.ctx, "sse_streams", None)
    if streams is None:
        streams = app.ctx.sse_streams = set()
    return streams


@bp.get(f"{_EXECUTION}/stream")
@_public
async def event_stream(
    request: Request, execution_id: str, claims: Claims, headers: dict[str, str]
) -> HTTPResponse | None:
    """Stream the events after the cursor, then live ones, until the terminal event.

    An open stream counts toward the same connection limits as a socket (429 past them).
    """
    limits = _held_connection(request, execution_id, claims)
    try:
        return await _stream(request, execution_id, claims, headers)
    finally:
        limits.release(execution_id, claims.sub)


async def _stream(request: Request, execution_id: str, claims: Claims, headers: dict[str, str]) -> HTTPResponse | None:
    relay: Relay = request.app.ctx.relay
    cursor = _sse_cursor(request)
    if getattr(request.app.ctx, "draining", False):
        # Shutting down: like the socket's 1012, tell EventSource to come back (to another instance).
        response = await request.respond(
            headers={**headers, "cache-control": "no-cache"}, content_type="text/event-stream; charset=utf-8"
        )
        await response.send(f"retry: {SSE_RETRY_MS}\n" + _close_message(closecodes.SERVER_RESTARTING))
        await response.eof()
        return None
    sink = SseSink(request)
    try:
        sub = await relay.open_stream(execution_id, cursor, sink, claims)
    except Refused as refused:  # revoked since the request was authorized
        raise refused.error from None
    page = sub.page
    streams = _streams(request.app)
    streams.add(sub)  # from here on a shutdown closes it too, even before the first byte
    opened = False
    try:
        if page.terminal and page.latest_seq <= sub.resume.after:
            # Finished and nothing newer: 204 tells EventSource to stop reconnecting.
            return HTTPResponse(status=204, headers={**headers, **_NO_STORE})
        connected = sub.connected_message(keepalive_interval=relay.settings.sse_keepalive_interval)
        sink.epoch = page.epoch
        sink.response = await request.respond(
            headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
            content_type="text/event-stream; charset=utf-8",
        )
        metrics.fallback_request("sse")
        metrics.connection_opened("sse")
        opened = True
        sub.start(f"retry: {SSE_RETRY_MS}\nevent: connected\ndata: {dumps(connected)}\n\n")
        while not sub.closed.done():
            try:
                await asyncio.wait_for(asyncio.shield(sub.closed), relay.settings.sse_keepalive_interval)
            except TimeoutError:
                sub.send_control(_KEEPALIVE)  # queued behind events, so it never overtakes one
        await _finish(sink, sub.closed.result(), sub)
        return None
    finally:
        if opened:
            metrics.connection_closed("sse")
        streams.discard(sub)
        sub.close(closecodes.GOING_AWAY)  # no-op if already closed; unregisters


def _close_message(disconnect: Disconnect) -> str:
    """The last message of a stream that did not end with the terminal event: the socket's code and reason.

    4001: get a fresh token and resume; 4009: resume into the reset; 4500: stop; 1012: reconnect and
    resume (EventSource does so by itself). ``reconnect`` is the disconnect table's advice.
    """
    body = {
        "type": "close",
        "code": int(disconnect.code),
        "reason": disconnect.reason,
        "reconnect": disconnect.reconnect,
    }
    return f"event: close\ndata: {dumps(body)}\n\n"


async def _finish(sink: SseSink, disconnect: Disconnect, sub: Subscription) -> None:
    """End the stream: after the terminal event plainly, otherwise with a ``close`` message."""
    response = sink.response
    assert response is not None
    code = disconnect.code
    if code in (closecodes.CloseCode.SLOW_CONSUMER, closecodes.CloseCode.INTERNAL_ERROR):
        return  # the transport is aborted already
    with contextlib.suppress(Exception):
        if code != closecodes.CloseCode.NORMAL:
            await asyncio.wait_for(response.send(_close_message(disconnect)), 1.0)
        await asyncio.wait_for(response.eof(), 1.0)
    log.debug(
        "sse stream ended",
        extra={"fields": {"execution_id": sub.execution_id, "code": int(code), "frames_sent": sub.sent}},
    )


@bp.before_server_stop
async def close_streams(app: Sanic[Any, Any]) -> None:
    """Ask SSE readers to reconnect elsewhere (1012) and stop demo runs before the server stops."""
    for sub in tuple(_streams(app)):
        sub.close(closecodes.SERVER_RESTARTING)
    for task in tuple(_demo_runs(app)):
        task.cancel()


# -- the demo page ------------------------------------------------------------------


def _require_dev(request: Request) -> None:
    if request.app.ctx.settings.env == "production":
        raise NotFound("the demo page is not served by this instance")


def _static_file(request: Request, path: str) -> Path:
    _require_dev(request)
    root = STATIC_DIR.resolve()
    if not root.is_dir():
        raise NotFound("the demo page is not served by this instance")
    target = (root / (path or "index.html")).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise NotFound("no such file in the demo page")
    return target


@bp.get("/demo", strict_slashes=True)
async def demo_root(request: Request) -> HTTPResponse:
    """Redirect to ``/demo/`` (keeping the query) so the page's relative links resolve."""
    _static_file(request, "")
    query = f"?{request.query_string}" if request.query_string else ""
    return redirect(f"/demo/{query}")


@bp.get("/demo/", strict_slashes=True)
async def demo_index(request: Request) -> HTTPResponse:
    """The demo page (outside production only)."""
    return await file(_static_file(request, ""), headers={"cache-control": "no-cache"})


@bp.get("/demo/<path:path>")
async def demo_file(request: Request, path: str) -> HTTPResponse:
    """A file of the demo page (outside production only)."""
    return await file(_static_file(request, path), headers={"cache-control": "no-cache"})


# -- the demo page's API (development only) -------------------------------------------
# The page's "start" button runs a simulated diagnosis inside this process and
# gets a token for it. Tokens are minted only for executions started here, so
# this API never opens a real execution, even on a dev instance with real keys.


def _demo_runs(app: Sanic[Any, Any]) -> set[asyncio.Task[None]]:
    runs: set[asyncio.Task[None]] | None = getattr(app.ctx, "demo_runs", None)
    if runs is None:
        runs = app.ctx.demo_runs = set()
    return runs


def _demo_ids(app: Sanic[Any, Any]) -> OrderedDict[str, None]:
    ids: OrderedDict[str, None] | None = getattr(app.ctx, "demo_ids", None)
    if ids is None:
        ids = app.ctx.demo_ids = OrderedDict()
    return ids


def _demo_body(request: Request) -> dict[str, Any]:
    body = json_body(request) if request.body else {}
    if not isinstance(body, dict):
        raise ValidationFailed([{"field": "body", "message": "must be a JSON object"}])
    return body


def _demo_token(relay: Relay, execution_id: str) -> HTTPResponse:
    if not relay.can_mint:
        return json_response(
            {"error": "not_configured", "message": "minting needs RELAY_JWT_PRIVATE_KEY with a public-key algorithm"},
            status=501,
        )
    token, expires_at = relay.mint(execution_id, "demo-page", relay.settings.token_ttl)
    return json_response({"execution_id": execution_id, "token": token, "expires_at": expires_at}, status=201)


@bp.post("/demo/api/executions")
async def demo_start(request: Request) -> HTTPResponse:
    """Start a simulated diagnosis in this process; 201 with its id and a subscriber token."""
    _require_dev(request)
    relay: Relay = request.app.ctx.relay
    pace = _demo_body(request).get("pace", DEMO_DEFAULT_PACE)
    if isinstance(pace, bool) or not isinstance(pace, int | float) or not 0 <= pace <= DEMO_MAX_PACE:
        raise ValidationFailed([{"field": "pace", "message": f"must be a number of seconds from 0 to {DEMO_MAX_PACE}"}])
    runs = _demo_runs(request.app)
    if len(runs) >= DEMO_MAX_RUNNING:
        raise RateLimited(f"{DEMO_MAX_RUNNING} demo executions are running already; wait for one to finish")
    execution_id = f"demo-{uuid.uuid4().hex[:8]}"
    response = _demo_token(relay, execution_id)
    if response.status != 201:
        return response
    ids = _demo_ids(request.app)
    ids[execution_id] = None
    while len(ids) > DEMO_MAX_REMEMBERED:
        ids.popitem(last=False)
    task = asyncio.get_running_loop().create_task(simulate(relay, execution_id, float(pace)))
    runs.add(task)
    task.add_done_callback(runs.discard)
    task.add_done_callback(_demo_ended)
    return response


def _demo_ended(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("demo execution failed", exc_info=task.exception())


@bp.post("/demo/api/tokens")
async def demo_fresh_token(request: Request) -> HTTPResponse:
    """A fresh subscriber token for an execution the demo API started (403 for any other)."""
    _require_dev(request)
    execution_id = _demo_body(request).get("execution_id")
    if not isinstance(execution_id, str) or execution_id not in _demo_ids(request.app):
        raise Forbidden("the demo API mints tokens only for the executions it started")
    return _demo_token(request.app.ctx.relay, execution_id)
