"""A foreach node's items done survive a move to another engine: ``node.progress`` from a real
run, ``completed_items`` read off the wire (and refused when wrong), and a resumed run with the
real Lua pool running only the items not done."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import status_pb2

from engine import wire
from engine.api import dagengine_pb2 as pb
from engine.core import scheduler as sch
from engine.core.events import Event
from engine.core.values import JSONObject
from engine.errors import BadRequest
from engine.inputs import check_inputs
from engine.loading import spec_from_document
from engine.lua import LuaPool
from engine.running import Execution
from engine.serving import spec_from_request
from orchestrator.dispatching import RunTicket, execute_request
from orchestrator.timeline import Checkpoint, ItemsDone, resume_point

EACH = json.dumps(
    {
        "id": "w",
        "version": "1.0.0",
        "nodes": [
            {"id": "a", "lua": "return 1"},
            {"id": "each", "depends_on": ["a"], "foreach": [1, 2, 3, 4], "lua": "return 2"},
        ],
    }
)


@pytest.fixture
async def pool() -> AsyncIterator[LuaPool]:
    async with LuaPool(workers=2) as p:
        yield p


async def run(doc: dict[str, Any], pool: LuaPool, **kw: Any) -> tuple[JSONObject, list[Event]]:
    events: list[Event] = []
    spec = spec_from_document({"id": "t", "version": "1.0.0", **doc})
    ex = Execution(spec, {}, pool=pool, on_event=events.append, **kw)
    return await asyncio.wait_for(ex.run_to_end(), 120), events


def order(spec: str = EACH, **fields: object) -> wire.RunOrder:
    request = pb.ExecuteRequest(spec=spec, **fields)  # type: ignore[arg-type]
    return wire.run_order(request, spec_from_request, check_inputs)


# -- the engine tells its items -------------------------------------------------------------


async def test_a_foreach_node_past_its_first_second_tells_its_items_done(pool: LuaPool) -> None:
    # each item holds a worker for 0.15 s of the process's CPU time, which passes at most
    # twice as fast as the wall clock on two cores: the node runs for over a second
    busy = "local t = os.clock() while os.clock() - t < 0.15 do end return ctx.index * 10"
    doc, events = await run(
        {"nodes": [{"id": "each", "foreach": list(range(20)), "concurrency": 1, "lua": busy}]},
        pool,
    )
    assert doc["status"] == "succeeded"
    assert doc["nodes"]["each"]["output"] == [i * 10 for i in range(20)]
    told = [e for e in events if e.type == "node.progress"]
    assert told, [e.type for e in events]
    end = next(e.seq for e in events if e.type == "node.succeeded")
    seen: dict[str, Any] = {}
    for event in told:
        assert event.seq < end and event.severity == "debug" and event.node_id == "each"
        assert event.data["items"] == 20
        outputs = event.data["outputs"]
        assert isinstance(outputs, dict) and outputs
        assert not seen.keys() & outputs.keys()  # each item told once
        seen.update(outputs)
        assert event.data["done"] == len(seen)
    assert all(value == int(key) * 10 for key, value in seen.items())
    assert len(seen) < 20  # the last item ends the node, and its output is in that end


# -- the engine takes them back -------------------------------------------------------------


async def test_a_resumed_foreach_node_runs_only_the_items_not_done(pool: LuaPool) -> None:
    script = 'log("info", "ran " .. ctx.index) return ctx.item .. "!"'
    carried = sch.ItemsDone(6, {0: "A", 2: "C", 5: "F"}, size=9)
    doc, events = await run(
        {
            "nodes": [
                {"id": "each", "foreach": list("abcdef"), "concurrency": 2, "lua": script},
                {"id": "after", "depends_on": ["each"], "lua": "return #results.each"},
            ]
        },
        pool,
        items_done={"each": carried},
    )
    assert doc["status"] == "succeeded"
    ran = [e.data["message"] for e in events if e.type == "node.log"]
    assert sorted(ran) == ["ran 1", "ran 3", "ran 4"]  # the items carried never ran again
    assert doc["nodes"]["each"]["output"] == ["A", "b!", "C", "d!", "e!", "F"]
    assert doc["outputs"] == {"after": 6}
    started = next(e for e in events if e.type == "node.started" and e.node_id == "each")
    assert started.data == {"items": 6, "resumed_items": 3}


async def test_items_carried_count_toward_the_foreach_output_bound(pool: LuaPool) -> None:
    carried = sch.ItemsDone(3, {0: "x" * 90}, size=92)
    doc, _ = await run(
        {"nodes": [{"id": "each", "foreach": [1, 2, 3], "lua": 'return "0123456789"'}]},
        pool,
        items_done={"each": carried},
        foreach_output_bytes=100,
    )
    assert doc["status"] == "failed"
    assert "add up to over 100 bytes" in str(doc["nodes"]["each"]["error"])
    # items of a list of another length are not this node's: they run again, uncounted
    doc, _ = await run(
        {"nodes": [{"id": "each", "foreach": [1, 2, 3], "lua": 'return "0123456789"'}]},
        pool,
        items_done={"each": sch.ItemsDone(4, {0: "x" * 90}, size=92)},
        foreach_output_bytes=100,
    )
    assert doc["status"] == "succeeded"
    assert doc["nodes"]["each"]["output"] == ["0123456789"] * 3


# -- the wire ---------------------------------------------------------------------------------


def test_completed_items_are_read_per_node() -> None:
    got = order(
        completed=[pb.CompletedNode(node_id="a", output_json="1")],
        completed_items=[
            pb.CompletedItem(node_id="each", item=2, items=4, output_json='{"v": 3}'),
            pb.CompletedItem(node_id="each", item=0, items=4, output_json="1"),
        ],
    )
    assert got.completed == {"a": 1}
    done = got.items_done["each"]
    assert done.items == 4 and done.outputs == {2: {"v": 3}, 0: 1}
    assert done.size == len('{"v": 3}') + 1
    bare = order(completed=[pb.CompletedNode(node_id="a", output_json="1")])
    # carried as the node's list will be: the outputs, their commas and the brackets
    assert got.carried_bytes - bare.carried_bytes == done.size + 2 + 1


def test_bad_completed_items_are_refused_naming_each() -> None:
    with pytest.raises(BadRequest) as caught:
        order(
            completed=[pb.CompletedNode(node_id="a", output_json="1")],
            completed_items=[
                pb.CompletedItem(node_id="", item=0, items=4),
                pb.CompletedItem(node_id="a", item=0, items=4, output_json="1"),
                pb.CompletedItem(node_id="each", item=0, items=0),
                pb.CompletedItem(node_id="each", item=4, items=4),
                pb.CompletedItem(node_id="each", item=-1, items=4),
                pb.CompletedItem(node_id="each", item=1, items=4, output_json="{nope"),
                pb.CompletedItem(node_id="each", item=2, items=4, output_json="2"),
                pb.CompletedItem(node_id="each", item=2, items=4, output_json="2"),
                pb.CompletedItem(node_id="each", item=3, items=5, output_json="2"),
                pb.CompletedItem(node_id="zz", item=0, items=1, output_json="2"),
            ],
        )
    problems = [(p.field, p.message) for p in caught.value.problems]
    assert problems == [
        ("completed_items[0/0].node_id", "required"),
        ("completed_items[a/0]", "the node is listed as completed too"),
        ("completed_items[each/0].items", "must be 1 or more, got 0"),
        (
            "completed_items[each/4].item",
            "must be 0 or more and below the node's 4 items, got 4",
        ),
        (
            "completed_items[each/-1].item",
            "must be 0 or more and below the node's 4 items, got -1",
        ),
        (
            "completed_items[each/1].output_json",
            "not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2",
        ),
        ("completed_items[each/2]", "listed twice"),
        (
            "completed_items[each/3].items",
            "must be the same for every item of the node: 4 before, 5 here",
        ),
        ("completed_items[zz]", "no such node in w@1.0.0"),
    ]
    with pytest.raises(BadRequest) as caught:
        order(completed_items=[pb.CompletedItem(node_id="a", item=0, items=1, output_json="1")])
    assert [(p.field, p.message) for p in caught.value.problems] == [
        ("completed_items[a]", "a lua node without foreach")
    ]


def test_an_item_both_done_and_waiting_is_refused() -> None:
    spec = json.dumps(
        {
            "id": "w",
            "version": "1.0.0",
            "nodes": [{"id": "each", "foreach": [1, 2], "workflow": {"id": "c", "version": "1"}}],
        }
    )
    with pytest.raises(BadRequest) as caught:
        order(
            spec,
            waiting=[pb.WaitingNode(node_id="each", item=1, started_at=5.0)],
            completed_items=[pb.CompletedItem(node_id="each", item=1, items=2, output_json="1")],
        )
    assert [(p.field, p.message) for p in caught.value.problems] == [
        ("completed_items[each/1]", "the item is listed as waiting too")
    ]


def test_a_refusal_of_completed_items_is_invalid_argument_naming_the_field() -> None:
    with pytest.raises(BadRequest) as caught:
        order(
            completed=[pb.CompletedNode(node_id="a", output_json="1")],
            completed_items=[pb.CompletedItem(node_id="each", item=4, items=4)],
        )
    status = wire.grpc_status(caught.value)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    details = dict(status.trailing_metadata)["grpc-status-details-bin"]
    assert isinstance(details, bytes)
    assert wire.field_violations(status_pb2.Status.FromString(details)) == [
        (
            "completed_items[each/4].item",
            "must be 0 or more and below the node's 4 items, got 4",
        )
    ]


# -- the orchestrator's side ------------------------------------------------------------------


def _event(seq: int, kind: str, node: str | None = None, **data: Any) -> JSONObject:
    return {
        "seq": seq,
        "time": "2026-01-01T00:00:00.000Z",
        "type": kind,
        "node_id": node,
        "attempt": 1 if node else None,
        "data": data,
    }


def test_a_resume_carries_the_items_told_and_the_engine_reads_them_back() -> None:
    events = [
        _event(1, "execution.started"),
        _event(2, "node.started", "a"),
        _event(3, "node.succeeded", "a", output=1),
        _event(4, "node.started", "each", items=4),
        _event(5, "node.progress", "each", done=1, items=4, outputs={"2": {"v": "c"}}),
        _event(6, "node.progress", "each", done=2, items=4, outputs={"0": None}),
    ]
    point = resume_point(events)
    assert point.checkpoints == [Checkpoint("a", 1, 1)]
    assert point.items_done == {"each": ItemsDone(4, {2: {"v": "c"}, 0: None})}
    ticket = RunTicket(
        execution_id="e1",
        workflow_id="w",
        version="1.0.0",
        spec_json=EACH,
        inputs={},
        status="running",
        checkpoints=point.checkpoints,
        next_seq=7,
        items_done=point.items_done,
    )
    request = execute_request(ticket)
    assert [c.node_id for c in request.completed] == ["a"]  # a node under way has not ended
    assert [(c.node_id, c.item, c.items, c.output_json) for c in request.completed_items] == [
        ("each", 0, 4, "null"),
        ("each", 2, 4, '{"v":"c"}'),
    ]
    got = wire.run_order(request, spec_from_request, check_inputs)
    assert got.items_done["each"] == sch.ItemsDone(4, {0: None, 2: {"v": "c"}}, size=4 + 9)
