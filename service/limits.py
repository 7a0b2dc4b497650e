"""Connection and frame-rate limits, each configurable (``RELAY_MAX_*``).

Counted per instance: a client refused here gets close code 4029 (back off
longer, then reconnect), never a silent drop.
"""

from __future__ import annotations

import time

__all__ = ["ConnectionLimits", "FrameRate"]


class ConnectionLimits:
    """Open sockets of this instance: in all, per execution and per user (``sub``)."""

    def __init__(self, total: int, per_execution: int, per_sub: int) -> None:
        self.total = total
        self.per_execution = per_execution
        self.per_sub = per_sub
        self.open = 0
        self._by_execution: dict[str, int] = {}
        self._by_sub: dict[str, int] = {}

    def acquire(self, execution_id: str, sub: str) -> str | None:
        """Count one more socket, or return the name of the limit it would exceed."""
        if self.open >= self.total:
            return "connections"
        if self._by_execution.get(execution_id, 0) >= self.per_execution:
            return "per_execution"
        if self._by_sub.get(sub, 0) >= self.per_sub:
            return "per_sub"
        self.open += 1
        self._by_execution[execution_id] = self._by_execution.get(execution_id, 0) + 1
        self._by_sub[sub] = self._by_sub.get(sub, 0) + 1
        return None

    def release(self, execution_id: str, sub: str) -> None:
        """Forget one socket counted by :meth:`acquire`."""
        self.open -= 1
        for counts, key in ((self._by_execution, execution_id), (self._by_sub, sub)):
            left = counts.get(key, 1) - 1
            if left > 0:
                counts[key] = left
            else:
                counts.pop(key, None)


class FrameRate:
    """A token bucket: ``rate`` frames a second on average, bursts up to twice that."""

    __slots__ = ("allowance", "last", "rate")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.allowance = 2 * rate
        self.last = time.monotonic()

    def allow(self) -> bool:
        """Take one frame from the bucket; False when the client sends too fast."""
        now = time.monotonic()
        self.allowance = min(2 * self.rate, self.allowance + (now - self.last) * self.rate)
        self.last = now
        if self.allowance < 1:
            return False
        self.allowance -= 1
        return True
