"""The state database on a real SQLite file: schema, folding of events, durability, group commit."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from engine import wire
from engine.api import dagengine_pb2 as pb
from engine.core.events import isoformat
from engine.core.spec import parse_spec
from orchestrator.errors import StoreUnavailable
from orchestrator.locking import StateInUse, state_holder
from orchestrator.store import (
    _IDEMPOTENCY_PRUNE_EVERY,
    IDEMPOTENCY_WINDOW,
    MIGRATIONS,
    TRIGGER_HISTORY_KEEP,
    Store,
    TriggerFire,
    listing_sql,
    migrate,
)
from orchestrator.versions import Registry
from tests.component.monitor_events import monitor_event

SPEC = {
    "id": "wf",
    "version": "1.0.0",
    "nodes": [
        {"id": "a", "lua": "return 1"},
        {"id": "b", "depends_on": ["a"], "lua": "return 2"},
        {"id": "c", "depends_on": ["b"], "lua": "return 3"},
    ],
}


def event(seq: int, kind: str, node: str | None = None, **data: Any) -> dict[str, Any]:
    return monitor_event(
        "e1", seq, kind, node_id=node, time=f"2026-01-01T00:00:{seq:02d}.000Z", data=data
    )


async def registered(store: Store) -> None:
    plan = Registry().plan_register(parse_spec(SPEC), force=False, now=1.0)
    await store.register_version(plan)


async def create(
    store: Store, execution_id: str = "e1", key: str | None = None
) -> tuple[str, bool]:
    return await store.create_execution(
        execution_id=execution_id,
        workflow_id="wf",
        version="1.0.0",
        inputs={"n": 3, "deep": [1, {"x": None}]},
        pinned={},
        created_at=100.0,
        node_ids=["a", "b", "c"],
        first_event=event(1, "execution.queued"),
        idempotency_key=key,
    )


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    s = await Store.open(str(tmp_path / "state.db"))
    await registered(s)
    yield s
    await s.close()


async def test_a_new_execution_reads_back_as_the_execution_json(store: Store) -> None:
    assert await create(store) == ("e1", True)
    doc = await store.get_execution("e1")
    assert doc is not None
    assert doc["status"] == "queued" and doc["progress"] == 0
    assert doc["inputs"] == {"n": 3, "deep": [1, {"x": None}]}
    assert list(doc["nodes"]) == ["a", "b", "c"]  # type: ignore[arg-type]
    assert doc["nodes"]["a"] == {  # type: ignore[index, call-overload]
        "status": "pending",
        "output": None,
        "error": None,
        "attempts": 0,
        "started_at": None,
        "finished_at": None,
        "engine_id": None,
    }
    assert await store.get_execution("nope") is None


async def test_events_fold_into_node_and_execution_state(store: Store) -> None:
    await create(store)
    await store.record_events(
        "e1",
        [
            event(2, "execution.started"),
            event(3, "node.started", "a"),
            event(4, "node.succeeded", "a", output={"big": 2**40}),
            event(5, "node.started", "b"),
            event(6, "node.failed", "b", error="boom (line 1)"),
            event(7, "node.blocked", "c", error="upstream failed"),
        ],
    )
    doc = await store.get_execution("e1")
    assert doc is not None
    assert doc["status"] == "running" and doc["progress"] == 100
    nodes: Any = doc["nodes"]
    assert nodes["a"]["output"] == {"big": 2**40}
    assert nodes["a"]["engine_id"] == "engine-0" and nodes["a"]["attempts"] == 1
    assert nodes["a"]["started_at"] == "2026-01-01T00:00:03.000Z"
    assert nodes["b"]["status"] == "failed" and nodes["b"]["error"] == "boom (line 1)"
    assert nodes["c"]["status"] == "blocked"
    await store.record_events(
        "e1", [event(8, "execution.failed", error="node 'b' failed", outputs={})]
    )
    doc = await store.get_execution("e1")
    assert doc is not None
    assert doc["status"] == "failed" and doc["error"] == "node 'b' failed"
    assert doc["finished_at"] == "2026-01-01T00:00:08.000Z"
    # a later terminal event never rewrites the first
    await store.record_events("e1", [event(9, "execution.succeeded", outputs={"x": 1})])
    doc = await store.get_execution("e1")
    assert doc is not None and doc["status"] == "failed"


async def test_the_ticket_carries_checkpoints_and_the_next_seq(store: Store) -> None:
    await create(store)
    await store.record_events(
        "e1",
        [
            event(2, "execution.started"),
            event(3, "node.started", "a"),
            event(4, "node.succeeded", "a", output=[1, 2]),
            event(5, "node.started", "b"),
        ],
    )
    ticket = await store.load_ticket("e1")
    assert ticket is not None
    assert [(c.node_id, c.output, c.attempts) for c in ticket.checkpoints] == [("a", [1, 2], 1)]
    assert ticket.next_seq == 6
    assert ticket.inputs == {"n": 3, "deep": [1, {"x": None}]}
    assert '"id":"wf"' in ticket.spec_json
    seq, stored = await store.end_point("e1")
    assert seq == 6 and [e["seq"] for e in stored] == [1, 2, 3, 4, 5]
    # a repeated batch (a stream resent after failover) stores nothing twice
    await store.record_events("e1", [event(5, "node.started", "b")])
    assert [e["seq"] for e in await store.events("e1")] == [1, 2, 3, 4, 5]
    assert [e["seq"] for e in await store.events("e1", after_seq=3)] == [4, 5]


async def test_everything_survives_closing_and_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    store = await Store.open(path)
    await registered(store)
    await create(store, "e1")
    await create(store, "e2")
    await store.record_events("e2", [event(2, "execution.succeeded", outputs={})])
    await store.close()
    again = await Store.open(path)
    try:
        assert [v.version for v in await again.load_versions()] == ["1.0.0"]
        assert await again.unfinished_executions() == [("e1", "wf", False)]
        doc = await again.get_execution("e2")
        assert doc is not None and doc["status"] == "succeeded"
    finally:
        await again.close()


async def test_idempotency_key_within_a_day_returns_the_first_execution(store: Store) -> None:
    assert await create(store, "e1", key="k") == ("e1", True)
    assert await create(store, "e2", key="k") == ("e1", False)
    assert await store.get_execution("e2") is None
    assert await create(store, "e3", key="other") == ("e3", True)


async def test_concurrent_writes_commit_together_and_one_refusal_spares_the_rest(
    store: Store,
) -> None:
    results = await asyncio.gather(
        *(create(store, f"x{i}") for i in range(200)),
        create(store, "x7"),  # a duplicate id, queued among the others
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 1 and isinstance(failures[0], sqlite3.IntegrityError)
    listed = await store.list_executions(workflow_id="wf", status=None, limit=1000)
    assert len(listed) == 200
    assert "nodes" not in listed[0]


async def test_list_filters_and_orders_newest_first(store: Store) -> None:
    for i in range(3):
        await store.create_execution(
            execution_id=f"e{i}",
            workflow_id="wf",
            version="1.0.0",
            inputs={},
            pinned={},
            created_at=100.0 + i,
            node_ids=["a", "b", "c"],
            first_event=event(1, "execution.queued"),
        )
    await store.record_events("e1", [event(2, "execution.succeeded", outputs={})])
    listed = await store.list_executions(workflow_id="wf", status=None, limit=2)
    assert [e["id"] for e in listed] == ["e2", "e1"]
    done = await store.list_executions(workflow_id=None, status="succeeded", limit=10)
    assert [e["id"] for e in done] == ["e1"]
    assert await store.list_executions(workflow_id="other", status=None, limit=10) == []
    # keyset pages: each starts below the last of the one before, none skipped or repeated
    older = await store.list_executions(workflow_id="wf", status=None, limit=2, before="e1")
    assert older is not None and [e["id"] for e in older] == ["e0"]
    assert await store.list_executions(workflow_id="wf", status=None, limit=2, before="e0") == []
    assert await store.list_executions(workflow_id=None, status=None, limit=2, before="zz") is None


@pytest.mark.parametrize(
    ("filters", "plan"),
    [
        ({"status": True}, "SEARCH executions USING INDEX executions_by_status (status=?)"),
        (
            {"workflow": True},
            "SEARCH executions USING INDEX executions_by_workflow (workflow_id=?)",
        ),
        (
            {"workflow": True, "status": True},
            "SEARCH executions USING INDEX executions_by_workflow_status"
            " (workflow_id=? AND status=?)",
        ),
        ({}, "SCAN executions USING INDEX executions_by_time"),
        # the next page, and the next past a run deleted meanwhile (``gone_bounds``)
        *(
            (
                {"before": True, "before_gone": gone, **filters},
                f"SEARCH executions USING INDEX {index} ({searched}created_at<?)",
            )
            for gone in (False, True)
            for filters, index, searched in (
                ({}, "executions_by_time", ""),
                ({"status": True}, "executions_by_status", "status=? AND "),
                ({"workflow": True}, "executions_by_workflow", "workflow_id=? AND "),
                (
                    {"workflow": True, "status": True},
                    "executions_by_workflow_status",
                    "workflow_id=? AND status=? AND ",
                ),
            )
        ),
    ],
)
def test_a_listing_searches_an_index_instead_of_walking_every_run(
    tmp_path: Path, filters: dict[str, bool], plan: str
) -> None:
    # a status few runs have would otherwise be looked for in every run, newest first; a
    # rare workflow among every run of a common status; and a workflow's few runs of a status
    # among all its runs. Never sorted apart (USE TEMP B-TREE): the index gives the order.
    conn = sqlite3.connect(tmp_path / "db", isolation_level=None)
    migrate(conn)
    sql = listing_sql(**{"workflow": False, "status": False, "before": False, **filters})
    args = [None] * (sql.count("?"))
    found = conn.execute(f"EXPLAIN QUERY PLAN {sql}", args).fetchall()
    # the row a page starts below is found by its key (a subquery) when it is stored
    assert [
        row[-1] for row in found if "SUBQUERY" not in row[-1] and "autoindex" not in row[-1]
    ] == [plan], found


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db", isolation_level=None)
    assert migrate(conn) == len(MIGRATIONS)
    assert migrate(conn) == len(MIGRATIONS)  # idempotent
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(RuntimeError, match="newer than this orchestrator"):
        migrate(conn)


async def test_events_are_stored_one_row_per_batch_and_resent_ones_are_dropped(
    store: Store, tmp_path: Path
) -> None:
    await create(store)
    batch = [event(2, "execution.started"), event(3, "node.started", "a")]
    await store.record_events("e1", batch)
    await store.record_events("e1", batch)  # resent whole
    # resent with one new event at its end: only that one is new
    await store.record_events("e1", [*batch, event(4, "node.succeeded", "a", output=1)])
    await store.record_events("e1", [event(5, "node.started", "b")])
    assert [e["seq"] for e in await store.events("e1")] == [1, 2, 3, 4, 5]
    assert [e["seq"] for e in await store.events("e1", after_seq=2)] == [3, 4, 5]
    assert await store.events("e1", after_seq=5) == []
    conn = sqlite3.connect(tmp_path / "state.db")
    rows = conn.execute(
        "SELECT first_seq, last_seq FROM event_messages WHERE execution_id = 'e1' ORDER BY first_seq"
    ).fetchall()
    conn.close()
    assert rows == [(1, 1), (2, 3), (4, 4), (5, 5)]
    doc = await store.get_execution("e1")
    assert doc is not None and doc["progress"] == 33
    nodes: Any = doc["nodes"]
    assert [n["status"] for n in nodes.values()] == ["succeeded", "running", "pending"]
    listed = await store.list_executions(workflow_id="wf", status="running", limit=1)
    assert listed[0]["progress"] == 33


async def test_an_execution_cancelled_in_the_queue_ends_every_node(store: Store) -> None:
    await create(store)
    await store.record_events("e1", [event(2, "execution.cancelled", error="stop", outputs={})])
    doc = await store.get_execution("e1")
    assert doc is not None and doc["status"] == "cancelled" and doc["progress"] == 100
    assert doc["error"] == "stop" and doc["children"] == []
    nodes: Any = doc["nodes"]
    assert {n["status"] for n in nodes.values()} == {"cancelled"}
    assert nodes["a"]["error"] == "stop"  # the run's reason
    assert nodes["a"]["finished_at"] == "2026-01-01T00:00:02.000Z"


def at_schema(path: Path, number: int) -> sqlite3.Connection:
    """A state file as schema ``number`` left it, still open for more rows."""
    conn = sqlite3.connect(path, isolation_level=None)
    for script in MIGRATIONS[:number]:
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {number}")
    return conn


def at_schema_1(path: Path) -> sqlite3.Connection:
    """A state file as the first release left it."""
    return at_schema(path, 1)


def running_e1(conn: sqlite3.Connection) -> None:
    """In an older file: SPEC registered, and run e1 of it running, 3 events stored."""
    v = Registry().plan_register(parse_spec(SPEC), force=False, now=1.0).stored
    conn.execute(
        "INSERT INTO versions VALUES (?, ?, ?, ?, ?)",
        (v.workflow_id, v.version, v.spec_json, v.digest, v.created_at),
    )
    conn.execute(
        "INSERT INTO executions (id, workflow_id, version, status, inputs, created_at,"
        " node_total, nodes_done, last_seq) VALUES ('e1', 'wf', '1.0.0', 'running', '{}',"
        " 100.0, 3, 1, 3)"
    )


async def test_a_file_at_schema_1_keeps_its_executions_and_events(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = at_schema_1(path)
    running_e1(conn)
    for i, node in enumerate("abc"):
        conn.execute(
            "INSERT INTO nodes (execution_id, node_id, ordinal) VALUES ('e1', ?, ?)", (node, i)
        )
    for e in (
        event(1, "execution.queued"),
        event(2, "node.started", "a"),
        event(3, "node.succeeded", "a", output={"x": [1]}),
    ):
        conn.execute(
            "INSERT INTO events (execution_id, seq, body) VALUES ('e1', ?, ?)",
            (e["seq"], json.dumps(e)),
        )
    conn.close()
    store = await Store.open(str(path))
    try:
        assert [e["seq"] for e in await store.events("e1")] == [1, 2, 3]
        ticket = await store.load_ticket("e1")
        assert ticket is not None and ticket.next_seq == 4
        assert [(c.node_id, c.output) for c in ticket.checkpoints] == [("a", {"x": [1]})]
        await store.record_events("e1", [event(4, "node.started", "b")])
        doc = await store.get_execution("e1")
        assert doc is not None
        nodes: Any = doc["nodes"]
        assert [n["status"] for n in nodes.values()] == ["succeeded", "running", "pending"]
    finally:
        await store.close()


def at_schema_9(path: Path) -> sqlite3.Connection:
    """A state file as schema 9 left it, when events went to the WITHOUT ROWID table."""
    return at_schema(path, 9)


def stored_message(*events: dict[str, Any]) -> bytes:
    return pb.ExecuteResponse(
        events=[wire.event_message_from_dict(e) for e in events]
    ).SerializeToString()


async def test_a_run_in_flight_across_schema_10_reads_from_both_tables(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = at_schema_9(path)
    running_e1(conn)
    before = [
        (1, 1, stored_message(event(1, "execution.queued"))),
        (
            2,
            3,
            stored_message(
                event(2, "node.started", "a"), event(3, "node.succeeded", "a", output={"x": [1]})
            ),
        ),
    ]
    for first, last, body in before:
        conn.execute("INSERT INTO event_batches VALUES ('e1', ?, ?, ?)", (first, last, body))
    conn.close()
    store = await Store.open(str(path))
    try:
        await store.record_events("e1", [event(4, "node.started", "b")])
        await store.record_events(
            "e1", [event(5, "node.succeeded", "b", output=2), event(6, "node.started", "c")]
        )
        with sqlite3.connect(path) as check:
            assert check.execute("SELECT count(*) FROM event_batches").fetchone()[0] == 2
            assert check.execute("SELECT count(*) FROM event_messages").fetchone()[0] == 2
        assert [e["seq"] for e in await store.events("e1")] == [1, 2, 3, 4, 5, 6]
        assert [e["seq"] for e in await store.events("e1", after_seq=2)] == [3, 4, 5, 6]
        # pages cross from one table to the other in seq order
        seen: list[Any] = []
        after = 0
        while True:
            page = await store.event_page("e1", after_seq=after, limit=2)
            assert page is not None
            seen.extend(e["seq"] for e in page.events)
            if page.next_after_seq is None:
                break
            after = page.next_after_seq
        assert seen == [1, 2, 3, 4, 5, 6]
        head = await store.execution_head("e1", weigh=True)
        assert head is not None
        assert head.weight == sum(len(b) for _, _, b in before) + sum(
            len(stored_message(*es))
            for es in (
                [event(4, "node.started", "b")],
                [event(5, "node.succeeded", "b", output=2), event(6, "node.started", "c")],
            )
        )
        doc = await store.get_execution("e1")
        assert doc is not None
        nodes: Any = doc["nodes"]
        assert [n["status"] for n in nodes.values()] == ["succeeded", "succeeded", "running"]
        assert nodes["a"]["output"] == {"x": [1]}
    finally:
        await store.close()


async def test_messages_of_a_few_kilobytes_take_no_overflow_page(store: Store) -> None:
    """Stream messages longer than about 1,000 bytes each took a 4 KiB overflow page of their
    own in a WITHOUT ROWID table: 5.5 KB stored a run where 2.4 KB is needed."""
    await create(store)
    for seq in range(2, 102):
        await store.record_events("e1", [event(seq, "node.log", "a", message="x" * 1500)])
    with sqlite3.connect(store.path) as conn:
        pages = dict(
            conn.execute(
                "SELECT pagetype, count(*) FROM dbstat WHERE name = 'event_messages'"
                " GROUP BY pagetype"
            ).fetchall()
        )
    assert pages.get("overflow", 0) == 0
    # 100 messages of some 1.6 KB: two to a page
    assert pages["leaf"] <= 60, pages


async def test_events_stored_with_a_new_run_are_grouped_into_rows_of_a_megabyte(
    store: Store,
) -> None:
    """A retry's kept nodes come with the run, outputs and all: hundreds of kilobytes each
    would otherwise make one row a page of the timeline decodes whole."""
    kept = [event(seq, "node.succeeded", f"n{seq}", output="x" * 300_000) for seq in range(2, 12)]
    _, created = await store.create_execution(
        execution_id="e1",
        workflow_id="wf",
        version="1.0.0",
        inputs={},
        pinned={},
        created_at=100.0,
        node_ids=["a", "b", "c"],
        first_event=event(1, "execution.queued"),
        more_events=kept,
    )
    assert created
    with sqlite3.connect(store.path) as conn:
        sizes = [
            (first, last, size)
            for first, last, size in conn.execute(
                "SELECT first_seq, last_seq, length(body) FROM event_messages"
                " WHERE execution_id = 'e1' ORDER BY first_seq"
            )
        ]
    # the queued event alone, then three outputs (900 KB) a row
    assert [(first, last) for first, last, _ in sizes] == [
        (1, 1),
        (2, 4),
        (5, 7),
        (8, 10),
        (11, 11),
    ]
    assert all(size <= 1 << 20 for _, _, size in sizes)
    assert [e["seq"] for e in await store.events("e1")] == list(range(1, 12))


async def test_trigger_history_keeps_the_newest_slots_of_each_trigger(store: Store) -> None:
    total = TRIGGER_HISTORY_KEEP + 300
    for i in range(total):
        assert await store.record_slot(TriggerFire("busy", 1000.0 + i, 1000.0 + i), "skipped", {})
    assert await store.record_slot(TriggerFire("quiet", 5.0, 5.0), "skipped", {})
    history = await store.trigger_history("busy", limit=10 * total)
    # pruned as slots come (every so many), never below the number kept
    assert TRIGGER_HISTORY_KEEP <= len(history) < TRIGGER_HISTORY_KEEP + 100
    newest = 1000.0 + total - 1
    assert history[0]["scheduled_time"] == isoformat(newest)
    # the newest stays decided: a restart resumes from it
    assert not await store.record_slot(TriggerFire("busy", newest, newest), "skipped", {})
    assert len(await store.trigger_history("quiet", limit=10)) == 1


async def test_triggers_firing_in_turn_are_each_pruned(store: Store) -> None:
    # two schedules firing alternately, as two every-second triggers do: a count of slots
    # shared by all triggers would prune only the one whose turn lands on its multiples
    total = TRIGGER_HISTORY_KEEP + 300
    for i in range(total):
        for tid in ("one", "two"):
            fire = TriggerFire(tid, 1000.0 + i, 1000.0 + i)
            assert await store.record_slot(fire, "skipped", {})
    for tid in ("one", "two"):
        kept = len(await store.trigger_history(tid, limit=10 * total))
        assert TRIGGER_HISTORY_KEEP <= kept < TRIGGER_HISTORY_KEEP + 100, (tid, kept)


async def test_a_full_database_is_unavailable_for_a_while_not_broken(store: Store) -> None:
    """SQLite's ``max_page_count`` makes the file full: writes that need a new page fail as
    on a full disk. They are ``StoreUnavailable`` (503, retried later), the store says so
    until a write passes again, and the writes around a failed one are not disturbed."""
    await create(store)

    def limit(pages: int | None) -> Any:
        def run(conn: sqlite3.Connection) -> None:
            count = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {pages or count}")

        return run

    assert store.trouble is None
    await store._writer.run(limit(None))  # the one connection that writes: full from now on
    big = [event(2, "execution.started", blob="x" * 200_000)]
    with pytest.raises(StoreUnavailable, match="database or disk is full") as caught:
        await store.record_events("e1", big)
    assert caught.value.http_status == 503 and caught.value.retry_after
    assert store.trouble is not None and "full" in store.trouble
    doc = await store.get_execution("e1")
    assert doc is not None and doc["status"] == "queued"
    assert [e["seq"] for e in await store.events("e1")] == [1]
    await store.probe()  # a page rewritten in place needs no room: the probe passes
    assert store.trouble is None
    await store._writer.run(limit(1_000_000))
    await store.record_events("e1", big)
    doc = await store.get_execution("e1")
    assert doc is not None and doc["status"] == "running"
    assert [e["seq"] for e in await store.events("e1")] == [1, 2]


async def test_a_refused_statement_is_not_a_database_in_trouble(store: Store) -> None:
    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        await store._writer.run(broken)
    assert store.trouble is None


async def test_a_state_database_is_one_stores_until_it_closes(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    assert state_holder(path) is None
    store = await Store.open(path)
    try:
        assert state_holder(path) == os.getpid()
        with pytest.raises(StateInUse, match=f"in use by process {os.getpid()}"):
            await Store.open(path)
    finally:
        await store.close()
    assert state_holder(path) is None
    again = await Store.open(path)  # the refused open left nothing held behind
    await again.close()


async def test_idempotency_keys_past_their_window_are_deleted_as_new_ones_come(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("orchestrator.store._keys_recorded", itertools.count(1))
    path = str(tmp_path / "state.db")
    store = await Store.open(path)

    async def keyed(number: int, at: float) -> None:
        await store.create_execution(
            execution_id=f"e{number}",
            workflow_id="wf",
            version="1.0.0",
            inputs={},
            pinned={},
            created_at=at,
            node_ids=["a"],
            first_event=event(1, "execution.queued"),
            idempotency_key=f"k{number}",
        )

    try:
        for number in range(_IDEMPOTENCY_PRUNE_EVERY - 1):
            await keyed(number, 100.0)
        later = 100.0 + IDEMPOTENCY_WINDOW + 1
        await keyed(_IDEMPOTENCY_PRUNE_EVERY, later)  # the one that prunes
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        keys = [row[0] for row in conn.execute("SELECT key FROM idempotency")]
    # before: every key ever sent stayed, one row per keyed request
    assert keys == [f"wf\x00k{_IDEMPOTENCY_PRUNE_EVERY}"]


async def test_a_wal_swollen_by_a_burst_of_writes_is_cut_back_after_a_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from orchestrator import store as store_module

    limit = 256 * 1024
    monkeypatch.setattr(store_module, "WAL_SIZE_LIMIT", limit)
    path = tmp_path / "state.db"
    wal = path.with_name("state.db-wal")
    s = await Store.open(str(path))
    try:
        await registered(s)
        # a retention sweep's worth of change: the WAL swells past SQLite's automatic
        # checkpoint (1,000 pages), which empties it but leaves the file at its largest
        for i in range(400):
            await create(s, f"e{i:04d}-" + "x" * 2000)
        swollen = wal.stat().st_size
        side = sqlite3.connect(path)
        side.execute("PRAGMA wal_checkpoint(PASSIVE)")  # as SQLite's own: no truncation
        side.close()
        await create(s, "after")  # the next write starts the WAL over
        after = wal.stat().st_size
    finally:
        await s.close()
    assert swollen > limit, swollen
    assert after <= limit, (swollen, after)  # before: as large as it had grown


async def test_retries_made_before_schema_13_get_the_first_run_of_their_chain(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    conn = at_schema(path, 12)
    for eid, retry_of in (("a", None), ("b", "a"), ("c", "b"), ("d", "a"), ("x", None)):
        conn.execute(
            "INSERT INTO executions (id, workflow_id, version, status, inputs, created_at,"
            " node_total, retry_of) VALUES (?, 'wf', '1.0.0', 'failed', '{}', 1.0, 1, ?)",
            (eid, retry_of),
        )
    conn.close()
    store = await Store.open(str(path))
    await store.close()
    with sqlite3.connect(path) as check:
        roots = dict(check.execute("SELECT id, retry_root FROM executions ORDER BY id"))
    assert roots == {"a": None, "b": "a", "c": "a", "d": "a", "x": None}
