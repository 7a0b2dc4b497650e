"""docs/openapi.yaml: in step with the app's routes, and true of a live server (Schemathesis).

Left out of the document, on purpose:

- ``GET /ws/executions/{execution_id}``: a WebSocket; OpenAPI cannot describe
  its frames or close codes (docs/protocol.md does, test_ws_* test them).
- ``/demo`` and everything under it: the development demo page and its
  helper API, not served in production and not part of the contract.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jsonschema  # type: ignore[import-untyped]
import pytest
import schemathesis
import yaml  # type: ignore[import-untyped]
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
)

from service.web.app import create_app
from tests.conftest import PUBLISH_KEY, make_settings, make_token
from tests.live_server import LiveServer

SPEC = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
FINISHED = "oa-finished"  # streams and long polls on a finished execution end at once


def documented() -> set[tuple[str, str]]:
    """(METHOD, path) of every operation in the document."""
    doc = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item if method in METHODS}


def routed() -> set[tuple[str, str]]:
    """(METHOD, path) of every HTTP route of the app, in OpenAPI's path syntax, without the socket and /demo."""
    app = create_app(make_settings())
    found: set[tuple[str, str]] = set()
    for route in app.router.routes:
        if route.extra.websocket:
            continue
        path = "/" + route.path.lstrip("/")
        if path == "/demo" or path.startswith("/demo/"):
            continue
        path = re.sub(r"<(\w+)(?::[^>]*)?>", r"{\1}", path)
        found.update((method.upper(), path) for method in route.methods)
    return found


def test_every_route_is_documented_and_nothing_else() -> None:
    """The document's operations are exactly the app's HTTP routes (socket and /demo aside)."""
    doc, app = documented(), routed()
    assert app - doc == set(), f"routes missing from docs/openapi.yaml: {sorted(app - doc)}"
    assert doc - app == set(), f"documented operations the app does not have: {sorted(doc - app)}"


def test_the_document_is_valid() -> None:
    """OpenAPI 3.1, every schema a valid JSON Schema 2020-12, every $ref resolvable, security declared."""
    doc = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    assert doc["openapi"].startswith("3.1")
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)  # raises, naming the fault
    refs = set(re.findall(r'\$ref: "#/([^"]+)"', SPEC.read_text(encoding="utf-8")))
    for ref in refs:
        node: Any = doc
        for part in ref.split("/"):
            assert part in node, f"unresolvable $ref #/{ref}"
            node = node[part]
    schemes = doc["components"]["securitySchemes"]
    assert {"publisherKey", "subscriberToken", "subscriberTokenQuery"} <= set(schemes)
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            wanted: list[dict[str, list[str]]] = (
                [{"publisherKey": []}]
                if path.startswith("/internal/")
                else []
                if method == "options" or not path.startswith("/v1/")
                else [{"subscriberToken": []}, {"subscriberTokenQuery": []}]
            )
            assert op.get("security") == wanted, (method, path)
            assert op["responses"], (method, path)


def test_documented_bodies_match_real_answers() -> None:
    """Example bodies the relay really sends validate against the documented schemas."""
    doc = yaml.safe_load(SPEC.read_text(encoding="utf-8"))

    def validate(instance: Any, name: str) -> None:
        schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
        jsonschema.Draft202012Validator(schema).validate(instance)

    validate({"execution_id": "e1", "seq": 1, "duplicate": False}, "PublishResult")
    validate({"error": "unauthorized", "message": "m", "reason": "expired"}, "UnauthorizedError")
    validate(
        {"error": "validation_failed", "message": "m", "fields": [{"field": "data.progress", "message": "x"}]},
        "ValidationError",
    )
    validate({"event": "progress", "data": {"progress": 5, "stage": "s"}, "idempotency_key": "k"}, "PublishBody")
    validate({"event": "complete"}, "PublishBody")
    with pytest.raises(jsonschema.ValidationError):
        validate({"event": "progress", "data": {"progress": 500, "stage": "s"}}, "PublishBody")
    with pytest.raises(jsonschema.ValidationError):
        validate({"event": "result"}, "PublishBody")


# -- Schemathesis against a live relay -----------------------------------------------------------------


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    """One relay for the module, with one finished execution."""
    server = LiveServer(make_settings()).start()
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)  # client and server share the GIL
    try:
        r = httpx.post(
            f"{server.base}/internal/v1/executions/{FINISHED}/events",
            json={"event": "complete"},
            headers={"Authorization": f"Bearer {PUBLISH_KEY}"},
        )
        assert r.status_code == 202
        yield server
    finally:
        sys.setswitchinterval(switch)
        server.stop()


schema = schemathesis.openapi.from_path(str(SPEC))
# ignored_auth: a 2xx with credentials is replayed without them and with wrong ones, which must be refused.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    ignored_auth,
]


def credentials(case: Any, live: LiveServer) -> dict[str, str]:
    """Valid credentials for the operation, so Schemathesis gets past 401 and 403.

    They are passed to the call as explicit headers (not written into the case), so
    ``ignored_auth`` knows them for real ones and replays the request without them.
    """
    path = case.operation.path
    if case.headers:
        case.headers.pop("Origin", None)  # any Origin is allowed here; a generated one may not be a valid header
    if path.startswith("/internal/"):
        return {"Authorization": f"Bearer {PUBLISH_KEY}"}
    if not path.startswith("/v1/") or case.method == "OPTIONS":
        return {}
    execution_id = str(case.path_parameters["execution_id"])
    if path.endswith("/stream") or (case.query or {}).get("wait"):
        # Streams and long polls end at once only on a finished execution: finish this one,
        # or (an id no event can have, from negative generation) read a finished one instead.
        r = httpx.post(
            f"{live.base}/internal/v1/executions/{quote(execution_id, safe='')}/events",
            json={"event": "complete"},
            headers={"Authorization": f"Bearer {PUBLISH_KEY}"},
        )
        assert r.status_code in (202, 409, 404, 422), r.text
        if r.status_code not in (202, 409):
            execution_id = case.path_parameters["execution_id"] = FINISHED
    return {"Authorization": f"Bearer {make_token(execution_id)}"}


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_document(case: Any, live: LiveServer) -> None:
    """Every operation, with generated valid inputs: no 5xx, documented status, content type and body."""
    case.call_and_validate(base_url=live.base, headers=credentials(case, live), checks=CHECKS, timeout=15)
