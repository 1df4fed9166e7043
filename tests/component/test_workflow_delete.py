"""Deleting a workflow on a real SQLite file: the store's half (its versions and triggers at
once, its runs a batch at a time after) and the registry's."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.core.spec import parse_spec
from orchestrator.errors import NotFound, WorkflowBusy
from orchestrator.store import Store, StoredTrigger
from orchestrator.versions import Registry
from tests.component.test_retention import DAY, T0, event, finish, rows, run, start

OTHER = {"id": "other", "version": "1.0.0", "nodes": [{"id": "a", "lua": "return 2"}]}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(str(tmp_path / "state.db"))
    registry = Registry()
    for doc in (
        {"id": "wf", "version": "1.0.0", "nodes": [{"id": "a", "lua": "return 1"}]},
        {"id": "wf", "version": "1.1.0", "nodes": [{"id": "a", "lua": "return 1"}]},
        OTHER,
    ):
        plan = registry.plan_register(parse_spec(doc), force=False, now=T0 - DAY)
        await s.register_version(plan)
        registry.apply(plan)
    yield s
    await s.close()


def trigger(trigger_id: str, workflow_id: str) -> StoredTrigger:
    return StoredTrigger(
        trigger_id, workflow_id, "cron", "api", None, {"cron": "0 * * * *"}, False, T0, T0
    )


async def test_deleting_takes_versions_and_triggers_at_once_and_runs_in_batches(
    store: Store,
) -> None:
    assert await store.create_trigger(trigger("hourly", "wf"))
    assert await store.create_trigger(trigger("kept", "other"))
    with sqlite3.connect(store.path) as conn:
        conn.execute("INSERT INTO trigger_fires VALUES ('hourly', 1, 1, 'fired', 'r0', '{}')")
        conn.execute("INSERT INTO trigger_fires VALUES ('kept', 1, 1, 'fired', 'o0', '{}')")
    for n in range(5):
        await run(store, f"r{n}", T0 + n, key=f"key-{n}")
    await run(store, "r0-child", T0 + 10, parent="r0")
    await run(store, "other-run", T0)
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE executions SET workflow_id = 'other' WHERE id = 'other-run'")

    deleted = await store.delete_workflow("wf", T0 + DAY)
    assert (deleted.versions, deleted.triggers, deleted.executions) == (2, 1, 6)
    # at once: no version of it loads (a restart does not bring it back), its triggers and
    # their history are gone, the other workflow's stay
    assert {(v.workflow_id, v.version) for v in await store.load_versions()} == {("other", "1.0.0")}
    assert await store.deleted_workflows() == ["wf"]
    assert [t.id for t in await store.load_triggers()] == ["kept"]
    assert rows(store, "trigger_fires", "trigger_id") == ["kept"]

    # runs go a batch at a time, a tree whole (r0 with its child counts two)
    first = await store.purge_workflow("wf", 2)
    assert (first.deleted, first.done) == (2, False)
    assert rows(store, "executions", "id") == ["other-run", "r1", "r2", "r3", "r4"]
    assert (await store.purge_workflow("wf", 2)).deleted == 2
    assert (await store.purge_workflow("wf", 2)).deleted == 2
    last = await store.purge_workflow("wf", 2)
    assert (last.deleted, last.waiting, last.done) == (0, 0, True)
    assert rows(store, "executions", "id") == ["other-run"]
    assert rows(store, "idempotency") == []
    assert set(rows(store, "event_messages")) == {"other-run"}
    # the versions go last, and the id is free again
    assert rows(store, "versions", "workflow_id") == ["other"]
    assert await store.deleted_workflows() == []


async def test_a_run_going_refuses_the_delete_and_one_stored_after_is_waited_for(
    store: Store,
) -> None:
    await start(store, "live", T0)
    with pytest.raises(WorkflowBusy, match=r"workflow wf has 1 run\(s\) queued or running"):
        await store.delete_workflow("wf", T0 + DAY)
    assert await store.deleted_workflows() == []
    assert len(await store.load_versions()) == 3  # nothing changed
    await finish(store, "live", T0 + 60)

    await store.delete_workflow("wf", T0 + DAY)
    # a run accepted as the delete went through (it had found the workflow just before)
    await start(store, "late", T0 + DAY)
    purged = await store.purge_workflow("wf", 500)
    assert (purged.deleted, purged.waiting, purged.done) == (1, 1, False)
    purged = await store.purge_workflow("wf", 500)
    assert (purged.deleted, purged.waiting, purged.done) == (0, 1, False)
    # its version is still there for its document until it ends
    assert rows(store, "versions", "workflow_id").count("wf") == 2
    assert await store.get_execution("late") is not None
    await store.record_events(
        "late", [event("late", 3, "execution.failed", T0 + DAY + 1, error="x")]
    )
    assert (await store.purge_workflow("wf", 500)).deleted == 1
    assert (await store.purge_workflow("wf", 500)).done


def test_the_registry_forgets_a_removed_workflow_and_takes_it_back() -> None:
    registry = Registry()
    for doc in (
        {"id": "leaf", "version": "1.0.0", "nodes": [{"id": "a", "lua": "return 1"}]},
        {
            "id": "trunk",
            "version": "1.0.0",
            "nodes": [{"id": "s", "workflow": {"id": "leaf", "version": "^1"}}],
        },
    ):
        registry.apply(registry.plan_register(parse_spec(doc), force=False, now=T0))
    assert registry.dependents("leaf") == ["trunk@1.0.0"]

    removed = registry.remove("trunk")
    assert registry.workflow_ids() == ["leaf"]
    assert registry.dependents("leaf") == []  # what its latest referenced is forgotten too
    with pytest.raises(NotFound):
        registry.resolve("trunk", "latest")
    with pytest.raises(NotFound):
        registry.remove("trunk")

    registry.restore(removed)
    assert registry.workflow_ids() == ["leaf", "trunk"]
    assert registry.dependents("leaf") == ["trunk@1.0.0"]
    assert registry.resolve("trunk", "^1") == "1.0.0"
