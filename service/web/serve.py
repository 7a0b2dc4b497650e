"""Serving with Sanic: one process, or a manager and several workers.

``progress-relay serve`` (``service/cli.py``) checks the settings and prints
the dev banner, then calls :func:`run`. Each worker builds its own app from
the environment (:func:`_worker_app`), as Sanic's worker loader requires.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from functools import partial
from typing import Any

from sanic import Sanic
from sanic.log import logger
from sanic.worker.loader import AppLoader
from sanic.worker.manager import WorkerManager

from .. import metrics
from ..config import Settings, load_settings
from ..gcpolicy import policy as gc_policy
from ..logs import setup_logging
from .app import SERVER_PROTOCOL, create_app

__all__ = ["run"]


def run(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM: in this process with one worker, else as Sanic's manager of several."""
    # Several workers share their metrics through files; set up before any worker starts.
    metrics_dir = metrics.prepare_multiprocess(settings.workers)
    setup_logging(settings.log_level)
    loader = AppLoader(factory=partial(_worker_app, "progress_relay"))
    app = loader.load()
    app.prepare(
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        access_log=False,
        motd=False,
        single_process=settings.workers == 1,
        protocol=SERVER_PROTOCOL,
        backlog=settings.backlog,  # a reconnect storm overflows Sanic's default of 100
    )
    if settings.workers > 1:
        _defer_manager_shutdown()
    try:
        Sanic.serve(primary=app, app_loader=loader) if settings.workers > 1 else Sanic.serve_single(primary=app)
    finally:
        metrics.remove_multiprocess_dir(metrics_dir)


def _worker_app(name: str) -> Any:
    settings = load_settings()
    setup_logging(settings.log_level)  # a spawned worker starts with Python's default logging
    app = create_app(settings, name=name)
    gc_policy.install()  # a served process: full collections skip long-lived connection objects
    return app


def _defer_manager_shutdown() -> None:
    """Make SIGTERM to Sanic's worker manager (PID 1 in a pod) safe.

    Sanic's handler terminates the workers from inside the signal handler, which
    talks to its multiprocessing Manager; the monitor loop talks to that Manager
    every 0.1 s too, and a signal landing in the middle of such a call leaves both
    ends waiting for each other: the process never exits (tests/test_shutdown.py
    hung 3 runs in 8). Instead the handler only posts Sanic's own "__TERMINATE__"
    message, and the monitor loop terminates the workers between its calls. A
    second signal still kills at once, as Sanic's handler does.
    """
    original: Callable[..., None] = WorkerManager.shutdown_signal
    if getattr(original, "_relay_deferred", False):
        return

    def shutdown_signal(self: WorkerManager, signum: int, frame: Any) -> None:
        if getattr(self, "_relay_terminating", False) or self._shutting_down:
            original(self, signum, frame)
            return
        self._relay_terminating = True  # type: ignore[attr-defined]  # a flag of ours on Sanic's object
        logger.info("Received signal %s. Shutting down.", signal.Signals(signum).name)
        self.monitor_publisher.send("__TERMINATE__")

    shutdown_signal._relay_deferred = True  # type: ignore[attr-defined]  # marks the patch as applied
    WorkerManager.shutdown_signal = shutdown_signal  # type: ignore[method-assign]  # see the docstring
