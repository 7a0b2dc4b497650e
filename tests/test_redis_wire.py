"""Reading replies off redis-py connections (``service/brokers/redis_wire.py``), on the test Redis.

The first test is the fence: it fails when redis-py or hiredis change the
internals the fast path relies on (then update ``redis_wire``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis._parsers import _AsyncRESP2Parser
from redis._parsers.hiredis import NOT_ENOUGH_DATA
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.brokers import redis_wire
from tests.redis_util import redis_prefix, redis_url  # noqa: F401

pytestmark = pytest.mark.redis


@pytest.fixture(params=["hiredis", "resp2"])
async def connection(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Connection]:
    """A connected decoding connection, parsing with hiredis (the fast path) or redis-py's own parser."""
    options: dict[str, Any] = {"decode_responses": True}
    if request.param == "resp2":
        options["parser_class"] = _AsyncRESP2Parser
    client = Redis.from_url(redis_url, **options)
    conn = await client.connection_pool.get_connection()
    await conn.connect()
    assert redis_wire.fast(conn) == (request.param == "hiredis")
    yield conn
    await conn.disconnect()
    await client.aclose()


async def test_the_default_connection_takes_the_fast_path(redis_url: str) -> None:
    """A connection built as the broker builds it parses with hiredis, and the internals used are there."""
    client = Redis.from_url(redis_url, decode_responses=True)
    conn = await client.connection_pool.get_connection()
    try:
        await conn.connect()
        assert redis_wire.fast(conn)
        parser: Any = conn._parser
        assert callable(parser.read_from_socket)
        assert parser._reader.gets() is NOT_ENOUGH_DATA
    finally:
        await conn.disconnect()
        await client.aclose()


async def test_replies_come_in_order_with_error_replies_as_values(connection: Connection, redis_prefix: str) -> None:
    """Three pipelined commands give three replies; the failed one is its exception, not raised."""
    key = f"{redis_prefix}:k"
    await connection.send_packed_command(
        connection.pack_commands([("SET", key, "v"), ("INCR", key), ("GET", key)]), check_health=False
    )
    ok, error, value = await redis_wire.read_replies(connection, 3, 5.0)
    assert ok in ("OK", True) and value == "v"
    assert isinstance(error, ResponseError) and "not an integer" in str(error)
    await connection.send_command("PING")
    assert await redis_wire.read_replies(connection, 1, 5.0) in (["PONG"], [True])  # nothing left over


async def test_a_silent_server_raises_redis_timeout(redis_url: str) -> None:
    """On the fast path, waiting for a reply that never comes raises redis-py's TimeoutError after the timeout."""
    client = Redis.from_url(redis_url, decode_responses=True)
    conn = await client.connection_pool.get_connection()
    try:
        await conn.connect()
        with pytest.raises(RedisTimeoutError):
            await redis_wire.read_replies(conn, 1, 0.05)
    finally:
        await conn.disconnect()
        await client.aclose()


async def test_every_message_already_received_comes_at_once(
    connection: Connection, redis_url: str, redis_prefix: str
) -> None:
    """Messages published while nobody reads are all returned, in order (one read on the fast path)."""
    channel = f"{redis_prefix}:live"
    await connection.send_command("SUBSCRIBE", channel)
    assert await redis_wire.read_available(connection) == [["subscribe", channel, 1]]
    publisher = Redis.from_url(redis_url, decode_responses=True)
    try:
        for i in range(3):
            await publisher.publish(channel, f"m{i}")
        await publisher.ping()  # the three messages were written before this reply
    finally:
        await publisher.aclose()
    messages: list[Any] = []
    while len(messages) < 3:
        messages += await redis_wire.read_available(connection)
    assert messages == [["message", channel, f"m{i}"] for i in range(3)]


async def test_send_writes_at_once_and_the_replies_follow(connection: Connection, redis_prefix: str) -> None:
    """A payload written with send() reaches Redis; its replies are read back in order."""
    key = f"{redis_prefix}:sent"
    await redis_wire.send(connection, b"".join(connection.pack_commands([("SET", key, "1"), ("INCR", key)])), 5.0)
    assert (await redis_wire.read_replies(connection, 2, 5.0))[1] == 2


async def test_send_on_a_closed_connection_raises_connection_error(connection: Connection) -> None:
    """Sending on a connection that was disconnected raises redis-py's ConnectionError (a broken connection)."""
    await connection.disconnect()
    with pytest.raises(RedisConnectionError):
        await redis_wire.send(connection, b"*1\r\n$4\r\nPING\r\n", 5.0)


async def test_an_interrupted_read_raises_the_given_error(connection: Connection) -> None:
    """interrupt() makes a read waiting for replies raise its error (a deadline kept outside the read)."""
    waiting = asyncio.create_task(redis_wire.read_replies(connection, 1, None))
    await asyncio.sleep(0)  # the read is waiting for bytes that never come (nothing was sent)
    assert redis_wire.interrupt(connection, RedisTimeoutError("late"))
    with pytest.raises(RedisTimeoutError, match="late"):
        await waiting


@pytest.fixture
async def fast_connection(redis_url: str) -> AsyncIterator[Connection]:
    """A connected decoding connection parsing with hiredis, as the broker's are."""
    client = Redis.from_url(redis_url, decode_responses=True)
    conn = await client.connection_pool.get_connection()
    await conn.connect()
    yield conn
    await asyncio.wait_for(conn.disconnect(), 5)  # never hangs on a taken-over connection
    await client.aclose()


async def test_a_taken_over_connection_reads_replies_in_order(fast_connection: Connection, redis_prefix: str) -> None:
    """After take_over, pipelined replies are parsed as they arrive and read in order, error replies as values."""
    conn = fast_connection
    assert redis_wire.take_over(conn) is not None
    assert redis_wire.take_over(conn) is redis_wire.take_over(conn)  # once per connect
    key = f"{redis_prefix}:k"
    await redis_wire.send(conn, b"".join(conn.pack_commands([("SET", key, "v"), ("INCR", key), ("GET", key)])), 5.0)
    ok, error, value = await redis_wire.read_replies(conn, 3, 5.0)
    assert ok in ("OK", True) and value == "v"
    assert isinstance(error, ResponseError) and "not an integer" in str(error)
    assert not redis_wire.dirty(conn)
    await redis_wire.send(conn, b"*1\r\n$4\r\nPING\r\n", 5.0)
    assert await redis_wire.read_replies(conn, 1, 5.0) in (["PONG"], [True])


async def test_bytes_received_before_the_take_over_are_not_lost(fast_connection: Connection) -> None:
    """A reply the stream buffered before take_over is parsed by the feed, not dropped."""
    conn = fast_connection
    await redis_wire.send(conn, b"*2\r\n$4\r\nECHO\r\n$5\r\nearly\r\n", 5.0)
    stream: Any = conn._reader
    async with asyncio.timeout(5):
        while not stream._buffer:  # the reply is in the stream's buffer, unread
            await asyncio.sleep(0)
    redis_wire.take_over(conn)
    assert redis_wire.dirty(conn)  # a reply nobody read: the lane would not reuse this connection
    assert await redis_wire.read_replies(conn, 1, 5.0) == ["early"]


async def test_on_reply_handles_live_messages_in_the_callback(
    fast_connection: Connection, redis_url: str, redis_prefix: str
) -> None:
    """Messages go to on_reply as they are parsed, in order; the replies it declines are left for read()."""
    conn = fast_connection
    channel = f"{redis_prefix}:live"
    seen: list[str] = []

    def on_reply(reply: Any) -> bool:
        if isinstance(reply, list) and reply[0] == "message":
            seen.append(reply[2])
            return True
        return False

    feed = redis_wire.take_over(conn, on_reply)
    assert feed is not None
    await redis_wire.send(conn, b"".join(conn.pack_commands([("SUBSCRIBE", channel)])), 5.0)
    assert await feed.read(None) == [["subscribe", channel, 1]]
    publisher = Redis.from_url(redis_url, decode_responses=True)
    try:
        for i in range(3):
            await publisher.publish(channel, f"m{i}")
    finally:
        await publisher.aclose()
    await redis_wire.send(conn, b"*1\r\n$4\r\nPING\r\n", 5.0)  # answered after the three messages
    assert await feed.read(None) in (["PONG"], [["pong", ""]])  # RESP3, RESP2
    assert seen == ["m0", "m1", "m2"]


async def test_a_closed_taken_over_connection_fails_the_waiting_read(
    fast_connection: Connection, redis_url: str
) -> None:
    """The server closing the connection makes a waiting read raise ConnectionError; the connection is dirty."""
    conn = fast_connection
    redis_wire.take_over(conn)
    await redis_wire.send(conn, b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n", 5.0)
    (client_id,) = await redis_wire.read_replies(conn, 1, 5.0)
    waiting = asyncio.create_task(redis_wire.read_replies(conn, 1, None))
    killer = Redis.from_url(redis_url)
    try:
        assert await killer.client_kill_filter(_id=client_id) == 1
    finally:
        await killer.aclose()
    with pytest.raises(RedisConnectionError):
        await asyncio.wait_for(waiting, 5)
    assert redis_wire.dirty(conn)


async def test_an_interrupted_read_on_a_taken_over_connection_raises_the_given_error(
    fast_connection: Connection,
) -> None:
    """interrupt() fails a read waiting on a taken-over connection with its error."""
    conn = fast_connection
    redis_wire.take_over(conn)
    waiting = asyncio.create_task(redis_wire.read_replies(conn, 1, None))
    await asyncio.sleep(0)  # the read is waiting for bytes that never come (nothing was sent)
    assert redis_wire.interrupt(conn, RedisTimeoutError("late"))
    with pytest.raises(RedisTimeoutError, match="late"):
        await waiting
    assert redis_wire.dirty(conn)
