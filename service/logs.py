"""Structured logging: one JSON object per line, tokens never written.

Sanic's own access log prints the request URL, query string included; the
relay turns it off and writes its own line with the token redacted.
"""

from __future__ import annotations

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

_TOKEN_RE = re.compile(r"((?:^|[?&;])(?:token|access_token)=)[^&;#\s]*", re.IGNORECASE)
_BEARER_RE = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")


def redact(text: str) -> str:
    """Replace tokens in ``text`` (query parameters, bearer values, JWT-shaped strings)."""
    text = _TOKEN_RE.sub(r"\1[redacted]", text)
    text = _BEARER_RE.sub(r"\1[redacted]", text)
    return _JWT_RE.sub("[redacted-jwt]", text)


class JsonFormatter(logging.Formatter):
    """Formats records as one JSON line, with extra fields from ``extra={"fields": {...}}``."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as JSON, redacting anything token-shaped."""
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        rid = request_id.get()
        if rid:
            entry["request_id"] = rid
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return redact(dumps(entry)) if record.exc_info else dumps(entry)


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
