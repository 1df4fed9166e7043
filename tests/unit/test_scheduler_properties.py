"""Hypothesis properties of the scheduler over random DAGs and random completion orders."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core import scheduler as sch
from engine.core.spec import TRIGGER_RULES
from tests.unit.driving import Driver, spec


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, bool], int]:
    n = draw(st.integers(1, 25))
    nodes = []
    fails: dict[str, bool] = {}
    for i in range(n):
        deps = sorted(draw(st.sets(st.integers(0, i - 1), max_size=min(i, 4)))) if i else []
        node: dict[str, Any] = {
            "id": f"n{i}",
            "lua": "return {}",
            "depends_on": [f"n{d}" for d in deps],
            "trigger_rule": draw(st.sampled_from(TRIGGER_RULES)),
        }
        nodes.append(node)
        fails[f"n{i}"] = draw(st.booleans()) and draw(st.booleans())
    return nodes, fails, draw(st.integers(1, 6))


@settings(max_examples=300, deadline=None)
@given(dags(), st.randoms(use_true_random=False))
def test_every_node_runs_once_after_its_dependencies_and_status_agrees(
    case: tuple[list[dict[str, Any]], dict[str, bool], int], rnd: Any
) -> None:
    nodes, fails, concurrency = case
    wf = spec(nodes, concurrency=concurrency)
    d = Driver(wf).start()
    runs: dict[str, int] = {}
    while d.tasks:
        # every task we hold was issued only once its dependencies were all terminal
        node_id, _ = rnd.choice(sorted(d.tasks, key=str))
        for dep in wf.by_id[node_id].depends_on:
            assert d.status(dep) in ("succeeded", "failed", "skipped", "blocked")
        if wf.by_id[node_id].trigger_rule == "all_success":
            assert all(d.status(dep) == "succeeded" for dep in wf.by_id[node_id].depends_on)
        runs[node_id] = runs.get(node_id, 0) + 1
        if fails[node_id]:
            d.fail(node_id)
        else:
            d.succeed(node_id, {"from": node_id})
    assert d.finish is not None, "the run must end once no task is in flight"
    assert all(count == 1 for count in runs.values())
    statuses = {n: d.status(n) for n in wf.by_id}
    for n, status in statuses.items():
        ran = n in runs
        assert ran == (status in ("succeeded", "failed")), (n, status)
        if ran:
            assert status == ("failed" if fails[n] else "succeeded")
    bad = any(s in ("failed", "blocked") for s in statuses.values())
    sink_ok = any(statuses[s] == "succeeded" for s in wf.sink_ids)
    expected = "succeeded" if not bad else ("partial" if sink_ok else "failed")
    assert d.finish.status == expected
    assert d.run.progress == 100
    assert d.types().count("execution." + expected) == 1


@settings(max_examples=100, deadline=None)
@given(dags(), st.randoms(use_true_random=False), st.data())
def test_resume_from_any_checkpoint_never_reruns_completed_nodes(
    case: tuple[list[dict[str, Any]], dict[str, bool], int], rnd: Any, data: st.DataObject
) -> None:
    nodes, _fails, concurrency = case
    for node in nodes:
        node["trigger_rule"] = "all_success"
    wf = spec(nodes, concurrency=concurrency)
    # a checkpoint is a set of nodes closed under dependencies, as a real run leaves behind
    done: dict[str, Any] = {}
    for node_id in wf.order:
        if all(dep in done for dep in wf.by_id[node_id].depends_on) and data.draw(st.booleans()):
            done[node_id] = {"from": node_id}
    d = Driver(wf, completed=done).start()
    while d.tasks:
        node_id, _ = rnd.choice(sorted(d.tasks, key=str))
        d.succeed(node_id, {"from": node_id})
    assert not set(d.started_order) & set(done)
    assert set(d.started_order) | set(done) == set(wf.by_id)
    assert d.finish is not None and d.finish.status == "succeeded"
    for node_id in done:
        assert "node.started" not in d.types(node_id)


def test_cost_is_linear_no_rescan() -> None:
    """10,000 nodes in layers of 100, fully connected between layers, finish in one pass."""
    layers, width = 100, 100
    nodes = []
    for layer in range(layers):
        for i in range(width):
            deps = [f"l{layer - 1}_{j}" for j in range(width)] if layer else []
            nodes.append({"id": f"l{layer}_{i}", "lua": "return {}", "depends_on": deps})
    wf = spec(nodes, concurrency=100)
    run = sch.Run(wf, {})
    out = run.handle(sch.Start(0.0))
    pending = [i for i in out if isinstance(i, sch.RunTask)]
    completed = 0
    while pending:
        batch = [sch.TaskSucceeded(t.node_id, None, t.attempt, {}, 1.0) for t in pending]
        completed += len(batch)
        out = run.handle(*batch)
        pending = [i for i in out if isinstance(i, sch.RunTask)]
    assert completed == layers * width
    assert run.status == "succeeded"
