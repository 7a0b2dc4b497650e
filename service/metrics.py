"""Prometheus metrics: every number ``/metrics`` exports, defined in one place.

The hot paths never call prometheus-client directly. A frame delivered to a
thousand sockets costs a thousand increments of a plain ``int`` (and a
thousand bucket look-ups for the latency histogram), not a thousand locked
updates: the counts are kept in this module's plain structures and *flushed*
into the prometheus metrics in bulk, by :func:`flush`, which runs before every
scrape and, with several workers, once a second in every worker.

Several workers (``RELAY_WORKERS`` > 1) are aggregated by prometheus-client's
multiprocess mode: :func:`prepare_multiprocess` (called by ``serve`` before
any worker starts) points ``PROMETHEUS_MULTIPROC_DIR`` at an empty directory,
every worker writes its values there, and whichever worker answers the scrape
reads them all. Counters and histograms are summed; the gauges use
``livesum`` (the sum over live workers; a stopping worker removes its files
with :func:`stop`).

This is the relay's one counting system: ``GET /internal/v1/stats`` is
:func:`snapshot`, the same families read from the same registry as
``/metrics`` (the multiprocess directory with several workers, so both speak
for the whole instance), turned into JSON. Nothing else keeps a count.

The broker's own figures (``Broker.stats()``: pub/sub reconnects, resyncs,
dropped messages, channels) are read at each flush and exported as
``relay_broker_*``; a broker that reports a new key must be given a family in
``_BROKER_GAUGES`` / ``_BROKER_COUNTERS`` (tests/test_metrics.py checks that
every key of both brokers is mapped).

Nothing here imports Sanic, nor the relay or the brokers (no import cycle,
not even for types): the ``/metrics`` route lives in ``routes/ops.py``,
callers hand plain values in, and :func:`start` is given callables to read.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import os
import shutil
import tempfile
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from functools import wraps
from pathlib import Path
from typing import Any, Protocol

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

__all__ = [
    "BROKER_STATS",
    "CONTENT_TYPE",
    "METRIC_NAMES",
    "MULTIPROC_ENV",
    "address_allowed",
    "auth_failure",
    "broker_error",
    "broker_timed",
    "compression_cache",
    "connection_closed",
    "connection_opened",
    "delivered",
    "delivery_failed",
    "fallback_request",
    "flush",
    "ingest_consumer",
    "instrument_broker",
    "limit_exceeded",
    "multiprocess_dir",
    "observe_publish",
    "parse_allowlist",
    "prepare_multiprocess",
    "publish_rejected",
    "published",
    "remove_multiprocess_dir",
    "render",
    "replayed",
    "revoked_close",
    "set_draining",
    "slow_consumer",
    "snapshot",
    "start",
    "stop",
    "ws_closed",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST

# `_created` series double the output and no dashboard here uses them.
prometheus_client.disable_created_metrics()

# Seconds. Publishing and broker calls take ~0.1 ms in memory, ~1 ms on Redis;
# delivery to a socket adds queueing behind earlier frames.
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_DELIVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# -- the prometheus metrics ----------------------------------------------------------

_CONNECTIONS = Gauge(
    "relay_connections_open",
    "Open subscriber connections on this instance, by transport.",
    ["transport"],
    multiprocess_mode="livesum",
)
_EXECUTIONS = Gauge(
    "relay_executions_subscribed", "Executions with at least one local subscriber.", multiprocess_mode="livesum"
)
_DRAINING = Gauge(
    "relay_draining", "1 while the instance drains for shutdown (readyz answers 503).", multiprocess_mode="livemax"
)
_EVENTS = Counter("relay_events_accepted", "Events accepted from publishers, by event type.", ["event"])
_DUPLICATES = Counter("relay_events_duplicate", "Publishes answered as duplicates of an idempotency key.")
_REJECTED = Counter("relay_publish_rejected", "Publishes refused by the relay, by error code.", ["error"])
_FRAMES = Counter("relay_frames_delivered", "Event frames handed to subscriber sockets and streams.")
_FAILURES = Counter("relay_delivery_failures", "Writes to a subscriber that failed (the subscriber is closed).")
_SLOW = Counter("relay_slow_consumer_closes", "Subscribers closed with 4008 because they fell behind.")
_CLOSES = Counter("relay_ws_closes", "WebSocket closes, by close code and by who closed.", ["code", "initiator"])
_AUTH = Counter(
    "relay_auth_failures", "Refused credentials (subscriber tokens, Origins, publisher keys), by reason.", ["reason"]
)
_REPLAYS = Counter("relay_replays", "Subscriptions that started by replaying retained events.")
_REPLAYED = Counter("relay_replayed_events", "Events sent from history when a subscription started.")
_GAPS = Counter("relay_replay_gaps", "Subscriptions whose history no longer reached back to their last_seq.")
_LIMITS = Counter("relay_limit_exceeded", "Connections or frames refused by a configured limit, by limit.", ["limit"])
_BROKER_ERRORS = Counter(
    "relay_broker_errors",
    "Failed broker (Redis) commands, by kind: moved, ask, tryagain, clusterdown, readonly, noscript, oom, "
    "auth, loading, timeout, connection, replicas, other.",
    ["kind"],
)
_FALLBACK = Counter("relay_fallback_requests", "Polling, long-polling, state and SSE requests, by kind.", ["kind"])
_OPENED = Counter("relay_connections_opened", "Subscriber connections opened, by transport.", ["transport"])
_REVOKED = Counter("relay_revoked_closes", "Live subscribers closed with 4500 because their token was revoked.")
_BROKER_RECONNECTS = Counter("relay_broker_reconnects", "Attempts to rebuild the broker's pub/sub connection.")
_BROKER_RESYNCS = Counter("relay_broker_resyncs", "Times live delivery re-read history after a pub/sub reconnect.")
_BROKER_DROPPED = Counter("relay_broker_messages_dropped", "Pub/sub messages that could not be dispatched.")
_BROKER_CHANNELS = Gauge(
    "relay_broker_channels_subscribed", "Broker channels subscribed for local subscribers.", multiprocess_mode="livesum"
)
_BROKER_CONNECTED = Gauge(
    "relay_broker_connected",
    "1 while the broker's live delivery is connected (the memory broker always is).",
    multiprocess_mode="livemin",
)
_BROKER_SHARDS = Gauge(
    "relay_broker_shard_connections",
    "Redis Cluster: sharded pub/sub connections, one per node owning a channel this process needs.",
    multiprocess_mode="livesum",
)
_BROKER_MIGRATIONS = Counter(
    "relay_broker_slot_migrations", "Redis Cluster: subscribed channels whose slot moved (resubscribed and resynced)."
)
_BROKER_RETAINED = Gauge(
    "relay_broker_executions_retained",
    "Executions whose history this process holds (memory broker).",
    multiprocess_mode="livesum",
)
_PUBLISH_SECONDS = Histogram(
    "relay_publish_duration_seconds",
    "Time to accept a publish (one event, or one batch), broker included.",
    ["mode"],
    buckets=_FAST_BUCKETS,
)
_BROKER_SECONDS = Histogram(
    "relay_broker_operation_duration_seconds", "Time of each broker operation.", ["operation"], buckets=_FAST_BUCKETS
)
_DELIVERY_SECONDS = Histogram(
    "relay_delivery_latency_seconds",
    "Time from accepting an event to handing its frame to a subscriber's socket.",
    buckets=_DELIVERY_BUCKETS,
)

_GC_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_GC_SECONDS = Histogram(
    "relay_gc_pause_seconds",
    "Time the process stood still in CPython's cycle collector, by generation "
    "(full collections, generation 2, grow with the number of open connections).",
    ["generation"],
    buckets=_GC_BUCKETS,
)

# Ingest consumers (docs/ingest.md): counts copied from each consumer's own ints at flush time.
_INGEST_CONSUMED = Counter(
    "relay_ingest_consumed", "Items published from an ingest source (duplicates included), by source.", ["source"]
)
_INGEST_DUPLICATES = Counter(
    "relay_ingest_duplicates", "Ingested items answered as duplicates of their idempotency key.", ["source"]
)
_INGEST_DEAD = Counter(
    "relay_ingest_dead_lettered", "Ingested items refused for good and moved to the dead letters.", ["source"]
)
_INGEST_RETRIES = Counter(
    "relay_ingest_retries", "Ingest batches kept and retried after a transient failure (broker down).", ["source"]
)
_INGEST_UP = Gauge(
    "relay_ingest_up", "1 while the consumer is connected to its source.", ["source"], multiprocess_mode="livemax"
)
_INGEST_LEADER = Gauge(
    "relay_ingest_leader",
    "1 while this instance is the one consuming (outbox lock holder, active AMQP consumer).",
    ["source"],
    multiprocess_mode="livemax",
)
_INGEST_LAG = Gauge(
    "relay_ingest_lag_seconds",
    "Age of the oldest message or row seen and not yet consumed (0 when none waits).",
    ["source"],
    multiprocess_mode="livemax",
)

#: Every metric family this module exports (the dashboard may use only these).
METRIC_NAMES = frozenset(
    {
        "relay_connections_open",
        "relay_executions_subscribed",
        "relay_draining",
        "relay_events_accepted_total",
        "relay_events_duplicate_total",
        "relay_publish_rejected_total",
        "relay_frames_delivered_total",
        "relay_delivery_failures_total",
        "relay_slow_consumer_closes_total",
        "relay_ws_closes_total",
        "relay_auth_failures_total",
        "relay_replays_total",
        "relay_replayed_events_total",
        "relay_replay_gaps_total",
        "relay_fallback_requests_total",
        "relay_limit_exceeded_total",
        "relay_broker_errors_total",
        "relay_connections_opened_total",
        "relay_revoked_closes_total",
        "relay_broker_reconnects_total",
        "relay_broker_resyncs_total",
        "relay_broker_messages_dropped_total",
        "relay_broker_channels_subscribed",
        "relay_broker_connected",
        "relay_broker_executions_retained",
        "relay_ingest_consumed_total",
        "relay_ingest_duplicates_total",
        "relay_ingest_dead_lettered_total",
        "relay_ingest_retries_total",
        "relay_ingest_up",
        "relay_ingest_leader",
        "relay_ingest_lag_seconds",
        "relay_broker_shard_connections",
        "relay_broker_slot_migrations_total",
        "relay_idempotency_keys_forgotten_total",
        "relay_compression_cache_bytes",
        "relay_compression_uncached_total",
        *(
            f"{h}_{s}"
            for h in (
                "relay_publish_duration_seconds",
                "relay_broker_operation_duration_seconds",
                "relay_delivery_latency_seconds",
                "relay_gc_pause_seconds",
            )
            for s in ("bucket", "sum", "count")
        ),
    }
)


# -- cheap local accumulators, flushed into the metrics above --------------------------


class _Tally:
    """Pending increments of one counter, per label values, as plain ints."""

    __slots__ = ("metric", "pending")

    def __init__(self, metric: Counter) -> None:
        self.metric = metric
        self.pending: dict[tuple[str, ...], int] = {}

    def add(self, labels: tuple[str, ...] = (), amount: int = 1) -> None:
        self.pending[labels] = self.pending.get(labels, 0) + amount

    def flush(self) -> None:
        pending, self.pending = self.pending, {}
        for labels, amount in pending.items():
            (self.metric.labels(*labels) if labels else self.metric).inc(amount)


class _Buckets:
    """Pending observations of one histogram, per label values: bucket counts and a sum."""

    __slots__ = ("bounds", "kept", "metric", "pending", "plain")

    def __init__(self, metric: Histogram, bounds: tuple[float, ...]) -> None:
        self.metric = metric
        self.bounds = (*bounds, float("inf"))
        self.pending: dict[tuple[str, ...], list[float]] = {}
        # Counts per bucket then the sum, without labels: updated in place by the hottest caller.
        self.plain = [0.0] * (len(self.bounds) + 1)
        self.kept: dict[tuple[str, ...], list[float]] = {}  # the same, per label values, see keep()

    def keep(self, labels: tuple[str, ...]) -> list[float]:
        """The state of ``labels`` (counts per bucket, then the sum), for a hot caller to update in place.

        The same list until the process ends: no look-up per observation.
        """
        return self.kept.setdefault(labels, [0.0] * (len(self.bounds) + 1))

    def observe(self, value: float, labels: tuple[str, ...] = (), count: int = 1) -> None:
        state = self.pending.get(labels) if labels else self.plain
        if state is None:
            state = self.pending[labels] = [0.0] * (len(self.bounds) + 1)
        state[bisect_left(self.bounds, value)] += count  # first bound >= value, as prometheus does
        state[-1] += value * count

    def flush(self) -> None:
        pending, self.pending = self.pending, {}
        if any(self.plain):
            pending[()] = self.plain[:]
            self.plain[:] = [0.0] * len(self.plain)
        for labels, kept in self.kept.items():
            if any(kept):
                other = pending.get(labels)
                pending[labels] = [a + b for a, b in zip(kept, other, strict=True)] if other else kept[:]
                kept[:] = [0.0] * len(kept)
        for labels, state in pending.items():
            child = self.metric.labels(*labels) if labels else self.metric
            # prometheus-client has no public "add n observations"; its histogram keeps one value
            # per bucket (non-cumulative) and a sum, which is what we add to. tests/test_metrics.py
            # checks the exported result, so an incompatible upgrade fails there.
            for i, count in enumerate(state[:-1]):
                if count:
                    child._buckets[i].inc(count)
            child._sum.inc(state[-1])


_events = _Tally(_EVENTS)
_duplicates = _Tally(_DUPLICATES)
_rejected = _Tally(_REJECTED)
_failures = _Tally(_FAILURES)
_slow = _Tally(_SLOW)
_closes = _Tally(_CLOSES)
_auth = _Tally(_AUTH)
_replays = _Tally(_REPLAYS)
_replayed = _Tally(_REPLAYED)
_gaps = _Tally(_GAPS)
_fallback = _Tally(_FALLBACK)
_limits = _Tally(_LIMITS)
_opened = _Tally(_OPENED)
_revoked = _Tally(_REVOKED)
_broker_errors = _Tally(_BROKER_ERRORS)
_publish_seconds = _Buckets(_PUBLISH_SECONDS, _FAST_BUCKETS)
_broker_seconds = _Buckets(_BROKER_SECONDS, _FAST_BUCKETS)
_delivery_seconds = _Buckets(_DELIVERY_SECONDS, _DELIVERY_BUCKETS)
_TALLIES = (
    _events,
    _duplicates,
    _rejected,
    _failures,
    _slow,
    _closes,
    _auth,
    _replays,
    _replayed,
    _gaps,
    _fallback,
    _limits,
    _opened,
    _revoked,
    _broker_errors,
)
_gc_seconds = _Buckets(_GC_SECONDS, _GC_BUCKETS)
_HISTOGRAMS = (_publish_seconds, _broker_seconds, _delivery_seconds, _gc_seconds)
_GC_LABELS = (("0",), ("1",), ("2",))
_gc_started = [0.0]


def _gc_timed(phase: str, info: dict[str, int]) -> None:
    """A ``gc.callbacks`` hook: time each collection (full ones are this service's longest pauses)."""
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    elif _gc_started[0]:
        _gc_seconds.observe(time.perf_counter() - _gc_started[0], _GC_LABELS[info["generation"]])
        _gc_started[0] = 0.0


def _time_collections() -> None:
    if _gc_timed not in gc.callbacks:
        gc.callbacks.append(_gc_timed)


class _State:
    """The per-frame counters, kept as bare ints (the hottest path of all)."""

    __slots__ = ("connections", "frames", "frames_flushed")

    def __init__(self) -> None:
        self.connections: dict[str, int] = {}
        self.frames = 0
        self.frames_flushed = 0


class _Source:
    """What a flush reads from one running relay: its executions and its broker's figures."""

    __slots__ = ("broker_stats", "executions", "last")

    def __init__(self, executions: Callable[[], int], broker_stats: Callable[[], Mapping[str, int]]) -> None:
        self.executions = executions
        self.broker_stats = broker_stats
        self.last: dict[str, int] = {}  # broker counters as of the previous flush


#: Broker.stats() keys exported as gauges (summed over relays) and as counters (their increments).
_IDEMPOTENCY_FORGOTTEN = Counter(
    "relay_idempotency_keys_forgotten",
    "Idempotency keys dropped because their event left the retained history (both brokers).",
)
_COMPRESSION_CACHE_BYTES = Gauge(
    "relay_compression_cache_bytes",
    "Bytes held by the shared permessage-deflate cache (compressed frames and their dictionaries).",
    multiprocess_mode="livesum",
)
_COMPRESSION_UNCACHED = Counter(
    "relay_compression_uncached",
    "Frames too large for the shared compression cache, compressed for each socket instead.",
)

_BROKER_GAUGES = {
    "redis_channels_subscribed": _BROKER_CHANNELS,
    "executions_retained": _BROKER_RETAINED,
    "redis_cluster_shard_connections": _BROKER_SHARDS,
}
_BROKER_COUNTERS = {
    "redis_pubsub_reconnect_attempts": _BROKER_RECONNECTS,
    "redis_resyncs": _BROKER_RESYNCS,
    "redis_messages_dropped": _BROKER_DROPPED,
    "redis_cluster_slot_migrations": _BROKER_MIGRATIONS,
    "idempotency_keys_forgotten": _IDEMPOTENCY_FORGOTTEN,
}
#: relay_broker_connected: the lowest over relays; relay_events_accepted counts events_accepted already.
_BROKER_CONNECTED_KEY = "redis_pubsub_connected"
#: Every Broker.stats() key this module knows what to do with.
BROKER_STATS = frozenset({*_BROKER_GAUGES, *_BROKER_COUNTERS, _BROKER_CONNECTED_KEY, "events_accepted"})

_state = _State()
_sources: dict[int, _Source] = {}  # by id() of the owner given to start()
_draining: set[int] = set()  # ids of owners draining


class IngestFigures(Protocol):
    """What an ingest consumer (``service.ingest.Consumer``) exposes for export, read at each flush."""

    @property
    def source(self) -> str:
        """``amqp`` or ``outbox``."""

    @property
    def consumed(self) -> int:
        """Items published (duplicates included)."""

    @property
    def duplicates(self) -> int:
        """Items answered as duplicates."""

    @property
    def dead_lettered(self) -> int:
        """Items moved to the dead letters."""

    @property
    def retries(self) -> int:
        """Batches kept and retried."""

    @property
    def up(self) -> bool:
        """Connected to its source."""

    @property
    def leader(self) -> bool:
        """The instance consuming."""

    @property
    def lag(self) -> float:
        """Age of the oldest unconsumed item, in seconds."""


# Each live ingest consumer and the counts of it already exported.
_ingest: weakref.WeakKeyDictionary[IngestFigures, dict[str, int]] = weakref.WeakKeyDictionary()


# -- what the rest of the relay calls ---------------------------------------------------


def published(event: str, duplicate: bool) -> None:
    """One publish was accepted (or answered as a duplicate)."""
    if duplicate:
        _duplicates.add()
    else:
        _events.add((event,))


_single_seconds = _publish_seconds.keep(("single",))
_publish_bounds = _publish_seconds.bounds


def published_single(event: str, duplicate: bool, seconds: float) -> None:
    """One single-event publish answered in ``seconds``: :func:`published` and ``observe_publish(seconds, "single")``.

    One call where the publish path made four (the tally and the histogram update
    are inlined): the closed-loop POST's hottest metrics.
    """
    if duplicate:
        _duplicates.add()
    else:
        pending = _events.pending
        pending[(event,)] = pending.get((event,), 0) + 1
    _single_seconds[bisect_left(_publish_bounds, seconds)] += 1  # first bound >= value, as prometheus does
    _single_seconds[-1] += seconds


def publish_rejected(error: str) -> None:
    """A publish was refused with the relay error code ``error`` (``execution_finished``, ...)."""
    _rejected.add((error,))


def observe_publish(seconds: float, mode: str) -> None:
    """Record how long one publish (``mode`` ``single``) or batch (``batch``) took."""
    _publish_seconds.observe(seconds, (mode,))


_delivery_plain = _delivery_seconds.plain
_delivery_bounds = _delivery_seconds.bounds


def delivered(accepted_at: float) -> None:
    """One event frame was handed to a subscriber's sink; ``accepted_at`` is its accept time (unix).

    For frames that waited in a subscription's queue (and replayed ones, with
    ``accepted_at`` 0); the frames a fan-out writes at once go to :func:`delivered_live`.
    """
    _state.frames += 1
    if accepted_at:  # the histogram update is inlined
        seconds = time.time() - accepted_at
        _delivery_plain[bisect_left(_delivery_bounds, seconds)] += 1
        _delivery_plain[-1] += seconds


def delivered_live(frames: int, accepted_at: float) -> None:
    """One fan-out handed a live event's frame to ``frames`` sockets; ``accepted_at`` is its accept time (unix).

    Counted once per event, not once per socket: the latency is read when the
    fan-out ends, so each of its frames is recorded with the time the last one
    was written (later than the first by the fan-out's length, ~15 ms for 1,000 sockets).
    """
    if not frames:
        return
    _state.frames += frames
    if accepted_at:
        seconds = time.time() - accepted_at
        _delivery_plain[bisect_left(_delivery_bounds, seconds)] += frames
        _delivery_plain[-1] += seconds * frames


def delivery_failed() -> None:
    """A write to a subscriber failed."""
    _failures.add()


def slow_consumer() -> None:
    """A subscriber was closed with 4008."""
    _slow.add()


def replayed(events: int, gap: bool = False) -> None:
    """A subscription started with ``events`` events from history (``gap``: history did not reach back)."""
    if events:
        _replays.add()
        _replayed.add(amount=events)
    if gap:
        _gaps.add()


def auth_failure(reason: str) -> None:
    """Credentials were refused for ``reason`` (a short word, never the credential)."""
    _auth.add((reason,))


def compression_cache(size: int, uncached: bool = False) -> None:
    """The shared compression cache now holds ``size`` bytes; ``uncached``: a frame too large for it."""
    _COMPRESSION_CACHE_BYTES.set(size)
    if uncached:
        _COMPRESSION_UNCACHED.inc()


def limit_exceeded(limit: str) -> None:
    """A configured limit (``connections``, ``per_execution``, ``per_sub``, ``frame_rate``) refused something."""
    _limits.add((limit,))


def ws_closed(code: int | None, initiator: str) -> None:
    """A WebSocket ended with ``code``, closed by ``server`` or ``client``."""
    _closes.add((str(code if code is not None else 1006), initiator))


def connection_opened(transport: str) -> None:
    """A subscriber connection (``ws`` or ``sse``) opened."""
    _state.connections[transport] = _state.connections.get(transport, 0) + 1
    _opened.add((transport,))


def connection_closed(transport: str) -> None:
    """A subscriber connection (``ws`` or ``sse``) closed."""
    _state.connections[transport] = _state.connections.get(transport, 0) - 1


def revoked_close() -> None:
    """A live subscriber was closed because its token was revoked."""
    _revoked.add()


def broker_error(kind: str) -> None:
    """One broker command failed, classified by kind (see ``brokers/redis_errors.py``)."""
    _broker_errors.add((kind,))


def fallback_request(kind: str) -> None:
    """A polling (``poll``, ``long_poll``), ``state`` or ``sse`` request arrived."""
    _fallback.add((kind,))


def ingest_consumer(consumer: IngestFigures) -> None:
    """Export ``consumer``'s counts and state (read at every flush while it lives)."""
    _ingest.setdefault(consumer, {})


def _flush_ingest() -> None:
    for consumer, exported in list(_ingest.items()):
        source = consumer.source
        for name, metric in (
            ("consumed", _INGEST_CONSUMED),
            ("duplicates", _INGEST_DUPLICATES),
            ("dead_lettered", _INGEST_DEAD),
            ("retries", _INGEST_RETRIES),
        ):
            value = getattr(consumer, name)
            if value != exported.get(name, 0):
                metric.labels(source).inc(value - exported.get(name, 0))
                exported[name] = value
        _INGEST_UP.labels(source).set(1 if consumer.up else 0)
        _INGEST_LEADER.labels(source).set(1 if consumer.leader else 0)
        _INGEST_LAG.labels(source).set(consumer.lag)


def set_draining(owner: object, draining: bool) -> None:
    """Export whether ``owner`` (the relay given to :func:`start`) is draining."""
    if draining:
        _draining.add(id(owner))
    else:
        _draining.discard(id(owner))
    _DRAINING.set(1 if _draining else 0)


_BROKER_OPERATIONS = ("publish", "publish_many", "history", "subscribe", "unsubscribe", "ping")


def instrument_broker(broker: object) -> None:
    """Time every operation of a remote ``broker`` into the broker-operation histogram (in place).

    The memory broker is left alone: its operations are a few dictionary lookups, and
    timing them cost more than they do (about 3 µs of a publish's ~130 µs). So are the
    operations a broker names in ``times_itself``: it reports them with :func:`broker_timed`.
    """
    if not getattr(broker, "remote", False):
        return
    own = getattr(broker, "times_itself", ())
    for name in _BROKER_OPERATIONS:
        if name in own:
            continue
        method = getattr(broker, name)
        if getattr(method, "_relay_timed", False):
            continue
        setattr(broker, name, _timed(method, (name,)))


def broker_timed(operation: str, seconds: float, count: int = 1) -> None:
    """``count`` calls of the broker's ``operation`` took ``seconds`` each (e.g. the publishes of one pipeline)."""
    _broker_seconds.observe(seconds, (operation,), count)


def _timed(method: Any, labels: tuple[str, ...]) -> Any:
    @wraps(method)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        finally:
            _broker_seconds.observe(time.perf_counter() - started, labels)

    timed._relay_timed = True  # type: ignore[attr-defined]  # a marker on the wrapper, read back with getattr
    return timed


# -- exporting ---------------------------------------------------------------------------


def flush() -> None:
    """Move the pending local counts into the prometheus metrics and refresh the gauges."""
    frames = _state.frames
    if frames != _state.frames_flushed:
        _FRAMES.inc(frames - _state.frames_flushed)
        _state.frames_flushed = frames
    for tally in _TALLIES:
        tally.flush()
    for histogram in _HISTOGRAMS:
        histogram.flush()
    for transport in ("ws", "sse", *_state.connections):
        _CONNECTIONS.labels(transport).set(max(0, _state.connections.get(transport, 0)))
    sources = tuple(_sources.values())
    _EXECUTIONS.set(sum(source.executions() for source in sources))
    _DRAINING.set(1 if _draining else 0)
    _flush_broker(sources)
    _flush_ingest()


def _flush_broker(sources: tuple[_Source, ...]) -> None:
    """Export the brokers' own figures: gauges as they are, counters by their increments."""
    figures = [(source, source.broker_stats()) for source in sources]
    for key, gauge in _BROKER_GAUGES.items():
        gauge.set(sum(stats.get(key, 0) for _, stats in figures))
    _BROKER_CONNECTED.set(
        min((stats[_BROKER_CONNECTED_KEY] for _, stats in figures if _BROKER_CONNECTED_KEY in stats), default=1)
    )
    for source, stats in figures:
        for key, counter in _BROKER_COUNTERS.items():
            value = stats.get(key, 0)
            if value > source.last.get(key, 0):
                counter.inc(value - source.last.get(key, 0))
            source.last[key] = value


def multiprocess_dir() -> str | None:
    """The directory shared by the workers, when running several."""
    return os.environ.get(MULTIPROC_ENV) or None


def _registry() -> CollectorRegistry:
    """The registry of this process, or with several workers one that reads them all."""
    directory = multiprocess_dir()
    if directory is None:
        return prometheus_client.REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return registry


def render() -> bytes:
    """The Prometheus text exposition of every metric (all workers' when several)."""
    flush()
    return generate_latest(_registry())


def snapshot() -> dict[str, Any]:
    """The relay's metrics as JSON, from the same registry ``/metrics`` renders (all workers' when several).

    ``{"connections", "executions", "counters", "gauges", "histograms"}``: each family by its
    name without ``relay_`` and ``_total``; a labelled family nests one level per label, in
    label order (``counters["ws_closes"]["4008"]["server"]``); a histogram gives its ``count``
    and ``sum``. With several workers, the other workers' figures are as of their last flush
    (at most a second old).
    """
    flush()
    kinds: dict[str, dict[str, Any]] = {"counter": {}, "gauge": {}, "histogram": {}}
    for family in _registry().collect():
        tree = kinds.get(family.type)
        if tree is None or not family.name.startswith("relay_"):
            continue
        name = family.name.removeprefix("relay_")
        for sample in family.samples:
            suffix = sample.name.removeprefix(family.name)
            if family.type == "histogram":
                if suffix not in ("_count", "_sum"):
                    continue
                path = [name, *sample.labels.values(), suffix[1:]]
            elif suffix in ("", "_total"):
                path = [name, *sample.labels.values()]
            else:
                continue
            _put(tree, path, sample.value)
    gauges = kinds["gauge"]
    connections = gauges.get("connections_open", {})
    return {
        "connections": int(sum(connections.values())),
        "executions": int(gauges.get("executions_subscribed", 0)),
        "counters": kinds["counter"],
        "gauges": gauges,
        "histograms": kinds["histogram"],
    }


def _put(tree: dict[str, Any], path: list[str], value: float) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = tree.get(path[-1], 0) + (int(value) if float(value).is_integer() else round(value, 6))


_flusher: asyncio.Task[None] | None = None


async def start(
    owner: object,
    executions: Callable[[], int],
    broker_stats: Callable[[], Mapping[str, int]],
    interval: float = 1.0,
) -> None:
    """Read ``owner``'s (a relay's) executions and broker figures at every flush until :func:`stop`.

    With several workers, flush every ``interval`` seconds.
    """
    global _flusher
    _sources[id(owner)] = _Source(executions, broker_stats)
    _time_collections()
    flush()
    if multiprocess_dir() is not None and (_flusher is None or _flusher.done()):
        _flusher = asyncio.get_running_loop().create_task(_flush_forever(interval))


async def stop(owner: object) -> None:
    """Stop reading ``owner``; a worker process also withdraws its live gauges."""
    global _flusher
    flush()  # its last broker figures
    _sources.pop(id(owner), None)
    _draining.discard(id(owner))
    flush()
    if _flusher is not None and not _sources:
        _flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await _flusher
        _flusher = None
        if multiprocess_dir() is not None:
            multiprocess.mark_process_dead(os.getpid())


async def _flush_forever(interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        flush()


def prepare_multiprocess(workers: int) -> str | None:
    """Before any worker starts: give several workers an empty shared directory.

    Uses ``PROMETHEUS_MULTIPROC_DIR`` when the operator set it (its old ``.db``
    files are removed: they belong to processes of an earlier run), otherwise
    a new temporary directory. Returns the directory this call created (to be
    removed at exit), or None. Must run before prometheus-client is imported
    in a worker, which the spawned workers guarantee.
    """
    if workers <= 1:
        return None
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        for stale in Path(directory).glob("*.db"):
            stale.unlink(missing_ok=True)
        return None
    created = tempfile.mkdtemp(prefix="progress-relay-metrics-")
    os.environ[MULTIPROC_ENV] = created
    return created


def remove_multiprocess_dir(directory: str | None) -> None:
    """Remove the directory :func:`prepare_multiprocess` created."""
    if directory:
        shutil.rmtree(directory, ignore_errors=True)


# -- who may scrape ---------------------------------------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_allowlist(items: Iterable[str]) -> tuple[Network, ...]:
    """Networks from addresses or CIDRs; raises ValueError naming the bad item."""
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(item) from None
    return tuple(networks)


def address_allowed(address: str, allowlist: tuple[Network, ...]) -> bool:
    """Whether a peer at ``address`` may read /metrics (an empty list allows everyone)."""
    if not allowlist:
        return True
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in allowlist)
