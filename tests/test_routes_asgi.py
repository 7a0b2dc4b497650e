"""HTTP routes through sanic-testing's ASGI client (no network)."""

from __future__ import annotations

from typing import Any

from sanic import Sanic

from service.web.app import create_app
from tests.conftest import PUBLISH_KEY, make_settings, make_token

AUTH = {"Authorization": f"Bearer {PUBLISH_KEY}"}


def app_under_test() -> Sanic[Any, Any]:
    """A fresh app (Sanic finalizes routers once per app)."""
    app = create_app(make_settings())
    app.config.TOUCHUP = False
    return app


async def test_health_and_readiness() -> None:
    """/healthz and /readyz answer 200 JSON on a healthy memory broker."""
    app = app_under_test()
    _, r = await app.asgi_client.get("/healthz")
    assert r.status == 200 and r.json == {"status": "ok"}
    _, r = await app_under_test().asgi_client.get("/readyz")  # fresh app: the lifespan ran once per request
    assert r.status == 200 and r.json["status"] == "ready"


async def test_publish_and_validation() -> None:
    """A valid publish answers 202 with seq 1; an invalid one 422 naming the field.

    (The ASGI client runs the app's lifespan per request, so each request sees a fresh relay.)
    """
    app = app_under_test()
    body = {"event": "progress", "data": {"progress": 1, "stage": "queued"}}
    _, r = await app.asgi_client.post("/internal/v1/executions/x/events", json=body, headers=AUTH)
    assert r.status == 202 and r.json == {"execution_id": "x", "seq": 1, "duplicate": False}
    _, r = await app.asgi_client.post("/internal/v1/executions/x/events", json={"event": "progress"}, headers=AUTH)
    assert r.status == 422 and r.json["fields"] == [{"field": "data", "message": "must be a JSON object"}]


async def test_subscriber_token_cannot_publish_and_errors_are_json() -> None:
    """A subscriber token on the internal API answers 401 JSON with a request id header."""
    app = app_under_test()
    _, r = await app.asgi_client.post(
        "/internal/v1/executions/x/events",
        json={"event": "complete"},
        headers={"Authorization": f"Bearer {make_token('x')}"},
    )
    assert r.status == 401
    assert r.json["error"] == "unauthorized" and r.json["reason"] == "publisher_key"
    assert r.headers.get("x-request-id")
