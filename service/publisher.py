"""A publisher client the scheduler can import (standard library only).

Keeps the method names of the product's original WebSocket service::

    pub = RelayPublisher("http://relay:8765", key)
    pub.send_progress("exec-001", 50, "ai_fetching", "processing", "正在查询 AI 平台")
    pub.send_complete("exec-001", {"score": 87})

Each event gets one idempotency key, reused by every retry (connection
errors, 5xx and 429 are retried with back-off), so a retry never delivers an
event twice. :class:`AsyncRelayPublisher` offers the same methods as
coroutines for asyncio schedulers.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid
from typing import Any
from urllib.parse import quote

__all__ = ["AsyncRelayPublisher", "PublishError", "RelayPublisher"]


class PublishError(Exception):
    """The relay refused the event (4xx) or stayed unreachable after retries."""

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class RelayPublisher:
    """Posts events to ``/internal/v1`` with retries that never duplicate."""

    def __init__(self, base_url: str, key: str, timeout: float = 5.0, retries: int = 5, backoff: float = 0.2) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff

    def publish(
        self, execution_id: str, event: str, data: dict[str, Any], idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Publish one event; return ``{"execution_id", "seq", "duplicate"}``."""
        body = {"event": event, "data": data, "idempotency_key": idempotency_key or uuid.uuid4().hex}
        path = f"/internal/v1/executions/{quote(execution_id, safe='')}/events"
        return self._post(path, body)

    def mint_token(self, execution_id: str, sub: str, ttl_seconds: int | None = None) -> dict[str, Any]:
        """Ask the relay for a subscriber token: ``{"token", "expires_at"}``."""
        body: dict[str, Any] = {"execution_id": execution_id, "sub": sub}
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        return self._post("/internal/v1/tokens", body)

    def send_progress(
        self, execution_id: str, progress: int, stage: str, status: str = "processing", status_text: str | None = None
    ) -> dict[str, Any]:
        """Publish a ``progress`` event."""
        data: dict[str, Any] = {"progress": progress, "stage": stage, "status": status}
        if status_text is not None:
            data["status_text"] = status_text
        return self.publish(execution_id, "progress", data)

    def send_result(self, execution_id: str, result: dict[str, Any]) -> dict[str, Any]:
        """Publish a partial ``result``."""
        return self.publish(execution_id, "result", result)

    def send_complete(self, execution_id: str, final_report: dict[str, Any] | None = None) -> dict[str, Any]:
        """Publish the terminal ``complete`` event with the report."""
        return self.publish(execution_id, "complete", {"report": final_report} if final_report is not None else {})

    def send_error(
        self,
        execution_id: str,
        error: str,
        error_type: str | None = None,
        error_details: dict[str, Any] | None = None,
        recoverable: bool = False,
    ) -> dict[str, Any]:
        """Publish an ``error`` (terminal unless ``recoverable``)."""
        data: dict[str, Any] = {"error": error, "recoverable": recoverable}
        if error_type is not None:
            data["error_type"] = error_type
        if error_details is not None:
            data["error_details"] = error_details
        return self.publish(execution_id, "error", data)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        payload = json.dumps(body, ensure_ascii=False).encode()
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * (2 ** (attempt - 1)))
            request = urllib.request.Request(
                self.base_url + path,
                data=payload,
                method="POST",
                headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    result: dict[str, Any] = json.loads(response.read())
                    return result
            except urllib.error.HTTPError as exc:
                detail = _read_json(exc)
                if exc.code >= 500 or exc.code == 429:
                    last = PublishError(f"relay answered {exc.code}", exc.code, detail)
                    continue
                raise PublishError(f"relay refused the request with {exc.code}: {detail}", exc.code, detail) from None
            except (urllib.error.URLError, OSError) as exc:
                last = PublishError(f"relay unreachable: {exc}")
        assert last is not None
        raise last


def _read_json(exc: urllib.error.HTTPError) -> Any:
    try:
        return json.loads(exc.read())
    except ValueError:
        return None


class AsyncRelayPublisher:
    """The same methods as :class:`RelayPublisher`, awaitable (run in a thread)."""

    def __init__(self, base_url: str, key: str, **options: Any) -> None:
        self._sync = RelayPublisher(base_url, key, **options)

    async def send_progress(
        self, execution_id: str, progress: int, stage: str, status: str = "processing", status_text: str | None = None
    ) -> dict[str, Any]:
        """Publish a ``progress`` event."""
        return await asyncio.to_thread(self._sync.send_progress, execution_id, progress, stage, status, status_text)

    async def send_result(self, execution_id: str, result: dict[str, Any]) -> dict[str, Any]:
        """Publish a partial ``result``."""
        return await asyncio.to_thread(self._sync.send_result, execution_id, result)

    async def send_complete(self, execution_id: str, final_report: dict[str, Any] | None = None) -> dict[str, Any]:
        """Publish the terminal ``complete`` event."""
        return await asyncio.to_thread(self._sync.send_complete, execution_id, final_report)

    async def send_error(
        self,
        execution_id: str,
        error: str,
        error_type: str | None = None,
        error_details: dict[str, Any] | None = None,
        recoverable: bool = False,
    ) -> dict[str, Any]:
        """Publish an ``error`` event."""
        return await asyncio.to_thread(
            self._sync.send_error, execution_id, error, error_type, error_details, recoverable
        )
