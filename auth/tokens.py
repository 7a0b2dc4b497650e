"""Subscriber tokens: JWTs granting one user access to one execution.

Errors::

    TokenError            base; ``reason`` says why (for logs and metrics)
    ├── TokenExpired      ``exp`` passed -> close 4001 / HTTP 401
    ├── TokenInvalid      anything else wrong -> close 4500 / HTTP 401
    └── TokenForbidden    valid, but for another execution -> 4503 / 403

The verifier accepts exactly one configured algorithm (never ``none``, never
HMAC and public-key families together), picks the key by ``kid``, and checks
size and shape before any cryptographic work.
"""

from __future__ import annotations

import binascii
import hmac
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jwt
from jwt.algorithms import HMACAlgorithm

if TYPE_CHECKING:
    from jwt.types import Options

__all__ = [
    "MAX_TOKEN_BYTES",
    "Claims",
    "TokenError",
    "TokenExpired",
    "TokenForbidden",
    "TokenInvalid",
    "TokenMinter",
    "TokenVerifier",
]

MAX_TOKEN_BYTES = 8192
VERIFIED_CACHE_SIZE = 50_000
MAX_LEEWAY = 30
HMAC = frozenset(("HS256", "HS384", "HS512"))
PUBLIC = frozenset(("RS256", "ES256"))


class TokenError(Exception):
    """A token was refused; ``reason`` is a short machine-readable word."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class TokenExpired(TokenError):
    """The token's ``exp`` has passed (beyond the leeway)."""


class TokenInvalid(TokenError):
    """Missing, malformed, badly signed, wrong audience/issuer, or unknown key."""


class TokenForbidden(TokenError):
    """A valid token for another execution."""


@dataclass(frozen=True, slots=True)
class Claims:
    """The verified claims the relay uses."""

    sub: str
    execution_id: str
    exp: int
    jti: str | None = None
    iat: int | None = None  # when the token was issued; revoking a sub covers tokens issued before


class TokenVerifier:
    """Verifies subscriber tokens for one pinned algorithm and a key set."""

    def __init__(
        self,
        algorithm: str,
        keys: Sequence[tuple[str, str]],
        audience: str,
        issuer: str = "",
        leeway: int = 10,
    ) -> None:
        if algorithm not in HMAC | PUBLIC:
            raise ValueError(f"unsupported algorithm {algorithm!r}")
        if not keys:
            raise ValueError("at least one key is required")
        if not 0 <= leeway <= MAX_LEEWAY:
            raise ValueError(f"leeway must be 0..{MAX_LEEWAY} seconds")
        self.algorithm = algorithm
        self._keys = dict(keys)
        self._default_kid = keys[0][0]
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        self._jwt = _decoder(algorithm, [key for _, key in keys])
        algorithm_object = self._jwt._jws.get_algorithm_by_name(algorithm)
        self._hmac = algorithm_object if isinstance(algorithm_object, _CheckedSecrets) else None
        # Tokens verified before, until they expire: a client that reconnects (a storm of
        # thousands after a restart) presents the same token, so its signature is checked once.
        # Bounded; cleared wholesale when full. Revocation is checked separately, every time.
        self._verified: dict[str, Claims] = {}

    def verify(self, token: str | None, execution_id: str | None = None) -> Claims:
        """Return the claims of ``token`` or raise a :class:`TokenError`.

        With ``execution_id``, a token for any other execution raises
        :class:`TokenForbidden`.
        """
        if not token:
            raise TokenInvalid("missing", "no token was presented")
        cached = self._verified.get(token)
        if cached is not None:
            return self._check_cached(cached, token, execution_id)
        key, header = self._key_for(token)
        payload = self._decode(token, key, header)
        claims = _claims(payload)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = claims
        if execution_id is not None and claims.execution_id != execution_id:
            raise TokenForbidden("other_execution", "token was issued for another execution")
        return claims

    def _key_for(self, token: str) -> tuple[str, dict[str, Any]]:
        """The key to check ``token`` with, and its (unverified) header, after the checks that need no cryptography."""
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenInvalid("too_large", f"token longer than {MAX_TOKEN_BYTES} bytes")
        # A JWS is ASCII. Refusing anything else here also keeps the byte limit true
        # for a ?token= whose characters take several bytes each.
        if not token.isascii():
            raise TokenInvalid("malformed", "token is not ASCII")
        if token.count(".") != 2:
            raise TokenInvalid("malformed", "token is not a JWS compact serialisation")
        header = _unverified_header(token)
        if header.get("alg") != self.algorithm:
            raise TokenInvalid("algorithm", "token algorithm is not the configured one")
        kid = header.get("kid", self._default_kid)
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise TokenInvalid("unknown_kid", "token names a key this service does not have")
        return key, header

    def _check_cached(self, claims: Claims, token: str, execution_id: str | None) -> Claims:
        """A token verified before: only expiry and the execution can have changed the answer."""
        if claims.exp + self.leeway <= time.time():
            self._verified.pop(token, None)
            raise TokenExpired("expired", "token has expired")
        if execution_id is not None and claims.execution_id != execution_id:
            raise TokenForbidden("other_execution", "token was issued for another execution")
        return claims

    def _decode(self, token: str, key: str, header: dict[str, Any]) -> dict[str, Any]:
        if self._hmac is not None:
            return self._decode_hmac(token, self._hmac, key, header)
        return self._decode_pyjwt(token, key)

    def _decode_hmac(self, token: str, hmac_: _CheckedSecrets, key: str, header: dict[str, Any]) -> dict[str, Any]:
        """An HMAC-signed token checked here, step for step as PyJWT's ``decode`` does, at half its cost.

        The algorithm is the configured one (``_key_for`` checked the header's, and
        ``hmac_`` hashes with it); the signature is PyJWT's own constant-time HMAC
        comparison; segments are decoded and claims checked with PyJWT's rules, in
        its order. Stricter in one point: a ``crit`` header, or a ``b64`` other than
        true, is refused (PyJWT accepts ``"crit": ["b64"]``; no relay token has either). ``tests/test_attacks.py``
        checks that both give every hostile token the same verdict.

        ``header`` is what ``_key_for`` parsed from the same segment: here the segment is
        only checked to be strict base64url, which decodes to the very bytes parsed there
        (its JSON is not parsed twice).
        """
        signing_input, _, signature = token.rpartition(".")
        header_segment, _, payload_segment = signing_input.partition(".")
        _segment(header_segment)
        if "crit" in header or header.get("b64", True) is not True:  # JWS extensions: none implemented
            raise TokenInvalid("malformed", "token uses a JWS extension this service does not implement")
        payload_bytes = _segment(payload_segment)
        if not hmac_.verify(signing_input.encode(), hmac_.prepare_key(key), _segment(signature)):
            raise TokenInvalid("signature", "token signature is invalid")
        payload = _json_object(payload_bytes)
        self._check_claims(payload)
        return payload

    def _check_claims(self, payload: dict[str, Any]) -> None:
        """PyJWT's claim checks for the options the relay uses, in PyJWT's order."""
        for name in ("exp", "aud", "sub", "execution_id"):
            if payload.get(name) is None:
                raise TokenInvalid("missing_claim", f"token lacks the {name!r} claim")
        _check_dates(payload, time.time(), self.leeway)
        if self.issuer:
            if "iss" not in payload:
                raise TokenInvalid("missing_claim", "token lacks the 'iss' claim")
            if payload["iss"] != self.issuer:
                raise TokenInvalid("issuer", "token issuer is wrong")
        _check_audience(payload["aud"], self.audience)
        for name in ("sub", "jti"):
            if name in payload and not isinstance(payload[name], str):
                raise TokenInvalid("malformed", f"token {name!r} must be a string")

    def _decode_pyjwt(self, token: str, key: str) -> dict[str, Any]:
        options: Options = {"require": ["exp", "aud", "sub", "execution_id"]}
        try:
            payload: dict[str, Any] = self._jwt.decode(
                token,
                key,
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer or None,
                leeway=self.leeway,
                options=options,
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpired("expired", "token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenInvalid("not_yet_valid", "token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise TokenInvalid("audience", "token audience is wrong") from None
        except jwt.InvalidIssuerError:
            raise TokenInvalid("issuer", "token issuer is wrong") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenInvalid("missing_claim", f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise TokenInvalid("signature", "token signature is invalid") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise TokenInvalid("malformed", "token cannot be verified") from None
        return payload


class _CheckedSecrets(HMACAlgorithm):
    """PyJWT's HMAC, with the configured secrets checked once instead of at every verify.

    Before each HMAC, PyJWT makes sure the secret is not a PEM, SSH, DER or JWK
    key (a defence against algorithm confusion) and measures its length: about
    4 % of a WebSocket connect. The secrets come from the settings and never
    change, so each is checked here once, by PyJWT's own code; any other key
    still gets the full check every time.
    """

    def __init__(self, hash_alg: Any, secrets: Sequence[str]) -> None:
        super().__init__(hash_alg)
        self._checked: dict[str | bytes, bytes] = {}
        self._long_enough: set[bytes] = set()
        for secret in secrets:
            try:
                prepared = super().prepare_key(secret)
            except jwt.InvalidKeyError:
                continue  # refused at every verify, as before
            self._checked[secret] = prepared
            if super().check_key_length(prepared) is None:
                self._long_enough.add(prepared)

    def prepare_key(self, key: str | bytes) -> bytes:
        """The checked form of ``key``, checked once for a configured secret."""
        checked = self._checked.get(key)
        return checked if checked is not None else super().prepare_key(key)

    def check_key_length(self, key: bytes) -> str | None:
        """PyJWT's warning for a short key (measured once for a configured secret)."""
        return None if key in self._long_enough else super().check_key_length(key)

    def sign(self, msg: bytes, key: bytes) -> bytes:
        """PyJWT's HMAC in one call to OpenSSL (``hmac.new(...).digest()`` builds an object: 5 Python calls)."""
        return hmac.digest(key, msg, self.hash_alg)


_HASHES = {"HS256": HMACAlgorithm.SHA256, "HS384": HMACAlgorithm.SHA384, "HS512": HMACAlgorithm.SHA512}


def _decoder(algorithm: str, keys: Sequence[str]) -> jwt.PyJWT:
    """A PyJWT of our own: for HMAC, its algorithm checks the configured secrets once."""
    decoder = jwt.PyJWT()
    if algorithm in HMAC:
        # PyJWT offers no public way to give a PyJWT object an algorithm; its PyJWS (the
        # private ``_jws``, checked by tests/test_core.py) does, through a public method.
        jws = decoder._jws
        jws.unregister_algorithm(algorithm)
        jws.register_algorithm(algorithm, _CheckedSecrets(_HASHES[algorithm], keys))
    return decoder


def _unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header of ``token``, not verified: only to pick the key (``decode`` checks it all again).

    ``jwt.get_unverified_header`` decodes every segment to read this one (a sixth of
    the cost of verifying a token).
    """
    segment = token.partition(".")[0]
    try:
        header = json.loads(_from_base64url(segment))  # lenient, as PyJWT's get_unverified_header
    except (ValueError, TypeError):  # binascii.Error and JSONDecodeError are ValueErrors
        raise TokenInvalid("malformed", "token header cannot be decoded") from None
    if not isinstance(header, dict) or not isinstance(header.get("kid", ""), str):
        raise TokenInvalid("malformed", "token header cannot be decoded")
    return header


_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _from_base64url(text: str) -> bytes:
    """``base64.urlsafe_b64decode`` of ``text`` padded, without its wrappers (5 Python calls): as lenient."""
    return binascii.a2b_base64(text.encode("ascii").translate(_FROM_URLSAFE) + b"=" * (-len(text) % 4))


def _segment(segment: str) -> bytes:
    """A base64url segment, decoded as strictly as PyJWT does: up to two trailing ``=``, canonical, nothing else."""
    stripped = segment.rstrip("=")
    padding = len(segment) - len(stripped)
    if padding > 2 or (padding and len(segment) % 4) or len(stripped) % 4 == 1:
        raise TokenInvalid("malformed", "token segment is not base64url")
    try:
        data = _from_base64url(stripped)
    except ValueError:  # binascii.Error, UnicodeEncodeError
        raise TokenInvalid("malformed", "token segment is not base64url") from None
    # Encoding back gives the segment only if every character was of the alphabet and the
    # unused bits were zero (a2b_base64 skips other characters instead of refusing them).
    if binascii.b2a_base64(data, newline=False).translate(_TO_URLSAFE).rstrip(b"=") != stripped.encode():
        raise TokenInvalid("malformed", "token segment is not base64url")
    return data


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        raise TokenInvalid("malformed", "token segment is not JSON") from None
    if not isinstance(value, dict):
        raise TokenInvalid("malformed", "token segment is not a JSON object")
    return value


def _check_dates(payload: dict[str, Any], now: float, leeway: int) -> None:
    """``iat`` and ``nbf`` not in the future, ``exp`` not past (each give or take ``leeway``), as PyJWT."""
    if "iat" in payload and _numeric_date(payload["iat"]) > now + leeway:
        raise TokenInvalid("not_yet_valid", "token is not valid yet")
    if "nbf" in payload and _numeric_date(payload["nbf"]) > now + leeway:
        raise TokenInvalid("not_yet_valid", "token is not valid yet")
    if _numeric_date(payload["exp"]) <= now - leeway:
        raise TokenExpired("expired", "token has expired")


def _check_audience(claim: Any, audience: str) -> None:
    """``aud`` (a string or a list of strings) names ``audience``, as PyJWT (not strict) checks it."""
    if not claim:
        raise TokenInvalid("missing_claim", "token lacks the 'aud' claim")
    audiences = [claim] if isinstance(claim, str) else claim
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences) or audience not in audiences:
        raise TokenInvalid("audience", "token audience is wrong")


def _numeric_date(value: Any) -> int:
    """A date claim as PyJWT reads it (``int()`` of it); anything else is malformed."""
    try:
        return int(value)
    except (ValueError, TypeError, OverflowError):
        raise TokenInvalid("malformed", "token date claim is not a number") from None


#: RFC 7519 NumericDate claims: JSON numbers. PyJWT also takes a numeric string ("exp": "99999999999").
_DATES = ("exp", "nbf", "iat")


def _claims(payload: dict[str, Any]) -> Claims:
    sub, execution_id, jti = (payload.get(k) for k in ("sub", "execution_id", "jti"))
    for name in _DATES:
        value = payload.get(name)
        if name in payload and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise TokenInvalid("claim_type", f"token {name!r} must be a JSON number (NumericDate)")
    exp = payload["exp"]  # required by _decode's options, and checked there by PyJWT
    if not isinstance(sub, str) or not sub:
        raise TokenInvalid("claim_type", "token 'sub' must be a non-empty string")
    if not isinstance(execution_id, str) or not execution_id:
        raise TokenInvalid("claim_type", "token 'execution_id' must be a non-empty string")
    if jti is not None and not isinstance(jti, str):
        raise TokenInvalid("claim_type", "token 'jti' must be a string")
    iat = payload.get("iat")
    return Claims(
        sub=sub,
        execution_id=execution_id,
        exp=int(exp),
        jti=jti,
        iat=int(iat) if iat is not None else None,
    )


class TokenMinter:
    """Signs subscriber tokens with the first configured key."""

    def __init__(self, algorithm: str, kid: str, key: str, audience: str, issuer: str = "") -> None:
        self.algorithm = algorithm
        self.kid = kid
        self._key = key
        self.audience = audience
        self.issuer = issuer

    def mint(self, execution_id: str, sub: str, ttl: int, now: float | None = None) -> tuple[str, int]:
        """Return ``(token, expires_at)`` for one user and one execution."""
        issued = int(time.time() if now is None else now)
        exp = issued + ttl
        payload: dict[str, Any] = {
            "sub": sub,
            "execution_id": execution_id,
            "aud": self.audience,
            "iat": issued,
            "exp": exp,
            "jti": uuid.uuid4().hex,
        }
        if self.issuer:
            payload["iss"] = self.issuer
        token = jwt.encode(payload, self._key, algorithm=self.algorithm, headers={"kid": self.kid})
        return token, exp
