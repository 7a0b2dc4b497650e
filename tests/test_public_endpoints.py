"""Polling, state and SSE over a real server: the same events, the same seqs as the socket."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.demo import Step, diagnosis_script
from service.web.routes import public
from tests.conftest import PUBLISH_KEY, Server, StartServer, counted, make_token, recv_json, recv_until_closed

Events = list[dict[str, Any]]


def bearer(execution_id: str, **kwargs: Any) -> dict[str, str]:
    """Authorization header with a fresh subscriber token."""
    return {"Authorization": f"Bearer {make_token(execution_id, **kwargs)}"}


def demo_steps(execution_id: str) -> list[Step]:
    """A demo diagnosis that includes at least one recoverable platform time-out."""
    for seed in range(100):
        steps = diagnosis_script(execution_id, seed=seed, timeout_chance=0.3)
        if any(s.event == "error" for s in steps):
            return steps
    raise AssertionError("no seed gives a time-out")


async def publish_steps(server: Server, execution_id: str, steps: list[Step], pause: float = 0.0) -> None:
    """Publish every step (202 each)."""
    for step in steps:
        r = await server.publish(execution_id, step.event, step.data)
        assert r.status_code == 202, r.text
        if pause:
            await asyncio.sleep(pause)


async def ws_events(server: Server, execution_id: str, last_seq: int | None = None) -> Events:
    """Every event a socket receives until the server closes it (without the connected frame)."""
    ws = await server.connect(execution_id, last_seq=last_seq)
    frames = await recv_until_closed(ws)
    assert frames[0]["type"] == "connected" and ws.close_code == 1000
    return frames[1:]


async def run_demo_with_socket(server: Server, execution_id: str) -> Events:
    """Publish a demo execution while a socket watches it live; return what the socket got."""
    ws = await server.connect(execution_id)
    assert (await recv_json(ws))["type"] == "connected"
    await publish_steps(server, execution_id, demo_steps(execution_id))
    frames = await recv_until_closed(ws)
    assert ws.close_code == 1000
    return frames


async def read_sse(response: httpx.Response) -> list[dict[str, str]]:
    """Parse an SSE body into messages (``{"comment": ...}`` for comment lines) until it ends."""
    messages: list[dict[str, str]] = []
    current: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if current:
                messages.append(current)
                current = {}
        elif line.startswith(":"):
            messages.append({"comment": line[1:].strip()})
        else:
            name, _, value = line.partition(":")
            current[name] = value[1:] if value.startswith(" ") else value
    if current:
        messages.append(current)
    return messages


async def sse(
    server: Server,
    execution_id: str,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    timeout: float = 10.0,
) -> tuple[httpx.Response, list[dict[str, str]]]:
    """Open the SSE stream and read it to its end."""
    params = dict(params or {})
    params["token"] = token or make_token(execution_id)
    async with asyncio.timeout(timeout):
        async with server.http.stream(
            "GET", f"/v1/executions/{execution_id}/stream", params=params, headers=headers, timeout=timeout
        ) as response:
            if response.status_code != 200:
                await response.aread()
                return response, []
            return response, await read_sse(response)


def sse_events(messages: list[dict[str, str]]) -> Events:
    """The event objects of SSE messages, checking that ``id`` (``<epoch>:<seq>``) and ``event`` match each one."""
    events = []
    epochs = {json.loads(m["data"])["epoch"] for m in messages if m.get("event") == "connected"}
    for m in messages:
        if "id" in m:
            event = json.loads(m["data"])
            epoch, _, seq = m["id"].rpartition(":")
            assert seq == str(event["seq"]) and m["event"] == event["event"]
            assert epoch and (not epochs or epoch in epochs), (epoch, epochs)
            events.append(event)
    return events


def last_event_id(messages: list[dict[str, str]]) -> str:
    """The id of the last event message (what EventSource sends back as Last-Event-ID)."""
    return [m["id"] for m in messages if "id" in m][-1]


async def poll(server: Server, execution_id: str, timeout: float = 10.0, **params: Any) -> httpx.Response:
    """One GET of the polling endpoint."""
    return await server.http.get(
        f"/v1/executions/{execution_id}/events", params=params, headers=bearer(execution_id), timeout=timeout
    )


async def poll_until_terminal(
    server: Server, execution_id: str, after: int = 0, limit: int = 100, stop_at: int | None = None
) -> Events:
    """Follow ``next_after`` with long polls until the terminal event (or ``stop_at``)."""
    events: Events = []
    async with asyncio.timeout(15):
        while True:
            body = (await poll(server, execution_id, after=after, wait=5, limit=limit)).json()
            events.extend(body["events"])
            after = body["next_after"]
            if (body["terminal"] and not body["has_more"]) or (stop_at is not None and after >= stop_at):
                return events


# -- the same sequence on every transport -------------------------------------------


async def test_polling_returns_what_the_socket_received(server: Server) -> None:
    """Polling after 0 returns exactly the socket's events (same objects, same seq), in one page or many."""
    received = await run_demo_with_socket(server, "exec-poll")
    r = await poll(server, "exec-poll", after=0, limit=1000)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["events"] == received
    assert [e["seq"] for e in received] == list(range(1, len(received) + 1))
    assert body["execution_id"] == "exec-poll" and body["latest_seq"] == len(received)
    assert body["terminal"] is True and body["has_more"] is False and body["next_after"] == len(received)
    assert await poll_until_terminal(server, "exec-poll", limit=3) == received


async def test_sse_returns_what_the_socket_received(server: Server) -> None:
    """SSE from the start returns the socket's events with id = seq and event = type, then ends."""
    received = await run_demo_with_socket(server, "exec-sse")
    response, messages = await sse(server, "exec-sse")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert messages[0]["event"] == "connected"
    connected = json.loads(messages[0]["data"])
    assert connected == {
        "type": "connected",
        "execution_id": "exec-sse",
        "latest_seq": len(received),
        "epoch": connected["epoch"],
        "resumed": False,
        "keepalive_interval": server.app.ctx.settings.sse_keepalive_interval,
    }
    assert connected["epoch"] and messages[1]["id"] == f"{connected['epoch']}:1"
    assert messages[0]["retry"] == str(public.SSE_RETRY_MS)
    assert sse_events(messages) == received
    assert "id" in messages[-1] and messages[-1]["event"] == "complete"


async def test_every_transport_sees_the_same_live_execution(server: Server) -> None:
    """Socket, SSE and long-polling clients watching live all get the identical sequence."""
    eid = "exec-live"
    ws = await server.connect(eid)
    assert (await recv_json(ws))["type"] == "connected"
    sse_task = asyncio.create_task(sse(server, eid, timeout=20))
    poll_task = asyncio.create_task(poll_until_terminal(server, eid))
    async with asyncio.timeout(5):
        while server.relay.connections < 3:  # socket, stream and the waiting poll
            await asyncio.sleep(0.01)
    await publish_steps(server, eid, demo_steps(eid), pause=0.005)
    received = await recv_until_closed(ws)
    _, messages = await sse_task
    assert sse_events(messages) == received
    assert await poll_task == received
    assert len(received) == len(demo_steps(eid))


async def test_state_follows_each_event_the_socket_received(server: Server) -> None:
    """After each event, the state endpoint reports that event's seq, type, progress, stage and status text."""
    eid = "exec-state"
    ws = await server.connect(eid)
    assert (await recv_json(ws))["type"] == "connected"
    last_progress: dict[str, Any] = {}
    steps = demo_steps(eid)
    for step in steps:
        await publish_steps(server, eid, [step])
        frame = await recv_json(ws)
        r = await server.http.get(f"/v1/executions/{eid}", headers=bearer(eid))
        assert r.status_code == 200
        state = r.json()
        assert state["latest_seq"] == frame["seq"] and state["event"] == frame["event"]
        assert state["execution_id"] == eid and state["updated_at"].endswith("Z")
        if frame["event"] == "progress":
            last_progress = frame["data"]
        if frame["event"] == "error":
            assert state["last_error"] == frame["data"] and state["terminal"] is False
        if frame["event"] != "complete":
            assert state["progress"] == last_progress["progress"] and state["stage"] == last_progress["stage"]
            assert state["status"] == last_progress["status"]
            assert state["status_text"] == last_progress["status_text"]
            assert state["terminal"] is False and state["report"] is None
    assert state["terminal"] is True and state["status"] == "completed" and state["progress"] == 100
    assert state["report"] == frame["data"]["report"] and state["error"] is None
    assert state["stage"] == "report"
    assert state["result_count"] == sum(1 for s in steps if s.event == "result")


async def test_state_of_a_failed_execution(server: Server) -> None:
    """A terminal error makes the state failed and terminal, carrying the error object."""
    await server.publish("exec-fail", "progress", {"progress": 30, "stage": "ai_fetching", "status_text": "查询中"})
    error = {"error": "所有平台均不可用", "error_type": "platforms_down", "recoverable": False}
    await server.publish("exec-fail", "error", error)
    state = (await server.http.get("/v1/executions/exec-fail", headers=bearer("exec-fail"))).json()
    assert state["terminal"] is True and state["status"] == "failed" and state["error"] == error
    assert state["progress"] == 30 and state["status_text"] == "查询中" and state["event"] == "error"


# -- resuming and switching -------------------------------------------------------------


async def test_resume_from_the_middle_on_each_transport(server: Server) -> None:
    """From seq k, polling, SSE ?last_seq= and SSE Last-Event-ID all return exactly the socket's events after k."""
    received = await run_demo_with_socket(server, "exec-mid")
    k = len(received) // 2
    assert (await poll(server, "exec-mid", after=k, limit=1000)).json()["events"] == received[k:]
    _, by_query = await sse(server, "exec-mid", params={"last_seq": k})
    assert json.loads(by_query[0]["data"])["resumed"] is True
    assert sse_events(by_query) == received[k:]
    _, by_header = await sse(server, "exec-mid", headers={"Last-Event-ID": str(k)})
    assert sse_events(by_header) == received[k:]
    assert await ws_events(server, "exec-mid", last_seq=k) == received[k:]


async def test_last_event_id_wins_over_last_seq(server: Server) -> None:
    """An EventSource reconnecting sends Last-Event-ID; it takes precedence over the URL's last_seq."""
    received = await run_demo_with_socket(server, "exec-lei")
    _, messages = await sse(server, "exec-lei", params={"last_seq": 1}, headers={"Last-Event-ID": "5"})
    assert sse_events(messages) == received[5:]


async def test_switching_transports_mid_execution_loses_and_repeats_nothing(server: Server) -> None:
    """Socket until seq k1, polling from k1 to k2, SSE from k2 to the end: every seq exactly once."""
    eid = "exec-switch"
    steps = demo_steps(eid)
    k1, k2 = 4, 9
    ws = await server.connect(eid)
    assert (await recv_json(ws))["type"] == "connected"
    await publish_steps(server, eid, steps[:6])
    got = [await recv_json(ws) for _ in range(k1)]
    await ws.close()  # the page goes to the background with events still unread
    await publish_steps(server, eid, steps[6:8])
    polled_task = asyncio.create_task(poll_until_terminal(server, eid, after=got[-1]["seq"], limit=2, stop_at=k2))
    await publish_steps(server, eid, steps[8:10])
    polled = await polled_task
    got += polled
    assert got[-1]["seq"] >= k2
    stream_task = asyncio.create_task(sse(server, eid, headers={"Last-Event-ID": str(got[-1]["seq"])}))
    await publish_steps(server, eid, steps[10:])
    _, messages = await stream_task
    got += sse_events(messages)
    assert [e["seq"] for e in got] == list(range(1, len(steps) + 1))
    assert got == (await poll(server, eid, after=0, limit=1000)).json()["events"]


# -- long polling -----------------------------------------------------------------------


async def test_long_poll_wakes_up_on_publish_before_its_wait_ends(server: Server) -> None:
    """A poll waiting 20 s answers with the event published while it waited, long before the wait ends."""
    await server.publish("exec-lp", "progress", {"progress": 10, "stage": "queued"})
    started = time.monotonic()
    task = asyncio.create_task(poll(server, "exec-lp", after=1, wait=20, timeout=30))
    async with asyncio.timeout(5):
        while server.relay.connections < 1:  # the poll is parked on its waiter
            await asyncio.sleep(0.01)
    assert not task.done()
    r = await server.publish("exec-lp", "progress", {"progress": 20, "stage": "ai_fetching"})
    body = (await task).json()
    elapsed = time.monotonic() - started
    assert [e["seq"] for e in body["events"]] == [r.json()["seq"]] == [2]
    assert body["events"][0]["data"] == {"progress": 20, "stage": "ai_fetching"}
    assert elapsed < 10  # answered by the publish, not by the end of the 20 s wait
    assert server.relay.connections == 0


async def test_long_poll_ends_empty_when_the_wait_ends(server: Server) -> None:
    """With nothing new, a long poll answers an empty list after its (fractional) wait."""
    await server.publish("exec-lpe", "progress")
    started = time.monotonic()
    body = (await poll(server, "exec-lpe", after=1, wait=0.3)).json()
    assert time.monotonic() - started >= 0.25
    assert body["events"] == [] and body["latest_seq"] == 1 and body["next_after"] == 1
    assert body["has_more"] is False and body["terminal"] is False


async def test_long_poll_on_a_finished_execution_answers_at_once(server: Server) -> None:
    """Nothing will follow a terminal event, so a caught-up long poll does not wait."""
    await server.publish("exec-lpf", "complete", {"report": {}})
    started = time.monotonic()
    body = (await poll(server, "exec-lpf", after=1, wait=20, timeout=30)).json()
    assert time.monotonic() - started < 10
    assert body["events"] == [] and body["terminal"] is True


async def test_long_poll_waits_for_an_execution_not_started_yet(server: Server) -> None:
    """Polling an execution with no events yet answers 200 with latest_seq 0 and wakes on its first event."""
    body = (await poll(server, "exec-new", after=0)).json()
    assert body == {
        "execution_id": "exec-new",
        "events": [],
        "latest_seq": 0,
        "epoch": body["epoch"],
        "terminal": False,
        "next_after": 0,
        "has_more": False,
    }
    assert body["epoch"]  # created by the first subscriber: the first publish uses it
    task = asyncio.create_task(poll(server, "exec-new", after=0, wait=20, timeout=30))
    async with asyncio.timeout(5):
        while server.relay.connections < 1:
            await asyncio.sleep(0.01)
    await server.publish("exec-new", "progress")
    assert [e["seq"] for e in (await task).json()["events"]] == [1]


async def test_poll_reports_a_gap_when_history_was_trimmed(start_server: Callable[..., Any]) -> None:
    """When history no longer reaches back to after + 1, polling and SSE say gap and start at the oldest kept event."""
    server = await start_server(RELAY_HISTORY_SIZE="3")
    for _ in range(6):
        await server.publish("exec-gap", "progress")
    body = (await poll(server, "exec-gap", after=1)).json()
    assert [e["seq"] for e in body["events"]] == [4, 5, 6] and body["gap"] is True
    assert "gap" not in (await poll(server, "exec-gap", after=3)).json()
    await server.publish("exec-gap", "complete")
    _, messages = await sse(server, "exec-gap", params={"last_seq": 2})
    assert json.loads(messages[0]["data"])["gap"] is True
    assert [e["seq"] for e in sse_events(messages)] == [5, 6, 7]


# -- SSE details ----------------------------------------------------------------------------


async def test_sse_sends_keepalive_comments_while_idle(start_server: StartServer) -> None:
    """An idle stream gets ': keepalive' comment lines every RELAY_SSE_KEEPALIVE_INTERVAL, then the events."""
    server = await start_server(RELAY_SSE_KEEPALIVE_INTERVAL="0.05")
    params = {"token": make_token("exec-ka")}
    async with asyncio.timeout(10), server.http.stream("GET", "/v1/executions/exec-ka/stream", params=params) as r:
        lines = r.aiter_lines()
        async for line in lines:  # the stream is idle until a keepalive arrives
            if line == ": keepalive":
                break
        await server.publish("exec-ka", "complete", {"report": {"ok": True}})
        rest = [line async for line in lines]
    assert "event: complete" in rest and json.loads(rest[rest.index("event: complete") + 1][6:])["seq"] == 1


async def test_sse_on_a_finished_caught_up_execution_answers_204(server: Server) -> None:
    """Reconnecting after the terminal event gets 204, which tells EventSource to stop."""
    await server.publish("exec-204", "complete")
    response, _ = await sse(server, "exec-204", headers={"Last-Event-ID": "1"})
    assert response.status_code == 204
    response, messages = await sse(server, "exec-204")
    assert response.status_code == 200 and [e["seq"] for e in sse_events(messages)] == [1]


async def test_sse_tells_the_reader_when_its_token_expires(server: Server) -> None:
    """At the token's exp the stream sends a close message with code 4001 and ends."""
    token = make_token("exec-exp", ttl=1)  # accepted within the leeway, expires during the stream
    _, messages = await sse(server, "exec-exp", token=token)
    assert messages[-1]["event"] == "close"
    assert json.loads(messages[-1]["data"]) == {
        "type": "close",
        "code": 4001,
        "reason": "token expired",
        "reconnect": True,
    }


async def test_sse_readers_are_told_to_reconnect_when_the_server_stops(server: Server) -> None:
    """Before the server stops, open streams get a close message with code 1012 and end."""
    task = asyncio.create_task(sse(server, "exec-stop"))
    async with asyncio.timeout(5):
        while not getattr(server.app.ctx, "sse_streams", None):
            await asyncio.sleep(0.001)
    await public.close_streams(server.app)
    _, messages = await task
    assert json.loads(messages[-1]["data"])["code"] == 1012


# -- authorization ------------------------------------------------------------------------

ENDPOINTS = ["/v1/executions/{}", "/v1/executions/{}/events", "/v1/executions/{}/stream"]


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_expired_token_is_401_expired(server: Server, path: str) -> None:
    """An expired token gets 401 with reason expired and a JSON body."""
    await server.publish("exec-a", "progress")
    token = make_token("exec-a", ttl=-60)
    r = await server.http.get(path.format("exec-a"), params={"token": token})
    assert r.status_code == 401
    assert r.json()["error"] == "unauthorized" and r.json()["reason"] == "expired"
    assert r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    "token", [None, "not-a-jwt", make_token("exec-a", secret="another-secret-0123456789-abcdefghij")]
)
async def test_invalid_or_missing_token_is_401_invalid(server: Server, path: str, token: str | None) -> None:
    """A missing, malformed or badly signed token gets 401 with reason invalid."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = await server.http.get(path.format("exec-a"), headers=headers)
    assert r.status_code == 401 and r.json()["reason"] == "invalid"


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_token_for_another_execution_is_403(server: Server, path: str) -> None:
    """A valid token for execution B does not open execution A."""
    await server.publish("exec-a", "progress")
    r = await server.http.get(path.format("exec-a"), headers=bearer("exec-b"))
    assert r.status_code == 403 and r.json()["error"] == "forbidden"


async def test_token_in_query_or_header(server: Server) -> None:
    """The token is taken from Authorization: Bearer or from ?token=."""
    await server.publish("exec-q", "progress")
    by_header = await server.http.get("/v1/executions/exec-q", headers=bearer("exec-q"))
    by_query = await server.http.get("/v1/executions/exec-q", params={"token": make_token("exec-q")})
    assert by_header.status_code == by_query.status_code == 200
    assert by_header.json()["latest_seq"] == by_query.json()["latest_seq"] == 1


async def test_state_of_an_unknown_execution_is_404(server: Server) -> None:
    """The state of an execution with no (unexpired) history is 404 JSON."""
    r = await server.http.get("/v1/executions/exec-none", headers=bearer("exec-none"))
    assert r.status_code == 404 and r.json()["error"] == "not_found"


@pytest.mark.parametrize(
    ("path", "params", "headers", "field"),
    [
        ("/events", {"after": "-1"}, {}, "after"),
        ("/events", {"after": "abc"}, {}, "after"),
        ("/events", {"wait": "31"}, {}, "wait"),
        ("/events", {"wait": "soon"}, {}, "wait"),
        ("/events", {"wait": "nan"}, {}, "wait"),
        ("/events", {"limit": "0"}, {}, "limit"),
        ("/events", {"limit": "1001"}, {}, "limit"),
        ("/stream", {"last_seq": "x"}, {}, "last_seq"),
        ("/stream", {"last_seq": "-3"}, {}, "last_seq"),
        ("/stream", {}, {"Last-Event-ID": "seven"}, "Last-Event-ID"),
    ],
)
async def test_bad_query_values_are_422_naming_the_field(
    server: Server, path: str, params: dict[str, str], headers: dict[str, str], field: str
) -> None:
    """A query value out of range or not a number gets 422 with the failing field named."""
    r = await server.http.get(f"/v1/executions/exec-a{path}", params=params, headers={**bearer("exec-a"), **headers})
    assert r.status_code == 422
    assert [f["field"] for f in r.json()["fields"]] == [field]


# -- CORS -------------------------------------------------------------------------------------


async def test_cors_allows_any_origin_when_no_list_is_set(server: Server) -> None:
    """Without RELAY_ALLOWED_ORIGINS every answer, errors included, carries Access-Control-Allow-Origin: *."""
    await server.publish("exec-c", "progress")
    origin = {"Origin": "https://anywhere.example"}
    ok = await server.http.get("/v1/executions/exec-c", headers={**bearer("exec-c"), **origin})
    refused = await server.http.get("/v1/executions/exec-c", headers=origin)
    assert ok.status_code == 200 and refused.status_code == 401
    assert ok.headers["access-control-allow-origin"] == refused.headers["access-control-allow-origin"] == "*"
    assert "access-control-expose-headers" not in ok.headers


async def test_cors_with_an_allow_list(start_server: Callable[..., Any]) -> None:
    """Listed origins are echoed back, with preflight; others get 403 and no CORS grant."""
    server = await start_server(RELAY_ALLOWED_ORIGINS="https://app.example.com")
    await server.publish("exec-c", "progress")
    good, bad = {"Origin": "https://app.example.com"}, {"Origin": "https://evil.example"}
    for path in ("", "/events", "/stream"):
        pre = await server.http.options(
            f"/v1/executions/exec-c{path}",
            headers={**good, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"},
        )
        assert pre.status_code == 204
        assert pre.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "GET" in pre.headers["access-control-allow-methods"]
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()
        assert "last-event-id" in pre.headers["access-control-allow-headers"].lower()
        assert (await server.http.options(f"/v1/executions/exec-c{path}", headers=bad)).status_code == 403
    ok = await server.http.get("/v1/executions/exec-c", headers={**bearer("exec-c"), **good})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://app.example.com"
    assert ok.headers["vary"] == "Origin"
    refused = await server.http.get("/v1/executions/exec-c/events", headers={**bearer("exec-c"), **bad})
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
    no_origin = await server.http.get("/v1/executions/exec-c", headers=bearer("exec-c"))
    assert no_origin.status_code == 200  # curl and servers send no Origin: never refused for that
    async with server.http.stream("GET", "/v1/executions/exec-c/stream", headers={**bearer("exec-c"), **good}) as r:
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example.com"


# -- the demo page --------------------------------------------------------------------------


async def test_demo_page_is_served_from_the_static_folder(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/demo redirects to /demo/ keeping the query; files are served; nothing outside the folder is."""
    (tmp_path / "index.html").write_text("<h1>进度</h1>", encoding="utf-8")
    (tmp_path / "app.js").write_text("console.log(1)", encoding="utf-8")
    monkeypatch.setattr(public, "STATIC_DIR", tmp_path)
    r = await server.http.get("/demo", params={"execution_id": "x"})
    assert r.status_code in (301, 302, 307, 308) and r.headers["location"] == "/demo/?execution_id=x"
    page = await server.http.get("/demo/")
    assert page.status_code == 200 and "进度" in page.text and page.headers["content-type"].startswith("text/html")
    assert (await server.http.get("/demo/app.js")).text == "console.log(1)"
    assert (await server.http.get("/demo/missing.js")).status_code == 404
    assert (await server.http.get("/demo/%2e%2e/%2e%2e/etc/passwd")).status_code == 404


async def test_demo_page_is_404_json_without_the_folder(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the static folder /demo answers a JSON 404."""
    monkeypatch.setattr(public, "STATIC_DIR", tmp_path / "nothing")
    r = await server.http.get("/demo/")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


async def test_demo_page_is_not_served_in_production(
    start_server: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In production the demo page is not served even when its files exist."""
    (tmp_path / "index.html").write_text("demo", encoding="utf-8")
    monkeypatch.setattr(public, "STATIC_DIR", tmp_path)
    server = await start_server(RELAY_ENV="production", RELAY_JWT_SECRET="s" * 40, RELAY_PUBLISH_KEYS="k" * 40)
    assert (await server.http.get("/demo/")).status_code == 404


async def test_a_stalled_sse_reader_is_dropped_without_delaying_publishes(start_server: Callable[..., Any]) -> None:
    """An SSE reader that stops reading overflows its bounded queue and is cut off; publishing never waits."""
    server = await start_server(RELAY_SEND_QUEUE_SIZE="4")
    closes = counted("slow_consumer_closes")
    token = make_token("exec-slow")
    _reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(f"GET /v1/executions/exec-slow/stream?token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    async with asyncio.timeout(5):
        while server.relay.connections < 1:
            await asyncio.sleep(0.01)
    big = {"platform": "x", "blob": "字" * 100_000}  # about 300 kB a frame; the reader never reads
    started = time.monotonic()
    for _ in range(60):
        assert (await server.publish("exec-slow", "result", big)).status_code == 202
    assert time.monotonic() - started < 20
    async with asyncio.timeout(5):
        while server.relay.connections > 0:
            await asyncio.sleep(0.01)
    assert counted("slow_consumer_closes") == closes + 1
    writer.close()


async def test_while_draining_polls_do_not_wait_and_streams_send_1012(server: Server) -> None:
    """A draining instance answers long polls at once and tells new SSE readers to reconnect (1012)."""
    await server.publish("exec-drain", "progress")
    server.app.ctx.draining = True
    started = time.monotonic()
    body = (await poll(server, "exec-drain", after=1, wait=20, timeout=30)).json()
    assert body["events"] == [] and time.monotonic() - started < 10
    _, messages = await sse(server, "exec-drain")
    assert [m.get("event") for m in messages] == ["close"]
    assert json.loads(messages[0]["data"])["code"] == 1012 and messages[0]["retry"] == str(public.SSE_RETRY_MS)
    server.app.ctx.draining = False


async def test_demo_api_starts_an_execution_and_mints_tokens_only_for_its_own(server: Server) -> None:
    """POST /demo/api/executions runs a simulated diagnosis here; /demo/api/tokens refuses other executions."""
    r = await server.http.post("/demo/api/executions", json={"pace": 0})
    assert r.status_code == 201, r.text
    eid, token = r.json()["execution_id"], r.json()["token"]
    _, messages = await sse(server, eid, token=token)
    events = sse_events(messages)
    assert events[-1]["event"] == "complete" and [e["seq"] for e in events] == list(range(1, len(events) + 1))
    fresh = await server.http.post("/demo/api/tokens", json={"execution_id": eid})
    assert fresh.status_code == 201
    state = await server.http.get(f"/v1/executions/{eid}", params={"token": fresh.json()["token"]})
    assert state.json()["status"] == "completed"
    assert (await server.http.post("/demo/api/tokens", json={"execution_id": "exec-real"})).status_code == 403
    bad = await server.http.post("/demo/api/executions", json={"pace": "fast"})
    assert bad.status_code == 422 and bad.json()["fields"][0]["field"] == "pace"


async def test_demo_api_is_not_served_in_production(start_server: Callable[..., Any]) -> None:
    """In production the demo API answers 404 and starts nothing."""
    server = await start_server(RELAY_ENV="production", RELAY_JWT_SECRET="s" * 40, RELAY_PUBLISH_KEYS="k" * 40)
    assert (await server.http.post("/demo/api/executions", json={})).status_code == 404
    assert (await server.http.post("/demo/api/tokens", json={"execution_id": "x"})).status_code == 404


async def test_sse_tells_the_reader_when_its_token_is_revoked(server: Server) -> None:
    """Revoking the stream's token ends it with a close message carrying 4500 (do not reconnect)."""
    token = make_token("exec-rev", jti="sse-rev-1")
    task = asyncio.create_task(sse(server, "exec-rev", token=token))
    async with asyncio.timeout(5):
        while server.relay.connections < 1:
            await asyncio.sleep(0.01)
    r = await server.http.post(
        "/internal/v1/revocations", json={"jti": "sse-rev-1"}, headers={"Authorization": f"Bearer {PUBLISH_KEY}"}
    )
    assert r.status_code == 202
    _, messages = await task
    assert json.loads(messages[-1]["data"]) == {
        "type": "close",
        "code": 4500,
        "reason": "token revoked",
        "reconnect": False,
    }
