"""Brokers, picked by the URL scheme of ``RELAY_BROKER_URL``.

``memory://`` serves one process; ``redis://`` / ``rediss://`` (one server),
``redis+sentinel://`` (a Sentinel-managed primary) and ``redis+cluster://``
(a Redis Cluster) let many processes and pods share one history. Each
backend's import is deferred so that the memory broker needs nothing else
installed.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ..config import Settings
from .base import Broker, HistoryPage, Listener, PublishResult

__all__ = [
    "Broker",
    "HistoryPage",
    "Listener",
    "PublishResult",
    "broker_from_settings",
    "check_broker_url",
    "create_broker",
]


def broker_from_settings(settings: Settings) -> Broker:
    """Create the broker ``settings`` describe (URL, history bounds, Redis pool, timeouts, replicas)."""
    return create_broker(
        settings.broker_url,
        settings.history_size,
        settings.history_ttl,
        prefix=settings.redis_prefix,
        max_connections=settings.redis_max_connections,
        connect_timeout=settings.redis_connect_timeout,
        command_timeout=settings.redis_command_timeout,
        ping_timeout=settings.redis_ping_timeout,
        keepalive_interval=settings.redis_keepalive_interval,
        min_replicas=settings.redis_min_replicas,
        min_replicas_timeout=settings.redis_min_replicas_timeout,
    )


def create_broker(url: str, history_size: int, history_ttl: int, prefix: str = "relay", **redis: Any) -> Broker:
    """Create the broker for ``url``; ``redis`` are :class:`~.redis.RedisBroker` options (ignored by memory)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        from .memory import MemoryBroker

        return MemoryBroker(history_size, history_ttl)
    if scheme.startswith("redis"):
        from .redis import RedisBroker
        from .redis_cluster import RedisClusterBroker
        from .redis_url import parse_redis_url

        broker_class = RedisClusterBroker if parse_redis_url(url).kind == "cluster" else RedisBroker
        return broker_class(url, history_size, history_ttl, prefix=prefix, **redis)
    raise ValueError(f"unsupported broker URL scheme {scheme!r}")


def check_broker_url(url: str, timeout: float = 2.0) -> str | None:
    """Why the broker at ``url`` cannot be used at all (a plain URL to a cluster node), or None.

    Run before serving. An unreachable server is not a reason: the instance
    starts, not ready, and connects when the server appears.
    """
    if urlsplit(url).scheme.lower() not in ("redis", "rediss"):
        return None
    import redis

    from .redis import CLUSTER_NODE
    from .redis_url import parse_redis_url

    target = parse_redis_url(url)
    host, port = target.hosts[0]
    # Database 0 for the probe: SELECT fails on a cluster node, which is what we look for.
    kwargs = {k: v for k, v in target.connection_kwargs().items() if k not in ("ssl", "db")}
    client = redis.Redis(
        host=host, port=port, ssl=target.tls, socket_connect_timeout=timeout, socket_timeout=timeout, **kwargs
    )
    try:
        info = client.info("cluster")
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()
    return CLUSTER_NODE if int(info.get("cluster_enabled", 0)) else None
