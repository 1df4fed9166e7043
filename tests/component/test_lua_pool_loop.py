"""What ``LuaPool.run_inline`` keeps off the event loop: data that takes long to convert, a
script that misses once per script rather than once per node, and scripts that fit the inline
limits but still take a millisecond. Decisions are asserted, not times: which run went where."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from engine.core.values import JSON
from engine.lua import MISSING, LuaPool, LuaTask
from engine.lua import pool as lua_pool

BIG: JSON = {"list": [{"i": i, "name": f"item-{i}"} for i in range(30_000)]}
"""About a megabyte of JSON: converting it took 40 ms on the caller's thread."""


@pytest.fixture
async def pool(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[LuaPool]:
    # of the inline limits only the 5 ms of wall time changes with the machine's load (a
    # trivial script preempted for 5 ms on a loaded machine is a miss): lifted, so that what
    # is asserted is the decisions the data and the scripts make, never the machine's
    monkeypatch.setitem(lua_pool.INLINE_LIMITS, "wall_time", 60.0)
    async with LuaPool(workers=1) as p:
        yield p


def task(
    code: str,
    *,
    key: str = "wf@1.0.0/node",
    inputs: JSON = None,
    results: Callable[[str], object] = lambda name: MISSING,
    ctx: dict[str, JSON] | None = None,
) -> LuaTask:
    return LuaTask(
        key=key,
        code=code,
        chunk_name="node",
        inputs={} if inputs is None else inputs,
        results=results,
        ctx={"node_id": "node"} if ctx is None else ctx,
    )


def converted(pool: LuaPool) -> list[object]:
    """Records each value the inline sandbox converts to Lua from now on."""
    sandbox = pool._inline
    assert sandbox is not None
    seen: list[object] = []
    convert = sandbox._to_lua

    def recording(value: JSON, depth: int = 0) -> object:
        seen.append(value)
        return convert(value, depth)

    sandbox._to_lua = recording  # type: ignore[method-assign]
    return seen


@pytest.mark.parametrize(
    ("code", "where"),
    [
        ("return { n = #results.root.list }", "results"),
        # caught, the refusal still ends the run: nothing the script does after it stands
        ("local ok = pcall(function() return results.root end) return { ok = ok }", "results"),
        ("return { n = #inputs.list }", "inputs"),
        ("return { n = #ctx.item.list }", "ctx"),
    ],
)
async def test_a_large_value_ends_the_inline_try_before_it_is_converted(
    pool: LuaPool, code: str, where: str
) -> None:
    seen = converted(pool)
    made = task(
        code,
        inputs=BIG if where == "inputs" else {"x": 1},
        results=lambda name: BIG if name == "root" else MISSING,
        ctx={"node_id": "node", "item": BIG, "index": 0} if where == "ctx" else None,
    )
    assert pool.run_inline(made) is None
    assert pool.inline_misses == 1
    assert not any(value is BIG for value in seen)
    # a worker takes it, with the full limits
    outcome = await pool.run(made)
    assert outcome.ok, outcome
    assert outcome.value == ({"ok": True} if "pcall" in code else {"n": 30_000})


async def test_small_values_are_converted_inline(pool: LuaPool) -> None:
    small: JSON = {"list": [{"i": i} for i in range(100)]}
    outcome = pool.run_inline(
        task(
            "return { n = #results.root.list + #inputs.list }",
            inputs=small,
            results=lambda n: small,
        )
    )
    assert outcome is not None and outcome.value == {"n": 200}


async def test_values_read_in_one_run_count_together(pool: LuaPool) -> None:
    # each under the budget, together past it: the run is the loop's time, not each value
    each = list(range(1_000))  # TRIAL_DATA is 1,500
    code = "return { n = #results.a + #results.b + #results.c }"
    assert pool.run_inline(task(code, results=lambda name: each)) is None
    outcome = await pool.run(task(code, results=lambda name: each))
    assert outcome.value == {"n": 3 * len(each)}


async def test_a_fan_out_of_one_script_misses_inline_once(pool: LuaPool) -> None:
    # 2,000 nodes of one script, each reading the same large result: one try, not 2,000
    code = "return { n = #results.root.list }"
    for i in range(50):
        made = task(code, key=f"wf@1.0.0/n{i}", results=lambda name: BIG)
        assert pool.run_inline(made) is None
    assert (pool.inline_misses, pool.inline_runs) == (1, 0)
    # another script still runs inline
    assert pool.run_inline(task("return 1", key="wf@1.0.0/other")) is not None


async def test_a_script_that_fits_but_takes_long_goes_to_the_workers(
    pool: LuaPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every script takes longer than this: as a script of a few milliseconds does the 0.5 ms
    monkeypatch.setattr("engine.lua.pool._INLINE_SLOW", 1e-9)
    code = "return { v = 1 }"
    first = pool.run_inline(task(code, key="wf@1.0.0/a"))
    assert first is not None and first.value == {"v": 1}  # it stands; the next run is measured
    second = pool.run_inline(task(code, key="wf@1.0.0/b"))
    assert second is not None and second.value == {"v": 1}  # measured: its own CPU time
    assert pool.run_inline(task(code, key="wf@1.0.0/c")) is None  # to the workers from now on
    assert pool.inline_runs == 2


async def test_a_slow_run_that_was_the_machine_keeps_the_script_inline(
    pool: LuaPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # slow once (a wait for the GIL, a collection): measured, the next run is quick, and the
    # script keeps its place inline
    monkeypatch.setattr("engine.lua.pool._INLINE_SLOW", 1e-9)
    code = "return { v = 1 }"
    assert pool.run_inline(task(code)) is not None
    monkeypatch.setattr("engine.lua.pool._INLINE_SLOW", 10.0)
    assert pool.run_inline(task(code)) is not None  # measured, and quick
    monkeypatch.setattr("engine.lua.pool._INLINE_SLOW", 1e-9)
    assert pool.run_inline(task(code)) is not None  # suspected again, not sent away
    assert (pool.inline_runs, pool.inline_misses) == (3, 0)
