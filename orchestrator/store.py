"""The durable record: workflow versions, executions, node states, events, idempotency keys.

One SQLite file in WAL mode. Every write goes through a single writer thread that takes all
the writes waiting at that moment and commits them as one transaction (group commit): under
load, hundreds of accepted executions and event batches share one fsync, and an awaiting
caller resumes only after its write is on disk. Each write runs in its own savepoint, so one
refused write never undoes its neighbours. Reads use a second connection on another thread;
WAL lets them proceed while the writer commits.

Events are the source of truth and are stored as they arrive; the ``executions`` and
``nodes`` rows are folded from them in the same transaction, so the execution JSON is one
read, and the outputs of succeeded nodes are the checkpoints a run resumes from.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from engine.core.events import isoformat
from engine.core.states import EXECUTION_TERMINAL, NODE_TERMINAL
from engine.core.values import JSON, JSONObject
from orchestrator.dispatching import Checkpoint, RunTicket
from orchestrator.versions import RegisterPlan, StoredVersion

log = logging.getLogger(__name__)

T = TypeVar("T")

IDEMPOTENCY_WINDOW: Final = 24 * 3600.0
_MAX_GROUP: Final = 512
"""Writes committed together at most: bounds one transaction's latency under a flood."""

# Each entry moves the schema one version up; PRAGMA user_version records how far a file is.
MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE versions (
        workflow_id TEXT NOT NULL,
        version     TEXT NOT NULL,
        spec_json   TEXT NOT NULL,
        digest      TEXT NOT NULL,
        created_at  REAL NOT NULL,
        PRIMARY KEY (workflow_id, version)
    ) WITHOUT ROWID;
    CREATE TABLE executions (
        id                  TEXT PRIMARY KEY,
        workflow_id         TEXT NOT NULL,
        version             TEXT NOT NULL,
        status              TEXT NOT NULL,
        inputs              TEXT NOT NULL,
        outputs             TEXT NOT NULL DEFAULT '{}',
        error               TEXT,
        created_at          REAL NOT NULL,
        started_at          TEXT,
        finished_at         TEXT,
        parent_execution_id TEXT,
        parent_node_id      TEXT,
        pinned              TEXT NOT NULL DEFAULT '{}',
        node_total          INTEGER NOT NULL,
        nodes_done          INTEGER NOT NULL DEFAULT 0,
        last_seq            INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX executions_by_time ON executions (created_at);
    CREATE INDEX executions_by_workflow ON executions (workflow_id, created_at);
    CREATE INDEX executions_unfinished ON executions (status) WHERE status IN ('queued', 'running');
    CREATE INDEX executions_by_parent ON executions (parent_execution_id)
        WHERE parent_execution_id IS NOT NULL;
    CREATE TABLE nodes (
        execution_id TEXT NOT NULL,
        node_id      TEXT NOT NULL,
        ordinal      INTEGER NOT NULL,
        status       TEXT NOT NULL DEFAULT 'pending',
        output       TEXT,
        error        TEXT,
        attempts     INTEGER NOT NULL DEFAULT 0,
        started_at   TEXT,
        finished_at  TEXT,
        engine_id    TEXT,
        PRIMARY KEY (execution_id, node_id)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        execution_id TEXT NOT NULL,
        seq          INTEGER NOT NULL,
        body         TEXT NOT NULL,
        PRIMARY KEY (execution_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE idempotency (
        key          TEXT PRIMARY KEY,
        execution_id TEXT NOT NULL,
        created_at   REAL NOT NULL
    ) WITHOUT ROWID;
    """,
)

_TERMINAL_SQL: Final = "('" + "','".join(sorted(NODE_TERMINAL)) + "')"
_EXEC_TERMINAL_SQL: Final = "('" + "','".join(sorted(EXECUTION_TERMINAL)) + "')"


def _dumps(value: JSON) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _loads(text: str | None) -> JSON:
    if text is None:
        return None
    value: JSON = json.loads(text)
    return value


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to date; returns the version the file is at."""
    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if current > len(MIGRATIONS):
        raise RuntimeError(
            f"the state database is at schema {current}, newer than this orchestrator "
            f"({len(MIGRATIONS)}): upgrade the orchestrator"
        )
    for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("state database migrated to schema %d", number)
    return len(MIGRATIONS)


# -- the worker threads ------------------------------------------------------------------------


@dataclass(slots=True)
class _Job:
    fn: Callable[[sqlite3.Connection], Any]
    future: Future[Any]
    durable: bool


class _Worker:
    """One connection on one thread; ``group`` commits every waiting job in one transaction."""

    def __init__(self, conn: sqlite3.Connection, name: str, *, group: bool) -> None:
        self._conn = conn
        self._group = group
        self._synced = False
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    async def run(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = False) -> T:
        """Run ``fn`` on the worker's connection; ``durable``: its commit is fsynced."""
        future: Future[T] = Future()
        self._jobs.put(_Job(fn, future, durable))
        return await asyncio.wrap_future(future)

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)
        self._conn.close()

    def _loop(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                return
            batch = [first]
            stopping = False
            while len(batch) < _MAX_GROUP:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                batch.append(job)
            if self._group:
                self._commit(batch)
            else:
                for job in batch:
                    self._settle(job, self._conn)
            if stopping:
                return

    @staticmethod
    def _settle(job: _Job, conn: sqlite3.Connection) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.fn(conn))
        except BaseException as exc:
            job.future.set_exception(exc)

    def _commit(self, batch: list[_Job]) -> None:
        conn = self._conn
        results: list[tuple[_Job, bool, Any]] = []
        durable = any(job.durable for job in batch)
        try:
            if durable != self._synced:
                conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
                self._synced = durable
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    value = job.fn(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    results.append((job, False, exc))
                else:
                    conn.execute("RELEASE job")
                    results.append((job, True, value))
            conn.execute("COMMIT")
        except Exception as exc:
            # the commit itself failed (disk full, I/O error): nothing of this batch is stored
            log.error("state database commit failed: %s", exc)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for job in batch:
                if job.future.set_running_or_notify_cancel():
                    job.future.set_exception(exc)
            return
        # only now, with the batch on disk, do callers learn their write happened
        for job, ok, value in results:
            if not job.future.set_running_or_notify_cancel():
                continue
            if ok:
                job.future.set_result(value)
            else:
                job.future.set_exception(value)


# -- folding events into rows -------------------------------------------------------------------


@dataclass(slots=True)
class _NodeChange:
    """What one batch of events says about one node: only its last state is written."""

    status: str = "running"
    started_at: JSON = None
    finished_at: JSON = None
    output: str | None = None
    error: JSON = None
    attempts: int = 0
    engine_id: JSON = None


def _fold(conn: sqlite3.Connection, execution_id: str, events: Sequence[JSONObject]) -> None:
    """Store events and fold them into the execution's rows (inside the writer's transaction)."""
    if not events:
        return
    conn.executemany(
        "INSERT OR IGNORE INTO events (execution_id, seq, body) VALUES (?, ?, ?)",
        [(execution_id, e["seq"], _dumps(e)) for e in events],
    )
    changes: dict[str, _NodeChange] = {}
    last_seq = 0
    run_started: JSON = None
    run_end: tuple[str, str, JSON, JSON] | None = None
    for event in events:
        seq = event.get("seq")
        if isinstance(seq, int) and seq > last_seq:
            last_seq = seq
        family, _, what = str(event.get("type", "")).partition(".")
        if family == "node":
            node_id = event.get("node_id")
            if not isinstance(node_id, str) or what not in _NODE_CHANGES:
                continue
            data = event.get("data")
            data = data if isinstance(data, dict) else {}
            change = changes.get(node_id)
            if change is None:
                change = changes[node_id] = _NodeChange()
            elif change.status in NODE_TERMINAL:
                continue  # the first end a node reaches is its end
            attempt = event.get("attempt")
            if isinstance(attempt, int) and attempt > change.attempts:
                change.attempts = attempt
            if event.get("engine_id") is not None:
                change.engine_id = event.get("engine_id")
            if what in ("started", "retrying"):
                if change.started_at is None:
                    change.started_at = event.get("time")
                change.error = data.get("error") if what == "retrying" else None
            else:
                change.status = what
                change.finished_at = event.get("time")
                change.output = _dumps(data.get("output")) if what == "succeeded" else None
                error = data.get("error")
                if error is None and what == "skipped":
                    error = data.get("reason")
                change.error = error if isinstance(error, str) else None
        elif family == "execution":
            if what == "started":
                run_started = run_started or event.get("time")
            elif what in EXECUTION_TERMINAL and run_end is None:
                data = event.get("data")
                data = data if isinstance(data, dict) else {}
                outputs = data.get("outputs")
                error = data.get("error")
                run_end = (
                    what,
                    _dumps(outputs if outputs is not None else {}),
                    error if isinstance(error, str) else None,
                    event.get("time"),
                )
    done = 0
    if changes:
        running = [
            (c.started_at, c.attempts, c.engine_id, c.error, execution_id, node_id)
            for node_id, c in changes.items()
            if c.status == "running"
        ]
        ended = [
            (
                c.status,
                c.output,
                c.error,
                c.started_at,
                c.finished_at,
                c.attempts,
                c.engine_id,
                execution_id,
                node_id,
            )
            for node_id, c in changes.items()
            if c.status != "running"
        ]
        if running:
            conn.executemany(
                "UPDATE nodes SET status = 'running', started_at = COALESCE(started_at, ?),"
                " attempts = MAX(attempts, ?), engine_id = COALESCE(?, engine_id), error = ?"
                f" WHERE execution_id = ? AND node_id = ? AND status NOT IN {_TERMINAL_SQL}",
                running,
            )
        if ended:
            done += conn.executemany(
                "UPDATE nodes SET status = ?, output = ?, error = ?,"
                " started_at = COALESCE(started_at, ?), finished_at = ?,"
                " attempts = MAX(attempts, ?), engine_id = COALESCE(?, engine_id)"
                f" WHERE execution_id = ? AND node_id = ? AND status NOT IN {_TERMINAL_SQL}",
                ended,
            ).rowcount
    if run_started is not None:
        conn.execute(
            "UPDATE executions SET status = 'running', started_at = COALESCE(started_at, ?)"
            f" WHERE id = ? AND status NOT IN {_EXEC_TERMINAL_SQL}",
            (run_started, execution_id),
        )
    if run_end is not None:
        status, outputs, error, when = run_end
        ended_now = conn.execute(
            "UPDATE executions SET status = ?, outputs = ?, error = ?, finished_at = ?"
            f" WHERE id = ? AND status NOT IN {_EXEC_TERMINAL_SQL}",
            (status, outputs, error, when, execution_id),
        ).rowcount
        if ended_now and status != "succeeded":
            # nodes the run never reached end with it, so the document tells the story
            done += conn.execute(
                "UPDATE nodes SET status = 'cancelled', finished_at = ?,"
                " error = COALESCE(error, ?) WHERE execution_id = ?"
                f" AND status NOT IN {_TERMINAL_SQL}",
                (when, f"execution {status}", execution_id),
            ).rowcount
    conn.execute(
        "UPDATE executions SET nodes_done = nodes_done + ?, last_seq = MAX(last_seq, ?)"
        " WHERE id = ?",
        (done, last_seq, execution_id),
    )


_NODE_CHANGES: Final = frozenset({"started", "retrying", *NODE_TERMINAL})


_EXECUTION_COLUMNS: Final = (
    "id, workflow_id, version, status, inputs, outputs, error, created_at, started_at,"
    " finished_at, parent_execution_id, node_total, nodes_done, parent_node_id"
)


def _document(row: sqlite3.Row | tuple[Any, ...]) -> JSONObject:
    (
        eid,
        workflow_id,
        version,
        status,
        inputs,
        outputs,
        error,
        created_at,
        started_at,
        finished_at,
        parent,
        total,
        done,
        parent_node,
    ) = row
    progress = 100 if status == "succeeded" else (100 * done) // total if total else 0
    doc: JSONObject = {
        "id": eid,
        "workflow_id": workflow_id,
        "version": version,
        "status": status,
        "inputs": _loads(inputs),
        "outputs": _loads(outputs),
        "error": error,
        "progress": progress,
        "created_at": isoformat(created_at),
        "started_at": started_at,
        "finished_at": finished_at,
        "parent_execution_id": parent,
    }
    if parent_node is not None:
        doc["parent_node_id"] = parent_node
    return doc


# -- the store ----------------------------------------------------------------------------------


class Store:
    """Async face of the state database; every method is safe to call from the event loop."""

    def __init__(self, path: str, writer: _Worker, reader: _Worker) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader

    @classmethod
    async def open(cls, path: str) -> Store:
        def prepare() -> tuple[sqlite3.Connection, sqlite3.Connection]:
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            writer = _connect(path)
            mode = writer.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal" and path != ":memory:":
                raise RuntimeError(f"cannot use write-ahead logging on {path} (got {mode})")
            # Writes that accept something (a run, a version) commit with synchronous=FULL:
            # on disk when the caller hears of it, so a 202 survives a power cut. Event
            # batches commit with NORMAL: in the WAL before the caller goes on, so they
            # survive a crash of this process; a power cut may lose the last few, and the
            # run then resumes from an earlier checkpoint. The writer switches per batch.
            writer.execute("PRAGMA synchronous = NORMAL")
            migrate(writer)
            return writer, _connect(path)

        writer, reader = await asyncio.to_thread(prepare)
        return cls(
            path,
            _Worker(writer, "store-writer", group=True),
            _Worker(reader, "store-reader", group=False),
        )

    async def close(self) -> None:
        await asyncio.to_thread(self._writer.stop)
        await asyncio.to_thread(self._reader.stop)

    # -- versions ---------------------------------------------------------------------------

    async def load_versions(self) -> list[StoredVersion]:
        def read(conn: sqlite3.Connection) -> list[StoredVersion]:
            rows = conn.execute(
                "SELECT workflow_id, version, spec_json, digest, created_at FROM versions"
            ).fetchall()
            return [StoredVersion(*row) for row in rows]

        return await self._reader.run(read)

    async def register_version(self, plan: RegisterPlan) -> None:
        v = plan.stored

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO versions (workflow_id, version, spec_json, digest, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (v.workflow_id, v.version, v.spec_json, v.digest, v.created_at),
            )

        await self._writer.run(write, durable=True)

    # -- executions -------------------------------------------------------------------------

    async def create_execution(
        self,
        *,
        execution_id: str,
        workflow_id: str,
        version: str,
        inputs: JSON,
        pinned: dict[str, str],
        created_at: float,
        node_ids: Sequence[str],
        first_event: JSONObject,
        idempotency_key: str | None = None,
        parent_execution_id: str | None = None,
        parent_node_id: str | None = None,
    ) -> tuple[str, bool]:
        """Store a new execution with its first event; with a key seen in the last 24 h,
        the earlier execution's id and False instead."""
        scoped = f"{workflow_id}\x00{idempotency_key}" if idempotency_key else None

        def write(conn: sqlite3.Connection) -> tuple[str, bool]:
            if scoped is not None:
                row = conn.execute(
                    "SELECT execution_id, created_at FROM idempotency WHERE key = ?", (scoped,)
                ).fetchone()
                if row is not None and row[1] > created_at - IDEMPOTENCY_WINDOW:
                    return str(row[0]), False
                conn.execute(
                    "INSERT OR REPLACE INTO idempotency (key, execution_id, created_at)"
                    " VALUES (?, ?, ?)",
                    (scoped, execution_id, created_at),
                )
            conn.execute(
                "INSERT INTO executions (id, workflow_id, version, status, inputs, created_at,"
                " parent_execution_id, parent_node_id, pinned, node_total, last_seq)"
                " VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
                (
                    execution_id,
                    workflow_id,
                    version,
                    _dumps(inputs),
                    created_at,
                    parent_execution_id,
                    parent_node_id,
                    json.dumps(pinned, separators=(",", ":")),
                    len(node_ids),
                    0,
                ),
            )
            conn.executemany(
                "INSERT INTO nodes (execution_id, node_id, ordinal) VALUES (?, ?, ?)",
                [(execution_id, node_id, i) for i, node_id in enumerate(node_ids)],
            )
            _fold(conn, execution_id, [first_event])
            return execution_id, True

        return await self._writer.run(write, durable=True)

    async def record_events(self, execution_id: str, events: list[JSONObject]) -> None:
        """Store events (idempotent by seq) and fold them in; returns once on disk."""
        if events:
            await self._writer.run(lambda conn: _fold(conn, execution_id, events))

    async def get_execution(self, execution_id: str) -> JSONObject | None:
        def read(conn: sqlite3.Connection) -> JSONObject | None:
            conn.execute("BEGIN")  # one snapshot for the run and its nodes
            try:
                row = conn.execute(
                    f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE id = ?", (execution_id,)
                ).fetchone()
                if row is None:
                    return None
                doc = _document(row)
                nodes: JSONObject = {}
                for (
                    node_id,
                    status,
                    output,
                    error,
                    attempts,
                    started,
                    finished,
                    engine,
                ) in conn.execute(
                    "SELECT node_id, status, output, error, attempts, started_at,"
                    " finished_at, engine_id FROM nodes WHERE execution_id = ?"
                    " ORDER BY ordinal",
                    (execution_id,),
                ):
                    nodes[node_id] = {
                        "status": status,
                        "output": _loads(output),
                        "error": error,
                        "attempts": attempts,
                        "started_at": started,
                        "finished_at": finished,
                        "engine_id": engine,
                    }
                doc["nodes"] = nodes
                doc["children"] = [
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM executions WHERE parent_execution_id = ?"
                        " ORDER BY created_at",
                        (execution_id,),
                    )
                ]
                return doc
            finally:
                conn.execute("COMMIT")

        return await self._reader.run(read)

    async def list_executions(
        self, *, workflow_id: str | None, status: str | None, limit: int
    ) -> list[JSONObject]:
        clauses, args = [], []
        if workflow_id is not None:
            clauses.append("workflow_id = ?")
            args.append(workflow_id)
        if status is not None:
            clauses.append("status = ?")
            args.append(status)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = (
            f"SELECT {_EXECUTION_COLUMNS} FROM executions {where}"
            " ORDER BY created_at DESC, rowid DESC LIMIT ?"
        )

        def read(conn: sqlite3.Connection) -> list[JSONObject]:
            return [_document(r) for r in conn.execute(sql, (*args, limit))]

        return await self._reader.run(read)

    async def events(self, execution_id: str, *, after_seq: int = 0) -> list[JSONObject]:
        def read(conn: sqlite3.Connection) -> list[JSONObject]:
            rows = conn.execute(
                "SELECT body FROM events WHERE execution_id = ? AND seq > ? ORDER BY seq",
                (execution_id, after_seq),
            )
            return [json.loads(r[0]) for r in rows]

        return await self._reader.run(read)

    async def next_seq(self, execution_id: str) -> int:
        def read(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT last_seq FROM executions WHERE id = ?", (execution_id,)
            ).fetchone()
            return int(row[0]) + 1 if row is not None else 1

        # through the writer: it sees every write queued before this call
        return await self._writer.run(read)

    async def unfinished_executions(self) -> list[tuple[str, str]]:
        """(id, workflow_id) of queued and running executions, oldest first."""

        def read(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            rows = conn.execute(
                "SELECT id, workflow_id FROM executions WHERE status IN ('queued', 'running')"
                " ORDER BY created_at"
            ).fetchall()
            return [(str(a), str(b)) for a, b in rows]

        return await self._reader.run(read)

    async def load_ticket(self, execution_id: str) -> RunTicket | None:
        """What an engine needs to start or resume the run: spec, inputs, checkpoints."""

        def read(conn: sqlite3.Connection) -> RunTicket | None:
            row = conn.execute(
                "SELECT e.workflow_id, e.version, v.spec_json, e.inputs, e.status,"
                " e.parent_execution_id, e.last_seq FROM executions e JOIN versions v"
                " ON v.workflow_id = e.workflow_id AND v.version = e.version WHERE e.id = ?",
                (execution_id,),
            ).fetchone()
            if row is None:
                return None
            workflow_id, version, spec_json, inputs, status, parent, last_seq = row
            checkpoints = [
                Checkpoint(node_id, _loads(output), attempts or 1)
                for node_id, output, attempts in conn.execute(
                    "SELECT node_id, output, attempts FROM nodes"
                    " WHERE execution_id = ? AND status = 'succeeded' ORDER BY ordinal",
                    (execution_id,),
                )
            ]
            return RunTicket(
                execution_id=execution_id,
                workflow_id=workflow_id,
                version=version,
                spec_json=spec_json,
                inputs=_loads(inputs),
                status=status,
                parent_execution_id=parent,
                checkpoints=checkpoints,
                next_seq=int(last_seq) + 1,
            )

        # through the writer, so the ticket reflects every event already accepted for storage
        return await self._writer.run(read)

    async def pinned_versions(self, execution_id: str) -> dict[str, str]:
        def read(conn: sqlite3.Connection) -> dict[str, str]:
            row = conn.execute(
                "SELECT pinned FROM executions WHERE id = ?", (execution_id,)
            ).fetchone()
            value = _loads(row[0]) if row is not None else {}
            return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}

        return await self._reader.run(read)
