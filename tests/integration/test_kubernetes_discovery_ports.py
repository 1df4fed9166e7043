"""``python -m orchestrator`` with DISCOVERY_MODE=kubernetes when the engines' Service port is
not named ``grpc``: the operator hears why no engine is found (log and ``/readyz``), and a
Service of one port works whatever its port's name."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes.kube_api import SLICES, FakeKubeApi
from tests.integration.conftest import StartEngine, stop_process
from tests.integration.test_kubernetes_discovery import (
    DEADLINE,
    kube_orchestrator,
    slice_for,
    until,
)

pytestmark = pytest.mark.slow


async def readiness(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(f"{url}/readyz") as resp:
        return resp.status, str((await resp.json())["reason"])


async def test_a_service_port_renamed_is_explained_and_a_single_port_is_taken(
    tmp_path: Path, start_engine: StartEngine
) -> None:
    fake = FakeKubeApi()
    await fake.start()
    try:
        await renamed_port(fake, tmp_path, start_engine)
    finally:
        await fake.stop()


async def renamed_port(fake: FakeKubeApi, tmp_path: Path, start_engine: StartEngine) -> None:
    engine = await asyncio.to_thread(start_engine, ENGINE_ID="engine-0")
    # the operator renamed the port to Istio's convention, beside a metrics port
    eps: dict[str, Any] = slice_for(engine)
    eps["ports"][0]["name"] = "grpc-engine"
    eps["ports"].append({"name": "http-metrics", "port": 9090, "protocol": "TCP"})
    fake.put(SLICES, eps)
    name = eps["metadata"]["name"]
    said = (
        f"EndpointSlice default/{name} has no port named grpc (its ports: grpc-engine"
        f" ({engine.port}), http-metrics (9090)), so its endpoints are not used as engines"
    )
    orch = await asyncio.to_thread(kube_orchestrator, fake, tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + DEADLINE
            while said not in (reason := (await readiness(http, orch.url))[1]):
                assert time.monotonic() < deadline, reason
                await asyncio.sleep(0.05)
            assert reason.startswith(
                f"0 engine(s) ready, 0 queued; Kubernetes discovery finds no engines: {said}: name"
                " the engines' gRPC port grpc (the name discovery looks for; no setting changes"
                " it) in Service workflow-engines, or make it the Service's only port"
            ), reason
            warned = [line for line in orch.log().splitlines() if said in line]
            assert len(warned) == 1, warned
            assert json.loads(warned[0])["level"] == "warning"

            # the metrics port goes: the Service's one port is the engines', whatever its name
            eps["ports"].pop()
            fake.put(SLICES, eps)
            await until(http, orch.url, lambda s: s == {"engine-0": "ready"}, "the engine")
            status, reason = await readiness(http, orch.url)
            assert (status, reason) == (200, "1 engine(s) ready, 0 queued")
            assert "using its only port, grpc-engine" in orch.log()
    finally:
        await asyncio.to_thread(stop_process, orch.proc)
