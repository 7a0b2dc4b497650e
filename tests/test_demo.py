"""The ``progress-relay demo`` command, end to end against a real server."""

from __future__ import annotations

import asyncio
import io
import re
import sys
from pathlib import Path

from service.demo import PLATFORMS, diagnosis_script, execution_ids, run
from tests.conftest import PUBLISH_KEY, Server, recv_json, recv_until_closed

ROOT = Path(__file__).resolve().parent.parent


def test_script_is_a_whole_diagnosis() -> None:
    """queued, then per platform a progress and a result, analyzing, report, complete with a report."""
    steps = diagnosis_script("exec-1", seed=1)
    assert steps == diagnosis_script("exec-1", seed=1)  # the same seed gives the same run
    stages = [s.data["stage"] for s in steps if s.event == "progress"]
    assert stages[0] == "queued" and stages[-1] == "report"
    assert stages.count("ai_fetching") == len(PLATFORMS) + 1 and "analyzing" in stages
    assert [s.data["platform_name"] for s in steps if s.event == "result"] == [name for _, name in PLATFORMS]
    progress = [s.data["progress"] for s in steps if s.event == "progress"]
    assert progress == sorted(progress) and all(0 <= p <= 100 for p in progress)
    assert all(re.search(r"[\u4e00-\u9fff]", s.data["status_text"]) for s in steps if s.event == "progress")
    assert steps[-1].event == "complete" and steps[-1].data["report"]["platforms"]


def test_timeouts_are_recoverable_errors_followed_by_the_result() -> None:
    """A platform time-out is a recoverable error, and that platform's result still follows."""
    steps = diagnosis_script("exec-1", timeout_chance=1.0)
    errors = [i for i, s in enumerate(steps) if s.event == "error"]
    assert len(errors) == len(PLATFORMS)
    for i in errors:
        assert steps[i].data["recoverable"] is True and steps[i].data["error_type"] == "platform_timeout"
        assert steps[i + 1].event == "result"
        assert steps[i + 1].data["platform"] == steps[i].data["error_details"]["platform"]
    assert not any(s.event == "error" for s in diagnosis_script("exec-1", timeout_chance=0.0))


def test_execution_ids() -> None:
    """Numbered ids count up keeping their width; others get -2, -3; none gives a fresh demo id."""
    assert execution_ids("demo-009", 3) == ["demo-009", "demo-010", "demo-011"]
    assert execution_ids("run-a", 3) == ["run-a", "run-a-2", "run-a-3"]
    first, second = execution_ids(None, 2)
    assert first.startswith("demo-") and first != second


async def test_demo_runs_end_to_end_and_every_transport_shows_it(server: Server) -> None:
    """Three demo executions complete; the printed tokens and commands work; socket and polling agree."""
    ws = await server.connect("demo-t-001")
    assert (await recv_json(ws))["type"] == "connected"
    out = io.StringIO()
    code = await asyncio.to_thread(
        run, server.base, PUBLISH_KEY, executions=3, pace=0.01, first_id="demo-t-001", out=out
    )
    text = out.getvalue()
    assert code == 0, text
    assert "3/3 demo execution(s) completed." in text
    live = await recv_until_closed(ws)
    for eid in ("demo-t-001", "demo-t-002", "demo-t-003"):
        token = re.search(rf"execution {eid} .*\n  token     : (\S+)", text)
        assert token is not None, text
        assert f"curl -N '{server.base}/v1/executions/{eid}/stream?token=" in text
        assert f"/ws/executions/{eid}?token=" in text and f"/v1/executions/{eid}/events?after=0" in text
        assert f"{server.base}/demo/?execution_id={eid}&token=" in text
        state = (await server.http.get(f"/v1/executions/{eid}", params={"token": token.group(1)})).json()
        assert state["terminal"] is True and state["status"] == "completed" and state["progress"] == 100
        assert state["report"]["brand"] and len(state["report"]["platforms"]) == len(PLATFORMS)
        polled = (
            await server.http.get(f"/v1/executions/{eid}/events", params={"token": token.group(1), "limit": 1000})
        ).json()
        assert len(polled["events"]) == len(diagnosis_script(eid)) == state["latest_seq"]
        if eid == "demo-t-001":
            assert polled["events"] == live


async def test_demo_command_refuses_to_rerun_a_finished_execution(server: Server) -> None:
    """Running the demo twice on the same id fails (exit 1) with a hint, since the first run finished."""
    assert await asyncio.to_thread(run, server.base, PUBLISH_KEY, pace=0, first_id="demo-again", out=io.StringIO()) == 0
    out = io.StringIO()
    assert await asyncio.to_thread(run, server.base, PUBLISH_KEY, pace=0, first_id="demo-again", out=out) == 1
    assert "pick another --execution-id" in out.getvalue()


async def test_demo_reports_an_unreachable_relay() -> None:
    """Against nothing listening, the demo exits 1 instead of raising."""
    code = await asyncio.to_thread(run, "http://127.0.0.1:9", PUBLISH_KEY, pace=0, out=io.StringIO())
    assert code == 1


async def test_cli_demo_subcommand_in_a_subprocess(server: Server) -> None:
    """`progress-relay demo --executions 2 --pace 0.01` runs as a process and completes both executions."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from service.cli import main; sys.exit(main(sys.argv[1:]))",
        "demo",
        "--url",
        server.base,
        "--key",
        PUBLISH_KEY,
        "--executions",
        "2",
        "--pace",
        "0.01",
        "--execution-id",
        "cli-01",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    assert "2/2 demo execution(s) completed." in stdout.decode()
    for eid in ("cli-01", "cli-02"):
        page = await server.relay.history(eid)
        assert page.terminal and page.events[-1].event == "complete"
