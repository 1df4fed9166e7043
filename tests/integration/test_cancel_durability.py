"""A cancel answered is a cancel kept: a run whose engine did not hear it (stopped for a while)
ends cancelled, and an orchestrator that restarts before any engine heard it ends the run
cancelled instead of resuming it.

The stopped engine is woken as soon as the Cancel call is seen to fail (its 5 s deadline).
Two ways then end the run, and either passes here: the call sent again, heard by the engine
while the run is still on it; or, when the link's pings (their 5 s timeout in
``fleet.CHANNEL_OPTIONS``) took the stopped engine for lost first, the stored cancel its
resumed run finds. That the call is sent again is proved by
tests/component/test_cancel_asked_again.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3

import aiohttp
import pytest

from tests.integration.api import TOKEN, register, wait_end, wait_for, wait_node
from tests.integration.conftest import Cluster, StartCluster, spawn_engine, wait_until_serving

pytestmark = pytest.mark.slow

NAP = """
id: nap
version: 1.0.0
nodes:
  - id: first
    lua: return 1
  - id: pause
    depends_on: [first]
    sleep: 20s
  - id: last
    depends_on: [pause]
    lua: return 2
"""


async def napping(start_cluster: StartCluster) -> tuple[Cluster, str]:
    """One engine and a run of NAP in its sleep. The cancel ends it some 6 s in: a sleep
    that ended first would make the run succeed, and its length costs nothing otherwise."""
    cluster = start_cluster(engines=1, API_TOKEN="s3cret")
    async with aiohttp.ClientSession() as http:
        await register(http, cluster.url, NAP)
        async with http.post(f"{cluster.url}/trigger/nap", json={}, headers=TOKEN) as resp:
            eid = str((await resp.json())["execution_id"])
        await wait_node(http, cluster.url, eid, "pause")
    return cluster, eid


def cancel_missed(cluster: Cluster, eid: str) -> bool:
    """Whether the orchestrator logged a Cancel call of ``eid`` that its engine did not answer."""
    records = (
        json.loads(line) for line in cluster.orchestrator.log().splitlines() if line[:1] == "{"
    )
    return any(str(r.get("message", "")).startswith(f"cancel of {eid} on ") for r in records)


async def test_a_run_whose_engine_missed_the_cancel_ends_cancelled(
    start_cluster: StartCluster,
) -> None:
    cluster, eid = await napping(start_cluster)
    url = cluster.url
    async with aiohttp.ClientSession() as http:
        engine = cluster.engines[0].proc
        engine.send_signal(signal.SIGSTOP)
        try:
            cancel = asyncio.ensure_future(
                http.post(
                    f"{url}/api/v1/executions/{eid}/cancel",
                    json={"reason": "stop it"},
                    headers=TOKEN,
                )
            )

            async def missed() -> bool:
                return cancel_missed(cluster, eid)

            # the Cancel call failed (its 5 s deadline, or the link's pings cut the stream):
            # only then is the engine woken, so it never heard that call
            await wait_for("the Cancel call missed", missed)
        finally:
            engine.send_signal(signal.SIGCONT)
        (await cancel).release()
        doc = await wait_end(http, url, eid)
    # before: the run went on to succeed once the engine woke, the cancel never asked again
    assert doc["status"] == "cancelled", doc
    assert doc["nodes"]["last"]["status"] == "cancelled"


def cancel_stored(cluster: Cluster, eid: str) -> bool:
    """Whether the orchestrator's store holds the cancel of ``eid`` (it is written before any
    engine is asked)."""
    uri = f"file:{cluster.orchestrator.env['STATE_DB']}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        row = db.execute("SELECT cancel_reason FROM executions WHERE id = ?", (eid,)).fetchone()
    return row is not None and row[0] is not None


async def test_a_cancel_no_engine_heard_survives_a_restart(start_cluster: StartCluster) -> None:
    cluster, eid = await napping(start_cluster)
    url = cluster.url
    async with aiohttp.ClientSession() as http:
        cluster.engines[0].proc.send_signal(signal.SIGSTOP)  # it hears nothing now
        cancel = asyncio.ensure_future(
            http.post(f"{url}/api/v1/executions/{eid}/cancel", json={}, headers=TOKEN)
        )

        async def stored() -> bool:
            return cancel_stored(cluster, eid)

        await wait_for("the cancel stored", stored)  # and the engine is being asked
    cluster.orchestrator.proc.kill()
    cluster.orchestrator.proc.wait(10)
    cancel.cancel()
    cluster.engines[0].proc.kill()
    cluster.engines[0].proc.wait(10)
    fresh = wait_until_serving(spawn_engine(cluster.tmp / "fresh-engine.log", ENGINE_ID="fresh"))
    cluster.engines = [fresh]
    cluster.restart_orchestrator(ENGINE_ADDRESSES=fresh.address)
    async with aiohttp.ClientSession() as http:
        doc = await wait_end(http, cluster.url, eid)
    # before: the restarted orchestrator resumed the run on the fresh engine, and it succeeded
    assert doc["status"] == "cancelled", doc
    assert doc["nodes"]["last"]["status"] == "cancelled"
