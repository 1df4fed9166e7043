"""The items a foreach node had done survive the engine it ran on: real orchestrator and
engines on loopback, real gRPC, HTTP and SQLite.

The engine running a long foreach node is SIGKILLed once a node.progress event of it is stored;
the run resumes on the other engine, which must run only the items no stored event told as
done, and end with every output in its place. The checks read the stored events (which engine
logged which item), never the test's clock: a loaded machine slows the run without failing it.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import aiohttp
import pytest

from tests.integration.api import call, engines_ready
from tests.integration.conftest import StartCluster

pytestmark = pytest.mark.slow

ITEMS = 80
# each item holds its worker for 0.2 s of the engine's CPU time (about 0.1 s of wall clock
# with both workers busy): the node runs for seconds, past its first node.progress
LONG = """
id: long-each
version: 1.0.0
timeout: 10m
nodes:
  - id: each
    foreach: "{{ inputs.items }}"
    concurrency: 2
    lua: |
      log("info", "item " .. ctx.index)
      local t = os.clock()
      while os.clock() - t < 0.2 do end
      return { twice = ctx.item * 2 }
  - id: total
    depends_on: [each]
    lua: "return #results.each"
"""


async def events_of(http: aiohttp.ClientSession, url: str, eid: str) -> list[dict[str, Any]]:
    return list((await call(http, "GET", f"{url}/api/v1/executions/{eid}/events"))["events"])


async def test_a_foreach_node_resumed_elsewhere_runs_only_the_items_not_done(
    start_cluster: StartCluster,
) -> None:
    cluster = start_cluster(engines=2, API_TOKEN="s3cret")
    url = cluster.url
    async with aiohttp.ClientSession() as http:
        await engines_ready(http, url, 2)
        await call(
            http,
            "POST",
            f"{url}/api/v1/workflows",
            data=LONG,
            headers={"Content-Type": "application/yaml"},
        )
        body = {"inputs": {"items": list(range(ITEMS))}}
        eid = (await call(http, "POST", f"{url}/trigger/long-each", json=body))["execution_id"]

        # until the node tells items done: from then on they are facts the run resumes from
        told: list[dict[str, Any]] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not told:
            events = await events_of(http, url, eid)
            told = [e for e in events if e["type"] == "node.progress"]
            ended = [e for e in events if e["type"] == "node.succeeded" and e["node_id"] == "each"]
            assert not ended, "the node ended before the test saw it tell its items"
            await asyncio.sleep(0.05)
        assert told, "no node.progress was stored"
        victim_id = told[0]["engine_id"]
        doc = await call(http, "GET", f"{url}/api/v1/executions/{eid}")
        assert 0 < doc["progress"] < 50, doc["progress"]  # its items count before it ends
        victim = next(e for e in cluster.engines if e.env["ENGINE_ID"] == victim_id)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(10)

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            doc = await call(http, "GET", f"{url}/api/v1/executions/{eid}")
            if doc["finished_at"] is not None:
                break
            await asyncio.sleep(0.2)
        events = await events_of(http, url, eid)

    assert doc["status"] == "succeeded", doc
    assert doc["nodes"]["each"]["output"] == [{"twice": i * 2} for i in range(ITEMS)]
    assert doc["outputs"] == {"total": ITEMS}
    survivor = doc["nodes"]["each"]["engine_id"]
    assert survivor != victim_id

    # what the dead engine's stored events told as done is what the run resumed with
    carried: dict[str, Any] = {}
    for event in events:
        if event["type"] == "node.progress" and event["engine_id"] == victim_id:
            carried.update(event["data"]["outputs"])
    assert carried and all(carried[k] == {"twice": int(k) * 2} for k in carried)
    started = [e for e in events if e["type"] == "node.started" and e["node_id"] == "each"]
    first_start = next(e for e in started if e["engine_id"] == survivor)
    assert first_start["data"] == {"items": ITEMS, "resumed_items": len(carried)}

    # and none of those ran again: the survivor logged only the others, each once
    logged = [
        e["data"]["item"]
        for e in events
        if e["type"] == "node.log" and e["node_id"] == "each" and e["engine_id"] == survivor
    ]
    assert logged, "the survivor ran no item"
    assert not {str(i) for i in logged} & carried.keys(), "a carried item ran again"
    assert len(logged) == len(set(logged))
    every = {
        e["data"]["item"] for e in events if e["type"] == "node.log" and e["node_id"] == "each"
    }
    assert every == set(range(ITEMS))
