"""When CPython's cycle collector runs over the relay's connections, and when not.

A full (generation-2) collection scans every tracked object. An open connection
holds about 130 of them (Sanic's and asyncio's tasks, futures, coroutines,
locks, contexts; docs/performance.md), and CPython starts a full collection
whenever long-lived objects have grown by a quarter: while a crowd of clients
connects, that is several collections of hundreds of thousands of objects,
each standing the event loop still for 50-300 ms.

The policy (choice), installed in served processes only:

- Whatever survives a collection, young ones included, moves to the permanent
  generation (``gc.freeze()``, constant time), which no collection scans. A
  collection then scans only what was allocated since the last one, so its
  pause follows the rate of allocation, not the number of open connections nor
  the events kept in history. Freezing only after full collections (the first
  version) still let the middle and full collections rescan what the young
  ones had promoted since the last freeze: at 4,000 events/s, 8,600-28,700
  objects (mostly events just kept in history), 2.6-18 ms of CPU each on a
  busy machine, 1-3 times in every 3 s (``bench/tail_probe.py --sizes``); now
  none examines more than ~1,800 but for a young one catching a burst.
- The price: an object frozen and later left in a reference cycle is not
  reclaimed by a collection. A closed connection used to leave ~40 such
  objects (cycles inside Sanic and websockets: the socket and its protocol
  referring to each other, websockets' frame parser, the bound method Sanic's
  ``Http`` keeps of itself). Those cycles are now broken when a connection
  ends (``service/web/wsproto.py``, ``hardening.py``, ``routes/ws.py``), and
  ``tests/test_gcpolicy.py`` checks that no way of ending one (a close
  handshake, a dropped socket, a refused token, a publish, a stream, a long
  poll) leaves one; a POST never did. What is left to a *compaction* is a
  path no test covers: once four times as many connections have closed as
  are open, and at least ``min_closed`` (20,000), it runs from the event
  loop: ``gc.unfreeze()``, one full collection of everything, and its
  survivors frozen again. It stands the loop still for as long as a full
  collection of every live object takes (~1 µs an object on the benchmark
  machine: ~0.4 s with 1,000 sockets left), so it must be rare: when it ran
  after every turnover, a crowd of 5,000 sockets dropping at once stalled
  every other socket for half a second (docs/performance.md).

Every collection, compactions included, is timed in
``relay_gc_pause_seconds{generation}`` (service/metrics.py).
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

__all__ = ["CollectionPolicy", "policy"]

#: Seconds from the closing that makes a compaction due to the compaction: Sanic and websockets
#: finish tearing a connection down (its tasks, the closing handshake) after it is lost.
COMPACTION_DELAY = 1.0


class CollectionPolicy:
    """Freezes the survivors of every collection; compacts after many connections have closed."""

    def __init__(self, min_closed: int = 20_000) -> None:
        self.min_closed = min_closed
        self.installed = False
        self.open = 0
        self.closed = 0  # since the last compaction
        self.compactions = 0
        self._compaction_due = False
        self._thresholds = gc.get_threshold()

    def install(self) -> None:
        """Collect and freeze what exists now (startup), then freeze after every collection."""
        if self.installed:
            return
        self.installed = True
        self._thresholds = gc.get_threshold()
        young, middle, _ = self._thresholds
        # A full collection after every second collection of the middle generation: with every
        # survivor frozen, it scans little more than a young collection does.
        gc.set_threshold(young, middle, 1)
        gc.collect()
        gc.freeze()
        gc.callbacks.append(self._after_collection)

    def uninstall(self) -> None:
        """Back to CPython's own policy (everything frozen becomes collectable again)."""
        if not self.installed:
            return
        self.installed = False
        gc.callbacks.remove(self._after_collection)
        gc.set_threshold(*self._thresholds)
        gc.unfreeze()

    def connection_opened(self) -> None:
        """Count a new connection (called for every accepted TCP connection)."""
        self.open += 1

    def connection_closed(self) -> None:
        """Count a closed connection; schedule a compaction after four turnovers (and ``min_closed`` closes)."""
        self.open -= 1
        self.closed += 1
        if self.installed and not self._compaction_due and self.closed >= max(4 * self.open, self.min_closed):
            self._compaction_due = True
            asyncio.get_running_loop().call_later(COMPACTION_DELAY, self.compact)

    def compact(self) -> None:
        """Collect everything, frozen objects included; freeze the survivors again."""
        self._compaction_due = False
        self.closed = 0
        self.compactions += 1
        gc.unfreeze()
        gc.collect()  # its callback freezes the survivors

    def _after_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "stop":
            gc.freeze()


#: The process's policy: ``policy.install()`` in a served process (service/cli.py).
policy = CollectionPolicy()
