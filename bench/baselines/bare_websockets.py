"""Baseline (c): a bare ``websockets`` server broadcasting to a set.

The floor of Python overhead: one set of connections per execution and
``websockets.asyncio.server.broadcast`` (no await per socket). ``websockets``
serves only GET, so events come in on a second port served by a tiny
httptools protocol (port + 1), same process, same event loop (uvloop).

    python bench/baselines/bare_websockets.py --port 9003   # HTTP on 9004
"""

import argparse
import asyncio
import json
from datetime import UTC, datetime

import httptools
import uvloop
from websockets.asyncio.server import broadcast, serve

subscribers: dict[str, set] = {}
PREFIX = "/ws/executions/"


def _frame(execution_id: str, item: dict) -> str:
    return json.dumps(
        {
            "type": "diagnosis_update",
            "execution_id": execution_id,
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "event": item.get("event"),
            "data": item.get("data"),
        }
    )


async def handler(ws):
    path = ws.request.path.split("?", 1)[0]
    if not path.startswith(PREFIX):
        await ws.close(1008)
        return
    execution_id = path[len(PREFIX) :]
    group = subscribers.setdefault(execution_id, set())
    group.add(ws)
    try:
        async for _ in ws:
            pass
    finally:
        group.discard(ws)
        if not group:
            subscribers.pop(execution_id, None)


def publish(execution_id: str, item: dict) -> None:
    group = subscribers.get(execution_id)
    if group:
        broadcast(group, _frame(execution_id, item))


class HttpIngest(asyncio.Protocol):
    """POST /internal/v1/executions/{id}/events and POST /internal/v1/events."""

    def connection_made(self, transport):
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body = []

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_url(self, url):
        self.url += url

    def on_body(self, body):
        self.body.append(body)

    def on_message_complete(self):
        path = self.url.decode()
        body = json.loads(b"".join(self.body) or b"{}")
        self.url, self.body = b"", []
        if path == "/internal/v1/events":
            results = []
            for item in body["events"]:
                publish(item["execution_id"], item)
                results.append({"execution_id": item["execution_id"]})
            self._reply(202, {"results": results})
        elif path.startswith("/internal/v1/executions/") and path.endswith("/events"):
            execution_id = path[len("/internal/v1/executions/") : -len("/events")]
            publish(execution_id, body)
            self._reply(202, {"execution_id": execution_id})
        else:
            self._reply(404, {"error": "not found"})

    def _reply(self, status, obj):
        payload = json.dumps(obj).encode()
        reason = b"Accepted" if status == 202 else b"Not Found"
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (status, reason, len(payload), payload)
        )


async def main(port: int, ping_interval: float) -> None:
    loop = asyncio.get_running_loop()
    http = await loop.create_server(HttpIngest, "127.0.0.1", port + 1, backlog=1024)
    async with (
        serve(handler, "127.0.0.1", port, backlog=1024, compression=None, ping_interval=ping_interval, ping_timeout=20),
        http,
    ):
        await asyncio.Future()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ping-interval", type=float, default=20.0, help="seconds between keepalive pings")
    args = parser.parse_args()
    uvloop.run(main(args.port, args.ping_interval))
