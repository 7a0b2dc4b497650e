"""The protocol pinger (service/pinger.py): one task visits every socket; the policy lives in each socket."""

from __future__ import annotations

import asyncio
import time

from service.pinger import MIN_GAP, PER_TURN, SLICES, Pinger, ping_payload, turns


class Socket:
    """A socket that records each visit, and can leave the pinger while being visited."""

    def __init__(self, pinger: Pinger, leave: bool = False) -> None:
        self.pinger = pinger
        self.leave = leave
        self.visits: list[tuple[float, float, float]] = []
        self.visited = asyncio.Event()

    def ping_if_due(self, now: float, interval: float, timeout: float) -> None:
        """Record the visit (and leave, as a socket closing meanwhile does)."""
        self.visits.append((now, interval, timeout))
        self.visited.set()
        if self.leave:
            self.pinger.sockets.discard(self)


def test_a_visit_reaches_every_socket_with_the_configured_policy() -> None:
    """visit() calls every registered socket once with monotonic now, the interval and the timeout."""
    pinger = Pinger(20.0, 5.0)
    sockets = [Socket(pinger), Socket(pinger, leave=True), Socket(pinger)]
    pinger.sockets.update(sockets)
    before = time.monotonic()
    pinger.visit()
    for sock in sockets:
        assert len(sock.visits) == 1
        now, interval, timeout = sock.visits[0]
        assert before <= now <= time.monotonic() and (interval, timeout) == (20.0, 5.0)
    assert sockets[1] not in pinger.sockets  # leaving during the visit is allowed
    pinger.visit()
    assert [len(s.visits) for s in sockets] == [2, 1, 2]


async def test_the_loop_visits_until_stopped() -> None:
    """start() visits the sockets on a schedule from one task; stop() ends the task."""
    pinger = Pinger(0.1, 0.1)  # ticks every 0.05 s
    sock = Socket(pinger)
    pinger.sockets.add(sock)
    pinger.start()
    for _ in range(3):
        await asyncio.wait_for(sock.visited.wait(), 5)
        sock.visited.clear()
    await pinger.stop()
    assert pinger._task is not None and pinger._task.done()
    visits = len(sock.visits)
    pinger.visit()  # by hand still works; the loop does not any more
    assert len(sock.visits) == visits + 1


async def test_stop_without_start_is_harmless() -> None:
    """A pinger that never started stops without error (an app that failed to start)."""
    await Pinger(1.0, 1.0).stop()


def test_ping_payloads_are_four_random_bytes() -> None:
    """Each ping carries 4 random bytes, so a pong answers one ping only."""
    payloads = {ping_payload() for _ in range(100)}
    assert len(payloads) > 95 and all(len(p) == 4 for p in payloads)


async def first_sweep(interval: float, count: int) -> dict[float, int]:
    """Run a pinger over ``count`` sockets until each was visited; how many were visited at each moment."""
    pinger = Pinger(interval, interval)
    sockets = [Socket(pinger) for _ in range(count)]
    pinger.sockets.update(sockets)
    pinger.start()

    await asyncio.wait_for(asyncio.gather(*(sock.visited.wait() for sock in sockets)), 10)
    await pinger.stop()
    first_visits: dict[float, int] = {}
    for sock in sockets:
        now = sock.visits[0][0]
        first_visits[now] = first_visits.get(now, 0) + 1
    return first_visits


async def test_a_sweep_visits_a_slice_of_the_sockets_per_turn() -> None:
    """The loop visits every socket once per sweep, a 1/SLICES share per turn, never all in one turn."""
    first_visits = await first_sweep(0.4, SLICES * 4)  # a sweep every 0.2 s
    assert len(first_visits) == SLICES  # one moment per slice
    assert set(first_visits.values()) == {4}  # the same share each turn


async def test_a_few_sockets_are_visited_one_a_turn() -> None:
    """Fewer sockets than SLICES: each has a turn of its own (an idle process does not wake SLICES times a sweep)."""
    first_visits = await first_sweep(0.4, 3)
    assert sorted(first_visits.values()) == [1, 1, 1]


async def test_an_idle_pinger_wakes_once_a_sweep() -> None:
    """With no socket open, the loop sleeps a whole sweep at a time; a socket added meanwhile is visited."""
    pinger = Pinger(0.4, 0.4)  # a sweep every 0.2 s
    sleeps: list[float] = []
    second = asyncio.Event()
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        sleeps.append(delay)
        if len(sleeps) == 2:
            second.set()
        await real_sleep(delay)

    pinger.start()
    sock = Socket(pinger)
    asyncio.sleep = sleep  # type: ignore[assignment]  # the pinger's sleeps from here on, counted
    try:
        await asyncio.wait_for(second.wait(), 5)  # two empty sweeps: one sleep each
        pinger.sockets.add(sock)
        await asyncio.wait_for(sock.visited.wait(), 5)
    finally:
        asyncio.sleep = real_sleep  # type: ignore[assignment]
        await pinger.stop()
    assert sleeps[:2] == [0.2, 0.2]


async def test_a_turn_visits_a_few_sockets_however_many_are_open() -> None:
    """With many sockets a sweep takes more turns, PER_TURN sockets each: pings (and pongs) never come in a crowd."""
    first_visits = await first_sweep(0.8, PER_TURN * 100)  # a sweep every 0.4 s
    assert len(first_visits) == 100
    assert set(first_visits.values()) == {PER_TURN}


def test_turns_per_sweep() -> None:
    """A sweep takes SLICES turns at least, else PER_TURN sockets a turn, turns no closer than MIN_GAP.

    With fewer sockets than SLICES, a turn per socket, and one turn per sweep when there are none.
    """
    assert turns(0, 10.0) == 1
    assert turns(1, 10.0) == 1
    assert turns(SLICES - 1, 10.0) == SLICES - 1
    assert turns(SLICES, 10.0) == SLICES
    assert turns(PER_TURN * SLICES, 10.0) == SLICES
    assert turns(2000, 10.0) == 250
    assert turns(10**6, 10.0) == int(10.0 / MIN_GAP)  # a million sockets: 200 a turn, 500 turns a second
    assert turns(10**6, 0.05) == SLICES


async def test_a_socket_gone_before_its_slice_is_not_visited() -> None:
    """A socket that left after the sweep began is skipped when its slice comes."""
    pinger = Pinger(0.4, 0.4)
    sockets = [Socket(pinger) for _ in range(SLICES)]
    pinger.sockets.update(sockets)
    pinger.start()
    await asyncio.wait_for(_first_visit(sockets), 5)  # the sweep has begun: one slice visited
    gone = next(sock for sock in sockets if not sock.visits)  # a later slice's
    pinger.sockets.discard(gone)
    rest = [sock for sock in sockets if sock is not gone]
    await asyncio.wait_for(asyncio.gather(*(sock.visited.wait() for sock in rest)), 5)
    await pinger.stop()
    assert not gone.visits


async def _first_visit(sockets: list[Socket]) -> None:
    waits = [asyncio.ensure_future(sock.visited.wait()) for sock in sockets]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
