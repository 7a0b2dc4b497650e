"""Structured logging: one JSON object per line, tokens never written.

Sanic's own access log prints the request URL, query string included; the
relay turns it off and writes its own line with the token redacted.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from contextvars import ContextVar
from typing import Any

from .events import dumps

__all__ = ["JsonFormatter", "redact", "request_id", "setup_logging"]

#: The id of the request being handled (set by the app for each request; tasks a
#: request starts, such as a socket's writer, inherit it). Added to every line.
request_id: ContextVar[str] = ContextVar("request_id", default="")

# Redaction runs on each text before it is serialized, never on a JSON line: a pattern
# that ran over a serialized line could eat its closing quote and brace. The value
# patterns stop at quotes and backslashes too, so even then they end inside a string.
_TOKEN_RE = re.compile(r"((?:^|[?&;])(?:token|access_token)=)[^&;#\s\"'\\]*", re.IGNORECASE)
_BEARER_RE = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")


_SUSPECT_RE = re.compile(r"token|bearer|eyJ", re.IGNORECASE)


def redact(text: str) -> str:
    """Replace tokens in ``text`` (query parameters, bearer values, JWT-shaped strings)."""
    if not _SUSPECT_RE.search(text):  # most texts: one scan instead of three substitutions
        return text
    text = _TOKEN_RE.sub(r"\1[redacted]", text)
    text = _BEARER_RE.sub(r"\1[redacted]", text)
    return _JWT_RE.sub("[redacted-jwt]", text)


def _redacted(value: Any) -> Any:
    """``value`` with every string in it redacted (strings, and lists, tuples and dicts of them)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(v) for v in value]
    return value


def _serialize(entry: dict[str, Any]) -> str:
    """One line of JSON, whatever the entry holds (bytes a client sent included)."""
    try:
        line = dumps(entry)
        line.encode()  # a lone surrogate (bytes Sanic decoded with surrogateescape) cannot be written as UTF-8
        return line
    except (TypeError, ValueError, OverflowError):  # UnicodeEncodeError is a ValueError
        return json.dumps(entry, ensure_ascii=True, default=repr, separators=(",", ":"))


class JsonFormatter(logging.Formatter):
    """Formats records as one JSON line, with extra fields from ``extra={"fields": {...}}``."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as one JSON object on one line, redacting anything token-shaped first."""
        try:
            message = record.getMessage()
        except Exception:  # a bad %-format from a library: keep the template
            message = str(record.msg)
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(message),
        }
        rid = request_id.get()
        if rid:
            entry["request_id"] = rid
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                entry[str(key)] = _redacted(value)
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return _serialize(entry)


def setup_logging(level: str = "INFO") -> None:
    """Send every logger (Sanic's included) to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings become JSON lines too, not bare text on stderr
    for name in ("sanic.root", "sanic.error", "sanic.access", "sanic.server", "sanic.websockets"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("sanic.access").setLevel(logging.WARNING)
