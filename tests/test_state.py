"""The state fold and its cache (service/state.py), on a real memory broker."""

from __future__ import annotations

from typing import Any

from service.brokers.base import HistoryPage
from service.brokers.memory import MemoryBroker
from service.events import parse_draft
from service.state import ExecutionState, StateCache, fold


def frame(seq: int, event: str, **data: Any) -> dict[str, Any]:
    """A decoded event frame as the broker's history holds it."""
    return {
        "type": "diagnosis_update",
        "execution_id": "e",
        "seq": seq,
        "timestamp": f"t{seq}",
        "event": event,
        "data": data,
    }


def test_progress_sets_progress_and_stage_and_keeps_status_until_given() -> None:
    """A progress event sets progress and stage; status and status_text change only when the event carries them."""
    state = fold("e", [frame(1, "progress", progress=10, stage="a", status="processing", status_text="x")])
    state = fold("e", [frame(2, "progress", progress=20, stage="b")], state)
    assert (state.progress, state.stage, state.status, state.status_text) == (20, "b", "processing", "x")
    assert (state.latest_seq, state.event, state.timestamp, state.terminal) == (2, "progress", "t2", False)


def test_results_are_counted_not_kept() -> None:
    """Result events count in result_count; their data stays in the history."""
    state = fold("e", [frame(1, "result", platform="a"), frame(2, "result", platform="b")])
    assert state.result_count == 2 and state.as_dict()["result_count"] == 2 and "platform" not in state.as_dict()


def test_complete_is_terminal_with_progress_100_and_the_report() -> None:
    """complete: terminal, status completed, progress 100, report the event's (or {})."""
    state = fold("e", [frame(1, "progress", progress=40, stage="a"), frame(2, "complete", report={"score": 9})])
    assert (state.terminal, state.status, state.progress, state.report) == (True, "completed", 100, {"score": 9})
    assert fold("e", [frame(1, "complete")]).report == {}


def test_a_recoverable_error_is_remembered_and_the_execution_goes_on() -> None:
    """An error with recoverable true is last_error; a later progress continues the execution."""
    state = fold(
        "e", [frame(1, "error", error="timeout", recoverable=True), frame(2, "progress", progress=5, stage="s")]
    )
    assert state.last_error == {"error": "timeout", "recoverable": True}
    assert not state.terminal and state.error is None and state.status is None


def test_a_terminal_error_fails_the_execution() -> None:
    """An error without recoverable: terminal, status failed, error the event's data."""
    state = fold("e", [frame(1, "error", error="boom", error_type="X")])
    assert (state.terminal, state.status, state.error) == (True, "failed", {"error": "boom", "error_type": "X"})


def test_events_at_or_below_the_state_are_ignored() -> None:
    """Folding a replay onto a state skips the seqs it already has (no double count)."""
    state = fold("e", [frame(1, "result"), frame(2, "result")])
    again = fold("e", [frame(1, "result"), frame(2, "result"), frame(3, "result")], state)
    assert again.result_count == 3 and state.result_count == 2  # the base is not modified


def test_a_frame_with_odd_data_folds_without_error() -> None:
    """Data that is not an object, or a missing event type, leaves the known fields as they were."""
    state = fold("e", [frame(1, "progress", progress=3, stage="a")])
    state.apply({"seq": 2, "event": "progress", "data": "nonsense"})
    state.apply({"seq": 3, "data": {}})
    assert (state.latest_seq, state.progress, state.stage, state.event) == (3, 3, "a", None)


def test_as_dict_has_the_contract_fields() -> None:
    """The state body carries every field the contract lists, updated_at as ISO time when known."""
    state = ExecutionState("e", updated_at=1_700_000_000.5)
    body = state.as_dict()
    for key in ("execution_id", "latest_seq", "event", "progress", "stage", "status", "status_text", "terminal"):
        assert key in body
    assert body["updated_at"] == "2023-11-14T22:13:20.500Z"
    assert ExecutionState("e", timestamp="t1").as_dict()["updated_at"] == "t1"


async def test_cache_reads_only_new_events_and_follows_the_execution() -> None:
    """The cache folds the history once, then asks only for events after what it has."""
    broker = MemoryBroker(100, 3600)
    asked: list[int] = []

    async def history(execution_id: str, after: int) -> HistoryPage:
        asked.append(after)
        return await broker.history(execution_id, after)

    cache = StateCache(history)
    assert await cache.get("e") is None  # unknown
    await broker.publish(parse_draft("e", {"event": "progress", "data": {"progress": 10, "stage": "a"}}))
    await broker.publish(parse_draft("e", {"event": "result", "data": {}}))
    first = await cache.get("e")
    assert first is not None and (first.latest_seq, first.progress, first.result_count) == (2, 10, 1)
    await broker.publish(parse_draft("e", {"event": "complete", "data": {}}))
    asked.clear()
    second = await cache.get("e")
    assert second is not None and second.terminal and second.result_count == 1 and second.updated_at > 0
    assert asked == [2]
    second.progress = -1  # a copy: the caller cannot change the cache
    third = await cache.get("e")
    assert third is not None and third.progress == 100


async def test_cache_keeps_only_the_most_recent_executions() -> None:
    """Past its size, the least recently read execution is dropped (and folded from the start when read again)."""
    broker = MemoryBroker(100, 3600)
    asked: list[tuple[str, int]] = []

    async def history(execution_id: str, after: int) -> HistoryPage:
        asked.append((execution_id, after))
        return await broker.history(execution_id, after)

    cache = StateCache(history, size=2)
    for eid in ("a", "b", "c"):
        await broker.publish(parse_draft(eid, {"event": "result", "data": {}}))
        await cache.get(eid)
    asked.clear()
    await cache.get("c")
    await cache.get("a")
    assert asked == [("c", 1), ("a", 0)]


async def test_cache_starts_over_when_the_history_went_back() -> None:
    """A history whose latest seq is below the cached one (lost, then started again) is folded from its start."""
    brokers = [MemoryBroker(100, 3600)]
    cache = StateCache(lambda execution_id, after: brokers[0].history(execution_id, after))
    for _ in range(3):
        await brokers[0].publish(parse_draft("e", {"event": "result", "data": {}}))
    before = await cache.get("e")
    assert before is not None and before.result_count == 3
    brokers[0] = MemoryBroker(100, 3600)  # a restarted memory relay
    await brokers[0].publish(parse_draft("e", {"event": "progress", "data": {"progress": 7, "stage": "b"}}))
    after = await cache.get("e")
    assert after is not None and (after.latest_seq, after.result_count, after.progress) == (1, 0, 7)
