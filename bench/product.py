"""The product comparison (scenario ``product`` of bench/run.py, issue 7).

The product team's own table, redone with measured figures for ONE demo
execution: update latency, HTTP requests and bytes on the wire when a page
follows it by polling every 2 s, by WebSocket, and by WebSocket with
permessage-deflate.

- The execution is the script of ``progress-relay demo``
  (``service.demo.diagnosis_script``: queued, a progress and a result per AI
  platform, an occasional time-out reported as a recoverable error before the
  retry, analyzing, report, complete with the report), POSTed one event at a
  time to ``/internal/v1/executions/{id}/events`` with the publisher key over
  one keep-alive connection, paced so that the whole execution lasts
  ``duration`` seconds (the demo's relative pauses, scaled).
- Every watcher follows that same execution at the same time, in this one
  asyncio process (the server is another process), each through its own
  byte-counting TCP proxy (one listening port per watcher, forwarding to the
  relay), so bytes are real TCP payload both ways: request and response
  headers and bodies, the WebSocket upgrade, every frame, pings and pongs,
  the close handshake. TCP/IP headers (about 52 bytes a segment) and TLS are
  not counted; both would add more to polling (more segments, more records).
- Watchers (the modes):

  ``poll_state``      GET /v1/executions/{id} every ``poll_interval`` s: the
                      product's old way, the full state each time;
  ``poll_events``     GET /v1/executions/{id}/events?after=N every
                      ``poll_interval`` s (short polls, wait=0): our cursor;
  ``ws``              WebSocket, no compression offered;
  ``ws_deflate``      WebSocket offering permessage-deflate, the relay's
                      default answer (server context takeover: a frame may
                      refer back to the previous one); the scenario fails
                      if the relay does not accept it;
  ``ws_deflate_msg``  the same against a second relay started with
                      RELAY_WS_COMPRESSION_CONTEXT_TAKEOVER=false, every
                      message compressed alone (its own copy of the
                      execution, published at the same moments).

  Pollers send what a mini-program's ``wx.request`` sends (Authorization:
  Bearer, its User-Agent and Referer, Accept, content-type, Accept-Encoding;
  no Origin) over one keep-alive connection, and stop once the execution is
  terminal. Sockets carry the token in the Authorization header as the
  mini-program client does, send no protocol pings (browsers and
  mini-programs do not), answer the server's pings, and send the JS client's
  heartbeat ``{"type":"ping"}`` every ``heartbeat`` s (the connected frame's
  ``heartbeat_interval`` when shorter).
- Latency of an update: publisher's 2xx for that event (time.monotonic) to
  the watcher first seeing its seq. The relay hands an event to its sockets
  before it answers the POST, so a socket can see it a fraction of a
  millisecond *before* the 2xx: such latencies are slightly negative. A
  state poll "sees" seq s once it reports latest_seq >= s; the seqs it never
  reported as latest (folded into a later state) are counted as ``skipped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import statistics
import time
from contextlib import ExitStack
from pathlib import Path

from websockets.asyncio.client import connect

from service.demo import diagnosis_script

EXECUTION_ID = "demo-001"
MODES = {
    "poll_state": "polling the state every {poll}",
    "poll_events": "polling the events cursor every {poll}",
    "ws": "WebSocket",
    "ws_deflate": "WebSocket + permessage-deflate (default)",
    "ws_deflate_msg": "WebSocket + permessage-deflate, each message alone",
}
BASELINE = "poll_state"
TARGET_PCT = 5.0  # issue 7: compressed WebSocket bytes <= 5 % of polling every 2 s
# What WeChat's wx.request sends from a page (iOS); a browser's fetch sends more (Origin, Sec-Fetch-*).
USER_AGENT = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Mobile/15E148 MicroMessenger/8.0.50(0x1800323c) NetType/WIFI Language/zh_CN miniProgram/wx1234567890abcdef"
)
REFERER = "https://servicewechat.com/wx1234567890abcdef/12/page-frame.html"
POLL_HEADERS = [
    ("User-Agent", USER_AGENT),
    ("Referer", REFERER),
    ("Accept", "application/json"),
    ("content-type", "application/json"),
    ("Accept-Encoding", "gzip, deflate, br"),
    ("Accept-Language", "zh-CN,zh;q=0.9"),
]
WS_HEADERS = [("Referer", REFERER), ("Accept-Language", "zh-CN,zh;q=0.9")]


# ---------------------------------------------------------------------------
# byte-counting proxy


class Frames:
    """Counts the WebSocket frames of one direction by opcode (after the upgrade)."""

    def __init__(self) -> None:
        self.buf = b""
        self.opcodes: dict[int, int] = {}

    def feed(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 2:
            n, pos = self.buf[1] & 0x7F, 2
            if n >= 126:
                pos += 2 if n == 126 else 8
                if len(self.buf) < pos:
                    return
                n = int.from_bytes(self.buf[2:pos], "big")
            pos += 4 if self.buf[1] & 0x80 else 0  # client frames are masked
            if len(self.buf) < pos + n:
                return
            op = self.buf[0] & 0x0F
            self.opcodes[op] = self.opcodes.get(op, 0) + 1
            self.buf = self.buf[pos + n :]


@dataclasses.dataclass
class Meter:
    ws: bool = False
    up: int = 0
    down: int = 0
    connections: int = 0
    open: int = 0
    handshake: int = 0  # bytes of the first HTTP head each way (the WebSocket upgrade)
    frames: dict = dataclasses.field(default_factory=lambda: {"up": Frames(), "down": Frames()})


async def start_proxy(meter: Meter, upstream_port: int) -> tuple[asyncio.Server, int]:
    """Listen on a free port; forward each connection to the relay, counting payload bytes both ways."""

    async def pump(reader, writer, direction: str) -> None:
        head = b""
        try:
            while data := await reader.read(65536):
                writer.write(data)
                setattr(meter, direction, getattr(meter, direction) + len(data))
                if head is None:
                    if meter.ws:
                        meter.frames[direction].feed(data)
                else:
                    head += data
                    if b"\r\n\r\n" in head:
                        end = head.index(b"\r\n\r\n") + 4
                        meter.handshake += end
                        if meter.ws:
                            meter.frames[direction].feed(head[end:])
                        head = None
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                if writer.can_write_eof():
                    writer.write_eof()

    async def handle(c_reader, c_writer) -> None:
        meter.connections += 1
        meter.open += 1
        try:
            u_reader, u_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
            await asyncio.gather(pump(c_reader, u_writer, "up"), pump(u_reader, c_writer, "down"))
            u_writer.close()
        finally:
            c_writer.close()
            meter.open -= 1

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


# ---------------------------------------------------------------------------
# a minimal keep-alive HTTP/1.1 client (pollers and publishers)


class Http:
    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.requests = 0
        self.connections = 0

    async def request(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b""):
        for attempt in (1, 2):
            fresh = self.writer is None
            if fresh:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
                self.connections += 1
            head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", "Connection: keep-alive"]
            head += [f"{k}: {v}" for k, v in headers]
            if body:
                head.append(f"Content-Length: {len(body)}")
            self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
            self.requests += 1
            try:
                return await self._response()
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if fresh or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _response(self) -> tuple[int, dict[str, str], bytes]:
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, headers, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


# ---------------------------------------------------------------------------
# watchers


@dataclasses.dataclass
class Watcher:
    mode: str
    meter: Meter = dataclasses.field(default_factory=Meter)
    port: int = 0
    first_seen: dict = dataclasses.field(default_factory=dict)  # seq -> monotonic
    last_seq: int = 0
    dups: int = 0
    out_of_order: int = 0
    skipped: int = 0
    requests: int = 0
    empty: int = 0
    statuses: dict = dataclasses.field(default_factory=dict)
    pings: int = 0
    pongs: int = 0
    extensions: str | None = None
    close_code: int | None = None

    def see(self, seq: int, now: float) -> None:
        """One event delivered (socket frame or polled event)."""
        if seq in self.first_seen:
            self.dups += 1
            return
        if seq != self.last_seq + 1:
            self.out_of_order += 1
        self.first_seen[seq] = now
        self.last_seq = max(self.last_seq, seq)

    def see_state(self, latest: int, now: float) -> bool:
        """A state answer covering every seq up to ``latest``; True when it brought something new."""
        if latest <= self.last_seq:
            return False
        self.skipped += latest - self.last_seq - 1
        for seq in range(self.last_seq + 1, latest + 1):
            self.first_seen[seq] = now
        self.last_seq = latest
        return True


async def poll(w: Watcher, eid: str, token: str, interval: float, deadline: float) -> None:
    """Poll every ``interval`` s (setInterval-like) until the execution is terminal."""
    http = Http(w.port)
    headers = [("Authorization", f"Bearer {token}"), *POLL_HEADERS]
    due = time.monotonic()
    try:
        while time.monotonic() < deadline:
            path = f"/v1/executions/{eid}"
            if w.mode != "poll_state":
                path += f"/events?after={w.last_seq}"
            status, _, body = await http.request("GET", path, headers)
            now = time.monotonic()
            w.statuses[status] = w.statuses.get(status, 0) + 1
            done, more = False, False
            if status == 200:
                doc = json.loads(body)
                if w.mode == "poll_state":
                    fresh = w.see_state(doc["latest_seq"], now)
                else:
                    for event in doc["events"]:
                        w.see(event["seq"], now)
                    fresh, more = bool(doc["events"]), doc["has_more"]
                w.empty += not fresh
                done = doc["terminal"] and not more
            elif status == 404 and w.mode == "poll_state":
                w.empty += 1  # asked before the first event: the execution does not exist yet
            else:
                raise RuntimeError(f"{w.mode}: HTTP {status} {body[:200]!r}")
            if done:
                break
            if not more:
                due += interval
                await asyncio.sleep(max(0.0, due - time.monotonic()))
    finally:
        w.requests = http.requests
        await http.close()


async def watch_socket(w: Watcher, eid: str, token: str, heartbeat: float, ready: asyncio.Event) -> None:
    """Follow the execution on a socket until the server closes it after the terminal event."""
    compression = None if w.mode == "ws" else "deflate"
    async with connect(
        f"ws://127.0.0.1:{w.port}/ws/executions/{eid}",
        compression=compression,
        additional_headers=[("Authorization", f"Bearer {token}"), *WS_HEADERS],
        user_agent_header=USER_AGENT,
        ping_interval=None,  # browsers and mini-programs send no protocol pings; they answer the server's
        proxy=None,
        open_timeout=10,
    ) as ws:
        w.requests = 1
        w.extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
        if compression and "permessage-deflate" not in (w.extensions or ""):
            raise RuntimeError(f"{w.mode}: the relay did not negotiate permessage-deflate ({w.extensions!r})")
        if not compression and w.extensions:
            raise RuntimeError(f"{w.mode}: extensions negotiated without an offer: {w.extensions!r}")
        beat = None

        async def heartbeats(every: float) -> None:
            while True:
                await asyncio.sleep(every)
                await ws.send('{"type":"ping"}')
                w.pings += 1

        try:
            async for raw in ws:
                now = time.monotonic()
                msg = json.loads(raw)
                kind = msg.get("type")
                if kind == "diagnosis_update":
                    w.see(msg["seq"], now)
                elif kind == "connected":
                    every = min(heartbeat, msg.get("heartbeat_interval") or heartbeat)
                    beat = asyncio.create_task(heartbeats(every))
                    ready.set()
                elif kind == "pong":
                    w.pongs += 1
        finally:
            if beat:
                beat.cancel()
        w.close_code = ws.close_code


# ---------------------------------------------------------------------------
# publisher


async def publish(port: int, key: str, eid: str, steps, pace: float, t0: float, acks: dict) -> None:
    """POST the script's events on schedule (t0 + pace x cumulative pauses); acks[seq] = time of the 2xx."""
    http = Http(port)
    headers = [("Authorization", f"Bearer {key}"), ("Content-Type", "application/json")]
    due = t0
    try:
        for i, step in enumerate(steps):
            due += pace * step.pause
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            body = json.dumps(
                {"event": step.event, "data": step.data, "idempotency_key": f"{eid}/{i}"}, ensure_ascii=False
            ).encode()
            status, _, answer = await http.request("POST", f"/internal/v1/executions/{eid}/events", headers, body)
            now = time.monotonic()
            if status // 100 != 2:
                raise RuntimeError(f"publish {step.event}: HTTP {status} {answer[:200]!r}")
            acks[json.loads(answer)["seq"]] = now
    finally:
        await http.close()


# ---------------------------------------------------------------------------
# the run


async def measure(ports: dict[str, tuple[int, str]], cfg: dict, mint) -> dict:
    """``ports``: mode -> (relay port, publisher key). One execution per relay, all watchers at once."""
    eid = EXECUTION_ID
    steps = diagnosis_script(eid, cfg["seed"])
    pace = cfg["duration"] / sum(s.pause for s in steps)
    watchers = {m: Watcher(m, Meter(ws=m.startswith("ws"))) for m in ports}
    proxies = []
    for m, w in watchers.items():
        server, w.port = await start_proxy(w.meter, ports[m][0])
        proxies.append(server)
    deadline = time.monotonic() + 2 * cfg["duration"] + 30
    tasks = {}
    ready = {}
    for m, w in watchers.items():
        if m.startswith("ws"):
            ready[m] = asyncio.Event()
            tasks[m] = asyncio.create_task(watch_socket(w, eid, mint(eid, f"user-{m}"), cfg["heartbeat"], ready[m]))
    # the page opens its socket, then the execution starts; pollers begin with it
    gate = asyncio.create_task(asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready.values())), 10))
    await asyncio.wait([gate, *tasks.values()], return_when=asyncio.FIRST_COMPLETED)
    for m, task in tasks.items():
        if task.done():
            gate.cancel()
            task.result()  # raise the connect error
            raise RuntimeError(f"{m}: the socket ended before the execution started")
    gate.result()  # TimeoutError when a socket got no connected frame within 10 s
    t0 = time.monotonic()
    for m, w in watchers.items():
        if m.startswith("poll"):
            tasks[m] = asyncio.create_task(poll(w, eid, mint(eid, f"user-{m}"), cfg["poll_interval"], deadline))
    acks: dict[int, dict[int, float]] = {}
    pubs = []
    for port, key in sorted(set(ports.values())):
        acks[port] = {}
        pubs.append(asyncio.create_task(publish(port, key, eid, steps, pace, t0, acks[port])))
    await asyncio.wait_for(asyncio.gather(*pubs), deadline - time.monotonic())
    t_end = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*tasks.values()), max(1.0, deadline - time.monotonic()))
    # the proxies see the last bytes (close handshake, FIN) a moment after the clients are done
    for _ in range(100):
        if all(w.meter.open == 0 for w in watchers.values()):
            break
        await asyncio.sleep(0.02)
    for server in proxies:
        server.close()
    modes = {m: mode_summary(w, acks[ports[m][0]]) for m, w in watchers.items()}
    base = modes.get(BASELINE, {}).get("bytes_total")
    for s in modes.values():
        s["vs_polling_pct"] = round(100 * s["bytes_total"] / base, 2) if base else None
    return {
        "modes": modes,
        "details": {
            m: {
                "extensions": w.extensions,
                "close_code": w.close_code,
                "statuses": {str(k): v for k, v in w.statuses.items()},
                "still_open": w.meter.open,
            }
            for m, w in watchers.items()
        },
        "execution": {
            "execution_id": eid,
            "events": len(steps),
            "errors_retried": sum(s.event == "error" for s in steps),
            "pace_s": round(pace, 3),
            "published_s": round(t_end - t0, 2),
        },
    }


def mode_summary(w: Watcher, acks: dict[int, float]) -> dict:
    lat = [1000 * (w.first_seen[s] - t) for s, t in acks.items() if s in w.first_seen]
    total = w.meter.up + w.meter.down
    ws = w.mode.startswith("ws")
    return {
        "p50_ms": round(statistics.median(lat), 1) if lat else None,
        "max_ms": round(max(lat), 1) if lat else None,
        "requests": w.requests,
        "connections": w.meter.connections,
        "bytes_down": w.meter.down,
        "bytes_up": w.meter.up,
        "bytes_total": total,
        "kb_total": round(total / 1024, 2),
        "events": len(acks),
        "seen": sum(s in w.first_seen for s in acks),
        "lost": sum(s not in w.first_seen for s in acks),
        "dups": w.dups,
        "out_of_order": w.out_of_order,
        "skipped": w.skipped,
        "upgrade_bytes": w.meter.handshake if ws else None,
        "frames_down": sum(w.meter.frames["down"].opcodes.values()) if ws else None,
        "frames_up": sum(w.meter.frames["up"].opcodes.values()) if ws else None,
        "server_pings": w.meter.frames["down"].opcodes.get(0x9, 0) if ws else None,
        "empty_answers": None if ws else w.empty,
        "deflate": int("permessage-deflate" in (w.extensions or "")) if ws else None,
        "heartbeats": w.pings if ws else None,
        "pongs": w.pongs if ws else None,
    }


def run_scenario(target, cfg: dict, tmp: Path, server_cls, mint) -> dict:
    """Start the relay with its default compression (and a second one compressing each message alone),
    measure, summarise."""
    compression: dict[str, str] = {}  # the defaults: on, minimum 64 bytes, server context takeover
    main = dataclasses.replace(target, extra_env={**target.extra_env, **compression})
    per_message = dataclasses.replace(
        target, extra_env={**target.extra_env, **compression, "RELAY_WS_COMPRESSION_CONTEXT_TAKEOVER": "false"}
    )
    with ExitStack() as stack:
        stack.enter_context(server_cls(main, tmp))
        stack.enter_context(server_cls(per_message, tmp))
        ports = {m: (main.port, main.publish_key) for m in MODES if m != "ws_deflate_msg"}
        ports["ws_deflate_msg"] = (per_message.port, per_message.publish_key)
        res = asyncio.run(measure(ports, cfg, mint))
    modes = res["modes"]
    wsz = modes["ws_deflate"]
    res["server_env"] = {"main": compression, "per_message": per_message.extra_env}
    res["summary"] = {
        "events": res["execution"]["events"],
        "published_s": res["execution"]["published_s"],
        "poll_state_kb": modes["poll_state"]["kb_total"],
        "poll_events_kb": modes["poll_events"]["kb_total"],
        "ws_kb": modes["ws"]["kb_total"],
        "ws_deflate_kb": wsz["kb_total"],
        "ws_deflate_msg_kb": modes["ws_deflate_msg"]["kb_total"],
        "ws_deflate_vs_polling_pct": wsz["vs_polling_pct"],
        "poll_state_requests": modes["poll_state"]["requests"],
        "ws_deflate_p50_ms": wsz["p50_ms"],
        "poll_state_p50_ms": modes["poll_state"]["p50_ms"],
        "deflate_negotiated": wsz["deflate"],
        "lost": sum(m["lost"] for m in modes.values()),
        "dups": sum(m["dups"] for m in modes.values()),
        "out_of_order": sum(m["out_of_order"] for m in modes.values()),
    }
    return res


# ---------------------------------------------------------------------------
# report


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KB"


def markdown(per_target: dict, cfg: dict) -> list[str]:
    """The product team's table, one row per mode."""
    lines = []
    for name, entry in per_target.items():
        if "error" in entry:
            lines += [f"- {name} failed: `{entry['error'].splitlines()[0][:200]}`", ""]
            continue
        ex = entry["execution"]
        poll = _seconds(cfg["poll_interval"])
        lines += [
            f"One demo execution (`{ex['execution_id']}`, the `progress-relay demo` script: "
            f"{ex['events']} events, {ex['errors_retried']} platform time-out retried), published over "
            f"{ex['published_s']:.1f} s ({ex['pace_s']} s per step), watched at the same time in every mode. "
            f"Bytes: TCP payload both ways through a counting proxy (HTTP headers and bodies; WebSocket "
            f"upgrade, frames, heartbeats every {_seconds(cfg['heartbeat'])}, server pings, close). "
            "Latency: publisher's 2xx → the watcher first sees that seq. KB = 1024 bytes.",
            "",
            "| mode | update latency p50 / max | HTTP requests | bytes on the wire (down + up) | vs polling |",
            "|---|---|---|---|---|",
        ]
        for mode, s in entry["modes"].items():
            label = MODES.get(mode, mode).format(poll=poll)
            lat = "–" if s["p50_ms"] is None else f"{_ms(s['p50_ms'])} / {_ms(s['max_ms'])}"
            req = f"{s['requests']:,}" + (" (upgrade)" if mode.startswith("ws") else "")
            wire = f"{_kb(s['bytes_total'])} ({_kb(s['bytes_down'])} + {_kb(s['bytes_up'])})"
            pct = "–" if s["vs_polling_pct"] is None else f"{s['vs_polling_pct']:.1f} %"
            lines.append(f"| {label} | {lat} | {req} | {wire} | {pct} |")
        lines.append("")
        notes = []
        for mode, s in entry["modes"].items():
            bad = {k: s[k] for k in ("lost", "dups", "out_of_order") if s[k]}
            if bad:
                notes.append(f"{mode}: " + ", ".join(f"{k} {v}" for k, v in bad.items()))
        st = entry["modes"].get("poll_state")
        if st:
            notes.append(
                f"state polling: {st['empty_answers']} of {st['requests']} answers brought nothing new; "
                f"{st['skipped']} of {st['events']} updates were never shown (folded into a later state); "
                f"a poll costs {st['bytes_up'] / st['requests']:.0f} bytes up + "
                f"{st['bytes_down'] / st['requests']:.0f} down on one keep-alive connection (no TLS)"
            )
        for mode, s in entry["modes"].items():
            if mode.startswith("ws"):
                notes.append(
                    f"{mode}: upgrade {s['upgrade_bytes']:,} bytes both ways, {s['frames_down']} frames down "
                    f"({s['server_pings']} server pings), {s['frames_up']} up ({s['heartbeats']} heartbeats)"
                )
        wsz = entry["modes"].get("ws_deflate", {}).get("vs_polling_pct")
        if wsz is not None:
            verdict = "met" if wsz <= TARGET_PCT else "missed"
            notes.append(
                f"target: WebSocket + deflate (the relay's default settings) ≤ {TARGET_PCT:g} % of state polling: "
                f"{wsz:.1f} %, {verdict}"
            )
        lines += [f"- {n}" for n in notes]
        lines.append("")
    return lines


def _ms(v: float) -> str:
    return f"{v / 1000:.2f} s" if abs(v) >= 1000 else f"{v:.1f} ms"


def _seconds(v: float) -> str:
    return f"{v:g} s"
