"""Reading replies straight from a redis-py connection's hiredis reader: the one place that touches its internals.

Checked against redis-py 8.1 with hiredis 3.5 (``tests/test_redis_wire.py``
fails loudly when their shape changes). redis-py's own reads cost more than
the rest of a publish: every reply goes through ``read_response`` (a timeout
context, observability hooks, a retry wrapper) and every pub/sub message also
through ``handle_message``, which builds a dict and formats the whole message
for a debug log line that is off. Here one socket read is parsed into every
reply it holds, and a timeout context is only entered when a read has to wait.

A connection the relay keeps (the publish lane, the pub/sub connection) can
also be taken over (:func:`take_over`): its transport then hands received
bytes to a :class:`Feed`, which parses them in that callback, instead of a
StreamReader waking a task to read them.

Every helper falls back on redis-py's public ``read_response`` when the
connection has no hiredis parser (hiredis not installed), so they are never
wrong, only slower there.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from typing import Any

from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.sentinel import SentinelManagedConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["Feed", "dirty", "fast", "interrupt", "read_available", "read_replies", "send", "take_over"]

_CLOSED = "Connection closed by server."


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


class Feed(asyncio.Protocol):
    """A taken-over connection's protocol: received bytes are parsed in the transport's callback.

    Each complete reply goes to ``on_reply`` (which returns True when it handled
    it) or else waits in order for :meth:`read`, whose task is woken only once
    the replies it wants are all there. Everything but received data (EOF, a
    lost connection, flow control) is passed on to the stream protocol it
    replaced, so redis-py's own view of the connection (``disconnect``,
    ``can_read``, ``drain``) stays right.
    """

    def __init__(
        self,
        connection: AbstractConnection,
        stream: asyncio.Protocol,
        on_reply: Callable[[Any], bool] | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._reader = connection._parser._reader  # type: ignore[attr-defined]
        self._stream: Any = stream
        self._on_reply = on_reply
        self._loop = loop
        self.replies: deque[Any] = deque()  # parsed, not read yet
        self.error: Exception | None = None  # set once: the connection is done
        self._wanted = 0
        self._waiter: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        """Parse every complete reply now; wake the reader when it has what it waits for."""
        reader, on_reply, replies = self._reader, self._on_reply, self.replies
        reader.feed(data)
        while (reply := reader.gets()) is not NOT_ENOUGH_DATA:
            if on_reply is None or not on_reply(reply):
                replies.append(reply)
        waiter = self._waiter
        if waiter is not None and len(replies) >= self._wanted and not waiter.done():
            waiter.set_result(None)

    def eof_received(self) -> bool | None:
        """The server closed its side: reads fail; the stream protocol sees the EOF too."""
        self.fail(RedisConnectionError(_CLOSED))
        return self._stream.eof_received()  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        """Reads fail; the stream protocol is told, so redis-py's ``disconnect`` completes."""
        self.fail(RedisConnectionError(f"Error while reading from the Redis server: {exc}" if exc else _CLOSED))
        self._stream.connection_lost(exc)

    def pause_writing(self) -> None:
        """Passed on: ``drain`` waits on the stream protocol."""
        self._stream.pause_writing()

    def resume_writing(self) -> None:
        """Passed on: ``drain`` waits on the stream protocol."""
        self._stream.resume_writing()

    @property
    def dirty(self) -> bool:
        """Whether replies (or part of one) arrived that nobody read, or the connection failed: never reuse it."""
        return bool(self.replies) or self.error is not None or bool(self._reader.has_data())

    def fail(self, exc: Exception) -> None:
        """Make the read waiting (now or next) raise ``exc`` unless its replies are already there."""
        if self.error is None:
            self.error = exc
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self, count: int | None) -> list[Any]:
        """The next ``count`` replies in order (None: all parsed, at least one); raises once the connection failed."""
        replies = self.replies
        wanted = 1 if count is None else count
        while len(replies) < wanted:
            if self.error is not None:
                raise self.error
            self._wanted = wanted
            self._waiter = waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        if count is None or count == len(replies):  # the usual case: all of them
            taken = list(replies)
            replies.clear()
            return taken
        return [replies.popleft() for _ in range(count)]


def take_over(connection: AbstractConnection, on_reply: Callable[[Any], bool] | None = None) -> Feed | None:
    """Put a :class:`Feed` between ``connection``'s transport and its stream (once per connect); None without hiredis.

    Bytes the stream received and nobody read yet are parsed first, so none is lost.
    """
    writer = connection._writer
    if writer is None or not fast(connection):
        return None
    transport: Any = writer.transport
    current = transport.get_protocol()
    if isinstance(current, Feed):
        return current
    feed = Feed(connection, current, on_reply, asyncio.get_running_loop())
    stream: Any = connection._reader
    buffered = bytes(stream._buffer)
    stream._buffer.clear()
    transport.set_protocol(feed)
    if buffered:
        feed.data_received(buffered)
    if stream.at_eof() or stream.exception() is not None:
        feed.fail(RedisConnectionError(_CLOSED))
    return feed


def _feed(connection: AbstractConnection) -> Feed | None:
    writer = connection._writer
    protocol = writer.transport.get_protocol() if writer is not None else None
    return protocol if isinstance(protocol, Feed) else None


def dirty(connection: AbstractConnection) -> bool:
    """Whether a taken-over ``connection`` holds replies nobody read, or has failed (never reuse it then)."""
    feed = _feed(connection)
    return feed is not None and feed.dirty


def interrupt(connection: AbstractConnection, exc: Exception) -> bool:
    """Make a read waiting on ``connection`` (now or next) raise ``exc``; False when it is not connected.

    For a deadline kept outside the read (no timer per read); the connection must be dropped afterwards.
    """
    feed = _feed(connection)
    if feed is not None:
        feed.fail(exc)
        return True
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


async def read_replies(
    connection: AbstractConnection, count: int, timeout: float | None, feed: Feed | None = None
) -> list[Any]:
    """The next ``count`` replies, in order; an error reply is returned as its exception, not raised.

    ``timeout`` bounds each wait for data (as redis-py's ``socket_timeout`` bounds each read); with
    None the caller keeps its own deadline (:func:`interrupt`; without hiredis, the socket timeout applies).
    A broken or silent connection raises (``ConnectionError``, ``TimeoutError``); the caller
    must then drop it, since replies may still be pending on it. ``feed``: the connection's
    :class:`Feed` when the caller kept it from :func:`take_over` (else it is looked up).
    """
    if feed is None:
        feed = _feed(connection)
    if feed is not None:
        return await _checked(connection, await _read_fed(connection, feed, count, timeout))
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
    return await _checked(connection, replies)


async def _read_fed(connection: AbstractConnection, feed: Feed, count: int, timeout: float | None) -> list[Any]:
    if timeout is None:
        replies = await feed.read(count)
    else:
        try:
            async with asyncio.timeout(timeout):
                replies = await feed.read(count)
        except TimeoutError:
            raise RedisTimeoutError(f"Timeout reading from {connection.host}:{connection.port}") from None  # type: ignore[attr-defined]
    for reply in replies:
        if isinstance(reply, RedisConnectionError):
            raise reply
    return replies


async def _checked(connection: AbstractConnection, replies: list[Any]) -> list[Any]:
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
