"""The HTTP helpers of the edges (service/web/http.py) on real Sanic requests, without a server."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sanic import Request, Sanic
from sanic.compat import Header
from sanic.helpers import has_message_body
from sanic.response import HTTPResponse

from service.errors import BadRequest, ExecutionFinished, ValidationFailed
from service.web.http import (
    bearer_or_query_token,
    bearer_token,
    error_response,
    json_body,
    json_response,
    query_int,
    raw_json_response,
)

_APP = Sanic("test_http")


def request(url: str = "/", body: bytes = b"", **headers: str) -> Request:
    """A Sanic request as the server would build it (headers lower-cased, body read)."""
    req = Request(url.encode(), Header({k.replace("_", "-"): v for k, v in headers.items()}), "1.1", "GET", None, _APP)
    req.body = body
    return req


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc.def", "abc.def"),
        ("bearer   abc  ", "abc"),
        ("BEARER abc", "abc"),
        ("Bearer ", None),
        ("Basic abc", None),
        ("abc", None),
    ],
)
def test_bearer_token_reads_only_the_bearer_scheme(header: str, token: str | None) -> None:
    """Authorization: Bearer <value> gives the value (case-insensitive scheme, trimmed); anything else none."""
    assert bearer_token(request(authorization=header)) == token


def test_bearer_token_without_header_is_none() -> None:
    """No Authorization header: no token."""
    assert bearer_token(request()) is None


def test_subscriber_token_comes_from_the_header_first_then_the_query() -> None:
    """The header wins over ?token=; ?token= is used alone; an empty ?token= is no token."""
    assert bearer_or_query_token(request("/?token=q", authorization="Bearer h")) == "h"
    assert bearer_or_query_token(request("/?token=q")) == "q"
    assert bearer_or_query_token(request("/?token=")) is None
    assert bearer_or_query_token(request("/")) is None


def test_json_body_decodes_an_object() -> None:
    """A JSON body is decoded as it is."""
    assert json_body(request(body=b'{"event": "progress", "data": {"n": [1, 2.5, "x"]}}')) == {
        "event": "progress",
        "data": {"n": [1, 2.5, "x"]},
    }


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b'{"a": NaN}', "JSON"),
        (b'{"a": Infinity}', "JSON"),
        (b'{"a": 1e400}', "JSON"),
        (b'{"a": "\\ud800"}', "JSON"),
    ],
)
def test_json_body_refuses_what_json_readers_cannot_take(body: bytes, words: str) -> None:
    """Empty, malformed, NaN/Infinity, overflowing numbers and unpaired surrogates are a 400 that says so."""
    with pytest.raises(BadRequest) as exc:
        json_body(request(body=body))
    assert exc.value.status == 400 and words in exc.value.message


def test_json_body_not_strict_leaves_value_checks_to_the_caller() -> None:
    """strict=False decodes NaN (for callers that refuse it while encoding the event themselves)."""
    value = json_body(request(body=b'{"a": NaN}'), strict=False)
    assert value["a"] != value["a"]  # NaN


@pytest.mark.parametrize(("raw", "expected"), [("", 5), ("0", 0), ("7", 7), ("10", 10)])
def test_query_int_accepts_plain_integers_in_range(raw: str, expected: int) -> None:
    """Missing or empty gives the default; plain ASCII digits within the range are taken."""
    assert query_int(request(f"/?n={raw}"), "n", 5, 0, 10) == expected
    assert query_int(request("/"), "n", 5, 0, 10) == 5


@pytest.mark.parametrize("raw", ["11", "-1", " 7", "7 ", "1_0", "\u0663", "0x1", "1.0", "99999999999999999999999"])
def test_query_int_refuses_anything_else_naming_the_field(raw: str) -> None:
    """Out of range, spaces, underscores, non-ASCII digits, hex, decimals and huge numbers: 422 naming the field."""
    with pytest.raises(ValidationFailed) as exc:
        query_int(_with_query(f"n={raw}"), "n", None, 0, 10)
    assert exc.value.status == 422 and exc.value.fields == [
        {"field": "n", "message": "must be an integer from 0 to 10"}
    ]


def _with_query(query: str) -> Request:
    """A request whose query string is ``query`` percent-encoded as a browser would send it."""
    from urllib.parse import quote

    return request("/?" + quote(query, safe="=&"))


def test_json_response_is_json_with_the_status_and_headers() -> None:
    """json_response encodes the body, sets application/json, the status and extra headers."""
    response = json_response({"ok": True, "text": "进度"}, status=202, headers={"x-a": "1"})
    assert response.status == 202 and response.content_type == "application/json"
    assert response.headers["x-a"] == "1"
    assert json.loads(response.body or b"") == {"ok": True, "text": "进度"}


def test_json_response_escapes_an_unpaired_surrogate_instead_of_failing() -> None:
    """A lone surrogate echoed from a request (a field name) is escaped, never a 500."""
    response = json_response({"fields": [{"field": "\ud800"}]})
    assert b"\\ud800" in (response.body or b"")
    assert json.loads(response.body or b"") == {"fields": [{"field": "\ud800"}]}


def test_raw_json_response_sends_the_text_as_is() -> None:
    """An already encoded body is sent unchanged as JSON."""
    response = raw_json_response('{"a":1}', status=201)
    assert (response.status, response.content_type, response.body) == (201, "application/json", b'{"a":1}')


def test_repeated_response_headers_keep_their_lines_and_order() -> None:
    """Header lines encoded name by name and value by value still pair up as Sanic's do (repeats, ints)."""
    headers = Header()
    for name, value in (("set-cookie", "a=1"), ("x-n", 5), ("set-cookie", "b=2")):
        headers.add(name, value)
    ours = json_response({}, headers=Header(headers))
    sanics = HTTPResponse(ours.body, headers=Header(headers), content_type="application/json")
    assert list(ours.processed_headers) == list(sanics.processed_headers)
    assert [name for name, _ in ours.processed_headers].count(b"set-cookie") == 2


def test_error_response_carries_the_error_status_and_body() -> None:
    """A relay error becomes its status and its JSON error body."""
    response = error_response(ExecutionFinished(), headers={"x-b": "2"})
    body: dict[str, Any] = json.loads(response.body or b"")
    assert response.status == 409 and response.headers["x-b"] == "2"
    assert body == {"error": "execution_finished", "message": ExecutionFinished().message}


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"x-request-id": "abc0001", "retry-after": 3},
        {"x-evil": "a\r\nSet-Cookie: x=1\x00", "x\r\nname": "v"},
        {"x-text": "caf\u00e9 \u4e2d\r\u6587", "x-raw": "\udcff\n\udc80"},
    ],
)
def test_response_header_lines_are_what_sanic_would_send(extra: dict[str, Any]) -> None:
    """The relay's responses encode their header lines byte for byte as Sanic does, CR, LF and NUL stripped."""
    ours = json_response({"ok": True}, status=202, headers=dict(extra))
    sanics = HTTPResponse(ours.body, status=202, headers=dict(extra), content_type="application/json")
    for response in (ours, sanics):
        response.headers["content-length"] = 11
        response.headers["connection"] = "keep-alive"
    assert list(ours.processed_headers) == list(sanics.processed_headers)
    assert all(b"\r" not in v and b"\n" not in v and b"\x00" not in v for _, v in ours.processed_headers)


@pytest.mark.parametrize("status", [100, 101, 199, 200, 202, 204, 299, 304, 404, 500])
def test_response_header_lines_name_a_content_type_exactly_when_sanic_would(status: int) -> None:
    """A status without a body (1xx, 204, 304) gets no content-type line, as Sanic's own responses."""
    ours = json_response(None, status=status)
    sanics = HTTPResponse(ours.body, status=status, content_type="application/json")
    assert list(ours.processed_headers) == list(sanics.processed_headers)
    assert (b"content-type" in dict(ours.processed_headers)) is has_message_body(status)
