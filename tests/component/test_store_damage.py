"""A state database that is not what it should be: a ``-wal`` beside it from another file, a
damaged page (found at start or while running), the file removed or replaced under a running
orchestrator, a file this process cannot write. Each is refused in words that name STATE_DB,
and nothing is written to a file that is refused."""

from __future__ import annotations

import hashlib
import logging
import shutil
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import orchestrator.store as store_module
from orchestrator.errors import StoreUnavailable
from orchestrator.orchestrating import Orchestrator
from orchestrator.store import StateDamaged, StateReadOnly, Store

PAGE = 4096


def digest(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


async def filled(path: Path, rows: int = 4000) -> None:
    """A state database of ours with a few hundred pages of b-tree (versions rows)."""
    store = await Store.open(str(path))
    await store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executemany(
        "INSERT INTO versions (workflow_id, version, spec_json, digest, created_at)"
        " VALUES (?, ?, ?, ?, ?)",
        ((f"wf{n:05d}", "1.0.0", "{}" + " " * 150, f"d{n}", 1.0) for n in range(rows)),
    )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    assert path.stat().st_size > 60 * PAGE


def flip_page(path: Path, page: int = 40) -> None:
    with path.open("r+b") as f:
        f.seek(PAGE * page + 200)
        f.write(bytes(range(256)) * 4)


def foreign_wal(tmp_path: Path) -> bytes:
    """The ``-wal`` of another program's database, as a copy taken while it was open."""
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("CREATE TABLE t (x)")
    conn.executemany("INSERT INTO t VALUES (?)", ((n,) for n in range(100)))
    wal = (tmp_path / "other.db-wal").read_bytes()
    conn.close()
    assert wal
    return wal


async def test_a_foreign_wal_beside_the_file_is_refused_and_neither_file_is_written(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    await filled(path)
    wal = tmp_path / "state.db-wal"
    wal.write_bytes(foreign_wal(tmp_path))
    before = (digest(path), digest(wal))
    with pytest.raises(RuntimeError) as caught:
        await Store.open(str(path))
    # before: the writer replayed the -wal into state.db (its runs gone), then refused it
    assert (digest(path), digest(wal) if wal.exists() else None) == before
    message = str(caught.value)
    assert "is not a DAG Engine state database" in message
    assert "read with the state.db-wal beside it" in message
    # without the -wal, the file opens as it was
    wal.unlink()
    store = await Store.open(str(path))
    try:
        assert len(await store.load_versions()) == 4000
    finally:
        await store.close()


async def test_a_damaged_file_is_refused_at_start_in_one_line_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    await filled(path)
    flip_page(path)
    before = digest(path)
    for _ in range(2):  # nothing was held back by the first refusal
        with pytest.raises(StateDamaged) as caught:
            await Store.open(str(path))
        message = str(caught.value)
        assert message.startswith(f"STATE_DB {path} is damaged ("), message
        assert message.endswith(
            f'restore a backup, or try sqlite3 {path} ".recover" (or ".dump") into a new file'
        )
        assert "\n" not in message
        # the empty -wal the first refusal's reader may leave is not blamed on the second
        assert "-wal beside it" not in message
    assert digest(path) == before
    wal = tmp_path / "state.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0  # a reader may make it, empty


async def test_a_new_empty_or_missing_file_is_still_made_a_state_database(
    tmp_path: Path,
) -> None:
    (tmp_path / "empty.db").write_bytes(b"")
    for name in ("empty.db", "missing.db", "deeper/missing.db"):
        store = await Store.open(str(tmp_path / name))
        await store.probe()
        assert store.fault() is None
        await store.close()


async def test_a_damaged_page_met_while_running_makes_the_store_unavailable_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    await filled(path)
    store = await Store.open(str(path))
    try:
        flip_page(path)  # the reader has not read the page yet
        caplog.set_level(logging.ERROR, logger="orchestrator.store")
        for _ in range(3):
            # before: sqlite3.DatabaseError, an unexpected error each time
            with pytest.raises(StoreUnavailable, match="malformed"):
                await store.load_versions()
        fault = store.fault()
        assert fault is not None and fault.startswith(f"STATE_DB {path} is damaged (")
        # nothing more is accepted: a durable write is refused though it would pass
        with pytest.raises(StoreUnavailable, match="is damaged"):
            await store.probe()
        said = [r for r in caplog.records if "is damaged" in r.getMessage()]
        assert len(said) == 1, [r.getMessage() for r in caplog.records]
    finally:
        await store.close()


def readiness_of(store: Store) -> Any:
    """``Orchestrator.readiness`` over ``store`` alone (the rest is not reached)."""
    return Orchestrator.readiness(SimpleNamespace(started=True, store=store))  # type: ignore[arg-type]


@pytest.mark.parametrize("how", ["removed", "replaced"])
async def test_the_file_removed_or_replaced_under_the_store_stops_durable_writes(
    tmp_path: Path, how: str
) -> None:
    path = tmp_path / "state.db"
    store = await Store.open(str(path))
    try:
        await store.probe()
        if how == "removed":
            path.unlink()
        else:
            shutil.copy(path, tmp_path / "copy.db")
            (tmp_path / "copy.db").replace(path)
        # before: the write was acknowledged into a file no restart opens again
        with pytest.raises(StoreUnavailable, match="was removed or replaced"):
            await store.probe()
        expected = (
            f"STATE_DB {path} was removed or replaced while the orchestrator ran: runs since "
            "are only in the file it has open; stop it, remove the -wal and -shm beside the "
            "file now there (they are the replaced file's, and would be read into it), then "
            "start it"
        )
        assert store.fault() == expected
        assert await readiness_of(store) == (False, expected)
    finally:
        await store.close()


async def test_a_file_this_process_cannot_write_is_refused_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests may run as root, whom a chmod 444 does not stop: a connection with query_only
    # refuses writes with the same SQLITE_READONLY a read-only file gives
    path = tmp_path / "state.db"
    store = await Store.open(str(path))
    await store.close()
    path.chmod(0o444)
    connect = store_module._connect

    def read_only(name: str) -> sqlite3.Connection:
        conn = connect(name)
        conn.execute("PRAGMA query_only = 1")
        return conn

    monkeypatch.setattr(store_module, "_connect", read_only)
    with pytest.raises(StateReadOnly) as caught:  # before: it opened, and was never ready
        await Store.open(str(path))
    message = str(caught.value)
    assert message.startswith(f"STATE_DB {path} cannot be written by this process (uid "), message
    assert "mode 444" in message and "\n" not in message
    monkeypatch.undo()
    path.chmod(0o644)
    store = await Store.open(str(path))  # the refusal held nothing back
    await store.close()


async def test_a_large_file_is_said_before_its_check_and_a_small_one_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(tmp_path / "state.db")
    store = await Store.open(path)
    await store.close()
    caplog.set_level(logging.INFO, logger="orchestrator.store")
    await (await Store.open(path)).close()
    assert not [r for r in caplog.records if "checking" in r.getMessage()]
    # a start that reads a few GB cold takes tens of seconds: the log says why it is quiet
    size = Path(path).stat().st_size
    monkeypatch.setattr(store_module, "_SAID_CHECK_BYTES", size)
    await (await Store.open(path)).close()
    said = [r.getMessage() for r in caplog.records if "checking" in r.getMessage()]
    assert said == [f"checking the state database ({size / 1e9:.1f} GB) before opening it"]
