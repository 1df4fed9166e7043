"""A sub-workflow node's timeout survives the engine it began on: real orchestrator and engines.

The parent's engine is SIGKILLed while its node waits on a child that takes longer than the
node's timeout; the run resumes on the other engine, where the node takes up the same child. It
must still time out at its first start plus its timeout: were the timeout started over at the
resume, the child would end within it and the run would succeed. The checks read the stored
events (the times the engines stamped) rather than the test's own clock.
"""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import datetime
from typing import Any

import aiohttp
import pytest

from tests.integration.api import get, register, start, wait_end, wait_for
from tests.integration.conftest import StartCluster

pytestmark = pytest.mark.slow

TIMEOUT = 2.0
CHILD_SLEEP = 3.0
"""Longer than the timeout, so the node always times out; shorter than the kill's moment plus
the timeout, so a timeout started over at the resume would see the child end."""
KILL_AT = 1.7
"""Seconds after the node's first start that its engine is killed."""
SLACK = 0.05

CHILD = f"""
id: slow-kid
version: 1.0.0
nodes:
  - id: nap
    sleep: {CHILD_SLEEP:g}s
  - id: done
    depends_on: [nap]
    lua: return {{ fine = true }}
"""

PARENT = f"""
id: bounded-mom
version: 1.0.0
nodes:
  - id: first
    lua: return {{ at = 1 }}
  - id: sub
    depends_on: [first]
    timeout: {TIMEOUT:g}s
    workflow: {{id: slow-kid, version: "^1"}}
  - id: last
    depends_on: [sub]
    lua: return {{ child = results.sub.done.fine }}
"""


def unix(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def test_a_sub_workflow_node_resumed_after_its_engine_died_times_out_at_its_first_start(
    start_cluster: StartCluster,
) -> None:
    cluster = start_cluster(engines=2, LOAD_BALANCER_TYPE="round-robin", API_TOKEN="s3cret")
    url = cluster.url
    async with aiohttp.ClientSession() as http:

        async def two_ready() -> bool:
            engines = (await get(http, f"{url}/api/v1/engines"))["engines"]
            return sum(1 for e in engines if e["state"] == "ready") == 2

        await wait_for("two engines", two_ready)
        await register(http, url, CHILD)
        await register(http, url, PARENT)
        parent_id = await start(http, url, "bounded-mom")

        async def child_running() -> Any:
            doc = await get(http, f"{url}/api/v1/executions/{parent_id}")
            if not doc["children"]:
                return None
            child = await get(http, f"{url}/api/v1/executions/{doc['children'][0]}")
            return (doc, child) if child["nodes"]["nap"]["status"] == "running" else None

        # the node's request for its child is stored: the run resumes from it
        parent, child = await wait_for("the child running", child_running)
        victim_id = parent["nodes"]["sub"]["engine_id"]
        assert child["nodes"]["nap"]["engine_id"] != victim_id
        first_start = unix(parent["nodes"]["sub"]["started_at"])
        await asyncio.sleep(max(0.0, first_start + KILL_AT - time.time()))
        victim = next(e for e in cluster.engines if e.env["ENGINE_ID"] == victim_id)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(10)

        doc = await wait_end(http, url, parent_id, timeout=60)
        events = (await get(http, f"{url}/api/v1/executions/{parent_id}/events"))["events"]
        # the node gave up on its child: the child is cancelled, not left to run
        kid = await wait_end(http, url, child["id"], timeout=20)

    assert doc["status"] == "failed", doc
    sub = doc["nodes"]["sub"]
    assert (sub["status"], sub["error"]) == ("failed", f"timed out after {TIMEOUT:g}s"), sub
    assert sub["engine_id"] != victim_id
    assert doc["nodes"]["last"]["status"] == "blocked"
    assert doc["children"] == [child["id"]], "the resumed node took up the child it had"
    assert kid["status"] == "cancelled", kid

    asked = [e for e in events if e["type"] == "subworkflow.requested"]
    assert {e["attempt"] for e in asked} == {1}, "the resumed node is the same attempt"
    t_asked = unix(asked[0]["time"])
    runs = [e for e in events if e["type"] == "execution.started"]
    assert len(runs) == 2
    t_resumed = unix(runs[1]["time"])
    (failed,) = [e for e in events if e["type"] == "node.failed" and e["node_id"] == "sub"]
    t_failed = unix(failed["time"])
    assert t_failed >= t_asked + TIMEOUT - SLACK, "the node timed out early"
    # at its first start plus its timeout, or at once if the run resumed after that
    assert t_failed <= max(t_asked + TIMEOUT, t_resumed) + 0.5, "the timeout started over"
    assert t_failed < t_resumed + TIMEOUT
