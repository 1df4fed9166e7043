"""The duration histograms take only durations that can be: none negative, none infinite."""

from __future__ import annotations

from typing import Any

from orchestrator.metrics import Metrics


def samples(metrics: Metrics, prefix: str) -> dict[str, float]:
    text = metrics.render()[0].decode()
    return {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith(prefix) and ("_sum" in line or "_count" in line)
    }


def ended(kind: str, duration_ms: Any) -> dict[str, Any]:
    return {"type": kind, "workflow_id": "wf", "data": {"duration_ms": duration_ms}}


def test_negative_and_non_finite_durations_are_counted_but_not_observed() -> None:
    metrics = Metrics(list, lambda: 0)
    for kind in ("node.succeeded", "execution.succeeded"):
        metrics.observe(
            [
                ended(kind, 1500),
                ended(kind, -600000.0),  # a clock stepped back during it
                ended(kind, float("nan")),
                ended(kind, float("inf")),
                ended(kind, 10**400),
                ended(kind, True),
                ended(kind, 0.0),
            ]
        )
    assert samples(metrics, "dagengine_node_duration_seconds") == {
        'dagengine_node_duration_seconds_count{workflow="wf"}': 2.0,
        'dagengine_node_duration_seconds_sum{workflow="wf"}': 1.5,
    }
    assert samples(metrics, "dagengine_execution_duration_seconds") == {
        'dagengine_execution_duration_seconds_count{workflow="wf"}': 2.0,
        'dagengine_execution_duration_seconds_sum{workflow="wf"}': 1.5,
    }
    text = metrics.render()[0].decode()
    assert 'dagengine_nodes_total{status="succeeded"} 7.0' in text
    assert 'dagengine_executions_total{status="succeeded",workflow="wf"} 7.0' in text


def test_a_negative_trigger_lag_is_not_observed() -> None:
    metrics = Metrics(list, lambda: 0)
    metrics.observe(
        [
            {"type": "trigger.fired", "data": {"trigger_type": "cron", "lag_ms": lag}}
            for lag in (250, -5000.0, float("nan"))
        ]
    )
    assert samples(metrics, "dagengine_trigger_lag_seconds") == {
        "dagengine_trigger_lag_seconds_count": 1.0,
        "dagengine_trigger_lag_seconds_sum": 0.25,
    }
    text = metrics.render()[0].decode()
    assert 'dagengine_trigger_slots_total{outcome="fired",type="cron"} 3.0' in text
