"""End-to-end flow over a real server and a real WebSocket client."""

from __future__ import annotations

from tests.conftest import Server, recv_json, recv_until_closed


async def test_full_flow_delivers_events_in_order_and_closes_1000(server: Server) -> None:
    """Mint a token, connect, publish progress/result/complete: frames arrive with seq 1..3, then close 1000."""
    r = await server.http.post(
        "/internal/v1/tokens",
        json={"execution_id": "exec-1", "sub": "u1"},
        headers={"Authorization": "Bearer test-publisher-key-0123456789-abcdefghij"},
    )
    assert r.status_code == 201, r.text
    ws = await server.connect("exec-1", token=r.json()["token"])
    hello = await recv_json(ws)
    assert hello == {
        "type": "connected",
        "execution_id": "exec-1",
        "latest_seq": 0,
        "epoch": hello["epoch"],
        "resumed": False,
        "heartbeat_interval": 30,
    }
    assert hello["epoch"]
    assert (await server.publish("exec-1", "progress", {"progress": 50, "stage": "ai_fetching"})).status_code == 202
    assert (await server.publish("exec-1", "result", {"platform": "x", "score": 3})).status_code == 202
    r = await server.publish("exec-1", "complete", {"report": {"ok": True}})
    assert r.status_code == 202 and r.json() == {"execution_id": "exec-1", "seq": 3, "duplicate": False}
    frames = await recv_until_closed(ws)
    assert [f["seq"] for f in frames] == [1, 2, 3]
    assert [f["event"] for f in frames] == ["progress", "result", "complete"]
    assert frames[0]["data"] == {"progress": 50, "stage": "ai_fetching"}
    assert all(f["type"] == "diagnosis_update" and f["execution_id"] == "exec-1" for f in frames)
    assert ws.close_code == 1000


async def test_percent_encoded_execution_ids_are_the_same_execution(server: Server) -> None:
    """An id with ':' works whether the client writes it as is or percent-encoded (encodeURIComponent)."""
    from tests.conftest import make_token

    r = await server.http.post(
        "/internal/v1/executions/job%3A42/events",
        json={"event": "result", "data": {}},
        headers={"Authorization": "Bearer test-publisher-key-0123456789-abcdefghij"},
    )
    assert r.status_code == 202 and r.json()["execution_id"] == "job:42"
    token = make_token("job:42")
    ws = await server.connect("job%3A42", token=token)
    assert (await recv_json(ws))["latest_seq"] == 1
    r = await server.http.get("/v1/executions/job%3A42", params={"token": token})
    assert r.status_code == 200 and r.json()["execution_id"] == "job:42"
