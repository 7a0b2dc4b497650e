"""Where a subscriber resumes: one parser for every transport.

A cursor is the last event a client has: its ``seq`` and, since contract v2,
the stream ``epoch`` that seq belongs to. The socket (``?last_seq=N&epoch=E``),
polling (``?after=N&epoch=E``) and SSE (``Last-Event-ID: <epoch>:<seq>``, a
plain v1 ``<seq>``, or ``?last_seq=N&epoch=E``) all read it here, so the same
text gets the same verdict everywhere. What is accepted (docs/protocol.md,
"Cursors"):

- a seq: 1 to 16 ASCII digits (leading zeros allowed), at most
  :data:`MAX_SEQ` (2^53 - 1, JavaScript's largest safe integer). No sign,
  space, ``_``, ``.`` or other digits. Empty or absent: no cursor (all
  retained events).
- an epoch: 1 to 32 of ``A-Za-z0-9_-``. Empty or absent: a v1 cursor (the
  seq is trusted whatever the stream's epoch).
- ``Last-Event-ID``: ``<epoch>:<seq>`` or ``<seq>``; spaces and tabs around
  the whole value are HTTP's, not the value's, and are ignored. When present
  and not empty it wins over the query (EventSource sends it on reconnect).

Anything else raises :class:`CursorError`, which names the field; the HTTP
edges answer it with 422, the socket closes with 1008. A refused cursor never
reaches the broker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ValidationFailed

__all__ = ["MAX_SEQ", "Cursor", "CursorError", "parse_cursor", "parse_last_event_id"]

#: The largest seq a client may name: JavaScript's largest safe integer.
MAX_SEQ = 2**53 - 1

_SEQ = re.compile(r"[0-9]{1,16}")
_EPOCH = re.compile(r"[A-Za-z0-9_-]{1,32}")
_SEQ_MESSAGE = f"must be a seq: an integer from 0 to {MAX_SEQ} in plain ASCII digits"
_EPOCH_MESSAGE = "must be a stream epoch: 1 to 32 of A-Za-z0-9_-"
_LAST_EVENT_ID_MESSAGE = "must be <epoch>:<seq> or <seq>, as sent in the stream's message ids"


class CursorError(ValidationFailed):
    """A cursor that is not understood; ``field`` names the parameter (``last_seq``, ``epoch``, ...)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__([{"field": field, "message": message}])
        self.field = field
        self.detail = f"{field} {message}"


@dataclass(frozen=True, slots=True)
class Cursor:
    """The last event a client has: ``seq`` (0: none) in ``epoch`` (None: a v1 cursor)."""

    seq: int = 0
    epoch: str | None = None
    given: bool = False  # whether the client named a position at all (``resumed`` in ``connected``)


#: No cursor: everything retained.
START = Cursor()


def _seq(raw: str, field: str) -> int:
    if _SEQ.fullmatch(raw) is None or int(raw) > MAX_SEQ:
        raise CursorError(field, _SEQ_MESSAGE)
    return int(raw)


def _epoch(raw: str | None, field: str) -> str | None:
    if not raw:
        return None
    if _EPOCH.fullmatch(raw) is None:
        raise CursorError(field, _EPOCH_MESSAGE)
    return raw


def parse_cursor(seq: str | None, epoch: str | None, seq_field: str = "last_seq") -> Cursor:
    """The cursor from a query's seq (``last_seq`` or ``after``) and ``epoch`` values; :class:`CursorError` if bad."""
    parsed_epoch = _epoch(epoch, "epoch")
    if not seq:
        return Cursor(0, parsed_epoch, parsed_epoch is not None)
    return Cursor(_seq(seq, seq_field), parsed_epoch, True)


def parse_last_event_id(value: str | None) -> Cursor | None:
    """The cursor in a ``Last-Event-ID`` header (None when absent or empty); :class:`CursorError` if bad."""
    if value is None:
        return None
    value = value.strip(" \t")
    if not value:
        return None
    epoch, colon, seq = value.rpartition(":")
    if colon and not epoch:
        raise CursorError("Last-Event-ID", _LAST_EVENT_ID_MESSAGE)
    try:
        return Cursor(_seq(seq, "Last-Event-ID"), _epoch(epoch, "Last-Event-ID") if colon else None, True)
    except CursorError:
        raise CursorError("Last-Event-ID", _LAST_EVENT_ID_MESSAGE) from None
