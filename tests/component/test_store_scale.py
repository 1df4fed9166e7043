"""The state database as a long-lived installation has it: the plans of the statements that
walk many runs (a sweep, a listing), an upgrade of a file written by the release before, a
full disk that only reads pass on, and paging on while retention deletes the page's runs."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.core.spec import parse_spec
from orchestrator import store as store_module
from orchestrator.orchestrating import new_execution_id
from orchestrator.retention import Retention
from orchestrator.store import MIGRATIONS, Store
from orchestrator.versions import Registry
from tests.component.test_retention import (  # their clock, events and runs
    DAY,
    NOW,
    SPEC,
    event,
    start,
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(str(tmp_path / "state.db"))
    await s.register_version(Registry().plan_register(parse_spec(SPEC), force=False, now=1.0))
    yield s
    await s.close()


async def run(
    store: Store,
    execution_id: str,
    at: float,
    *,
    parent: str | None = None,
    key: str | None = None,
    status: str = "succeeded",
) -> None:
    """A run created at ``at`` that ends (with ``status``) a minute later."""
    await start(store, execution_id, at, parent=parent, key=key)
    await store.record_events(
        execution_id, [event(execution_id, 3, f"execution.{status}", at + 60, outputs={})]
    )


def plan(conn: sqlite3.Connection, sql: str) -> list[str]:
    return [row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]


async def test_a_sweep_walks_the_runs_by_time_and_deletes_keys_by_their_run(
    store: Store,
) -> None:
    """Every statement a sweep runs searches an index and sorts nothing. The candidates walk
    executions_by_time: an index on status (schema 8) took the plan over and sorted every old
    run of a status, a second a batch at a million runs; the keys of a batch were found by
    scanning them all (a quarter of a second at a million keys). The plans are read off the
    statements as the store runs them, so a later index cannot change them unnoticed."""
    for i in range(4):
        await run(store, f"old-{i}", NOW - 30 * DAY + i, key=f"k{i}")
        await run(store, f"old-{i}-child", NOW - 30 * DAY + i, parent=f"old-{i}")
    await run(store, "failed", NOW - 30 * DAY, status="failed")
    ran: list[str] = []
    await store._writer.run(lambda conn: conn.set_trace_callback(ran.append))
    try:
        assert await Retention(store, DAY, clock=lambda: NOW, batch=3).sweep() == 9
    finally:
        await store._writer.run(lambda conn: conn.set_trace_callback(None))
    walked = [s for s in ran if s.lstrip().upper().startswith(("SELECT", "DELETE", "WITH"))]
    assert any("executions" in s and "ORDER BY created_at" in s for s in walked), ran
    assert any(s.startswith("DELETE FROM idempotency") for s in walked), ran
    with sqlite3.connect(store.path) as conn:
        for statement in walked:
            # the first transaction starts at -inf, which the traced text cannot spell
            steps = plan(conn, statement.replace("-Inf", "-9e999"))
            # scans of a table, not of the ids a statement was given or of a tree's rows
            walks = [
                s
                for s in steps
                if "TEMP B-TREE" in s
                or (
                    s.startswith("SCAN ")
                    and s not in ("SCAN t", "SCAN tree")
                    and "json_each" not in s
                )
            ]
            assert not walks, (statement, steps)
            if "ORDER BY created_at" in statement:
                assert steps[0].startswith("SEARCH executions USING INDEX executions_by_time"), (
                    statement,
                    steps,
                )
            if statement.startswith("DELETE FROM idempotency"):
                assert "idempotency_by_execution (execution_id=?)" in steps[0], steps


def at_schema(path: Path, number: int) -> None:
    """A state file as the release at schema ``number`` left it, with one finished run."""
    conn = sqlite3.connect(path, isolation_level=None)
    for script in MIGRATIONS[:number]:
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {number}")
    conn.execute(
        "INSERT INTO executions (id, workflow_id, version, status, inputs, created_at,"
        " node_total, nodes_done, last_seq, finished_at) VALUES ('e1', 'wf', '1.0.0',"
        " 'failed', '{}', 100.0, 1, 1, 3, '1970-01-01T00:02:00.000Z')"
    )
    conn.execute(
        "INSERT INTO idempotency (key, execution_id, created_at) VALUES (?, 'e1', 100)",
        ("wf\x00k",),
    )
    conn.close()


async def test_a_file_at_schema_8_gets_the_indexes_of_schema_9_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    at_schema(path, 8)
    with caplog.at_level(logging.INFO, logger="orchestrator.store"):
        store = await Store.open(str(path))
    try:
        found = await store.list_executions(workflow_id="wf", status="failed", limit=10)
        assert found is not None and [e["id"] for e in found] == ["e1"]
    finally:
        await store.close()
    said = [r.getMessage() for r in caplog.records]
    assert said[0] == (
        f"migrating the state database from schema 8 to {len(MIGRATIONS)}: new indexes over a "
        "large file take a few seconds"
    )
    assert said[1].startswith("state database migrated to schema 9 in ")
    assert said[2].startswith("state database migrated to schema 10 in ")
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"executions_by_workflow_status", "idempotency_by_execution"} <= indexes


async def test_the_release_before_refuses_the_upgraded_file_without_touching_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rolling back after an upgrade: the orchestrator at schema 8 refuses the file (it
    would not know to keep the new indexes' promises), and says what to do."""
    path = tmp_path / "state.db"
    at_schema(path, 8)
    store = await Store.open(str(path))
    await store.close()
    before = path.read_bytes()
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS[:8])
    newer = rf"at schema {len(MIGRATIONS)}, newer than this orchestrator \(8\)"
    with pytest.raises(RuntimeError, match=newer):
        await Store.open(str(path))
    assert path.read_bytes() == before


async def test_on_a_full_file_only_a_stored_write_says_it_takes_writes_again(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Reads that go through the writer (a ticket, a run's end point, a lineage) commit on a
    full disk too: they used to clear the trouble, and the log said it took writes again and
    then that it did not, dozens of times a second, while nothing could be stored."""
    await run(store, "e1", NOW)

    def full(conn: sqlite3.Connection) -> None:
        count = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {count}")

    await store._writer.run(full)
    big = [event("e1", 4, "execution.started", NOW, blob="x" * 200_000)]
    with caplog.at_level(logging.WARNING, logger="orchestrator.store"):
        with pytest.raises(store_module.StoreUnavailable):
            await store.record_events("e1", big)
        assert store.trouble is not None
        assert await store.load_ticket("e1") is not None
        assert await store.lineage("e1") is not None
        await store.end_point("e1")
        await store.request_cancel("no-such-run", "a write that changes nothing")
        assert store.trouble is not None
        await store.probe()  # a write that is stored: the file takes writes again
    assert store.trouble is None
    said = [r.getMessage() for r in caplog.records]
    assert said[1:] == ["the state database takes writes again"], said


async def test_a_listing_pages_on_past_a_run_retention_deleted(store: Store) -> None:
    """``before`` a run that is gone: the next page starts where the run's id says it was
    made, instead of a 404 that ends the paging exactly as retention reaches those runs."""
    ids = []
    for i in range(5):
        at = NOW - 10 * DAY + i
        execution_id = new_execution_id(at)
        ids.append(execution_id)
        await run(store, execution_id, at, key=None)
    first = await store.list_executions(workflow_id=None, status=None, limit=2)
    assert first is not None and [e["id"] for e in first] == [ids[4], ids[3]]
    # retention takes the page's last run (and the next one) before the caller goes on
    with sqlite3.connect(store.path) as conn:
        conn.execute("DELETE FROM executions WHERE id IN (?, ?)", (ids[3], ids[2]))
    rest = await store.list_executions(workflow_id=None, status=None, limit=2, before=ids[3])
    assert rest is not None and [e["id"] for e in rest] == [ids[1], ids[0]]
    by_filter = await store.list_executions(
        workflow_id="wf", status="succeeded", limit=10, before=ids[3]
    )
    assert by_filter is not None and [e["id"] for e in by_filter] == [ids[1], ids[0]]
    # an id that does not start with a time a run can have: nothing tells where it was
    for unknown in ("zz", "f" * 32, "0" * 32, ids[3].upper()):
        listed = await store.list_executions(workflow_id=None, status=None, limit=2, before=unknown)
        assert listed is None, unknown


async def test_a_new_file_is_said_made_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # before: a line per migration step, 13 of them, for a file that had none to migrate
    with caplog.at_level(logging.INFO, logger="orchestrator.store"):
        store = await Store.open(str(tmp_path / "state.db"))
        await store.close()
        store = await Store.open(str(tmp_path / "state.db"))  # up to date: nothing to say
        await store.close()
    said = [r.getMessage() for r in caplog.records if r.name == "orchestrator.store"]
    assert len(said) == 1, said
    assert said[0].startswith(f"state database made, at schema {len(MIGRATIONS)}, in ")
