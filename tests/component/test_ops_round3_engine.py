"""The engine service in this process, through real gRPC: what its log says when runs are
handed back, what it answers a cancel that names no run, and where it listens for a HOST
written as ``::``."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator

import grpc
import pytest

from engine.api import dagengine_pb2 as pb
from engine.api import dagengine_pb2_grpc as pb_grpc
from engine.serving import EngineServer
from engine.settings import Settings, listen_problem
from tests.component.engine_helpers import serving_engine
from tests.net import has_ipv6

WAIT = 30.0
"""Seconds a test waits for what must come, before it fails rather than hang."""
SLEEPER = json.dumps({"id": "sleeper", "version": "1.0.0", "nodes": [{"id": "nap", "sleep": "1h"}]})


@pytest.fixture
async def engine() -> AsyncIterator[EngineServer]:
    async with serving_engine() as server:
        yield server


async def started(call: grpc.aio.UnaryStreamCall[pb.ExecuteRequest, pb.ExecuteResponse]) -> None:
    """Read the run's stream until it has started."""
    async for message in call:
        if any(event.type == "execution.started" for event in message.events):
            return
    pytest.fail("the run's stream ended before it started")


def ended_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "engine.serving" and " ended " in record.getMessage()
    ]


async def test_a_run_handed_back_by_a_drain_is_logged_handed_back_not_cancelled(
    engine: EngineServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with grpc.aio.insecure_channel(engine.address) as channel:
        call = pb_grpc.EngineStub(channel).Execute(
            pb.ExecuteRequest(spec=SLEEPER, execution_id="run-1")
        )
        await started(call)
        await asyncio.wait_for(engine.stop(), WAIT)  # DRAIN_GRACE 0: handed back at once
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE  # as if the engine died
    # before: "execution run-1 ended cancelled", while the metric said handed_back
    assert ended_lines(caplog) == ["execution run-1 ended handed_back"]


async def test_a_run_whose_caller_left_is_logged_handed_back_not_cancelled(
    engine: EngineServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    assert engine.service is not None
    async with grpc.aio.insecure_channel(engine.address) as channel:
        call = pb_grpc.EngineStub(channel).Execute(
            pb.ExecuteRequest(spec=SLEEPER, execution_id="run-2")
        )
        await started(call)
        call.cancel()
        # the engine lets go of the run when it sees the call end: it holds none then
        await asyncio.wait_for(engine.service._idle.wait(), WAIT)
    assert ended_lines(caplog) == ["execution run-2 ended handed_back"]


async def test_a_cancel_without_an_execution_id_is_invalid_argument(
    engine: EngineServer,
) -> None:
    async with grpc.aio.insecure_channel(engine.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pb_grpc.EngineStub(channel).Cancel(pb.CancelRequest(execution_id=""))
    # before: NOT_FOUND "no execution  is running on this engine"; now as ResolveSubWorkflow
    # and the orchestrator answer an empty id
    assert (caught.value.code(), caught.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "execution_id: required",
    )


@pytest.mark.skipif(not has_ipv6(), reason="this machine has no IPv6 loopback")
@pytest.mark.parametrize("host", ["::", "[::]", "::1"])
async def test_an_engine_listens_on_an_ipv6_host_however_written(host: str) -> None:
    server = EngineServer(Settings(engine_id="e6", host=host, port=0, lua_workers=1))
    # before: "::" made gRPC's address ":::0", which it could not look up
    await server.start()
    try:
        target = f"[::1]:{server.port}"
        async with grpc.aio.insecure_channel(target) as channel:
            info = await pb_grpc.EngineStub(channel).GetInfo(pb.GetInfoRequest(), timeout=WAIT)
        assert info.engine_id == "e6"
        assert server.address == (
            f"[::1]:{server.port}" if host == "::1" else f"127.0.0.1:{server.port}"
        )
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("host", "problem"),
    [
        ("192.0.2.1", "192.0.2.1 is not an address of this machine"),  # TEST-NET-1
        ("nonexistent.invalid", "nonexistent.invalid does not resolve to an address ("),
    ],
)
def test_why_an_address_cannot_be_listened_on_is_named(host: str, problem: str) -> None:
    # what the engine and the orchestrator log in place of gRPC's "set GRPC_VERBOSITY=debug"
    assert listen_problem(host, 0).startswith(problem)


def test_a_port_in_use_is_named_so() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert listen_problem("127.0.0.1", port) == (
            "the port is in use (another process listens on it)"
        )


def test_a_stored_spec_an_engine_refuses_is_told_without_noise() -> None:
    import json

    from engine.core.errors import SpecError
    from engine.serving import spec_from_request

    one_line = json.dumps({"id": "x", "version": "1.0.0", "nodes": [{"id": "a", "sleep": "1s1s"}]})
    with pytest.raises(SpecError) as caught:
        spec_from_request(one_line)
    # before: "1 problem in workflow spec spec:\n  - spec:1: nodes[a].sleep: ..."
    assert str(caught.value) == (
        "1 problem in workflow spec:\n  - nodes[a].sleep: bad duration '1s1s': give each unit "
        "once, largest first (1h30m)"
    )


@pytest.mark.skipif(not has_ipv6(), reason="this machine has no IPv6 loopback")
@pytest.mark.parametrize("host", ["0.0.0.0", "[::]"])
def test_metrics_on_every_interface_answer_over_both_families(host: str) -> None:
    import urllib.request

    from engine.metrics import Metrics
    from engine.serving import _serve_metrics

    server = _serve_metrics(0, host, Metrics(1))
    try:
        port = server.server_port
        # before: HOST=0.0.0.0 served metrics on IPv4 alone, where gRPC serves both
        for address in ("127.0.0.1", "[::1]"):
            with urllib.request.urlopen(f"http://{address}:{port}/metrics", timeout=10) as resp:
                assert b"dagengine_" in resp.read()
    finally:
        server.shutdown()
        server.server_close()


def test_a_one_line_spec_is_held_to_the_same_rules_as_any_text() -> None:
    import json

    from engine.core.errors import SpecError
    from engine.serving import spec_from_request

    twice = '{"id": "x", "id": "y", "version": "1.0.0", "nodes": [{"id": "a", "lua": "return 1"}]}'
    deep: object = 1
    for _ in range(70):
        deep = [deep]
    nested = json.dumps(
        {
            "id": "x",
            "version": "1.0.0",
            "labels": {"k": deep},
            "nodes": [{"id": "a", "lua": "return 1"}],
        }
    )
    # before: both were taken on one line, and refused when the same spec spanned several
    for text, problem in ((twice, "duplicate key 'id'"), (nested, "nested deeper than 64")):
        with pytest.raises(SpecError) as caught:
            spec_from_request(text)
        assert problem in str(caught.value), str(caught.value)
