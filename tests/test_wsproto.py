"""The WebSocket protocol extension (service/web/wsproto.py) without a server: negotiation, frames, events.

The real handshake and real browsers are covered by tests/test_compression.py.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory, PerMessageDeflate
from websockets.frames import Frame, Opcode

from service.web import wsproto
from service.web.wsproto import LeanEvent, compression_extensions


def frames(n: int) -> list[bytes]:
    """Event frames that repeat most of their keys, as the relay's do, with a few short ones between."""
    out = []
    for seq in range(1, n + 1):
        body = {"type": "diagnosis_update", "execution_id": "exec-1", "seq": seq, "event": "progress"}
        out.append(json.dumps({**body, "data": {"progress": seq, "stage": f"stage-{seq % 3}"}}).encode())
        if seq % 4 == 0:
            out.append(b'{"type":"pong"}')  # below the minimum size: sent as is
    return out


def negotiate(
    offer: ClientPerMessageDeflateFactory, context_takeover: bool
) -> tuple[PerMessageDeflate, PerMessageDeflate]:
    """Run the permessage-deflate negotiation both sides do; return (server extension, client extension)."""
    (factory,) = compression_extensions(True, 64, context_takeover)
    response, server = factory.process_request_params(offer.get_request_params(), [])
    client = offer.process_response_params(response, [])
    assert isinstance(server, PerMessageDeflate) and isinstance(client, PerMessageDeflate)
    return server, client


def test_compression_off_offers_no_extension() -> None:
    """RELAY_WS_COMPRESSION=false: no extension factory at all."""
    assert compression_extensions(False, 64, True) == []


@pytest.mark.parametrize("context_takeover", [True, False])
@pytest.mark.parametrize("window_bits", [None, 9])
def test_every_message_decodes_on_a_standard_client(context_takeover: bool, window_bits: int | None) -> None:
    """What the server extension encodes, websockets' own client decodes to the same bytes, in either mode."""
    offer = ClientPerMessageDeflateFactory(client_max_window_bits=True, server_max_window_bits=window_bits)
    server, client = negotiate(offer, context_takeover)
    expected_class = "_SharedContextDeflate" if context_takeover else "_MinSizeDeflate"
    assert type(server).__name__ == expected_class
    assert server.remote_no_context_takeover  # the client never keeps a context: no inflate window here
    for data in frames(40):
        wire = server.encode(Frame(Opcode.TEXT, data))
        assert wire.rsv1 == (len(data) >= 64)  # short messages go uncompressed
        assert client.decode(wire).data == data


def test_context_takeover_compresses_harder_than_each_message_alone() -> None:
    """Frames that repeat their keys shrink more when each may refer back to the previous one."""
    sizes = {}
    for takeover in (True, False):
        server, _ = negotiate(ClientPerMessageDeflateFactory(), takeover)
        sizes[takeover] = sum(len(server.encode(Frame(Opcode.TEXT, data)).data) for data in frames(40))
    assert sizes[True] < sizes[False] * 0.7


def test_control_and_fragmented_frames_pass_unchanged() -> None:
    """Pings, pongs, closes and fragments are never compressed (and never enter the client's window)."""
    server, _ = negotiate(ClientPerMessageDeflateFactory(), True)
    big = b"x" * 500
    for frame in (Frame(Opcode.PING, big), Frame(Opcode.CLOSE, b"\x03\xe8"), Frame(Opcode.TEXT, big, fin=False)):
        assert server.encode(frame) is frame
    assert server.window == b""


def test_sockets_with_the_same_history_share_one_compression() -> None:
    """Two sockets sent the same messages get the same compressed bytes from one shared entry."""
    first, _ = negotiate(ClientPerMessageDeflateFactory(), True)
    second, _ = negotiate(ClientPerMessageDeflateFactory(), True)
    for data in frames(5):
        a, b = first.encode(Frame(Opcode.TEXT, data)), second.encode(Frame(Opcode.TEXT, data))
        assert a.data == b.data
        assert (len(data) < 64) or a.data is b.data  # the very same object: compressed once


def test_the_shared_cache_is_bounded() -> None:
    """Past its limit the cache starts over instead of growing."""
    cache = wsproto._Compressed()
    cache.limit = 3
    for i in range(10):
        payload, following = cache.get(b"", f"message {i}".encode() * 10, 15)
        assert payload and following.endswith(f"message {i}".encode())
        assert len(cache.entries) <= 3


async def test_lean_event_behaves_like_asyncio_event() -> None:
    """Setting wakes every waiter, wait returns at once while set, clear resets, a cancelled waiter leaves no trace."""
    event = LeanEvent()
    assert not event.is_set()
    waiters = [asyncio.create_task(event.wait()) for _ in range(3)]
    cancelled = asyncio.create_task(event.wait())
    await asyncio.sleep(0)  # one loop turn: every task runs to its wait
    assert event._waiters is not None and len(event._waiters) == 4
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    event.set()
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert event.is_set() and await asyncio.wait_for(event.wait(), 1)
    assert event._waiters == []
    event.clear()
    late = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    assert not late.done()
    event.set()
    assert await asyncio.wait_for(late, 1)
