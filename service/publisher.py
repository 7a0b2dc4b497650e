"""A publisher client the scheduler can import (standard library only).

Keeps the method names of the product's original WebSocket service::

    pub = RelayPublisher("http://relay:8765", key)
    pub.send_progress("exec-001", 50, "ai_fetching", "processing", "正在查询 AI 平台")
    pub.send_complete("exec-001", {"score": 87})

Each event gets one idempotency key, reused by every retry (connection
errors, 5xx and 429 are retried with back-off), so a retry never delivers an
event twice. Connections are kept alive and reused (a small pool, so the
client can be shared by threads). :meth:`RelayPublisher.publish_batch` sends
up to 1000 events in one request through ``/internal/v1/events`` under the
same rule. :class:`AsyncRelayPublisher` offers the same methods as
coroutines, natively on asyncio (its own keep-alive connections, no thread).

For schedulers that hand events over through their own infrastructure
(docs/ingest.md), :func:`outbox_insert` gives the SQL and parameters to
write an outbox row on the caller's own database connection, inside the
caller's transaction, and :func:`amqp_message` the body and properties of a
RabbitMQ message.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import ssl
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

__all__ = [
    "AMQP_QUEUE",
    "AMQP_QUEUE_ARGUMENTS",
    "OUTBOX_TABLE",
    "AmqpMessage",
    "AsyncRelayPublisher",
    "PublishError",
    "RelayPublisher",
    "amqp_message",
    "outbox_insert",
]

#: The batch route's limit of events per request.
MAX_BATCH = 1000
#: The default queue and the arguments it is declared with (a producer declaring it must use the same).
AMQP_QUEUE = "progress-relay.events"
AMQP_QUEUE_ARGUMENTS: dict[str, Any] = {"x-single-active-consumer": True}
#: The default outbox table.
OUTBOX_TABLE = "relay_outbox"
_TABLE_RE = re.compile(r"(?:[a-z_][a-z0-9_]{0,62}\.)?[a-z_][a-z0-9_]{0,57}")
_RETRIED = (500, 502, 503, 504, 429)


class PublishError(Exception):
    """The relay refused the event (4xx) or stayed unreachable after retries."""

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


# -- handing events over without HTTP ------------------------------------------------------


def _key(idempotency_key: str | None) -> str:
    return idempotency_key or uuid.uuid4().hex


def outbox_insert(
    execution_id: str,
    event: str,
    data: dict[str, Any],
    idempotency_key: str | None = None,
    *,
    table: str = OUTBOX_TABLE,
    paramstyle: str = "format",
) -> tuple[str, tuple[str, ...]]:
    """The SQL and parameters that insert one outbox row; run them on your own connection.

    Run inside the transaction that changes the execution, and the event is
    published if and only if that transaction commits. ``paramstyle`` matches
    the driver: ``format`` (``%s``: psycopg 3, psycopg2), ``numeric`` (``$1``:
    asyncpg) or ``qmark`` (``?``). ``data`` travels as JSON text, cast to
    ``jsonb`` in the SQL. A row without ``idempotency_key`` is deduplicated by
    the relay on its id; give one to make retries of the insert itself safe.
    """
    if not _TABLE_RE.fullmatch(table):
        raise ValueError(f"{table!r} is not a valid outbox table name (lower case, [schema.]name)")
    marks = {"format": ("%s",) * 4, "numeric": ("$1", "$2", "$3", "$4"), "qmark": ("?",) * 4}.get(paramstyle)
    if marks is None:
        raise ValueError(f"paramstyle must be format, numeric or qmark, got {paramstyle!r}")
    quoted = ".".join(f'"{part}"' for part in table.split("."))
    sql = (
        f"INSERT INTO {quoted} (execution_id, event, data, idempotency_key) "
        f"VALUES ({marks[0]}, {marks[1]}, CAST({marks[2]} AS jsonb), {marks[3]})"
    )
    params = (execution_id, event, json.dumps(data, ensure_ascii=False), idempotency_key)
    return sql, params  # type: ignore[return-value]  # the key may be None (SQL NULL)


@dataclass(frozen=True, slots=True)
class AmqpMessage:
    """An AMQP message for the relay's queue: ``body`` and the ``properties`` to send it with.

    The property names are those of ``aio_pika.Message(body, **properties)`` and
    ``pika.BasicProperties(**properties)``.
    """

    body: bytes
    properties: dict[str, Any] = field(default_factory=dict)
    routing_key: str = AMQP_QUEUE


def amqp_message(
    execution_id: str,
    event: str,
    data: dict[str, Any],
    idempotency_key: str | None = None,
    *,
    queue: str = AMQP_QUEUE,
    timestamp: str | None = None,
) -> AmqpMessage:
    """The message that carries one event to the relay's queue (publish it to the default exchange).

    Persistent (survives a broker restart in a durable queue), JSON, and with a
    ``message_id`` that is the event's idempotency key, so a message redelivered
    or published twice is delivered once; ``timestamp`` (unix seconds) is what
    the relay's lag metric measures from.
    """
    key = _key(idempotency_key)
    item: dict[str, Any] = {"execution_id": execution_id, "event": event, "data": data, "idempotency_key": key}
    if timestamp is not None:
        item["timestamp"] = timestamp
    properties = {
        "content_type": "application/json",
        "delivery_mode": 2,
        "message_id": key,
        "timestamp": int(time.time()),
        "app_id": "progress-relay-publisher",
    }
    return AmqpMessage(json.dumps(item, ensure_ascii=False).encode(), properties, queue)


# -- HTTP -------------------------------------------------------------------------------------


def _event_data(progress: int, stage: str, status: str, status_text: str | None) -> dict[str, Any]:
    data: dict[str, Any] = {"progress": progress, "stage": stage, "status": status}
    if status_text is not None:
        data["status_text"] = status_text
    return data


def _error_data(
    error: str, error_type: str | None, error_details: dict[str, Any] | None, recoverable: bool
) -> dict[str, Any]:
    data: dict[str, Any] = {"error": error, "recoverable": recoverable}
    if error_type is not None:
        data["error_type"] = error_type
    if error_details is not None:
        data["error_details"] = error_details
    return data


def _batch_bodies(events: Sequence[dict[str, Any]]) -> list[bytes]:
    """Request bodies of at most MAX_BATCH events, each event with its idempotency key fixed now."""
    items = [{**e, "idempotency_key": _key(e.get("idempotency_key"))} for e in events]
    return [
        json.dumps({"events": items[i : i + MAX_BATCH]}, ensure_ascii=False).encode()
        for i in range(0, len(items), MAX_BATCH)
    ]


def _refused(status: int, detail: Any) -> PublishError:
    return PublishError(f"relay refused the request with {status}: {detail}", status, detail)


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


class _Endpoint:
    """Where the relay is, parsed once."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be http(s)://host[:port], got {base_url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.prefix = parts.path
        self.host_header = parts.netloc


class RelayPublisher:
    """Posts events to ``/internal/v1`` over kept-alive connections, with retries that never duplicate.

    Safe to share between threads: each call borrows one connection of a small
    pool (``max_connections`` idle ones are kept).
    """

    def __init__(
        self,
        base_url: str,
        key: str,
        timeout: float = 5.0,
        retries: int = 5,
        backoff: float = 0.2,
        max_connections: int = 8,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_connections = max_connections
        self._endpoint = _Endpoint(self.base_url)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def publish(
        self, execution_id: str, event: str, data: dict[str, Any], idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Publish one event; return ``{"execution_id", "seq", "duplicate"}``."""
        body = {"event": event, "data": data, "idempotency_key": _key(idempotency_key)}
        path = f"/internal/v1/executions/{quote(execution_id, safe='')}/events"
        result: dict[str, Any] = self._post(path, json.dumps(body, ensure_ascii=False).encode())
        return result

    def publish_batch(self, events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Publish ``{"execution_id", "event", "data", ...}`` items in order, 1000 per request.

        Returns one result per item (``status`` 202, or the item's error, e.g. 422
        or 409, which is not raised). Each item keeps one idempotency key across
        retries, so a retried request delivers nothing twice.
        """
        results: list[dict[str, Any]] = []
        for body in _batch_bodies(events):
            results.extend(self._post("/internal/v1/events", body)["results"])
        return results

    def mint_token(self, execution_id: str, sub: str, ttl_seconds: int | None = None) -> dict[str, Any]:
        """Ask the relay for a subscriber token: ``{"token", "expires_at"}``."""
        body: dict[str, Any] = {"execution_id": execution_id, "sub": sub}
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        result: dict[str, Any] = self._post("/internal/v1/tokens", json.dumps(body).encode())
        return result

    def send_progress(
        self, execution_id: str, progress: int, stage: str, status: str = "processing", status_text: str | None = None
    ) -> dict[str, Any]:
        """Publish a ``progress`` event."""
        return self.publish(execution_id, "progress", _event_data(progress, stage, status, status_text))

    def send_result(self, execution_id: str, result: dict[str, Any]) -> dict[str, Any]:
        """Publish a partial ``result``."""
        return self.publish(execution_id, "result", result)

    def send_complete(self, execution_id: str, final_report: dict[str, Any] | None = None) -> dict[str, Any]:
        """Publish the terminal ``complete`` event with the report."""
        return self.publish(execution_id, "complete", {"report": final_report} if final_report is not None else {})

    def send_error(
        self,
        execution_id: str,
        error: str,
        error_type: str | None = None,
        error_details: dict[str, Any] | None = None,
        recoverable: bool = False,
    ) -> dict[str, Any]:
        """Publish an ``error`` (terminal unless ``recoverable``)."""
        return self.publish(execution_id, "error", _error_data(error, error_type, error_details, recoverable))

    def close(self) -> None:
        """Close the kept-alive connections."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def __enter__(self) -> RelayPublisher:
        """Use as a context manager that closes the connections."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the connections."""
        self.close()

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection (reused: True) or a new one."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        e = self._endpoint
        if e.tls:
            return http.client.HTTPSConnection(e.host, e.port, timeout=self.timeout), False
        return http.client.HTTPConnection(e.host, e.port, timeout=self.timeout), False

    def _release(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self.max_connections:
                self._idle.append(connection)
                return
        connection.close()

    def _exchange(self, path: str, payload: bytes) -> tuple[int, bytes]:
        """One request and its response; a kept-alive connection the server closed meanwhile is replaced once."""
        while True:
            connection, reused = self._connection()
            try:
                connection.request("POST", self._endpoint.prefix + path, payload, self._headers)
                response = connection.getresponse()
                raw = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                connection.close()
                if reused:  # the relay closed an idle connection: not a failure, send on a new one
                    continue
                raise OSError(str(exc)) from exc
            except BaseException:
                connection.close()
                raise
            if response.will_close:
                connection.close()
            else:
                self._release(connection)
            return response.status, raw

    def _post(self, path: str, payload: bytes) -> Any:
        last: PublishError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * (2 ** (attempt - 1)))
            try:
                status, raw = self._exchange(path, payload)
            except (OSError, http.client.HTTPException) as exc:
                last = PublishError(f"relay unreachable: {exc.__class__.__name__}: {exc}")
                continue
            detail = _decode(raw)
            if status < 300:
                return detail
            if status in _RETRIED:
                last = PublishError(f"relay answered {status}", status, detail)
                continue
            raise _refused(status, detail)
        assert last is not None
        raise last


class _AsyncConnection:
    """One kept-alive HTTP/1.1 connection on asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def exchange(self, head: bytes, payload: bytes) -> tuple[int, bytes, bool]:
        """Send one request; return status, body and whether the server keeps the connection."""
        self.writer.write(head + payload)
        await self.writer.drain()
        status_line = await self.reader.readuntil(b"\r\n")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ConnectionError("not an HTTP/1.1 response")
        status = int(parts[1])
        length: int | None = None
        chunked = False
        keep = parts[0] == b"HTTP/1.1"
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and value == b"chunked":
                chunked = True
            elif name == b"connection":
                keep = value == b"keep-alive" or (keep and value != b"close")
        if chunked:
            body = await self._chunked()
        elif length is not None:
            body = await self.reader.readexactly(length)
        else:
            body, keep = await self.reader.read(), False
        return status, body, keep

    async def _chunked(self) -> bytes:
        chunks = []
        while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
            chunks.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)
        while await self.reader.readuntil(b"\r\n") != b"\r\n":  # trailers
            pass
        return b"".join(chunks)

    def close(self) -> None:
        self.writer.close()


class AsyncRelayPublisher:
    """The same methods as :class:`RelayPublisher`, as coroutines on asyncio's own sockets.

    Keeps up to ``max_connections`` connections alive; concurrent calls use
    several of them, and wait for one when all are busy.
    """

    def __init__(
        self,
        base_url: str,
        key: str,
        timeout: float = 5.0,
        retries: int = 5,
        backoff: float = 0.2,
        max_connections: int = 8,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._endpoint = _Endpoint(self.base_url)
        self._idle: list[_AsyncConnection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._ssl = ssl.create_default_context() if self._endpoint.tls else None

    async def publish(
        self, execution_id: str, event: str, data: dict[str, Any], idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Publish one event; return ``{"execution_id", "seq", "duplicate"}``."""
        body = {"event": event, "data": data, "idempotency_key": _key(idempotency_key)}
        path = f"/internal/v1/executions/{quote(execution_id, safe='')}/events"
        result: dict[str, Any] = await self._post(path, json.dumps(body, ensure_ascii=False).encode())
        return result

    async def publish_batch(self, events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Publish items in order, 1000 per request (see :meth:`RelayPublisher.publish_batch`)."""
        results: list[dict[str, Any]] = []
        for body in _batch_bodies(events):
            results.extend((await self._post("/internal/v1/events", body))["results"])
        return results

    async def mint_token(self, execution_id: str, sub: str, ttl_seconds: int | None = None) -> dict[str, Any]:
        """Ask the relay for a subscriber token: ``{"token", "expires_at"}``."""
        body: dict[str, Any] = {"execution_id": execution_id, "sub": sub}
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        result: dict[str, Any] = await self._post("/internal/v1/tokens", json.dumps(body).encode())
        return result

    async def send_progress(
        self, execution_id: str, progress: int, stage: str, status: str = "processing", status_text: str | None = None
    ) -> dict[str, Any]:
        """Publish a ``progress`` event."""
        data = _event_data(progress, stage, status, status_text)
        return await self.publish(execution_id, "progress", data)

    async def send_result(self, execution_id: str, result: dict[str, Any]) -> dict[str, Any]:
        """Publish a partial ``result``."""
        return await self.publish(execution_id, "result", result)

    async def send_complete(self, execution_id: str, final_report: dict[str, Any] | None = None) -> dict[str, Any]:
        """Publish the terminal ``complete`` event."""
        data = {"report": final_report} if final_report is not None else {}
        return await self.publish(execution_id, "complete", data)

    async def send_error(
        self,
        execution_id: str,
        error: str,
        error_type: str | None = None,
        error_details: dict[str, Any] | None = None,
        recoverable: bool = False,
    ) -> dict[str, Any]:
        """Publish an ``error`` event."""
        return await self.publish(execution_id, "error", _error_data(error, error_type, error_details, recoverable))

    async def close(self) -> None:
        """Close the kept-alive connections."""
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    async def __aenter__(self) -> AsyncRelayPublisher:
        """Use as an async context manager that closes the connections."""
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close the connections."""
        await self.close()

    def _head(self, path: str, length: int) -> bytes:
        e = self._endpoint
        return (
            f"POST {e.prefix}{path} HTTP/1.1\r\nHost: {e.host_header}\r\nAuthorization: Bearer {self.key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        ).encode()

    async def _exchange(self, path: str, payload: bytes) -> tuple[int, bytes]:
        head = self._head(path, len(payload))
        async with self._slots:
            while True:
                reused = bool(self._idle)
                if reused:
                    connection = self._idle.pop()
                else:
                    e = self._endpoint
                    opening: Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
                    opening = asyncio.open_connection(e.host, e.port, ssl=self._ssl)
                    connection = _AsyncConnection(*await asyncio.wait_for(opening, self.timeout))
                try:
                    status, body, keep = await asyncio.wait_for(connection.exchange(head, payload), self.timeout)
                except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
                    connection.close()
                    if reused:  # the relay closed an idle connection: send on a new one
                        continue
                    raise ConnectionError(str(exc)) from exc
                except BaseException:
                    connection.close()
                    raise
                (self._idle.append if keep else _close)(connection)
                return status, body

    async def _post(self, path: str, payload: bytes) -> Any:
        last: PublishError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff * (2 ** (attempt - 1)))
            try:
                status, raw = await self._exchange(path, payload)
            except (OSError, TimeoutError, ValueError, asyncio.LimitOverrunError) as exc:
                last = PublishError(f"relay unreachable: {exc.__class__.__name__}: {exc}")
                continue
            detail = _decode(raw)
            if status < 300:
                return detail
            if status in _RETRIED:
                last = PublishError(f"relay answered {status}", status, detail)
                continue
            raise _refused(status, detail)
        assert last is not None
        raise last


_close: Callable[[_AsyncConnection], None] = _AsyncConnection.close
