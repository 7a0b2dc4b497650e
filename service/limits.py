"""Connection and frame-rate limits, each configurable (``RELAY_MAX_*``).

Counted per instance: a client refused here gets close code 4029 (back off
longer, then reconnect), never a silent drop.
"""

from __future__ import annotations

import asyncio
import codecs
import time
from collections import deque
from collections.abc import Iterable

from websockets.frames import Frame, Opcode

__all__ = ["HANDSHAKES_PER_TURN", "ConnectionLimits", "FrameGuard", "FrameRate", "PeerLimit", "Turnstile"]


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


class PeerLimit:
    """Open TCP connections per client address; ``limit`` 0 turns the cap off."""

    __slots__ = ("by_address", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.by_address: dict[str, int] = {}

    def acquire(self, address: str) -> bool:
        """Count one more connection from ``address``; False (nothing counted) past the limit."""
        count = self.by_address.get(address, 0)
        if self.limit and count >= self.limit:
            return False
        self.by_address[address] = count + 1
        return True

    def release(self, address: str) -> None:
        """Forget one connection counted by :meth:`acquire`."""
        left = self.by_address.get(address, 1) - 1
        if left > 0:
            self.by_address[address] = left
        else:
            self.by_address.pop(address, None)


_UTF8 = codecs.getincrementaldecoder("utf-8")
_CONTROL = (Opcode.PING, Opcode.PONG, Opcode.CLOSE)


class FrameGuard:
    """Every frame a client sends, checked before anything acts on it (no I/O here).

    Counts *every* received frame, control and continuation frames included,
    against one token bucket (``rate`` a second, bursts of twice that), caps the
    frames of one message, and checks text messages for valid UTF-8 frame by
    frame. :meth:`check` returns ``(close code, reason)`` for the first frame
    that breaks a rule; the connection must then be closed, so the partial
    message is never delivered (nor spliced onto the next one).
    """

    __slots__ = ("decoder", "in_message", "max_frames_per_message", "rate")

    def __init__(self, rate: float, max_frames_per_message: int) -> None:
        self.rate = FrameRate(rate)
        self.max_frames_per_message = max_frames_per_message
        self.in_message = 0  # frames of the message being received; 0 between messages
        self.decoder: codecs.IncrementalDecoder | None = None  # set while a text message is open

    def check(self, frames: Iterable[object]) -> tuple[int, int, str, str] | None:
        """``(index, code, reason, why)`` for the first frame that breaks a rule, else None.

        ``index`` is the frame's position in ``frames`` (those before it passed);
        ``why`` is a short word for counters and metrics.
        """
        for index, frame in enumerate(frames):
            if not isinstance(frame, Frame):
                continue
            if not self.rate.allow():
                return index, 4029, "too many frames", "frame_rate"
            opcode = frame.opcode
            if opcode in _CONTROL:
                continue
            if opcode is not Opcode.CONT:  # TEXT or BINARY: a new message
                self.in_message = 0
                self.decoder = _UTF8() if opcode is Opcode.TEXT else None
            self.in_message += 1
            if self.in_message > self.max_frames_per_message:
                return index, 1008, "too many frames in one message", "frames_per_message"
            if self.decoder is not None:
                try:
                    self.decoder.decode(frame.data, frame.fin)
                except UnicodeDecodeError:
                    return index, 1007, "invalid UTF-8 in a text message", "invalid_utf8"
            if frame.fin:
                self.in_message = 0
                self.decoder = None
        return None


#: WebSocket handshakes let through per turn of the event loop (see :class:`Turnstile`).
HANDSHAKES_PER_TURN = 2


class Turnstile:
    """Lets at most ``per_turn`` callers through per turn of the event loop; the others wait, in order.

    For WebSocket handshakes. Every request that arrived since the loop last
    polled is parsed in one turn, and each handshake it starts (a token check,
    a subscription, two writes: about half a millisecond) used to run in that
    same turn. When a crowd connects, the events in flight waited behind
    dozens of them: 40-75 ms in the bench's rush (5,000 connects in 5 s while
    1,000 events/s flow). A few handshakes per turn, and the events of the
    next turn go out between them (docs/performance.md, "The rush").
    """

    def __init__(self, per_turn: int = HANDSHAKES_PER_TURN) -> None:
        self.per_turn = per_turn
        self.used = 0  # let through in the current turn
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None  # with a turn end scheduled on it

    async def enter(self) -> None:
        """Return in this turn if it has room, else in a later one (first come, first through)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # no turn end pending (or pending on a loop that ended)
            self._loop = loop
            self.used = 0
            self._waiting.clear()
            loop.call_soon(self._turn_ended)
        if self.used < self.per_turn and not self._waiting:
            self.used += 1
            return
        waiter = loop.create_future()
        self._waiting.append(waiter)
        await waiter  # a caller cancelled meanwhile (its client left) is skipped

    def _turn_ended(self) -> None:
        # Runs after the callbacks of the turn; those let through here run in the next one.
        self.used = 0
        while self._waiting and self.used < self.per_turn:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self.used += 1
        if self.used or self._waiting:
            assert self._loop is not None
            self._loop.call_soon(self._turn_ended)
        else:
            self._loop = None  # idle: the next caller starts a turn
