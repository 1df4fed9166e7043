"""The fleet and ENGINE_TOKEN, against a real engine server in this process: the token goes with
every call on an engine's channel (the stream of ``Execute`` too), and an engine that refuses
it is not ready, with a last error that names ENGINE_TOKEN."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from engine.api import dagengine_pb2 as pb
from engine.serving import EngineServer
from engine.settings import Settings as EngineSettings
from orchestrator.fleet import EngineLink, Fleet
from orchestrator.ring import make_balancer

TOKEN = "fleet-token-0123456789abcdef0123456789abcdef"
SPEC = '{"id": "one", "version": "1.0.0", "nodes": [{"id": "a", "lua": "return {x = 1}"}]}'


@pytest.fixture
async def engine() -> AsyncIterator[EngineServer]:
    server = EngineServer(
        EngineSettings(
            engine_id="engine-0", host="127.0.0.1", port=0, lua_workers=1, engine_token=TOKEN
        )
    )
    await server.start()
    yield server
    await server.stop()


async def checked(engine: EngineServer, token: str | None) -> tuple[Fleet, EngineLink]:
    fleet = Fleet(
        make_balancer("consistent-hash"),
        default_capacity=10,
        health_interval=60.0,  # checks are run by hand here
        publish=lambda event: None,
        on_capacity=lambda: None,
        on_lost=lambda link: None,
        engine_token=token,
    )
    fleet.update({engine.address})
    (link,) = fleet.links.values()
    await fleet.check(link)
    return fleet, link


@pytest.mark.parametrize(
    ("token", "code", "fix"),
    [
        (None, "UNAUTHENTICATED", "set ENGINE_TOKEN on the orchestrator to the engines' token"),
        (TOKEN + "x", "PERMISSION_DENIED", "the orchestrator's ENGINE_TOKEN differs"),
    ],
)
async def test_an_engine_that_refuses_the_token_is_not_ready_and_says_why(
    engine: EngineServer, token: str | None, code: str, fix: str, caplog: pytest.LogCaptureFixture
) -> None:
    fleet, link = await checked(engine, token)
    try:
        assert link.state == "unhealthy"
        assert link.last_error is not None and link.last_error.startswith(f"{code}: ")
        assert fix in link.last_error
        assert fleet.ready() == [] and fleet.pick("any") is None
        # said once, as an error, not again at every check
        await fleet.check(link)
        refusals = [r for r in caplog.records if "refuses this orchestrator" in r.getMessage()]
        assert [r.levelname for r in refusals] == ["ERROR"]
        assert link.state == "unhealthy"
    finally:
        await fleet.close()


async def test_with_the_token_every_call_carries_it(engine: EngineServer) -> None:
    fleet, link = await checked(engine, f" {TOKEN} ".strip())
    try:
        assert (link.state, link.engine_id, link.last_error) == ("ready", "engine-0", None)
        # Execute is a stream: its calls are intercepted apart from the unary ones
        events = [
            e async for m in link.stub.Execute(pb.ExecuteRequest(spec=SPEC)) for e in m.events
        ]
        assert events[-1].type == "execution.succeeded"
        listed = await link.stub.ListExecutions(pb.ListExecutionsRequest())
        assert list(listed.executions) == []
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await link.stub.Cancel(pb.CancelRequest(execution_id="nope"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND  # past the gate
        # a caller's own authorization metadata cannot replace the token
        sent = (("authorization", "Bearer forged"), ("x-trace", "1"))
        info = await link.stub.GetInfo(pb.GetInfoRequest(), metadata=sent)
        assert info.engine_id == "engine-0"
    finally:
        await fleet.close()


async def test_an_engine_with_another_token_stays_out_of_the_ring_beside_one_that_takes_it(
    engine: EngineServer,
) -> None:
    other = EngineServer(
        EngineSettings(
            engine_id="engine-1", host="127.0.0.1", port=0, lua_workers=1, engine_token="other"
        )
    )
    await other.start()
    fleet, link = await checked(engine, TOKEN)
    try:
        fleet.update({engine.address, other.address})
        stranger = fleet.links[other.address]
        await fleet.check(stranger)
        assert stranger.state == "unhealthy"
        assert "PERMISSION_DENIED" in (stranger.last_error or "")
        assert [lk.key for lk in fleet.ready()] == ["engine-0"]
        assert {fleet.pick(str(n)) for n in range(20)} == {link}
    finally:
        await fleet.close()
        await other.stop()
