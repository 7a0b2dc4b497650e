"""Where a closed-loop POST's server time goes, under the bench's own conditions.

    python bench/closed_probe.py                      # (a) and the relay, CPU split per POST (timed: take the lock)
    python bench/closed_probe.py --strace             # system calls per POST (strace -c -f on the server)
    python bench/closed_probe.py --callgrind          # instructions per POST with 8 POSTs in flight

Each target is started as ``bench/run.py`` starts it (same command and
environment), with 2,000 subscribers from ``bench/loadgen.py`` and 8
keep-alive publisher connections in a closed loop, round-robin over the
executions (the ``closed_loop`` scenario). Both targets stay up for the
whole probe, as in the bench, and their trials alternate.

Per POST it reports the server's user and system CPU (``/proc/<pid>/stat``),
voluntary and involuntary context switches (event-loop sleeps, preemptions)
and minor page faults; with ``--strace`` the system calls per POST by name;
with ``--callgrind`` the instructions per POST (the server under valgrind,
instrumentation on only during the measured loop). ``--strace`` and
``--callgrind`` slow the server down: their counts, not their rates, are the
figures.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import run as bench

TICK = os.sysconf("SC_CLK_TCK")


def proc_counters(pid: int) -> dict[str, float]:
    """utime/stime (s), minor faults, context switches of ``pid`` (all threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    out = {"user": int(fields[11]) / TICK, "sys": int(fields[12]) / TICK, "minflt": int(fields[7])}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches"):
            out["vcs"] = int(line.split()[1])
        elif line.startswith("nonvoluntary_ctxt_switches"):
            out["ivcs"] = int(line.split()[1])
    return out


def strace_counts(pid: int, run) -> tuple[dict[str, int], dict]:
    """System calls (by name) the server makes while ``run()`` runs."""
    out = tempfile.mktemp(prefix="strace-", suffix=".txt")
    tracer = subprocess.Popen(["strace", "-c", "-f", "-o", out, "-p", str(pid)], stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached
    result = run()
    tracer.send_signal(2)
    tracer.wait(30)
    calls: dict[str, int] = {}
    for line in Path(out).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            with contextlib.suppress(ValueError):
                calls[parts[-1]] = int(parts[3])
    return calls, result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", default="sanic_minimal,relay")
    ap.add_argument("--subscribers", type=int, default=2000)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--strace", action="store_true")
    ap.add_argument("--perf", action="store_true", help="perf record -e cpu-clock on the server during each trial")
    ap.add_argument("--callgrind", action="store_true")
    ap.add_argument(
        "--cache-sim",
        action="store_true",
        help="with --callgrind: also simulate this machine's L1d (48 KiB) and L2 (1 MiB, as the last level)",
    )
    ap.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE added to the relay's environment (and each --tree's)"
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        help="LABEL:NAME=VALUE[,NAME=VALUE]: one more relay target, with these settings (compared in the same run)",
    )
    ap.add_argument(
        "--tree",
        action="append",
        default=[],
        help="LABEL:DIR: one more relay target running the service and auth packages found in DIR",
    )
    args = ap.parse_args(argv)
    bench.raise_fd_limit()
    tmp = Path(tempfile.mkdtemp(prefix="closed-probe-"))
    ids = [f"exec-{i}" for i in range(args.subscribers)]
    targets = []
    for name in args.targets.split(","):
        t = bench.Target(name=name, **bench.TARGETS[name])
        if t.is_relay:
            t.extra_env.update(dict(kv.split("=", 1) for kv in args.env))
        targets.append(t)
    for spec in args.variant:
        label, _, env = spec.partition(":")
        t = bench.Target(name=f"relay_{label}", **bench.TARGETS["relay"])
        t.extra_env.update(dict(kv.split("=", 1) for kv in env.split(",") if kv))
        targets.append(t)
    for spec in args.tree:
        t = bench.tree_target(spec)
        t.extra_env.update(dict(kv.split("=", 1) for kv in args.env))
        # A prefix of its own: with a shared one, each tree's events would reach the other's subscribers too.
        t.extra_env["RELAY_REDIS_PREFIX"] = f"{t.extra_env.get('RELAY_REDIS_PREFIX', 'relay')}-{spec.partition(':')[0]}"
        targets.append(t)
    pubcfg = dict(mode="closed", connections=args.connections)
    rows: dict[str, list[dict]] = {t.name: [] for t in targets}
    with ExitStack() as stack:
        live = []
        for t in targets:
            if args.callgrind:
                srv = stack.enter_context(CallgrindServer(t, tmp, args.cache_sim))
            else:
                srv = stack.enter_context(bench.Server(t, tmp))
            subs = stack.enter_context(bench.Subs(t, ids, tmp))
            bench.publish(t, ids, tmp, duration=1.0 if not args.callgrind else 5.0, **pubcfg)
            live.append((t, srv, subs))
        for _ in range(args.trials):
            for t, srv, subs in live:
                pid = srv.t.proc.pid if not args.callgrind else srv.pid
                subs.cmd("reset")
                c0 = proc_counters(pid)

                def go(t=t):
                    return bench.publish(t, ids, tmp, duration=args.duration, **pubcfg)

                if args.strace:
                    calls, pub = strace_counts(pid, go)
                elif args.perf:
                    data = tmp / f"{t.name}.{len(rows[t.name])}.perf"
                    recorder = subprocess.Popen(
                        ["perf", "record", "-q", "-e", "cpu-clock", "-F", "2000", "-o", str(data), "-p", str(pid)],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    time.sleep(0.5)
                    calls, pub = {}, go()
                    recorder.send_signal(2)
                    recorder.wait(60)
                    print("perf data:", data, flush=True)
                elif args.callgrind:
                    srv.control("-z")
                    srv.control("-i", "on")
                    pub = go()
                    srv.control("-i", "off")
                    calls = srv.dump()
                else:
                    calls, pub = {}, go()
                c1 = proc_counters(pid)
                rep = subs.cmd("report")
                n = pub["requests_ok"] or 1
                row = {
                    "posts_per_s": pub["requests_per_second"],
                    "posts": pub["requests_ok"],
                    "delivered": rep["events"],
                    "user_us": 1e6 * (c1["user"] - c0["user"]) / n,
                    "sys_us": 1e6 * (c1["sys"] - c0["sys"]) / n,
                    "vcs": (c1["vcs"] - c0["vcs"]) / n,
                    "ivcs": (c1["ivcs"] - c0["ivcs"]) / n,
                    "minflt": (c1["minflt"] - c0["minflt"]) / n,
                }
                row.update({k: v / n for k, v in calls.items()})
                rows[t.name].append(row)
                print(t.name, {k: round(v, 3) for k, v in row.items()}, flush=True)
    print("medians:")
    keys = sorted({k for r in rows.values() for x in r for k in x})
    for name, trials in rows.items():
        med = {k: statistics.median([x.get(k, 0) for x in trials]) for k in keys}
        print(f"  {name:14s}", " ".join(f"{k}={v:.3f}" for k, v in med.items() if v))
    return 0


class CallgrindServer:
    """A target under callgrind, instrumentation off until :meth:`control` turns it on."""

    def __init__(self, target: bench.Target, tmp: Path, cache_sim: bool = False):
        self.t = target
        self.tmp = tmp
        self.cache_sim = cache_sim

    def __enter__(self):
        t = self.t
        t.port = bench.free_port()
        self.out = str(self.tmp / f"{t.name}.cg")
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={self.out}.%p"]
        if self.cache_sim:
            cmd += ["--cache-sim=yes", "--I1=32768,8,64", "--D1=49152,12,64", "--LL=1048576,16,64"]
        self.log = open(self.out + ".log", "w")
        self.proc = subprocess.Popen(
            [*cmd, *t.command()], env=t.env(), cwd=bench.ROOT, stdout=subprocess.DEVNULL, stderr=self.log
        )
        self.pid = self.proc.pid
        deadline = time.monotonic() + 180
        while not bench.port_open(t.port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"{t.name} did not start under valgrind; see {self.out}.log")
            time.sleep(0.2)
        return self

    def control(self, *args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(self.pid)], check=True, stdout=subprocess.DEVNULL)

    def dump(self) -> dict[str, int]:
        """Counters since the last zeroing: ``Ir`` (instructions), with the cache simulation also misses."""
        for path in glob.glob(f"{self.out}.*"):
            if not path.endswith(".log"):
                os.unlink(path)
        self.control("-d")
        totals: dict[str, int] = {}
        for path in glob.glob(f"{self.out}.*"):
            if path.endswith(".log"):
                continue
            names: list[str] = []
            with open(path) as dump:
                for line in dump:
                    if line.startswith("events:"):
                        names = line.split()[1:]
                    elif line.startswith(("totals:", "summary:")):
                        values = [int(v) for v in line.split()[1:]]
                        if values and values[0] > totals.get("Ir", -1):
                            totals = dict(zip(names, values, strict=False))
        return totals

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        return False


if __name__ == "__main__":
    sys.exit(main())
