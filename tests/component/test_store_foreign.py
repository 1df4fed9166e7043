"""Opening a state database file that is not ours to write: another program's SQLite file, or
one at a schema newer than this orchestrator's. Refused before anything is written: the file
stays as it was, byte for byte, not even switched to write-ahead logging."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from orchestrator.store import MIGRATIONS, Store
from tests.component.test_store import at_schema_1


def made(path: Path, *statements: str) -> bytes:
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in statements:
        conn.execute(statement)
    conn.close()
    return path.read_bytes()


def journal_mode(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("tables", "named"),
    [
        (["CREATE TABLE users (x)", "INSERT INTO users VALUES (1)"], "'users'"),
        # one of ours by name: the first migration used to fail half-way, on a WAL file
        (["CREATE TABLE versions (a, b)"], "'versions'"),
        ([f"CREATE TABLE t{n} (x)" for n in range(7)], "'t0', 't1', 't2', 't3', 't4' and 2 more"),
    ],
)
async def test_another_programs_database_is_refused_and_left_as_it_was(
    tmp_path: Path, tables: list[str], named: str
) -> None:
    path = tmp_path / "f.db"
    before = made(path, *tables)
    for _ in range(2):  # the refused open held nothing back: the second is refused the same
        with pytest.raises(RuntimeError) as caught:
            await Store.open(str(path))
        message = str(caught.value)
        assert message.startswith(f"{path} is not a DAG Engine state database: it holds ")
        assert named in message and "user_version 0" in message, message
        assert "point STATE_DB at a new or empty file" in message
    assert path.read_bytes() == before
    assert journal_mode(path) == "delete"
    assert not (tmp_path / "f.db-wal").exists()


async def test_a_newer_schema_is_refused_before_the_file_is_switched_to_wal(
    tmp_path: Path,
) -> None:
    path = tmp_path / "future.db"
    before = made(path, "CREATE TABLE whatever (x)", "PRAGMA user_version = 99")
    with pytest.raises(
        RuntimeError, match=rf"at schema 99, newer than this orchestrator \({len(MIGRATIONS)}\)"
    ):
        await Store.open(str(path))
    assert path.read_bytes() == before
    assert journal_mode(path) == "delete"
    assert len(MIGRATIONS) < 99


async def test_an_empty_file_or_one_with_no_tables_becomes_a_state_database(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    bare = tmp_path / "bare.db"
    made(bare, "PRAGMA page_size = 8192", "VACUUM")
    for path in (empty, bare):
        store = await Store.open(str(path))
        await store.close()
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        conn.close()
        assert journal_mode(path) == "wal"


async def test_a_database_of_ours_at_an_older_schema_is_still_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    at_schema_1(path).close()
    store = await Store.open(str(path))
    await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    conn.close()
