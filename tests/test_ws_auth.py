"""WebSocket authorization: every refusal closes with the contract's code before any frame."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.exceptions import ConnectionClosed

from tests.conftest import PUBLISH_KEY, SECRET, Server, StartServer, make_settings, make_token, recv_json


async def closed_with(server: Server, url_token: str | None, execution_id: str = "exec-1", **kwargs: object) -> int:
    """Connect, expect no frame at all, and return the close code."""
    ws = await server.connect(execution_id, token=url_token, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConnectionClosed):
        frame = await asyncio.wait_for(ws.recv(), 5)
        pytest.fail(f"server sent a frame before refusing: {frame!r}")
    assert ws.close_code is not None
    return ws.close_code


async def test_expired_token_closes_4001(server: Server) -> None:
    """An expired token closes with 4001 (get a fresh token)."""
    assert await closed_with(server, make_token(ttl=-120)) == 4001


async def test_missing_token_closes_4500(server: Server) -> None:
    """No token at all closes with 4500."""
    assert await closed_with(server, "") == 4500


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "a.b", "a.b.c.d", "x" * 9000])
async def test_malformed_token_closes_4500(server: Server, token: str) -> None:
    """Malformed, truncated, over-long and extra-segment tokens close with 4500."""
    assert await closed_with(server, token) == 4500


async def test_bad_signature_closes_4500(server: Server) -> None:
    """A token signed with another secret closes with 4500."""
    assert await closed_with(server, make_token(secret="another-secret-0123456789-0123456789")) == 4500


async def test_wrong_audience_closes_4500(server: Server) -> None:
    """A token for another audience closes with 4500."""
    assert await closed_with(server, make_token(aud="someone-else")) == 4500


async def test_missing_required_claims_close_4500(server: Server) -> None:
    """Tokens without sub, execution_id, exp or aud are refused with 4500."""
    for claim in ("sub", "execution_id", "exp", "aud"):
        assert await closed_with(server, make_token(**{claim: None})) == 4500, claim


@pytest.mark.parametrize("value", [123, ["exec-1"], {"id": "exec-1"}])
async def test_execution_id_of_wrong_type_closes_4500(server: Server, value: object) -> None:
    """An execution_id claim that is not a string is refused with 4500."""
    assert await closed_with(server, make_token(execution_id=value)) == 4500  # type: ignore[arg-type]


async def test_token_for_other_execution_closes_4503(server: Server) -> None:
    """A valid token for execution A on execution B closes with 4503 and B's events stay private."""
    await server.publish("exec-B", "progress")
    assert await closed_with(server, make_token("exec-A"), execution_id="exec-B") == 4503


async def test_alg_none_closes_4500(server: Server) -> None:
    """An unsigned token (alg none) is refused with 4500."""
    token = jwt.encode(
        {"sub": "u", "execution_id": "exec-1", "aud": "progress-relay", "exp": int(time.time()) + 60},
        None,
        algorithm="none",
    )  # type: ignore[arg-type]
    assert await closed_with(server, token) == 4500


async def test_not_yet_valid_tokens_close_4500(server: Server) -> None:
    """``nbf`` and iat in the future (beyond the leeway) are refused with 4500."""
    later = int(time.time()) + 600
    assert await closed_with(server, make_token(nbf=later)) == 4500
    assert await closed_with(server, make_token(iat=later)) == 4500


# exp: true is left out: PyJWT reads it as 1 and refuses it as expired (4001) before any type check.
_NOT_NUMBERS = [(c, k) for c in ("exp", "nbf", "iat") for k in ("string", "boolean", "null", "list")]


@pytest.mark.parametrize(("claim", "kind"), [p for p in _NOT_NUMBERS if p != ("exp", "boolean")])
async def test_date_claims_must_be_json_numbers(server: Server, claim: str, kind: str) -> None:
    """``exp``, ``nbf`` and ``iat`` given as anything but a JSON number (RFC 7519 NumericDate) close with 4500."""
    number = int(time.time()) + (600 if claim == "exp" else -5)
    value = {"string": str(number), "boolean": True, "null": None, "list": [number]}[kind]
    payload = {"sub": "u", "execution_id": "exec-1", "aud": "progress-relay", "exp": int(time.time()) + 600}
    payload[claim] = value
    assert await closed_with(server, jwt.encode(payload, SECRET, algorithm="HS256")) == 4500


async def test_wrong_issuer_closes_4500(start_server: StartServer) -> None:
    """With RELAY_JWT_ISSUER set, a token from another issuer (or none) is refused."""
    server = await start_server(RELAY_JWT_ISSUER="https://backend.example")
    assert await closed_with(server, make_token(iss="https://evil.example")) == 4500
    assert await closed_with(server, make_token()) == 4500
    ws = await server.connect(token=make_token(iss="https://backend.example"))
    assert (await recv_json(ws))["type"] == "connected"


async def test_publisher_key_is_not_a_subscriber_token(server: Server) -> None:
    """The publisher key presented as a token is refused with 4500."""
    assert await closed_with(server, PUBLISH_KEY) == 4500


async def test_token_in_authorization_header_is_accepted(server: Server) -> None:
    """The mini-program way: the token in Authorization: Bearer, not in the URL."""
    ws = await server.connect(token="", additional_headers={"Authorization": f"Bearer {make_token()}"})
    assert (await recv_json(ws))["type"] == "connected"


async def test_unknown_kid_closes_4500(start_server: StartServer) -> None:
    """With a key set, an unknown (or malicious) kid is refused; a known kid works (rotation)."""
    server = await start_server(RELAY_JWT_SECRET=f"new:{SECRET}-new,old:{SECRET}")
    assert await closed_with(server, make_token(headers={"kid": "../../etc/passwd"})) == 4500
    ws = await server.connect(token=make_token(secret=SECRET, headers={"kid": "old"}))
    assert (await recv_json(ws))["type"] == "connected"
    ws = await server.connect(token=make_token(secret=f"{SECRET}-new", headers={"kid": "new"}))
    assert (await recv_json(ws))["type"] == "connected"


async def test_origin_not_allowed_closes_4503(start_server: StartServer) -> None:
    """With RELAY_ALLOWED_ORIGINS, another Origin closes with 4503; a listed one and none are accepted."""
    server = await start_server(RELAY_ALLOWED_ORIGINS="https://app.example")
    assert await closed_with(server, make_token(), origin="https://evil.example") == 4503
    ws = await server.connect(token=make_token(), origin="https://app.example")
    assert (await recv_json(ws))["type"] == "connected"
    ws = await server.connect(token=make_token())
    assert (await recv_json(ws))["type"] == "connected"


async def test_token_expiring_while_connected_closes_4001(server: Server) -> None:
    """A token that expires during the connection closes it with 4001."""
    ws = await server.connect(token=make_token(ttl=1.5))
    assert (await recv_json(ws))["type"] == "connected"
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 15)
    assert ws.close_code == 4001


@pytest.fixture
def rsa_keys(tmp_path: Path) -> tuple[Path, str, str]:
    """An RSA key pair: (public PEM path, public PEM, private PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    path = tmp_path / "public.pem"
    path.write_text(public)
    return path, public, private


async def test_rs256_accepts_signed_tokens_and_refuses_hs256_with_public_key(
    start_server: StartServer, rsa_keys: tuple[Path, str, str]
) -> None:
    """With RS256, a token signed by the private key works; HS256 signed with the public key is refused."""
    path, public, private = rsa_keys
    settings = make_settings(RELAY_JWT_ALGORITHM="RS256", RELAY_JWT_SECRET="", RELAY_JWT_PUBLIC_KEYS=str(path))
    server = await start_server(settings)
    good = make_token(secret=private, algorithm="RS256")
    ws = await server.connect(token=good)
    assert (await recv_json(ws))["type"] == "connected"
    # The classic confusion attack: HMAC keyed with the public key's PEM text.
    import base64
    import hashlib
    import hmac
    import json as _json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(_json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(
        _json.dumps(
            {"sub": "u", "execution_id": "exec-1", "aud": "progress-relay", "exp": int(time.time()) + 60}
        ).encode()
    )
    sig = b64(hmac.new(public.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest())
    assert await closed_with(server, f"{header}.{payload}.{sig}") == 4500
