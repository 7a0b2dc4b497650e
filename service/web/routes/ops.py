"""Operations: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from ... import metrics
from ...errors import RelayError
from ...relay import Relay
from ..http import json_response

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
        await relay.ping()
    except RelayError as exc:
        return json_response({"status": "broker_unavailable", "message": exc.message}, status=503)
    return json_response({"status": "ready"})


@bp.get("/metrics")
async def prometheus_metrics(request: Request) -> HTTPResponse:
    """Prometheus text format; 403 for a peer outside RELAY_METRICS_ALLOWLIST."""
    allowlist = getattr(request.app.ctx, "metrics_allowlist", None)
    if allowlist is None:
        allowlist = request.app.ctx.metrics_allowlist = metrics.parse_allowlist(
            request.app.ctx.settings.metrics_allowlist
        )
    if not metrics.address_allowed(request.ip, allowlist):
        return json_response({"error": "forbidden", "message": "this address may not read /metrics"}, status=403)
    return HTTPResponse(metrics.render(), content_type=metrics.CONTENT_TYPE)
