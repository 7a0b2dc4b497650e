"""The event model: validate a publish body once, encode it once.

A publisher sends ``{"event", "data", "timestamp"?, "idempotency_key"?}``.
:func:`parse_draft` checks it against the contract and returns an
:class:`EventDraft`, which already holds the encoded JSON around the one
value only the broker can know, the ``seq``: the frame is
``draft.head + str(seq) + draft.tail``. Every subscriber, every replay and
every poll then hands out that same text; nothing is encoded twice.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeGuard

import ujson

from .errors import BadRequest, FieldError, ValidationFailed

__all__ = [
    "EVENT_TYPES",
    "EXECUTION_ID_RE",
    "Event",
    "EventDraft",
    "decode_frame",
    "dumps",
    "now_iso",
    "parse_draft",
    "valid_execution_id",
]

EVENT_TYPES = ("progress", "result", "complete", "error")
EXECUTION_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_execution_id_match = EXECUTION_ID_RE.fullmatch  # C, where valid_execution_id is a Python call
MAX_IDEMPOTENCY_KEY = 200
MAX_STAGE = 200
_TOP_LEVEL = frozenset(("event", "data", "timestamp", "idempotency_key", "execution_id"))


#: Why a body that ujson reads but cannot write back as strict UTF-8 JSON is refused (400).
UNREADABLE_JSON = (
    "holds NaN, Infinity, a number too large for a double or an unpaired surrogate, which JSON readers cannot take"
)


def dumps(obj: Any) -> str:
    """Encode JSON compactly, keeping non-ASCII text (Chinese stays 3 bytes a character)."""
    return ujson.dumps(obj, ensure_ascii=False, escape_forward_slashes=False)


_second: list[Any] = [-1, ""]  # the last whole second formatted, reused within that second
_milli: list[Any] = [-1, ""]  # the last millisecond formatted, reused within it (a batch's events)


def now_iso() -> str:
    """The current UTC time as ``2026-02-27T21:30:00.123Z`` (cheap: formats once a millisecond)."""
    milli = int(time.time() * 1000)
    if milli != _milli[0]:
        second, rest = divmod(milli, 1000)
        if second != _second[0]:
            _second[0], _second[1] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _milli[0], _milli[1] = milli, f"{_second[1]}.{rest:03d}Z"
    text: str = _milli[1]
    return text


def valid_execution_id(execution_id: str) -> bool:
    """Whether ``execution_id`` has the accepted format (1-128 of ``A-Za-z0-9._:-``)."""
    return EXECUTION_ID_RE.fullmatch(execution_id) is not None


@dataclass(slots=True)  # not frozen (a frozen __init__ costs 4x, once per event); never changed once built
class Event:
    """An accepted event: its seq, type and the encoded frame sent to clients."""

    seq: int
    event: str
    terminal: bool
    frame: str
    # Unix time the event was accepted (0: unknown, e.g. received through Redis pub/sub,
    # whose message does not carry it); only for the accept-to-socket latency metric.
    accepted_at: float = field(default=0.0, compare=False, repr=False)
    # The stream epoch the seq belongs to (see brokers.base): a seq means nothing without it.
    epoch: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Decode the frame (for folding state; not on the delivery path)."""
        return decode_frame(self.frame)


@dataclass(slots=True)  # not frozen: built once per publish, and a frozen __init__ costs 3x as much
class EventDraft:
    """A validated event waiting for its seq."""

    execution_id: str
    event: str
    terminal: bool
    head: str
    tail: str
    idempotency_key: str | None = None

    def with_seq(self, seq: int, epoch: str) -> Event:
        """The accepted event once the broker assigned ``seq`` in the stream's ``epoch``."""
        return Event(seq, self.event, self.terminal, f"{self.head}{seq}{self.tail}", time.time(), epoch)


def decode_frame(frame: str) -> dict[str, Any]:
    """Decode an encoded event frame."""
    value: dict[str, Any] = ujson.loads(frame)
    return value


def _encodable(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (no unpaired surrogate)."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_data(event: str, data: Any, errors: list[FieldError], prefix: str) -> bool:
    """Check ``data`` for ``event`` (field names after ``prefix``); return whether the event is terminal."""
    if not isinstance(data, dict):
        errors.append({"field": f"{prefix}data", "message": "must be a JSON object"})
        return event == "complete"
    if event == "progress":
        _check_progress(data, errors, prefix)
        return False
    if event == "complete":
        if "report" in data and not isinstance(data["report"], dict):
            errors.append({"field": f"{prefix}data.report", "message": "must be a JSON object"})
        return True
    if event == "error":
        return _check_error(data, errors, prefix)
    return False  # result: any JSON object


def _check_progress(data: dict[str, Any], errors: list[FieldError], prefix: str) -> None:
    progress = data.get("progress")
    stage = data.get("stage")
    # The usual progress event passes this one expression (exact types: ujson makes no
    # subclasses, and bool, an int subclass, must fail); anything else is checked below,
    # field by field, to name each problem. Half the bytecodes of the checks alone.
    if (
        type(progress) is int
        and 0 <= progress <= 100
        and type(stage) is str
        and 0 < len(stage) <= MAX_STAGE
        and type(data.get("status", "")) is str
        and type(data.get("status_text", "")) is str
    ):
        return
    if not _is_int(progress) or not 0 <= progress <= 100:
        errors.append({"field": f"{prefix}data.progress", "message": "required, an integer from 0 to 100"})
    if not isinstance(stage, str) or not stage or len(stage) > MAX_STAGE:
        errors.append({"field": f"{prefix}data.stage", "message": f"required, a string of 1 to {MAX_STAGE} characters"})
    for name in ("status", "status_text"):
        if name in data and not isinstance(data[name], str):
            errors.append({"field": f"{prefix}data.{name}", "message": "must be a string"})


def _check_error(data: dict[str, Any], errors: list[FieldError], prefix: str) -> bool:
    """Check an error event's data; return whether it is terminal (not marked recoverable)."""
    if not isinstance(data.get("error"), str) or not data["error"]:
        errors.append({"field": f"{prefix}data.error", "message": "required, a non-empty string"})
    if "error_type" in data and not isinstance(data["error_type"], str):
        errors.append({"field": f"{prefix}data.error_type", "message": "must be a string"})
    if "error_details" in data and not isinstance(data["error_details"], dict):
        errors.append({"field": f"{prefix}data.error_details", "message": "must be a JSON object"})
    recoverable = data.get("recoverable", False)
    if not isinstance(recoverable, bool):
        errors.append({"field": f"{prefix}data.recoverable", "message": "must be true or false"})
    return recoverable is not True


def _check_timestamp(value: Any, errors: list[FieldError], prefix: str) -> str:
    if value is None:
        return now_iso()
    if isinstance(value, str) and len(value) <= 64:
        try:
            datetime.fromisoformat(value)
            return value
        except ValueError:
            pass
    errors.append({"field": f"{prefix}timestamp", "message": "must be an ISO 8601 date-time string"})
    return ""


def _tail(timestamp: str, event: str, data: Any, prefix: str) -> str:
    """The frame after the seq, encoded strictly, or :class:`BadRequest`.

    Strict here, where the frame is encoded once: nothing a browser's JSON.parse
    refuses, and nothing that is not UTF-8, reaches a subscriber.
    """
    try:
        encoded = ujson.dumps(data, ensure_ascii=False, escape_forward_slashes=False, allow_nan=False)
        stamp = f'"{timestamp}"' if timestamp is _milli[1] else dumps(timestamp)  # ours needs no escaping
        tail = f',"timestamp":{stamp},"event":"{event}","data":{encoded}}}'
        if tail.isascii() or _encodable(tail):  # most frames are ASCII: no call
            return tail
    except OverflowError:
        pass
    raise BadRequest(f"{prefix.rstrip('.') or 'the event'} {UNREADABLE_JSON}")


def parse_draft(execution_id: str, body: Any, prefix: str = "") -> EventDraft:
    """Validate one publish body for ``execution_id``; raise :class:`ValidationFailed`.

    ``prefix`` is put before field names (``events[3].``) for batch items.
    """
    errors: list[FieldError] = []
    if _execution_id_match(execution_id) is None:  # valid_execution_id
        errors.append({"field": f"{prefix}execution_id", "message": "must be 1-128 characters of A-Za-z0-9._:-"})
    if not isinstance(body, dict):
        raise ValidationFailed([{"field": prefix.rstrip(".") or "body", "message": "must be a JSON object"}])
    if not _TOP_LEVEL.issuperset(body):  # no set built for the usual body
        errors += [{"field": f"{prefix}{key}", "message": "unknown field"} for key in body.keys() - _TOP_LEVEL]
    if "execution_id" in body and body["execution_id"] != execution_id:
        errors.append({"field": f"{prefix}execution_id", "message": "does not match the execution in the URL"})
    event = body.get("event")
    terminal = False
    data = body.get("data")
    if event == "progress" and type(data) is dict:  # the usual event: _check_data's first branch, one call less
        _check_progress(data, errors, prefix)
    elif event not in EVENT_TYPES:
        errors.append({"field": f"{prefix}event", "message": f"required, one of {', '.join(EVENT_TYPES)}"})
    else:
        data = body.get("data", {} if event == "complete" else None)
        terminal = _check_data(event, data, errors, prefix)
    timestamp = body.get("timestamp")
    timestamp = now_iso() if timestamp is None else _check_timestamp(timestamp, errors, prefix)
    key = body.get("idempotency_key")
    if key is not None and (
        not isinstance(key, str) or not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not _encodable(key)
    ):
        errors.append(
            {
                "field": f"{prefix}idempotency_key",
                "message": f"must be a string of 1 to {MAX_IDEMPOTENCY_KEY} characters",
            }
        )
    if errors:
        raise ValidationFailed(errors)
    assert isinstance(event, str)  # with no errors, data is body.get("data", {}) too
    # A valid execution id (checked above) is plain ASCII that JSON needs no escape for.
    head = f'{{"type":"diagnosis_update","execution_id":"{execution_id}","seq":'
    tail = _tail(timestamp, event, data, prefix)
    return EventDraft(execution_id, event, terminal, head, tail, key)
