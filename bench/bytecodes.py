"""Python bytecodes (and frames) the relay runs per closed-loop POST, by function.

    python bench/bytecodes.py                      # this tree, 1 subscriber per execution
    python bench/bytecodes.py --tree /tmp/base     # another tree's relay, same client
    python bench/bytecodes.py --top 40             # the 40 functions running the most bytecodes
    python bench/bytecodes.py --env RELAY_BROKER_URL=redis://127.0.0.1:PORT   # the Redis broker
    python bench/bytecodes.py --in-flight 8        # 8 POSTs in flight (the closed loop's), not one at a time

The relay is started as ``bench/run.py`` starts it (same environment), under a
small wrapper that counts ``sys.settrace`` opcode events in its main thread
between SIGUSR1 and SIGUSR2, per code object. The client opens one WebSocket
subscriber per execution, warms up, then sends ``--posts`` single-event POSTs
one after the other on one keep-alive connection, round-robin over the
executions (the ``closed_loop`` body), with tracing on only around them.
Tracing makes the server ~20x slower, so timer-driven work (pings, Sanic's
timeout checks) weighs more than under load: those functions are listed
apart and left out of "per POST". Counts are deterministic to within a few
bytecodes, unlike timings: compare trees with them, confirm with the bench.
No timing here, so no lock needed (run it under ``nice``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import run as bench

# Runs inside the server: count opcodes per code object while tracing is on.
_WRAPPER = r"""
import collections, json, os, runpy, signal, sys
ops = collections.Counter()
calls = collections.Counter()
def _local(frame, event, arg):
    if event == "opcode":
        ops[frame.f_code] += 1
    return _local
def _global(frame, event, arg):
    frame.f_trace_opcodes = True
    calls[frame.f_code] += 1
    return _local
def _on(signum, frame):
    ops.clear(); calls.clear(); sys.settrace(_global)
def _off(signum, frame):
    sys.settrace(None)
    out = [[c.co_filename, c.co_firstlineno, c.co_qualname, n, calls[c]] for c, n in ops.items()]
    with open(os.environ["BYTECODES_OUT"], "w") as f:
        json.dump(out, f)
signal.signal(signal.SIGUSR1, _on)
signal.signal(signal.SIGUSR2, _off)
sys.argv = ["service"]
runpy.run_module("service", run_name="__main__", alter_sys=True)
"""

# Work a timer does, not a POST (it weighs ~20x more under tracing than under load).
TIMER_WORK = ("check_timeouts", "pinger", "Pinger", "ping_if_due", "_sweep", "gc_", "keepalive")


def _body(i: int) -> bytes:
    return b'{"event":"progress","data":{"progress":42,"stage":"bench","status":"processing","status_text":"%d"}}' % i


async def _client(
    port: int, ids: list[str], posts: int, warmup: int, server: subprocess.Popen, in_flight: int = 1
) -> None:
    import websockets

    subs = []
    for eid in ids:
        url = f"ws://127.0.0.1:{port}/ws/executions/{eid}?token={bench.mint_token(eid, 'u-' + eid)}"
        subs.append(await websockets.connect(url, compression=None, max_queue=None))

    async def drain(ws):  # read everything so no socket backs up
        async for _ in ws:
            pass

    readers = [asyncio.create_task(drain(ws)) for ws in subs]
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(in_flight)]

    async def post(i: int) -> None:
        reader, writer = connections[i % in_flight]
        eid = ids[i % len(ids)]
        body = _body(i)
        writer.write(
            (
                f"POST /internal/v1/executions/{eid}/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Authorization: Bearer {bench.PUBLISH_KEY}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        answer = await reader.readexactly(length)
        if not head.startswith(b"HTTP/1.1 202"):
            raise RuntimeError(f"{head!r} {answer!r}")

    async def closed_loop(first: int, last: int) -> None:  # in_flight connections, each one POST at a time
        await asyncio.gather(*(_one_by_one(range(first + c, last, in_flight)) for c in range(in_flight)))

    async def _one_by_one(numbers: range) -> None:
        for i in numbers:
            await post(i)

    await closed_loop(0, warmup)
    await asyncio.sleep(0.3)
    server.send_signal(signal.SIGUSR1)
    await asyncio.sleep(0.3)
    await closed_loop(warmup, warmup + posts)
    await asyncio.sleep(0.3)  # the fan-out's last frames
    server.send_signal(signal.SIGUSR2)
    await asyncio.sleep(0.5)
    for _, writer in connections:
        writer.close()
    for ws in subs:
        await ws.close()
    for task in readers:
        task.cancel()


def measure(
    tree: Path, executions: int, posts: int, warmup: int, extra: dict[str, str] | None = None, in_flight: int = 1
) -> list[list]:
    """Per code object (file, line, name, bytecodes, calls) over ``posts`` POSTs of ``tree``'s relay."""
    target = bench.Target("relay", "relay", "relay", False, port=bench.free_port())
    out = Path(tempfile.mktemp(prefix="bytecodes-", suffix=".json"))
    env = target.env() | (extra or {}) | {"BYTECODES_OUT": str(out), "PYTHONPATH": str(tree)}
    log = open(tempfile.mktemp(prefix="bytecodes-server-", suffix=".log"), "w")  # noqa: SIM115
    server = subprocess.Popen([bench.PY, "-c", _WRAPPER], cwd=tree, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{target.port}/healthz", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"relay did not start; see {log.name}") from None
                time.sleep(0.1)
        ids = [f"bc-{i}" for i in range(executions)]
        asyncio.run(_client(target.port, ids, posts, warmup, server, in_flight))
        for _ in range(50):
            if out.exists() and out.stat().st_size:
                break
            time.sleep(0.1)
        return json.loads(out.read_text())
    finally:
        server.terminate()
        server.wait(10)
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", default=str(Path(__file__).resolve().parents[1]), help="the tree whose relay runs")
    ap.add_argument("--executions", type=int, default=50, help="one subscriber each")
    ap.add_argument("--posts", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--json", help="write the per-function counts here too")
    ap.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE added to the relay's environment (e.g. RELAY_BROKER_URL)"
    )
    ap.add_argument(
        "--in-flight", type=int, default=1, help="POSTs in flight, each on its own connection (the closed loop: 8)"
    )
    args = ap.parse_args()
    extra = dict(kv.split("=", 1) for kv in args.env)
    rows = measure(Path(args.tree).resolve(), args.executions, args.posts, args.warmup, extra, args.in_flight)
    timer = [r for r in rows if any(t in r[2] for t in TIMER_WORK)]
    work = [r for r in rows if r not in timer]
    per = args.posts
    print(f"tree {args.tree}: {args.posts} POSTs, {args.executions} subscribers")
    print(
        f"bytecodes per POST {sum(r[3] for r in work) / per:,.1f}, frames per POST {sum(r[4] for r in work) / per:.1f}"
    )
    print(f"(timer work left out: {sum(r[3] for r in timer) / per:,.1f} bytecodes per POST)")
    root = str(Path(args.tree).resolve())
    for file, line, name, ops, calls in sorted(work, key=lambda r: -r[3])[: args.top]:
        where = file.replace(root + "/", "").split("site-packages/")[-1]
        print(f"{ops / per:8.1f} {calls / per:6.2f}  {name}  ({where}:{line})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
