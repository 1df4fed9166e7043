"""A sleep survives the engine it began on: real orchestrator and engines on loopback.

The sleep's engine is SIGKILLed part way through; the run resumes on the other engine, which
must wait only what is left of the sleep, counted from its first start. The checks read the
stored events (the times the engines stamped, and what they say about the resumption) rather
than the test's own clock, so a loaded machine slows the run without failing it.
"""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import datetime
from typing import Any

import aiohttp
import pytest

from tests.integration.api import call, engines_ready
from tests.integration.conftest import StartCluster, stop_process

pytestmark = pytest.mark.slow

SLEEP = 5.0
NAPPER = f"""
id: napper
version: 1.0.0
timeout: 10m
nodes:
  - id: first
    lua: return {{ at = 1 }}
  - id: nap
    depends_on: [first]
    sleep: {SLEEP:g}s
  - id: last
    depends_on: [nap]
    lua: return {{ done = results.first.at + 1 }}
"""
# the run's clock counts to the millisecond: event times are written to it
SLACK = 0.01


def unix(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def sleeping_run(
    http: aiohttp.ClientSession, url: str, engines: int, spec: str, workflow_id: str
) -> dict[str, Any]:
    """With ``engines`` ready, register ``spec`` and run it until its node ``nap`` (a sleep) is
    stored as started: from there on that is a fact the run resumes from. The run as it is."""
    await engines_ready(http, url, engines, within=30)
    await call(
        http,
        "POST",
        f"{url}/api/v1/workflows",
        data=spec,
        headers={"Content-Type": "application/yaml"},
    )
    eid = (await call(http, "POST", f"{url}/trigger/{workflow_id}", json={}))["execution_id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        doc: dict[str, Any] = await call(http, "GET", f"{url}/api/v1/executions/{eid}")
        if doc["nodes"]["nap"]["status"] == "running":
            break
        await asyncio.sleep(0.05)
    assert doc["nodes"]["nap"]["status"] == "running", doc
    return doc


async def ended_run(
    http: aiohttp.ClientSession, url: str, eid: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The run once it has ended (or as it is after a minute), and its stored events."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        doc: dict[str, Any] = await call(http, "GET", f"{url}/api/v1/executions/{eid}")
        if doc["finished_at"] is not None:
            break
        await asyncio.sleep(0.1)
    events = (await call(http, "GET", f"{url}/api/v1/executions/{eid}/events"))["events"]
    return doc, events


async def test_a_sleep_resumed_after_its_engine_died_waits_only_what_was_left(
    start_cluster: StartCluster,
) -> None:
    cluster = start_cluster(engines=2, API_TOKEN="s3cret")
    url = cluster.url
    async with aiohttp.ClientSession() as http:
        doc = await sleeping_run(http, url, 2, NAPPER, "napper")
        eid = doc["id"]
        first_start = doc["nodes"]["nap"]["started_at"]
        victim_id = doc["nodes"]["nap"]["engine_id"]
        # well into the sleep, so that starting it over would show
        await asyncio.sleep(SLEEP / 2)
        victim = next(e for e in cluster.engines if e.env["ENGINE_ID"] == victim_id)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(10)

        doc, events = await ended_run(http, url, eid)

    assert doc["status"] == "succeeded", doc
    assert doc["outputs"] == {"last": {"done": 2}}
    nap = doc["nodes"]["nap"]
    assert nap["engine_id"] != victim_id
    assert nap["started_at"] == first_start, "the sleep's start moved with the failover"

    started = [e for e in events if e["type"] == "node.started" and e["node_id"] == "nap"]
    assert [e["engine_id"] for e in started] == [victim_id, nap["engine_id"]]
    assert started[0]["data"] == {"sleep_s": SLEEP}
    resumed = started[1]["data"]
    assert resumed["resumed"] is True and resumed["sleep_s"] == SLEEP
    t_first, t_resumed = unix(started[0]["time"]), unix(started[1]["time"])
    # what was left is the sleep less the time since its first start (none, if that is past)
    assert resumed["remaining_s"] < SLEEP
    assert resumed["remaining_s"] == pytest.approx(
        max(0.0, SLEEP - (t_resumed - t_first)), abs=SLACK
    )

    (succeeded,) = [e for e in events if e["type"] == "node.succeeded" and e["node_id"] == "nap"]
    t_done = unix(succeeded["time"])
    assert t_done >= t_first + SLEEP - SLACK, "the sleep ended early"
    assert t_done < t_resumed + SLEEP, "the resumed engine slept the whole sleep again"
    # the node and the run take their durations from their first start, not the last leg
    assert succeeded["data"]["duration_ms"] / 1000 == pytest.approx(t_done - t_first, abs=SLACK)
    runs = [e for e in events if e["type"] == "execution.started"]
    assert len(runs) == 2
    end = events[-1]
    assert end["type"] == "execution.succeeded"
    assert end["data"]["duration_ms"] / 1000 == pytest.approx(
        unix(end["time"]) - unix(runs[0]["time"]), abs=SLACK
    )
    assert sum(1 for e in events if e["type"] == "node.started" and e["node_id"] == "first") == 1


@pytest.mark.parametrize("restart", [False, True])
async def test_a_run_left_without_an_engine_times_out_at_its_deadline(
    start_cluster: StartCluster, restart: bool
) -> None:
    cluster = start_cluster(engines=1, API_TOKEN="s3cret")
    url = cluster.url
    timeout = 8 if restart else 3
    spec = (
        f"id: doomed\nversion: 1.0.0\ntimeout: {timeout}s\nnodes:\n  - id: nap\n    sleep: 10m\n"
        "  - id: done\n    lua: return 7\n"
        "  - id: after\n    depends_on: [nap]\n    lua: return 8\n"
    )
    async with aiohttp.ClientSession() as http:
        eid = (await sleeping_run(http, url, 1, spec, "doomed"))["id"]
        for _ in range(200):  # its other branch ends at once: stored, it is what the run has
            run = await call(http, "GET", f"{url}/api/v1/executions/{eid}")
            if run["nodes"]["done"]["status"] == "succeeded":
                break
            await asyncio.sleep(0.05)
        assert run["nodes"]["done"]["status"] == "succeeded", run
        (engine,) = cluster.engines
        engine.proc.send_signal(signal.SIGKILL)  # the only engine: nobody can take the run
        engine.proc.wait(10)
        restarted = 0.0
        if restart:  # the deadline is kept across a restart of the orchestrator, too
            await asyncio.to_thread(stop_process, cluster.orchestrator.proc)
            await asyncio.to_thread(cluster.restart_orchestrator)
            url = cluster.url
            restarted = time.time()
        doc, events = await ended_run(http, url, eid)
    # before: "running" until an engine came back, however long after its deadline
    assert doc["status"] == "timed_out", doc
    assert doc["error"] == f"execution timed out after {timeout}s (while no engine had it)"
    end = events[-1]
    assert end["type"] == "execution.timed_out"
    # before: outputs {}, and the sleep that started had no end of its own, counted among
    # the nodes never reached: a stream saw it start and never end
    assert end["data"]["outputs"] == {"done": 7}
    assert end["data"]["unreached"] == 1  # after, which the sleep held back
    cancelled = events[-2]
    assert (cancelled["type"], cancelled["node_id"]) == ("node.cancelled", "nap"), events[-3:]
    assert cancelled["data"]["error"] == doc["error"]
    assert cancelled["seq"] + 1 == end["seq"]
    assert doc["outputs"] == {"done": 7}
    assert doc["nodes"]["nap"]["status"] == "cancelled"
    started = unix(next(e["time"] for e in events if e["type"] == "execution.started"))
    assert timeout - SLACK <= unix(end["time"]) - started < 60  # not before its deadline
    assert unix(end["time"]) >= restarted - SLACK  # ended by the orchestrator that restarted
