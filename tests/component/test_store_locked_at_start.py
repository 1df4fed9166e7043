"""The orchestrator's start on a state database whose write lock another program holds (a
sqlite3 shell inside a transaction, a VACUUM): after the busy timeout, one line naming STATE_DB
and the lock, exit 1, no traceback. The timeout is cut to a moment here; it is 30 s in service."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from orchestrator import serving, store
from orchestrator.settings import Settings
from orchestrator.store import Store


async def test_a_write_lock_held_at_start_is_named_in_one_line_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    await (await Store.open(str(path))).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, as a shell's open transaction holds it
    monkeypatch.setattr(store, "BUSY_TIMEOUT_S", 0.2)
    settings = Settings(
        state_db=str(path),
        http_port=0,
        grpc_port=0,
        discovery_mode="static",
        engine_addresses=("127.0.0.1:1",),
    )
    try:
        with caplog.at_level(logging.ERROR, logger="orchestrator"):
            code = await serving._start(settings, asyncio.Event())
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert code == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, caplog.text
    said = errors[0].getMessage()
    assert said.startswith(f"STATE_DB {path} is locked by another process (a sqlite3 shell, ")
    assert errors[0].exc_info is None
    # the lock gone, the same file opens
    await (await Store.open(str(path))).close()
