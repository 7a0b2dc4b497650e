"""Bugs the chaos soak found, each pinned by a deterministic test."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sanic.exceptions import WebsocketClosed

from service.brokers.redis import RedisBroker
from service.errors import BrokerUnavailable
from service.limits import FrameRate
from service.web.routes.ws import _read_frames


class _GoneSocket:
    """A Sanic websocket whose peer already left: ``recv`` raises as Sanic's does once the state is CLOSED."""

    async def recv(self) -> Any:
        raise WebsocketClosed("Cannot receive from websocket interface after it is closed.")


class _OpenSubscription:
    def __init__(self) -> None:
        self.closed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.close_calls: list[int] = []

    def close(self, code: int, reason: str) -> None:
        self.close_calls.append(code)


async def test_peer_gone_before_the_first_recv_is_a_departure_not_a_handler_failure() -> None:
    """A client that leaves while the server still reads history ends the reader quietly.

    Found by the chaos soak: a client (or the proxy) dropped the connection
    right after the handshake while the history read waited on a Redis that
    was restarting. Sanic had already marked the socket CLOSED (EOF received)
    without cancelling the handler, so the first ``recv`` raised
    ``WebsocketClosed``; the relay logged "websocket handler failed" with a
    traceback (an ERROR line for a routine departure) and recorded a 1011
    close of its own in the metrics.
    """
    sub = _OpenSubscription()
    await _read_frames(_GoneSocket(), sub, FrameRate(10))  # type: ignore[arg-type]
    assert sub.close_calls == []  # the handler's finally records the client's departure


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
