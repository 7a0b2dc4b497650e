"""Structured logs: every line a server writes is JSON, and no credential ever appears in one.

The main test runs ``python -m service`` through a workload full of tokens
(good ones in ``?token=`` and ``Authorization``, expired, forged, malformed,
wrong publisher keys), stops it with SIGTERM and reads everything it wrote.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from service.logs import JsonFormatter, redact, request_id
from tests.conftest import PUBLISH_KEY, SECRET, make_token
from tests.log_guard import LogGuard
from tests.redis_util import ServiceProcess, free_port, wait_until

FORGED = make_token("log-exec", secret="a-different-secret-0123456789-abcdefgh")
EXPIRED = make_token("log-exec", ttl=-120)
OTHER = make_token("another-exec")
GARBAGE = "garbage-token-value-4f7c1e9a2b"
WRONG_KEY = "wrong-publisher-key-0123456789-abcdefghijkl"


def lines_of(text: str) -> list[dict[str, Any]]:
    """Parse every non-empty line as a JSON object (fails on the first one that is not)."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            pytest.fail(f"line {number} is not JSON: {line!r}")
        assert isinstance(entry, dict), line
        assert {"ts", "level", "logger", "msg"} <= entry.keys(), line
        entries.append(entry)
    return entries


async def workload(service: ServiceProcess, good: str) -> None:
    """Sockets, polls, SSE and publishes, with good and bad credentials in every place they travel."""
    base, eid = service.base, "log-exec"
    auth = {"Authorization": f"Bearer {PUBLISH_KEY}", "X-Request-ID": "req-publish-1"}
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        ws_query = await connect(service.ws_url(eid, good))
        ws_header = await connect(
            f"ws://127.0.0.1:{service.port}/ws/executions/{eid}", additional_headers={"Authorization": f"Bearer {good}"}
        )
        for ws in (ws_query, ws_header):
            assert json.loads(await ws.recv())["type"] == "connected"
        for token in (FORGED, EXPIRED, OTHER, GARBAGE):
            refused = await connect(service.ws_url(eid, token))
            with pytest.raises(ConnectionClosed):
                await refused.recv()
        body = {"event": "progress", "data": {"progress": 5, "stage": "start"}}
        r = await http.post(f"/internal/v1/executions/{eid}/events", json=body, headers=auth)
        assert r.status_code == 202 and r.headers["x-request-id"] == "req-publish-1"
        r = await http.post(
            f"/internal/v1/executions/{eid}/events", json=body, headers={"Authorization": f"Bearer {WRONG_KEY}"}
        )
        assert r.status_code == 401
        r = await http.post(
            f"/internal/v1/executions/{eid}/events", json=body, headers={"Authorization": f"Bearer {good}"}
        )  # a subscriber token is no key
        assert r.status_code == 401
        r = await http.post(f"/internal/v1/executions/{eid}/events", content=b"{not json", headers=auth)
        assert r.status_code == 400
        for token in (good, FORGED, EXPIRED, GARBAGE):
            await http.get(f"/v1/executions/{eid}/events", params={"token": token, "after": 0})
            await http.get(f"/v1/executions/{eid}", headers={"Authorization": f"Bearer {token}"})
            await http.get(f"/no/such/path?token={token}")
        async with http.stream("GET", f"/v1/executions/{eid}/stream", params={"token": good}) as stream:
            assert stream.status_code == 200
            async for chunk in stream.aiter_text():
                if "connected" in chunk:
                    break
        r = await http.post(
            f"/internal/v1/executions/{eid}/events", headers=auth, json={"event": "complete", "data": {}}
        )
        assert r.status_code == 202
        for ws in (ws_query, ws_header):
            async for _ in ws:
                pass
            assert ws.close_code == 1000
        # One socket left open for the shutdown to close.
        await connect(service.ws_url("log-exec-2", make_token("log-exec-2")))


async def test_server_logs_are_json_without_credentials() -> None:
    """A whole server run, workload and SIGTERM included, writes only JSON lines and never a token or key."""
    good = make_token("log-exec")
    service = ServiceProcess(RELAY_LOG_LEVEL="DEBUG", RELAY_ACCESS_LOG="true", RELAY_SHUTDOWN_TIMEOUT="4")
    service.start()
    try:
        await workload(service, good)
        assert service.proc is not None
        os.kill(service.proc.pid, signal.SIGTERM)
        assert await asyncio.to_thread(service.proc.wait, 10) == 0
        text = Path(service.log.name).read_text()
    finally:
        service.stop()

    entries = lines_of(text)
    for secret in (good, FORGED, EXPIRED, OTHER, GARBAGE, PUBLISH_KEY, WRONG_KEY, SECRET):
        assert secret not in text, f"a credential appears in the log: {secret[:12]}..."
        assert secret.split(".")[-1] not in text, "a token signature appears in the log"

    def find(msg: str) -> list[dict[str, Any]]:
        return [e for e in entries if e["msg"] == msg]

    opened = find("websocket opened")
    assert len(opened) == 3 and all(e["request_id"] and e["execution_id"] for e in opened)
    refusals = {e["reason"]: e["close_code"] for e in find("websocket refused")}
    assert refusals == {"signature": 4500, "expired": 4001, "other_execution": 4503, "malformed": 4500}
    closed = find("websocket closed")
    assert sorted(e["close_code"] for e in closed) == [1000, 1000, 1012]
    assert all(isinstance(e["frames_sent"], int) and e["duration_s"] >= 0 for e in closed)
    published = find("published")
    assert [(e["event"], e["seq"]) for e in published] == [("progress", 1), ("complete", 2)]
    assert published[0]["request_id"] == "req-publish-1"
    assert len(find("publisher refused")) == 2
    access = [e for e in entries if e["logger"] == "relay.access"]
    assert access and all("token" not in e["path"] for e in access)
    assert find("draining") and find("drained")


async def test_log_level_comes_from_configuration() -> None:
    """RELAY_LOG_LEVEL=WARNING keeps the per-connection info lines out, and still writes the warnings and errors."""
    # An unreachable Redis makes the server log an error at start: proof that the log is written at all,
    # so that "no info line" cannot pass on an empty log.
    service = ServiceProcess(
        RELAY_LOG_LEVEL="WARNING",
        RELAY_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0",
        RELAY_REDIS_CONNECT_TIMEOUT="0.2",
    ).spawn()
    try:
        wait_until(lambda: healthy(service), 30, "the service to answer /healthz")
        async with connect(service.ws_url("lvl", make_token("lvl"))) as ws:
            with pytest.raises(ConnectionClosed):
                await ws.recv()  # refused (broker unavailable), which is logged at info
        assert service.proc is not None
        os.kill(service.proc.pid, signal.SIGTERM)
        assert await asyncio.to_thread(service.proc.wait, 10) == 0
        text = Path(service.log.name).read_text()
    finally:
        service.stop()
    entries = lines_of(text)
    assert any(e["level"] == "error" and "unreachable" in e["msg"] for e in entries), text[-2000:]
    assert all(e["level"] in ("warning", "error", "critical") for e in entries), entries


def healthy(service: ServiceProcess) -> bool:
    """Whether the service answers /healthz."""
    try:
        return httpx.get(f"{service.base}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def test_formatter_adds_request_id_and_redacts() -> None:
    """A record logged while a request is handled carries its id; tokens in the message are redacted."""
    token = make_token("x")
    record = logging.LogRecord("relay.test", logging.INFO, __file__, 1, "GET /ws/x?token=%s", (token,), None)
    record.fields = {"execution_id": "x"}  # type: ignore[attr-defined]
    reset = request_id.set("rid-42")
    try:
        entry = json.loads(JsonFormatter().format(record))
    finally:
        request_id.reset(reset)
    assert entry["request_id"] == "rid-42" and entry["execution_id"] == "x"
    assert token not in entry["msg"] and "[redacted]" in entry["msg"]
    assert redact(f"Authorization: Bearer {PUBLISH_KEY}") == "Authorization: Bearer [redacted]"


def test_error_lines_carry_a_redacted_traceback() -> None:
    """An error logged with its exception is one JSON line whose traceback has no token in it."""
    token = make_token("x")
    try:
        raise RuntimeError(f"failed on /ws/executions/x?token={token} with Bearer {token}")
    except RuntimeError:
        record = logging.LogRecord("relay.app", logging.ERROR, __file__, 1, "unhandled error on %s", ("GET",), None)
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "error" and "RuntimeError" in entry["exc"]
    assert token not in line and token.split(".")[-1] not in line


def test_the_log_guard_sees_relay_records_and_flags_a_credential(no_credentials_in_logs: LogGuard) -> None:
    """The session-wide guard receives relay records and flags a key in one, so its silence means something."""
    guard = no_credentials_in_logs
    checked, leaks = guard.checked, len(guard.leaks)
    logging.getLogger("relay.test").info("publisher key %s", PUBLISH_KEY)
    try:
        assert guard.checked == checked + 1 and len(guard.leaks) == leaks + 1
    finally:
        del guard.leaks[leaks:]  # the planted leak is not the session's


@pytest.mark.parametrize(
    "path",
    [
        "/x\x01y?token=abc",
        '/v1/e?token=abc"}',
        "/v1/e?a=1&access_token=abc\\",
        "/v1/e?token=" + make_token("x") + "\x7f",
        "/\udcff?token=abc",  # a byte Sanic decoded with surrogateescape
    ],
)
def test_every_line_is_one_json_object_whatever_the_request_bytes(path: str) -> None:
    """Control bytes, quotes, backslashes and undecodable bytes next to a token: one JSON line, token gone."""
    try:
        raise ValueError(f"Bad URL: {path}")
    except ValueError:
        record = logging.LogRecord("sanic.error", logging.ERROR, __file__, 1, "failed on %s", (path,), sys.exc_info())
    record.fields = {"path": path, "nested": [path]}  # type: ignore[attr-defined]
    line = JsonFormatter().format(record)
    line.encode()  # writable as UTF-8
    assert "\n" not in line
    entry = json.loads(line)
    for text in (entry["msg"], entry["exc"], entry["path"], entry["nested"][0]):
        assert "abc" not in text and "eyJ" not in text
        assert "[redacted]" in text
