"""The benchmark harness runs end to end in its tiny configuration.

This checks only that bench/run.py starts the servers, drives them with the
load generator and writes well-formed results. It never asserts performance:
the machine is shared and noisy, and the figures live in docs/performance.md.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

for _module in ("picows", "socketio", "aiohttp", "psutil", "matplotlib", "uvloop", "jwt"):
    pytest.importorskip(_module, reason="bench dependencies: pip install -e '.[bench]'")

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ["idle_memory", "closed_loop", "rates", "fanout", "batch", "storm"]


@pytest.mark.slow
def test_bench_smoke_writes_results(tmp_path):
    targets = ["sanic_minimal"]
    if (ROOT / "service" / "app.py").exists():
        targets.append("relay")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--smoke",
            "--no-docs",
            "--skip",
            "redis",
            "--skip",
            "capacity",
            "--targets",
            ",".join(targets),
            "--results-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    raw = sorted(tmp_path.glob("*-smoke.json"))
    assert len(raw) == 1
    doc = json.loads(raw[0].read_text())
    assert doc["meta"]["mode"] == "smoke"
    assert doc["meta"]["targets"] == targets
    assert set(doc["scenarios"]) == set(SCENARIOS)
    for scenario, per_target in doc["scenarios"].items():
        assert set(per_target) == set(targets), scenario
        for name, entry in per_target.items():
            assert "error" not in entry, f"{scenario}/{name}: {entry.get('error')}"
            summary = entry["summary"]
            assert summary, f"{scenario}/{name} has an empty summary"
            for metric, value in summary.items():
                assert value is None or isinstance(value, (int, float)), (scenario, metric)
    if "relay" in targets:
        # every relay figure that has a direction is also given as a ratio
        assert doc["ratios_subject"] == "relay"
        assert "sanic_minimal" in doc["ratios"]["closed_loop"]["posts_per_s"]

    latest = (tmp_path / "latest.md").read_text()
    assert "| metric |" in latest
    for scenario in SCENARIOS:
        assert f"(`{scenario}`)" in latest
    png = tmp_path / "latency.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
