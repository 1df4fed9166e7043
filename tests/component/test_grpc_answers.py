"""gRPC answers. Listings a client with default options (4 MiB to receive) can always read:
triggers whose inputs together pass that come with notes saying where to read each whole, and
a workflow's name, which every listing carries, is a title, not a document. Broken JSON is
told as JSON."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from engine.api import dagengine_pb2 as pb
from engine.core.errors import SpecError
from engine.documents import parse_text
from engine.loading import spec_from_text
from orchestrator import serving_grpc
from orchestrator.checking import registration_checks
from tests.component.serving_helpers import served_facade

SPEC = {"id": "w", "version": "1.0.0", "nodes": [{"id": "a", "lua": "return 1"}]}


@pytest.fixture
async def stub(tmp_path: Path) -> AsyncIterator[Any]:
    async with served_facade(tmp_path, specs=[SPEC]) as served:
        yield served.stub


async def test_triggers_whose_inputs_pass_4_mib_together_are_listed_with_notes(
    stub: Any,
) -> None:
    inputs = json.dumps({"blob": "x" * 900_000})
    for i in range(5):
        await stub.CreateTrigger(
            pb.CreateTriggerRequest(
                workflow_id="w", cron="@yearly", id=f"t{i}", inputs_json=inputs, paused=True
            )
        )
    # before: RESOURCE_EXHAUSTED, about 4.5 MB against 4 MiB
    listed = (await stub.ListTriggers(pb.ListTriggersRequest())).triggers
    assert [t.id for t in listed] == [f"t{i}" for i in range(5)]
    read = [json.loads(t.inputs_json) for t in listed]
    notes = [n for n in read if "too_large" in n]
    assert 0 < len(notes) < 5 and all(n == json.loads(inputs) for n in read if n not in notes)
    assert [n["read_whole"] for n in notes] == [f"/api/v1/triggers/t{i}" for i in range(len(notes))]
    whole = await stub.GetTrigger(pb.TriggerRequest(trigger_id="t0"))
    assert json.loads(whole.inputs_json) == json.loads(inputs)


def test_a_workflow_name_is_a_title_when_registered() -> None:
    head = "id: w\nversion: 1.0.0\nnodes:\n  - id: a\n    lua: return 1\n"
    long = head + "name: " + "n" * 1_000_000 + "\n"
    checks = registration_checks(lambda code, expression: None)
    parse_text(head + "name: " + "n" * 200 + "\n", "wf.yaml", checks=checks)
    with pytest.raises(SpecError) as info:
        parse_text(long, "wf.yaml", checks=checks)
    # before: taken, and five such made ListWorkflows too large for a default client
    assert info.value.messages() == [
        "wf.yaml:6: name: is 1,000,000 characters: at most 200 (a title)"
    ]
    # a version stored before the limit, and its runs on an engine, go on as they were
    assert spec_from_text(long, "wf.yaml").name == "n" * 1_000_000


async def test_broken_json_registered_is_told_as_json_with_its_place(stub: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RegisterWorkflow(
            pb.RegisterWorkflowRequest(spec='{"id": "x",\n "version": "1.0.0" "nodes": []}')
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # before: "invalid YAML: ...", of a text that is JSON with a comma left out
    assert "line 2: invalid JSON: Expecting ',' delimiter" in str(caught.value.details())
    # flow-style YAML, whose keys are not quoted, is still YAML
    flow = "{id: y, version: 1.0.0, nodes: [{id: a, lua: return 1}]}"
    assert (await stub.RegisterWorkflow(pb.RegisterWorkflowRequest(spec=flow))).created


async def test_a_refused_field_comes_as_a_field_violation(stub: Any) -> None:
    from google.rpc import status_pb2

    from engine.wire import field_violations

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(workflow_id="w", inputs_json="{bad"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    packed = dict(caught.value.trailing_metadata() or ())["grpc-status-details-bin"]
    assert isinstance(packed, bytes)
    # before: an ErrorInfo alone, where the proto promises BadRequest field violations
    [(field, description)] = field_violations(status_pb2.Status.FromString(packed))
    assert field == "inputs_json"
    assert description.startswith("inputs_json is not valid JSON: ")


async def test_a_triggers_refused_inputs_are_named_as_the_field_sent(stub: Any) -> None:
    from google.rpc import status_pb2

    from engine.wire import field_violations

    for sent, field, message in [
        ("[1]", "inputs_json", "inputs_json must be a JSON object"),
        ('{"_trigger": 1}', "inputs_json._trigger", "inputs_json._trigger is set by the trigger"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateTrigger(
                pb.CreateTriggerRequest(workflow_id="w", cron="@yearly", inputs_json=sent)
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        packed = dict(caught.value.trailing_metadata() or ())["grpc-status-details-bin"]
        assert isinstance(packed, bytes)
        # before: ``inputs``, HTTP's word, a field this request does not have
        [(named, description)] = field_violations(status_pb2.Status.FromString(packed))
        assert named == field
        assert description.startswith(message)
    assert not (await stub.ListTriggers(pb.ListTriggersRequest())).triggers


async def listed_in_pages(
    served: Any,
    resource: str,
    grpc_page: Callable[[str], Awaitable[tuple[list[str], str]]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> list[list[str]]:
    """The ids of ``resource`` as HTTP (3 a page), gRPC (3 a page) and ``dagctl get`` (2 a
    page) list them, each followed page by page to the end."""
    import asyncio

    import aiohttp

    from orchestrator.dagctl import cli
    from orchestrator.dagctl import main as dagctl

    over_http: list[str] = []
    after: str | None = None
    async with aiohttp.ClientSession() as http:
        while True:
            query = {"limit": "3", **({"after": after} if after else {})}
            async with http.get(f"{served.url}/api/v1/{resource}", params=query) as resp:
                page = await resp.json()
            assert len(page[resource]) <= 3
            over_http += [item["id"] for item in page[resource]]
            after = page["next_after"]
            if after is None:
                break
    over_grpc: list[str] = []
    after = ""
    while True:
        ids, after = await grpc_page(after)
        over_grpc += ids
        if not after:
            break
    monkeypatch.setattr(cli, "PAGE", 2)
    capsys.readouterr()
    code = await asyncio.to_thread(
        dagctl, ["get", resource, "-o", "json"], {"DAGCTL_SERVER": served.url}
    )
    assert code == 0
    by_dagctl = [item["id"] for item in json.loads(capsys.readouterr().out)[resource]]
    return [over_http, over_grpc, by_dagctl]


async def test_triggers_are_listed_page_by_page_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import aiohttp

    async with served_facade(tmp_path, specs=[SPEC]) as served:
        for i in range(7):
            await served.stub.CreateTrigger(
                pb.CreateTriggerRequest(workflow_id="w", cron="@yearly", id=f"t{i}", paused=True)
            )

        async def grpc_page(after: str) -> tuple[list[str], str]:
            answer = await served.stub.ListTriggers(pb.ListTriggersRequest(limit=3, after=after))
            return [t.id for t in answer.triggers], answer.next_after

        # before: a page of 500 with nothing to say there were more
        every = [f"t{i}" for i in range(7)]
        listed = await listed_in_pages(served, "triggers", grpc_page, monkeypatch, capsys)
        assert listed == [every, every, every]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{served.url}/api/v1/triggers", params={"after": "x"}) as resp:
                assert resp.status == 400


async def test_workflows_are_listed_page_by_page_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    every = [f"w{i}" for i in range(7)]
    async with served_facade(tmp_path, specs=[{**SPEC, "id": w} for w in every]) as served:

        async def grpc_page(after: str) -> tuple[list[str], str]:
            answer = await served.stub.ListWorkflows(pb.ListWorkflowsRequest(limit=3, after=after))
            return [w.id for w in answer.workflows], answer.next_after

        # before: every workflow with every version in one answer (5 MB for 1,000 x 500)
        listed = await listed_in_pages(served, "workflows", grpc_page, monkeypatch, capsys)
        assert listed == [every, every, every]


async def test_a_long_named_version_stored_before_the_limit_registers_again_as_a_no_op(
    tmp_path: Path,
) -> None:
    import sqlite3

    from orchestrator.store import Store
    from orchestrator.versions import canonical_json

    old = {**SPEC, "name": "n" * 250}
    store = await Store.open(str(tmp_path / "state.db"))
    await store.close()
    with sqlite3.connect(tmp_path / "state.db") as conn:  # as an orchestrator before the limit
        conn.execute(
            "INSERT INTO versions (workflow_id, version, spec_json, digest, created_at)"
            " VALUES ('w', '1.0.0', ?, 'x', 0)",
            (canonical_json(old),),
        )
    async with served_facade(tmp_path) as served:
        served.orch.registry.load(await served.store.load_versions())  # as a start does
        # before: refused for its name, where the same content is a no-op (DESIGN section 4)
        again = await served.stub.RegisterWorkflow(pb.RegisterWorkflowRequest(spec=json.dumps(old)))
        assert again.created is False
        newer = json.dumps({**old, "version": "1.0.1"}, indent=1)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await served.stub.RegisterWorkflow(pb.RegisterWorkflowRequest(spec=newer))
        assert "line 10: name: is 250 characters: at most 200" in str(caught.value.details())


def ended_run(workflow_id: str, nodes: dict[str, Any], **more: Any) -> dict[str, Any]:
    """An execution document of a run that succeeded at one instant, as the store makes it."""
    at = "2026-01-01T00:00:00.000Z"
    return {
        "id": "e1",
        "workflow_id": workflow_id,
        "version": "1.0.0",
        "status": "succeeded",
        "inputs": {},
        "outputs": None,
        "error": None,
        "progress": 100,
        "created_at": at,
        "started_at": at,
        "finished_at": at,
        "parent_execution_id": None,
        "nodes": nodes,
        **more,
    }


def test_a_run_of_too_many_nodes_for_a_reply_leaves_the_last_records_off_and_counts_them() -> None:
    """60,000 node records are some 5.5 MB with every JSON field a note: the client with
    default options refused the reply, so a cancel that took place was told as failed and a
    waited-for run never told its id."""
    at = "2026-01-01T00:00:00.000Z"
    nodes = {
        f"node-{i:05d}": {
            "status": "succeeded",
            "output": {"i": i},
            "error": None,
            "attempts": 1,
            "started_at": at,
            "finished_at": at,
            "engine_id": "engine-0",
        }
        for i in range(60_000)
    }
    doc = ended_run("wide", nodes, outputs={"x": "y" * 100})
    for reply, execution in (
        (r := serving_grpc._execution_reply(doc), r),
        (c := serving_grpc._cancel_reply(doc), c.execution),
        (s := serving_grpc._started_reply(doc), s.execution),
    ):
        assert reply.ByteSize() <= serving_grpc.REPLY_BYTES
        kept = len(execution.nodes)
        assert 0 < kept < 60_000 and execution.nodes_omitted == 60_000 - kept
        assert [n.node_id for n in execution.nodes] == list(nodes)[:kept]
        assert execution.id == "e1" and execution.status == "succeeded"
    # a run that fits keeps them all, and says none were left off
    small = {**doc, "nodes": dict(list(nodes.items())[:10])}
    assert len(serving_grpc._execution_reply(small).nodes) == 10
    assert serving_grpc._execution_reply(small).nodes_omitted == 0


def test_a_run_of_too_many_children_for_a_reply_leaves_the_last_ids_off_and_counts_them() -> None:
    """A foreach over a sub-workflow of 130,000 items: their ids alone are 4.4 MB, so the
    reply passed 4 MiB once every node record was gone, and the client refused it."""
    at = "2026-01-01T00:00:00.000Z"
    children = [f"{i:032x}" for i in range(130_000)]
    node = {"status": "succeeded", "output": None, "error": None, "attempts": 1}
    node |= {"started_at": at, "finished_at": at, "engine_id": "engine-0"}
    doc = ended_run("fan", {"each": node}, children=children)
    for reply, execution in (
        (r := serving_grpc._execution_reply(doc), r),
        (c := serving_grpc._cancel_reply(doc), c.execution),
    ):
        assert reply.ByteSize() <= serving_grpc.REPLY_BYTES
        kept = len(execution.children)
        assert 100_000 < kept < 130_000 and execution.children_omitted == 130_000 - kept
        assert list(execution.children) == children[:kept]  # the first ones, in order
        assert execution.nodes_omitted == 1  # node records go first
    few = {**doc, "children": children[:10]}
    assert list(serving_grpc._execution_reply(few).children) == children[:10]
    assert serving_grpc._execution_reply(few).children_omitted == 0
