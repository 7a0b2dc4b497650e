"""Whole-suite guard: no log line of the relay or Sanic carries a credential.

Every record of the ``relay`` and ``sanic`` loggers, from every test, is
rendered with the service's own :class:`~service.logs.JsonFormatter` (what a
server writes) and checked for a JWT-shaped string, the test JWT secret and
the test publisher key. ``tests/conftest.py`` imports the fixture, so it runs
for the whole session; a leak fails the session's last test at teardown,
naming the line. ``tests/test_logs.py`` checks a real server's whole stderr.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest

from service.logs import JsonFormatter

__all__ = ["LogGuard", "no_credentials_in_logs"]

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.")
# Loggers checked, and the level they are opened to for the session.
_LOGGERS = {"relay": logging.DEBUG, "sanic": logging.INFO}


class LogGuard(logging.Handler):
    """Formats each record as the server would and remembers any line with a credential in it."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.secrets = secrets
        self.checked = 0
        self.leaks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Check one record."""
        try:
            line = self.format(record)
        except Exception as exc:  # a record the formatter cannot render is a finding too
            self.leaks.append(f"{record.name}: unformattable record ({exc!r})")
            return
        self.checked += 1
        if _JWT.search(line) or any(secret in line for secret in self.secrets):
            self.leaks.append(line[:400])


@pytest.fixture(scope="session", autouse=True)
def no_credentials_in_logs() -> Iterator[LogGuard]:
    """Watch every relay/Sanic log record of the session; fail at the end if one carried a credential."""
    from tests.conftest import PUBLISH_KEY, SECRET

    guard = LogGuard((SECRET, PUBLISH_KEY))
    saved = []
    for name, level in _LOGGERS.items():
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        logger.addHandler(guard)
        if logger.level == logging.NOTSET or logger.level > level:
            logger.setLevel(level)
    yield guard
    for logger, level in saved:
        logger.removeHandler(guard)
        logger.setLevel(level)
    assert not guard.leaks, f"{len(guard.leaks)} log line(s) carry a credential:\n" + "\n".join(guard.leaks[:10])
