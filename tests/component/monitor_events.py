"""A monitor event (DESIGN section 7) as the store and the streams hold it, for tests that
write events straight into a store or a hub."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.store import Store


def monitor_event(
    execution_id: str,
    seq: int,
    kind: str,
    *,
    node_id: str | None = None,
    time: str = "2026-01-01T00:00:00.000Z",
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A node's events (``node_id`` given) come from engine-0, attempt 1."""
    return {
        "seq": seq,
        "time": time,
        "type": kind,
        "severity": "info",
        "workflow_id": "wf",
        "version": "1.0.0",
        "execution_id": execution_id,
        "node_id": node_id,
        "engine_id": "engine-0" if node_id else None,
        "attempt": 1 if node_id else None,
        "data": data if data is not None else {},
    }


async def create_run(store: Store, execution_id: str, node_ids: Sequence[str] = ("a",)) -> None:
    """A run of ``wf`` 1.0.0 (nodes ``node_ids``), stored as queued (its first event, seq 1)."""
    await store.create_execution(
        execution_id=execution_id,
        workflow_id="wf",
        version="1.0.0",
        inputs={},
        pinned={},
        created_at=1.0,
        node_ids=list(node_ids),
        first_event=monitor_event(execution_id, 1, "execution.queued"),
    )
