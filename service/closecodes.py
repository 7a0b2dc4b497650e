"""WebSocket close codes of the contract, in one enum.

Application codes are split by range so that a client knows what to do with
a code it has never seen: 4000-4499 reconnect and resume, 4500-4999 stop.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["CloseCode"]


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
    RATE_LIMITED = 4029  # reconnect after a longer back-off
    TOKEN_INVALID = 4500  # do not reconnect
    FORBIDDEN = 4503  # do not reconnect

    @property
    def reconnect(self) -> bool:
        """Whether a client should reconnect after this code."""
        return self in (CloseCode.GOING_AWAY, CloseCode.SERVICE_RESTART) or 4000 <= self < 4500
