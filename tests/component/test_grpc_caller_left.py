"""A gRPC caller that leaves mid-call (its deadline passes, it hangs up) while the store
writes: what the call began still ends. grpc.aio cancels the handler at its next await, and
one between a store write and the step after it left a version stored but unknown to the
registry, or a run stored but never queued."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from engine.api import dagengine_pb2 as pb
from orchestrator import serving_grpc
from orchestrator.orchestrating import Orchestrator
from orchestrator.serving_grpc import calls_left_behind
from tests.component.serving_helpers import served_facade

SPEC = {"id": "w", "version": "1.0.0", "nodes": [{"id": "a", "lua": "return 1"}]}


class Dispatcher:
    """Takes runs and keeps them queued, saying which it was given."""

    def __init__(self) -> None:
        self.submitted: list[str] = []

    @property
    def queue_depth(self) -> int:
        return len(self.submitted)  # nothing leaves: no engine takes them

    def submit(self, execution_id: str, workflow_id: str, **_: object) -> None:
        self.submitted.append(execution_id)

    def dequeue(self, execution_id: str) -> bool:
        return True


class Served:
    def __init__(self, stub: Any, orch: Orchestrator, dispatcher: Dispatcher) -> None:
        self.stub = stub  # grpc.aio's stubs are typed as sync ones
        self.orch = orch
        self.store = orch.store
        self.dispatcher = dispatcher
        self.gate = asyncio.Event()

    def hold_after(self, name: str) -> None:
        """The store's ``name`` writes, then waits for the gate: the call is cancelled there."""
        real: Callable[..., Awaitable[Any]] = getattr(self.store, name)

        async def written_then_held(*args: Any, **kwargs: Any) -> Any:
            result = await real(*args, **kwargs)
            await self.gate.wait()
            return result

        setattr(self.store, name, written_then_held)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    dispatcher = Dispatcher()
    async with served_facade(tmp_path, dispatcher=dispatcher, with_triggers=False) as f:
        yield Served(f.stub, f.orch, dispatcher)


async def deadline_passes(call: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_version_stored_as_the_caller_left_is_registered(served: Served) -> None:
    served.hold_after("register_version")
    await deadline_passes(
        served.stub.RegisterWorkflow(pb.RegisterWorkflowRequest(spec=json.dumps(SPEC)), timeout=0.3)
    )
    served.gate.set()
    # before: NOT_FOUND until a restart, and registering it again an INTERNAL error
    for _ in range(100):
        try:
            found = await served.stub.GetWorkflow(pb.GetWorkflowRequest(workflow_id="w"))
            break
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
            await asyncio.sleep(0.02)
    else:
        raise AssertionError("the stored version never became known")
    assert list(found.versions) == ["1.0.0"]
    again = await served.stub.RegisterWorkflow(pb.RegisterWorkflowRequest(spec=json.dumps(SPEC)))
    assert again.created is False


async def test_a_run_stored_as_the_caller_left_is_queued(served: Served) -> None:
    await served.stub.RegisterWorkflow(pb.RegisterWorkflowRequest(spec=json.dumps(SPEC)))
    served.hold_after("create_execution")
    await deadline_passes(
        served.stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(workflow_id="w"), timeout=0.3)
    )
    [stored] = (await served.stub.ListExecutions(pb.ListExecutionsRequest())).executions
    served.gate.set()
    # before: stored, and never given to the dispatcher, so queued until a restart
    for _ in range(100):
        if served.dispatcher.submitted:
            break
        await asyncio.sleep(0.02)
    assert served.dispatcher.submitted == [stored.id]


async def test_a_caller_that_leaves_holds_its_queue_place_until_its_run_is_queued(
    served: Served,
) -> None:
    await served.stub.RegisterWorkflow(pb.RegisterWorkflowRequest(spec=json.dumps(SPEC)))
    served.orch.queue_limit = 1
    real = served.store.create_execution

    async def held(*args: Any, **kwargs: Any) -> Any:
        await served.gate.wait()
        return await real(*args, **kwargs)

    served.store.create_execution = held  # type: ignore[method-assign]
    await deadline_passes(
        served.stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(workflow_id="w"), timeout=0.3)
    )
    # before: the first caller's leaving freed its place while its run was still being stored
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await served.stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(workflow_id="w"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    served.gate.set()
    for _ in range(100):
        if served.dispatcher.submitted:
            break
        await asyncio.sleep(0.02)
    assert len(served.dispatcher.submitted) == 1


def known(served: Served) -> list[str]:
    return [str(w["id"]) for w in served.orch.registry.summaries()[0]]


async def _gate_opens_soon(served: Served) -> None:
    await asyncio.sleep(0.2)
    served.gate.set()


async def test_the_stop_waits_for_a_call_whose_caller_left(served: Served) -> None:
    served.hold_after("register_version")
    await deadline_passes(
        served.stub.RegisterWorkflow(pb.RegisterWorkflowRequest(spec=json.dumps(SPEC)), timeout=0.3)
    )
    assert "w" not in known(served)
    # the server hears of the caller's leaving a moment after the caller gives up
    for _ in range(250):
        if serving_grpc._LEFT_BEHIND:
            break
        await asyncio.sleep(0.02)
    assert serving_grpc._LEFT_BEHIND, "the handler was never left behind"
    opening = asyncio.ensure_future(_gate_opens_soon(served))
    # what the orchestrator's stop awaits before its store closes: without the wait, the
    # registration's steps after its write would meet a closed store
    await calls_left_behind(5)
    assert "w" in known(served)
    await opening


async def test_the_stop_waits_for_a_run_being_stored_whose_caller_left(served: Served) -> None:
    await served.stub.RegisterWorkflow(pb.RegisterWorkflowRequest(spec=json.dumps(SPEC)))
    served.hold_after("create_execution")
    await deadline_passes(
        served.stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(workflow_id="w"), timeout=0.3)
    )
    assert served.dispatcher.submitted == []
    opening = asyncio.ensure_future(_gate_opens_soon(served))
    await served.orch.stores_settled(5)
    assert len(served.dispatcher.submitted) == 1
    await opening


async def test_a_run_is_counted_once_from_the_step_that_queues_it(served: Served) -> None:
    await served.stub.RegisterWorkflow(pb.RegisterWorkflowRequest(spec=json.dumps(SPEC)))
    seen: list[int] = []
    real = served.dispatcher.submit

    def submit(execution_id: str, workflow_id: str, **kwargs: object) -> None:
        real(execution_id, workflow_id, **kwargs)
        # what a request checked right after this step finds waiting: before, the run was
        # queued and still counted as being stored until a callback a turn later, so a
        # request in between was refused a place that was free
        asyncio.get_running_loop().call_soon(
            lambda: seen.append(served.dispatcher.queue_depth + served.orch._admitting)
        )

    served.dispatcher.submit = submit  # type: ignore[method-assign]
    await served.stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(workflow_id="w"))
    assert seen == [1]
    assert served.orch._admitting == 0
