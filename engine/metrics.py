"""The engine's Prometheus metrics, kept in a registry of their own and served on METRICS_PORT.

``Metrics.observe`` reads each event the engine streams, so counting costs one dictionary lookup
per event and nothing in the run itself knows about Prometheus.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from engine.core.events import Event

_NODE_ENDS = {"node.succeeded": "succeeded", "node.failed": "failed", "node.cancelled": "cancelled"}
_NODE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 1800.0)


class Metrics:
    def __init__(self, capacity: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.executions_started = Counter(
            "dagengine_engine_executions_started",
            "Executions this engine accepted and started",
            registry=self.registry,
        )
        self.executions_finished = Counter(
            "dagengine_engine_executions_finished",
            "Executions that ended on this engine, by final status (handed_back: cancelled"
            " because its caller's stream ended or the engine drained, for the orchestrator to"
            " resume or end)",
            ["status"],
            registry=self.registry,
        )
        self.executions_refused = Counter(
            "dagengine_engine_executions_refused",
            "Execute calls turned down, by gRPC status code",
            ["code"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "dagengine_engine_executions_in_flight",
            "Executions running on this engine now",
            registry=self.registry,
        )
        self.capacity = Gauge(
            "dagengine_engine_capacity",
            "Executions this engine runs at once",
            registry=self.registry,
        )
        self.capacity.set(capacity)
        self.node_duration = Histogram(
            "dagengine_engine_node_duration_seconds",
            "Time from a node's start to its end, by how it ended",
            ["status"],
            buckets=_NODE_BUCKETS,
            registry=self.registry,
        )
        self.events_streamed = Counter(
            "dagengine_engine_events_streamed",
            "Events sent on Execute streams",
            registry=self.registry,
        )
        self.lua_given_up = Gauge(
            "dagengine_engine_lua_workers_given_up",
            "Lua worker threads given up while stuck in one call the sandbox cannot interrupt,"
            " not come back yet (each may burn a core; at as many as there are workers, no more"
            " are replaced)",
            registry=self.registry,
        )
        self.lua_queued = Gauge(
            "dagengine_engine_lua_tasks_queued",
            "Lua scripts waiting for a worker (LUA_WORKERS busy); the runs take them in turn",
            registry=self.registry,
        )
        self._durations = {
            kind: self.node_duration.labels(status) for kind, status in _NODE_ENDS.items()
        }

    def observe(self, event: Event, *, let_go: bool = False) -> None:
        """Account for one event of a run; ``let_go`` when the engine has let go of the run
        (see ``_EventStream.let_go``)."""
        histogram = self._durations.get(event.type)
        if histogram is not None:
            duration_ms = event.data.get("duration_ms")
            if isinstance(duration_ms, int | float):
                histogram.observe(duration_ms / 1000.0)
        elif event.type.startswith("execution.") and event.type != "execution.started":
            status = event.type.removeprefix("execution.")
            if let_go and status == "cancelled":
                status = "handed_back"
            self.executions_finished.labels(status).inc()
