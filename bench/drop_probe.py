"""Latency of the sockets that stay while a crowd of others drops at once.

    python bench/drop_probe.py                              # (a) and the relay, 2 rounds
    python bench/drop_probe.py --targets relay --tree before:/tmp/old --rounds 3
    python bench/drop_probe.py --targets relay --env RELAY_LOG_LEVEL=WARNING

Each trial starts a fresh server as ``bench/run.py`` does: ``--subscribers``
sockets (one per execution) receive ``--rate`` events/s from the ``rates``
scenario's open-loop publisher, and ``--crowd`` more sockets are connected
from a second load-generator process. ``--lead`` s into the events, that
process is killed: the kernel closes every crowd socket at once, as when a
gateway or a network path in front of the relay drops its clients. Events
flow ``--tail`` s longer. Reported: the staying subscribers' latency p50, p99
and max over the whole window, events lost, and for the relay the full
collections in the window (count and seconds, from ``relay_gc_pause_seconds``).
Targets alternate within each round. Timed figures: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench


def trial(t: bench.Target, tmp: Path, args: argparse.Namespace) -> dict:
    """One fresh server: the staying subscribers' latency while the crowd drops."""
    staying = [f"drop-stay-{i}" for i in range(args.subscribers)]
    crowd = [f"drop-{i}" for i in range(args.crowd)]
    stop = tmp / f"drop-stop-{time.monotonic_ns()}"
    pubcfg = dict(mode="rate", rate=args.rate, duration=60.0, connections=32, stop_file=str(stop))
    with bench.Server(t, tmp), bench.Subs(t, staying, tmp) as subs:
        bench.publish(t, staying, tmp, **dict(pubcfg, duration=1.0))  # warm-up
        gone = bench.Subs(t, crowd, tmp)
        try:
            if gone.info["connect_errors"]:
                raise RuntimeError(f"{gone.info['connect_errors']} crowd sockets failed to connect")
            subs.cmd("reset")
            gc0 = bench.gc_pauses(t)
            proc = bench.publish(t, staying, tmp, background=True, **pubcfg)
            time.sleep(args.lead)
            gone.proc.kill()  # every crowd socket closed by the kernel at once
            gone.proc.wait()
            time.sleep(args.tail)
            stop.touch()
            pub = bench.finish_publish(proc, pubcfg)
            time.sleep(0.3)
            rep = subs.cmd("report")
            gc1 = bench.gc_pauses(t)
        finally:
            gone.close()
    return {
        "p50_ms": rep["latency_ms"]["p50"],
        "p99_ms": rep["latency_ms"]["p99"],
        "max_ms": rep["latency_ms"]["max"],
        "lost": max(0, pub["events_accepted"] - rep["events"]),
        "full_gc": {k: round(gc1[k] - gc0[k], 4) for k in gc0} if gc0 and gc1 else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", default="sanic_minimal,relay")
    ap.add_argument("--tree", action="append", default=[], help="LABEL:DIR: one more relay, from the tree DIR")
    ap.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE added to every relay's environment (trees too)"
    )
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--crowd", type=int, default=5000)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--lead", type=float, default=1.5)
    ap.add_argument("--tail", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    bench.raise_fd_limit()
    tmp = Path(tempfile.mkdtemp(prefix="drop-probe-"))
    targets = [bench.Target(name=name, **bench.TARGETS[name]) for name in args.targets.split(",")]
    targets += [bench.tree_target(spec) for spec in args.tree]
    for t in targets:
        if t.is_relay:
            t.extra_env.update(dict(kv.split("=", 1) for kv in args.env))
    for _ in range(args.rounds):
        for t in targets:
            print(f"{t.name:16s} {trial(t, tmp, args)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
