"""Engines in the orchestrator's process: the LocalCluster embedding API and TRANSPORT_TYPE=local."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import grpc
import pytest

from engine.api import dagengine_pb2 as pb
from engine.api import dagengine_pb2_grpc as pb_grpc
from orchestrator.local import LocalCluster
from tests.integration.conftest import ORCHESTRATOR_VARIABLES, ROOT, START_TIMEOUT

pytestmark = pytest.mark.slow

DIAMOND = (ROOT / "examples" / "diamond.yaml").read_text()


async def test_local_cluster_registers_executes_and_watches(tmp_path: Path) -> None:
    async with LocalCluster(engines=2, state_db=tmp_path / "state.db") as cluster:
        workflow = await cluster.register(DIAMOND)
        assert workflow["id"] == "diamond"
        run = await cluster.execute("diamond", inputs={"n": 4}, wait=30)
        assert run["status"] == "succeeded", run
        engines = {n["engine_id"] for n in run["nodes"].values() if n["engine_id"]}  # type: ignore[union-attr, index]
        assert engines <= {"local-0", "local-1"} and engines
        kinds = [e["type"] async for e in cluster.watch(execution_id=str(run["id"]))]
        assert kinds[0] == "execution.queued" and kinds[-1] == "execution.succeeded"
        # a run started now, watched live until it ends
        started = await cluster.execute("diamond", inputs={"n": 2})
        live = [e async for e in cluster.watch(execution_id=str(started["id"]))]
        assert [e["seq"] for e in live] == list(range(1, len(live) + 1))
        again = await cluster.get_execution(str(started["id"]))
        assert again["status"] == "succeeded"
    # the store outlives the cluster
    async with LocalCluster(engines=1, state_db=tmp_path / "state.db") as cluster:
        assert (await cluster.get_execution(str(run["id"])))["status"] == "succeeded"


async def test_transport_local_runs_engines_inside_the_orchestrator(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ORCHESTRATOR_VARIABLES}
    env.update(
        HOST="127.0.0.1",
        HTTP_PORT="0",
        GRPC_PORT="0",
        STATE_DB=str(tmp_path / "state.db"),
        TRANSPORT_TYPE="local",
        LOCAL_ENGINES="1",
        ENGINE_HEALTH_CHECK_INTERVAL="0.5",
        LOG_FORMAT="json",
    )
    log = tmp_path / "orchestrator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator"], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    try:
        port = None
        deadline = time.monotonic() + START_TIMEOUT
        while port is None and time.monotonic() < deadline:
            for line in log.read_text().splitlines():
                if line.startswith("{") and json.loads(line).get("event") == "serving":
                    port = json.loads(line)["http_port"]
            assert proc.poll() is None, log.read_text()
            await asyncio.sleep(0.05)
        assert port is not None, log.read_text()
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{url}/api/v1/workflows",
                data=DIAMOND,
                headers={"Content-Type": "application/yaml"},
            ) as resp:
                assert resp.status == 201, await resp.text()
            for _ in range(100):
                async with http.get(f"{url}/api/v1/engines") as resp:
                    engines = (await resp.json())["engines"]
                if engines and engines[0]["state"] == "ready":
                    break
                await asyncio.sleep(0.1)
            assert [e["id"] for e in engines] == ["local-0"]
            # on a loopback port any local user reaches: a client without the token is refused
            async with grpc.aio.insecure_channel(engines[0]["address"]) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await pb_grpc.EngineStub(channel).ListExecutions(pb.ListExecutionsRequest())
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            async with http.post(
                f"{url}/trigger/diamond", json={"inputs": {"n": 3}, "wait": True}
            ) as resp:
                body = await resp.json()
        assert body["status"] == "succeeded", body
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, log.read_text()
