"""A fault of the orchestrator's own while it carries a run (here: an engine's event it cannot
read) is not blamed on the engine: each try's engine call is cancelled before the next, so the
run never runs twice at once, and the run's end names the fault."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from engine import wire
from engine.api import dagengine_pb2 as pb
from engine.api import dagengine_pb2_grpc as pb_grpc
from engine.errors import ShuttingDown
from orchestrator.dispatching import MAX_DISPATCHES
from orchestrator.fleet import ENGINE_SERVICE
from tests.integration.api import TOKEN, register, wait_end
from tests.integration.conftest import spawn_orchestrator, stop_process

pytestmark = pytest.mark.slow


def event(request: pb.ExecuteRequest, kind: str, offset: int = 0, data: str = "{}") -> pb.Event:
    """An event of run ``one`` as an engine streams it, ``offset`` after the request's seq."""
    return pb.Event(
        seq=(request.first_seq or 1) + offset,
        time="2026-01-01T00:00:00Z",
        type=kind,
        severity="info",
        workflow_id="one",
        version="1.0.0",
        execution_id=request.execution_id,
        data_json=data,
    )


class GarbledEngine(pb_grpc.EngineServicer):
    """Answers every run with a first event whose data is not JSON, then keeps the run."""

    def __init__(self) -> None:
        self.calls = 0
        self.open = 0
        self.most_open = 0

    async def Execute(self, request: pb.ExecuteRequest, context: Any) -> AsyncIterator[Any]:
        self.calls += 1
        # The orchestrator cancels a try's call before it makes the next, but this server
        # hears of that cancel a moment later on a busy machine: a call it ended shows so
        # within seconds, one it kept open never does.
        deadline = time.monotonic() + 5
        while self.open and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            yield pb.ExecuteResponse(events=[event(request, "execution.started", data="NaN")])
            await asyncio.sleep(3600)
        finally:
            self.open -= 1

    async def GetInfo(self, request: pb.GetInfoRequest, context: Any) -> pb.EngineInfo:
        return pb.EngineInfo(engine_id="garbled", state="serving", capacity=5)


@asynccontextmanager
async def orchestrator_for(
    engine: pb_grpc.EngineServicer, tmp_path: Path, **env: str
) -> AsyncIterator[str]:
    """A real orchestrator whose only engine is ``engine``, served in this process; its URL."""
    server = grpc.aio.server()
    pb_grpc.add_EngineServicer_to_server(engine, server)
    await wire.add_health_and_reflection(server, ENGINE_SERVICE)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    orchestrator = await asyncio.to_thread(
        spawn_orchestrator,
        tmp_path / "orchestrator.log",
        tmp_path / "state.db",
        [],
        ENGINE_ADDRESSES=f"127.0.0.1:{port}",
        API_TOKEN="s3cret",
        **env,
    )
    try:
        yield orchestrator.url
    finally:
        await asyncio.to_thread(stop_process, orchestrator.proc)
        await server.stop(0)


async def run_one(url: str) -> dict[str, Any]:
    """Register a one-node workflow, run it, and return the run as it ends."""
    async with aiohttp.ClientSession() as http:
        await register(http, url, "id: one\nversion: 1.0.0\nnodes:\n  - id: a\n    lua: return 1\n")
        async with http.post(f"{url}/trigger/one", json={}, headers=TOKEN) as resp:
            assert resp.status == 202
            eid = (await resp.json())["execution_id"]
        doc: dict[str, Any] = await wait_end(http, url, eid, timeout=120)
        return doc


async def test_a_fault_of_its_own_is_named_and_never_runs_a_run_twice(tmp_path: Path) -> None:
    engine = GarbledEngine()
    async with orchestrator_for(engine, tmp_path) as url:
        doc = await run_one(url)
        assert doc["status"] == "failed"
        assert doc["error"] == (
            f"gave up after {MAX_DISPATCHES} tries: the orchestrator could not carry this run "
            "(ValueError: NaN is not JSON)"
        )
        assert engine.calls == MAX_DISPATCHES
        deadline = time.monotonic() + 10
        while engine.open and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert engine.most_open == 1 and engine.open == 0  # each try's call was ended


class HandingBackEngine(pb_grpc.EngineServicer):
    """Hands every run back as a draining engine does (SHUTTING_DOWN) after its first event,
    ``rollouts`` times, then finishes it."""

    def __init__(self, rollouts: int) -> None:
        self.rollouts = rollouts
        self.calls = 0

    async def Execute(self, request: pb.ExecuteRequest, context: Any) -> AsyncIterator[Any]:
        self.calls += 1
        types = ["execution.started"]
        if self.calls > self.rollouts:
            types.append("execution.succeeded")
        yield pb.ExecuteResponse(events=[event(request, kind, i) for i, kind in enumerate(types)])
        if self.calls <= self.rollouts:
            await context.abort_with_status(wire.grpc_status(ShuttingDown("rolling")))

    async def GetInfo(self, request: pb.GetInfoRequest, context: Any) -> pb.EngineInfo:
        return pb.EngineInfo(engine_id="rolling", state="serving", capacity=5)


async def test_runs_handed_back_by_draining_engines_are_never_given_up(tmp_path: Path) -> None:
    engine = HandingBackEngine(rollouts=MAX_DISPATCHES + 3)
    # a drained engine is back at its next check
    async with orchestrator_for(engine, tmp_path, ENGINE_HEALTH_CHECK_INTERVAL="0.1") as url:
        doc = await run_one(url)
    # before: failed, "gave up after 20 engines lost this run", at the 20th hand-back
    assert doc["status"] == "succeeded", doc.get("error")
    assert engine.calls == MAX_DISPATCHES + 4


class BreakingEngine(pb_grpc.EngineServicer):
    """Starts every run, then ends its stream with INTERNAL, as an engine whose own code faults
    while it drives the run does."""

    def __init__(self) -> None:
        self.calls = 0

    async def Execute(self, request: pb.ExecuteRequest, context: Any) -> AsyncIterator[Any]:
        self.calls += 1
        yield pb.ExecuteResponse(events=[event(request, "execution.started")])
        await context.abort(grpc.StatusCode.INTERNAL, "run broke: OverflowError: too large")

    async def GetInfo(self, request: pb.GetInfoRequest, context: Any) -> pb.EngineInfo:
        return pb.EngineInfo(engine_id="breaking", state="serving", capacity=5)


async def test_a_run_every_engine_loses_is_given_up_naming_how_it_was_lost(
    tmp_path: Path,
) -> None:
    engine = BreakingEngine()
    async with orchestrator_for(engine, tmp_path, ENGINE_HEALTH_CHECK_INTERVAL="0.1") as url:
        doc = await run_one(url)
    assert doc["status"] == "failed"
    # before: "gave up after 20 engines lost this run", with the cause only in the log
    assert doc["error"].startswith(
        f"gave up after {MAX_DISPATCHES} engines lost this run (the last: "
    )
    assert "INTERNAL: run broke: OverflowError: too large" in doc["error"], doc["error"]
    assert engine.calls == MAX_DISPATCHES


class FirstCallUnreachableEngine(pb_grpc.EngineServicer):
    """Refuses its first run with UNAVAILABLE before answering anything, as a channel to an
    engine gone a moment ago does, then runs the next one to its end."""

    def __init__(self) -> None:
        self.calls = 0

    async def Execute(self, request: pb.ExecuteRequest, context: Any) -> AsyncIterator[Any]:
        self.calls += 1
        if self.calls == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "failed to connect: refused")
        yield pb.ExecuteResponse(
            events=[
                event(request, "execution.started"),
                event(request, "execution.succeeded", 1, '{"outputs": {}}'),
            ]
        )

    async def GetInfo(self, request: pb.GetInfoRequest, context: Any) -> pb.EngineInfo:
        return pb.EngineInfo(engine_id="blinking", state="serving", capacity=5)


async def test_a_run_that_never_reached_its_engine_is_not_told_as_lost(tmp_path: Path) -> None:
    engine = FirstCallUnreachableEngine()
    async with orchestrator_for(engine, tmp_path, ENGINE_HEALTH_CHECK_INTERVAL="0.1") as url:
        doc = await run_one(url)
    assert doc["status"] == "succeeded", doc.get("error")
    assert engine.calls == 2
    log = (tmp_path / "orchestrator.log").read_text()
    # before: "lost <run> on blinking (UNAVAILABLE: ...): resuming elsewhere", a warning of a
    # run that never left the orchestrator
    assert "could not reach blinking with" in log and "dispatching elsewhere" in log, log
    assert "resuming elsewhere" not in log
