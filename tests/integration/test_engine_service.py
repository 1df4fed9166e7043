"""The engine service as the orchestrator sees it: a real ``python -m engine`` on loopback.

Tests wait on events and states, never on fixed sleeps: a run that must stay in flight waits on
a sleep node of an hour or on a sub-workflow answer the test holds back.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from engine import wire
from engine.api import dagengine_pb2 as pb
from engine.api import dagengine_pb2_grpc as pb_grpc
from tests.integration.conftest import (
    ROOT,
    EngineProcess,
    StartEngine,
    spawn_engine,
    wait_until_serving,
)

pytestmark = pytest.mark.slow

TIMEOUT = 60.0
DIAMOND = (ROOT / "examples" / "diamond.yaml").read_text()


def spec(workflow_id: str, nodes: list[dict[str, Any]], **extra: Any) -> str:
    return json.dumps({"id": workflow_id, "version": "1.0.0", **extra, "nodes": nodes})


SLEEPER = spec("sleeper", [{"id": "nap", "sleep": "1h"}])
WAITS_FOR_CHILD = spec(
    "parent",
    [
        {
            "id": "child",
            "workflow": {"id": "enrich", "version": "^1.0"},
            "inputs": {"value": "{{ inputs.v }}"},
        },
        {
            "id": "use",
            "depends_on": ["child"],
            "lua": "return { doubled = results.child.total * 2 }",
        },
    ],
)


class Client:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.engine = pb_grpc.EngineStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)
        self.reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

    def execute(self, spec_text: str, inputs: Any = None, **fields: Any) -> Stream:
        request = pb.ExecuteRequest(
            spec=spec_text, inputs_json=json.dumps(inputs if inputs is not None else {}), **fields
        )
        return Stream(self.engine.Execute(request))

    async def run(self, spec_text: str, inputs: Any = None, **fields: Any) -> list[dict[str, Any]]:
        return await self.execute(spec_text, inputs, **fields).rest()

    async def health_status(self, service: str = "") -> int:
        response = await self.health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT
        )
        return int(response.status)


class Stream:
    """One Execute call's events, read one at a time as dicts (they arrive in batches)."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.events: list[dict[str, Any]] = []
        self._unread: list[dict[str, Any]] = []

    async def next(self) -> dict[str, Any] | None:
        while not self._unread:
            message = await asyncio.wait_for(self.call.read(), TIMEOUT)
            if message is grpc.aio.EOF:
                return None
            assert message.events, "an empty message on the stream"
            self._unread = [wire.event_dict(e) for e in message.events]
        event = self._unread.pop(0)
        self.events.append(event)
        return event

    async def until(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        while True:
            event = await self.next()
            if event is None:
                raise AssertionError(f"the stream ended first; events: {self.events}")
            if predicate(event):
                return event

    async def until_type(self, type_: str, node_id: str | None = None) -> dict[str, Any]:
        return await self.until(
            lambda e: e["type"] == type_ and (node_id is None or e["node_id"] == node_id)
        )

    async def rest(self) -> list[dict[str, Any]]:
        while await self.next() is not None:
            pass
        return self.events

    @property
    def execution_id(self) -> str:
        return str(self.events[0]["execution_id"])


async def refusal(stream: Stream) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.rest()
    return caught.value


def violations(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return wire.field_violations(status_pb2.Status.FromString(value))
    return []


@pytest.fixture
async def client(shared_engine: EngineProcess) -> AsyncIterator[Client]:
    async with grpc.aio.insecure_channel(shared_engine.address) as channel:
        yield Client(channel)


async def connect(engine: EngineProcess) -> tuple[grpc.aio.Channel, Client]:
    channel = grpc.aio.insecure_channel(engine.address)
    return channel, Client(channel)


def exit_code(engine: EngineProcess) -> int:
    return engine.wait(TIMEOUT)


# -- runs ---------------------------------------------------------------------------------------


async def test_diamond_streams_every_event_in_order(client: Client) -> None:
    events = await client.run(DIAMOND, {"n": 4})
    types = [(e["type"], e["node_id"]) for e in events]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert types[0] == ("execution.started", None)
    assert types[-1] == ("execution.succeeded", None)
    assert events[-1]["data"]["outputs"] == {"total": 34, "summary": "sum 10 + product 24"}
    for node in ("numbers", "sum", "product", "join"):
        assert types.count(("node.started", node)) == 1
        assert types.count(("node.succeeded", node)) == 1
    at = {t: i for i, t in enumerate(types)}
    assert at[("node.succeeded", "numbers")] < at[("node.started", "sum")]
    assert at[("node.succeeded", "numbers")] < at[("node.started", "product")]
    assert at[("node.succeeded", "sum")] < at[("node.started", "join")]
    assert at[("node.succeeded", "product")] < at[("node.started", "join")]
    assert at[("node.succeeded", "join")] < at[("execution.succeeded", None)]
    assert events[at[("node.succeeded", "join")]]["data"]["output"] == {
        "sum": 10,
        "product": 24,
        "total": 34,
    }
    assert {
        (e["workflow_id"], e["version"], e["engine_id"], e["execution_id"]) for e in events
    } == {("diamond", "1.0.0", "test-engine", events[0]["execution_id"])}


async def test_json_payloads_round_trip_exactly(client: Client) -> None:
    big = 2**53 + 1  # a double would round it
    events = await client.run(
        spec(
            "echo",
            [{"id": "a", "lua": "return { n = inputs.n, f = inputs.f, nest = inputs.nest }"}],
        ),
        {"n": big, "f": 0.5, "nest": {"list": [1, [2, {"x": "y"}]]}},
        execution_id="my-run-1",
    )
    assert events[-1]["data"]["outputs"] == {
        "a": {"n": big, "f": 0.5, "nest": {"list": [1, [2, {"x": "y"}]]}}
    }
    assert {e["execution_id"] for e in events} == {"my-run-1"}


async def test_a_hundred_concurrent_executions_all_finish_right(client: Client) -> None:
    workflow = spec(
        "double",
        [
            {"id": "a", "lua": "return { v = inputs.n * 2 }"},
            {"id": "b", "depends_on": ["a"], "lua": "return { v = results.a.v + 1, n = inputs.n }"},
        ],
    )
    runs = await asyncio.gather(*(client.run(workflow, {"n": i}) for i in range(100)))
    assert len({events[0]["execution_id"] for events in runs}) == 100
    for i, events in enumerate(runs):
        assert events[-1]["type"] == "execution.succeeded", events[-1]
        assert events[-1]["data"]["outputs"] == {"b": {"v": 2 * i + 1, "n": i}}


async def test_resumed_nodes_are_not_run_again(client: Client) -> None:
    # numbers would make [1, 2, 3, 4] from n = 4: the completed [1, 2, 3] proves it did not run
    stream = client.execute(
        DIAMOND,
        {"n": 4},
        completed=[
            pb.CompletedNode(node_id="numbers", output_json='{"values": [1, 2, 3]}', attempts=1),
            pb.CompletedNode(node_id="sum", output_json='{"value": 100}', attempts=3),
        ],
        first_seq=41,
        execution_id="resumed-1",
        parent_execution_id="parent-9",
    )
    events = await stream.rest()
    assert events[0]["seq"] == 41
    assert events[0]["type"] == "execution.started"
    assert events[0]["data"]["resumed"] == ["numbers", "sum"]
    assert sorted(e["node_id"] for e in events if e["type"] == "node.started") == [
        "join",
        "product",
    ]
    assert events[-1]["type"] == "execution.succeeded"
    assert events[-1]["data"]["outputs"] == {"total": 106, "summary": "sum 100 + product 6"}


async def test_a_resumed_sleep_and_timeout_go_on_from_their_first_start(client: Client) -> None:
    since = time.time() - 3600 + 0.2  # SLEEPER's hour, begun elsewhere nearly an hour ago
    events = await client.run(
        spec("sleeper", [{"id": "nap", "sleep": "1h"}], timeout="2h"),
        sleeping=[pb.StartedSleep(node_id="nap", started_at=since)],
        started_at=since,
    )
    (started,) = [e for e in events if e["type"] == "node.started"]
    assert started["data"]["resumed"] is True
    assert 0 <= started["data"]["remaining_s"] <= 0.2
    assert events[-1]["type"] == "execution.succeeded"
    # the run and the node are an hour old: their durations count from the first start
    assert events[-1]["data"]["duration_ms"] >= 3_600_000
    finished = next(e for e in events if e["type"] == "node.succeeded")
    assert finished["data"]["duration_ms"] >= 3_600_000


async def test_cancel_stops_a_run_and_says_why(client: Client) -> None:
    workflow = spec(
        "cancel-me",
        [
            {"id": "nap", "sleep": "1h"},
            # sleeps, not a Lua loop: a loop would hit its instruction limit first on a fast box
            {"id": "nap2", "sleep": "1h"},
            {"id": "later", "depends_on": ["nap"], "lua": "return 1"},
        ],
    )
    stream = client.execute(workflow, execution_id="cancel-me-1")
    started: set[str] = set()
    while started != {"nap", "nap2"}:
        event = await stream.until_type("node.started")
        started.add(event["node_id"])

    listed = await client.engine.ListExecutions(
        pb.ListExecutionsRequest(workflow_id="cancel-me"), timeout=TIMEOUT
    )
    assert [(e.id, e.status) for e in listed.executions] == [("cancel-me-1", "running")]
    info = await client.engine.GetInfo(pb.GetInfoRequest(), timeout=TIMEOUT)
    assert info.engine_id == "test-engine" and info.in_flight >= 1 and info.state == "serving"

    answer = await client.engine.Cancel(
        pb.CancelRequest(execution_id="cancel-me-1", reason="test says stop"), timeout=TIMEOUT
    )
    assert answer.status == "cancelled"
    events = await stream.rest()
    cancelled = {e["node_id"]: e["data"]["error"] for e in events if e["type"] == "node.cancelled"}
    assert cancelled == {"nap": "test says stop", "nap2": "test says stop"}
    assert not [e for e in events if e["node_id"] == "later"]
    assert events[-1]["type"] == "execution.cancelled"
    assert events[-1]["data"]["error"] == "test says stop"

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.engine.Cancel(pb.CancelRequest(execution_id="cancel-me-1"), timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_closing_the_stream_cancels_the_run(
    client: Client, shared_engine: EngineProcess
) -> None:
    stream = client.execute(SLEEPER, execution_id="walked-away-1")
    await stream.until_type("node.started")
    stream.call.cancel()
    for _ in range(int(TIMEOUT / 0.05)):
        listed = await client.engine.ListExecutions(pb.ListExecutionsRequest(), timeout=TIMEOUT)
        if "walked-away-1" not in [e.id for e in listed.executions]:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the run outlived its stream")
    ended = [r for r in shared_engine.log_records() if r.get("execution_id") == "walked-away-1"]
    assert "ended handed_back" in str(ended[-1]["message"])


# -- sub-workflows ------------------------------------------------------------------------------


async def test_sub_workflow_node_waits_for_its_answer(client: Client) -> None:
    stream = client.execute(WAITS_FOR_CHILD, {"v": 21}, execution_id="parent-1")
    asked = await stream.until_type("subworkflow.requested")
    assert asked["node_id"] == "child" and asked["attempt"] == 1
    assert asked["data"] == {"workflow_id": "enrich", "version": "^1.0", "inputs": {"value": 21}}

    await client.engine.ResolveSubWorkflow(
        pb.ResolveSubWorkflowRequest(
            execution_id="parent-1", node_id="child", attempt=1, output_json='{"total": 21}'
        ),
        timeout=TIMEOUT,
    )
    events = await stream.rest()
    succeeded = {e["node_id"]: e["data"]["output"] for e in events if e["type"] == "node.succeeded"}
    assert succeeded == {"child": {"total": 21}, "use": {"doubled": 42}}
    assert events[-1]["type"] == "execution.succeeded"


async def test_sub_workflow_error_fails_the_node_and_stale_answers_are_refused(
    client: Client,
) -> None:
    stream = client.execute(WAITS_FOR_CHILD, {"v": 1}, execution_id="parent-2")
    await stream.until_type("subworkflow.requested")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.engine.ResolveSubWorkflow(
            pb.ResolveSubWorkflowRequest(
                execution_id="parent-2", node_id="child", attempt=2, output_json="{}"
            ),
            timeout=TIMEOUT,
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await client.engine.ResolveSubWorkflow(
        pb.ResolveSubWorkflowRequest(
            execution_id="parent-2", node_id="child", attempt=1, error="child said no"
        ),
        timeout=TIMEOUT,
    )
    events = await stream.rest()
    failed = [e for e in events if e["type"] == "node.failed"]
    assert [(e["node_id"], e["data"]["error"]) for e in failed] == [("child", "child said no")]
    assert events[-1]["type"] == "execution.failed"


# -- refusals -----------------------------------------------------------------------------------


async def test_invalid_spec_is_refused_with_every_problem(client: Client) -> None:
    bad = (
        "id: Bad Id\n"
        "version: 1.0\n"
        "nodes:\n"
        "  - id: a\n"
        "    lua: 'return ('\n"
        "  - id: b\n"
        "    depends_on: [c]\n"
        "    lua: return 1\n"
    )
    error = await refusal(client.execute(bad))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(error)
    fields = [f for f, _ in found]
    assert fields == ["spec.id", "spec.version", "spec.nodes[a].lua", "spec.nodes[b].depends_on"]
    descriptions = "\n".join(d for _, d in found)
    assert "line 1: id:" in descriptions
    assert "Lua syntax error" in descriptions
    assert "unknown dependency 'c'" in descriptions
    assert error.details().startswith("4 problems in workflow spec")
    for _, description in found:
        assert description in error.details()


async def test_bad_inputs_are_refused_before_anything_runs(client: Client) -> None:
    schema_spec = spec(
        "typed",
        [{"id": "a", "lua": "return 1"}],
        inputs_schema={
            "type": "object",
            "required": ["n"],
            "properties": {"n": {"type": "integer"}, "s": {"type": "string"}},
        },
    )
    error = await refusal(
        Stream(client.engine.Execute(pb.ExecuteRequest(spec=schema_spec, inputs_json='{"n": ')))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in violations(error)] == ["inputs_json"]

    error = await refusal(client.execute(schema_spec, {"s": 5}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(violations(error)) == [
        ("inputs_json", 'inputs.s: 5 is not of type "string"'),
        ("inputs_json", 'inputs: "n" is a required property'),
    ]

    error = await refusal(
        client.execute(DIAMOND, completed=[pb.CompletedNode(node_id="nope", output_json="{}")])
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == [("completed[nope]", "no such node in diamond@1.0.0")]

    error = await refusal(
        client.execute(
            DIAMOND,
            completed=[pb.CompletedNode(node_id="sum", output_json="{}")],
            sleeping=[
                pb.StartedSleep(node_id="numbers", started_at=1.0),
                pb.StartedSleep(node_id="sum", started_at=1.0),
                pb.StartedSleep(node_id="gone", started_at=float("nan")),
            ],
            started_at=-5.0,
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == [
        ("sleeping[sum]", "the node is listed as completed too"),
        ("sleeping[gone].started_at", "must be unix seconds, got nan"),
        ("started_at", "must be unix seconds or 0, got -5.0"),
        ("sleeping[numbers]", "a lua node, not a sleep node"),
    ]


async def test_capacity_refuses_the_run_too_many(start_engine: StartEngine) -> None:
    engine = start_engine(CAPACITY="1")
    channel, client = await connect(engine)
    async with channel:
        first = client.execute(SLEEPER, execution_id="hold-the-slot")
        await first.until_type("node.started")
        error = await refusal(client.execute(DIAMOND))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "capacity" in (error.details() or "")
        info = await client.engine.GetInfo(pb.GetInfoRequest(), timeout=TIMEOUT)
        assert (info.capacity, info.in_flight) == (1, 1)
        # a sub-workflow run is let in past capacity: its parent may be what holds the slot
        child = await client.run(DIAMOND, {"n": 2}, parent_execution_id="hold-the-slot")
        assert child[-1]["type"] == "execution.succeeded"

        await client.engine.Cancel(pb.CancelRequest(execution_id="hold-the-slot"), timeout=TIMEOUT)
        await first.rest()
        events = await client.run(DIAMOND, {"n": 2})  # the slot is free again
        assert events[-1]["type"] == "execution.succeeded"


# -- shutdown -----------------------------------------------------------------------------------


async def wait_not_serving(client: Client) -> None:
    for _ in range(int(TIMEOUT / 0.05)):
        if await client.health_status() == health_pb2.HealthCheckResponse.NOT_SERVING:
            return
        await asyncio.sleep(0.05)
    pytest.fail("health never turned NOT_SERVING")


async def test_sigterm_lets_the_run_in_flight_finish_then_exits_0(
    start_engine: StartEngine,
) -> None:
    engine = start_engine(DRAIN_GRACE="120")
    channel, client = await connect(engine)
    async with channel:
        assert await client.health_status() == health_pb2.HealthCheckResponse.SERVING
        assert (
            await client.health_status("dagengine.v1.Engine")
            == health_pb2.HealthCheckResponse.SERVING
        )
        stream = client.execute(WAITS_FOR_CHILD, {"v": 5}, execution_id="in-flight")
        await stream.until_type("subworkflow.requested")

        engine.terminate()
        await wait_not_serving(client)
        info = await client.engine.GetInfo(pb.GetInfoRequest(), timeout=TIMEOUT)
        assert (info.state, info.in_flight) == ("draining", 1)
        error = await refusal(client.execute(DIAMOND))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in (error.details() or "")

        await client.engine.ResolveSubWorkflow(
            pb.ResolveSubWorkflowRequest(
                execution_id="in-flight", node_id="child", attempt=1, output_json='{"total": 4}'
            ),
            timeout=TIMEOUT,
        )
        events = await stream.rest()
        assert events[-1]["type"] == "execution.succeeded"
        assert events[-1]["data"]["outputs"] == {"use": {"doubled": 8}}
    assert await asyncio.to_thread(exit_code, engine) == 0


async def test_sigterm_hands_back_what_outlives_the_grace_unfinished(
    start_engine: StartEngine,
) -> None:
    # the run is the orchestrator's to resume elsewhere: cancelling it here would end it for good
    engine = start_engine(DRAIN_GRACE="0.2")
    channel, client = await connect(engine)
    async with channel:
        stream = client.execute(WAITS_FOR_CHILD, {"v": 5})
        await stream.until_type("subworkflow.requested")
        engine.terminate()
        error = await refusal(stream)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "engine test-engine is shutting down" in (error.details() or "")
    kinds = [e["type"] for e in stream.events]
    assert not [k for k in kinds if k.endswith(".cancelled")], kinds
    assert await asyncio.to_thread(exit_code, engine) == 0


# -- the process --------------------------------------------------------------------------------


async def test_reflection_lists_engine_and_health(client: Client) -> None:
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    call = client.reflection.ServerReflectionInfo(iter([request]))
    names = set()
    async for response in call:
        names |= {s.name for s in response.list_services_response.service}
    assert {"dagengine.v1.Engine", "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CAPACITY": "abc"}, "error: CAPACITY must be a positive integer, got 'abc'"),
        (
            {"PORT": "70000"},
            "error: PORT must be a port number from 0 (any free port) to 65535, got '70000'",
        ),
        (
            {"DRAIN_GRACE": "soon"},
            "error: DRAIN_GRACE must be a number of seconds (0 or more), got 'soon'",
        ),
        ({"LOG_FORMAT": "xml"}, "error: LOG_FORMAT must be json or plain, got 'xml'"),
    ],
)
def test_a_bad_environment_value_stops_start_up(
    start_engine: StartEngine, env: dict[str, str], message: str
) -> None:
    engine = start_engine(wait=False, **{"LOG_FORMAT": "plain", **env})
    assert engine.wait(TIMEOUT) == 2
    assert engine.log().strip() == message


def test_a_refused_setting_is_a_json_line_when_logs_are_json(start_engine: StartEngine) -> None:
    engine = start_engine(wait=False, CAPACITY="abc", LOG_FORMAT="json")
    assert engine.wait(TIMEOUT) == 2
    [line] = engine.log().strip().splitlines()
    record = json.loads(line)
    assert record["level"] == "error" and record["logger"] == "engine.settings"
    assert record["message"] == "CAPACITY must be a positive integer, got 'abc'"


async def test_metrics_count_runs_and_events(start_engine: StartEngine) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        metrics_port = s.getsockname()[1]
    engine = start_engine(METRICS_PORT=str(metrics_port))
    channel, client = await connect(engine)
    async with channel:
        events = await client.run(DIAMOND, {"n": 3})
        # one run cancelled when asked, one let go when its caller's stream ends (as when the
        # orchestrator restarts: it resumes the run, so that is not a cancel)
        asked = client.execute(SLEEPER, execution_id="asked")
        left = client.execute(SLEEPER, execution_id="left")
        await asked.until_type("node.started")
        await left.until_type("node.started")
        await client.engine.Cancel(pb.CancelRequest(execution_id="asked"), timeout=TIMEOUT)
        await asked.rest()
        left.call.cancel()
        for _ in range(int(TIMEOUT / 0.05)):
            listed = await client.engine.ListExecutions(pb.ListExecutionsRequest(), timeout=TIMEOUT)
            if not listed.executions:
                break
            await asyncio.sleep(0.05)

    def scrape() -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{metrics_port}/metrics", timeout=TIMEOUT
        ) as r:
            return str(r.read().decode())

    text = await asyncio.to_thread(scrape)
    assert "dagengine_engine_executions_started_total 3.0" in text
    assert 'dagengine_engine_executions_finished_total{status="succeeded"} 1.0' in text
    assert 'dagengine_engine_executions_finished_total{status="cancelled"} 1.0' in text
    assert 'dagengine_engine_executions_finished_total{status="handed_back"} 1.0' in text
    assert 'dagengine_engine_node_duration_seconds_count{status="succeeded"} 4.0' in text
    [streamed] = [
        float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("dagengine_engine_events_streamed_total ")
    ]
    assert streamed >= len(events) + 5  # and those of the two sleepers, as far as they went
    assert "dagengine_engine_executions_in_flight 0.0" in text
    assert "dagengine_engine_lua_workers_given_up 0.0" in text
    assert "dagengine_engine_lua_tasks_queued 0.0" in text  # nothing waits for a worker now


def test_serve_subcommand_serves_too(tmp_path: Path) -> None:
    engine = wait_until_serving(spawn_engine(tmp_path / "engine.log", "serve"))
    engine.terminate()
    assert engine.wait(TIMEOUT) == 0


async def test_bytes_that_are_not_the_request_message_are_invalid_argument(
    shared_engine: EngineProcess,
) -> None:
    async with grpc.aio.insecure_channel(shared_engine.address) as channel:
        for method, streaming in (("Execute", True), ("Cancel", False)):
            path = f"/dagengine.v1.Engine/{method}"
            if streaming:
                call: Any = channel.unary_stream(path)(b"\xff\xff\xff").read()
            else:
                call = channel.unary_unary(path)(b"\xff\xff\xff")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            error = caught.value
            # before: UNKNOWN, and a traceback in the engine's log for each one
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
            assert (error.details() or "").startswith("request: the request is not a valid message")
            assert violations(error)[0][0] == "request"
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert "DecodeError" not in shared_engine.log()
