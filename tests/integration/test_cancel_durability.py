"""A cancel answered is a cancel kept: an engine that did not hear it (stopped for a while) is
asked again, and an orchestrator that restarts before any engine heard it ends the run
cancelled instead of resuming it."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest

from tests.integration.api import TOKEN, register, wait_end, wait_node
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
    sleep: 8s
  - id: last
    depends_on: [pause]
    lua: return 2
"""


async def napping(start_cluster: StartCluster) -> tuple[Cluster, str]:
    """One engine, health checks far apart (a stopped engine is not taken for lost, so only
    the cancel itself can end the run), and a run of NAP in its sleep."""
    cluster = start_cluster(engines=1, API_TOKEN="s3cret", ENGINE_HEALTH_CHECK_INTERVAL="60")
    async with aiohttp.ClientSession() as http:
        await register(http, cluster.url, NAP)
        async with http.post(f"{cluster.url}/trigger/nap", json={}, headers=TOKEN) as resp:
            eid = str((await resp.json())["execution_id"])
        await wait_node(http, cluster.url, eid, "pause")
    return cluster, eid


async def test_an_engine_that_missed_the_cancel_is_asked_again(
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
            await asyncio.sleep(6)  # past the first Cancel call's 5 s
        finally:
            engine.send_signal(signal.SIGCONT)
        (await cancel).release()
        doc = await wait_end(http, url, eid)
    # before: the run went on to succeed once the engine woke, the cancel never asked again
    assert doc["status"] == "cancelled", doc
    assert doc["nodes"]["last"]["status"] == "cancelled"


async def test_a_cancel_no_engine_heard_survives_a_restart(start_cluster: StartCluster) -> None:
    cluster, eid = await napping(start_cluster)
    url = cluster.url
    async with aiohttp.ClientSession() as http:
        cluster.engines[0].proc.send_signal(signal.SIGSTOP)  # it hears nothing now
        cancel = asyncio.ensure_future(
            http.post(f"{url}/api/v1/executions/{eid}/cancel", json={}, headers=TOKEN)
        )
        await asyncio.sleep(1)  # stored, and the engine is being asked
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
