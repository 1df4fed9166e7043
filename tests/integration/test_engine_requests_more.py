"""Bad requests to a real ``python -m engine`` (and one through the orchestrator's HTTP API):
each gets INVALID_ARGUMENT naming its field, the engine goes on serving, and its log holds no
ERROR line or traceback for a client's mistake. A run whose event no gRPC message can carry ends
its stream as the orchestrator expects, without gRPC's ERROR line either."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest

from engine import wire
from engine.api import dagengine_pb2 as pb
from orchestrator.dispatching import _TOO_LARGE
from tests.integration.api import TOKEN, get, register
from tests.integration.conftest import Cluster, EngineProcess, StartEngine
from tests.integration.test_engine_service import TIMEOUT, Client, refusal, spec, violations

pytestmark = pytest.mark.slow


@pytest.fixture
async def client(shared_engine: EngineProcess) -> AsyncIterator[Client]:
    async with grpc.aio.insecure_channel(shared_engine.address) as channel:
        yield Client(channel)


def clean_log(engine: EngineProcess) -> None:
    """No ERROR record and no traceback in the engine's log."""
    bad = [r for r in engine.log_records() if r.get("level") in ("error", "critical")]
    assert bad == [], bad
    assert "Traceback" not in engine.log()


RETRIES = spec("retries", [{"id": "a", "retry": {"max_attempts": 3}, "lua": "return ctx.attempt"}])


async def test_retried_counts_an_attempt_number_cannot_hold_or_past_max_attempts_are_refused(
    client: Client, shared_engine: EngineProcess
) -> None:
    for failed, message in [
        # before: UNKNOWN "Value out of range", and an ERROR with a traceback in the log
        (
            2**31 - 1,
            "must be at most 2^31 - 2, so the next attempt fits an event's attempt number; "
            f"got {2**31 - 1}",
        ),
        # before: attempt 6 of a node allowed 3 ran
        (
            5,
            "must be below the node's retry.max_attempts (3): a node with no attempt left has "
            "ended, and is sent as completed with status failed; got 5",
        ),
    ]:
        error = await refusal(
            client.execute(RETRIES, retried=[pb.RetriedNode(node_id="a", failed=failed)])
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        assert violations(error) == [("retried[a].failed", message)]
    # what the orchestrator sends after attempt 2 failed: attempt 3 runs, the last
    events = await client.run(RETRIES, retried=[pb.RetriedNode(node_id="a", failed=2)])
    assert (events[-1]["type"], events[-2]["attempt"]) == ("execution.succeeded", 3)
    clean_log(shared_engine)


async def test_first_seq_and_ids_that_go_into_events_are_bounded(
    client: Client, shared_engine: EngineProcess
) -> None:
    error = await refusal(client.execute(RETRIES, first_seq=2**53))
    assert violations(error) == [
        ("first_seq", f"must be at most 2^52, so the run's events stay within 2^53; got {2**53}")
    ]
    error = await refusal(client.execute(RETRIES, parent_execution_id="p" * 1_000_000))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in violations(error)] == ["parent_execution_id"]
    assert len(error.details() or "") < 2000

    parent = spec("parent", [{"id": "child", "workflow": {"id": "enrich", "version": "^1.0"}}])
    stream = client.execute(parent, execution_id="waits-for-a-child")
    await stream.until_type("subworkflow.requested")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.engine.ResolveSubWorkflow(
            pb.ResolveSubWorkflowRequest(
                execution_id="waits-for-a-child",
                node_id="child",
                attempt=1,
                child_execution_id="c" * 1_000_000,
            ),
            timeout=TIMEOUT,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in violations(caught.value)] == ["child_execution_id"]
    # nothing changed: the node still waits, and a good answer ends it
    await client.engine.ResolveSubWorkflow(
        pb.ResolveSubWorkflowRequest(
            execution_id="waits-for-a-child",
            node_id="child",
            attempt=1,
            child_execution_id="child-1",
            child_status="succeeded",
            child_version="1.0.0",
            output_json='{"total": 3}',
        ),
        timeout=TIMEOUT,
    )
    events = await stream.rest()
    started = [e for e in events if e["type"] == "subworkflow.started"]
    assert started == []  # the refused announcement left no event
    assert events[-1]["type"] == "execution.succeeded"
    clean_log(shared_engine)


async def test_a_listing_with_a_bogus_status_or_a_negative_limit_is_refused(
    client: Client, shared_engine: EngineProcess
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.engine.ListExecutions(
            pb.ListExecutionsRequest(status="bogus", limit=-5), timeout=TIMEOUT
        )
    # before: OK, an empty list
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in violations(caught.value)] == ["status", "limit"]
    # a run in its sleep, and one ended: the filter has a run to list and one to leave out
    napper = client.execute(spec("napper", [{"id": "nap", "sleep": "1h"}]), execution_id="napping")
    await napper.until_type("node.started", "nap")
    await client.run(RETRIES, execution_id="ended")
    listed = await client.engine.ListExecutions(
        pb.ListExecutionsRequest(status="running", limit=5), timeout=TIMEOUT
    )
    assert [(e.id, e.status) for e in listed.executions] == [("napping", "running")]
    listed = await client.engine.ListExecutions(
        pb.ListExecutionsRequest(status="succeeded", limit=5), timeout=TIMEOUT
    )
    assert list(listed.executions) == []  # an engine holds no ended run; the napper is not one
    await client.engine.Cancel(pb.CancelRequest(execution_id="napping"), timeout=TIMEOUT)
    assert (await napper.rest())[-1]["type"] == "execution.cancelled"
    clean_log(shared_engine)


# a foreach node of 30 items of 1 MB, within the foreach and run bounds, named three times in
# the run's outputs: execution.succeeded carries 90 MB of them
FAT = spec(
    "fat",
    [
        {"id": "items", "lua": "local out = {} for i = 1, 30 do out[i] = i end return out"},
        {
            "id": "each",
            "depends_on": ["items"],
            "foreach": "{{ results.items }}",
            "lua": "return string.rep('y', 1000000)",
        },
    ],
    outputs={k: "{{ results.each }}" for k in ("a", "b", "c")},
)


async def test_a_run_whose_event_passes_64_mib_ends_as_the_orchestrator_expects(
    start_engine: StartEngine,
) -> None:
    engine = start_engine(CAPACITY="2")
    # the orchestrator's channel takes messages up to the same limit
    limit = [("grpc.max_receive_message_length", wire.MAX_MESSAGE_BYTES)]
    async with grpc.aio.insecure_channel(engine.address, options=limit) as channel:
        client = Client(channel)
        error = await refusal(client.execute(FAT))
        # orchestrator.dispatching fails the run on this, instead of running it again
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        details = error.details() or ""
        assert _TOO_LARGE in details, details
        assert details.endswith(
            "vs. 67108864 bytes): the execution.succeeded event is too large to send"
        ), details
        events = await client.run(RETRIES)
        assert events[-1]["type"] == "execution.succeeded"
    # before: "ExecuteBatchError raised in core by servicer method", an ERROR with a traceback
    clean_log(engine)
    assert any(
        r.get("level") == "warning" and _TOO_LARGE in str(r.get("message"))
        for r in engine.log_records()
    )


async def test_inputs_with_an_integer_past_a_double_are_refused_by_the_http_api(
    cluster: Cluster,
) -> None:
    body = '{"inputs": {"x": ' + "1" * 4001 + "}}"
    async with aiohttp.ClientSession() as http:
        await register(
            http,
            cluster.url,
            "id: takes-x\nversion: 1.0.0\nnodes:\n  - id: a\n    lua: return inputs.x\n",
        )
        async with http.post(
            f"{cluster.url}/trigger/takes-x",
            data=body,
            headers={"Content-Type": "application/json", **TOKEN},
        ) as resp:
            answer: Any = await resp.json()
            # before: 202, and every Lua node failed on "an integer too large even for a float"
            assert resp.status == 400, answer
        assert answer["error"]["code"] == "bad_json"
        assert answer["error"]["message"] == (
            "the request body is not valid JSON: 11111111111111111111... (4001 digits) is too "
            "large for a JSON number"
        )
        listed = await get(http, f"{cluster.url}/api/v1/executions?workflow=takes-x")
        assert listed["executions"] == []  # nothing was started
