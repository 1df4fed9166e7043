"""The engine's wire format with the real protobuf and grpc-status libraries, and its settings."""

from __future__ import annotations

import json

import grpc
import pytest
from google.rpc import status_pb2

from engine import wire
from engine.api import dagengine_pb2 as pb
from engine.core.errors import InputsError, SpecError, SpecProblem
from engine.core.events import Event
from engine.errors import (
    AtCapacity,
    BadRequest,
    ExecutionExists,
    FieldProblem,
    NothingWaiting,
    ShuttingDown,
    UnknownExecution,
)
from engine.inputs import check_inputs
from engine.serving import spec_from_request
from engine.settings import Settings, SettingsError
from orchestrator.dispatching import RunTicket, execute_request

SPEC = json.dumps(
    {
        "id": "w",
        "version": "1.0.0",
        "inputs_schema": {"type": "object"},
        "nodes": [
            {"id": "a", "lua": "return 1"},
            {"id": "b", "depends_on": ["a"], "lua": "return 2"},
        ],
    }
)


RETRYING = json.dumps(
    {
        "id": "w",
        "version": "1.0.0",
        "nodes": [
            {"id": "a", "lua": "return 1", "retry": {"max_attempts": 3}},
            {
                "id": "b",
                "depends_on": ["a"],
                "foreach": "{{ inputs.items }}",
                "lua": "return 2",
                "retry": {"max_attempts": 2},
            },
        ],
    }
)


def order(spec: str = SPEC, **fields: object) -> wire.RunOrder:
    request = pb.ExecuteRequest(spec=spec, **fields)  # type: ignore[arg-type]
    return wire.run_order(request, spec_from_request, check_inputs)


def test_an_empty_request_gets_defaults() -> None:
    got = order()
    assert got.inputs == {} and got.first_seq == 1 and got.parent_execution_id is None
    assert len(got.execution_id) == 32
    assert got.completed == {} and got.completed_attempts == {}


def test_resume_fields_are_read() -> None:
    got = order(
        execution_id="run-1",
        parent_execution_id="p",
        first_seq=9,
        inputs_json='{"n": 9007199254740993}',
        completed=[pb.CompletedNode(node_id="a", output_json='{"v": [1, {"x": null}]}')],
    )
    assert (got.execution_id, got.parent_execution_id, got.first_seq) == ("run-1", "p", 9)
    assert got.inputs == {"n": 9007199254740993}
    assert got.completed == {"a": {"v": [1, {"x": None}]}}
    assert got.completed_attempts == {"a": 1}


def test_nodes_that_ended_otherwise_are_read_with_their_errors() -> None:
    got = order(
        completed=[
            pb.CompletedNode(node_id="a", status="failed", error="boom", attempts=3),
            pb.CompletedNode(node_id="b", status="blocked", error="upstream node 'a' failed"),
        ],
    )
    assert got.completed == {}
    assert got.ended == {"a": ("failed", "boom"), "b": ("blocked", "upstream node 'a' failed")}
    assert got.completed_attempts == {"a": 3, "b": 0}
    with pytest.raises(BadRequest) as caught:
        order(
            completed=[
                pb.CompletedNode(node_id="a", status="cancelled"),
                pb.CompletedNode(node_id="b", status="skipped", output_json="{}"),
            ]
        )
    assert [(p.field, p.message) for p in caught.value.problems] == [
        (
            "completed[a].status",
            "must be one of succeeded, blocked, failed, skipped; got 'cancelled'",
        ),
        ("completed[b].output_json", "a skipped node has no output"),
    ]


def test_retried_attempts_are_read_per_node_and_item() -> None:
    got = order(
        RETRYING,
        retried=[
            pb.RetriedNode(node_id="a", failed=2),
            pb.RetriedNode(node_id="b", item=3, failed=1),
        ],
    )
    assert got.retried == {("a", None): 2, ("b", 3): 1}
    with pytest.raises(BadRequest) as caught:
        order(
            completed=[pb.CompletedNode(node_id="a", output_json="1")],
            retried=[
                pb.RetriedNode(node_id="a", failed=1),
                pb.RetriedNode(node_id="b", failed=0),
                pb.RetriedNode(node_id="zz", item=1, failed=1),
            ],
        )
    assert [p.field for p in caught.value.problems] == ["retried[a]", "retried[b]", "retried[zz]"]


WAITS = json.dumps(
    {
        "id": "w",
        "version": "1.0.0",
        "nodes": [
            {"id": "a", "lua": "return 1"},
            {"id": "nap", "sleep": "1m"},
            {"id": "sub", "workflow": {"id": "kid", "version": "^1"}, "retry": {"max_attempts": 3}},
            {"id": "each", "workflow": {"id": "kid", "version": "^1"}, "foreach": [1, 2, 3]},
        ],
    }
)


def test_waiting_sub_workflow_attempts_are_read_beside_the_sleeps() -> None:
    got = order(
        WAITS,
        sleeping=[pb.StartedSleep(node_id="nap", started_at=5.0)],
        retried=[pb.RetriedNode(node_id="sub", failed=1)],
        waiting=[
            pb.WaitingNode(node_id="sub", attempt=2, started_at=7.5),
            pb.WaitingNode(node_id="each", item=2, started_at=6.0),  # attempt 0: the first
        ],
    )
    assert got.sleeping == {"nap": 5.0, ("sub", None, 2): 7.5, ("each", 2, 1): 6.0}
    with pytest.raises(BadRequest) as caught:
        order(
            WAITS,
            completed=[pb.CompletedNode(node_id="nap", output_json="{}")],
            waiting=[
                pb.WaitingNode(node_id="", started_at=1.0),
                pb.WaitingNode(node_id="nap", started_at=1.0),
                pb.WaitingNode(node_id="sub", attempt=2, started_at=1.0),
                pb.WaitingNode(node_id="each", item=-1, started_at=1.0),
                pb.WaitingNode(node_id="each", item=0, started_at=float("nan")),
                pb.WaitingNode(node_id="each", item=1, started_at=1.0),
                pb.WaitingNode(node_id="each", item=1, started_at=2.0),
                pb.WaitingNode(node_id="each", started_at=1.0),
                pb.WaitingNode(node_id="a", started_at=1.0),
                pb.WaitingNode(node_id="zz", started_at=1.0),
                pb.WaitingNode(node_id="sub", item=0, started_at=1.0),
            ],
        )
    assert [(p.field, p.message) for p in caught.value.problems] == [
        ("waiting[0].node_id", "required"),
        ("waiting[nap]", "the node is listed as completed too"),
        ("waiting[sub].attempt", "must be 1, the attempt after the 0 failed (retried); got 2"),
        ("waiting[each/-1].item", "must be 0 or more, got -1"),
        ("waiting[each/0].started_at", "must be unix seconds, got nan"),
        ("waiting[each/1]", "listed twice"),
        ("waiting[each].item", "required: the node runs per foreach item"),
        ("waiting[a]", "a lua node, not a sub-workflow node"),
        ("waiting[zz]", "no such node in w@1.0.0"),
        ("waiting[sub/0].item", "the node has no foreach"),
    ]


def test_a_resumed_runs_waits_reach_the_engine_as_the_orchestrator_read_them() -> None:
    ticket = RunTicket(
        "run-1",
        "w",
        "1.0.0",
        WAITS,
        {},
        "running",
        sleeping={"nap": 5.0},
        retried={("sub", None): 2},
        waiting={("sub", None, 3): 7.5, ("each", 0, 1): 6.25},
    )
    got = wire.run_order(execute_request(ticket), spec_from_request, check_inputs)
    assert got.sleeping == {"nap": 5.0, ("sub", None, 3): 7.5, ("each", 0, 1): 6.25}
    assert got.retried == {("sub", None): 2}


def test_json_nested_too_deeply_and_seqs_past_2_53_are_field_problems() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(BadRequest) as caught:
        order(
            inputs_json=deep,
            first_seq=2**62,
            completed=[pb.CompletedNode(node_id="a", output_json=deep)],
        )
    assert [(p.field, p.message) for p in caught.value.problems] == [
        ("inputs_json", "not valid JSON: nested too deeply"),
        ("first_seq", f"must be 0 to 2^53, got {2**62}"),
        ("completed[a].output_json", "not valid JSON: nested too deeply"),
    ]


def test_every_bad_field_is_named_at_once() -> None:
    with pytest.raises(BadRequest) as caught:
        order(
            execution_id="has space",
            inputs_json="{nope",
            first_seq=-1,
            completed=[
                pb.CompletedNode(node_id="a", output_json="NaN"),
                pb.CompletedNode(node_id="a", output_json="{}"),
                pb.CompletedNode(node_id="zzz", output_json="{}", attempts=-2),
            ],
        )
    fields = [p.field for p in caught.value.problems]
    assert fields == [
        "execution_id",
        "inputs_json",
        "first_seq",
        "completed[a].output_json",
        "completed[a]",
        "completed[zzz].attempts",
        "completed[zzz]",
    ]


def test_the_spec_is_judged_first_then_fields_then_inputs() -> None:
    with pytest.raises(SpecError):
        wire.run_order(
            pb.ExecuteRequest(spec="id: [", inputs_json="{"), spec_from_request, check_inputs
        )
    with pytest.raises(BadRequest) as caught:
        wire.run_order(pb.ExecuteRequest(spec=""), spec_from_request, check_inputs)
    assert caught.value.problems[0].field == "spec"
    with pytest.raises(InputsError):
        order(inputs_json="[1]")


def test_events_round_trip_with_exact_numbers_and_nulls() -> None:
    event = Event(
        3,
        1700000000.25,
        "node.succeeded",
        "info",
        "w",
        "1.0.0",
        "e1",
        "a",
        "eng",
        2,
        {"output": {"big": 2**63 - 1, "f": 0.1, "none": None}},
    )
    back = wire.event_dict(pb.Event.FromString(wire.event_message(event).SerializeToString()))
    assert back == event.to_dict()
    bare = Event(1, 1700000000.0, "execution.started", "info", "w", "1.0.0", "e1")
    assert wire.event_dict(wire.event_message(bare)) == bare.to_dict()


def test_event_batches_stay_under_the_size_limit() -> None:
    events = [
        Event(i, 0.0, "node.log", "info", "w", "1", "e", "a", None, 1, {"message": "x" * 100})
        for i in range(50)
    ]
    batches = list(wire.event_batches(events, max_bytes=1000))
    assert [e.seq for b in batches for e in b.events] == list(range(50))
    assert all(b.ByteSize() <= 1100 for b in batches) and len(batches) > 5
    huge = [Event(0, 0.0, "node.log", "info", "w", "1", "e", data={"m": "y" * 5000})]
    assert len(list(wire.event_batches(huge, max_bytes=1000))) == 1


def test_the_execution_document_becomes_its_message() -> None:
    doc = {
        "id": "e",
        "workflow_id": "w",
        "version": "1.0.0",
        "status": "running",
        "inputs": {"n": 1},
        "outputs": {},
        "error": None,
        "progress": 50,
        "created_at": "2026-01-01T00:00:00.000Z",
        "started_at": None,
        "finished_at": None,
        "parent_execution_id": None,
        "nodes": {
            "a": {
                "status": "succeeded",
                "output": {"v": 1},
                "error": None,
                "attempts": 1,
                "started_at": "t",
                "finished_at": "t",
                "engine_id": "x",
            },
            "each": {
                "status": "running",
                "output": None,
                "error": None,
                "attempts": 1,
                "started_at": "t",
                "finished_at": None,
                "engine_id": "x",
                "items_done": 450,
                "items_total": 1000,
            },
            "kept": {
                "status": "succeeded",
                "output": 2,
                "error": None,
                "attempts": 1,
                "started_at": None,
                "finished_at": "t",
                "engine_id": None,
                "reused_from": "first",
            },
        },
    }
    message = wire.execution_message(doc)  # type: ignore[arg-type]
    a, each, kept = message.nodes
    # what the HTTP document's records add, where they have it
    assert not a.HasField("reused_from") and not a.HasField("items_done")
    assert (each.items_done, each.items_total) == (450, 1000)
    assert kept.reused_from == "first" and not kept.HasField("engine_id")
    assert (message.id, message.status, message.progress) == ("e", "running", 50)
    assert json.loads(message.inputs_json) == {"n": 1}
    assert not message.HasField("error") and not message.HasField("started_at")
    assert [(n.node_id, json.loads(n.output_json)) for n in message.nodes] == [
        ("a", {"v": 1}),
        ("each", None),
        ("kept", 2),
    ]
    assert not wire.execution_message(doc, with_nodes=False).nodes  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (SpecError([SpecProblem("id", "bad")]), grpc.StatusCode.INVALID_ARGUMENT),
        (InputsError("w", ["inputs.n: bad"]), grpc.StatusCode.INVALID_ARGUMENT),
        (BadRequest([FieldProblem("f", "bad")]), grpc.StatusCode.INVALID_ARGUMENT),
        (AtCapacity("e", 1), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (ShuttingDown("e"), grpc.StatusCode.UNAVAILABLE),
        (ExecutionExists("x"), grpc.StatusCode.ALREADY_EXISTS),
        (UnknownExecution("x"), grpc.StatusCode.NOT_FOUND),
        (NothingWaiting("x", "n", None, 1), grpc.StatusCode.FAILED_PRECONDITION),
        (RuntimeError("boom"), grpc.StatusCode.INTERNAL),
    ],
)
def test_each_error_has_its_status(error: Exception, code: grpc.StatusCode) -> None:
    status = wire.grpc_status(error)
    assert status.code == code
    assert str(error) in status.details


def test_spec_problems_travel_as_field_violations() -> None:
    error = SpecError([SpecProblem("nodes[a].lua", "syntax", 4), SpecProblem("", "empty")], "spec")
    status = wire.grpc_status(error)
    ((key, value),) = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    assert wire.field_violations(status_pb2.Status.FromString(value)) == [
        ("spec.nodes[a].lua", "spec:4: nodes[a].lua: syntax"),
        ("spec", "spec: empty"),
    ]


def test_a_status_stays_small_enough_for_trailing_metadata() -> None:
    many = [SpecProblem(f"nodes[n{i}].lua", "syntax error " + "x" * 100, i) for i in range(500)]
    status = wire.grpc_status(SpecError(many, "spec"))
    ((_, value),) = status.trailing_metadata
    assert len(value) + len(status.details) < 8 * 1024
    violations = wire.field_violations(status_pb2.Status.FromString(value))
    assert violations[0][0] == "spec.nodes[n0].lua"
    assert violations[-1] == ("", f"and {500 - len(violations) + 1} more problems")
    assert status.details.endswith("more characters)")


def test_settings_defaults_and_values() -> None:
    default = Settings.from_env({"ENGINE_ID": "e"})
    assert (default.port, default.capacity, default.metrics_port, default.drain_grace) == (
        50051,
        10,
        None,
        30.0,
    )
    assert (default.lua_workers, default.log_format, default.log_level) == (None, "plain", "INFO")
    assert Settings.from_env({}).engine_id  # the host name
    got = Settings.from_env(
        {
            "ENGINE_ID": "e",
            "PORT": "0",
            "CAPACITY": "3",
            "METRICS_PORT": "9100",
            "DRAIN_GRACE": "2.5",
            "LUA_WORKERS": "4",
            "LOG_FORMAT": "JSON",
            "LOG_LEVEL": "warn",
            "HOST": "127.0.0.1",
        }
    )
    assert (got.port, got.capacity, got.metrics_port, got.drain_grace, got.lua_workers) == (
        0,
        3,
        9100,
        2.5,
        4,
    )
    assert (got.log_format, got.log_level, got.host) == ("json", "WARNING", "127.0.0.1")
    assert Settings.from_env({"METRICS_PORT": "0"}).metrics_port is None
    assert default.lua_inline is True
    assert Settings.from_env({"LUA_INLINE": "false"}).lua_inline is False


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CAPACITY": "0"}, "CAPACITY must be a positive integer, got '0'"),
        ({"LUA_WORKERS": "two"}, "LUA_WORKERS must be a positive integer, got 'two'"),
        (
            {"METRICS_PORT": "-1"},
            "METRICS_PORT must be a port number from 0 (off) to 65535, got '-1'",
        ),
        ({"DRAIN_GRACE": "inf"}, "DRAIN_GRACE must be a number of seconds (0 or more), got 'inf'"),
        (
            {"LOG_LEVEL": "loud"},
            "LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'loud'",
        ),
    ],
)
def test_a_bad_value_names_its_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert str(caught.value) == message


async def test_health_list_answers_every_service_with_its_status() -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = grpc.aio.server()
    health = await wire.add_health_and_reflection(server, "dagengine.v1.Engine")
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        await health.set("dagengine.v1.Engine", health_pb2.HealthCheckResponse.NOT_SERVING)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            # before: UNIMPLEMENTED, and an error traceback in the log for every call
            listed = await stub.List(health_pb2.HealthListRequest())  # type: ignore[attr-defined]
        assert {name: s.status for name, s in listed.statuses.items()} == {
            "": health_pb2.HealthCheckResponse.SERVING,
            "dagengine.v1.Engine": health_pb2.HealthCheckResponse.NOT_SERVING,
        }
    finally:
        await server.stop(0)


def test_what_a_request_carries_counts_toward_the_run_output_bound() -> None:
    """A resume message carries the spec, the inputs and the completed outputs: all count from
    the start, so a run is held to the same bound fresh or resumed (a large inputs_json leaves
    less room for outputs)."""
    inputs = '{"blob":"' + "x" * 5000 + '"}'
    fresh = order(inputs_json=inputs)
    assert fresh.carried_bytes == len(SPEC) + len(inputs)
    done = pb.CompletedNode(node_id="a", output_json='{"v":"' + "y" * 300 + '"}', attempts=1)
    resumed = order(inputs_json=inputs, completed=[done])
    assert resumed.carried_bytes == len(SPEC) + len(inputs) + len(done.output_json)
