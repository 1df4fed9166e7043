"""The pure half of Kubernetes discovery: EndpointSlices and Pods in, engine addresses out."""

from __future__ import annotations

from typing import Any

from orchestrator.discovery import EngineHint
from orchestrator.discovery_kubernetes import (
    ObjectCache,
    PortNote,
    engines_from_endpoint_slices,
    engines_from_pods,
)
from tests.fakes.kube_api import endpoint_slice, engine_pod


def test_ready_endpoints_on_the_port_named_grpc() -> None:
    eps = endpoint_slice("a", [("10.0.0.1", True), ("10.0.0.2", False)], 50051)
    eps["ports"].insert(0, {"name": "metrics", "port": 9090, "protocol": "TCP"})
    # the API says an absent ready condition means ready; terminating endpoints never are
    eps["endpoints"].append({"addresses": ["10.0.0.3"]})
    eps["endpoints"].append(
        {"addresses": ["10.0.0.4"], "conditions": {"ready": True, "terminating": True}}
    )
    engines, notes = engines_from_endpoint_slices([eps])
    assert set(engines) == {"10.0.0.1:50051", "10.0.0.3:50051"}
    assert notes == []


def test_a_slice_without_the_named_port_takes_its_only_port() -> None:
    # a Service of one port need not name it; Istio's convention names it grpc-<suffix>
    unnamed = endpoint_slice("a", [("10.0.0.1", True)], 50051, port_name="")
    istio = endpoint_slice("b", [("10.0.0.2", True)], 7000, port_name="grpc-engine")
    del istio["ports"][0]["protocol"]  # TCP, as the API defines an absent protocol
    engines, notes = engines_from_endpoint_slices([unnamed, istio])
    assert set(engines) == {"10.0.0.1:50051", "10.0.0.2:7000"}
    assert notes == [
        PortNote(
            "EndpointSlice default/a",
            "EndpointSlice default/a has no port named grpc; using its only port, unnamed (50051)",
            left_out=False,
        ),
        PortNote(
            "EndpointSlice default/b",
            "EndpointSlice default/b has no port named grpc; using its only port,"
            " grpc-engine (7000)",
            left_out=False,
        ),
    ]


def test_a_slice_of_several_ports_none_named_or_of_none_is_left_out_saying_why() -> None:
    several = endpoint_slice("a", [("10.0.0.1", True)], 50051, port_name="grpc-engine")
    several["ports"].append({"name": "http-metrics", "port": 9090, "protocol": "TCP"})
    none = endpoint_slice("b", [("10.0.0.2", True)], 50051)
    none["ports"] = None  # a headless Service may have no ports
    udp = endpoint_slice("c", [("10.0.0.3", True)], 53, port_name="dns")
    udp["ports"][0]["protocol"] = "UDP"
    engines, notes = engines_from_endpoint_slices([several, none, udp])
    assert engines == {}
    assert [note.text for note in notes] == [
        "EndpointSlice default/a has no port named grpc (its ports: grpc-engine (50051),"
        " http-metrics (9090)), so its endpoints are not used as engines: name the engines'"
        " gRPC port grpc (the name discovery looks for; no setting changes it) in Service"
        " workflow-engines, or make it the Service's only port",
        "EndpointSlice default/b has no port named grpc (it has no ports), so its endpoints are"
        " not used as engines: give Service workflow-engines the engines' gRPC port, named grpc"
        " (the name discovery looks for; no setting changes it)",
        "EndpointSlice default/c has no port named grpc (its ports: dns (53/UDP)), so its"
        " endpoints are not used as engines: name the engines' gRPC port grpc (the name"
        " discovery looks for; no setting changes it) in Service workflow-engines, or make it"
        " the Service's only port",
    ]
    assert all(note.left_out for note in notes)


def test_fqdn_slices_and_empty_ones_give_nothing() -> None:
    fqdn = endpoint_slice("b", [("engine.example", True)], 50051)
    fqdn["addressType"] = "FQDN"
    assert engines_from_endpoint_slices([fqdn]) == ({}, [])
    engines, _ = engines_from_endpoint_slices([{"metadata": {"name": "empty"}}])
    assert engines == {}


def test_ipv6_addresses_are_bracketed() -> None:
    eps = endpoint_slice("a", [("fd00::1", True)], 50051)
    eps["addressType"] = "IPv6"
    assert set(engines_from_endpoint_slices([eps])[0]) == {"[fd00::1]:50051"}


def test_pods_running_ready_and_not_terminating_with_annotations() -> None:
    pods: list[dict[str, Any]] = [
        engine_pod(
            "e0",
            "10.1.0.1",
            annotations={"workflow-engine/port": "7000", "workflow-engine/capacity": "3"},
            labels={"engine-id": "alpha"},
        ),
        engine_pod("e1", "10.1.0.2", ready=False),
        engine_pod("e2", "10.1.0.3", phase="Succeeded"),
        engine_pod("e3", "", phase="Running"),
    ]
    terminating = engine_pod("e4", "10.1.0.5")
    terminating["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    pods.append(terminating)
    engines, problems = engines_from_pods(pods, default_port=50051)
    assert engines == {"10.1.0.1:7000": EngineHint(pod="e0", capacity=3, engine_id="alpha")}
    assert problems == []


def test_bad_pod_annotations_are_problems_and_the_pod_keeps_its_defaults() -> None:
    pod = engine_pod(
        "e0",
        "10.1.0.1",
        annotations={"workflow-engine/port": "70000", "workflow-engine/capacity": "-1"},
    )
    engines, problems = engines_from_pods([pod], default_port=50051)
    assert engines == {"10.1.0.1:50051": EngineHint(pod="e0")}
    assert problems == [
        "pod e0: annotation workflow-engine/port must be an integer from 1 to 65535, got '70000'",
        "pod e0: annotation workflow-engine/capacity must be an integer from 1 to 1000000,"
        " got '-1'",
    ]


def test_the_cache_follows_watch_events_by_namespace_and_name() -> None:
    cache = ObjectCache()
    a = endpoint_slice("a", [("10.0.0.1", True)], 1)
    cache.replace([a, endpoint_slice("a", [("10.0.0.9", True)], 1, namespace="other")])
    assert len(cache.objects) == 2
    cache.apply("MODIFIED", endpoint_slice("a", [("10.0.0.2", True)], 1))
    cache.apply("ADDED", endpoint_slice("b", [("10.0.0.3", True)], 1))
    cache.apply("DELETED", a)
    cache.apply("DELETED", a)  # twice: a relist may have raced the event
    assert set(cache.objects) == {"other/a", "default/b"}
