"""A large spec the engine has not parsed yet is parsed on a thread, not on the event loop: the
parse of a 200,000-node spec took 14 s there, and the engine missed its health checks
meanwhile. Asserted by the thread each parse ran on, not by a time."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator

import grpc
import pytest

from engine import serving
from engine.api import dagengine_pb2 as pb
from engine.api import dagengine_pb2_grpc as pb_grpc
from engine.core.spec import WorkflowSpec
from engine.serving import EngineServer
from tests.component.engine_helpers import serving_engine

WAIT = 30.0


def wide(workflow_id: str, nodes: int, lua: str = "return {v = 1}") -> str:
    return json.dumps(
        {
            "id": workflow_id,
            "version": "1.0.0",
            "nodes": [{"id": f"n{i}", "lua": lua} for i in range(nodes)],
        }
    )


LARGE = wide("large", 500)
SMALL = wide("small", 2)


@pytest.fixture
async def engine() -> AsyncIterator[EngineServer]:
    async with serving_engine() as server:
        yield server


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """(workflow id or the error's first line, parsed on the loop's thread) for each parse.
    Before the engine starts: its service may take the function as it is then."""
    seen: list[tuple[str, bool]] = []
    parse = serving.spec_from_request.__wrapped__  # the module's own cache would hide repeats

    def recording(text: str) -> WorkflowSpec:
        on_loop = threading.current_thread() is threading.main_thread()
        try:
            spec = parse(text)
        except Exception as error:
            seen.append((str(error).split("\n", 1)[0], on_loop))
            raise
        seen.append((spec.id, on_loop))
        return spec

    monkeypatch.setattr(serving, "spec_from_request", recording)
    return seen


async def run(engine: EngineServer, spec: str, execution_id: str) -> list[str]:
    """The types of the run's events, to its end."""
    types: list[str] = []
    async with grpc.aio.insecure_channel(engine.address) as channel:
        stub = pb_grpc.EngineStub(channel)
        request = pb.ExecuteRequest(execution_id=execution_id, spec=spec, first_seq=1)
        async for response in stub.Execute(request, timeout=WAIT):
            types.extend(event.type for event in response.events)
    return types


async def test_a_large_spec_is_parsed_on_a_thread_once(
    parses: list[tuple[str, bool]], engine: EngineServer
) -> None:
    assert len(LARGE) >= 16 * 1024 > len(SMALL)  # PARSE_OFF_LOOP
    for execution_id in ("r1", "r2"):
        types = await run(engine, LARGE, execution_id)
        assert types[-1] == "execution.succeeded"
    assert parses == [("large", False)]  # off the loop, and the second run found it parsed


async def test_a_small_spec_is_parsed_on_the_loop(
    parses: list[tuple[str, bool]], engine: EngineServer
) -> None:
    # a thread's hand-off costs more than such a parse
    assert (await run(engine, SMALL, "r1"))[-1] == "execution.succeeded"
    assert parses == [("small", True)]


async def test_a_large_bad_spec_is_refused_from_its_thread(
    parses: list[tuple[str, bool]], engine: EngineServer
) -> None:
    bad = wide("bad", 500, lua="return {")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await run(engine, bad, "r1")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [on_loop for _, on_loop in parses] == [False]  # refused without a parse on the loop


async def test_a_bad_spec_sent_again_is_refused_from_its_one_parse(
    parses: list[tuple[str, bool]], engine: EngineServer
) -> None:
    # parsing is pure: the same text is refused with the same problems, without parsing it again
    for bad in (wide("bad", 500, lua="return {"), wide("small_bad", 2, lua="return {")):
        parses.clear()
        details = []
        for execution_id in ("r1", "r2", "r3"):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await run(engine, bad, execution_id)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            details.append(caught.value.details())
        assert len(parses) == 1, parses
        assert details[0] == details[1] == details[2]
        assert "nodes[n1].lua: Lua syntax error" in details[0], details[0]


async def test_runs_of_one_new_large_spec_sent_together_wait_for_one_parse(
    parses: list[tuple[str, bool]], engine: EngineServer
) -> None:
    # each parsed it again on a thread of its own, all of them holding the GIL
    ends = await asyncio.gather(*(run(engine, LARGE, f"r{i}") for i in range(4)))
    assert [types[-1] for types in ends] == ["execution.succeeded"] * 4
    assert parses == [("large", False)]
    # a bad one is told to each of them, from its one parse (a run coming in after the parse
    # ended finds the refusal kept)
    parses.clear()
    bad = wide("bad2", 500, lua="return {")
    refused = await asyncio.gather(
        *(run(engine, bad, f"b{i}") for i in range(3)), return_exceptions=True
    )
    assert all(
        isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.INVALID_ARGUMENT
        for r in refused
    ), refused
    assert len(parses) == 1
