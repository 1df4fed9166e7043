"""``python -m orchestrator`` with DISCOVERY_MODE=kubernetes against a fake API server.

Real engine processes serve on loopback; the fake publishes EndpointSlices pointing at them, and
scaling happens by changing those slices, as the EndpointSlice controller would. Process start-up
runs in threads so that the fake, on this test's event loop, keeps answering meanwhile.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes.kube_api import SLICES, FakeKubeApi, endpoint_slice
from tests.integration.api import first_pause_last, get, register, start, wait_end
from tests.integration.conftest import (
    ORCHESTRATOR_VARIABLES,
    ROOT,
    EngineProcess,
    OrchestratorProcess,
    StartEngine,
    spawn_orchestrator,
    stop_process,
)

pytestmark = pytest.mark.slow

DEADLINE = 10.0  # generous on a loaded 2-core machine; changes normally land well within 1 s


def slice_for(engine: EngineProcess) -> dict[str, Any]:
    """One slice per engine: each engine listens on its own port on 127.0.0.1."""
    return endpoint_slice(f"workflow-engines-{engine.port}", [("127.0.0.1", True)], engine.port)


async def engines_listed(http: aiohttp.ClientSession, url: str) -> dict[str, str]:
    async with http.get(f"{url}/api/v1/engines") as resp:
        body = await resp.json()
    return {e["id"]: e["state"] for e in body["engines"]}


async def until(
    http: aiohttp.ClientSession, url: str, want: Callable[[dict[str, str]], bool], what: str
) -> float:
    """Seconds until GET /api/v1/engines satisfies ``want``."""
    started = time.monotonic()
    seen: dict[str, str] = {}
    while time.monotonic() - started < DEADLINE:
        seen = await engines_listed(http, url)
        if want(seen):
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    pytest.fail(f"not within {DEADLINE}s: {what}; engines: {seen}")


async def test_scaling_in_the_api_moves_routing_and_a_403_keeps_the_engines(
    tmp_path: Path, start_engine: StartEngine
) -> None:
    fake = FakeKubeApi()
    await fake.start()
    try:
        await scale_and_refuse(fake, tmp_path, start_engine)
    finally:
        await fake.stop()


def kube_orchestrator(fake: FakeKubeApi, tmp_path: Path) -> OrchestratorProcess:
    """An orchestrator that finds its engines through the fake API's EndpointSlices."""
    return spawn_orchestrator(
        tmp_path / "orchestrator.log",
        tmp_path / "state.db",
        [],
        DISCOVERY_MODE="kubernetes",
        IN_CLUSTER_CONFIG="false",
        KUBECONFIG=str(fake.write_kubeconfig(tmp_path / "kubeconfig")),
        K8S_NAMESPACE="default",
        K8S_SERVICE_NAME="workflow-engines",
        ENGINE_HEALTH_CHECK_INTERVAL="0.5",
    )


async def scale_and_refuse(fake: FakeKubeApi, tmp_path: Path, start_engine: StartEngine) -> None:
    engines = [
        await asyncio.to_thread(start_engine, ENGINE_ID=f"engine-{i}", DRAIN_GRACE="1")
        for i in range(3)
    ]
    fake.put(SLICES, slice_for(engines[0]))
    orch = await asyncio.to_thread(kube_orchestrator, fake, tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            await until(http, orch.url, lambda s: s == {"engine-0": "ready"}, "the listed engine")

            fake.put(SLICES, slice_for(engines[1]))
            fake.put(SLICES, slice_for(engines[2]))
            up = await until(
                http,
                orch.url,
                lambda s: s == {f"engine-{i}": "ready" for i in range(3)},
                "scaled up to three",
            )
            fake.delete(SLICES, f"workflow-engines-{engines[0].port}")
            down = await until(
                http,
                orch.url,
                lambda s: s == {"engine-1": "ready", "engine-2": "ready"},
                "scaled down to two",
            )
            # the measure of "within a second", printed rather than asserted: a loaded CI
            # machine can stretch it, and the deadline above is what must hold
            sys.stderr.write(f"routing followed: up in {up:.2f}s, down in {down:.2f}s\n")

            fake.forbidden = True
            fake.drop_watches()
            deadline = time.monotonic() + DEADLINE
            while "refused discovery" not in orch.log() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            # refused again twice more (0.2 s, then 0.4 s on): the first of them, at least, is
            # answered and handled by the time the second is asked
            refused = len(fake.requests)
            while len(fake.requests) < refused + 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert len(fake.requests) >= refused + 2, "no more refused retries"
            refusals = [ln for ln in orch.log().splitlines() if "refused discovery" in ln]
            assert len(refusals) == 1, refusals
            assert "HTTP 403" in refusals[0]
            assert "keeping the 2 engines known" in refusals[0]
            assert await engines_listed(http, orch.url) == {
                "engine-1": "ready",
                "engine-2": "ready",
            }

            fake.forbidden = False
            fake.put(SLICES, slice_for(engines[0]))
            await until(http, orch.url, lambda s: len(s) == 3, "allowed again")
    finally:
        await asyncio.to_thread(stop_process, orch.proc)


async def test_an_engine_whose_pod_is_deleted_finishes_its_runs_before_it_goes(
    tmp_path: Path, start_engine: StartEngine
) -> None:
    """The pod deletion sequence: the endpoint turns terminating, then SIGTERM (after preStop).

    The engine is out of routing at the first step, yet keeps its run: it drains it after the
    SIGTERM, as DRAIN_GRACE is there for, instead of having it cut off and run again elsewhere.
    """
    fake = FakeKubeApi()
    await fake.start()
    try:
        await terminating_engine_drains(fake, tmp_path, start_engine)
    finally:
        await fake.stop()


async def terminating_engine_drains(
    fake: FakeKubeApi, tmp_path: Path, start_engine: StartEngine
) -> None:
    engines = [
        await asyncio.to_thread(start_engine, ENGINE_ID=f"engine-{i}", DRAIN_GRACE="60")
        for i in range(2)
    ]
    # only engine-0 at first, so that the run goes there
    fake.put(SLICES, slice_for(engines[0]))
    orch = await asyncio.to_thread(kube_orchestrator, fake, tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            await until(http, orch.url, lambda s: s == {"engine-0": "ready"}, "engine-0")
            # long enough that the steps below happen mid-sleep on a loaded machine
            await register(http, orch.url, first_pause_last("napping", "8s"))
            eid = await start(http, orch.url, "napping")
            deadline = time.monotonic() + DEADLINE
            while (await get(http, f"{orch.url}/api/v1/executions/{eid}"))["nodes"].get(
                "pause", {}
            ).get("status") != "running":
                assert time.monotonic() < deadline, "the sleep did not start"
                await asyncio.sleep(0.05)
            fake.put(SLICES, slice_for(engines[1]))
            await until(
                http,
                orch.url,
                lambda s: s == {"engine-0": "ready", "engine-1": "ready"},
                "engine-1 too",
            )

            # the pod of engine-0 is deleted: the EndpointSlice controller marks its endpoint
            leaving = slice_for(engines[0])
            leaving["endpoints"][0]["conditions"] = {
                "ready": False,
                "serving": True,
                "terminating": True,
            }
            fake.put(SLICES, leaving)
            await until(http, orch.url, lambda s: s.get("engine-0") != "ready", "engine-0 out")
            doc = await get(http, f"{orch.url}/api/v1/executions/{eid}")
            assert doc["nodes"]["pause"]["status"] == "running", "the test came too late"
            leaving_seen = await engines_listed(http, orch.url)

            engines[0].terminate()  # the kubelet's SIGTERM, after preStop
            doc = await wait_end(http, orch.url, eid)
            assert doc["status"] == "succeeded", doc
            assert doc["outputs"] == {"last": {"done": 2}}
            timeline = await get(http, f"{orch.url}/api/v1/executions/{eid}/events")
            started = [
                (e["node_id"], e["engine_id"])
                for e in timeline["events"]
                if e["type"] == "node.started"
            ]
            # nothing ran twice: the whole run stayed on the engine that was leaving
            assert started == [("first", "engine-0"), ("pause", "engine-0"), ("last", "engine-0")]
            # meanwhile it was out of routing, and still holding its run
            assert leaving_seen == {"engine-0": "draining", "engine-1": "ready"}
            assert await asyncio.to_thread(engines[0].wait, 60) == 0
            # drained and gone: dropped from the fleet once its last run ended
            await until(http, orch.url, lambda s: s == {"engine-1": "ready"}, "engine-0 gone")
            assert "resuming elsewhere" not in orch.log()
    finally:
        await asyncio.to_thread(stop_process, orch.proc)


def test_a_kubeconfig_that_cannot_be_read_stops_start_up_with_one_line(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in __import__("os").environ.items() if k not in ORCHESTRATOR_VARIABLES},
        "DISCOVERY_MODE": "kubernetes",
        "IN_CLUSTER_CONFIG": "false",
        "KUBECONFIG": str(tmp_path / "missing"),
        "STATE_DB": str(tmp_path / "state.db"),
        "HTTP_PORT": "0",
        "GRPC_PORT": "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert "IN_CLUSTER_CONFIG=false: cannot read the kubeconfig" in lines[0]
    assert "KUBECONFIG" in lines[0]
