"""Internal publisher API: validation, idempotency, batches, tokens, stats."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PUBLISH_KEY, SECRET, Server, make_token, recv_json

AUTH = {"Authorization": f"Bearer {PUBLISH_KEY}"}


async def post(
    server: Server, path: str, body: Any = None, content: bytes | None = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    """POST to the internal API with the publisher key unless headers say otherwise."""
    hdrs = AUTH if headers is None else headers
    if content is not None:
        return await server.http.post(path, content=content, headers=hdrs)
    return await server.http.post(path, json=body, headers=hdrs)


def fields(response: httpx.Response) -> set[str]:
    """The failing field names of a 422."""
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "validation_failed"
    return {f["field"] for f in body["fields"]}


async def test_missing_or_wrong_publisher_key_is_401(server: Server) -> None:
    """Without the publisher key, or with a wrong one, every internal route answers 401 JSON."""
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": PUBLISH_KEY}):
        r = await post(server, "/internal/v1/executions/e1/events", {"event": "complete"}, headers=headers)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    r = await server.http.get("/internal/v1/stats")
    assert r.status_code == 401


async def test_subscriber_token_is_not_a_publisher_key(server: Server) -> None:
    """A valid subscriber token cannot publish."""
    token = make_token("e1")
    r = await post(
        server, "/internal/v1/executions/e1/events", {"event": "complete"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 401


async def test_body_that_is_not_json_is_400(server: Server) -> None:
    """A body that is not JSON answers 400 and nothing is published."""
    for content in (b"{not json", b"", b"\xff\xfe"):
        r = await post(server, "/internal/v1/executions/e1/events", content=content)
        assert r.status_code == 400, content
        assert r.json()["error"] == "bad_request"
    assert (await server.relay.history("e1")).latest_seq == 0


async def test_values_json_readers_cannot_take_are_400_and_never_stored(server: Server) -> None:
    """NaN, Infinity, 1e400 and unpaired surrogates (in values, keys or the idempotency key) are refused."""
    bodies = (
        b'{"event":"result","data":{"x":NaN}}',
        b'{"event":"result","data":{"x":-Infinity}}',
        b'{"event":"result","data":{"x":1e400}}',
        b'{"event":"result","data":{"\\ud800":1}}',
        b'{"event":"complete","data":{"report":{"s":"\\udfff"}}}',
    )
    for content in bodies:
        r = await post(server, "/internal/v1/executions/e1/events", content=content)
        assert r.status_code == 400 and r.json()["error"] == "bad_request", (content, r.text)
    r = await post(
        server, "/internal/v1/executions/e1/events", content=b'{"event":"complete","idempotency_key":"\\ud800"}'
    )
    assert fields(r) == {"idempotency_key"}
    # A field name no JSON writer can echo as UTF-8 still gets a readable 422, not a 500.
    r = await post(server, "/internal/v1/executions/e1/events", content=b'{"event":"complete","\\ud800x":1}')
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == "\ud800x"
    assert (await server.relay.history("e1")).latest_seq == 0


async def test_batch_refuses_only_the_item_json_readers_cannot_take(server: Server) -> None:
    """In a batch, an item holding NaN is refused (400) and the others are published."""
    content = (
        b'{"events":[{"execution_id":"b1","event":"result","data":{"a":1}},'
        b'{"execution_id":"b1","event":"result","data":{"a":NaN}},'
        b'{"execution_id":"\\ud800","event":"result","data":{"a":1}},'
        b'{"execution_id":"b1","event":"complete"}]}'
    )
    r = await post(server, "/internal/v1/events", content=content)
    assert r.status_code == 202, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == [202, 400, 422, 202]
    assert results[1]["error"] == "bad_request" and "events[1]" in results[1]["message"]
    assert results[2]["execution_id"] == "\ud800"
    assert [x.get("seq") for x in results] == [1, None, None, 2]
    page = await server.relay.history("b1")
    assert [e.seq for e in page.events] == [1, 2] and page.terminal


async def test_oversized_body_is_413(server: Server) -> None:
    """A body above RELAY_MAX_BODY_SIZE answers 413 with a JSON error."""
    big = {"event": "result", "data": {"blob": "x" * (1024 * 1024 + 10)}}
    r = await post(server, "/internal/v1/executions/e1/events", big)
    assert r.status_code == 413
    assert r.json()["error"] == "payload_too_large"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ([], {"body"}),
        ("progress", {"body"}),
        ({}, {"event"}),
        ({"event": "finish"}, {"event"}),
        ({"event": "progress"}, {"data"}),
        ({"event": "progress", "data": []}, {"data"}),
        ({"event": "progress", "data": {"stage": "x"}}, {"data.progress"}),
        ({"event": "progress", "data": {"progress": 101, "stage": "x"}}, {"data.progress"}),
        ({"event": "progress", "data": {"progress": -1, "stage": "x"}}, {"data.progress"}),
        ({"event": "progress", "data": {"progress": 5.5, "stage": "x"}}, {"data.progress"}),
        ({"event": "progress", "data": {"progress": True, "stage": "x"}}, {"data.progress"}),
        ({"event": "progress", "data": {"progress": 5}}, {"data.stage"}),
        (
            {"event": "progress", "data": {"progress": 5, "stage": 3, "status": 1, "status_text": []}},
            {"data.stage", "data.status", "data.status_text"},
        ),
        ({"event": "result", "data": "text"}, {"data"}),
        ({"event": "complete", "data": {"report": "text"}}, {"data.report"}),
        ({"event": "error", "data": {}}, {"data.error"}),
        (
            {"event": "error", "data": {"error": "x", "error_type": 1, "error_details": "d", "recoverable": "yes"}},
            {"data.error_type", "data.error_details", "data.recoverable"},
        ),
        ({"event": "complete", "timestamp": "yesterday"}, {"timestamp"}),
        ({"event": "complete", "idempotency_key": ""}, {"idempotency_key"}),
        ({"event": "complete", "idempotency_key": 7}, {"idempotency_key"}),
        ({"event": "complete", "colour": "red"}, {"colour"}),
        ({"event": "complete", "execution_id": "other"}, {"execution_id"}),
    ],
)
async def test_invalid_bodies_are_422_naming_each_field(server: Server, body: Any, expected: set[str]) -> None:
    """Each contract violation answers 422 naming exactly the failing fields; nothing is published."""
    r = await post(server, "/internal/v1/executions/e1/events", body)
    assert fields(r) == expected
    assert (await server.relay.history("e1")).latest_seq == 0


async def test_invalid_execution_id_in_path_is_422(server: Server) -> None:
    """An execution id outside the accepted format answers 422 naming execution_id."""
    r = await post(server, "/internal/v1/executions/" + "x" * 200 + "/events", {"event": "complete"})
    assert fields(r) == {"execution_id"}


async def test_valid_events_are_accepted_with_consecutive_seq(server: Server) -> None:
    """Valid events of every type answer 202 with seq 1, 2, 3, ..."""
    bodies = [
        {"event": "progress", "data": {"progress": 0, "stage": "queued", "status": "pending", "status_text": "排队中"}},
        {"event": "result", "data": {"platform": "deepseek", "answer": {"rank": 2}}},
        {"event": "error", "data": {"error": "timeout", "recoverable": True, "error_details": {"p": "kimi"}}},
        {"event": "progress", "data": {"progress": 100, "stage": "report"}, "timestamp": "2026-02-27T21:30:00Z"},
        {"event": "complete", "data": {"report": {"score": 87}}},
    ]
    for i, body in enumerate(bodies, start=1):
        r = await post(server, "/internal/v1/executions/e1/events", body)
        assert r.status_code == 202, r.text
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {"execution_id": "e1", "seq": i, "duplicate": False}
    page = await server.relay.history("e1")
    assert page.terminal and page.latest_seq == 5
    first = page.events[0].as_dict()
    assert first["data"]["status_text"] == "排队中"
    assert page.events[3].as_dict()["timestamp"] == "2026-02-27T21:30:00Z"


async def test_publish_after_terminal_is_409(server: Server) -> None:
    """After complete (or a fatal error) the execution refuses more events with 409."""
    await post(server, "/internal/v1/executions/e1/events", {"event": "complete"})
    r = await post(
        server, "/internal/v1/executions/e1/events", {"event": "progress", "data": {"progress": 1, "stage": "x"}}
    )
    assert r.status_code == 409 and r.json()["error"] == "execution_finished"
    await post(server, "/internal/v1/executions/e2/events", {"event": "error", "data": {"error": "boom"}})
    r = await post(server, "/internal/v1/executions/e2/events", {"event": "complete"})
    assert r.status_code == 409


async def test_idempotent_retry_returns_first_seq_and_delivers_once(server: Server) -> None:
    """The same idempotency_key returns the first seq with duplicate: true and delivers nothing again."""
    ws = await server.connect("e1")
    await recv_json(ws)
    body = {"event": "progress", "data": {"progress": 5, "stage": "x"}, "idempotency_key": "k-1"}
    first = await post(server, "/internal/v1/executions/e1/events", body)
    again = await post(server, "/internal/v1/executions/e1/events", body)
    assert first.json() == {"execution_id": "e1", "seq": 1, "duplicate": False}
    assert again.status_code == 202 and again.json() == {"execution_id": "e1", "seq": 1, "duplicate": True}
    await post(server, "/internal/v1/executions/e1/events", {"event": "complete", "idempotency_key": "k-2"})
    # A retry of an event accepted before the terminal one is still answered as a duplicate, not 409.
    late = await post(server, "/internal/v1/executions/e1/events", body)
    assert late.status_code == 202 and late.json()["duplicate"] is True
    frames = [await recv_json(ws), await recv_json(ws)]
    assert [f["seq"] for f in frames] == [1, 2]


async def test_concurrent_publishers_get_unique_consecutive_seqs(server: Server) -> None:
    """100 concurrent POSTs to one execution get seq 1..100 exactly once."""
    results = await asyncio.gather(
        *(post(server, "/internal/v1/executions/e1/events", {"event": "result", "data": {"i": i}}) for i in range(100))
    )
    assert sorted(r.json()["seq"] for r in results) == list(range(1, 101))


async def test_batch_publishes_in_order_with_one_result_per_item(server: Server) -> None:
    """A batch answers 202 with one result per item, in order, including per-item errors."""
    events = [
        {"execution_id": "b1", "event": "progress", "data": {"progress": 1, "stage": "x"}},
        {"execution_id": "b2", "event": "progress", "data": {"progress": 1, "stage": "x"}},
        {"execution_id": "b1", "event": "progress", "data": {"progress": 200, "stage": "x"}},
        {"execution_id": "b1", "event": "complete"},
        {"execution_id": "b1", "event": "result", "data": {}},
        {"event": "complete"},
        "nonsense",
        {"execution_id": "b2", "event": "result", "data": {"a": 1}, "idempotency_key": "z"},
        {"execution_id": "b2", "event": "result", "data": {"a": 1}, "idempotency_key": "z"},
    ]
    r = await post(server, "/internal/v1/events", {"events": events})
    assert r.status_code == 202, r.text
    results = r.json()["results"]
    assert len(results) == len(events)
    assert results[0] == {"execution_id": "b1", "seq": 1, "duplicate": False, "status": 202}
    assert results[1]["seq"] == 1 and results[1]["execution_id"] == "b2"
    assert results[2]["status"] == 422 and results[2]["fields"][0]["field"] == "events[2].data.progress"
    assert results[3]["seq"] == 2
    assert results[4]["status"] == 409 and results[4]["error"] == "execution_finished"
    assert results[5]["status"] == 422 and results[5]["fields"][0]["field"] == "events[5].execution_id"
    assert results[6]["status"] == 422
    assert results[7] == {"execution_id": "b2", "seq": 2, "duplicate": False, "status": 202}
    assert results[8] == {"execution_id": "b2", "seq": 2, "duplicate": True, "status": 202}


@pytest.mark.parametrize("body", [{}, {"events": []}, {"events": {}}, [1, 2]])
async def test_batch_without_events_is_422(server: Server, body: Any) -> None:
    """A batch body without a non-empty events array answers 422 naming events."""
    assert fields(await post(server, "/internal/v1/events", body)) == {"events"}


async def test_batch_over_the_limit_is_422(server: Server) -> None:
    """More than 1000 events in one batch answers 422 and publishes nothing."""
    events = [{"execution_id": "b1", "event": "result", "data": {}} for _ in range(1001)]
    assert fields(await post(server, "/internal/v1/events", {"events": events})) == {"events"}
    assert (await server.relay.history("b1")).latest_seq == 0


async def test_mint_token_returns_a_token_that_opens_only_its_execution(server: Server) -> None:
    """POST /internal/v1/tokens answers 201 with a token for that execution and user."""
    r = await post(server, "/internal/v1/tokens", {"execution_id": "e9", "sub": "alice", "ttl_seconds": 120})
    assert r.status_code == 201, r.text
    body = r.json()
    claims = jwt.decode(body["token"], SECRET, algorithms=["HS256"], audience="progress-relay")
    assert claims["execution_id"] == "e9" and claims["sub"] == "alice"
    assert body["expires_at"] == claims["exp"] and claims["exp"] - claims["iat"] == 120
    ws = await server.connect("e9", token=body["token"])
    assert (await recv_json(ws))["type"] == "connected"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, {"execution_id", "sub"}),
        ({"execution_id": "e 1", "sub": "a"}, {"execution_id"}),
        ({"execution_id": "e1", "sub": ""}, {"sub"}),
        ({"execution_id": "e1", "sub": "a", "ttl_seconds": 0}, {"ttl_seconds"}),
        ({"execution_id": "e1", "sub": "a", "ttl_seconds": 10**9}, {"ttl_seconds"}),
        ({"execution_id": "e1", "sub": "a", "ttl_seconds": "60"}, {"ttl_seconds"}),
        ({"execution_id": "e1", "sub": "a", "admin": True}, {"admin"}),
    ],
)
async def test_mint_token_validation(server: Server, body: dict[str, Any], expected: set[str]) -> None:
    """Bad token requests answer 422 naming the fields."""
    assert fields(await post(server, "/internal/v1/tokens", body)) == expected


async def test_stats_counts_connections_and_events(server: Server) -> None:
    """GET /internal/v1/stats reports open connections, executions and accepted events, for the instance."""
    before = (await server.http.get("/internal/v1/stats", headers=AUTH)).json()
    ws = await server.connect("e1")
    await recv_json(ws)
    await post(server, "/internal/v1/executions/e1/events", {"event": "result", "data": {}})
    r = await server.http.get("/internal/v1/stats", headers=AUTH)
    assert r.status_code == 200
    stats = r.json()
    assert (stats["scope"], stats["workers"], stats["broker"]) == ("instance", 1, "memory")
    assert stats["connections"] == before["connections"] + 1 and stats["executions"] == before["executions"] + 1
    accepted = stats["counters"]["events_accepted"]["result"]
    assert accepted == before["counters"].get("events_accepted", {}).get("result", 0) + 1
    opened = stats["counters"]["connections_opened"]["ws"]
    assert opened == before["counters"].get("connections_opened", {}).get("ws", 0) + 1
    assert (
        stats["gauges"]["connections_open"]["ws"] == stats["connections"] - stats["gauges"]["connections_open"]["sse"]
    )


async def test_stats_and_metrics_report_the_same_numbers(server: Server) -> None:
    """Every counter in /internal/v1/stats is the /metrics sample of the same name and labels, and the reverse."""
    body = {"event": "progress", "data": {"progress": 1, "stage": "a"}}
    await post(server, "/internal/v1/executions/same/events", body)
    stats = (await server.http.get("/internal/v1/stats", headers=AUTH)).json()
    text = (await server.http.get("/metrics")).text
    scraped = {
        (family.name, tuple(sample.labels.values())): sample.value
        for family in text_string_to_metric_families(text)
        if family.type == "counter" and family.name.startswith("relay_")
        for sample in family.samples
        if sample.name.endswith("_total")
    }

    def leaves(node: Any, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any]]:
        if isinstance(node, dict):
            return [leaf for key, child in node.items() for leaf in leaves(child, (*path, key))]
        return [(path, node)]

    reported = {
        (f"relay_{path[0]}", path[1:]): number
        for name, node in stats["counters"].items()
        for path, number in leaves(node, (name,))
    }
    assert reported[("relay_events_accepted", ("progress",))] >= 1
    assert reported == scraped


async def test_unknown_route_and_method_are_json_errors(server: Server) -> None:
    """Unknown paths answer 404 and wrong methods 405, both as JSON."""
    r = await server.http.get("/nope")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = await server.http.get("/internal/v1/tokens", headers=AUTH)
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


@pytest.mark.parametrize("duplicate", [False, True])
def test_publish_answer_is_the_relay_encoders_text(duplicate: bool) -> None:
    """The single publish's 202 body, written without the encoder, is byte for byte what dumps() writes."""
    from service.brokers import PublishResult
    from service.events import dumps
    from service.web.routes.internal import _result_body, _result_text

    result = PublishResult("exec.1:a-B_2", 12345678901, duplicate)
    assert _result_text(result) == dumps(_result_body(result))
