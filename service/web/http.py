"""Small helpers shared by the HTTP and WebSocket edges."""

from __future__ import annotations

import re
from itertools import chain
from operator import methodcaller
from typing import Any

import ujson
from sanic import Request
from sanic.response import HTTPResponse

from ..errors import BadRequest, RelayError, ValidationFailed
from ..events import UNREADABLE_JSON, dumps

__all__ = ["bearer_or_query_token", "bearer_token", "json_body", "json_response", "query_int"]


class JSONResponse(HTTPResponse):
    """Sanic's response, with its header lines encoded in one pass.

    Sanic strips CR, LF and NUL from every header name and value with
    ``str.translate``, one call each; here the encoded lines are checked for
    them once, and only a response holding one is stripped (the same bytes on
    the wire either way: UTF-8 and ``surrogateescape`` never produce those
    bytes from other characters).
    """

    __slots__ = ()

    @property
    def processed_headers(self) -> list[tuple[bytes, bytes]]:  # type: ignore[override]
        """The header lines as Sanic sends them: ``(name, value)`` bytes, CR, LF and NUL removed."""
        headers = self.headers
        if self.status not in _WITHOUT_BODY:  # Sanic's has_message_body(), without a call
            headers.setdefault("content-type", self.content_type)
        # Names and values encoded by map() over C callables, not a comprehension: no Python
        # bytecode per header (~20 each; 4 headers on a publish's answer). str(value) is the
        # f"{value}" Sanic writes (content-length is an int).
        values = map(_encode_value, map(str, headers.values()))
        lines = list(zip(map(_encode_name, headers.keys()), values, strict=True))
        # One pass in C over every line: a regex search would cost ~30 instructions a byte, and
        # ``b"\r" in text`` first tries the operand as an int and formats a TypeError it discards.
        text = b"".join(chain.from_iterable(lines))
        if len(text.translate(None, _CR_LF_NUL)) != len(text):  # rare: strip them, as Sanic does
            lines = [(name.translate(None, _CR_LF_NUL), value.translate(None, _CR_LF_NUL)) for name, value in lines]
        return lines


_CR_LF_NUL = b"\r\n\x00"
#: The statuses whose responses carry no body (1xx, 204, 304), as sanic.helpers.has_message_body says.
_WITHOUT_BODY = frozenset((*range(100, 200), 204, 304))
_encode_name = methodcaller("encode", "ascii")
_encode_value = methodcaller("encode", "utf-8", "surrogateescape")


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> HTTPResponse:
    """A JSON response encoded with the relay's encoder."""
    try:
        data = dumps(body).encode()
    except UnicodeEncodeError:  # an unpaired surrogate echoed from a request (a field name): escape it
        data = ujson.dumps(body, ensure_ascii=True, escape_forward_slashes=False).encode()
    return JSONResponse(data, status=status, headers=headers, content_type="application/json")


def raw_json_response(text: str, status: int = 200) -> HTTPResponse:
    """A response whose JSON body is already encoded."""
    return JSONResponse(text, status=status, content_type="application/json")


def error_response(error: RelayError, headers: dict[str, str] | None = None) -> HTTPResponse:
    """The JSON response for a relay error."""
    return json_response(error.body(), status=error.status, headers=headers)


def bearer_token(request: Request) -> str | None:
    """The value of ``Authorization: Bearer <value>``, if any."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    return None


def bearer_or_query_token(request: Request) -> str | None:
    """A subscriber token from the Authorization header or ``?token=``."""
    return bearer_token(request) or request.args.get("token") or None


_INTEGER = re.compile(r"-?[0-9]{1,20}")

# ujson reads NaN, Infinity, numbers beyond a double (as inf) and unpaired UTF-16
# surrogate escapes, none of which can be written back as JSON text (or UTF-8): an
# event holding one would reach every reader as a broken frame, or fail to encode
# (500). Only a body that could hold one is checked, so most are decoded once.
_SUSPECT = re.compile(rb"NaN|Infinity|\\u[dD][89a-fA-F]|[0-9]{17}|[eE][+]?[0-9]{3}")


def json_body(request: Request, *, strict: bool = True) -> Any:
    """The request body decoded as JSON, or :class:`BadRequest`.

    ``strict=False`` skips the check for values JSON readers cannot take; only for
    callers that encode every value they keep with :func:`~service.events.parse_draft`,
    which refuses them itself.
    """
    body = request.body
    if not body:
        raise BadRequest("request body is empty; a JSON object is expected")
    try:
        value = ujson.loads(body)
    except (ValueError, OverflowError):
        raise BadRequest() from None
    if strict and _SUSPECT.search(body):
        try:
            ujson.dumps(value, ensure_ascii=False, allow_nan=False).encode()
        except (OverflowError, ValueError):  # UnicodeEncodeError is a ValueError
            raise BadRequest(f"request body {UNREADABLE_JSON}") from None
    return value


def query_int(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    """An integer query parameter within ``low..high``, or :class:`ValidationFailed`."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    # int() would also take " 7", "1_0" and non-ASCII digits such as "\u0663".
    value = int(raw) if _INTEGER.fullmatch(raw) else low - 1
    if not low <= value <= high:
        raise ValidationFailed([{"field": name, "message": f"must be an integer from {low} to {high}"}])
    return value
