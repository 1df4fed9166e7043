"""``Execution`` with the real Lua pool: what the scheduler decides really happens."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest

from engine import wire
from engine.core.builder import Workflow
from engine.core.events import Event, isoformat
from engine.core.values import JSONObject
from engine.loading import spec_from_document
from engine.lua import LuaLimits, LuaPool
from engine.running import Execution, SubWorkflowRequest


@pytest.fixture
async def pool() -> AsyncIterator[LuaPool]:
    async with LuaPool(workers=2) as p:
        yield p


async def run(
    doc: dict[str, Any], pool: LuaPool, inputs: Any = None, **kw: Any
) -> tuple[JSONObject, list[Event]]:
    events: list[Event] = []
    spec = spec_from_document({"id": "t", "version": "1.0.0", **doc})
    ex = Execution(spec, inputs or {}, pool=pool, on_event=events.append, **kw)
    result = await asyncio.wait_for(ex.run_to_end(), 60)
    return result, events


async def test_results_flow_between_nodes_with_ints_intact(pool: LuaPool) -> None:
    doc, events = await run(
        {
            "nodes": [
                {
                    "id": "a",
                    "lua": "return { n = inputs.n, f = 1.5, list = {1, 2, 3}, empty = json.array() }",
                },
                {
                    "id": "b",
                    "depends_on": ["a"],
                    "lua": "return { double = results.a.n * 2, t = math.type(results.a.n) }",
                },
            ]
        },
        pool,
        {"n": 21},
    )
    assert doc["status"] == "succeeded"
    assert doc["nodes"]["a"]["output"] == {"n": 21, "f": 1.5, "list": [1, 2, 3], "empty": []}
    assert doc["outputs"] == {"b": {"double": 42, "t": "integer"}}
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_dynamic_lookup_of_a_non_ancestor_is_nil(pool: LuaPool) -> None:
    doc, _ = await run(
        {
            "nodes": [
                {"id": "a", "lua": "return { v = 1 }"},
                {"id": "other", "lua": "return { v = 2 }"},
                {
                    "id": "b",
                    "depends_on": ["a"],
                    "lua": "local name = 'oth' .. 'er'\nreturn { mine = results['a'].v, theirs = results[name] == nil }",
                },
            ]
        },
        pool,
    )
    assert doc["nodes"]["b"]["output"] == {"mine": 1, "theirs": True}


async def test_lua_error_fails_node_with_message_and_line(pool: LuaPool) -> None:
    doc, events = await run(
        {
            "nodes": [
                {"id": "a", "lua": "local x = 1\nerror('bad row ' .. x)"},
            ]
        },
        pool,
    )
    assert doc["status"] == "failed"
    assert doc["nodes"]["a"]["error"] == "bad row 1 (Lua line 2)"
    failed = next(e for e in events if e.type == "node.failed")
    assert failed.data["error"] == "bad row 1 (Lua line 2)"


async def test_when_and_foreach_run_in_lua(pool: LuaPool) -> None:
    doc, _ = await run(
        {
            "nodes": [
                {"id": "src", "lua": "return { items = {3, 1, 2} }"},
                {
                    "id": "sq",
                    "depends_on": ["src"],
                    "foreach": "{{ results.src.items }}",
                    "concurrency": 2,
                    "lua": "return ctx.item * ctx.item + ctx.index",
                },
                {
                    "id": "never",
                    "depends_on": ["src"],
                    "when": "#results.src.items > 5",
                    "lua": "return {}",
                },
            ]
        },
        pool,
    )
    assert doc["nodes"]["sq"]["output"] == [9, 2, 6]
    assert doc["nodes"]["never"]["status"] == "skipped"


async def test_a_when_expression_that_logs_keeps_its_lines(pool: LuaPool) -> None:
    doc, events = await run(
        {
            "nodes": [
                {
                    "id": "gate",
                    "when": "log('info', 'checking the gate') == nil",
                    "lua": "return 1",
                },
                {"id": "shut", "when": "log('warn', 'shut') and false", "lua": "return 1"},
            ]
        },
        pool,
    )
    assert doc["nodes"]["gate"]["status"] == "succeeded"
    logged = [(e.node_id, e.data["message"]) for e in events if e.type == "node.log"]
    assert sorted(logged) == [("gate", "checking the gate"), ("shut", "shut")]
    assert doc["nodes"]["shut"]["status"] == "skipped"


async def test_a_when_expression_stops_with_its_run() -> None:
    # the one worker would spin for the default wall time (30 s) on the expression, holding
    # up whatever runs next, had the run's end not stopped it (nothing runs inline here)
    limits = LuaLimits(instructions=10**15)
    async with LuaPool(workers=1, limits=limits, inline=False) as pool:
        doc, _ = await run(
            {
                "timeout": "300ms",
                "nodes": [
                    {
                        "id": "gate",
                        "when": "(function() while true do end end)()",
                        "lua": "return 1",
                    }
                ],
            },
            pool,
        )
        assert doc["status"] == "timed_out"
        after, _ = await asyncio.wait_for(
            run({"nodes": [{"id": "a", "lua": "return { ok = true }"}]}, pool), 10
        )
        assert after["outputs"] == {"a": {"ok": True}}


async def test_a_foreach_whose_outputs_add_up_past_the_limit_fails(pool: LuaPool) -> None:
    doc, _ = await run(
        {
            "nodes": [
                {
                    "id": "each",
                    "foreach": "{{ inputs.items }}",
                    "retry": {"max_attempts": 3},
                    "lua": "return string.rep('x', 1000)",
                },
                {"id": "after", "depends_on": ["each"], "lua": "return #results.each"},
            ]
        },
        pool,
        {"items": list(range(20))},
        foreach_output_bytes=10_000,  # ten items' worth
    )
    assert doc["status"] == "failed"
    each = doc["nodes"]["each"]
    assert each["status"] == "failed" and each["attempts"] == 1  # not retried: it would again
    assert each["error"].endswith("the outputs of this foreach node add up to over 10000 bytes")
    assert doc["nodes"]["after"]["status"] == "blocked"


RUN_CAP_ERROR = (
    "the outputs of this run, with its inputs and spec, add up to over 2500 bytes, "
    "the most one run carries "
    "(RUN_OUTPUT_BYTES): a run resumed on another engine takes them all in one message"
)


async def test_a_run_whose_outputs_add_up_past_the_limit_fails_where_they_cross_it(
    pool: LuaPool,
) -> None:
    """Each node's output within its own limit, but together past what a resume carries: the
    node that crosses the run's limit fails, at once and for good, failover or not."""
    big = "return string.rep('x', 1000)"  # 1,002 bytes of JSON
    doc, _ = await run(
        {
            "concurrency": 1,
            "nodes": [
                {"id": "a", "lua": big},
                {"id": "b", "depends_on": ["a"], "lua": big},
                {"id": "c", "depends_on": ["b"], "retry": {"max_attempts": 3}, "lua": big},
                {"id": "after", "depends_on": ["c"], "lua": "return 1"},
            ],
        },
        pool,
        run_output_bytes=2500,
    )
    assert doc["status"] == "failed"
    assert [doc["nodes"][n]["status"] for n in ("a", "b")] == ["succeeded", "succeeded"]
    c = doc["nodes"]["c"]
    assert c["status"] == "failed" and c["attempts"] == 1  # not retried: it would again
    assert c["error"] == RUN_CAP_ERROR
    assert doc["nodes"]["after"]["status"] == "blocked"


async def test_a_resumed_run_counts_the_outputs_it_was_resumed_with(pool: LuaPool) -> None:
    doc, _ = await run(
        {
            "nodes": [
                {"id": "a", "lua": "return 1"},
                {"id": "b", "depends_on": ["a"], "lua": "return string.rep('x', 1000)"},
            ]
        },
        pool,
        run_output_bytes=2500,
        completed={"a": "y" * 1998},
        carried_bytes=2000,
    )
    assert doc["nodes"]["a"]["status"] == "succeeded"
    assert doc["nodes"]["b"]["error"] == RUN_CAP_ERROR
    within, _ = await run(
        {
            "nodes": [
                {"id": "a", "lua": "return 1"},
                {"id": "b", "depends_on": ["a"], "lua": "return string.rep('x', 1000)"},
            ]
        },
        pool,
        run_output_bytes=2500,
        completed={"a": "y" * 998},
        carried_bytes=1000,
    )
    assert within["status"] == "succeeded"


async def test_outputs_count_as_the_wire_carries_them_escaped_to_ascii(pool: LuaPool) -> None:
    """1,000 Cyrillic letters are 6,002 bytes in a resume message (each one \\uXXXX): the same
    measure in place as after a failover, where the message's own text is counted."""
    spec = {
        "nodes": [
            {"id": "a", "lua": "return string.rep('\u0436', 1000)"},
            {"id": "b", "depends_on": ["a"], "lua": "return string.rep('x', 400)"},
        ]
    }
    in_place, _ = await run(spec, pool, None, run_output_bytes=6300)
    assert in_place["nodes"]["b"]["error"] == RUN_CAP_ERROR.replace("2500", "6300")
    output = "\u0436" * 1000
    resumed, _ = await run(
        spec,
        pool,
        None,
        run_output_bytes=6300,
        completed={"a": output},
        carried_bytes=len(wire.dumps(output)),
    )
    assert resumed["nodes"]["b"]["error"] == in_place["nodes"]["b"]["error"]
    fits, _ = await run(spec, pool, None, run_output_bytes=6500)  # 6,002 and 402
    assert fits["status"] == "succeeded"


@pytest.mark.parametrize(
    ("lua", "value"),
    [
        # Lua writes 1e+15 where the wire writes 1000000000000000.0
        ("local t = {} for i = 1, 1000 do t[i] = 1e15 end return t", [1e15] * 1000),
        ("local t = {} for i = 1, 1000 do t[i] = 1/3 end return t", [1 / 3] * 1000),
    ],
)
async def test_floats_count_as_the_wire_writes_them(pool: LuaPool, lua: str, value: Any) -> None:
    carried = len(wire.dumps(value))
    spec = {"nodes": [{"id": "a", "lua": lua}]}
    tight, _ = await run(spec, pool, None, run_output_bytes=carried - 1)
    assert tight["nodes"]["a"]["error"] == RUN_CAP_ERROR.replace("2500", str(carried - 1))
    fits, _ = await run(spec, pool, None, run_output_bytes=carried)
    assert fits["status"] == "succeeded"


async def test_a_foreach_counts_toward_the_run_as_its_list_is_carried(pool: LuaPool) -> None:
    """2,000 items of ``1`` are the list ``[1,1,...]`` on the wire: 4,001 bytes, commas and
    brackets included, as a resume carrying the node counts it."""
    carried = len(wire.dumps([1] * 2000))
    spec = {"nodes": [{"id": "each", "foreach": list(range(2000)), "lua": "return 1"}]}
    fits, _ = await run(spec, pool, None, run_output_bytes=carried)
    assert fits["status"] == "succeeded"
    tight, _ = await run(spec, pool, None, run_output_bytes=carried - 1)
    assert tight["status"] == "failed"


async def test_an_output_refused_for_the_run_bound_is_not_counted_against_later_ones(
    pool: LuaPool,
) -> None:
    doc, _ = await run(
        {
            "nodes": [
                {"id": "big", "lua": "return string.rep('x', 1000)"},
                {"id": "big2", "depends_on": ["big"], "lua": "return string.rep('y', 1500)"},
                {
                    "id": "notify",
                    "depends_on": ["big2"],
                    "trigger_rule": "one_failed",
                    "lua": "return {sent = true}",
                },
            ]
        },
        pool,
        run_output_bytes=2500,
    )
    assert doc["nodes"]["big2"]["error"] == RUN_CAP_ERROR
    assert doc["nodes"]["notify"]["status"] == "succeeded", doc["nodes"]["notify"]


async def test_a_foreach_over_children_counts_their_outputs_toward_the_bound(
    pool: LuaPool,
) -> None:
    class Children:
        """Answers each child at once with a 1,000-character output, as the engine service
        does with the orchestrator's answer."""

        def start(self, execution: Execution, request: SubWorkflowRequest) -> None:
            output = "x" * 998
            asyncio.get_running_loop().call_soon(
                partial(
                    execution.resolve_task,
                    request.node_id,
                    request.item,
                    request.attempt,
                    output=output,
                    size=len(json.dumps(output)),
                )
            )

        def cancel(self, execution: Execution, node_id: str, item: int | None) -> None:
            pass

    doc, _ = await run(
        {
            "nodes": [
                {
                    "id": "each",
                    "foreach": "{{ inputs.items }}",
                    "workflow": {"id": "child", "version": "^1"},
                },
            ]
        },
        pool,
        {"items": list(range(20))},
        foreach_output_bytes=10_000,  # ten items' worth
        subworkflows=Children(),
    )
    assert doc["status"] == "failed"
    assert doc["nodes"]["each"]["error"].endswith(
        "the outputs of this foreach node add up to over 10000 bytes"
    )


async def test_node_timeout_stops_a_runaway_script() -> None:
    # an instruction budget no loop reaches in time, so the node's timeout is what stops it
    async with LuaPool(workers=2, limits=LuaLimits(instructions=10**15)) as pool:
        doc, _ = await run(
            {
                "nodes": [
                    {"id": "spin", "timeout": "300ms", "lua": "while true do end"},
                    {"id": "fine", "lua": "return { ok = true }"},
                ]
            },
            pool,
        )
    assert doc["nodes"]["spin"]["status"] == "failed"
    # whether the error names a wait for a worker is test_lua_pool_fairness's: a loaded machine
    # slow to start the script (30 ms, a tenth of the timeout, seen) has it named
    assert str(doc["nodes"]["spin"]["error"]).startswith("timed out after 300ms")
    assert doc["nodes"]["fine"]["status"] == "succeeded"


async def test_cancel_stops_running_lua_and_frees_the_worker() -> None:
    spec = spec_from_document(
        {"id": "t", "version": "1.0.0", "nodes": [{"id": "spin", "lua": "while true do end"}]}
    )
    # an instruction budget no loop reaches in time: the cancel is what stops it
    async with LuaPool(workers=2, limits=LuaLimits(instructions=10**15)) as pool:
        ex = Execution(spec, {}, pool=pool)
        task = asyncio.ensure_future(ex.run_to_end())
        await asyncio.sleep(0.2)
        ex.cancel("operator said stop")
        doc = await asyncio.wait_for(task, 10)
        assert doc["status"] == "cancelled", doc["nodes"]
        assert doc["nodes"]["spin"]["error"] == "operator said stop"
        # both workers must be free again: two quick runs finish
        again, _ = await run(
            {"nodes": [{"id": "a", "lua": "return 1"}, {"id": "b", "lua": "return 2"}]}, pool
        )
        assert again["status"] == "succeeded"


SPIN_AND_LOG = 'log("info", "attempt " .. ctx.attempt)\nwhile true do end'


def trail(events: list[Event], node_id: str) -> list[tuple[str, int | None, object]]:
    """What one node went through, in the order its events were numbered."""
    ordered = sorted(events, key=lambda e: e.seq)
    return [(e.type, e.attempt, e.data.get("message")) for e in ordered if e.node_id == node_id]


async def test_a_cancelled_script_s_log_lines_come_before_its_end() -> None:
    spec = spec_from_document(
        {"id": "t", "version": "1.0.0", "nodes": [{"id": "spin", "lua": SPIN_AND_LOG}]}
    )
    events: list[Event] = []
    async with LuaPool(workers=2, limits=LuaLimits(instructions=10**15)) as pool:
        ex = Execution(spec, {}, pool=pool, on_event=events.append)
        task = asyncio.ensure_future(ex.run_to_end())
        await asyncio.sleep(0.2)
        ex.cancel("operator said stop")
        doc = await asyncio.wait_for(task, 10)
    assert doc["status"] == "cancelled"
    assert doc["nodes"]["spin"]["status"] == "cancelled"
    assert trail(events, "spin") == [
        ("node.started", 1, None),
        ("node.log", 1, "attempt 1"),
        ("node.cancelled", 1, None),
    ]
    assert max(events, key=lambda e: e.seq).type == "execution.cancelled"


async def test_a_run_timeout_keeps_what_every_running_script_logged() -> None:
    async with LuaPool(workers=2, limits=LuaLimits(instructions=10**15), inline=False) as pool:
        doc, events = await run(
            {
                "timeout": "300ms",
                "nodes": [
                    {"id": "a", "lua": SPIN_AND_LOG},
                    {"id": "b", "lua": SPIN_AND_LOG},
                    {"id": "after", "depends_on": ["a"], "lua": "return 1"},
                ],
            },
            pool,
        )
    assert doc["status"] == "timed_out"
    for node in ("a", "b"):
        assert doc["nodes"][node]["status"] == "cancelled"
        assert [t for t, _, _ in trail(events, node)] == [
            "node.started",
            "node.log",
            "node.cancelled",
        ]
    assert max(events, key=lambda e: e.seq).type == "execution.timed_out"


async def test_a_timed_out_attempt_ends_before_the_next_one_starts() -> None:
    # a worker each for two attempts at once, had the second not waited for the first
    async with LuaPool(workers=2, limits=LuaLimits(instructions=10**15), inline=False) as pool:
        doc, events = await run(
            {
                "nodes": [
                    {
                        "id": "spin",
                        "timeout": "200ms",
                        "retry": {"max_attempts": 2, "delay": "1ms"},
                        "lua": SPIN_AND_LOG,
                    }
                ]
            },
            pool,
        )
    assert doc["nodes"]["spin"]["error"] == "timed out after 200ms"
    assert trail(events, "spin") == [
        ("node.started", 1, None),
        ("node.log", 1, "attempt 1"),
        ("node.retrying", 1, None),
        ("node.started", 2, None),
        ("node.log", 2, "attempt 2"),
        ("node.failed", 2, None),
    ]


async def test_a_script_slow_to_stop_does_not_hold_up_its_run_s_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # each string.rep of 8 MiB takes a while, and the sandbox looks at its cancel flag between
    # hook firings only: the run ends at the grace, and the late line still arrives after it
    monkeypatch.setattr("engine.running.STOP_GRACE", 0.01)
    slow = 'log("info", "slow")\nwhile true do local s = string.rep("x", 1 << 23) end'
    limits = LuaLimits(instructions=10**15, memory=256 * 1024 * 1024)
    # a worker still in its call 2 s past its cancel is given up, its outcome and so its late
    # line dropped: a loaded machine stretched the 8 MiB calls past that (the pool's stuck
    # grace, not what is asserted here), so it is a minute
    async with LuaPool(workers=1, limits=limits, inline=False, stuck_grace=60.0) as pool:
        # a timeout a loaded machine still starts the script within: one whose deadline
        # passes while it waits for the worker never starts, and so logs nothing
        doc, events = await run({"timeout": "1s", "nodes": [{"id": "s", "lua": slow}]}, pool)
        assert doc["status"] == "timed_out"
        assert [t for t, _, _ in trail(events, "s")] == ["node.started", "node.cancelled"]
        again, _ = await run({"nodes": [{"id": "a", "lua": "return 1"}]}, pool)
    assert again["status"] == "succeeded"  # the worker came free once the script saw its flag
    assert [t for t, _, _ in trail(events, "s")][-1] == "node.log"


async def test_a_stop_does_not_wait_for_scripts_still_queued_for_a_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a grace no test sits out: a script still queued has logged nothing to wait for
    monkeypatch.setattr("engine.running.STOP_GRACE", 600.0)
    busy = spec_from_document(
        {"id": "busy", "version": "1.0.0", "nodes": [{"id": "spin", "lua": "while true do end"}]}
    )
    queued = spec_from_document(
        {"id": "queued", "version": "1.0.0", "nodes": [{"id": "q", "lua": "return 1"}]}
    )
    limits = LuaLimits(instructions=10**15, wall_time=60.0)
    async with LuaPool(workers=1, limits=limits, inline=False) as pool:
        spinning = Execution(busy, {}, pool=pool)
        first = asyncio.ensure_future(spinning.run_to_end())
        await asyncio.sleep(0.2)  # the one worker is taken
        waiting = Execution(queued, {}, pool=pool)
        second = asyncio.ensure_future(waiting.run_to_end())
        await asyncio.sleep(0.1)
        waiting.cancel("not needed")
        doc = await asyncio.wait_for(second, 10)  # before: held until the worker came free
        assert doc["status"] == "cancelled"
        spinning.cancel("done")
        assert (await asyncio.wait_for(first, 10))["status"] == "cancelled"


async def test_sleep_holds_no_worker(pool: LuaPool) -> None:
    doc, events = await run(
        {
            "concurrency": 1,
            "nodes": [
                {"id": "nap", "sleep": "400ms"},
                {"id": "work", "lua": "return { done = true }"},
            ],
        },
        pool,
    )
    assert doc["status"] == "succeeded"
    order = [(e.type, e.node_id) for e in events if e.type == "node.succeeded"]
    assert order == [("node.succeeded", "work"), ("node.succeeded", "nap")]


async def test_a_resumed_sleep_of_an_hour_ends_with_what_is_left_of_it(pool: LuaPool) -> None:
    now = time.time()
    since = now - 3600 + 0.3  # an hour's sleep that began elsewhere 0.3 s short of an hour ago
    doc, events = await run(
        {
            "nodes": [
                {"id": "nap", "sleep": "1h"},
                {"id": "after", "depends_on": ["nap"], "lua": "return 1"},
            ]
        },
        pool,
        sleeping={"nap": since},
        started_at=since - 1,
    )
    assert doc["status"] == "succeeded"
    assert doc["nodes"]["nap"]["started_at"] == isoformat(since)
    assert doc["started_at"] == isoformat(since - 1)
    (resumed,) = [e.data for e in events if e.type == "node.started" and e.node_id == "nap"]
    assert resumed["resumed"] is True and 0 <= resumed["remaining_s"] <= 0.3  # type: ignore[operator]


async def test_resume_does_not_rerun_completed_nodes(pool: LuaPool) -> None:
    doc, events = await run(
        {
            "nodes": [
                {"id": "a", "lua": "error('must not run again')"},
                {"id": "b", "depends_on": ["a"], "lua": "return { got = results.a.v }"},
            ]
        },
        pool,
        completed={"a": {"v": 7}},
    )
    assert doc["status"] == "succeeded"
    assert doc["outputs"] == {"b": {"got": 7}}
    assert [e.node_id for e in events if e.type == "node.started"] == ["b"]


async def test_logs_arrive_as_events_before_the_node_result(pool: LuaPool) -> None:
    _, events = await run(
        {
            "nodes": [
                {"id": "a", "lua": "log('info', 'one')\nlog('warn', 'two')\nreturn {}"},
            ]
        },
        pool,
    )
    kinds = [(e.type, e.data.get("message")) for e in events if e.node_id == "a"]
    assert kinds == [
        ("node.started", None),
        ("node.log", "one"),
        ("node.log", "two"),
        ("node.succeeded", None),
    ]


async def test_sub_workflow_without_orchestrator_fails_clearly(pool: LuaPool) -> None:
    doc, _ = await run(
        {"nodes": [{"id": "child", "workflow": {"id": "other", "version": "^1"}}]}, pool
    )
    assert doc["nodes"]["child"]["status"] == "failed"
    assert "needs the orchestrator" in doc["nodes"]["child"]["error"]


async def test_builder_spec_runs(pool: LuaPool) -> None:
    spec = (
        Workflow("b", "1.0.0")
        .node("x", lua="return { v = 1 }")
        .node("y", lua="return { v = results.x.v + 1 }", depends_on=["x"])
        .build()
    )
    doc = await Execution(spec, {}, pool=pool).run_to_end()
    assert doc["outputs"] == {"y": {"v": 2}}


async def test_a_fault_in_the_scheduler_ends_the_run_instead_of_leaving_it_waiting(
    pool: LuaPool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from engine.core import scheduler as sch

    real = sch.Run.handle

    def faulty(self: sch.Run, *stimuli: sch.Stimulus) -> Any:
        if any(isinstance(s, sch.TaskSucceeded) and s.node_id == "a" for s in stimuli):
            raise OverflowError("a fault of the engine's own")  # as 2.0 ** 1024 once was
        return real(self, *stimuli)

    monkeypatch.setattr(sch.Run, "handle", faulty)
    spec = spec_from_document(
        {
            "id": "t",
            "version": "1.0.0",
            "nodes": [
                {"id": "a", "lua": "return 1"},
                {"id": "slow", "lua": "local t = os.clock() while os.clock() - t < 30 do end"},
            ],
        }
    )
    ex = Execution(spec, {}, pool=pool)
    # before: the run waited for ever (here: until wait_for gave up)
    with pytest.raises(OverflowError, match="a fault of the engine's own"):
        await asyncio.wait_for(ex.run_to_end(), 20)
    assert "stopped by a fault of the engine's own" in caplog.text
    # its other script was told to stop, and nothing more reaches the broken scheduler
    ex.cancel("later")
    assert not ex.finished
