"""What went wrong with Redis, said as what it is.

Every failure of a Redis command is classified into one *kind*, logged with a
sentence that names it (at most once a second per kind, with a count of the
lines left out), counted in ``relay_broker_errors_total{kind}``, and turned
into the :class:`~service.errors.BrokerUnavailable` the caller raises, whose
message depends on what the caller was doing: a publish says the event was
not accepted, a read says history is unavailable.

Kinds::

    moved        MOVED: the slot lives on another cluster node (the command did not run)
    ask          ASK: the slot is migrating (the command did not run)
    tryagain     TRYAGAIN: keys of a migrating slot are split between nodes
    clusterdown  CLUSTERDOWN: a slot has no serving primary
    readonly     READONLY: the server is a replica (failover, or the URL names a replica)
    noscript     NOSCRIPT: the server lost the scripts (restart, failover, SCRIPT FLUSH)
    oom          OOM: maxmemory reached
    auth         NOAUTH / WRONGPASS / NOPERM: credentials refused
    loading      LOADING: the server is loading its data set
    timeout      no answer within the command timeout
    connection   no connection (refused, reset, no primary known to the Sentinels)
    replicas     fewer replicas than RELAY_REDIS_MIN_REPLICAS acknowledged in time
    other        anything else
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    AuthorizationError,
    BusyLoadingError,
    ClusterDownError,
    MovedError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import metrics
from ..errors import BrokerUnavailable

__all__ = ["KINDS", "PUBLISH", "READ", "SUBSCRIBE", "WRITE", "ReplicasUnavailable", "classify", "counted", "failure"]

log = logging.getLogger("relay.broker.redis")

KINDS = (
    "moved",
    "ask",
    "tryagain",
    "clusterdown",
    "readonly",
    "noscript",
    "oom",
    "auth",
    "loading",
    "timeout",
    "connection",
    "replicas",
    "other",
)

# What each kind means, as the first half of a client-facing sentence.
_MEANING = {
    "moved": "Redis Cluster answered MOVED (the execution's slot lives on another node)",
    "ask": "Redis Cluster answered ASK (the execution's slot is migrating)",
    "tryagain": "Redis Cluster answered TRYAGAIN (the execution's slot is migrating)",
    "clusterdown": "the Redis Cluster is down (a slot has no serving primary)",
    "readonly": "Redis refused the write because the server is a read-only replica",
    "noscript": "Redis lost the relay's scripts",
    "oom": "Redis is out of memory (maxmemory reached)",
    "auth": "Redis refused the relay's credentials (check the password in RELAY_BROKER_URL)",
    "loading": "Redis is loading its data set",
    "timeout": "the event broker (Redis) did not answer in time",
    "connection": "the event broker (Redis) is unreachable",
    "other": "the event broker (Redis) failed",
}

#: What the caller was doing, as the second half of the sentence.
PUBLISH = "the event was not accepted, retry later"
READ = "history unavailable, retry later"
SUBSCRIBE = "live events are unavailable, retry later"
WRITE = "the change was not stored, retry later"

_LOG_EVERY = 1.0  # seconds between two log lines of one kind
_last_logged: dict[str, float] = {}
_suppressed: dict[str, int] = {}


class ReplicasUnavailable(BrokerUnavailable):
    """The primary stored the event but too few replicas acknowledged it in time (503)."""

    code = "replicas_unavailable"
    default_message = "too few Redis replicas acknowledged the event in time; it was not acknowledged"


# Checked in order: MovedError is an AskError, and most of these are ResponseErrors.
_BY_TYPE: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], str], ...] = (
    (MovedError, "moved"),
    (AskError, "ask"),
    (TryAgainError, "tryagain"),
    (ClusterDownError, "clusterdown"),
    (ReadOnlyError, "readonly"),
    (NoScriptError, "noscript"),
    (OutOfMemoryError, "oom"),
    ((AuthenticationError, AuthorizationError, AuthenticationWrongNumberOfArgsError, NoPermissionError), "auth"),
    (BusyLoadingError, "loading"),
)
# Error replies redis-py leaves as a plain ResponseError, by their first word.
_BY_PREFIX = {"NOAUTH": "auth", "WRONGPASS": "auth", "NOPERM": "auth", "OOM": "oom", "READONLY": "readonly"}


def classify(exc: BaseException) -> str:
    """The kind of a Redis failure (see the module docstring)."""
    for types, kind in _BY_TYPE:
        if isinstance(exc, types):
            return kind
    if isinstance(exc, ResponseError):
        return _BY_PREFIX.get(str(exc).split(" ", 1)[0].upper(), "other")
    if isinstance(exc, RedisConnectionError) and "is now a slave" in str(exc):
        return "readonly"  # redis-py's Sentinel connection turns READONLY into this, after disconnecting
    if isinstance(exc, RedisTimeoutError | asyncio.TimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, RedisConnectionError | OSError | RedisClusterException):
        return "connection"
    return "other"


def failure(exc: BaseException, doing: str) -> BrokerUnavailable:
    """Log and count ``exc`` as its kind; the 503 error for a caller that was ``doing`` something."""
    kind = classify(exc)
    _note(kind, f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__)
    return BrokerUnavailable(f"{_MEANING[kind]}; {doing}")


def counted(kind: str, detail: str) -> None:
    """Log and count a failure already known by kind (``replicas``)."""
    _note(kind, detail)


def _note(kind: str, detail: str) -> None:
    metrics.broker_error(kind)
    now = time.monotonic()
    if now - _last_logged.get(kind, 0.0) < _LOG_EVERY:
        _suppressed[kind] = _suppressed.get(kind, 0) + 1
        return
    _last_logged[kind] = now
    more = _suppressed.pop(kind, 0)
    tail = f" ({more} more like it in the last second)" if more else ""
    meaning = _MEANING.get(kind, "too few Redis replicas acknowledged in time")
    log.warning("Redis error [%s]: %s: %s%s", kind, meaning, detail, tail)
