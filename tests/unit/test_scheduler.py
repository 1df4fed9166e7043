"""Every scheduler rule, driven with a fake clock; invariants are checked after each step."""

from __future__ import annotations

from typing import Any

import pytest

from engine.core import scheduler as sch
from engine.core.errors import InvalidTransition
from tests.unit.driving import Driver, lua, spec


def test_linear_chain_runs_in_order_and_outputs_the_sink() -> None:
    d = Driver(spec([lua("a"), lua("b", "a"), lua("c", "b")])).start()
    assert d.running() == {"a"}
    d.succeed("a", {"x": 1})
    assert d.running() == {"b"}
    d.succeed("b", {"x": 2})
    d.succeed("c", {"x": 3})
    assert d.finish == sch.Finish("succeeded", {"c": {"x": 3}}, None)
    assert d.types()[0] == "execution.started"
    assert d.types()[-1] == "execution.succeeded"
    assert d.run.progress == 100


def test_diamond_branches_run_together_and_join_waits_for_both() -> None:
    d = Driver(spec([lua("a"), lua("b", "a"), lua("c", "a"), lua("d", "b", "c")])).start()
    d.succeed("a")
    assert d.running() == {"b", "c"}
    d.succeed("b")
    assert d.running() == {"c"}, "join must wait for its second dependency"
    d.succeed("c")
    assert d.running() == {"d"}


def test_concurrency_bounds_tasks_in_flight() -> None:
    d = Driver(spec([lua(f"n{i}") for i in range(5)], concurrency=2)).start()
    assert len(d.tasks) == 2
    d.succeed("n0")
    assert len(d.tasks) == 2
    for n in ("n1", "n2", "n3", "n4"):
        if (n, None) in d.tasks:
            d.succeed(n)
    while d.tasks:
        d.succeed(next(iter(d.tasks))[0])
    assert d.finish is not None and d.finish.status == "succeeded"


def test_failure_blocks_dependents_and_independent_branch_goes_on() -> None:
    d = Driver(spec([lua("a"), lua("bad", "a"), lua("after_bad", "bad"), lua("ok", "a")])).start()
    d.succeed("a")
    d.fail("bad", "kaput")
    assert d.status("after_bad") == "blocked"
    assert d.run.record("after_bad").error == "upstream node 'bad' did not succeed"
    assert d.running() == {"ok"}
    d.succeed("ok", {"fine": True})
    assert d.finish is not None
    assert d.finish.status == "partial"
    assert d.finish.outputs == {"ok": {"fine": True}}
    assert d.finish.error is not None and "'bad' failed: kaput" in d.finish.error


def test_blocked_propagates_down_a_long_chain_without_recursion() -> None:
    nodes = [lua("n0")] + [lua(f"n{i}", f"n{i - 1}") for i in range(1, 3000)]
    d = Driver(spec(nodes)).start()
    d.fail("n0")
    assert d.status("n2999") == "blocked"
    assert d.finish is not None and d.finish.status == "failed"


def test_all_success_skips_when_an_upstream_was_skipped() -> None:
    d = Driver(spec([lua("a", when="false"), lua("b", "a"), lua("c", "b")])).start()
    d.condition("a", False)
    assert [d.status(n) for n in "abc"] == ["skipped", "skipped", "skipped"]
    assert d.finish is not None and d.finish.status == "succeeded"


def test_none_failed_runs_after_a_skip_but_not_after_a_failure() -> None:
    wf = spec(
        [
            lua("s", when="false"),
            lua("f"),
            lua("after_skip", "s", trigger_rule="none_failed"),
            lua("after_fail", "f", trigger_rule="none_failed"),
        ]
    )
    d = Driver(wf).start()
    d.condition("s", False)
    assert "after_skip" in d.running()
    d.fail("f")
    assert d.status("after_fail") == "blocked"


def test_all_done_runs_after_failure() -> None:
    d = Driver(spec([lua("a"), lua("cleanup", "a", trigger_rule="all_done")])).start()
    d.fail("a")
    assert d.running() == {"cleanup"}
    d.succeed("cleanup")
    assert d.finish is not None and d.finish.status == "partial"


def test_one_failed_runs_only_when_something_failed() -> None:
    wf = spec(
        [
            lua("a"),
            lua("b"),
            lua("alert_a", "a", trigger_rule="one_failed"),
            lua("alert_b", "b", trigger_rule="one_failed"),
        ]
    )
    d = Driver(wf).start()
    d.fail("a")
    d.succeed("b")
    assert d.running() == {"alert_a"}
    assert d.status("alert_b") == "skipped"
    d.succeed("alert_a")
    assert d.finish is not None and d.finish.status == "partial"


def test_when_true_runs_false_skips_error_fails() -> None:
    wf = spec(
        [
            lua("a"),
            lua("yes", "a", when="true"),
            lua("no", "a", when="false"),
            lua("broken", "a", when="x.y"),
        ]
    )
    d = Driver(wf).start()
    d.succeed("a")
    assert sorted(d.conditions) == ["broken", "no", "yes"]
    d.condition("yes", True)
    d.condition("no", False)
    d.condition("broken", None, "attempt to index a nil value")
    assert "yes" in d.running()
    assert d.status("no") == "skipped"
    # the reason shows as the node's error, in the local runner's JSON as in the orchestrator's
    assert d.run.record("no").error == "when 'false' is false"
    assert [e.data for e in d.events if e.node_id == "no"] == [{"reason": "when 'false' is false"}]
    assert d.run.record("broken").error == "when: attempt to index a nil value"


def test_fail_fast_cancels_running_and_pending_nodes() -> None:
    wf = spec([lua("a"), lua("b"), lua("c", "b")], fail_fast=True)
    d = Driver(wf).start()
    d.fail("a", "fatal")
    assert ("b", None) in d.cancelled
    assert d.status("b") == "cancelled"
    assert d.status("c") == "cancelled"
    assert d.finish is not None and d.finish.status == "failed"
    assert "fail_fast" in (d.finish.error or "")


def test_retry_fixed_delay_then_success() -> None:
    wf = spec([lua("a", retry={"max_attempts": 3, "delay": "2s"})])
    d = Driver(wf).start()
    d.fail("a", "flaky")
    assert d.status("a") == "running"
    assert d.timers == {("retry", "a", None): 2.0}
    assert not d.tasks, "a retry waits for its timer and holds no slot"
    d.advance(1.9)
    assert not d.tasks
    d.advance(0.2)
    assert d.tasks[("a", None)].attempt == 2
    d.succeed("a", {"ok": 1})
    assert d.run.record("a").attempts == 2
    assert d.types("a") == ["node.started", "node.retrying", "node.started", "node.succeeded"]
    again = [e for e in d.events if e.type == "node.started"][1]
    assert (again.attempt, again.data) == (2, {"retry": True})


def test_retry_exponential_backoff_capped_by_max_delay() -> None:
    wf = spec(
        [
            lua(
                "a",
                retry={
                    "max_attempts": 5,
                    "backoff": "exponential",
                    "delay": "1s",
                    "max_delay": "3s",
                },
            )
        ]
    )
    d = Driver(wf).start()
    delays = []
    for _ in range(4):
        d.fail("a")
        delays.append(d.timers[("retry", "a", None)] - d.now)
        d.advance(10)
    assert delays == [1.0, 2.0, 3.0, 3.0]
    d.fail("a", "last")
    assert d.status("a") == "failed"
    assert d.run.record("a").attempts == 5


def test_retry_jitter_spreads_within_bounds() -> None:
    wf = spec([lua("a", retry={"max_attempts": 2, "delay": "10s", "jitter": 0.2})])
    low = Driver(wf, rand=lambda: 0.0).start()
    low.fail("a")
    high = Driver(wf, rand=lambda: 0.999999).start()
    high.fail("a")
    assert low.timers[("retry", "a", None)] == pytest.approx(8.0)
    assert high.timers[("retry", "a", None)] == pytest.approx(12.0, abs=1e-4)


def test_node_timeout_cancels_the_attempt_and_retries() -> None:
    wf = spec([lua("a", timeout="5s", retry={"max_attempts": 2, "delay": "1s"})])
    d = Driver(wf).start()
    first = d.tasks[("a", None)]
    d.advance(5)
    assert ("a", None) in d.cancelled
    assert d.types("a")[-1] == "node.retrying"
    # the late answer of the timed-out attempt is ignored
    d.feed(sch.TaskSucceeded("a", None, first.attempt, {"late": True}, d.now))
    assert d.status("a") == "running"
    d.advance(1)
    d.advance(5)
    assert d.status("a") == "failed"
    assert d.run.record("a").error == "timed out after 5s"


def test_run_timeout_ends_timed_out() -> None:
    d = Driver(spec([lua("a"), lua("b", "a")], timeout="10s")).start()
    d.advance(10)
    assert d.finish is not None and d.finish.status == "timed_out"
    assert d.status("a") == "cancelled" and d.status("b") == "cancelled"
    assert d.finish.error == "execution timed out after 10s"


def test_cancel_stops_running_tasks_and_ignores_later_news() -> None:
    d = Driver(spec([lua("a"), lua("b", "a")])).start()
    d.feed(sch.CancelRequested(d.now, "user asked"))
    assert d.cancelled == [("a", None)]
    assert d.finish is not None and d.finish.status == "cancelled"
    d.feed(sch.TaskSucceeded("a", None, 1, {}, d.now))
    assert d.status("a") == "cancelled"
    assert d.types().count("execution.cancelled") == 1


def test_nodes_a_run_never_reached_are_counted_in_its_end() -> None:
    # they end cancelled without an event each: the end says how many, for metrics
    d = Driver(spec([lua("a"), lua("b", "a"), lua("c", "b"), lua("d")])).start()
    d.succeed("d")
    d.feed(sch.CancelRequested(d.now, "user asked"))
    assert [(e.type, e.node_id) for e in d.events if e.type.endswith("cancelled")] == [
        ("node.cancelled", "a"),
        ("execution.cancelled", None),
    ]
    assert d.events[-1].data["unreached"] == 2  # b and c
    assert (d.status("b"), d.status("c")) == ("cancelled", "cancelled")
    plain = Driver(spec([lua("a")])).start()
    plain.succeed("a")
    assert "unreached" not in plain.events[-1].data


def test_sleep_node_is_a_timer_that_holds_no_slot() -> None:
    wf = spec([{"id": "wait", "sleep": "30s"}, lua("work")], concurrency=1)
    d = Driver(wf).start()
    assert d.running() == {"work"}, "the sleeping node must not take the only slot"
    assert d.status("wait") == "running"
    d.succeed("work")
    d.advance(30)
    assert d.status("wait") == "succeeded"
    assert d.finish is not None and d.finish.status == "succeeded"


def test_foreach_runs_one_task_per_item_and_keeps_item_order() -> None:
    wf = spec([lua("src"), lua("each", "src", foreach="{{ results.src.items }}", concurrency=2)])
    d = Driver(wf).start()
    d.succeed("src", {"items": ["a", "b", "c", "d"]})
    assert set(d.tasks) == {("each", 0), ("each", 1)}
    assert d.tasks[("each", 1)].ctx["item"] == "b" and d.tasks[("each", 1)].ctx["index"] == 1
    d.succeed("each", {"i": 1}, item=1)
    assert set(d.tasks) == {("each", 0), ("each", 2)}
    for i in (2, 0):
        d.succeed("each", {"i": i}, item=i)
    d.succeed("each", {"i": 3}, item=3)
    assert d.run.record("each").output == [{"i": 0}, {"i": 1}, {"i": 2}, {"i": 3}]
    assert d.types("each").count("node.started") == 1


def test_foreach_item_retries_then_failure_cancels_siblings() -> None:
    wf = spec([lua("each", foreach=[1, 2, 3], retry={"max_attempts": 2, "delay": "1s"})])
    d = Driver(wf).start()
    d.fail("each", "bad item", item=1)
    d.advance(1)
    assert d.tasks[("each", 1)].attempt == 2
    d.fail("each", "still bad", item=1)
    assert d.status("each") == "failed"
    assert d.run.record("each").error == "item 1: still bad"
    assert {("each", 0), ("each", 2)} <= set(d.cancelled)


def test_foreach_empty_list_succeeds_and_non_list_fails() -> None:
    wf = spec(
        [
            lua("src"),
            lua("empty", "src", foreach="{{ results.src.none }}"),
            lua("wrong", "src", foreach="{{ results.src.text }}"),
        ]
    )
    d = Driver(wf).start()
    d.succeed("src", {"none": [], "text": "abc"})
    assert d.run.record("empty").output == []
    assert d.run.record("wrong").error == "foreach must resolve to a list, got a string"


def test_resume_skips_completed_nodes_and_emits_no_start_for_them() -> None:
    wf = spec([lua("a"), lua("b", "a"), lua("c", "b")])
    d = Driver(wf, completed={"a": {"v": 1}, "b": {"v": 2}}).start()
    assert d.running() == {"c"}
    assert "node.started" not in d.types("a") + d.types("b")
    assert d.run.result_of("c", "b") == {"v": 2}
    d.succeed("c")
    assert d.started_order == ["c"]
    assert d.finish is not None and d.finish.status == "succeeded"


def test_resume_keeps_failed_blocked_and_skipped_ends_and_runs_none_of_them_again() -> None:
    wf = spec(
        [
            lua("f"),
            lua("blk", "f"),
            lua("skip", when="false"),
            lua("after_skip", "skip", trigger_rule="none_failed"),
            lua("alert", "f", trigger_rule="one_failed"),
            lua("free"),
        ]
    )
    d = Driver(
        wf,
        completed={"free": {"v": 1}},
        completed_attempts={"f": 3, "free": 1},
        ended={
            "f": ("failed", "boom"),
            "blk": ("blocked", "upstream node 'f' did not succeed"),
            "skip": ("skipped", "when 'false' is false"),
        },
    ).start()
    # what ended before stays as it ended, quietly; what depends on it goes on from there
    assert d.running() == {"after_skip", "alert"}
    assert d.conditions == []
    assert d.types("f") + d.types("blk") + d.types("skip") + d.types("free") == []
    assert d.status("f") == "failed" and d.run.record("f").error == "boom"
    assert d.run.record("f").attempts == 3
    assert d.status("blk") == "blocked" and d.status("skip") == "skipped"
    assert d.run.record("skip").error == "when 'false' is false"
    d.succeed("after_skip")
    d.succeed("alert")
    assert sorted(d.started_order) == ["after_skip", "alert"]
    assert d.finish is not None and d.finish.status == "partial"
    assert d.finish.error == "node 'f' failed: boom (and 1 blocked)"


def test_a_resumed_run_with_fail_fast_and_a_failed_node_ends_failed_at_once() -> None:
    wf = spec([lua("f"), lua("g"), lua("h", "g")], fail_fast=True)
    d = Driver(wf, ended={"f": ("failed", "boom")}).start()
    assert d.running() == set() and d.started_order == []
    assert d.finish is not None and d.finish.status == "failed"
    assert d.finish.error == "node 'f' failed and fail_fast is set: boom"
    assert d.status("g") == "cancelled" and d.status("h") == "cancelled"


def test_resume_counts_attempts_that_failed_before_against_the_retry_policy() -> None:
    retry = {"max_attempts": 3, "delay": "1s"}
    wf = spec(
        [
            lua("a", retry=retry),
            lua("each", foreach="{{ inputs.items }}", retry=retry),
        ]
    )
    d = Driver(wf, {"items": [10, 20]}, retried={("a", None): 2, ("each", 1): 1}).start()
    assert d.tasks[("a", None)].attempt == 3  # the last the policy allows
    assert d.tasks[("each", 0)].attempt == 1 and d.tasks[("each", 1)].attempt == 2
    assert d.tasks[("each", 1)].ctx["attempt"] == 2
    d.fail("a", "still broken")
    assert d.status("a") == "failed" and d.run.record("a").attempts == 3
    assert "node.retrying" not in d.types("a")
    d.fail("each", "flaky", item=1)
    assert d.timers[("retry", "each", 1)] == 1.0  # attempt 3 of 3 still to come
    d.advance(1)
    assert d.tasks[("each", 1)].attempt == 3


def test_a_foreach_item_retry_is_announced_like_a_node_retry() -> None:
    wf = spec([lua("each", foreach="{{ inputs.items }}", retry={"max_attempts": 2})])
    d = Driver(wf, {"items": ["x", "y"]}).start()
    d.fail("each", "flaky", item=1)
    retrying = next(e for e in d.events if e.type == "node.retrying")
    assert retrying.data == {"error": "flaky", "next_attempt": 2, "delay_s": 1.0, "item": 1}
    d.advance(1)
    d.succeed("each", item=0)
    d.succeed("each", item=1)
    assert d.types("each") == ["node.started", "node.retrying", "node.started", "node.succeeded"]
    again = [e for e in d.events if e.type == "node.started"][1]
    assert (again.attempt, again.data) == (2, {"retry": True, "item": 1})


def test_resume_refuses_ends_a_node_cannot_have_had() -> None:
    wf = spec([lua("a"), lua("b")])
    with pytest.raises(ValueError, match=r"ended in ways they cannot: a \(cancelled\)"):
        sch.Run(wf, {}, ended={"a": ("cancelled", "x")})
    with pytest.raises(ValueError, match=r"ended in ways they cannot: b \(failed\)"):
        sch.Run(wf, {}, completed={"b": 1}, ended={"b": ("failed", "x")})
    with pytest.raises(ValueError, match=r"resume names nodes not in t@1\.0\.0: zz"):
        sch.Run(wf, {}, ended={"zz": ("failed", "x")})


@pytest.mark.parametrize(
    "bad",
    [
        {"when": "error('nope')"},
        {"foreach": "{{ inputs.missing.key }}"},
        {"foreach": "{{ inputs.text }}"},
    ],
)
def test_fail_fast_applies_to_a_node_failed_by_its_when_or_foreach(bad: dict[str, Any]) -> None:
    wf = spec([lua("a", **bad), {"id": "b", "sleep": "2s"}], fail_fast=True)
    d = Driver(wf, {"text": "abc"}).start()
    if "when" in bad:
        d.condition("a", None, "nope")
    assert d.status("a") == "failed"
    assert d.finish is not None and d.finish.status == "failed"
    assert "fail_fast" in (d.finish.error or "")
    assert d.status("b") == "cancelled"


def test_results_only_expose_ancestors() -> None:
    wf = spec([lua("a"), lua("b"), lua("c", "a")])
    d = Driver(wf).start()
    d.succeed("a", {"x": 1})
    d.succeed("b", {"y": 2})
    assert d.run.result_of("c", "a") == {"x": 1}
    assert d.run.result_of("c", "b") is sch.MISSING


def test_declared_outputs_resolve_templates_and_null_for_failed_nodes() -> None:
    wf = spec(
        [lua("a"), lua("b")],
        outputs={"x": "{{ results.a.n }}", "y": "{{ results.b.n }}", "text": "n={{ results.a.n }}"},
    )
    d = Driver(wf).start()
    d.succeed("a", {"n": 7})
    d.fail("b")
    assert d.finish is not None
    assert d.finish.outputs == {"x": 7, "y": None, "text": "n=7"}


@pytest.mark.parametrize(
    ("template", "status", "error"),
    [
        # before: succeeded, with the output null and nothing said anywhere
        (
            "{{ results.a.cnt }}",
            "failed",
            "outputs.x: template '{{ results.a.cnt }}': results.a (an object) has no 'cnt'",
        ),
        ("{{ results.opt.v }}", "succeeded", None),  # a node skipped: its outputs are null
        ("{{ inputs.note }}", "succeeded", None),  # an input left out: an optional one
    ],
)
def test_an_output_a_succeeded_node_does_not_hold_fails_the_run_naming_it(
    template: str, status: str, error: str | None
) -> None:
    wf = spec(
        [lua("a"), lua("opt", when="false")],
        outputs={"count": "{{ results.a.count }}", "x": template},
    )
    d = Driver(wf).start()
    d.succeed("a", {"count": 3})
    d.condition("opt", False)
    assert d.finish is not None
    assert (d.finish.status, d.finish.outputs) == (status, {"count": 3, "x": None})
    assert d.finish.error == error
    [end] = [e for e in d.events if e.type == f"execution.{status}"]
    assert end.data.get("error") == error


def test_sub_workflow_inputs_are_resolved_when_the_task_starts() -> None:
    wf = spec(
        [
            lua("a"),
            {
                "id": "child",
                "depends_on": ["a"],
                "workflow": {"id": "other", "version": "^1"},
                "inputs": {"value": "{{ results.a.n }}", "label": "n is {{ results.a.n }}"},
            },
        ]
    )
    d = Driver(wf).start()
    d.succeed("a", {"n": 3})
    assert d.tasks[("child", None)].inputs == {"value": 3, "label": "n is 3"}


def test_progress_counts_terminal_nodes() -> None:
    d = Driver(spec([lua("a"), lua("b", "a"), lua("c", "b"), lua("e", "c")])).start()
    assert d.run.progress == 0
    d.succeed("a")
    assert d.run.progress == 25


def test_invalid_transition_names_node_and_states() -> None:
    d = Driver(spec([lua("a")])).start()
    d.succeed("a")
    with pytest.raises(
        InvalidTransition, match=r"node 'a': invalid transition succeeded -> running"
    ):
        d.run._transition(d.run.nodes["a"], "running")


def test_logs_become_node_log_events_with_severity() -> None:
    d = Driver(spec([lua("a")])).start()
    d.feed(sch.TaskLogged("a", 1, "warn", "careful", d.now))
    log = next(e for e in d.events if e.type == "node.log")
    assert log.severity == "warning" and log.data == {"level": "warn", "message": "careful"}
    d.feed(sch.TaskLogged("a", 1, "critical", "on fire", d.now))
    assert [e.severity for e in d.events if e.type == "node.log"] == ["warning", "critical"]


# -- resuming time already spent: sleeps and the whole-run timeout ----------------------------


def test_a_resumed_sleep_waits_only_what_is_left_and_keeps_its_first_start() -> None:
    wf = spec([{"id": "nap", "sleep": "15s"}, lua("after", "nap")])
    d = Driver(wf, sleeping={"nap": 97.0})
    d.now = 100.0  # the sleep began 3 s ago, on an engine that died
    d.start()
    started = [e for e in d.events if e.type == "node.started" and e.node_id == "nap"]
    assert len(started) == 1
    assert started[0].data == {"sleep_s": 15.0, "resumed": True, "remaining_s": 12.0}
    assert d.timers == {("sleep", "nap"): 112.0}
    assert d.run.record("nap").started_at == 97.0
    d.advance(11.9)
    assert d.status("nap") == "running" and d.running() == set()
    d.advance(0.1)
    assert d.status("nap") == "succeeded"
    assert d.run.record("nap").finished_at == 112.0
    assert d.running() == {"after"}
    succeeded = next(e for e in d.events if e.type == "node.succeeded" and e.node_id == "nap")
    assert succeeded.data == {"output": {"slept_s": 15.0}, "duration_ms": 15000.0}


def test_a_resumed_sleep_already_overdue_succeeds_at_once() -> None:
    wf = spec([{"id": "nap", "sleep": "15s"}, lua("after", "nap")])
    d = Driver(wf, sleeping={"nap": 50.0})
    d.now = 100.0  # the orchestrator was down longer than the sleep
    d.start()
    assert d.status("nap") == "succeeded", "an overdue sleep must not wait again"
    assert ("sleep", "nap") not in d.timers
    assert d.running() == {"after"}
    assert d.types("nap") == ["node.started", "node.succeeded"]
    assert d.events[1].data == {"sleep_s": 15.0, "resumed": True, "remaining_s": 0.0}
    record = d.run.record("nap")
    assert (record.started_at, record.finished_at, record.attempts) == (50.0, 100.0, 1)


def test_a_sleep_not_yet_begun_sleeps_in_full_beside_a_resumed_one() -> None:
    wf = spec(
        [{"id": "first", "sleep": "10s"}, {"id": "second", "sleep": "10s", "depends_on": ["first"]}]
    )
    d = Driver(wf, sleeping={"first": 96.0})
    d.now = 100.0
    d.start()
    d.advance(6)
    assert d.status("first") == "succeeded" and d.status("second") == "running"
    assert d.events[-1].data == {"sleep_s": 10.0}
    assert d.timers == {("sleep", "second"): 116.0}


def test_a_sleep_start_later_than_now_waits_no_longer_than_the_sleep() -> None:
    # another machine's clock ran ahead: the node never waits more than its sleep
    d = Driver(spec([{"id": "nap", "sleep": "10s"}]), sleeping={"nap": 105.0})
    d.now = 100.0
    d.start()
    assert d.timers == {("sleep", "nap"): 110.0}
    assert d.run.record("nap").started_at == 100.0


def test_resume_refuses_sleeping_nodes_that_are_not_unfinished_sleeps() -> None:
    wf = spec([lua("a"), {"id": "nap", "sleep": "1s"}])
    with pytest.raises(ValueError, match="not unfinished sleeps: a, nap"):
        sch.Run(wf, {}, completed={"nap": {}}, sleeping={"a": 1.0, "nap": 1.0})
    with pytest.raises(ValueError, match=r"resume names nodes not in t@1\.0\.0: ghost"):
        sch.Run(wf, {}, sleeping={"ghost": 1.0})


# -- resuming a sub-workflow node's wait: its timeout counts from its first start ---------------


def sub(node_id: str = "sub", *deps: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": node_id,
        "depends_on": list(deps),
        "workflow": {"id": "kid", "version": "^1"},
        "timeout": "10s",
        **extra,
    }


def test_a_resumed_sub_workflow_node_times_out_at_its_first_start_plus_its_timeout() -> None:
    d = Driver(spec([sub(), lua("after", "sub")]), sleeping={("sub", None, 1): 93.0})
    d.now = 100.0  # it began waiting on its child 7 s ago, on an engine that died
    d.start()
    task = d.tasks[("sub", None)]
    assert task.attempt == 1, "the same attempt, which takes up the same child"
    assert task.timeout == 3.0
    assert d.timers == {("node_timeout", "sub", None, 1): 103.0}
    assert d.run.record("sub").started_at == 93.0
    d.advance(2.9)
    assert d.status("sub") == "running"
    d.advance(0.1)
    assert d.cancelled == [("sub", None)]
    record = d.run.record("sub")
    assert (record.status, record.error) == ("failed", "timed out after 10s")
    failed = next(e for e in d.events if e.type == "node.failed")
    assert failed.time == 103.0 and failed.data["duration_ms"] == 10000.0
    assert d.status("after") == "blocked"


def test_a_resumed_sub_workflow_node_past_its_timeout_fails_at_once() -> None:
    d = Driver(spec([sub(), lua("after", "sub")]), sleeping={("sub", None, 1): 80.0})
    d.now = 100.0  # the orchestrator was down longer than the node's timeout
    d.start()
    assert d.tasks == {} and not any(k[0] == "node_timeout" for k in d.timers)
    assert d.types("sub") == ["node.started", "node.failed"]
    record = d.run.record("sub")
    assert (record.status, record.error, record.attempts) == ("failed", "timed out after 10s", 1)
    assert (record.started_at, record.finished_at) == (80.0, 100.0)
    assert d.finish is not None and d.finish.status == "failed"


def test_a_resumed_attempt_past_its_timeout_is_retried_and_the_next_gets_all_of_it() -> None:
    wf = spec([sub(retry={"max_attempts": 3, "delay": "1s", "backoff": "fixed"})])
    d = Driver(wf, retried={("sub", None): 1}, sleeping={("sub", None, 2): 85.0})
    d.now = 100.0
    d.start()
    retrying = next(e for e in d.events if e.type == "node.retrying")
    assert (retrying.attempt, retrying.data["error"]) == (2, "timed out after 10s")
    d.advance(1)
    assert d.tasks[("sub", None)].attempt == 3
    assert d.timers == {("node_timeout", "sub", None, 3): 111.0}


def test_each_resumed_foreach_item_of_a_sub_workflow_keeps_its_own_first_start() -> None:
    # item timeouts are per item (and attempt): each counts from when its own child was asked for
    each = spec([sub(foreach="{{ inputs.items }}")])
    d = Driver(
        each,
        {"items": ["a", "b", "c", "d"]},
        sleeping={("sub", 0, 1): 95.0, ("sub", 3, 1): 89.0},
    )
    d.now = 100.0
    d.start()
    # item 3 waited past its timeout: it fails at once, which fails the node and its items
    assert d.status("sub") == "failed"
    assert d.run.record("sub").error == "item 3: timed out after 10s"
    assert set(d.cancelled) == {("sub", 0), ("sub", 1), ("sub", 2)}

    wf = spec([sub(foreach="{{ inputs.items }}", retry={"max_attempts": 2})])
    d = Driver(
        wf,
        {"items": ["a", "b", "c"]},
        retried={("sub", 1): 1},
        sleeping={("sub", 0, 1): 95.0, ("sub", 1, 2): 98.0},
    )
    d.now = 100.0
    d.start()
    assert {k: t for k, t in d.timers.items() if k[0] == "node_timeout"} == {
        ("node_timeout", "sub", 0, 1): 105.0,
        ("node_timeout", "sub", 1, 2): 108.0,
        ("node_timeout", "sub", 2, 1): 110.0,  # not waiting before: all of its timeout
    }
    assert [d.tasks[("sub", i)].attempt for i in range(3)] == [1, 2, 1]
    assert d.run.record("sub").started_at == 95.0
    d.succeed("sub", {"ok": 0}, item=0)
    d.advance(8)
    assert d.run.record("sub").error == "item 1: timed out after 10s"


def test_lua_nodes_of_a_resumed_run_start_their_timeout_over() -> None:
    # a Lua attempt runs again from the start, and its timeout with it
    wf = spec([sub(), lua("script", timeout="10s")])
    d = Driver(wf, sleeping={("sub", None, 1): 95.0}, started_at=95.0)
    d.now = 100.0
    d.start()
    assert d.tasks[("script", None)].timeout == 10.0
    assert d.timers[("node_timeout", "script", None, 1)] == 110.0
    assert d.timers[("node_timeout", "sub", None, 1)] == 105.0
    assert d.run.record("script").started_at == 100.0
    with pytest.raises(ValueError, match=r"not the next attempts .*: script \(attempt 1\)"):
        sch.Run(wf, {}, sleeping={("script", None, 1): 95.0})


def test_a_sub_workflow_node_without_timeout_keeps_its_first_start_and_waits() -> None:
    d = Driver(spec([sub(timeout=None)]), sleeping={("sub", None, 1): 10.0})
    d.now = 100.0
    d.start()
    assert d.tasks[("sub", None)].timeout is None and d.timers == {}
    assert d.run.record("sub").started_at == 10.0
    d.succeed("sub", {"fine": True})
    assert d.finish is not None and d.finish.status == "succeeded"


def test_resume_refuses_waits_that_are_not_next_attempts_of_unfinished_sub_workflows() -> None:
    wf = spec([sub(), sub("each", foreach=[1, 2]), {"id": "nap", "sleep": "1s"}])
    with pytest.raises(
        ValueError, match=r"each \(attempt 1\), nap \(attempt 1\), sub \(attempt 2\)"
    ):
        sch.Run(
            wf,
            {},
            sleeping={("sub", None, 2): 1.0, ("each", None, 1): 1.0, ("nap", None, 1): 1.0},
        )
    with pytest.raises(ValueError, match=r"sub \(attempt 1\)"):
        sch.Run(wf, {}, completed={"sub": {}}, sleeping={("sub", None, 1): 1.0})
    with pytest.raises(ValueError, match=r"each/-1"):
        sch.Run(wf, {}, sleeping={("each", -1, 1): 1.0})
    with pytest.raises(ValueError, match="two waiting attempts of each item 0"):
        sch.Run(wf, {}, sleeping={("each", 0, 1): 1.0, ("each", 0, 2): 1.0})
    with pytest.raises(ValueError, match=r"not in t@1\.0\.0: ghost"):
        sch.Run(wf, {}, sleeping={("ghost", None, 1): 1.0})


def test_a_resumed_run_times_out_counting_from_its_first_start() -> None:
    d = Driver(spec([lua("a"), lua("b", "a")], timeout="10s"), started_at=94.0)
    d.now = 100.0
    d.start()
    assert d.run.started_at == 94.0
    assert d.timers == {("run_timeout",): 104.0}
    d.advance(4)
    assert d.finish is not None and d.finish.status == "timed_out"
    assert d.events[-1].data["duration_ms"] == 10000.0


def test_a_run_resumed_past_its_timeout_ends_at_once_keeping_its_checkpoints() -> None:
    d = Driver(spec([lua("a"), lua("b", "a")], timeout="10s"), completed={"a": {}}, started_at=50.0)
    d.now = 100.0
    d.start()
    assert d.tasks == {}, "nothing may start after the deadline"
    assert d.finish == sch.Finish("timed_out", {}, "execution timed out after 10s")
    assert d.status("a") == "succeeded" and d.status("b") == "cancelled"


# -- what a run tells of its nodes and its end ------------------------------------------------


def test_a_node_that_fails_for_good_tells_its_last_error_and_attempt() -> None:
    d = Driver(spec([lua("a", retry={"max_attempts": 2, "delay": "1s"})])).start()
    d.fail("a", "flaky")
    d.advance(1)
    d.fail("a", "kaput")
    (failed,) = [e for e in d.events if e.type == "node.failed"]
    assert (failed.attempt, failed.severity) == (2, "error")
    assert failed.data["error"] == "kaput"


def test_a_condition_is_evaluated_as_the_first_attempt() -> None:
    run = sch.Run(spec([lua("a", when="ctx.attempt == 1")]), {})
    (condition,) = [i for i in run.handle(sch.Start(0.0)) if isinstance(i, sch.EvaluateCondition)]
    assert (condition.ctx["node_id"], condition.ctx["attempt"]) == ("a", 1)


def test_a_skip_reason_names_the_skipped_upstream_not_a_succeeded_one() -> None:
    d = Driver(spec([lua("ok"), lua("sk", when="false"), lua("c", "ok", "sk")])).start()
    d.succeed("ok")
    d.condition("sk", False)
    assert d.status("c") == "skipped"
    assert d.run.record("c").error == "upstream node 'sk' was skipped"


def test_an_empty_foreach_counts_one_attempt() -> None:
    d = Driver(spec([lua("each", foreach=[])])).start()
    assert d.run.record("each").attempts == 1
    assert [e.attempt for e in d.events if e.node_id == "each"] == [1, 1]


def test_log_lines_after_the_end_in_the_same_batch_are_still_told() -> None:
    run = sch.Run(spec([lua("a")]), {})
    run.handle(sch.Start(0.0))
    # a task's last lines may come in the batch that also ends the run, after other late news
    out = run.handle(
        sch.CancelRequested(1.0),
        sch.TaskSucceeded("a", None, 1, {}, 1.0),
        sch.TaskLogged("a", 1, "info", "late line", 1.0),
    )
    logs = [i.data for i in out if isinstance(i, sch.Emit) and i.type == "node.log"]
    assert logs == [{"level": "info", "message": "late line"}]


def test_a_run_with_one_failure_names_it_without_a_count() -> None:
    d = Driver(spec([lua("a")])).start()
    d.fail("a", "boom")
    assert d.finish is not None and d.finish.error == "node 'a' failed: boom"


def test_a_run_summary_counts_the_other_nodes_by_how_they_ended() -> None:
    # two failures, each blocking a dependent of its own, and a third branch that succeeds
    wf = spec([lua("a"), lua("b"), lua("a1", "a"), lua("b1", "b"), lua("c")])
    d = Driver(wf).start()
    d.fail("a", "boom")
    d.fail("b", "bang")
    d.succeed("c")
    assert d.finish is not None and d.finish.status == "partial"
    assert d.finish.error == "node 'a' failed: boom (and 1 more failed, 2 blocked)"


def test_an_ended_run_records_when_it_finished() -> None:
    d = Driver(spec([lua("a")])).start()
    d.now = 7.0
    d.succeed("a")
    assert d.run.finished and d.run.finished_at == 7.0


def test_each_way_a_run_ends_is_told_with_its_severity() -> None:
    succeeded = Driver(spec([lua("a")])).start()
    succeeded.succeed("a")
    partial = Driver(spec([lua("a"), lua("b")])).start()
    partial.fail("a")
    partial.succeed("b")
    failed = Driver(spec([lua("a")])).start()
    failed.fail("a")
    ends = [d.events[-1] for d in (succeeded, partial, failed)]
    assert [(e.type, e.severity) for e in ends] == [
        ("execution.succeeded", "info"),
        ("execution.partial", "warning"),
        ("execution.failed", "error"),
    ]
