"""The durable record: workflow versions, executions, their events, idempotency keys.

One SQLite file in WAL mode. Every write goes through a single writer thread that takes all
the writes waiting at that moment and commits them as one transaction (group commit): under
load, hundreds of accepted executions and event batches share one fsync, and an awaiting
caller resumes only after its write is on disk. Each write runs in its own savepoint, so one
refused write never undoes its neighbours. Reads use a second connection on another thread;
WAL lets them proceed while the writer commits. The fold of a large run (megabytes of events to
decode) takes a third, so that small reads never wait in line behind it.

Events are the source of truth and are stored as they arrive, one row per batch an engine
sends. The ``executions`` row is moved on in the same statement group (status, outputs, last
seq, a count of ended nodes), so listing runs reads no events; what is shown about the nodes
of a run, and the checkpoints (outputs of succeeded nodes) it resumes from, are folded from
its events when asked (``orchestrator.timeline``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import heapq
import itertools
import json
import logging
import os
import queue
import sqlite3
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO, Final, TypeVar

from engine import wire
from engine.api import dagengine_pb2 as pb
from engine.core.events import isoformat
from engine.core.states import EXECUTION_TERMINAL, NODE_TERMINAL
from engine.core.values import JSON, JSONObject
from orchestrator.dispatching import RunTicket
from orchestrator.errors import (
    BackupFailed,
    IdempotencyKeyReused,
    InsufficientStorage,
    NotRetryable,
    StoreUnavailable,
    WorkflowBusy,
)
from orchestrator.locking import lock_state, private_dirs, private_file
from orchestrator.timeline import (
    Checkpoint,
    fold_nodes,
    node_order,
    nodes_done,
    progress,
    progress_counts,
    resume_point,
    summarize,
)
from orchestrator.versions import RegisterPlan, StoredVersion

log = logging.getLogger(__name__)

T = TypeVar("T")

IDEMPOTENCY_WINDOW: Final = 24 * 3600.0
MAX_IDEMPOTENCY_KEY: Final = 200
"""Characters an idempotency key may have: it is stored and indexed with each run."""
LIST_LIMIT: Final = 1000
"""Most executions one listing returns."""
MAX_CANCEL_REASON: Final = 1000
"""Characters a cancel's reason may have, on both APIs: it is written on the run, on each node
it stops, and on each of their events."""


def cancel_reason(text: str) -> str:
    """A reason the orchestrator words itself (a parent node's error in it), cut to fit."""
    if len(text) <= MAX_CANCEL_REASON:
        return text
    tail = f"... ({len(text) - MAX_CANCEL_REASON} more characters)"
    return text[: MAX_CANCEL_REASON - len(tail)] + tail


LIST_PAGE_BYTES: Final = 2 << 20
"""A listing takes no row that would bring their inputs, outputs and errors past this many
bytes, but its first: rows carry whole inputs and outputs, so a count alone does not bound a
page. Half of gRPC's default 4 MiB message: a page of more than one row fits a ListExecutions
answer unless escapes swell it (text past ASCII goes escaped, six bytes a character); what
does not fit, a row larger than this alone on its page included, the gRPC service sends as
notes saying where to read it (``serving_grpc.REPLY_BYTES``)."""
HEAVY_READ_BYTES: Final = 1 << 20
"""Stored event bytes past which a run is folded on the heavy reader (``Store.get_execution``):
its decoding takes long enough to hold up every small read queued behind it."""
EVENTS_PAGE: Final = 1000
"""Events one page of a stored timeline holds unless asked otherwise."""
EVENTS_PAGE_MAX: Final = 10_000
"""Most events one page holds: some 3 MB of JSON, decoded and encoded per request."""
EVENTS_PAGE_BYTES: Final = 4 << 20
"""A page stops taking stored batches once they pass this many bytes (it always takes one):
an event may carry a node's whole output."""
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
    # events stored per batch (one row per stream message, not per event); node states are
    # folded from the events when read, so no per-node rows are written during a run. body: a
    # serialized ExecuteResponse (BLOB), or for rows moved from schema 1 a JSON array (TEXT)
    """
    CREATE TABLE event_batches (
        execution_id TEXT NOT NULL,
        first_seq    INTEGER NOT NULL,
        last_seq     INTEGER NOT NULL,
        body         TEXT NOT NULL,
        PRIMARY KEY (execution_id, first_seq)
    ) WITHOUT ROWID;
    INSERT INTO event_batches (execution_id, first_seq, last_seq, body)
        SELECT execution_id, seq, seq, '[' || body || ']' FROM events;
    DROP TABLE events;
    DROP TABLE nodes;
    """,
    # sub-workflows: a child is keyed by the parent node's item and attempt, so a parent that
    # resumes on another engine and asks again finds the child it already has
    """
    ALTER TABLE executions ADD COLUMN parent_item INTEGER;
    ALTER TABLE executions ADD COLUMN parent_attempt INTEGER;
    ALTER TABLE executions ADD COLUMN depth INTEGER NOT NULL DEFAULT 0;
    CREATE UNIQUE INDEX executions_child_key ON executions
        (parent_execution_id, parent_node_id, coalesce(parent_item, -1), parent_attempt)
        WHERE parent_execution_id IS NOT NULL AND parent_node_id IS NOT NULL;
    """,
    # triggers: those made through the API and those of each workflow's latest spec (kept so
    # pausing survives restarts); trigger_fires holds one row per decided cron slot (fired,
    # skipped, missed, failed), and its key is what makes a slot fire at most once
    """
    CREATE TABLE triggers (
        id          TEXT PRIMARY KEY,
        workflow_id TEXT NOT NULL,
        kind        TEXT NOT NULL,
        source      TEXT NOT NULL,
        version     TEXT,
        config      TEXT NOT NULL,
        paused      INTEGER NOT NULL DEFAULT 0,
        since       REAL NOT NULL,
        created_at  REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX triggers_by_workflow ON triggers (workflow_id);
    CREATE TABLE trigger_fires (
        trigger_id   TEXT NOT NULL,
        scheduled_at REAL NOT NULL,
        fired_at     REAL NOT NULL,
        outcome      TEXT NOT NULL,
        execution_id TEXT,
        detail       TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (trigger_id, scheduled_at)
    ) WITHOUT ROWID;
    """,
    # what each idempotency key was sent with (a digest of inputs and version), so the key
    # sent again with other inputs is refused instead of answered with the first run
    """
    ALTER TABLE idempotency ADD COLUMN request TEXT;
    """,
    # keys past their window are deleted as new ones come (``_IDEMPOTENCY_PRUNE_EVERY``)
    """
    CREATE INDEX idempotency_by_time ON idempotency (created_at);
    """,
    # a cancel asked of a running run, stored before it is answered: an engine that does not
    # hear it, or an orchestrator that restarts, must not let the run go on to another end
    """
    ALTER TABLE executions ADD COLUMN cancel_reason TEXT;
    """,
    # a listing by a status few runs have (failed, cancelled) walked the whole table by time:
    # a quarter of a second at a million runs, on the one reader thread
    """
    CREATE INDEX executions_by_status ON executions (status, created_at);
    """,
    # a listing by workflow and status walked every run of the workflow for the few of that
    # status (seconds at a few hundred thousand runs, on the one reader thread); retention
    # deleted each batch's idempotency keys by scanning them all
    """
    CREATE INDEX executions_by_workflow_status ON executions (workflow_id, status, created_at);
    CREATE INDEX idempotency_by_execution ON idempotency (execution_id);
    """,
    # event_batches is WITHOUT ROWID, and such a table keeps about 1,000 bytes of a row in its
    # b-tree page (4 KiB pages): each longer message took an overflow page of its own, 4 KiB
    # for a 1.5 KB message. A rowid table keeps rows up to about 4 KB in place. Rows already
    # stored stay where they are and are read from both tables (_BATCH_TABLES): copying them
    # here would hold start-up for minutes on a large file, and need as much free disk again
    # as the events take, in the file and in its WAL.
    """
    CREATE TABLE event_messages (
        execution_id TEXT NOT NULL,
        first_seq    INTEGER NOT NULL,
        last_seq     INTEGER NOT NULL,
        body         BLOB NOT NULL
    );
    CREATE UNIQUE INDEX event_messages_by_run ON event_messages (execution_id, first_seq);
    """,
    # the run a retry was made from (POST /api/v1/executions/{id}/retry), shown on its document
    """
    ALTER TABLE executions ADD COLUMN retry_of TEXT;
    """,
    # a retry looks for one of the same run still going (``create_execution``)
    """
    CREATE INDEX executions_by_retry ON executions (retry_of) WHERE retry_of IS NOT NULL;
    """,
    # the run a chain of retries began with (a retry of a retry has its first run's): one
    # retry of a chain at a time, whichever of its runs each was asked of
    """
    ALTER TABLE executions ADD COLUMN retry_root TEXT;
    UPDATE executions SET retry_root = (
        WITH RECURSIVE up(id, parent) AS (
            SELECT e.id, e.retry_of FROM executions e WHERE e.id = executions.retry_of
            UNION ALL
            SELECT e.id, e.retry_of FROM executions e JOIN up ON e.id = up.parent
        )
        SELECT id FROM up WHERE parent IS NULL
    ) WHERE retry_of IS NOT NULL;
    CREATE INDEX executions_by_retry_root ON executions (retry_root)
        WHERE retry_root IS NOT NULL;
    """,
    # a deleted workflow, until its runs are removed (``purge_workflow``): its versions stay
    # until then, for the documents of the runs not yet removed
    """
    CREATE TABLE workflow_deletions (
        workflow_id TEXT PRIMARY KEY,
        deleted_at  REAL NOT NULL
    ) WITHOUT ROWID;
    """,
)
_BATCH_TABLES: Final = ("event_messages", "event_batches")
"""Where a run's stored stream messages are: the rowid table every write goes to, and the
table of those written before schema 10, which only reads and deletes still look at."""


_encoder: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _dumps(value: JSON) -> str:
    return _encoder.encode(value)


def _loads(text: str | None) -> JSON:
    if text is None:
        return None
    value: JSON = json.loads(text)
    return value


# how long a statement waits for a lock another program holds (a sqlite3 shell, a backup):
# long enough for a backup step or a checkpoint, short enough that start-up says so
BUSY_TIMEOUT_S = 30.0
WAL_SIZE_LIMIT: Final = 64 * 1024 * 1024
"""Bytes a WAL is truncated to when a checkpoint has emptied it."""


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S
    )
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _newer(current: int) -> RuntimeError:
    return RuntimeError(
        f"the state database is at schema {current}, newer than this orchestrator "
        f"({len(MIGRATIONS)}): upgrade the orchestrator"
    )


class StateDamaged(RuntimeError):
    """STATE_DB fails SQLite's quick check at start: refused, and left as it was."""


class StateReadOnly(RuntimeError):
    """STATE_DB cannot be written by this process: refused at start."""


def _code(exc: BaseException) -> int | None:
    """SQLite's primary result code of ``exc``, if it carries one."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


# a page that does not read back as SQLite wrote it: no retry mends it
_DAMAGE_CODES: Final = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def _restore_hint(path: str) -> str:
    # .recover needs a CLI built with the dbpage table, which some distributions' lack
    return f'restore a backup, or try sqlite3 {path} ".recover" (or ".dump") into a new file'


def inspect_state(path: str) -> None:
    """Check an existing file read-only before anything opens it to write: ``check_ours`` and
    SQLite's quick check. A connection that may write replays a ``-wal`` beside the file into
    it and checkpoints it on close, so a ``-wal`` left from another database (or from a later
    copy of this one) would overwrite the file before any check could refuse it; opened with
    ``mode=ro``, SQLite reads the ``-wal`` but never writes it back (only a ``-shm`` is made)."""
    if path == ":memory:" or not os.path.exists(path):
        return  # created as new by the writer
    uri = Path(path).absolute().as_uri() + "?mode=ro"
    size = os.path.getsize(path)
    if size >= _SAID_CHECK_BYTES:
        # it reads every page: tens of seconds for a few GB not in the page cache, during
        # which nothing else is said and no port listens
        log.info("checking the state database (%.1f GB) before opening it", size / 1e9)
    began = time.monotonic()
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_S)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        # SQLite reads a -wal beside the file as part of it, whichever file it came from
        beside = (
            f" (read with the {Path(path).name}-wal beside it: one left from another file, or "
            "from another copy of this one, reads so too)"
            if os.path.exists(f"{path}-wal") and os.path.getsize(f"{path}-wal") > 0
            else ""  # an empty one (as a refused start leaves) holds nothing to read
        )
        try:
            check_ours(conn, path)
            rows = [str(row[0]) for row in conn.execute("PRAGMA quick_check(3)")]
        except sqlite3.DatabaseError as exc:
            if _code(exc) not in _DAMAGE_CODES:
                raise
            rows = [str(exc)]
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}{beside}") from None
    finally:
        conn.close()
    took = time.monotonic() - began
    if took > 1:
        log.info("the state database's quick check took %.1f s", took)
    if rows != ["ok"]:
        # one row may hold several lines, under a "*** in database main ***" heading
        problems = [
            line
            for row in rows
            for line in row.splitlines()
            if line.strip() and not line.startswith("***")
        ] or ["quick check failed"]
        more = ", and more" if len(problems) > 1 else ""
        raise StateDamaged(
            f"STATE_DB {path} is damaged ({problems[0]}{more}){beside}; it is left as it was: "
            f"{_restore_hint(path)}"
        )


def check_writable(conn: sqlite3.Connection, path: str) -> None:
    """A write that changes nothing (the schema number rewritten as it is): a file this process
    may read but not write would otherwise give an orchestrator that is never ready."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        if _code(exc) != sqlite3.SQLITE_READONLY:
            raise
        # the -wal and -shm must be writable too: an earlier refused start may have made them
        # with the file's mode, so the file alone made writable is not enough
        named = []
        for each in (path, f"{path}-wal", f"{path}-shm"):
            if each != path and (not os.path.exists(each) or os.access(each, os.W_OK)):
                continue
            try:
                st = os.stat(each)
                named.append(
                    f"{Path(each).name} owned by uid {st.st_uid}, mode {st.st_mode & 0o7777:o}"
                )
            except OSError as problem:
                named.append(f"{Path(each).name}: cannot stat it: {problem.strerror}")
        raise StateReadOnly(
            f"STATE_DB {path} cannot be written by this process (uid {os.getuid()}): {exc} "
            f"({'; '.join(named)}); give it, its -wal and -shm and its directory write "
            "access, or point STATE_DB elsewhere"
        ) from exc


def check_ours(conn: sqlite3.Connection, path: str) -> None:
    """Refuse a file this orchestrator must not write to, before anything is written to it:
    one at a newer schema, or one that holds tables but no schema number (another program's
    database, which the first migration would otherwise fill with ours, or fail half-way in)."""
    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if current > len(MIGRATIONS):
        raise _newer(current)
    if current == 0:
        tables = [
            str(name)
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')"
                " AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        if tables:
            shown = ", ".join(repr(t) for t in tables[:5])
            more = f" and {len(tables) - 5} more" if len(tables) > 5 else ""
            raise RuntimeError(
                f"{path} is not a DAG Engine state database: it holds {len(tables)} "
                f"table(s) ({shown}{more}) but no schema number (user_version 0); "
                "left as it was: point STATE_DB at a new or empty file"
            )


@dataclass(frozen=True, slots=True)
class StateSummary:
    """What a state file holds, as a backup's maker and its receiver both tell it."""

    schema: int
    executions: int
    workflows: int


def summarize_state(conn: sqlite3.Connection, path: str) -> StateSummary:
    """Its schema and counts, refusing a file that is not a DAG Engine state database (no
    schema number, as ``check_ours`` refuses it, or no table of runs). A newer schema is no
    refusal here: a backup of a newer orchestrator is still a backup."""
    schema = int(conn.execute("PRAGMA user_version").fetchone()[0])
    tables = {
        str(name) for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    if schema == 0 or not {"executions", "versions"} <= tables:
        raise RuntimeError(
            f"{path} is not a DAG Engine state database (schema number {schema}, "
            f"{len(tables)} table(s){'' if 'executions' in tables else ', no executions'})"
        )
    executions = int(conn.execute("SELECT count(*) FROM executions").fetchone()[0])
    workflows = int(conn.execute("SELECT count(DISTINCT workflow_id) FROM versions").fetchone()[0])
    return StateSummary(schema, executions, workflows)


BACKUP_MARGIN: Final = 16 << 20
"""Bytes a backup leaves free beside STATE_DB on top of a tenth of the file's size: the copy
must not take the room the orchestrator's own writes (and the WAL, which grows while the copy
reads) need."""


@dataclass(frozen=True, slots=True)
class Backup:
    """A verified copy of the state database, open and already unlinked: it lives as long as
    ``file`` is open, and a crash leaves nothing on disk."""

    file: BinaryIO
    size: int
    summary: StateSummary
    taken_at: float
    took: float


def _backup_prefix(path: str) -> str:
    return f".{Path(path).name}.backup-"


def backup_state(path: str) -> Backup:
    """Copy STATE_DB with SQLite's online backup API into a file beside it, check the copy and
    hand it over open and unlinked. Blocking: run it on a thread of its own.

    ``InsufficientStorage`` without room for it, ``BackupFailed`` when the copy fails its
    check, ``StoreUnavailable`` when the database cannot be read now.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        return _copy_state(path, folder)
    except sqlite3.Error as exc:
        if _code(exc) == sqlite3.SQLITE_FULL:
            raise InsufficientStorage(
                f"the disk of {folder} filled up while the backup was copied: {exc}",
                {"directory": folder},
            ) from exc
        raise _classify(exc) from exc
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise InsufficientStorage(
                f"no room for a backup in {folder}: {exc.strerror}", {"directory": folder}
            ) from exc
        raise _classify(exc) from exc


def _copy_state(path: str, folder: str) -> Backup:
    began = time.monotonic()
    prefix = _backup_prefix(path)
    for name in os.listdir(folder):
        # a copy left by a crash between its making and its unlinking: one backup runs at a
        # time, and one orchestrator per file (the lock), so no other one is being made
        if name.startswith(prefix):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, name))
    # The copy is one step on a fresh read-only connection: one read transaction, which in
    # WAL mode holds no lock a writer waits for, and a snapshot, so writes committed meanwhile
    # are not in it and do not restart it (a backup in several steps starts over after each
    # write of another connection, and under steady writes might never end).
    uri = Path(path).absolute().as_uri() + "?mode=ro"
    source = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_S)
    try:
        source.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        pages = int(source.execute("PRAGMA page_count").fetchone()[0])
        size = pages * int(source.execute("PRAGMA page_size").fetchone()[0])
        needed = size + size // 10 + BACKUP_MARGIN
        st = os.statvfs(folder)
        free = st.f_bavail * st.f_frsize
        if free < needed:
            raise InsufficientStorage(
                f"no room for a backup in {folder}: it needs {needed} bytes (the state "
                f"database's {size} and a margin for the orchestrator's own writes), "
                f"{free} are free",
                {"directory": folder, "needed": needed, "free": free},
            )
        fd, temp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
        os.close(fd)
        try:
            taken_at = time.time()
            copy = sqlite3.connect(temp, isolation_level=None)
            try:
                # nothing to roll back into: a copy that fails half-way is thrown away
                copy.execute("PRAGMA journal_mode = OFF")
                copy.execute("PRAGMA synchronous = OFF")
                source.backup(copy)
                # the copy's header says WAL, as the source's does: in rollback mode it opens
                # read-only by itself, with no -wal and -shm to be made beside it
                copy.execute("PRAGMA journal_mode = DELETE")
            finally:
                copy.close()
            summary = _check_backup(temp, path)
            file = open(temp, "rb")  # handed over open: the caller closes it
        finally:
            os.unlink(temp)
    finally:
        source.close()
    size = os.fstat(file.fileno()).st_size
    return Backup(file, size, summary, taken_at, time.monotonic() - began)


def _check_backup(temp: str, path: str) -> StateSummary:
    """BackupFailed unless the copy passes SQLite's quick check and holds a state database."""
    conn = sqlite3.connect(Path(temp).absolute().as_uri() + "?mode=ro", uri=True)
    try:
        rows = [str(row[0]) for row in conn.execute("PRAGMA quick_check(3)")]
        if rows != ["ok"]:
            raise BackupFailed(
                f"the backup's copy of {path} fails SQLite's quick check ({rows[0]}): it was "
                "dropped, not sent; try again, and if it fails again check the state "
                "database itself (/readyz, the log)"
            )
        try:
            return summarize_state(conn, path)
        except RuntimeError as exc:
            raise BackupFailed(f"the backup's copy is not whole: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise BackupFailed(f"the backup's copy of {path} cannot be read back: {exc}") from exc
    finally:
        conn.close()


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to date; returns the version the file is at."""
    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if current > len(MIGRATIONS):
        raise _newer(current)
    if 0 < current < len(MIGRATIONS):
        # an index built over a large table takes a while (about a second per million runs),
        # and the orchestrator answers nothing meanwhile: say why it is slow to start
        log.info(
            "migrating the state database from schema %d to %d: new indexes over a large "
            "file take a few seconds",
            current,
            len(MIGRATIONS),
        )
    created = time.monotonic()
    for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
        began = time.monotonic()
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
        if current > 0:  # a new file's steps are no news: it is said once, below
            log.info(
                "state database migrated to schema %d in %.1f s", number, time.monotonic() - began
            )
    if current == 0:
        log.info(
            "state database made, at schema %d, in %.1f s",
            len(MIGRATIONS),
            time.monotonic() - created,
        )
    return len(MIGRATIONS)


# -- the worker threads ------------------------------------------------------------------------


@dataclass(slots=True)
class _Job:
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    durable: bool
    writes: bool
    """It writes even if it changes no row (``Store.probe``)."""


# SQLite's primary result codes for "the database cannot be used just now", as opposed to a
# statement it refused: a full disk, an I/O error, a lock held past the busy timeout, a file
# that turned read-only or vanished, no memory. Callers back off and try again.
_UNAVAILABLE_CODES: Final = frozenset(
    {
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_NOMEM,
        # a damaged page: refused like the rest instead of failing as a bug would, and
        # remembered (``_Health``), for it does not mend by waiting
        *_DAMAGE_CODES,
    }
)


def _classify(exc: Exception) -> Exception:
    """``StoreUnavailable`` for a database that cannot be used now; others as they are."""
    if isinstance(exc, OSError) or (
        isinstance(exc, sqlite3.Error) and _code(exc) in _UNAVAILABLE_CODES
    ):
        unavailable = StoreUnavailable(f"the state database cannot be used now: {exc}")
        unavailable.__cause__ = exc
        return unavailable
    return exc


def _deliver(results: list[tuple[_Job, bool, Any]]) -> None:
    """On the event loop: settle the futures of one group of jobs."""
    for job, ok, value in results:
        if job.future.done():
            continue  # its caller stopped waiting
        if ok:
            job.future.set_result(value)
        else:
            job.future.set_exception(value)


class _Health:
    """What makes the file unfit for new writes until a restart, shared by the store's threads:
    a damaged page found while running, or the file removed or replaced under the
    orchestrator (its writes would go on into a file no restart opens again)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.identity: tuple[int, int] | None = None
        if path != ":memory:":
            st = os.stat(path)
            self.identity = (st.st_dev, st.st_ino)
        self.damaged: str | None = None
        """Set once, on the thread that met the damage; read on any."""

    def fault(self) -> str | None:
        """Why nothing more should be accepted, else None; one ``stat`` of the file."""
        if self.damaged is not None:
            return self.damaged
        if self.identity is None:
            return None
        try:
            st = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError:
            return None  # cannot tell (a permission on the way): the open file still works
        else:
            if (st.st_dev, st.st_ino) == self.identity:
                return None
        return (
            f"STATE_DB {self.path} was removed or replaced while the orchestrator ran: runs "
            "since are only in the file it has open; stop it, remove the -wal and -shm beside "
            "the file now there (they are the replaced file's, and would be read into it), "
            "then start it"
        )

    def note(self, results: list[tuple[_Job, bool, Any]]) -> None:
        """On a worker's thread: remember the first damaged page met, and say so once."""
        if self.damaged is not None:
            return
        for _, ok, value in results:
            cause = value.__cause__ if isinstance(value, StoreUnavailable) else None
            if not ok and cause is not None and _code(cause) in _DAMAGE_CODES:
                self.damaged = (
                    f"STATE_DB {self.path} is damaged ({cause}): new runs are refused; stop "
                    f"the orchestrator, then {_restore_hint(self.path)}"
                )
                log.error("%s", self.damaged)
                return


class _Worker:
    """One connection on one thread; ``group`` commits every waiting job in one transaction.

    Results go back to the event loop once per group, not once per job: one wake-up of the
    loop settles every caller of a transaction.
    """

    def __init__(
        self, conn: sqlite3.Connection, name: str, *, group: bool, health: _Health
    ) -> None:
        self._conn = conn
        self._group = group
        self._health = health
        self.trouble: str | None = None
        """Why the last job failed, when the database could not be used for it; None once a
        job succeeds again (on the writer: one that wrote, as a read passes on a full disk).
        Set on the worker's thread, read on the loop's."""
        self._synced = False
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    async def run(
        self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = False, writes: bool = False
    ) -> T:
        """Run ``fn`` on the worker's connection; ``durable``: its commit is fsynced;
        ``writes``: it writes though it changes no row (else rows changed tell)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(fn, future, loop, durable, writes))
        return await future

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
            # a caller that stopped waiting before its job began does not get it run
            batch = [job for job in batch if not job.future.cancelled()]
            if batch:
                if self._group:
                    results, wrote = self._commit(batch)
                else:
                    results = self._each(batch)
                    wrote = any(ok for _, ok, _ in results)
                self._health.note(results)
                self._note_trouble(results, wrote)
                self._send(results)
            if stopping:
                return

    def _note_trouble(self, results: list[tuple[_Job, bool, Any]], wrote: bool) -> None:
        """``wrote``: something of the batch is stored. Only that clears a trouble: reads
        (and writes that changed nothing) commit on a full disk as well, and would have the
        log say it takes writes again, dozens of times a second, while it takes none."""
        trouble = next(
            (str(v) for _, ok, v in results if not ok and isinstance(v, StoreUnavailable)), None
        )
        if trouble is None and not wrote:
            # only refused statements or reads: they say nothing of the database's health
            return
        if self._health.damaged is not None:
            pass  # said once (``_Health.note``); writes that miss the page would flap it
        elif trouble is not None and self.trouble is None:
            log.error("%s", trouble)
        elif trouble is None and self.trouble is not None:
            log.warning("the state database takes writes again")
        self.trouble = trouble

    @staticmethod
    def _send(results: list[tuple[_Job, bool, Any]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, bool, Any]]] = {}
        for result in results:
            by_loop.setdefault(result[0].loop, []).append(result)
        for loop, some in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, some)
            except RuntimeError:  # the loop closed while its callers waited: nobody to tell
                pass

    def _each(self, batch: list[_Job]) -> list[tuple[_Job, bool, Any]]:
        results: list[tuple[_Job, bool, Any]] = []
        for job in batch:
            try:
                results.append((job, True, job.fn(self._conn)))
            except Exception as exc:
                results.append((job, False, _classify(exc)))
        return results

    def _commit(self, batch: list[_Job]) -> tuple[list[tuple[_Job, bool, Any]], bool]:
        """Each job's result, and whether the commit stored anything."""
        conn = self._conn
        results: list[tuple[_Job, bool, Any]] = []
        wrote = False
        durable = any(job.durable for job in batch)
        fault = self._health.fault() if durable else None
        if fault is not None:
            # nothing is accepted that a restart would not find, or that a damaged file holds
            refused = StoreUnavailable(f"the state database cannot be used now: {fault}")
            return [(job, False, refused) for job in batch], False
        try:
            if durable != self._synced:
                conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
                self._synced = durable
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                conn.execute("SAVEPOINT job")
                changes = conn.total_changes
                try:
                    value = job.fn(conn)
                except Exception as exc:
                    try:
                        conn.execute("ROLLBACK TO job")
                        conn.execute("RELEASE job")
                    except sqlite3.Error:
                        # SQLite ended the whole transaction (a full disk does): the batch
                        # fails with the job's own error
                        raise exc from None
                    results.append((job, False, _classify(exc)))
                else:
                    conn.execute("RELEASE job")
                    results.append((job, True, value))
                    wrote = wrote or job.writes or conn.total_changes != changes
            conn.execute("COMMIT")
        except Exception as exc:
            # the commit itself failed (disk full, I/O error): nothing of this batch is stored
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # SQLite rolled back already (it does on a full disk or I/O error)
            failure = _classify(exc)
            return [(job, False, failure) for job in batch], False
        # only now, with the batch on disk, do callers learn their write happened
        return results, wrote


# -- events in, rows out ------------------------------------------------------------------------

_TERMINAL_SQL: Final = "('" + "','".join(sorted(EXECUTION_TERMINAL)) + "')"

# Each batch moves the execution row on with one statement, the cheapest that fits: most
# batches only advance the seq, and a statement that names ``status`` costs index upkeep.
# "status IN terminal" reads the row as it was, so the first end an execution reaches is its end.
_ADVANCE: Final = "UPDATE executions SET last_seq = ?, nodes_done = nodes_done + ?"
_START: Final = (
    f", status = CASE WHEN status IN {_TERMINAL_SQL} THEN status ELSE 'running' END,"
    " started_at = COALESCE(started_at, ?)"
)
_END: Final = (
    f", status = CASE WHEN status IN {_TERMINAL_SQL} THEN status ELSE ? END,"
    " started_at = COALESCE(started_at, ?),"
    f" outputs = CASE WHEN status IN {_TERMINAL_SQL} THEN outputs ELSE ? END,"
    f" error = CASE WHEN status IN {_TERMINAL_SQL} THEN error ELSE ? END,"
    f" finished_at = CASE WHEN status IN {_TERMINAL_SQL} THEN finished_at ELSE ? END"
)
_WHERE: Final = " WHERE id = ?"
_GUARD: Final = " AND last_seq < ?"


def _advance(
    conn: sqlite3.Connection, execution_id: str, events: Sequence[JSONObject], *, guard: bool
) -> int:
    """Fold a batch into the execution row; with ``guard``, only when it follows what is
    stored (its first seq is past the row's last). Returns the rows changed (0 or 1)."""
    batch = summarize(events)
    end = batch.end
    sql = _ADVANCE
    params: tuple[Any, ...] = (batch.last_seq, batch.nodes_done)
    if end is not None:
        status, outputs, error, finished = end
        sql += _END
        params += (status, batch.started_at, _dumps(outputs), error, finished)
    elif batch.started_at is not None:
        sql += _START
        params += (batch.started_at,)
    sql += _WHERE
    params += (execution_id,)
    if guard:
        sql += _GUARD
        params += (batch.first_seq,)
    return conn.execute(sql, params).rowcount


def _encode(events: Sequence[JSONObject]) -> bytes:
    return pb.ExecuteResponse(
        events=[wire.event_message_from_dict(e) for e in events]
    ).SerializeToString()


def _decode(body: bytes | str) -> list[JSONObject]:
    if isinstance(body, str):  # a row from before schema 2: a JSON array
        events: list[JSONObject] = json.loads(body)
        return events
    return [wire.event_dict(m) for m in pb.ExecuteResponse.FromString(body).events]


_GROUP_BYTES: Final = 1 << 20
"""Bytes of events a row holds at most when the store groups them itself, as an engine's
stream messages are (``wire.event_batches``): a page of a timeline decodes whole rows."""


def _grouped(events: Sequence[JSONObject]) -> Iterator[list[JSONObject]]:
    """``events`` in runs of up to ``_GROUP_BYTES`` encoded (an event larger goes alone): a
    retry's kept nodes carry their outputs, megabytes each at most, of hundreds of nodes."""
    group: list[JSONObject] = []
    size = 0
    for event in events:
        n = wire.event_message_from_dict(event).ByteSize() if len(events) > 1 else 0
        if group and size + n > _GROUP_BYTES:
            yield group
            group, size = [], 0
        group.append(event)
        size += n
    if group:
        yield group


def _record(
    conn: sqlite3.Connection,
    execution_id: str,
    events: Sequence[JSONObject],
    body: bytes | None = None,
) -> None:
    """Store one batch of events as one row and move the execution row on (in the writer's
    transaction). ``body``: the batch already encoded (the engine's message), else encoded
    here. Idempotent: events at or below the stored last seq (a batch resent after a failover)
    are dropped, so the timeline never holds a seq twice."""
    if not events:
        return
    if not _advance(conn, execution_id, events, guard=True):
        row = conn.execute(
            "SELECT last_seq FROM executions WHERE id = ?", (execution_id,)
        ).fetchone()
        if row is None:
            return  # no such execution: nothing to attach the events to
        fresh = [e for e in events if e["seq"] > row[0]]
        if not fresh:
            return
        if len(fresh) < len(events):
            events, body = fresh, None
        _advance(conn, execution_id, events, guard=False)
    conn.execute(
        "INSERT INTO event_messages (execution_id, first_seq, last_seq, body) VALUES (?, ?, ?, ?)",
        (
            execution_id,
            events[0]["seq"],
            events[-1]["seq"],
            body if body is not None else _encode(events),
        ),
    )


def _bodies(
    conn: sqlite3.Connection, execution_id: str, after_seq: int = 0
) -> Generator[bytes | str, None, None]:
    """The stored messages of one execution holding events past ``after_seq``, in seq order:
    merged from both tables, as a run in flight across the upgrade to schema 10 has rows in
    each. Read as they are needed, so a page of a long timeline reads only its own rows."""
    cursors = [
        conn.execute(
            f"SELECT first_seq, body FROM {table}"
            " WHERE execution_id = ? AND last_seq > ? ORDER BY first_seq",
            (execution_id, after_seq),
        )
        for table in _BATCH_TABLES
    ]
    try:
        for _, body in heapq.merge(*cursors, key=_first_seq):
            yield body
    finally:
        for cursor in cursors:
            cursor.close()


def _first_seq(row: tuple[int, bytes | str]) -> int:
    return row[0]


# events whose data the node fold reads; the data of every other event is left unparsed
# (node.progress's only as far as its counts: progress_counts)
_FOLDED_DATA: Final = frozenset(
    {
        "node.retrying",
        "node.progress",
        *(f"node.{what}" for what in NODE_TERMINAL),
        *(f"execution.{what}" for what in EXECUTION_TERMINAL),
    }
)


def _fold_input(conn: sqlite3.Connection, execution_id: str) -> list[JSONObject]:
    """The events of one execution with just what ``fold_nodes`` reads: for a run of
    thousands of nodes, several times quicker than decoding every event whole."""
    events: list[JSONObject] = []
    for body in _bodies(conn, execution_id):
        if isinstance(body, str):
            events.extend(json.loads(body))
            continue
        for m in pb.ExecuteResponse.FromString(body).events:
            kind = m.type
            events.append(
                {
                    "type": kind,
                    "node_id": m.node_id,
                    "attempt": m.attempt,
                    "engine_id": m.engine_id or None,
                    "time": m.time,
                    "data": (
                        None
                        if kind not in _FOLDED_DATA or not m.data_json
                        else progress_counts(m.data_json)
                        if kind == "node.progress"
                        else wire.loads(m.data_json)
                    ),
                }
            )
    return events


def _timeline(conn: sqlite3.Connection, execution_id: str, after_seq: int = 0) -> list[JSONObject]:
    """The stored events of one execution past ``after_seq``, in seq order."""
    events: list[JSONObject] = []
    for body in _bodies(conn, execution_id, after_seq):
        events.extend(_decode(body))
    if events and events[0]["seq"] <= after_seq:  # type: ignore[operator]
        events = [e for e in events if e["seq"] > after_seq]  # type: ignore[operator]
    return events


@dataclass(frozen=True, slots=True)
class EventPage:
    """Part of a stored timeline, in seq order."""

    events: list[JSONObject]
    next_after_seq: int | None
    """Where the next page starts (the seq of this page's last event) when more events are
    stored past this page; None when this page reached the end of what is stored."""


def _event_page(
    conn: sqlite3.Connection, execution_id: str, after_seq: int, limit: int, max_bytes: int
) -> EventPage:
    """At most ``limit`` events past ``after_seq``, from as many stored batches as hold them
    (and no more than ``max_bytes`` of batches past the first): a page of a long timeline
    decodes only its own batches."""
    events: list[JSONObject] = []
    size = 0
    bodies = _bodies(conn, execution_id, after_seq)
    try:
        for body in bodies:
            if len(events) >= limit or size >= max_bytes:
                # full, and another batch is stored past it (each batch read holds an event
                # past after_seq, so the page is not empty here)
                return EventPage(events, _event_seq(events[-1]))
            size += len(body)
            fresh = [e for e in _decode(body) if _event_seq(e) > after_seq]
            room = limit - len(events)
            events.extend(fresh[:room])
            if len(fresh) > room:
                return EventPage(events, _event_seq(events[-1]))
    finally:
        bodies.close()
    return EventPage(events, None)


def _event_seq(event: JSONObject) -> int:
    seq = event["seq"]
    assert isinstance(seq, int)
    return seq


class ExecutionPage(list[JSONObject]):
    """A page of a listing; ``cut``: it was ended by ``LIST_PAGE_BYTES`` before ``limit``, so
    more rows may follow it. A list, so callers that only read rows need not know."""

    __slots__ = ("cut",)

    def __init__(self, rows: list[JSONObject], cut: bool) -> None:
        super().__init__(rows)
        self.cut = cut


def listing_sql(*, workflow: bool, status: bool, before: bool, before_gone: bool = False) -> str:
    """The listing query, newest first, with a ``?`` for each filter given (``before``, then
    ``workflow``, then ``status``) and the limit. Each combination of filters searches an index
    of its own (``test_store``'s plans), so no listing walks runs it does not show.
    ``before_gone``: ``before`` names a run that is no longer stored, and takes three ``?``
    (``gone_bounds``) in place of one."""
    clauses: list[str] = []
    if before_gone:
        # the order's key as the id tells it (its creation to the millisecond, then the id):
        # within that millisecond, runs fall on either side by id rather than by their row
        clauses.append("created_at < ? AND (created_at < ? OR id < ?)")
    elif before:
        # keyset paging: the order's own key, so pages neither skip nor repeat a run
        clauses.append(
            "(created_at, rowid) < (SELECT created_at, rowid FROM executions WHERE id = ?)"
        )
    if workflow:
        clauses.append("workflow_id = ?")
    if status:
        clauses.append("status = ?")
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    return (
        f"SELECT {_EXECUTION_COLUMNS} FROM executions{where}"
        " ORDER BY created_at DESC, rowid DESC LIMIT ?"
    )


_EARLIEST_ID_MS: Final = 1_577_836_800_000
"""2020-01-01 in milliseconds: ids that read as earlier were not made with their time first."""


def gone_bounds(execution_id: str, now: float) -> tuple[float, float, str] | None:
    """Where a listing ``before`` a run no longer stored (deleted by retention) goes on: the
    arguments of ``listing_sql(before_gone=True)``, from the creation time its id starts with
    (``orchestrating.new_execution_id``: 12 hex digits of milliseconds, then 20 random). None
    for an id not made so, or whose time is not one a stored run can have (ids of the first
    releases were random): nothing tells where such a run stood."""
    if len(execution_id) != 32 or execution_id.strip("0123456789abcdef"):
        return None
    millis = int(execution_id[:12], 16)
    if not _EARLIEST_ID_MS <= millis <= (now + 86_400) * 1000:  # a day of clock skew at most
        return None
    # created_at is read just after the id is made: within the same millisecond but for a
    # stall of the thread between the two
    return ((millis + 1) / 1000, millis / 1000, execution_id)


def page_continues(found: Sequence[JSONObject], limit: int) -> bool:
    """Whether rows may follow a listing page asked with ``limit``: it is full, or it was cut
    by size. Where it ends, the next page starts (``before`` its last id)."""
    return bool(found) and (len(found) >= limit or getattr(found, "cut", False) is True)


_EXECUTION_COLUMNS: Final = (
    "id, workflow_id, version, status, inputs, outputs, error, created_at, started_at,"
    " finished_at, parent_execution_id, node_total, nodes_done, parent_node_id, parent_item,"
    " parent_attempt, retry_of"
)


_HEAVY_COLUMNS: Final = (4, 5, 6)
"""inputs, outputs and error in ``_EXECUTION_COLUMNS``: what makes one row weigh more than
another."""
_ROW_BYTES: Final = 400
"""What the rest of a row weighs in JSON, about."""


def _document(row: sqlite3.Row | tuple[Any, ...], done: Fraction | None = None) -> JSONObject:
    """The execution JSON without nodes; ``done``: nodes ended, when folded from the events
    (``nodes_done``, which counts a running foreach node's share of items)."""
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
        counted,
        parent_node,
        parent_item,
        parent_attempt,
        retry_of,
    ) = row
    doc: JSONObject = {
        "id": eid,
        "workflow_id": workflow_id,
        "version": version,
        "status": status,
        "inputs": _loads(inputs),
        "outputs": _loads(outputs),
        "error": error,
        "progress": progress(status, counted if done is None else done, total),
        "created_at": isoformat(created_at),
        "started_at": started_at,
        "finished_at": finished_at,
        "parent_execution_id": parent,
        "parent_node_id": parent_node,
        # which item of a foreach node the run is for (a child of one): null otherwise
        "parent_item": parent_item,
        # which attempt of that node (a node retried runs a new child per attempt): null
        # otherwise
        "parent_attempt": parent_attempt if parent_node else None,
        "retry_of": retry_of,
    }
    return doc


@dataclass(frozen=True, slots=True)
class Lineage:
    execution_id: str
    workflow_id: str
    version: str
    status: str
    depth: int
    pinned: dict[str, str]


@dataclass(frozen=True, slots=True)
class RetrySource:
    """What a retry of an execution takes from it: the same run, with the nodes that
    succeeded kept."""

    workflow_id: str
    version: str
    status: str
    inputs: JSON
    pinned: dict[str, str]
    parent_execution_id: str | None
    ended: list[Checkpoint]
    """The nodes that ended (those that succeeded with their outputs), in the order they did."""


@dataclass(frozen=True, slots=True)
class ChildLink:
    """A child execution and the parent node (item, attempt) waiting on it."""

    execution_id: str
    parent_execution_id: str
    node_id: str | None
    item: int | None
    attempt: int


# -- triggers -----------------------------------------------------------------------------------


class SlotTaken(Exception):
    """A cron slot that was already decided (fired, skipped, missed): it never fires again."""


@dataclass(frozen=True, slots=True)
class TriggerFire:
    """One cron slot of one trigger, as recorded: the key is (trigger_id, scheduled_at)."""

    trigger_id: str
    scheduled_at: float
    fired_at: float


@dataclass(frozen=True, slots=True)
class StoredTrigger:
    """One row of the triggers table, with what its fire history says."""

    id: str
    workflow_id: str
    kind: str  # cron | http
    source: str  # api | spec
    version: str | None  # a range (API triggers); the defining version (spec triggers)
    config: JSONObject
    paused: bool
    since: float  # slots before this instant are not this trigger's to fire (creation, resume)
    created_at: float
    last_slot: float | None = None
    last_execution_id: str | None = None


def _record_slot(
    conn: sqlite3.Connection,
    fire: TriggerFire,
    outcome: str,
    execution_id: str | None,
    detail: JSON,
) -> None:
    try:
        conn.execute(
            "INSERT INTO trigger_fires (trigger_id, scheduled_at, fired_at, outcome, execution_id,"
            " detail) VALUES (?, ?, ?, ?, ?, ?)",
            (
                fire.trigger_id,
                fire.scheduled_at,
                fire.fired_at,
                outcome,
                execution_id,
                _dumps(detail),
            ),
        )
    except sqlite3.IntegrityError:
        raise SlotTaken(f"{fire.trigger_id} at {isoformat(fire.scheduled_at)}") from None
    _slots_recorded[fire.trigger_id] += 1
    if _slots_recorded[fire.trigger_id] % _PRUNE_EVERY == 0:
        # keep each trigger's newest slots: the newest is what a restart resumes from, and a
        # schedule every few seconds would otherwise add tens of thousands of rows a day.
        # Counted per trigger: a count shared by all would land on the same few triggers.
        conn.execute(
            "DELETE FROM trigger_fires WHERE trigger_id = ? AND scheduled_at < ("
            " SELECT scheduled_at FROM trigger_fires WHERE trigger_id = ?"
            " ORDER BY scheduled_at DESC LIMIT 1 OFFSET ?)",
            (fire.trigger_id, fire.trigger_id, TRIGGER_HISTORY_KEEP - 1),
        )


_IDEMPOTENCY_PRUNE_EVERY: Final = 256
_keys_recorded: Final = itertools.count(1)
"""Numbers the idempotency keys this process stores (only the writer thread takes them)."""

TRIGGER_HISTORY_KEEP: Final = 1000
"""Decided slots kept per trigger (its history); older ones are pruned as new ones come."""
_PRUNE_EVERY: Final = 64
_slots_recorded: collections.Counter[str] = collections.Counter()
"""Slots recorded by this process, per trigger (only the writer thread touches it)."""


def _stored_trigger(row: tuple[Any, ...]) -> StoredTrigger:
    tid, workflow_id, kind, source, version, config, paused, since, created_at = row[:9]
    loaded = json.loads(config)
    return StoredTrigger(
        id=tid,
        workflow_id=workflow_id,
        kind=kind,
        source=source,
        version=version,
        config=loaded if isinstance(loaded, dict) else {},
        paused=bool(paused),
        since=float(since),
        created_at=float(created_at),
        last_slot=row[9] if len(row) > 9 else None,
        last_execution_id=row[10] if len(row) > 10 else None,
    )


_TRIGGER_COLUMNS: Final = (
    "t.id, t.workflow_id, t.kind, t.source, t.version, t.config, t.paused, t.since, t.created_at"
)
# the latest decided slot of each trigger, and the run of its latest fired slot (for overlap)
_TRIGGER_SELECT: Final = (
    f"SELECT {_TRIGGER_COLUMNS},"
    " (SELECT MAX(scheduled_at) FROM trigger_fires f WHERE f.trigger_id = t.id),"
    " (SELECT execution_id FROM trigger_fires f WHERE f.trigger_id = t.id"
    "  AND f.outcome = 'fired' ORDER BY scheduled_at DESC LIMIT 1)"
    " FROM triggers t"
)


@dataclass(frozen=True, slots=True)
class ExecutionHead:
    """What a run is, without its inputs, outputs or events: one row read by its key. Enough to
    open an event stream on it, or to tell whether a cancel has anything to do."""

    id: str
    workflow_id: str
    version: str
    status: str
    last_seq: int
    """The seq of its last stored event (0 before any)."""
    parent_execution_id: str | None
    weight: int = -1
    """Bytes of its stored events, which its document is folded from (-1: not weighed)."""


_HEAD_SQL: Final = (
    "SELECT id, workflow_id, version, status, last_seq, parent_execution_id"
    " FROM executions WHERE id = ?"
)
# length() of a BLOB reads its size from the record, not the blob: no event is read. (Rows from
# schema 1 hold JSON text, whose characters are counted: a few old runs.)
_WEIGHT_SQL: Final = "SELECT " + " + ".join(
    f"(SELECT COALESCE(SUM(length(body)), 0) FROM {table} WHERE execution_id = ?1)"
    for table in _BATCH_TABLES
)


def _head(conn: sqlite3.Connection, execution_id: str, weigh: bool) -> ExecutionHead | None:
    row = conn.execute(_HEAD_SQL, (execution_id,)).fetchone()
    if row is None:
        return None
    weight = conn.execute(_WEIGHT_SQL, (execution_id,)).fetchone()[0] if weigh else -1
    eid, workflow_id, version, status, last_seq, parent = row
    return ExecutionHead(eid, workflow_id, version, status, int(last_seq), parent, int(weight))


LARGE_READS_BYTES: Final = 64 << 20
"""Stored event bytes of the large documents built and encoded at once, across both APIs: a
document takes several times its events' bytes in memory while it is built and encoded (each
node's output is in it twice), so concurrent reads of a large run are taken in turn."""


class LargeReads:
    """A semaphore counted in bytes, first come first served: what a large answer (a run's
    whole document) takes while it is built and encoded. A weight over the whole budget takes
    all of it, so it goes alone; a weight of 0 passes at once."""

    def __init__(self, budget: int = LARGE_READS_BYTES) -> None:
        self.budget = budget
        self.held = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @contextlib.asynccontextmanager
    async def hold(self, weight: int) -> AsyncIterator[None]:
        weight = min(max(weight, 0), self.budget)
        if weight and (self._waiters or self.held + weight > self.budget):
            future = asyncio.get_running_loop().create_future()
            entry = (weight, future)
            self._waiters.append(entry)
            try:
                await future  # granted: counted in ``held`` by _wake
            except BaseException:
                if future.done() and not future.cancelled():
                    self._release(weight)  # granted as it was cancelled: give it back
                else:
                    # cancelled while waiting; a release in the same turn of the loop may
                    # have passed over it already (``_wake`` skips a future that is done)
                    if entry in self._waiters:
                        self._waiters.remove(entry)
                    self._wake()
                raise
        else:
            self.held += weight
        try:
            yield
        finally:
            self._release(weight)

    def _release(self, weight: int) -> None:
        self.held -= weight
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            weight, future = self._waiters[0]
            if future.done():
                # its waiter was cancelled and has not run its ``except`` yet: it takes
                # nothing, and a release must not fail setting what is set
                self._waiters.popleft()
                continue
            if self.held + weight > self.budget:
                return
            self._waiters.popleft()
            self.held += weight
            future.set_result(None)


# -- the store ----------------------------------------------------------------------------------


class Store:
    """Async face of the state database; every method is safe to call from the event loop."""

    def __init__(
        self,
        path: str,
        writer: _Worker,
        reader: _Worker,
        lock: int | None = None,
        heavy: _Worker | None = None,
        health: _Health | None = None,
    ) -> None:
        self.path = path
        self._health = health if health is not None else _Health(":memory:")
        self._writer = writer
        self._reader = reader
        # large folds, each one in turn: a small read never waits behind one (the reader
        # thread is first come, first served)
        self._heavy = heavy if heavy is not None else reader
        self._lock = lock
        # workflow order of each version's nodes; versions are immutable, so never stale
        self._orders: dict[tuple[str, str], tuple[str, ...]] = {}
        # one backup's copy at a time: each reads the whole file and writes as much beside it
        self._backing_up = asyncio.Lock()

    @classmethod
    async def open(cls, path: str) -> Store:
        def prepare() -> tuple[
            sqlite3.Connection, sqlite3.Connection, sqlite3.Connection, int | None
        ]:
            if path != ":memory:":
                private_dirs(Path(path).parent)
            lock = lock_state(path)
            try:
                writer, reader = connect()
                heavy = _connect(path)
            except BaseException:
                if lock is not None:
                    os.close(lock)
                raise
            return writer, reader, heavy, lock

        def connect() -> tuple[sqlite3.Connection, sqlite3.Connection]:
            # whose the file is, and whether it is whole, read where nothing can be written
            # into it: a refused file is left byte for byte (the lock keeps other
            # orchestrators out meanwhile, and a new file is made below)
            inspect_state(path)
            if path != ":memory:":
                private_file(path)  # a new one: the writer would make it as the umask says
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
            # a retention sweep's deletes swell the WAL (161 MB in a soak) and SQLite keeps a
            # WAL at its largest: past a checkpoint it is cut back to this
            writer.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            migrate(writer)
            if path != ":memory:":
                check_writable(writer, path)
            return writer, _connect(path)

        def opened() -> tuple[
            sqlite3.Connection, sqlite3.Connection, sqlite3.Connection, int | None, _Health
        ]:
            writer, reader, heavy, lock = prepare()
            try:
                # the file the connections hold, to notice it removed or replaced later
                health = _Health(path)
            except BaseException:
                for conn in (writer, reader, heavy):
                    conn.close()
                if lock is not None:
                    os.close(lock)
                raise
            return writer, reader, heavy, lock, health

        writer, reader, heavy, lock, health = await asyncio.to_thread(opened)
        return cls(
            path,
            _Worker(writer, "store-writer", group=True, health=health),
            _Worker(reader, "store-reader", group=False, health=health),
            lock,
            _Worker(heavy, "store-heavy-reader", group=False, health=health),
            health,
        )

    @property
    def trouble(self) -> str | None:
        """Why the last write failed, while the database cannot take writes; else None."""
        return self._writer.trouble

    def fault(self) -> str | None:
        """Why the store takes no durable write until a restart (a damaged page met, the file
        removed or replaced), else None. One ``stat`` of the file."""
        return self._health.fault()

    async def probe(self) -> None:
        """A small durable write (the schema number rewritten as it is): raises
        ``StoreUnavailable`` while the database cannot take one."""

        def write(conn: sqlite3.Connection) -> None:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            conn.execute(f"PRAGMA user_version = {int(version)}")

        # the pragma changes no row, yet its commit writes page 1: proof that writes pass
        await self._writer.run(write, durable=True, writes=True)

    async def backup(self) -> Backup:
        """A verified copy of the database as it is now (``backup_state``), made on a thread of
        its own with a connection of its own: the store's readers and writer go on meanwhile.
        A second caller waits for the first's copy; the caller closes the copy's file."""
        fault = self._health.fault()
        if fault is not None:
            raise StoreUnavailable(f"the state database cannot be used now: {fault}")
        if self.path == ":memory:":
            raise BackupFailed("STATE_DB is :memory:, which has no file to back up")
        async with self._backing_up:
            copying = asyncio.ensure_future(asyncio.to_thread(backup_state, self.path))
            try:
                return await asyncio.shield(copying)
            except asyncio.CancelledError:
                # a copy cannot be stopped half-way: the next waits for its end, and what it
                # made is closed (its file is unlinked already)
                with contextlib.suppress(Exception):
                    (await copying).file.close()
                raise

    async def close(self) -> None:
        await asyncio.to_thread(self._writer.stop)
        await asyncio.to_thread(self._reader.stop)
        if self._heavy is not self._reader:
            await asyncio.to_thread(self._heavy.stop)
        if self._lock is not None:
            os.close(self._lock)  # after the last write: the next orchestrator may start
            self._lock = None

    # -- versions ---------------------------------------------------------------------------

    async def load_versions(self) -> list[StoredVersion]:
        def read(conn: sqlite3.Connection) -> list[StoredVersion]:
            rows = conn.execute(
                "SELECT workflow_id, version, spec_json, digest, created_at FROM versions"
                " WHERE workflow_id NOT IN (SELECT workflow_id FROM workflow_deletions)"
            ).fetchall()
            return [StoredVersion(*row) for row in rows]

        return await self._reader.run(read)

    async def deleted_workflows(self) -> list[str]:
        """Workflows deleted whose runs are not all removed yet (``purge_workflow``)."""

        def read(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute("SELECT workflow_id FROM workflow_deletions ORDER BY deleted_at")
            return [str(row[0]) for row in rows]

        return await self._reader.run(read)

    async def live_runs(self, workflow_id: str) -> LiveRuns:
        """The runs queued or running of ``workflow_id``, and of other workflows that may call
        it."""

        def read(conn: sqlite3.Connection) -> LiveRuns:
            return _live_runs(conn, workflow_id)

        return await self._reader.run(read)

    async def delete_workflow(self, workflow_id: str, now: float) -> WorkflowDeleted:
        """Mark ``workflow_id`` deleted and delete its triggers with their history, in one
        transaction; its runs go later, in batches (``purge_workflow``). Refused
        (``WorkflowBusy``) while any of its runs is queued or running: checked here, under
        the writer, so no run stored before this transaction is missed."""

        def write(conn: sqlite3.Connection) -> WorkflowDeleted:
            busy = _live_runs(conn, workflow_id).refusal(workflow_id)
            if busy is not None:
                raise busy
            versions = int(
                conn.execute(
                    "SELECT count(*) FROM versions WHERE workflow_id = ?", (workflow_id,)
                ).fetchone()[0]
            )
            runs = int(
                conn.execute(
                    "SELECT count(*) FROM executions WHERE workflow_id = ?", (workflow_id,)
                ).fetchone()[0]
            )
            conn.execute(
                "DELETE FROM trigger_fires WHERE trigger_id IN"
                " (SELECT id FROM triggers WHERE workflow_id = ?)",
                (workflow_id,),
            )
            triggers = conn.execute(
                "DELETE FROM triggers WHERE workflow_id = ?", (workflow_id,)
            ).rowcount
            conn.execute(
                "INSERT OR IGNORE INTO workflow_deletions (workflow_id, deleted_at) VALUES (?, ?)",
                (workflow_id, now),
            )
            return WorkflowDeleted(workflow_id, versions, triggers, runs)

        return await self._writer.run(write, durable=True)

    async def purge_workflow(self, workflow_id: str, limit: int) -> Purged:
        """Remove up to about ``limit`` ended runs of a deleted workflow, each with every run
        below it, their event batches and idempotency keys, in one transaction; once none is
        left, its versions and its deletion mark too. A run still going (one accepted just
        as the workflow was deleted) is waited for: ``Purged.waiting`` counts them."""

        def write(conn: sqlite3.Connection) -> Purged:
            rows = conn.execute(
                "SELECT id, status IN " + _TERMINAL_SQL + " FROM executions"
                " WHERE workflow_id = ? ORDER BY created_at LIMIT ?",
                (workflow_id, limit * _SCAN_PER_DELETE),
            ).fetchall()
            doomed: dict[str, None] = {}  # a child of the workflow's own run comes twice
            waiting = 0
            for execution_id, ended in rows:
                if execution_id in doomed:
                    continue
                tree = conn.execute(_TREE, (execution_id,)).fetchall()
                if not ended or not all(status in EXECUTION_TERMINAL for _, status, _ in tree):
                    waiting += 1
                    continue
                doomed.update((str(member), None) for member, _, _ in tree)
                if len(doomed) >= limit:
                    break
            if doomed:
                _delete_runs(conn, list(doomed))
                return Purged(len(doomed), waiting, done=False)
            if rows:  # only runs still going are left
                return Purged(0, waiting, done=False)
            conn.execute("DELETE FROM versions WHERE workflow_id = ?", (workflow_id,))
            conn.execute("DELETE FROM workflow_deletions WHERE workflow_id = ?", (workflow_id,))
            return Purged(0, 0, done=True)

        return await self._writer.run(write)

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
        request_digest: str | None = None,
        parent_execution_id: str | None = None,
        parent_node_id: str | None = None,
        parent_item: int | None = None,
        parent_attempt: int | None = None,
        depth: int = 0,
        fire: TriggerFire | None = None,
        more_events: Sequence[JSONObject] = (),
        retry_of: str | None = None,
    ) -> tuple[str, bool]:
        """Store a new execution with its first event (and ``more_events``, the ones after it,
        in the same transaction); with a key seen in the last 24 h,
        or a child for a parent node's item and attempt that already has one, the earlier
        execution's id and False instead. ``request_digest`` stands for what the key came
        with: ``IdempotencyKeyReused`` when the earlier use had another. ``fire``: the cron
        slot this run is for, recorded in the same transaction; ``SlotTaken`` when that slot
        was decided before."""
        scoped = f"{workflow_id}\x00{idempotency_key}" if idempotency_key else None
        if (workflow_id, version) not in self._orders:
            self._orders[workflow_id, version] = tuple(node_ids)
        first_seq = first_event["seq"]
        first_body = _encode([first_event])

        def write(conn: sqlite3.Connection) -> tuple[str, bool]:
            if parent_execution_id is not None and parent_node_id is not None:
                row = conn.execute(
                    "SELECT id FROM executions WHERE parent_execution_id = ?"
                    " AND parent_node_id = ? AND coalesce(parent_item, -1) = ?"
                    " AND parent_attempt IS ?",
                    (
                        parent_execution_id,
                        parent_node_id,
                        -1 if parent_item is None else parent_item,
                        parent_attempt,
                    ),
                ).fetchone()
                if row is not None:
                    return str(row[0]), False
            if scoped is not None:
                row = conn.execute(
                    "SELECT execution_id, created_at, request FROM idempotency WHERE key = ?",
                    (scoped,),
                ).fetchone()
                if row is not None and row[1] > created_at - IDEMPOTENCY_WINDOW:
                    if None not in (row[2], request_digest) and row[2] != request_digest:
                        raise IdempotencyKeyReused(
                            f"Idempotency-Key {idempotency_key!r} was sent with other inputs "
                            f"or version for execution {row[0]} of {workflow_id!r}: a key "
                            "stands for one request for 24 hours, so send new ones with a "
                            "new key",
                            {"execution_id": str(row[0])},
                        )
                    return str(row[0]), False
                conn.execute(
                    "INSERT OR REPLACE INTO idempotency (key, execution_id, created_at, request)"
                    " VALUES (?, ?, ?, ?)",
                    (scoped, execution_id, created_at, request_digest),
                )
                if next(_keys_recorded) % _IDEMPOTENCY_PRUNE_EVERY == 0:
                    # a key means nothing past its window: without this, one row per keyed
                    # request would stay for good
                    conn.execute(
                        "DELETE FROM idempotency WHERE created_at < ?",
                        (created_at - IDEMPOTENCY_WINDOW,),
                    )
            retry_root = None
            if retry_of is not None:
                # one retry of a chain at a time (a run, its retries, theirs): a second click,
                # or a second operator retrying the first run or another retry of it, would
                # run its failed nodes (a payment, a deploy) twice over
                row = conn.execute(
                    "SELECT retry_root FROM executions WHERE id = ?", (retry_of,)
                ).fetchone()
                retry_root = (row[0] if row is not None else None) or retry_of
                going = conn.execute(
                    "SELECT id, status FROM executions WHERE retry_root = ?"
                    " AND status IN ('queued', 'running') LIMIT 1",
                    (retry_root,),
                ).fetchone()
                if going is not None:
                    raise NotRetryable(
                        f"execution {retry_of} is being retried already, by execution "
                        f"{going[0]} ({going[1]}): wait for its end, or cancel it first",
                        {"retry": str(going[0]), "status": str(going[1])},
                    )
            if fire is not None:
                _record_slot(conn, fire, "fired", execution_id, {})
            conn.execute(
                "INSERT INTO executions (id, workflow_id, version, status, inputs, created_at,"
                " parent_execution_id, parent_node_id, pinned, node_total, last_seq,"
                " parent_item, parent_attempt, depth, retry_of, retry_root)"
                " VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    first_seq,
                    parent_item,
                    parent_attempt,
                    depth,
                    retry_of,
                    retry_root,
                ),
            )
            conn.execute(
                "INSERT INTO event_messages (execution_id, first_seq, last_seq, body)"
                " VALUES (?, ?, ?, ?)",
                (execution_id, first_seq, first_seq, first_body),
            )
            for group in _grouped(more_events):
                _record(conn, execution_id, group)
            return execution_id, True

        return await self._writer.run(write, durable=True)

    async def record_events(
        self, execution_id: str, events: list[JSONObject], message: bytes | None = None
    ) -> None:
        """Store a batch of events (idempotent by seq) and fold it in; returns once on disk.

        ``message``: the batch as the serialized ``ExecuteResponse`` it arrived in, which is
        what is stored; without it the events are encoded so.
        """
        if events:
            await self._writer.run(lambda conn: _record(conn, execution_id, events, message))

    def _order(self, conn: sqlite3.Connection, workflow_id: str, version: str) -> tuple[str, ...]:
        key = (workflow_id, version)
        order = self._orders.get(key)
        if order is None:
            row = conn.execute(
                "SELECT spec_json FROM versions WHERE workflow_id = ? AND version = ?", key
            ).fetchone()
            order = node_order(_loads(row[0]) if row is not None else None)
            self._orders[key] = order
        return order

    async def execution_head(
        self, execution_id: str, *, weigh: bool = False
    ) -> ExecutionHead | None:
        """The run's row without its inputs and outputs, read by its key; ``weigh``: with the
        bytes of its stored events (their sizes only: no event is read). None when there is no
        such execution."""
        return await self._reader.run(lambda conn: _head(conn, execution_id, weigh))

    async def get_execution(
        self, execution_id: str, *, weight: int | None = None
    ) -> JSONObject | None:
        """The execution JSON with its nodes, folded from its events. A run whose events
        weigh more than ``HEAVY_READ_BYTES`` (``weight``, when the caller weighed it already)
        is folded on the heavy reader, one such fold at a time, so that small reads go on."""
        if weight is None:
            head = await self.execution_head(execution_id, weigh=True)
            if head is None:
                return None
            weight = head.weight
        worker = self._heavy if weight > HEAVY_READ_BYTES else self._reader

        def read(conn: sqlite3.Connection) -> JSONObject | None:
            conn.execute("BEGIN")  # one snapshot for the run, its events and its children
            try:
                row = conn.execute(
                    f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE id = ?", (execution_id,)
                ).fetchone()
                if row is None:
                    return None
                events = _fold_input(conn, execution_id)
                children: list[JSON] = [
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM executions WHERE parent_execution_id = ?"
                        " ORDER BY created_at",
                        (execution_id,),
                    )
                ]
            finally:
                conn.execute("COMMIT")
            nodes = fold_nodes(self._order(conn, row[1], row[2]), events)
            doc = _document(row, done=nodes_done(nodes))
            shown: JSONObject = dict(nodes)
            doc["nodes"] = shown
            doc["children"] = children
            return doc

        return await worker.run(read)

    async def list_executions(
        self,
        *,
        workflow_id: str | None,
        status: str | None,
        limit: int,
        before: str | None = None,
        max_bytes: int = LIST_PAGE_BYTES,
    ) -> ExecutionPage | None:
        """Newest first; with ``before``, those created before that execution (None when there
        is no such execution, unless its id tells when it was made: ``gone_bounds``). At most
        ``limit`` rows, and none past the first that would take them past ``max_bytes``
        (``page_continues`` tells whether rows may follow)."""
        filters = [a for a in (workflow_id, status) if a is not None]

        def read(conn: sqlite3.Connection) -> ExecutionPage | None:
            gone = False
            args: list[Any] = filters
            if before is not None:
                known = conn.execute("SELECT 1 FROM executions WHERE id = ?", (before,))
                if known.fetchone() is None:
                    # deleted by retention while its caller paged: the next page goes on from
                    # where it stood, as the runs around it are being deleted too
                    bounds = gone_bounds(before, time.time())
                    if bounds is None:
                        return None
                    gone, args = True, [*bounds, *filters]
                else:
                    args = [before, *filters]
            sql = listing_sql(
                workflow=workflow_id is not None,
                status=status is not None,
                before=before is not None,
                before_gone=gone,
            )
            rows: list[JSONObject] = []
            size = 0
            cursor = conn.execute(sql, (*args, limit))
            try:
                for row in cursor:
                    # weighed as stored text: its inputs and outputs are what vary
                    weight = _ROW_BYTES + sum(len(row[i] or "") for i in _HEAVY_COLUMNS)
                    if rows and size + weight > max_bytes:
                        # the rows so far are a page's worth: the next page starts with this
                        # one, alone if it is that large, rather than making this one larger
                        return ExecutionPage(rows, cut=True)
                    size += weight
                    rows.append(_document(row))
            finally:
                cursor.close()
            return ExecutionPage(rows, cut=False)

        return await self._reader.run(read)

    async def events(self, execution_id: str, *, after_seq: int = 0) -> list[JSONObject]:
        return await self._reader.run(lambda conn: _timeline(conn, execution_id, after_seq))

    async def event_page(
        self,
        execution_id: str,
        *,
        after_seq: int = 0,
        limit: int = EVENTS_PAGE,
        max_bytes: int = EVENTS_PAGE_BYTES,
    ) -> EventPage | None:
        """One page of a run's stored timeline past ``after_seq``; None when there is no such
        execution."""

        def read(conn: sqlite3.Connection) -> EventPage | None:
            known = conn.execute("SELECT 1 FROM executions WHERE id = ?", (execution_id,))
            if known.fetchone() is None:
                return None
            return _event_page(conn, execution_id, after_seq, limit, max_bytes)

        return await self._reader.run(read)

    async def end_point(self, execution_id: str) -> tuple[int, list[JSONObject]]:
        """For an end the orchestrator gives a run itself: the seq it takes, and the run's
        stored events (which of its nodes started, ended, and with what)."""

        def read(conn: sqlite3.Connection) -> tuple[int, list[JSONObject]]:
            row = conn.execute(
                "SELECT last_seq FROM executions WHERE id = ?", (execution_id,)
            ).fetchone()
            if row is None:
                return 1, []
            return int(row[0]) + 1, _timeline(conn, execution_id)

        # through the writer: it sees every write queued before this call
        return await self._writer.run(read)

    async def unfinished_executions(self) -> list[tuple[str, str, bool]]:
        """(id, workflow_id, whether it is a sub-workflow run) of queued and running
        executions, oldest first."""

        def read(conn: sqlite3.Connection) -> list[tuple[str, str, bool]]:
            rows = conn.execute(
                "SELECT id, workflow_id, parent_execution_id IS NOT NULL FROM executions"
                " WHERE status IN ('queued', 'running') ORDER BY created_at"
            ).fetchall()
            return [(str(a), str(b), bool(c)) for a, b, c in rows]

        return await self._reader.run(read)

    async def started_unfinished(self) -> list[tuple[str, str, str, float]]:
        """(id, workflow_id, version, first start in unix seconds) of executions that started
        and have not ended: what a restart keeps the whole-run deadline of."""

        def read(conn: sqlite3.Connection) -> list[tuple[str, str, str, float]]:
            rows = conn.execute(
                "SELECT id, workflow_id, version, started_at FROM executions"
                " WHERE status = 'running' AND started_at IS NOT NULL"
            ).fetchall()
            found = []
            for execution_id, workflow_id, version, started in rows:
                try:
                    at = datetime.fromisoformat(str(started)).timestamp()
                except ValueError:
                    continue  # not a time this store writes: no deadline rather than a wrong one
                found.append((str(execution_id), str(workflow_id), str(version), at))
            return found

        return await self._reader.run(read)

    async def child_of(
        self, parent_execution_id: str, node_id: str, item: int | None, attempt: int
    ) -> JSONObject | None:
        """The child a parent node's item and attempt already has (without nodes), if any."""

        def read(conn: sqlite3.Connection) -> JSONObject | None:
            row = conn.execute(
                f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE parent_execution_id = ?"
                " AND parent_node_id = ? AND coalesce(parent_item, -1) = ?"
                " AND parent_attempt = ?",
                (parent_execution_id, node_id, -1 if item is None else item, attempt),
            ).fetchone()
            return _document(row) if row is not None else None

        # through the writer: a child created a moment ago is seen
        return await self._writer.run(read)

    async def lineage(self, execution_id: str) -> Lineage | None:
        """What starting a child of this execution needs to know of it."""

        def read(conn: sqlite3.Connection) -> Lineage | None:
            row = conn.execute(
                "SELECT workflow_id, version, status, depth, pinned FROM executions WHERE id = ?",
                (execution_id,),
            ).fetchone()
            if row is None:
                return None
            pinned = _loads(row[4])
            return Lineage(
                execution_id,
                str(row[0]),
                str(row[1]),
                str(row[2]),
                int(row[3]),
                {str(k): str(v) for k, v in pinned.items()} if isinstance(pinned, dict) else {},
            )

        return await self._writer.run(read)

    async def retry_source(self, execution_id: str, weight: int) -> RetrySource | None:
        """The execution as a retry starts from it; None when there is no such execution. Its
        events are read whole, on the heavy reader when they weigh (``weight``, as its head
        tells) as a large document's."""
        worker = self._heavy if weight > HEAVY_READ_BYTES else self._reader

        def read(conn: sqlite3.Connection) -> RetrySource | None:
            conn.execute("BEGIN")  # the row and its events as of one moment
            try:
                row = conn.execute(
                    "SELECT workflow_id, version, status, inputs, pinned, parent_execution_id"
                    " FROM executions WHERE id = ?",
                    (execution_id,),
                ).fetchone()
                if row is None:
                    return None
                ends = resume_point(_timeline(conn, execution_id)).checkpoints
            finally:
                conn.execute("COMMIT")
            pinned = _loads(row[4])
            return RetrySource(
                workflow_id=str(row[0]),
                version=str(row[1]),
                status=str(row[2]),
                inputs=_loads(row[3]),
                pinned={str(k): str(v) for k, v in pinned.items()}
                if isinstance(pinned, dict)
                else {},
                parent_execution_id=row[5],
                ended=ends,
            )

        return await worker.run(read)

    async def live_children(self) -> list[ChildLink]:
        """Unfinished executions started by a parent node, oldest first."""

        def read(conn: sqlite3.Connection) -> list[ChildLink]:
            rows = conn.execute(
                "SELECT id, parent_execution_id, parent_node_id, parent_item, parent_attempt"
                " FROM executions WHERE status IN ('queued', 'running')"
                " AND parent_execution_id IS NOT NULL ORDER BY created_at"
            ).fetchall()
            return [
                ChildLink(str(r[0]), str(r[1]), r[2], r[3], r[4] if r[4] is not None else 0)
                for r in rows
            ]

        return await self._reader.run(read)

    async def request_cancel(self, execution_id: str, reason: str) -> None:
        """Store that the run is to be cancelled, on disk before the caller hears of it; a
        dispatch of it ends it instead (``dispatching``)."""

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE executions SET cancel_reason = ? WHERE id = ? AND cancel_reason IS NULL",
                (reason, execution_id),
            )

        await self._writer.run(write, durable=True)

    async def load_ticket(self, execution_id: str) -> RunTicket | None:
        """What an engine needs to start or resume the run: spec, inputs, checkpoints."""

        def read(conn: sqlite3.Connection) -> RunTicket | None:
            row = conn.execute(
                "SELECT e.workflow_id, e.version, v.spec_json, e.inputs, e.status,"
                " e.parent_execution_id, e.last_seq, e.cancel_reason"
                " FROM executions e JOIN versions v"
                " ON v.workflow_id = e.workflow_id AND v.version = e.version WHERE e.id = ?",
                (execution_id,),
            ).fetchone()
            if row is None:
                return None
            workflow_id, version, spec_json, inputs, status, parent, last_seq, cancel = row
            resume = resume_point(_timeline(conn, execution_id))
            return RunTicket(
                execution_id=execution_id,
                workflow_id=workflow_id,
                version=version,
                spec_json=spec_json,
                inputs=_loads(inputs),
                status=status,
                parent_execution_id=parent,
                checkpoints=resume.checkpoints,
                next_seq=int(last_seq) + 1,
                sleeping=resume.sleeping,
                started_at=resume.started_at,
                retried=resume.retried,
                waiting=resume.waiting,
                cancel_reason=cancel,
                items_done=resume.items_done,
            )

        # through the writer, so the ticket reflects every event already accepted for storage
        return await self._writer.run(read)

    # -- triggers ---------------------------------------------------------------------------

    async def load_triggers(
        self, trigger_id: str | None = None, *, spec_of: str | None = None
    ) -> list[StoredTrigger]:
        """Every trigger (or one, or the spec triggers of workflow ``spec_of``) with its latest
        decided slot and latest fired run."""
        sql = _TRIGGER_SELECT
        args: tuple[str, ...] = ()
        if trigger_id is not None:
            sql, args = sql + " WHERE t.id = ?", (trigger_id,)
        elif spec_of is not None:
            sql, args = sql + " WHERE t.workflow_id = ? AND t.source = 'spec'", (spec_of,)

        def read(conn: sqlite3.Connection) -> list[StoredTrigger]:
            return [_stored_trigger(r) for r in conn.execute(sql, args)]

        return await self._reader.run(read)

    async def create_trigger(self, trigger: StoredTrigger) -> bool:
        """Insert a new trigger; False when its id is taken."""

        def write(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO triggers (id, workflow_id, kind, source, version, config,"
                " paused, since, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    trigger.id,
                    trigger.workflow_id,
                    trigger.kind,
                    trigger.source,
                    trigger.version,
                    _dumps(trigger.config),
                    int(trigger.paused),
                    trigger.since,
                    trigger.created_at,
                ),
            )
            return cursor.rowcount == 1

        return await self._writer.run(write, durable=True)

    async def sync_spec_triggers(
        self,
        workflow_id: str,
        triggers: Sequence[StoredTrigger],
        renames: Mapping[str, str] | None = None,
    ) -> list[StoredTrigger]:
        """Make ``triggers`` the spec triggers of ``workflow_id``: others of the spec go,
        new ones come in as given, and those already there keep their paused state and
        history. A spec trigger stored under an old id in ``renames`` moves to its new id
        first, with its paused state, ``since`` and history. Returns the rows as stored."""

        def write(conn: sqlite3.Connection) -> list[StoredTrigger]:
            for old, new in (renames or {}).items():
                # the same trigger under another id (the id scheme changed): moved in place,
                # never onto an id that is taken, and in this transaction, so it is either
                # wholly under the old id or wholly under the new one
                moved = conn.execute(
                    "UPDATE triggers SET id = ? WHERE id = ? AND workflow_id = ?"
                    " AND source = 'spec' AND NOT EXISTS (SELECT 1 FROM triggers WHERE id = ?)",
                    (new, old, workflow_id, new),
                ).rowcount
                if moved:
                    # slots already under the new id were left by a trigger of that id that
                    # went before c12de23 (which kept a leaving trigger's history): not this
                    # trigger's, and one at the same instant as its own would not move
                    conn.execute("DELETE FROM trigger_fires WHERE trigger_id = ?", (new,))
                    conn.execute(
                        "UPDATE trigger_fires SET trigger_id = ? WHERE trigger_id = ?", (new, old)
                    )
            keep = [t.id for t in triggers]
            marks = ",".join("?" * len(keep))
            leaving = f" AND id NOT IN ({marks})" if keep else ""
            # a trigger that goes takes its history along: a later one of the same id starts
            # afresh, as one made through the API after a delete does
            conn.execute(
                "DELETE FROM trigger_fires WHERE trigger_id IN (SELECT id FROM triggers"
                " WHERE workflow_id = ? AND source = 'spec'" + leaving + ")",
                (workflow_id, *keep),
            )
            conn.execute(
                "DELETE FROM triggers WHERE workflow_id = ? AND source = 'spec'" + leaving,
                (workflow_id, *keep),
            )
            for t in triggers:
                # a changed schedule (or zone) starts from now: slots of the new one that came
                # before it was registered are not this trigger's to catch up after a restart
                conn.execute(
                    "INSERT INTO triggers (id, workflow_id, kind, source, version, config,"
                    " paused, since, created_at) VALUES (?, ?, ?, 'spec', ?, ?, 0, ?, ?)"
                    " ON CONFLICT (id) DO UPDATE SET version = excluded.version,"
                    " config = excluded.config, kind = excluded.kind,"
                    " since = CASE WHEN json_extract(config, '$.cron')"
                    " IS json_extract(excluded.config, '$.cron')"
                    " AND json_extract(config, '$.timezone')"
                    " IS json_extract(excluded.config, '$.timezone')"
                    " THEN since ELSE MAX(since, excluded.since) END",
                    (
                        t.id,
                        workflow_id,
                        t.kind,
                        t.version,
                        _dumps(t.config),
                        t.since,
                        t.created_at,
                    ),
                )
            if not keep:
                return []
            return [
                _stored_trigger(r)
                for r in conn.execute(_TRIGGER_SELECT + f" WHERE t.id IN ({marks})", keep)
            ]

        return await self._writer.run(write, durable=True)

    async def set_trigger_paused(self, trigger_id: str, paused: bool, since: float) -> bool:
        """Pause, or resume counting slots from ``since``; False when there is no such trigger."""

        def write(conn: sqlite3.Connection) -> bool:
            if paused:
                sql, args = "UPDATE triggers SET paused = 1 WHERE id = ?", (trigger_id,)
            else:
                sql = "UPDATE triggers SET paused = 0, since = ? WHERE id = ? AND paused = 1"
                args = (since, trigger_id)  # type: ignore[assignment]
                if conn.execute(sql, args).rowcount:
                    return True
                sql, args = "SELECT 1 FROM triggers WHERE id = ?", (trigger_id,)
                return conn.execute(sql, args).fetchone() is not None
            return conn.execute(sql, args).rowcount == 1

        return await self._writer.run(write, durable=True)

    async def delete_trigger(self, trigger_id: str) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            gone = conn.execute("DELETE FROM triggers WHERE id = ?", (trigger_id,)).rowcount == 1
            conn.execute("DELETE FROM trigger_fires WHERE trigger_id = ?", (trigger_id,))
            return gone

        return await self._writer.run(write, durable=True)

    async def record_slot(
        self, fire: TriggerFire, outcome: str, detail: JSON, execution_id: str | None = None
    ) -> bool:
        """Record a slot decided without a new run (skipped, missed, failed); False when the
        slot was decided before."""

        def write(conn: sqlite3.Connection) -> bool:
            try:
                _record_slot(conn, fire, outcome, execution_id, detail)
            except SlotTaken:
                return False
            return True

        return await self._writer.run(write, durable=True)

    async def trigger_history(self, trigger_id: str, limit: int) -> list[JSONObject]:
        """The latest decided slots of a trigger, newest first."""

        def read(conn: sqlite3.Connection) -> list[JSONObject]:
            rows = conn.execute(
                "SELECT scheduled_at, fired_at, outcome, execution_id, detail FROM trigger_fires"
                " WHERE trigger_id = ? ORDER BY scheduled_at DESC LIMIT ?",
                (trigger_id, limit),
            ).fetchall()
            return [
                {
                    "scheduled_time": isoformat(scheduled),
                    "fired_at": isoformat(fired),
                    "outcome": outcome,
                    "execution_id": execution_id,
                    "detail": _loads(detail),
                }
                for scheduled, fired, outcome, execution_id, detail in rows
            ]

        return await self._reader.run(read)

    async def keyed_run(self, workflow_id: str, idempotency_key: str) -> str | None:
        """The run ``idempotency_key`` stands for (within its 24 hours), or None: a repeat
        creates nothing, so a full queue is no reason to refuse it."""

        def read(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT execution_id, created_at FROM idempotency WHERE key = ?",
                (f"{workflow_id}\x00{idempotency_key}",),
            ).fetchone()
            if row is None or row[1] <= time.time() - IDEMPOTENCY_WINDOW:
                return None
            return str(row[0])

        # through the writer: it sees the keys of runs stored a moment ago
        return await self._writer.run(read)

    async def execution_status(self, execution_id: str) -> str | None:
        def read(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT status FROM executions WHERE id = ?", (execution_id,)
            ).fetchone()
            return str(row[0]) if row is not None else None

        return await self._reader.run(read)

    # -- retention --------------------------------------------------------------------------

    async def delete_finished(
        self, before: float, limit: int, *, now: float, after: SweepMark | None = None
    ) -> Swept:
        """Delete root executions that ended before ``before`` (epoch seconds), each with
        every run below it, their event batches and idempotency keys, in one transaction of
        about ``limit`` executions (whole trees: one may take it past). A tree any of whose
        runs has not ended is left whole, and so is one whose idempotency key is younger than
        ``IDEMPOTENCY_WINDOW`` at ``now``: a repeat of its request gets it for the 24 hours
        promised, however short the retention. Looks at runs created past ``after`` (where
        the sweep's last transaction stopped), and at a few times ``limit`` of them at most,
        so runs kept are looked at once a sweep and no transaction holds the writer long.
        Trigger history keeps its rows, which may then name a run that is gone."""
        finished_before = isoformat(before)
        keyed_since = now - IDEMPOTENCY_WINDOW
        start = after if after is not None else SweepMark(float("-inf"), -1)
        scan = limit * _SCAN_PER_DELETE

        def write(conn: sqlite3.Connection) -> Swept:
            doomed: list[str] = []
            mark = start
            # created_at bounds the walk along executions_by_time, oldest first: a run ends
            # after it is created, so only rows older than the cutoff are looked at. Every
            # filter is read off the row (``retention_sql``), none searched by: an index on
            # status would take over the plan and sort what it found (a second a batch at a
            # million runs)
            rows = conn.execute(
                retention_sql(),
                (
                    finished_before,
                    keyed_since,
                    keyed_since,
                    before,
                    start.created_at,
                    start.row,
                    scan,
                ),
            ).fetchall()
            for execution_id, row, created_at, eligible in rows:
                mark = SweepMark(float(created_at), int(row))
                if not eligible:
                    continue
                tree = conn.execute(_TREE, (execution_id,)).fetchall()
                if not all(status in EXECUTION_TERMINAL for _, status, _ in tree):
                    continue
                ids = [str(member) for member, _, _ in tree]
                if len(ids) > 1 and max(at for _, _, at in tree) >= keyed_since:
                    keyed = conn.execute(
                        "SELECT 1 FROM idempotency WHERE created_at >= ? AND execution_id IN"
                        " (SELECT value FROM json_each(?)) LIMIT 1",
                        (keyed_since, _dumps(list(ids))),
                    ).fetchone()
                    if keyed is not None:
                        continue
                doomed.extend(ids)
                if len(doomed) >= limit:
                    break
            # a walk that stopped short of its scan reached the cutoff: nothing old is left
            resume = mark if len(doomed) >= limit or len(rows) >= scan else None
            if doomed:
                _delete_runs(conn, doomed)
            return Swept(len(doomed), resume)

        return await self._writer.run(write)


def _live_runs(conn: sqlite3.Connection, workflow_id: str) -> LiveRuns:
    row = conn.execute(
        "SELECT count(*) FROM executions WHERE workflow_id = ? AND status IN ('queued', 'running')",
        (workflow_id,),
    ).fetchone()
    # a run pins every sub-workflow version it may call as it starts ("<id>@<range>" keys;
    # an id has no "@"), and calls it later: an older version of another workflow still
    # running may call this one although no latest version references it
    prefix = workflow_id + "@"
    callers = conn.execute(
        "SELECT workflow_id, count(*) FROM executions"
        " WHERE status IN ('queued', 'running') AND workflow_id != ? AND EXISTS"
        " (SELECT 1 FROM json_each(pinned) WHERE substr(key, 1, ?) = ?)"
        " GROUP BY workflow_id ORDER BY workflow_id",
        (workflow_id, len(prefix), prefix),
    ).fetchall()
    return LiveRuns(int(row[0]), {str(r[0]): int(r[1]) for r in callers})


def _delete_runs(conn: sqlite3.Connection, ids: list[str]) -> None:
    """Delete runs with their stored stream messages and idempotency keys."""
    ids_json = _dumps(list(ids))
    for table, column in (
        *((batches, "execution_id") for batches in _BATCH_TABLES),
        ("idempotency", "execution_id"),
        ("executions", "id"),
    ):
        conn.execute(
            f"DELETE FROM {table} WHERE {column} IN (SELECT value FROM json_each(?))",
            (ids_json,),
        )


_SAID_CHECK_BYTES: Final = 256 << 20
"""A state file at least this large is said in a log line before its quick check."""
_SCAN_PER_DELETE: Final = 4
"""Runs one retention transaction looks at, per run it may delete: bounds the time it holds
the writer when most old runs are kept (a backlog of runs younger than their key's 24 h)."""


@dataclass(frozen=True, slots=True)
class WorkflowDeleted:
    """What deleting a workflow took at once, and how many of its runs are left to remove."""

    workflow_id: str
    versions: int
    triggers: int
    executions: int


@dataclass(frozen=True, slots=True)
class LiveRuns:
    """What keeps a workflow from being deleted: its runs queued or running, and those of
    other workflows that pinned a version of it to call (by workflow)."""

    own: int
    callers: dict[str, int]

    def refusal(self, workflow_id: str, admitting: int = 0) -> WorkflowBusy | None:
        """Why it cannot be deleted now, with ``admitting`` of its runs being stored, or None."""
        own = self.own + admitting
        if own:
            return WorkflowBusy(
                f"workflow {workflow_id} has {own} run(s) queued or running: cancel them "
                "or let them end, then delete it",
                {"workflow": workflow_id, "running": own},
            )
        if self.callers:
            named = ", ".join(f"{n} of {wf}" for wf, n in list(self.callers.items())[:10])
            more = len(self.callers) - 10
            return WorkflowBusy(
                f"workflow {workflow_id} may still be called by runs queued or running that "
                f"pinned a version of it ({named}"
                + (f" and {more} more workflows" if more > 0 else "")
                + "): cancel them or let them end, then delete it",
                {"workflow": workflow_id, "callers": dict(list(self.callers.items())[:50])},
            )
        return None


@dataclass(frozen=True, slots=True)
class Purged:
    """What one transaction removing a deleted workflow's runs did."""

    deleted: int
    waiting: int  # its runs still going, which are removed once they end
    done: bool  # every run gone, and the workflow's versions with them


@dataclass(frozen=True, slots=True)
class SweepMark:
    """The last run a retention transaction looked at, by the order it walks in."""

    created_at: float
    row: int


@dataclass(frozen=True, slots=True)
class Swept:
    """What one retention transaction did."""

    deleted: int
    resume: SweepMark | None
    """Where the sweep's next transaction goes on; None: no run old enough is left past it."""


def retention_sql() -> str:
    """The runs a retention transaction looks at, oldest first, with whether each may go (a
    root that ended before the cutoff, without a live idempotency key): ``?`` for the cutoff
    as ISO text, the start of the key window twice, the cutoff, the mark's created_at and
    rowid, and the most rows to look at."""
    return (
        "SELECT id, rowid, created_at, parent_execution_id IS NULL"
        f" AND status IN {_TERMINAL_SQL} AND finished_at IS NOT NULL AND finished_at < ?"
        " AND (created_at < ? OR NOT EXISTS (SELECT 1 FROM idempotency k"
        " WHERE k.execution_id = executions.id AND k.created_at >= ?))"
        " FROM executions WHERE created_at < ? AND (created_at, rowid) > (?, ?)"
        " ORDER BY created_at, rowid LIMIT ?"
    )


# an execution and every run below it (children, their children, ...), with their statuses;
# UNION, not UNION ALL: a row seen twice ends the walk instead of looping
_TREE: Final = (
    "WITH RECURSIVE tree(id, status, created_at) AS ("
    " SELECT id, status, created_at FROM executions WHERE id = ?"
    " UNION SELECT e.id, e.status, e.created_at FROM executions e JOIN tree t"
    " ON e.parent_execution_id = t.id)"
    " SELECT id, status, created_at FROM tree"
)
