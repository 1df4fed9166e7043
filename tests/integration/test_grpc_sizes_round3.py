"""A run whose outputs pass what a gRPC client with default options receives (4 MiB) is still
read by such a client: each reply carries notes in place of what does not fit, saying where to
read it whole, the wait reply always carries the run's id, and a listing pages past the run."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import grpc
import pytest

from engine.api import dagengine_pb2 as pb
from engine.api import dagengine_pb2_grpc as pb_grpc
from tests.integration.api import get, register
from tests.integration.conftest import StartCluster

pytestmark = pytest.mark.slow

DEFAULT_RECEIVE = 4 * 1024 * 1024
"""A gRPC client's receive limit unless it sets one."""

NODES = 5
OUTPUT = 1_000_000
"""Characters of each node's output: five of them are 5 MB of outputs, twice in an Execution
(the run's outputs and each node's)."""

BIG = """
id: g-big
version: 1.0.0
nodes:
""" + "".join(
    f"""  - id: s{i}
    lua: return {{ v = string.rep("{chr(ord("a") + i)}", {OUTPUT}) }}
"""
    for i in range(NODES)
)

TINY = """
id: g-tiny
version: 1.0.0
nodes:
  - id: a
    lua: return 1
"""


def note_of(text: str) -> dict[str, Any] | None:
    """The note in place of a JSON field, or None when the field came whole."""
    value = json.loads(text)
    return value if isinstance(value, dict) and value.get("too_large") is True else None


def check_noted(text: str, execution_id: str) -> None:
    note = note_of(text)
    assert note is not None, text[:200]
    assert note["bytes"] > 0 and note["limit"] == DEFAULT_RECEIVE
    assert note["read_whole"] == f"/api/v1/executions/{execution_id}"


def check_execution(execution: pb.Execution, whole: dict[str, Any]) -> None:
    """The run's outputs, which repeat its nodes', are the note, and all but one node's output
    come whole: what fits, once."""
    check_noted(execution.outputs_json, execution.id)
    assert json.loads(execution.inputs_json) == {}
    came = {}
    for node in execution.nodes:
        if note_of(node.output_json) is None:
            came[node.node_id] = json.loads(node.output_json)
        else:
            check_noted(node.output_json, execution.id)
    assert len(came) == NODES - 1, sorted(came)
    assert all(whole["nodes"][node_id]["output"] == output for node_id, output in came.items())


async def test_a_default_client_reads_a_run_larger_than_it_can_receive(
    start_cluster: StartCluster,
) -> None:
    cluster = start_cluster(engines=1)
    async with aiohttp.ClientSession() as http:
        await register(http, cluster.url, BIG)
        await register(http, cluster.url, TINY)
        # no options: the default receive limit
        async with grpc.aio.insecure_channel(cluster.orchestrator.grpc_address) as channel:
            stub: Any = pb_grpc.OrchestratorStub(channel)  # grpc.aio's stubs are typed as sync
            tiny = await stub.ExecuteWorkflow(
                pb.ExecuteWorkflowRequest(workflow_id="g-tiny", wait=True), timeout=120
            )
            assert tiny.execution.status == "succeeded"

            # before: RESOURCE_EXHAUSTED once the run had been accepted and had run, its id
            # never told
            done = await stub.ExecuteWorkflow(
                pb.ExecuteWorkflowRequest(workflow_id="g-big", wait=True), timeout=120
            )
            assert done.ByteSize() <= DEFAULT_RECEIVE
            eid = done.execution_id
            assert eid and done.execution.status == "succeeded"
            whole = await get(http, f"{cluster.url}/api/v1/executions/{eid}")
            assert whole["outputs"] == {
                f"s{i}": {"v": chr(ord("a") + i) * OUTPUT} for i in range(NODES)
            }
            check_execution(done.execution, whole)

            got = await stub.GetExecution(pb.GetExecutionRequest(execution_id=eid), timeout=30)
            check_execution(got, whole)
            cancelled = await stub.CancelExecution(
                pb.CancelExecutionRequest(execution_id=eid), timeout=30
            )
            check_execution(cancelled.execution, whole)
            status = await stub.GetSubWorkflowStatus(
                pb.GetSubWorkflowStatusRequest(execution_id=eid), timeout=30
            )
            check_noted(status.outputs_json, eid)

            # a page always takes one row: before, the big run stopped the paging for good
            seen: list[str] = []
            before = ""
            while True:
                page = await stub.ListExecutions(
                    pb.ListExecutionsRequest(limit=1000, before=before), timeout=30
                )
                for row in page.executions:
                    seen.append(row.id)
                    if row.id == eid:
                        check_noted(row.outputs_json, eid)
                    else:
                        assert json.loads(row.outputs_json) == {"a": 1}
                if not page.next_before:
                    break
                before = page.next_before
            assert seen == [eid, tiny.execution_id]
