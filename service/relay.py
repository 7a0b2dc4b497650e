"""The relay: one object tying broker, hub and auth together, free of Sanic.

Routes are thin edges around it: they translate HTTP and WebSocket requests
into calls of :class:`Relay` and its results back into responses.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import Any

from auth import Claims, PublisherKeys, TokenMinter, TokenVerifier

from . import metrics
from .brokers import Broker, HistoryPage, PublishResult, broker_from_settings
from .closecodes import TOKEN_REVOKED
from .config import HMAC_ALGORITHMS, Settings
from .cursor import Cursor
from .delivery import Resume, resume
from .errors import RelayError
from .events import Event, EventDraft
from .hub import Hub
from .subscription import Sink, Subscription

__all__ = ["Relay", "TokenRevokedWhileWaiting"]


class TokenRevokedWhileWaiting(Exception):
    """A long poll's token was revoked while it waited (the edge answers 401 ``revoked``)."""


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

    def offer(self, event: Event) -> None:
        self._wake()

    def resync(self) -> None:
        self._wake()  # the request re-reads history when it wakes

    def _wake(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class Relay:
    """Publishes events, serves history and opens subscriptions."""

    def __init__(self, settings: Settings, broker: Broker | None = None) -> None:
        self.settings = settings
        self.broker = broker or broker_from_settings(settings)
        metrics.instrument_broker(self.broker)
        self.hub = Hub(self.broker)
        self.broker.set_listener(self.hub.dispatch, self.hub.resync)
        self.broker.set_revocation_listener(self._close_revoked)
        self.verifier = TokenVerifier(
            settings.jwt_algorithm,
            settings.jwt_keys,
            settings.jwt_audience,
            settings.jwt_issuer,
            settings.jwt_leeway,
        )
        self.minter = _minter(settings)
        self.publisher_keys = PublisherKeys(settings.publish_keys)
        self.started_at = time.time()
        self.publishing = 0  # publishes in flight, awaited by a graceful shutdown

    async def start(self) -> None:
        """Connect the broker."""
        await self.broker.start()

    async def close(self) -> None:
        """Release the broker."""
        await self.hub.close()
        await self.broker.close()

    async def publish(self, draft: EventDraft) -> PublishResult:
        """Accept one event (idempotent by key); the broker delivers it."""
        started = time.perf_counter()
        self.publishing += 1
        try:
            result = await self.broker.publish(draft)
        except RelayError as exc:
            metrics.publish_rejected(exc.code)
            raise
        finally:
            self.publishing -= 1
            metrics.observe_publish(time.perf_counter() - started, "single")
        self._accepted(draft, result)
        return result

    def _accepted(self, draft: EventDraft, result: PublishResult) -> None:
        """Count one accepted (or duplicate) event."""
        metrics.published(draft.event, result.duplicate)

    async def publish_many(self, drafts: Sequence[EventDraft]) -> list[PublishResult | RelayError]:
        """Accept several events in order, one result or error each."""
        started = time.perf_counter()
        self.publishing += 1
        try:
            results = await self.broker.publish_many(drafts)
        except RelayError as exc:
            metrics.publish_rejected(exc.code)
            raise
        finally:
            self.publishing -= 1
            metrics.observe_publish(time.perf_counter() - started, "batch")
        for draft, result in zip(drafts, results, strict=True):
            if isinstance(result, PublishResult):
                self._accepted(draft, result)
            else:
                metrics.publish_rejected(result.code)
        return results

    def subscription(self, execution_id: str, cursor: Cursor, sink: Sink, claims: Claims | None = None) -> Subscription:
        """A new subscription after ``cursor``; call ``open`` then ``start`` on it."""
        return Subscription(self, execution_id, cursor, sink, self.settings.send_queue_size, claims)

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
                await self.broker.revoke(kind, value, covers[kind], now + ttl)

    async def is_revoked(self, claims: Claims) -> bool:
        """Whether ``claims`` belong to a revoked token."""
        return await self.broker.is_revoked(claims.jti, claims.sub, claims.iat)

    def _close_revoked(self, kind: str, value: str, at: float) -> None:
        """Close local subscriptions whose token a revocation (from any instance) covers."""
        for subscriber in self.hub.all_subscribers():
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
                    subscriber.close(TOKEN_REVOKED)

    async def history(
        self, execution_id: str, after: int = 0, limit: int | None = None, *, create: bool = True
    ) -> HistoryPage:
        """Retained events after ``after`` (``create=False``: an unknown stream stays unknown)."""
        return await self.broker.history(execution_id, after, limit, create=create)

    async def _read(self, execution_id: str, cursor: Cursor, limit: int | None) -> tuple[HistoryPage, Resume]:
        """Events after ``cursor``, from the start of the current epoch when the cursor's is not it."""
        page = await self.broker.history(execution_id, cursor.seq, limit)
        verdict = resume(page, cursor)
        if verdict.reset:
            page = await self.broker.history(execution_id, 0, limit)
            verdict = resume(page, cursor)
        return page, verdict

    async def wait_for_events(
        self,
        execution_id: str,
        cursor: Cursor,
        timeout: float,
        limit: int | None = None,
        claims: Claims | None = None,
    ) -> tuple[HistoryPage, Resume]:
        """Events after ``cursor`` and how it resumed; if there are none yet, wait up to ``timeout`` s for one.

        A reset answers at once (the client must learn it). One future per
        waiting request, woken by the hub: no polling loop. With ``claims``
        the wait ends by the token's expiry at the latest, and a revocation of
        the token (from any instance) wakes it to raise
        :class:`TokenRevokedWhileWaiting`.
        """
        if claims is not None:
            timeout = min(timeout, claims.exp - time.time())
        page, verdict = await self._read(execution_id, cursor, limit)
        if page.events or page.terminal or verdict.reset or timeout <= 0:
            return page, verdict
        waiter = _Waiter(claims)
        await self.hub.add(execution_id, waiter)
        try:
            # Registered first, then re-read: an event published in between is not missed.
            page, verdict = await self._read(execution_id, cursor, limit)
            if page.events or page.terminal or verdict.reset:
                return page, verdict
            try:
                await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
            except TimeoutError:
                return page, verdict
            # Woken: by a revocation, or by an event (then check revocation once more: a
            # revocation whose broadcast never reached this instance is still in the broker).
            if waiter.revoked or (claims is not None and await self.is_revoked(claims)):
                raise TokenRevokedWhileWaiting()
            return await self._read(execution_id, cursor, limit)
        finally:
            self.hub.remove(execution_id, waiter)

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


def _minter(settings: Settings) -> TokenMinter | None:
    kid, key = settings.jwt_keys[0]
    if settings.jwt_algorithm not in HMAC_ALGORITHMS:
        if not settings.jwt_private_key:
            return None
        key = settings.jwt_private_key
    return TokenMinter(settings.jwt_algorithm, kid, key, settings.jwt_audience, settings.jwt_issuer)
