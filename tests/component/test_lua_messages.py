"""``LuaSandbox`` with real lupa: the words a failed or logging script is shown. Library errors
name the function the script called, a re-raised error keeps the line it was first raised on,
log and print show values without memory addresses, and functions from other Lua versions get
a hint."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from engine.lua import MISSING, LuaLimits, LuaOutcome, LuaSandbox, LuaTask

LIMITS = LuaLimits(instructions=2_000_000, memory=8 * 1024 * 1024)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[LuaSandbox]:
    yield LuaSandbox(LIMITS)


def run(sandbox: LuaSandbox, code: str) -> LuaOutcome:
    return sandbox.run(
        LuaTask(
            key=code,
            code=code,
            chunk_name="b",
            inputs={},
            results=lambda name: MISSING,
            ctx={"node_id": "b", "attempt": 1},
        )
    )


def failure(outcome: LuaOutcome) -> tuple[str | None, int | None]:
    assert not outcome.ok, outcome
    return outcome.error, outcome.line


def logs(outcome: LuaOutcome) -> list[str]:
    assert outcome.ok, outcome
    return [text for _, text in outcome.logs]


INSTRUCTIONS = f"instruction limit of {LIMITS.instructions} exceeded"


# -- library errors name the function the script called ----------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ('string.find(nil, "x")', "bad argument #1 to 'find' (string expected, got nil)"),
        ('string.match(nil, "x")', "bad argument #1 to 'match' (string expected, got nil)"),
        ('string.gmatch(nil, "x")', "bad argument #1 to 'gmatch' (string expected, got nil)"),
        ('string.gsub(nil, "x", "y")', "bad argument #1 to 'gsub' (string expected, got nil)"),
        ('string.find("abc", "b", {})', "bad argument #3 to 'find' (number expected, got table)"),
        ("coroutine.create(42)", "bad argument #1 to 'create' (function expected, got number)"),
        ("coroutine.wrap(42)", "bad argument #1 to 'wrap' (function expected, got number)"),
        ("coroutine.resume(42)", "bad argument #1 to 'resume' (thread expected, got number)"),
        ("coroutine.close(nil)", "bad argument #1 to 'close' (thread expected, got nil)"),
        ("math.randomseed({})", "bad argument #1 to 'randomseed' (number expected, got table)"),
        # as stock Lua: a missing function or handler is an argument error, not a failed call
        ("pcall()", "bad argument #1 to 'pcall' (value expected)"),
        ("xpcall(print)", "bad argument #2 to 'xpcall' (function expected, got no value)"),
        ("xpcall(print, 5)", "bad argument #2 to 'xpcall' (function expected, got number)"),
    ],
)
def test_library_errors_name_the_function_the_script_called(
    sandbox: LuaSandbox, call: str, message: str
) -> None:
    assert failure(run(sandbox, f"\nlocal r = {call}")) == (message, 2)
    # caught by the script, the message reads the same
    caught = run(sandbox, f"local ok, e = pcall(function() return {call} end) return e")
    assert caught.ok and caught.value == message


def test_the_wrapped_functions_still_work(sandbox: LuaSandbox) -> None:
    code = """
local f = coroutine.wrap(function(a) coroutine.yield(a + 1) return 9 end)
local caught = {xpcall(error, function(e) return "handled " .. e end, "x")}
return {f(1), f(), caught, {pcall(error, "y")}, {xpcall(function(a, b) return a + b end, print, 2, 3)}}
"""
    outcome = run(sandbox, code)
    assert outcome.ok and outcome.value == [2, 9, [False, "handled x"], [False, "y"], [True, 5]]


# -- an error raised again keeps the line it was first raised on -----------------------------


def test_an_error_caught_and_raised_again_names_where_it_was_first_raised(
    sandbox: LuaSandbox,
) -> None:
    rethrown = """local ok, err = pcall(function()
  error("inner problem")
end)
if not ok then error(err) end"""
    assert failure(run(sandbox, rethrown)) == ("inner problem", 2)


def test_a_coroutine_error_raised_again_names_where_it_was_first_raised(
    sandbox: LuaSandbox,
) -> None:
    code = """local co = coroutine.create(function()
  local x = nil
  return x.y
end)
local ok, err = coroutine.resume(co)
if not ok then error(err) end"""
    assert failure(run(sandbox, code)) == ("attempt to index a nil value (local 'x')", 3)


def test_an_error_raised_through_several_catches_names_the_first_line(
    sandbox: LuaSandbox,
) -> None:
    code = """local ok, err = pcall(function()
  error("inner problem")
end)
local ok2, err2 = pcall(function() error(err) end)
error(err2)"""
    assert failure(run(sandbox, code)) == ("inner problem", 2)


def test_a_caught_message_keeps_its_position_for_the_script(sandbox: LuaSandbox) -> None:
    # stock Lua: what pcall hands the script is the message with its position
    outcome = run(sandbox, 'local ok, err = pcall(function()\n  error("x")\nend)\nreturn err')
    assert outcome.ok and outcome.value == "b:2: x"
    # text that only looks like a position stays
    assert failure(run(sandbox, 'error("b:x: not a position")')) == ("b:x: not a position", 1)
    # and so does one past the script's lines: a host and port in node b's message
    refused = 'error("b:5432: connection refused")'
    assert failure(run(sandbox, refused)) == ("b:5432: connection refused", 1)


# -- log, print and error show values without memory addresses -------------------------------


def test_print_shows_tables_as_json_and_other_values_by_kind(sandbox: LuaSandbox) -> None:
    code = (
        "print({a = 1}, {1, 2}, {}, json.null, function() end, coroutine.create(print), nil, 1.5)"
    )
    assert logs(run(sandbox, code)) == [
        '{"a":1}\t[1,2]\t{}\tnull\t<function>\t<coroutine>\tnil\t1.5'
    ]


def test_log_shows_what_is_not_json_without_an_address(sandbox: LuaSandbox) -> None:
    code = """
log("info", {[1] = 1, [5] = 2})
log("info", function() end)
log("info", {f = print})
local t = {} t.self = t
log("info", "cycle:", t)
"""
    lines = logs(run(sandbox, code))
    assert lines == [
        "<table: not JSON: value is a sparse array (2 entries, highest index 5): fill the holes "
        "with json.null or use string keys>",
        "<function>",
        "<table: not JSON: value.f is a function>",
        "cycle: <table: not JSON: value.self refers back to a table that contains it (a cycle)>",
    ]
    assert not any(re.search("0x[0-9a-f]+", line) for line in lines)


def test_a_bad_log_level_is_named_without_an_address(sandbox: LuaSandbox) -> None:
    assert failure(run(sandbox, 'log({}, "x")')) == (
        "log level <table> is not one of debug, info, warn, warning, error, critical",
        1,
    )


def test_tostring_metamethods_speak_for_their_tables(sandbox: LuaSandbox) -> None:
    code = """
local point = setmetatable({x = 1}, {__tostring = function(p) return "point " .. p.x end})
print(point)
log("info", "at", point)
log("info", setmetatable({}, {__tostring = function() error("broken") end}))
log("info", setmetatable({}, {__tostring = function() return {} end}))
log("info", setmetatable({}, {__tostring = function() coroutine.yield() end}))
"""
    assert logs(run(sandbox, code)) == [
        "point 1",
        "at point 1",
        "<table: __tostring failed: b:5: broken>",
        "<table: __tostring failed: '__tostring' must return a string>",
        # as stock Lua says it of the main thread, which the script's top level stands for
        "<table: __tostring failed: attempt to yield from outside a coroutine>",
    ]


def test_an_error_object_with_tostring_is_shown_by_it(sandbox: LuaSandbox) -> None:
    code = 'error(setmetatable({}, {__tostring = function() return "custom error obj" end}))'
    assert failure(run(sandbox, code)) == ("custom error obj", 1)
    code = "error(setmetatable({code = 1}, {__tostring = function() error('no') end}))"
    assert failure(run(sandbox, code)) == (
        "error object is a table whose __tostring failed: b:1: no",
        1,
    )
    # without one, a table is still shown as JSON
    assert failure(run(sandbox, "error({code = 1})")) == ('{"code":1}', 1)


def test_tostring_metamethods_run_inside_the_limits(sandbox: LuaSandbox) -> None:
    spin = "setmetatable({}, {__tostring = function() while true do end end})"
    for code in (f"log('info', {spin})", f"print({spin})", f"error({spin})"):
        outcome = run(sandbox, code)
        assert failure(outcome)[0] == INSTRUCTIONS
        assert outcome.limit == "instructions"
    # a __tostring that prints itself ends in a C stack overflow, reported, not a crash
    code = "local t t = setmetatable({}, {__tostring = function() return tostring(t) end}) print(t)"
    assert logs(run(sandbox, code)) == ["<table: __tostring failed: C stack overflow>"]
    assert run(sandbox, "return 1").value == 1  # and the runtime serves on


# -- hints for what other Lua versions have -----------------------------------------------------

OFFERED = "string, table, math, utf8, coroutine, json, log, print and os.time/date/clock"
NOT_IN_54 = "is not in Lua 5.4, which the sandbox runs"


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (
            'return _G.print("x")',
            "attempt to index a nil value (global '_G'): the sandbox has no _G; the script's "
            "globals table is _ENV",
        ),
        (
            "return getfenv(1)",
            f"attempt to call a nil value (global 'getfenv'): getfenv {NOT_IN_54}: _ENV takes "
            "its place",
        ),
        (
            "return setfenv(1, {})",
            f"attempt to call a nil value (global 'setfenv'): setfenv {NOT_IN_54}: _ENV takes "
            "its place",
        ),
        (
            'return module("x")',
            f"attempt to call a nil value (global 'module'): module {NOT_IN_54}, and the sandbox "
            "loads no modules",
        ),
        (
            "return newproxy()",
            f"attempt to call a nil value (global 'newproxy'): newproxy {NOT_IN_54}: use "
            "setmetatable({}, mt)",
        ),
        (
            "return gcinfo()",
            f"attempt to call a nil value (global 'gcinfo'): gcinfo {NOT_IN_54}, and the "
            "sandbox offers no collectgarbage",
        ),
        (
            "return bit32.band(1, 1)",
            f"attempt to index a nil value (global 'bit32'): bit32 {NOT_IN_54}: use its "
            "operators a & b, a | b, a ~ b (xor), ~a, a << n, a >> n",
        ),
        (
            "return jit.version",
            "attempt to index a nil value (global 'jit'): jit is LuaJIT's; the sandbox runs "
            "Lua 5.4",
        ),
        (
            "return os.difftime(2, 1)",
            "attempt to call a nil value (field 'difftime'): the sandbox has no os.difftime: "
            "subtract one os.time() from the other",
        ),
        (
            "return math.pow(2, 3)",
            f"attempt to call a nil value (field 'pow'): math.pow {NOT_IN_54}: use x ^ y",
        ),
        (
            "return table.getn({})",
            f"attempt to call a nil value (field 'getn'): table.getn {NOT_IN_54}: use #t",
        ),
        # these had their hint already
        (
            'return loadstring("x")',
            "attempt to call a nil value (global 'loadstring'): the sandbox has no loadstring; "
            f"it offers {OFFERED}",
        ),
        (
            'return dofile("x")',
            "attempt to call a nil value (global 'dofile'): the sandbox has no dofile; "
            f"it offers {OFFERED}",
        ),
        (
            "return collectgarbage()",
            "attempt to call a nil value (global 'collectgarbage'): the sandbox has no "
            f"collectgarbage; it offers {OFFERED}",
        ),
    ],
)
def test_what_other_lua_versions_offer_gets_a_hint(
    sandbox: LuaSandbox, code: str, message: str
) -> None:
    assert failure(run(sandbox, code)) == (message, 1)


def test_hints_hold(sandbox: LuaSandbox) -> None:
    # what the hints send a script to does what they say
    code = """
local t0 = os.time()
return {_ENV.print == print, 6 & 3, 6 | 3, 6 ~ 3, ~0, 1 << 4, 16 >> 4, 2 ^ 3, #{1, 2},
        math.atan(1, 1) == math.atan(1 / 1), math.log(100, 10), os.time() - t0 >= 0,
        unpack({7})}
"""
    outcome = run(sandbox, code)
    assert outcome.ok and outcome.value == [True, 2, 7, 5, -1, 16, 1, 8.0, 2, True, 2.0, True, 7]


def test_a_field_of_the_script_s_own_gets_no_hint(sandbox: LuaSandbox) -> None:
    assert failure(run(sandbox, "local t = {} return t.pow(2)")) == (
        "attempt to call a nil value (field 'pow')",
        1,
    )
