"""The execution document: how one run is shown as JSON everywhere (DESIGN section 3)."""

from __future__ import annotations

from engine.core.events import isoformat
from engine.core.scheduler import Run
from engine.core.values import JSONObject


def execution_document(
    run: Run,
    *,
    execution_id: str,
    created_at: float,
    engine_id: str | None = None,
    parent_execution_id: str | None = None,
) -> JSONObject:
    nodes: JSONObject = {}
    # a 10,000-node run makes 10,000 of these at its end: read the nodes as they are
    states = run.nodes
    for node_id in run.spec.order:
        n = states[node_id]
        started = n.started_at
        record: JSONObject = {
            "status": n.status,
            "output": n.output,
            "error": n.error,
            "attempts": n.attempts,
            "started_at": None if started is None else isoformat(started),
            "finished_at": None if n.finished_at is None else isoformat(n.finished_at),
            "engine_id": None if started is None else engine_id,
        }
        told = run.items_told(node_id)
        if told is not None:  # a foreach node that told its items, as the orchestrator shows it
            record["items_done"], record["items_total"] = told
        nodes[node_id] = record
    return {
        "id": execution_id,
        "workflow_id": run.spec.id,
        "version": run.spec.version,
        "status": run.status,
        "inputs": run.inputs,
        "outputs": run.outputs,
        "error": run.error,
        "progress": run.progress,
        "created_at": isoformat(created_at),
        "started_at": isoformat(run.started_at),
        "finished_at": isoformat(run.finished_at),
        "parent_execution_id": parent_execution_id,
        "nodes": nodes,
    }
