"""Ends a run comes to itself while tasks of it are out, with ``stop_first``: the end waits for
``TasksStopped``, so that what the stopped tasks logged comes before it, and nothing starts
meanwhile."""

from __future__ import annotations

from engine.core import scheduler as sch
from tests.unit.driving import Driver, lua, spec


def stops(out: list[sch.Instruction]) -> list[str | None]:
    return [ins.node_id for ins in out if isinstance(ins, sch.StopTasks)]


def test_a_fail_fast_end_waits_for_the_running_tasks_to_stop() -> None:
    wf = spec([lua("a"), lua("b"), lua("c", "a", trigger_rule="all_done")], fail_fast=True)
    d = Driver(wf, stop_first=True).start()
    task = d.tasks.pop(("a", None))
    out = d.feed(sch.TaskFailed("a", None, task.attempt, "fatal", d.now))
    assert stops(out) == [None]
    assert d.finish is None and d.status("b") == "running"
    assert d.started_order == ["a", "b"]  # c, which runs whatever a did, does not start
    d.feed(sch.TaskLogged("b", 1, "info", "still here", d.now))
    d.feed(sch.TasksStopped(None, d.now))
    assert ("b", None) in d.cancelled
    assert d.types() == [
        "execution.started",
        "node.started",
        "node.started",
        "node.failed",
        "node.log",
        "node.cancelled",
        "execution.failed",
    ]
    assert d.finish is not None and d.finish.error == (
        "node 'a' failed and fail_fast is set: fatal"
    )
    assert d.status("c") == "cancelled"


def test_what_a_task_brings_back_while_the_run_stops_changes_nothing() -> None:
    # fail_fast cancels the rest: a task that ends while the run waits for its stopped
    # scripts (or a sleep, or a child) is cancelled with it, whatever it returned
    wf = spec([lua("a"), lua("b"), lua("c")], fail_fast=True)
    d = Driver(wf, stop_first=True).start()
    d.fail("a")
    d.succeed("b", {"x": 1})
    d.fail("c")
    assert d.finish is None, "the run ends when its stop is done, not when its nodes are"
    d.feed(sch.TasksStopped(None, d.now))
    assert (d.status("b"), d.status("c")) == ("cancelled", "cancelled")
    assert d.finish is not None and d.finish.status == "failed"
    assert d.finish.outputs == {}


def test_a_sleep_that_ends_while_the_run_stops_is_cancelled_with_it() -> None:
    # the sleep's timer fires while the run waits for its stopped script: before, the sleep
    # succeeded into the failed run's outputs
    wf = spec([lua("a"), lua("b"), {"id": "nap", "sleep": "1s"}], fail_fast=True)
    d = Driver(wf, stop_first=True).start()
    d.fail("a")
    d.advance(2.0)  # past the sleep's end, b not yet stopped
    assert d.finish is None and d.status("nap") != "succeeded"
    d.feed(sch.TasksStopped(None, d.now))
    assert (d.status("b"), d.status("nap")) == ("cancelled", "cancelled")
    assert "node.succeeded" not in d.types()
    assert d.finish is not None and d.finish.status == "failed"
    assert d.finish.outputs == {}


def test_a_foreach_node_failed_by_an_item_ends_once_its_other_items_stopped() -> None:
    wf = spec(
        [
            lua("each", foreach="{{ inputs.items }}", concurrency=2),
            lua("after", "each", trigger_rule="all_done"),
        ]
    )
    d = Driver(wf, {"items": [1, 2, 3, 4]}, stop_first=True).start()
    task = d.tasks.pop(("each", 0))
    out = d.feed(sch.TaskFailed("each", 0, task.attempt, "boom", d.now))
    assert stops(out) == ["each"]
    assert d.status("each") == "running"
    d.succeed("each", item=1)  # came back before it saw its stop: its node fails all the same
    assert ("each", 2) not in d.tasks, "no more items start once one failed"
    d.feed(sch.TaskLogged("each", 1, "info", "item 1 was here", d.now, item=1))
    d.feed(sch.TasksStopped("each", d.now))
    assert d.status("each") == "failed"
    assert d.run.record("each").error == "item 0: boom"
    assert d.types("each") == ["node.started", "node.log", "node.failed"]
    assert d.running() == {"after"}
    d.succeed("after")
    assert d.finish is not None and d.finish.status == "partial"


def test_a_foreach_node_failing_under_fail_fast_stops_the_whole_run_and_ends_failed() -> None:
    wf = spec([lua("each", foreach="{{ inputs.items }}"), lua("other")], fail_fast=True)
    d = Driver(wf, {"items": [1, 2]}, stop_first=True).start()
    task = d.tasks.pop(("each", 0))
    out = d.feed(sch.TaskFailed("each", 0, task.attempt, "boom", d.now))
    assert stops(out) == [None]
    d.feed(sch.TasksStopped(None, d.now))
    assert d.status("each") == "failed" and d.status("other") == "cancelled"
    assert ("each", 1) in d.cancelled and ("other", None) in d.cancelled
    assert d.finish is not None
    assert d.finish.error == "node 'each' failed and fail_fast is set: item 0: boom"


def test_a_cancel_while_a_foreach_node_waits_for_its_items_ends_it_failed() -> None:
    wf = spec([lua("each", foreach="{{ inputs.items }}")])
    d = Driver(wf, {"items": [1, 2]}, stop_first=True).start()
    d.fail("each", item=0)
    d.feed(sch.CancelRequested(d.now, "enough"))
    assert d.status("each") == "failed"
    assert d.finish is not None and d.finish.status == "cancelled"
    d.feed(sch.TasksStopped("each", d.now))  # late: changes nothing
    assert d.types("each") == ["node.started", "node.failed"]


def test_a_failure_with_nothing_else_running_ends_at_once_and_without_stop_first() -> None:
    wf = spec([lua("a"), lua("b")], fail_fast=True)
    d = Driver(wf).start()
    d.fail("a")
    assert d.finish is not None  # the one-step end of a run made without stop_first
    one = spec([lua("each", foreach="{{ inputs.items }}")])
    d = Driver(one, {"items": [1]}, stop_first=True).start()
    d.fail("each", item=0)
    assert d.status("each") == "failed" and d.finish is not None
