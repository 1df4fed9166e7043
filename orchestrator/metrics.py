"""Prometheus metrics of the orchestrator, fed by the event flow and read at scrape time.

Counters and histograms are updated as events pass (``observe``), so they cost nothing when
nobody scrapes; gauges of engines and queue depth are read from the live objects on scrape.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from engine.core.values import JSONObject

_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_TERMINAL = {"succeeded", "partial", "failed", "cancelled", "timed_out"}
_NODE_ENDS = {"succeeded", "failed", "skipped", "blocked", "cancelled"}


def _seconds(ms: object) -> float | None:
    """An event's milliseconds as a histogram's seconds, or None for what no histogram should
    take: not a number, not finite, or negative (a duration an engine measured across a clock
    stepped back, or one from before it clamped them), which would drag the sum below zero."""
    if isinstance(ms, bool) or not isinstance(ms, int | float):
        return None
    try:
        seconds = ms / 1000
    except OverflowError:  # an integer past a float's range
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class Metrics:
    def __init__(
        self,
        engines: Callable[[], list[JSONObject]],
        queue_depth: Callable[[], int],
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.executions = Counter(
            "dagengine_executions",
            "Executions that ended, by workflow and status",
            ["workflow", "status"],
            registry=r,
        )
        self.accepted = Counter(
            "dagengine_executions_accepted",
            "Executions accepted and stored",
            ["workflow"],
            registry=r,
        )
        self.execution_seconds = Histogram(
            "dagengine_execution_duration_seconds",
            "Execution wall time",
            ["workflow"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.nodes = Counter(
            "dagengine_nodes", "Nodes that ended, by status", ["status"], registry=r
        )
        self.node_seconds = Histogram(
            "dagengine_node_duration_seconds",
            "Node run time",
            ["workflow"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.events_dropped = Counter(
            "dagengine_events_dropped", "Events a slow subscriber missed", registry=r
        )
        self.engines_by_state = Gauge(
            "dagengine_engines", "Engines by state", ["state"], registry=r
        )
        self.in_flight = Gauge(
            "dagengine_engine_in_flight",
            "Executions running on each engine",
            ["engine"],
            registry=r,
        )
        self.queue = Gauge("dagengine_queue_depth", "Executions waiting for an engine", registry=r)
        self.trigger_slots = Counter(
            "dagengine_trigger_slots",
            "Trigger slots decided, by trigger type and outcome (fired, skipped, missed, failed:"
            " its run was refused)",
            ["type", "outcome"],
            registry=r,
        )
        self.trigger_lag = Histogram(
            "dagengine_trigger_lag_seconds",
            "How far behind its scheduled instant a cron slot fired",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30),
            registry=r,
        )
        self._engines = engines
        self._queue_depth = queue_depth
        # label children by their labels: ``labels()`` builds and checks a key and takes a
        # lock each call, which cost more than the increments of a run's events together
        self._children: dict[tuple[object, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def forget(self, workflow: str) -> None:
        """Drop a deleted workflow's series: each id once deleted would stay until a restart."""
        by_workflow = (self.executions, self.accepted, self.execution_seconds, self.node_seconds)
        for key in [k for k in self._children if k[0] in by_workflow and k[1] == workflow]:
            metric: Any = key[0]
            metric.remove(*key[1:])
            del self._children[key]

    def accept(self, workflow: str) -> None:
        self._child(self.accepted, workflow).inc()

    def observe(self, events: list[JSONObject]) -> None:
        for event in events:
            kind = event.get("type")
            if not isinstance(kind, str):
                continue
            family, _, what = kind.partition(".")
            data = event.get("data")
            seconds = _seconds(data.get("duration_ms")) if isinstance(data, dict) else None
            workflow = str(event.get("workflow_id") or "")
            if family == "execution" and what in _TERMINAL:
                self._child(self.executions, workflow, what).inc()
                if seconds is not None:
                    self._child(self.execution_seconds, workflow).observe(seconds)
                # nodes the run never reached end cancelled with it, without an event each
                unreached = data.get("unreached") if isinstance(data, dict) else None
                if isinstance(unreached, int) and unreached > 0:
                    self._child(self.nodes, "cancelled").inc(unreached)
            elif family == "node" and what in _NODE_ENDS:
                if isinstance(data, dict) and "reused_from" in data:
                    continue  # a retry's kept node: it ran in the run retried, not again
                self._child(self.nodes, what).inc()
                if seconds is not None:
                    self._child(self.node_seconds, workflow).observe(seconds)
            elif family == "trigger" and isinstance(data, dict):
                # a missed event stands for every slot it reports; one whose run was refused
                # (no such version any more, its inputs) failed, which downtime did not cause
                count = data.get("count") if what == "missed" else 1
                outcome = "failed" if data.get("reason") == "refused" else what
                self.trigger_slots.labels(str(data.get("trigger_type") or ""), outcome).inc(
                    count if isinstance(count, int) and count > 0 else 1
                )
                lag = _seconds(data.get("lag_ms")) if what == "fired" else None
                if lag is not None:
                    self.trigger_lag.observe(lag)

    def dropped(self, count: int) -> None:
        self.events_dropped.inc(count)

    def render(self) -> tuple[bytes, str]:
        states: dict[str, int] = {"ready": 0, "joining": 0, "draining": 0, "unhealthy": 0}
        self.in_flight.clear()
        # Summed per id: two pods can report one ENGINE_ID (a copied manifest), and a gauge
        # set per engine would show only the last of them.
        loads: dict[str, int] = {}
        for engine in self._engines():
            state = str(engine.get("state"))
            states[state] = states.get(state, 0) + 1
            load = engine.get("in_flight")
            key = str(engine.get("id"))
            loads[key] = loads.get(key, 0) + (load if isinstance(load, int) else 0)
        for key, load in loads.items():
            self.in_flight.labels(key).set(load)
        for state, count in states.items():
            self.engines_by_state.labels(state).set(count)
        self.queue.set(self._queue_depth())
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
