"""Instructions a server executes per operation, counted by callgrind.
import warnings; warnings.simplefilter("ignore", DeprecationWarning)

    python bench/instructions.py                        # relay and (a): single POST, batch event, connect
    python bench/instructions.py --targets relay --op post --subs 2000

Wall-clock figures on a shared 2-core machine move by 10-20 % between runs;
the number of instructions the server executes for the same work does not
(a few tenths of a percent). Each target runs under valgrind's callgrind
with instrumentation off; it is switched on (``callgrind_control -i on``)
only around the measured operations, which a plain blocking client makes
one at a time:

- ``post``: single-event POSTs over one keep-alive connection, round-robin
  over executions that each have one subscriber (the closed loop's work);
- ``batch``: POSTs of 100 events each (per event);
- ``connect``: WebSocket handshakes of new subscribers (the relay's also
  includes reading its ``connected`` frame).

Needs ``valgrind`` (Debian's package). Slow (the server runs ~50x slower
under callgrind) but unaffected by other load, so it can run niced next to
timed benches.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

import loadgen
import run as bench
import websockets.sync.client as ws_client

OPS = ("post", "batch", "connect")


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, stdout=subprocess.DEVNULL)


def _post(sock: socket.socket, data: bytes) -> None:
    """Send one request and read its whole response (Content-Length framed)."""
    sock.sendall(data)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1]
    if status not in (b"200", b"202"):
        raise RuntimeError(f"publish answered {head!r}")
    match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    length = int(match.group(1)) if match else 0
    while len(rest) < length:
        rest += sock.recv(65536)


def measure(name: str, op: str, subs: int, count: int, outdir: str) -> float:
    """Instructions per operation ``op`` for target ``name``."""
    target = bench.Target(name=name, **bench.TARGETS[name])
    target.port = bench.free_port()
    out = os.path.join(outdir, f"{name}.{op}")
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}.%p", *target.command()]
    with open(out + ".log", "w") as log:
        server = subprocess.Popen(cmd, env=target.env(), cwd=bench.ROOT, stdout=subprocess.DEVNULL, stderr=log)
    sockets = []
    try:
        deadline = time.monotonic() + 120
        while not bench.port_open(target.port):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"{name} did not start under valgrind; see {out}.log")
            time.sleep(0.2)
        ids = [f"exec-{i}" for i in range(subs if op != "connect" else count + 20)]
        warm = 20 if op == "connect" else subs
        for eid in ids[:warm]:
            sockets.append(ws_client.connect(target.ws_url(eid, f"user-{eid}"), open_timeout=60, compression=None))
        if op == "connect":
            _control(server.pid, "-i", "on")
            for eid in ids[warm:]:
                sock = ws_client.connect(target.ws_url(eid, f"user-{eid}"), open_timeout=60, compression=None)
                if target.is_relay:
                    sock.recv(timeout=60)  # the `connected` frame is part of the relay's handshake
                sockets.append(sock)
            _control(server.pid, "-i", "off")
            done = count
        else:
            publisher = loadgen.Publisher({"port": target.http_port, "key": target.publish_key, "exec_ids": ids})
            conn = socket.create_connection(("127.0.0.1", target.http_port))

            def one(k: int) -> None:
                if op == "batch":
                    _post(conn, publisher.batch(ids[(k * 100) % len(ids) :][:100] or ids[:100]))
                else:
                    _post(conn, publisher.single(ids[k % len(ids)]))

            for k in range(min(count, 200)):  # warm: caches, first-use allocations
                one(k)
            _control(server.pid, "-z")
            _control(server.pid, "-i", "on")
            for k in range(count):
                one(k)
            _control(server.pid, "-i", "off")
            done = count * (100 if op == "batch" else 1)
        _control(server.pid, "-d")
        total = 0
        for path in glob.glob(f"{out}.*"):
            if path.endswith(".log"):
                continue
            with open(path) as dump:
                for line in dump:
                    if line.startswith(("totals:", "summary:")):
                        total = max(total, int(line.split()[1]))
        return total / done
    finally:
        for sock in sockets:
            sock.close()
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", default="sanic_minimal,relay", help="comma-separated (bench/run.py's names)")
    ap.add_argument("--op", action="append", choices=OPS, help="operation (repeatable; default all)")
    ap.add_argument("--subs", type=int, default=200, help="subscribers, one per execution (post, batch)")
    ap.add_argument("--count", type=int, default=1000, help="operations measured (batch: requests of 100)")
    args = ap.parse_args(argv)
    names = args.targets.split(",")
    ops = args.op or list(OPS)
    outdir = tempfile.mkdtemp(prefix="relay-callgrind-")
    figures: dict[str, dict[str, float]] = {}
    for op in ops:
        count = args.count // 10 if op == "batch" else (min(args.count, 300) if op == "connect" else args.count)
        for name in names:
            figures.setdefault(op, {})[name] = measure(name, op, args.subs, count, outdir)
            print(f"{op:8s} {name:16s} {figures[op][name]:>10,.0f} instructions each", flush=True)
    if "relay" in names and "sanic_minimal" in names:
        for op, row in figures.items():
            print(f"{op:8s} relay / (a) = {row['relay'] / row['sanic_minimal']:.3f}")
    print(f"callgrind files: {outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
