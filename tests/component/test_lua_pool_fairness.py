"""``LuaPool`` shares its workers between runs, and a node that timed out waiting for one says so.

Workers are held with gates (a task whose ``results`` lookup blocks on an event), so which task
a freed worker takes next is decided by the pool's order, not by timing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

import pytest

from engine.core.values import JSON
from engine.loading import spec_from_document
from engine.lua import NEVER_STARTED, Flag, LuaLimits, LuaOutcome, LuaPool, LuaTask
from engine.lua.pool import _REMEMBERED, _Job, _Turns
from engine.running import Execution


def task(
    name: str,
    ran: list[str],
    code: str = "return results.me",
    **fields: Any,
) -> LuaTask:
    """A task that notes its name in ``ran`` (from the worker thread) as it runs."""

    def lookup(_: str) -> object:
        ran.append(name)
        return name

    return LuaTask(
        key=code,
        code=code,
        chunk_name=name,
        inputs={},
        results=lookup,
        ctx={"node_id": name},
        **fields,
    )


class Gate:
    """A task that holds its worker until ``open``; ``entered`` once a worker runs it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self._open = threading.Event()

    def task(self) -> LuaTask:
        def lookup(_: str) -> object:
            self.entered.set()
            self._open.wait(30)
            return "gate"

        return LuaTask("return results.g", "return results.g", "gate", {}, lookup, {})

    def open(self) -> None:
        self._open.set()

    async def held(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 10), "no worker took the gate"


async def hold_workers(pool: LuaPool, owner: Hashable, count: int) -> list[Gate]:
    gates = [Gate() for _ in range(count)]
    futures = [pool.submit(g.task(), owner=owner) for g in gates]
    for gate in gates:
        await gate.held()
    assert not any(f.done() for f in futures)
    return gates


async def until(check: Callable[[], bool], what: str) -> None:
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_lone_task_of_another_run_goes_before_the_rest_of_a_busy_run() -> None:
    ran: list[str] = []
    async with LuaPool(workers=2, inline=False) as pool:
        # run A holds both workers and has many more tasks queued; then run B's one task
        gates = await hold_workers(pool, "A", 2)
        a_tasks = [pool.submit(task(f"A{i}", ran), owner="A") for i in range(6)]
        b_task = pool.submit(task("B", ran), owner="B")
        assert pool.queued == 7
        gates[0].open()  # one worker comes free
        await until(lambda: len(ran) >= 1, "the freed worker to take a task")
        assert ran[0] == "B"  # not A0: A already has a worker, B had none
        gates[1].open()
        outcomes = await asyncio.gather(b_task, *a_tasks)
        assert [o.value for o in outcomes] == ["B", *(f"A{i}" for i in range(6))]
        # A's own tasks still run in the order they were queued
        assert [n for n in ran if n != "B"] == [f"A{i}" for i in range(6)]


async def test_runs_with_tasks_queued_take_a_worker_in_turn() -> None:
    ran: list[str] = []
    async with LuaPool(workers=1, inline=False) as pool:
        (gate,) = await hold_workers(pool, "gate", 1)
        futures = [
            pool.submit(task(f"{run}{i}", ran), owner=run)
            for run, count in (("A", 3), ("B", 3), ("C", 1))
            for i in range(count)
        ]
        gate.open()
        await asyncio.gather(*futures)
    assert ran == ["A0", "B0", "C0", "A1", "B1", "A2", "B2"]


async def test_the_callback_path_and_tasks_without_a_run_take_turns_too() -> None:
    ran: list[str] = []
    got: list[LuaOutcome | None] = []
    async with LuaPool(workers=1, inline=False) as pool:
        (gate,) = await hold_workers(pool, "A", 1)
        for i in range(3):
            pool.submit_callback(task(f"A{i}", ran), got.append, owner="A")
        pool.submit_callback(task("anon", ran), got.append)  # no owner: a turn of its own
        gate.open()
        await until(lambda: len(got) == 4, "the four outcomes")
    assert ran == ["anon", "A0", "A1", "A2"]
    assert all(o is not None and o.ok for o in got)


async def test_a_task_whose_deadline_passes_in_the_queue_never_starts() -> None:
    ran: list[str] = []
    async with LuaPool(workers=1, inline=False) as pool:
        (gate,) = await hold_workers(pool, "A", 1)
        flag = Flag()
        late = pool.submit(
            task("late", ran, deadline=time.monotonic() + 0.05, cancel=flag), owner="B"
        )
        await asyncio.sleep(0.1)  # past its deadline, still queued
        gate.open()
        outcome = await late
    assert (outcome.ok, outcome.limit, outcome.error) == (False, "deadline", NEVER_STARTED)
    assert ran == [] and not flag.taken  # a stop need not wait for it: it logged nothing


async def test_a_task_cancelled_by_its_flag_while_queued_never_starts() -> None:
    ran: list[str] = []
    async with LuaPool(workers=1, inline=False) as pool:
        (gate,) = await hold_workers(pool, "A", 1)
        flag = Flag()
        cancelled = pool.submit(task("cancelled", ran, cancel=flag), owner="B")
        after = pool.submit(task("after", ran), owner="C")
        flag.set()
        gate.open()
        outcome = await cancelled
        assert (outcome.ok, outcome.limit, outcome.error) == (False, "cancelled", "cancelled")
        assert (await after).value == "after"
    assert ran == ["after"] and not flag.taken


async def test_close_cancels_the_queued_tasks_of_every_run() -> None:
    ran: list[str] = []
    got: list[LuaOutcome | None] = []
    pool = LuaPool(workers=1, inline=False)
    (gate,) = await hold_workers(pool, "A", 1)
    queued = [pool.submit(task(f"{run}", ran), owner=run) for run in ("A", "B", "C")]
    pool.submit_callback(task("D", ran), got.append, owner="D")
    gate.open()
    pool.close()
    for future in queued:
        with pytest.raises(asyncio.CancelledError):
            await future
    await until(lambda: got == [None], "the callback to hear of the cancel")
    assert ran == [] and pool.queued == 0


async def test_runs_that_have_nothing_queued_are_forgotten() -> None:
    # every run is new (an engine sees thousands of executions): what the pool keeps of them
    # stays bounded, whether the turn moves on or many one-task runs keep it still
    loop = asyncio.get_running_loop()
    job = _Job(task("x", []), loop)
    turns = _Turns()
    for run in range(5 * _REMEMBERED):
        turns.put(run, job)
        assert turns.take() is job
    assert len(turns._lanes) <= _REMEMBERED + 1
    for run in range(5 * _REMEMBERED):  # two at a time: the turn moves on
        turns.put(("a", run), job)
        turns.put(("b", run), job)
        turns.put(("a", run), job)
        assert [turns.take(), turns.take(), turns.take()] == [job, job, job]
    assert len(turns._lanes) <= 2 and turns.queued == 0


# -- a node that timed out waiting for a worker ------------------------------------------------


def waiting_spec(timeout: str, code: str = "return { ok = true }") -> Any:
    return spec_from_document(
        {
            "id": "smallw",
            "version": "1.0.0",
            "nodes": [{"id": "a", "timeout": timeout, "lua": code}],
        }
    )


def node_error(doc: JSON) -> str:
    assert isinstance(doc, dict)
    nodes = doc["nodes"]
    assert isinstance(nodes, dict)
    node = nodes["a"]
    assert isinstance(node, dict)
    error = node["error"]
    assert isinstance(error, str)
    return error


async def test_a_node_that_timed_out_in_the_queue_says_it_waited_for_a_worker() -> None:
    async with LuaPool(workers=1, inline=False) as pool:
        (gate,) = await hold_workers(pool, "hog", 1)
        doc = await asyncio.wait_for(
            Execution(waiting_spec("200ms"), {}, pool=pool).run_to_end(), 10
        )
        gate.open()
    assert doc["status"] == "failed"
    assert node_error(doc) == (
        "timed out after 200ms waiting for a Lua worker (the engine's LUA_WORKERS were busy "
        "with other scripts; this one never started)"
    )


async def test_a_node_a_worker_took_past_its_deadline_says_it_waited_too() -> None:
    # the worker frees up and takes the task past its deadline while the loop is held, so the
    # pool's outcome comes before the node's timer: the two paths word it alike
    async with LuaPool(workers=1, inline=False) as pool:
        (gate,) = await hold_workers(pool, "hog", 1)
        run = asyncio.ensure_future(Execution(waiting_spec("100ms"), {}, pool=pool).run_to_end())
        await asyncio.sleep(0.02)  # the task is queued
        time.sleep(0.15)  # holds the loop on purpose: past the deadline
        gate.open()
        while pool.queued:  # the worker takes it while the loop is still held
            time.sleep(0.005)
        time.sleep(0.05)  # and hands back its outcome
        doc = await asyncio.wait_for(run, 10)
    assert node_error(doc).startswith("timed out after 100ms waiting for a Lua worker (")


async def test_a_node_that_waited_long_then_ran_out_of_time_names_the_wait() -> None:
    limits = LuaLimits(instructions=10**15)
    async with LuaPool(workers=1, limits=limits, inline=False) as pool:
        (gate,) = await hold_workers(pool, "hog", 1)
        ex = Execution(waiting_spec("400ms", "while true do end"), {}, pool=pool)
        run = asyncio.ensure_future(ex.run_to_end())
        await asyncio.sleep(0.2)  # half its time in the queue
        gate.open()
        doc = await asyncio.wait_for(run, 10)
    error = node_error(doc)
    assert error.startswith("timed out after 400ms (of which "), error
    assert error.endswith(" waiting for a Lua worker: the engine's LUA_WORKERS were busy)")


async def test_a_node_that_ran_out_of_time_by_itself_is_told_plainly() -> None:
    # the wait named is the timeout less the script's run, from a tenth of it: a loaded machine
    # took 30 ms to wake an idle worker, and 220 ms to start a new pool's: the worker has run
    # a task before, and the timeout is long
    limits = LuaLimits(instructions=10**15)
    async with LuaPool(workers=1, limits=limits, inline=False) as pool:
        assert (await pool.run(task("warm", []))).value == "warm"
        doc = await Execution(waiting_spec("2s", "while true do end"), {}, pool=pool).run_to_end()
    assert node_error(doc) == "timed out after 2s"
