"""Publisher and ingest benchmark: every way in, in the same run, against one relay.

    python bench/ingest.py            # ~1 minute on 2 cores
    python bench/ingest.py --smoke    # a few seconds (harness check)

1. Publisher throughput (events/s, one event per call, sequential, one
   execution per client): the v1 client (urllib, a TCP connection per event,
   reproduced here), RelayPublisher (kept alive), AsyncRelayPublisher (native
   asyncio), RelayPublisher.publish_batch (1000 per request), and a raw
   keep-alive client (http.client, one prepared request, no retry logic): the
   ceiling a Python publisher can reach on one connection.
2. Ingest, source -> subscriber socket: for HTTP publish, outbox insert (one
   row per committed transaction) and AMQP publish (one persistent message):
   latency p50/p99 of events sent one at a time (each waits for the previous
   one to reach the socket), and throughput of a burst (send N as fast as the
   source takes them, until the last reaches the socket).

Needs the machine's PostgreSQL and RabbitMQ (scripts/ensure-ingest-services.sh).
Prints a Markdown table and writes bench/results/ingest-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
import asyncpg
import jwt
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.ingest.outbox import outbox_ddl  # noqa: E402
from service.publisher import (  # noqa: E402
    AMQP_QUEUE_ARGUMENTS,
    AsyncRelayPublisher,
    RelayPublisher,
    amqp_message,
    outbox_insert,
)

SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
KEY = "bench-publish-key-0123456789abcdef0123456789"
PG_DSN = os.environ.get("RELAY_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
AMQP_URL = os.environ.get("RELAY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def progress(n: int) -> dict:
    return {"progress": n % 101, "stage": "bench"}


# -- 1. publisher throughput ----------------------------------------------------------------


def v1_publish(base: str, eid: str, n: int) -> None:
    """The v1 RelayPublisher's request: urllib, a new connection per event."""
    body = json.dumps({"event": "progress", "data": progress(n), "idempotency_key": uuid.uuid4().hex}).encode()
    request = urllib.request.Request(
        f"{base}/internal/v1/executions/{eid}/events",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        response.read()


def raw_keepalive(port: int, eid: str, count: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    started = time.perf_counter()
    for n in range(count):
        body = json.dumps({"event": "progress", "data": progress(n), "idempotency_key": uuid.uuid4().hex})
        conn.request("POST", f"/internal/v1/executions/{eid}/events", body, headers)
        conn.getresponse().read()
    elapsed = time.perf_counter() - started
    conn.close()
    return count / elapsed


def timed(count: int, call) -> float:
    started = time.perf_counter()
    for n in range(count):
        call(n)
    return count / (time.perf_counter() - started)


async def publisher_throughput(base: str, port: int, count: int) -> dict[str, float]:
    tag = uuid.uuid4().hex[:6]
    results: dict[str, float] = {}
    results["v1 client (connection per event)"] = await asyncio.to_thread(
        timed, count, lambda n: v1_publish(base, f"v1-{tag}", n)
    )
    pub = RelayPublisher(base, KEY)
    results["RelayPublisher (kept alive)"] = await asyncio.to_thread(
        timed, count, lambda n: pub.publish(f"ka-{tag}", "progress", progress(n))
    )
    apub = AsyncRelayPublisher(base, KEY)
    started = time.perf_counter()
    for n in range(count):
        await apub.publish(f"as-{tag}", "progress", progress(n))
    results["AsyncRelayPublisher (native)"] = count / (time.perf_counter() - started)
    items = [{"execution_id": f"b-{tag}-{n % 10}", "event": "progress", "data": progress(n)} for n in range(count * 5)]
    started = time.perf_counter()
    await asyncio.to_thread(pub.publish_batch, items)
    results["RelayPublisher.publish_batch (1000/request)"] = len(items) / (time.perf_counter() - started)
    results["raw keep-alive client (http.client)"] = await asyncio.to_thread(raw_keepalive, port, f"raw-{tag}", count)
    pub.close()
    await apub.close()
    return results


# -- 2. source -> socket --------------------------------------------------------------------


class Sources:
    """Send one event through HTTP, the outbox or AMQP."""

    def __init__(self, base: str, table: str, queue: str) -> None:
        self.base, self.table, self.queue = base, table, queue

    async def open(self) -> None:
        self.http = AsyncRelayPublisher(self.base, KEY)
        self.pg = await asyncpg.connect(PG_DSN)
        self.amqp = await aio_pika.connect(AMQP_URL)
        self.channel = await self.amqp.channel()

    async def close(self) -> None:
        await self.http.close()
        await self.pg.close()
        await self.amqp.close()

    async def send(self, source: str, eid: str, n: int) -> None:
        if source == "http":
            await self.http.publish(eid, "progress", progress(n))
        elif source == "outbox":
            sql, params = outbox_insert(eid, "progress", progress(n), table=self.table, paramstyle="numeric")
            await self.pg.execute(sql, *params)  # its own transaction, committed
        else:
            m = amqp_message(eid, "progress", progress(n), queue=self.queue)
            await self.channel.default_exchange.publish(
                aio_pika.Message(m.body, **m.properties), routing_key=m.routing_key
            )


def token(eid: str) -> str:
    now = int(time.time())
    claims = {"sub": "bench", "execution_id": eid, "aud": "progress-relay", "iat": now, "exp": now + 3600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def latency(sources: Sources, port: int, source: str, count: int) -> tuple[float, float]:
    eid = f"lat-{source}-{uuid.uuid4().hex[:6]}"
    async with connect(f"ws://127.0.0.1:{port}/ws/executions/{eid}?token={token(eid)}") as ws:
        await ws.recv()  # connected
        samples = []
        for n in range(count):
            started = time.perf_counter()
            await sources.send(source, eid, n)
            while json.loads(await ws.recv()).get("type") != "diagnosis_update":
                pass
            samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


async def burst(sources: Sources, port: int, source: str, count: int) -> float:
    eid = f"burst-{source}-{uuid.uuid4().hex[:6]}"
    async with connect(f"ws://127.0.0.1:{port}/ws/executions/{eid}?token={token(eid)}") as ws:
        await ws.recv()
        started = time.perf_counter()

        async def send_all() -> None:
            # AMQP producers pipeline their publishes (up to 100 awaiting the broker's confirm);
            # HTTP and the outbox send one at a time on their one connection.
            window = 100 if source == "amqp" else 1
            for first in range(0, count, window):
                await asyncio.gather(*(sources.send(source, eid, n) for n in range(first, min(count, first + window))))

        sender = asyncio.create_task(send_all())
        received = 0
        while received < count:
            if json.loads(await ws.recv()).get("type") == "diagnosis_update":
                received += 1
        await sender
        return count / (time.perf_counter() - started)


class Relay:
    """``python -m service`` with both consumers on, on a free port."""

    def __init__(self, args: argparse.Namespace, table: str, queue: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RELAY_")},
            "PYTHONPATH": str(ROOT),
            "RELAY_PORT": str(self.port),
            "RELAY_JWT_SECRET": SECRET,
            "RELAY_PUBLISH_KEYS": KEY,
            "RELAY_ACCESS_LOG": "false",
            "RELAY_LOG_LEVEL": "WARNING",
            "RELAY_BROKER_URL": args.broker,
            "RELAY_OUTBOX_DSN": PG_DSN,
            "RELAY_OUTBOX_TABLE": table,
            "RELAY_AMQP_URL": AMQP_URL,
            "RELAY_AMQP_QUEUE": queue,
        }

    def __enter__(self) -> Relay:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service"],
            env=self.env,
            cwd=tempfile.gettempdir(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"{self.base}/readyz", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the relay did not become ready")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(20)


async def prepare(table: str, queue: str) -> None:
    pg = await asyncpg.connect(PG_DSN)
    await pg.execute(outbox_ddl(table))
    await pg.close()
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    await channel.declare_queue(queue, durable=True, arguments=AMQP_QUEUE_ARGUMENTS)
    await connection.close()


async def clean_up(table: str, queue: str) -> None:
    pg = await asyncpg.connect(PG_DSN)
    await pg.execute(f'DROP TABLE IF EXISTS "{table}", "{table}_dead"; DROP FUNCTION IF EXISTS "{table}_notify"()')
    await pg.close()
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    for name in (queue, f"{queue}.dead"):
        await channel.queue_delete(name)
    await connection.close()


async def measure(args: argparse.Namespace, relay: Relay, table: str, queue: str) -> dict:
    report: dict = {"publisher_events_per_second": await publisher_throughput(relay.base, relay.port, args.count)}
    sources = Sources(relay.base, table, queue)
    await sources.open()
    ingest = {}
    for source in ("http", "outbox", "amqp"):
        p50, p99 = await latency(sources, relay.port, source, args.latency_count)
        rate = await burst(sources, relay.port, source, args.count)
        ingest[source] = {"p50_ms": p50, "p99_ms": p99, "burst_events_per_second": rate}
    report["source_to_socket"] = ingest
    await sources.close()
    return report


def markdown(report: dict, args: argparse.Namespace) -> str:
    lines = [
        f"Publisher throughput, {args.count} sequential events per client, broker {args.broker}:",
        "",
        "| client | events/s |",
        "|---|---:|",
    ]
    for name, value in report["publisher_events_per_second"].items():
        lines.append(f"| {name} | {value:,.0f} |")
    lines += [
        "",
        f"Source -> subscriber socket ({args.latency_count} events one at a time; burst of {args.count}):",
        "",
        "| source | p50 ms | p99 ms | burst events/s |",
        "|---|---:|---:|---:|",
    ]
    for source, row in report["source_to_socket"].items():
        lines.append(
            f"| {source} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['burst_events_per_second']:,.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny counts (harness check)")
    ap.add_argument("--count", type=int, default=2000, help="events per throughput measurement")
    ap.add_argument("--latency-count", type=int, default=300, help="events per latency measurement")
    ap.add_argument("--broker", default="memory://", help="RELAY_BROKER_URL of the relay under test")
    ap.add_argument("--results-dir", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    if args.smoke:
        args.count, args.latency_count = 50, 20
    table = f"bench_outbox_{uuid.uuid4().hex[:8]}"
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    asyncio.run(prepare(table, queue))
    try:
        with Relay(args, table, queue) as relay:
            report = asyncio.run(measure(args, relay, table, queue))
    finally:
        asyncio.run(clean_up(table, queue))
    text = markdown(report, args)
    print(text)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    if not args.smoke:
        out = Path(args.results_dir) / f"ingest-{stamp}.json"
        out.write_text(json.dumps({"args": vars(args), "report": report, "markdown": text}, indent=2))
        print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
