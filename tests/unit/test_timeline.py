"""Folding an execution's events into node states, checkpoints and row changes."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.timeline import (
    Checkpoint,
    checkpoints,
    fold_nodes,
    node_order,
    nodes_done,
    progress,
    resume_point,
    retry_keeps,
    summarize,
)

ORDER = ("a", "b", "c")


def event(seq: int, kind: str, node: str | None = None, attempt: int = 1, **data: Any) -> Any:
    return {
        "seq": seq,
        "time": f"t{seq}",
        "type": kind,
        "severity": "info",
        "workflow_id": "wf",
        "version": "1.0.0",
        "execution_id": "e1",
        "node_id": node,
        "engine_id": f"engine-{seq}" if node else None,
        "attempt": attempt if node else None,
        "data": data,
    }


def test_nodes_without_events_are_pending_in_workflow_order() -> None:
    nodes = fold_nodes(ORDER, [event(1, "execution.queued")])
    assert list(nodes) == ["a", "b", "c"]
    assert nodes["a"] == {
        "status": "pending",
        "output": None,
        "error": None,
        "attempts": 0,
        "started_at": None,
        "finished_at": None,
        "engine_id": None,
    }
    assert nodes_done(nodes) == 0


def test_a_node_runs_retries_and_succeeds() -> None:
    nodes = fold_nodes(
        ORDER,
        [
            event(2, "node.started", "a"),
            event(3, "node.retrying", "a", error="boom"),
            event(4, "node.started", "a", attempt=2),
            event(5, "node.succeeded", "a", attempt=2, output={"v": 2**40}),
            event(6, "node.log", "a", attempt=9, message="late"),
        ],
    )
    assert nodes["a"] == {
        "status": "succeeded",
        "output": {"v": 2**40},
        "error": None,
        "attempts": 2,
        "started_at": "t2",
        "finished_at": "t5",
        "engine_id": "engine-5",
    }
    retrying = fold_nodes(
        ORDER, [event(2, "node.started", "a"), event(3, "node.retrying", "a", error="x")]
    )
    assert retrying["a"]["status"] == "running" and retrying["a"]["error"] == "x"


def test_the_first_end_of_a_node_is_its_end() -> None:
    nodes = fold_nodes(
        ORDER,
        [
            event(2, "node.started", "a"),
            event(3, "node.failed", "a", error="boom (line 1)"),
            event(4, "node.started", "a", attempt=2),
            event(5, "node.succeeded", "a", attempt=2, output=1),
            event(6, "node.skipped", "b", reason="when was false"),
            event(7, "node.started", "zz"),  # not in the workflow: ignored
        ],
    )
    assert nodes["a"]["status"] == "failed" and nodes["a"]["error"] == "boom (line 1)"
    assert nodes["a"]["attempts"] == 1 and nodes["a"]["output"] is None
    assert nodes["b"]["status"] == "skipped" and nodes["b"]["error"] == "when was false"
    assert "zz" not in nodes


def test_an_execution_that_fails_ends_the_nodes_it_never_reached() -> None:
    nodes = fold_nodes(
        ORDER,
        [
            event(2, "node.started", "a"),
            event(3, "node.succeeded", "a", output=1),
            event(4, "node.started", "b"),
            event(5, "node.retrying", "b", error="flaky"),
            event(6, "execution.timed_out", error="timeout"),
            event(7, "node.succeeded", "b", output=2),  # after the end: too late
            event(8, "execution.failed"),
        ],
    )
    assert [n["status"] for n in nodes.values()] == ["succeeded", "cancelled", "cancelled"]
    # the run's own reason, as the local runner tells it; a generic one when it gave none
    assert nodes["b"]["error"] == "flaky" and nodes["c"]["error"] == "timeout"
    assert nodes["c"]["finished_at"] == "t6"
    bare = fold_nodes(ORDER, [event(2, "execution.cancelled")])
    assert bare["a"]["error"] == "execution cancelled"
    assert nodes_done(nodes) == 3
    done = fold_nodes(ORDER, [event(2, "node.started", "a"), event(3, "execution.succeeded")])
    assert done["a"]["status"] == "running"  # a success leaves the story as it is


def test_checkpoints_are_first_ends_with_their_attempts() -> None:
    found = checkpoints(
        [
            event(2, "node.started", "b"),
            event(3, "node.retrying", "b", error="x"),
            event(4, "node.started", "b", attempt=2),
            event(5, "node.succeeded", "b", attempt=2, output=[1, 2]),
            event(6, "node.failed", "a", error="boom"),
            event(7, "node.succeeded", "a", output=1),  # a failed first: that is its end
            event(8, "node.skipped", "c", attempt=0, reason="when 'x' is false"),
            event(9, "node.blocked", "d", attempt=0, error="upstream node 'a' did not succeed"),
            event(10, "node.started", "e"),
            event(11, "node.cancelled", "e", error="stop"),  # ends a run: never resumed
        ]
    )
    assert [(c.node_id, c.status, c.output, c.attempts, c.error) for c in found] == [
        ("b", "succeeded", [1, 2], 2, None),
        ("a", "failed", None, 1, "boom"),
        ("c", "skipped", None, 0, "when 'x' is false"),
        ("d", "blocked", None, 0, "upstream node 'a' did not succeed"),
    ]
    restored = checkpoints([{"type": "node.succeeded", "node_id": "a", "data": {"output": 3}}])
    assert restored[0].attempts == 1  # no attempt on record counts as one


def test_a_resume_point_has_sleeps_under_way_since_their_first_start() -> None:
    def at(e: Any, time: str) -> Any:
        return {**e, "time": time}

    point = resume_point(
        [
            at(event(1, "execution.started"), "2024-05-01T10:00:00.000Z"),
            at(event(2, "node.started", "nap", sleep_s=15.0), "2024-05-01T10:00:01.250Z"),
            at(event(3, "node.started", "short", sleep_s=1.0), "2024-05-01T10:00:01.300Z"),
            at(
                event(4, "node.succeeded", "short", output={"slept_s": 1.0}), "2024-05-01T10:00:02Z"
            ),
            at(event(5, "node.started", "lua"), "2024-05-01T10:00:03.000Z"),
            # the engine died; the run resumed elsewhere, and that engine died too
            at(event(6, "execution.started", resumed=["short"]), "2024-05-01T10:00:05.000Z"),
            at(
                event(7, "node.started", "nap", sleep_s=15.0, resumed=True, remaining_s=11.0),
                "2024-05-01T10:00:05.001Z",
            ),
            event(8, "node.started", "odd", sleep_s=2.0),  # a time that is not one: started over
        ]
    )
    first = 1714557600.0  # 2024-05-01T10:00:00Z
    assert point.sleeping == {"nap": first + 1.25}
    assert point.started_at == first
    assert [c.node_id for c in point.checkpoints] == ["short"]
    assert resume_point([event(1, "execution.queued")]) == resume_point([])


def test_a_resume_point_counts_failed_attempts_of_nodes_not_ended() -> None:
    point = resume_point(
        [
            event(2, "node.started", "a"),
            event(3, "node.retrying", "a", attempt=1, error="x"),
            event(4, "node.started", "a", attempt=2),
            event(5, "node.retrying", "a", attempt=2, error="x"),
            event(6, "node.started", "a", attempt=3),  # the engine died during attempt 3
            event(7, "node.started", "each", items=2),
            event(8, "node.retrying", "each", attempt=1, item=1, error="x"),
            event(9, "node.started", "done"),
            event(10, "node.retrying", "done", attempt=1, error="x"),
            event(11, "node.succeeded", "done", attempt=2, output=1),
        ]
    )
    assert point.retried == {("a", None): 2, ("each", 1): 1}
    assert [c.node_id for c in point.checkpoints] == ["done"]


def test_a_resume_point_has_sub_workflow_attempts_waiting_since_they_first_asked() -> None:
    first = 1714557600.0  # 2024-05-01T10:00:00Z

    def at(seconds: float, e: Any) -> Any:
        return {**e, "time": f"2024-05-01T10:00:{seconds:06.3f}Z"}

    def asked(seq: int, node: str, attempt: int = 1, **item: int) -> Any:
        return event(seq, "subworkflow.requested", node, attempt, workflow_id="kid", **item)

    point = resume_point(
        [
            at(0, event(1, "execution.started")),
            at(1, event(2, "node.started", "sub")),
            at(1.25, asked(3, "sub")),
            at(1.5, event(4, "subworkflow.started", "sub", child_execution_id="c1")),
            # a foreach node: item 0 waits, item 1 was answered, item 2 failed and retries
            at(2, event(5, "node.started", "each", items=3)),
            at(2.1, asked(6, "each", item=0)),
            at(2.2, asked(7, "each", item=1)),
            at(2.3, asked(8, "each", item=2)),
            at(3, event(9, "subworkflow.finished", "each", item=1, status="succeeded")),
            at(4, event(10, "node.retrying", "each", item=2, error="timed out after 2s")),
            # attempt 2 of item 2 has not asked yet: it waits afresh when it does
            # a node whose first attempt failed, and whose second waits
            at(5, asked(11, "again")),
            at(6, event(12, "node.retrying", "again", error="child failed")),
            at(7, event(13, "node.started", "again", attempt=2, retry=True)),
            at(7.5, asked(14, "again", attempt=2)),
            # one that ended waits no more
            at(8, asked(15, "done")),
            at(9, event(16, "node.succeeded", "done", output={})),
            # the engine died; the one the run resumed on asked again, and died too
            at(10, event(17, "execution.started")),
            at(10.5, asked(18, "sub")),
            at(10.6, asked(19, "each", item=0)),
            at(10.7, asked(20, "again", attempt=2)),
            event(21, "subworkflow.requested", "odd"),  # a time that is not one: not counted
        ]
    )
    assert point.waiting == {
        ("sub", None, 1): first + 1.25,
        ("each", 0, 1): first + 2.1,
        ("again", None, 2): first + 7.5,
    }
    assert point.retried == {("each", 2): 1, ("again", None): 1}
    assert point.sleeping == {}
    assert resume_point([]).waiting == {}


def test_a_batch_summary_has_its_seq_range_start_end_and_node_ends() -> None:
    summary = summarize(
        [
            event(2, "execution.started"),
            event(3, "node.succeeded", "a"),
            event(4, "node.blocked", "b"),
            event(5, "execution.partial", error="b blocked", outputs={"a": 1}),
            event(6, "execution.failed", error="later"),
        ]
    )
    assert (summary.first_seq, summary.last_seq) == (2, 6)
    assert summary.started_at == "t2" and summary.nodes_done == 2
    assert summary.end == ("partial", {"a": 1}, "b blocked", "t5")
    quiet = summarize([event(7, "node.started", "c")])
    assert quiet.end is None and quiet.started_at is None and quiet.nodes_done == 0
    assert summarize([event(8, "execution.cancelled")]).end == ("cancelled", {}, None, "t8")


def test_progress() -> None:
    assert progress("running", 1, 3) == 33
    assert progress("running", 5, 3) == 100  # a node counted twice after a failover
    assert progress("failed", 1, 3) == 100
    assert progress("queued", 0, 0) == 0


def test_node_order_is_the_specs_topological_order() -> None:
    doc = {
        "id": "wf",
        "nodes": [
            {"id": "c", "depends_on": ["b"]},
            {"id": "a"},
            {"id": "b", "depends_on": ["a"]},
        ],
    }
    assert node_order(doc) == ("a", "b", "c")
    assert node_order(None) == ()


@settings(deadline=None)  # an example a loaded machine holds up is no failure
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(["started", "retrying", "succeeded", "failed", "skipped", "log"]),
        ),
        max_size=30,
    )
)
def test_a_node_never_leaves_its_end(moves: list[tuple[str, str]]) -> None:
    events = [event(i + 2, f"node.{what}", node) for i, (node, what) in enumerate(moves)]
    for cut in range(len(events) + 1):
        before = fold_nodes(ORDER, events[:cut])
        after = fold_nodes(ORDER, events)
        for node_id, node in before.items():
            if node["status"] not in ("pending", "running"):
                assert after[node_id] == node


def test_a_node_that_never_started_ran_on_no_engine() -> None:
    from orchestrator.timeline import fold_nodes

    events = [
        {
            "seq": 1,
            "type": "node.started",
            "node_id": "a",
            "engine_id": "e-1",
            "attempt": 1,
            "time": "t1",
            "data": {},
        },
        {
            "seq": 2,
            "type": "node.failed",
            "node_id": "a",
            "engine_id": "e-1",
            "attempt": 1,
            "time": "t2",
            "data": {"error": "boom"},
        },
        {
            "seq": 3,
            "type": "node.blocked",
            "node_id": "b",
            "engine_id": "e-1",
            "time": "t2",
            "data": {"error": "upstream failed"},
        },
    ]
    nodes = fold_nodes(["a", "b"], events)
    assert nodes["a"]["engine_id"] == "e-1"
    assert nodes["b"]["status"] == "blocked" and nodes["b"]["engine_id"] is None


def _ends(**statuses: str) -> list[Checkpoint]:
    return [
        Checkpoint(node, f"out-{node}" if status == "succeeded" else None, 1, status)
        for node, status in statuses.items()
    ]


def test_a_retry_keeps_what_succeeded_on_grounds_that_hold_again() -> None:
    # a -> gate -> last; gate -> alert (one_failed); a -> maybe (when: false) -> join
    # (none_failed); side alone
    deps = {
        "a": (),
        "side": (),
        "gate": ("a",),
        "alert": ("gate",),
        "last": ("gate", "side"),
        "maybe": ("a",),
        "join": ("maybe",),
        "after_join": ("join",),
    }
    order = ["a", "side", "gate", "alert", "last", "maybe", "join", "after_join"]
    ended = _ends(
        a="succeeded",
        side="succeeded",
        gate="failed",
        alert="succeeded",  # ran because gate failed: not once gate runs again
        last="blocked",
        maybe="skipped",  # skips again: its when sees the same results
        join="succeeded",
        after_join="succeeded",
    )
    kept = retry_keeps(order, deps, ended)
    assert [(c.node_id, c.output) for c in kept] == [
        ("a", "out-a"),
        ("side", "out-side"),
        ("join", "out-join"),
        ("after_join", "out-after_join"),
    ]
    # a node whose dependency was cut short (cancelled, never reached) runs again, and so
    # does what follows it
    ended = _ends(a="succeeded", gate="succeeded", alert="skipped", side="failed")
    kept = retry_keeps(order, deps, ended)
    assert [c.node_id for c in kept] == ["a", "gate"]
    assert retry_keeps(order, deps, []) == []
