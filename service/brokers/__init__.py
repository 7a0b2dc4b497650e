"""Brokers, picked by the URL scheme of ``RELAY_BROKER_URL``.

``memory://`` serves one process; ``redis://`` and ``rediss://`` let many
processes and pods share one history. Each backend's import is deferred so
that the memory broker needs nothing else installed.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ..config import Settings
from .base import Broker, HistoryPage, Listener, PublishResult

__all__ = ["Broker", "HistoryPage", "Listener", "PublishResult", "broker_from_settings", "create_broker"]


def broker_from_settings(settings: Settings) -> Broker:
    """Create the broker ``settings`` describe (URL, history bounds, Redis pool and timeouts)."""
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
    )


def create_broker(url: str, history_size: int, history_ttl: int, prefix: str = "relay", **redis: Any) -> Broker:
    """Create the broker for ``url``; ``redis`` are :class:`~.redis.RedisBroker` options (ignored by memory)."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from .memory import MemoryBroker

        return MemoryBroker(history_size, history_ttl)
    if scheme in ("redis", "rediss"):
        from .redis import RedisBroker

        return RedisBroker(url, history_size, history_ttl, prefix=prefix, **redis)
    raise ValueError(f"unsupported broker URL scheme {scheme!r}")
