"""Shared fixtures: settings, and a real server on an ephemeral port.

Sockets are tested against a real Sanic server bound to a socket we opened
ourselves (``create_server(port=0)`` binds 8000, not a free port) and a real
``websockets`` client; see shared/notes/sanic-websockets.md.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect

from service import metrics
from service.config import Settings, load_settings
from service.web.app import SERVER_PROTOCOL, create_app
from tests.log_guard import no_credentials_in_logs  # noqa: F401  (session-wide: no credential in a log line)

SECRET = "test-secret-0123456789-abcdefghijklmnop"
PUBLISH_KEY = "test-publisher-key-0123456789-abcdefghij"


def make_settings(**env: str) -> Settings:
    """Settings from a RELAY_ environment with test secrets (no .env file)."""
    base = {"RELAY_JWT_SECRET": SECRET, "RELAY_PUBLISH_KEYS": PUBLISH_KEY, "RELAY_ACCESS_LOG": "false"}
    base.update(env)
    return load_settings(base, env_file=None)


def make_token(
    execution_id: str = "exec-1",
    sub: str = "user-1",
    ttl: float = 3600,
    secret: str = SECRET,
    algorithm: str = "HS256",
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A subscriber token; ``claims`` override or (with value None) remove defaults."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "sub": sub,
        "execution_id": execution_id,
        "aud": "progress-relay",
        "iat": now,
        "exp": int(now + ttl),
    }
    for k, v in claims.items():
        if v is None:
            payload.pop(k, None)
        else:
            payload[k] = v
    return jwt.encode(payload, secret, algorithm=algorithm, headers=headers)


@dataclass
class Server:
    """A running relay and clients for it."""

    app: Any
    host: str
    port: int
    http: httpx.AsyncClient
    sockets: list[ClientConnection] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def relay(self) -> Any:
        return self.app.ctx.relay

    def ws_url(self, execution_id: str, token: str | None = None, last_seq: int | None = None) -> str:
        url = f"ws://{self.host}:{self.port}/ws/executions/{execution_id}"
        params = []
        if token is not None:
            params.append(f"token={token}")
        if last_seq is not None:
            params.append(f"last_seq={last_seq}")
        return url + ("?" + "&".join(params) if params else "")

    async def connect(
        self, execution_id: str = "exec-1", token: str | None = None, last_seq: int | None = None, **kwargs: Any
    ) -> ClientConnection:
        if token is None:
            token = make_token(execution_id)
        ws = await connect(self.ws_url(execution_id, token, last_seq), **kwargs)
        self.sockets.append(ws)
        return ws

    async def publish(
        self,
        execution_id: str,
        event: str = "progress",
        data: dict[str, Any] | None = None,
        key: str = PUBLISH_KEY,
        **extra: Any,
    ) -> httpx.Response:
        if data is None:
            data = {"progress": 10, "stage": "ai_fetching"} if event == "progress" else {}
        body = {"event": event, "data": data, **extra}
        return await self.http.post(
            f"/internal/v1/executions/{execution_id}/events", json=body, headers={"Authorization": f"Bearer {key}"}
        )


def counted(name: str, *labels: str) -> int:
    """A counter as /metrics and /internal/v1/stats report it (0 when never counted), for before/after checks."""
    node: Any = metrics.snapshot()["counters"].get(name, 0)
    for label in labels:
        node = node.get(label, 0) if isinstance(node, dict) else 0
    assert isinstance(node, int), f"{name}{list(labels)} is not one counter: {node!r}"
    return node


async def recv_json(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    """The next frame, decoded."""
    value: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return value


async def recv_until_closed(ws: ClientConnection, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Every frame until the server closes the socket."""
    frames = []
    async with asyncio.timeout(timeout):
        async for message in ws:
            frames.append(json.loads(message))
    return frames


#: The ``start_server`` fixture: ``await start_server(**RELAY_env)`` starts a relay and returns its Server.
StartServer = Callable[..., Any]


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Factory: start a relay with the given settings on a free port."""
    started: list[tuple[Any, Any, Server]] = []

    async def start(settings: Settings | None = None, **env: str) -> Server:
        settings = settings or make_settings(**env)
        app = create_app(settings)
        # Sanic's touch-up rewrites class methods once per process; a second app in the
        # same process fails on it, so in-process test servers run without it.
        app.config.TOUCHUP = False
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = await app.create_server(
            sock=sock, return_asyncio_server=True, access_log=False, protocol=SERVER_PROTOCOL
        )
        assert server is not None
        await server.startup()
        await server.before_start()
        await server.after_start()
        srv = Server(app, "127.0.0.1", port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}"))
        started.append((server, sock, srv))
        return srv

    yield start
    for server, sock, srv in reversed(started):
        for ws in srv.sockets:
            await ws.close()
        await srv.http.aclose()
        await server.before_stop()
        await server.close()
        await server.after_stop()
        sock.close()


@pytest.fixture
async def server(start_server: Callable[..., Any]) -> Server:
    """A relay with default test settings."""
    srv: Server = await start_server()
    return srv
