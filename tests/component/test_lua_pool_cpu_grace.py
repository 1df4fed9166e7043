"""A Lua worker past its time or cancel is given up for the CPU it spends there, not the wall
time: on a loaded machine a thread starved of a core is slow, not stuck.

The watchdog's looks are driven by the tests (``LuaPool._look``) at instants they choose, with
the thread's CPU time read through ``_thread_cpu_time`` made a number the test sets; the worker
is a real thread held in a stand-in sandbox until the test lets it go.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from engine.lua import Flag, LuaLimits, LuaOutcome, LuaPool, LuaTask
from engine.lua import pool as lua_pool
from tests.component.test_stuck_workers import BLOCK, _Blocking


class CpuClock:
    """What ``_thread_cpu_time`` reads for every thread: ``seconds``, or None (no CPU clock)."""

    def __init__(self) -> None:
        self.seconds: float | None = 100.0

    def __call__(self, clock: int | None) -> float | None:
        return self.seconds


@pytest.fixture
def blocking(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    released = threading.Event()
    monkeypatch.setattr(_Blocking, "released", released)
    monkeypatch.setattr(lua_pool, "LuaSandbox", _Blocking)
    yield released
    released.set()  # no thread outlives the test


@pytest.fixture
def cpu(monkeypatch: pytest.MonkeyPatch, blocking: threading.Event) -> CpuClock:
    clock = CpuClock()
    monkeypatch.setattr(lua_pool, "_thread_cpu_time", clock)
    monkeypatch.setattr(lua_pool, "_WATCH_EVERY", 3600.0)  # the test looks, not the watchdog
    return clock


@pytest.fixture
async def pool(cpu: CpuClock) -> AsyncIterator[LuaPool]:
    async with LuaPool(workers=1, limits=LuaLimits(wall_time=1.0), inline=False) as p:
        yield p


def task(code: str, **fields: object) -> LuaTask:
    return LuaTask(code, code, "node", {}, lambda name: None, {"node_id": "node"}, **fields)  # type: ignore[arg-type]


async def running(pool: LuaPool, flag: Flag | None = None) -> asyncio.Future[LuaOutcome]:
    """A ``BLOCK`` task a worker has begun."""
    future = pool.submit(task(BLOCK, cancel=flag))
    for _ in range(500):
        if pool._workers[0].job is not None:
            return future
        await asyncio.sleep(0.01)
    raise AssertionError("no worker took the task")


async def test_a_cancelled_run_past_the_wall_grace_is_kept_while_it_spends_little_cpu(
    pool: LuaPool, cpu: CpuClock, caplog: pytest.LogCaptureFixture
) -> None:
    flag = Flag()
    future = await running(pool, flag)
    flag.set()
    seen = time.monotonic()
    pool._look(seen)  # the cancel seen: its grace begins, at 100 s of the thread's CPU
    cpu.seconds = 100.5
    pool._look(seen + 5.0)  # 5 s past the cancel, starved: half a second of CPU
    await asyncio.sleep(0.05)
    assert pool.given_up == 0 and not future.done()
    cpu.seconds = 102.0  # two seconds of CPU in the call since its cancel: stuck
    with caplog.at_level(logging.WARNING, "engine.lua.pool"):
        pool._look(seen + 6.0)
    outcome = await asyncio.wait_for(future, 5)
    assert (outcome.limit, outcome.error) == (
        "cancelled",
        "cancelled (stuck in one call the sandbox cannot interrupt)",
    )
    assert pool.given_up == 1 and pool.workers == 1
    (record,) = [r for r in caplog.records if "gave up" in r.getMessage()]
    assert "still in one call 6.0 s past its cancel, 2.0 s of CPU time in it since" in (
        record.getMessage()
    )
    assert (await pool.run(task("return 'next'"))).value == "return 'next'"  # the replacement


async def test_a_run_past_its_time_is_given_up_after_the_grace_in_cpu(
    pool: LuaPool, cpu: CpuClock
) -> None:
    future = await running(pool)
    due = pool._workers[0].due  # its wall time of 1 s
    pool._look(due - 0.01)
    cpu.seconds = 150.0  # CPU before its time is not its grace's
    pool._look(due + 0.1)  # the first look past its time: its grace counts from 150 s
    cpu.seconds = 151.99
    pool._look(due + 9.0)
    await asyncio.sleep(0.05)
    assert pool.given_up == 0 and not future.done()
    cpu.seconds = 152.0
    pool._look(due + 9.1)
    outcome = await asyncio.wait_for(future, 5)
    assert (outcome.limit, pool.given_up) == ("wall_time", 1)


async def test_a_run_that_burns_no_cpu_is_given_up_at_the_wall_backstop(
    pool: LuaPool, cpu: CpuClock
) -> None:
    # blocked, not computing: ten times the grace of wall time past its cancel
    flag = Flag()
    future = await running(pool, flag)
    flag.set()
    seen = time.monotonic()
    pool._look(seen)
    backstop = lua_pool._STUCK_GRACE * lua_pool._STUCK_BACKSTOP
    assert backstop == 20.0
    pool._look(seen + backstop - 0.1)
    await asyncio.sleep(0.05)
    assert pool.given_up == 0 and not future.done()
    pool._look(seen + backstop)
    outcome = await asyncio.wait_for(future, 5)
    assert (outcome.limit, pool.given_up) == ("cancelled", 1)


async def test_without_a_cpu_clock_the_grace_is_wall_time(
    pool: LuaPool, cpu: CpuClock, caplog: pytest.LogCaptureFixture
) -> None:
    cpu.seconds = None  # not Linux, or the thread's clock could not be read
    flag = Flag()
    future = await running(pool, flag)
    flag.set()
    seen = time.monotonic()
    pool._look(seen)
    pool._look(seen + 1.9)
    await asyncio.sleep(0.05)
    assert pool.given_up == 0 and not future.done()
    with caplog.at_level(logging.WARNING, "engine.lua.pool"):
        pool._look(seen + 2.0)
    assert (await asyncio.wait_for(future, 5)).limit == "cancelled"
    (record,) = [r for r in caplog.records if "gave up" in r.getMessage()]
    assert "still in one call 2.0 s past its cancel (a call" in record.getMessage()


async def test_a_new_run_on_the_worker_starts_its_grace_afresh(
    pool: LuaPool, cpu: CpuClock, blocking: threading.Event
) -> None:
    flag = Flag()
    first = await running(pool, flag)
    flag.set()
    pool._look(time.monotonic())  # its grace read at 100 s of CPU
    blocking.set()
    assert (await asyncio.wait_for(first, 5)).value == BLOCK  # it came back in time
    blocking.clear()
    cpu.seconds = 500.0
    second_flag = Flag()
    second = await running(pool, second_flag)
    second_flag.set()
    seen = time.monotonic()
    pool._look(seen)  # 400 s of CPU since the first run's grace: not this run's
    await asyncio.sleep(0.05)
    assert pool.given_up == 0 and not second.done()
    blocking.set()
    assert (await asyncio.wait_for(second, 5)).value == BLOCK


async def test_a_real_thread_blocked_without_cpu_is_kept_past_the_grace(
    blocking: threading.Event,
) -> None:
    # the thread's own CPU clock, read by the real watchdog: a call that waits burns none, so
    # it is given up at the backstop (10 x 0.1 s), not at the grace
    async with LuaPool(workers=1, inline=False, stuck_grace=0.1) as pool:
        flag = Flag()
        future = await running(pool, flag)
        flag.set()
        await asyncio.sleep(0.6)  # the old wall grace thrice over, and two looks at least
        assert pool.given_up == 0 and not future.done()
        outcome = await asyncio.wait_for(future, 10)
        assert (outcome.limit, pool.given_up) == ("cancelled", 1)
