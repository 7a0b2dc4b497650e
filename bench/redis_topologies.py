"""The Redis broker on three topologies of its own: one server, a 3-master cluster, a primary + replica with WAIT.

    python bench/redis_topologies.py                      # 3 s per cell, median of 3
    python bench/redis_topologies.py --duration 2 --trials 1 --json out.json

Starts every Redis itself (``redis-server`` on free loopback ports, killed
afterwards; the machine's Redis is not used) and runs the loads of
``bench/redis_vs_memory.py`` (the broker alone: no HTTP, no sockets) on:

- ``one Redis``: ``redis://``, the reference;
- ``cluster (3 masters)``: ``redis+cluster://``, publishes grouped by node,
  sharded pub/sub;
- ``one Redis + replica, MIN_REPLICAS=1``: ``redis://`` to a primary with one
  replica and ``RELAY_REDIS_MIN_REPLICAS=1`` (``WAIT 1`` after each round
  trip): the cost of acknowledged-means-replicated;
- ``one Redis + replica, MIN_REPLICAS=0``: the same primary without WAIT, so
  the replica's own cost (replication traffic) is not counted as WAIT's.

All servers share the machine with the relay process, so the cluster's three
masters do not get three cores of their own here: the figures say what the
client side costs, not what a cluster of real machines can take.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from redis_vs_memory import Probe, run_batch, run_closed, run_rate  # noqa: E402

from service.brokers import create_broker  # noqa: E402
from tests.redis_topology import ClusterSetup, TopologyServer, wait_until  # noqa: E402
from tests.redis_util import redis_server_binary  # noqa: E402


async def bench(url: str, load: str, args: argparse.Namespace, **options: Any) -> dict[str, Any]:
    """One load on a fresh broker for ``url`` (``options``: RedisBroker keyword arguments)."""
    prefix = f"bench{time.monotonic_ns()}"
    broker = create_broker(url, 1000, 600, prefix=prefix, **options)
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
        await broker.close()


def main() -> int:
    """Start the topologies, run every load on each (interleaved), print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--executions", type=int, default=50)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    binary = redis_server_binary()
    single = TopologyServer(binary)
    primary = TopologyServer(binary)
    replica = TopologyServer(binary, ["--replicaof", "127.0.0.1", str(primary.port)])
    cluster = ClusterSetup(binary)
    try:
        for server in (single, primary, replica):
            server.start()
        wait_until(lambda: replica.info("replication").get("master_link_status") == "up", 20, "replica synced")
        cluster.start()
        variants: list[tuple[str, str, dict[str, Any]]] = [
            ("one Redis", single.url, {}),
            ("cluster (3 masters)", cluster.url, {}),
            ("one Redis + replica, MIN_REPLICAS=0", primary.url, {}),
            ("one Redis + replica, MIN_REPLICAS=1", primary.url, {"min_replicas": 1, "min_replicas_timeout": 1.0}),
        ]
        raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for trial in range(args.trials):
            for load in ("closed", "rate", "batch"):
                for name, url, options in variants:  # interleaved: noise falls on all alike
                    result = asyncio.run(bench(url, load, args, **options))
                    raw.setdefault(name, {}).setdefault(load, []).append(result)
                    print(f"trial {trial + 1} {load:6} {name:38} {result}", file=sys.stderr, flush=True)
    finally:
        for server in (single, primary, replica):
            server.close()
        cluster.close()

    def med(name: str, load: str, key: str) -> float:
        return statistics.median(r[key] for r in raw[name][load])

    print(
        f"\nload: {args.executions} executions, all subscribed; closed loop {args.concurrency} publishers; "
        f"fixed rate {args.rate:g}/s; batches of {args.batch}; {args.duration:g} s each; median of {args.trials}\n"
    )
    print(
        "| topology | closed loop events/s | closed p50 / p99 ms | at rate p50 / p99 ms | achieved/s | batch events/s |"
    )
    print("|---|---|---|---|---|---|")
    for name in raw:
        print(
            f"| {name} | {med(name, 'closed', 'events_per_s'):.0f} | {med(name, 'closed', 'p50_ms'):.2f} / "
            f"{med(name, 'closed', 'p99_ms'):.2f} | {med(name, 'rate', 'p50_ms'):.2f} / "
            f"{med(name, 'rate', 'p99_ms'):.2f} | {med(name, 'rate', 'achieved_per_s'):.0f} | "
            f"{med(name, 'batch', 'events_per_s'):.0f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "raw": raw}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
