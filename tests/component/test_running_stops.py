"""Ends a run comes to itself while scripts of it still run (``fail_fast``, a foreach item that
fails while its siblings run), with the real Lua pool: the scripts it stops come back first,
and what they logged comes before the end they led to, as a cancel's does."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from engine.core.events import Event
from engine.loading import spec_from_document
from engine.lua import LuaLimits, LuaPool
from engine.running import Execution

SPIN_AND_LOG = 'log("info", "spinning " .. tostring(ctx.index or ctx.node_id))\nwhile true do end'
# fails once its siblings have surely been taken by a worker and logged
FAIL_LATER = 'local t = os.clock()\nwhile os.clock() - t < 0.3 do end\nerror("late")'


async def run(doc: dict[str, Any], inputs: Any = None) -> tuple[dict[str, Any], list[Event]]:
    events: list[Event] = []
    spec = spec_from_document({"id": "t", "version": "1.0.0", **doc})
    # an instruction budget no loop reaches: what stops a spinning script is its stop
    async with LuaPool(workers=4, limits=LuaLimits(instructions=10**15), inline=False) as pool:
        ex = Execution(spec, inputs or {}, pool=pool, on_event=events.append)
        result = await asyncio.wait_for(ex.run_to_end(), 30)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    return dict(result), events


def kinds(events: list[Event], node_id: str | None = None) -> list[str]:
    return [e.type for e in events if node_id is None or e.node_id == node_id]


async def test_a_fail_fast_end_comes_after_what_the_scripts_it_stopped_logged() -> None:
    # before: spin cancelled, execution.failed, and then spin's line, after the run's end
    doc, events = await run(
        {
            "fail_fast": True,
            "nodes": [{"id": "bad", "lua": FAIL_LATER}, {"id": "spin", "lua": SPIN_AND_LOG}],
        }
    )
    assert doc["status"] == "failed"
    assert doc["nodes"]["spin"]["status"] == "cancelled"
    assert kinds(events, "spin") == ["node.started", "node.log", "node.cancelled"]
    assert events[-1].type == "execution.failed"
    assert "fail_fast" in str(events[-1].data["error"])


async def test_nothing_starts_while_a_fail_fast_end_waits_for_its_scripts() -> None:
    doc, events = await run(
        {
            "fail_fast": True,
            "nodes": [
                {"id": "bad", "lua": FAIL_LATER},
                {"id": "spin", "lua": SPIN_AND_LOG},
                {
                    "id": "cleanup",
                    "depends_on": ["bad"],
                    "trigger_rule": "all_done",
                    "lua": "return 1",
                },
            ],
        }
    )
    assert kinds(events, "cleanup") == []
    assert doc["nodes"]["cleanup"]["status"] == "cancelled"
    assert events[-1].type == "execution.failed" and events[-1].data["unreached"] == 1


async def test_a_foreach_node_ends_after_what_its_stopped_items_logged() -> None:
    # before: fe failed, then the run went on, and its items' lines came after the run's end
    doc, events = await run(
        {
            "nodes": [
                {
                    "id": "fe",
                    "foreach": "{{ inputs.items }}",
                    "lua": f"if ctx.index == 0 then\n{FAIL_LATER}\nend\n{SPIN_AND_LOG}",
                },
                {
                    "id": "after",
                    "depends_on": ["fe"],
                    "trigger_rule": "all_done",
                    "lua": "return 1",
                },
            ]
        },
        {"items": [0, 1, 2]},
    )
    assert doc["status"] == "partial"
    assert doc["nodes"]["fe"]["error"] == "item 0: late (Lua line 4)"
    assert kinds(events, "fe") == ["node.started", "node.log", "node.log", "node.failed"]
    assert sorted(str(e.data["message"]) for e in events if e.type == "node.log") == [
        "spinning 1",
        "spinning 2",
    ]
    assert kinds(events)[-3:] == ["node.started", "node.succeeded", "execution.partial"]


async def test_a_foreach_node_failing_with_fail_fast_ends_after_its_items_lines() -> None:
    doc, events = await run(
        {
            "fail_fast": True,
            "nodes": [
                {
                    "id": "fe",
                    "foreach": "{{ inputs.items }}",
                    "lua": f"if ctx.index == 0 then\n{FAIL_LATER}\nend\n{SPIN_AND_LOG}",
                },
                {"id": "spin", "lua": SPIN_AND_LOG},
            ],
        },
        {"items": [0, 1, 2]},
    )
    assert doc["nodes"]["fe"]["status"] == "failed"  # it failed: the run's end did not cancel it
    assert doc["nodes"]["spin"]["status"] == "cancelled"
    assert kinds(events, "fe") == ["node.started", "node.log", "node.log", "node.failed"]
    assert kinds(events, "spin") == ["node.started", "node.log", "node.cancelled"]
    assert events[-1].type == "execution.failed"


async def test_a_script_slow_to_stop_holds_a_fail_fast_end_no_longer_than_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("engine.running.STOP_GRACE", 0.05)
    slow = 'log("info", "slow")\nwhile true do local s = string.rep("x", 1 << 23) end'
    events: list[Event] = []
    spec = spec_from_document(
        {
            "id": "t",
            "version": "1.0.0",
            "fail_fast": True,
            "nodes": [{"id": "bad", "lua": FAIL_LATER}, {"id": "slow", "lua": slow}],
        }
    )
    limits = LuaLimits(instructions=10**15, memory=256 * 1024 * 1024)
    async with LuaPool(workers=2, limits=limits, inline=False) as pool:
        ex = Execution(spec, {}, pool=pool, on_event=events.append)
        doc: dict[str, Any] = dict(await asyncio.wait_for(ex.run_to_end(), 30))
    assert doc["status"] == "failed" and doc["nodes"]["slow"]["status"] == "cancelled"


async def test_what_is_queued_sleeping_or_ending_while_a_fail_fast_end_waits_is_cancelled() -> None:
    """fail_fast cancels the rest: before, scripts still queued were taken by a free worker
    while the run waited for the stopped ones, ran to the end and succeeded, and a sleep that
    ended meanwhile succeeded too, their outputs in the failed run's (a sleep's end during the
    wait, on a fake clock: tests/unit/test_scheduler_stops.py)."""
    busy = 'local t = os.clock() while os.clock() - t < 0.5 do end return "{}"'
    nodes: list[dict[str, Any]] = [
        {"id": "spin", "lua": SPIN_AND_LOG},
        {"id": "bad", "lua": 'local t = os.clock() while os.clock() - t < 0.1 do end error("x")'},
        # a sleep no loaded machine sees end before bad fails: with "1s", bad's 0.1 s of CPU
        # took longer than that at a load of 7, and the sleep's success was the run's own
        {"id": "nap", "sleep": "1h"},
    ]
    nodes += [{"id": f"q{i}", "lua": busy.format(i)} for i in range(6)]
    doc, events = await run({"fail_fast": True, "concurrency": 10, "nodes": nodes})
    assert doc["status"] == "failed" and doc["outputs"] == {}
    statuses = {k: v["status"] for k, v in doc["nodes"].items()}
    assert statuses.pop("bad") == "failed"
    assert set(statuses.values()) == {"cancelled"}, statuses
    assert not any(e.type == "node.succeeded" for e in events)
