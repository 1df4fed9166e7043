"""Bad requests to the engine, through the real wire format, Lua and gRPC: each is refused with
a field problem naming what is wrong, where before it was taken and broke something later (an
event that could not be sent, a seq past the store's bound, an id of a megabyte in an event)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import status_pb2

from engine import wire
from engine.api import dagengine_pb2 as pb
from engine.api import dagengine_pb2_grpc as pb_grpc
from engine.core.events import Event
from engine.errors import BadRequest
from engine.inputs import check_inputs
from engine.loading import spec_from_document
from engine.lua import MISSING, LuaPool, LuaSandbox, LuaTask
from engine.running import Execution
from engine.serving import EngineServer, spec_from_request
from engine.settings import Settings
from orchestrator.dispatching import _TOO_LARGE, RunTicket, execute_request
from orchestrator.timeline import resume_point

RETRIES = json.dumps(
    {
        "id": "w",
        "version": "1.0.0",
        "nodes": [
            {"id": "a", "retry": {"max_attempts": 3}, "lua": "return 1"},
            {
                "id": "each",
                "foreach": [1, 2, 3],
                "retry": {"max_attempts": 2},
                "lua": "return ctx.item",
            },
            {"id": "once", "lua": "return 2"},
        ],
    }
)


def order(spec: str = RETRIES, **fields: Any) -> wire.RunOrder:
    return wire.run_order(pb.ExecuteRequest(spec=spec, **fields), spec_from_request, check_inputs)


def problems(spec: str = RETRIES, **fields: Any) -> list[tuple[str, str]]:
    with pytest.raises(BadRequest) as caught:
        order(spec, **fields)
    return [(p.field, p.message) for p in caught.value.problems]


# -- 1. retried[].failed ------------------------------------------------------------------------


def test_a_failed_count_whose_next_attempt_no_event_can_hold_is_a_field_problem() -> None:
    # before: attempt 2^31 did not fit Event.attempt (int32), and the stream died UNKNOWN
    assert problems(retried=[pb.RetriedNode(node_id="a", failed=2**31 - 1)]) == [
        (
            "retried[a].failed",
            "must be at most 2^31 - 2, so the next attempt fits an event's attempt number; "
            f"got {2**31 - 1}",
        )
    ]


@pytest.mark.parametrize(
    ("node", "item", "failed", "max_attempts"),
    [("a", None, 3, 3), ("a", None, 5, 3), ("each", 1, 2, 2), ("once", None, 1, 1)],
)
def test_a_failed_count_at_or_past_max_attempts_is_a_field_problem(
    node: str, item: int | None, failed: int, max_attempts: int
) -> None:
    # before: max_attempts 3 and failed 5 ran attempt 6
    field = f"retried[{node}{'' if item is None else f'/{item}'}].failed"
    assert problems(retried=[pb.RetriedNode(node_id=node, item=item, failed=failed)]) == [
        (
            field,
            f"must be below the node's retry.max_attempts ({max_attempts}): a node with no "
            f"attempt left has ended, and is sent as completed with status failed; got {failed}",
        )
    ]


def test_a_failed_count_below_max_attempts_is_taken() -> None:
    got = order(
        retried=[
            pb.RetriedNode(node_id="a", failed=2),
            pb.RetriedNode(node_id="each", item=2, failed=1),
        ]
    )
    assert got.retried == {("a", None): 2, ("each", 2): 1}


FLAKY = {
    "id": "flaky",
    "version": "1.0.0",
    "nodes": [
        # fails twice, then succeeds on its last attempt
        {
            "id": "a",
            "retry": {"max_attempts": 3, "delay": "1ms"},
            "lua": "if ctx.attempt < 3 then error('not yet') end return ctx.attempt",
        },
        # each item fails its first attempt; item 1 fails its second, the last, too
        {
            "id": "each",
            "foreach": [0, 1, 2],
            "retry": {"max_attempts": 2, "delay": "1ms"},
            "lua": "if ctx.attempt == 1 or ctx.item == 1 then error('no') end return ctx.item",
        },
        {
            "id": "never",
            "retry": {"max_attempts": 2, "delay": "1ms"},
            "lua": "error('never')",
        },
    ],
}


async def test_every_resume_the_orchestrator_could_send_after_retries_is_taken() -> None:
    """The bound refuses nothing the orchestrator sends: after any event of a run that retries
    and runs out of attempts, the resume it would read from the events is taken."""
    events: list[Event] = []
    async with LuaPool(workers=1) as pool:
        spec = spec_from_document(FLAKY)
        execution = Execution(spec, {}, pool=pool, on_event=events.append)
        doc = await asyncio.wait_for(execution.run_to_end(), 60)
    nodes: Any = doc["nodes"]
    statuses = {n: nodes[n]["status"] for n in ("a", "each", "never")}
    assert statuses == {"a": "succeeded", "each": "failed", "never": "failed"}
    stored = [e.to_dict() for e in events]
    seen: set[tuple[str, int | None]] = set()
    for end in range(len(stored)):
        resume = resume_point(stored[: end + 1])
        seen |= set(resume.retried)
        ticket = RunTicket(
            "e",
            "flaky",
            "1.0.0",
            json.dumps(FLAKY),
            {},
            "running",
            checkpoints=resume.checkpoints,
            next_seq=end + 2,
            retried=resume.retried,
        )
        request = execute_request(ticket)  # as the dispatcher sends it
        wire.run_order(request, spec_from_request, check_inputs)
    assert {("a", None), ("each", 1), ("never", None)} <= seen  # resumes with retries were tried


# -- 5. first_seq -------------------------------------------------------------------------------


def test_a_first_seq_that_leaves_the_run_no_room_below_the_highest_seq_is_refused() -> None:
    # before: 2^53 was taken, and the run's next events went past wire.MAX_SEQ
    assert problems(first_seq=2**53) == [
        ("first_seq", f"must be at most 2^52, so the run's events stay within 2^53; got {2**53}")
    ]
    assert problems(first_seq=2**52 + 1)[0][0] == "first_seq"
    assert order(first_seq=2**52).first_seq == 2**52


# -- 7. ids that go into events -----------------------------------------------------------------


@pytest.mark.parametrize("parent", ["p" * 1_000_000, "has space", "-starts-with-a-dash"])
def test_a_parent_execution_id_that_is_no_id_is_refused(parent: str) -> None:
    assert problems(parent_execution_id=parent) == [
        (
            "parent_execution_id",
            f"{parent[:80]!r} is not an id: use up to 128 letters, digits and . _ : -",
        )
    ]


def test_a_parent_execution_id_that_is_an_id_is_taken_and_an_empty_one_is_none() -> None:
    assert order(parent_execution_id="0190f3a2b4c5-d.e:f").parent_execution_id == (
        "0190f3a2b4c5-d.e:f"
    )
    assert order(parent_execution_id="").parent_execution_id is None


def answer_problems(**fields: Any) -> list[tuple[str, str]]:
    request = pb.ResolveSubWorkflowRequest(execution_id="e", node_id="n", attempt=1, **fields)
    with pytest.raises(BadRequest) as caught:
        wire.sub_workflow_answer(request)
    return [(p.field, p.message) for p in caught.value.problems]


def test_a_child_execution_id_that_is_no_id_is_refused() -> None:
    # before: a megabyte id was taken into the run's subworkflow.started event
    child = "c" * 1_000_000
    assert answer_problems(child_execution_id=child) == [
        ("child_execution_id", f"{child[:80]!r} is not an id: use up to 128 letters, digits and . _ : -")
    ]  # fmt: skip


def test_a_child_status_or_version_that_is_none_is_refused() -> None:
    got = answer_problems(
        child_execution_id="c1", child_status="x" * 100_000, child_version="v1", output_json="{}"
    )
    assert [field for field, _ in got] == ["child_status", "child_version"]
    assert got[0][1].endswith(
        "is not an execution status: use one of queued, running, succeeded, partial, failed, "
        "cancelled, timed_out"
    )
    assert len(got[0][1]) < 300
    assert got[1][1] == "'v1' is not a SemVer version"


def test_a_child_answer_that_contradicts_itself_is_refused() -> None:
    # before: taken; the node succeeded on the output while its event said the child failed
    assert answer_problems(child_status="failed", output_json="{}") == [
        (
            "child_status",
            "'failed' with output_json: an output comes with 'succeeded'; a child that did not "
            "succeed is answered with error",
        )
    ]
    assert answer_problems(child_execution_id="e", error="x") == [
        ("child_execution_id", "is the run itself")
    ]


def test_a_well_formed_child_answer_is_taken() -> None:
    request = pb.ResolveSubWorkflowRequest(
        execution_id="e",
        node_id="n",
        attempt=1,
        child_execution_id="0190f3a2b4c5abcdef",
        child_status="succeeded",
        child_version="1.2.3-rc.1+build.5",
        output_json='{"x": 1}',
    )
    got = wire.sub_workflow_answer(request)
    assert (got.child_execution_id, got.child_status, got.child_version, got.output) == (
        "0190f3a2b4c5abcdef",
        "succeeded",
        "1.2.3-rc.1+build.5",
        {"x": 1},
    )


# -- 6. ListExecutions --------------------------------------------------------------------------


def test_a_listing_with_an_unknown_status_or_a_negative_limit_is_refused() -> None:
    with pytest.raises(BadRequest) as caught:
        wire.listing(pb.ListExecutionsRequest(status="bogus", limit=-5, before="e1"))
    assert [(p.field, p.message) for p in caught.value.problems] == [
        (
            "status",
            "'bogus' is not an execution status: use one of queued, running, succeeded, "
            "partial, failed, cancelled, timed_out",
        ),
        ("limit", "must be 0 (all) or more, got -5"),
        # before: ignored, so a second page came back as the first
        ("before", "an engine's listing has no pages: leave it empty"),
    ]
    assert wire.listing(pb.ListExecutionsRequest()) == wire.Listing(None, None, 0)
    assert wire.listing(
        pb.ListExecutionsRequest(workflow_id="w", status="running", limit=3)
    ) == wire.Listing("w", "running", 3)


# -- 4. integers past a double in JSON ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"x": 1' + "0" * 4000 + "}", "10000000000000000000... (4001 digits)"),
        ("[-" + "9" * 400 + "]", "-99999999999999999999... (400 digits)"),
        ("9" * 309, "99999999999999999999... (309 digits)"),
        (str(2**1024), "17976931348623159077... (309 digits)"),
        ('{"x": 1' + "0" * 5000 + "}", "10000000000000000000... (5001 digits)"),
    ],
)
def test_an_integer_past_a_double_is_not_json_the_engine_takes(text: str, message: str) -> None:
    # before: taken (up to 4,300 digits), and every Lua node of the run failed on it
    with pytest.raises(ValueError) as caught:
        wire.loads(text)
    assert str(caught.value) == f"{message} is too large for a JSON number"


def test_integers_a_double_can_hold_stay_exact() -> None:
    largest = int(1.7976931348623157e308)  # the largest double, 309 digits
    for value in (largest, -largest, 10**308, 2**64 + 1, 9007199254740993):
        assert wire.loads(json.dumps({"n": [value], "pad": "x" * 400})) == {
            "n": [value],
            "pad": "x" * 400,
        }
        assert wire.loads(str(value)) == value


def test_an_integer_past_a_double_in_the_inputs_is_a_field_problem() -> None:
    assert problems(inputs_json='{"x": ' + "1" * 4001 + "}") == [
        (
            "inputs_json",
            "not valid JSON: 11111111111111111111... (4001 digits) is too large for a JSON number",
        )
    ]


# -- 3. Lua json.decode -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> LuaSandbox:
    return LuaSandbox()


def run_lua(sandbox: LuaSandbox, code: str) -> tuple[bool, object, str | None]:
    task = LuaTask(
        key=code,
        code=code,
        chunk_name="node",
        inputs={},
        results=lambda name: MISSING,
        ctx={"node_id": "node", "attempt": 1},
    )
    outcome = sandbox.run(task)
    return outcome.ok, outcome.value, outcome.error


@pytest.mark.parametrize(
    ("text", "column"),
    [
        ("1e999", 1),
        ("-1e999", 1),
        ("[1, 2e400]", 5),
        ("1" + "0" * 399, 1),
        ('{"x": -' + "9" * 400 + "}", 7),
    ],
)
def test_lua_json_decode_refuses_a_number_past_a_double(
    sandbox: LuaSandbox, text: str, column: int
) -> None:
    # before: decoded as inf, which no output, event or JSON text can hold
    code = f"\nlocal v = json.decode({json.dumps(text)})\nreturn {{ v = v }}"
    assert run_lua(sandbox, code) == (
        False,
        None,
        "json.decode: number too large for a double (JSON has no infinity) "
        f"at line 1 column {column} (byte {column})",
    )


def test_lua_json_decode_still_reads_large_and_tiny_numbers(sandbox: LuaSandbox) -> None:
    code = "return json.decode('[1e308, -1.5e308, 1e-999, 18446744073709551616]')"
    assert run_lua(sandbox, code) == (True, [1e308, -1.5e308, 0.0, 2.0**64], None)


# -- 2. an event past the gRPC message limit ----------------------------------------------------

LIMIT = 2 * 1024 * 1024

# one node.succeeded event of about 2.7 MB: three items of 900 KB
FAT = json.dumps(
    {
        "id": "fat",
        "version": "1.0.0",
        "nodes": [
            {
                "id": "each",
                "foreach": [1, 2, 3],
                "lua": "return string.rep('y', 900000)",
            },
            {"id": "after", "depends_on": ["each"], "lua": "return #results.each"},
        ],
    }
)


@pytest.fixture
async def small_limit_engine(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[EngineServer]:
    """An engine whose gRPC message limit is 2 MiB: gRPC's own, and the one it checks."""
    monkeypatch.setattr(wire, "MAX_MESSAGE_BYTES", LIMIT)
    server = EngineServer(Settings(engine_id="e0", host="127.0.0.1", port=0, lua_workers=1))
    await server.start()
    yield server
    await server.stop()


async def test_an_event_past_the_message_limit_ends_the_call_as_grpc_would_without_an_error_line(
    small_limit_engine: EngineServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with grpc.aio.insecure_channel(small_limit_engine.address) as channel:
        stub = pb_grpc.EngineStub(channel)
        seen: list[str] = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for message in stub.Execute(pb.ExecuteRequest(spec=FAT, execution_id="fat-1")):
                seen.extend(e.type for e in message.events)
        error = caught.value
        # what orchestrator.dispatching recognizes, to fail the run instead of running it again
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        assert _TOO_LARGE in (error.details() or ""), error.details()
        assert re.fullmatch(
            rf"message larger than max \(\d+ vs\. {LIMIT} bytes\): the node\.succeeded event "
            r"of node 'each' is too large to send",
            error.details() or "",
        ), error.details()
        assert "node.succeeded" not in seen and "execution.started" in seen
        # the run is over, and the engine goes on serving
        assert (await stub.GetInfo(pb.GetInfoRequest())).in_flight == 0
        small = json.dumps(
            {"id": "ok", "version": "1.0.0", "nodes": [{"id": "a", "lua": "return 1"}]}
        )
        after = [
            e.type async for m in stub.Execute(pb.ExecuteRequest(spec=small)) for e in m.events
        ]
        assert after[-1] == "execution.succeeded"
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert bad == [], [r.getMessage() for r in bad]
    assert any(
        r.levelno == logging.WARNING and _TOO_LARGE in r.getMessage() for r in caplog.records
    )


async def test_the_engine_refuses_a_listing_it_cannot_make_sense_of(
    small_limit_engine: EngineServer,
) -> None:
    async with grpc.aio.insecure_channel(small_limit_engine.address) as channel:
        stub = pb_grpc.EngineStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListExecutions(pb.ListExecutionsRequest(status="bogus", limit=-5))
        error = caught.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = dict(error.trailing_metadata() or ())["grpc-status-details-bin"]
        assert isinstance(details, bytes)
        fields = wire.field_violations(status_pb2.Status.FromString(details))
        assert [field for field, _ in fields] == ["status", "limit"]
        listed = await stub.ListExecutions(pb.ListExecutionsRequest(status="running"))
        assert list(listed.executions) == []


def test_a_sub_workflow_error_is_held_to_what_a_script_error_may_be() -> None:
    # before: kept whole (up to the 64 MiB message), as the node's error and in its events
    answer = wire.sub_workflow_answer(
        pb.ResolveSubWorkflowRequest(execution_id="e", node_id="n", attempt=1, error="x" * 10**6)
    )
    assert answer.error is not None
    assert answer.error.startswith("x" * wire.ERROR_CHARACTERS)
    assert answer.error.endswith(f"... ({10**6 - wire.ERROR_CHARACTERS} more characters)")
