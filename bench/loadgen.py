"""Load generator processes for bench/run.py (never imported by the server).

Two roles, each its own OS process so that the server under test, the
subscribers and the publisher never share an interpreter:

``subs``  holds N WebSocket subscribers (picows on uvloop) and measures the
          latency of every event frame: the publisher writes its
          ``time.monotonic_ns()`` into ``data.status_text`` just before it
          writes the POST, the subscriber subtracts it from its own clock when
          the frame is parsed (CLOCK_MONOTONIC is system-wide on Linux).
          Commands on stdin, one JSON reply per line on stdout:
          ``reset`` / ``report`` / ``storm`` / ``connect`` / ``quit`` (``defer``:
          connect only on ``connect``; ``connect_rate``: pace the handshakes;
          ``deflate``: offer permessage-deflate as a browser does, and inflate
          the compressed frames, one inflate window per socket).
``pub``   publishes over keep-alive HTTP/1.1 connections (a tiny hand-written
          client, so that the client costs little): closed loop, fixed rate,
          fan-out probes or batches; prints one JSON result and exits.

Every reply carries the process's own CPU seconds over the measured window,
so the report can say when the load generator, not the server, was the limit.

    python bench/loadgen.py subs '<json config>'
    python bench/loadgen.py pub  '<json config>'
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
import zlib
from array import array
from pathlib import Path

import uvloop

try:  # ujson is a dependency of the service; fall back to json
    import ujson as fastjson
except ImportError:  # pragma: no cover
    fastjson = json

from picows import WSListener, WSMsgType, WSTransport, ws_connect

monotonic_ns = time.monotonic_ns
# What a browser (and the mini-program with perMessageDeflate) offers.
DEFLATE_OFFER = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}
SYNC_TAIL = b"\x00\x00\xff\xff"


def raise_fd_limit(want: int = 65536) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (want, hard):
        try:
            new_hard = max(hard, target)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, new_hard))
            return target
        except (ValueError, OSError):
            continue
    return soft


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def percentiles(values, points=(50, 90, 99, 99.9)) -> dict:
    if not values:
        return {f"p{p:g}": None for p in points} | {"max": None, "mean": None}
    data = sorted(values)
    n = len(data)
    out = {}
    for p in points:
        k = min(n - 1, max(0, round(p / 100.0 * n + 0.5) - 1))
        out[f"p{p:g}"] = data[k]
    out["max"] = data[-1]
    out["mean"] = sum(data) / n
    return out


def ms(ns_stats: dict) -> dict:
    return {k: (None if v is None else round(v / 1e6, 3)) for k, v in ns_stats.items()}


# --------------------------------------------------------------------------
# subscribers


class Stats:
    def __init__(self, per_event: bool):
        self.per_event = per_event
        self.reset()

    def reset(self):
        self.lat = array("q")
        self.frames = 0
        self.wire_bytes = 0  # text frames' payloads as received (compressed or not)
        self.events = 0
        self.gaps = 0
        self.dups = 0
        self.by_event: dict[int, list] = {}
        self.cpu0 = cpu_seconds()
        self.t0 = time.monotonic()

    def record(self, sent_ns: int, now: int):
        self.events += 1
        lat = now - sent_ns
        self.lat.append(lat)
        if self.per_event:
            slot = self.by_event.get(sent_ns)
            if slot is None:
                self.by_event[sent_ns] = [1, lat]
            else:
                slot[0] += 1
                if lat > slot[1]:
                    slot[1] = lat


class Subscriber(WSListener):
    """One WebSocket subscriber; ``kind`` is relay | json | socketio."""

    __slots__ = (
        "close_code",
        "closed",
        "dropped",
        "index",
        "inflate",
        "owner",
        "ready",
        "transport",
    )

    def __init__(self, owner: SubsProcess, index: int):
        self.owner = owner
        self.index = index
        self.transport = None
        self.ready = asyncio.get_running_loop().create_future()
        self.closed = False
        self.close_code = None
        self.dropped = False
        self.inflate = None  # the socket's inflate window, once the server agreed to compress

    def on_ws_connected(self, transport: WSTransport):
        self.transport = transport
        if self.owner.deflate:
            agreed = transport.response.headers.get("Sec-WebSocket-Extensions") or ""
            if "permessage-deflate" in agreed:
                self.owner.deflated += 1
                self.inflate = zlib.decompressobj(-15)
        if self.owner.kind == "json" and not self.ready.done():
            self.ready.set_result(True)

    def on_ws_disconnected(self, transport: WSTransport):
        self.closed = True
        if not self.ready.done():
            self.ready.set_result(False)
        if not self.dropped:
            self.owner.disconnects += 1

    def on_ws_frame(self, transport: WSTransport, frame):
        mt = frame.msg_type
        if mt is WSMsgType.TEXT:
            now = monotonic_ns()
            payload = frame.get_payload_as_bytes()
            owner = self.owner
            owner.stats.frames += 1
            if frame.rsv1:  # compressed (RFC 7692: the sync tail is dropped on the wire)
                owner.stats.wire_bytes += len(payload)
                payload = self.inflate.decompress(payload + SYNC_TAIL)
            else:
                owner.stats.wire_bytes += len(payload)
            kind = owner.kind
            if kind == "socketio":
                head = payload[:2]
                if head == b"42":
                    obj = fastjson.loads(payload[2:])[1]
                elif head[:1] == b"2":  # engine.io ping
                    transport.send(WSMsgType.TEXT, b"3")
                    return
                elif head[:1] == b"0":  # engine.io open: connect to namespace
                    transport.send(WSMsgType.TEXT, b"40")
                    return
                elif head == b"40":
                    if not self.ready.done():
                        self.ready.set_result(True)
                    return
                else:
                    return
            else:
                obj = fastjson.loads(payload)
            typ = obj.get("type")
            if typ == "diagnosis_update":
                data = obj.get("data") or {}
                try:
                    sent = int(data.get("status_text", "0"))
                except (TypeError, ValueError):
                    sent = 0
                seq = obj.get("seq")
                if seq is not None:
                    last = owner.last_seq[self.index]
                    if seq <= last:
                        owner.stats.dups += 1
                        return
                    if seq != last + 1:
                        owner.stats.gaps += seq - last - 1
                    owner.last_seq[self.index] = seq
                if sent:
                    owner.stats.record(sent, now)
            elif typ == "connected":
                owner.resumed += 1 if obj.get("resumed") else 0
                if obj.get("gap"):
                    owner.gap_flags += 1
                if not self.ready.done():
                    self.ready.set_result(True)
        elif mt is WSMsgType.CLOSE:
            self.close_code = frame.get_close_code()
            transport.send_close(frame.get_close_code())
            transport.disconnect()


class SubsProcess:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.kind = cfg["kind"]
        self.n = cfg["n"]
        self.urls = cfg["urls"]  # one per subscriber
        self.stats = Stats(cfg.get("per_event", False))
        self.deflate = bool(cfg.get("deflate"))
        self.deflated = 0  # sockets on which the server agreed to permessage-deflate
        self.subs: list[Subscriber | None] = [None] * self.n
        self.last_seq = [0] * self.n
        self.disconnects = 0
        self.resumed = 0
        self.gap_flags = 0
        self.storming = False
        self.connect_errors = 0
        self.error_samples: list[str] = []

    async def connect_one(self, i: int, sem: asyncio.Semaphore, resume: bool, due: float = 0.0) -> bool:
        url = self.urls[i]
        if resume and self.cfg.get("resume_param"):
            url += ("&" if "?" in url else "?") + f"last_seq={self.last_seq[i]}"
        if due:  # paced: this one starts at its due time
            await asyncio.sleep(due - time.monotonic())
        async with sem:
            for attempt in range(3):
                try:
                    _, listener = await ws_connect(
                        lambda: Subscriber(self, i),
                        url,
                        websocket_handshake_timeout=20,
                        enable_auto_pong=True,
                        read_buffer_init_size=4096,
                        extra_headers=DEFLATE_OFFER if self.deflate else None,
                    )
                    self.subs[i] = listener
                    ok = await asyncio.wait_for(listener.ready, 20)
                    if ok:
                        return True
                    raise ConnectionError(f"closed before ready ({listener.close_code})")
                except Exception as exc:
                    if len(self.error_samples) < 5:
                        self.error_samples.append(f"{type(exc).__name__}: {exc}"[:200])
                    await asyncio.sleep(0.2 * (attempt + 1))
            self.connect_errors += 1
            return False

    async def connect_all(self, resume: bool = False) -> dict:
        """Connect every subscriber, ``connect_concurrency`` handshakes in flight at most;
        with ``connect_rate`` (per second), handshake i starts no earlier than i / rate."""
        sem = asyncio.Semaphore(self.cfg.get("connect_concurrency", 200))
        rate = self.cfg.get("connect_rate") or 0
        t0 = time.monotonic()
        cpu0 = cpu_seconds()
        results = await asyncio.gather(
            *(self.connect_one(i, sem, resume, t0 + i / rate if rate else 0.0) for i in range(self.n))
        )
        return {
            "connected": sum(results),
            "connect_errors": self.n - sum(results),
            "connect_seconds": round(time.monotonic() - t0, 3),
            "connect_cpu_seconds": round(cpu_seconds() - cpu0, 3),
            "error_samples": self.error_samples[:5],
            "deflated": self.deflated,
        }

    async def storm(self) -> dict:
        """Drop every socket at once (no close handshake) and resume them all."""
        self.storming = True
        self.resumed = 0
        for sub in self.subs:
            if sub is not None and sub.transport is not None:
                sub.dropped = True
                sub.transport.disconnect(graceful=False)
        await asyncio.sleep(0.01)
        self.error_samples = []
        result = await self.connect_all(resume=True)
        self.storming = False
        result["resumed_flag"] = self.resumed
        return result

    def report(self) -> dict:
        st = self.stats
        wall = time.monotonic() - st.t0
        cpu = cpu_seconds() - st.cpu0
        out = {
            "frames": st.frames,
            "wire_bytes": st.wire_bytes,
            "events": st.events,
            "gaps": st.gaps,
            "dups": st.dups,
            "disconnects": self.disconnects,
            "gap_flags": self.gap_flags,
            "latency_ms": ms(percentiles(st.lat)),
            "cpu_seconds": round(cpu, 3),
            "wall_seconds": round(wall, 3),
            "cpu_percent": round(100 * cpu / wall, 1) if wall > 0 else None,
            "open": sum(1 for s in self.subs if s is not None and not s.closed),
        }
        if st.per_event:
            completes = [v[1] for v in st.by_event.values()]
            counts = [v[0] for v in st.by_event.values()]
            out["per_event"] = {
                "events": len(completes),
                "all_delivered_ms": ms(percentiles(completes, (50, 90, 99))),
                "min_count": min(counts) if counts else 0,
                "max_count": max(counts) if counts else 0,
            }
        return out

    async def run(self):
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        if self.cfg.get("defer"):  # connect on the "connect" command (the rush)
            emit({"ready": True, "pid": os.getpid()})
        else:
            info = await self.connect_all()
            info["pid"] = os.getpid()
            emit(info)
        while True:
            line = await reader.readline()
            if not line:
                break
            cmd = line.decode().strip()
            if cmd == "reset":
                self.stats.reset()
                emit({"ok": True})
            elif cmd == "report":
                emit(self.report())
            elif cmd == "storm":
                emit(await self.storm())
            elif cmd == "connect":
                emit(await self.connect_all())
            elif cmd == "quit":
                break
        for sub in self.subs:
            if sub is not None and sub.transport is not None and not sub.closed:
                sub.transport.disconnect(graceful=False)
        await asyncio.sleep(0.05)


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------
# publisher


class HttpConn(asyncio.Protocol):
    """Keep-alive HTTP/1.1 client connection, one request in flight."""

    def __init__(self):
        self.transport = None
        self.buf = bytearray()
        self.waiter = None
        self.lost = False

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    def data_received(self, data):
        buf = self.buf
        buf += data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).lower()
        pos = head.find(b"content-length:")
        if pos < 0:
            length = 0
        else:
            stop = head.find(b"\r\n", pos)
            length = int(head[pos + 15 : stop if stop > 0 else None])
        total = end + 4 + length
        if len(buf) < total:
            return
        status = int(head[9:12])
        body = bytes(buf[end + 4 : total])
        del buf[:total]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((status, body))

    async def request(self, data: bytes):
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


class Publisher:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.host = cfg.get("host", "127.0.0.1")
        self.port = cfg["port"]
        self.key = cfg.get("key", "")
        self.exec_ids = cfg["exec_ids"]
        self.ok = 0
        self.errors = 0
        self.status_samples: dict[str, int] = {}
        self.error_samples: list[str] = []
        self.post_lat = array("q")
        self.lag = array("q")
        self.events_sent = 0

    def _headers(self, path: str, length: int) -> bytes:
        auth = f"Authorization: Bearer {self.key}\r\n" if self.key else ""
        return (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{auth}"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        ).encode()

    def single(self, execution_id: str) -> bytes:
        body = (
            b'{"event":"progress","data":{"progress":42,"stage":"bench",'
            b'"status":"processing","status_text":"%d"}}' % monotonic_ns()
        )
        return self._headers(f"/internal/v1/executions/{execution_id}/events", len(body)) + body

    def batch(self, ids: list[str]) -> bytes:
        now = monotonic_ns()
        items = b",".join(
            b'{"execution_id":"%s","event":"progress","data":{"progress":42,'
            b'"stage":"bench","status":"processing","status_text":"%d"}}' % (i.encode(), now)
            for i in ids
        )
        body = b'{"events":[' + items + b"]}"
        return self._headers("/internal/v1/events", len(body)) + body

    async def open(self, n: int) -> list[HttpConn]:
        loop = asyncio.get_running_loop()
        conns = []
        for _ in range(n):
            _, proto = await loop.create_connection(HttpConn, self.host, self.port)
            conns.append(proto)
        return conns

    async def send(self, conn: HttpConn, data: bytes, events: int) -> None:
        t0 = monotonic_ns()
        try:
            status, body = await conn.request(data)
        except Exception as exc:
            self.errors += 1
            if len(self.error_samples) < 5:
                self.error_samples.append(repr(exc)[:200])
            return
        self.post_lat.append(monotonic_ns() - t0)
        if 200 <= status < 300:
            self.ok += 1
            self.events_sent += events
        else:
            self.errors += 1
            key = str(status)
            self.status_samples[key] = self.status_samples.get(key, 0) + 1
            if len(self.error_samples) < 5:
                self.error_samples.append(f"{status} {body[:150]!r}")

    async def closed_loop(self, conns, duration: float, batch_size: int = 0):
        deadline = time.monotonic() + duration
        ids = self.exec_ids
        counter = [0]

        async def worker(conn, offset):
            i = offset
            while time.monotonic() < deadline and not conn.lost:
                if batch_size:
                    chunk = [ids[(i + k) % len(ids)] for k in range(batch_size)]
                    i += batch_size * len(conns)
                    await self.send(conn, self.batch(chunk), batch_size)
                else:
                    i = counter[0]
                    counter[0] += 1
                    await self.send(conn, self.single(ids[i % len(ids)]), 1)

        await asyncio.gather(*(worker(c, k * max(batch_size, 1)) for k, c in enumerate(conns)))

    async def fixed_rate(self, conns, duration: float, rate: float, batch_size: int = 0):
        """Open loop: requests are due at a fixed rate; idle connections take them."""
        queue: asyncio.Queue = asyncio.Queue()
        ids = self.exec_ids
        per_req = batch_size or 1
        req_rate = rate / per_req
        total = int(duration * req_rate)
        start = time.monotonic()
        done = asyncio.Event()

        async def worker(conn):
            i = 0
            while True:
                item = await queue.get()
                if item is None:
                    return
                k, due = item
                self.lag.append(int((time.monotonic() - due) * 1e9))
                if batch_size:
                    chunk = [ids[(k * batch_size + j) % len(ids)] for j in range(batch_size)]
                    await self.send(conn, self.batch(chunk), batch_size)
                else:
                    await self.send(conn, self.single(ids[k % len(ids)]), 1)
                i += 1

        workers = [asyncio.create_task(worker(c)) for c in conns]
        k = 0
        stop_file = self.cfg.get("stop_file")  # ends the run early once it exists
        next_check = start
        while k < total:
            now = time.monotonic()
            if stop_file and now >= next_check:
                if os.path.exists(stop_file):  # noqa: ASYNC240 - one stat every 50 ms
                    break
                next_check = now + 0.05
            due_n = min(total, int((now - start) * req_rate) + 1)
            while k < due_n:
                queue.put_nowait((k, start + k / req_rate))
                k += 1
            await asyncio.sleep(0.001)  # uvloop timers have 1 ms resolution
        # bounded drain
        for _ in conns:
            queue.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.gather(*workers), timeout=max(5.0, duration))
        except TimeoutError:
            for w in workers:
                w.cancel()
        done.set()

    async def spaced(self, conn, count: int, interval: float):
        """One event at a time to exec_ids[0], ``interval`` apart (fan-out probe)."""
        for _ in range(count):
            t0 = time.monotonic()
            await self.send(conn, self.single(self.exec_ids[0]), 1)
            rest = interval - (time.monotonic() - t0)
            if rest > 0:
                await asyncio.sleep(rest)

    async def run(self) -> dict:
        cfg = self.cfg
        mode = cfg["mode"]
        conns = await self.open(cfg.get("connections", 1))
        cpu0 = cpu_seconds()
        t0 = time.monotonic()
        duration = cfg.get("duration", 5.0)
        batch_size = cfg.get("batch_size", 0)
        if mode == "closed":
            await self.closed_loop(conns, duration, batch_size)
        elif mode == "rate":
            await self.fixed_rate(conns, duration, cfg["rate"], batch_size)
        elif mode == "spaced":
            await self.spaced(conns[0], cfg["count"], cfg["interval"])
        else:
            raise SystemExit(f"unknown mode {mode}")
        wall = time.monotonic() - t0
        cpu = cpu_seconds() - cpu0
        for c in conns:
            if c.transport is not None:
                c.transport.close()
        return {
            "mode": mode,
            "requests_ok": self.ok,
            "requests_failed": self.errors,
            "events_accepted": self.events_sent,
            "wall_seconds": round(wall, 3),
            "requests_per_second": round(self.ok / wall, 1) if wall else None,
            "events_per_second": round(self.events_sent / wall, 1) if wall else None,
            "post_latency_ms": ms(percentiles(self.post_lat, (50, 99))),
            "schedule_lag_ms": ms(percentiles(self.lag, (50, 99))) if self.lag else None,
            "status_counts": self.status_samples,
            "error_samples": self.error_samples,
            "cpu_seconds": round(cpu, 3),
            "cpu_percent": round(100 * cpu / wall, 1) if wall else None,
        }


def main() -> None:
    role, raw = sys.argv[1], sys.argv[2]
    cfg = json.loads(raw) if not raw.startswith("@") else json.loads(Path(raw[1:]).read_text())
    raise_fd_limit()
    if role == "subs":
        uvloop.run(SubsProcess(cfg).run())
    elif role == "pub":
        emit(uvloop.run(Publisher(cfg).run()))
    else:
        raise SystemExit(f"unknown role {role}")


if __name__ == "__main__":
    main()
