"""``/readyz`` says what keeps discovery from finding engines, through the orchestrator's parts.

The real ``running_orchestrator`` with Kubernetes discovery against the fake API server over HTTP:
the readiness reason must name an unreachable API server, and a list that matches nothing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from orchestrator.discovery_kubernetes import KubernetesDiscovery
from orchestrator.orchestrating import Orchestrator
from orchestrator.serving import running_orchestrator
from tests.component.discovery_helpers import fake_kube_api
from tests.fakes.kube_api import SLICES, endpoint_slice

DEADLINE = 5.0


async def reason_until(orch: Orchestrator, text: str) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while True:
        ok, why = await orch.readiness()
        if text in why:
            # discovery trouble does not take the orchestrator out of service: runs still queue
            assert ok
            return why
        if loop.time() > deadline:
            pytest.fail(f"not within {DEADLINE}s: {text!r} in the readiness; last: {why!r}")
        await asyncio.sleep(0.02)


async def test_readiness_names_an_unreachable_api_then_a_service_with_no_slices(
    tmp_path: Path,
) -> None:
    async with fake_kube_api(
        tmp_path,
        k8s_service_name="workflow-engine",  # a typo: the engines' Service is -engines
        state_db=str(tmp_path / "state.db"),
    ) as (fake, settings):
        await fake.stop()  # the API server is not there when the orchestrator starts
        fake.put(SLICES, endpoint_slice("workflow-engines-a", [("10.0.0.1", True)], 50051))
        discovery = KubernetesDiscovery(settings, backoff_max=0.2)
        async with running_orchestrator(settings, discovery) as orch:
            why = await reason_until(orch, "Kubernetes API unreachable")
            assert why.startswith("0 engine(s) ready, 0 queued; Kubernetes API unreachable: ")
            assert "(since 20" in why
            await fake.start()
            why = await reason_until(orch, "finds no")
            assert why == (
                "0 engine(s) ready, 0 queued; Kubernetes discovery finds no endpointslices with"
                " kubernetes.io/service-name=workflow-engine in namespace default"
            )
