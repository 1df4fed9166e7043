"""The embedding API, fifth hunt: local engines take a token of their own, a built spec is
registered as it is, and a run's inputs are checked against its schema."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from engine.api import dagengine_pb2 as pb
from engine.api import dagengine_pb2_grpc as pb_grpc
from engine.core.builder import Workflow
from engine.core.errors import InputsError
from orchestrator.local import LocalCluster, LocalEngines
from orchestrator.settings import Settings

GIVEN = "a-token-the-caller-chose-0123456789"

CHILD = (
    Workflow("child", "1.0.0", inputs_schema={"type": "object", "required": ["n"]})
    .node("twice", lua="return { n = inputs.n * 2 }")
    .build()
)
PARENT = (
    Workflow("parent", "1.0.0", inputs_schema={"type": "object", "required": ["password"]})
    .node("hold", sleep="2s")
    .node("call", workflow={"id": "child", "version": "^1"}, inputs={"n": 4})
    .build()
)


def test_local_engines_make_a_token_when_none_is_set_and_share_it() -> None:
    first = LocalEngines(Settings(transport="local", local_engines=2))
    token = first.settings.engine_token
    assert token is not None and len(token) >= 40  # 32 random bytes, URL-safe
    assert [s.settings.engine_token for s in first._servers] == [token, token]
    # each set of engines its own: a token is never a constant anyone could read
    assert LocalEngines(Settings(transport="local")).settings.engine_token != token


def test_a_token_the_caller_gives_is_kept(tmp_path: Path) -> None:
    engines = LocalEngines(Settings(transport="local", engine_token=GIVEN))
    assert engines.settings.engine_token == GIVEN
    assert {s.settings.engine_token for s in engines._servers} == {GIVEN}
    db = tmp_path / "state.db"
    cluster = LocalCluster(engines=1, state_db=db, settings=Settings(engine_token=GIVEN))
    assert cluster.settings.engine_token == GIVEN
    assert LocalCluster(engines=1, state_db=db).settings.engine_token not in (None, GIVEN)


async def test_a_client_without_the_token_is_refused_and_the_cluster_still_runs(
    tmp_path: Path,
) -> None:
    async with LocalCluster(engines=1, state_db=tmp_path / "state.db") as cluster:
        await cluster.register(CHILD.document)
        await cluster.register(PARENT.document)
        child = await cluster.execute("child", inputs={"n": 3}, wait=30)
        assert (child["status"], child["outputs"]) == ("succeeded", {"twice": {"n": 6}})
        # a run holding a secret, running on the engine while someone else asks for it
        run = await cluster.execute("parent", inputs={"password": "hunter2"})
        while (await cluster.get_execution(str(run["id"])))["status"] != "running":
            await asyncio.sleep(0.02)
        (link,) = cluster.orchestrator.fleet.links.values()
        async with grpc.aio.insecure_channel(link.address) as channel:
            stub = pb_grpc.EngineStub(channel)
            for call in (
                stub.ListExecutions(pb.ListExecutionsRequest()),
                stub.GetInfo(pb.GetInfoRequest()),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # the run goes on, its sub-workflow node through the orchestrator, with the token
        async for event in cluster.watch(execution_id=str(run["id"])):
            last = event
        assert last["type"] == "execution.succeeded", last
        doc = await cluster.get_execution(str(run["id"]))
        assert doc["nodes"]["call"]["output"] == {"twice": {"n": 8}}, doc


async def test_a_built_spec_is_registered_as_its_document(tmp_path: Path) -> None:
    spec = (
        Workflow("built", "1.0.0")
        .node("a", lua="return { v = 1 }")
        .node("b", lua="return { v = results.a.v + 1 }", depends_on=["a"])
        .build()
    )
    async with LocalCluster(engines=1, state_db=tmp_path / "state.db") as cluster:
        stored = await cluster.register(spec)
        assert (stored["id"], stored["version"]) == ("built", "1.0.0")
        # the same spec again is the same registration, not a conflict
        await cluster.register(spec)
        run = await cluster.execute("built", wait=30)
        assert (run["status"], run["outputs"]) == ("succeeded", {"b": {"v": 2}})


async def test_inputs_the_schema_refuses_are_refused_before_a_run(tmp_path: Path) -> None:
    async with LocalCluster(engines=1, state_db=tmp_path / "state.db") as cluster:
        await cluster.register(CHILD.document)
        with pytest.raises(InputsError, match='inputs: "n" is a required property'):
            await cluster.execute("child", inputs={"m": 1}, wait=30)
        listed = await cluster.orchestrator.list_executions(
            workflow_id="child", status=None, limit=10
        )
        assert listed == []
