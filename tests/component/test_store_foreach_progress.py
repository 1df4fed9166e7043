"""node.progress events on a real SQLite state file: the run's document credits a running
foreach node with its items done, and the run's ticket carries the items for a resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.core.spec import parse_spec
from orchestrator.dispatching import execute_request
from orchestrator.store import Store
from orchestrator.versions import Registry
from tests.component.monitor_events import monitor_event

SPEC = {
    "id": "wf",
    "version": "1.0.0",
    "nodes": [
        {"id": "a", "lua": "return 1"},
        {"id": "each", "depends_on": ["a"], "foreach": "{{ inputs.items }}", "lua": "return 2"},
    ],
}


def event(seq: int, kind: str, node: str | None = None, **data: Any) -> dict[str, Any]:
    return monitor_event(
        "e1", seq, kind, node_id=node, time=f"2026-01-01T00:00:{seq:02d}.000Z", data=data
    )


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    s = await Store.open(str(tmp_path / "state.db"))
    plan = Registry().plan_register(parse_spec(SPEC), force=False, now=1.0)
    await s.register_version(plan)
    await s.create_execution(
        execution_id="e1",
        workflow_id="wf",
        version="1.0.0",
        inputs={"items": list(range(1000))},
        pinned={},
        created_at=100.0,
        node_ids=["a", "each"],
        first_event=event(1, "execution.queued"),
    )
    yield s
    await s.close()


async def test_a_running_foreach_node_counts_its_items_in_the_progress(store: Store) -> None:
    await store.record_events(
        "e1",
        [
            event(2, "execution.started"),
            event(3, "node.started", "a"),
            event(4, "node.succeeded", "a", output=1),
            event(5, "node.started", "each", items=1000),
            event(6, "node.progress", "each", done=300, items=1000, outputs={"0": 2}),
            event(7, "node.progress", "each", done=450, items=1000, outputs={"1": 2}),
        ],
    )
    doc = await store.get_execution("e1")
    assert doc is not None
    assert doc["progress"] == 72  # a, and 45% of each: 1.45 of 2 nodes
    each: Any = doc["nodes"]["each"]  # type: ignore[index, call-overload]
    assert each["status"] == "running"
    assert each["items_done"] == 450 and each["items_total"] == 1000
    assert "items_done" not in doc["nodes"]["a"]  # type: ignore[index, call-overload]

    ticket = await store.load_ticket("e1")
    assert ticket is not None
    request = execute_request(ticket)
    assert [c.node_id for c in request.completed] == ["a"]
    assert [(c.node_id, c.item, c.items, c.output_json) for c in request.completed_items] == [
        ("each", 0, 1000, "2"),
        ("each", 1, 1000, "2"),
    ]

    await store.record_events(
        "e1", [event(8, "node.succeeded", "each", output=[2] * 1000, duration_ms=1.0)]
    )
    doc = await store.get_execution("e1")
    assert doc is not None
    each = doc["nodes"]["each"]  # type: ignore[index, call-overload]
    assert each["items_done"] == 1000 and doc["progress"] == 100
    ticket = await store.load_ticket("e1")
    assert ticket is not None and execute_request(ticket).completed_items == []
