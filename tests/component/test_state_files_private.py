"""The state database and the logs beside it hold every run's inputs and outputs, which often
carry secrets: what the orchestrator and ``dagctl up`` make of them is readable by their owner
alone, whatever the umask; what exists already keeps the mode its owner gave it."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.dagctl.launching import hold_logs, log_dir_of
from orchestrator.store import Store


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def open_umask() -> Iterator[None]:
    # the usual one: files 0644 and folders 0755 unless made otherwise
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


async def test_a_new_state_database_its_wal_and_new_folders_are_the_owners_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "made" / "here" / "state.db"
    above = mode(tmp_path)
    store = await Store.open(str(path))
    try:
        wal = path.with_name("state.db-wal")
        assert wal.exists()  # open while the store is: SQLite made it with the file's mode
        assert (mode(path), mode(wal)) == (0o600, 0o600)
        assert mode(path.parent) == mode(path.parent.parent) == 0o700
    finally:
        await store.close()
    assert mode(tmp_path) == above  # not made here: left as it was


async def test_an_existing_state_database_and_folder_keep_their_modes(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o750)
    path = folder / "state.db"
    store = await Store.open(str(path))
    await store.close()
    path.chmod(0o640)  # the owner's choice, for a group that reads backups
    store = await Store.open(str(path))
    await store.close()
    assert (mode(folder), mode(path)) == (0o750, 0o640)


async def test_an_empty_file_left_by_a_start_cut_short_opens_as_new(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.touch(mode=0o600)
    store = await Store.open(str(path))
    await store.close()
    assert path.stat().st_size > 0


def test_up_makes_its_folder_and_logs_folder_the_owners_alone(tmp_path: Path) -> None:
    log_dir = log_dir_of(".dagengine/state.db", tmp_path)
    fd = hold_logs(log_dir)
    try:
        assert mode(log_dir) == mode(tmp_path / ".dagengine") == 0o700
    finally:
        os.close(fd)
