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
    for node_id in run.spec.order:
        rec = run.record(node_id)
        nodes[node_id] = {
            "status": rec.status,
            "output": rec.output,
            "error": rec.error,
            "attempts": rec.attempts,
            "started_at": isoformat(rec.started_at),
            "finished_at": isoformat(rec.finished_at),
            "engine_id": engine_id if rec.started_at is not None else None,
        }
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
