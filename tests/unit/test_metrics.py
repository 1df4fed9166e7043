"""What the orchestrator's Prometheus metrics count, from the events it publishes."""

from __future__ import annotations

from typing import Any

from orchestrator.metrics import Metrics


def trigger_event(what: str, **data: Any) -> dict[str, Any]:
    return {
        "type": f"trigger.{what}",
        "workflow_id": "wf",
        "data": {"trigger_type": "cron", **data},
    }


def test_trigger_slots_by_outcome_tell_refused_runs_from_downtime() -> None:
    metrics = Metrics(list, lambda: 0)
    metrics.observe(
        [
            trigger_event("fired", lag_ms=3.0),
            trigger_event("missed", count=5, catchup="none"),  # the orchestrator was down
            trigger_event("missed", reason="refused", error="no version matches"),
        ]
    )
    text = metrics.render()[0].decode()
    counted = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("dagengine_trigger_slots_total")
    }
    assert counted == {
        'dagengine_trigger_slots_total{outcome="fired",type="cron"}': 1.0,
        'dagengine_trigger_slots_total{outcome="missed",type="cron"}': 5.0,
        'dagengine_trigger_slots_total{outcome="failed",type="cron"}': 1.0,
    }


def test_nodes_a_run_never_reached_count_as_cancelled_with_it() -> None:
    metrics = Metrics(list, lambda: 0)
    metrics.observe(
        [
            {"type": "node.cancelled", "workflow_id": "wf", "data": {}},
            {"type": "execution.cancelled", "workflow_id": "wf", "data": {"unreached": 2}},
            {"type": "execution.succeeded", "workflow_id": "wf", "data": {}},
        ]
    )
    text = metrics.render()[0].decode()
    assert 'dagengine_nodes_total{status="cancelled"} 3.0' in text


def test_in_flight_adds_up_engines_that_share_an_id() -> None:
    engines = [
        {"id": "k1", "state": "ready", "in_flight": 2},
        {"id": "k1", "state": "ready", "in_flight": 4},  # a second pod with the same ENGINE_ID
        {"id": "k2", "state": "draining", "in_flight": 1},
    ]
    text = Metrics(lambda: engines, lambda: 0).render()[0].decode()
    assert 'dagengine_engine_in_flight{engine="k1"} 6.0' in text
    assert 'dagengine_engine_in_flight{engine="k2"} 1.0' in text
    assert 'dagengine_engines{state="ready"} 2.0' in text


def test_a_deleted_workflow_s_series_are_forgotten_and_others_kept() -> None:
    metrics = Metrics(list, lambda: 0)
    for workflow in ("gone", "kept"):
        metrics.accept(workflow)
        metrics.observe(
            [
                {"type": "node.succeeded", "workflow_id": workflow, "data": {"duration_ms": 5}},
                {"type": "execution.failed", "workflow_id": workflow, "data": {"duration_ms": 9}},
            ]
        )
    metrics.forget("gone")
    text = metrics.render()[0].decode()
    assert 'workflow="kept"' in text
    assert 'workflow="gone"' not in text
    # the id registered again starts its series afresh
    metrics.accept("gone")
    text = metrics.render()[0].decode()
    assert 'dagengine_executions_accepted_total{workflow="gone"} 1.0' in text
    assert 'dagengine_executions_total{status="failed",workflow="gone"}' not in text
