"""The benchmark harness runs end to end in its tiny configuration.

This checks only that bench/run.py starts the servers, drives them with the
load generator and writes well-formed results. It never asserts performance:
the machine is shared and noisy, and the figures live in docs/performance.md.
The product comparison (`product`, progress-relay only) is also checked for
what holds on any machine: every watcher saw every event once and in order,
the compressed socket really negotiated permessage-deflate, and it moved
fewer bytes than polling. The fan-out's compressed relays (added next to the
relay) are checked the same way: every socket agreed to compress, nothing was
lost, and compressed frames are smaller.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

for _module in ("picows", "socketio", "aiohttp", "psutil", "matplotlib", "uvloop", "jwt"):
    pytest.importorskip(_module, reason="bench dependencies: pip install -e '.[bench]'")

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ["idle_memory", "closed_loop", "rates", "fanout", "batch", "storm", "rush", "product"]
RELAY_ONLY = {"product"}
FANOUT_DEFLATE = {"relay_deflate", "relay_deflate_msg"}  # added to the fan-out next to the relay
PRODUCT_MODES = ["poll_state", "poll_events", "ws", "ws_deflate", "ws_deflate_msg"]


@pytest.mark.slow
def test_bench_smoke_writes_results(tmp_path):
    targets = ["sanic_minimal"]
    if (ROOT / "service" / "web" / "app.py").exists():
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
        expected = {"relay"} & set(targets) if scenario in RELAY_ONLY else set(targets)
        if scenario == "fanout" and "relay" in targets:
            expected |= FANOUT_DEFLATE
        assert set(per_target) == expected, scenario
        for name, entry in per_target.items():
            assert "error" not in entry, f"{scenario}/{name}: {entry.get('error')}"
            summary = entry["summary"]
            assert summary, f"{scenario}/{name} has an empty summary"
            for metric, value in summary.items():
                assert value is None or isinstance(value, (int, float)), (scenario, metric)
    check_rush(doc, targets)
    # no target's keepalive pings fall in the fan-out's windows: every server ran with the same interval
    fanout = doc["scenarios"]["fanout"]
    assert {entry["ping_interval_s"] for entry in fanout.values()} == {3600.0}
    subscribers = doc["config"]["fanout"]["subscribers"]
    for name, entry in fanout.items():  # a frame per socket and the 202: nothing else in the windows
        assert entry["server_writes_per_event"] == subscribers + 1, name
    if "relay" in targets:
        # every relay figure that has a direction is also given as a ratio
        assert doc["ratios_subject"] == "relay"
        assert "sanic_minimal" in doc["ratios"]["closed_loop"]["posts_per_s"]
        check_product(doc["scenarios"]["product"]["relay"])
        check_fanout_deflate(doc["scenarios"]["fanout"], doc["config"]["fanout"]["subscribers"])

    latest = (tmp_path / "latest.md").read_text()
    assert "| metric |" in latest
    for scenario in SCENARIOS:
        if scenario not in RELAY_ONLY or "relay" in targets:
            assert f"(`{scenario}`)" in latest
    if "relay" in targets:
        assert "| mode | update latency p50 / max | HTTP requests | bytes on the wire" in latest
    png = tmp_path / "latency.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def check_fanout_deflate(fanout, subscribers):
    """The compressed fan-out really compressed, on every socket, and lost nothing."""
    plain = fanout["relay"]["summary"]
    for name in FANOUT_DEFLATE:
        entry = fanout[name]
        assert entry["connect"]["deflated"] == subscribers, name
        summary = entry["summary"]
        assert summary["lost"] == 0, name
        assert summary["bytes_per_frame"] < plain["bytes_per_frame"], name
    # the default keeps the client's window: event frames refer back to the previous one
    context, alone = (fanout[name]["summary"]["bytes_per_frame"] for name in ("relay_deflate", "relay_deflate_msg"))
    assert context < alone
    assert fanout["relay"]["connect"]["deflated"] == 0


def check_product(entry):
    """One demo execution, every mode watching it at once, through counting proxies."""
    modes = entry["modes"]
    assert list(modes) == PRODUCT_MODES
    events = entry["execution"]["events"]
    assert events >= 10  # the demo script: queued, 5 platforms, analyzing, report, complete
    for mode, s in modes.items():
        for metric, value in s.items():
            assert value is None or isinstance(value, (int, float)), (mode, metric)
        # every update reached every watcher, once, in order
        assert (s["events"], s["seen"], s["lost"], s["dups"], s["out_of_order"]) == (events, events, 0, 0, 0), mode
        assert s["bytes_up"] > 0 and s["bytes_down"] > 0, mode
        assert s["bytes_total"] == s["bytes_up"] + s["bytes_down"], mode
        assert s["connections"] == 1, mode  # keep-alive polling; one socket
        assert s["p50_ms"] is not None and s["max_ms"] >= s["p50_ms"], mode
    for mode in ("poll_state", "poll_events"):
        assert modes[mode]["requests"] > 3, mode  # it really polled for the whole execution
    for mode in ("ws", "ws_deflate", "ws_deflate_msg"):
        s = modes[mode]
        assert s["requests"] == 1, mode
        assert s["upgrade_bytes"] > 0 and s["heartbeats"] >= 1, mode
        # connected + every event + close at least, down; heartbeats + close, up
        assert s["frames_down"] >= events + 2 and s["frames_up"] >= s["heartbeats"] + 1, mode
        assert entry["details"][mode]["close_code"] == 1000, mode
    assert modes["ws"]["deflate"] == 0 and entry["details"]["ws"]["extensions"] is None
    for mode in ("ws_deflate", "ws_deflate_msg"):
        assert modes[mode]["deflate"] == 1, mode
        assert "permessage-deflate" in entry["details"][mode]["extensions"], mode
    # the relay's default keeps the client's window (server context takeover); the other does not
    assert "server_no_context_takeover" not in entry["details"]["ws_deflate"]["extensions"]
    assert "server_no_context_takeover" in entry["details"]["ws_deflate_msg"]["extensions"]
    assert modes["ws_deflate"]["bytes_down"] < modes["ws_deflate_msg"]["bytes_down"]
    # compression saves bytes, and the compressed socket costs less than polling
    assert modes["ws_deflate"]["bytes_down"] < modes["ws"]["bytes_down"]
    assert modes["ws_deflate"]["bytes_total"] < modes["poll_state"]["bytes_total"]
    assert modes["ws_deflate"]["vs_polling_pct"] < 100
    assert modes["poll_state"]["vs_polling_pct"] == 100
    assert entry["summary"]["deflate_negotiated"] == 1 and entry["summary"]["lost"] == 0


@pytest.mark.slow
def test_ingest_bench_smoke_reports_every_publisher_and_source():
    """bench/ingest.py --smoke runs every publisher and every source end to end and prints both tables."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ingest.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in (
        "| v1 client (connection per event) |",
        "| RelayPublisher (kept alive) |",
        "| AsyncRelayPublisher (native) |",
        "| RelayPublisher.publish_batch (1000/request) |",
        "| raw keep-alive client (http.client) |",
        "| http |",
        "| outbox |",
        "| amqp |",
    ):
        assert row in proc.stdout, proc.stdout


def check_rush(doc, targets):
    """The rush: the whole crowd joined while events flowed, and the relay's full collections were read."""
    cfg = doc["config"]["rush"]
    for name in targets:
        entry = doc["scenarios"]["rush"][name]
        assert len(entry["trials"]) == cfg["trials"]
        for trial in entry["trials"]:
            assert trial["joined"] == cfg["clients"], name
            assert trial["publisher"]["events_accepted"] > 0, name
            assert trial["p99_ms"] is not None and trial["max_ms"] >= trial["p99_ms"], name
        for metric in ("p99_ms", "max_ms", "lost", "join_per_s"):
            assert entry["summary"][metric] is not None, (name, metric)
    if "relay" in targets:
        assert doc["scenarios"]["rush"]["relay"]["summary"]["full_gcs"] is not None
        assert "sanic_minimal" in doc["ratios"]["rush"]["p99_ms"]
