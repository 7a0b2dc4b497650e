"""Baseline (b): python-socketio AsyncServer on aiohttp.

One room per execution (the client passes ``execution_id`` in the connect
query string); an HTTP route emits ``diagnosis_update`` to the room. No auth,
no history. One process, uvloop.

    python bench/baselines/socketio_aiohttp.py --port 9002
"""

import argparse
import asyncio
from datetime import UTC, datetime
from urllib.parse import parse_qs

import socketio
import uvloop
from aiohttp import web

sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*", logger=False, engineio_logger=False)
app = web.Application()
sio.attach(app)


@sio.event
async def connect(sid, environ, auth=None):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    execution_id = query.get("execution_id", [""])[0]
    if not execution_id:
        return False
    await sio.enter_room(sid, execution_id)
    return True


def _event(execution_id: str, item: dict) -> dict:
    return {
        "type": "diagnosis_update",
        "execution_id": execution_id,
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "event": item.get("event"),
        "data": item.get("data"),
    }


async def publish(request: web.Request) -> web.Response:
    execution_id = request.match_info["execution_id"]
    item = await request.json()
    await sio.emit("diagnosis_update", _event(execution_id, item), room=execution_id)
    return web.json_response({"execution_id": execution_id}, status=202)


async def publish_batch(request: web.Request) -> web.Response:
    body = await request.json()
    results = []
    for item in body["events"]:
        execution_id = item["execution_id"]
        await sio.emit("diagnosis_update", _event(execution_id, item), room=execution_id)
        results.append({"execution_id": execution_id})
    return web.json_response({"results": results}, status=202)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


app.router.add_post("/internal/v1/executions/{execution_id}/events", publish)
app.router.add_post("/internal/v1/events", publish_batch)
app.router.add_get("/healthz", healthz)

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ping-interval", type=float, default=25.0, help="seconds between Engine.IO pings")
    args = parser.parse_args()
    sio.eio.ping_interval = args.ping_interval  # read by each socket's ping loop
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, backlog=1024)
