"""The Redis broker next to the memory broker, under the same load, in one process.

    python bench/redis_vs_memory.py                   # default load, both brokers
    python bench/redis_vs_memory.py --duration 3 --concurrency 32 --rate 2000
    BENCH_REDIS_URL=redis://host:6379/15 python bench/redis_vs_memory.py

This measures the broker alone (no HTTP, no sockets): what a publish costs
and how long an event takes from ``publish()`` being called to the listener
(the hub) receiving it; for Redis that is the Lua script plus the round trip
through pub/sub. The end-to-end figures through HTTP and WebSocket come from
``bench/run.py --only redis``. Three loads, the same for both brokers:

- ``closed``: ``--concurrency`` tasks publish back to back for ``--duration`` s
  over ``--executions`` executions, all subscribed: throughput, latency p50/p99.
- ``rate``: a fixed ``--rate`` of events/s (latency without queueing).
- ``batch``: ``publish_many`` of ``--batch`` events back to back (the batch endpoint);
  its latency is from the start of the batch call to each event's delivery.

Prints a Markdown table and writes the raw numbers as JSON (``--json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.brokers import Broker, create_broker
from service.events import Event, EventDraft, parse_draft

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``, in ms."""
    if not values:
        return float("nan")
    data = sorted(values)
    return data[min(len(data) - 1, max(0, round(p / 100 * len(data) + 0.5) - 1))] * 1000


class Probe:
    """The listener: matches each delivered event to its publish time."""

    def __init__(self) -> None:
        self.sent: dict[tuple[str, int], float] = {}
        self.latencies: list[float] = []
        self.delivered = 0
        self.early: dict[tuple[str, int], float] = {}

    def __call__(self, execution_id: str, event: Event) -> None:
        now = time.perf_counter()
        self.delivered += 1
        started = self.sent.pop((execution_id, event.seq), None)
        if started is None:
            self.early[(execution_id, event.seq)] = now  # delivered before publish() returned
        else:
            self.latencies.append(now - started)

    def record(self, execution_id: str, seq: int, started: float) -> None:
        done = self.early.pop((execution_id, seq), None)
        if done is not None:
            self.latencies.append(done - started)
        else:
            self.sent[(execution_id, seq)] = started


def drafts(execution_id: str, n: int) -> list[EventDraft]:
    """``n`` progress drafts of a realistic size (~200 bytes a frame)."""
    return [
        parse_draft(
            execution_id,
            {
                "event": "progress",
                "data": {
                    "progress": i % 100,
                    "stage": "ai_fetching",
                    "status": "processing",
                    "status_text": "正在查询 AI 平台 / querying the AI platforms",
                },
            },
        )
        for i in range(n)
    ]


async def settle(probe: Probe, expected: int, timeout: float = 10.0) -> None:
    """Wait until every published event reached the listener."""
    deadline = time.monotonic() + timeout
    while probe.delivered < expected and time.monotonic() < deadline:  # noqa: ASYNC110 - a bounded poll
        await asyncio.sleep(0.01)


async def run_closed(broker: Broker, probe: Probe, ids: list[str], duration: float, concurrency: int) -> dict[str, Any]:
    stop = time.perf_counter() + duration
    count = 0
    templates = {eid: drafts(eid, 1)[0] for eid in ids}

    async def worker(w: int) -> None:
        nonlocal count
        i = w
        while time.perf_counter() < stop:
            eid = ids[i % len(ids)]
            i += concurrency
            started = time.perf_counter()
            result = await broker.publish(templates[eid])
            probe.record(eid, result.seq, started)
            count += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - t0
    await settle(probe, count)
    return {
        "events": count,
        "events_per_s": round(count / elapsed),
        "p50_ms": round(pct(probe.latencies, 50), 3),
        "p99_ms": round(pct(probe.latencies, 99), 3),
        "delivered": probe.delivered,
    }


async def run_rate(broker: Broker, probe: Probe, ids: list[str], duration: float, rate: float) -> dict[str, Any]:
    templates = {eid: drafts(eid, 1)[0] for eid in ids}
    total = int(duration * rate)
    tasks = []

    async def one(eid: str) -> None:
        started = time.perf_counter()
        result = await broker.publish(templates[eid])
        probe.record(eid, result.seq, started)

    t0 = time.perf_counter()
    for i in range(total):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(ids[i % len(ids)])))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    await settle(probe, total)
    return {
        "events": total,
        "achieved_per_s": round(total / elapsed),
        "p50_ms": round(pct(probe.latencies, 50), 3),
        "p99_ms": round(pct(probe.latencies, 99), 3),
        "delivered": probe.delivered,
    }


async def run_batch(broker: Broker, probe: Probe, ids: list[str], duration: float, size: int) -> dict[str, Any]:
    batch = [d for eid in ids for d in drafts(eid, max(1, size // len(ids)))][:size]
    stop = time.perf_counter() + duration
    count = 0
    t0 = time.perf_counter()
    while time.perf_counter() < stop:
        started = time.perf_counter()
        results = await broker.publish_many(batch)
        for result in results:
            probe.record(result.execution_id, result.seq, started)  # type: ignore[union-attr]
        count += len(results)
    elapsed = time.perf_counter() - t0
    await settle(probe, count)
    return {
        "events": count,
        "events_per_s": round(count / elapsed),
        "batch_p50_ms": round(pct(probe.latencies, 50), 3),
        "batch_p99_ms": round(pct(probe.latencies, 99), 3),
        "delivered": probe.delivered,
    }


async def bench(url: str, args: argparse.Namespace, load: str) -> dict[str, Any]:
    prefix = f"relaybench-{os.getpid()}-{time.monotonic_ns()}"
    if url.endswith("#no-coalesce"):
        from service.brokers.redis import RedisBroker

        url = url.removesuffix("#no-coalesce")
        broker: Broker = RedisBroker(url, 1000, 600, prefix=prefix, coalesce=False)
    else:
        broker = create_broker(url, 1000, 600, prefix=prefix)
    probe = Probe()
    broker.set_listener(probe)
    await broker.start()
    ids = [f"bench-{load}-{i}" for i in range(args.executions)]
    try:
        for eid in ids:
            await broker.subscribe(eid)
        if load == "closed":
            return await run_closed(broker, probe, ids, args.duration, args.concurrency)
        if load == "rate":
            return await run_rate(broker, probe, ids, args.duration, args.rate)
        return await run_batch(broker, probe, ids, args.duration, args.batch)
    finally:
        for eid in ids:
            await broker.unsubscribe(eid)
        await broker.close()
        if url.startswith("redis"):
            import redis

            client = redis.Redis.from_url(url)
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            for i in range(0, len(keys), 500):
                client.unlink(*keys[i : i + 500])
            client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--executions", type=int, default=50)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--trials", type=int, default=3, help="median of this many runs per cell")
    parser.add_argument("--json", default=None, help="write raw results here")
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument(
        "--uncoalesced",
        action="store_true",
        help="also run Redis with one round trip per publish (RedisBroker(coalesce=False))",
    )
    args = parser.parse_args()
    if not args.no_uvloop:
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for trial in range(args.trials):
        for load in ("closed", "rate", "batch"):
            variants = [("memory", "memory://"), ("redis", REDIS_URL)]
            if args.uncoalesced:
                variants.append(("redis, no coalescing", REDIS_URL + "#no-coalesce"))
            for name, url in variants:  # interleaved: noise falls on all alike
                result = asyncio.run(bench(url, args, load))
                raw.setdefault(name, {}).setdefault(load, []).append(result)
                print(f"trial {trial + 1} {load:6} {name:6} {result}", file=sys.stderr, flush=True)

    def med(name: str, load: str, key: str) -> float:
        return statistics.median(r[key] for r in raw[name][load])

    print(
        f"\nload: {args.executions} executions, all subscribed; closed loop {args.concurrency} publishers; "
        f"fixed rate {args.rate:g}/s; batches of {args.batch}; {args.duration:g} s each; median of {args.trials}\n"
    )
    print(
        "| broker | closed loop events/s | closed p50 / p99 ms | at rate p50 / p99 ms | batch events/s "
        "| batch delivery p99 ms |"
    )
    print("|---|---|---|---|---|---|")
    for name in raw:
        print(
            f"| {name} | {med(name, 'closed', 'events_per_s'):.0f} | {med(name, 'closed', 'p50_ms'):.2f} / "
            f"{med(name, 'closed', 'p99_ms'):.2f} | {med(name, 'rate', 'p50_ms'):.2f} / "
            f"{med(name, 'rate', 'p99_ms'):.2f} | {med(name, 'batch', 'events_per_s'):.0f} | "
            f"{med(name, 'batch', 'batch_p99_ms'):.2f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "raw": raw}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
