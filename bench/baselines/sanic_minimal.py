"""Baseline (a): the hand-rolled Sanic relay a team writes in an afternoon.

A dict of sockets per execution; the POST handler encodes the event once and
awaits ``ws.send`` to each subscriber directly. No auth, no validation, no
seq, no history, no backpressure handling. One process.

    python bench/baselines/sanic_minimal.py --port 9001
"""

import argparse
import json
import time
from datetime import UTC, datetime

from sanic import Sanic
from sanic.response import json as json_response

app = Sanic("bench_sanic_minimal")
sockets: dict[str, set] = {}


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


async def _send_all(execution_id: str, message: str) -> None:
    for ws in list(sockets.get(execution_id, ())):
        try:
            await ws.send(message)
        except Exception:
            sockets.get(execution_id, set()).discard(ws)


@app.websocket("/ws/executions/<execution_id>")
async def subscribe(request, ws, execution_id: str):
    sockets.setdefault(execution_id, set()).add(ws)
    try:
        async for _ in ws:
            pass
    finally:
        group = sockets.get(execution_id)
        if group is not None:
            group.discard(ws)
            if not group:
                del sockets[execution_id]


@app.post("/internal/v1/executions/<execution_id>/events")
async def publish(request, execution_id: str):
    await _send_all(execution_id, _frame(execution_id, request.json))
    return json_response({"execution_id": execution_id}, status=202)


@app.post("/internal/v1/events")
async def publish_batch(request):
    results = []
    for item in request.json["events"]:
        execution_id = item["execution_id"]
        await _send_all(execution_id, _frame(execution_id, item))
        results.append({"execution_id": execution_id})
    return json_response({"results": results}, status=202)


@app.get("/healthz")
async def healthz(request):
    return json_response({"ok": True, "time": time.time()})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backlog", type=int, default=1024)
    parser.add_argument("--ping-interval", type=float, default=20.0, help="seconds between keepalive pings")
    args = parser.parse_args()
    app.config.WEBSOCKET_PING_INTERVAL = args.ping_interval
    app.run(
        host="127.0.0.1",
        port=args.port,
        single_process=True,
        access_log=False,
        debug=False,
        motd=False,
        backlog=args.backlog,
    )
