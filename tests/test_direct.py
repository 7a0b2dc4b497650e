"""The publish route served straight from the connection answers exactly as Sanic's routing does.

Every case sends the same raw bytes to two real servers: one as shipped
(``service.web.direct`` serves the single-event publish), one whose
connections hand every request to ``Sanic.handle_request`` (the route
through Sanic's router, handler chain and response objects). Everything each
server writes back until it closes the connection must be the same bytes.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re

import pytest
from sanic.http.constants import Stage
from sanic.http.http1 import Http
from sanic.server.protocols.http_protocol import HttpProtocol

from service.web import direct
from tests.conftest import PUBLISH_KEY, Server, StartServer
from tests.redis_util import ServiceProcess

KEY = f"Authorization: Bearer {PUBLISH_KEY}\r\n"
BODY = '{"event":"progress","data":{"progress":40,"stage":"ai_fetching"}}'
DUPLICATE = '{"event":"progress","idempotency_key":"k1","data":{"progress":1,"stage":"s"}}'
#: Sent after every case on the same connection: answered (404) only if the case left it open.
PROBE = "GET /nowhere HTTP/1.1\r\nHost: x\r\nX-Request-ID: probe\r\nConnection: close\r\n\r\n"


def post(path: str, body: str = BODY, headers: str = KEY, version: str = "HTTP/1.1", method: str = "POST") -> str:
    """A request with a Content-Length body and a fixed request id."""
    return (
        f"{method} {path} {version}\r\nHost: x\r\nX-Request-ID: case\r\n{headers}"
        f"Content-Length: {len(body.encode())}\r\n\r\n{body}"
    )


CASES = {
    "accepted": post("/internal/v1/executions/e1/events"),
    "accepted, HTTP/1.0": post("/internal/v1/executions/e1/events", version="HTTP/1.0"),
    "accepted, Connection: close": post("/internal/v1/executions/e1/events", headers=KEY + "Connection: close\r\n"),
    "accepted, percent-encoded id": post("/internal/v1/executions/a%3Ab/events"),
    "accepted, query string": post("/internal/v1/executions/e1/events?x=1"),
    "accepted, 100-continue": post("/internal/v1/executions/e1/events", headers=KEY + "Expect: 100-continue\r\n"),
    "accepted, chunked": (
        f"POST /internal/v1/executions/e1/events HTTP/1.1\r\nHost: x\r\nX-Request-ID: case\r\n{KEY}"
        f"Transfer-Encoding: chunked\r\n\r\n{len(BODY):x}\r\n{BODY}\r\n0\r\n\r\n"
    ),
    "duplicate idempotency key": 2 * post("/internal/v1/executions/e1/events", DUPLICATE),
    "no key": post("/internal/v1/executions/e1/events", headers=""),
    "wrong key": post("/internal/v1/executions/e1/events", headers="Authorization: Bearer nope\r\n"),
    "not JSON": post("/internal/v1/executions/e1/events", "{nope"),
    "invalid event": post("/internal/v1/executions/e1/events", '{"event":"progress","data":{}}'),
    "empty body": post("/internal/v1/executions/e1/events", ""),
    "too large": post("/internal/v1/executions/e1/events", '{"event":"log","data":{"m":"' + "x" * 70000 + '"}}'),
    "invalid execution id": post("/internal/v1/executions/a%20b/events"),
    "empty execution id": post("/internal/v1/executions//events"),
    "two segments": post("/internal/v1/executions/a/b/events"),
    "trailing slash": post("/internal/v1/executions/e1/events/"),
    "GET on the route": f"GET /internal/v1/executions/e1/events HTTP/1.1\r\nHost: x\r\nX-Request-ID: case\r\n{KEY}\r\n",
    "lower-case method": post("/internal/v1/executions/e1/events", method="post"),
    "batch route": post(
        "/internal/v1/events", '{"events":[{"execution_id":"e1","event":"progress","data":{"progress":1,"stage":"s"}}]}'
    ),
    "three pipelined": post("/internal/v1/executions/p1/events") * 3,
}


async def exchange(server: Server | ServiceProcess, raw: str) -> bytes:
    """Send ``raw`` and the probe on one connection; everything the server writes until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(raw.encode() + PROBE.encode())
    try:
        async with asyncio.timeout(10):
            return await reader.read()
    except ConnectionResetError:  # a refused body that was still arriving: what was read stands
        return b""
    finally:
        writer.close()


async def answers(server: Server) -> dict[str, bytes]:
    """Every case's bytes from ``server``, as a served app writes them.

    In-process test servers run without Sanic's touch-up (one app per process
    may have it), which in a served app removes the empty ``alt-svc`` line
    Sanic adds to every answer it writes (checked against ``python -m service``
    below): removed here too.
    """
    return {name: (await exchange(server, raw)).replace(b"alt-svc: \r\n", b"") for name, raw in CASES.items()}


async def test_every_case_gets_the_bytes_sanic_writes_for_the_route(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Publishes, refusals, errors and near-miss paths get the same bytes as through Sanic's router."""
    shipped = await answers(await start_server(RELAY_MAX_BODY_SIZE="65536"))

    async def through_sanic(request: object) -> None:
        await request.app.handle_request(request)  # type: ignore[attr-defined]

    monkeypatch.setattr(direct, "handle", through_sanic)
    routed = await answers(await start_server(RELAY_MAX_BODY_SIZE="65536"))
    assert shipped == routed
    # The cases are what their names say (both servers agree, so checking one suffices).
    statuses = {name: [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)] for name, raw in shipped.items()}
    assert statuses["accepted"] == [202, 404]
    assert statuses["accepted, HTTP/1.0"] == [202]  # closed after the answer: the probe is never read
    assert statuses["accepted, Connection: close"] == [202]
    assert statuses["accepted, 100-continue"] == [100, 202, 404]
    assert statuses["three pipelined"] == [202, 202, 202, 404]
    assert statuses["no key"] == statuses["wrong key"] == [401]  # body never read, connection closed
    assert statuses["not JSON"] == statuses["empty body"] == [400, 404]
    assert statuses["invalid event"] == statuses["invalid execution id"] == [422, 404]
    assert statuses["too large"][0] == 413
    assert statuses["empty execution id"][0] == statuses["two segments"][0] == 404
    assert statuses["trailing slash"] == [202, 404]  # Sanic's routes are not strict about it (served by Sanic)
    assert statuses["GET on the route"] == [405, 404]
    assert b'"seq":3,' in shipped["three pipelined"] and b'"duplicate":true' in shipped["duplicate idempotency key"]
    assert b'"execution_id":"a:b"' in shipped["accepted, percent-encoded id"]


async def test_a_direct_publish_reaches_subscribers_and_is_logged(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A publish served directly is delivered, counted and written to the access log like any request."""
    caplog.set_level(logging.INFO, logger="relay.access")
    server = await start_server(RELAY_ACCESS_LOG="true")
    ws = await server.connect("e1")
    assert json.loads(await ws.recv())["type"] == "connected"
    routed = []
    resolve = server.app.router.get
    server.app.router.get = lambda *args: routed.append(args) or resolve(*args)  # Sanic's routing, counted
    answer = await exchange(server, post("/internal/v1/executions/e1/events"))
    assert answer.startswith(b"HTTP/1.1 202 Accepted\r\n")
    assert [path for path, *_ in routed] == ["/nowhere"]  # the publish never reached Sanic's router; the probe did
    frame = json.loads(await ws.recv())
    assert (frame["seq"], frame["data"]["progress"]) == (1, 40)
    lines = [r.fields for r in caplog.records if r.name == "relay.access"]  # type: ignore[attr-defined]
    expected = {"request_id": "case", "method": "POST", "path": "/internal/v1/executions/e1/events", "status": 202}
    assert expected.items() <= lines[0].items()


async def test_the_served_app_writes_no_alt_svc_line() -> None:
    """``python -m service`` answers a direct publish and a Sanic-routed request without ``alt-svc``."""
    service = ServiceProcess().start()
    try:
        answer = await exchange(service, post("/internal/v1/executions/e1/events"))
    finally:
        service.stop()
    assert answer.startswith(b"HTTP/1.1 202 Accepted\r\nx-request-id: case\r\n")
    assert b"HTTP/1.1 404 Not Found\r\nx-request-id: probe\r\n" in answer
    assert b"alt-svc" not in answer


def test_sanic_internals_keep_their_shape() -> None:
    """The parts of Sanic the direct route relies on are where direct.py says (Sanic 25.12.1)."""
    assert "request_handler" in HttpProtocol.__slots__
    assert "self._setup()" in inspect.getsource(HttpProtocol.__init__)
    assert "self.request_handler = self.app.handle_request" in inspect.getsource(HttpProtocol._setup)
    http1 = inspect.getsource(Http.http1)
    assert "await self.protocol.request_handler(self.request)" in http1
    assert "if self.stage is Stage.HANDLER and not self.upgrade_websocket:" in http1
    for name in ("keep_alive", "response_func", "_send", "stage", "request_body"):
        assert name in Http.__slots__, name
    assert Stage.IDLE and Stage.HANDLER
