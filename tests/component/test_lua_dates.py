"""``os.date`` with real lupa on the pool's threads: every script gets its own instant's date.

Lua's ``os.date`` calls C's ``gmtime`` and ``localtime``, whose one static result every runtime in
the process shares; the sandbox serialises the calls. Without that, scripts formatting dates at
the same time on several workers read each other's.
"""

from __future__ import annotations

import asyncio
import threading
import time

from engine.lua import MISSING, LuaLimits, LuaPool, LuaSandbox, LuaTask
from tests.component.test_lua_messages import run

_SCRIPT = """
local t, utc, here = inputs.t, inputs.utc, inputs.here
local bad, seen = 0, nil
for _ = 1, inputs.n do
  local u = os.date("!%Y-%m-%d %H:%M:%S", t)
  local l = os.date("%Y-%m-%d %H:%M:%S", t)
  local d = os.date("!*t", t)
  local f = string.format("%04d-%02d-%02d %02d:%02d:%02d",
                          d.year, d.month, d.day, d.hour, d.min, d.sec)
  if u ~= utc or l ~= here or f ~= utc then
    bad = bad + 1
    seen = seen or (u .. " | " .. l .. " | " .. f)
  end
end
return {bad = bad, seen = seen}
"""

_FORMAT = "%Y-%m-%d %H:%M:%S"


def _task(instant: int, n: int) -> LuaTask:
    return LuaTask(
        key="dates",
        code=_SCRIPT,
        chunk_name="dates",
        inputs={
            "t": instant,
            "n": n,
            "utc": time.strftime(_FORMAT, time.gmtime(instant)),
            "here": time.strftime(_FORMAT, time.localtime(instant)),
        },
        results=lambda name: MISSING,
        ctx={"node_id": "dates"},
    )


async def test_concurrent_scripts_each_format_their_own_instant() -> None:
    instants = [0, 1_000_000_000, 2_000_000_000, 3_000_000_000]
    limits = LuaLimits(instructions=10**10, wall_time=120.0)
    async with LuaPool(workers=len(instants), limits=limits, inline=False) as pool:
        outcomes = await asyncio.gather(*(pool.run(_task(t, 30_000)) for t in instants))
    assert [o.error for o in outcomes] == [None] * len(instants)
    assert [o.value for o in outcomes] == [{"bad": 0}] * len(instants)


def _run(code: str) -> tuple[object, str | None, int | None]:
    outcome = run(LuaSandbox(LuaLimits()), code)
    return outcome.value, outcome.error, outcome.line


def test_os_date_answers_as_stock_lua() -> None:
    assert _run('return os.date("!%Y-%m-%dT%H:%M:%S", 86400)')[0] == "1970-01-02T00:00:00"
    assert _run('return os.date("!%c", 0)')[0] == "Thu Jan  1 00:00:00 1970"
    assert _run('return os.date("!%Z", 0)')[0] == "GMT"
    assert _run('return os.date("!%d%%%Ey%Od", 0)')[0] == "01%7001"
    assert _run("return os.date(12, 0)")[0] == "12"
    assert _run('return os.date("!%Y", "86400")')[0] == "1970"
    assert _run("return os.date('!*t', 0)")[0] == {
        "year": 1970,
        "month": 1,
        "day": 1,
        "hour": 0,
        "min": 0,
        "sec": 0,
        "yday": 1,
        "wday": 5,
        "isdst": False,
    }
    assert _run("return os.date('*t', 0).year >= 1969")[0] is True
    assert _run('return type(os.date()) == "string" and type(os.date("%c")) == "string"')[0]
    assert _run('return os.date("!x\\0y", 0) == "x\\0y"')[0] is True


def test_os_date_errors_are_stock_luas_with_the_scripts_position() -> None:
    specifier = "bad argument #1 to 'date' (invalid conversion specifier '%Ez')"
    assert _run('local x = 1\nlocal v = os.date("%Ez", 0) return v') == (None, specifier, 2)
    assert _run('local x = 1\nreturn os.date("%Ez", 0)') == (None, specifier, 2)
    assert _run('local v = os.date("%", 0) return v') == (
        None,
        "bad argument #1 to 'date' (invalid conversion specifier '%')",
        1,
    )
    assert _run('local v = os.date("%c", "x") return v') == (
        None,
        "bad argument #2 to 'date' (number expected, got string)",
        1,
    )
    assert _run('local v = os.date("%c", 1.5) return v') == (
        None,
        "bad argument #2 to 'date' (number has no integer representation)",
        1,
    )
    assert _run("local v = os.date({}) return v") == (
        None,
        "bad argument #1 to 'date' (string expected, got table)",
        1,
    )
    assert _run('local v = os.date("!%c", 1 << 62) return v') == (
        None,
        "date result cannot be represented in this installation",
        1,
    )
    assert _run('local d = os.date\nlocal v = d("%Q") return v') == (
        None,
        "bad argument #1 to 'd' (invalid conversion specifier '%Q')",
        2,
    )
    assert _run('local v = os:date("%c") return v') == (
        None,
        "calling 'date' on bad self (string expected, got table)",
        1,
    )
    # caught: without a position where C called it, named as C finds it then
    assert _run('local ok, e = pcall(os.date, "%Q") return e')[0] == (
        "bad argument #1 to 'os.date' (invalid conversion specifier '%Q')"
    )
    assert _run('local ok, e = pcall(function() local v = os.date("%Q") return v end) return e')[
        0
    ] == ("b:1: bad argument #1 to 'date' (invalid conversion specifier '%Q')")


def test_os_has_only_time_date_clock_and_is_read_only() -> None:
    code = "local n = {} for k in pairs(os) do n[#n + 1] = k end table.sort(n) return n"
    assert _run(code)[0] == ["clock", "date", "time"]
    assert _run("os.date = 1")[1] == "os is read-only (cannot set date)"


def test_a_run_out_of_memory_in_os_date_leaves_it_to_the_others() -> None:
    # a 4096-byte format (the longest taken) makes an answer of some 50 KB, past 64 KiB of
    # memory with the buffer it grows in; the format itself fits, as a run without the call
    # shows
    sandbox = LuaSandbox(LuaLimits(memory=64 * 1024))
    code = 'local f = string.rep("%c", 2048) local v = os.date(f, 0) return #v'
    formatted = run(sandbox, 'local f = string.rep("%c", 2048) return #f')
    assert (formatted.limit, formatted.value) == (None, 4096)
    outcome = run(sandbox, code)
    assert (outcome.limit, outcome.error) == ("memory", "memory limit of 65536 bytes exceeded")
    done: list[tuple[object, str | None, int | None]] = []
    other = threading.Thread(target=lambda: done.append(_run('return os.date("!%Y", 0)')))
    other.start()
    other.join(10)
    assert done == [("1970", None, None)]
    assert run(sandbox, 'return os.date("!%Y", 0)').value == "1970"


def test_a_format_past_4096_bytes_is_refused_before_it_takes_the_lock() -> None:
    """Every script's os.date waits while one formats: a format of megabytes held them (and
    an engine's event loop) for a second each."""
    assert _run('return #os.date("!" .. string.rep("%Y", 2047), 0)')[0] == 4 * 2047
    value, error, line = _run('local s = string.rep("%%", 8 << 20)\nreturn os.date(s, 0)')
    assert value is None and line == 2
    assert error is not None
    assert "bad argument #1 to 'date' (format longer than 4096 bytes)" in error
