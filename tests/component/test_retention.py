"""Retention of finished executions on a real SQLite file, with a fake clock."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from engine.core.events import isoformat
from engine.core.spec import parse_spec
from orchestrator.retention import Retention, cutoff
from orchestrator.settings import Settings, SettingsError
from orchestrator.store import Store, TriggerFire
from orchestrator.versions import Registry
from tests.component.monitor_events import monitor_event

DAY = 86400.0
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
NOW = T0 + 40 * DAY
RETENTION = 30 * DAY  # old: finished before T0 + 10 days
SPEC = {"id": "wf", "version": "1.0.0", "nodes": [{"id": "a", "lua": "return 1"}]}


def event(execution_id: str, seq: int, kind: str, at: float, **data: Any) -> dict[str, Any]:
    time = isoformat(at)
    assert time is not None
    return monitor_event(execution_id, seq, kind, time=time, data=data)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(str(tmp_path / "state.db"))
    await s.register_version(Registry().plan_register(parse_spec(SPEC), force=False, now=T0 - DAY))
    yield s
    await s.close()


async def start(
    store: Store,
    execution_id: str,
    at: float,
    *,
    parent: str | None = None,
    key: str | None = None,
) -> None:
    """An execution created and started at ``at`` (a child of ``parent`` when given)."""
    _, created = await store.create_execution(
        execution_id=execution_id,
        workflow_id="wf",
        version="1.0.0",
        inputs={},
        pinned={},
        created_at=at,
        node_ids=["a"],
        first_event=event(execution_id, 1, "execution.queued", at),
        idempotency_key=key,
        parent_execution_id=parent,
        parent_node_id="a" if parent else None,
        parent_attempt=1 if parent else None,
    )
    assert created
    await store.record_events(execution_id, [event(execution_id, 2, "execution.started", at)])


async def finish(store: Store, execution_id: str, at: float) -> None:
    await store.record_events(
        execution_id, [event(execution_id, 3, "execution.succeeded", at, outputs={"x": 1})]
    )


async def run(
    store: Store, execution_id: str, at: float, *, parent: str | None = None, key: str | None = None
) -> None:
    """An execution that starts at ``at`` and succeeds a minute later."""
    await start(store, execution_id, at, parent=parent, key=key)
    await finish(store, execution_id, at + 60)


def rows(store: Store, table: str, column: str = "execution_id") -> list[str]:
    with sqlite3.connect(store.path) as conn:
        return sorted(str(r[0]) for r in conn.execute(f"SELECT {column} FROM {table}"))


async def kept(store: Store, *ids: str) -> list[str]:
    return [i for i in ids if await store.get_execution(i) is not None]


def retention(store: Store, *, keep: float = RETENTION, batch: int = 500) -> Retention:
    return Retention(store, keep, clock=lambda: NOW, batch=batch)


async def test_an_old_finished_tree_goes_whole_with_its_events_and_a_recent_one_stays(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    await run(store, "old", T0)
    await run(store, "old-child", T0 + 1, parent="old")
    await run(store, "old-grandchild", T0 + 2, parent="old-child")
    await run(store, "recent", NOW - DAY)
    await run(store, "recent-child", NOW - DAY + 1, parent="recent")
    # rows stored before schema 10 stay in the old table, and go with their run too
    with sqlite3.connect(store.path) as conn:
        for execution_id in ("old", "recent"):
            conn.execute("INSERT INTO event_batches VALUES (?, 9, 9, x'')", (execution_id,))
    with caplog.at_level(logging.INFO, logger="orchestrator.retention"):
        assert await retention(store).sweep() == 3
    assert rows(store, "event_batches") == ["recent"]
    assert await kept(store, "old", "old-child", "old-grandchild") == []
    assert rows(store, "executions", "id") == ["recent", "recent-child"]
    assert set(rows(store, "event_messages")) == {"recent", "recent-child"}
    assert len(rows(store, "event_messages")) == 6  # queued, started, succeeded of each
    [said] = [r.getMessage() for r in caplog.records]
    assert said.startswith(f"deleted 3 executions finished before {isoformat(NOW - RETENTION)} in ")
    # nothing more is old: a second sweep deletes nothing and says nothing
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="orchestrator.retention"):
        assert await retention(store).sweep() == 0
    assert caplog.records == []


async def test_a_tree_with_a_run_still_going_is_kept_whole(store: Store) -> None:
    await start(store, "running", T0)  # started long ago, never ended
    await start(store, "queued-child-parent", T0)
    await run(store, "ended-parent", T0)
    await start(store, "live-child", T0 + 1, parent="ended-parent")
    await run(store, "ended-grandparent", T0)
    await run(store, "ended-middle", T0 + 1, parent="ended-grandparent")
    await start(store, "live-grandchild", T0 + 2, parent="ended-middle")
    every = (
        "running",
        "queued-child-parent",
        "ended-parent",
        "live-child",
        "ended-grandparent",
        "ended-middle",
        "live-grandchild",
    )
    assert await retention(store).sweep() == 0
    assert await kept(store, *every) == list(every)
    # once the last run of a tree ends (long ago), the whole tree goes
    await finish(store, "live-child", T0 + 2)
    await finish(store, "live-grandchild", T0 + 3)
    assert await retention(store).sweep() == 5
    assert await kept(store, *every) == ["running", "queued-child-parent"]


async def test_more_than_a_batch_goes_over_several_transactions(store: Store) -> None:
    for i in range(7):
        await run(store, f"old-{i}", T0 + i)
    before = cutoff(NOW, RETENTION)
    assert before is not None
    mark = None
    counts = []
    for _ in range(3):
        swept = await store.delete_finished(before, 3, now=NOW, after=mark)
        counts.append(swept.deleted)
        mark = swept.resume
    assert counts == [3, 3, 1] and mark is None  # the last one found the end
    assert rows(store, "executions", "id") == []
    # a sweep goes on batch by batch until nothing old is left
    for i in range(7):
        await run(store, f"again-{i}", T0 + i)
    await run(store, "recent", NOW - 60)
    assert await retention(store, batch=3).sweep() == 7
    assert rows(store, "executions", "id") == ["recent"]


async def test_idempotency_keys_go_with_their_run_and_trigger_history_stays(
    store: Store,
) -> None:
    await run(store, "old", T0, key="k-old")
    await run(store, "recent", NOW - 60, key="k-recent")
    fire = TriggerFire("t1", T0, T0)
    assert await store.record_slot(fire, "fired", {}, "old")  # history that names "old"
    assert rows(store, "idempotency") == ["old", "recent"]
    assert await retention(store).sweep() == 1
    assert rows(store, "idempotency") == ["recent"]
    assert rows(store, "trigger_fires") == ["old"]


async def test_retention_zero_keeps_everything(store: Store) -> None:
    await run(store, "old", T0)
    await run(store, "old-child", T0 + 1, parent="old")
    assert cutoff(NOW, 0) is None
    assert await retention(store, keep=0).sweep() == 0
    assert await kept(store, "old", "old-child") == ["old", "old-child"]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("", 0.0), ("0", 0.0), ("30d", 30 * DAY), ("12h", 43200.0), ("90m", 5400.0), ("45s", 45.0)],
)
def test_execution_retention_reads_durations(value: str, seconds: float) -> None:
    assert Settings.from_env({"EXECUTION_RETENTION": value}).execution_retention == seconds
    assert Settings.from_env({}).execution_retention == 0.0


@pytest.mark.parametrize("value", ["30", "d", "-1d", "1y", "soon", "nand", "infd", "1e400d"])
def test_a_bad_execution_retention_is_refused_naming_it(value: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"EXECUTION_RETENTION": value})
    assert str(refused.value) == (
        "EXECUTION_RETENTION must be a duration such as 30d, 12h, 90m or 45s, or 0 for none, "
        f"got {value!r}"
    )


async def test_a_run_with_an_idempotency_key_stays_its_24_hours_whatever_the_retention(
    store: Store,
) -> None:
    """A repeat of a keyed request (an ``Idempotency-Key``, a signed hook delivery) within
    24 hours gets the run it made, as promised, even when retention is shorter."""
    hour = 3600.0
    await run(store, "keyed", NOW - 2 * hour, key="k")
    await run(store, "keyed-long-ago", NOW - 25 * hour, key="k-old")
    await run(store, "unkeyed", NOW - 2 * hour)
    await run(store, "keyed-tree", NOW - 1.5 * hour, key="k-tree")
    await run(store, "keyed-tree-child", NOW - 1.5 * hour + 1, parent="keyed-tree")
    assert await retention(store, keep=hour).sweep() == 2
    assert rows(store, "executions", "id") == ["keyed", "keyed-tree", "keyed-tree-child"]
    again, created = await store.create_execution(
        execution_id="repeat",
        workflow_id="wf",
        version="1.0.0",
        inputs={},
        pinned={},
        created_at=NOW,
        node_ids=["a"],
        first_event=event("repeat", 1, "execution.queued", NOW),
        idempotency_key="k",
    )
    assert (again, created) == ("keyed", False)
    # once its 24 hours are over, it goes as any other
    later = Retention(store, hour, clock=lambda: NOW - 2 * hour + DAY + 1)
    assert await later.sweep() == 1
    assert rows(store, "executions", "id") == ["keyed-tree", "keyed-tree-child"]


async def test_a_sweep_looks_at_runs_it_keeps_once_and_in_bounded_transactions(
    store: Store,
) -> None:
    hour = 3600.0
    for i in range(20):  # a backlog of runs kept for their keys, older than the cutoff
        await run(store, f"keyed-{i:02}", NOW - 20 * hour + i, key=f"k{i}")
    await run(store, "after-them", NOW - 2 * hour)
    before = cutoff(NOW, hour)
    assert before is not None
    # one transaction looks at a few times its batch, not at the whole backlog
    first = await store.delete_finished(before, 2, now=NOW)
    assert first.deleted == 0 and first.resume is not None
    assert first.resume.created_at < NOW - 10 * hour
    # the sweep goes on from where each transaction stopped, to the run past them all
    assert await retention(store, keep=hour, batch=2).sweep() == 1
    assert "after-them" not in rows(store, "executions", "id")


async def test_a_long_sweep_says_how_far_it_got_as_it_goes(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(5):
        await run(store, f"old-{i}", T0 + i)
    every_batch = Retention(store, RETENTION, clock=lambda: NOW, batch=2, progress_every=0)
    with caplog.at_level(logging.INFO, logger="orchestrator.retention"):
        assert await every_batch.sweep() == 5
    said = [r.getMessage() for r in caplog.records]
    old = isoformat(NOW - RETENTION)
    assert said[:2] == [
        f"deleting executions finished before {old}: 2 so far, up to those created at "
        f"{isoformat(T0 + 1)}",
        f"deleting executions finished before {old}: 4 so far, up to those created at "
        f"{isoformat(T0 + 3)}",
    ]
    assert said[2].startswith(f"deleted 5 executions finished before {old} in ")
