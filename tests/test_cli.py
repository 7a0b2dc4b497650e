"""The command line and the Python publisher client, against real processes and servers."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from service.publisher import AsyncRelayPublisher, PublishError, RelayPublisher
from tests.conftest import PUBLISH_KEY, SECRET, Server, recv_json, recv_until_closed

ROOT = Path(__file__).parent.parent


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without RELAY_ variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(extra)
    return env


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``progress-relay`` (as python -m service.cli) and capture its output."""
    return subprocess.run(
        [sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main())", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(**env),
        cwd=ROOT / "tests",
    )


async def test_dev_mode_prints_a_working_token_and_key() -> None:
    """`python -m service` with no secrets prints a token and key that work against it at once."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service"],
        cwd=ROOT / "tests",
        text=True,
        env=clean_env(RELAY_PORT=str(port)),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    try:
        assert proc.stderr is not None
        banner = ""
        deadline = time.monotonic() + 30
        while "run a whole simulated diagnosis" not in banner and time.monotonic() < deadline:
            banner += proc.stderr.readline()
        assert "DEV mode" in banner
        token = re.search(r"token=(ey[\w.-]+)", banner).group(1)  # type: ignore[union-attr]
        key = re.search(r"publisher key\s+(\S+)", banner).group(1)  # type: ignore[union-attr]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(100):
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            async with connect(f"ws://127.0.0.1:{port}/ws/executions/demo-001?token={token}") as ws:
                assert (await recv_json(ws))["type"] == "connected"
                r = await http.post(
                    "/internal/v1/executions/demo-001/events",
                    headers={"Authorization": f"Bearer {key}"},
                    json={"event": "complete", "data": {"report": {"ok": 1}}},
                )
                assert r.status_code == 202
                frames = await recv_until_closed(ws)
                assert frames[0]["data"] == {"report": {"ok": 1}}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_production_without_secrets_refuses_to_start() -> None:
    """RELAY_ENV=production with no secret exits 2 with one sentence naming the variable."""
    result = subprocess.run(
        [sys.executable, "-m", "service"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(RELAY_ENV="production"),
        cwd=ROOT / "tests",
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "progress-relay: RELAY_JWT_SECRET must be set when RELAY_ENV=production."


def test_several_workers_on_memory_refuse_to_start() -> None:
    """RELAY_WORKERS=2 with the memory broker exits 2 telling to use Redis."""
    result = subprocess.run(
        [sys.executable, "-m", "service"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(RELAY_WORKERS="2"),
        cwd=ROOT / "tests",
    )
    assert result.returncode == 2 and "RELAY_BROKER_URL=redis://" in result.stderr


def test_token_command_mints_a_verifiable_token() -> None:
    """`progress-relay token` prints a token for the execution, signed with RELAY_JWT_SECRET."""
    import jwt

    result = run_cli("token", "--execution-id", "x1", "--sub", "bob", "--ttl", "90", RELAY_JWT_SECRET=SECRET)
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"], audience="progress-relay")
    assert claims["execution_id"] == "x1" and claims["sub"] == "bob" and claims["exp"] - claims["iat"] == 90


def test_token_command_without_secret_explains() -> None:
    """Without a configured secret, `token` refuses with a sentence instead of a useless token."""
    result = run_cli("token", "--execution-id", "x1", "--sub", "bob")
    assert result.returncode == 2 and "RELAY_JWT_SECRET" in result.stderr


async def test_publish_command_sends_one_event(server: Server) -> None:
    """`progress-relay publish` posts one event to a running service and prints its seq."""
    result = await asyncio.to_thread(
        run_cli,
        "publish",
        "--url",
        server.base,
        "--execution-id",
        "p1",
        "--event",
        "progress",
        "--data",
        '{"progress": 3, "stage": "queued"}',
        RELAY_PUBLISH_KEYS=PUBLISH_KEY,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"execution_id": "p1", "seq": 1, "duplicate": False}
    bad = await asyncio.to_thread(
        run_cli,
        "publish",
        "--url",
        server.base,
        "--execution-id",
        "p1",
        "--event",
        "progress",
        "--data",
        "{}",
        RELAY_PUBLISH_KEYS=PUBLISH_KEY,
    )
    assert bad.returncode == 1 and "422" in bad.stderr


async def test_publisher_client_methods_match_the_seed(server: Server) -> None:
    """send_progress/send_result/send_error/send_complete publish the contract's events in order."""
    ws = await server.connect("s1")
    await recv_json(ws)
    pub = AsyncRelayPublisher(server.base, PUBLISH_KEY)
    await pub.send_progress("s1", 10, "ai_fetching", "processing", "正在查询")
    await pub.send_result("s1", {"platform": "kimi", "rank": 1})
    await pub.send_error("s1", "kimi timed out", "timeout", {"platform": "kimi"}, recoverable=True)
    await pub.send_complete("s1", {"score": 90})
    frames = await recv_until_closed(ws)
    assert [(f["seq"], f["event"]) for f in frames] == [(1, "progress"), (2, "result"), (3, "error"), (4, "complete")]
    assert frames[0]["data"] == {
        "progress": 10,
        "stage": "ai_fetching",
        "status": "processing",
        "status_text": "正在查询",
    }
    assert frames[2]["data"]["recoverable"] is True and frames[3]["data"] == {"report": {"score": 90}}
    with pytest.raises(PublishError) as exc:
        await asyncio.to_thread(RelayPublisher(server.base, PUBLISH_KEY).send_progress, "s1", 5, "x")
    assert exc.value.status == 409


async def test_publisher_retry_after_lost_response_delivers_once(server: Server) -> None:
    """When the first answer is lost on the way back, the retry reuses the key: one event, duplicate: true."""
    attempts = 0

    async def whole_message(reader: asyncio.StreamReader) -> bytes:
        """One HTTP message, head and Content-Length body (either may come in more than one read)."""
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        )
        return head + await reader.readexactly(length)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        up_reader, up_writer = await asyncio.open_connection(server.host, server.port)
        up_writer.write(await whole_message(reader))
        await up_writer.drain()
        response = await whole_message(up_reader)
        if attempts > 1:
            writer.write(response)  # the first answer is dropped: the server did accept it
            await writer.drain()
        for w in (writer, up_writer):
            w.close()

    proxy = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = proxy.sockets[0].getsockname()[1]
    ws = await server.connect("r1")
    await recv_json(ws)
    pub = RelayPublisher(f"http://127.0.0.1:{port}", PUBLISH_KEY, backoff=0.05)
    result = await asyncio.to_thread(pub.send_progress, "r1", 1, "queued")
    proxy.close()
    assert attempts == 2
    assert result == {"execution_id": "r1", "seq": 1, "duplicate": True}
    assert (await recv_json(ws))["seq"] == 1
    with pytest.raises(TimeoutError):
        await recv_json(ws, timeout=0.3)


def test_publisher_gives_up_on_unreachable_relay() -> None:
    """An unreachable relay raises PublishError after the configured retries."""
    pub = RelayPublisher(f"http://127.0.0.1:{free_port()}", "k", retries=2, backoff=0.01, timeout=1)
    with pytest.raises(PublishError, match="unreachable"):
        pub.send_complete("x", {})
