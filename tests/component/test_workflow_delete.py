"""Deleting a workflow on a real SQLite file: the store's half (its versions and triggers at
once, its runs a batch at a time after) and the registry's."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from engine.api import dagengine_pb2 as pb
from engine.core.spec import parse_spec
from engine.core.values import JSONObject
from orchestrator import orchestrating, retention
from orchestrator.dispatching import Dispatcher
from orchestrator.errors import NotFound, StoreUnavailable, WorkflowBusy
from orchestrator.store import Purged, Store, StoredTrigger
from orchestrator.subworkflows import ChildRequest
from orchestrator.versions import Registry
from tests.component.serving_helpers import held_until, hold_child_writes, served_facade
from tests.component.test_queue_limits import NoEngineFree
from tests.component.test_retention import DAY, T0, event, finish, rows, run, start

LEAF: JSONObject = {"id": "leaf", "version": "1.0.0", "nodes": [{"id": "a", "lua": "return 1"}]}
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


async def test_a_run_of_another_workflow_that_pinned_it_refuses_the_delete(
    store: Store,
) -> None:
    # an older version of "other", still running, calls wf: no latest version references
    # wf, and the run pinned wf@1.1.0 as it started
    await start(store, "caller", T0)
    await start(store, "unrelated", T0)
    with sqlite3.connect(store.path) as conn:
        conn.execute(
            "UPDATE executions SET workflow_id = 'other', pinned = ? WHERE id = 'caller'",
            ('{"wf@^1":"1.1.0","wfx@^1":"1.0.0"}',),
        )
        conn.execute(
            "UPDATE executions SET workflow_id = 'other', pinned = ? WHERE id = 'unrelated'",
            ('{"wfx@^1":"1.0.0"}',),
        )
    # before: the delete went through; the caller failed when it reached its sub-workflow
    # node ("not registered"), and the purge took its finished children
    with pytest.raises(WorkflowBusy) as refused:
        await store.delete_workflow("wf", T0 + DAY)
    assert refused.value.message == (
        "workflow wf may still be called by runs queued or running that pinned a version of it "
        "(1 of other): cancel them or let them end, then delete it"
    )
    assert refused.value.details == {"workflow": "wf", "callers": {"other": 1}}
    assert (await store.live_runs("wfx")).callers == {"other": 2}
    assert await store.deleted_workflows() == []
    await finish(store, "caller", T0 + 60)
    await store.delete_workflow("wf", T0 + DAY)
    assert await store.deleted_workflows() == ["wf"]


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


async def test_a_refused_delete_changes_nothing_while_it_is_decided(tmp_path: Path) -> None:
    dispatcher = Dispatcher(None, NoEngineFree(), publish=list)  # type: ignore[arg-type]
    async with served_facade(tmp_path, specs=[LEAF], dispatcher=dispatcher) as served:
        await served.stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(workflow_id="leaf"))
        gate, held = asyncio.Event(), list[str]()
        store = served.store

        def paused(name: str, real: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
            async def call(*args: Any, **kwargs: Any) -> Any:
                held.append(name)
                await gate.wait()
                return await real(*args, **kwargs)

            return call

        # whichever store call the delete decides in is paused
        store.live_runs = paused("delete", store.live_runs)  # type: ignore[method-assign]
        store.delete_workflow = paused("delete", store.delete_workflow)  # type: ignore[method-assign]
        deleting = asyncio.ensure_future(served.orch.delete_workflow("leaf"))
        await held_until(held, "delete")
        # before: the workflow was out of the registry while the delete was pending, and a
        # trigger or a parent's call meanwhile got "not registered" from a delete then refused
        racing = await served.stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(workflow_id="leaf"))
        assert racing.execution.status == "queued"
        gate.set()
        with pytest.raises(WorkflowBusy, match=r"workflow leaf has 2 run\(s\) queued"):
            await deleting
        assert dispatcher.queued_of("leaf") == 2
        assert served.orch.registry.resolve("leaf", "latest") == "1.0.0"


async def test_a_run_stored_as_its_workflow_is_deleted_is_queued(tmp_path: Path) -> None:
    dispatcher = Dispatcher(None, NoEngineFree(), publish=list)  # type: ignore[arg-type]
    async with served_facade(
        tmp_path, specs=[LEAF, {**LEAF, "id": "parent"}], dispatcher=dispatcher
    ) as served:
        parent = await served.stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(workflow_id="parent"))
        gate = asyncio.Event()
        held = hold_child_writes(served.store, gate)
        # a parent's sub-workflow call past the registry, its run being written: the delete
        # does not count it (it holds no place in the workflow's queue), so it goes through
        request = ChildRequest(parent.execution_id, "a", None, 1, "leaf", "^1", {})
        starting = asyncio.ensure_future(served.orch.start_child(request, lambda _: None))
        await held_until(held, "child")
        deleted = await served.orch.delete_workflow("leaf")
        assert deleted.executions == 0
        gate.set()
        # before: its spec was read after the write, from a registry without it; the call
        # failed "not registered" and the run stayed stored, never queued, until a restart
        started = await starting
        assert dispatcher.queue_depth == 2  # the parent and the child
        child = await served.store.get_execution(started.execution_id)
        assert child is not None and child["workflow_id"] == "leaf"
        # the delete's removal waits for it to end
        purged = await served.store.purge_workflow("leaf", 500)
        assert (purged.deleted, purged.waiting, purged.done) == (0, 1, False)


async def test_the_removal_says_its_progress_outlasts_a_store_outage_and_drops_metrics(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level("INFO", logger="orchestrator.orchestrating")
    monkeypatch.setattr(retention, "BATCH", 2)
    monkeypatch.setattr(retention, "PROGRESS_EVERY", 0.0)
    monkeypatch.setattr(orchestrating, "_PURGE_PUT_OFF", 0.01)
    async with served_facade(tmp_path, specs=[{**LEAF, "id": "wf"}]) as served:
        orch, store = served.orch, served.store
        for n in range(5):
            await run(store, f"r{n}", T0 + n)
        orch.metrics.accept("wf")
        real, refusals = store.purge_workflow, [2]

        async def full_disk(workflow_id: str, limit: int) -> Purged:
            if refusals[0]:
                refusals[0] -= 1
                raise StoreUnavailable("the state database cannot be used now: disk full")
            return await real(workflow_id, limit)

        store.purge_workflow = full_disk  # type: ignore[method-assign]
        await orch.delete_workflow("wf")
        removing = asyncio.ensure_future(orch.purge_deleted())
        try:
            for _ in range(500):
                if not orch._purging:
                    break
                await asyncio.sleep(0.01)
            assert not orch._purging, "the removal never ended"
        finally:
            removing.cancel()
        said = [r.getMessage() for r in caplog.records if "deleted workflow wf" in r.getMessage()]
        said += [r.getMessage() for r in caplog.records if "workflow wf: removed" in r.getMessage()]
        # before: a full disk stopped it with a traceback, and nothing said how far it was
        assert said == [
            "removing deleted workflow wf put off: the state database cannot be used now: "
            "disk full",
            "removing deleted workflow wf: 2 run(s) so far, 0 still going",
            "removing deleted workflow wf: 4 run(s) so far, 0 still going",
            "removing deleted workflow wf: 5 run(s) so far, 0 still going",
            said[-1],
        ]
        assert re.fullmatch(r"workflow wf: removed, with 5 run\(s\), in \d+\.\d s", said[-1])
        assert 'workflow="wf"' not in orch.metrics.render()[0].decode()
