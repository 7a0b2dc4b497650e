"""Bugs the chaos soak found, each pinned by a deterministic test."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service.brokers.redis import RedisBroker
from service.errors import BrokerUnavailable
from service.limits import FrameRate
from service.web.routes.ws import _Reader


class _OpenSubscription:
    def __init__(self) -> None:
        self.disconnect = None
        self.close_calls: list[Any] = []

    def close(self, disconnect: Any) -> None:
        self.close_calls.append(disconnect)


async def test_peer_gone_before_the_first_read_is_a_departure_not_a_handler_failure() -> None:
    """A client that leaves while the server still reads history ends the handler quietly.

    Found by the chaos soak: a client (or the proxy) dropped the connection
    right after the handshake while the history read waited on a Redis that
    was restarting. Sanic had already marked the socket CLOSED (EOF received)
    without cancelling the handler, so the first ``recv`` raised
    ``WebsocketClosed``; the relay logged "websocket handler failed" with a
    traceback (an ERROR line for a routine departure) and recorded a 1011
    close of its own in the metrics. Reads are now handed to a listener, which
    gets the peer's departure (held until it listens) as ``None``: it ends the
    handler as a departure (cancelled, so its ``finally`` records the client's
    close) and closes nothing itself.
    """
    sub = _OpenSubscription()
    handler = asyncio.get_running_loop().create_task(asyncio.sleep(3600))
    _Reader(sub, FrameRate(10), handler)(None)  # type: ignore[arg-type]
    with pytest.raises(asyncio.CancelledError):
        await handler
    assert sub.close_calls == []


class _TornDownPubSub:
    """redis-py's PubSub while its connection is being torn down: the stream writer is already None."""

    async def subscribe(self, *channels: str) -> None:
        raise AttributeError("'NoneType' object has no attribute 'writelines'")

    async def unsubscribe(self, *channels: str) -> None:
        raise AttributeError("'NoneType' object has no attribute 'writelines'")

    async def aclose(self) -> None:
        pass


async def test_pubsub_connection_torn_down_under_subscribe_and_unsubscribe() -> None:
    """During a Redis restart redis-py may raise AttributeError from a connection it is tearing down.

    Found by the chaos soak: the hub logged "unsubscribe of an execution
    failed" with that traceback, and the same error on subscribe escaped as a
    handler failure instead of the broker's 503/1011 answer. Unsubscribe
    ignores it (the connection is rebuilt without the channel); subscribe
    reports the broker unavailable.
    """
    broker = RedisBroker("redis://127.0.0.1:1/0", 100, 3600, prefix="torn")  # never connects
    try:
        broker._pubsub = _TornDownPubSub()  # type: ignore[assignment]
        broker._connected = True
        broker._channels[broker.channel("e1")] = "e1"
        await broker.unsubscribe("e1")
        assert broker.channel("e1") not in broker._channels
        with pytest.raises(BrokerUnavailable):
            await broker.subscribe("e2")
        assert broker.channel("e2") not in broker._channels
    finally:
        broker._pubsub = None
        await broker.close()
