"""``dagctl backup FILE`` against a real orchestrator process with an API token, and the backup
restored as a second orchestrator's state file the way the README says (the file put in as
``state.db`` in a directory of its own, no ``-wal`` or ``-shm`` beside it).

dagctl writes ``FILE.part`` beside FILE, checks it as the server did (SQLite's quick check, a
DAG Engine state database) and renames it: whatever fails, nothing is left under FILE or
FILE.part.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.dagctl import main
from orchestrator.store import MIGRATIONS
from tests.integration.api import TOKEN, get, register, start, wait_end
from tests.integration.conftest import (
    Cluster,
    running_cluster,
    spawn_orchestrator,
    stop_process,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SPEC = """
id: saved
version: 1.0.0
nodes:
  - id: a
    lua: return { n = inputs.n * 2 }
"""
RUNS = 5
ENV = {"DAGCTL_TOKEN": "s3cret"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(
        tmp_path_factory.mktemp("cluster"), engines=1, API_TOKEN="s3cret"
    ) as found:
        yield found


@pytest.fixture(scope="module")
def finished(cluster: Cluster) -> dict[str, Any]:
    """The module's runs, each ended: their documents by id."""

    async def run() -> dict[str, Any]:
        async with aiohttp.ClientSession() as http:
            await register(http, cluster.url, SPEC)
            ids = [await start(http, cluster.url, "saved", {"n": n}) for n in range(RUNS)]
            return {eid: await wait_end(http, cluster.url, eid) for eid in ids}

    return asyncio.run(run())


def dagctl(
    url: str, capsys: pytest.CaptureFixture[str], *argv: str, env: dict[str, str] = ENV
) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv), {"DAGCTL_SERVER": url, **env})
    seen = capsys.readouterr()
    return code, seen.out, seen.err


async def test_a_backup_restores_into_a_second_orchestrator_with_every_run(
    cluster: Cluster, finished: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.db"
    code, said, err = dagctl(cluster.url, capsys, "backup", str(out))
    assert code == 0, err
    size = out.stat().st_size
    assert said == (
        f"wrote {out} ({size} bytes, schema {len(MIGRATIONS)}, {RUNS} executions, 1 workflow)\n"
    )
    assert out.stat().st_mode & 0o777 == 0o600  # runs' inputs and outputs are in it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.db"]
    # a run accepted after the backup is not in it
    async with aiohttp.ClientSession() as http:
        later = await start(http, cluster.url, "saved", {"n": 100})

    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copyfile(out, restored / "state.db")
    second = spawn_orchestrator(
        tmp_path / "restored.log",
        restored / "state.db",
        [],
        ENGINE_ADDRESSES="127.0.0.1:9",
        API_TOKEN="s3cret",
    )
    try:
        async with aiohttp.ClientSession() as http:
            listed = await get(http, f"{second.url}/api/v1/executions?limit=1000")
            assert {e["id"] for e in listed["executions"]} == set(finished)
            for eid, before in finished.items():
                doc = await get(http, f"{second.url}/api/v1/executions/{eid}")
                assert doc["status"] == before["status"] == "succeeded"
                assert doc["outputs"] == before["outputs"]
                assert doc["nodes"] == before["nodes"]
            async with http.get(f"{second.url}/api/v1/executions/{later}", headers=TOKEN) as r:
                assert r.status == 404
    finally:
        stop_process(second.proc)


async def test_an_existing_file_is_refused_unless_forced(
    cluster: Cluster, finished: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.db"
    out.write_text("an earlier backup, say\n")
    code, said, err = dagctl(cluster.url, capsys, "backup", str(out))
    assert (code, said) == (2, "")
    assert err == f"dagctl: backup: {out} exists: give a new name, or --force to overwrite it\n"
    assert out.read_text() == "an earlier backup, say\n"

    code, said, err = dagctl(cluster.url, capsys, "backup", "--force", str(out))
    assert code == 0, err
    assert said.startswith(f"wrote {out} (")
    conn = sqlite3.connect(out)
    try:
        assert conn.execute("SELECT count(*) FROM executions").fetchone()[0] >= RUNS
    finally:
        conn.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.db"]


async def test_without_the_token_it_is_refused_and_nothing_is_written(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.db"
    code, said, err = dagctl(cluster.url, capsys, "backup", str(out), env={})
    assert (code, said) == (1, "")
    assert err == (
        "dagctl: unauthorized: this call needs Authorization: Bearer <token> "
        "(set DAGCTL_TOKEN (or API_TOKEN) to the orchestrator's API_TOKEN)\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_local_file_that_cannot_be_written_leaves_nothing(
    cluster: Cluster, finished: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "out.db"
    # a limit on file sizes (16 KiB, in the shell's 1,024-byte blocks) stands in for a full
    # disk: writes past it fail (EFBIG), and Python ignores the SIGXFSZ that comes with them.
    # Set by a shell the child becomes, not by a preexec_fn: that runs in a fork of this
    # process, whose gRPC threads it does not have, and grpc's fork handlers once aborted it
    done = subprocess.run(
        [
            "/bin/sh",
            "-c",
            'ulimit -f 16 && exec "$@"',
            "sh",
            sys.executable,
            "-m",
            "orchestrator.dagctl",
            "backup",
            str(out),
        ],
        cwd=ROOT,
        # no .pyc written under the limit: a write cut short there leaves a truncated one,
        # which the interpreter would install as it is for every later import
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONDONTWRITEBYTECODE": "1",
            "DAGCTL_SERVER": cluster.url,
            **ENV,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert re.fullmatch(
        rf"dagctl: cannot write {re.escape(str(out))}\.part: file too large; "
        rf"{re.escape(str(out))} not written\n",
        done.stderr,
    ), done.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_orchestrator_out_of_reach_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, said, err = dagctl("http://127.0.0.1:9", capsys, "backup", str(tmp_path / "out.db"))
    assert (code, said) == (1, "")
    assert err.startswith("dagctl: cannot reach the orchestrator at http://127.0.0.1:9: ")
    assert len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
