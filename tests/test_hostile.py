"""The hostile-client suite: each attack against a real relay process, its health measured meanwhile.

Assertions are on correctness (the answer the attacker gets, no error line,
every line JSON, no 5xx, memory bounded by a generous margin), never on
timings; the figures go to docs/reliability.md through ``bench/hostile.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hostile import ATTACKS, Health, Outcome, run_attack, start_service
from tests.redis_util import ServiceProcess

#: Generous: the unauthenticated-body attack alone grew the server by ~100 MiB before issue 15.
RSS_MARGIN_MIB = 48


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceProcess]:
    """One relay process for the module, configured as the attack run's."""
    service = start_service()
    yield service
    service.stop()


def healthy(health: Health) -> None:
    """What must hold during every attack."""
    assert health.error_lines == 0, "the attack produced error log lines"
    assert health.non_json_lines == 0, "a log line was not JSON"
    assert health.server_errors == 0, "an access line said 5xx"
    assert health.healthz_failures == 0, f"/healthz failed during the attack: {health.healthz_errors}"
    assert health.healthz_ms, "/healthz was never answered during the attack"
    assert health.rss_growth_mib < RSS_MARGIN_MIB, f"memory grew by {health.rss_growth_mib:.0f} MiB"


async def attack(service: ServiceProcess, name: str) -> Outcome:
    """Run ``name`` and check the health properties; return what the attacker saw."""
    assert name in ATTACKS
    outcome, health = await run_attack(service, name)
    healthy(health)
    return outcome


async def test_unauthenticated_bodies_are_refused_before_any_byte(service: ServiceProcess) -> None:
    """Bodies behind a missing key are never read: every connection gets 401, memory stays flat."""
    outcome = await attack(service, "unauthenticated 1 MiB bodies x100")
    assert outcome.answers == {"401": 100}


async def test_control_frame_flood_is_closed(service: ServiceProcess) -> None:
    """Pings and unsolicited pongs count: every flooding socket is closed (4029, unless reset meanwhile)."""
    outcome = await attack(service, "ping/pong flood, 5 sockets")
    # A client still writing when the server closes gets a reset, which can discard the close frame.
    assert set(outcome.answers) <= {"4029", "closed", "reset"} and sum(outcome.answers.values()) == 5


async def test_continuation_flood_is_closed(service: ServiceProcess) -> None:
    """Empty continuation frames count: every flooding socket is closed (4029 or 1008)."""
    outcome = await attack(service, "empty continuation frames, 5 sockets")
    # A client still writing when the server closes gets a reset, which can discard the close frame.
    assert set(outcome.answers) <= {"4029", "1008", "closed", "reset"} and sum(outcome.answers.values()) == 5


async def test_invalid_utf8_is_closed_1007(service: ServiceProcess) -> None:
    """Invalid UTF-8 closes every socket with 1007, with no error line."""
    outcome = await attack(service, "invalid UTF-8 in a fragment x50")
    assert outcome.answers == {"1007": 50}


async def test_slowloris_heads_are_cut(service: ServiceProcess) -> None:
    """Every dribbled head is answered 408 at the deadline, long before it would have ended."""
    outcome = await attack(service, "slowloris head, 200 connections")
    assert outcome.answers == {"408": 200}


async def test_one_address_cannot_hoard_connections(service: ServiceProcess) -> None:
    """Past the per-address cap, connections get 429; the ones under it stay open."""
    outcome = await attack(service, "400 connections from one address")
    assert outcome.answers == {"held open": 300, "429": 100}


async def test_a_flooding_client_that_never_reads_is_closed(service: ServiceProcess) -> None:
    """A client that floods and never reads is closed (4029, or aborted: reset before it could read the frame)."""
    outcome = await attack(service, "pings from a client that never reads")
    assert set(outcome.answers) <= {"4029", "closed", "reset"} and sum(outcome.answers.values()) == 3


async def test_hostile_request_bytes_keep_logs_json(service: ServiceProcess) -> None:
    """Control bytes, quotes and tokens anywhere in a request: clear 4xx answers, every log line one JSON object."""
    outcome = await attack(service, "control bytes, quotes, tokens in requests x200")
    assert set(outcome.answers) <= {"400", "401", "404", "426"}, outcome.answers


async def test_clients_leaving_mid_request_are_not_server_errors(service: ServiceProcess) -> None:
    """Clients that leave mid-body or mid-poll are logged 499, never 5xx (checked by the health properties)."""
    outcome = await attack(service, "clients leaving mid-request x100")
    assert outcome.answers == {"left": 100}


async def test_long_polls_on_one_token_are_limited(service: ServiceProcess) -> None:
    """280 long polls on one token: the per-user limit (20) wait, every other one gets 429."""
    outcome = await attack(service, "280 long polls on one token")
    assert outcome.answers == {"held open": 20, "429": 260}, outcome.answers


async def test_large_events_do_not_fill_the_compression_cache(service: ServiceProcess) -> None:
    """Distinct ~900 KB events reach a compressing subscriber intact, with memory bounded."""
    outcome = await attack(service, "distinct 900 KB events to a compressing subscriber x30")
    assert outcome.answers == {"202": 30, "intact": 30}


async def test_idempotency_keys_stay_bounded(service: ServiceProcess) -> None:
    """10,000 keys on one execution: all accepted, all but twice the history size forgotten."""
    outcome = await attack(service, "10,000 idempotency keys on one execution")
    assert outcome.answers == {"202": 10, "keys forgotten >= 8000: True": 1}
