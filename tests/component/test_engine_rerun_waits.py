"""A run dispatched again to the same engine while its previous copy is still stopping: the old
copy's stop must not touch the new copy's sub-workflow wait.

The engine releases a run as soon as its caller's stream closes, so the same id can be admitted
again at once; the old ``Execution`` holds its cancel until its running script comes back (up to
``STOP_GRACE``), and cancels its own sub-workflow wait only then."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import pytest

from engine.api import dagengine_pb2 as pb
from engine.api import dagengine_pb2_grpc as pb_grpc
from engine.serving import EngineServer
from tests.component.engine_helpers import serving_engine
from tests.component.test_engine_link_keepalive import until

WAIT = 30.0
"""Seconds a test waits for what must come, before it fails rather than hang."""
# "busy" keeps a Lua worker until its stop lands; "call" waits for its child meanwhile
PARENT = json.dumps(
    {
        "id": "par",
        "version": "1.0.0",
        "nodes": [
            {
                "id": "busy",
                "lua": "local t = os.clock() while os.clock() - t < 20 do"
                " local s = string.rep('x', 2000000) end return {}",
            },
            {"id": "call", "workflow": {"id": "kid", "version": "^1"}},
        ],
    }
)


@pytest.fixture
async def engine() -> AsyncIterator[EngineServer]:
    async with serving_engine(lua_workers=2) as server:
        yield server


async def test_a_run_sent_again_keeps_its_wait_when_its_old_copy_stops(
    engine: EngineServer,
) -> None:
    service = engine.service
    assert service is not None
    request = pb.ExecuteRequest(execution_id="run-x", spec=PARENT, first_seq=2)
    async with grpc.aio.insecure_channel(engine.address) as channel:
        stub = pb_grpc.EngineStub(channel)
        first = stub.Execute(request)
        await asyncio.wait_for(until(first, "subworkflow.requested"), WAIT)
        old = service._runs["run-x"]
        while not any(flag.taken for flag in old._cancels.values()):
            await asyncio.sleep(0.01)  # "busy" is on a worker: the old copy's stop is held
        first.cancel()  # the orchestrator lets go of the stream (a store stall, a flap)
        while service._runs.get("run-x") is old:
            await asyncio.sleep(0.01)
        assert not old.finished  # still stopping "busy" as the run comes back
        second = stub.Execute(request)
        await asyncio.wait_for(until(second, "subworkflow.requested"), WAIT)
        while not old.finished:
            await asyncio.sleep(0.05)  # its held stop lands, cancelling its own waits
        # before: FAILED_PRECONDITION, no sub-workflow of node 'call' attempt 1 is waiting
        await stub.ResolveSubWorkflow(
            pb.ResolveSubWorkflowRequest(
                execution_id="run-x",
                node_id="call",
                attempt=1,
                output_json='{"v": 1}',
                child_execution_id="child-1",
                child_status="succeeded",
                child_version="1.0.0",
            ),
            timeout=WAIT,
        )
        second.cancel()
