"""The long chaos soak: ``python -m tests.chaos.soak --minutes 5 --clients 300`` (or ``make soak``).

Starts its own redis-server (AOF, ``appendfsync always``) and two relay
instances, runs clients, publishers and the fault injector for ``--minutes``,
completes every execution, checks every stream and prints the figures. Exit
status 0 when nothing was lost, doubled, reordered or left unfinished, 1
otherwise, 2 when redis-server is missing. Every process it started is killed
on the way out, also on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import time

from tests.chaos.harness import SoakConfig, SoakReport, run_soak


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the fault phase (default 5)")
    parser.add_argument("--clients", type=int, default=300, help="WebSocket clients (default 300)")
    parser.add_argument("--executions", type=int, default=None, help="executions (default clients / 5)")
    parser.add_argument(
        "--fault-every", type=float, default=8.0, help="seconds between instance kills / Redis restarts (default 8)"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    parser.add_argument(
        "--outbox",
        metavar="DSN",
        nargs="?",
        const="postgresql://postgres@127.0.0.1:5432/test",
        help="publishers write to a PostgreSQL outbox (default DSN: the test database) instead of POSTing",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print each instance kill / Redis restart")
    parser.add_argument(
        "--topology",
        choices=("single", "sentinel", "cluster"),
        default="single",
        help="single: one redis-server with AOF (default); sentinel: primary + replica + 3 Sentinels with "
        "RELAY_REDIS_MIN_REPLICAS=1, faults adding primary kill -9 (failover) and replica pauses; cluster: "
        "3 masters, faults adding slot migrations",
    )
    parser.add_argument(
        "--workers",
        default=None,
        help="RELAY_WORKERS of each instance, comma-separated (default 1,1; sentinel, cluster: 1,1,2,2)",
    )
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> SoakConfig:
    """A SoakConfig for the options."""
    binary = os.environ.get("RELAY_TEST_REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"
    seconds = max(10.0, args.minutes * 60)
    return SoakConfig(
        clients=args.clients,
        executions=args.executions or max(2, args.clients // 5),
        fault_seconds=seconds,
        big_faults=max(2, int(seconds / args.fault_every)),
        small_fault_every=(0.3, 1.0),
        small_fault_batch=(3, 10),
        post_every=(0.3, 1.2),
        start_spread=10.0,
        drain_timeout=180.0,
        seed=args.seed,
        redis_binary=binary,
        verbose=args.verbose,
        outbox_dsn=args.outbox,
        topology=args.topology,
        workers=tuple(int(w) for w in (args.workers or ("1,1" if args.topology == "single" else "1,1,2,2")).split(",")),
    )


def print_report(report: SoakReport, title: str) -> None:
    """The figures, then the failures."""
    print(title)
    for line in report.lines():
        print(line)
    print("RESULT:", "OK (events lost: 0, duplicates: 0)" if report.ok else "FAILED")


def main(argv: list[str] | None = None) -> int:
    """Run the soak; 0 if it held."""
    args = parse_args(argv)
    config = config_from(args)
    if not os.access(config.redis_binary, os.X_OK):
        print(
            f"redis-server not found ({config.redis_binary}); install redis-server or set RELAY_TEST_REDIS_SERVER",
            file=sys.stderr,
        )
        return 2
    print(
        f"chaos soak: {config.clients} clients, {config.executions} executions, "
        f"{config.fault_seconds:.0f} s of faults ({config.big_faults} instance kills / Redis restarts), "
        f"seed {config.seed}",
        flush=True,
    )

    async def run() -> SoakReport:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)  # cleanup runs in finally
        return await run_soak(config)

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    report = asyncio.run(run())
    print_report(
        report,
        f"chaos soak finished ({started}, command: python -m tests.chaos.soak "
        f"{' '.join(sys.argv[1:] if argv is None else argv)})",
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"started": started, "ok": report.ok, "figures": report.figures, "failures": report.failures[:40]},
                f,
                indent=2,
                ensure_ascii=False,
                default=str,
            )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
