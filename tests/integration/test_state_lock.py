"""One orchestrator per state database: a second one, by hand or by ``dagctl up``, refuses to
start instead of running the first one's executions again."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from orchestrator.locking import lock_state
from tests.integration.conftest import ROOT, Cluster
from tests.integration.test_dagctl import fake_python, start_up

pytestmark = pytest.mark.slow

__all__ = ["fake_python"]  # the fixture, for the test below


async def test_a_second_orchestrator_on_one_state_database_refuses_to_start(
    cluster: Cluster,
) -> None:
    first = cluster.orchestrator
    second = subprocess.run(
        [sys.executable, "-m", "orchestrator"],
        cwd=ROOT,
        env={**first.env, "HTTP_PORT": "0", "GRPC_PORT": "0", "LOG_FORMAT": "plain"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1, second.stderr
    assert (
        f"cannot open the state database {first.env['STATE_DB']}: it is in use by process "
        f"{first.proc.pid} (another orchestrator on this host, {socket.gethostname()})"
    ) in second.stderr
    assert "unfinished executions" not in second.stderr  # it took up nothing
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{first.url}/readyz") as resp:
            assert resp.status == 200


def test_up_refuses_a_state_database_in_use_before_touching_anything(
    tmp_path: Path, fake_python: tuple[str, dict[str, str]]
) -> None:
    python, environ = fake_python
    state = tmp_path / ".dagengine" / "state.db"
    state.parent.mkdir()
    held = lock_state(str(state))
    assert held is not None
    try:
        up = start_up(tmp_path, python, environ)
        assert up.finish() == 1
    finally:
        os.close(held)
    assert up.err.getvalue() == (
        f"dagctl: .dagengine/state.db is in use by process {os.getpid()}: is another dagctl up "
        "running here? Stop it first, or set STATE_DB to use another state database\n"
    )
    assert not (tmp_path / ".dagengine" / "logs").exists()  # no log rotated, nothing started
