"""Every error the relay reports to a client, in one place.

Hierarchy::

    RelayError                  status, code, message -> JSON error body
    ├── BadRequest              400  body is not JSON / query not understood
    ├── Unauthorized            401  missing or invalid credentials
    ├── Forbidden               403  valid credentials, wrong execution
    ├── NotFound                404  unknown or expired execution
    ├── PayloadTooLarge         413  body over RELAY_MAX_BODY_SIZE
    ├── ValidationFailed        422  fields listed in ``fields``
    ├── ExecutionFinished       409  publish after a terminal event
    ├── RateLimited             429  a limit was exceeded
    └── BrokerUnavailable       503  the broker cannot be reached

The body shape is always ``{"error": code, "message": text}`` plus
``"fields": [{"field", "message"}]`` for 422. Nothing here imports Sanic.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BadRequest",
    "BrokerUnavailable",
    "ExecutionFinished",
    "FieldError",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RelayError",
    "Unauthorized",
    "ValidationFailed",
]

FieldError = dict[str, str]


class RelayError(Exception):
    """Base of all errors with an HTTP status and a JSON body."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    default_message: ClassVar[str] = "internal error"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        """The JSON error body for this error."""
        return {"error": self.code, "message": self.message}


class BadRequest(RelayError):
    """The request could not be read at all (for example, not JSON)."""

    status = 400
    code = "bad_request"
    default_message = "request body is not valid JSON"


class Unauthorized(RelayError):
    """Credentials are missing, malformed, expired or unknown."""

    status = 401
    code = "unauthorized"
    default_message = "missing or invalid credentials"

    def __init__(self, message: str | None = None, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason

    def body(self) -> dict[str, Any]:
        """Include the machine-readable reason (``expired``, ``invalid``, ...)."""
        return {**super().body(), "reason": self.reason}


class Forbidden(RelayError):
    """Valid credentials that do not grant this execution or origin."""

    status = 403
    code = "forbidden"
    default_message = "this token does not grant access to this execution"


class NotFound(RelayError):
    """The execution is unknown or its history has expired."""

    status = 404
    code = "not_found"
    default_message = "execution not found"


class PayloadTooLarge(RelayError):
    """The request body is larger than allowed."""

    status = 413
    code = "payload_too_large"
    default_message = "request body too large"


class ValidationFailed(RelayError):
    """The body is JSON but some fields are wrong; each is named."""

    status = 422
    code = "validation_failed"
    default_message = "some fields are invalid"

    def __init__(self, fields: list[FieldError], message: str | None = None) -> None:
        super().__init__(message or "; ".join(f"{f['field']}: {f['message']}" for f in fields))
        self.fields = fields

    def body(self) -> dict[str, Any]:
        """Add the list of failing fields."""
        return {**super().body(), "fields": self.fields}


class ExecutionFinished(RelayError):
    """The execution already has a terminal event and accepts no more."""

    status = 409
    code = "execution_finished"
    default_message = "execution already finished; no more events are accepted"


class RateLimited(RelayError):
    """A configured limit was exceeded."""

    status = 429
    code = "rate_limited"
    default_message = "too many requests"


class BrokerUnavailable(RelayError):
    """The broker cannot be reached; nothing was accepted."""

    status = 503
    code = "broker_unavailable"
    default_message = "the event broker is unreachable; the event was not accepted, retry later"
