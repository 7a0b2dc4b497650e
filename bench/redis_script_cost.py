"""Instructions redis-server runs per publish, for the publish script and variants of it (callgrind).

    nice -n 19 python bench/redis_script_cost.py               # 3,000 publishes per measure, pipelines of 3
    nice -n 19 python bench/redis_script_cost.py --events 6000 --pipeline 8

Starts its own ``redis-server`` under ``valgrind --tool=callgrind`` on a free
port (instrumentation off until each measure), subscribes one connection to
the executions' channels and reads it (as a relay does), then runs each variant of the
broker's publish script over the same kind of events (a ~200-byte frame, no
idempotency key, 50 executions in turn) and prints redis-server's user-space
instructions per event. The variants leave one command out (a measure only,
never a proposal: the contract needs each), and an empty script with the same
arguments shows what a script call costs before its first command. The last
variant runs the same script body once per event inside one call per
pipeline (what one ``EVALSHA`` per pipeline would save). Counts,
not timings: no lock needed; run it niced.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import run as bench

from service.brokers.redis import PUBLISH_LUA

HEAD = '{"type":"event","execution_id":"exec-1","seq":'
TAIL = (
    ',"event":"progress","data":{"progress":42,"stage":"bench","status":"processing","status_text":"x"},'
    '"ts":"2026-11-30T21:00:00.000Z"}'
)
HISTORY = 1000  # RELAY_HISTORY_SIZE's default: the bench's streams (~65 events each) are never trimmed
_NOP = "local function nop(...) end\n"  # a command left out keeps its arguments' evaluation
VARIANTS = {
    "publish script": PUBLISH_LUA,
    "without the two EXPIREs": PUBLISH_LUA.replace("redis.call('EXPIRE', KEYS[1], ttl)", "").replace(
        "redis.call('EXPIRE', KEYS[2], ttl)", ""
    ),
    "without XADD": _NOP + PUBLISH_LUA.replace("redis.call('XADD'", "nop('XADD'"),
    "without PUBLISH": _NOP + PUBLISH_LUA.replace("redis.call('PUBLISH'", "nop('PUBLISH'"),
    "XADD without MAXLEN": PUBLISH_LUA.replace("'MAXLEN', ARGV[6], ", ""),
    "an empty script, same arguments": "return {1, 1, 'e', 0}",
}
#: The publish script's body run once per event inside one script call per pipeline (KEYS: 3 per
#: event, ARGV: 10 per event): what one EVALSHA per pipeline instead of one per event would save.
PER_PIPELINE = (
    "local out = {}\n"
    "for i = 0, #KEYS / 3 - 1 do\n"
    "  local KEYS = {KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]}\n"
    "  local ARGV = {unpack(ARGV, 10 * i + 1, 10 * i + 10)}\n"
    f"  out[i + 1] = (function()\n{PUBLISH_LUA.strip()}\n  end)()\n"
    "end\n"
    "return out"
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=3000, help="publishes per measure")
    ap.add_argument("--pipeline", type=int, default=3, help="script calls per pipeline (the closed loop: ~2.5)")
    ap.add_argument("--executions", type=int, default=50)
    args = ap.parse_args()
    binary = shutil.which("redis-server")
    if binary is None or shutil.which("valgrind") is None:
        print("needs redis-server and valgrind", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="redis-script-cost-"))
    port = bench.free_port()
    out = str(tmp / "redis.cg")
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}.%p"]
    server = subprocess.Popen(
        [*valgrind, binary, "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 60
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("redis-server did not start under valgrind") from None
                time.sleep(0.2)
        ids = [f"exec-{i}" for i in range(args.executions)]
        listener = client.pubsub()
        listener.subscribe(**{f"cost:{{{eid}}}:live": lambda message: None for eid in ids})
        reader = listener.run_in_thread(sleep_time=0.001, daemon=True)  # read, as a relay does
        ticks = iter(range(10**9))

        def control(*what: str) -> None:
            subprocess.run(
                ["callgrind_control", *what, str(server.pid)],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

        def call(n: int) -> tuple[list[str], list[str]]:
            eid = ids[n % len(ids)]
            keys = [f"cost:{{{eid}}}:{kind}" for kind in ("stream", "meta", "idem")]
            argv = [HEAD, TAIL, "progress", "0", "", str(HISTORY), "600", str(int(time.time() * 1000))]
            return keys, [*argv, f"cost:{{{eid}}}:live", f"epoch{n}"]

        def publishes(sha: str, per_pipeline: bool = False) -> None:
            for first in range(0, args.events, args.pipeline):
                calls = [call(next(ticks)) for _ in range(first, min(first + args.pipeline, args.events))]
                if per_pipeline:
                    keys = [key for k, _ in calls for key in k]
                    replies = client.evalsha(sha, len(keys), *keys, *(arg for _, a in calls for arg in a))
                    assert [r[0] for r in replies] == [1] * len(calls), replies
                    continue
                pipe = client.pipeline(transaction=False)
                for keys, argv in calls:
                    pipe.evalsha(sha, 3, *keys, *argv)
                pipe.execute()

        def instructions() -> int:
            for path in glob.glob(f"{out}.*"):
                os.unlink(path)
            control("-d")
            totals = 0
            for path in glob.glob(f"{out}.*"):
                with open(path) as dump:
                    for line in dump:
                        if line.startswith(("totals:", "summary:")):
                            totals = max(totals, int(line.split()[1]))
            return totals

        publishes(client.script_load(PUBLISH_LUA))  # warm-up
        variants = [(label, source, False) for label, source in VARIANTS.items()]
        variants.append(("one script call per pipeline", PER_PIPELINE, True))
        for label, source, per_pipeline in variants:
            sha = client.script_load(source)
            control("-z")
            control("-i", "on")
            publishes(sha, per_pipeline)
            control("-i", "off")
            print(f"{label:34s} {instructions() / args.events:9,.0f} instructions per event", flush=True)
        reader.stop()
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
