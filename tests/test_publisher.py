"""The Python publisher clients: kept-alive connections, native asyncio, batches, producer helpers."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from service.publisher import AsyncRelayPublisher, PublishError, RelayPublisher, amqp_message, outbox_insert
from tests.conftest import PUBLISH_KEY, Server, StartServer, recv_json
from tests.ingest_util import until
from tests.redis_util import free_port


class Proxy:
    """A TCP proxy in front of the relay that counts connections and can drop one response."""

    def __init__(self, target: Server) -> None:
        self.target = target
        self.accepted = 0
        self.open = 0
        self.drop_first_response = False
        self.server: asyncio.Server | None = None

    @property
    def base(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> Proxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        up_reader, up_writer = await asyncio.open_connection(self.target.host, self.target.port)
        drop = self.drop_first_response
        self.drop_first_response = False

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, cut: bool) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    if cut:  # the relay did the work; its answer is lost on the way back
                        break
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, drop))
        self.open -= 1

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()


@pytest.fixture
async def proxy(server: Server) -> AsyncIterator[Proxy]:
    """A counting proxy in front of the default test relay."""
    p = await Proxy(server).start()
    yield p
    await p.close()


async def test_sync_publisher_keeps_one_connection_alive(server: Server, proxy: Proxy) -> None:
    """Thirty events from RelayPublisher travel over one TCP connection (it used to open one per event)."""
    pub = RelayPublisher(proxy.base, PUBLISH_KEY)

    def run() -> list[int]:
        return [pub.send_progress("ka", n, "s")["seq"] for n in range(30)]

    assert await asyncio.to_thread(run) == list(range(1, 31))
    assert proxy.accepted == 1
    pub.close()


async def test_async_publisher_is_native_and_keeps_its_connection(
    server: Server, proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AsyncRelayPublisher runs on the loop's own sockets (no thread) and reuses one connection."""

    def no_threads(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the async publisher must not use threads")

    monkeypatch.setattr(asyncio, "to_thread", no_threads)
    monkeypatch.setattr(asyncio.get_running_loop(), "run_in_executor", no_threads)
    async with AsyncRelayPublisher(proxy.base, PUBLISH_KEY) as pub:
        seqs = [(await pub.send_progress("na", n, "s"))["seq"] for n in range(30)]
        assert seqs == list(range(1, 31))
        assert proxy.accepted == 1
        minted = await pub.mint_token("na", "user-1", 60)
        assert minted["token"]
        with pytest.raises(PublishError) as exc:
            await pub.send_progress("na", 500, "s")
        assert exc.value.status == 422


@pytest.mark.parametrize("native", [True, False])
async def test_a_connection_the_relay_closed_while_idle_is_replaced_without_a_retry(
    start_server: StartServer, native: bool
) -> None:
    """The relay drops idle keep-alive connections; the next publish opens a new one (no retry spent)."""
    server = await start_server(RELAY_HANDSHAKE_TIMEOUT="0.2")
    proxy = await Proxy(server).start()
    try:
        if native:
            apub = AsyncRelayPublisher(proxy.base, PUBLISH_KEY, retries=0)
            await apub.send_progress("idle", 1, "s")
            await until(lambda: proxy.open == 0, what="the relay closing the idle connection")
            assert (await apub.send_progress("idle", 2, "s"))["seq"] == 2
        else:
            pub = RelayPublisher(proxy.base, PUBLISH_KEY, retries=0)
            await asyncio.to_thread(pub.send_progress, "idle", 1, "s")
            await until(lambda: proxy.open == 0, what="the relay closing the idle connection")
            assert (await asyncio.to_thread(pub.send_progress, "idle", 2, "s"))["seq"] == 2
        assert proxy.accepted == 2
    finally:
        await proxy.close()


@pytest.mark.parametrize("native", [True, False])
async def test_publish_batch_splits_by_1000_and_reports_each_item(server: Server, native: bool) -> None:
    """2,500 items go as three requests; results come back one per item, in order; a bad item is reported."""
    items: list[dict[str, Any]] = [
        {"execution_id": f"b-{n % 5}", "event": "progress", "data": {"progress": n % 101, "stage": "s"}}
        for n in range(2500)
    ]
    items[7] = {"execution_id": "b-0", "event": "progress", "data": {"stage": "no progress"}}
    if native:
        results = await AsyncRelayPublisher(server.base, PUBLISH_KEY).publish_batch(items)
    else:
        results = await asyncio.to_thread(RelayPublisher(server.base, PUBLISH_KEY).publish_batch, items)
    assert len(results) == 2500
    assert results[7]["status"] == 422 and "data.progress" in json.dumps(results[7])
    assert all(r["status"] == 202 for i, r in enumerate(results) if i != 7)
    assert [r["seq"] for r in results if r["execution_id"] == "b-1"] == list(range(1, 501))


@pytest.mark.parametrize("native", [True, False])
async def test_a_batch_retried_after_a_lost_answer_delivers_each_event_once(
    server: Server, proxy: Proxy, native: bool
) -> None:
    """The first answer to a batch is lost; the retry reuses every item's key: all duplicates, nothing twice."""
    ws = await server.connect("lost")
    await recv_json(ws)
    proxy.drop_first_response = True
    items = [{"execution_id": "lost", "event": "progress", "data": {"progress": n, "stage": "s"}} for n in range(5)]
    if native:
        results = await AsyncRelayPublisher(proxy.base, PUBLISH_KEY, backoff=0.01).publish_batch(items)
    else:
        pub = RelayPublisher(proxy.base, PUBLISH_KEY, backoff=0.01)
        results = await asyncio.to_thread(pub.publish_batch, items)
    assert [(r["seq"], r["duplicate"]) for r in results] == [(n, True) for n in range(1, 6)]
    assert [(await recv_json(ws))["seq"] for _ in range(5)] == [1, 2, 3, 4, 5]
    with pytest.raises(TimeoutError):
        await recv_json(ws, timeout=0.3)


def test_outbox_insert_gives_sql_and_parameters_for_each_driver_style() -> None:
    """outbox_insert writes the contract's columns with the driver's placeholders; bad names are refused."""
    sql, params = outbox_insert("e-1", "progress", {"progress": 1, "stage": "中文"}, "k", table="app.outbox")
    assert sql == (
        'INSERT INTO "app"."outbox" (execution_id, event, data, idempotency_key) VALUES (%s, %s, CAST(%s AS jsonb), %s)'
    )
    assert params == ("e-1", "progress", '{"progress": 1, "stage": "中文"}', "k")
    assert "VALUES ($1, $2, CAST($3 AS jsonb), $4)" in outbox_insert("e", "complete", {}, paramstyle="numeric")[0]
    assert "VALUES (?, ?, CAST(? AS jsonb), ?)" in outbox_insert("e", "complete", {}, paramstyle="qmark")[0]
    with pytest.raises(ValueError, match="table"):
        outbox_insert("e", "complete", {}, table='x"; DROP TABLE y; --')
    with pytest.raises(ValueError, match="paramstyle"):
        outbox_insert("e", "complete", {}, paramstyle="named")


def test_amqp_message_carries_the_key_as_message_id() -> None:
    """amqp_message: a persistent JSON message whose message_id is the body's idempotency key."""
    message = amqp_message("e-1", "progress", {"progress": 3, "stage": "s"}, queue="q")
    body = json.loads(message.body)
    assert body["execution_id"] == "e-1" and body["data"] == {"progress": 3, "stage": "s"}
    assert message.properties["message_id"] == body["idempotency_key"]
    assert message.properties["delivery_mode"] == 2 and message.properties["content_type"] == "application/json"
    assert message.routing_key == "q"
    assert amqp_message("e", "complete", {}, "fixed").properties["message_id"] == "fixed"


class Scripted:
    """A real HTTP server on a free port answering each request with the next canned response."""

    def __init__(self, *responses: bytes) -> None:
        self.responses = list(responses)
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    @property
    def base(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> Scripted:
        """Start serving."""
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop serving."""
        assert self.server is not None
        self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while self.responses:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                self.requests.append(head + await reader.readexactly(length))
                response = self.responses.pop(0)
                writer.write(response)
                await writer.drain()
                if b"connection: close" in response.lower() or b"HTTP/1.0" in response[:9]:
                    break
        writer.close()


ACCEPTED = b'{"execution_id":"x","seq":1,"duplicate":false}'


@pytest.mark.parametrize("native", [True, False])
async def test_5xx_is_retried_with_the_same_key_and_http_framings_are_read(native: bool) -> None:
    """A 503 is retried with the same body; chunked, HTTP/1.0 and Connection: close answers are all read."""
    async with Scripted(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + b"%x\r\n" % 10
        + ACCEPTED[:10]
        + b"\r\n"
        + b"%x;ext=1\r\n" % (len(ACCEPTED) - 10)
        + ACCEPTED[10:]
        + b"\r\n0\r\n\r\n",
        b"HTTP/1.0 202 Accepted\r\n\r\n" + ACCEPTED,
    ) as server:
        if native:
            pub: Any = AsyncRelayPublisher(server.base, "k", backoff=0.01)
            first = await pub.send_result("x", {"a": 1})
            second = await pub.send_error("x", "boom", "timeout", {"p": 1}, recoverable=True)
        else:
            pub = RelayPublisher(server.base, "k", backoff=0.01)
            first = await asyncio.to_thread(pub.send_result, "x", {"a": 1})
            second = await asyncio.to_thread(pub.send_error, "x", "boom", "timeout", {"p": 1}, True)
        assert first == second == json.loads(ACCEPTED)
        bodies = [json.loads(r.split(b"\r\n\r\n", 1)[1]) for r in server.requests]
        assert bodies[0] == bodies[1]  # the retry after 503 sent the same event, key included
        assert bodies[2]["data"] == {
            "error": "boom",
            "recoverable": True,
            "error_type": "timeout",
            "error_details": {"p": 1},
        }


@pytest.mark.parametrize("native", [True, False])
async def test_giving_up_after_retries_and_refusing_a_bad_url(native: bool) -> None:
    """An always-503 relay raises PublishError(503) after the retries; a non-HTTP URL is refused at once."""
    answer = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\n{}"
    async with Scripted(answer, answer, answer) as server:
        if native:
            with pytest.raises(PublishError) as exc:
                await AsyncRelayPublisher(server.base, "k", retries=2, backoff=0.01).send_complete("x", {"s": 1})
        else:
            with pytest.raises(PublishError) as exc:
                pub = RelayPublisher(server.base, "k", retries=2, backoff=0.01)
                await asyncio.to_thread(pub.send_complete, "x", {"s": 1})
        assert exc.value.status == 503 and len(server.requests) == 3
    with pytest.raises(ValueError, match="base_url"):
        (AsyncRelayPublisher if native else RelayPublisher)("ftp://relay", "k")
    if native:
        with pytest.raises(PublishError, match="unreachable"):
            await AsyncRelayPublisher(f"http://127.0.0.1:{free_port()}", "k", retries=1, backoff=0.01).send_complete(
                "x"
            )


async def test_sync_publisher_context_manager_closes_its_connections(server: Server) -> None:
    """RelayPublisher as a context manager: mint a token, publish, and close the kept connection."""

    def run() -> RelayPublisher:
        with RelayPublisher(server.base, PUBLISH_KEY) as pub:
            assert pub.mint_token("cm", "user-1")["token"]
            assert pub.send_complete("cm")["seq"] == 1
            assert len(pub._idle) == 1
        return pub

    assert (await asyncio.to_thread(run))._idle == []
