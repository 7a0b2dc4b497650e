"""Delivery's rules, free of I/O: where a subscriber resumes, and what it is told first.

Nothing here awaits, touches a socket or calls a broker: it is given what
happened and answers what to do, so every transport (socket, SSE, polling)
follows the same rules and they can be tested alone.

:func:`resume` decides where a cursor resumes in a history page (contract v2,
"Stream epochs"): a cursor without an epoch is a v1 cursor, trusted as it is;
a cursor whose epoch is not the stream's current one resumes from the start of
the current epoch, with ``reset``; ``gap`` says history no longer reaches back
to the first event wanted. :func:`connected_message` builds the ``connected``
frame the socket and SSE open with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .brokers.base import HistoryPage
from .cursor import Cursor

__all__ = ["Resume", "connected_message", "resume"]


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a cursor resumes: deliver seqs after ``after``; ``reset`` and ``gap`` as the contract says."""

    after: int
    reset: bool = False
    gap: bool = False

    def fields(self) -> dict[str, bool]:
        """``reset`` / ``gap`` for an answer, only when true (as the contract shows them)."""
        out = {}
        if self.reset:
            out["reset"] = True
        if self.gap:
            out["gap"] = True
        return out


def resume(page: HistoryPage, cursor: Cursor) -> Resume:
    """Where ``cursor`` resumes in the stream ``page`` was read from."""
    reset = cursor.epoch is not None and cursor.epoch != page.epoch
    after = 0 if reset else cursor.seq
    return Resume(after, reset, page.gap_after(after))


def connected_message(
    execution_id: str, page: HistoryPage, cursor: Cursor, verdict: Resume, **intervals: float
) -> dict[str, Any]:
    """The ``connected`` frame: where the stream stands and how the cursor resumed.

    ``intervals`` are the transport's own (``heartbeat_interval`` on the socket,
    ``keepalive_interval`` on SSE).
    """
    return {
        "type": "connected",
        "execution_id": execution_id,
        "latest_seq": page.latest_seq,
        "epoch": page.epoch,
        "resumed": cursor.given,
        **intervals,
        **verdict.fields(),
    }
