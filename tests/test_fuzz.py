"""Fuzzing with Hypothesis against one live relay: publish bodies, query values, client frames.

Whatever is sent, the relay answers with no 500, no crash, no stack trace,
and every error body in the documented shape ``{"error", "message"[,
"fields" | "reason"]}``. Whatever it accepts, every reader can read back as
strict JSON (no ``NaN``, no unpaired surrogate).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import ujson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from service.events import EVENT_TYPES
from tests.conftest import PUBLISH_KEY, make_settings, make_token
from tests.live_server import LiveServer

HTTP = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOCKETS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
AUTH = {"Authorization": f"Bearer {PUBLISH_KEY}"}
MAX_FRAME = 4096
DONE = "fz-done"  # a finished execution: long polls and streams on it end at once
ERROR_KEYS = {"error", "message", "fields", "reason"}


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    """One relay for the whole module, with a finished execution to read."""
    server = LiveServer(make_settings()).start()
    # Client and server share the GIL: hand it over sooner than every 5 ms.
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    try:
        with httpx.Client(base_url=server.base, headers=AUTH, timeout=10) as client:
            for event, data in (("progress", {"progress": 50, "stage": "s"}), ("result", {"x": 1}), ("complete", {})):
                assert (
                    client.post(
                        f"/internal/v1/executions/{DONE}/events", json={"event": event, "data": data}
                    ).status_code
                    == 202
                )
        yield server
    finally:
        sys.setswitchinterval(switch)
        server.stop()


@pytest.fixture(scope="module")
def http(live: LiveServer) -> Iterator[httpx.Client]:
    """A client for the live relay."""
    with httpx.Client(base_url=live.base, timeout=40) as client:
        yield client


def strict_json(text: str) -> Any:
    """Decode like a browser's JSON.parse: NaN and Infinity are not JSON."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def check_answer(r: httpx.Response) -> Any:
    """No 5xx, no stack trace, and errors in the documented shape; return the decoded body."""
    assert r.status_code < 500, (r.status_code, r.text[:500])
    assert "Traceback" not in r.text and 'File "' not in r.text
    if r.headers.get("content-type", "").startswith("text/event-stream") or r.status_code == 204:
        return None
    body = strict_json(r.text)
    if r.status_code >= 400:
        assert isinstance(body, dict) and set(body) <= ERROR_KEYS, body
        assert isinstance(body["error"], str) and body["error"]
        assert isinstance(body["message"], str)
        if r.status_code == 422:
            assert body["error"] == "validation_failed" and body["fields"], body
        if "fields" in body:
            assert all(
                isinstance(f, dict)
                and set(f) == {"field", "message"}
                and isinstance(f["field"], str)
                and isinstance(f["message"], str)
                for f in body["fields"]
            ), body
        if r.status_code == 401:
            assert isinstance(body["reason"], str)
        else:
            assert "reason" not in body
    return body


# -- strategies ---------------------------------------------------------------------------------

# Text that includes the troublesome: NUL, quotes, backslashes, RTL marks, astral characters.
texts = st.text(st.characters(codec="utf-8"), max_size=30) | st.sampled_from(
    ["", "\x00", '"', "\\", "</script>", "\u202e", "😀", "a" * 201, "NaN", "__proto__"]
)
finite = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | texts
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4), max_leaves=12
)
execution_ids = (
    st.sampled_from(["fz-a", "fz-b", "fz-c", "fz-d", DONE])
    | st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,20}\Z")
    | texts
)
timestamps = (
    st.none()
    | st.sampled_from(
        ["2026-02-27T21:30:00Z", "2026-02-27T21:30:00.123+08:00", "2026-02-27", "yesterday", "", "9" * 70]
    )
    | json_values
)
progress_data = st.fixed_dictionaries(
    {"progress": st.integers(-5, 105) | json_values, "stage": texts | json_values},
    optional={"status": texts | json_values, "status_text": texts | json_values, "extra": json_values},
)
error_data = st.fixed_dictionaries(
    {"error": texts | json_values},
    optional={
        "error_type": texts | json_values,
        "error_details": json_values,
        "recoverable": st.booleans() | json_values,
    },
)
datas = progress_data | error_data | st.dictionaries(texts, json_values, max_size=4) | json_values


@st.composite
def publish_bodies(draw: st.DrawFn, with_execution_id: bool = False) -> Any:
    """A publish body: mostly near-valid (so validation goes deep), sometimes anything at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    body: dict[str, Any] = {"event": draw(st.sampled_from(EVENT_TYPES) | json_values)}
    if draw(st.booleans()):
        body["data"] = draw(datas)
    for key, values in (
        ("timestamp", timestamps),
        ("idempotency_key", texts | json_values),
        ("execution_id", execution_ids | json_values),
    ):
        if draw(st.integers(0, 3)) == 0 or (key == "execution_id" and with_execution_id):
            body[key] = draw(values)
    if draw(st.integers(0, 9)) == 0:
        body[draw(texts)] = draw(json_values)
    return body


def encode(body: Any) -> bytes:
    """JSON text as Python writes it (NaN and Infinity included: they must be refused, not stored)."""
    return json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")


raw_bodies = (
    st.builds(encode, publish_bodies())
    | st.binary(max_size=64)
    | st.sampled_from(
        [
            b"",
            b"{",
            b"[" * 5000,
            b'{"event": "result", "data": {"x": 1e400}}',
            b'{"event":"result","data":{"x":NaN}}',
            b'{"event":"complete","data":{"report":{"s":"\\ud800"}}}',
            b"\xff\xfe",
            b'"\\u0000"',
            b"1" * 5000,
        ]
    )
)


def check_readable(http: httpx.Client, execution_id: str, seq: int) -> None:
    """The accepted event reads back as strict JSON, as it will in a browser."""
    r = http.get(
        f"/v1/executions/{quote(execution_id, safe='')}/events",
        params={"after": seq - 1, "limit": 1, "token": make_token(execution_id)},
    )
    body = check_answer(r)
    assert r.status_code == 200 and body["events"][0]["seq"] == seq, body


# -- publish ------------------------------------------------------------------------------------


@HTTP
@given(execution_id=execution_ids, body=raw_bodies)
def test_publish_one_never_fails_badly(http: httpx.Client, execution_id: str, body: bytes) -> None:
    """POST .../events with any body: 202/400/409/413/422 in the documented shape; what is accepted reads back."""
    r = http.post(
        f"/internal/v1/executions/{quote(execution_id, safe='')}/events",
        content=body,
        headers={**AUTH, "content-type": "application/json"},
    )
    answer = check_answer(r)
    assert r.status_code in (202, 400, 404, 409, 413, 422), r.text
    if r.status_code == 202:
        assert set(answer) == {"execution_id", "seq", "duplicate"} and answer["seq"] >= 1
        check_readable(http, answer["execution_id"], answer["seq"])


@settings(HTTP, max_examples=100)  # each accepted item is read back: fewer examples, same depth
@given(
    items=st.lists(publish_bodies(with_execution_id=True) | json_values, max_size=6) | json_values, wrap=st.booleans()
)
def test_publish_batch_never_fails_badly(http: httpx.Client, items: Any, wrap: bool) -> None:
    """POST /internal/v1/events with any items: one result per item, each in the documented shape."""
    body = {"events": items} if wrap else items
    r = http.post("/internal/v1/events", content=encode(body), headers={**AUTH, "content-type": "application/json"})
    answer = check_answer(r)
    if r.status_code != 202:
        assert r.status_code in (400, 413, 422), r.text
        return
    results = answer["results"]
    assert isinstance(items, list) and len(results) == len(items)
    for result in results:
        assert result["status"] in (202, 409, 422, 503), result
        if result["status"] == 202:
            assert set(result) == {"execution_id", "seq", "duplicate", "status"}
            check_readable(http, result["execution_id"], result["seq"])
        else:
            assert set(result) - {"execution_id", "status"} <= ERROR_KEYS and "error" in result and "message" in result
            assert result["execution_id"] is None or isinstance(result["execution_id"], str)


@HTTP
@given(
    body=raw_bodies
    | st.builds(
        encode,
        st.fixed_dictionaries(
            {"execution_id": execution_ids | json_values, "sub": texts | json_values},
            optional={"ttl_seconds": st.integers(-10, 10**6) | json_values},
        ),
    )
)
def test_mint_token_never_fails_badly(http: httpx.Client, body: bytes) -> None:
    """POST /internal/v1/tokens with any body: 201 or a documented error."""
    r = http.post("/internal/v1/tokens", content=body, headers={**AUTH, "content-type": "application/json"})
    answer = check_answer(r)
    assert r.status_code in (201, 400, 413, 422), r.text
    if r.status_code == 201:
        assert isinstance(answer["token"], str) and isinstance(answer["expires_at"], int)


@HTTP
@given(
    body=raw_bodies
    | st.builds(
        encode,
        st.fixed_dictionaries(
            {},
            optional={
                "jti": texts | json_values,
                "sub": texts.filter(lambda t: t != "user-1") | json_values,
                "ttl_seconds": st.integers(-10, 10**8) | json_values,
            },
        ),
    )
)
def test_revocation_never_fails_badly(http: httpx.Client, body: bytes) -> None:
    """POST /internal/v1/revocations with any body: 202 echoing what was revoked, or a documented error."""
    if b"user-1" in body:  # the other tests' tokens belong to user-1: keep them valid
        return
    r = http.post("/internal/v1/revocations", content=body, headers={**AUTH, "content-type": "application/json"})
    answer = check_answer(r)
    assert r.status_code in (202, 400, 413, 422), r.text
    if r.status_code == 202:
        assert set(answer) == {"jti", "sub", "ttl_seconds"} and (answer["jti"] or answer["sub"])


@HTTP
@given(
    authorization=st.one_of(
        st.none(),
        texts,
        st.builds("Bearer {}".format, texts),
        st.just(f"Bearer {PUBLISH_KEY}x"),
        st.just(f"Basic {PUBLISH_KEY}"),
        st.builds(lambda e: f"Bearer {make_token(e)}", st.sampled_from(["fz-a", DONE])),
    )
)
def test_internal_routes_refuse_anything_but_the_key(http: httpx.Client, authorization: str | None) -> None:
    """Any Authorization that is not a publisher key: 401 with reason, on every internal route."""
    headers = {"Authorization": authorization} if authorization is not None else {}
    for method, path in (
        ("POST", "/internal/v1/executions/fz-a/events"),
        ("POST", "/internal/v1/events"),
        ("POST", "/internal/v1/tokens"),
        ("POST", "/internal/v1/revocations"),
        ("GET", "/internal/v1/stats"),
    ):
        try:
            r = http.request(method, path, json={"event": "complete"}, headers=headers)
        except (httpx.LocalProtocolError, UnicodeEncodeError):  # a value HTTP cannot carry
            return
        answer = check_answer(r)
        assert r.status_code == 401 and answer["error"] == "unauthorized", (path, r.text)


# -- query values -------------------------------------------------------------------------------

numbers_as_text = st.one_of(
    st.integers(-10, 2**64).map(str),
    finite.map(repr),
    st.floats().map(str),
    st.sampled_from(
        [
            "",
            " 1",
            "1_0",
            "\u0663",
            "0x10",
            "1e3",
            "nan",
            "inf",
            "-0",
            "9007199254740991",
            "9007199254740992",
            "00",
            "+5",
        ]
    ),
    texts,
)


def _query(**values: str | None) -> dict[str, str]:
    return {k: v for k, v in values.items() if v is not None}


@HTTP
@given(after=st.none() | numbers_as_text, wait=st.none() | numbers_as_text, limit=st.none() | numbers_as_text)
def test_poll_query_values_never_fail_badly(
    http: httpx.Client, after: str | None, wait: str | None, limit: str | None
) -> None:
    """GET .../events?after&wait&limit with any values: 200 or 422 naming the field; never a hang on a finished run."""
    started = time.monotonic()
    r = http.get(
        f"/v1/executions/{DONE}/events",
        params={**_query(after=after, wait=wait, limit=limit), "token": make_token(DONE)},
    )
    answer = check_answer(r)
    assert r.status_code in (200, 422), r.text
    if r.status_code == 422:
        assert {f["field"] for f in answer["fields"]} <= {"after", "wait", "limit"}
    else:
        assert answer["latest_seq"] == 3 and answer["terminal"] is True
        for value in (after, limit):  # integers in plain ASCII digits only: not " 7", "1_0" or "\u0663"
            assert not value or (value.isascii() and value.lstrip("-").isdigit()), value
        assert all(e["seq"] > int(after or 0) for e in answer["events"])
        assert time.monotonic() - started < 5  # a finished execution never makes a poll wait


@HTTP
@given(last_seq=st.none() | numbers_as_text, last_event_id=st.none() | numbers_as_text)
def test_stream_cursor_values_never_fail_badly(
    http: httpx.Client, last_seq: str | None, last_event_id: str | None
) -> None:
    """GET .../stream with any last_seq / Last-Event-ID: a stream, 204, or 422 naming the field."""
    params = {**_query(last_seq=last_seq), "token": make_token(DONE)}
    try:
        headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
        r = http.get(f"/v1/executions/{DONE}/stream", params=params, headers=headers)
    except (httpx.LocalProtocolError, UnicodeEncodeError):  # a value HTTP cannot carry: send none
        r = http.get(f"/v1/executions/{DONE}/stream", params=params)
    answer = check_answer(r)
    assert r.status_code in (200, 204, 422), r.text
    if r.status_code == 422:
        assert {f["field"] for f in answer["fields"]} <= {"last_seq", "Last-Event-ID"}
    elif r.status_code == 200:
        for line in r.text.splitlines():
            if line.startswith("data: "):
                strict_json(line[6:])


@HTTP
@given(execution_id=execution_ids)
def test_execution_ids_in_paths_never_fail_badly(http: httpx.Client, execution_id: str) -> None:
    """Any execution id on every public endpoint, with a token for it: an answer in the documented shape."""
    token = make_token(execution_id) if execution_id else make_token("x")
    path = quote(execution_id, safe="")
    for suffix in ("", "/events?after=0&limit=5"):
        check_answer(http.get(f"/v1/executions/{path}{suffix}", headers={"Authorization": f"Bearer {token}"}))


# -- client frames ------------------------------------------------------------------------------

frames = st.one_of(
    st.builds(lambda v: json.dumps(v, allow_nan=True), json_values),
    st.builds(
        lambda t, rest: json.dumps({"type": t, **rest}),
        texts | st.just("ping"),
        st.dictionaries(texts, json_values, max_size=3),
    ),
    st.just('{"type": "ping"}'),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.integers(MAX_FRAME + 1, 3 * MAX_FRAME).map(lambda n: '{"type":"ping","pad":"' + "x" * n + '"}'),
)


def expected_for(frame: str | bytes) -> str:
    """What the protocol promises for one client frame: a reply, or close 1008 / 1009."""
    size = len(frame) if isinstance(frame, bytes) else len(frame.encode("utf-8", "surrogatepass"))
    if size > MAX_FRAME:
        return "1009"
    if isinstance(frame, bytes):
        return "1008"
    try:
        value = ujson.loads(frame)
    except ValueError:
        return "1008"
    return "pong" if isinstance(value, dict) and value.get("type") == "ping" else "error"


def open_socket(live: LiveServer, execution_id: str = "fz-ws", last_seq: str | None = None) -> ClientConnection:
    """A socket on a live execution, past its connected frame."""
    url = f"{live.ws_base}/ws/executions/{execution_id}?token={make_token(execution_id)}"
    if last_seq is not None:
        url += f"&last_seq={quote(last_seq, safe='')}"
    return connect(url, open_timeout=5, max_size=2**20)


@SOCKETS
@given(sent=st.lists(frames, min_size=1, max_size=5))
def test_client_frames_get_their_answer(live: LiveServer, sent: list[str | bytes]) -> None:
    """Each frame gets pong / an error frame (socket stays open) / close 1008 / close 1009; never 1011."""
    sent = [f for f in sent if isinstance(f, bytes) or not any(0xD800 <= ord(c) <= 0xDFFF for c in f)]
    with open_socket(live) as ws:
        assert strict_json(str(ws.recv(timeout=5)))["type"] == "connected"
        for frame in sent:
            expected = expected_for(frame)
            ws.send(frame)
            if expected in ("pong", "error"):
                reply = strict_json(str(ws.recv(timeout=5)))
                assert reply["type"] == expected, (frame, reply)
                if expected == "error":
                    assert reply["error"] == "unknown_message_type" and isinstance(reply["message"], str)
                continue
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)
            assert ws.close_code == int(expected), (frame, ws.close_code)
            return


@SOCKETS
@given(last_seq=numbers_as_text)
def test_last_seq_values_never_fail_badly(live: LiveServer, last_seq: str) -> None:
    """Any last_seq: connected (a non-negative integer) or close 1008 before any frame; never 1011."""
    with open_socket(live, DONE, last_seq) as ws:
        try:
            first = strict_json(str(ws.recv(timeout=5)))
        except ConnectionClosed:
            assert ws.close_code in (1000, 1008), ws.close_code
            return
        assert first["type"] == "connected" and first["resumed"] is (last_seq != "")
        frames_after = []
        with pytest.raises(ConnectionClosed):
            while True:
                frames_after.append(strict_json(str(ws.recv(timeout=5))))
        assert ws.close_code == 1000
        assert [f["seq"] for f in frames_after] == list(range(int(last_seq or 0) + 1, 4))


def test_accepted_numbers_are_finite_json(http: httpx.Client) -> None:
    """Large but finite numbers and astral characters are accepted and read back unchanged."""
    data = {"big": 2**63 - 1, "small": -(2**63), "float": 1.7976931348623157e308, "emoji": "😀\u0000\u202e"}
    r = http.post("/internal/v1/executions/fz-numbers/events", json={"event": "result", "data": data}, headers=AUTH)
    assert r.status_code == 202, r.text
    r = http.get("/v1/executions/fz-numbers/events", params={"token": make_token("fz-numbers")})
    (event,) = strict_json(r.text)["events"]
    assert event["data"] == data and math.isfinite(event["data"]["float"])
