"""Reading replies straight from a redis-py connection's hiredis reader: the one place that touches its internals.

Checked against redis-py 8.1 with hiredis 3.5 (``tests/test_redis_wire.py``
fails loudly when their shape changes). redis-py's own reads cost more than
the rest of a publish: every reply goes through ``read_response`` (a timeout
context, observability hooks, a retry wrapper) and every pub/sub message also
through ``handle_message``, which builds a dict and formats the whole message
for a debug log line that is off. Here one socket read is parsed into every
reply it holds, and a timeout context is only entered when a read has to wait.

Both helpers fall back on redis-py's public ``read_response`` when the
connection has no hiredis parser (hiredis not installed), so they are never
wrong, only slower there.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.sentinel import SentinelManagedConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["fast", "interrupt", "read_available", "read_replies", "send"]


def fast(connection: AbstractConnection) -> bool:
    """Whether ``connection`` parses with hiredis (the fast path applies)."""
    parser = getattr(connection, "_parser", None)
    return isinstance(parser, _AsyncHiredisParser) and parser._reader is not None


async def send(connection: AbstractConnection, payload: bytes, timeout: float | None) -> None:
    """Write ``payload`` now; wait (at most ``timeout``) only when the socket did not take it all.

    redis-py's ``send_packed_command`` runs every write in a task of its own
    under ``wait_for`` (so it happens an event-loop turn later) even when the
    kernel takes the bytes at once, as it nearly always does.
    """
    writer = connection._writer
    if writer is None:  # disconnected meanwhile
        raise RedisConnectionError("the connection to the Redis server is closed")
    writer.write(payload)
    if writer.transport.get_write_buffer_size():
        try:
            async with asyncio.timeout(timeout):
                await writer.drain()
        except TimeoutError:
            raise RedisTimeoutError("Timeout writing to socket") from None
        except OSError as exc:
            raise RedisConnectionError(f"Error while writing to the Redis server: {exc.args}") from None


def interrupt(connection: AbstractConnection, exc: Exception) -> bool:
    """Make a read waiting on ``connection`` (now or next) raise ``exc``; False when it is not connected.

    For a deadline kept outside the read (no timer per read); the connection must be dropped afterwards.
    """
    stream = connection._reader
    if stream is None:
        return False
    stream.set_exception(exc)
    return True


async def _fill(connection: AbstractConnection, timeout: float | None) -> None:
    """Wait for more bytes and feed them to the parser; EOF or a late server raise as redis-py would."""
    parser: Any = connection._parser
    try:
        if timeout is None:
            await parser.read_from_socket()
        else:
            async with asyncio.timeout(timeout):
                await parser.read_from_socket()
    except TimeoutError:
        raise RedisTimeoutError(f"Timeout reading from {connection.host}:{connection.port}") from None  # type: ignore[attr-defined]
    except OSError as exc:
        raise RedisConnectionError(f"Error while reading from the Redis server: {exc.args}") from None


async def read_replies(connection: AbstractConnection, count: int, timeout: float | None) -> list[Any]:
    """The next ``count`` replies, in order; an error reply is returned as its exception, not raised.

    ``timeout`` bounds each wait for data (as redis-py's ``socket_timeout`` bounds each read); with
    None the caller keeps its own deadline (:func:`interrupt`; without hiredis, the socket timeout applies).
    A broken or silent connection raises (``ConnectionError``, ``TimeoutError``); the caller
    must then drop it, since replies may still be pending on it.
    """
    if not fast(connection):
        replies: list[Any] = []
        for _ in range(count):
            try:
                replies.append(await connection.read_response())
            except ResponseError as exc:  # an error reply; the connection is fine
                replies.append(exc)
        return replies
    reader = connection._parser._reader  # type: ignore[attr-defined]
    replies = []
    while len(replies) < count:
        reply = reader.gets()
        if reply is NOT_ENOUGH_DATA:
            await _fill(connection, timeout)
            continue
        if isinstance(reply, RedisConnectionError):
            raise reply
        replies.append(reply)
    if isinstance(connection, SentinelManagedConnection) and any(isinstance(r, ReadOnlyError) for r in replies):
        # As redis-py's Sentinel connection does: the primary it knew was demoted; the
        # next connection asks the Sentinels again.
        await connection.disconnect()
        raise RedisConnectionError("The previous master is now a slave")
    return replies


async def read_available(connection: AbstractConnection) -> list[Any]:
    """Every complete reply already received, waiting (without a time limit) for at least one.

    For a pub/sub connection: one socket read may carry many messages, and they
    are returned together, in arrival order, as redis-py parses them (lists such
    as ``["message", channel, data]``).
    """
    if not fast(connection):
        return [await connection.read_response(timeout=math.inf, disconnect_on_error=False, push_request=True)]
    reader = connection._parser._reader  # type: ignore[attr-defined]
    while True:
        reply = reader.gets()
        if reply is not NOT_ENOUGH_DATA:
            break
        await _fill(connection, None)
    replies = []
    while reply is not NOT_ENOUGH_DATA:
        if isinstance(reply, RedisConnectionError):
            raise reply
        replies.append(reply)
        reply = reader.gets()
    return replies
