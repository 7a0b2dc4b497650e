"""An execution's state, folded from its events (for ``GET /v1/executions/{id}``).

The state endpoint answers "where is this execution now?" without making a
client replay the events itself. The fold is plain data in, plain data out,
free of Sanic and of the broker:

- ``progress`` sets ``progress`` and ``stage``; ``status`` and
  ``status_text`` when the event carries them (an event without them keeps
  the previous values).
- ``result`` counts in ``result_count``; the results themselves stay in the
  event history.
- ``error`` with ``recoverable: true`` is kept as ``last_error``; the
  execution goes on.
- ``complete`` sets ``status`` to ``completed``, ``progress`` to 100 and
  ``report`` to the event's report (or ``{}``).
- a terminal ``error`` sets ``status`` to ``failed`` and ``error`` to the
  event's data.

:class:`StateCache` keeps the folded state of recently asked executions, so
a client polling the state every second costs one history read of the new
events, not a decode of the whole history.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from .brokers.base import HistoryPage
from .events import Event

__all__ = ["ExecutionState", "StateCache", "fold"]

History = Callable[[str, int], Awaitable[HistoryPage]]


@dataclass(slots=True)
class ExecutionState:
    """What the events of one execution say so far."""

    execution_id: str
    epoch: str = ""  # the stream epoch the events came from
    latest_seq: int = 0  # seq of the last event folded in
    event: str | None = None  # type of that event
    progress: int | None = None
    stage: str | None = None
    status: str | None = None
    status_text: str | None = None
    terminal: bool = False
    report: dict[str, Any] | None = None
    error: dict[str, Any] | None = None  # the terminal error event's data
    last_error: dict[str, Any] | None = None  # the latest recoverable error's data
    result_count: int = 0
    timestamp: str | None = None  # the last event's timestamp
    updated_at: float = 0.0  # unix time the relay accepted the last event

    def apply(self, frame: dict[str, Any]) -> None:
        """Fold one decoded event in (events must come in seq order)."""
        kind = frame.get("event")
        data = frame.get("data")
        if not isinstance(data, dict):
            data = {}
        self.latest_seq = int(frame.get("seq", self.latest_seq))
        self.event = kind if isinstance(kind, str) else None
        ts = frame.get("timestamp")
        self.timestamp = ts if isinstance(ts, str) else self.timestamp
        if kind == "progress":
            self.progress = data.get("progress", self.progress)
            self.stage = data.get("stage", self.stage)
            if isinstance(data.get("status"), str):
                self.status = data["status"]
            if isinstance(data.get("status_text"), str):
                self.status_text = data["status_text"]
        elif kind == "result":
            self.result_count += 1
        elif kind == "complete":
            self.terminal = True
            self.status = "completed"
            self.progress = 100
            report = data.get("report")
            self.report = report if isinstance(report, dict) else {}
        elif kind == "error":
            if data.get("recoverable") is True:
                self.last_error = data
            else:
                self.terminal = True
                self.status = "failed"
                self.error = data

    def as_dict(self) -> dict[str, Any]:
        """The JSON body of the state endpoint."""
        return {
            "execution_id": self.execution_id,
            "latest_seq": self.latest_seq,
            "epoch": self.epoch,
            "event": self.event,
            "progress": self.progress,
            "stage": self.stage,
            "status": self.status,
            "status_text": self.status_text,
            "terminal": self.terminal,
            "report": self.report,
            "error": self.error,
            "last_error": self.last_error,
            "result_count": self.result_count,
            "updated_at": _iso(self.updated_at) if self.updated_at else self.timestamp,
        }


def fold(
    execution_id: str, events: Iterable[Event | dict[str, Any]], base: ExecutionState | None = None
) -> ExecutionState:
    """Fold ``events`` (accepted events or decoded frames) onto ``base`` or an empty state."""
    state = replace(base) if base is not None else ExecutionState(execution_id)
    for event in events:
        frame = event.as_dict() if isinstance(event, Event) else event
        if int(frame.get("seq", 0)) > state.latest_seq:
            state.apply(frame)
    return state


class StateCache:
    """Folded states of recently read executions, brought up to date on each read."""

    def __init__(self, history: History, size: int = 4096) -> None:
        self._history = history
        self._size = size
        self._states: OrderedDict[str, ExecutionState] = OrderedDict()

    async def get(self, execution_id: str) -> ExecutionState | None:
        """The current state, or None when the execution is unknown or expired."""
        cached = self._states.get(execution_id)
        after = cached.latest_seq if cached is not None else 0
        page = await self._history(execution_id, after)
        if not page.exists or (cached is not None and page.epoch != cached.epoch) or page.latest_seq < after:
            # Unknown, expired, or lost and started again (a new epoch): forget what we knew.
            self._states.pop(execution_id, None)
            if not page.exists:
                return None
            cached, page = None, await self._history(execution_id, 0)
        state = fold(execution_id, page.events, cached)
        state.epoch = page.epoch
        state.updated_at = page.updated_at
        # The history holds the truth on termination even if its terminal event was trimmed.
        state.terminal = state.terminal or page.terminal
        self._states[execution_id] = state
        self._states.move_to_end(execution_id)
        while len(self._states) > self._size:
            self._states.popitem(last=False)
        return replace(state)


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
