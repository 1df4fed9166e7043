"""QUEUE_LIMIT_PER_WORKFLOW: a flood of one workflow's runs (a backfill, a busy trigger) fills
its own share of the queue, and the other workflows' runs are still taken."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from engine.api import dagengine_pb2 as pb
from orchestrator.settings import Settings
from tests.component.serving_helpers import served_facade


def spec(workflow_id: str) -> dict[str, object]:
    return {"id": workflow_id, "version": "1.0.0", "nodes": [{"id": "a", "lua": "return 1"}]}


class Queue:
    """Takes runs and keeps them queued (no engine takes any)."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, str]] = []

    @property
    def queue_depth(self) -> int:
        return len(self.runs)

    def queued_of(self, workflow_id: str) -> int:
        return sum(1 for _, w in self.runs if w == workflow_id)

    def submit(self, execution_id: str, workflow_id: str, **_: object) -> None:
        self.runs.append((execution_id, workflow_id))

    def dequeue(self, execution_id: str) -> bool:
        return True


async def test_one_workflow_fills_only_its_share_of_the_queue(tmp_path: Path) -> None:
    queue = Queue()
    async with served_facade(
        tmp_path, specs=[spec("flood"), spec("nightly")], dispatcher=queue
    ) as served:
        served.orch.queue_limit_per_workflow = 2
        for _ in range(2):
            await served.stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(workflow_id="flood"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await served.stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(workflow_id="flood"))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.value.details() == (
            "2 executions of 'flood' are waiting for an engine "
            "(QUEUE_LIMIT_PER_WORKFLOW 2): try again later"
        )
        # before: one limit for all, which the flood alone could fill
        await served.stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(workflow_id="nightly"))
        assert [w for _, w in queue.runs] == ["flood", "flood", "nightly"]
        assert served.orch._admitting_of == {}


def test_the_share_is_a_setting_refused_when_it_is_no_count() -> None:
    base = {"DISCOVERY_MODE": "static", "ENGINE_ADDRESSES": "127.0.0.1:1"}
    assert Settings.from_env(base).queue_limit_per_workflow is None
    assert (
        Settings.from_env({**base, "QUEUE_LIMIT_PER_WORKFLOW": "500"}).queue_limit_per_workflow
        == 500
    )
    from engine.settings import SettingsError

    with pytest.raises(SettingsError, match="QUEUE_LIMIT_PER_WORKFLOW must be a positive integer"):
        Settings.from_env({**base, "QUEUE_LIMIT_PER_WORKFLOW": "0"})
