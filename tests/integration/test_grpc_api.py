"""The orchestrator's gRPC API as an outside client sees it: streams that end when, and only
when, they should; refusals that name the field and carry HTTP's error code and details; and
the execution and workflow fields HTTP shows."""

from __future__ import annotations

import json
import signal
from typing import Any

import aiohttp
import grpc
import pytest

from engine.api import dagengine_pb2 as pb
from engine.api import dagengine_pb2_grpc as pb_grpc
from engine.core.states import EXECUTION_TERMINAL
from tests.integration.api import AUTH, TOKEN, first_pause_last, register
from tests.integration.conftest import Cluster, StartCluster
from tests.integration.test_orchestrator import DIAMOND as ORCHESTRATOR_DIAMOND
from tests.net import error_info

pytestmark = pytest.mark.slow

DIAMOND = ORCHESTRATOR_DIAMOND.replace("id: diamond", "id: g-diamond")


def stub_for(channel: grpc.aio.Channel) -> pb_grpc.OrchestratorStub:
    return pb_grpc.OrchestratorStub(channel)


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def finished_diamond(stub: pb_grpc.OrchestratorStub) -> pb.ExecuteWorkflowResponse:
    await stub.RegisterWorkflow(pb.RegisterWorkflowRequest(spec=DIAMOND), metadata=AUTH)
    done: pb.ExecuteWorkflowResponse = await stub.ExecuteWorkflow(
        pb.ExecuteWorkflowRequest(workflow_id="g-diamond", wait=True), metadata=AUTH
    )
    assert done.execution.status == "succeeded"
    return done


# -- streams ------------------------------------------------------------------------------------


async def test_a_watch_resumed_at_or_past_a_finished_runs_end_ends_at_once(
    cluster: Cluster,
) -> None:
    async with grpc.aio.insecure_channel(cluster.orchestrator.grpc_address) as channel:
        stub = stub_for(channel)
        done = await finished_diamond(stub)
        whole = [
            e
            async for e in stub.WatchEvents(
                pb.WatchEventsRequest(execution_id=done.execution_id), timeout=30, metadata=AUTH
            )
        ]
        final = whole[-1]
        assert final.type == "execution.succeeded"
        # resumed from the middle: the rest, then the end
        rest = [
            e.seq
            async for e in stub.WatchEvents(
                pb.WatchEventsRequest(execution_id=done.execution_id, after_seq=final.seq - 2),
                timeout=30,
                metadata=AUTH,
            )
        ]
        assert rest == [final.seq - 1, final.seq]
        for after in (final.seq, final.seq + 10):
            # before: nothing came and the stream stayed open until the deadline
            call = stub.WatchEvents(
                pb.WatchEventsRequest(execution_id=done.execution_id, after_seq=after),
                timeout=5,
                metadata=AUTH,
            )
            assert [e async for e in call] == []
            assert await call.code() == grpc.StatusCode.OK


async def test_stopping_the_orchestrator_mid_run_tells_watchers_to_come_back(
    start_cluster: StartCluster,
) -> None:
    c = start_cluster(engines=1, API_TOKEN="s3cret")
    async with aiohttp.ClientSession() as http:
        await register(http, c.url, first_pause_last("g-sleepy", "120s"))
    async with grpc.aio.insecure_channel(c.orchestrator.grpc_address) as channel:
        stub = stub_for(channel)
        started = await stub.ExecuteWorkflow(
            pb.ExecuteWorkflowRequest(workflow_id="g-sleepy"), metadata=AUTH
        )
        call = stub.WatchEvents(
            pb.WatchEventsRequest(execution_id=started.execution_id), metadata=AUTH
        )
        seen = []
        async for e in call:
            seen.append(e)
            if e.type == "node.started" and e.node_id == "pause":
                break
        sse_types: list[str] = []
        async with aiohttp.ClientSession() as http:
            async with http.get(
                f"{c.url}/api/v1/events",
                params={"execution": started.execution_id},
                headers=TOKEN,
            ) as resp:
                assert resp.status == 200
                first = await resp.content.readline()  # the stream is open and replaying
                assert first.startswith(b"id: ")
                c.orchestrator.proc.send_signal(signal.SIGTERM)
                # the SSE stream closes without a final event: an EventSource reconnects
                async for line in resp.content:
                    if line.startswith(b"event: "):
                        sse_types.append(line[7:].decode().strip())
            # before: the gRPC watch ended with OK, which says the run has ended
            with pytest.raises(grpc.aio.AioRpcError) as stopped:
                async for e in call:
                    seen.append(e)
        assert stopped.value.code() == grpc.StatusCode.UNAVAILABLE
        assert f"after_seq={seen[-1].seq}" in (stopped.value.details() or "")
        assert "execution.started" in sse_types  # it read the timeline, and no end
        assert not {f"execution.{s}" for s in EXECUTION_TERMINAL} & set(sse_types)
    assert c.orchestrator.proc.wait(30) == 0


# -- refusals -----------------------------------------------------------------------------------


async def test_specs_as_json_or_yaml_with_https_limits(cluster: Cluster) -> None:
    async with grpc.aio.insecure_channel(cluster.orchestrator.grpc_address) as channel:
        stub = stub_for(channel)
        # YAML in flow style starts with "{" too (before: refused as invalid JSON)
        flow = '{id: g-flow, version: "1.0.0", nodes: [{id: a, lua: "return 1"}]}'
        reply = await stub.RegisterWorkflow(pb.RegisterWorkflowRequest(spec=flow), metadata=AUTH)
        assert reply.workflow.id == "g-flow" and reply.created and not reply.warnings
        # a hook whose secret the orchestrator was not started with: registered, and said so
        hook = flow.replace(
            "nodes:", "triggers: [{http: {path: /hooks/g, auth: {bearer_env: G_UNSET}}}], nodes:"
        )
        hook = hook.replace("g-flow", "g-hook")
        reply = await stub.RegisterWorkflow(pb.RegisterWorkflowRequest(spec=hook), metadata=AUTH)
        assert reply.created and len(reply.warnings) == 1
        assert "/hooks/g reads its secret from G_UNSET, which is not set" in reply.warnings[0]
        # before: INTERNAL "internal error" and a RecursionError traceback in the log
        deep = '{"a":' + "[" * 200_000 + "]" * 200_000 + "}"
        err = await refused(
            stub.RegisterWorkflow(pb.RegisterWorkflowRequest(spec=deep), metadata=AUTH)
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details() == "spec nests deeper than 64 levels"
        assert error_info(err).reason == "too_deep"
        # HTTP's 64 levels hold here too (before: this registered over gRPC only)
        schema: Any = {"type": "object"}
        for _ in range(80):
            schema = {"type": "object", "properties": {"x": schema}}
        spec = {
            "id": "g-deep-schema",
            "version": "1.0.0",
            "inputs_schema": schema,
            "nodes": [{"id": "a", "lua": "return 1"}],
        }
        err = await refused(
            stub.RegisterWorkflow(pb.RegisterWorkflowRequest(spec=json.dumps(spec)), metadata=AUTH)
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "spec nests deeper than 64 levels" in (err.details() or "")
        deep_inputs = '{"x": ' + "[" * 100 + "]" * 100 + "}"
        err = await refused(
            stub.ExecuteWorkflow(
                pb.ExecuteWorkflowRequest(workflow_id="g-flow", inputs_json=deep_inputs),
                metadata=AUTH,
            )
        )
        assert err.details() == "inputs_json nests deeper than 64 levels"
    assert "RecursionError" not in cluster.orchestrator.log()


async def test_an_empty_id_is_invalid_argument_naming_the_field(cluster: Cluster) -> None:
    async with grpc.aio.insecure_channel(cluster.orchestrator.grpc_address) as channel:
        stub = stub_for(channel)
        for call, field in (
            (stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(), metadata=AUTH), "workflow_id"),
            (stub.GetWorkflow(pb.GetWorkflowRequest(), metadata=AUTH), "workflow_id"),
            (stub.GetExecution(pb.GetExecutionRequest(), metadata=AUTH), "execution_id"),
            (stub.CancelExecution(pb.CancelExecutionRequest(), metadata=AUTH), "execution_id"),
            (stub.GetTrigger(pb.TriggerRequest(), metadata=AUTH), "trigger_id"),
            (stub.PauseTrigger(pb.TriggerRequest(), metadata=AUTH), "trigger_id"),
            (
                stub.GetSubWorkflowStatus(pb.GetSubWorkflowStatusRequest(), metadata=AUTH),
                "execution_id",
            ),
        ):
            err = await refused(call)
            # before: NOT_FOUND "workflow '' is not registered" and the like
            assert (err.code(), err.details()) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{field} is required",
            )
            assert dict(error_info(err).metadata) == {"field": field}
        # a seq counts within one run: asking for one across runs is a mistake, not ignored
        err = await refused(
            stub.WatchEvents(
                pb.WatchEventsRequest(workflow_id="g-diamond", after_seq=5), metadata=AUTH
            ).read()
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "after_seq needs execution_id" in (err.details() or "")
        done = await finished_diamond(stub)
        err = await refused(
            stub.WatchEvents(
                pb.WatchEventsRequest(workflow_id="other", execution_id=done.execution.id),
                metadata=AUTH,
            ).read()
        )
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert err.details() == f"execution {done.execution.id} is a run of g-diamond, not of other"


async def test_bytes_that_are_not_the_request_message_are_invalid_argument(
    cluster: Cluster,
) -> None:
    async with grpc.aio.insecure_channel(cluster.orchestrator.grpc_address) as channel:
        for call in (
            channel.unary_unary("/dagengine.v1.Orchestrator/GetExecution")(
                b"\x0a\xff", metadata=AUTH
            ),
            channel.unary_stream("/dagengine.v1.Orchestrator/WatchEvents")(
                b"\x0a\xff", metadata=AUTH
            ).read(),
        ):
            err = await refused(call)
            # before: UNKNOWN, and a traceback in the orchestrator's log for each one
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
            assert (err.details() or "").startswith("the request is not a valid message")
            assert error_info(err).reason == "bad_request"
        # the service goes on
        assert (
            await stub_for(channel).ListWorkflows(pb.ListWorkflowsRequest(), metadata=AUTH)
        ) is not None
    assert "DecodeError" not in cluster.orchestrator.log()


async def test_refusals_carry_https_error_code_and_details(cluster: Cluster) -> None:
    async with grpc.aio.insecure_channel(cluster.orchestrator.grpc_address) as channel:
        stub = stub_for(channel)
        await finished_diamond(stub)
        first = await stub.ExecuteWorkflow(
            pb.ExecuteWorkflowRequest(workflow_id="g-diamond", idempotency_key="g-key"),
            metadata=AUTH,
        )
        err = await refused(
            stub.ExecuteWorkflow(
                pb.ExecuteWorkflowRequest(
                    workflow_id="g-diamond", idempotency_key="g-key", inputs_json='{"n": 2}'
                ),
                metadata=AUTH,
            )
        )
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        # the field this API has, not HTTP's header
        assert "idempotency_key 'g-key'" in (err.details() or "")
        assert "Idempotency-Key" not in (err.details() or "")
        info = error_info(err)
        assert (info.reason, info.domain) == ("idempotency_key_reused", "dagengine")
        assert dict(info.metadata) == {"execution_id": first.execution_id}  # before: lost
        # a spec problem keeps its field violations and names its kind as well
        err = await refused(
            stub.RegisterWorkflow(pb.RegisterWorkflowRequest(spec="id: x\n"), metadata=AUTH)
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(err).reason == "invalid_spec"
        # a taken trigger id: ALREADY_EXISTS, as HTTP's 409 for a taken name maps elsewhere
        create = pb.CreateTriggerRequest(
            id="g-nightly", workflow_id="g-diamond", cron="0 3 * * *", paused=True
        )
        await stub.CreateTrigger(create, metadata=AUTH)
        err = await refused(stub.CreateTrigger(create, metadata=AUTH))
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS  # before: FAILED_PRECONDITION
        info = error_info(err)
        assert (info.reason, dict(info.metadata)) == ("trigger_conflict", {"trigger": "g-nightly"})


# -- fields HTTP shows --------------------------------------------------------------------------

SQUARE = """
id: g-square
version: 1.0.0
nodes:
  - id: sq
    lua: return { sq = inputs.n * inputs.n }
"""

FAN = """
id: g-fan
version: 1.0.0
nodes:
  - id: each
    foreach: "{{ inputs.items }}"
    workflow: {id: g-square, version: "^1"}
    inputs: {n: "{{ ctx.item }}"}
"""


async def test_a_child_run_names_its_foreach_item_and_a_workflow_its_references(
    cluster: Cluster,
) -> None:
    async with grpc.aio.insecure_channel(cluster.orchestrator.grpc_address) as channel:
        stub = stub_for(channel)
        for spec in (SQUARE, FAN):
            await stub.RegisterWorkflow(pb.RegisterWorkflowRequest(spec=spec), metadata=AUTH)
        fan = await stub.GetWorkflow(pb.GetWorkflowRequest(workflow_id="g-fan"), metadata=AUTH)
        assert [(r.node, r.workflow, r.range, r.resolves_to) for r in fan.references] == [
            ("each", "g-square", "^1", "1.0.0")
        ]
        done = await stub.ExecuteWorkflow(
            pb.ExecuteWorkflowRequest(
                workflow_id="g-fan", inputs_json='{"items": [3, 4, 5]}', wait=True
            ),
            metadata=AUTH,
        )
        assert done.execution.status == "succeeded"
        assert not done.execution.HasField("parent_item")  # not a child
        assert not done.execution.HasField("parent_attempt")
        items = {}
        for child_id in done.execution.children:
            child = await stub.GetExecution(
                pb.GetExecutionRequest(execution_id=child_id), metadata=AUTH
            )
            assert child.HasField("parent_item") and child.parent_attempt == 1
            items[child.parent_item] = json.loads(child.inputs_json)["n"]
        assert items == {0: 3, 1: 4, 2: 5}
        listed = await stub.ListExecutions(
            pb.ListExecutionsRequest(workflow_id="g-square"), metadata=AUTH
        )
        assert sorted(e.parent_item for e in listed.executions) == [0, 1, 2]
    # the same as HTTP shows
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{cluster.url}/api/v1/workflows/g-fan", headers=TOKEN) as resp:
            shown = (await resp.json())["references"]
        assert shown == [
            {"node": "each", "workflow": "g-square", "range": "^1", "resolves_to": "1.0.0"}
        ]
