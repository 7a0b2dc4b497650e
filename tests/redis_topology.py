"""Redis topologies for the tests: a 3-master cluster, and a primary + replica + 3 Sentinels.

Every process is the test's own ``redis-server`` on free loopback ports (never
6379), started and killed here; the machine's Redis is never touched. Use the
fixtures::

    from tests.redis_topology import redis_cluster, sentinel_setup  # noqa: F401
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.redis_util import RedisServer, redis_server_binary

__all__ = ["ClusterSetup", "SentinelSetup", "TopologyServer", "redis_cluster", "sentinel_setup", "wait_until"]


def wait_until(check: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    """Poll ``check`` until it is true; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout} s")
        time.sleep(step)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        port = random.randint(20000, 40000)
        if _port_free(port) and _port_free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


class TopologyServer(RedisServer):
    """A throwaway ``redis-server`` with extra options (cluster mode, replica of another)."""

    def __init__(self, binary: str, extra: list[str] | None = None, port: int | None = None) -> None:
        super().__init__(binary)
        if port is not None:
            self.port = port
        self.extra = extra or []

    def persistence(self) -> list[str]:
        """No persistence, plus the extra options."""
        return ["--appendonly", "no", "--loglevel", "warning", *self.extra]

    def pause(self) -> None:
        """SIGSTOP: the process stays, answers nothing (a cut link, a stalled replica)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def info(self, section: str) -> dict[str, object]:
        """``INFO <section>`` as a dict (asked again when a Sentinel reconfiguring the server killed our client)."""
        for attempt in range(3):
            client = self.client()
            try:
                return dict(client.info(section))
            except redis.ConnectionError:
                if attempt == 2:
                    raise
            finally:
                client.close()
        raise AssertionError("unreachable")


class ClusterSetup:
    """Three masters, no replicas, all 16384 slots assigned (``redis-cli --cluster create``)."""

    def __init__(self, binary: str) -> None:
        self.nodes = [
            TopologyServer(binary, ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"], port=cluster_port())
            for _ in range(3)
        ]
        for node in self.nodes:
            node.extra += ["--cluster-config-file", str(Path(node.dir) / "nodes.conf")]

    def start(self) -> None:
        """Start the nodes, create the cluster and wait until every node says ``cluster_state:ok``."""
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes), "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_until(
            lambda: all(n.client().cluster("info")["cluster_state"] == "ok" for n in self.nodes), 30, "cluster state ok"
        )
        wait_until(self._agreed, 30, "every node sees the same slot owners")

    def _agreed(self) -> bool:
        views = [tuple(sorted(map(str, n.client().cluster("slots")))) for n in self.nodes]
        return len(set(views)) == 1

    @property
    def url(self) -> str:
        """``redis+cluster://`` with every node as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def client(self, node: TopologyServer) -> redis.Redis:
        """A decoding client for one node."""
        return redis.Redis(port=node.port, decode_responses=True, socket_timeout=5)

    def node_id(self, node: TopologyServer) -> str:
        """The cluster node id of ``node``."""
        return str(self.client(node).execute_command("CLUSTER MYID"))

    def owner(self, slot: int) -> TopologyServer:
        """The node that owns ``slot``."""
        for start, end, (_host, port, *_), *_ in self.client(self.nodes[0]).execute_command("CLUSTER SLOTS"):
            if start <= slot <= end:
                return next(n for n in self.nodes if n.port == int(port))
        raise LookupError(slot)

    def keyslot(self, key: str) -> int:
        """``CLUSTER KEYSLOT key``."""
        return int(self.client(self.nodes[0]).execute_command("CLUSTER KEYSLOT", key))

    def migrate(self, slot: int, target: TopologyServer) -> None:
        """Move ``slot`` and its keys to ``target`` as ``redis-cli --cluster reshard`` does."""
        source = self.owner(slot)
        src, dst = self.client(source), self.client(target)
        src_id, dst_id = self.node_id(source), self.node_id(target)
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
        while True:
            keys = src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100)
            if not keys:
                break
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        for node in (target, source, *(n for n in self.nodes if n not in (source, target))):
            self.client(node).execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
        wait_until(self._agreed, 30, "every node sees the migrated slot")

    def publish_messages_sent(self) -> int:
        """Sum of ``cluster_stats_messages_publish_sent`` over the nodes (classic PUBLISH is broadcast)."""
        return sum(
            int(self.client(n).cluster("info").get("cluster_stats_messages_publish_sent", 0)) for n in self.nodes
        )

    def close(self) -> None:
        """Kill every node and remove its data."""
        for node in self.nodes:
            node.close()


class SentinelSetup:
    """A primary, one replica and three Sentinels watching them as master ``relaymaster``."""

    MASTER = "relaymaster"

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.primary = TopologyServer(binary)
        self.replica = TopologyServer(binary, ["--replicaof", "127.0.0.1", str(self.primary.port)])
        self.sentinels: list[tuple[int, subprocess.Popen[bytes] | None, str]] = []

    def start(self) -> None:
        """Start primary, replica (synced) and Sentinels (each seeing both the replica and the others)."""
        self.primary.start()
        self.replica.start()
        wait_until(lambda: self.replica.info("replication").get("master_link_status") == "up", 20, "replica synced")
        for _ in range(3):
            port = cluster_port()
            folder = tempfile.mkdtemp(prefix="relay-sentinel-")
            conf = Path(folder) / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
                f"sentinel monitor {self.MASTER} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {self.MASTER} 500\n"
                f"sentinel failover-timeout {self.MASTER} 3000\n"
                f"sentinel parallel-syncs {self.MASTER} 1\n"
            )
            proc = subprocess.Popen(
                [self.binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            self.sentinels.append((port, proc, folder))
        wait_until(self._sentinels_agree, 30, "sentinels see the replica and each other")

    def sentinel_client(self, port: int) -> redis.Redis:
        """A decoding client for one Sentinel."""
        return redis.Redis(port=port, decode_responses=True, socket_timeout=2)

    def _sentinels_agree(self) -> bool:
        try:
            for port, _, _ in self.sentinels:
                state = self.sentinel_client(port).sentinel_master(self.MASTER)
                if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                    return False
        except redis.RedisError:
            return False
        return True

    @property
    def url(self) -> str:
        """``redis+sentinel://`` naming the three Sentinels and the master."""
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p, _, _ in self.sentinels) + f"/{self.MASTER}/0"

    def master_port(self) -> int:
        """The primary's port according to the first Sentinel that answers."""
        for port, _, _ in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                return int(self.sentinel_client(port).sentinel_get_master_addr_by_name(self.MASTER)[1])
        raise RuntimeError("no Sentinel answered")

    def wait_promoted(self, server: TopologyServer, timeout: float = 20.0) -> None:
        """Wait until every Sentinel names ``server`` as the primary and it says role master."""

        def promoted() -> bool:
            try:
                ports = {
                    int(self.sentinel_client(p).sentinel_get_master_addr_by_name(self.MASTER)[1])
                    for p, _, _ in self.sentinels
                }
                return ports == {server.port} and server.info("replication").get("role") == "master"
            except (redis.RedisError, TypeError):
                return False

        wait_until(promoted, timeout, f"port {server.port} promoted")

    def close(self) -> None:
        """Kill everything and remove the data."""
        for _, proc, folder in self.sentinels:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(5)
            shutil.rmtree(folder, ignore_errors=True)
        for server in (self.primary, self.replica):
            with contextlib.suppress(Exception):
                server.resume()
            server.close()


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[ClusterSetup]:
    """A running 3-master cluster on free ports (one per test module)."""
    cluster = ClusterSetup(redis_server_binary())
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def sentinel_setup() -> Iterator[SentinelSetup]:
    """A primary, a replica and three Sentinels, fresh for each test (failovers change them)."""
    setup = SentinelSetup(redis_server_binary())
    try:
        setup.start()
        yield setup
    finally:
        setup.close()
