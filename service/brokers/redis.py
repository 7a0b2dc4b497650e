"""The Redis broker: many processes and pods share one history.

Per execution (``{eid}`` is a Redis Cluster hash tag, so one execution's
keys live in one slot and one Lua script may touch them all)::

    <prefix>:{<eid>}:stream   Stream, entry id "<seq>-0", fields f (frame),
                              e (event type), t ("1" if terminal);
                              trimmed to exactly RELAY_HISTORY_SIZE entries
    <prefix>:{<eid>}:meta     Hash: epoch (the stream's epoch), seq (counter),
                              terminal ("0"/"1"), updated (unix ms of the last event)
    <prefix>:{<eid>}:idem     Hash: idempotency key -> seq
    <prefix>:{<eid>}:live     pub/sub channel; message
                              "<epoch>|<seq>|<t>|<event>|<frame>"

All three keys get ``EXPIRE RELAY_HISTORY_TTL`` on every publish. Assigning
the seq, appending, recording the idempotency key, refusing events after a
terminal one and ``PUBLISH`` happen in one Lua script, so two instances can
never assign the same seq and Redis delivers one execution's messages in seq
order. Because stream ids are the seqs themselves, a history read after
``N`` is one ``XRANGE (N+1)-0 +``; exact trimming keeps the retained seqs
contiguous.

The epoch lives in the meta hash, so it goes wherever the stream goes and is
lost with it (a flush, a restart without persistence, a failover to a copy
without the stream, expiry). Whichever script finds the meta without an epoch
first, the publish or a subscriber's history read, stores the fresh epoch its
caller offered (:func:`~service.brokers.base.new_epoch`; Lua has no good
randomness) and, when the meta had no seq either, deletes whatever is left of
an older stream and its idempotency keys, so a lost epoch's keys never answer
for the new one and a half-evicted stream never blocks ``XADD 1-0``. A meta
with a seq but no epoch is a stream written before epochs existed: it keeps
its history and gets an epoch. History reads return the epoch, and every
pub/sub message carries it, so a subscriber notices a new stream both live
and when it re-reads history after a resync.

One pub/sub connection per instance carries the channels of executions that
have local subscribers. A reader task hands each message to the listener in
arrival order. When that connection breaks, the reader reconnects with
backoff, subscribes to every current channel again and then calls
``on_resync``, so subscribers re-read history for whatever they missed.

Commands are never retried by the client: a publish whose reply was lost may
have been applied, so the caller gets :class:`BrokerUnavailable` and retries
with its idempotency key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import Connection, ConnectionPool, SSLConnection
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from .. import metrics
from ..config import DEFAULTS, REDIS_RECONNECT_MAX, REDIS_RECONNECT_MIN
from ..errors import BrokerUnavailable, ExecutionFinished, RelayError
from ..events import EVENT_TYPES, Event, EventDraft
from . import redis_errors, redis_wire
from .base import Broker, HistoryPage, PublishResult, new_epoch
from .redis_errors import BROKEN as _BROKEN
from .redis_errors import BROKEN_OR_LATE, PUBLISH, READ, SUBSCRIBE, WRITE, ReplicasUnavailable, failure
from .redis_url import RedisTarget, parse_redis_url

__all__ = ["RedisBroker"]

#: A connection that broke under a command (not a refusal by Redis): a read is worth one more try.
_STALE = (RedisConnectionError, OSError, AttributeError)

log = logging.getLogger("relay.broker.redis")

# KEYS: stream, meta, idem.
# ARGV: head, tail, event, terminal ("0"/"1"), idempotency key ("" for none),
#       history size, ttl seconds, now (unix ms), channel, epoch for a new stream.
# Returns {1, seq, epoch, forgotten} accepted, {0, seq, epoch} duplicate, {-1, 0, epoch} execution finished.
# Idempotency keys are kept while their event is retained: once the hash holds twice the history
# size, the keys of events older than the history are dropped (``forgotten``), so it stays bounded.
PUBLISH_LUA = """
local meta = redis.call('HMGET', KEYS[2], 'epoch', 'seq', 'terminal')
local epoch = meta[1]
if not epoch then
  epoch = ARGV[10]
  if not meta[2] then
    redis.call('DEL', KEYS[1], KEYS[3])
  end
  redis.call('HSET', KEYS[2], 'epoch', epoch)
end
local key = ARGV[5]
if key ~= '' then
  local seen = redis.call('HGET', KEYS[3], key)
  if seen then return {0, tonumber(seen), epoch} end
end
if meta[3] == '1' then return {-1, 0, epoch} end
local seq = (tonumber(meta[2]) or 0) + 1
local text = string.format('%d', seq)  -- not tostring: Lua would print a seq from 1e14 on as 1e+14
local frame = ARGV[1] .. text .. ARGV[2]
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[6], text .. '-0', 'f', frame, 'e', ARGV[3], 't', ARGV[4])
redis.call('HSET', KEYS[2], 'seq', text, 'terminal', ARGV[4], 'updated', ARGV[8])
local ttl = ARGV[7]
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
local forgotten = 0
if key ~= '' then
  redis.call('HSET', KEYS[3], key, text)
  redis.call('EXPIRE', KEYS[3], ttl)
  local size = tonumber(ARGV[6])
  if redis.call('HLEN', KEYS[3]) > 2 * size then
    local all = redis.call('HGETALL', KEYS[3])
    for i = 1, #all, 2 do
      if tonumber(all[i + 1]) <= seq - size then
        redis.call('HDEL', KEYS[3], all[i])
        forgotten = forgotten + 1
      end
    end
  end
end
redis.call('PUBLISH', ARGV[9], epoch .. '|' .. text .. '|' .. ARGV[4] .. '|' .. ARGV[3] .. '|' .. frame)
return {1, seq, epoch, forgotten}
"""

# KEYS: stream, meta, idem. ARGV: first stream id wanted ("<after+1>-0"), limit (0: no limit),
#       epoch for a new stream ("" : do not create one), ttl seconds.
# Returns {} for an unknown execution not created, else
# {latest_seq, terminal, updated_ms, first_seq, epoch, seq1, frame1, event1, t1, seq2, ...}.
HISTORY_LUA = """
local meta = redis.call('HMGET', KEYS[2], 'seq', 'terminal', 'updated', 'epoch')
local epoch = meta[4]
if not epoch then
  if ARGV[3] == '' then
    if not meta[1] then return {} end
    epoch = ''
  else
    epoch = ARGV[3]
    if not meta[1] then redis.call('DEL', KEYS[1], KEYS[3]) end
    redis.call('HSET', KEYS[2], 'epoch', epoch)
    if not meta[1] then redis.call('EXPIRE', KEYS[2], ARGV[4]) end
  end
end
if not meta[1] then return {0, '0', '0', 0, epoch} end
local out = {tonumber(meta[1]), meta[2] or '0', meta[3] or '0', 0, epoch}
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #first > 0 then out[4] = tonumber(string.match(first[1][1], '^%d+')) end
local start = ARGV[1]
local entries
if tonumber(ARGV[2]) > 0 then
  entries = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', ARGV[2])
else
  entries = redis.call('XRANGE', KEYS[1], start, '+')
end
for _, entry in ipairs(entries) do
  local f = entry[2]
  out[#out + 1] = tonumber(string.match(entry[1], '^%d+'))
  out[#out + 1] = f[2]
  out[#out + 1] = f[4]
  out[#out + 1] = f[6]
end
return out
"""

CLUSTER_NODE = (
    "RELAY_BROKER_URL names one node of a Redis Cluster; use redis+cluster://host:port[,host:port...] "
    "so that the relay follows the cluster's slots"
)
NOT_READY = "the instance is not ready"
REVOCATION = "token revocation could not be checked, retry later"
_MAX_PIPELINE = 1000  # script calls per round trip
#: A publish script call: its keys, and its keys and arguments as RESP bulk strings, still text (see _script_calls).
_Call = tuple[tuple[str, str, str], str]
#: Queued publishes: each draft with the future its caller awaits.
_Queued = list[tuple[EventDraft, "asyncio.Future[PublishResult | RelayError]"]]
#: A pipeline on the lane: its publishes, their script calls, how many replies it awaits, when it was written.
_Batch = tuple[_Queued, list[_Call], int, float]
#: Pipelines in flight at once on the lane: one being answered while the next is written. The
#: closed-loop bench (8 POSTs in flight, Redis on the same 2 cores): 1 -> 0.81x the memory broker,
#: 2 -> 0.88x, 3 -> 0.88x (medians of 4 interleaved trials).
_DEPTH = 2
_NAMES_KEPT = 10_000  # executions whose packed keys and channel are kept (all are dropped past it)
_MAX_STREAM_SEQ = 2**64 - 1  # the largest stream id Redis takes; a seq never gets near it
_UNREACHABLE = "the event broker (Redis) is unreachable; the event was not accepted, retry later"


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """A Sentinel-managed pool that waits for a free connection, as the plain pool does.

    Every new connection asks the Sentinels for the current primary; a READONLY
    reply disconnects (redis-py raises ConnectionError "... is now a slave"), so
    the next connection finds the promoted replica.
    """

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]


class _Lane:
    """The connection the publish flusher keeps, and the pipelines in flight on it.

    Taking a connection from redis-py's pool and giving it back cost more than
    the pipeline itself, so the flusher keeps one, taken from the pool once.
    Before each pipeline it is checked as the pool would (redis-py 8.1 skips
    that check: see :meth:`acquire`) and connected again when a failure
    disconnected it, when the server closed it (a restart) or left bytes on it,
    or when the Sentinels name another primary. :meth:`close` gives it back.
    """

    def __init__(self, client: Redis) -> None:
        self.client = client
        self.connection: Connection | None = None
        #: Pipelines written and not answered yet, oldest first (Redis answers in order).
        self.in_flight: deque[_Batch] = deque()
        #: The connection a pipeline may be written to at once (the flusher is reading it), else None.
        self.open: Connection | None = None
        #: What parses the connection's replies as they arrive (:func:`.redis_wire.take_over`; None without hiredis).
        self.feed: redis_wire.Feed | None = None

    async def acquire(self) -> Connection:
        """The kept connection, connected again if it went stale."""
        connection = self.connection
        if connection is None:
            connection = self.connection = await self.client.connection_pool.get_connection()
        feed = self.feed
        try:
            if feed is not None and connection.is_connected:  # the feed saw whatever arrived, EOF included
                stale = feed.dirty or self._primary_moved(connection)
            else:
                stale = not connection.is_connected or await connection.can_read() or self._primary_moved(connection)
        except (RedisError, OSError):
            stale = True
        if stale:
            # A connection that died with a restarted server still looks connected; the
            # pool's own check is off while redis-py's maintenance notifications are on.
            await connection.disconnect()
            await connection.connect()  # under Sentinel, asks for the current primary
            feed = None
        if feed is None:
            self.feed = redis_wire.take_over(connection)  # replies parsed as they arrive (once per connect)
        return connection

    def _primary_moved(self, connection: Connection) -> bool:
        address = getattr(self.client.connection_pool, "master_address", None)  # Sentinel pools only
        return address is not None and address != (connection.host, connection.port)

    async def release(self, connection: Connection) -> None:
        """Nothing: the lane keeps its connection (a broken one is repaired at the next :meth:`acquire`)."""

    async def close(self) -> None:
        """Give the connection back to the pool."""
        connection, self.connection, self.feed = self.connection, None, None
        if connection is not None:
            await self.client.connection_pool.release(connection)


def connection_pool(
    target: RedisTarget,
    *,
    max_connections: int,
    command_timeout: float,
    connect_timeout: float,
    client_name: str,
) -> ConnectionPool:
    """The pool for a standalone server or a Sentinel-managed primary (never resends a command)."""
    common: dict[str, Any] = {
        "max_connections": max_connections,
        "timeout": command_timeout,
        "decode_responses": True,
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": command_timeout,
        "socket_keepalive": True,
        "retry": Retry(NoBackoff(), 0),  # a lost reply may hide an applied publish: never resend
        "client_name": client_name,  # CLIENT LIST shows us
        **target.connection_kwargs(),
    }
    if target.kind == "sentinel":
        sentinel_kwargs: dict[str, Any] = {
            "socket_connect_timeout": connect_timeout,
            "socket_timeout": connect_timeout,
            "password": target.options.get("sentinel_password") or None,
        }
        if target.tls:
            sentinel_kwargs.update({k: v for k, v in common.items() if k.startswith("ssl")})
        sentinel = Sentinel(list(target.hosts), sentinel_kwargs=sentinel_kwargs)
        return _BlockingSentinelPool(target.master, sentinel, **common)
    host, port = target.hosts[0]
    if common.pop("ssl", False):
        common["connection_class"] = SSLConnection
    return BlockingConnectionPool(host=host, port=port, **common)


class RedisBroker(Broker):
    """History in Redis Streams, live events over one pub/sub connection."""

    remote = True
    #: The publish script (the cluster broker's uses SPUBLISH).
    publish_source: ClassVar[str] = PUBLISH_LUA
    #: Whether publishes flow on the lane, several pipelines in flight (the cluster broker's go to many nodes).
    pipelined: ClassVar[bool] = True

    def __init__(
        self,
        url: str,
        history_size: int,
        history_ttl: int,
        prefix: str = "relay",
        *,
        connect_timeout: float = DEFAULTS.redis_connect_timeout,
        command_timeout: float = DEFAULTS.redis_command_timeout,
        ping_timeout: float = DEFAULTS.redis_ping_timeout,
        keepalive_interval: float = DEFAULTS.redis_keepalive_interval,
        reconnect_min: float = REDIS_RECONNECT_MIN,
        reconnect_max: float = REDIS_RECONNECT_MAX,
        max_connections: int = DEFAULTS.redis_max_connections,
        coalesce: bool = True,
        min_replicas: int = 0,
        min_replicas_timeout: float = 0.5,
    ) -> None:
        super().__init__(history_size, history_ttl)
        self.url = url
        self.target = parse_redis_url(url)
        self.min_replicas = min_replicas
        self.min_replicas_timeout = min_replicas_timeout
        self.prefix = prefix
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.ping_timeout = ping_timeout
        self.keepalive_interval = keepalive_interval
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.coalesce = coalesce
        #: Operations this broker times itself (metrics.instrument_broker wraps the others): coalesced
        #: publishes are timed per pipeline, from its write to its replies, once for each publish in it
        #: (one histogram update per pipeline instead of a timing coroutine around every call).
        self.times_itself = ("publish",) if coalesce else ()
        self._queued: _Queued = []
        self._flusher: asyncio.Task[None] | None = None
        self._kicked = False  # a _kick is scheduled for the end of this loop turn
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop publishes run on (see publish)
        self._watchdog: asyncio.TimerHandle | None = None  # see _check_lane
        if self.target.kind == "sentinel":
            # The Sentinels are asked on every reconnect: no need to wait long between tries.
            self.reconnect_max = min(reconnect_max, 1.0)
        self._client_name = "progress-relay:" + re.sub(r"[^A-Za-z0-9._:-]", "_", prefix)[:64]
        # Blocking pool: a burst of publishes waits for a free connection
        # instead of failing with "too many connections".
        self._redis: Redis = self._make_client(max_connections, command_timeout, connect_timeout)
        self._publish_script = self._redis.register_script(self.publish_source)
        self._limits = _bulk(str(history_size)) + _bulk(str(history_ttl))  # the script's 6th and 7th arguments
        self._packed_names: dict[str, tuple[tuple[str, str, str], str, str]] = {}  # see _names
        self._lane = _Lane(self._redis)
        self._history_script = self._redis.register_script(HISTORY_LUA)
        # Always subscribed (the connection is live even with no executions); carries revocations.
        self._control = f"{{{prefix}:control}}:live"
        self._channels: dict[str, str] = {}  # channel -> execution_id, for executions with local subscribers
        self._confirm: dict[str, asyncio.Future[None]] = {}  # channels waiting for their SUBSCRIBE reply
        self._pubsub: PubSub | None = None
        self._connected = False
        self._first_connect: asyncio.Future[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._last_seen = 0.0
        self.published = 0
        self.idempotency_keys_forgotten = 0  # dropped by the publish script once their event left history
        self.reconnect_attempts = 0
        self.dropped_messages = 0
        self.resyncs = 0
        self.not_ready_reason: str | None = None  # set when the server is a replica or a cluster node
        self._cluster_enabled: bool | None = None

    def _make_client(self, max_connections: int, command_timeout: float, connect_timeout: float) -> Any:
        pool = connection_pool(
            self.target,
            max_connections=max_connections,
            command_timeout=command_timeout,
            connect_timeout=connect_timeout,
            client_name=self._client_name,
        )
        return Redis.from_pool(pool)

    # -- naming ---------------------------------------------------------------

    def keys(self, execution_id: str) -> tuple[str, str, str]:
        """The stream, meta and idempotency keys of ``execution_id`` (one hash slot)."""
        base = f"{self.prefix}:{{{execution_id}}}"
        return f"{base}:stream", f"{base}:meta", f"{base}:idem"

    def channel(self, execution_id: str) -> str:
        """The pub/sub channel of ``execution_id``."""
        return f"{self.prefix}:{{{execution_id}}}:live"

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Start the pub/sub reader; wait briefly for the first connection.

        An unreachable Redis does not stop the instance from starting: it
        reports not ready (``/readyz`` 503) and keeps reconnecting.
        """
        self._first_connect = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read_forever(), name="redis-pubsub-reader")
        try:
            await asyncio.wait_for(asyncio.shield(self._first_connect), self.connect_timeout + 1.0)
        except TimeoutError:
            log.error(
                "Redis at %s is unreachable; starting anyway and reconnecting in the background",
                self.target.describe(),
            )
            return
        with contextlib.suppress(BrokerUnavailable):
            await self.ping()  # logs a replica or a cluster node as the reason for not being ready

    async def close(self) -> None:
        """Stop the reader and close every connection (queued publishes answer 503)."""
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        _fail(self._queued, BrokerUnavailable(_UNREACHABLE))  # a flusher cancelled before it ran resolved nothing
        self._queued = []
        await self._lane.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        await self._drop_pubsub()
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()

    # -- publishing -------------------------------------------------------------

    def _script_calls(self, drafts: Iterable[EventDraft]) -> list[_Call]:
        """The publish script's keys and arguments for each draft (in PUBLISH_LUA's order), each packed at once.

        One f-string per call, encoded with the rest of the pipeline: packing each
        argument on its own (a type check, an encode, a format) cost more than the
        rest of a publish's own work. An execution's keys and channel are packed
        once (:meth:`_names`), the time once per pipeline.
        """
        now = _bulk(str(int(time.time() * 1000)))
        names = self._packed_names
        calls = []
        for draft in drafts:
            keys, packed_keys, packed_channel = names.get(draft.execution_id) or self._names(draft.execution_id)
            key = draft.idempotency_key
            packed = (
                f"{packed_keys}{_bulk(draft.head)}{_bulk(draft.tail)}{_EVENTS.get(draft.event) or _bulk(draft.event)}"
                f"{_TERMINAL if draft.terminal else _NOT_TERMINAL}{_bulk(key) if key else _NO_KEY}{self._limits}"
                f"{now}{packed_channel}{_bulk(new_epoch())}"
            )
            calls.append((keys, packed))
        return calls

    def _names(self, execution_id: str) -> tuple[tuple[str, str, str], str, str]:
        """``execution_id``'s keys, the keys packed as bulk strings, and its channel packed (kept for reuse)."""
        names = self._packed_names
        if len(names) >= _NAMES_KEPT:
            names.clear()
        keys = self.keys(execution_id)
        names[execution_id] = entry = (keys, "".join(map(_bulk, keys)), _bulk(self.channel(execution_id)))
        return entry

    def _result(self, draft: EventDraft, reply: Any) -> PublishResult:
        """The result of one script call; no ``Event``: the listener gets the event from pub/sub."""
        status, seq, epoch = reply[0], reply[1], reply[2]  # integers and a string, as RESP carries them
        if status < 0:
            raise ExecutionFinished()
        if status == 0:
            return PublishResult(draft.execution_id, seq, True, None, epoch)
        self.published += 1
        if len(reply) > 3:
            self.idempotency_keys_forgotten += reply[3]
        return PublishResult(draft.execution_id, seq, False, None, epoch)

    async def publish(self, draft: EventDraft) -> PublishResult:
        """Run the publish script; the listener gets the event through pub/sub.

        Publishes queued in one event-loop turn are sent together as one
        pipeline (each its own script call and result), so throughput grows
        with concurrency instead of stopping at one event per round trip; up to
        ``_DEPTH`` pipelines are in flight at once (:meth:`_flush_lane`).
        """
        if not self.coalesce:
            (result,) = await self._pipeline([draft])
            if isinstance(result, RelayError):
                raise result
            return result
        loop = self._loop
        if loop is None:  # the first publish; the lane's connection lives on this loop from now on
            loop = self._loop = asyncio.get_running_loop()  # on Python 3.11, a getpid() each call: asked once
        future: asyncio.Future[PublishResult | RelayError] = loop.create_future()
        self._queued.append((draft, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush_lane() if self.pipelined else self._flush_queued())
        elif self.pipelined and not self._kicked:
            self._kicked = True
            loop.call_soon(self._kick)
        outcome = await future
        if isinstance(outcome, RelayError):
            raise outcome
        return outcome

    def _kick(self) -> None:
        """At the end of a loop turn: write what the turn queued, when the lane has room for it."""
        self._kicked = False
        connection = self._lane.open
        if self._queued and connection is not None and len(self._lane.in_flight) < _DEPTH:
            self._send_queued(connection)

    def _send_queued(self, connection: Connection) -> None:
        """Write the queued publishes as one pipeline on ``connection``; it is in flight until answered."""
        if not self._queued:
            return
        batch, self._queued = self._queued[:_MAX_PIPELINE], self._queued[_MAX_PIPELINE:]
        calls = self._script_calls([draft for draft, _ in batch])
        payload, count = self._payload(calls)
        try:
            if connection._writer is None:  # disconnected meanwhile
                raise RuntimeError("the connection is closed")
            connection._writer.write(payload)  # a full socket buffers it; the reply's timeout covers a stuck server
        except (RuntimeError, OSError) as exc:  # uvloop raises RuntimeError on a closed transport
            # Nothing was sent: the callers may retry at once.
            _fail(batch, failure(RedisConnectionError(f"Error while writing to the Redis server: {exc}"), PUBLISH))
            return
        self._lane.in_flight.append((batch, calls, count, time.monotonic()))
        if self._watchdog is None and self._loop is not None:
            self._watchdog = self._loop.call_later(self.command_timeout, self._check_lane)

    def _check_lane(self) -> None:
        """Fail the lane when its oldest pipeline has waited ``command_timeout`` for its replies.

        One timer for the lane instead of a timeout around every read (``asyncio.timeout``
        cost more than the rest of reading a pipeline's replies): the flusher's read raises
        a timeout, drops the connection and answers every pipeline in flight with 503.
        """
        self._watchdog = None
        in_flight, loop = self._lane.in_flight, self._loop
        if not in_flight or loop is None:
            return
        left = in_flight[0][3] + self.command_timeout - time.monotonic()
        if left > 0:
            self._watchdog = loop.call_later(left, self._check_lane)
            return
        connection = self._lane.connection
        if connection is not None:
            late = RedisTimeoutError(f"no reply from the Redis server within {self.command_timeout:g} s")
            redis_wire.interrupt(connection, late)

    async def _flush_lane(self) -> None:
        """Keep publishes flowing on the lane until none is queued or in flight; answer each pipeline in order.

        Up to ``_DEPTH`` pipelines are in flight: while this task waits for the oldest
        one's replies (Redis answers in order), publishes queued meanwhile are written
        at the end of their loop turn (:meth:`_kick`), so the relay prepares the next
        pipeline while Redis runs the last one instead of each waiting for the other.
        A broken connection fails every pipeline in flight (503, never resent: a lost
        reply may hide an applied publish); the next one takes a checked connection.
        """
        lane = self._lane
        in_flight = lane.in_flight
        try:
            while self._queued or in_flight:
                if not in_flight:
                    await self._open_lane()
                    continue
                answered = await self._answered()
                if any(isinstance(r, NoScriptError) for _, _, replies in answered for r in replies):
                    lane.open = None  # reloading the script and resending takes the lane alone
                    while in_flight:
                        answered += await self._answered()
                for batch, calls, replies in answered:
                    _answer(batch, await self._finish([draft for draft, _ in batch], calls, replies, lane))
                if not in_flight:
                    lane.open = None  # the next pipeline checks the connection first
                elif lane.open is not None and self._queued and len(in_flight) < _DEPTH:
                    self._send_queued(lane.open)
        except BaseException as exc:  # cancelled (closing) or a bug: no caller may hang
            await self._abandon_lane()
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.exception("publishing a pipeline failed")
        finally:
            lane.open = None

    async def _open_lane(self) -> None:
        """Check the lane's connection (as the pool would) and write the queued publishes on it."""
        try:
            connection = await self._lane.acquire()
        except _BROKEN as exc:
            _fail(self._queued[:_MAX_PIPELINE], failure(exc, PUBLISH))
            self._queued = self._queued[_MAX_PIPELINE:]
            return
        self._send_queued(connection)
        self._lane.open = connection

    async def _answered(self) -> list[tuple[_Queued, list[_Call], list[Any]]]:
        """The oldest pipeline in flight with its replies (or all of them, when the connection broke).

        A broken connection is dropped (replies may be pending on it) and every
        pipeline in flight gets a :class:`BrokerUnavailable` for each reply.
        """
        lane = self._lane
        connection = lane.connection
        assert connection is not None  # a pipeline in flight went out on it
        batch, calls, count, written = lane.in_flight[0]
        try:
            raw = await redis_wire.read_replies(connection, count, None, lane.feed)  # the deadline: _check_lane
        except _BROKEN as exc:
            lane.open = None
            await connection.disconnect(nowait=True)
            error = failure(exc, PUBLISH)
            now = time.monotonic()
            for items, _, _, sent_at in lane.in_flight:
                metrics.broker_timed("publish", now - sent_at, len(items))
            broken = [(items, sent, [error] * len(sent)) for items, sent, _, _ in lane.in_flight]
            lane.in_flight.clear()
            return broken
        lane.in_flight.popleft()
        metrics.broker_timed("publish", time.monotonic() - written, len(batch))
        return [(batch, calls, self._replies(calls, raw))]

    async def _abandon_lane(self) -> None:
        """Answer every publish in flight or queued with a 503 and drop the connection if replies are pending."""
        lane = self._lane
        lane.open = None
        if lane.in_flight and lane.connection is not None:
            await lane.connection.disconnect(nowait=True)  # never reuse it: replies may be pending
        error = BrokerUnavailable(_UNREACHABLE)
        while lane.in_flight:
            _fail(lane.in_flight.popleft()[0], error)
        _fail(self._queued, error)
        self._queued = []

    async def _flush_queued(self) -> None:
        """Send queued publishes, one pipeline at a time, until none are left (brokers that are not :attr:`pipelined`).

        The cluster broker's :meth:`_send_calls` splits each pipeline by node, on the nodes' own connections.
        """
        lane = self._lane
        while self._queued:
            batch, self._queued = self._queued[:_MAX_PIPELINE], self._queued[_MAX_PIPELINE:]
            started = time.monotonic()
            try:
                results = await self._pipeline([draft for draft, _ in batch], lane)
                metrics.broker_timed("publish", time.monotonic() - started, len(batch))
            except BaseException as exc:  # cancelled (closing) or a bug: no caller may hang
                _fail([*batch, *self._queued], BrokerUnavailable(_UNREACHABLE))
                self._queued = []
                if isinstance(exc, asyncio.CancelledError):
                    raise
                log.exception("publishing a pipeline failed")
                return
            _answer(batch, results)

    async def publish_many(self, drafts: Sequence[EventDraft]) -> list[PublishResult | RelayError]:
        """Pipeline one script call per draft; results in order.

        If the pipeline fails as a whole, every item reports BrokerUnavailable
        (some may have been applied: publishers retry with their idempotency keys).
        """
        results: list[PublishResult | RelayError] = []
        for i in range(0, len(drafts), _MAX_PIPELINE):
            results.extend(await self._pipeline(drafts[i : i + _MAX_PIPELINE]))
        return results

    async def _pipeline(
        self, drafts: Sequence[EventDraft], lane: _Lane | None = None
    ) -> list[PublishResult | RelayError]:
        """One EVALSHA per draft in one round trip; load the script and resend if Redis lost it."""
        if not drafts:
            return []
        calls = self._script_calls(drafts)
        replies = await self._send_calls(calls, lane)
        return await self._finish(drafts, calls, replies, lane)

    async def _send_calls(self, calls: list[_Call], lane: _Lane | None = None) -> list[Any]:
        """Send the calls on ``lane``'s connection or a pooled one (the cluster broker groups them by node)."""
        if lane is not None:
            return await self._send_pipeline(calls, lane.acquire, lane.release)
        pool = self._redis.connection_pool
        return await self._send_pipeline(calls, pool.get_connection, pool.release)

    async def _finish(
        self, drafts: Sequence[EventDraft], calls: list[_Call], replies: list[Any], lane: _Lane | None = None
    ) -> list[PublishResult | RelayError]:
        """Turn the replies into results, after resending the items Redis answered NOSCRIPT."""
        if any(isinstance(r, NoScriptError) for r in replies):
            # After a restart, failover or SCRIPT FLUSH. A NOSCRIPT item did not run, so
            # it is safe to send again (only those: the others ran). Normally every item
            # is NOSCRIPT and the order is kept; a flush in the middle of a pipeline
            # could let a resent item take its seq after a later one.
            redis_errors.counted("noscript", "the scripts are loaded again")
            retry = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
            try:
                await self._load_scripts([calls[i] for i in retry])
            except _BROKEN as exc:
                error = failure(exc, PUBLISH)
                again: list[Any] = [error] * len(retry)
            else:
                again = await self._send_calls([calls[i] for i in retry], lane)
            for n, i in enumerate(retry):
                replies[i] = again[n]
        results: list[PublishResult | RelayError] = []
        for draft, reply in zip(drafts, replies, strict=True):
            if isinstance(reply, RelayError):
                results.append(reply)
                continue
            if isinstance(reply, Exception):  # an error reply (OOM, READONLY, ...)
                results.append(failure(reply, PUBLISH))
                continue
            try:
                results.append(self._result(draft, reply))
            except ExecutionFinished as exc:
                results.append(exc)
        return results

    async def _load_scripts(self, calls: list[_Call]) -> None:
        """SCRIPT LOAD the publish script where ``calls`` go (one server here).

        NOSCRIPT mostly means Redis restarted, so the pooled connection this takes
        may have died with the old server: loading is idempotent, and is sent once more.
        """
        try:
            self._publish_script.sha = await self._redis.script_load(self.publish_source)
        except _STALE:
            self._publish_script.sha = await self._redis.script_load(self.publish_source)

    async def _send_pipeline(self, calls: list[_Call], acquire: Any, release: Any, asking: bool = False) -> list[Any]:
        """Run the EVALSHA calls in one round trip on one connection; one reply (or error) per call.

        The calls are packed here, in one pass, rather than through redis-py's
        pipeline, whose per-argument encoding was most of a publish's CPU time.
        Per-call error replies (NOSCRIPT, MOVED, READONLY) come back as exceptions
        in the list; a failed connection makes every item a BrokerUnavailable
        (never resent: a lost reply may hide an applied publish).

        With ``RELAY_REDIS_MIN_REPLICAS``, ``WAIT`` follows in the same round trip
        (after an ``EXPIRE``, a write, so that ``WAIT`` also covers what a
        duplicate's first publish wrote), and every accepted event becomes
        :class:`ReplicasUnavailable` when too few replicas acknowledged in time.
        ``asking`` sends ``ASKING`` before each call (a cluster slot being imported).
        """
        payload, count = self._payload(calls, asking)
        try:
            connection = await acquire()
        except _BROKEN as exc:
            return [failure(exc, PUBLISH)] * len(calls)
        try:
            await redis_wire.send(connection, payload, self.command_timeout)
            # Error replies (NOSCRIPT, MOVED, READONLY) come back in the list; the connection is fine.
            return self._replies(calls, await redis_wire.read_replies(connection, count, self.command_timeout), asking)
        except _BROKEN as exc:
            await connection.disconnect(nowait=True)
            return [failure(exc, PUBLISH)] * len(calls)
        except BaseException:
            await connection.disconnect(nowait=True)  # replies may be pending: never reuse it
            raise
        finally:
            await release(connection)

    def _payload(self, calls: list[_Call], asking: bool = False) -> tuple[bytes, int]:
        """The RESP of a pipeline of ``calls`` (with ``WAIT`` when replicas are required) and its reply count."""
        payload = _pack_evalsha(self._publish_script.sha, calls, asking)
        count = len(calls) * (2 if asking else 1)
        if self.min_replicas > 0:
            meta = calls[-1][0][1]
            payload += _pack(("EXPIRE", meta, self.history_ttl))
            payload += _pack(("WAIT", self.min_replicas, max(1, int(self.min_replicas_timeout * 1000))))
            count += 2
        return payload, count

    def _replies(self, calls: list[_Call], replies: list[Any], asking: bool = False) -> list[Any]:
        """One reply per call out of a pipeline's raw replies (without ``WAIT``'s and ``ASKING``'s)."""
        waiting = self.min_replicas > 0
        if waiting:
            *replies, _, acknowledged = replies  # ..., EXPIRE, WAIT
        if asking:
            replies = replies[1::2]  # without the +OK to each ASKING
        if waiting and int(acknowledged) < self.min_replicas:
            replies = self._unreplicated(replies, int(acknowledged))
        return replies

    def _unreplicated(self, replies: list[Any], acknowledged: int) -> list[Any]:
        """Replace every accepted (or duplicate) reply by a 503: too few replicas have it."""
        message = (
            f"the event is on the Redis primary, but only {acknowledged} of the {self.min_replicas} replicas "
            f"required by RELAY_REDIS_MIN_REPLICAS acknowledged it within {self.min_replicas_timeout:g} s, so it "
            "was not acknowledged; retry with the same idempotency_key (the retry is answered as a duplicate, "
            "never stored twice)"
        )
        redis_errors.counted("replicas", f"{acknowledged} of {self.min_replicas} replicas acknowledged")
        error = ReplicasUnavailable(message)
        return [r if isinstance(r, Exception) or int(r[0]) < 0 else error for r in replies]

    # -- reading ------------------------------------------------------------------

    async def history(
        self, execution_id: str, after: int = 0, limit: int | None = None, *, create: bool = True
    ) -> HistoryPage:
        """Retained events after ``after`` and the epoch, read in one script (a consistent snapshot)."""
        if after >= _MAX_STREAM_SEQ:  # no stream id that high: XRANGE would refuse the start id
            page = await self.history(execution_id, 0, 1, create=create)
            page.events = []
            return page
        # The start id is built here: Lua numbers are doubles and would print a large seq as 9.0e+15.
        args = (f"{max(0, after) + 1}-0", limit or 0, new_epoch() if create else "", self.history_ttl)
        try:
            reply = await self._history_script(keys=self.keys(execution_id), args=args)
        except _STALE:
            # A read may be sent again (publishes never are): once, for a pooled connection that
            # died with the server it knew (a Redis restart leaves one per idle pool slot).
            try:
                reply = await self._history_script(keys=self.keys(execution_id), args=args)
            except _BROKEN as exc:
                raise failure(exc, READ) from None
        except _BROKEN as exc:
            raise failure(exc, READ) from None
        if not reply:
            return HistoryPage()
        latest, terminal, updated, first, epoch = int(reply[0]), reply[1] == "1", int(reply[2]), int(reply[3]), reply[4]
        events = [
            Event(int(reply[i]), reply[i + 2], reply[i + 3] == "1", reply[i + 1], 0.0, epoch)
            for i in range(5, len(reply), 4)
        ]
        return HistoryPage(events, latest, first, terminal, updated / 1000.0, epoch)

    async def ping(self) -> None:
        """Ready only on a primary that answers ``ROLE`` within ``ping_timeout``, with live delivery up.

        A replica (a failover demoted it, or the URL names one) and a cluster node
        reached through a plain URL are not ready; the reason is in the error
        (the ``/readyz`` body) and logged once when it appears.
        """
        try:
            problem = await asyncio.wait_for(self._server_problem(), self.ping_timeout)
        except BROKEN_OR_LATE as exc:
            raise failure(exc, NOT_READY) from None
        if problem != self.not_ready_reason:
            if problem:
                log.error("not ready: %s", problem)
            elif self.not_ready_reason:
                log.info("ready again: the Redis server is a primary")
            self.not_ready_reason = problem
        if problem:
            raise BrokerUnavailable(problem)
        if not self._connected:
            raise BrokerUnavailable("Redis answers, but the pub/sub connection for live events is reconnecting")

    async def _server_problem(self) -> str | None:
        """Why the server cannot take publishes (a replica, a cluster node), or None."""
        pool = self._redis.connection_pool
        if isinstance(pool, SentinelConnectionPool):
            await pool.get_master_address()  # also drops idle connections to a primary that was replaced
        if self._cluster_enabled is None:
            info = await self._redis.info("cluster")
            self._cluster_enabled = bool(int(info.get("cluster_enabled", 0)))
        if self._cluster_enabled:
            return CLUSTER_NODE
        role = await self._redis.execute_command("ROLE")
        if role and role[0] != "master":
            where = f" of {role[1]}:{role[2]}" if len(role) > 2 else ""
            return (
                f"the Redis server is a read-only replica{where}, so publishes would fail; point "
                "RELAY_BROKER_URL at the primary, or use redis+sentinel:// to follow failovers"
            )
        return None

    # -- live delivery --------------------------------------------------------------

    async def subscribe(self, execution_id: str) -> None:
        """SUBSCRIBE to the execution's channel; return once Redis confirmed it."""
        channel = self.channel(execution_id)
        pubsub = self._pubsub
        if not self._connected or pubsub is None:
            raise BrokerUnavailable("the event broker (Redis) is unreachable; live events are unavailable")
        if channel in self._channels:
            return
        confirmed = asyncio.get_running_loop().create_future()
        self._confirm[channel] = confirmed
        self._channels[channel] = execution_id
        try:
            await pubsub.subscribe(channel)
            await asyncio.wait_for(asyncio.shield(confirmed), self.connect_timeout)
        except BaseException as exc:
            self._channels.pop(channel, None)
            if self._confirm.get(channel) is confirmed:
                del self._confirm[channel]
            if not confirmed.done():
                confirmed.cancel()
            # AttributeError: redis-py writing to a connection torn down meanwhile (Redis restarting).
            if isinstance(exc, RedisError | OSError | TimeoutError | AttributeError):
                raise failure(exc, SUBSCRIBE) from None
            raise

    async def unsubscribe(self, execution_id: str) -> None:
        """UNSUBSCRIBE; a broken connection is rebuilt without the channel anyway."""
        channel = self.channel(execution_id)
        if self._channels.pop(channel, None) is None:
            return
        pubsub = self._pubsub
        if self._connected and pubsub is not None:
            # AttributeError: redis-py writing to a connection torn down meanwhile (Redis restarting).
            with contextlib.suppress(RedisError, OSError, AttributeError):
                await pubsub.unsubscribe(channel)

    async def _read_forever(self) -> None:
        """Keep one pub/sub connection up; reconnect with backoff after a failure."""
        delay = self.reconnect_min
        first = True
        while True:
            pubsub = self._redis.pubsub()
            self._pubsub = pubsub
            keepalive: asyncio.Task[None] | None = None
            try:
                pending = {self._control, *self._channels}
                await pubsub.subscribe(*pending)
                self._last_seen = time.monotonic()
                keepalive = asyncio.create_task(self._keepalive(pubsub))
                await self._read(pubsub, pending, first)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # RedisError, OSError or a bug: log, reconnect
                if self._connected:
                    log.warning("Redis pub/sub connection lost (%s); reconnecting", _describe(exc))
                    delay = self.reconnect_min  # it was up: the first retry comes quickly
                else:
                    log.debug("Redis pub/sub connection attempt failed: %s", _describe(exc))
            finally:
                self._connected = False
                if keepalive is not None:
                    keepalive.cancel()
                for future in self._confirm.values():
                    if not future.done():
                        future.set_exception(BrokerUnavailable("the pub/sub connection to Redis was lost"))
                        future.exception()
                self._confirm.clear()
                await self._drop_pubsub()
            first = False
            self.reconnect_attempts += 1
            await asyncio.sleep(delay * (0.5 + random.random()))  # jitter: pods do not reconnect in lockstep
            delay = min(delay * 2, self.reconnect_max)

    async def _read(self, pubsub: PubSub, pending: set[str], first: bool) -> None:
        """Dispatch messages in arrival order; mark connected once resubscribed.

        Live events are dispatched by the connection's protocol as they are parsed
        (:meth:`_on_live`, :func:`.redis_wire.take_over`), with no task woken for
        them; this task gets the rest, and redis-py's ``handle_message`` keeps the
        bookkeeping of those (subscribe, unsubscribe, pong). Without hiredis, it
        reads everything off the connection itself.
        """
        connection = pubsub.connection
        assert connection is not None  # subscribed before reading
        feed = redis_wire.take_over(connection, self._on_live)  # live events dispatched as they arrive
        while True:
            if feed is None:
                messages = await redis_wire.read_available(connection)
            else:
                messages = await feed.read(None)
            self._last_seen = time.monotonic()
            for reply in messages:
                if isinstance(reply, Exception):
                    raise reply  # an error reply on a pub/sub connection: reconnect
                if reply[0] == "message":
                    self._dispatch(reply[1], reply[2])
                    continue
                message = await pubsub.handle_message(reply)
                if message is not None and message["type"] == "subscribe":
                    channel = message["channel"]
                    future = self._confirm.pop(channel, None)
                    if future is not None and not future.done():
                        future.set_result(None)
                    if pending:
                        pending.discard(channel)
                        if not pending:
                            self._on_connected(first)
                # pong, unsubscribe: nothing to do beyond _last_seen

    def _on_live(self, reply: Any) -> bool:
        """A reply as the pub/sub connection parses it: a live event is dispatched at once (True), the rest left."""
        if isinstance(reply, list) and reply[0] == "message":  # a RESP3 push is a list subclass
            self._last_seen = time.monotonic()
            self._dispatch(reply[1], reply[2])
            return True
        return False

    def _dispatch(self, channel: str, data: str) -> None:
        """Hand one live event to the listener (or a control message to its handler)."""
        execution_id = self._channels.get(channel)
        if execution_id is None:
            if channel == self._control:
                self._on_control(data)
            return  # unsubscribed meanwhile
        listener = self._listener
        if listener is None:
            return
        try:
            epoch, seq, terminal, event, frame = data.split("|", 4)
            # Stamped on arrival (the message does not carry the accept time), so the hub need not copy the event.
            listener(execution_id, Event(int(seq), event, terminal == "1", frame, time.time(), epoch))
        except Exception:
            self.dropped_messages += 1
            log.exception("a live event could not be dispatched")

    def _on_control(self, data: str) -> None:
        """A control message from some instance: ``revoke|kind|at|value``."""
        try:
            verb, kind, at, value = data.split("|", 3)
            if verb == "revoke" and self._on_revoke is not None:
                self._on_revoke(kind, value, float(at))
        except Exception:
            log.exception("a control message could not be handled")

    # -- revocation ---------------------------------------------------------------

    def _revocation_key(self, kind: str, value: str) -> str:
        # Hash-tagged like the control channel: on a cluster, every revocation and its
        # announcement live in one slot, so a token check is one node's round trip.
        return f"{{{self.prefix}:control}}:revoked:{kind}:{value}"

    async def revoke(self, kind: str, value: str, at: float, until: float) -> None:
        """Store the revocation with an expiry, then announce it to every instance."""
        ttl_ms = max(1, int((until - time.time()) * 1000))
        try:
            await self._redis.set(self._revocation_key(kind, value), repr(at), px=ttl_ms)
            await self._announce(f"revoke|{kind}|{at!r}|{value}")
        except _BROKEN as exc:
            raise failure(exc, WRITE) from None

    async def _announce(self, message: str) -> None:
        """Publish on the control channel (sharded on a cluster)."""
        await self._redis.publish(self._control, message)

    async def is_revoked(self, jti: str | None, sub: str, iat: int | None) -> bool:
        """Look up the token's jti and sub revocations (two keys, any slot)."""
        try:
            replies = await self._revocations(jti, sub)
        except _STALE:
            try:  # a read: sent once more on a pooled connection that died with an old server
                replies = await self._revocations(jti, sub)
            except _BROKEN as exc:
                raise failure(exc, REVOCATION) from None
        except _BROKEN as exc:
            raise failure(exc, REVOCATION) from None
        if len(replies) > 1 and replies[1] is not None:
            return True
        return replies[0] is not None and (iat is None or iat <= float(replies[0]))

    async def _revocations(self, jti: str | None, sub: str) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(self._revocation_key("sub", sub))
            if jti is not None:
                pipe.get(self._revocation_key("jti", jti))
            replies: list[Any] = await pipe.execute()
        return replies

    def _on_connected(self, first: bool) -> None:
        self._connected = True
        if self._first_connect is not None and not self._first_connect.done():
            self._first_connect.set_result(None)
        if not first:
            log.info("Redis pub/sub reconnected; %d executions resubscribed", len(self._channels))
        # Anything published while the connection was down is only in history.
        if self._on_resync is not None and not first:
            self.resyncs += 1
            self._on_resync()

    async def _keepalive(self, pubsub: PubSub) -> None:
        """PING the pub/sub connection when idle; drop it if Redis stops answering.

        Under Sentinel, also drop it once the primary has changed (a command
        connection or ``/readyz`` learnt the new address): a demoted primary still
        relays PUBLISH from its new primary, but the reconnect must resync.
        """
        pool = self._redis.connection_pool
        while True:
            await asyncio.sleep(self.keepalive_interval)
            connection = pubsub.connection
            if isinstance(pool, SentinelConnectionPool) and connection is not None:
                with contextlib.suppress(RedisError, OSError):
                    await pool.get_master_address()
                if pool.master_address not in (None, (connection.host, connection.port)):
                    log.warning("the Redis primary moved to %s:%s; reconnecting live delivery", *pool.master_address)
                    await connection.disconnect(nowait=True)
                    return
            idle = time.monotonic() - self._last_seen
            if idle > 3 * self.keepalive_interval:
                log.warning("Redis pub/sub connection silent for %.0f s; reconnecting", idle)
                if pubsub.connection is not None:
                    await pubsub.connection.disconnect(nowait=True)
                return
            if idle >= self.keepalive_interval:
                # AttributeError: the connection is being torn down; the reader notices and reconnects.
                with contextlib.suppress(RedisError, OSError, AttributeError):
                    await pubsub.ping()

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    def stats(self) -> dict[str, int]:
        """Events accepted here, channels subscribed, pub/sub state, reconnect attempts and resyncs."""
        return {
            "events_accepted": self.published,
            "redis_channels_subscribed": len(self._channels),
            "redis_pubsub_connected": int(self._connected),
            "redis_pubsub_reconnect_attempts": self.reconnect_attempts,
            "redis_messages_dropped": self.dropped_messages,
            "redis_resyncs": self.resyncs,
            "idempotency_keys_forgotten": self.idempotency_keys_forgotten,
        }


def _answer(batch: _Queued, results: list[PublishResult | RelayError]) -> None:
    """Hand each caller its result (a caller that went away is skipped)."""
    for (_, future), result in zip(batch, results, strict=True):
        if not future.done():
            future.set_result(result)


def _fail(batch: _Queued, error: RelayError) -> None:
    """Answer every caller in ``batch`` with ``error``."""
    for _, future in batch:
        if not future.done():
            future.set_result(error)


def _pack(command: tuple[Any, ...]) -> bytes:
    """RESP for one command."""
    parts = [b"*%d\r\n" % len(command)]
    for item in command:
        data = item.encode() if isinstance(item, str) else str(item).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


def _bulk(text: str) -> str:
    """``text`` as a RESP bulk string, still text (its length counted in UTF-8 bytes)."""
    return f"${len(text) if text.isascii() else len(text.encode())}\r\n{text}\r\n"


_TERMINAL, _NOT_TERMINAL, _NO_KEY = _bulk("1"), _bulk("0"), _bulk("")
_EVENTS = {event: _bulk(event) for event in EVENT_TYPES}  # the event types, packed once
_SCRIPT_ITEMS = 13  # keys and arguments of one publish script call: 3 + 10, as _script_calls packs them


def _pack_evalsha(sha: str, calls: list[_Call], asking: bool = False) -> bytes:
    """RESP for ``EVALSHA sha 3 k1 k2 k3 a1 ...`` per call, concatenated (``ASKING`` before each with ``asking``)."""
    head = f"*{3 + _SCRIPT_ITEMS}\r\n$7\r\nEVALSHA\r\n{_bulk(sha)}$1\r\n3\r\n"
    if asking:
        head = "*1\r\n$6\r\nASKING\r\n" + head
    return "".join([f"{head}{packed}" for _, packed in calls]).encode()


def _describe(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
