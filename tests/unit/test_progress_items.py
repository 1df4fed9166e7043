"""What node.progress events make of a run's story: a running foreach node's items in its
record and in the run's progress, the items a resume carries, and how dagctl and
``python -m engine run`` show them."""

from __future__ import annotations

import io
from typing import Any

from engine.cli import ProgressPrinter
from engine.core.events import Event
from engine.core.values import JSONObject
from orchestrator.dagctl.showing import ProgressLines, RunProgress, event_message
from orchestrator.timeline import (
    Checkpoint,
    ItemsDone,
    checkpoints,
    fold_nodes,
    nodes_done,
    progress,
    progress_counts,
    resume_point,
)
from tests.component.monitor_events import monitor_event

EID = "e1"


def ev(seq: int, kind: str, node: str | None = None, **data: Any) -> JSONObject:
    event = monitor_event(
        EID, seq, kind, node_id=node, time=f"2027-01-15T08:00:{seq:02d}.000Z", data=data
    )
    return {**event, "workflow_id": "w", "severity": "debug" if kind == "node.progress" else "info"}


def told(seq: int, done: int, items: int, outputs: dict[str, Any]) -> JSONObject:
    return ev(seq, "node.progress", "each", done=done, items=items, outputs=outputs)


# -- the fold -------------------------------------------------------------------------------


def test_a_running_foreach_node_counts_for_its_share_of_items() -> None:
    events = [
        ev(1, "execution.started"),
        ev(2, "node.started", "each", items=1000),
        told(3, 300, 1000, {"0": 1}),
        told(4, 450, 1000, {"1": 1}),
    ]
    nodes = fold_nodes(["each"], events)
    assert nodes["each"]["status"] == "running"
    assert nodes["each"]["items_done"] == 450 and nodes["each"]["items_total"] == 1000
    assert progress("running", nodes_done(nodes), 1) == 45  # not 0
    two = fold_nodes(["each", "other"], events)
    assert "items_done" not in two["other"]
    assert progress("running", nodes_done(two), 2) == 22
    ended = fold_nodes(["each"], [*events, ev(5, "node.succeeded", "each", output=[])])
    assert ended["each"]["items_done"] == 1000
    assert progress("running", nodes_done(ended), 1) == 100
    # a bare count reads as it always did
    assert progress("running", 1, 2) == 50 and progress("succeeded", 0, 2) == 100


def test_the_counts_are_read_without_decoding_the_outputs() -> None:
    assert progress_counts('{"done":450,"items":1000,"outputs":{"3":[1,2]}}') == {
        "done": 450,
        "items": 1000,
    }
    # written otherwise: decoded whole
    assert progress_counts('{"items": 4, "done": 2, "outputs": {}}') == {
        "items": 4,
        "done": 2,
        "outputs": {},
    }


# -- the resume -----------------------------------------------------------------------------


def test_a_resume_gathers_the_items_of_every_progress_of_a_node_not_ended() -> None:
    events = [
        ev(1, "execution.started"),
        ev(2, "node.started", "each", items=4),
        told(3, 1, 4, {"2": "c"}),
        # the run moved: another engine told more
        told(4, 3, 4, {"0": "a", "3": {"d": None}}),
        told(5, 4, 4, {"-1": "x", "9": "x", "1٣": "x", " 1": "x"}),  # none of them an item
        ev(6, "node.started", "other"),
        ev(7, "node.progress", "other", done=1, items=2, outputs={"0": 1}),
        ev(8, "node.failed", "other", error="item 1: boom"),
    ]
    point = resume_point(events)
    assert point.checkpoints == [Checkpoint("other", None, 1, "failed", "item 1: boom")]
    assert point.items_done == {"each": ItemsDone(4, {2: "c", 0: "a", 3: {"d": None}})}
    assert checkpoints(events) == point.checkpoints  # the ended ones


def test_a_wait_of_an_item_carried_is_not_carried() -> None:
    events = [
        ev(1, "node.started", "each", items=2),
        {**ev(2, "subworkflow.requested", "each", item=1), "attempt": 1},
        told(3, 1, 2, {"1": "child's outputs"}),
    ]
    assert resume_point(events).waiting == {}


# -- how it is shown ------------------------------------------------------------------------


def test_dagctl_shows_the_items_done_in_its_live_progress() -> None:
    progress_ = RunProgress(EID)
    progress_.sync({"status": "running", "nodes": {"each": {"status": "pending"}}})
    progress_.apply(ev(1, "node.started", "each", items=1000))
    event = told(2, 450, 1000, {"0": "a"})
    assert event_message(event) == "450/1000 items"
    progress_.apply(event)
    assert progress_.nodes["each"].detail == "450/1000 items"
    assert progress_.filled() == 0.45
    older = progress_.sync(
        {"status": "running", "nodes": {"each": {"status": "running", "items_done": 300,
                                                  "items_total": 1000}}}
    )  # fmt: skip
    assert older == [] and progress_.filled() == 0.45  # a document behind takes nothing back
    progress_.sync(
        {"status": "running", "nodes": {"each": {"status": "running", "items_done": 700,
                                                  "items_total": 1000}}}
    )  # fmt: skip
    assert progress_.filled() == 0.7
    out = io.StringIO()
    ProgressLines(progress_, out).event(told(3, 800, 1000, {}))
    assert out.getvalue().split()[-4:] == ["each", "progress", "800/1000", "items"]


def test_engine_run_prints_the_items_done() -> None:
    out = io.StringIO()
    printer = ProgressPrinter(out, 4)
    data: JSONObject = {"done": 12, "items": 40, "outputs": {"3": "x" * 500}}
    printer(Event(7, 100.0, "node.progress", "debug", "w", "1.0.0", EID, "each", None, 1, data))
    assert out.getvalue().split() == ["0.000s", "each", "progress", "12/40", "items"]


def test_dagctl_says_what_a_resumed_foreach_node_kept() -> None:
    # before: a bare "started", the items the engine before had done unsaid
    resumed = ev(3, "node.started", "each", items=100, resumed_items=84)
    assert event_message(resumed) == "resumed, 84 of 100 items done already"
    assert event_message(ev(2, "node.started", "each", items=100)) == ""
