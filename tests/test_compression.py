"""permessage-deflate: negotiated with clients that offer it, configurable, fewer bytes on the wire."""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.asyncio.client import connect

from tests.conftest import Server, StartServer, make_token, recv_json, recv_until_closed


class CountingProxy:
    """A TCP proxy in front of the server that counts the bytes sent to the client."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.to_client = 0
        self._srv: asyncio.Server | None = None

    async def start(self) -> int:
        self._srv = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._srv.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.server.host, self.server.port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: bool) -> None:
            while data := await src.read(65536):
                if count:
                    self.to_client += len(data)
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True), return_exceptions=True)

    def close(self) -> None:
        if self._srv is not None:
            self._srv.close()


async def watch_execution(
    server: Server, execution_id: str, **client: Any
) -> tuple[int, list[dict[str, Any]], list[Any]]:
    """Receive a whole execution through a counting proxy: (bytes to client, frames, negotiated extensions)."""
    proxy = CountingProxy(server)
    port = await proxy.start()
    url = f"ws://127.0.0.1:{port}/ws/executions/{execution_id}?token={make_token(execution_id)}"
    async with connect(url, **client) as ws:
        extensions = list(ws.protocol.extensions)
        frames = await recv_until_closed(ws)
    proxy.close()
    return proxy.to_client, frames, extensions


async def publish_demo_like(server: Server, execution_id: str) -> None:
    """A realistic execution: progress per platform with Chinese status texts, results, a report."""
    platforms = ["文心一言", "通义千问", "Kimi", "豆包", "DeepSeek"]
    for i, name in enumerate(platforms):
        await server.publish(
            execution_id,
            "progress",
            {
                "progress": 10 + i * 15,
                "stage": "ai_fetching",
                "status": "processing",
                "status_text": f"正在查询 {name}",
            },
        )
        await server.publish(
            execution_id,
            "result",
            {
                "platform": name,
                "mentioned": True,
                "rank": i + 1,
                "summary": f"{name} 的回答提到了品牌，排名第 {i + 1}。" * 3,
            },
        )
    await server.publish(
        execution_id,
        "complete",
        {"report": {"score": 87, "platforms": platforms, "advice": "继续优化品牌在 AI 平台上的可见度。" * 5}},
    )


async def test_compression_is_negotiated_and_saves_bytes(server: Server) -> None:
    """A client offering permessage-deflate gets it; the same events cost fewer bytes than without."""
    await publish_demo_like(server, "c1")
    plain_bytes, plain_frames, plain_ext = await watch_execution(server, "c1", compression=None)
    deflate_bytes, deflate_frames, deflate_ext = await watch_execution(server, "c1")
    assert plain_ext == [] and [e.name for e in deflate_ext] == ["permessage-deflate"]
    assert deflate_frames == plain_frames and len(plain_frames) == 12
    assert deflate_bytes < plain_bytes * 0.8, (deflate_bytes, plain_bytes)


async def test_compression_can_be_turned_off(start_server: StartServer) -> None:
    """RELAY_WS_COMPRESSION=false never negotiates, even when the client offers it."""
    server = await start_server(RELAY_WS_COMPRESSION="false")
    await server.publish("c1", "complete", {})
    _, frames, extensions = await watch_execution(server, "c1")
    assert extensions == [] and frames[-1]["event"] == "complete"


async def test_context_takeover_mode_compresses_harder(start_server: StartServer) -> None:
    """With context takeover on, repeated keys compress across frames: fewer bytes than per-frame mode."""
    per_frame = await start_server(RELAY_WS_COMPRESSION_CONTEXT_TAKEOVER="false")
    shared = await start_server()
    for srv in (per_frame, shared):
        await publish_demo_like(srv, "c1")
    per_frame_bytes, frames_a, _ = await watch_execution(per_frame, "c1")
    shared_bytes, frames_b, _ = await watch_execution(shared, "c1")
    assert [f.get("data") for f in frames_a] == [f.get("data") for f in frames_b]
    assert shared_bytes < per_frame_bytes


async def test_small_frames_stay_uncompressed_and_decode(start_server: StartServer) -> None:
    """Frames under the minimum size are sent as they are; the client decodes both kinds."""
    server = await start_server(RELAY_WS_COMPRESSION_MIN_SIZE="100000")
    ws = await server.connect("c1")
    assert [e.name for e in ws.protocol.extensions] == ["permessage-deflate"]
    assert (await recv_json(ws))["type"] == "connected"
    await server.publish("c1", "result", {"x": "y" * 500})
    assert (await recv_json(ws))["data"] == {"x": "y" * 500}


async def test_shared_context_decodes_with_a_small_window_and_mixed_sizes(start_server: StartServer) -> None:
    """Context takeover as a strict client checks it: a 512-byte server window, frames longer than the
    window, frames too short to compress in between, replayed and live; every frame decodes intact.
    """
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

    server = await start_server(RELAY_WS_COMPRESSION_MIN_SIZE="200")
    sizes = [10, 300, 900, 5, 2000, 450, 450, 0, 700, 3000, 20, 600]
    for i, size in enumerate(sizes[:6]):
        await server.publish("w1", "result", {"i": i, "text": f"事件{i}-" + "abcdefghij"[i % 10] * size})
    offer = ClientPerMessageDeflateFactory(server_max_window_bits=9, client_max_window_bits=True)
    url = f"{server.ws_url('w1', make_token('w1'))}"
    async with connect(url, compression=None, extensions=[offer]) as ws:
        (ext,) = ws.protocol.extensions
        assert ext.remote_max_window_bits == 9 and not ext.remote_no_context_takeover
        assert (await recv_json(ws))["type"] == "connected"
        for i, size in enumerate(sizes[6:], start=6):
            await server.publish("w1", "result", {"i": i, "text": f"事件{i}-" + "abcdefghij"[i % 10] * size})
        await server.publish("w1", "complete", {})
        frames = await recv_until_closed(ws)
    texts = [f["data"]["text"] for f in frames if f.get("event") == "result"]
    assert texts == [f"事件{i}-" + "abcdefghij"[i % 10] * size for i, size in enumerate(sizes)]
    assert ws.close_code == 1000


async def test_sockets_of_one_execution_share_each_compression(start_server: StartServer) -> None:
    """Three sockets on one execution: the same frames, and each live event compressed about once, not three times."""
    from service.web import wsproto

    server = await start_server()
    sockets = [await server.connect("f1") for _ in range(3)]
    for ws in sockets:
        assert (await recv_json(ws))["type"] == "connected"
    wsproto._cache.entries.clear()
    await publish_demo_like(server, "f1")
    received = [await recv_until_closed(ws) for ws in sockets]
    assert received[0] == received[1] == received[2] and len(received[0]) == 11
    # 11 events; the first may be compressed once per socket (their windows end with their own
    # connected frame), every later one once for all.
    assert len(wsproto._cache.entries) <= 11 + 2


async def test_plain_and_compressed_sockets_of_one_execution_get_the_same_frames(server: Server) -> None:
    """Uncompressed sockets share one serialized frame per event; compressed ones go through deflate; both decode."""
    url = server.ws_url("m1", make_token("m1"))
    async with connect(url, compression=None) as plain, connect(url) as deflated:
        assert plain.protocol.extensions == [] and len(deflated.protocol.extensions) == 1
        for ws in (plain, deflated):
            assert (await recv_json(ws))["type"] == "connected"
        await publish_demo_like(server, "m1")
        frames = [await recv_until_closed(ws) for ws in (plain, deflated)]
    assert frames[0] == frames[1] and [f["seq"] for f in frames[0]] == list(range(1, 12))


def test_the_shared_compression_cache_is_bounded_by_bytes() -> None:
    """Distinct large messages never grow the shared cache past its byte bound; too large ones are not cached."""
    import os
    import zlib

    from service.web import wsproto

    cache = wsproto._Compressed()
    window = b""
    for _ in range(60):  # 60 distinct 200 KB messages: 12 MB of text
        data = os.urandom(8).hex().encode() * 12_500
        payload, window = cache.get(window, data, 15)
        assert cache.size <= cache.max_bytes and not cache.entries  # over max_entry: compressed, not kept
    for i in range(2000):  # many distinct 40 KB messages: cached, and the cache stays within its bytes
        data = b"%d" % i * 10_000
        payload, _ = cache.get(b"", data, 15)
        assert cache.size <= cache.max_bytes
    inflate = zlib.decompressobj(-15)
    assert inflate.decompress(payload + b"\x00\x00\xff\xff") == data


async def test_a_compressing_subscriber_gets_large_events_intact(start_server: StartServer) -> None:
    """Events over the cache's entry size reach a compressing subscriber byte for byte (compressed per socket)."""
    server = await start_server()
    texts = [f"{i}:" + "大事件" * 40_000 for i in range(3)]  # ~360 KB each
    async with connect(server.ws_url("big", make_token("big")), compression="deflate", max_size=None) as ws:
        assert (await recv_json(ws))["type"] == "connected"
        for text in texts:
            assert (await server.publish("big", "result", {"text": text})).status_code == 202
        await server.publish("big", "complete", {})
        frames = await recv_until_closed(ws)
    assert [f["data"]["text"] for f in frames if f.get("event") == "result"] == texts
