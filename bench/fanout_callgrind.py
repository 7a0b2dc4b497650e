"""Instructions per fanned-out event on a real server: a target under callgrind, 1,000 subscribers, a few POSTs.

The target (``relay`` or a baseline of bench/run.py, e.g. ``bare_websockets``)
runs under ``valgrind --tool=callgrind --instr-atstart=no``; the load
generator's subscribers connect (bench/run.py's ``Subs``); then this script
sends ``--events`` POSTs back to back on one keep-alive connection with
callgrind's instrumentation switched on around them only, and reads
``totals:`` of the dump. That is done ``--windows`` times: a window in which
a burst of keepalive pings fell (all the sockets connected together, so they
fall due together) counts tens of millions more, so the smallest window is
the fan-out's own figure. Deterministic to a few tenths of a percent whatever
else the machine runs: no bench lock needed. User-space instructions only:
the ``write`` per socket (the same for every target) is the kernel's.

    python bench/fanout_callgrind.py relay
    python bench/fanout_callgrind.py bare_websockets
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # bench/run.py, next to this file

EXECUTION = "fanout-0"


def callgrind_control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def post(conn: socket.socket, target: bench.Target, n: int) -> None:
    """One progress event, answered 202 (read whole, so the next request starts clean)."""
    body = b'{"event":"progress","data":{"progress":42,"stage":"bench","status":"processing","status_text":"%d"}}' % n
    auth = f"Authorization: Bearer {target.publish_key}\r\n" if target.publish_key else ""
    head = (
        f"POST /internal/v1/executions/{EXECUTION}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    conn.sendall(head.encode() + body)
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    status, _, rest = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?i)content-length: *(\d+)", status)
    while length and len(rest) < int(length.group(1)):
        rest += conn.recv(65536)
    if status.split()[1] != b"202":
        raise RuntimeError(f"publish refused: {data[:200]!r}")


def totals(dump_prefix: Path) -> int:
    """``totals:`` of the newest dump."""
    dumps = sorted(dump_prefix.parent.glob(dump_prefix.name + "*"), key=lambda p: p.stat().st_mtime)
    found = re.search(r"^totals: (\d+)", dumps[-1].read_text(errors="replace"), re.M)
    if found is None:
        raise RuntimeError(f"no totals in {dumps[-1]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", choices=sorted(bench.TARGETS))
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--events", type=int, default=5, help="POSTs per window")
    parser.add_argument("--windows", type=int, default=4)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fanout-callgrind-"))
    target = bench.Target(name=args.target, **bench.TARGETS[args.target])
    target.port = bench.free_port(pair=target.http_port_offset > 0)
    dump_prefix = tmp / f"callgrind.{args.target}"
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={dump_prefix}"]
    with open(tmp / f"{args.target}.log", "wb") as log:
        server = subprocess.Popen(
            [*command, *target.command()],
            cwd=bench.ROOT,
            env=target.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        while not all(bench.port_open(p) for p in {target.port, target.http_port}):  # valgrind starts slowly
            if server.poll() is not None:
                raise RuntimeError(f"{args.target} exited at start:\n{bench.tail(tmp / f'{args.target}.log')}")
            time.sleep(1)
        with bench.Subs(target, [EXECUTION] * args.subscribers, tmp, timeout=1200) as subs:
            conn = socket.create_connection(("127.0.0.1", target.http_port), timeout=300)
            for n in range(3):  # warm up
                post(conn, target, n)
            per_event = []
            for window in range(args.windows):
                time.sleep(3)
                callgrind_control(server.pid, "-z")
                callgrind_control(server.pid, "-i", "on")
                for n in range(args.events):
                    post(conn, target, 100 + window * args.events + n)
                callgrind_control(server.pid, "-i", "off")
                callgrind_control(server.pid, "-d")
                time.sleep(1.5)  # the dump is written asynchronously
                per_event.append(totals(dump_prefix) / args.events)
            report = subs.cmd("report")
        expected = (3 + args.windows * args.events) * args.subscribers  # the relay's `connected` frames come on top
        if report.get("frames", 0) < expected:
            raise RuntimeError(f"subscribers got {report.get('frames')} frames, fewer than {expected}")
        best = min(per_event)
        print(
            f"{args.target}: {args.subscribers} subscribers, instructions per event {best:,.0f} "
            f"({best / args.subscribers:,.0f} per socket); windows {[round(x / 1e6, 2) for x in per_event]} M"
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


if __name__ == "__main__":
    main()
