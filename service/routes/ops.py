"""Operations: liveness and readiness."""

from __future__ import annotations

from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from ..errors import RelayError
from ..http import json_response
from ..relay import Relay

__all__ = ["bp"]

bp = Blueprint("ops")


@bp.get("/healthz")
async def healthz(request: Request) -> HTTPResponse:
    """The process is alive and serving requests."""
    return json_response({"status": "ok"})


@bp.get("/readyz")
async def readyz(request: Request) -> HTTPResponse:
    """200 while the broker is reachable and the instance is not draining."""
    relay: Relay = request.app.ctx.relay
    if getattr(request.app.ctx, "draining", False):
        return json_response({"status": "draining"}, status=503)
    try:
        await relay.broker.ping()
    except RelayError as exc:
        return json_response({"status": "broker_unavailable", "message": exc.message}, status=503)
    return json_response({"status": "ready"})
