"""Internal API for publishers (the scheduler), under ``/internal/v1``.

Every route needs ``Authorization: Bearer <publisher key>``. Bodies are
validated against the contract; nothing a client sends produces a 500.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any
from urllib.parse import unquote

from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from ... import metrics
from ...brokers import PublishResult
from ...errors import FieldError, RelayError, Unauthorized, ValidationFailed
from ...events import EventDraft, parse_draft, valid_execution_id
from ...relay import Relay
from ..hardening import refuse_body
from ..http import JSONResponse, bearer_token, json_body, json_response

__all__ = ["accept_one", "bp"]

bp = Blueprint("internal", url_prefix="/internal/v1")
log = logging.getLogger("relay.publish")


Handler = Callable[..., Awaitable[HTTPResponse]]


def publisher_only(handler: Handler) -> Handler:
    """Refuse the request without a valid publisher key (401) before ``handler`` runs.

    The routes stream their bodies (``stream=True``): the key is checked from
    the headers before a byte of the body is read, a refused request gets no
    ``100 Continue`` and its body is never read, and an accepted one is read
    here, up to ``RELAY_MAX_BODY_SIZE`` (413 beyond).

    A decorator on every route of this blueprint rather than blueprint middleware:
    the same check, without Sanic's middleware machinery on the publish hot path.
    The two publish routes call :func:`_admit` and :func:`_read_body` themselves
    instead: a coroutine layer less per publish (frames and ~30 bytecodes).
    """

    @wraps(handler)
    async def checked(request: Request, *args: Any, **kwargs: Any) -> HTTPResponse:
        _admit(request)
        await _read_body(request)
        return await handler(request, *args, **kwargs)

    return checked


def _admit(request: Request) -> Relay:
    """The relay, if ``request`` has a valid publisher key; else 401, its body left unread.

    Lets an accepted request's body be read up to ``RELAY_MAX_BODY_SIZE`` (413 beyond).
    """
    relay: Relay = request.app.ctx.relay
    if not relay.check_publisher(bearer_token(request)):
        refuse_body(request)
        metrics.auth_failure("publisher_key")
        log.info("publisher refused", extra={"fields": {"reason": "publisher_key", "path": request.path}})
        raise Unauthorized("a valid publisher key is required in Authorization: Bearer", reason="publisher_key")
    stream: Any = request.stream
    if stream is not None and stream.request_body:
        stream.request_max_size = relay.settings.max_body_size  # Sanic lifts it to infinity for streams
    return relay


async def _read_body(request: Request) -> None:
    """Read the streamed body of an admitted request (none to read: nothing to do)."""
    stream: Any = request.stream
    if stream is not None and stream.request_body:
        await request.receive_body()


def _result_body(result: PublishResult) -> dict[str, Any]:
    return {"execution_id": result.execution_id, "seq": result.seq, "duplicate": result.duplicate}


def _result_text(result: PublishResult) -> str:
    """``dumps(_result_body(result))``, written directly: no dict, no encoder call (every single publish).

    The execution id needs no escaping: parse_draft accepted it (``A-Za-z0-9._:-`` only).
    """
    duplicate = "true" if result.duplicate else "false"
    return f'{{"execution_id":"{result.execution_id}","seq":{result.seq},"duplicate":{duplicate}}}'


def _log_published(result: PublishResult, event: str) -> None:
    """Log one accepted event; callers check ``log.isEnabledFor(logging.INFO)`` first (publish hot path)."""
    log.info(
        "published",
        extra={
            "fields": {
                "execution_id": result.execution_id,
                "event": event,
                "seq": result.seq,
                "duplicate": result.duplicate,
            }
        },
    )


async def accept_one(request: Request, execution_id: str) -> str:
    """Publish the event in ``request``'s body to ``execution_id``; the JSON text of its 202 answer.

    The route below answers with it; so does :mod:`service.web.direct`, which
    serves this route straight from the connection (every route's errors are
    raised, and answered by the app's error handlers, either way).
    """
    relay = _admit(request)  # what @publisher_only does, inline on the hottest route
    stream: Any = request.stream
    if stream is not None and stream.request_body:  # _read_body, inline: one coroutine less per publish
        await request.receive_body()
    if "%" in execution_id:  # a client may percent-encode ids ("a%3Ab" is "a:b"); most do not
        execution_id = unquote(execution_id)
    draft = parse_draft(execution_id, json_body(request, strict=False))  # parse_draft encodes strictly
    result = await relay.publish(draft)
    if log.isEnabledFor(logging.INFO):  # not even a call to build the fields otherwise
        _log_published(result, draft.event)
    return _result_text(result)


@bp.post("/executions/<execution_id>/events", stream=True)
async def publish_one(request: Request, execution_id: str) -> HTTPResponse:
    """Accept one event for ``execution_id``: 202 with its seq (served by :mod:`..direct` over HTTP/1.1)."""
    return JSONResponse(await accept_one(request, execution_id), status=202, content_type="application/json")


@bp.post("/events", stream=True)
async def publish_batch(request: Request) -> HTTPResponse:
    """Accept up to RELAY_MAX_BATCH_SIZE events; one result per item, in order."""
    relay = _admit(request)  # what @publisher_only does, inline
    await _read_body(request)
    body = json_body(request, strict=False)  # every item goes through parse_draft, which encodes strictly
    items = body.get("events") if isinstance(body, dict) else None
    limit = relay.settings.max_batch_size
    if not isinstance(items, list) or not items:
        raise ValidationFailed([{"field": "events", "message": "required, a non-empty array"}])
    if len(items) > limit:
        raise ValidationFailed([{"field": "events", "message": f"at most {limit} events per request"}])
    outcome: list[RelayError | EventDraft] = []
    for i, item in enumerate(items):
        eid = item.get("execution_id") if isinstance(item, dict) else None
        try:
            if not isinstance(eid, str):
                raise ValidationFailed([{"field": f"events[{i}].execution_id", "message": "required, a string"}])
            outcome.append(parse_draft(eid, item, prefix=f"events[{i}]."))
        except RelayError as exc:  # ValidationFailed (422) or BadRequest (400): this item only
            outcome.append(exc)
    drafts = [d for d in outcome if isinstance(d, EventDraft)]
    published = iter(await relay.publish_many(drafts))
    results: list[dict[str, Any]] = []
    for i, entry in enumerate(outcome):
        item_result = next(published) if isinstance(entry, EventDraft) else entry
        if isinstance(item_result, PublishResult):
            accepted = _result_body(item_result)
            accepted["status"] = 202
            results.append(accepted)
            assert isinstance(entry, EventDraft)
            if log.isEnabledFor(logging.INFO):
                _log_published(item_result, entry.event)
        else:
            eid = items[i].get("execution_id") if isinstance(items[i], dict) else None
            results.append(
                {
                    "execution_id": eid if isinstance(eid, str) else None,
                    "status": item_result.status,
                    **item_result.body(),
                }
            )
    return json_response({"results": results}, status=202)


def _mint_request(body: Any, default_ttl: int, max_ttl: int) -> tuple[str, str, int]:
    """The execution id, sub and TTL of a token request; ValidationFailed lists every problem."""
    if not isinstance(body, dict):
        raise ValidationFailed([{"field": "body", "message": "must be a JSON object"}])
    errors: list[FieldError] = []
    eid, sub, ttl = body.get("execution_id"), body.get("sub"), body.get("ttl_seconds", default_ttl)
    if not isinstance(eid, str) or not valid_execution_id(eid):
        errors.append({"field": "execution_id", "message": "required, 1-128 characters of A-Za-z0-9._:-"})
    if not isinstance(sub, str) or not 1 <= len(sub) <= 256:
        errors.append({"field": "sub", "message": "required, a string of 1 to 256 characters"})
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= max_ttl:
        errors.append({"field": "ttl_seconds", "message": f"must be an integer from 1 to {max_ttl}"})
    for key in body.keys() - {"execution_id", "sub", "ttl_seconds"}:
        errors.append({"field": key, "message": "unknown field"})
    if errors:
        raise ValidationFailed(errors)
    assert isinstance(eid, str) and isinstance(sub, str) and isinstance(ttl, int)  # checked above; for mypy
    return eid, sub, ttl


@bp.post("/tokens", stream=True)
@publisher_only
async def mint_token(request: Request) -> HTTPResponse:
    """Mint a subscriber token for one execution and user: 201."""
    relay: Relay = request.app.ctx.relay
    eid, sub, ttl = _mint_request(json_body(request), relay.settings.token_ttl, relay.settings.token_max_ttl)
    if not relay.can_mint:
        return json_response(
            {"error": "not_configured", "message": "minting needs RELAY_JWT_PRIVATE_KEY with a public-key algorithm"},
            status=501,
        )
    token, expires_at = relay.mint(eid, sub, ttl)
    return json_response(
        {
            "token": token,
            "expires_at": expires_at,
            "expires_at_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires_at)),
        },
        status=201,
    )


@bp.post("/revocations", stream=True)
@publisher_only
async def revoke(request: Request) -> HTTPResponse:
    """Revoke a token by ``jti`` and/or a user's tokens by ``sub``; live sockets close with 4500 everywhere."""
    relay: Relay = request.app.ctx.relay
    body = json_body(request)
    if not isinstance(body, dict):
        raise ValidationFailed([{"field": "body", "message": "must be a JSON object"}])
    errors = []
    jti, sub = body.get("jti"), body.get("sub")
    ttl = body.get("ttl_seconds", relay.settings.token_max_ttl)
    for name, value in (("jti", jti), ("sub", sub)):
        if value is not None and (not isinstance(value, str) or not 1 <= len(value) <= 256):
            errors.append({"field": name, "message": "must be a string of 1 to 256 characters"})
    if jti is None and sub is None:
        errors.append({"field": "jti", "message": "give jti, sub or both"})
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= 366 * 86400:
        errors.append({"field": "ttl_seconds", "message": "must be an integer from 1 to 31622400"})
    for key in body.keys() - {"jti", "sub", "ttl_seconds"}:
        errors.append({"field": key, "message": "unknown field"})
    if errors:
        raise ValidationFailed(errors)
    await relay.revoke(jti, sub, ttl)
    log.info("revoked", extra={"fields": {"jti": jti, "sub": sub, "ttl_seconds": ttl}})
    return json_response({"jti": jti, "sub": sub, "ttl_seconds": ttl}, status=202)


@bp.get("/stats")
@publisher_only
async def stats(request: Request) -> HTTPResponse:
    """Connections, executions and counters of this instance."""
    relay: Relay = request.app.ctx.relay
    consumers = getattr(request.app.ctx, "ingest", [])
    return json_response({**relay.stats(), "ingest": [consumer.stats() for consumer in consumers]})
