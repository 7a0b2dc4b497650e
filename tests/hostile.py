"""Hostile-client attacks against a real relay process, with its health measured meanwhile.

Used by ``tests/test_hostile.py`` (which asserts on what the relay does) and by
``bench/hostile.py`` (which prints the table of docs/reliability.md). Each
attack is small and bounded (a few seconds, loopback only). While it runs a
:class:`Monitor` probes ``/healthz`` from another loopback address (so the
per-address cap never counts the probe), samples the server's RSS from
``/proc``, and afterwards reads what the server wrote: error lines, lines that
are not JSON, access lines with a 5xx status.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from websockets.frames import Frame, Opcode

from tests.conftest import PUBLISH_KEY, make_token
from tests.redis_util import ServiceProcess

__all__ = ["ATTACKS", "SERVER_ENV", "Health", "Outcome", "run_attack"]

#: How the attacked relay runs: production mode, a short head deadline, a per-address cap.
SERVER_ENV = {
    "RELAY_ENV": "production",
    "RELAY_LOG_LEVEL": "INFO",
    "RELAY_ACCESS_LOG": "true",
    "RELAY_HANDSHAKE_TIMEOUT": "2",
    "RELAY_MAX_CONNECTIONS_PER_IP": "300",
}
PROBE_ADDRESS = "127.0.0.2"  # the health probe's source address: not the attacker's


@dataclass
class Health:
    """The relay's health while one attack ran."""

    healthz_ms: list[float] = field(default_factory=list)
    healthz_failures: int = 0
    healthz_errors: list[str] = field(default_factory=list)
    rss_before: int = 0
    rss_peak: int = 0
    error_lines: int = 0
    non_json_lines: int = 0
    server_errors: int = 0  # access lines with a 5xx status

    @property
    def healthz_p50_ms(self) -> float:
        """Median /healthz latency."""
        return _percentile(self.healthz_ms, 0.5)

    @property
    def healthz_max_ms(self) -> float:
        """Slowest /healthz answer."""
        return max(self.healthz_ms, default=0.0)

    @property
    def rss_growth_mib(self) -> float:
        """Peak RSS minus RSS before the attack, MiB."""
        return (self.rss_peak - self.rss_before) / 2**20


@dataclass
class Outcome:
    """What the relay did to the attacker: counts by answer (HTTP status, close code, ``closed``)."""

    answers: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, answer: str) -> None:
        """Count one answer."""
        self.answers[answer] = self.answers.get(answer, 0) + 1


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Monitor:
    """Probes /healthz and samples RSS while an attack runs; reads the server's log after it."""

    def __init__(self, service: ServiceProcess) -> None:
        self.service = service
        self.health = Health()
        self._tasks: list[asyncio.Task[None]] = []
        self._log_offset = 0

    async def __aenter__(self) -> Monitor:
        assert self.service.proc is not None
        pid = self.service.proc.pid
        self._log_offset = Path(self.service.log.name).stat().st_size
        self.health.rss_before = self.health.rss_peak = _rss(pid)
        self._tasks = [asyncio.create_task(self._probe()), asyncio.create_task(self._sample(pid))]
        async with asyncio.timeout(10):  # the first answer before the attack starts
            while not self.health.healthz_ms and not self.health.healthz_failures:
                await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        count = len(self.health.healthz_ms) + self.health.healthz_failures
        async with asyncio.timeout(10):  # one more answer after the attack
            while len(self.health.healthz_ms) + self.health.healthz_failures <= count:
                await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.sleep(0.3)  # let the server write its last lines
        self._read_log()

    async def _probe(self) -> None:
        # In a thread of its own, with blocking I/O: the attack's event loop, busy with
        # hundreds of sockets, must not add its own delays to the latency measured.
        stop = threading.Event()
        thread = threading.Thread(target=self._probe_loop, args=(stop,), daemon=True)
        thread.start()
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            stop.set()
            await asyncio.to_thread(thread.join, 15)

    def _probe_loop(self, stop: threading.Event) -> None:
        transport = httpx.HTTPTransport(local_address=PROBE_ADDRESS)
        with httpx.Client(base_url=self.service.base, transport=transport, timeout=10) as http:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    r = http.get("/healthz")
                    if r.status_code == 200:
                        self.health.healthz_ms.append((time.perf_counter() - started) * 1000)
                    else:
                        self.health.healthz_failures += 1
                        self.health.healthz_errors.append(str(r.status_code))
                except httpx.HTTPError as exc:
                    self.health.healthz_failures += 1
                    self.health.healthz_errors.append(repr(exc))
                stop.wait(0.05)

    async def _sample(self, pid: int) -> None:
        while True:
            self.health.rss_peak = max(self.health.rss_peak, _rss(pid))
            await asyncio.sleep(0.05)

    def _read_log(self) -> None:
        with open(self.service.log.name, "rb") as f:
            f.seek(self._log_offset)
            text = f.read().decode(errors="replace")
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                self.health.non_json_lines += 1
                continue
            if not isinstance(entry, dict):
                self.health.non_json_lines += 1
            elif entry.get("level") in ("error", "critical"):
                self.health.error_lines += 1
            elif entry.get("logger") == "relay.access" and int(entry.get("status", 0)) >= 500:
                self.health.server_errors += 1


# -- raw clients ---------------------------------------------------------------------------


async def _raw(service: ServiceProcess) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", service.port)


async def _status(reader: asyncio.StreamReader, timeout: float = 10.0) -> str:
    """The status of the next response, or ``closed``."""
    try:
        async with asyncio.timeout(timeout):
            line = await reader.readline()
    except (TimeoutError, ConnectionError):
        return "timeout"
    return line.split(b" ")[1].decode() if line.startswith(b"HTTP/1.1") else "closed"


def _frame(opcode: Opcode, data: bytes = b"", fin: bool = True) -> bytes:
    return Frame(opcode, data, fin).serialize(mask=True, extensions=[])


async def _ws(service: ServiceProcess, sub: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket opened by hand on ``hostile-exec`` (after the 101)."""
    reader, writer = await _raw(service)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /ws/executions/hostile-exec?token={make_token('hostile-exec', sub=sub)} HTTP/1.1\r\nHost: x\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"handshake refused: {head[:40]!r}")
    return reader, writer


async def _close_code(reader: asyncio.StreamReader, timeout: float = 10.0) -> str:
    """The server's close code (or ``closed`` without one), reading until it closes."""
    data = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                data += chunk
    except TimeoutError:
        if not data:
            return "timeout"
    except ConnectionError:
        if not data:
            return "reset"
    while len(data) >= 2:
        opcode, length, offset = data[0] & 0x0F, data[1] & 0x7F, 2
        if length == 126:
            length, offset = struct.unpack("!H", data[2:4])[0], 4
        elif length == 127:
            length, offset = struct.unpack("!Q", data[2:10])[0], 10
        if opcode == Opcode.CLOSE:
            return str(struct.unpack("!H", data[offset : offset + 2])[0])
        data = data[offset + length :]
    return "closed"


# -- attacks -------------------------------------------------------------------------------


async def unauthenticated_bodies(service: ServiceProcess, outcome: Outcome) -> None:
    """100 connections announce 1 MiB bodies on /internal without a key (half with Expect: 100-continue)."""

    async def one(i: int) -> None:
        reader, writer = await _raw(service)
        expect = b"Expect: 100-continue\r\n" if i % 2 else b""
        writer.write(b"POST /internal/v1/events HTTP/1.1\r\nHost: x\r\n" + expect + b"Content-Length: 1048576\r\n\r\n")
        if not expect:
            with contextlib.suppress(ConnectionError):
                writer.write(b"x" * 262_144)
        outcome.add(await _status(reader))
        writer.close()

    await asyncio.gather(*(one(i) for i in range(100)))


async def _flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, burst: bytes, outcome: Outcome) -> None:
    """Write ``burst`` again and again for up to 2 s, until the server closes; count its close code."""
    closed = asyncio.ensure_future(_close_code(reader))  # reads meanwhile, so the close frame is seen
    deadline = time.monotonic() + 2
    with contextlib.suppress(ConnectionError, TimeoutError):
        while time.monotonic() < deadline and not closed.done():
            writer.write(burst)
            await asyncio.wait_for(writer.drain(), 1)
    outcome.add(await closed)
    writer.close()


async def control_frame_flood(service: ServiceProcess, outcome: Outcome) -> None:
    """5 sockets each write pings and unsolicited pongs as fast as they can for up to 2 s."""

    async def one(i: int) -> None:
        reader, writer = await _ws(service, f"pinger-{i}")
        burst = b"".join(_frame(Opcode.PING if n % 2 else Opcode.PONG, b"x") for n in range(500))
        await _flood(reader, writer, burst, outcome)

    await asyncio.gather(*(one(i) for i in range(5)))


async def continuation_flood(service: ServiceProcess, outcome: Outcome) -> None:
    """5 sockets each open a text message and send empty continuation frames for up to 2 s."""

    async def one(i: int) -> None:
        reader, writer = await _ws(service, f"fragmenter-{i}")
        writer.write(_frame(Opcode.TEXT, b"", fin=False))
        burst = b"".join(_frame(Opcode.CONT, b"", fin=False) for _ in range(1000))
        await _flood(reader, writer, burst, outcome)

    await asyncio.gather(*(one(i) for i in range(5)))


async def invalid_utf8(service: ServiceProcess, outcome: Outcome) -> None:
    """50 sockets each send a text message whose continuation is invalid UTF-8, then a valid message."""

    async def one(i: int) -> None:
        reader, writer = await _ws(service, f"garbler-{i % 20}")
        writer.write(
            _frame(Opcode.TEXT, b'{"type":', fin=False) + _frame(Opcode.CONT, b"\xff") + _frame(Opcode.TEXT, b"1")
        )
        outcome.add(await _close_code(reader))
        writer.close()

    for start in range(0, 50, 10):  # 20 subs, at most 20 sockets each: in rounds of 10
        await asyncio.gather(*(one(i) for i in range(start, start + 10)))


async def slowloris(service: ServiceProcess, outcome: Outcome) -> None:
    """200 connections send a request head one byte every 100 ms (it would take 30 s each)."""

    async def one() -> None:
        reader, writer = await _raw(service)
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 300
        answer = asyncio.ensure_future(_status(reader, timeout=20))
        for byte in head:
            if answer.done():
                break
            with contextlib.suppress(ConnectionError):
                writer.write(bytes([byte]))
            await asyncio.sleep(0.1)
        outcome.add(await answer)
        writer.close()

    await asyncio.gather(*(one() for _ in range(200)))


async def connection_hoard(service: ServiceProcess, outcome: Outcome) -> None:
    """One address opens 400 idle connections at once (the attacked relay caps an address at 300)."""
    held: list[asyncio.StreamWriter] = []

    async def one() -> None:
        reader, writer = await _raw(service)
        held.append(writer)
        try:
            async with asyncio.timeout(1.0):
                line = await reader.readline()
            outcome.add(line.split(b" ")[1].decode() if line else "closed")
        except TimeoutError:
            outcome.add("held open")

    await asyncio.gather(*(one() for _ in range(400)))
    for writer in held:
        writer.close()


async def non_reader(service: ServiceProcess, outcome: Outcome) -> None:
    """3 sockets with a tiny receive buffer flood pings (each answered with a pong) and never read."""

    async def one(i: int) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", service.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /ws/executions/hostile-exec?token={make_token('hostile-exec', sub=f'deaf-{i}')} HTTP/1.1\r\n"
            f"Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        async with asyncio.timeout(10):
            await reader.readuntil(b"\r\n\r\n")
        burst = b"".join(_frame(Opcode.PING, b"p" * 100) for _ in range(1000))
        deadline = time.monotonic() + 3
        try:
            while time.monotonic() < deadline:
                writer.write(burst)
                await asyncio.wait_for(writer.drain(), 1)
        except (ConnectionError, TimeoutError):
            pass
        outcome.add(await _close_code(reader))
        writer.close()

    await asyncio.gather(*(one(i) for i in range(3)))


async def log_injection(service: ServiceProcess, outcome: Outcome) -> None:
    """200 requests with control bytes, quotes, backslashes, invalid UTF-8 and tokens in the path and headers."""
    token = make_token("hostile-exec").encode()
    targets = [
        b"/x\x01y?token=" + token,
        b'/v1/executions/hostile-exec?token=abc"}\\',
        b"/v1/executions/hostile-exec/events?token=" + token + b"&after=\x7f",
        b"/ws/executions/hostile-exec?access_token=" + token,
    ]
    headers = [b"X-Junk: \xff\xfe\r\n", b"Authorization: Bearer " + token + b'"\\\r\n', b"X-Request-ID: a\x01b\r\n"]

    async def one(i: int) -> None:
        reader, writer = await _raw(service)
        target, header = targets[i % len(targets)], headers[i % len(headers)]
        writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n")
        outcome.add(await _status(reader))
        writer.close()

    for start in range(0, 200, 50):
        await asyncio.gather(*(one(i) for i in range(start, start + 50)))


async def clients_that_leave(service: ServiceProcess, outcome: Outcome) -> None:
    """100 clients leave mid-request: mid-body of an authorized publish, or during a long poll."""
    auth = f"Authorization: Bearer {PUBLISH_KEY}\r\n".encode()
    token = make_token("hostile-exec", sub="leaver")

    async def one(i: int) -> None:
        reader, writer = await _raw(service)
        if i % 2:
            writer.write(
                b"POST /internal/v1/executions/hostile-exec/events HTTP/1.1\r\nHost: x\r\n"
                + auth
                + b"Expect: 100-continue\r\nContent-Length: 100\r\n\r\n"
            )
            async with asyncio.timeout(10):
                await reader.readuntil(b"\r\n\r\n")  # 100 Continue: the handler is reading
            writer.write(b"{")
        else:
            writer.write(
                f"GET /v1/executions/hostile-exec/events?wait=20&token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            )
            await asyncio.sleep(0.5)
        await writer.drain()
        writer.transport.abort()
        outcome.add("left")

    for start in range(0, 100, 20):  # long polls count toward the user's limit (20)
        await asyncio.gather(*(one(i) for i in range(start, start + 20)))


async def long_poll_hoard(service: ServiceProcess, outcome: Outcome) -> None:
    """280 long polls (wait=30) on one token (under the per-address cap): past the per-user limit (20) refused."""
    token = make_token("hostile-polls", sub="poller")
    # From an address of its own: the per-address count of earlier attacks' connections (closing) does not matter.
    transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=500), local_address="127.0.0.3")
    async with httpx.AsyncClient(base_url=service.base, transport=transport, timeout=5) as http:

        async def one() -> None:
            try:
                r = await http.get(
                    "/v1/executions/hostile-polls/events",
                    params={"after": 0, "wait": 30},
                    headers={"Authorization": f"Bearer {token}"},
                )
                outcome.add(str(r.status_code))
            except httpx.TimeoutException:
                outcome.add("held open")
            except httpx.HTTPError as exc:
                outcome.add(type(exc).__name__)

        await asyncio.gather(*(one() for _ in range(280)))


async def large_events_compressed(service: ServiceProcess, outcome: Outcome) -> None:
    """30 distinct ~900 KB events to one compressing subscriber (they once filled the compression cache)."""
    from websockets.asyncio.client import connect

    url = f"ws://127.0.0.1:{service.port}/ws/executions/hostile-big?token={make_token('hostile-big', sub='big')}"
    auth = {"Authorization": f"Bearer {PUBLISH_KEY}"}
    async with (
        connect(url, compression="deflate", max_size=None) as ws,
        httpx.AsyncClient(base_url=service.base, timeout=10) as http,
    ):
        await ws.recv()  # connected
        sent = []
        for i in range(30):
            text = os.urandom(300_000).hex()[: 900_000 - 20] + f"-{i}"
            sent.append(text)
            r = await http.post(
                "/internal/v1/executions/hostile-big/events",
                json={"event": "result", "data": {"t": text}},
                headers=auth,
            )
            outcome.add(str(r.status_code))
        for text in sent:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
            outcome.add("intact" if frame["data"]["t"] == text else "corrupt")


async def idempotency_keys(service: ServiceProcess, outcome: Outcome) -> None:
    """10,000 distinct idempotency keys on one execution, in batches of 1,000."""
    auth = {"Authorization": f"Bearer {PUBLISH_KEY}"}
    async with httpx.AsyncClient(base_url=service.base, timeout=30) as http:
        for batch in range(10):
            events = [
                {
                    "execution_id": "hostile-keys",
                    "event": "progress",
                    "data": {"progress": 1, "stage": "s"},
                    "idempotency_key": f"k-{batch}-{i}",
                }
                for i in range(1000)
            ]
            r = await http.post("/internal/v1/events", json={"events": events}, headers=auth)
            outcome.add(str(r.status_code))
        metrics = (await http.get("/metrics")).text
    forgotten = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("relay_idempotency_keys_forgotten_total")
    )
    outcome.add(f"keys forgotten >= 8000: {forgotten >= 10_000 - 2 * 1000}")


async def idle(service: ServiceProcess, outcome: Outcome) -> None:
    """No attack: 3 s of probing alone, the baseline for the rows below."""
    await asyncio.sleep(3)
    outcome.add("-")


Attack = Callable[[ServiceProcess, Outcome], Awaitable[None]]

#: name -> (attack, what the relay is expected to do)
ATTACKS: dict[str, tuple[Attack, str]] = {
    "none (baseline, 3 s)": (idle, "-"),
    "unauthenticated 1 MiB bodies x100": (unauthenticated_bodies, "401 before any body byte, connection closed"),
    "ping/pong flood, 5 sockets": (control_frame_flood, "every frame counted: closed 4029"),
    "empty continuation frames, 5 sockets": (continuation_flood, "counted: closed 1008 past 16 frames (or 4029)"),
    "invalid UTF-8 in a fragment x50": (invalid_utf8, "closed 1007, no traceback, nothing spliced"),
    "slowloris head, 200 connections": (slowloris, "408 at the fixed 2 s head deadline"),
    "400 connections from one address": (connection_hoard, "past 300: 429 and closed"),
    "pings from a client that never reads": (non_reader, "closed 4029, aborted when it does not read"),
    "control bytes, quotes, tokens in requests x200": (log_injection, "400, 401 or 426; every log line JSON"),
    "clients leaving mid-request x100": (clients_that_leave, "logged 499, not 500"),
    "280 long polls on one token": (long_poll_hoard, "20 wait (the per-user limit), 260 get 429"),
    "distinct 900 KB events to a compressing subscriber x30": (
        large_events_compressed,
        "delivered intact, compressed per socket, not cached",
    ),
    "10,000 idempotency keys on one execution": (idempotency_keys, "keys beyond twice the history forgotten"),
}


async def run_attack(service: ServiceProcess, name: str) -> tuple[Outcome, Health]:
    """Run one attack with the health monitor around it."""
    attack, _ = ATTACKS[name]
    outcome = Outcome()
    async with Monitor(service) as monitor:
        started = time.monotonic()
        await attack(service, outcome)
        outcome.seconds = time.monotonic() - started
    return outcome, monitor.health


def start_service(**env: str) -> ServiceProcess:
    """A relay process configured as :data:`SERVER_ENV` (plus ``env``)."""
    return ServiceProcess(**{**SERVER_ENV, **env}).start()


def describe(outcome: Outcome) -> str:
    """``401 x100`` style summary of the answers."""
    return ", ".join(f"{answer} x{count}" for answer, count in sorted(outcome.answers.items(), key=lambda kv: -kv[1]))


def as_row(name: str, outcome: Outcome, health: Health) -> str:
    """One markdown table row."""
    _, expected = ATTACKS[name]
    return (
        f"| {name} | {expected} | {describe(outcome)} | {health.healthz_p50_ms:.1f} / {health.healthz_max_ms:.0f} "
        f"| {health.healthz_failures} | {health.rss_growth_mib:+.1f} | {health.error_lines} | "
        f"{health.non_json_lines} | {health.server_errors} |"
    )


TABLE_HEAD = (
    "| attack | what the relay does | answers seen | /healthz p50 / max ms | /healthz failures "
    "| RSS growth MiB | error lines | non-JSON lines | 5xx lines |\n|---|---|---|---|---|---|---|---|---|"
)


def results_json(rows: list[tuple[str, Outcome, Health]]) -> str:
    """The figures as JSON (for bench/results)."""
    return json.dumps(
        [
            {
                "attack": name,
                "answers": outcome.answers,
                "seconds": round(outcome.seconds, 2),
                "healthz_p50_ms": round(health.healthz_p50_ms, 2),
                "healthz_max_ms": round(health.healthz_max_ms, 1),
                "healthz_failures": health.healthz_failures,
                "rss_before_mib": round(health.rss_before / 2**20, 1),
                "rss_growth_mib": round(health.rss_growth_mib, 1),
                "error_lines": health.error_lines,
                "non_json_lines": health.non_json_lines,
                "server_errors": health.server_errors,
            }
            for name, outcome, health in rows
        ],
        indent=2,
    )
