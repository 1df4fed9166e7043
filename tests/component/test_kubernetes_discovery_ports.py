"""The engines' port in an EndpointSlice, found by the real ``kubernetes`` client through the fake
API server: by its name ``grpc``, else the slice's only port; a slice of several ports, none so
named, is left out, said once in the log and shown by ``trouble()`` (so ``/readyz``) while no
engine is found, instead of every engine vanishing without a word."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tests.component.discovery_helpers import settings_for
from tests.component.test_kubernetes_discovery import discovering
from tests.fakes.kube_api import SLICES, FakeKubeApi, endpoint_slice

LEFT_OUT = (
    "EndpointSlice default/workflow-engines-x7k2p has no port named grpc (its ports:"
    " grpc-engine (50051), http-metrics (9090)), so its endpoints are not used as engines: name"
    " the engines' gRPC port grpc (the name discovery looks for; no setting changes it) in"
    " Service workflow-engines, or make it the Service's only port"
)


def engines_slice(port_name: str, *more_ports: tuple[str, int]) -> dict[str, Any]:
    """Two ready engines on 50051, named ``port_name``, and ``more_ports`` beside it."""
    engines = [("10.0.0.1", True), ("10.0.0.2", True)]
    eps = endpoint_slice("workflow-engines-x7k2p", engines, 50051, port_name=port_name)
    eps["ports"].extend({"name": n, "port": p, "protocol": "TCP"} for n, p in more_ports)
    return eps


async def test_a_port_not_named_grpc_is_said_once_and_shown_until_the_engines_are_found(
    fake: FakeKubeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # an operator renamed the Service's port to Istio's convention, beside a metrics port
    fake.put(SLICES, engines_slice("grpc-engine", ("http-metrics", 9090)))
    settings = settings_for(fake, tmp_path, discovery_interval=1.0)
    async with discovering(settings, caplog) as (discovery, sink, _):
        assert sink.addresses == set()
        await sink.until(lambda: discovery.lists >= 2, "a resync")
        said = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert [r.getMessage() for r in said] == [LEFT_OUT]  # once, not at every resync
        assert discovery.trouble() == f"Kubernetes discovery finds no engines: {LEFT_OUT}"

        # the metrics port goes: the one port left is the engines', whatever its name
        caplog.clear()
        fake.put(SLICES, engines_slice("grpc-engine"))
        await sink.until(lambda: sink.addresses == {"10.0.0.1:50051", "10.0.0.2:50051"}, "found")
        assert discovery.trouble() is None
        await sink.until(lambda: discovery.lists >= 3, "another resync")
        assert [r.getMessage() for r in caplog.records if "port named" in r.getMessage()] == [
            "EndpointSlice default/workflow-engines-x7k2p has no port named grpc; using its only"
            " port, grpc-engine (50051)"
        ]

        # named as discovery looks for, beside others: nothing more to say
        caplog.clear()
        fake.put(SLICES, engines_slice("grpc", ("http-metrics", 9090)))
        await sink.until(lambda: discovery.lists >= 4, "a resync after the fix")
        assert sink.addresses == {"10.0.0.1:50051", "10.0.0.2:50051"}
        assert not [r for r in caplog.records if "port named" in r.getMessage()]
        assert discovery.trouble() is None

        # broken again: said again, since it changed
        fake.put(SLICES, engines_slice("grpc-engine", ("http-metrics", 9090)))
        await sink.until(lambda: sink.addresses == set(), "left out again")
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
            LEFT_OUT
        ]
        assert LEFT_OUT in (discovery.trouble() or "")


async def test_a_left_out_slice_is_no_trouble_while_other_slices_give_engines(
    fake: FakeKubeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake.put(SLICES, engines_slice("grpc-engine", ("http-metrics", 9090)))
    fake.put(SLICES, endpoint_slice("workflow-engines-b", [("10.0.1.1", True)], 50051))
    async with discovering(settings_for(fake, tmp_path), caplog) as (discovery, sink, _):
        assert sink.addresses == {"10.0.1.1:50051"}
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
            LEFT_OUT
        ]
        assert discovery.trouble() is None
