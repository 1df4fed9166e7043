"""QUEUE_LIMIT_PER_WORKFLOW: a flood of one workflow's runs (a backfill, a busy trigger) fills
its own share of the queue, and the other workflows' runs are still taken. The real
dispatcher keeps them, with no engine free to take any."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from engine.api import dagengine_pb2 as pb
from orchestrator.dispatching import Dispatcher
from orchestrator.settings import Settings
from orchestrator.subworkflows import ChildRequest
from tests.component.serving_helpers import held_until, hold_child_writes, served_facade


def spec(workflow_id: str) -> dict[str, object]:
    return {"id": workflow_id, "version": "1.0.0", "nodes": [{"id": "a", "lua": "return 1"}]}


class NoEngineFree:
    def pick(self, key: str, *, overflow: bool = False) -> None:
        return None


def queue() -> Dispatcher:
    return Dispatcher(None, NoEngineFree(), publish=list)  # type: ignore[arg-type]


async def test_one_workflow_fills_only_its_share_of_the_queue(tmp_path: Path) -> None:
    dispatcher = queue()
    async with served_facade(
        tmp_path, specs=[spec("flood"), spec("nightly")], dispatcher=dispatcher
    ) as served:
        served.orch.queue_limit_per_workflow = 2
        first = await served.stub.ExecuteWorkflow(
            pb.ExecuteWorkflowRequest(workflow_id="flood", idempotency_key="k1")
        )
        await served.stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(workflow_id="flood"))
        assert dispatcher.queued_of("flood") == 2
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await served.stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(workflow_id="flood"))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.value.details() == (
            "2 executions of 'flood' are waiting for an engine "
            "(QUEUE_LIMIT_PER_WORKFLOW 2): try again later"
        )
        # a repeat of a stored request creates nothing: it gets its run, full queue or not
        again = await served.stub.ExecuteWorkflow(
            pb.ExecuteWorkflowRequest(workflow_id="flood", idempotency_key="k1")
        )
        assert again.execution_id == first.execution_id
        # before: one limit for all, which the flood alone could fill
        await served.stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(workflow_id="nightly"))
        assert (dispatcher.queued_of("nightly"), dispatcher.queue_depth) == (1, 3)
        assert served.orch._admitting_of == {}


async def test_a_sub_workflow_run_counts_in_no_workflow_s_share(tmp_path: Path) -> None:
    dispatcher = queue()
    async with served_facade(
        tmp_path, specs=[spec("parent"), spec("grade")], dispatcher=dispatcher
    ) as served:
        served.orch.queue_limit_per_workflow = 1
        parent = await served.stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(workflow_id="parent"))
        gate = asyncio.Event()
        held = hold_child_writes(served.store, gate)
        request = ChildRequest(parent.execution_id, "a", None, 1, "grade", "^1", {})
        starting = asyncio.ensure_future(served.orch.start_child(request, lambda _: None))
        await held_until(held, "child")
        # before: the child being stored counted against grade's root runs, and this was
        # refused as "1 executions of 'grade' are waiting" with none waiting
        await served.stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(workflow_id="grade"))
        assert dispatcher.queued_of("grade") == 1
        gate.set()
        await starting


def test_the_share_is_a_setting_refused_when_it_is_no_count() -> None:
    from engine.settings import SettingsError

    base = {"DISCOVERY_MODE": "static", "ENGINE_ADDRESSES": "127.0.0.1:1"}
    assert Settings.from_env(base).queue_limit_per_workflow is None
    shared = Settings.from_env({**base, "QUEUE_LIMIT_PER_WORKFLOW": "500"})
    assert shared.queue_limit_per_workflow == 500
    with pytest.raises(SettingsError, match="QUEUE_LIMIT_PER_WORKFLOW must be a positive integer"):
        Settings.from_env({**base, "QUEUE_LIMIT_PER_WORKFLOW": "0"})
