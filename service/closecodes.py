"""Close codes of the contract and the one table of disconnects.

:class:`CloseCode` names the codes. :class:`Disconnect` is one way a stream
ends, as a value: its code, its reason (the close frame's text, and SSE's
``close`` message) and whether the client should reconnect. Every transport
that ends a stream picks one from :data:`DISCONNECTS`; nothing spells a reason
or decides "reconnect?" anywhere else. The same table is written to
``clients/js/test/support/disconnects.json`` (``python -m service.closecodes``
prints it) for the JavaScript client's tests; a Python test fails when the
two drift apart.

Application codes are split by range so that a client knows what to do with
a code it has never seen: 4000-4499 reconnect and resume, 4500-4999 stop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any

__all__ = [
    "BAD_CURSOR",
    "BINARY_FRAME",
    "BROKER_UNAVAILABLE",
    "CONNECTION_LIMIT",
    "DISCONNECTS",
    "FINISHED",
    "FRAME_RATE",
    "GOING_AWAY",
    "INTERNAL_ERROR",
    "KEEPALIVE_TIMEOUT",
    "MALFORMED_JSON",
    "MESSAGE_TOO_BIG",
    "ORIGIN_FORBIDDEN",
    "OTHER_EXECUTION",
    "SEND_FAILED",
    "SERVER_RESTARTING",
    "SLOW_CONSUMER",
    "STREAM_RESET",
    "TOKEN_EXPIRED",
    "TOKEN_INVALID",
    "TOKEN_REVOKED",
    "CloseCode",
    "Disconnect",
    "disconnect_table",
]

#: Application codes a client reconnects after, and those it stops at (inclusive ranges).
RECONNECT_RANGE = (4000, 4499)
STOP_RANGE = (4500, 4999)


class CloseCode(IntEnum):
    """Close codes the server sends."""

    NORMAL = 1000  # stream finished: terminal event sent
    GOING_AWAY = 1001
    BAD_MESSAGE = 1008  # client sent something we cannot accept
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TOKEN_EXPIRED = 4001  # reconnect with a fresh token
    SLOW_CONSUMER = 4008  # reconnect and resume
    STREAM_RESET = 4009  # the stream's history was lost: reconnect into the reset path
    RATE_LIMITED = 4029  # reconnect after a longer back-off
    TOKEN_INVALID = 4500  # do not reconnect
    FORBIDDEN = 4503  # do not reconnect


@dataclass(frozen=True, slots=True)
class Disconnect:
    """One way a stream ends: close ``code``, ``reason`` text, and whether the client should reconnect."""

    name: str
    code: CloseCode
    reason: str
    reconnect: bool

    def because(self, reason: str) -> Disconnect:
        """The same disconnect with a more specific reason (a close frame's reason is at most 123 bytes)."""
        return replace(self, reason=reason.encode()[:123].decode(errors="ignore"))


def _table(*rows: tuple[str, CloseCode, str, bool]) -> dict[str, Disconnect]:
    return {name: Disconnect(name, code, reason, reconnect) for name, code, reason, reconnect in rows}


DISCONNECTS = _table(
    ("FINISHED", CloseCode.NORMAL, "execution finished", False),
    ("GOING_AWAY", CloseCode.GOING_AWAY, "going away", True),
    ("BAD_CURSOR", CloseCode.BAD_MESSAGE, "cursor not understood", False),
    ("BINARY_FRAME", CloseCode.BAD_MESSAGE, "binary frames are not accepted", False),
    ("MALFORMED_JSON", CloseCode.BAD_MESSAGE, "malformed JSON", False),
    ("MESSAGE_TOO_BIG", CloseCode.MESSAGE_TOO_BIG, "message too big", False),
    ("BROKER_UNAVAILABLE", CloseCode.INTERNAL_ERROR, "broker unavailable", True),
    ("INTERNAL_ERROR", CloseCode.INTERNAL_ERROR, "internal error", True),
    ("SEND_FAILED", CloseCode.INTERNAL_ERROR, "send failed", True),
    ("KEEPALIVE_TIMEOUT", CloseCode.INTERNAL_ERROR, "keepalive ping timeout", True),
    ("SERVER_RESTARTING", CloseCode.SERVICE_RESTART, "server restarting", True),
    ("TOKEN_EXPIRED", CloseCode.TOKEN_EXPIRED, "token expired", True),
    ("SLOW_CONSUMER", CloseCode.SLOW_CONSUMER, "slow consumer", True),
    ("STREAM_RESET", CloseCode.STREAM_RESET, "stream reset", True),
    ("CONNECTION_LIMIT", CloseCode.RATE_LIMITED, "connection limit", True),
    ("FRAME_RATE", CloseCode.RATE_LIMITED, "too many frames", True),
    ("TOKEN_INVALID", CloseCode.TOKEN_INVALID, "token invalid", False),
    ("TOKEN_REVOKED", CloseCode.TOKEN_INVALID, "token revoked", False),
    ("ORIGIN_FORBIDDEN", CloseCode.FORBIDDEN, "origin not allowed", False),
    ("OTHER_EXECUTION", CloseCode.FORBIDDEN, "token is for another execution", False),
)

FINISHED = DISCONNECTS["FINISHED"]
GOING_AWAY = DISCONNECTS["GOING_AWAY"]
BAD_CURSOR = DISCONNECTS["BAD_CURSOR"]
BINARY_FRAME = DISCONNECTS["BINARY_FRAME"]
MALFORMED_JSON = DISCONNECTS["MALFORMED_JSON"]
MESSAGE_TOO_BIG = DISCONNECTS["MESSAGE_TOO_BIG"]  # sent by the websockets library itself; listed for clients
BROKER_UNAVAILABLE = DISCONNECTS["BROKER_UNAVAILABLE"]
INTERNAL_ERROR = DISCONNECTS["INTERNAL_ERROR"]
SEND_FAILED = DISCONNECTS["SEND_FAILED"]
KEEPALIVE_TIMEOUT = DISCONNECTS["KEEPALIVE_TIMEOUT"]
SERVER_RESTARTING = DISCONNECTS["SERVER_RESTARTING"]
TOKEN_EXPIRED = DISCONNECTS["TOKEN_EXPIRED"]
SLOW_CONSUMER = DISCONNECTS["SLOW_CONSUMER"]
STREAM_RESET = DISCONNECTS["STREAM_RESET"]
CONNECTION_LIMIT = DISCONNECTS["CONNECTION_LIMIT"]
FRAME_RATE = DISCONNECTS["FRAME_RATE"]
TOKEN_INVALID = DISCONNECTS["TOKEN_INVALID"]
TOKEN_REVOKED = DISCONNECTS["TOKEN_REVOKED"]
ORIGIN_FORBIDDEN = DISCONNECTS["ORIGIN_FORBIDDEN"]
OTHER_EXECUTION = DISCONNECTS["OTHER_EXECUTION"]


def disconnect_table() -> dict[str, Any]:
    """The table as JSON-ready data: the ranges and every disconnect (what the JS tests read)."""
    return {
        "ranges": {"reconnect": list(RECONNECT_RANGE), "stop": list(STOP_RANGE)},
        "disconnects": [
            {"name": d.name, "code": int(d.code), "reason": d.reason, "reconnect": d.reconnect}
            for d in DISCONNECTS.values()
        ],
    }


if __name__ == "__main__":
    print(json.dumps(disconnect_table(), indent=2))
