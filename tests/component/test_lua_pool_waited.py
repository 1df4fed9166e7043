"""A node that timed out names a wait for a Lua worker only when every worker was busy: the
pool measures that wait (``TaskFlag.waited``), where the timeout less the script's run also
counted a machine slow to wake an idle worker."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest

from engine.loading import spec_from_document
from engine.lua import LuaLimits, LuaPool, LuaTask, TaskFlag
from engine.lua import pool as lua_pool
from engine.running import Execution
from tests.component.test_lua_pool_fairness import Gate, node_error


def task(flag: TaskFlag) -> LuaTask:
    return LuaTask("return 1", "return 1", "n", {}, lambda name: None, {}, cancel=flag)


def spin_spec(timeout: str) -> Any:
    return spec_from_document(
        {
            "id": "spin",
            "version": "1.0.0",
            "nodes": [{"id": "a", "timeout": timeout, "lua": "while true do end"}],
        }
    )


async def test_a_task_with_a_worker_free_waited_for_none() -> None:
    async with LuaPool(workers=2, inline=False) as pool:
        gate = Gate()
        held = pool.submit(gate.task())
        await gate.held()  # one worker busy, one free
        flag = TaskFlag()
        assert (await pool.run(task(flag))).value == 1
        assert flag.taken and flag.waited == 0.0
        gate.open()
        await held


async def test_a_task_queued_behind_busy_workers_waited_for_them() -> None:
    async with LuaPool(workers=1, inline=False) as pool:
        gate = Gate()
        held = pool.submit(gate.task())
        await gate.held()
        flag = TaskFlag()
        started = time.monotonic()
        queued = pool.submit(task(flag))
        await asyncio.sleep(0.3)
        gate.open()
        assert (await queued).value == 1
        assert 0.3 <= flag.waited <= time.monotonic() - started
        await held


async def test_a_slow_start_with_idle_workers_is_not_blamed_on_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the worker is free, but slow to take the task, as a thread starved of a core is: the
    # node ran out of time by itself, a third of its time gone before its script began
    take = lua_pool._Turns.take

    def slow_take(self: lua_pool._Turns) -> lua_pool._Job | None:
        time.sleep(0.3)
        return take(self)

    monkeypatch.setattr(lua_pool._Turns, "take", slow_take)
    limits = LuaLimits(instructions=10**15)
    async with LuaPool(workers=1, limits=limits, inline=False) as pool:
        doc = await asyncio.wait_for(Execution(spin_spec("1s"), {}, pool=pool).run_to_end(), 10)
    assert node_error(doc) == "timed out after 1s"


async def test_a_wait_for_a_busy_worker_is_named_at_its_length() -> None:
    limits = LuaLimits(instructions=10**15)
    async with LuaPool(workers=1, limits=limits, inline=False) as pool:
        gate = Gate()
        held = pool.submit(gate.task())
        await gate.held()
        run = asyncio.ensure_future(Execution(spin_spec("2s"), {}, pool=pool).run_to_end())
        await asyncio.sleep(0.5)
        gate.open()
        doc = await asyncio.wait_for(run, 10)
        await held
    error = node_error(doc)
    named = re.fullmatch(
        r"timed out after 2s \(of which ([\d.]+)(ms|s) waiting for a Lua worker: the "
        r"engine's LUA_WORKERS were busy\)",
        error,
    )
    assert named is not None, error
    waited = float(named[1]) / (1000 if named[2] == "ms" else 1)
    assert 0.5 <= waited < 2.0
