"""Online backups of the state database (``Store.backup``, ``GET /api/v1/backup``) over a real
SQLite store, and ``dagctl backup``'s own refusals against stand-in servers.

A backup is SQLite's online backup API in one step on a connection of its own, on a thread: a
snapshot, taken under a read transaction, which in WAL mode keeps no writer waiting. Its copy
is made beside the state file, checked (quick_check, and that it holds a state database),
unlinked as soon as it is open, and streamed from the open file: nothing is left on disk
however the request ends.
"""

from __future__ import annotations

import asyncio
import io
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from orchestrator import store as store_module
from orchestrator.dagctl import main
from orchestrator.errors import InsufficientStorage
from orchestrator.store import Store
from tests.component.monitor_events import create_run, monitor_event
from tests.component.serving_helpers import Facade, served_facade

SPEC = {"id": "wf", "version": "1.0.0", "nodes": [{"id": "a", "lua": "return 1"}]}
FILLER = os.urandom(300_000).hex()
"""600 KB of text that does not compress: each filler run's one event."""
FILLER_RUNS = 60
"""About 40 MB of events: a copy that takes long enough for writes to land while it runs,
and more than the sockets between server and client buffer."""


async def fill(store: Store, runs: int = FILLER_RUNS) -> None:
    for i in range(runs):
        eid = f"filler-{i:03d}"
        await create_run(store, eid)
        await store.record_events(
            eid, [monitor_event(eid, 2, "execution.started", data={"blob": FILLER})]
        )


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Facade]:
    async with served_facade(tmp_path, specs=[SPEC], with_triggers=False) as f:
        await fill(f.store)
        yield f


def left_over(folder: Path) -> list[str]:
    """Files beside the state database that are not its own."""
    own = {"state.db", "state.db-wal", "state.db-shm", "state.db.lock"}
    return sorted(name for name in os.listdir(folder) if name not in own)


def open_copies() -> list[str]:
    """Files this process holds open that are backups' copies, unlinked or not."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if ".backup-" in target:
            found.append(target)
    return found


def rows(path: str, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(Path(path).absolute().as_uri() + "?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_a_copy_is_the_database_at_one_moment_while_runs_go_on_being_stored(
    served: Facade, tmp_path: Path
) -> None:
    store = served.store
    created: list[str] = []
    acknowledged: list[float] = []
    stop = asyncio.Event()

    async def write() -> None:
        # one durable write after another, as triggers would make them: commit order is this
        while not stop.is_set():
            eid = f"during-{len(created):04d}"
            created.append(eid)
            await create_run(store, eid)
            acknowledged.append(time.monotonic())

    writer = asyncio.create_task(write())
    await asyncio.sleep(0.05)
    began = time.monotonic()
    made = await store.backup()
    ended = time.monotonic()
    stop.set()
    await writer
    copy = tmp_path / "copy.db"
    with made.file:
        copy.write_bytes(made.file.read())
    assert made.size == copy.stat().st_size

    # a snapshot: every run stored before it and none after, so exactly a prefix of the
    # writes in the order they were committed
    in_copy = {eid for (eid,) in rows(str(copy), "SELECT id FROM executions")}
    during = sorted(eid for eid in in_copy if eid.startswith("during-"))
    assert during == created[: len(during)]
    assert len(in_copy) == FILLER_RUNS + len(during)
    assert made.summary.executions == len(in_copy)
    # and what it holds is what the store holds, byte for byte
    source = str(tmp_path / "state.db")
    for sql in (
        "SELECT * FROM executions ORDER BY id",
        "SELECT * FROM event_messages ORDER BY execution_id, first_seq",
        "SELECT * FROM versions ORDER BY workflow_id, version",
    ):
        kept = [row for row in rows(source, sql) if not str(row[0]).startswith("during-")]
        copied = [row for row in rows(str(copy), sql) if not str(row[0]).startswith("during-")]
        assert copied == kept
    assert rows(str(copy), "PRAGMA journal_mode") == [("delete",)]  # whole in one file

    # writes were acknowledged while the copy was made: it kept no writer waiting
    assert sum(began < t < ended for t in acknowledged) >= 1, (ended - began, len(created))
    assert left_over(tmp_path) == ["copy.db"]
    assert open_copies() == []


async def test_too_little_room_beside_the_database_is_refused_with_507(
    served: Facade, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.statvfs

    def nearly_full(path: Any) -> Any:
        st = real(path)
        # room for a quarter of the database, or so statvfs tells
        free_blocks = os.path.getsize(tmp_path / "state.db") // 4 // st.f_frsize
        return os.statvfs_result((*st[:4], free_blocks, *st[5:]))

    monkeypatch.setattr(store_module.os, "statvfs", nearly_full)
    with pytest.raises(InsufficientStorage) as refused:
        await served.store.backup()
    details = refused.value.details
    assert details["directory"] == str(tmp_path)
    assert isinstance(details["needed"], int) and isinstance(details["free"], int)
    assert details["free"] < details["needed"]
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{served.url}/api/v1/backup") as resp,
    ):
        assert resp.status == 507
        body = await resp.json()
    error = body["error"]
    assert error["code"] == "insufficient_storage"
    assert str(tmp_path) in error["message"]
    assert f"needs {details['needed']} bytes" in error["message"]
    assert error["details"]["directory"] == str(tmp_path)
    assert left_over(tmp_path) == []  # nothing was begun


async def test_a_backup_answers_the_file_and_leaves_nothing_behind(
    served: Facade, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="orchestrator.serving_http")
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{served.url}/api/v1/backup") as resp,
    ):
        assert resp.status == 200
        body = await resp.read()
        headers = resp.headers
    assert headers["Content-Type"] == "application/vnd.sqlite3"
    assert int(headers["Content-Length"]) == len(body)
    disposition = headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="state-') and disposition.endswith('Z.db"')
    copy = tmp_path / "copy.db"
    copy.write_bytes(body)
    assert rows(str(copy), "PRAGMA quick_check") == [("ok",)]
    assert rows(str(copy), "SELECT count(*) FROM executions") == [(FILLER_RUNS,)]
    assert left_over(tmp_path) == ["copy.db"]

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if "backed up" in r.getMessage()]

    # the handler closes its copy and logs once its last write is done, which can be just
    # after the client has read the last byte
    deadline = time.monotonic() + 10
    while (open_copies() or not said()) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert open_copies() == []
    assert len(said()) == 1 and f"{len(body)} bytes" in said()[0], said()


async def test_a_client_that_leaves_mid_stream_leaves_no_copy(
    served: Facade, tmp_path: Path
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", int(served.url.rsplit(":", 1)[1]))
    writer.write(b"GET /api/v1/backup HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    await reader.readexactly(1 << 16)  # some of the body, far from all of it
    assert open_copies() != []  # the copy is being sent from its open file...
    assert left_over(tmp_path) == []  # ...already unlinked
    writer.transport.abort()  # gone, without reading the rest

    deadline = time.monotonic() + 10
    while open_copies() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert open_copies() == []
    assert left_over(tmp_path) == []


async def test_a_copy_that_fails_its_check_is_refused_not_sent(
    served: Facade, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    check = store_module._check_backup

    def damaged_first(temp: str, path: str) -> Any:
        # a page in the middle of the copy overwritten, as a bad disk would give it back
        with open(temp, "r+b") as f:
            f.seek(os.path.getsize(temp) // 2 // 4096 * 4096)
            f.write(b"\xa5" * 4096 * 4)
        return check(temp, path)

    monkeypatch.setattr(store_module, "_check_backup", damaged_first)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{served.url}/api/v1/backup") as resp,
    ):
        assert resp.status == 500
        body = await resp.json()
    assert body["error"]["code"] == "backup_failed"
    assert "quick check" in body["error"]["message"], body
    assert left_over(tmp_path) == []
    assert open_copies() == []


async def test_a_damaged_store_answers_503_as_other_routes_do(served: Facade) -> None:
    served.store._health.damaged = "STATE_DB state.db is damaged (a test's words)"
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{served.url}/api/v1/backup") as resp,
    ):
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "5"
        body = await resp.json()
    assert body["error"]["code"] == "store_unavailable"
    assert "damaged" in body["error"]["message"]


async def test_one_copy_at_a_time_a_second_caller_waits(
    served: Facade, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = 0
    most = 0
    real = store_module.backup_state

    def counted(path: str) -> Any:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            time.sleep(0.2)
            return real(path)
        finally:
            running -= 1

    monkeypatch.setattr(store_module, "backup_state", counted)
    made = await asyncio.gather(served.store.backup(), served.store.backup())
    for each in made:
        each.file.close()
    assert most == 1
    assert [m.summary.executions for m in made] == [FILLER_RUNS, FILLER_RUNS]


async def test_a_caller_gone_during_the_copy_leaves_nothing_and_holds_the_next_back(
    served: Facade, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copying = asyncio.Event()
    began: list[float] = []
    ended: list[float] = []
    real = store_module.backup_state
    loop = asyncio.get_running_loop()

    def slow(path: str) -> Any:
        began.append(time.monotonic())
        loop.call_soon_threadsafe(copying.set)
        time.sleep(0.3)
        try:
            return real(path)
        finally:
            ended.append(time.monotonic())

    monkeypatch.setattr(store_module, "backup_state", slow)
    first = asyncio.create_task(served.store.backup())
    await copying.wait()
    first.cancel()  # its caller gone while the copy is made
    second = await served.store.backup()
    second.file.close()
    with pytest.raises(asyncio.CancelledError):
        await first
    # the second copy began only once the first had ended, and the first's file was closed
    assert len(ended) == 2 and ended[0] <= began[1]
    assert open_copies() == []
    assert left_over(tmp_path) == []


# -- dagctl backup against stand-ins ------------------------------------------------------------


async def stand_in(handler: Callable[[web.Request], Any]) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_get("/api/v1/backup", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def dagctl(url: str, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()

    def call() -> int:
        with redirect_stdout(out), redirect_stderr(err):
            return main(list(argv), {"DAGCTL_SERVER": url})

    code = await asyncio.to_thread(call)
    return code, out.getvalue(), err.getvalue()


async def test_dagctl_backup_of_a_body_cut_short_writes_nothing(tmp_path: Path) -> None:
    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/vnd.sqlite3"})
        response.content_length = 1 << 20
        await response.prepare(request)
        await response.write(b"SQLite format 3\x00" + b"\x00" * 1000)
        assert request.transport is not None
        request.transport.close()  # the server (or a proxy) gone half-way
        return response

    runner, url = await stand_in(cut)
    try:
        code, out, err = await dagctl(url, "backup", str(tmp_path / "out.db"))
    finally:
        await runner.cleanup()
    assert (code, out) == (1, "")
    assert err.startswith(f"dagctl: the answer of {url} broke off after 1016 of 1048576 bytes")
    assert len(err.splitlines()) == 1
    assert os.listdir(tmp_path) == []  # no out.db, no out.db.part


async def test_dagctl_backup_of_an_answer_that_is_no_state_database_writes_nothing(
    tmp_path: Path,
) -> None:
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE notes (x)")
    conn.commit()
    conn.close()
    foreign = other.read_bytes()
    other.unlink()

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=foreign, content_type="application/vnd.sqlite3")

    runner, url = await stand_in(answer)
    try:
        code, out, err = await dagctl(url, "backup", str(tmp_path / "out.db"))
    finally:
        await runner.cleanup()
    assert (code, out) == (1, "")
    assert "is not a DAG Engine state database" in err and "out.db not written" in err, err
    assert len(err.splitlines()) == 1
    assert os.listdir(tmp_path) == []


async def test_dagctl_backup_refuses_standard_output_and_an_empty_name(tmp_path: Path) -> None:
    for given, said in (("-", "binary SQLite file"), ("", "FILE is empty")):
        code, out, err = await dagctl("http://127.0.0.1:9", "backup", given)
        assert (code, out) == (2, ""), err
        assert said in err.splitlines()[-1], err


async def test_a_client_that_stops_reading_is_given_up_and_its_copy_freed(
    served: Facade,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from orchestrator import serving_http

    monkeypatch.setattr(serving_http, "BACKUP_STALL_S", 0.5)
    caplog.set_level("INFO", logger="orchestrator")
    reader, writer = await asyncio.open_connection("127.0.0.1", int(served.url.rsplit(":", 1)[1]))
    writer.write(b"GET /api/v1/backup HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    # connected, and reading nothing more: before, its copy's blocks were held for as long
    deadline = time.monotonic() + 20
    while open_copies() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert open_copies() == []
    assert "the client stopped reading after" in caplog.text
    writer.transport.abort()


async def test_head_makes_no_copy_and_a_third_backup_at_once_is_refused(
    served: Facade, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator import serving_http

    copies = 0
    real = store_module.backup_state

    def counted(path: str) -> Any:
        nonlocal copies
        copies += 1
        return real(path)

    monkeypatch.setattr(store_module, "backup_state", counted)
    async with aiohttp.ClientSession() as http:
        async with http.head(f"{served.url}/api/v1/backup") as resp:
            assert resp.status == 405
        assert copies == 0  # before: a whole copy made for the headers
        monkeypatch.setattr(serving_http, "BACKUPS_AT_ONCE", 1)
        port = int(served.url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /api/v1/backup HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # one being sent, its client slow
        async with http.get(f"{served.url}/api/v1/backup") as resp:
            body = await resp.json()
            assert resp.status == 429, body
        assert body["error"]["code"] == "too_many_backups"
        writer.transport.abort()


async def test_dagctl_backup_leaves_a_part_file_it_did_not_make(tmp_path: Path) -> None:
    async def never(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/vnd.sqlite3"})
        response.content_length = 4
        await response.prepare(request)
        await response.write(b"abcd")
        return response

    (tmp_path / "out.db.part").write_text("another dagctl backup's\n")
    runner, url = await stand_in(never)
    try:
        code, _, err = await dagctl(url, "backup", str(tmp_path / "out.db"))
    finally:
        await runner.cleanup()
    assert code == 2 and "out.db.part exists" in err
    # before: removed, under a concurrent backup writing it
    assert (tmp_path / "out.db.part").read_text() == "another dagctl backup's\n"
