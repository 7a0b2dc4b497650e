"""Redis for the tests: the shared server, throwaway servers, service processes.

``redis_url`` points at ``RELAY_TEST_REDIS_URL`` (default
``redis://127.0.0.1:6379/15``). When that server is unreachable the tests
that need it *fail* in CI (``CI=true``: they must run there) and *skip*
locally with a message saying how to run them. Each test gets its own key
prefix (``redis_prefix``) and its keys are deleted afterwards, so tests never
``FLUSHDB`` and can share a database with anything else.

Import the fixtures into a test module to use them::

    from tests.redis_util import redis_prefix, redis_url  # noqa: F401
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import PUBLISH_KEY, SECRET

__all__ = [
    "REDIS_URL",
    "RedisServer",
    "ServiceProcess",
    "free_port",
    "redis_prefix",
    "redis_server",
    "redis_url",
    "require_redis",
    "wait_until",
]

REDIS_URL = os.environ.get("RELAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
ROOT = Path(__file__).resolve().parent.parent
HOW_TO_RUN = (
    "run `bash scripts/ensure-redis.sh` (or `redis-server --port 6379 --save '' --appendonly no`, or "
    "`docker run -p 6379:6379 redis:7`), or point RELAY_TEST_REDIS_URL at a server "
    "(tests use db 15 and keys under their own prefixes)"
)
_reachable: dict[str, str | None] = {}


def in_ci() -> bool:
    """Whether we run in CI, where Redis tests must not skip."""
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def _unavailable(message: str) -> None:
    if in_ci():
        pytest.fail(f"{message} (CI=true: Redis tests must run, not skip; .ci/run should start Redis)")
    pytest.skip(f"{message}; {HOW_TO_RUN}")


def require_redis(url: str = REDIS_URL) -> str:
    """Return ``url`` if a Redis answers there; otherwise fail (CI) or skip (locally)."""
    if url not in _reachable:
        try:
            client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0)
            try:
                client.ping()
            finally:
                client.close()
            _reachable[url] = None
        except redis.RedisError as exc:
            _reachable[url] = f"{exc.__class__.__name__}: {exc}"
    error = _reachable[url]
    if error is not None:
        _unavailable(f"Redis at {url} is unreachable ({error})")
    return url


@pytest.fixture
def redis_url() -> str:
    """The URL of the shared test Redis (fails in CI, skips locally when unreachable)."""
    return require_redis()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix unique to this test; its keys are deleted afterwards."""
    prefix = f"relaytest-{uuid.uuid4().hex[:12]}"
    yield prefix
    delete_prefix(redis_url, prefix)


def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` (SCAN, never FLUSHDB)."""
    with contextlib.suppress(redis.RedisError):
        client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=5.0)
        try:
            batch = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            for i in range(0, len(batch), 500):
                client.delete(*batch[i : i + 500])
        finally:
            client.close()


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: Any, timeout: float, what: str) -> None:
    """Call ``check`` until it is true; fail after ``timeout`` seconds naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout} s")
        time.sleep(0.05)


class RedisServer:
    """A throwaway ``redis-server`` on a free port, stopped and restarted at will.

    Data lives in a temporary directory; :meth:`stop` with ``save=True``
    writes a snapshot first so that :meth:`start` brings the same data back,
    like a Redis with persistence restarting.
    """

    def __init__(self, binary: str, password: str | None = None) -> None:
        self.binary = binary
        self.password = password
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="relay-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:<port>/0``."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A synchronous client for this server."""
        return redis.Redis.from_url(self.url, socket_connect_timeout=1.0, socket_timeout=5.0)

    def _ping(self) -> bool:
        try:
            client = self.client()
            try:
                return bool(client.ping())
            finally:
                client.close()
        except redis.RedisError:
            return False

    def persistence(self) -> list[str]:
        """The command-line options for what survives a restart (an RDB only on ``SHUTDOWN SAVE``)."""
        return ["--appendonly", "no", "--dbfilename", "dump.rdb", "--loglevel", "warning"]

    def start(self, timeout: float = 10.0) -> None:
        """Start (or restart, on the same port and data directory)."""
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            self.dir,
            "--daemonize",
            "no",
            *self.persistence(),
            *(("--requirepass", self.password) if self.password else ()),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}")
            return self._ping()

        wait_until(ready, timeout, f"redis-server on port {self.port}")

    def stop(self, save: bool = False) -> None:
        """Stop the server: ``SHUTDOWN SAVE`` when ``save``, else ``kill -9``."""
        if self.proc is None:
            return
        if save:
            with contextlib.suppress(redis.RedisError):
                client = self.client()
                client.shutdown(save=True)
        if self.proc.poll() is None and not save:
            self.proc.kill()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def close(self) -> None:
        """Kill the server and remove its data."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_server_binary() -> str:
    """The ``redis-server`` binary (``RELAY_TEST_REDIS_SERVER`` or on PATH); fail in CI, skip locally."""
    binary = os.environ.get("RELAY_TEST_REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.access(binary, os.X_OK):
        _unavailable("redis-server is not installed (needed to stop and restart a Redis of the test's own)")
    return binary


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A running throwaway Redis on a free port, killed at teardown."""
    server = RedisServer(redis_server_binary())
    server.start()
    try:
        yield server
    finally:
        server.close()


class ServiceProcess:
    """``python -m service`` in its own process, on a free port."""

    def __init__(self, **env: str) -> None:
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="relay-service-", suffix=".log", delete=False)  # noqa: SIM115
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RELAY_")},
            "PYTHONPATH": str(ROOT),
            "RELAY_HOST": "127.0.0.1",
            "RELAY_PORT": str(self.port),
            "RELAY_JWT_SECRET": SECRET,
            "RELAY_PUBLISH_KEYS": PUBLISH_KEY,
            "RELAY_ACCESS_LOG": "false",
            "RELAY_LOG_LEVEL": "WARNING",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, execution_id: str, token: str, last_seq: int | None = None) -> str:
        """The WebSocket URL of ``execution_id``."""
        url = f"ws://127.0.0.1:{self.port}/ws/executions/{execution_id}?token={token}"
        return url if last_seq is None else f"{url}&last_seq={last_seq}"

    def spawn(self) -> ServiceProcess:
        """Start the process without waiting for it."""
        # A temporary cwd: a developer's .env must not leak into the test.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service"],
            env=self.env,
            cwd=tempfile.gettempdir(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 30.0) -> ServiceProcess:
        """Wait until ``/readyz`` answers 200 (raise if the process exits first)."""

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited with {self.proc.returncode}:\n{self.output()}")
            try:
                return httpx.get(f"{self.base}/readyz", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout, f"service on port {self.port}")
        return self

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        """Start and wait until ``/readyz`` answers 200."""
        return self.spawn().wait_ready(timeout)

    def output(self) -> str:
        """What the process wrote so far (for assertion messages)."""
        return Path(self.log.name).read_text(errors="replace")[-5000:]

    def kill(self) -> None:
        """``kill -9`` the whole process group (workers included)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM, then kill if it does not exit within 10 s; remove the log."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)
