"""Brokers, picked by the URL scheme of ``RELAY_BROKER_URL``.

``memory://`` serves one process; ``redis://`` and ``rediss://`` let many
processes and pods share one history. Each backend's import is deferred so
that the memory broker needs nothing else installed.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .base import Broker, HistoryPage, Listener, PublishResult

__all__ = ["Broker", "HistoryPage", "Listener", "PublishResult", "create_broker"]


def create_broker(url: str, history_size: int, history_ttl: int, prefix: str = "relay") -> Broker:
    """Create the broker for ``url``."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from .memory import MemoryBroker

        return MemoryBroker(history_size, history_ttl)
    if scheme in ("redis", "rediss"):
        from .redis import RedisBroker

        return RedisBroker(url, history_size, history_ttl, prefix=prefix)
    raise ValueError(f"unsupported broker URL scheme {scheme!r}")
