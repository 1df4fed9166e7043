"""Log budgets, with the real Lua pool: a foreach node's lines over all its items and their
attempts are held to what one script run keeps, any other node's to that an attempt, and one
line before the end of each says how many were dropped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest

from engine.core.events import Event
from engine.core.values import JSONObject
from engine.loading import spec_from_document
from engine.lua import LuaLimits, LuaOutcome, LuaPool, LuaTask
from engine.running import Execution


@pytest.fixture
async def pool() -> AsyncIterator[LuaPool]:
    # small budgets, so a test logs a few lines where a real run would log thousands
    async with LuaPool(workers=2, limits=LuaLimits(log_lines=5, log_bytes=1000)) as p:
        yield p


async def run(doc: dict[str, Any], pool: LuaPool) -> tuple[JSONObject, list[Event]]:
    events: list[Event] = []
    spec = spec_from_document({"id": "t", "version": "1.0.0", **doc})
    ex = Execution(spec, {}, pool=pool, on_event=events.append)
    result = await asyncio.wait_for(ex.run_to_end(), 60)
    return result, events


def logs(events: list[Event], node_id: str) -> list[str]:
    return [str(e.data["message"]) for e in events if e.type == "node.log" and e.node_id == node_id]


ITEMS = {"id": "a", "lua": "return { items = {1, 2, 3, 4} }"}


async def test_a_foreach_node_keeps_its_budget_over_all_its_items(pool: LuaPool) -> None:
    doc, events = await run(
        {
            "nodes": [
                ITEMS,
                {
                    "id": "b",
                    "depends_on": ["a"],
                    "foreach": "{{ results.a.items }}",
                    "lua": "for i = 1, 3 do log('info', 'line ' .. i) end return 1",
                },
            ]
        },
        pool,
    )
    assert doc["status"] == "succeeded"
    said = logs(events, "b")
    # 4 items of 3 lines: 5 kept, 7 dropped, told once
    assert len(said) == 6
    assert said[-1] == (
        "[log limit: node 'b' keeps 5 log lines over all its items and attempts; 7 more dropped]"
    )
    types = [e.type for e in events if e.node_id == "b"]
    assert types[-2:] == ["node.log", "node.succeeded"], "the note comes just before the end"
    note = next(e for e in events if e.type == "node.log" and "log limit" in str(e.data))
    assert note.severity == "warning" and note.data["level"] == "warn" and "item" not in note.data
    # the lines kept say which item logged them
    items = [e.data.get("item") for e in events if e.type == "node.log" and e is not note]
    assert items[:5] == sorted(items[:5]) and all(isinstance(i, int) for i in items[:5])


async def test_one_script_over_its_cap_is_told_once_not_twice(pool: LuaPool) -> None:
    doc, events = await run(
        {"nodes": [{"id": "a", "lua": "for i = 1, 20 do log('info', 'l' .. i) end return 1"}]},
        pool,
    )
    assert doc["status"] == "succeeded"
    # the lines the sandbox dropped from the script's run are told in the node's one line
    assert logs(events, "a") == [
        "l1",
        "l2",
        "l3",
        "l4",
        "l5",
        "[log limit: node 'a' keeps 5 log lines; 15 more dropped]",
    ]


async def test_each_attempt_keeps_its_own_lines_and_the_bytes_count(pool: LuaPool) -> None:
    doc, events = await run(
        {
            "nodes": [
                {
                    "id": "a",
                    "retry": {"max_attempts": 3, "delay": "1ms"},
                    # 300 bytes a line: the fourth crosses 1000 and stays, as the sandbox keeps;
                    # the fifth is dropped, in each attempt
                    "lua": "for i = 1, 5 do log('info', ctx.attempt .. string.rep('x', 299)) end"
                    " error('no')",
                }
            ]
        },
        pool,
    )
    assert doc["status"] == "failed"
    said = [(e.type, e.attempt, str(e.data.get("message", ""))[:1]) for e in events]
    said = [s for s in said if s[0] in ("node.log", "node.retrying", "node.failed")]
    for attempt in (1, 2, 3):
        # an earlier attempt's lines leave the last one's all its own: what says why it failed
        assert [s for s in said if s[0] == "node.log" and s[1] == attempt][:4] == [
            ("node.log", attempt, str(attempt))
        ] * 4
    notes = [
        (e.attempt, e.data["message"]) for e in events if "log limit" in str(e.data.get("message"))
    ]
    assert notes == [
        (
            n,
            f"[log limit: node 'a' keeps 1000 bytes of log lines an attempt (attempt {n}); "
            "1 more dropped]",
        )
        for n in (1, 2, 3)
    ]
    # each attempt's note comes just before its end: the retry, then the node's failure
    ends = [s[0] for s in said]
    assert ends == ["node.log"] * 5 + ["node.retrying"] + ["node.log"] * 5 + ["node.retrying"] + [
        "node.log"
    ] * 5 + ["node.failed"]


async def test_a_node_under_its_budget_says_nothing_more(pool: LuaPool) -> None:
    doc, events = await run(
        {"nodes": [{"id": "a", "lua": "log('info', 'one') log('warn', 'two') return 1"}]}, pool
    )
    assert doc["status"] == "succeeded"
    assert logs(events, "a") == ["one", "two"]
    assert all("item" not in e.data for e in events if e.type == "node.log")


class HeldPool:
    """Holds each script until the test answers it: which script comes back when, decided
    here, where real workers would race."""

    limits = LuaLimits(log_lines=5, log_bytes=1000)

    def __init__(self) -> None:
        self.held: dict[str, Callable[[LuaOutcome], None]] = {}

    def run_inline(self, task: LuaTask) -> None:
        return None

    def submit_callback(
        self, task: LuaTask, done: Callable[[LuaOutcome], None], owner: str
    ) -> None:
        item = task.ctx.get("index")
        self.held[task.chunk_name + ("" if item is None else f"/{item}")] = done

    def answer(self, name: str, ok: bool, value: Any = None, logs: int = 0, **kw: Any) -> None:
        lines = [("info", f"{name} {i}") for i in range(logs)]
        error = None if ok else "no"
        outcome = LuaOutcome(ok, value, error, None, lines, 0.0, **kw)
        self.held.pop(name)(outcome)


async def test_lines_dropped_after_the_node_s_end_are_told_before_the_run_s() -> None:
    pool = HeldPool()
    events: list[Event] = []
    spec = spec_from_document(
        {
            "id": "t",
            "version": "1.0.0",
            "nodes": [
                {"id": "a", "lua": "return {}"},
                {"id": "b", "depends_on": ["a"], "foreach": "{{ results.a }}", "lua": "return 1"},
                {"id": "c", "lua": "return 1"},
            ],
        }
    )
    ex = Execution(spec, {}, pool=cast(Any, pool), on_event=events.append)
    running = asyncio.ensure_future(ex.run_to_end())
    await asyncio.sleep(0)
    pool.answer("a", True, [0, 1])
    await asyncio.sleep(0)
    # item 0 logs past its run's cap (the sandbox dropped 1 more) and fails the node; item 1
    # had logged 3 lines when the failure stopped it: they come back after the node's end
    pool.answer("b/0", False, logs=5, logs_dropped=1)
    await asyncio.sleep(0)
    assert ex.run.record("b").status == "failed"
    pool.answer("b/1", False, logs=3, limit="cancelled")
    await asyncio.sleep(0)
    pool.answer("c", True, 1)
    doc = await asyncio.wait_for(running, 10)
    assert doc["status"] == "partial"
    assert logs(events, "b") == [
        *[f"b/0 {i}" for i in range(5)],
        "[log limit: node 'b' keeps 5 log lines over all its items and attempts; 1 more dropped]",
        "[log limit: node 'b' keeps 5 log lines over all its items and attempts; "
        "3 more dropped after its end]",
    ]
    types = [e.type for e in events]
    assert types[types.index("node.failed") - 1] == "node.log"
    assert types[-2:] == ["node.log", "execution.partial"]
