"""The chaos soak: every event of an execution reaches every watcher exactly once, whatever breaks.

What runs (everything on 127.0.0.1, everything started here and killed at the end):

* a ``redis-server`` of its own on a free port with ``--appendonly yes
  --appendfsync always``, so every write Redis acknowledged survives a restart;
* two relay instances (``python -m service``) on that Redis, one key prefix;
* one small TCP proxy per instance, which the harness controls: every client
  connects through it, so a connection can be cut in the middle of a frame;
* clients (``websockets``): one token each with its own ``sub``, spread over
  the executions; each reconnects after every drop with ``?last_seq=<last seq
  received>``, alternating instances, pings every ``heartbeat_interval`` and
  reconnects when nothing arrives for ``heartbeat_interval + 10`` s, as the
  documented client does;
* publishers: two per execution, posting concurrently through both instances,
  each event with its own idempotency key, retried (connection errors,
  timeouts, 5xx) against the other instance until a 2xx;
* a fault injector: client-side closes and aborts, mid-frame cuts in the
  proxy, ``kill -9`` of one instance and its restart on the same port, Redis
  restarts with SIGTERM or SIGKILL.

A quarter of the executions finish (``complete``) while faults go on; the
others get their ``complete`` once the fault phase is over. Then the harness
waits for every client to receive its terminal event and checks:

* every client: every event of its execution exactly once, seqs 1..n in
  order, no gap, the terminal event last, each with the payload posted;
* every publisher: every 2xx answer names a seq that the clients received
  with the same payload; every error or non-2xx answer was retried to a 2xx;
  no seq was given to two different events.

The outbox variant (``SoakConfig.outbox_dsn``, ``python -m tests.chaos.soak
--outbox``): the publishers commit rows to a PostgreSQL outbox instead of
POSTing, both instances run the outbox consumer (one holds the lock at a
time, the other takes over when it is killed), and every committed row must
reach every client of its execution exactly once, in order; the outbox and
its dead-letter table must be empty at the end.

``python -m tests.chaos.soak`` runs a long soak; ``tests/chaos/test_soak.py``
a short one of each kind in the normal test run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import PUBLISH_KEY, make_token
from tests.redis_topology import ClusterSetup, SentinelSetup, TopologyServer
from tests.redis_util import RedisServer, ServiceProcess

__all__ = ["PersistentRedis", "Proxy", "SoakConfig", "SoakReport", "run_soak"]

AUTH = {"Authorization": f"Bearer {PUBLISH_KEY}"}
NAMES = "ABCDEFGH"  # instance names in logs
STATUS_TEXTS = ("正在查询 AI 平台", "分析数据中", "生成报告", "collecting sources", "ranking answers")


@dataclass
class SoakConfig:
    """How big and how long; the defaults are the short run of the test suite."""

    clients: int = 150
    executions: int = 20
    fault_seconds: float = 25.0  # how long faults are injected (publishers post meanwhile)
    big_faults: int = 6  # instance kills and Redis restarts, alternating, spread over the fault phase
    small_fault_every: tuple[float, float] = (0.4, 1.2)  # seconds between client drops / proxy cuts
    small_fault_batch: tuple[int, int] = (2, 6)  # connections hit per small fault
    post_every: tuple[float, float] = (0.15, 0.6)  # each of the two publishers of an execution
    start_spread: float = 5.0  # clients join within the first seconds (late ones replay from 1)
    early_share: float = 0.25  # executions that complete while faults go on
    drain_timeout: float = 90.0  # after the last complete, for clients to finish
    seed: int | None = None
    redis_binary: str = "/usr/bin/redis-server"
    verbose: bool = False
    # The outbox variant: publishers insert rows into a PostgreSQL outbox (this DSN) instead of
    # POSTing, and both instances run the outbox consumer (one at a time holds the lock).
    outbox_dsn: str | None = None
    # "single": one redis-server with AOF; "sentinel": a primary, a replica and three Sentinels
    # (RELAY_REDIS_MIN_REPLICAS=1), where the big faults add primary kill -9 (failover) and replica pauses;
    # "cluster": a 3-master Redis Cluster, where they add slot migrations of subscribed executions.
    topology: str = "single"
    workers: tuple[int, ...] = (1, 1)  # one instance per item, with that many RELAY_WORKERS


# -- Redis with append-only persistence ---------------------------------------------------------------


class PersistentRedis(RedisServer):
    """A throwaway redis-server with AOF and ``appendfsync always``: what it acknowledged survives a restart."""

    def persistence(self) -> list[str]:
        """Append-only, fsync'd before every reply; the AOF is loaded back on a restart."""
        log = os.path.join(self.dir, "redis.log")
        return ["--appendonly", "yes", "--appendfsync", "always", "--logfile", log, "--loglevel", "notice"]

    def start(self, timeout: float = 30.0) -> None:
        """Start (or restart on the same port and directory); redis.log's tail in the error if it fails."""
        try:
            super().start(timeout)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}: {self.log_tail()}") from None

    def signal_stop(self, sig: int) -> None:
        """Stop with ``sig`` (SIGTERM: shutdown; SIGKILL: no chance to do anything) and wait for the exit."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def alive(self) -> bool:
        """Whether the process is running."""
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self) -> str:
        """The end of redis.log."""
        with contextlib.suppress(OSError):
            return Path(self.dir, "redis.log").read_text(errors="replace")[-3000:]
        return ""


# -- the proxy ----------------------------------------------------------------------------------------


class FrameTracker:
    """Follows the server-to-client byte stream (HTTP 101, then WebSocket frames) to find frame boundaries."""

    __slots__ = ("head", "header", "remaining", "upgraded")

    def __init__(self) -> None:
        self.upgraded = False
        self.head = b""
        self.header = bytearray()
        self.remaining = 0

    def feed(self, data: bytes) -> tuple[int, list[int]]:
        """Consume ``data``; return where the handshake ended in it (0 if before) and the offsets where frames start."""
        n = len(data)
        i = 0
        if not self.upgraded:
            before = len(self.head)
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                self.head = self.head[-4:]
                return n, []
            i = end + 4 - before
            self.upgraded = True
            self.head = b""
        handshake_end = i
        starts: list[int] = []
        header = self.header
        while i < n:
            if self.remaining:
                take = min(self.remaining, n - i)
                i += take
                self.remaining -= take
                continue
            if not header:
                starts.append(i)
            header.append(data[i])
            i += 1
            if len(header) >= 2:
                length7 = header[1] & 0x7F
                need = 2 + (2 if length7 == 126 else 8 if length7 == 127 else 0) + (4 if header[1] & 0x80 else 0)
                if len(header) == need:
                    if length7 == 126:
                        self.remaining = int.from_bytes(header[2:4], "big")
                    elif length7 == 127:
                        self.remaining = int.from_bytes(header[2:10], "big")
                    else:
                        self.remaining = length7
                    header.clear()
        return handshake_end, starts

    def cut_point(self, data: bytes) -> int | None:
        """An offset in ``data`` strictly inside a WebSocket frame, or None (consumes ``data``)."""
        inside_before = self.upgraded and (self.remaining > 0 or len(self.header) > 0)
        handshake_end, starts = self.feed(data)
        taken = set(starts)
        candidates = [k for k in range(max(1, handshake_end), len(data)) if k not in taken]
        if inside_before and handshake_end == 0 and 0 not in taken:
            candidates.append(0)  # the previous chunk ended inside a frame: forwarding nothing cuts it too
        return random.choice(candidates) if candidates else None


class Link:
    """One proxied connection: client side and upstream side."""

    __slots__ = ("client", "cut_requested", "cut_timer", "dead", "proxy", "tracker", "upstream")

    def __init__(self, proxy: Proxy, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.tracker = FrameTracker()
        self.cut_requested = False
        self.cut_timer: asyncio.TimerHandle | None = None
        self.dead = False

    def abort(self) -> None:
        """Drop both sides at once (no close frame, no FIN handshake of ours)."""
        if self.dead:
            return
        self.dead = True
        if self.cut_timer is not None:
            self.cut_timer.cancel()
        self.client.transport.abort()
        self.upstream.transport.abort()

    def cut(self) -> None:
        """Cut at a random byte inside the next frame the server sends (or after 1 s of silence)."""
        if self.dead or self.cut_requested:
            return
        self.cut_requested = True
        self.cut_timer = asyncio.get_running_loop().call_later(1.0, self._cut_idle)

    def _cut_idle(self) -> None:
        if not self.dead:
            self.proxy.cuts["idle"] += 1
            self.abort()


class Proxy:
    """A TCP proxy in front of one instance; it can cut any connection mid-frame."""

    def __init__(self, name: str, upstream_port: int) -> None:
        self.name = name
        self.upstream_port = upstream_port
        self.links: set[Link] = set()
        self.cuts: Counter[str] = Counter()
        self.refused = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        """Listen on a free loopback port."""
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self.server is not None:
            self.server.close()
        for link in list(self.links):
            link.abort()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.upstream_port), 5)
        except (OSError, TimeoutError):
            self.refused += 1  # the instance is down: like a refused connection for the client
            writer.transport.abort()
            return
        link = Link(self, writer, up_writer)
        self.links.add(link)
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, link, None), self._pump(up_reader, writer, link, link.tracker)
            )
        finally:
            self.links.discard(link)
            link.abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: Link, tracker: FrameTracker | None
    ) -> None:
        try:
            while not link.dead:
                data = await reader.read(65536)
                if not data:
                    break
                if tracker is not None:
                    if link.cut_requested:
                        at = tracker.cut_point(data)
                        if at is None:
                            writer.write(data)  # handshake only: keep waiting for a frame
                            continue
                        writer.write(data[:at])
                        self.cuts["mid_frame"] += 1
                        link.abort()
                        return
                    tracker.feed(data)
                writer.write(data)
                await writer.drain()
        except (OSError, ConnectionError, asyncio.IncompleteReadError):
            pass
        # One side ended: end the other one too (its buffered bytes are flushed first).
        if not link.dead:
            with contextlib.suppress(Exception):
                link.client.close()
            with contextlib.suppress(Exception):
                link.upstream.close()

    def cut_some(self, count: int) -> int:
        """Ask ``count`` random live connections to be cut mid-frame; return how many were picked."""
        links = [link for link in self.links if not link.dead and not link.cut_requested]
        picked = random.sample(links, min(count, len(links)))
        for link in picked:
            link.cut()
        return len(picked)


# -- clients ----------------------------------------------------------------------------------------


class Client:
    """One watcher of one execution, reconnecting like the documented client."""

    def __init__(self, index: int, execution_id: str, soak: Soak) -> None:
        self.name = f"soak-user-{index}"
        self.execution_id = execution_id
        self.token = make_token(execution_id, sub=self.name, ttl=6 * 3600)
        self.soak = soak
        self.instance = index % len(soak.instances)
        self.compression: str | None = "deflate" if index % 3 else None
        self.received: list[tuple[int, str, Any]] = []  # every event frame, in arrival order (duplicates too)
        self.last_seq = 0
        self.ever_connected = False
        self.done = False
        self.ws: ClientConnection | None = None
        self.dropping = False
        self.sessions = 0
        self.connect_failures: Counter[str] = Counter()
        self.close_codes: Counter[str] = Counter()
        self.watchdog_reconnects = 0
        self.anomalies: list[str] = []

    @property
    def connected(self) -> bool:
        """Whether a socket is open and streaming."""
        return self.ws is not None and not self.done

    def drop(self, abort: bool) -> bool:
        """Client-side drop: a normal close (page hidden) or an abort (network gone)."""
        ws = self.ws
        if ws is None or self.done or self.dropping:
            return False
        self.dropping = True
        if abort:
            ws.transport.abort()
        else:
            asyncio.get_running_loop().create_task(ws.close(1000, "page hidden"))
        return True

    async def run(self, start_delay: float, deadline: float) -> None:
        """Connect, read, reconnect after every drop until the terminal event (bounded by ``deadline``)."""
        await asyncio.sleep(start_delay)
        delay = 0.1
        for _attempt in range(100_000):
            if self.done or time.monotonic() > deadline:
                return
            proxy = self.soak.proxies[self.instance]
            self.instance = (self.instance + 1) % len(self.soak.proxies)  # the next attempt: the next instance
            url = f"ws://127.0.0.1:{proxy.port}/ws/executions/{self.execution_id}?token={self.token}"
            if self.ever_connected:
                url += f"&last_seq={self.last_seq}"
            try:
                ws = await connect(
                    url,
                    open_timeout=10,
                    ping_interval=None,
                    close_timeout=3,
                    proxy=None,
                    compression=self.compression,
                    max_queue=64,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.connect_failures[type(exc).__name__] += 1
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)
                continue
            code = await self._session(ws)
            if self.done:
                return
            if code in (4500, 4503, 1008, 1009):
                self.anomalies.append(f"closed with {code}: a client that follows the contract stops here")
                return
            if code == 4029:
                delay = 2.0
            elif code == 1011:
                delay = min(max(delay, 0.2) * 2, 2.0)  # refused while the broker is unreachable
            else:
                delay = 0.1
            await asyncio.sleep(random.uniform(0.02, 0.2) if delay == 0.1 else delay * (0.5 + random.random()))

    async def _session(self, ws: ClientConnection) -> int | None:
        """One connection: ``connected``, replay, live; return the close code (None: no close frame)."""
        self.ws = ws
        self.dropping = False
        pinger: asyncio.Task[None] | None = None
        code: int | None = None
        try:
            try:
                hello = json.loads(await asyncio.wait_for(ws.recv(), 15))
            except TimeoutError:
                self.close_codes["no connected frame in 15 s"] += 1
                return None
            if hello.get("type") != "connected":
                self.anomalies.append(f"first frame is not connected: {hello!r}"[:300])
                return None
            self.sessions += 1
            if self.ever_connected:
                self.soak.reconnects += 1
            if hello.get("gap"):
                self.anomalies.append(f"gap: true after last_seq={self.last_seq}")
            if hello.get("latest_seq", 0) < self.last_seq:
                self.anomalies.append(f"latest_seq {hello.get('latest_seq')} < last seq received {self.last_seq}")
            self.ever_connected = True
            heartbeat = float(hello.get("heartbeat_interval", 30))
            pinger = asyncio.get_running_loop().create_task(self._ping(ws, heartbeat))
            while True:
                try:
                    raw = await asyncio.wait_for(ws.recv(), heartbeat + 10)
                except TimeoutError:
                    self.watchdog_reconnects += 1  # nothing at all for heartbeat + 10 s: reconnect
                    ws.transport.abort()
                    return None
                frame = json.loads(raw)
                kind = frame.get("type")
                if kind == "pong":
                    continue
                if kind != "diagnosis_update" or frame.get("execution_id") != self.execution_id:
                    self.anomalies.append(f"unexpected frame {frame!r}"[:300])
                    continue
                seq = frame["seq"]
                self.received.append((seq, frame["event"], frame.get("data")))
                self.last_seq = max(self.last_seq, seq)
                if frame["event"] == "complete":
                    self.done = True
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(ws.wait_closed(), 5)
                    code = ws.close_code
                    self.close_codes[str(code)] += 1
                    return code
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            if code == 1000 and not self.dropping:
                self.anomalies.append(f"server closed 1000 before the terminal event (last seq {self.last_seq})")
            self.close_codes["client drop" if self.dropping else str(code)] += 1
            return code
        finally:
            if pinger is not None:
                pinger.cancel()
            self.ws = None
            if ws.state.name != "CLOSED":
                ws.transport.abort()

    async def _ping(self, ws: ClientConnection, interval: float) -> None:
        """App-level ping every ``heartbeat_interval`` s (mini-program sockets have no protocol pings)."""
        with contextlib.suppress(ConnectionClosed, asyncio.CancelledError):
            while True:
                await asyncio.sleep(interval * random.uniform(0.8, 1.0))
                await ws.send('{"type": "ping"}')


# -- publishers -----------------------------------------------------------------------------------------


@dataclass
class Posted:
    """One event as the publisher sent it, and what became of it."""

    execution_id: str
    key: str
    event: str
    data: dict[str, Any]
    attempts: list[str] = field(default_factory=list)  # "202", "503", "ConnectError", "timeout", ...
    seq: int | None = None
    duplicate: bool = False
    refused: str | None = None  # a 4xx: the event can never be accepted (a failure of the test)
    committed: bool = False  # outbox variant: the row is committed (its seq is learnt from the clients)


# -- the soak --------------------------------------------------------------------------------------------


@dataclass
class SoakReport:
    """The figures of a run and the failures found."""

    figures: dict[str, Any]
    failures: list[str]

    @property
    def ok(self) -> bool:
        """No failure."""
        return not self.failures

    def lines(self) -> list[str]:
        """The figures, one per line, then the first failures."""
        out = [f"  {key:<34} {value}" for key, value in self.figures.items()]
        if self.failures:
            out.append(f"  FAILURES ({len(self.failures)}):")
            out.extend(f"    - {f}" for f in self.failures[:40])
        return out


class Soak:
    """Everything one run starts, and the run itself."""

    def __init__(self, config: SoakConfig) -> None:
        self.config = config
        self.prefix = f"chaos-{uuid.uuid4().hex[:10]}"
        self.redis = PersistentRedis(config.redis_binary)
        self.sentinel = SentinelSetup(config.redis_binary) if config.topology == "sentinel" else None
        self.cluster = ClusterSetup(config.redis_binary) if config.topology == "cluster" else None
        self.single = self.sentinel is None and self.cluster is None
        self.executions: list[str] = []
        self.instances: list[ServiceProcess] = []
        self.proxies: list[Proxy] = []
        self.clients: list[Client] = []
        self.posted: list[Posted] = []
        self.faults: Counter[str] = Counter()
        self.fault_log: list[str] = []
        self.reconnects = 0
        self.crashes: list[str] = []
        self.expected_down: set[int] = set()
        self.http: httpx.AsyncClient | None = None
        self.tasks: list[asyncio.Task[Any]] = []
        self.started = time.monotonic()
        self.redis_down = False
        self.big_faults_skipped = 0
        self.load_over = asyncio.Event()  # set when the fault phase ends: publishers and small faults stop
        self.outbox_table = f"chaos_outbox_{uuid.uuid4().hex[:10]}"
        self.pg: Any = None  # asyncpg pool of the outbox variant

    def log(self, message: str) -> None:
        """Note a fault (printed with -v)."""
        line = f"[{time.monotonic() - self.started:7.1f}s] {message}"
        self.fault_log.append(line)
        if self.config.verbose:
            print(line, flush=True)

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Redis (one server, or primary + replica + Sentinels), the instances, one proxy each."""
        if self.sentinel is not None:
            await asyncio.to_thread(self.sentinel.start)
            url = self.sentinel.url
        elif self.cluster is not None:
            await asyncio.to_thread(self.cluster.start)
            url = self.cluster.url
        else:
            await asyncio.to_thread(self.redis.start)
            url = self.redis.url
        env = {
            "RELAY_BROKER_URL": url,
            "RELAY_REDIS_PREFIX": self.prefix,
            "RELAY_HISTORY_SIZE": "1000000",  # nothing is trimmed: a gap would be a loss
            "RELAY_MAX_CONNECTIONS_PER_SUB": "1000",
            "RELAY_HEARTBEAT_INTERVAL": "5",
            "RELAY_LOG_LEVEL": "WARNING",
        }
        if self.config.outbox_dsn:
            import asyncpg

            from service.ingest.outbox import outbox_ddl

            self.pg = await asyncpg.create_pool(self.config.outbox_dsn, min_size=2, max_size=10)
            await self.pg.execute(outbox_ddl(self.outbox_table))
            env.update(
                RELAY_OUTBOX_DSN=self.config.outbox_dsn,
                RELAY_OUTBOX_TABLE=self.outbox_table,
                RELAY_OUTBOX_POLL_INTERVAL="0.2",
            )
        if self.sentinel is not None:
            env["RELAY_REDIS_MIN_REPLICAS"] = "1"  # acknowledged means on the replica: a failover loses none
            env["RELAY_REDIS_MIN_REPLICAS_TIMEOUT"] = "0.5"
        self.instances = [ServiceProcess(**env, RELAY_WORKERS=str(w)) for w in self.config.workers]
        for inst in self.instances:
            inst.spawn()
        for inst in self.instances:
            await asyncio.to_thread(inst.wait_ready, 60.0)
        for i, inst in enumerate(self.instances):
            proxy = Proxy(NAMES[i], inst.port)
            await proxy.start()
            self.proxies.append(proxy)
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(5.0),
            trust_env=False,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )

    async def close(self) -> None:
        """Stop everything this run started (also after a failure)."""
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=10)
        for client in self.clients:
            if client.ws is not None:
                client.ws.transport.abort()
        for proxy in self.proxies:
            await proxy.close()
        if self.http is not None:
            await self.http.aclose()
        for inst in self.instances:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(inst.kill)
        self.redis.close()
        if self.pg is not None:
            t = self.outbox_table
            with contextlib.suppress(Exception):
                await self.pg.execute(f'DROP TABLE IF EXISTS "{t}", "{t}_dead"; DROP FUNCTION IF EXISTS "{t}_notify"()')
            await self.pg.close()
        if self.sentinel is not None:
            self.sentinel.close()
        if self.cluster is not None:
            self.cluster.close()

    def remove_logs(self) -> None:
        """Delete the instances' log files."""
        for inst in self.instances:
            inst.log.close()
            with contextlib.suppress(OSError):
                os.unlink(inst.log.name)

    def instance_logs(self) -> list[str]:
        """Both instances' whole output."""
        out = []
        for inst in self.instances:
            try:
                out.append(Path(inst.log.name).read_text(errors="replace"))
            except OSError:
                out.append("")
        return out

    # -- publishing -----------------------------------------------------------------------------------------

    async def insert(self, record: Posted, deadline: float) -> None:
        """Outbox variant: insert the event's row (committed) until PostgreSQL takes it."""
        from service.publisher import outbox_insert

        sql, params = outbox_insert(
            record.execution_id, record.event, record.data, record.key, table=self.outbox_table, paramstyle="numeric"
        )
        while time.monotonic() < deadline:
            try:
                await self.pg.execute(sql, *params)
            except Exception as exc:  # asyncpg errors, a lost connection: the row was not committed
                record.attempts.append(type(exc).__name__)
                await asyncio.sleep(0.1)
                continue
            record.attempts.append("committed")
            record.committed = True
            return

    async def post(self, record: Posted, prefer: int, deadline: float) -> None:
        """POST until a 2xx, alternating instances; connection errors, timeouts and 5xx are retried."""
        if self.pg is not None:
            await self.insert(record, deadline)
            return
        assert self.http is not None
        index = prefer
        delay = 0.05
        body = {"event": record.event, "data": record.data, "idempotency_key": record.key}
        for _attempt in range(10_000):
            if time.monotonic() > deadline:
                return
            inst = self.instances[index]
            url = f"{inst.base}/internal/v1/executions/{record.execution_id}/events"
            try:
                response = await self.http.post(url, json=body, headers=AUTH)
            except httpx.TimeoutException:
                record.attempts.append("timeout")
            except (httpx.HTTPError, OSError) as exc:
                record.attempts.append(type(exc).__name__)
            else:
                record.attempts.append(str(response.status_code))
                if 200 <= response.status_code < 300:
                    answer = response.json()
                    record.seq = answer["seq"]
                    record.duplicate = bool(answer.get("duplicate"))
                    return
                if response.status_code < 500 and response.status_code != 429:
                    record.refused = f"{response.status_code} {response.text[:200]}"
                    return
            index = (index + 1) % len(self.instances)  # retry on the next instance
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

    def make_event(self, execution_id: str, k: int, poster: int) -> Posted:
        """A progress or result event whose payload says who sent it."""
        nonce = uuid.uuid4().hex
        key = f"{execution_id}/{poster}/{k}/{nonce[:8]}"
        if k % 3:
            data: dict[str, Any] = {
                "progress": (k * 7) % 101,
                "stage": f"stage-{poster}-{k}",
                "status": "processing",
                "status_text": f"{random.choice(STATUS_TEXTS)} #{k} {nonce}",
            }
            return Posted(execution_id, key, "progress", data)
        size = random.choice((1, 1, 1, 20, 200))  # some results span several TCP segments
        data = {
            "poster": poster,
            "k": k,
            "nonce": nonce,
            "rows": [{"id": i, "text": f"结果 {nonce[:6]} {i}"} for i in range(size)],
        }
        return Posted(execution_id, key, "result", data)

    async def feed_execution(
        self, execution_id: str, stop_at: float, early: bool, faults_over: asyncio.Event, deadline: float
    ) -> None:
        """Two publishers (one per instance) post until ``stop_at``; then ``complete``."""
        counter = iter(range(1_000_000))

        async def poster(which: int) -> None:
            while time.monotonic() < stop_at and not self.load_over.is_set():
                record = self.make_event(execution_id, next(counter), which)
                self.posted.append(record)
                await self.post(record, which, deadline)
                if record.seq is None and not record.committed:
                    return  # refused or out of time: reported by verify()
                await asyncio.sleep(random.uniform(*self.config.post_every))

        await asyncio.gather(poster(0), poster(1))
        if not early:
            await faults_over.wait()
        final = Posted(
            execution_id,
            f"{execution_id}/complete/{uuid.uuid4().hex[:8]}",
            "complete",
            {"report": {"score": random.randint(0, 100), "summary": "诊断完成", "id": uuid.uuid4().hex}},
        )
        self.posted.append(final)
        await self.post(final, random.randint(0, 1), deadline)

    # -- faults -------------------------------------------------------------------------------------------------

    async def small_faults(self, until: float) -> None:
        """Client-side closes and aborts, and mid-frame cuts in the proxies, at random."""
        lo, hi = self.config.small_fault_batch
        while time.monotonic() < until and not self.load_over.is_set():
            await asyncio.sleep(random.uniform(*self.config.small_fault_every))
            count = random.randint(lo, hi)
            if random.random() < 0.5:
                live = [c for c in self.clients if c.connected]
                for client in random.sample(live, min(count, len(live))):
                    abort = random.random() < 0.4
                    if client.drop(abort):
                        self.faults["client_abort" if abort else "client_close"] += 1
            else:
                proxy = random.choice(self.proxies)
                self.faults["proxy_cut_requested"] += proxy.cut_some(count)

    async def big_faults(self, until: float, limit: float) -> None:
        """``kill -9`` of one instance (then restart on its port) and Redis restarts, alternating.

        Spread over the fault phase; when restarts take longer than planned (a
        loaded machine) the phase, and the load with it, goes on until every
        planned fault was injected, but never past ``limit``. Ends the load.
        """
        count = self.config.big_faults
        span = until - time.monotonic()
        try:
            for i in range(count):
                at = until - span + span * (i + 0.5) / count
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                if time.monotonic() >= limit:
                    self.big_faults_skipped = count - i
                    return
                if i % 2 == 0:
                    await self.kill_instance((i // 2) % len(self.instances))
                elif self.sentinel is not None:
                    await (self.failover() if (i // 2) % 2 == 0 else self.pause_replica())
                elif self.cluster is not None:
                    await self.migrate_slot()
                else:
                    await self.restart_redis(signal.SIGTERM if (i // 2) % 2 == 0 else signal.SIGKILL)
            await asyncio.sleep(max(0.0, until - time.monotonic()))
        finally:
            self.load_over.set()

    async def kill_instance(self, index: int) -> None:
        """SIGKILL instance ``index``, wait a little, start it again on the same port."""
        inst = self.instances[index]
        self.check_alive()
        self.expected_down.add(index)
        await asyncio.to_thread(inst.kill)
        self.faults["instance_kill9"] += 1
        self.log(f"kill -9 instance {NAMES[index]}")
        await asyncio.sleep(random.uniform(0.3, 1.5))
        inst.spawn()
        await asyncio.to_thread(inst.wait_ready, 60.0)
        self.expected_down.discard(index)
        self.log(f"instance {NAMES[index]} ready again")

    async def restart_redis(self, sig: int) -> None:
        """Stop Redis with ``sig``, start it again on its port with its AOF, wait until both instances are ready."""
        self.check_alive()
        self.redis_down = True
        await asyncio.to_thread(self.redis.signal_stop, sig)
        self.faults["redis_sigterm" if sig == signal.SIGTERM else "redis_sigkill"] += 1
        self.log(f"redis stopped with {signal.Signals(sig).name}")
        await asyncio.sleep(random.uniform(0.3, 2.0))
        await asyncio.to_thread(self.redis.start)
        self.redis_down = False
        self.log("redis started again")
        await self.wait_ready(60.0)
        self.log("both instances ready")

    def _roles(self) -> tuple[TopologyServer, TopologyServer]:
        """The current primary and replica (they swap at each failover)."""
        assert self.sentinel is not None
        port = self.sentinel.master_port()
        first, second = self.sentinel.primary, self.sentinel.replica
        return (first, second) if first.port == port else (second, first)

    async def failover(self) -> None:
        """``kill -9`` the primary; the Sentinels promote the replica; the old primary comes back empty as replica."""
        assert self.sentinel is not None
        primary, replica = await asyncio.to_thread(self._roles)
        self.check_alive()
        await asyncio.to_thread(primary.stop)  # kill -9
        self.faults["primary_kill9_failover"] += 1
        self.log(f"kill -9 primary on port {primary.port}")
        await asyncio.to_thread(self.sentinel.wait_promoted, replica, 30.0)
        self.log(f"replica on port {replica.port} promoted")
        for name in ("dump.rdb", "appendonly.aof"):
            Path(primary.dir, name).unlink(missing_ok=True)
        await asyncio.to_thread(primary.start)  # the Sentinels make it the new primary's replica
        await self.wait_ready(60.0)
        self.log("old primary back (empty) as a replica; instances ready")

    async def migrate_slot(self) -> None:
        """Move the slot of a random execution (its subscribers are live) to another master, keys and all."""
        assert self.cluster is not None
        cluster = self.cluster
        eid = random.choice(self.executions)
        slot = await asyncio.to_thread(cluster.keyslot, f"{self.prefix}:{{{eid}}}:meta")
        source = await asyncio.to_thread(cluster.owner, slot)
        target = random.choice([n for n in cluster.nodes if n is not source])
        await asyncio.to_thread(cluster.migrate, slot, target)
        self.faults["slot_migration"] += 1
        self.log(f"slot {slot} ({eid}) moved from port {source.port} to {target.port}")

    async def pause_replica(self) -> None:
        """SIGSTOP the replica for a second: publishes 503 (RELAY_REDIS_MIN_REPLICAS=1) and are retried."""
        _, replica = await asyncio.to_thread(self._roles)
        replica.pause()
        self.faults["replica_pause"] += 1
        self.log(f"replica on port {replica.port} paused")
        await asyncio.sleep(random.uniform(0.5, 1.5))
        replica.resume()
        self.log("replica resumed")

    async def wait_ready(self, timeout: float) -> None:
        """Until both instances answer /readyz 200."""
        assert self.http is not None
        deadline = time.monotonic() + timeout
        for inst in self.instances:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await self.http.get(f"{inst.base}/readyz")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"instance on port {inst.port} not ready {timeout} s after the fault")
                await asyncio.sleep(0.1)

    def check_alive(self) -> None:
        """Record an instance or Redis that died without being killed (a crash)."""
        for i, inst in enumerate(self.instances):
            if i not in self.expected_down and inst.proc is not None and inst.proc.poll() is not None:
                self.crashes.append(f"instance {NAMES[i]} exited by itself with {inst.proc.returncode}")
                self.expected_down.add(i)
        if self.single and not self.redis_down and not self.redis.alive():
            self.crashes.append("redis-server exited by itself")
            self.redis_down = True

    # -- the run -------------------------------------------------------------------------------------------------

    async def run(self) -> SoakReport:
        """Start, load, inject faults, finish every execution, wait for the clients, verify."""
        cfg = self.config
        began = time.monotonic()
        executions = [f"soak-{uuid.uuid4().hex[:6]}-{i}" for i in range(cfg.executions)]
        self.executions = executions
        self.clients = [Client(i, executions[i % len(executions)], self) for i in range(cfg.clients)]
        fault_end = time.monotonic() + cfg.fault_seconds
        fault_limit = fault_end + cfg.fault_seconds + 60.0  # slow restarts may stretch the phase up to this
        hard_deadline = fault_limit + 120.0 + cfg.drain_timeout  # no loop outlives this
        faults_over = asyncio.Event()

        loop = asyncio.get_running_loop()
        client_tasks = [
            loop.create_task(c.run(random.uniform(0, cfg.start_spread), hard_deadline)) for c in self.clients
        ]
        early_count = int(len(executions) * cfg.early_share)
        feeders = []
        for i, eid in enumerate(executions):
            early = i < early_count
            stop_at = (time.monotonic() + cfg.fault_seconds * random.uniform(0.3, 0.8)) if early else fault_limit
            feeders.append(loop.create_task(self.feed_execution(eid, stop_at, early, faults_over, hard_deadline)))
        injectors = [
            loop.create_task(self.big_faults(fault_end, fault_limit)),
            loop.create_task(self.small_faults(fault_limit)),
        ]
        self.tasks = [*client_tasks, *feeders, *injectors]

        injector_errors: list[str] = []
        for task in injectors:
            try:
                await asyncio.wait_for(asyncio.shield(task), fault_limit - time.monotonic() + 120.0)
            except Exception as exc:  # a restart that never became ready, ...
                injector_errors.append(f"fault injector failed: {type(exc).__name__}: {exc}")
        self.check_alive()
        # Whatever state the last fault left: everything up and ready before the terminal events.
        for i, inst in enumerate(self.instances):
            if inst.proc is None or inst.proc.poll() is not None:
                inst.spawn()
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(inst.wait_ready, 60.0)
                self.expected_down.discard(i)
        if self.single and not self.redis.alive():
            await asyncio.to_thread(self.redis.start)
            self.redis_down = False
        with contextlib.suppress(TimeoutError):
            await self.wait_ready(60.0)
        fault_phase = time.monotonic() - began
        faults_over.set()
        await asyncio.wait(feeders, timeout=max(1.0, hard_deadline - time.monotonic()))
        drain_start = time.monotonic()
        await asyncio.wait(client_tasks, timeout=max(1.0, min(cfg.drain_timeout, hard_deadline - time.monotonic())))
        drain = time.monotonic() - drain_start
        self.check_alive()
        for task in self.tasks:
            task.cancel()
        outbox_left = await self.resolve_outbox() if self.pg is not None else []
        report = self.verify(injector_errors + outbox_left)
        report.figures["fault phase (s)"] = round(fault_phase, 1)
        report.figures["drain after the last complete (s)"] = round(drain, 1)
        report.figures["total (s)"] = round(time.monotonic() - began, 1)
        return report

    # -- verification ----------------------------------------------------------------------------------------------

    async def resolve_outbox(self) -> list[str]:
        """Outbox variant: learn each committed row's seq from what the clients received; check the tables.

        A row is identified by its payload (every payload carries a nonce). Rows no client
        received keep no seq and are reported by verify() as never delivered.
        """
        seen: dict[tuple[str, str, str], int] = {}
        for client in self.clients:
            for seq, event, data in client.received:
                seen[(client.execution_id, event, json.dumps(data, sort_keys=True))] = seq
        for record in self.posted:
            if record.committed:
                record.seq = seen.get((record.execution_id, record.event, json.dumps(record.data, sort_keys=True)))
        failures = []
        t = self.outbox_table
        left = await self.pg.fetchval(f'SELECT count(*) FROM "{t}"')
        dead = await self.pg.fetch(f'SELECT id, error FROM "{t}_dead" LIMIT 5')
        if left:
            failures.append(f"{left} outbox rows were never consumed")
        if dead:
            failures.append(f"outbox rows dead-lettered: {[(r['id'], r['error']) for r in dead]}")
        return failures

    def verify(self, injector_errors: list[str]) -> SoakReport:
        """Check every client's stream and every publisher's answers; compute the figures."""
        failures: list[str] = list(injector_errors) + list(self.crashes)
        by_execution: dict[str, dict[int, Posted]] = defaultdict(dict)
        terminal_seq: dict[str, int] = {}
        attempts: Counter[str] = Counter()
        retried_events = 0
        duplicate_answers = 0
        for record in self.posted:
            attempts.update(a if a.isdigit() else f"{a}" for a in record.attempts)
            if len(record.attempts) > 1:
                retried_events += 1
            if record.refused is not None:
                failures.append(f"{record.execution_id}: {record.event} {record.key} refused with {record.refused}")
                continue
            if record.seq is None:
                what = "was committed to the outbox but never delivered" if record.committed else "never got a 2xx"
                failures.append(
                    f"{record.execution_id}: {record.event} {record.key} {what} (attempts {record.attempts[-8:]})"
                )
                continue
            if record.duplicate:
                duplicate_answers += 1
                if len(record.attempts) == 1:  # (an outbox row's answer is never seen: duplicate stays False)
                    failures.append(f"{record.key}: duplicate: true on the first attempt")
            other = by_execution[record.execution_id].get(record.seq)
            if other is not None:
                failures.append(
                    f"{record.execution_id}: seq {record.seq} given to two events ({other.key}, {record.key})"
                )
            by_execution[record.execution_id][record.seq] = record
            if record.event == "complete":
                terminal_seq[record.execution_id] = record.seq
        for eid, seqs in by_execution.items():
            n = terminal_seq.get(eid)
            if n is None:
                failures.append(f"{eid}: no complete event was accepted")
                continue
            if sorted(seqs) != list(range(1, n + 1)):
                failures.append(f"{eid}: accepted seqs are not 1..{n} ({len(seqs)} seqs)")

        lost = duplicates = out_of_order = mismatched = unfinished = 0
        delivered = 0
        close_codes: Counter[str] = Counter()
        connect_failures: Counter[str] = Counter()
        watchdogs = 0
        for client in self.clients:
            close_codes.update(client.close_codes)
            connect_failures.update(client.connect_failures)
            watchdogs += client.watchdog_reconnects
            failures.extend(f"{client.name} ({client.execution_id}): {a}" for a in client.anomalies[:3])
            expected = by_execution.get(client.execution_id, {})
            n = terminal_seq.get(client.execution_id, max(expected, default=0))
            seqs = [seq for seq, _, _ in client.received]
            delivered += len(seqs)
            distinct = set(seqs)
            missing = sorted(set(range(1, n + 1)) - distinct)
            dups = len(seqs) - len(distinct)
            lost += len(missing)
            duplicates += dups
            if missing:
                failures.append(
                    f"{client.name} ({client.execution_id}): lost {len(missing)} events, "
                    f"first {missing[:10]} (received {len(seqs)}, last seq {client.last_seq})"
                )
            if dups:
                repeated = sorted(s for s, c in Counter(seqs).items() if c > 1)
                failures.append(f"{client.name} ({client.execution_id}): {dups} duplicates, seqs {repeated[:10]}")
            if seqs != sorted(seqs):
                out_of_order += 1
                failures.append(f"{client.name} ({client.execution_id}): events out of seq order")
            if not client.done:
                unfinished += 1
                failures.append(
                    f"{client.name} ({client.execution_id}): never received its terminal event "
                    f"(last seq {client.last_seq} of {n})"
                )
            elif client.received[-1][0] != n or client.received[-1][1] != "complete":
                failures.append(f"{client.name}: the terminal event is not last")
            for seq, event, data in client.received:
                record = expected.get(seq)
                if record is None or record.event != event or record.data != data:
                    mismatched += 1
                    if mismatched <= 5:
                        failures.append(
                            f"{client.name} ({client.execution_id}): seq {seq} is not what the "
                            f"publisher's 2xx answer said ({event})"
                        )
        # Every 2xx answer names an event the clients of its execution received, with its payload.
        watched: dict[str, set[int]] = defaultdict(set)
        for client in self.clients:
            posted_here = by_execution[client.execution_id]
            watched[client.execution_id].update(
                seq
                for seq, event, data in client.received
                if (r := posted_here.get(seq)) is not None and r.event == event and r.data == data
            )
        undelivered = sum(1 for r in self.posted if r.seq is not None and r.seq not in watched[r.execution_id])
        if undelivered:
            failures.append(f"{undelivered} publisher 2xx answers name events no client received")

        logs = self.instance_logs()
        tracebacks = sum(log.count("Traceback") for log in logs)
        if tracebacks:
            failures.append(f"{tracebacks} tracebacks in the instances' logs")
            kinds: Counter[str] = Counter()
            for log in logs:
                for line in log.splitlines():
                    if "Traceback" not in line:
                        continue
                    try:
                        entry = json.loads(line)
                        exc_lines = entry.get("exc", "").strip().splitlines()
                        where = [x.strip() for x in exc_lines if x.strip().startswith("File ")][-1:]
                        kinds[f"{entry.get('logger')}: {entry.get('msg')} | {where} | {exc_lines[-1:]}"] += 1
                    except (ValueError, AttributeError, IndexError):
                        kinds[line[:300]] += 1
            failures.extend(f"traceback x{n}: {kind}" for kind, n in kinds.most_common(10))
        error_lines = [line for log in logs for line in log.splitlines() if '"level":"error"' in line.replace(" ", "")]
        cuts = Counter[str]()
        refused = 0
        for proxy in self.proxies:
            cuts.update(proxy.cuts)
            refused += proxy.refused
        events = sum(len(v) for v in by_execution.values())
        not_2xx = {k: v for k, v in attempts.items() if not (k == "committed" or (k.isdigit() and 200 <= int(k) < 300))}
        figures: dict[str, Any] = {
            "clients": len(self.clients),
            "executions": len(by_execution) or len({c.execution_id for c in self.clients}),
            "events accepted (distinct seqs)": events,
            "events delivered to clients": delivered,
            "publish requests": sum(attempts.values()),
            "publish answers not 2xx / errors": dict(sorted(not_2xx.items())) or 0,
            "events retried (all to a 2xx)": retried_events,
            "retries answered duplicate: true": duplicate_answers,
            "faults injected": dict(sorted({**self.faults, **{f"proxy_cut_{k}": v for k, v in cuts.items()}}.items())),
            "kills / restarts skipped (time up)": self.big_faults_skipped,
            "reconnects (resumed with last_seq)": self.reconnects,
            "connection attempts that failed": dict(sorted(connect_failures.items())) or 0,
            "proxy connections to a down instance": refused,
            "client close codes seen": dict(sorted(close_codes.items())),
            "watchdog reconnects (silence)": watchdogs,
            "service error log lines": len(error_lines),
            "clients without their terminal event": unfinished,
            "events lost": lost,
            "duplicates": duplicates,
            "out-of-order streams": out_of_order,
            "payload mismatches": mismatched,
        }
        return SoakReport(figures, failures)


async def run_soak(config: SoakConfig, on_start: Callable[[Soak], None] | None = None) -> SoakReport:
    """Run one soak and clean up everything it started, whatever happens."""
    if config.seed is not None:
        random.seed(config.seed)
    soak = Soak(config)
    try:
        await soak.start()
        if on_start is not None:
            on_start(soak)
        report = await soak.run()
        if not report.ok:
            kept = Path(tempfile.mkdtemp(prefix=f"relay-{soak.prefix}-"))
            for name, text in zip(NAMES, soak.instance_logs(), strict=False):
                (kept / f"instance-{name}.log").write_text(text)
            with contextlib.suppress(OSError):
                shutil.copy(Path(soak.redis.dir, "redis.log"), kept / "redis.log")
            (kept / "faults.log").write_text("\n".join(soak.fault_log) + "\n")
            report.failures.insert(0, f"logs kept in {kept}")
            tails = soak.instance_logs()
            report.failures.append("instance A log tail:\n" + tails[0][-3000:])
            report.failures.append("instance B log tail:\n" + tails[1][-3000:])
            report.failures.append("redis log tail:\n" + soak.redis.log_tail())
            report.failures.append("faults:\n" + "\n".join(soak.fault_log[-60:]))
        return report
    finally:
        await soak.close()
        soak.remove_logs()
        shutil.rmtree(soak.redis.dir, ignore_errors=True)
