"""The hostile-client table of docs/reliability.md: every attack of tests/hostile.py, measured.

Starts one relay process (production mode, RELAY_HANDSHAKE_TIMEOUT=2,
RELAY_MAX_CONNECTIONS_PER_IP=300; see ``tests.hostile.SERVER_ENV``), runs each
attack against it in turn with the health monitor around it, and prints a
markdown table: attack -> what the relay does -> what the attacker saw ->
/healthz latency (p50 / max) and failures, RSS growth, error lines,
non-JSON lines, 5xx access lines. ``--json PATH`` also writes the figures.

    .venv/bin/python bench/hostile.py [--json bench/results/hostile.json]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.hostile import ATTACKS, TABLE_HEAD, as_row, results_json, run_attack, start_service  # noqa: E402


async def main(json_path: str | None) -> None:
    """Run every attack once and print the table."""
    service = start_service()
    rows = []
    try:
        for name in ATTACKS:
            outcome, health = await run_attack(service, name)
            rows.append((name, outcome, health))
            print(f"{name}: done in {outcome.seconds:.1f} s", file=sys.stderr)
    finally:
        service.stop()
    print(TABLE_HEAD)
    for row in rows:
        print(as_row(*row))
    if json_path:
        Path(json_path).write_text(results_json(rows) + "\n")  # noqa: ASYNC240  (once, at the end)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the figures to this file")
    asyncio.run(main(parser.parse_args().json))
