"""Revocation: by jti or by sub, live sockets closed with 4500 and new ones refused."""

from __future__ import annotations

import asyncio
import time

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.conftest import PUBLISH_KEY, Server, StartServer, counted, make_token, recv_json
from tests.redis_util import redis_url  # noqa: F401 - fixture

AUTH = {"Authorization": f"Bearer {PUBLISH_KEY}"}


async def closed_code(ws: ClientConnection) -> int:
    """Wait for the server to close ``ws``; return the code."""
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code is not None
    return int(ws.close_code)


async def test_revoke_by_jti_closes_that_socket_only_and_refuses_it_again(server: Server) -> None:
    """Revoking one jti closes sockets using that token with 4500 (counted); other tokens of the user go on."""
    closes = counted("revoked_closes")
    revoked, other = make_token("e1", jti="t-1"), make_token("e1", jti="t-2")
    a, b = await server.connect("e1", token=revoked), await server.connect("e1", token=other)
    await recv_json(a)
    await recv_json(b)
    r = await server.http.post("/internal/v1/revocations", json={"jti": "t-1"}, headers=AUTH)
    assert r.status_code == 202, r.text
    assert await closed_code(a) == 4500
    assert counted("revoked_closes") == closes + 1
    await server.publish("e1")
    assert (await recv_json(b))["seq"] == 1
    again = await server.connect("e1", token=revoked)
    assert await closed_code(again) == 4500


async def test_revoke_by_sub_covers_tokens_issued_before_not_after(start_server: StartServer) -> None:
    """Revoking a sub closes its live sockets and refuses its older tokens; a token issued later works."""
    server = await start_server(RELAY_JWT_LEEWAY="1")
    old = make_token("e1", sub="mallory", iat=int(time.time()) - 10)
    ws = await server.connect("e1", token=old)
    await recv_json(ws)
    revoked_at = time.time()
    r = await server.http.post("/internal/v1/revocations", json={"sub": "mallory", "ttl_seconds": 600}, headers=AUTH)
    assert r.status_code == 202
    assert await closed_code(ws) == 4500
    assert await closed_code(await server.connect("e1", token=old)) == 4500
    # Issued after the revocation and its 1 s leeway; valid once the clock reaches iat - leeway.
    issued = int(revoked_at) + 3
    while time.time() < issued - 1:
        await asyncio.sleep(0.05)
    fresh = make_token("e1", sub="mallory", iat=issued)
    assert (await recv_json(await server.connect("e1", token=fresh)))["type"] == "connected"


async def test_revoke_by_sub_covers_tokens_issued_ahead_within_the_leeway(server: Server) -> None:
    """A token whose iat is ahead of the revocation by less than the leeway (still accepted) is revoked too."""
    ahead = make_token("e1", sub="mallory", iat=int(time.time()) + 8)  # the default leeway is 10 s
    ws = await server.connect("e1", token=ahead)
    assert (await recv_json(ws))["type"] == "connected"
    r = await server.http.post("/internal/v1/revocations", json={"sub": "mallory", "ttl_seconds": 600}, headers=AUTH)
    assert r.status_code == 202
    assert await closed_code(ws) == 4500
    assert await closed_code(await server.connect("e1", token=ahead)) == 4500


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "jti"),
        ({"jti": ""}, "jti"),
        ({"sub": 5}, "sub"),
        ({"jti": "x", "ttl_seconds": 0}, "ttl_seconds"),
        ({"jti": "x", "why": "y"}, "why"),
    ],
)
async def test_revocation_validation(server: Server, body: dict[str, object], field: str) -> None:
    """Bad revocation requests answer 422 naming the field."""
    r = await server.http.post("/internal/v1/revocations", json=body, headers=AUTH)
    assert r.status_code == 422 and field in {f["field"] for f in r.json()["fields"]}


async def test_revocation_needs_the_publisher_key(server: Server) -> None:
    """A subscriber token cannot revoke anything."""
    r = await server.http.post(
        "/internal/v1/revocations", json={"sub": "u"}, headers={"Authorization": f"Bearer {make_token('e1')}"}
    )
    assert r.status_code == 401


async def test_revocation_reaches_sockets_on_another_instance(start_server: StartServer, redis_url: str) -> None:
    """With two instances on one Redis, a revocation posted to A closes the socket held by B (4500)."""
    import uuid

    prefix = f"revoke-{uuid.uuid4().hex[:8]}"
    a = await start_server(RELAY_BROKER_URL=redis_url, RELAY_REDIS_PREFIX=prefix)
    b = await start_server(RELAY_BROKER_URL=redis_url, RELAY_REDIS_PREFIX=prefix)
    token = make_token("e1", jti=f"j-{prefix}")
    ws = await b.connect("e1", token=token)
    await recv_json(ws)
    r = await a.http.post("/internal/v1/revocations", json={"jti": f"j-{prefix}"}, headers=AUTH)
    assert r.status_code == 202
    assert await closed_code(ws) == 4500
    assert await closed_code(await a.connect("e1", token=token)) == 4500


async def test_revoked_token_is_refused_on_http_endpoints_and_ends_sse(server: Server) -> None:
    """After revocation, polling and state answer 401 (reason revoked) and a live SSE stream ends."""
    token = make_token("e1", jti="h-1")
    await server.publish("e1")
    async with server.http.stream("GET", f"/v1/executions/e1/stream?token={token}") as stream:
        assert stream.status_code == 200
        r = await server.http.post("/internal/v1/revocations", json={"jti": "h-1"}, headers=AUTH)
        assert r.status_code == 202
        body = b""
        async with asyncio.timeout(5):
            async for chunk in stream.aiter_bytes():
                body += chunk
        assert b'"seq":1' in body  # what it had before, then the stream ended
    for path in ("/v1/executions/e1/events", "/v1/executions/e1"):
        r = await server.http.get(path, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401 and r.json()["reason"] == "revoked", path
