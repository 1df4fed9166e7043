"""A state database written under older, looser spec checks: the orchestrator starts on it,
shows what it holds, refuses runs of what today's checks refuse, and takes a new version."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.store import Store
from tests.integration.api import TOKEN, register, wait_end
from tests.integration.conftest import (
    OrchestratorProcess,
    StartEngine,
    spawn_orchestrator,
    stop_process,
)

pytestmark = pytest.mark.slow

LOOSE = {
    "id": "old",
    "version": "1.0.0",
    "triggers": [{"cron": "0 0 1 1 *"}],
    "nodes": [
        {"id": "a", "lua": "return 1"},
        {"id": "b", "lua": "return 2", "depends_on": "a"},  # a string: taken once, not now
    ],
}


async def start_on(
    state: Path, stored: dict[str, Any], start_engine: StartEngine
) -> OrchestratorProcess:
    """An orchestrator and an engine on ``state``, with ``stored`` written into it as
    old@1.0.0 was by a version of the orchestrator whose checks were looser."""
    with sqlite3.connect(state) as conn:
        conn.execute(
            "INSERT INTO versions (workflow_id, version, spec_json, digest, created_at)"
            " VALUES ('old', '1.0.0', ?, 'x', 0)",
            (json.dumps(stored),),
        )
    engine = start_engine()
    return await asyncio.to_thread(
        spawn_orchestrator, state.parent / "orchestrator.log", state, [engine], API_TOKEN="s3cret"
    )


async def test_a_stored_latest_version_todays_checks_refuse_does_not_stop_the_start(
    tmp_path: Path, start_engine: StartEngine
) -> None:
    state = tmp_path / "state.db"
    store = await Store.open(str(state))
    await store.close()
    orchestrator = await start_on(state, LOOSE, start_engine)
    try:
        url = orchestrator.url
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/api/v1/workflows", headers=TOKEN) as resp:
                [listed] = (await resp.json())["workflows"]
            assert (listed["id"], listed["nodes"], listed["triggers"]) == ("old", 2, 1)
            async with http.post(f"{url}/trigger/old", json={}, headers=TOKEN) as resp:
                assert resp.status == 400
                refused = (await resp.json())["error"]
            assert "nodes[b].depends_on: must be a list of node ids" in str(refused)
            fixed = json.loads(json.dumps(LOOSE))
            fixed["version"] = "1.0.1"
            fixed["nodes"][1]["depends_on"] = ["a"]
            await register(http, url, json.dumps(fixed))
            async with http.post(f"{url}/trigger/old", json={}, headers=TOKEN) as resp:
                assert resp.status == 202
                eid = (await resp.json())["execution_id"]
            assert (await wait_end(http, url, eid))["status"] == "succeeded"
        log = orchestrator.log()
        assert "stored workflow old@1.0.0: nodes[b].depends_on: must be a list" in log
        assert "Traceback" not in log
    finally:
        await asyncio.to_thread(stop_process, orchestrator.proc)


LONG_NAME = {
    "id": "old",
    "version": "1.0.0",
    "name": "n" * 250,  # taken before names were held to 200 characters, at registration
    "nodes": [{"id": "a", "lua": "return 1"}, {"id": "b", "lua": "return 2"}],
}


@pytest.mark.parametrize(
    ("stored", "status", "error"),
    [
        (
            LOOSE,
            "failed",
            # before: "the engine refused the run: 1 problem in workflow spec spec: - spec:1: ..."
            "old@1.0.0 was stored under older checks, and this version of the orchestrator "
            "refuses it: nodes[b].depends_on: must be a list of node ids; "
            "register a fixed version and run that",
        ),
        (LONG_NAME, "succeeded", None),  # a limit for new versions alone stops no run
    ],
)
async def test_a_run_accepted_before_an_upgrade_runs_or_ends_saying_why(
    tmp_path: Path, start_engine: StartEngine, stored: dict[str, Any], status: str, error: str
) -> None:
    state = tmp_path / "state.db"
    store = await Store.open(str(state))
    await store.create_execution(
        execution_id="0" * 32,
        workflow_id="old",
        version="1.0.0",
        inputs={},
        pinned={},
        created_at=0.0,
        node_ids=["a", "b"],
        first_event={
            "seq": 1,
            "time": "1970-01-01T00:00:00Z",
            "type": "execution.queued",
            "severity": "info",
            "workflow_id": "old",
            "version": "1.0.0",
            "execution_id": "0" * 32,
            "data": {"inputs": {}, "pinned": {}},
        },
    )
    await store.close()
    orchestrator = await start_on(state, stored, start_engine)
    try:
        async with aiohttp.ClientSession() as http:
            doc = await wait_end(http, orchestrator.url, "0" * 32)
        assert (doc["status"], doc["error"]) == (status, error)
    finally:
        await asyncio.to_thread(stop_process, orchestrator.proc)
