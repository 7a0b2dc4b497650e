"""Token attack suite: every hostile token gets its contract answer, on every transport.

Each case below is checked three ways against one real server: the verifier's
own verdict (error class and reason), the WebSocket close code (with no frame
before it), and the HTTP answer of the three ``/v1`` endpoints (401 with
``reason`` / 403, JSON body). Cases already covered elsewhere are not
repeated here: ``alg: none``, HS256 signed with the RS256 public key, the
``../../etc/passwd`` kid, missing claims and the wrong-type ``execution_id``
on the socket live in ``test_ws_auth.py``; expiry and bad signatures on
``/v1`` in ``test_public_endpoints.py``; the publisher-key/token swap on one
route each in ``test_ws_auth.py`` and ``test_internal_api.py``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from auth import TokenExpired, TokenForbidden, TokenInvalid, TokenVerifier
from auth.tokens import MAX_TOKEN_BYTES
from tests.conftest import PUBLISH_KEY, SECRET, Server, make_settings, recv_json

ISSUER = "https://backend.example"
NEW_SECRET = "rotated-secret-0123456789-abcdefghijklmnop"
# Two keys, as during a rotation: "new" is the default (first), "old" still verifies.
KEY_SET = f"new:{NEW_SECRET},old:{SECRET}"
EXEC = "exec-1"


def verifier_of(server: Server) -> TokenVerifier:
    """A token verifier configured exactly as ``server``'s relay (whose own is private)."""
    s = server.relay.settings
    return TokenVerifier(s.jwt_algorithm, s.jwt_keys, s.jwt_audience, s.jwt_issuer, s.jwt_leeway)


ENDPOINTS = ("/v1/executions/{}", "/v1/executions/{}/events", "/v1/executions/{}/stream")
INTERNAL_ROUTES = (
    ("POST", "/internal/v1/executions/exec-1/events", {"event": "complete"}),
    ("POST", "/internal/v1/events", {"events": [{"execution_id": EXEC, "event": "complete"}]}),
    ("POST", "/internal/v1/tokens", {"execution_id": EXEC, "sub": "mallory"}),
    ("POST", "/internal/v1/revocations", {"sub": "alice"}),
    ("GET", "/internal/v1/stats", None),
)


def b64(data: bytes) -> str:
    """base64url without padding, as in a JWS."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: Any) -> str:
    """One JWS segment holding ``value`` as JSON."""
    return b64(json.dumps(value).encode())


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims for EXEC from ISSUER; ``None`` removes a claim."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "sub": "user-1",
        "execution_id": EXEC,
        "aud": "progress-relay",
        "iss": ISSUER,
        "iat": now,
        "exp": now + 3600,
    }
    for key, value in overrides.items():
        if value is None:
            payload.pop(key, None)
        else:
            payload[key] = value
    return payload


def forge(header: dict[str, Any] | None = None, secret: str = SECRET, **overrides: Any) -> str:
    """An HS256 JWS signed by hand, so header and claims may hold any JSON value."""
    head = {"alg": "HS256", "typ": "JWT", "kid": "old"} if header is None else header
    signing_input = f"{segment(head)}.{segment(claims(**overrides))}"
    sig = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


def good(**overrides: Any) -> str:
    """A token the attack server accepts (unless ``overrides`` break it)."""
    return forge(**overrides)


def with_kid(kid: Any, secret: str = SECRET) -> str:
    """A correctly signed token whose header names ``kid`` (any JSON value)."""
    return forge({"alg": "HS256", "typ": "JWT", "kid": kid}, secret=secret)


def signed_raw(header: str, payload: str, secret: str = SECRET) -> str:
    """A token from raw (possibly broken) segments, HMAC-signed with the real key."""
    sig = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(sig)}"


HEADER_OLD = segment({"alg": "HS256", "typ": "JWT", "kid": "old"})


@dataclass(frozen=True)
class Attack:
    """A hostile token and the answers the contract gives it."""

    name: str
    token: Callable[[], str]
    # The verifier's verdict: error class and the reasons it may give.
    error: type[Exception]
    reasons: frozenset[str]

    @property
    def ws_code(self) -> int:
        if self.error is TokenExpired:
            return 4001
        return 4503 if self.error is TokenForbidden else 4500

    @property
    def http(self) -> tuple[int, str | None]:
        if self.error is TokenExpired:
            return 401, "expired"
        if self.error is TokenForbidden:
            return 403, None
        return 401, "invalid"


def invalid(name: str, token: Callable[[], str], *reasons: str) -> Attack:
    return Attack(name, token, TokenInvalid, frozenset(reasons))


def forbidden(name: str, token: Callable[[], str]) -> Attack:
    return Attack(name, token, TokenForbidden, frozenset({"other_execution"}))


ATTACKS = [
    # -- kid: only the configured names pick a key; nothing else is looked up, read or fetched
    invalid("kid-unknown", lambda: with_kid("k9"), "unknown_kid"),
    invalid("kid-sql", lambda: with_kid("' OR '1'='1' --"), "unknown_kid"),
    invalid("kid-path", lambda: with_kid("../../../../dev/null"), "unknown_kid"),
    invalid("kid-file-url", lambda: with_kid("file:///proc/self/environ"), "unknown_kid"),
    invalid("kid-url", lambda: with_kid("https://evil.example/key.pem"), "unknown_kid"),
    invalid("kid-empty", lambda: with_kid(""), "unknown_kid"),
    invalid("kid-nul", lambda: with_kid("old\x00"), "unknown_kid"),
    invalid("kid-case", lambda: with_kid("OLD"), "unknown_kid"),
    invalid("kid-huge", lambda: with_kid("k" * 4000), "unknown_kid"),
    invalid("kid-proto", lambda: with_kid("__proto__"), "unknown_kid"),
    invalid("kid-null", lambda: with_kid(None), "unknown_kid", "malformed"),
    invalid("kid-number", lambda: with_kid(1), "unknown_kid", "malformed"),
    invalid("kid-list", lambda: with_kid(["old"]), "unknown_kid", "malformed"),
    invalid("kid-object", lambda: with_kid({"$ne": None}), "unknown_kid", "malformed"),
    invalid("kid-old-signed-with-new", lambda: with_kid("old", secret=NEW_SECRET), "signature"),
    invalid("kid-new-signed-with-old", lambda: with_kid("new", secret=SECRET), "signature"),
    invalid("no-kid-signed-with-old", lambda: forge({"alg": "HS256", "typ": "JWT"}), "signature"),
    # -- alg: exactly the configured one
    invalid("alg-NONE-unsigned", lambda: f"{segment({'alg': 'NONE', 'kid': 'old'})}.{segment(claims())}.", "algorithm"),
    invalid("alg-none-signed", lambda: forge({"alg": "none", "kid": "old"}), "algorithm"),
    invalid("alg-HS384", lambda: forge({"alg": "HS384", "kid": "old"}), "algorithm"),
    invalid("alg-list", lambda: forge({"alg": ["HS256"], "kid": "old"}), "algorithm"),
    invalid("alg-missing", lambda: forge({"typ": "JWT", "kid": "old"}), "algorithm"),
    # -- crit naming an extension we do not implement must be refused (RFC 7515 4.1.11)
    invalid(
        "crit-jku",
        lambda: forge({"alg": "HS256", "kid": "old", "crit": ["jku"], "jku": "https://evil.example/"}),
        "malformed",
    ),
    # -- time claims
    invalid("nbf-future", lambda: good(nbf=int(time.time()) + 600), "not_yet_valid"),
    invalid("iat-future", lambda: good(iat=int(time.time()) + 600), "not_yet_valid"),
    invalid("exp-string", lambda: good(exp="soon"), "malformed"),
    invalid("exp-object", lambda: good(exp={"$gt": 0}), "malformed"),
    invalid("nbf-string", lambda: good(nbf="tomorrow"), "malformed"),
    invalid("iat-string", lambda: good(iat="now"), "malformed"),
    Attack(
        "expired-for-another-execution",
        lambda: good(exp=int(time.time()) - 120, execution_id="exec-2"),
        TokenExpired,
        frozenset({"expired"}),
    ),
    # -- audience and issuer
    invalid("aud-wrong", lambda: good(aud="someone-else"), "audience"),
    invalid("aud-list-without-us", lambda: good(aud=["someone-else"]), "audience"),
    invalid("aud-number", lambda: good(aud=1), "audience"),
    invalid("aud-prefix", lambda: good(aud="progress-relay-staging"), "audience"),
    invalid("iss-wrong", lambda: good(iss="https://evil.example"), "issuer"),
    invalid("iss-missing", lambda: good(iss=None), "missing_claim"),
    invalid("iss-list", lambda: good(iss=[ISSUER]), "issuer"),
    # -- claim types
    invalid("execution_id-number", lambda: good(execution_id=1), "claim_type"),
    invalid("execution_id-list", lambda: good(execution_id=[EXEC]), "claim_type"),
    invalid("execution_id-object", lambda: good(execution_id={"id": EXEC}), "claim_type"),
    invalid("execution_id-empty", lambda: good(execution_id=""), "claim_type"),
    invalid("sub-number", lambda: good(sub=42), "claim_type", "malformed"),
    invalid("sub-empty", lambda: good(sub=""), "claim_type"),
    invalid("jti-number", lambda: good(jti=7), "claim_type", "malformed"),
    # -- another execution, however close its name
    forbidden("execution-other", lambda: good(execution_id="exec-2")),
    forbidden("execution-case", lambda: good(execution_id="EXEC-1")),
    forbidden("execution-trailing-space", lambda: good(execution_id="exec-1 ")),
    forbidden("execution-nul", lambda: good(execution_id="exec-1\x00")),
    forbidden("execution-unicode-hyphen", lambda: good(execution_id="exec\u20101")),
    forbidden("execution-prefix", lambda: good(execution_id="exec-")),
    # -- structure: bad base64, bad JSON, truncated, extra segments
    invalid("header-bad-base64", lambda: "!!!." + good().split(".", 1)[1], "malformed"),
    invalid("header-not-json", lambda: signed_raw(b64(b"not json"), segment(claims())), "malformed"),
    invalid("header-json-array", lambda: signed_raw(segment(["HS256"]), segment(claims())), "malformed"),
    invalid("header-json-string", lambda: signed_raw(segment("HS256"), segment(claims())), "malformed"),
    invalid("payload-bad-base64", lambda: signed_raw(HEADER_OLD, "%%%***"), "malformed", "signature"),
    invalid("payload-not-json", lambda: signed_raw(HEADER_OLD, b64(b"{sub: user-1}")), "malformed"),
    invalid("payload-json-array", lambda: signed_raw(HEADER_OLD, segment([claims()])), "malformed"),
    invalid("payload-json-null", lambda: signed_raw(HEADER_OLD, segment(None)), "malformed"),
    invalid("signature-bad-base64", lambda: good().rsplit(".", 1)[0] + ".@@@@", "malformed", "signature"),
    invalid("signature-empty", lambda: good().rsplit(".", 1)[0] + ".", "malformed", "signature"),
    invalid("truncated-1", lambda: good()[:-1], "malformed", "signature"),
    invalid("truncated-10", lambda: good()[:-10], "malformed", "signature"),
    invalid(
        "truncated-mid-payload",
        lambda: (t := good())[: t.index(".") + 20] + "." + t.rsplit(".", 1)[1],
        "malformed",
        "signature",
    ),
    invalid("truncated-two-segments", lambda: good().rsplit(".", 1)[0], "malformed"),
    invalid("extra-segment", lambda: good() + ".extra", "malformed"),
    invalid("extra-trailing-dot", lambda: good() + ".", "malformed"),
    invalid(
        "jwe-shaped", lambda: ".".join([segment({"alg": "dir", "enc": "A256GCM"}), "", "iv", "ct", "tag"]), "malformed"
    ),
    invalid("non-ascii", lambda: good() + "\u00e9", "malformed"),
    invalid("whitespace-inside", lambda: good().replace(".", ". ", 1), "malformed", "signature"),
]


def padded_segments(token: str) -> str:
    """``token`` with ``=`` padding on each segment (PyJWT accepts what some issuers send)."""
    return ".".join(part + "=" * (-len(part) % 4) for part in token.split("."))


# Tokens whose verdicts hang on PyJWT's finer rules, for the comparison below.
EDGE_CASES: list[Callable[[], str]] = [
    lambda: padded_segments(good()),
    lambda: good() + "=",
    lambda: good() + "==",
    lambda: good() + "===",
    lambda: signed_raw(HEADER_OLD + "=" * (2 + len(HEADER_OLD) % 2), segment(claims())),
    lambda: good(aud=""),
    lambda: good(aud=[]),
    lambda: good(aud=0),
    lambda: good(aud=False),
    lambda: good(aud=[1, "progress-relay"]),
    lambda: good(aud=["someone-else", "progress-relay"]),
    lambda: good(aud=None),
    lambda: good(iss=1),
    lambda: good(sub=None),
    lambda: good(execution_id=None),
    lambda: good(exp=None),
    lambda: good(exp=str(int(time.time()) + 600)),
    lambda: good(exp=time.time() + 600.5),
    lambda: good(exp=True),
    lambda: good(exp=float("inf")),
    lambda: good(exp=int(time.time()) - 5),  # within the leeway
    lambda: good(iat=int(time.time()) + 5),
    lambda: good(nbf=int(time.time()) + 5),
    lambda: good(nbf=[1]),
    lambda: good(jti="j-1"),
    lambda: forge({"alg": "HS256", "kid": "old", "b64": False}),
    lambda: forge({"alg": "HS256", "kid": "old", "crit": []}),
    lambda: forge({"alg": "HS256", "kid": "old", "crit": ["exp"], "exp": 1}),
    lambda: signed_raw(HEADER_OLD, segment(claims()) + "+"),
    lambda: signed_raw(HEADER_OLD, segment(claims())[:-1] + "_"),
]


def test_the_hmac_path_gives_pyjwt_verdicts() -> None:
    """Every hostile and edge-case token gets the same verdict from the relay's HMAC check as from PyJWT's decode."""
    verifier = TokenVerifier("HS256", [("new", NEW_SECRET), ("old", SECRET)], "progress-relay", ISSUER)
    hmac_ = verifier._hmac
    assert hmac_ is not None

    def verdict(decode: Callable[[str, str], Any], token: str, key: str) -> Any:
        try:
            return decode(token, key)
        except (TokenExpired, TokenForbidden, TokenInvalid) as exc:
            return type(exc).__name__, exc.reason

    compared = 0
    for make in [attack.token for attack in ATTACKS] + EDGE_CASES + [good]:
        token = make()
        try:
            key, header = verifier._key_for(token)
        except TokenInvalid:
            continue  # refused before either decodes
        ours = verdict(lambda t, k, h=header: verifier._decode_hmac(t, hmac_, k, h), token, key)
        assert ours == verdict(verifier._decode_pyjwt, token, key), token
        compared += 1
    assert compared > 60


@pytest.fixture
async def attack_server(start_server: Callable[..., Any]) -> Server:
    """A relay with a rotating key set and an issuer, with one event in EXEC."""
    server: Server = await start_server(RELAY_JWT_SECRET=KEY_SET, RELAY_JWT_ISSUER=ISSUER)
    assert (await server.publish(EXEC, "progress")).status_code == 202
    return server


async def ws_close_code(server: Server, token: str, execution_id: str = EXEC) -> int:
    """Connect with ``token`` (in the header, or ?token= if not ASCII); expect no frame, return the close code."""
    if token.isascii():
        url, headers = server.ws_url(execution_id), {"Authorization": f"Bearer {token}"}
    else:  # HTTP headers are bytes: a non-ASCII header is refused at the handshake (see the test below)
        url, headers = server.ws_url(execution_id, token), {}
    async with connect(url, additional_headers=headers) as ws:
        with pytest.raises(ConnectionClosed):
            frame = await asyncio.wait_for(ws.recv(), 5)
            pytest.fail(f"server sent a frame before refusing: {frame!r}")
        assert ws.close_code is not None
        return ws.close_code


def test_the_control_token_is_accepted() -> None:
    """The cases are built from a token the attack server's verifier accepts, so each refusal is the attack's."""
    verifier = TokenVerifier("HS256", [("new", NEW_SECRET), ("old", SECRET)], "progress-relay", issuer=ISSUER)
    assert verifier.verify(good(), EXEC).sub == "user-1"
    assert verifier.verify(with_kid("new", secret=NEW_SECRET), EXEC).sub == "user-1"
    assert verifier.verify(forge({"alg": "HS256"}, secret=NEW_SECRET), EXEC).sub == "user-1"


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
async def test_attack_gets_its_contract_answer(attack_server: Server, attack: Attack) -> None:
    """The verifier, the socket and every /v1 endpoint refuse the token with the contract's answer."""
    server = attack_server
    token = attack.token()
    with pytest.raises(attack.error) as refused:
        verifier_of(server).verify(token, EXEC)
    assert refused.value.reason in attack.reasons  # type: ignore[attr-defined]

    assert await ws_close_code(server, token) == attack.ws_code

    status, reason = attack.http
    carry: dict[str, Any] = (
        {"headers": {"Authorization": f"Bearer {token}"}} if token.isascii() else {"params": {"token": token}}
    )
    for path in ENDPOINTS:
        r = await server.http.get(path.format(EXEC), **carry)
        assert r.status_code == status, (path, r.text)
        body = r.json()
        assert body["error"] == ("unauthorized" if status == 401 else "forbidden")
        assert isinstance(body["message"], str) and "Traceback" not in r.text
        if reason is not None:
            assert body["reason"] == reason
    # The same answer when the token travels in the query string (browsers).
    if token.isascii():
        r = await server.http.get(f"/v1/executions/{EXEC}/events", params={"token": token})
        assert r.status_code == status, r.text


async def test_control_tokens_open_every_transport(attack_server: Server) -> None:
    """Tokens signed with either rotated key (by kid, or the first key without one) open socket and polling."""
    for token in (
        good(),
        with_kid("new", secret=NEW_SECRET),
        forge({"alg": "HS256", "typ": "JWT"}, NEW_SECRET),
        good(iat=int(time.time()) + 5),
    ):  # iat within the leeway
        async with connect(attack_server.ws_url(EXEC, token)) as ws:
            assert (await recv_json(ws))["type"] == "connected"
        r = await attack_server.http.get(f"/v1/executions/{EXEC}/events", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()["latest_seq"] == 1


# -- key-fetching headers -----------------------------------------------------------------------


@pytest.fixture
async def canary() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A local HTTP server that records every connection made to it (none should be)."""
    hits: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hits.append(await reader.read(1024))
        writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", hits
    srv.close()
    await srv.wait_closed()


def _attacker_rsa() -> tuple[str, dict[str, Any]]:
    """An attacker's RSA private key (PEM) and its public key as a JWK."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return private, jwk


async def test_jku_x5u_and_friends_are_ignored(attack_server: Server, canary: tuple[str, list[bytes]]) -> None:
    """jku/x5u/jwk/x5c/x5t name no key here: a well-signed token still works, and nothing is ever fetched."""
    url, hits = canary
    _, jwk = _attacker_rsa()
    header = {
        "alg": "HS256",
        "typ": "JWT",
        "kid": "old",
        "jku": f"{url}/jwks.json",
        "x5u": f"{url}/cert.pem",
        "jwk": jwk,
        "x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"],
        "x5t": "abc",
    }
    token = forge(header)
    assert verifier_of(attack_server).verify(token, EXEC).sub == "user-1"
    async with connect(attack_server.ws_url(EXEC, token)) as ws:
        assert (await recv_json(ws))["type"] == "connected"
    r = await attack_server.http.get(f"/v1/executions/{EXEC}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    # Signed with a key only the attacker has: the headers do not make it trusted.
    forged = forge({**header, "kid": "old"}, secret="attacker-secret-0123456789-abcdefghij")
    assert await ws_close_code(attack_server, forged) == 4500
    # Verification is synchronous: a key fetch would have happened before the close code was sent.
    assert hits == []


async def test_embedded_jwk_and_jku_cannot_bring_their_own_key(
    start_server: Callable[..., Any], tmp_path: Path, canary: tuple[str, list[bytes]]
) -> None:
    """With RS256, a token signed by the attacker's own key, with that key in jwk/jku/x5u, is refused (4500/401)."""
    url, hits = canary
    real = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "public.pem"
    path.write_bytes(
        real.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    server: Server = await start_server(
        make_settings(RELAY_JWT_ALGORITHM="RS256", RELAY_JWT_SECRET="", RELAY_JWT_PUBLIC_KEYS=str(path))
    )
    private, jwk = _attacker_rsa()
    payload = {k: v for k, v in claims().items() if k != "iss"}
    for extra in ({"jwk": jwk}, {"jku": f"{url}/jwks.json"}, {"x5u": f"{url}/cert.pem"}, {"kid": f"{url}/key"}):
        token = jwt.encode(payload, private, algorithm="RS256", headers=extra)
        with pytest.raises(TokenInvalid) as refused:
            verifier_of(server).verify(token, EXEC)
        assert refused.value.reason in {"signature", "unknown_kid"}
        assert await ws_close_code(server, token) == 4500
        r = await server.http.get(f"/v1/executions/{EXEC}/events", params={"token": token})
        assert r.status_code == 401 and r.json()["reason"] == "invalid"
    assert hits == []


# -- size: refused before any cryptographic work ------------------------------------------------------


@pytest.fixture
def crypto_spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every call into signature verification and header decoding (the server runs in this process)."""
    calls: list[str] = []

    def spy(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(TokenVerifier, "_decode", spy("_decode", TokenVerifier._decode))
    monkeypatch.setattr(jwt, "decode", spy("jwt.decode", jwt.decode))
    monkeypatch.setattr(jwt, "get_unverified_header", spy("get_unverified_header", jwt.get_unverified_header))
    monkeypatch.setattr(jwt.algorithms.HMACAlgorithm, "verify", spy("hmac.verify", jwt.algorithms.HMACAlgorithm.verify))
    return calls


def padded(size: int) -> str:
    """A correctly signed, otherwise valid token of exactly ``size`` bytes (padding in a claim and the header)."""
    # base64 never yields a segment of 4k+1 characters, so pad the header too until one combination fits.
    for header_pad in range(4):
        header = {"alg": "HS256", "typ": "JWT", "kid": "old", "p": "h" * header_pad}
        base = len(forge(header, pad=""))
        for pad in range(max(0, (size - base) * 3 // 4 - 4), (size - base) * 3 // 4 + 4):
            token = forge(header, pad="x" * pad)
            if len(token) == size:
                return token
    raise AssertionError(f"no padding gives {size} bytes")


async def test_a_token_of_exactly_the_limit_is_verified(attack_server: Server, crypto_spy: list[str]) -> None:
    """Control: a valid 8192-byte token is accepted, and the spy sees the verification it does."""
    token = padded(MAX_TOKEN_BYTES)
    assert len(token) == MAX_TOKEN_BYTES
    r = await attack_server.http.get(f"/v1/executions/{EXEC}/events", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    assert "_decode" in crypto_spy and "hmac.verify" in crypto_spy


@pytest.mark.parametrize("size", [MAX_TOKEN_BYTES + 1, 10_000, 16_000])
async def test_oversized_tokens_are_refused_before_any_crypto(
    attack_server: Server, crypto_spy: list[str], size: int
) -> None:
    """A correctly signed token over 8192 bytes: 4500 / 401 invalid, and no decoding or HMAC happened."""
    token = padded(size)
    with pytest.raises(TokenInvalid) as refused:
        verifier_of(attack_server).verify(token, EXEC)
    assert refused.value.reason == "too_large"
    assert await ws_close_code(attack_server, token) == 4500
    for path in ENDPOINTS:
        r = await attack_server.http.get(path.format(EXEC), headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401 and r.json()["reason"] == "invalid", r.text
    r = await attack_server.http.get(f"/v1/executions/{EXEC}/events", params={"token": token})
    assert r.status_code == 401
    assert crypto_spy == []


async def test_non_ascii_tokens_are_refused_before_crypto(attack_server: Server, crypto_spy: list[str]) -> None:
    """Non-ASCII tokens never reach decoding: 401 / 4500, and a non-ASCII header on the upgrade is a 400, not a 500."""
    # Fewer than 8192 characters but more than 8192 UTF-8 bytes, sent as raw header bytes.
    token = good() + "\u20ac" * 2800
    assert len(token) < MAX_TOKEN_BYTES < len(token.encode())
    r = await attack_server.http.get(
        f"/v1/executions/{EXEC}/events", headers={b"Authorization": b"Bearer " + token.encode()}
    )
    assert r.status_code == 401 and r.json()["reason"] == "invalid", r.text
    small = good() + "\u00e9" * 500
    r = await attack_server.http.get(f"/v1/executions/{EXEC}/events", params={"token": small})
    assert r.status_code == 401 and r.json()["reason"] == "invalid", r.text
    assert await ws_close_code(attack_server, small) == 4500
    with pytest.raises(InvalidStatus) as refused:
        async with connect(attack_server.ws_url(EXEC), additional_headers={"Authorization": f"Bearer {small}"}):
            pass
    assert refused.value.response.status_code == 400
    assert b"Traceback" not in refused.value.response.body and small.encode() not in refused.value.response.body
    assert crypto_spy == []


@pytest.mark.parametrize("size", [20_000, 64 * 1024])
async def test_tokens_beyond_the_header_limit_get_413_before_routing(
    attack_server: Server, crypto_spy: list[str], size: int
) -> None:
    """Past RELAY's 16 KiB header limit the request is refused as 413 JSON (the socket never opens)."""
    token = padded(size)
    r = await attack_server.http.get(f"/v1/executions/{EXEC}/events", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(attack_server.ws_url(EXEC), additional_headers={"Authorization": f"Bearer {token}"}):
            pass
    assert refused.value.response.status_code == 413
    assert crypto_spy == []


# -- credentials in the wrong place -------------------------------------------------------------------


async def test_subscriber_token_is_refused_on_every_internal_route(attack_server: Server) -> None:
    """A valid subscriber token, in the header or the query, opens no internal route (401), and publishes nothing."""
    token = good()
    for method, path, body in INTERNAL_ROUTES:
        for how in (
            {"headers": {"Authorization": f"Bearer {token}"}},
            {"params": {"token": token}},
            {"params": {"token": PUBLISH_KEY}},
        ):  # keys travel only in the header
            r = await attack_server.http.request(method, path, json=body, **how)  # type: ignore[arg-type]
            assert r.status_code == 401, (method, path, how, r.text)
            assert r.json() == {"error": "unauthorized", "message": r.json()["message"], "reason": "publisher_key"}
    assert (await attack_server.relay.history(EXEC)).latest_seq == 1


def test_every_internal_route_is_in_the_list_above(attack_server: Server) -> None:
    """A new internal route must join INTERNAL_ROUTES, so that the test above proves it needs the key."""
    routes = {
        (method, "/" + route.path)
        for route in attack_server.app.router.routes
        if route.path.startswith("internal/")
        for method in route.methods
        if method not in ("HEAD", "OPTIONS")
    }
    listed = {(method, path.replace("exec-1", "<execution_id:str>")) for method, path, _ in INTERNAL_ROUTES}
    assert routes == listed


async def test_publisher_key_is_refused_on_every_public_endpoint(attack_server: Server) -> None:
    """The publisher key as a subscriber token: 4500 on the socket (header and query), 401 invalid on /v1."""
    assert await ws_close_code(attack_server, PUBLISH_KEY) == 4500
    async with connect(attack_server.ws_url(EXEC, PUBLISH_KEY)) as ws:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 4500
    for path in ENDPOINTS:
        for how in ({"headers": {"Authorization": f"Bearer {PUBLISH_KEY}"}}, {"params": {"token": PUBLISH_KEY}}):
            r = await attack_server.http.get(path.format(EXEC), **how)  # type: ignore[arg-type]
            assert r.status_code == 401 and r.json()["reason"] == "invalid", (path, how, r.text)


async def test_a_jwt_signed_with_the_publisher_key_is_refused(attack_server: Server) -> None:
    """Knowing a publisher key does not let one mint subscriber tokens: it is not a signing key."""
    token = forge({"alg": "HS256", "typ": "JWT"}, secret=PUBLISH_KEY)
    assert await ws_close_code(attack_server, token) == 4500
    r = await attack_server.http.get(f"/v1/executions/{EXEC}/events", params={"token": token})
    assert r.status_code == 401
