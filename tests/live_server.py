"""A relay served from a background thread, for synchronous property-based tests.

Hypothesis and Schemathesis drive plain synchronous test functions and run
hundreds of examples; starting a server per example (or per function, with
the async ``start_server`` fixture) would dominate the run time. This starts
one real server, on its own event loop in a daemon thread, bound to a free
port exactly like ``tests.conftest.start_server`` does, and shares it across
a test module.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from service.config import Settings
from service.web.app import SERVER_PROTOCOL, create_app

__all__ = ["LiveServer"]

T = TypeVar("T")


class LiveServer:
    """One relay on 127.0.0.1:<free port>, served by a thread of its own."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app: Any = None
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="live-relay", daemon=True)
        self._server: Any = None
        self._sock: socket.socket | None = None

    @property
    def base(self) -> str:
        """The base URL for HTTP clients."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_base(self) -> str:
        """The base URL for WebSocket clients."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def relay(self) -> Any:
        """The running relay (touch it only through :meth:`call`)."""
        return self.app.ctx.relay

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run ``coro`` on the server's loop and return its result."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def start(self) -> LiveServer:
        """Start serving; returns when the server accepts connections."""
        self._thread.start()
        self.call(self._start())
        return self

    def stop(self) -> None:
        """Stop serving and end the thread."""
        try:
            self.call(self._stop(), timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    async def _start(self) -> None:
        self.app = create_app(self.settings)
        self.app.config.TOUCHUP = False  # see tests.conftest.start_server
        sock = self._sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        server = self._server = await self.app.create_server(
            sock=sock, return_asyncio_server=True, access_log=False, protocol=SERVER_PROTOCOL
        )
        assert server is not None
        await server.startup()
        await server.before_start()
        await server.after_start()

    async def _stop(self) -> None:
        server = self._server
        await server.before_stop()
        await server.close()
        await server.after_stop()
        if self._sock is not None:
            self._sock.close()
