"""The container image, built from the Dockerfile and run as k8s/ runs it.

``scripts/image-smoke.sh`` builds the image with podman on a local Debian base (no
Docker engine, no registry) and names it in ``RELAY_TEST_IMAGE``; CI does that in
scripts/test-all.sh before the suite. Each container gets the ConfigMap's settings
(``RELAY_ENV=production``), the security flags of ``scripts/image-run-flags`` (the
Deployment's securityContext; tests/test_k8s_manifests.py compares the two), host
networking with ``RELAY_HOST=127.0.0.1`` and a free port, and is driven from outside
over real sockets: health, a WebSocket subscriber, two containers sharing a Redis the
test starts itself, and SIGTERM.

Without ``RELAY_TEST_IMAGE`` or podman these tests fail in CI (``CI=true``) and skip
elsewhere, saying how to run them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import PUBLISH_KEY, SECRET, make_token
from tests.redis_util import RedisServer, free_port, in_ci, redis_server_binary

ROOT = Path(__file__).resolve().parent.parent
RUN_FLAGS_FILE = ROOT / "scripts" / "image-run-flags"
CONFIGMAP = ROOT / "k8s" / "configmap.yaml"
AUTH = {"Authorization": f"Bearer {PUBLISH_KEY}"}
HOW_TO_RUN = "build and test it with `bash scripts/image-smoke.sh` (as root; it installs podman from Debian's packages)"
# Seconds for the SIGTERM test: the relay's drain and the engine's grace period after it.
SHUTDOWN_TIMEOUT = 4
GRACE = SHUTDOWN_TIMEOUT + 4
UID = 10001


def run_flags() -> list[str]:
    """The security options the image runs with: one per non-comment line of scripts/image-run-flags."""
    lines = (line.strip() for line in RUN_FLAGS_FILE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def configmap_env() -> dict[str, str]:
    """The settings k8s/configmap.yaml gives every relay pod."""
    data: dict[str, str] = yaml.safe_load(CONFIGMAP.read_text())["data"]
    return data


def _unavailable(message: str) -> None:
    if in_ci():
        pytest.fail(f"{message} (CI=true: the image must be built and run, not skipped)")
    pytest.skip(f"{message}; {HOW_TO_RUN}")


def podman(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``podman args``; raise with its stderr when ``check`` and it fails."""
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return done


@pytest.fixture(scope="module")
def image() -> str:
    """The image under test (``RELAY_TEST_IMAGE``); fails in CI, skips locally when it cannot run."""
    name = os.environ.get("RELAY_TEST_IMAGE", "")
    if not name:
        _unavailable("RELAY_TEST_IMAGE is not set: no image was built")
    if shutil.which("podman") is None:
        _unavailable("podman is not installed")
    if podman("image", "exists", name, check=False).returncode != 0:
        _unavailable(f"the image {name} is not in podman's store")
    return name


class Container:
    """One relay container on the host network, with the ConfigMap's settings and k8s/'s security context."""

    def __init__(self, image: str, **env: str) -> None:
        self.image = image
        self.port = free_port()
        self.name = f"relay-test-{uuid.uuid4().hex[:10]}"
        self.env = {
            **configmap_env(),
            "RELAY_HOST": "127.0.0.1",
            "RELAY_PORT": str(self.port),
            "RELAY_BROKER_URL": "memory://",
            "RELAY_JWT_SECRET": SECRET,
            "RELAY_PUBLISH_KEYS": PUBLISH_KEY,
            **env,
        }

    @property
    def base(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, execution_id: str, last_seq: int | None = None) -> str:
        """A subscriber's WebSocket URL for ``execution_id``."""
        url = f"ws://127.0.0.1:{self.port}/ws/executions/{execution_id}?token={make_token(execution_id)}"
        return url if last_seq is None else f"{url}&last_seq={last_seq}"

    def spawn(self) -> Container:
        """``podman run --detach``, without waiting for the relay."""
        env = [f"--env={key}={value}" for key, value in self.env.items()]
        podman("run", "--detach", f"--name={self.name}", "--network=host", *run_flags(), *env, self.image)
        return self

    def wait_ready(self, timeout: float = 30) -> Container:
        """Wait until ``/readyz`` answers 200 (raise, with the logs, if the container exits)."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.running():
                raise AssertionError(f"the container exited with {self.exit_code()}:\n{self.logs()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/readyz", timeout=1).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                raise AssertionError(f"/readyz not 200 after {timeout} s:\n{self.logs()}")
            time.sleep(0.1)

    def inspect(self, template: str) -> str:
        """One field of ``podman inspect`` (a Go template)."""
        return podman("inspect", "--format", template, self.name).stdout.strip()

    def running(self) -> bool:
        """Whether the container's process is still running."""
        return self.inspect("{{.State.Running}}") == "true"

    def exit_code(self) -> int:
        """The exit code of the container's process."""
        return int(self.inspect("{{.State.ExitCode}}"))

    def host_pid(self) -> int:
        """The host's pid of the container's first process (the relay)."""
        return int(self.inspect("{{.State.Pid}}"))

    def logs(self) -> str:
        """What the relay wrote (for assertion messages)."""
        done = podman("logs", self.name, check=False)
        return (done.stdout + done.stderr)[-5000:]

    def remove(self) -> None:
        """Kill and remove the container."""
        podman("rm", "--force", "--time=0", self.name, check=False)


@contextlib.contextmanager
def running(image: str, count: int = 1, **env: str) -> Iterator[list[Container]]:
    """``count`` containers started side by side and ready, removed afterwards."""
    containers = [Container(image, **env) for _ in range(count)]
    try:
        for container in containers:
            container.spawn()
        yield [container.wait_ready() for container in containers]
    finally:
        for container in containers:
            container.remove()


@pytest.fixture(scope="module")
def relay(image: str) -> Iterator[Container]:
    """One container shared by the read-only checks."""
    with running(image) as (container,):
        yield container


async def publish(http: httpx.AsyncClient, container: Container, execution_id: str, **data: Any) -> int:
    """Publish one progress event through the internal API; its seq."""
    body = {"event": "progress", "data": {"progress": 10, "stage": "running", **data}}
    r = await http.post(f"{container.base}/internal/v1/executions/{execution_id}/events", json=body, headers=AUTH)
    assert r.status_code == 202, r.text
    seq: int = r.json()["seq"]
    return seq


async def subscribe(container: Container, execution_id: str, last_seq: int | None = None) -> ClientConnection:
    """A WebSocket subscriber from outside the container, past its ``connected`` frame."""
    ws = await connect(container.ws_url(execution_id, last_seq), open_timeout=5)
    hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert hello["type"] == "connected", hello
    return ws


async def next_seq(ws: ClientConnection) -> int:
    """The seq of the next frame the subscriber receives."""
    seq: int = json.loads(await asyncio.wait_for(ws.recv(), 5))["seq"]
    return seq


def proc_status(pid: int) -> dict[str, str]:
    """``/proc/<pid>/status`` as seen by the host's kernel."""
    fields = (line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {key: value.strip() for key, value in fields}


def test_the_relay_runs_unprivileged_on_a_read_only_root(relay: Container) -> None:
    """As the kernel sees it: uid/gid 10001, no capabilities, no_new_privs, seccomp, read-only root, tmpfs /tmp."""
    pid = relay.host_pid()
    status = proc_status(pid)
    assert status["Uid"].split() == [str(UID)] * 4
    assert status["Gid"].split() == [str(UID)] * 4
    for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[caps], 16) == 0, (caps, status[caps])
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2", "the engine's default seccomp profile (RuntimeDefault) is in force"
    table = (line.split() for line in Path(f"/proc/{pid}/mounts").read_text().splitlines())
    mounts = {fields[1]: fields for fields in table}
    assert "ro" in mounts["/"][3].split(","), mounts["/"]
    assert mounts["/tmp"][2] == "tmpfs" and "rw" in mounts["/tmp"][3].split(","), mounts["/tmp"]
    probe = (
        "import os, tempfile\n"
        "try:\n    open('/app/x', 'w')\nexcept OSError as e:\n    print(e.errno)\n"
        "with tempfile.NamedTemporaryFile(dir='/tmp') as f:\n    f.write(b'ok')\n"
    )
    done = podman("exec", relay.name, "python3", "-c", probe)
    assert done.stdout.split() == ["30"], "writing to the root filesystem must fail with EROFS"


def test_health_endpoints_and_the_images_healthcheck_answer(relay: Container) -> None:
    """/healthz and /readyz answer 200 from outside, and the image's own HEALTHCHECK (python3) passes."""
    assert httpx.get(f"{relay.base}/healthz", timeout=2).status_code == 200
    assert httpx.get(f"{relay.base}/readyz", timeout=2).status_code == 200
    healthcheck = podman("image", "inspect", "--format", "{{json .Config.Healthcheck}}", relay.image).stdout
    assert "/healthz" in healthcheck, "--format docker keeps the Dockerfile's HEALTHCHECK"
    done = podman("healthcheck", "run", relay.name, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


async def test_a_subscriber_outside_receives_an_event_published_through_the_internal_api(relay: Container) -> None:
    """A WebSocket subscriber on the host receives, in order, the events published to the container."""
    eid = f"image-{uuid.uuid4().hex[:8]}"
    ws = await subscribe(relay, eid)
    async with httpx.AsyncClient(timeout=5) as http:
        seqs = [await publish(http, relay, eid, progress=p) for p in (10, 20)]
    assert [await next_seq(ws), await next_seq(ws)] == seqs == [1, 2]
    await ws.close()


@pytest.fixture(scope="module")
def redis_of_the_test() -> Iterator[RedisServer]:
    """A redis-server of this module's own on a free port (never the shared 6379)."""
    server = RedisServer(redis_server_binary())
    server.start()
    try:
        yield server
    finally:
        server.close()


async def test_two_containers_on_one_redis_share_the_history(image: str, redis_of_the_test: RedisServer) -> None:
    """A subscriber leaves container A after seq 3 and resumes on B with last_seq=3: it gets 4.. and nothing twice."""
    env = {"RELAY_BROKER_URL": redis_of_the_test.url, "RELAY_REDIS_PREFIX": f"image-{uuid.uuid4().hex[:8]}"}
    eid = "shared-1"
    with running(image, 2, **env) as (a, b):
        async with httpx.AsyncClient(timeout=5) as http:
            ws = await subscribe(a, eid)
            for _ in range(3):
                await publish(http, a, eid)
            seen = [await next_seq(ws) for _ in range(3)]
            await ws.close()
            for _ in range(2):
                await publish(http, a, eid)
            ws = await subscribe(b, eid, last_seq=seen[-1])
            await publish(http, b, eid)
            seen += [await next_seq(ws) for _ in range(3)]
            await ws.close()
    assert seen == [1, 2, 3, 4, 5, 6]
    with contextlib.closing(redis_of_the_test.client()) as client:
        keys = client.keys(f"{env['RELAY_REDIS_PREFIX']}:*")
    assert keys, "the history lives in the test's Redis"


async def test_sigterm_closes_sockets_with_1012_and_exits_zero_within_the_grace_period(image: str) -> None:
    """``podman stop`` (SIGTERM, SIGKILL after the grace period): the socket gets 1012, the relay exits 0 in time."""
    with running(image, RELAY_SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT)) as (container,):
        ws = await subscribe(container, "stopping-1")
        started = time.monotonic()
        stop = asyncio.create_task(asyncio.to_thread(podman, "stop", f"--time={GRACE}", container.name))
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), GRACE)
        await stop
        elapsed = time.monotonic() - started
        assert ws.close_code == 1012
        assert container.exit_code() == 0, container.logs()
        assert elapsed < GRACE, f"stopped after {elapsed:.1f} s: the engine had to kill it"
