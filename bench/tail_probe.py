"""What makes the slowest events of the ``rates`` scenario slow: timelines of every event and of the server.

    python bench/tail_probe.py                   # (a) and the relay, 3 rounds at 4,000/s (timed: take the lock)
    python bench/tail_probe.py --tree before:/tmp/old --rate 2000 --rounds 10 --plain --rt 10
    python bench/tail_probe.py --targets relay --rates 1000,2000,4000 --sizes --compact   # counts only

Each target is started as ``bench/run.py`` starts it, with 2,000 subscribers from
``bench/loadgen.py`` and the ``rates`` scenario's publisher (open loop, 32
keep-alive connections, 3 s), the targets' trials alternating. Unless ``--plain``,
hooks installed in each served process (:func:`install_hooks`) record, between
the start and the end of a trial:

- every collection of the cycle collector (start, wall and thread-CPU duration,
  generation; with ``--sizes`` the objects it examines);
- the loop's stalls: a timer due every 1 ms, and how late it ran when later than 2 ms;
- in the relay, every visit of the pinger (duration, pings sent), and for every
  event the moment the server reached its fan-out (publisher's stamp -> fan-out);
  in (a), the moment of its ``ws.send``.

The subscribers keep every event's stamp with its latency, so each trial
reports the latency split into the server's part (stamp -> fan-out) and the
rest, and the loop's stalls over 2 ms by what ran in them (a collection of
generation 0/1/2, a pinger visit that pinged, or nothing recorded: the
machine). ``--plain`` runs without hooks (the bench's own conditions) and
reports p50/p99/max only; ``--rt N`` runs this probe and every process it
starts at ``SCHED_RR`` priority N, so that other jobs' processes on a shared
machine do not delay them (what a quiet machine gives; RT throttling leaves
5 % of the CPU to others). ``--compact`` ends with an unfreeze and a full
collection in each server and reports what it collected (cyclic garbage the
collection policy had frozen).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import time
from array import array
from contextlib import ExitStack
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
TIMELINES = os.environ.get("TAIL_PROBE_DIR", "")
STALL_NS = 2_000_000  # a 1 ms timer later than this is a stall

# ---------------------------------------------------------------------------
# in the served process


def install_hooks(kind: str) -> None:
    """Record collections, loop stalls, pinger visits and fan-out moments; SIGUSR1 begins a window, SIGUSR2 dumps it."""
    import asyncio
    import gc

    mono = time.monotonic_ns
    cpu = time.thread_time_ns
    sizes = os.environ.get("TAIL_PROBE_SIZES") == "1"
    rows: dict[str, array] = {k: array("q") for k in ("gc", "late", "fan", "ping", "sizes")}
    state = {"start": 0, "cpu": 0, "dumps": 0}
    loop_started = []

    def tick(due: int) -> None:
        now = mono()
        if now - due > STALL_NS:
            rows["late"].extend((due, now))
        asyncio.get_running_loop().call_later(0.001, tick, mono() + 1_000_000)

    def on_collection(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            if sizes:
                gen = info["generation"]
                rows["sizes"].extend((gen, sum(len(gc.get_objects(g)) for g in range(gen + 1))))
            state["start"], state["cpu"] = mono(), cpu()
            if not loop_started:  # the first collection inside the served loop starts the timer
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    return
                loop_started.append(loop)
                loop.call_later(0.001, tick, mono() + 1_000_000)
        else:
            end = mono()
            rows["gc"].extend((state["start"], end - state["start"], info["generation"], cpu() - state["cpu"]))

    stamp = re.compile(r'status_text":\s*"(\d+)')

    def reached(frame: str) -> None:
        found = stamp.search(frame)
        if found:
            rows["fan"].extend((int(found.group(1)), mono()))

    if kind == "relay":
        from service import hub, pinger
        from service.web.routes import ws

        dispatch = hub.Hub.dispatch

        def hooked_dispatch(self: Any, execution_id: str, event: Any) -> None:
            reached(event.frame)
            dispatch(self, execution_id, event)

        hub.Hub.dispatch = hooked_dispatch  # type: ignore[method-assign]
        pings = [0]
        payload = ws.ping_payload

        def counted_payload() -> bytes:
            pings[0] += 1
            return payload()

        ws.ping_payload = counted_payload
        visit = pinger.Pinger.visit

        def hooked_visit(self: Any, sockets: Any = None) -> None:
            start, before = mono(), pings[0]
            visit(self, sockets)
            rows["ping"].extend((start, mono() - start, pings[0] - before))

        pinger.Pinger.visit = hooked_visit  # type: ignore[method-assign]
    elif kind == "sanic_minimal":
        from sanic.server.websockets import impl

        send = impl.WebsocketImplProtocol.send

        async def hooked_send(self: Any, message: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(message, str):
                reached(message)
            return await send(self, message, *args, **kwargs)

        impl.WebsocketImplProtocol.send = hooked_send  # type: ignore[method-assign]

    def begin(signum: int, frame: Any) -> None:
        for values in rows.values():
            del values[:]

    def dump(signum: int, frame: Any) -> None:
        state["dumps"] += 1
        path = Path(TIMELINES) / f"server-{os.getpid()}-{state['dumps']}.json"
        path.write_text(json.dumps({k: list(v) for k, v in rows.items()}))

    def compact(signum: int, frame: Any) -> None:
        gc.unfreeze()
        collected = gc.collect()
        gc.freeze()
        (Path(TIMELINES) / f"compact-{os.getpid()}.json").write_text(json.dumps({"collected": collected}))

    gc.callbacks.append(on_collection)
    signal.signal(signal.SIGUSR1, begin)
    signal.signal(signal.SIGUSR2, dump)
    signal.signal(signal.SIGWINCH, compact)


def serve(kind: str, tree: str, argv: list[str]) -> None:
    """Run a target (the relay found in ``tree``, or a baseline script) with the hooks installed."""
    import runpy

    sys.path.insert(0, tree)
    install_hooks(kind)
    if kind.startswith("relay"):
        sys.argv = ["service"]
        runpy.run_module("service", run_name="__main__")
    else:
        sys.argv = argv
        runpy.run_path(argv[0], run_name="__main__")


# ---------------------------------------------------------------------------
# the subscribers: bench/loadgen.py keeping each event's stamp with its latency


def subscribers(raw: str) -> None:
    """``loadgen.py subs``, whose report also writes every (stamp, latency) pair to a file it names."""
    sys.path.insert(0, str(BENCH))
    import loadgen

    reset = loadgen.Stats.reset

    def stamped_reset(self: Any) -> None:
        reset(self)
        self.sent = array("q")

    def stamped_record(self: Any, sent_ns: int, now: int) -> None:
        self.events += 1
        self.lat.append(now - sent_ns)
        self.sent.append(sent_ns)

    report = loadgen.SubsProcess.report
    reports = [0]

    def timeline_report(self: Any) -> dict:
        out = report(self)
        reports[0] += 1
        pairs = array("q")
        for sent, lat in zip(self.stats.sent, self.stats.lat, strict=True):
            pairs.extend((sent, lat))
        path = Path(TIMELINES) / f"subs-{os.getpid()}-{reports[0]}.bin"
        path.write_bytes(pairs.tobytes())
        out["timeline"] = str(path)
        return out

    loadgen.Stats.reset = stamped_reset
    loadgen.Stats.record = stamped_record
    loadgen.SubsProcess.report = timeline_report
    sys.argv = [loadgen.__file__, "subs", raw]
    loadgen.main()


# ---------------------------------------------------------------------------
# the driver


def ms(ns: float) -> float:
    return round(ns / 1e6, 2)


def quantile(sorted_values: list[int], q: float) -> float:
    return ms(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))])


def analyse(pairs: list[tuple[int, int]], server: dict[str, list[int]]) -> dict[str, Any]:
    """One trial: latency quantiles, the server's part, the loop's stalls by cause, collections, pinger visits."""
    lats = sorted(lat for _, lat in pairs)
    out: dict[str, Any] = {"events": len(lats)}
    if not lats:
        return out
    out.update(p50=quantile(lats, 0.5), p99=quantile(lats, 0.99), p999=quantile(lats, 0.999), max=ms(lats[-1]))
    fan = dict(zip(server["fan"][0::2], server["fan"][1::2], strict=True))
    split = [(lat, fan[sent] - sent) for sent, lat in pairs if sent in fan]
    if split:
        srv = sorted(s for _, s in split)
        rest = sorted(lat - s for lat, s in split)
        out["server_part"] = {"p50": quantile(srv, 0.5), "p99": quantile(srv, 0.99), "max": ms(srv[-1])}
        out["after_fanout"] = {"p50": quantile(rest, 0.5), "p99": quantile(rest, 0.99), "max": ms(rest[-1])}
    g = server["gc"]
    collections = [tuple(g[i : i + 4]) for i in range(0, len(g), 4)]
    p = server["ping"]
    visits = [tuple(p[i : i + 3]) for i in range(0, len(p), 3)]
    by_gen: dict[int, list[float]] = {}
    for _, _, gen, cpu in collections:
        by_gen.setdefault(gen, []).append(ms(cpu))
    out["collections_cpu_ms"] = {gen: {"count": len(v), "max": max(v)} for gen, v in sorted(by_gen.items())}
    s = server["sizes"]
    examined: dict[int, list[int]] = {}
    for gen, count in zip(s[0::2], s[1::2], strict=True):
        examined.setdefault(gen, []).append(count)
    if examined:
        out["objects_examined_max"] = {gen: max(v) for gen, v in sorted(examined.items())}
    pinging = [v for v in visits if v[2] > 0]
    if visits:
        out["pinger"] = {
            "visits": len(visits),
            "pinging": len(pinging),
            "pings_per_visit_max": max((v[2] for v in pinging), default=0),
            "visit_ms_max": ms(max(v[1] for v in visits)),
        }
    stalls: dict[str, list[float]] = {}
    lt = server["late"]
    for due, ran in zip(lt[0::2], lt[1::2], strict=True):
        during = [c for c in collections if due - 1_000_000 <= c[0] <= ran]
        pinged = [v for v in pinging if due - 1_000_000 <= v[0] <= ran]
        cause = f"gc{max(c[2] for c in during)}" if during else ("ping" if pinged else "nothing recorded")
        stalls.setdefault(cause, []).append(ms(ran - due))
    out["stalls_over_2ms"] = {k: {"count": len(v), "longest": sorted(v)[-3:]} for k, v in sorted(stalls.items())}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", default="sanic_minimal,relay")
    ap.add_argument("--tree", action="append", default=[], help="LABEL:DIR: one more relay, from the tree DIR")
    ap.add_argument("--rate", type=int, default=4000)
    ap.add_argument("--rates", default="", help="comma-separated: one trial per rate per round (instead of --rate)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--subscribers", type=int, default=2000)
    ap.add_argument("--plain", action="store_true", help="no hooks: the bench's own conditions, p50/p99/max only")
    ap.add_argument("--sizes", action="store_true", help="count the objects each collection examines (slow)")
    ap.add_argument("--compact", action="store_true", help="at the end, unfreeze and collect in each server")
    ap.add_argument("--rt", type=int, default=0, help="SCHED_RR priority for this probe and its processes")
    ap.add_argument("--json", default="", help="write every trial's analysis here")
    args = ap.parse_args(argv)

    import run as bench

    if args.rt:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(args.rt))
    bench.raise_fd_limit()
    timelines = Path(tempfile.mkdtemp(prefix="tail-probe-"))
    os.environ["TAIL_PROBE_DIR"] = str(timelines)
    if args.sizes:
        os.environ["TAIL_PROBE_SIZES"] = "1"
    if not args.plain:
        bench.LOADGEN = str(Path(__file__).resolve())  # the subscribers keep their timelines
    tmp = Path(tempfile.mkdtemp(prefix="tail-probe-run-"))
    ids = [f"exec-{i}" for i in range(args.subscribers)]
    here = str(Path(__file__).resolve())
    targets = []
    specs = [(name, str(bench.ROOT)) for name in args.targets.split(",")]
    specs += [(f"relay_{label}", d) for label, _, d in (s.partition(":") for s in args.tree)]
    for name, tree in specs:
        t = bench.Target(name=name, **bench.TARGETS["relay" if name.startswith("relay") else name])
        if (t.is_relay and tree != str(bench.ROOT)) or not args.plain:
            base = t.command

            def command(t: Any = t, tree: str = tree, base: Any = base) -> list[str]:
                if args.plain:  # another tree's relay, no hooks
                    start = f"import sys, runpy; sys.path.insert(0, {tree!r}); "
                    return [bench.PY, "-c", start + "runpy.run_module('service', run_name='__main__')"]
                kind = "relay" if t.is_relay else t.name
                return [bench.PY, here, "serve", kind, tree, *base()[1:]]

            t.command = command  # type: ignore[method-assign]
        targets.append(t)

    rates = [int(r) for r in args.rates.split(",")] if args.rates else [args.rate]
    results: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
    with ExitStack() as stack:
        live = []
        for t in targets:
            srv = stack.enter_context(bench.Server(t, tmp))
            subs = stack.enter_context(bench.Subs(t, ids, tmp))
            bench.publish(t, ids, tmp, mode="rate", rate=rates[0], duration=1.0, connections=32)
            live.append((t, srv, subs))
        for r in range(args.rounds * len(rates)):
            rate = rates[r % len(rates)]
            for t, srv, subs in live:
                if not args.plain:
                    os.kill(t.proc.pid, signal.SIGUSR1)
                point = bench._steady_run(
                    t, subs, srv, ids, tmp, mode="rate", rate=rate, duration=args.duration, connections=32
                )
                row: dict[str, Any] = {
                    "rate": rate,
                    "bench": {k: point[k] for k in ("p50_ms", "p99_ms", "max_ms", "server_cpu_pct", "other_cpu_pct")},
                }
                if not args.plain:
                    os.kill(t.proc.pid, signal.SIGUSR2)
                    time.sleep(0.2)
                    dumps = sorted(
                        timelines.glob(f"server-{t.proc.pid}-*.json"), key=lambda p: int(p.stem.split("-")[-1])
                    )
                    server = json.loads(dumps[-1].read_text())
                    raw = array("q", Path(subs.cmd("report")["timeline"]).read_bytes())
                    row.update(analyse(list(zip(raw[0::2], raw[1::2], strict=True)), server))
                results[t.name].append(row)
                print(f"{t.name} round {r} rate {rate}: {json.dumps(row)}", flush=True)
        if args.compact:
            for t, _, _ in live:
                os.kill(t.proc.pid, signal.SIGWINCH)
            time.sleep(3)
            for t, _, _ in live:
                found = timelines / f"compact-{t.proc.pid}.json"
                print(
                    f"{t.name}: a full collection of everything frozen collected",
                    found.read_text() if found.exists() else "?",
                )
    print("\np99 (ms) per trial, by rate:")
    for name, rows in results.items():
        for rate in rates:
            print(f"  {name} @{rate}: {[row['bench']['p99_ms'] for row in rows if row['rate'] == rate]}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif len(sys.argv) > 1 and sys.argv[1] == "subs":
        subscribers(sys.argv[2])
    elif len(sys.argv) > 1 and sys.argv[1] == "pub":  # the publisher as bench/loadgen.py runs it
        sys.path.insert(0, str(BENCH))
        import loadgen

        loadgen.main()
    else:
        sys.path.insert(0, str(BENCH))
        sys.exit(main())
