"""ENGINE_TOKEN on the link between the orchestrator and its engines, with real processes.

An engine with a token answers every ``dagengine.v1.Engine`` call without it UNAUTHENTICATED,
and one with another token PERMISSION_DENIED, before the request is even parsed; health and
reflection stay open. An orchestrator with the same token runs workflows on such engines as
before; one without it, or with another, shows each engine not ready with a last error that
names ENGINE_TOKEN, and the runs it is given wait in the queue until it has the right one.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from engine.api import dagengine_pb2 as pb
from engine.api import dagengine_pb2_grpc as pb_grpc
from engine.core.envparse import SettingsError
from engine.settings import Settings as EngineSettings
from orchestrator.dagctl import main as dagctl
from orchestrator.local import LocalCluster
from orchestrator.settings import Settings as OrchestratorSettings
from tests.integration.api import get, register, start, wait_end, wait_for
from tests.integration.conftest import EngineProcess, StartCluster, StartEngine, stop_process

pytestmark = pytest.mark.slow

TOKEN = "engine-token-for-the-tests-0123456789abcdef"
OTHER = "engine-token-for-the-tests-0123456789abcdeX"
ENGINE = "dagengine.v1.Engine"

ONE_NODE = json.dumps(
    {"id": "one", "version": "1.0.0", "nodes": [{"id": "a", "lua": "return {x = 1}"}]}
)
PARENT = """
id: parent
version: 1.0.0
nodes:
  - id: ask
    workflow: {id: child, version: "^1"}
    inputs: {n: 20}
  - id: after
    depends_on: [ask]
    lua: return { doubled = results.ask.twice.n * 2 }
"""
CHILD = """
id: child
version: 1.0.0
nodes:
  - id: twice
    lua: return { n = inputs.n * 2 }
"""
NAP = """
id: nap
version: 1.0.0
nodes:
  - id: pause
    sleep: 60s
"""


def metadata(token: str | None, scheme: str = "Bearer") -> tuple[tuple[str, str], ...] | None:
    return None if token is None else (("authorization", f"{scheme} {token}"),)


def every_method(
    stub: pb_grpc.EngineStub,
) -> dict[str, Callable[[Any], Awaitable[object]]]:
    """Each method of the Engine service, called with the given metadata, awaited to its end."""

    async def execute(md: Any) -> object:
        return [m async for m in stub.Execute(pb.ExecuteRequest(spec=ONE_NODE), metadata=md)]

    return {
        "Execute": execute,
        "Cancel": lambda md: stub.Cancel(pb.CancelRequest(execution_id="nope"), metadata=md),
        "ResolveSubWorkflow": lambda md: stub.ResolveSubWorkflow(
            pb.ResolveSubWorkflowRequest(execution_id="nope", node_id="n", attempt=1),
            metadata=md,
        ),
        "GetInfo": lambda md: stub.GetInfo(pb.GetInfoRequest(), metadata=md),
        "ListExecutions": lambda md: stub.ListExecutions(pb.ListExecutionsRequest(), metadata=md),
    }


async def refusal(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    return refused.value.code(), refused.value.details() or ""


def guarded_engine(start_engine: StartEngine) -> EngineProcess:
    # surrounding whitespace is not part of the token, as with API_TOKEN
    return start_engine(ENGINE_TOKEN=f"  {TOKEN}\n")


# -- the engine's side ----------------------------------------------------------------------


async def test_an_engine_with_a_token_refuses_every_call_without_it(
    start_engine: StartEngine,
) -> None:
    engine = guarded_engine(start_engine)
    async with grpc.aio.insecure_channel(engine.address) as channel:
        methods = every_method(pb_grpc.EngineStub(channel))
        for name, call in methods.items():
            code, details = await refusal(call(None))
            assert code == grpc.StatusCode.UNAUTHENTICATED, name
            assert "ENGINE_TOKEN" in details, name
            for sent in (metadata(OTHER), metadata(TOKEN[:-1]), metadata(TOKEN + "x")):
                code, details = await refusal(call(sent))
                assert (code, details) == (
                    grpc.StatusCode.PERMISSION_DENIED,
                    "the bearer token is not this engine's ENGINE_TOKEN",
                ), name
            # the token, but not as a bearer token
            code, _ = await refusal(call(metadata(TOKEN, scheme="Basic")))
            assert code == grpc.StatusCode.UNAUTHENTICATED, name
            code, _ = await refusal(call((("authorization", "Bearer "),)))
            assert code == grpc.StatusCode.UNAUTHENTICATED, name
        # refused before the request is parsed: bytes that are no message, and a spec that
        # is no spec, get the same answer, not INVALID_ARGUMENT
        raw = channel.unary_unary(f"/{ENGINE}/GetInfo")
        code, _ = await refusal(raw(b"\xff\xff\xff", metadata=metadata(OTHER)))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        stub = pb_grpc.EngineStub(channel)
        code, _ = await refusal(
            stub.Execute(pb.ExecuteRequest(spec="not: [a spec"), metadata=None).read()
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED
    # one line for the lot (a flood of refusals is not a flood of log lines), at WARNING
    refused = [r for r in engine.log_records() if r.get("event") == "engine.refused"]
    assert len(refused) == 1, refused
    assert refused[0]["level"] == "warning"
    assert "without this engine's ENGINE_TOKEN" in str(refused[0]["message"])
    assert TOKEN not in engine.log() and OTHER not in engine.log()
    serving = next(r for r in engine.log_records() if r.get("event") == "serving")
    assert "calls need ENGINE_TOKEN" in str(serving["message"])


async def test_an_engine_with_a_token_serves_it_and_keeps_health_and_reflection_open(
    start_engine: StartEngine,
) -> None:
    engine = guarded_engine(start_engine)
    right = metadata(TOKEN)
    async with grpc.aio.insecure_channel(engine.address) as channel:
        stub = pb_grpc.EngineStub(channel)
        info = await stub.GetInfo(pb.GetInfoRequest(), metadata=right)
        assert info.engine_id == "test-engine"
        events: list[pb.Event] = []
        async for message in stub.Execute(pb.ExecuteRequest(spec=ONE_NODE), metadata=right):
            events.extend(message.events)
        assert events[-1].type == "execution.succeeded"
        listed = await stub.ListExecutions(pb.ListExecutionsRequest(), metadata=right)
        assert list(listed.executions) == []
        # past the gate, to the service's own answers
        code, _ = await refusal(stub.Cancel(pb.CancelRequest(execution_id="nope"), metadata=right))
        assert code == grpc.StatusCode.NOT_FOUND
        # the scheme's case is the client's to choose, as in HTTP
        await stub.GetInfo(pb.GetInfoRequest(), metadata=metadata(TOKEN, scheme="bearer"))
        # health and reflection ask for nothing: probes and the orchestrator's checks use them
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", ENGINE):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # while the service itself is closed to a caller without the token
        code, _ = await refusal(stub.GetInfo(pb.GetInfoRequest()))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = [s.name async for a in answers for s in a.list_services_response.service]
        assert ENGINE in names


async def test_an_engine_without_a_token_serves_anyone_and_ignores_one_sent(
    shared_engine: EngineProcess,
) -> None:
    """Unset, as before; and an orchestrator given the token first (a rollout: the token goes
    to the orchestrator, then to the engines) keeps its engines meanwhile."""
    async with grpc.aio.insecure_channel(shared_engine.address) as channel:
        stub = pb_grpc.EngineStub(channel)
        for sent in (None, metadata(TOKEN)):
            info = await stub.GetInfo(pb.GetInfoRequest(), metadata=sent)
            assert info.state == "serving"


def test_both_services_read_the_token_the_same_way() -> None:
    for read in (
        lambda env: EngineSettings.from_env(env).engine_token,
        lambda env: OrchestratorSettings.from_env(env).engine_token,
    ):
        assert read({}) is None
        assert read({"ENGINE_TOKEN": "  "}) is None
        assert read({"ENGINE_TOKEN": f"\t{TOKEN} \n"}) == TOKEN
        with pytest.raises(SettingsError, match=r"^ENGINE_TOKEN: character 3 \('é'\) cannot go"):
            read({"ENGINE_TOKEN": "abé"})
    # a secret: not in what a settings object shows of itself
    assert TOKEN not in repr(EngineSettings.from_env({"ENGINE_TOKEN": TOKEN}))
    assert TOKEN not in repr(OrchestratorSettings.from_env({"ENGINE_TOKEN": TOKEN}))


# -- the orchestrator's side ----------------------------------------------------------------


async def test_an_orchestrator_with_the_token_runs_workflows_on_guarded_engines(
    start_cluster: StartCluster,
) -> None:
    cluster = start_cluster(engine_env={"ENGINE_TOKEN": TOKEN}, ENGINE_TOKEN=TOKEN)
    url = cluster.url
    async with aiohttp.ClientSession() as http:
        await wait_for(
            "both engines ready",
            lambda: _states(http, url, lambda states: states == ["ready", "ready"]),
        )
        for spec in (CHILD, PARENT, NAP):
            await register(http, url, spec)
        # Execute, and ResolveSubWorkflow for the child's answer
        doc = await wait_end(http, url, await start(http, url, "parent"))
        assert doc["status"] == "succeeded", doc
        assert doc["outputs"] == {"after": {"doubled": 80}}
        # Cancel, on the engine the run is on
        eid = await start(http, url, "nap")

        async def napping() -> bool:
            found = await get(http, f"{url}/api/v1/executions/{eid}")
            return bool(found["nodes"]["pause"]["status"] == "running")

        await wait_for("the nap to start", napping)
        async with http.post(f"{url}/api/v1/executions/{eid}/cancel") as resp:
            assert resp.status == 200, await resp.text()
        doc = await wait_end(http, url, eid)
        assert doc["status"] == "cancelled", doc
    for engine in cluster.engines:
        assert "engine.refused" not in engine.log()
        # guarded all along: the orchestrator's calls carried the token
        async with grpc.aio.insecure_channel(engine.address) as channel:
            code, _ = await refusal(pb_grpc.EngineStub(channel).GetInfo(pb.GetInfoRequest()))
            assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_without_the_right_token_engines_are_not_ready_and_runs_wait_for_one(
    start_cluster: StartCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = start_cluster(engines=1, engine_env={"ENGINE_TOKEN": TOKEN}, ENGINE_TOKEN="")
    url = cluster.url
    async with aiohttp.ClientSession() as http:
        # no token at all
        (engine,) = await wait_for(
            "the engine to be refused", lambda: _engines(http, url, "UNAUTHENTICATED")
        )
        assert engine["state"] == "unhealthy"
        assert "set ENGINE_TOKEN on the orchestrator" in engine["last_error"]
        await register(http, url, CHILD)
        async with http.get(f"{url}/readyz") as resp:
            ready = await resp.json()
        assert "0 engine(s) ready" in str(ready), ready
        # another token: said so where `dagctl get engines` shows it
        stop_process(cluster.orchestrator.proc)
        cluster.restart_orchestrator(ENGINE_TOKEN=OTHER)
        url = cluster.url
        (engine,) = await wait_for(
            "the engine to be refused", lambda: _engines(http, url, "PERMISSION_DENIED")
        )
        assert engine["state"] == "unhealthy"
        assert "ENGINE_TOKEN differs from the engine's" in engine["last_error"]
        capsys.readouterr()
        assert dagctl(["get", "engines"], {"DAGCTL_SERVER": url}) == 0
        shown = capsys.readouterr().out
        assert "LAST ERROR" in shown and "PERMISSION_DENIED" in shown, shown
        assert "ENGINE_TOKEN" in shown, shown
        # a run is taken, and waits: not sent to an engine that would refuse it
        async with http.post(f"{url}/trigger/child", json={"inputs": {"n": 4}}) as resp:
            assert resp.status == 202, await resp.text()
            eid = (await resp.json())["execution_id"]
        # two health checks begin after it, the first over by the second (a refusal is
        # answered at once): an engine a check found ready would have had the run by then
        checked = (await get(http, f"{url}/api/v1/engines"))["engines"][0]["checked_at"]
        for _ in range(2):
            checked = await _checked_after(http, url, checked)
        doc = await get(http, f"{url}/api/v1/executions/{eid}")
        assert doc["status"] == "queued", doc
        # the right token: the engine joins, and the run that waited runs
        stop_process(cluster.orchestrator.proc)
        cluster.restart_orchestrator(ENGINE_TOKEN=TOKEN)
        url = cluster.url
        doc = await wait_end(http, url, eid)
        assert doc["status"] == "succeeded", doc
        assert doc["outputs"] == {"twice": {"n": 8}}
        (engine,) = (await get(http, f"{url}/api/v1/engines"))["engines"]
        assert (engine["state"], engine["last_error"]) == ("ready", None)
    log = cluster.orchestrator.log()
    assert TOKEN not in log and OTHER not in log


async def test_local_engines_take_the_orchestrators_token(tmp_path: Path) -> None:
    """TRANSPORT_TYPE=local and LocalCluster: the engines in the orchestrator's process listen
    on loopback ports like any, and are guarded by the same token."""
    settings = OrchestratorSettings(engine_token=TOKEN)
    async with LocalCluster(engines=1, state_db=tmp_path / "state.db", settings=settings) as c:
        await c.register(CHILD)
        run = await c.execute("child", inputs={"n": 3}, wait=30)
        assert run["status"] == "succeeded", run
        (link,) = c.orchestrator.fleet.links.values()
        async with grpc.aio.insecure_channel(link.address) as channel:
            stub = pb_grpc.EngineStub(channel)
            code, _ = await refusal(stub.GetInfo(pb.GetInfoRequest()))
            assert code == grpc.StatusCode.UNAUTHENTICATED


async def _engines(http: aiohttp.ClientSession, url: str, code: str) -> list[Any] | None:
    """The engines listed, once every one has a last error with ``code``."""
    engines: list[Any] = (await get(http, f"{url}/api/v1/engines"))["engines"]
    if engines and all(code in (e.get("last_error") or "") for e in engines):
        return engines
    return None


async def _checked_after(http: aiohttp.ClientSession, url: str, checked: str) -> str:
    """When the one engine's next health check began, once it has."""

    async def newer() -> str | None:
        (engine,) = (await get(http, f"{url}/api/v1/engines"))["engines"]
        return None if engine["checked_at"] == checked else str(engine["checked_at"])

    found: str = await wait_for("the next health check", newer)
    return found


async def _states(
    http: aiohttp.ClientSession, url: str, wanted: Callable[[list[str]], bool]
) -> bool:
    engines = (await get(http, f"{url}/api/v1/engines"))["engines"]
    return wanted([e["state"] for e in engines])
