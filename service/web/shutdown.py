"""Graceful shutdown: drain this instance so that its clients resume elsewhere.

On SIGTERM (or SIGINT) Sanic stops its loop and runs the ``before_server_stop``
listeners while the listening socket is still open. :func:`drain` is one of
them, registered last so that it runs first (Sanic runs shutdown listeners in
reverse order), before Sanic's own listener cancels the WebSocket handlers:

1. ``app.ctx.draining`` is set: ``/readyz`` answers 503 from now on and
   ``routes/ws.py`` refuses new sockets with 1012. Long polls waiting for an
   event answer at once (with what they have).
2. Open subscriptions (sockets and SSE streams) are closed with 1012 in small
   batches spread over ``RELAY_SHUTDOWN_CLOSE_WINDOW`` seconds, so that the
   clients do not all reconnect to the other instances in the same instant.
   Few subscribers are not held back: at least :data:`MIN_CLOSE_RATE` are
   closed per second.
3. Publishes in flight finish (their events are in the broker before the
   broker is closed) and the closed sockets' handlers end.
4. What remains of ``RELAY_SHUTDOWN_TIMEOUT`` becomes Sanic's own graceful
   period for the requests still open, after which the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Sequence
from typing import Any

from sanic import Sanic

from .. import metrics
from ..closecodes import SERVER_RESTARTING
from ..relay import Relay
from ..subscription import Subscription

__all__ = ["LEAD", "MIN_CLOSE_RATE", "TICK", "close_in_batches", "drain", "install", "schedule"]

log = logging.getLogger("relay.shutdown")

#: Shortest time between two batches, in seconds.
TICK = 0.05
#: Subscribers closed per second at the least: a handful of sockets is not spread over the whole window.
MIN_CLOSE_RATE = 50.0
#: Seconds between readiness turning 503 and the first close (when the window is not 0).
LEAD = 0.2
#: Part of the timeout kept for Sanic's own cleanup and the after-stop listeners, in seconds (at most).
RESERVE = 1.0


def schedule(count: int, window: float) -> list[tuple[float, int, int]]:
    """When to close which subscribers: ``(delay, start, stop)`` slices of ``count``, in order.

    The closes are spread over ``min(window, count / MIN_CLOSE_RATE)`` seconds,
    in batches at least :data:`TICK` apart, after :data:`LEAD` seconds in which
    readiness is already reported as draining and nothing is closed yet.
    """
    if count <= 0:
        return []
    span = min(window, count / MIN_CLOSE_RATE)
    batches = max(1, min(count, int(span / TICK)))
    step = span / batches
    lead = LEAD if window > 0 else 0.0
    return [(lead + (i + 1) * step, i * count // batches, (i + 1) * count // batches) for i in range(batches)]


async def close_in_batches(subscriptions: Sequence[Subscription], window: float) -> None:
    """Close ``subscriptions`` with 1012, spread over (at most) ``window`` seconds."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    for delay, start, stop in schedule(len(subscriptions), window):
        await asyncio.sleep(max(0.0, started + delay - loop.time()))
        for sub in subscriptions[start:stop]:
            sub.close(SERVER_RESTARTING)


async def drain(app: Sanic[Any, Any], *_: Any) -> None:
    """Drain ``app`` within ``RELAY_SHUTDOWN_TIMEOUT`` (a ``before_server_stop`` listener)."""
    relay: Relay | None = getattr(app.ctx, "relay", None)
    if relay is None or getattr(app.ctx, "draining", False):
        return
    settings = relay.settings
    loop = asyncio.get_running_loop()
    started = loop.time()
    reserve = min(RESERVE, settings.shutdown_timeout / 10)
    deadline = started + settings.shutdown_timeout - reserve

    app.ctx.draining = True
    metrics.set_draining(relay, True)
    _ignore_further_signals()
    subscriptions = relay.streams()
    relay.end_polls()  # a long poll answers now, with what there is
    log.info(
        "draining",
        extra={
            "fields": {
                "subscriptions": len(subscriptions),
                "publishing": relay.publishing,
                "close_window_s": settings.shutdown_close_window,
                "timeout_s": settings.shutdown_timeout,
            }
        },
    )

    window = max(0.0, min(settings.shutdown_close_window, deadline - loop.time()))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(close_in_batches(subscriptions, window), max(0.0, deadline - loop.time()))
    # A socket that was being opened when draining began may have registered since.
    late = relay.streams()
    for sub in late:
        sub.close(SERVER_RESTARTING)

    # Polled: publishes in flight and Sanic's handler count have no event to wait on.
    while (relay.publishing or _handlers(app)) and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(TICK)
    remaining = deadline - loop.time()
    # Requests still open (a publish that has not reached the relay yet) get the rest.
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = max(0.1, remaining)
    log.info(
        "drained",
        extra={
            "fields": {
                "closed": len(subscriptions) + len(late),
                "publishing": relay.publishing,
                "open_handlers": _handlers(app),
                "elapsed_s": round(loop.time() - started, 3),
            }
        },
    )


def _ignore_further_signals() -> None:
    """In a serving process, let nothing interrupt the drain.

    With several workers the manager forwards its SIGTERM to each worker as a
    SIGINT, which may arrive after the worker's own SIGTERM (``kill`` of the
    whole process group); Sanic has removed its handlers by now, so it would
    raise KeyboardInterrupt in the middle of the drain. SIGKILL still works.
    """
    if not _serving_process():
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def _serving_process() -> bool:
    """Whether this is a server process of its own (not an in-process test server, for one)."""
    return os.environ.get("SANIC_WORKER_PROCESS") == "true" and threading.current_thread() is threading.main_thread()


def _handlers(app: Sanic[Any, Any]) -> int:
    """WebSocket handlers still running."""
    return len(getattr(app, "websocket_tasks", ()))


async def _stop_on_first_signal(app: Sanic[Any, Any], *_: Any) -> None:
    """Replace Sanic's SIGINT/SIGTERM handlers with one that stops once and ignores the rest.

    A kill of the whole process group sends a worker its own SIGTERM and then the
    manager's SIGINT. Sanic's handlers would stop the loop a second time (cutting
    its shutdown short), or, once removed, let the SIGINT raise KeyboardInterrupt
    before :func:`drain` starts ignoring signals. SIGKILL still works.
    """
    if not _serving_process():
        return
    loop = asyncio.get_running_loop()

    def first(signum: int) -> None:
        for other in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(other)
        _ignore_further_signals()
        log.info("stopping", extra={"fields": {"signal": signal.Signals(signum).name}})
        app.stop(terminate=False)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, first, signum)


def install(app: Sanic[Any, Any]) -> None:
    """Register :func:`drain`; call after every blueprint so that it runs before their stop listeners."""
    app.register_listener(drain, "before_server_stop")
    app.register_listener(_stop_on_first_signal, "after_server_start")
