"""The relay: one face for every transport, free of Sanic.

Routes are thin edges around it: they translate HTTP and WebSocket requests
into its verbs and its answers back into responses, and never reach past it.

- subscribers: :meth:`Relay.check_subscriber` / :meth:`Relay.authorize`
  (token, origin, execution; :class:`Refused` says how to refuse on each
  transport), :meth:`Relay.open_stream` (a socket or SSE stream from a
  cursor), :meth:`Relay.poll`, :meth:`Relay.state`, :meth:`Relay.history`;
- publishers: :attr:`Relay.check_publisher`, :meth:`Relay.publish`,
  :meth:`Relay.publish_many`, :meth:`Relay.mint`, :meth:`Relay.revoke`;
- operators: :meth:`Relay.ping`, :meth:`Relay.stats`, and for a graceful
  shutdown :meth:`Relay.streams` and :meth:`Relay.end_polls`.

The broker, hub, token verifier and minter and the publisher keys are
private parts.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from auth import Claims, PublisherKeys, TokenExpired, TokenForbidden, TokenInvalid, TokenMinter, TokenVerifier

from . import closecodes, metrics
from .brokers import Broker, HistoryPage, PublishResult, broker_from_settings
from .closecodes import Disconnect
from .config import HMAC_ALGORITHMS, Settings
from .cursor import Cursor
from .delivery import Resume, resume
from .errors import Forbidden, RelayError, Unauthorized
from .events import Event, EventDraft
from .hub import Hub
from .state import ExecutionState, StateCache
from .subscription import Sink, Subscription

__all__ = ["Refused", "Relay", "TokenRevokedWhileWaiting"]


class TokenRevokedWhileWaiting(Exception):
    """A long poll's token was revoked while it waited (the edge answers 401 ``revoked``)."""


class Refused(Exception):
    """A subscriber refused: ``error`` for HTTP, ``disconnect`` for the socket, ``why`` for counters and metrics."""

    def __init__(self, why: str, error: RelayError, disconnect: Disconnect) -> None:
        super().__init__(error.message)
        self.why = why
        self.error = error
        self.disconnect = disconnect


class _Waiter:
    """A long-poll request waiting for the next event of one execution."""

    __slots__ = ("claims", "future", "revoked")

    def __init__(self, claims: Claims | None = None) -> None:
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.claims = claims  # whose token it waits with: revoking that token wakes and refuses it
        self.revoked = False

    def revoke(self) -> None:
        """Wake the request to be refused: its token was revoked."""
        self.revoked = True
        self._wake()

    def offer(self, event: Event) -> bool:
        self._wake()
        return False  # nothing written: the request reads history when it wakes

    def resync(self) -> None:
        self._wake()  # the request re-reads history when it wakes

    def _wake(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class Relay:
    """Publishes events, authorizes subscribers, opens streams, answers polls."""

    def __init__(self, settings: Settings, broker: Broker | None = None) -> None:
        self.settings = settings
        self._broker = broker or broker_from_settings(settings)
        metrics.instrument_broker(self._broker)
        self._hub = Hub(self._broker)
        self._broker.set_listener(self._hub.dispatch, self._hub.resync)
        self._broker.set_revocation_listener(self._close_revoked)
        self._verifier = TokenVerifier(
            settings.jwt_algorithm,
            settings.jwt_keys,
            settings.jwt_audience,
            settings.jwt_issuer,
            settings.jwt_leeway,
        )
        self._minter = _minter(settings)
        #: Whether a key (``None``: none given) is one of the publisher keys, compared in constant time.
        #: The keys' own check, bound here: one call per publish where a method around it made two.
        self.check_publisher: Callable[[str | None], bool] = PublisherKeys(settings.publish_keys).check
        self._states = StateCache(lambda eid, after: self._broker.history(eid, after, create=False))
        self.started_at = time.time()
        self.publishing = 0  # publishes in flight, awaited by a graceful shutdown

    async def start(self) -> None:
        """Connect the broker."""
        await self._broker.start()

    async def close(self) -> None:
        """Release the broker."""
        await self._hub.close()
        await self._broker.close()

    # -- subscribers ----------------------------------------------------------------

    def origin_allowed(self, origin: str | None) -> bool:
        """No list or no Origin header: allowed; otherwise the Origin must be listed."""
        allowed = self.settings.allowed_origins
        return not allowed or not origin or origin.rstrip("/") in allowed

    def check_subscriber(self, token: str | None, origin: str | None, execution_id: str) -> Claims:
        """The Origin, then the token for ``execution_id``: its claims, or :class:`Refused`."""
        if not self.origin_allowed(origin):
            raise _refused("origin", Forbidden("origin not allowed"), closecodes.ORIGIN_FORBIDDEN)
        try:
            return self._verifier.verify(token, execution_id)
        except TokenExpired:
            raise _refused(
                "expired", Unauthorized("token expired; get a fresh token", reason="expired"), closecodes.TOKEN_EXPIRED
            ) from None
        except TokenForbidden:
            raise _refused(
                "other_execution", Forbidden("this token was issued for another execution"), closecodes.OTHER_EXECUTION
            ) from None
        except TokenInvalid as exc:
            raise _refused(
                exc.reason, Unauthorized(f"token invalid: {exc.message}", reason="invalid"), closecodes.TOKEN_INVALID
            ) from None

    async def authorize(self, token: str | None, origin: str | None, execution_id: str) -> Claims:
        """:meth:`check_subscriber`, then revocation (:class:`Refused` ``revoked``)."""
        claims = self.check_subscriber(token, origin, execution_id)
        if await self._broker.is_revoked(claims.jti, claims.sub, claims.iat):
            raise _refused_revoked()
        return claims

    async def open_stream(self, execution_id: str, cursor: Cursor, sink: Sink, claims: Claims) -> Subscription:
        """A stream for ``sink`` from ``cursor``: registered for live events, history read, revocation checked.

        Registered first, then checked: a revocation made meanwhile still reaches it.
        Call ``connected_message`` and ``start`` on it. Raises :class:`Refused`
        (revoked) or the broker's :class:`~service.errors.RelayError`.
        """
        sub = Subscription(self._hub, self._broker, execution_id, cursor, sink, self.settings.send_queue_size, claims)
        await sub.open()
        try:
            revoked = await self._broker.is_revoked(claims.jti, claims.sub, claims.iat)
        except BaseException:
            sub.close(closecodes.BROKER_UNAVAILABLE)
            raise
        if revoked:
            sub.close(closecodes.TOKEN_REVOKED)
            raise _refused_revoked()
        return sub

    async def poll(
        self, execution_id: str, cursor: Cursor, wait: float, limit: int | None = None, claims: Claims | None = None
    ) -> tuple[HistoryPage, Resume]:
        """Events after ``cursor`` and how it resumed; if there are none yet, wait up to ``wait`` s for one.

        A reset answers at once (the client must learn it). One future per
        waiting request, woken by the hub: no polling loop. With ``claims``
        the wait ends by the token's expiry at the latest, and a revocation of
        the token (from any instance) wakes it to raise
        :class:`TokenRevokedWhileWaiting`.
        """
        if claims is not None:
            wait = min(wait, claims.exp - time.time())
        page, verdict = await self._read(execution_id, cursor, limit)
        if page.events or page.terminal or verdict.reset or wait <= 0:
            return page, verdict
        waiter = _Waiter(claims)
        await self._hub.add(execution_id, waiter)
        try:
            # Registered first, then re-read: an event published in between is not missed.
            page, verdict = await self._read(execution_id, cursor, limit)
            if page.events or page.terminal or verdict.reset:
                return page, verdict
            try:
                await asyncio.wait_for(asyncio.shield(waiter.future), wait)
            except TimeoutError:
                return page, verdict
            # Woken: by a revocation, or by an event (then check revocation once more: a
            # revocation whose broadcast never reached this instance is still in the broker).
            if waiter.revoked or (
                claims is not None and await self._broker.is_revoked(claims.jti, claims.sub, claims.iat)
            ):
                raise TokenRevokedWhileWaiting()
            return await self._read(execution_id, cursor, limit)
        finally:
            self._hub.remove(execution_id, waiter)

    async def _read(self, execution_id: str, cursor: Cursor, limit: int | None) -> tuple[HistoryPage, Resume]:
        """Events after ``cursor``, from the start of the current epoch when the cursor's is not it."""
        page = await self._broker.history(execution_id, cursor.seq, limit)
        verdict = resume(page, cursor)
        if verdict.reset:
            page = await self._broker.history(execution_id, 0, limit)
            verdict = resume(page, cursor)
        return page, verdict

    async def history(self, execution_id: str, after: int = 0, limit: int | None = None) -> HistoryPage:
        """Retained events after ``after`` (a plain read: an unknown stream stays unknown, epoch "")."""
        return await self._broker.history(execution_id, after, limit, create=False)

    async def state(self, execution_id: str) -> ExecutionState | None:
        """The execution's state folded from its events (None: unknown or expired); never creates a stream."""
        return await self._states.get(execution_id)

    # -- publishers -------------------------------------------------------------------

    @property
    def can_mint(self) -> bool:
        """Whether this relay can mint subscriber tokens (HMAC, or a configured private key)."""
        return self._minter is not None

    def mint(self, execution_id: str, sub: str, ttl: int) -> tuple[str, int]:
        """A subscriber token for ``execution_id`` and ``sub``, valid ``ttl`` s, and its expiry (unix time)."""
        if self._minter is None:
            raise RuntimeError("minting needs RELAY_JWT_PRIVATE_KEY with a public-key algorithm")
        return self._minter.mint(execution_id, sub, ttl)

    async def publish(self, draft: EventDraft) -> PublishResult:
        """Accept one event (idempotent by key); the broker delivers it."""
        started = time.perf_counter()
        self.publishing += 1
        try:
            result = await self._broker.publish(draft)
        except BaseException as exc:
            metrics.observe_publish(time.perf_counter() - started, "single")
            if isinstance(exc, RelayError):
                metrics.publish_rejected(exc.code)
            raise
        finally:
            self.publishing -= 1
        # Counted and timed in one call (four before): every closed-loop POST comes here.
        metrics.published_single(draft.event, result.duplicate, time.perf_counter() - started)
        return result

    async def publish_many(self, drafts: Sequence[EventDraft]) -> list[PublishResult | RelayError]:
        """Accept several events in order, one result or error each."""
        started = time.perf_counter()
        self.publishing += 1
        try:
            results = await self._broker.publish_many(drafts)
        except RelayError as exc:
            metrics.publish_rejected(exc.code)
            raise
        finally:
            self.publishing -= 1
            metrics.observe_publish(time.perf_counter() - started, "batch")
        for draft, result in zip(drafts, results, strict=True):
            if isinstance(result, PublishResult):
                metrics.published(draft.event, result.duplicate)
            else:
                metrics.publish_rejected(result.code)
        return results

    async def revoke(self, jti: str | None, sub: str | None, ttl: int) -> None:
        """Revoke a token (``jti``) and/or every token of a user issued until now (``sub``), for ``ttl`` s.

        Every instance closes its live sockets opened with such a token (4500).
        "Until now" includes the leeway: a token whose ``iat`` is up to
        ``RELAY_JWT_LEEWAY`` s in the future is accepted, so it is covered too.
        """
        now = time.time()
        covers = {"jti": now, "sub": now + self.settings.jwt_leeway}
        for kind, value in (("jti", jti), ("sub", sub)):
            if value is not None:
                await self._broker.revoke(kind, value, covers[kind], now + ttl)

    def _close_revoked(self, kind: str, value: str, at: float) -> None:
        """Close local subscriptions whose token a revocation (from any instance) covers."""
        for subscriber in self._hub.all_subscribers():
            # Subscriptions (sockets and SSE streams) and long polls carry their token's claims.
            if not isinstance(subscriber, Subscription | _Waiter) or subscriber.claims is None:
                continue
            claims = subscriber.claims
            if (kind == "jti" and claims.jti == value) or (
                kind == "sub" and claims.sub == value and (claims.iat is None or claims.iat <= at)
            ):
                metrics.revoked_close()
                if isinstance(subscriber, _Waiter):
                    subscriber.revoke()
                else:
                    subscriber.close(closecodes.TOKEN_REVOKED)

    # -- operators ----------------------------------------------------------------------

    async def ping(self) -> None:
        """Return when the broker is reachable; raise BrokerUnavailable otherwise."""
        await self._broker.ping()

    def streams(self) -> list[Subscription]:
        """Every open stream (socket or SSE) of this instance: a snapshot, for a shutdown."""
        return [s for s in self._hub.all_subscribers() if isinstance(s, Subscription)]

    def end_polls(self) -> None:
        """Answer every waiting long poll now, with what there is (a shutdown)."""
        for waiter in self._hub.all_subscribers():
            if not isinstance(waiter, Subscription):
                waiter.resync()

    @property
    def executions(self) -> int:
        """Executions with at least one local subscriber (stream or poll)."""
        return self._hub.executions

    def broker_stats(self) -> dict[str, int]:
        """The broker's own figures (channels, pub/sub state, reconnects), for the metrics."""
        return self._broker.stats()

    @property
    def connections(self) -> int:
        """Local subscribers in all: sockets, SSE streams and waiting long polls."""
        return self._hub.connections

    def stats(self) -> dict[str, Any]:
        """The instance's figures: the counters and gauges of /metrics, all workers' when several."""
        return {
            "scope": "instance",
            "workers": self.settings.workers,
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "broker": self.settings.broker_scheme,
            **metrics.snapshot(),
        }


def _refused(why: str, error: RelayError, disconnect: Disconnect) -> Refused:
    metrics.auth_failure(why)
    return Refused(why, error, disconnect)


def _refused_revoked() -> Refused:
    return _refused("revoked", Unauthorized("token revoked", reason="revoked"), closecodes.TOKEN_REVOKED)


def _minter(settings: Settings) -> TokenMinter | None:
    kid, key = settings.jwt_keys[0]
    if settings.jwt_algorithm not in HMAC_ALGORITHMS:
        if not settings.jwt_private_key:
            return None
        key = settings.jwt_private_key
    return TokenMinter(settings.jwt_algorithm, kid, key, settings.jwt_audience, settings.jwt_issuer)
