"""``LuaSandbox``, ``LuaPool`` and ``python -m engine run`` with real lupa, against what stock
Lua 5.4 does: the inline path answers as a worker does, library errors are catchable where
stock's are and carry the script's position, and the coroutine the script runs in is unseen."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from engine import cli
from engine.core.values import JSON, JSONObject
from engine.loading import spec_from_document
from engine.lua import MISSING, LuaLimits, LuaPool, LuaSandbox, LuaTask
from engine.lua.pool import INLINE_LIMITS
from engine.running import Execution
from tests.component.test_lua_round3 import failure, value

CTX: JSONObject = {"node_id": "b", "attempt": 1}
_counter = iter(range(10**9))


def task(code: str, inputs: JSON | None = None) -> LuaTask:
    return LuaTask(
        key=f"k{next(_counter)}",
        code=code,
        chunk_name="b",
        inputs={} if inputs is None else inputs,
        results=lambda name: MISSING,
        ctx=CTX,
    )


@pytest.fixture(scope="module")
def sandbox() -> LuaSandbox:
    return LuaSandbox()


# -- 1. the inline path answers as a worker does -------------------------------------------

LINE = "2024-01-15 12:00:00 some log line with a date in it"  # 51 bytes
DATE = """
local ok, y, m, d = pcall(string.match, inputs.line, "(%d+)-(%d+)-(%d+)")
return {ok = ok, y = y, m = m, d = d}
"""
WORKERS_ANSWER = {"ok": True, "y": "2024", "m": "01", "d": "15"}


def test_a_trial_sandbox_ends_a_run_on_a_pattern_refusal_the_script_would_catch() -> None:
    # the inline limits, less their 5 ms of wall time: a loaded machine held the plain run
    # past that (28 ms), and the pattern's refusal is what is asserted
    limits = LuaLimits(**{**INLINE_LIMITS, "wall_time": 60.0})  # type: ignore[arg-type]
    trial = LuaSandbox(limits, check_every=1, trial=True)
    outcome = trial.run(task(DATE, {"line": LINE}))
    assert outcome.limit == "pattern" and outcome.line == 2, outcome
    # a sandbox that is no trial gives the script the refusal, to catch
    plain = LuaSandbox(limits)
    caught = value(plain.run(task(DATE, {"line": LINE})))
    assert isinstance(caught, dict) and caught["ok"] is False


async def test_run_inline_hands_a_caught_inline_refusal_to_a_worker() -> None:
    async with LuaPool(workers=1) as pool:
        assert pool.run_inline(task(DATE, {"line": LINE})) is None
        assert pool.inline_misses == 1
        assert value(await pool.run(task(DATE, {"line": LINE}))) == WORKERS_ANSWER


async def run_spec(inline: bool, code: str, inputs: JSONObject) -> JSONObject:
    spec = spec_from_document(
        {"id": "t", "version": "1.0.0", "nodes": [{"id": "parse", "lua": code}]}
    )
    async with LuaPool(workers=1, inline=inline) as pool:
        execution = Execution(spec, inputs, pool=pool, engine_id="local")
        return await asyncio.wait_for(execution.run_to_end(), 60)


@pytest.mark.parametrize("inline", [True, False])
async def test_a_caught_pattern_refusal_reads_the_same_inline_and_on_a_worker(
    inline: bool,
) -> None:
    doc = await run_spec(inline, DATE, {"line": LINE})
    assert doc["status"] == "succeeded", doc
    assert doc["outputs"] == {"parse": WORKERS_ANSWER}


async def test_a_refusal_the_worker_makes_too_is_what_both_paths_return() -> None:
    code = (
        'local ok, e = pcall(string.find, string.rep("a", 20000), "a.*b.*c")'
        " return {ok = ok, refused = e:find('could run for too long', 1, true) ~= nil}"
    )
    docs = [await run_spec(inline, code, {}) for inline in (True, False)]
    assert [d["outputs"] for d in docs] == [{"parse": {"ok": False, "refused": True}}] * 2


def write_spec(tmp_path: Path) -> Path:
    path = tmp_path / "wf.json"
    path.write_text(
        json.dumps({"id": "t", "version": "1.0.0", "nodes": [{"id": "a", "lua": "return 1"}]})
    )
    return path


@pytest.mark.parametrize(("setting", "inline"), [("false", False), ("1", True), (None, True)])
def test_engine_run_reads_lua_inline(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    setting: str | None,
    inline: bool,
) -> None:
    made: list[bool] = []

    class Recorded(LuaPool):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            made.append(kwargs.get("inline", True))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(cli, "LuaPool", Recorded)
    if setting is None:
        monkeypatch.delenv("LUA_INLINE", raising=False)
    else:
        monkeypatch.setenv("LUA_INLINE", setting)
    assert cli.main(["run", "-q", str(write_spec(tmp_path))]) == cli.EXIT_OK
    assert made == [inline]
    capsys.readouterr()


def test_engine_run_refuses_a_bad_lua_inline_as_the_service_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LUA_INLINE", "maybe")
    assert cli.main(["run", "-q", str(write_spec(tmp_path))]) == cli.EXIT_INVALID
    assert capsys.readouterr().err == "error: LUA_INLINE must be true or false, got 'maybe'\n"


# -- 2. concat and unpack past what can succeed raise stock's catchable error ---------------


def test_concat_and_unpack_past_what_can_succeed_raise_catchable_errors(
    sandbox: LuaSandbox,
) -> None:
    code = """
local a, e1 = pcall(table.concat, {1, 2, 3}, ",", 1, 1e9)
local b, e2 = pcall(table.unpack, {1, 2, 3}, 1, math.maxinteger)
local c, e3 = pcall(table.unpack, {1, 2, 3}, math.mininteger, math.maxinteger)
local sparse = {}
sparse[10] = "a"
local d, e4 = pcall(table.concat, sparse, ",", 10, 1e9)
return {a, e1, b, e2, c, e3, d, e4}
"""
    assert value(sandbox.run(task(code))) == [
        False,
        "invalid value (nil) at index 4 in table for 'concat'",
        False,
        "too many results to unpack",
        False,
        "too many results to unpack",
        False,
        "invalid value (nil) at index 11 in table for 'concat'",
    ]


def test_a_huge_concat_that_can_succeed_is_still_charged() -> None:
    small = LuaSandbox(LuaLimits(instructions=40_000))
    build = "local n = 200000 local t = table.pack(string.byte(string.rep('a', n), 1, n))"
    assert value(small.run(task(build + " return #t"))) == 200000
    for call in ("table.concat(t)", "table.concat(t, '', 1, 1e9)"):
        outcome = small.run(task(f"{build} local ok = pcall(function() return {call} end)"))
        assert outcome.limit == "instructions", (call, outcome)


# -- 3. coroutine.wrap closes a coroutine that failed ---------------------------------------


def test_wrap_closes_a_failed_coroutine_so_its_close_handlers_run(sandbox: LuaSandbox) -> None:
    code = """
local seen
local f = coroutine.wrap(function()
  local x <close> = setmetatable({}, {__close = function(_, e) seen = e end})
  error("boom")
end)
local ok, e = pcall(f)
local g = coroutine.wrap(function()
  local x <close> = setmetatable({}, {__close = function() error("in close") end})
  error("boom")
end)
local ok2, e2 = pcall(g)
local ok3, e3 = pcall(function() f() end)
return {ok, e, seen, ok2, e2, ok3, e3}
"""
    assert value(sandbox.run(task(code))) == [
        False,
        "b:5: boom",
        "b:5: boom",
        False,
        "b:9: in close",
        False,
        "b:13: cannot resume dead coroutine",
    ]


# -- 4. the coroutine the script runs in is unseen ------------------------------------------


def test_the_top_level_reads_as_the_main_thread(sandbox: LuaSandbox) -> None:
    code = """
local main, is_main = coroutine.running()
local ok, e = pcall(coroutine.yield, "x")
local inner = {coroutine.resume(coroutine.create(function()
  return coroutine.isyieldable(), select(2, coroutine.running()),
    coroutine.isyieldable(main), coroutine.status(main)
end))}
return {coroutine.isyieldable(), is_main, ok, e, select("#", ...), inner}
"""
    assert value(sandbox.run(task(code))) == [
        False,
        True,
        False,
        "attempt to yield from outside a coroutine",
        0,
        [True, True, False, False, "normal"],
    ]
    # and a chunk run again, or another one, gets its own environment each time
    again = "x = (x or 0) + 1 return {x, select('#', ...)}"
    assert value(sandbox.run(task(again))) == [1, 0]
    assert value(sandbox.run(task(again))) == [1, 0]


# -- 5. library errors carry the script's position ------------------------------------------


def test_library_errors_carry_the_position_of_the_script_s_call(sandbox: LuaSandbox) -> None:
    code = """
local function caught(f) local _, e = pcall(f) return e end
local seen
pcall(function()
  local y <close> = setmetatable({}, {__close = function(_, e) seen = e end})
  local s = table.concat({{}})
end)
local _, lvl = pcall(error, "msg", 2)
local _, handled = xpcall(function() local x = string.rep() end, function(m) return m end)
local _, resumed = coroutine.resume(coroutine.create(function() local x = ("a"):find("[") end))
return {
  caught(function() local s = string.find("a", "[") end),
  select(2, pcall(string.find, "a", "[")),
  seen,
  lvl,
  handled,
  resumed,
  caught(function() local x = ("x"):rep({}) end),
  caught(function() local s = "x" local x = s:find({}) end),
}
"""
    assert value(sandbox.run(task(code))) == [
        "b:12: malformed pattern (missing ']')",
        "malformed pattern (missing ']')",  # called by pcall, as stock: no position
        "b:6: invalid value (table) at index 1 in table for 'concat'",
        "b:8: msg",
        "b:9: bad argument #1 to 'rep' (string expected, got nil)",
        "b:10: malformed pattern (missing ']')",
        "b:18: bad argument #1 to 'rep' (number expected, got table)",  # a method call's #1
        "b:19: bad argument #1 to 'find' (string expected, got table)",
    ]


def test_a_library_error_in_a_top_level_tail_call_has_its_line(sandbox: LuaSandbox) -> None:
    outcome = sandbox.run(task('local x = 1\nreturn ("abc"):find("[")'))
    assert failure(outcome) == ("malformed pattern (missing ']')", 2)
    outcome = sandbox.run(task("local x = 1\nlocal y = 2\nreturn table.concat({{}})"))
    assert failure(outcome) == ("invalid value (table) at index 1 in table for 'concat'", 3)
    outcome = sandbox.run(task('local s = ("x"):rep(2)\nlocal t = s:rep({})'))
    assert failure(outcome) == ("bad argument #1 to 'rep' (number expected, got table)", 2)


async def test_a_node_error_from_a_library_call_names_its_lua_line() -> None:
    doc = await run_spec(True, 'local x = 1\nlocal p = "["\nreturn ("abc"):find(p)', {})
    assert doc["status"] == "failed"
    assert "malformed pattern (missing ']') (Lua line 3)" in json.dumps(doc)


# -- 6. a missing argument is told from nil --------------------------------------------------


def test_rawset_and_setmetatable_refuse_a_missing_argument(sandbox: LuaSandbox) -> None:
    code = """
local t = setmetatable({k = 1}, {})
local _, e1 = pcall(rawset, t, "k")
local _, e2 = pcall(setmetatable, t)
return {e1, e2, t.k, getmetatable(t) ~= nil, (pcall(setmetatable, {}, nil))}
"""
    assert value(sandbox.run(task(code))) == [
        "bad argument #3 to 'rawset' (value expected)",
        "bad argument #2 to 'setmetatable' (nil or table expected, got no value)",
        1,
        True,
        True,
    ]


# -- 7, 8. bounds before spans, Lua 5.4.7's concat message, _VERSION and warn --------------


def test_insert_and_remove_check_their_bounds_first(sandbox: LuaSandbox) -> None:
    code = """
local _, e1 = pcall(table.insert, {1, 2}, -(1 << 24), "x")
local _, e2 = pcall(table.remove, {1, 2}, -(1 << 25))
local proxy = setmetatable({}, {__index = function(_, k) if k == 2 then return {} end
  return "a" end, __len = function() return 2 end})
local _, e3 = pcall(table.concat, proxy)
return {e1, e2, e3}
"""
    assert value(sandbox.run(task(code))) == [
        "bad argument #2 to 'insert' (position out of bounds)",
        "bad argument #2 to 'remove' (position out of bounds)",
        "invalid value (table) at index 2 in table for 'concat'",
    ]


def test_version_is_set_and_warn_points_at_log(sandbox: LuaSandbox) -> None:
    assert value(sandbox.run(task("return _VERSION"))) == "Lua 5.4"
    assert failure(sandbox.run(task('warn("x")'))) == (
        "attempt to call a nil value (global 'warn'): the sandbox has no warn: "
        'use log("warn", ...)',
        1,
    )


def test_placing_an_error_looks_at_a_few_frames_however_deep_the_stack(
    sandbox: LuaSandbox,
) -> None:
    # a look down the whole stack at every error would cost the square of its depth, in C
    code = """
local function deep(n)
  if n == 0 then return select(2, pcall(error, "(sandbox):1: x", 0)) end
  local r = deep(n - 1)
  return r
end
local t = {}
for i = 1, 20 do t[i] = deep(20000) end
return t[1]
"""
    started = time.monotonic()
    assert value(sandbox.run(task(code))) == "x"
    assert time.monotonic() - started < 5


def test_a_tail_called_library_error_hands_back_its_message_alone(sandbox: LuaSandbox) -> None:
    code = """
local failing = function() return ("abc"):find("[") end
return {
  select("#", coroutine.resume(coroutine.create(failing))),
  select(2, xpcall(failing, function(...) return select("#", ...) end)),
  select("#", pcall(failing)),
}
"""
    assert value(sandbox.run(task(code))) == [2, 1, 2]
