"""Long polls hold a connection like a socket: limits, token expiry and revocation apply (issue 15 item 5)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import PUBLISH_KEY, Server, StartServer, make_token
from tests.redis_util import redis_url  # noqa: F401 - fixture

AUTH = {"Authorization": f"Bearer {PUBLISH_KEY}"}


async def poll(server: Server, execution_id: str, token: str, timeout: float = 10.0, **params: Any) -> httpx.Response:
    """One GET of the polling endpoint with ``token``."""
    return await server.http.get(
        f"/v1/executions/{execution_id}/events",
        params=params,
        headers={"Authorization": f"Bearer {token}"},
        timeout=timeout,
    )


async def waiting(server: Server, execution_id: str | set[str], count: int) -> None:
    """Wait until ``count`` requests wait on ``execution_id`` (or on these, in all), registered with the hub."""
    ids = {execution_id} if isinstance(execution_id, str) else execution_id
    async with asyncio.timeout(5):
        while sum(server.relay.hub.subscribers(e) for e in ids) < count:
            await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    ("env", "tokens"),
    [
        ({"RELAY_MAX_CONNECTIONS_PER_SUB": "3"}, [("lp", "u")] * 4),
        ({"RELAY_MAX_CONNECTIONS_PER_EXECUTION": "3"}, [("lp", f"u{i}") for i in range(4)]),
        ({"RELAY_MAX_CONNECTIONS": "3"}, [(f"lp{i}", f"u{i}") for i in range(4)]),
    ],
    ids=["per-user", "per-execution", "instance"],
)
async def test_waiting_polls_count_toward_the_connection_limits(
    start_server: StartServer, env: dict[str, str], tokens: list[tuple[str, str]]
) -> None:
    """Past a connection limit a long poll gets 429; a short poll (wait=0) is never counted."""
    server = await start_server(**env)
    held = []
    executions = {e for e, _ in tokens}
    for eid, sub in tokens[:3]:
        held.append(asyncio.create_task(poll(server, eid, make_token(eid, sub=sub), after=0, wait=20, timeout=30)))
        await waiting(server, executions, len(held))
    eid, sub = tokens[3]
    r = await poll(server, eid, make_token(eid, sub=sub), after=0, wait=20)
    assert r.status_code == 429 and r.json()["error"] == "rate_limited"
    assert (await poll(server, eid, make_token(eid, sub=sub), after=0)).status_code == 200  # wait=0: not counted
    for waited in {e for e, _ in tokens[:3]}:
        assert (await server.publish(waited)).status_code == 202
    for task in held:
        assert (await task).status_code == 200
    r = await poll(server, eid, make_token(eid, sub=sub), after=1, wait=0.1)  # released: counted and served again
    assert r.status_code == 200


async def test_a_long_poll_ends_by_its_tokens_expiry(server: Server) -> None:
    """A poll never returns an event published after its token expired: the wait ends at ``exp``."""
    exp = int(time.time()) + 2
    token = make_token("lp-exp", exp=exp)
    task = asyncio.create_task(poll(server, "lp-exp", token, after=0, wait=20, timeout=30))
    await waiting(server, "lp-exp", 1)
    while time.time() < exp + 0.5:  # the token has expired (the leeway still accepts it at the door)
        await asyncio.sleep(0.05)
    assert (await server.publish("lp-exp")).status_code == 202
    r = await task
    assert r.status_code == 200 and r.json()["events"] == []


async def test_a_revocation_wakes_and_refuses_a_waiting_poll(server: Server) -> None:
    """Revoking the token (by jti or by sub) answers a waiting poll 401 revoked at once, with no event."""
    for field, value, token in (
        ("jti", "lp-jti", make_token("lp-rev", jti="lp-jti")),
        ("sub", "lp-user", make_token("lp-rev", sub="lp-user", iat=int(time.time()) - 5)),
    ):
        task = asyncio.create_task(poll(server, "lp-rev", token, after=0, wait=20, timeout=30))
        await waiting(server, "lp-rev", 1)
        r = await server.http.post("/internal/v1/revocations", json={field: value}, headers=AUTH)
        assert r.status_code == 202
        async with asyncio.timeout(5):
            answer = await task
        assert answer.status_code == 401 and answer.json()["reason"] == "revoked", answer.text


async def test_a_revocation_on_another_instance_refuses_a_waiting_poll(
    start_server: StartServer, redis_url: str
) -> None:
    """With two instances on one Redis, a revocation posted to A answers the poll waiting on B 401 revoked."""
    prefix = f"lp-revoke-{uuid.uuid4().hex[:8]}"
    a = await start_server(RELAY_BROKER_URL=redis_url, RELAY_REDIS_PREFIX=prefix)
    b = await start_server(RELAY_BROKER_URL=redis_url, RELAY_REDIS_PREFIX=prefix)
    token = make_token("lp-x", jti=f"j-{prefix}")
    task = asyncio.create_task(poll(b, "lp-x", token, after=0, wait=20, timeout=30))
    await waiting(b, "lp-x", 1)
    r = await a.http.post("/internal/v1/revocations", json={"jti": f"j-{prefix}"}, headers=AUTH)
    assert r.status_code == 202
    async with asyncio.timeout(5):
        answer = await task
    assert answer.status_code == 401 and answer.json()["reason"] == "revoked"
