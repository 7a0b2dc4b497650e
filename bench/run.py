"""progress-relay benchmark runner.

    python bench/run.py                 # standard suite (< 10 min on 2 cores)
    python bench/run.py --smoke         # tiny configuration (~1 min)
    python bench/run.py --only fanout   # one scenario (repeatable)
    python bench/run.py --targets sanic_minimal,relay

Every scenario runs against each target in the same invocation, one fresh
server process per (scenario, target), loopback only. The load generator
(bench/loadgen.py) runs as separate processes: one holding the subscribers,
one publishing. Results: bench/results/<timestamp>.json (raw),
bench/results/latest.md (tables with ratios to the baselines),
bench/results/latency.png (latency against load); a full run also refreshes
the table in docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import product  # bench/product.py: the product comparison scenario
import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PY = sys.executable
LOADGEN = str(BENCH / "loadgen.py")
JWT_SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
PUBLISH_KEY = "bench-publish-key-0123456789abcdef0123456789"
DOCS_START = "<!-- bench:table:start -->"
DOCS_END = "<!-- bench:table:end -->"
CLIENT_BOUND_PERCENT = 85.0


# ---------------------------------------------------------------------------
# targets


@dataclass
class Target:
    name: str
    label: str
    kind: str  # loadgen subscriber kind: json | socketio | relay
    baseline: bool
    http_port_offset: int = 0
    port: int = 0
    proc: subprocess.Popen | None = None
    log: Path | None = None
    extra_env: dict = field(default_factory=dict)
    deflate: bool = False  # the subscribers offer permessage-deflate (as browsers and the mini-program do)
    ping_interval: float | None = None  # seconds between the server's keepalive pings (None: its default)

    def command(self) -> list[str]:
        if self.is_relay:
            return [PY, "-m", "service"]
        script = {
            "sanic_minimal": "sanic_minimal.py",
            "socketio": "socketio_aiohttp.py",
            "bare_websockets": "bare_websockets.py",
        }[self.name]
        keepalive = [] if self.ping_interval is None else ["--ping-interval", str(self.ping_interval)]
        return [PY, str(BENCH / "baselines" / script), "--port", str(self.port), *keepalive]

    def env(self) -> dict:
        env = dict(os.environ)
        env.pop("RELAY_BROKER_URL", None)
        if self.is_relay:
            env.update(
                {
                    "RELAY_ENV": "dev",
                    "RELAY_HOST": "127.0.0.1",
                    "RELAY_PORT": str(self.port),
                    "RELAY_JWT_SECRET": JWT_SECRET,
                    "RELAY_PUBLISH_KEYS": PUBLISH_KEY,
                    "RELAY_ACCESS_LOG": "false",
                    "RELAY_LOG_LEVEL": "WARNING",
                    "RELAY_WORKERS": "1",
                    # every load-generator socket comes from 127.0.0.1
                    "RELAY_MAX_CONNECTIONS_PER_IP": "0",
                }
            )
            if self.ping_interval is not None:
                env["RELAY_WS_PING_INTERVAL"] = str(self.ping_interval)
        env.update(self.extra_env)
        return env

    @property
    def is_relay(self) -> bool:
        return self.name.startswith("relay")

    @property
    def http_port(self) -> int:
        return self.port + self.http_port_offset

    @property
    def publish_key(self) -> str:
        return PUBLISH_KEY if self.is_relay else ""

    def ws_url(self, execution_id: str, sub: str) -> str:
        base = f"ws://127.0.0.1:{self.port}"
        if self.kind == "socketio":
            return f"{base}/socket.io/?EIO=4&transport=websocket&execution_id={execution_id}"
        if self.is_relay:
            return f"{base}/ws/executions/{execution_id}?token={mint_token(execution_id, sub)}"
        return f"{base}/ws/executions/{execution_id}"


TARGETS = {
    "sanic_minimal": dict(label="(a) minimal Sanic", kind="json", baseline=True),
    "socketio": dict(label="(b) python-socketio", kind="socketio", baseline=True),
    "bare_websockets": dict(label="(c) bare websockets", kind="json", baseline=True, http_port_offset=1),
    "relay": dict(label="progress-relay", kind="relay", baseline=False),
    # the Redis scenario only
    "relay_redis1": dict(label="relay, Redis, 1 worker", kind="relay", baseline=False),
    "relay_redis2": dict(label="relay, Redis, 2 workers", kind="relay", baseline=False),
    "relay_redis_cluster": dict(label="relay, Redis Cluster (3 masters), 1 worker", kind="relay", baseline=False),
    # the fan-out scenario only: subscribers offering permessage-deflate, the relay's default
    # answer (server context takeover), and each message compressed alone
    "relay_deflate": dict(label="relay, deflate", kind="relay", baseline=False, deflate=True),
    "relay_deflate_msg": dict(label="relay, deflate, each message alone", kind="relay", baseline=False, deflate=True),
}
BASELINES = ["sanic_minimal", "socketio", "bare_websockets"]
SHORT = {"sanic_minimal": "a", "socketio": "b", "bare_websockets": "c", "relay": "relay"}
# The Redis the `redis` scenario's standalone relays use: the bench's own redis-server on a free
# port (started and killed by the scenario), unless BENCH_REDIS_URL names one. The machine's
# shared Redis also serves other jobs (test suites), whose load fell on one target and not another.
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "")
REDIS_PREFIX = f"relaybench{os.getpid()}"

_jwt = None


def tree_target(spec: str) -> Target:
    """``LABEL:DIR``: one more relay target, ``relay_LABEL``, running the service and auth packages found in DIR."""
    label, _, directory = spec.partition(":")
    t = Target(name=f"relay_{label}", **TARGETS["relay"])
    start = f"import sys, runpy;sys.path.insert(0, {directory!r}); runpy.run_module('service', run_name='__main__')"
    t.command = lambda: [PY, "-c", start]  # type: ignore[method-assign]
    return t


def mint_token(execution_id: str, sub: str) -> str:
    global _jwt
    if _jwt is None:
        import jwt

        _jwt = jwt
    return _jwt.encode(
        {"sub": sub, "execution_id": execution_id, "aud": "progress-relay", "exp": int(time.time()) + 3600},
        JWT_SECRET,
        algorithm="HS256",
    )


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        # servers bind with SO_REUSEADDR (asyncio's default), so a socket left
        # in TIME_WAIT there does not matter
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(pair: bool = False) -> int:
    """A free port (and the next one with ``pair``) below the ephemeral range.

    Scenarios open tens of thousands of client sockets; a server port taken from
    the ephemeral range can collide with one of them (or its TIME_WAIT).
    """
    import random

    high = _ephemeral_low() - 2
    for _ in range(500):
        port = random.randrange(10000, high)
        if _bindable(port) and (not pair or _bindable(port + 1)):
            return port
    raise RuntimeError("no free port")


def raise_fd_limit(want: int = 65536) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (want, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(hard, target)))
            return target
        except (ValueError, OSError):
            continue
    return soft


# ---------------------------------------------------------------------------
# process helpers


class Server:
    def __init__(self, target: Target, logdir: Path):
        self.t = target
        self.logdir = logdir

    def __enter__(self):
        t = self.t
        t.port = free_port(pair=t.http_port_offset > 0)
        t.log = self.logdir / f"{t.name}-{t.port}.log"
        self.logf = open(t.log, "wb")
        t.proc = subprocess.Popen(
            t.command(), cwd=ROOT, env=t.env(), stdout=self.logf, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.ps = psutil.Process(t.proc.pid)
        deadline = time.monotonic() + 30
        ports = {t.port, t.http_port}
        while time.monotonic() < deadline:
            if t.proc.poll() is not None:
                raise RuntimeError(f"{t.name} exited at start:\n{tail(t.log)}")
            if all(port_open(p) for p in ports):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"{t.name} did not listen within 30 s:\n{tail(t.log)}")
        if t.is_relay:
            while time.monotonic() < deadline and http_status(t.http_port, "/readyz") != 200:
                time.sleep(0.2)
        time.sleep(0.5)
        return self

    def procs(self) -> list[psutil.Process]:
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rss(self) -> int:
        total = 0
        for p in self.procs():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
        return total

    def cpu(self) -> float:
        total = 0.0
        for p in self.procs():
            try:
                c = p.cpu_times()
                total += c.user + c.system
            except psutil.NoSuchProcess:
                pass
        return total

    def write_calls(self) -> int:
        """``write``-family system calls so far (Linux ``/proc/<pid>/io``), 0 where unknown."""
        total = 0
        for p in self.procs():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, AttributeError):
                total += p.io_counters().write_count
        return total

    def cpu_fine(self) -> float:
        """CPU seconds of the live threads, to the nanosecond (Linux schedstat); else :meth:`cpu`.

        ``cpu`` counts in clock ticks (10 ms): a fan-out round of ~150 ms CPU moves
        by a tick either way, which alone spreads a ratio by several percent.
        """
        total = 0
        try:
            for p in self.procs():
                for task in Path(f"/proc/{p.pid}/task").iterdir():
                    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                        total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):
            return self.cpu()
        return total / 1e9

    def __exit__(self, *exc):
        proc = self.t.proc
        if proc and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(8)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.logf.close()
        return False


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        try:
            s.connect(("127.0.0.1", port))
            return True
        except OSError:
            return False


def http_status(port: int, path: str) -> int | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            head = s.recv(64)
        return int(head.split()[1])
    except (OSError, ValueError, IndexError):
        return None


def listen_overflows() -> int | None:
    """Machine-wide count of connections dropped because a listen queue was full."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
        for head, vals in zip(lines[::2], lines[1::2], strict=False):
            if head.startswith("TcpExt:"):
                return int(dict(zip(head.split()[1:], vals.split()[1:], strict=True))["ListenOverflows"])
    except (OSError, KeyError, ValueError):
        pass
    return None


def tail(path: Path | None, n: int = 30) -> str:
    if not path or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


class Subs:
    """The subscriber process: connects at start, then answers commands."""

    def __init__(
        self,
        target: Target,
        exec_ids: list[str],
        tmp: Path,
        *,
        per_event: bool = False,
        concurrency: int = 200,
        timeout: float = 120,
        defer: bool = False,
        rate: float = 0,
    ):
        """``defer``: connect only on ``cmd("connect")``; ``rate``: handshakes started per second."""
        urls = [target.ws_url(e, f"user-{i}") for i, e in enumerate(exec_ids)]
        cfg = {
            "kind": target.kind,
            "n": len(urls),
            "urls": urls,
            "per_event": per_event,
            "connect_concurrency": concurrency,
            "resume_param": target.is_relay,
            "defer": defer,
            "connect_rate": rate,
            "deflate": target.deflate,
        }
        cfgfile = tmp / f"subs-{target.name}-{time.monotonic_ns()}.json"
        cfgfile.write_text(json.dumps(cfg))
        self.errlog = open(tmp / f"subs-{target.name}.err", "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [PY, LOADGEN, "subs", f"@{cfgfile}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.errlog,
            cwd=ROOT,
        )
        # connecting runs at a few hundred per second on a busy machine
        self.timeout = max(timeout, 60 + len(urls) / 50)
        self.info = self._read()

    def _read(self) -> dict:
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        if not ready:
            raise RuntimeError("subscriber process did not answer in time")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"subscriber process died: rc={self.proc.poll()}")
        return json.loads(line)

    def cmd(self, name: str) -> dict:
        self.proc.stdin.write(name.encode() + b"\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b"quit\n")
                self.proc.stdin.flush()
                self.proc.wait(10)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)
        self.errlog.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def publish(target: Target, exec_ids: list[str], tmp: Path, *, background: bool = False, **cfg):
    cfg.update({"port": target.http_port, "key": target.publish_key, "exec_ids": exec_ids})
    cfgfile = tmp / f"pub-{target.name}-{time.monotonic_ns()}.json"
    cfgfile.write_text(json.dumps(cfg))
    proc = subprocess.Popen(
        [PY, LOADGEN, "pub", f"@{cfgfile}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
    )
    if background:
        return proc
    return finish_publish(proc, cfg)


def finish_publish(proc: subprocess.Popen, cfg: dict | None = None) -> dict:
    limit = 60 + 2 * float((cfg or {}).get("duration", 30))
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"publisher failed rc={proc.returncode}: {err.decode()[-2000:]}")
    return json.loads(out.decode().strip().splitlines()[-1])


# ---------------------------------------------------------------------------
# scenarios: each returns {"summary": {metric: value}, ...details}


def median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def client_flag(*cpu_percents) -> float | None:
    vals = [c for c in cpu_percents if c is not None]
    return max(vals) if vals else None


def sc_idle_memory(t: Target, cfg: dict, tmp: Path) -> dict:
    n = cfg["n"]
    with Server(t, tmp) as srv:
        time.sleep(0.5)
        rss0 = srv.rss()
        ids = [f"mem-{i}" for i in range(n)]
        with Subs(t, ids, tmp, concurrency=cfg.get("concurrency", 100)) as subs:
            info = subs.info
            time.sleep(cfg.get("settle", 2.0))
            rss1 = srv.rss()
            subs.cmd("reset")
            time.sleep(cfg.get("hold", 3.0))
            held = subs.cmd("report")
            rss2 = srv.rss()
        connected = info["connected"] or 1
        per_conn = (rss1 - rss0) / connected / 1024
        return {
            "summary": {
                "kb_per_conn": round(per_conn, 2),
                "connected": info["connected"],
                "errors": info["connect_errors"] + held["disconnects"],
                "connect_per_s": round(info["connected"] / max(info["connect_seconds"], 1e-3)),
                "client_cpu_pct": round(100 * info["connect_cpu_seconds"] / max(info["connect_seconds"], 1e-3), 1),
            },
            "rss_before_mb": round(rss0 / 2**20, 1),
            "rss_after_mb": round(rss1 / 2**20, 1),
            "rss_after_hold_mb": round(rss2 / 2**20, 1),
            "connect": info,
            "hold": held,
        }


def machine_busy() -> float:
    c = psutil.cpu_times()
    return c.user + c.system + c.nice + getattr(c, "irq", 0) + getattr(c, "softirq", 0) + getattr(c, "steal", 0)


def _steady_run(t: Target, subs: Subs, srv: Server, ids: list[str], tmp: Path, **pubcfg) -> dict:
    subs.cmd("reset")
    cpu0, busy0, w0 = srv.cpu(), machine_busy(), time.monotonic()
    pub = publish(t, ids, tmp, **pubcfg)
    cpu1, busy1, w1 = srv.cpu(), machine_busy(), time.monotonic()
    time.sleep(0.3)
    rep = subs.cmd("report")
    expected = pub["events_accepted"] * pubcfg.get("fanout", 1)
    server_cpu = 100 * (cpu1 - cpu0) / (w1 - w0)
    machine = 100 * (busy1 - busy0) / (w1 - w0)
    # the subscribers' figure covers reset..report, close enough to the window
    ours = server_cpu + (pub["cpu_percent"] or 0) + (rep["cpu_percent"] or 0)
    return {
        "posts_per_s": pub["requests_per_second"],
        "events_per_s": pub["events_per_second"],
        "delivered_per_s": round(rep["events"] / pub["wall_seconds"], 1),
        "delivered": rep["events"],
        "expected": expected,
        "lost": max(0, expected - rep["events"]),
        "p50_ms": rep["latency_ms"]["p50"],
        "p99_ms": rep["latency_ms"]["p99"],
        "max_ms": rep["latency_ms"]["max"],
        "server_cpu_pct": round(server_cpu, 1),
        "pub_cpu_pct": pub["cpu_percent"],
        "subs_cpu_pct": rep["cpu_percent"],
        "other_cpu_pct": round(max(0.0, machine - ours), 1),
        "failed_requests": pub["requests_failed"],
        "status_counts": pub["status_counts"],
        "error_samples": pub["error_samples"],
        "disconnects": rep["disconnects"],
        "gaps": rep["gaps"],
        "dups": rep["dups"],
        "schedule_lag_ms": pub.get("schedule_lag_ms"),
    }


def interleaved(
    targets: list[Target],
    cfg: dict,
    tmp: Path,
    ids: list[str],
    rounds: int,
    trial,
    *,
    per_event: bool = False,
    warmup=None,
    finish=None,
) -> dict:
    """Start every target (server + subscribers) at once, then run the trials
    round-robin (round 1 of each target, round 2 of each ...), so that the
    noise of a shared machine falls on all targets alike. One target failing
    does not stop the others. Returns {name: {"trials": [...], "connect": ...}
    or {"error": ...}}."""
    from contextlib import ExitStack

    out: dict = {}
    live = []
    with ExitStack() as stack:
        for t in targets:
            try:
                srv = stack.enter_context(Server(t, tmp))
                subs = stack.enter_context(Subs(t, ids, tmp, per_event=per_event))
                if subs.info["connect_errors"]:
                    raise RuntimeError(
                        f"{subs.info['connect_errors']} subscribers failed to connect: {subs.info['error_samples']}"
                    )
                if warmup:
                    warmup(t, srv, subs)
                live.append((t, srv, subs))
                out[t.name] = {"trials": [], "connect": subs.info}
            except Exception as exc:
                out[t.name] = {"error": f"{type(exc).__name__}: {exc}\n{tail(t.log)}"}
        for r in range(rounds):
            for t, srv, subs in live:
                if "error" in out[t.name]:
                    continue
                try:
                    out[t.name]["trials"].append(trial(t, srv, subs, r))
                except Exception as exc:
                    out[t.name] = {"error": f"{type(exc).__name__}: {exc}\n{tail(t.log)}"}
        if finish:
            for t, srv, subs in live:
                if "error" not in out[t.name]:
                    try:
                        finish(t, srv, subs, out[t.name])
                    except Exception as exc:
                        out[t.name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def _steady_summary(trials: list[dict]) -> dict:
    return {
        "posts_per_s": median([x["posts_per_s"] for x in trials]),
        "delivered_per_s": median([x["delivered_per_s"] for x in trials]),
        "p50_ms": median([x["p50_ms"] for x in trials]),
        "p99_ms": median([x["p99_ms"] for x in trials]),
        "lost": sum(x["lost"] for x in trials),
        "failed": sum(x["failed_requests"] for x in trials),
        "server_cpu_pct": median([x["server_cpu_pct"] for x in trials]),
        "client_cpu_pct": client_flag(
            median([x["pub_cpu_pct"] for x in trials]), median([x["subs_cpu_pct"] for x in trials])
        ),
        "other_cpu_pct": median([x["other_cpu_pct"] for x in trials]),
    }


def sc_closed_loop(targets: list[Target], cfg: dict, tmp: Path) -> dict:
    ids = [f"exec-{i}" for i in range(cfg["subscribers"])]

    def warm(t, srv, subs):
        publish(t, ids, tmp, mode="closed", duration=cfg["warmup"], connections=cfg["connections"])

    def trial(t, srv, subs, r):
        return _steady_run(
            t, subs, srv, ids, tmp, mode="closed", duration=cfg["duration"], connections=cfg["connections"]
        )

    res = interleaved(targets, cfg, tmp, ids, cfg["trials"], trial, warmup=warm)
    for entry in res.values():
        if "trials" in entry:
            entry["summary"] = _steady_summary(entry["trials"])
    return res


def sc_batch(targets: list[Target], cfg: dict, tmp: Path) -> dict:
    ids = [f"exec-{i}" for i in range(cfg["subscribers"])]
    pubcfg = dict(mode="closed", connections=cfg["connections"], batch_size=cfg["batch_size"])

    def warm(t, srv, subs):
        publish(t, ids, tmp, duration=cfg["warmup"], **pubcfg)

    def trial(t, srv, subs, r):
        return _steady_run(t, subs, srv, ids, tmp, duration=cfg["duration"], **pubcfg)

    res = interleaved(targets, cfg, tmp, ids, cfg["trials"], trial, warmup=warm)
    for entry in res.values():
        if "trials" in entry:
            summary = _steady_summary(entry["trials"])
            summary.pop("posts_per_s")
            entry["summary"] = summary
    return res


def sc_rates(targets: list[Target], cfg: dict, tmp: Path) -> dict:
    ids = [f"exec-{i}" for i in range(cfg["subscribers"])]
    rates = cfg["rates"]

    def warm(t, srv, subs):
        publish(t, ids, tmp, mode="rate", rate=rates[0], duration=cfg["warmup"], connections=cfg["connections"])

    def trial(t, srv, subs, r):
        rate = rates[r % len(rates)]
        point = _steady_run(
            t, subs, srv, ids, tmp, mode="rate", rate=rate, duration=cfg["duration"], connections=cfg["connections"]
        )
        point["rate"] = rate
        return point

    # rounds: each rate once per target, lowest first, interleaved across targets
    res = interleaved(targets, cfg, tmp, ids, len(rates), trial, warmup=warm)
    for entry in res.values():
        if "trials" not in entry:
            continue
        points = {str(p["rate"]): p for p in entry.pop("trials")}
        entry["points"] = points
        summary = {}
        for rate, p in points.items():
            summary[f"p50_ms@{rate}"] = p["p50_ms"]
            summary[f"p99_ms@{rate}"] = p["p99_ms"]
        top = points.get(str(rates[-1]))
        summary["achieved_per_s@top"] = top["delivered_per_s"] if top else None
        summary["lost"] = sum(p["lost"] for p in points.values())
        summary["client_cpu_pct"] = client_flag(
            *(p["pub_cpu_pct"] for p in points.values()), *(p["subs_cpu_pct"] for p in points.values())
        )
        summary["other_cpu_pct"] = median([p["other_cpu_pct"] for p in points.values()])
        entry["summary"] = summary
    return res


#: Seconds between keepalive pings in ``fanout``: longer than the scenario, so none falls in it.
FANOUT_PING_INTERVAL = 3600.0


def sc_fanout(targets: list[Target], cfg: dict, tmp: Path) -> dict:
    """One execution with ``subscribers`` sockets, ``events`` events spaced
    ``interval`` apart. With the relay, ``deflate`` adds two more relays whose
    subscribers offer permessage-deflate: one with the default answer (server
    context takeover), one compressing each message alone; every target's
    trials interleaved, so the compressed and uncompressed figures share a run."""
    n = cfg["subscribers"]
    ids = ["fanout-0"] * n
    per_round = max(1, cfg["events"] // cfg["rounds"])
    run = list(targets)
    if cfg.get("deflate") and any(t.name == "relay" for t in targets):
        run.append(Target(name="relay_deflate", **TARGETS["relay_deflate"]))
        msg = Target(name="relay_deflate_msg", **TARGETS["relay_deflate_msg"])
        msg.extra_env = {"RELAY_WS_COMPRESSION_CONTEXT_TAKEOVER": "false"}
        run.append(msg)
    for t in run:
        # No keepalive pings during the scenario, for any target. Every server pings each socket
        # every 20-25 s, but not alike: the baselines' per-connection timers ping a crowd that
        # connected together in one burst every 20 s, which a trial's ~1.3 s window mostly misses,
        # while the relay spreads its pings over half of every 20 s (service/pinger.py), so about
        # half of its windows carried ~125 pings and their pongs (~60 us each: +0.7 ms per event).
        t.ping_interval = FANOUT_PING_INTERVAL

    def warm(t, srv, subs):
        if t.deflate and subs.info["deflated"] != n:
            raise RuntimeError(f"permessage-deflate agreed on {subs.info['deflated']} of {n} sockets")
        publish(t, ids[:1], tmp, mode="spaced", count=3, interval=cfg["interval"])
        time.sleep(0.2)
        subs.cmd("reset")

    def trial(t, srv, subs, r):
        writes0, cpu0 = srv.write_calls(), srv.cpu_fine()
        pub = publish(t, ids[:1], tmp, mode="spaced", count=per_round, interval=cfg["interval"])
        cpu, writes = srv.cpu_fine() - cpu0, srv.write_calls() - writes0
        return {"cpu": cpu, "writes": writes, "ok": pub["requests_ok"], "accepted": pub["events_accepted"]}

    def finish(t, srv, subs, entry):
        # one report per target after all rounds: the subscribers kept counting
        time.sleep(0.3)
        rep = subs.cmd("report")
        entry["ping_interval_s"] = t.ping_interval  # the same for every target (see above)
        # What a server wrote in its windows, per event: one frame per socket and the 202, when
        # nothing else (a keepalive ping, say) falls in them.
        entry["server_writes_per_event"] = round(
            sum(x["writes"] for x in entry["trials"]) / max(1, sum(x["ok"] for x in entry["trials"])), 2
        )
        trials = entry["trials"]
        accepted = sum(x["accepted"] for x in trials)
        pe = rep.get("per_event", {})
        entry["subscribers"] = rep
        entry["summary"] = {
            "all_delivered_p50_ms": pe.get("all_delivered_ms", {}).get("p50"),
            "all_delivered_p90_ms": pe.get("all_delivered_ms", {}).get("p90"),
            "per_sub_p50_ms": rep["latency_ms"]["p50"],
            "per_sub_p99_ms": rep["latency_ms"]["p99"],
            "server_cpu_ms_per_event": round(
                1000 * sum(x["cpu"] for x in trials) / max(1, sum(x["ok"] for x in trials)), 2
            ),
            # payload bytes per delivered frame, as received (compressed or not)
            "bytes_per_frame": round(rep["wire_bytes"] / rep["frames"], 1) if rep["frames"] else None,
            "lost": max(0, accepted * n - rep["events"]),
            "client_cpu_pct": client_flag(rep["cpu_percent"]),
        }

    res = interleaved(run, cfg, tmp, ids, cfg["rounds"], trial, per_event=True, warmup=warm, finish=finish)
    plain = res.get("relay", {}).get("summary", {})
    for name in ("relay_deflate", "relay_deflate_msg"):
        summary = res.get(name, {}).get("summary")
        if summary and plain:  # the compressed relay against the uncompressed one, same run
            for metric in ("server_cpu_ms_per_event", "all_delivered_p50_ms", "all_delivered_p90_ms"):
                if summary[metric] is not None and plain.get(metric):
                    summary[f"{metric}_vs_plain"] = round(summary[metric] / plain[metric], 3)
    return res


def sc_storm(t: Target, cfg: dict, tmp: Path) -> dict:
    n = cfg["clients"]
    ids = [f"storm-{i}" for i in range(n)]
    with Server(t, tmp), Subs(t, ids, tmp, concurrency=cfg["concurrency"]) as subs:
        subs.cmd("reset")
        pubcfg = dict(mode="rate", rate=cfg["rate"], duration=cfg["duration"], connections=8)
        proc = publish(t, ids, tmp, background=True, **pubcfg)
        time.sleep(cfg["storm_after"])
        lo0 = listen_overflows()
        storm = subs.cmd("storm")
        lo1 = listen_overflows()
        pub = finish_publish(proc, pubcfg)
        time.sleep(1.0)
        rep = subs.cmd("report")
    unique = rep["events"]
    lost = max(0, pub["events_accepted"] - unique)
    return {
        "summary": {
            "resume_seconds": storm["connect_seconds"],
            "resumed": storm["connected"],
            "failed": storm["connect_errors"],
            "lost": lost,
            "seq_gaps": rep["gaps"],
            "dups": rep["dups"],
            "listen_overflows": (lo1 - lo0) if lo0 is not None and lo1 is not None else None,
            "client_cpu_pct": round(100 * storm["connect_cpu_seconds"] / max(storm["connect_seconds"], 1e-3), 1),
        },
        "storm": storm,
        "publisher": pub,
        "subscribers": rep,
        "connect": subs.info,
    }


def gc_pauses(t: Target) -> dict | None:
    """The relay's full-collection pauses so far (``relay_gc_pause_seconds{generation="2"}``)."""
    if not t.is_relay:
        return None
    try:
        with socket.create_connection(("127.0.0.1", t.http_port), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
    except OSError:
        return None
    out = {"count": 0.0, "seconds": 0.0, "over_25ms": 0.0}
    for line in b"".join(chunks).decode(errors="replace").splitlines():
        if not line.startswith("relay_gc_pause_seconds") or 'generation="2"' not in line:
            continue
        name, value = line.rsplit(" ", 1)
        if name.startswith("relay_gc_pause_seconds_count"):
            out["count"] = float(value)
        elif name.startswith("relay_gc_pause_seconds_sum"):
            out["seconds"] = float(value)
        elif 'le="0.025"' in name:
            out["over_25ms"] = -float(value)  # + the total count below
    out["over_25ms"] += out["count"]
    return out


def sc_rush(t: Target, cfg: dict, tmp: Path) -> dict:
    """Latency while a crowd connects: ``subscribers`` sockets (one per execution)
    receive ``rate`` events/s; after ``lead`` s, ``clients`` more sockets (on
    executions of their own) connect within ``window`` s. One fresh server per
    trial, the targets alternating (trial 1 of each, then trial 2 of each)."""
    base = [f"rush-base-{i}" for i in range(cfg["subscribers"])]
    crowd = [f"rush-{i}" for i in range(cfg["clients"])]
    stop = tmp / f"rush-stop-{time.monotonic_ns()}"
    # events flow until ``tail`` s after the last subscriber joined (at most ``duration`` s)
    pubcfg = dict(
        mode="rate", rate=cfg["rate"], duration=cfg["duration"], connections=cfg["connections"], stop_file=str(stop)
    )
    with Server(t, tmp) as srv, Subs(t, base, tmp) as subs:
        if subs.info["connect_errors"]:
            raise RuntimeError(f"{subs.info['connect_errors']} subscribers failed to connect")
        publish(t, base, tmp, **dict(pubcfg, duration=cfg["warmup"]))
        with Subs(t, crowd, tmp, defer=True, rate=cfg["clients"] / cfg["window"], timeout=600) as rush:
            gc0 = gc_pauses(t)
            subs.cmd("reset")
            cpu0, busy0, w0 = srv.cpu(), machine_busy(), time.monotonic()
            proc = publish(t, base, tmp, background=True, **pubcfg)
            time.sleep(cfg["lead"])
            joined = rush.cmd("connect")
            time.sleep(cfg["tail"])
            stop.touch()
            pub = finish_publish(proc, pubcfg)
            cpu1, busy1, w1 = srv.cpu(), machine_busy(), time.monotonic()
            time.sleep(0.3)
            rep = subs.cmd("report")
            gc1 = gc_pauses(t)
    server_cpu = 100 * (cpu1 - cpu0) / (w1 - w0)
    ours = server_cpu + (pub["cpu_percent"] or 0) + (rep["cpu_percent"] or 0)
    full_gc = {k: round(gc1[k] - gc0[k], 4) for k in gc0} if gc0 and gc1 else None
    return {
        "p50_ms": rep["latency_ms"]["p50"],
        "p99_ms": rep["latency_ms"]["p99"],
        "max_ms": rep["latency_ms"]["max"],
        "lost": max(0, pub["events_accepted"] - rep["events"]),
        "failed": pub["requests_failed"] + joined["connect_errors"] + rep["disconnects"],
        "joined": joined["connected"],
        "join_seconds": joined["connect_seconds"],
        "rush_outlasted_events": joined["connect_seconds"] + cfg["lead"] >= pub["wall_seconds"],
        "server_cpu_pct": round(server_cpu, 1),
        "client_cpu_pct": client_flag(pub["cpu_percent"], rep["cpu_percent"]),
        "other_cpu_pct": round(max(0.0, 100 * (busy1 - busy0) / (w1 - w0) - ours), 1),
        "full_gc": full_gc,
        "publisher": pub,
        "subscribers": rep,
        "rush": joined,
    }


def sc_rush_all(targets: list[Target], cfg: dict, tmp: Path) -> dict:
    out: dict = {t.name: {"trials": []} for t in targets}
    for _ in range(cfg["trials"]):
        for t in targets:
            if "error" in out[t.name]:
                continue
            try:
                out[t.name]["trials"].append(sc_rush(t, cfg, tmp))
            except Exception as exc:
                out[t.name] = {"error": f"{type(exc).__name__}: {exc}\n{tail(t.log)}"}
    for entry in out.values():
        trials = entry.get("trials")
        if not trials:
            continue
        gcs = [x["full_gc"] for x in trials if x["full_gc"]]
        entry["summary"] = {
            "p50_ms": median([x["p50_ms"] for x in trials]),
            "p99_ms": median([x["p99_ms"] for x in trials]),
            "max_ms": median([x["max_ms"] for x in trials]),
            "worst_max_ms": max(x["max_ms"] or 0 for x in trials),
            "lost": sum(x["lost"] for x in trials),
            "failed": sum(x["failed"] for x in trials),
            "join_per_s": median([x["joined"] / max(x["join_seconds"], 1e-3) for x in trials]),
            "full_gcs": sum(g["count"] for g in gcs) if gcs else None,
            "full_gc_over_25ms": sum(g["over_25ms"] for g in gcs) if gcs else None,
            "full_gc_ms": round(1000 * sum(g["seconds"] for g in gcs), 1) if gcs else None,
            "server_cpu_pct": median([x["server_cpu_pct"] for x in trials]),
            "client_cpu_pct": client_flag(*(x["client_cpu_pct"] for x in trials)),
            "other_cpu_pct": median([x["other_cpu_pct"] for x in trials]),
        }
    return out


def redis_reachable(url: str) -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except Exception:
        return False


def redis_cleanup(url: str) -> None:
    try:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=5)
        keys = list(client.scan_iter(match=f"{REDIS_PREFIX}*", count=1000))
        for i in range(0, len(keys), 500):
            client.unlink(*keys[i : i + 500])
    except Exception:
        pass


def bench_redis(cluster: bool = False):
    """A redis-server (or a 3-master Redis Cluster) of the bench's own, or the reason why not.

    Free loopback ports, no persistence; the caller stops it (``stop()``, a cluster ``close()``).
    """
    binary = shutil.which("redis-server")
    if binary is None or (cluster and shutil.which("redis-cli") is None):
        return None, "redis-server or redis-cli not installed (or set BENCH_REDIS_URL)"
    sys.path.insert(0, str(ROOT))
    from tests.redis_topology import ClusterSetup, TopologyServer

    setup = ClusterSetup(binary) if cluster else TopologyServer(binary)
    close = setup.close if isinstance(setup, ClusterSetup) else setup.stop
    what = "cluster" if cluster else "redis-server"
    try:
        setup.start()
    except Exception as exc:
        close()
        return None, f"the bench's {what} did not start: {type(exc).__name__}: {exc}"
    return setup, None


def sc_redis(targets: list[Target], cfg: dict, tmp: Path) -> dict:
    """The relay with the Redis broker, 1 and 2 worker processes, and with the
    cluster broker (one worker, a 3-master cluster started here), next to the
    memory broker and baseline (a): closed-loop throughput, then latency at a
    fixed rate, interleaved."""
    names = [t.name for t in targets]
    if "relay" not in names:
        return {}
    server = None
    url = REDIS_URL
    if not url:
        server, why = bench_redis()
        if server is None:
            return {"relay_redis1": {"error": why}}
        url = server.url
    if not redis_reachable(url):
        if server is not None:
            server.stop()
        return {"relay_redis1": {"error": f"Redis not reachable at {url}"}}
    run = [t for t in targets if t.name in ("sanic_minimal", "relay")]
    urls = {"relay_redis1": url, "relay_redis2": url}
    cluster, why_not = bench_redis(cluster=True)
    if cluster is not None:
        urls["relay_redis_cluster"] = cluster.url
    for name, url in urls.items():
        t = Target(name=name, **TARGETS[name])
        t.extra_env = {
            "RELAY_BROKER_URL": url,
            "RELAY_WORKERS": "2" if name == "relay_redis2" else "1",
            # A prefix per target: with a shared one, every event of one target reached the
            # other target's processes too (same channels) and its 2,000 subscribers.
            "RELAY_REDIS_PREFIX": f"{REDIS_PREFIX}-{name}",
            "RELAY_HISTORY_TTL": "600",
        }
        run.append(t)
    ids = [f"exec-{i}" for i in range(cfg["subscribers"])]
    rate = cfg["rate"]
    wide = cfg["capacity_connections"]

    def warm(t, srv, subs):
        publish(t, ids, tmp, mode="closed", duration=cfg["warmup"], connections=cfg["connections"])

    def trial(t, srv, subs, r):
        closed = _steady_run(
            t, subs, srv, ids, tmp, mode="closed", duration=cfg["duration"], connections=cfg["connections"]
        )
        fixed = _steady_run(
            t, subs, srv, ids, tmp, mode="rate", rate=rate, duration=cfg["duration"], connections=cfg["connections"]
        )
        capacity = _steady_run(t, subs, srv, ids, tmp, mode="closed", duration=cfg["duration"], connections=wide)
        return {"closed": closed, "rate": fixed, "capacity": capacity}

    try:
        res = interleaved(run, cfg, tmp, ids, cfg["trials"], trial, warmup=warm)
    finally:
        redis_cleanup(url)
        if server is not None:
            server.stop()
        if cluster is not None:
            cluster.close()
    if why_not:
        res["relay_redis_cluster"] = {"error": why_not}
    for entry in res.values():
        if "trials" not in entry:
            continue
        tr = entry["trials"]
        entry["summary"] = {
            "posts_per_s": median([x["closed"]["posts_per_s"] for x in tr]),
            "closed_p99_ms": median([x["closed"]["p99_ms"] for x in tr]),
            f"p50_ms@{rate}": median([x["rate"]["p50_ms"] for x in tr]),
            f"p99_ms@{rate}": median([x["rate"]["p99_ms"] for x in tr]),
            f"posts_per_s@{wide}": median([x["capacity"]["posts_per_s"] for x in tr]),
            "lost": sum(x[k]["lost"] for x in tr for k in ("closed", "rate", "capacity")),
            "failed": sum(x[k]["failed_requests"] for x in tr for k in ("closed", "rate", "capacity")),
            "server_cpu_pct": median([x["closed"]["server_cpu_pct"] for x in tr]),
            "client_cpu_pct": client_flag(
                median([x["closed"]["pub_cpu_pct"] for x in tr]), median([x["closed"]["subs_cpu_pct"] for x in tr])
            ),
            "other_cpu_pct": median([x["closed"]["other_cpu_pct"] for x in tr]),
        }
    # issue 19 target 6 (>= 0.8): at `connections` in flight (each round trip to Redis adds to every
    # POST's time) and at `capacity_connections` (the relay has work while Redis runs the last pipeline)
    memory = res.get("relay", {}).get("summary", {})
    for name in ("relay_redis1", "relay_redis_cluster"):
        summary = res.get(name, {}).get("summary", {})
        for metric, ratio in (("posts_per_s", "x_vs_memory"), (f"posts_per_s@{wide}", f"x_vs_memory@{wide}")):
            if memory.get(metric) and summary.get(metric):
                summary[ratio] = round(summary[metric] / memory[metric], 3)
    one = res.get("relay_redis1", {}).get("summary", {})
    two = res.get("relay_redis2", {}).get("summary", {})
    for metric, ratio in (("posts_per_s", "x_vs_1_worker"), (f"posts_per_s@{wide}", f"x_vs_1_worker@{wide}")):
        if one.get(metric) and two.get(metric):
            two[ratio] = round(two[metric] / one[metric], 3)
    return res


def one_by_one(fn):
    """Adapt a per-target scenario (fresh server each) to the list form."""

    def run_all(targets: list[Target], cfg: dict, tmp: Path) -> dict:
        out = {}
        for t in targets:
            t0 = time.monotonic()
            try:
                out[t.name] = fn(t, cfg, tmp)
            except Exception as exc:
                out[t.name] = {"error": f"{type(exc).__name__}: {exc}\n{tail(t.log)}"}
            out[t.name]["seconds"] = round(time.monotonic() - t0, 1)
        return out

    return run_all


def sc_capacity(targets: list[Target], cfg: dict, tmp: Path) -> dict:
    """Many idle connections on one progress-relay process, held past a
    server ping interval. Capped by this machine's open-file limit."""
    run = [t for t in targets if t.name == "relay"]
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    n = min(cfg["n"], limit - 200)
    res = one_by_one(sc_idle_memory)(run, dict(cfg, n=n), tmp)
    for entry in res.values():
        if "summary" in entry:
            entry["summary"]["requested"] = cfg["n"]
            entry["summary"]["fd_limit"] = limit
            entry["summary"]["held_s"] = cfg["hold"]
    return res


def sc_product(targets: list[Target], cfg: dict, tmp: Path) -> dict:
    """One demo execution watched by polling and by WebSocket, with and
    without compression (bench/product.py). progress-relay only."""
    res = {}
    for t in (t for t in targets if t.name == "relay"):
        try:
            res[t.name] = product.run_scenario(t, cfg, tmp, Server, mint_token)
        except Exception as exc:
            res[t.name] = {"error": f"{type(exc).__name__}: {exc}\n{tail(t.log)}"}
    return res


SCENARIOS = {
    "idle_memory": (one_by_one(sc_idle_memory), "Idle memory per connection"),
    "closed_loop": (sc_closed_loop, "Closed-loop single-event POSTs"),
    "rates": (sc_rates, "End-to-end latency at fixed rates"),
    "fanout": (sc_fanout, "Fan-out of one execution"),
    "batch": (sc_batch, "Batch ingest"),
    "storm": (one_by_one(sc_storm), "Reconnect storm"),
    "rush": (sc_rush_all, "Latency while 5,000 subscribers connect"),
    "redis": (sc_redis, "Redis broker, 1 and 2 workers, and Redis Cluster"),
    "capacity": (sc_capacity, "Connections held on one process"),
    "product": (sc_product, "The product's comparison: one demo execution, polling vs WebSocket"),
}

FULL = {
    "idle_memory": {"n": 10000, "concurrency": 100, "settle": 1.5, "hold": 2.0},
    "closed_loop": {"subscribers": 2000, "connections": 8, "warmup": 1.0, "duration": 3.0, "trials": 3},
    "rates": {"subscribers": 2000, "connections": 32, "warmup": 1.0, "duration": 3.0, "rates": [1000, 2000, 4000]},
    "fanout": {"subscribers": 1000, "events": 30, "rounds": 3, "interval": 0.1, "deflate": True},
    "batch": {"subscribers": 2000, "connections": 4, "batch_size": 100, "warmup": 1.0, "duration": 3.0, "trials": 3},
    "storm": {"clients": 5000, "concurrency": 500, "rate": 1000, "duration": 6.0, "storm_after": 1.5},
    # 1,000 events/s to 1,000 subscribers; 5,000 more connect within 5 s, 1 s in; the
    # events flow until 1 s after the last has joined (at most 120 s on a busy machine)
    "rush": {
        "subscribers": 1000,
        "clients": 5000,
        "window": 5.0,
        "rate": 1000,
        "connections": 32,
        "warmup": 1.0,
        "lead": 1.0,
        "tail": 1.0,
        "duration": 120.0,
        "trials": 2,
    },
    # connections: the closed loop of closed_loop; capacity_connections: enough POSTs in flight that the
    # relay never waits for Redis (each broker at its CPU limit), issue 19 target 6's second reading
    "redis": {
        "subscribers": 2000,
        "connections": 8,
        "capacity_connections": 32,
        "warmup": 1.0,
        "duration": 3.0,
        "rate": 2000,
        "trials": 2,
    },
    # connecting takes > 25 s, so the first sockets live through 2+ server pings
    "capacity": {"n": 20000, "concurrency": 100, "settle": 1.0, "hold": 15.0},
    # the demo script paced to last 60 s; polls every 2 s; the JS client's 30 s heartbeat
    # 100 s: 50 polls at 2 s, the low end of the product report's "50-100 API calls per execution"
    "product": {"duration": 100.0, "poll_interval": 2.0, "heartbeat": 30.0, "seed": 0},
}
SMOKE = {
    "idle_memory": {"n": 200, "concurrency": 50, "settle": 0.3, "hold": 0.3},
    "closed_loop": {"subscribers": 100, "connections": 4, "warmup": 0.2, "duration": 0.5, "trials": 1},
    "rates": {"subscribers": 100, "connections": 4, "warmup": 0.2, "duration": 0.5, "rates": [100, 200]},
    "fanout": {"subscribers": 50, "events": 4, "rounds": 2, "interval": 0.03, "deflate": True},
    "batch": {"subscribers": 100, "connections": 2, "batch_size": 20, "warmup": 0.2, "duration": 0.5, "trials": 1},
    "storm": {"clients": 50, "concurrency": 50, "rate": 100, "duration": 1.0, "storm_after": 0.3},
    "rush": {
        "subscribers": 50,
        "clients": 200,
        "window": 0.5,
        "rate": 100,
        "connections": 4,
        "warmup": 0.2,
        "lead": 0.2,
        "tail": 0.2,
        "duration": 30.0,
        "trials": 1,
    },
    "redis": {
        "subscribers": 100,
        "connections": 4,
        "capacity_connections": 8,
        "warmup": 0.2,
        "duration": 0.5,
        "rate": 200,
        "trials": 1,
    },
    "capacity": {"n": 300, "concurrency": 100, "settle": 0.3, "hold": 0.5},
    "product": {"duration": 2.5, "poll_interval": 0.25, "heartbeat": 1.0, "seed": 0},
}

# how each summary metric compares: "higher" or "lower" is better; None: no ratio
DIRECTION = {
    "kb_per_conn": "lower",
    "connect_per_s": "higher",
    "posts_per_s": "higher",
    "delivered_per_s": "higher",
    "p50_ms": "lower",
    "p99_ms": "lower",
    "all_delivered_p50_ms": "lower",
    "all_delivered_p90_ms": "lower",
    "per_sub_p50_ms": "lower",
    "per_sub_p99_ms": "lower",
    "server_cpu_ms_per_event": "lower",
    "resume_seconds": "lower",
    "max_ms": "lower",
    "worst_max_ms": "lower",
    "join_per_s": "higher",
    "achieved_per_s@top": "higher",
    "closed_p99_ms": "lower",
    "poll_state_kb": "lower",
    "poll_events_kb": "lower",
    "ws_kb": "lower",
    "ws_deflate_kb": "lower",
    "ws_deflate_msg_kb": "lower",
    "ws_deflate_vs_polling_pct": "lower",
    "ws_deflate_p50_ms": "lower",
    "poll_state_p50_ms": "lower",
}


def direction(metric: str):
    if metric in DIRECTION:
        return DIRECTION[metric]
    if metric.startswith(("p50_ms@", "p99_ms@")):
        return "lower"
    if metric.startswith("posts_per_s@"):
        return "higher"
    return None


# ---------------------------------------------------------------------------
# reporting


def ratios(results: dict, subject: str) -> dict:
    out = {}
    for scen, per_target in results.items():
        subj = per_target.get(subject, {}).get("summary")
        if not subj:
            continue
        out[scen] = {}
        for metric, value in subj.items():
            if direction(metric) is None or not isinstance(value, (int, float)):
                continue
            for b in BASELINES:
                if b == subject:
                    continue
                base = per_target.get(b, {}).get("summary", {}).get(metric)
                if isinstance(base, (int, float)) and base:
                    out[scen].setdefault(metric, {})[b] = round(value / base, 3)
    return out


def fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def markdown(doc: dict) -> str:
    meta = doc["meta"]
    results = doc["scenarios"]
    subject = doc["ratios_subject"]
    lines = [
        f"Run `{meta['command']}` at {meta['started']} ({meta['mode']}), "
        f"git {meta['git']}, {meta['cpu_count']} cores ({meta['cpu_model']}), "
        f"Python {meta['python']}, {meta['duration_s']:.0f} s.",
        "",
    ]
    if meta.get("git_start") and meta["git_start"] != meta["git"]:
        lines += [
            f"**The working tree changed during the run** (git {meta['git_start']} at "
            f"the start, {meta['git']} at the end): each server starts from the tree "
            "as it is at that moment, so later scenarios measured newer code.",
            "",
        ]
    lines += [
        f"Ratios are **{TARGETS[subject]['label']} ÷ baseline** from this same run "
        "(for throughput higher is better, for latency, memory and time lower is better). "
        f"`client_cpu_pct` is the busiest load-generator process; at ≥ {CLIENT_BOUND_PERCENT:.0f} % "
        "the client, not the server, may have been the limit.",
        "",
    ]
    others = [e.get("summary", {}).get("other_cpu_pct") for pt in results.values() for e in pt.values()]
    busy = median([o for o in others if isinstance(o, (int, float))])
    if busy is not None and busy >= 30:
        lines += [
            f"**Noisy machine:** other processes used a median {busy:.0f} % of the "
            f"{meta['cpu_count'] * 100} % CPU during the measured windows "
            "(`other_cpu_pct`); absolute figures are depressed, the ratios (trials "
            "interleaved across targets) are the comparable part.",
            "",
        ]
    for scen, per_target in results.items():
        if not per_target:
            continue
        title = SCENARIOS[scen][1]
        cfg = doc["config"].get(scen, {})
        lines.append(f"### {title} (`{scen}`)")
        lines.append("")
        lines.append("Config: " + ", ".join(f"{k}={v}" for k, v in cfg.items()))
        lines.append("")
        if scen == "product":
            lines += product.markdown(per_target, cfg)
            continue
        names = [n for n in TARGETS if n in per_target]
        metrics = []
        for name in names:
            for m in per_target.get(name, {}).get("summary", {}):
                if m not in metrics:
                    metrics.append(m)
        others = [b for b in BASELINES if b in names and b != subject]
        head = ["metric"] + [TARGETS[n]["label"] for n in names] + [f"÷ ({SHORT[b]})" for b in others]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for m in metrics:
            row = [m]
            for name in names:
                entry = per_target.get(name, {})
                if "error" in entry:
                    row.append("error")
                else:
                    row.append(fmt(entry.get("summary", {}).get(m)))
            for b in others:
                r = doc["ratios"].get(scen, {}).get(m, {}).get(b)
                row.append("–" if r is None else f"{r:.2f}×")
            lines.append("| " + " | ".join(row) + " |")
        errors = {n: e["error"] for n, e in per_target.items() if "error" in e}
        for n, e in errors.items():
            lines.append("")
            lines.append(f"- {TARGETS[n]['label']} failed: `{e.splitlines()[0][:200]}`")
        bound = [
            TARGETS[n]["label"]
            for n in names
            if (per_target.get(n, {}).get("summary", {}).get("client_cpu_pct") or 0) >= CLIENT_BOUND_PERCENT
        ]
        if bound:
            lines.append("")
            lines.append(f"- Load generator near saturation for: {', '.join(bound)}.")
        lines.append("")
    return "\n".join(lines)


def chart(doc: dict, path: Path) -> bool:
    rates = doc["scenarios"].get("rates")
    if not rates:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colors = {"sanic_minimal": "tab:blue", "socketio": "tab:orange", "bare_websockets": "tab:green", "relay": "tab:red"}
    for name, entry in rates.items():
        pts = entry.get("points")
        if not pts:
            continue
        xs = sorted(pts, key=float)
        label = TARGETS[name]["label"]
        ax.plot(
            [float(x) for x in xs], [pts[x]["p99_ms"] for x in xs], "o-", color=colors.get(name), label=f"{label} p99"
        )
        ax.plot(
            [float(x) for x in xs],
            [pts[x]["p50_ms"] for x in xs],
            "s--",
            color=colors.get(name),
            alpha=0.6,
            label=f"{label} p50",
        )
    ax.set_xlabel("offered load (events/s, one subscriber per execution)")
    ax.set_ylabel("POST written → frame parsed by subscriber (ms, log)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"End-to-end latency vs load ({doc['meta']['started']}, {doc['meta']['mode']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def update_docs(md: str) -> bool:
    path = ROOT / "docs" / "performance.md"
    if not path.exists():
        return False
    text = path.read_text()
    if DOCS_START not in text or DOCS_END not in text:
        return False
    before, rest = text.split(DOCS_START, 1)
    _, after = rest.split(DOCS_END, 1)
    path.write_text(before + DOCS_START + "\n" + md + "\n" + DOCS_END + after)
    return True


def git_rev() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def relay_available() -> bool:
    return (ROOT / "service" / "web" / "app.py").exists() and (ROOT / "service" / "__main__.py").exists()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny configuration (harness check)")
    ap.add_argument("--only", action="append", choices=list(SCENARIOS), help="run only this scenario (repeatable)")
    ap.add_argument(
        "--skip", action="append", choices=list(SCENARIOS), default=[], help="leave this scenario out (repeatable)"
    )
    ap.add_argument(
        "--targets",
        help="comma-separated: " + ",".join(TARGETS) + " (default: all; relay only when service/web/app.py exists)",
    )
    ap.add_argument("--results-dir", default=str(BENCH / "results"))
    ap.add_argument("--no-docs", action="store_true", help="do not refresh docs/performance.md")
    args = ap.parse_args(argv)

    fd = raise_fd_limit()
    if args.targets:
        names = [n.strip() for n in args.targets.split(",") if n.strip()]
        unknown = set(names) - set(TARGETS)
        if unknown:
            ap.error(f"unknown targets: {', '.join(sorted(unknown))}")
    else:
        names = BASELINES + (["relay"] if relay_available() else [])
    scen_names = [s for s in (args.only or list(SCENARIOS)) if s not in args.skip]
    config = SMOKE if args.smoke else FULL
    outdir = Path(args.results_dir)
    outdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    started = datetime.now(UTC)
    git_start = git_rev()
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    t_start = time.monotonic()
    print(
        f"bench: targets={','.join(names)} scenarios={','.join(scen_names)} "
        f"mode={'smoke' if args.smoke else 'full'} fd_limit={fd} logs={tmp}",
        flush=True,
    )

    results: dict = {}
    for scen in scen_names:
        fn, _title = SCENARIOS[scen]
        targets = [Target(name=name, **TARGETS[name]) for name in names]
        t0 = time.monotonic()
        try:
            res = fn(targets, config[scen], tmp)
        except Exception as exc:
            res = {t.name: {"error": f"{type(exc).__name__}: {exc}"} for t in targets}
        if scen not in ("redis", "capacity", "product"):
            # every requested target, then the variants a scenario adds (the fan-out's compressed relays)
            res = {name: res.get(name, {"error": "no result"}) for name in names} | {
                name: entry for name, entry in res.items() if name not in names
            }
        results[scen] = res
        print(f"  {scen} ({time.monotonic() - t0:.1f} s)", flush=True)
        for name in res:
            entry = results[scen][name]
            summary = entry.get("summary") or entry.get("error", "").splitlines()[0]
            print(f"    {name:16s} {summary}", flush=True)

    doc = {
        "meta": {
            "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": "python bench/run.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
            "mode": "smoke" if args.smoke else "full",
            "targets": names,
            "scenarios": scen_names,
            "git": git_rev(),
            "git_start": git_start,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model(),
            "load_average": os.getloadavg(),
            "fd_limit": fd,
            "duration_s": round(time.monotonic() - t_start, 1),
            "versions": versions(),
        },
        "config": {s: config[s] for s in scen_names},
        "scenarios": results,
    }
    subject = "relay" if "relay" in names else "sanic_minimal"
    doc["ratios_subject"] = subject
    doc["ratios"] = ratios(results, subject)
    json_path = outdir / f"{stamp}{'-smoke' if args.smoke else ''}.json"
    json_path.write_text(json.dumps(doc, indent=1, default=str))
    md = markdown(doc)
    (outdir / "latest.md").write_text(f"# Benchmark results\n\n{md}\n")
    png = outdir / "latency.png"
    has_chart = chart(doc, png)
    if not args.smoke and not args.only and not args.no_docs:
        update_docs(md)
    print(
        f"bench: wrote {json_path}, {outdir / 'latest.md'}"
        + (f", {png}" if has_chart else "")
        + f" in {doc['meta']['duration_s']:.0f} s",
        flush=True,
    )
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("sanic", "websockets", "python-socketio", "aiohttp", "picows", "uvloop", "progress-relay"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


if __name__ == "__main__":
    sys.exit(main())
