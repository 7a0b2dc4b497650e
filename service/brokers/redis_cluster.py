"""The Redis Cluster broker: the Redis broker's keys and scripts, spread over the cluster's nodes.

What changes next to one server (``redis.py``):

- **Publishes are grouped by node.** The queued script calls are split by
  the node that owns each execution's slot (every key of an execution shares
  the ``{execution_id}`` hash tag) and each node gets one pipelined round
  trip, all nodes at once. An item refused with ``MOVED`` or ``ASK`` did not
  run, so it is sent again where the cluster says (``ASKING`` first for
  ``ASK``), as is one refused with ``TRYAGAIN`` (a slot half-migrated). An
  item whose connection failed is never resent: its reply may have been lost
  after it ran, and the publisher's retry with its idempotency key is the
  safe path.
- **Sharded pub/sub.** The script ends with ``SPUBLISH``, which the cluster
  delivers only on the shard that owns the channel (a classic ``PUBLISH`` is
  copied to every node). The broker keeps one ``SSUBSCRIBE`` connection per
  node that owns a channel it needs. When a slot migrates, Redis ends its
  subscriptions with a ``SUNSUBSCRIBE`` push; the broker then re-reads the
  slot map, subscribes on the new owner and tells subscribers to re-read
  history (resync), so nothing published meanwhile is lost or doubled. A
  node connection that fails is handled the same way.
- **Revocations and the control channel** share the ``{<prefix>:control}``
  hash tag: one slot, one node.
- Database 0 only (the configuration refuses another).

History reads and revocations go through redis-py's ``RedisCluster``, which
follows ``MOVED``/``ASK`` itself; it is built without retries, so no command
is resent after a connection error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any, ClassVar

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import AskError, MovedError, RedisError, TryAgainError

from ..errors import BrokerUnavailable
from . import redis_wire
from .redis import NOT_READY, PUBLISH_LUA, RedisBroker, _Call, _Lane
from .redis_errors import BROKEN as _BROKEN
from .redis_errors import BROKEN_OR_LATE, SUBSCRIBE, failure

__all__ = ["RedisClusterBroker"]

log = logging.getLogger("relay.broker.redis")

_SHARDED_PUBLISH = PUBLISH_LUA.replace("redis.call('PUBLISH',", "redis.call('SPUBLISH',")
assert _SHARDED_PUBLISH != PUBLISH_LUA, "the publish script no longer ends with redis.call('PUBLISH', ...)"

_REDIRECTS = 20  # MOVED/ASK/TRYAGAIN rounds before an item answers 503
_TRYAGAIN_PAUSE = 0.05  # seconds: a migrating slot's keys move in milliseconds (20 rounds: up to ~1 s)


class _Shard:
    """One node's sharded pub/sub connection and the channels confirmed on it."""

    def __init__(self, name: str, pubsub: PubSub, client: Redis) -> None:
        self.name = name
        self.pubsub = pubsub
        self.client = client
        self.channels: set[str] = set()
        self.leaving: set[str] = set()  # SUNSUBSCRIBE sent by us, not pushed by a migration
        self.reader: asyncio.Task[None] | None = None
        self.last_seen = time.monotonic()


class RedisClusterBroker(RedisBroker):
    """History in Redis Streams on a Redis Cluster, live events over sharded pub/sub."""

    publish_source: ClassVar[str] = _SHARDED_PUBLISH
    #: Publishes go to several nodes' connections, one pipeline per node at a time (no lane).
    pipelined: ClassVar[bool] = False

    def __init__(self, url: str, history_size: int, history_ttl: int, prefix: str = "relay", **options: Any) -> None:
        super().__init__(url, history_size, history_ttl, prefix, **options)
        self._cluster: RedisCluster = self._redis  # type: ignore[assignment]  # built by _make_client below
        self._shards: dict[str, _Shard] = {}
        self._placing: dict[str, asyncio.Future[None]] = {}  # channel -> SSUBSCRIBE confirmation
        self._lost = asyncio.Event()  # a channel lost its node: the supervisor places it again
        self._refresh = False  # re-read the slot map before the next grouping
        self._supervisor: asyncio.Task[None] | None = None
        self.migrations = 0

    def _make_client(self, max_connections: int, command_timeout: float, connect_timeout: float) -> Any:
        kwargs = self.target.connection_kwargs()
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self.target.hosts],
            decode_responses=True,
            socket_connect_timeout=connect_timeout,
            socket_timeout=command_timeout,
            socket_keepalive=True,
            max_connections=max_connections,
            retry=Retry(NoBackoff(), 0),  # MOVED/ASK are followed; a connection error is never resent
            client_name=self._client_name,
            **kwargs,
        )

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Read the slot map, subscribe the control channel on its node, keep every subscription placed."""
        self._first_connect = asyncio.get_running_loop().create_future()
        self._supervisor = asyncio.create_task(self._supervise(), name="redis-cluster-pubsub")
        try:
            await asyncio.wait_for(asyncio.shield(self._first_connect), self.connect_timeout + 1.0)
        except TimeoutError:
            log.error(
                "Redis Cluster at %s is unreachable; starting anyway and reconnecting in the background",
                self.target.describe(),
            )

    async def close(self) -> None:
        """Stop the supervisor and the node readers, then close every connection."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        for shard in list(self._shards.values()):
            await self._drop_shard(shard, lost=False)
        await super().close()

    # -- publishing: grouped by node ------------------------------------------------------

    async def _send_calls(self, calls: list[_Call], lane: _Lane | None = None) -> list[Any]:
        """Send each call to the node owning its slot, all nodes at once; follow MOVED/ASK/TRYAGAIN.

        A node's connection is cheap to take (no lane: ``lane`` is ignored).
        """
        replies: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        asking: dict[int, str] = {}  # item -> node named by its ASK
        for _ in range(_REDIRECTS):
            try:
                groups = await self._group(calls, pending, asking)
            except _BROKEN as exc:
                error = failure(exc, "the event was not accepted, retry later")
                for i in pending:
                    replies[i] = error
                return replies
            sent = await asyncio.gather(
                *(self._send_to(node, [calls[i] for i in items], ask) for (node, ask), items in groups.items())
            )
            pending = []
            for items, answers in zip(groups.values(), sent, strict=True):
                for i, reply in zip(items, answers, strict=True):
                    replies[i] = reply
                    if self._redirected(i, reply, asking):
                        pending.append(i)  # refused before running: safe to send again
            if not pending:
                break
            if any(isinstance(replies[i], TryAgainError) for i in pending):
                await asyncio.sleep(_TRYAGAIN_PAUSE)
        return replies

    def _redirected(self, item: int, reply: Any, asking: dict[int, str]) -> bool:
        """Whether the cluster refused ``item`` before running it (MOVED, ASK, TRYAGAIN); note where to go."""
        asking.pop(item, None)
        if isinstance(reply, MovedError):
            self._refresh = True
            return True
        if isinstance(reply, AskError):
            asking[item] = f"{reply.host}:{reply.port}"
            return True
        return isinstance(reply, TryAgainError)

    async def _group(
        self, calls: list[_Call], items: list[int], asking: dict[int, str]
    ) -> dict[tuple[ClusterNode, bool], list[int]]:
        """Items by (node, whether ASKING goes first), in their original order."""
        manager = self._cluster.nodes_manager
        if self._refresh or not manager.slots_cache:
            self._refresh = False
            await manager.initialize()
        groups: dict[tuple[ClusterNode, bool], list[int]] = {}
        for i in items:
            target = asking.get(i)
            node = manager.nodes_cache.get(target) if target else None
            if node is None:
                node = manager.get_node_from_slot(key_slot(calls[i][0][0].encode()))
            groups.setdefault((node, target is not None), []).append(i)
        return groups

    async def _send_to(self, node: ClusterNode, calls: list[_Call], asking: bool) -> list[Any]:
        """One round trip to ``node`` (the base class's pipeline, on that node's connections)."""

        async def acquire() -> Connection:
            connection = node.acquire_connection()
            await connection.connect()
            return connection

        async def release(connection: Connection) -> None:
            node.release(connection)

        replies = await self._send_pipeline(calls, acquire, release, asking=asking)
        if any(isinstance(r, BrokerUnavailable) for r in replies):
            self._refresh = True  # a node failed: its slots may have a new owner by the next publish
        return replies

    async def _load_scripts(self, calls: list[_Call]) -> None:
        """SCRIPT LOAD on every primary (redis-py sends it to all of them)."""
        self._publish_script.sha = await self._cluster.script_load(self.publish_source)

    # -- readiness ----------------------------------------------------------------------

    async def ping(self) -> None:
        """Ready while the cluster answers ``cluster_state:ok`` and every needed channel is subscribed."""
        try:
            info = await asyncio.wait_for(self._cluster.cluster_info(), self.ping_timeout)
        except BROKEN_OR_LATE as exc:
            raise failure(exc, NOT_READY) from None
        state = info.get("cluster_state") if isinstance(info, dict) else None
        if state != "ok":
            raise BrokerUnavailable(f"the Redis Cluster reports cluster_state:{state}; publishes would fail")
        if not self._connected:
            raise BrokerUnavailable("Redis Cluster answers, but the sharded pub/sub for live events is reconnecting")

    # -- live delivery: one SSUBSCRIBE connection per node ---------------------------------

    async def subscribe(self, execution_id: str) -> None:
        """SSUBSCRIBE on the node owning the execution's channel; return once confirmed."""
        channel = self.channel(execution_id)
        if not self._connected:
            raise BrokerUnavailable("the event broker (Redis Cluster) is unreachable; live events are unavailable")
        if channel in self._channels:
            return
        self._channels[channel] = execution_id
        try:
            await self._place(channel)
        except BaseException as exc:
            self._channels.pop(channel, None)
            await self._leave(channel)
            if isinstance(exc, RedisError | OSError | TimeoutError | AttributeError):
                raise failure(exc, SUBSCRIBE) from None
            raise

    async def unsubscribe(self, execution_id: str) -> None:
        """SUNSUBSCRIBE where the channel is (a failed node forgets it anyway)."""
        channel = self.channel(execution_id)
        if self._channels.pop(channel, None) is not None:
            await self._leave(channel)

    async def _leave(self, channel: str) -> None:
        for shard in self._shards.values():
            if channel in shard.channels:
                shard.channels.discard(channel)
                shard.leaving.add(channel)
                with contextlib.suppress(RedisError, OSError, AttributeError):
                    await shard.pubsub.sunsubscribe(channel)

    async def _place(self, channel: str) -> None:
        """SSUBSCRIBE ``channel`` on its slot's owner and wait for the confirmation."""
        manager = self._cluster.nodes_manager
        if self._refresh or not manager.slots_cache:
            self._refresh = False
            await manager.initialize()
        node = manager.get_node_from_slot(key_slot(channel.encode()))
        shard = await self._shard(node)
        confirmed = self._placing.get(channel)
        if confirmed is None or confirmed.done():
            confirmed = self._placing[channel] = asyncio.get_running_loop().create_future()
        shard.leaving.discard(channel)
        await shard.pubsub.ssubscribe(channel)
        try:
            await asyncio.wait_for(asyncio.shield(confirmed), self.connect_timeout)
        finally:
            if self._placing.get(channel) is confirmed:
                del self._placing[channel]
        shard.channels.add(channel)

    async def _shard(self, node: ClusterNode) -> _Shard:
        """The pub/sub connection to ``node``, opened (with its reader) on first use."""
        shard = self._shards.get(node.name)
        if shard is not None:
            return shard
        kwargs = self.target.connection_kwargs()
        client = Redis(
            host=node.host,
            port=int(node.port),
            decode_responses=True,
            socket_connect_timeout=self.connect_timeout,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),
            client_name=self._client_name,
            **kwargs,
        )
        pubsub = client.pubsub()
        shard = self._shards[node.name] = _Shard(node.name, pubsub, client)
        await pubsub.connect()
        shard.reader = asyncio.create_task(self._read_shard(shard), name=f"redis-shard-{node.name}")
        return shard

    async def _read_shard(self, shard: _Shard) -> None:
        """Dispatch one node's messages; a pushed SUNSUBSCRIBE (slot migrated) or a failure re-places channels."""
        keepalive = asyncio.create_task(self._shard_keepalive(shard))
        connection = shard.pubsub.connection
        assert connection is not None  # connected by _shard before this reader starts
        try:
            while True:
                replies = await redis_wire.read_available(connection)
                shard.last_seen = time.monotonic()
                for reply in replies:
                    if isinstance(reply, Exception):
                        raise reply  # an error reply (MOVED to a stale SSUBSCRIBE): place the channels again
                    if reply[0] == "smessage":  # the common case, without redis-py's handle_message
                        self._on_shard_message(shard, {"type": "smessage", "channel": reply[1], "data": reply[2]})
                        continue
                    message = await shard.pubsub.handle_message(reply)
                    if message is not None:
                        self._on_shard_message(shard, message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failed node, or an error reply (MOVED to a stale SSUBSCRIBE)
            log.warning("Redis Cluster pub/sub connection to %s lost (%s); resubscribing", shard.name, exc)
            self._refresh = True
            await self._drop_shard(shard, lost=True)
        finally:
            keepalive.cancel()

    def _on_shard_message(self, shard: _Shard, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        if kind == "smessage":
            if channel == self._control:
                self._on_control(message["data"])
            elif channel in shard.channels:
                self._dispatch(channel, message["data"])
        elif kind == "ssubscribe":
            future = self._placing.get(channel)
            if future is not None and not future.done():
                future.set_result(None)
        elif kind == "sunsubscribe":
            if channel in shard.leaving:
                shard.leaving.discard(channel)
                return
            # Pushed by Redis: the channel's slot now lives on another node.
            shard.channels.discard(channel)
            shard.pubsub.shard_channels.pop(channel, None)  # never resubscribed here
            self.migrations += 1
            log.info("Redis Cluster moved the slot of %s; subscribing on its new node", channel)
            self._refresh = True
            self._lost.set()

    async def _shard_keepalive(self, shard: _Shard) -> None:
        """PING an idle node connection; drop it when it stays silent (a half-open TCP connection)."""
        while True:
            await asyncio.sleep(self.keepalive_interval)
            idle = time.monotonic() - shard.last_seen
            if idle > 3 * self.keepalive_interval:
                if shard.pubsub.connection is not None:
                    await shard.pubsub.connection.disconnect(nowait=True)
                return
            if idle >= self.keepalive_interval:
                with contextlib.suppress(RedisError, OSError, AttributeError):
                    await shard.pubsub.ping()

    async def _drop_shard(self, shard: _Shard, lost: bool) -> None:
        if self._shards.get(shard.name) is shard:
            del self._shards[shard.name]
        if lost and shard.channels:
            self._lost.set()
        shard.channels.clear()
        if shard.reader is not None and shard.reader is not asyncio.current_task():
            shard.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await shard.reader
        with contextlib.suppress(Exception):
            await shard.pubsub.aclose()
        with contextlib.suppress(Exception):
            await shard.client.aclose()

    def _unplaced(self) -> list[str]:
        placed = set().union(*(shard.channels for shard in self._shards.values()))
        return [c for c in (self._control, *self._channels) if c not in placed]

    async def _supervise(self) -> None:
        """Keep every needed channel subscribed on its owner; resync after any was lost."""
        delay = self.reconnect_min
        first = True
        while True:
            missing = self._unplaced()
            if missing:
                self._connected = False
                try:
                    for channel in missing:
                        if channel == self._control or channel in self._channels:
                            await self._place(channel)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.debug("placing Redis Cluster subscriptions failed: %s", exc)
                    self._refresh = True
                    self.reconnect_attempts += 1
                    await asyncio.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, self.reconnect_max)
                    continue
                if self._unplaced():
                    continue
                delay = self.reconnect_min
                self._on_connected(first)
                first = False
            self._lost.clear()
            if not self._unplaced():
                await self._lost.wait()

    async def _announce(self, message: str) -> None:
        """SPUBLISH on the control channel: only its shard carries it."""
        await self._cluster.execute_command("SPUBLISH", self._control, message)

    def stats(self) -> dict[str, int]:
        """The Redis broker's counters plus node connections and slot migrations seen."""
        return {
            **super().stats(),
            "redis_cluster_shard_connections": len(self._shards),
            "redis_cluster_slot_migrations": self.migrations,
        }
