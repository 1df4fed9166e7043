"""A state database that stops taking writes mid-run: real orchestrator and engine on loopback.

The orchestrator process is given a file size limit (``RLIMIT_FSIZE``, set from outside with
``prlimit``) just above its files' sizes, so its next large write fails as on a full disk;
lifting the limit is the disk getting room again. Meanwhile a run must wait, not be failed or
passed between engines as if they had died; new runs are refused with 503; the orchestrator
reports not ready; and once the disk has room the run ends as if nothing had happened.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2

from orchestrator.fleet import health_check
from orchestrator.serving import ORCHESTRATOR_SERVICE
from tests.integration.api import TOKEN, get, register, start, wait_end, wait_for
from tests.integration.conftest import ROOT, Cluster, StartCluster

pytestmark = pytest.mark.slow

PART = 512 * 1024
HOARD = """
id: hoard
version: 1.0.0
nodes:
  - id: first
    lua: return { at = 1 }
  - id: pause
    depends_on: [first]
    sleep: 3s
  - id: parts
    depends_on: [pause]
    foreach: "{{ inputs.parts }}"
    lua: return string.rep("x", PART)
""".replace("PART", str(PART))


FEW_DISPATCHES = """
import orchestrator.dispatching

orchestrator.dispatching.MAX_DISPATCHES = 2
"""


def few_dispatches(tmp_path: Path) -> str:
    """The PYTHONPATH of an orchestrator that gives a run up after 2 engines lost it, not 20:
    were a stall counted as one, the third would not come."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FEW_DISPATCHES)
    return os.pathsep.join([str(site), str(ROOT)])


def largest_file(cluster: Cluster) -> int:
    state = Path(cluster.orchestrator.env["STATE_DB"])
    files = [state, Path(f"{state}-wal"), cluster.orchestrator.log_path]
    return max(f.stat().st_size for f in files if f.exists())


def fill_the_disk(cluster: Cluster) -> int:
    """Limit the orchestrator's files to what they hold now plus 64 KiB; returns the limit."""
    limit = largest_file(cluster) + 64 * 1024
    resource.prlimit(
        cluster.orchestrator.proc.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY)
    )
    return limit


def make_room(cluster: Cluster) -> None:
    resource.prlimit(
        cluster.orchestrator.proc.pid,
        resource.RLIMIT_FSIZE,
        (resource.RLIM_INFINITY, resource.RLIM_INFINITY),
    )


async def readiness(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(f"{url}/readyz") as resp:
        return resp.status, await resp.json()


async def grpc_health_becomes(cluster: Cluster, wanted: int) -> None:
    """Until the orchestrator's gRPC health says ``wanted``, as gRPC clients and probes see it:
    it follows what ``/readyz`` says, a couple of seconds behind."""
    async with grpc.aio.insecure_channel(cluster.orchestrator.grpc_address) as channel:
        check = health_check(channel)
        request = health_pb2.HealthCheckRequest(service=ORCHESTRATOR_SERVICE)
        deadline = time.monotonic() + 30
        while (status := (await check(request, timeout=5)).status) != wanted:
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.2)
        # the server's own health, what a liveness probe asks, stays: it is not dead
        overall = await check(health_pb2.HealthCheckRequest(), timeout=5)
        assert overall.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_full_disk_holds_runs_back_and_refuses_new_ones_until_it_has_room(
    start_cluster: StartCluster, tmp_path: Path
) -> None:
    cluster = start_cluster(
        engines=1,
        API_TOKEN="s3cret",
        MAX_BODY_BYTES=str(64 * 1024 * 1024),
        PYTHONPATH=few_dispatches(tmp_path),
    )
    url = cluster.url
    async with aiohttp.ClientSession() as http:
        await register(http, url, HOARD)
        # enough parts that their outputs, stored in one event, pass the limit set below
        parts = (largest_file(cluster) + 1024 * 1024) // PART + 1
        eid = await start(http, url, "hoard", {"parts": list(range(parts))})
        deadline = time.monotonic() + 30
        while True:  # the sleep began: what comes after it is the large write
            events = (await get(http, f"{url}/api/v1/executions/{eid}/events"))["events"]
            if any(e["type"] == "node.started" and e["node_id"] == "pause" for e in events):
                break
            assert time.monotonic() < deadline, events
            await asyncio.sleep(0.05)
        limit = fill_the_disk(cluster)
        assert parts * PART > limit + 256 * 1024, (parts, limit)
        try:
            async with http.post(
                f"{url}/trigger/hoard",
                json={"inputs": {"parts": [1], "pad": "y" * (limit + PART)}},
                headers=TOKEN,
            ) as resp:
                refused = await resp.json()
                assert resp.status == 503, refused
                assert refused["error"]["code"] == "store_unavailable", refused
                assert "state database" in refused["error"]["message"], refused
                assert resp.headers["Retry-After"] == "5"
            deadline = time.monotonic() + 30
            while (found := await readiness(http, url))[0] != 503:
                assert time.monotonic() < deadline, found
                await asyncio.sleep(0.1)
            assert "state database" in found[1]["reason"], found
            await grpc_health_becomes(cluster, health_pb2.HealthCheckResponse.NOT_SERVING)
            # the run stalls, and is resumed after a backoff of 0.5 s, then 1 s: before, each
            # stall counted as a lost engine, and MAX_DISPATCHES of them gave the run up: with
            # 2, it was never started a third time. Each stall ends the engine's part (its log
            # says so); the resumed run's first events may be refused with the large write
            # (both can come in one message, or be written in one transaction)

            async def resumed_twice() -> bool:
                let_go = f"execution {eid} ended running"
                return cluster.engines[0].log().count(let_go) >= 3

            await wait_for("the run resumed after two stalls", resumed_twice)
            doc = await get(http, f"{url}/api/v1/executions/{eid}")
            assert doc["status"] == "running", doc
            assert doc["nodes"]["parts"]["status"] != "succeeded", doc
        finally:
            make_room(cluster)
        done = await wait_end(http, url, eid, timeout=120)
        assert done["status"] == "succeeded", done
        assert done["outputs"]["parts"] == ["x" * PART] * parts, str(done)[:500]
        events = (await get(http, f"{url}/api/v1/executions/{eid}/events"))["events"]
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        ends = [e["type"] for e in events if e["type"].startswith("execution.")]
        # each try after a stall resumed the run (execution.started again); one end
        assert ends[0] == "execution.queued" and ends[-1] == "execution.succeeded", ends
        assert set(ends[1:-1]) == {"execution.started"} and len(ends) > 3, ends
        assert (await readiness(http, url))[0] == 200
        await grpc_health_becomes(cluster, health_pb2.HealthCheckResponse.SERVING)
        # the engine was never taken for lost
        engines = await get(http, f"{url}/api/v1/engines")
        assert [(e["state"], e["last_error"]) for e in engines["engines"]] == [("ready", None)]
        assert "gave up" not in cluster.orchestrator.log()
