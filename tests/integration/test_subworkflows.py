"""Sub-workflows end to end: an orchestrator and two engines as real processes, over HTTP.

A sub-workflow node's child is a whole execution of its own, started by the orchestrator,
routed like any other (round-robin here, so parent and child land on different engines) and
linked to the parent node's item and attempt.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from engine.api import dagengine_pb2 as pb
from engine.api import dagengine_pb2_grpc as pb_grpc
from tests.integration.api import TOKEN, get, register, start, wait_end, wait_for
from tests.integration.conftest import Cluster, StartCluster, running_cluster

pytestmark = pytest.mark.slow

MAX_DEPTH = 2


@pytest.fixture(scope="module")
def subs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(
        tmp_path_factory.mktemp("subworkflows"),
        engine_env={"CAPACITY": "40"},
        API_TOKEN="s3cret",
        LOAD_BALANCER_TYPE="round-robin",
        MAX_SUBWORKFLOW_DEPTH=str(MAX_DEPTH),
    ) as cluster:
        yield cluster


async def execution(http: aiohttp.ClientSession, url: str, eid: str) -> Any:
    return await get(http, f"{url}/api/v1/executions/{eid}")


async def events(http: aiohttp.ClientSession, url: str, eid: str) -> list[Any]:
    got: list[Any] = (await get(http, f"{url}/api/v1/executions/{eid}/events"))["events"]
    return got


CHILD = """
id: {id}
version: {version}
inputs_schema: {{type: object, properties: {{x: {{type: integer}}}}, required: [x]}}
nodes:
  - id: double
    lua: return {{ y = inputs.x * 2, v = "{version}" }}
"""

PARENT = """
id: {id}
version: 1.0.0
nodes:
  - id: start
    lua: return {{ x = 21 }}
  - id: pause
    depends_on: [start]
    sleep: {pause}
  - id: sub
    depends_on: [pause]
    workflow: {{id: {child}, version: "^1.0"}}
    inputs: {{x: "{{{{ results.start.x }}}}"}}
  - id: last
    depends_on: [sub]
    lua: return {{ got = results.sub.double.y, v = results.sub.double.v }}
"""


async def test_parent_and_child_on_different_engines_linked_both_ways(subs: Cluster) -> None:
    url = subs.url
    async with aiohttp.ClientSession() as http:
        await register(http, url, CHILD.format(id="kid", version="1.0.0"))
        await register(http, url, PARENT.format(id="mom", child="kid", pause="0s"))
        parent_id = await start(http, url, "mom")
        parent = await wait_end(http, url, parent_id)
        assert parent["status"] == "succeeded", parent
        assert parent["outputs"] == {"last": {"got": 42, "v": "1.0.0"}}
        assert parent["nodes"]["sub"]["output"] == {"double": {"y": 42, "v": "1.0.0"}}
        [child_id] = parent["children"]
        child = await execution(http, url, child_id)
        assert child["parent_execution_id"] == parent_id
        assert child["parent_node_id"] == "sub"
        assert child["inputs"] == {"x": 21}
        # round-robin over two engines: the child ran on the engine the parent did not
        assert child["nodes"]["double"]["engine_id"] != parent["nodes"]["sub"]["engine_id"]

        parent_events = await events(http, url, parent_id)
        kinds = [e["type"] for e in parent_events if e["type"].startswith("subworkflow.")]
        assert kinds == ["subworkflow.requested", "subworkflow.started", "subworkflow.finished"]
        finished = next(e for e in parent_events if e["type"] == "subworkflow.finished")
        assert finished["data"]["child_execution_id"] == child_id
        assert finished["data"]["status"] == "succeeded"
        assert finished["data"]["version"] == "1.0.0"
        child_kinds = [e["type"] for e in await events(http, url, child_id)]
        assert child_kinds[:2] == ["execution.queued", "subworkflow.started"]
        assert child_kinds[-1] == "execution.succeeded"


async def test_child_version_pinned_when_the_parent_started(subs: Cluster) -> None:
    url = subs.url
    async with aiohttp.ClientSession() as http:
        await register(http, url, CHILD.format(id="pin-kid", version="1.0.0"))
        await register(http, url, PARENT.format(id="pin-mom", child="pin-kid", pause="1500ms"))
        running = await start(http, url, "pin-mom")
        # a newer child in range arrives while the parent sleeps before its sub-workflow node
        await register(http, url, CHILD.format(id="pin-kid", version="1.1.0"))
        doc = await wait_end(http, url, running)
        assert doc["status"] == "succeeded", doc
        assert doc["outputs"] == {"last": {"got": 42, "v": "1.0.0"}}
        assert (await execution(http, url, doc["children"][0]))["version"] == "1.0.0"
        # a parent started afterwards pins the newer one
        later = await wait_end(http, url, await start(http, url, "pin-mom"))
        assert later["outputs"] == {"last": {"got": 42, "v": "1.1.0"}}


FAILING_CHILD = """
id: broken
version: 1.0.0
nodes:
  - id: explode
    lua: error("kaput")
"""

PARTIAL_PARENT = """
id: tolerant
version: 1.0.0
nodes:
  - id: sub
    workflow: {id: broken, version: "1.x"}
  - id: fine
    lua: return { ok = true }
"""

FAILED_PARENT = """
id: fragile
version: 1.0.0
nodes:
  - id: sub
    retry: {max_attempts: 2, delay: 10ms}
    workflow: {id: broken, version: latest}
"""


async def test_failed_child_fails_the_parent_node(subs: Cluster) -> None:
    url = subs.url
    async with aiohttp.ClientSession() as http:
        await register(http, url, FAILING_CHILD)
        await register(http, url, PARTIAL_PARENT)
        await register(http, url, FAILED_PARENT)
        partial = await wait_end(http, url, await start(http, url, "tolerant"))
        # a sink succeeded while the sub-workflow node failed
        assert partial["status"] == "partial", partial
        error = partial["nodes"]["sub"]["error"]
        assert "ended failed" in error and "kaput" in error, error
        assert partial["children"][0] in error

        failed = await wait_end(http, url, await start(http, url, "fragile"))
        assert failed["status"] == "failed", failed
        assert failed["nodes"]["sub"]["attempts"] == 2
        # each attempt of the node ran its own child, which says which attempt it is for
        assert len(failed["children"]) == 2
        children = [await execution(http, url, child_id) for child_id in failed["children"]]
        assert all(child["status"] == "failed" for child in children)
        assert sorted(child["parent_attempt"] for child in children) == [1, 2]
        assert partial["parent_attempt"] is None  # not a child
    shown = describe(url, failed["id"])
    assert re.search(r"sub  broken@1\.0\.0  failed", shown), shown
    assert re.search(r"sub attempt 2  broken@1\.0\.0  failed", shown), shown


LONG = """
id: lvl3
version: 1.0.0
nodes:
  - id: nap
    sleep: 60s
"""

LEVEL = """
id: {id}
version: 1.0.0
nodes:
  - id: sub
    workflow: {{id: {child}, version: "^1"}}
"""


async def test_cancelling_a_parent_cancels_its_children_three_levels_deep(subs: Cluster) -> None:
    url = subs.url
    async with aiohttp.ClientSession() as http:
        await register(http, url, LONG)
        await register(http, url, LEVEL.format(id="lvl2", child="lvl3"))
        await register(http, url, LEVEL.format(id="lvl1", child="lvl2"))
        top = await start(http, url, "lvl1")

        async def chain() -> list[str] | None:
            ids, current = [top], top
            for _ in range(2):
                doc = await execution(http, url, current)
                if not doc["children"]:
                    return None
                current = doc["children"][0]
                ids.append(current)
            doc = await execution(http, url, current)
            return ids if doc["nodes"]["nap"]["status"] == "running" else None

        ids = await wait_for("three levels running", chain)
        async with http.post(
            f"{url}/api/v1/executions/{top}/cancel", json={"reason": "enough"}, headers=TOKEN
        ) as resp:
            assert resp.status == 200, await resp.text()
        for eid in ids:
            doc = await wait_end(http, url, eid, timeout=30)
            assert doc["status"] == "cancelled", doc


def describe(url: str, execution_id: str) -> str:
    """What ``dagctl describe execution`` prints, on a wide terminal."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.dagctl", "describe", "execution", execution_id],
        env={**os.environ, "DAGCTL_SERVER": url, "DAGCTL_TOKEN": "s3cret", "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


async def test_depth_limit_refuses_a_version_that_would_nest_too_deep_and_a_child_past_it(
    subs: Cluster,
) -> None:
    url = subs.url
    async with aiohttp.ClientSession() as http:
        await register(http, url, LONG.replace("id: lvl3", "id: d4"))
        for level, child in (("d3", "d4"), ("d2", "d3")):
            await register(http, url, LEVEL.format(id=level, child=child))
        # d1 (depth 0) -> d2 (1) -> d3 (2) -> d4 (3): every run of it would fail, so it is
        # refused when registered (before: registered, and each run failed at d3's node)
        async with http.post(
            f"{url}/api/v1/workflows",
            data=LEVEL.format(id="d1", child="d2"),
            headers={"Content-Type": "application/yaml", **TOKEN},
        ) as resp:
            body = await resp.json()
        assert resp.status == 409 and body["error"]["code"] == "subworkflows_too_deep", body
        assert body["error"]["message"].endswith("d1@1.0.0 -> d2@1.0.0 -> d3@1.0.0 -> d4@1.0.0"), (
            body
        )
        top = await start(http, url, "d2")

        async def deepest() -> str | None:
            current = top
            for _ in range(2):
                children = (await execution(http, url, current))["children"]
                if not children:
                    return None
                current = children[0]
            doc = await execution(http, url, current)
            return current if doc["nodes"]["nap"]["status"] == "running" else None

        d4 = await wait_for("d4 running at depth 2", deepest)
    # the limit still holds when the run is there: a child started from outside under d4
    auth = (("authorization", "Bearer s3cret"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{subs.orchestrator.grpc_port}") as channel:
        stub = pb_grpc.OrchestratorStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ExecuteSubWorkflow(
                pb.ExecuteSubWorkflowRequest(parent_execution_id=d4, workflow_id="d3"),
                metadata=auth,
            )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"past MAX_SUBWORKFLOW_DEPTH {MAX_DEPTH}" in (refused.value.details() or "")
    # dagctl shows the tree: d3 below d2, d4 below d3, each with its state
    shown = describe(url, top).splitlines()
    at = next(i for i, line in enumerate(shown) if "d3@1.0.0" in line)
    assert shown[at].split()[-3:-1] == ["d3@1.0.0", "running"], shown
    assert shown[at + 1].split()[-3:] == ["d4@1.0.0", "running", d4], shown
    assert shown[at + 1].index("d4@") > shown[at].index("d3@")
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{url}/api/v1/executions/{top}/cancel", json={"reason": "done"}, headers=TOKEN
        ) as resp:
            assert resp.status == 200, await resp.text()
        assert (await wait_end(http, url, top, timeout=30))["status"] == "cancelled"


SQUARE = """
id: square
version: 1.0.0
nodes:
  - id: sq
    lua: return { n = inputs.n, sq = inputs.n * inputs.n }
"""

FAN = """
id: fan
version: 1.0.0
nodes:
  - id: items
    lua: |
      local out = {}
      for i = 1, 100 do out[i] = i end
      return { list = out }
  - id: each
    depends_on: [items]
    foreach: "{{ results.items.list }}"
    concurrency: 8
    workflow: {id: square, version: "^1"}
    inputs: {n: "{{ ctx.item }}"}
"""


async def test_foreach_over_a_sub_workflow_runs_a_child_per_item_in_order(subs: Cluster) -> None:
    url = subs.url
    async with aiohttp.ClientSession() as http:
        await register(http, url, SQUARE)
        await register(http, url, FAN)
        doc = await wait_end(http, url, await start(http, url, "fan"), timeout=120)
        assert doc["status"] == "succeeded", doc
        outputs = doc["nodes"]["each"]["output"]
        assert [o["sq"]["n"] for o in outputs] == list(range(1, 101))
        assert [o["sq"]["sq"] for o in outputs] == [i * i for i in range(1, 101)]
        assert len(doc["children"]) == 100
        # each child says which item it is for; dagctl's tree shows it
        child = await execution(http, url, doc["children"][-1])
        assert (child["parent_node_id"], child["parent_item"]) == ("each", child["inputs"]["n"] - 1)
    shown = describe(url, doc["id"])
    items = sorted(int(n) for n in re.findall(r"each\[(\d+)\]  square@1\.0\.0", shown))
    assert items == list(range(100))


async def test_execute_sub_workflow_and_status_over_grpc(subs: Cluster) -> None:
    url = subs.url
    async with aiohttp.ClientSession() as http:
        await register(http, url, CHILD.format(id="ext-kid", version="1.0.0"))
        await register(http, url, SQUARE)
        await register(http, url, LONG)
        ended_id = await start(http, url, "square", {"n": 3})
        await wait_end(http, url, ended_id)
        parent_id = await start(http, url, "lvl3")
    auth = (("authorization", "Bearer s3cret"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{subs.orchestrator.grpc_port}") as channel:
        stub = pb_grpc.OrchestratorStub(channel)
        started = await stub.ExecuteSubWorkflow(
            pb.ExecuteSubWorkflowRequest(
                parent_execution_id=parent_id,
                parent_workflow_id="lvl3",
                workflow_id="ext-kid",
                version="^1",
                inputs_json='{"x": 5}',
            ),
            metadata=auth,
        )
        assert started.version == "1.0.0"
        deadline = time.monotonic() + 30
        while True:
            status = await stub.GetSubWorkflowStatus(
                pb.GetSubWorkflowStatusRequest(execution_id=started.execution_id), metadata=auth
            )
            if status.status not in ("queued", "running") or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert status.status == "succeeded"
        assert json.loads(status.outputs_json) == {"double": {"y": 10, "v": "1.0.0"}}
        got = await stub.GetExecution(pb.GetExecutionRequest(execution_id=parent_id), metadata=auth)
        assert list(got.children) == [started.execution_id]
        # bad requests name the problem
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ExecuteSubWorkflow(
                pb.ExecuteSubWorkflowRequest(workflow_id="ext-kid"), metadata=auth
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "parent_execution_id is required" in (refused.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.ExecuteSubWorkflow(
                pb.ExecuteSubWorkflowRequest(parent_execution_id="nope", workflow_id="ext-kid"),
                metadata=auth,
            )
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as mismatch:
            await stub.ExecuteSubWorkflow(
                pb.ExecuteSubWorkflowRequest(
                    parent_execution_id=parent_id,
                    parent_workflow_id="square",
                    workflow_id="ext-kid",
                ),
                metadata=auth,
            )
        assert mismatch.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "runs workflow 'lvl3', not 'square'" in (mismatch.value.details() or "")
        # ids the parent's spec does not have (a child under them would be shown, and waited
        # for, as if the parent had them)
        for fields, message in (
            ({"node_id": "zz"}, "node_id 'zz' is not a sub-workflow node of lvl3@1.0.0"),
            ({"node_id": "x" * 500_000}, "node_id 'xxxxxxxx"),
            ({"item": -5}, "item must be 0 or more, got -5"),
            ({"item": 2}, "item needs node_id: it numbers the items of a foreach node"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as made_up:
                await stub.ExecuteSubWorkflow(
                    pb.ExecuteSubWorkflowRequest(
                        parent_execution_id=parent_id, workflow_id="ext-kid", **fields
                    ),
                    metadata=auth,
                )
            assert made_up.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (made_up.value.details() or "").startswith(message)
            assert len(made_up.value.details() or "") < 200
        got = await stub.GetExecution(pb.GetExecutionRequest(execution_id=parent_id), metadata=auth)
        assert list(got.children) == [started.execution_id]  # none of them started a child
        with pytest.raises(grpc.aio.AioRpcError) as unauthenticated:
            await stub.ExecuteSubWorkflow(
                pb.ExecuteSubWorkflowRequest(parent_execution_id=parent_id, workflow_id="ext-kid")
            )
        assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await stub.ExecuteSubWorkflow(
                pb.ExecuteSubWorkflowRequest(parent_execution_id=ended_id, workflow_id="ext-kid"),
                metadata=auth,
            )
        assert ended.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "has ended (succeeded)" in (ended.value.details() or "")
        await stub.CancelExecution(
            pb.CancelExecutionRequest(execution_id=parent_id, reason="done"), metadata=auth
        )


NAPPING_FAN = """
id: napping-fan
version: 1.0.0
nodes:
  - id: items
    lua: return { list = { "a", "b" } }
  - id: pause
    depends_on: [items]
    sleep: 1500ms
  - id: each
    depends_on: [pause]
    foreach: "{{ results.items.list }}"
    workflow: {id: lvl3, version: "^1"}
"""


async def test_execute_sub_workflow_item_must_be_one_the_foreach_has(subs: Cluster) -> None:
    url = subs.url
    async with aiohttp.ClientSession() as http:
        await register(http, url, LONG)
        await register(http, url, NAPPING_FAN)
        parent_id = await start(http, url, "napping-fan")
    auth = (("authorization", "Bearer s3cret"),)

    def asking(item: int) -> pb.ExecuteSubWorkflowRequest:
        return pb.ExecuteSubWorkflowRequest(
            parent_execution_id=parent_id, node_id="each", item=item, attempt=1, workflow_id="lvl3"
        )

    async with grpc.aio.insecure_channel(f"127.0.0.1:{subs.orchestrator.grpc_port}") as channel:
        stub = pb_grpc.OrchestratorStub(channel)
        # before the node starts, its items are not known
        with pytest.raises(grpc.aio.AioRpcError) as early:
            await stub.ExecuteSubWorkflow(asking(0), metadata=auth)
        assert early.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"node 'each' of execution {parent_id} has not started" in (
            early.value.details() or ""
        )
        async with aiohttp.ClientSession() as http:
            doc = await wait_for(
                "both children",
                lambda: _with_children(http, url, parent_id, 2),
            )
        for item in (2, 7):
            with pytest.raises(grpc.aio.AioRpcError) as past:
                await stub.ExecuteSubWorkflow(asking(item), metadata=auth)
            assert past.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (past.value.details() or "") == (
                f"node 'each' of execution {parent_id} has 2 item(s): "
                f"item must be below 2, got {item}"
            )
        # an item it has finds the child the engine asked for
        again = await stub.ExecuteSubWorkflow(asking(1), metadata=auth)
        assert again.execution_id in doc["children"]
        got = await stub.GetExecution(pb.GetExecutionRequest(execution_id=parent_id), metadata=auth)
        assert sorted(got.children) == sorted(doc["children"])
        await stub.CancelExecution(
            pb.CancelExecutionRequest(execution_id=parent_id, reason="done"), metadata=auth
        )


NAP_KID = """
id: nap-kid
version: {version}
nodes:
  - id: nap
    sleep: 1500ms
  - id: done
    depends_on: [nap]
    lua: return {{ v = "{version}", got = inputs.from }}
"""

ADOPTING = """
id: adopting
version: 1.0.0
nodes:
  - id: pause
    sleep: 1s
  - id: call
    depends_on: [pause]
    workflow: {id: nap-kid, version: "~1.0.0"}
    inputs: {from: engine}
"""


async def test_execute_sub_workflow_of_a_node_stands_in_for_the_nodes_own_request(
    subs: Cluster,
) -> None:
    # a child under a node is the one the node waits for: its pinned version, its attempt,
    # while it waits; anything else would be shown under the parent and taken, or never
    # waited for
    url = subs.url
    async with aiohttp.ClientSession() as http:
        await register(http, url, NAP_KID.format(version="1.0.0"))
        await register(http, url, NAP_KID.format(version="2.0.0"))
        await register(http, url, ADOPTING)
        parent_id = await start(http, url, "adopting")
    auth = (("authorization", "Bearer s3cret"),)

    def asking(**fields: Any) -> pb.ExecuteSubWorkflowRequest:
        wanted = {"attempt": 1, "inputs_json": '{"from": "outsider"}', **fields}
        return pb.ExecuteSubWorkflowRequest(
            parent_execution_id=parent_id, node_id="call", workflow_id="nap-kid", **wanted
        )

    async def refused(request: pb.ExecuteSubWorkflowRequest) -> tuple[Any, str]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ExecuteSubWorkflow(request, metadata=auth)
        return caught.value.code(), caught.value.details() or ""

    run = f"node 'call' of execution {parent_id}"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{subs.orchestrator.grpc_port}") as channel:
        stub = pb_grpc.OrchestratorStub(channel)
        assert await refused(asking()) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{run} has not started",
        )
        async with aiohttp.ClientSession() as http:
            doc = await wait_for("the child", lambda: _with_children(http, url, parent_id, 1))
        (child_id,) = doc["children"]
        assert await refused(asking(version="2.x")) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{run} runs nap-kid '~1.0.0', pinned to 1.0.0 for this execution: "
            "version '2.x' does not include it",
        )
        assert await refused(asking(attempt=7)) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{run} waits on attempt 1: attempt must be 1, got 7",
        )
        code, message = await refused(asking(inputs_json='{"_trigger": {"type": "http"}}'))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert message == "inputs._trigger is set by triggers: a caller may not send it"
        # what the node asked for itself, found again: in its range, or with none given
        for fields in ({}, {"version": "^1"}):
            again = await stub.ExecuteSubWorkflow(asking(**fields), metadata=auth)
            assert (again.execution_id, again.version) == (child_id, "1.0.0")
        async with aiohttp.ClientSession() as http:
            done = await wait_end(http, url, parent_id)
            assert done["status"] == "succeeded", done
            assert done["nodes"]["call"]["output"]["done"] == {"v": "1.0.0", "got": "engine"}
            assert done["children"] == [child_id]
        assert await refused(asking()) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{run} has ended (succeeded): it waits for no child",
        )


QUEUED_FAN = """
id: queued-fan
version: 1.0.0
nodes:
  - id: each
    foreach: "{{ inputs.items }}"
    concurrency: 1
    workflow: {id: nap-kid, version: "~1.0.0"}
    inputs: {from: engine}
"""


async def test_execute_sub_workflow_for_an_item_still_queued_is_the_one_it_takes(
    subs: Cluster,
) -> None:
    # item 1 waits behind item 0 (concurrency 1): its engine takes no announcement yet, and the
    # child started for it from outside must still be there, running, when it asks
    url = subs.url
    async with aiohttp.ClientSession() as http:
        await register(http, url, NAP_KID.format(version="1.0.0"))
        await register(http, url, QUEUED_FAN)
        parent_id = await start(http, url, "queued-fan", {"items": ["a", "b"]})
        await wait_for("item 0's child", lambda: _with_children(http, url, parent_id, 1))
    auth = (("authorization", "Bearer s3cret"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{subs.orchestrator.grpc_port}") as channel:
        stub = pb_grpc.OrchestratorStub(channel)
        outside = await stub.ExecuteSubWorkflow(
            pb.ExecuteSubWorkflowRequest(
                parent_execution_id=parent_id,
                node_id="each",
                item=1,
                attempt=1,
                workflow_id="nap-kid",
                inputs_json='{"from": "outsider"}',
            ),
            metadata=auth,
        )
    async with aiohttp.ClientSession() as http:
        done = await wait_end(http, url, parent_id)
        assert done["status"] == "succeeded", done
        assert [o["done"]["got"] for o in done["nodes"]["each"]["output"]] == [
            "engine",
            "outsider",
        ]
        assert outside.execution_id in done["children"] and len(done["children"]) == 2


async def _with_children(http: aiohttp.ClientSession, url: str, eid: str, n: int) -> Any:
    doc = await execution(http, url, eid)
    return doc if len(doc["children"]) == n else None


SLOW_CHILD = """
id: slow-kid
version: 1.0.0
nodes:
  - id: nap
    sleep: 2s
  - id: done
    depends_on: [nap]
    lua: return { fine = true }
"""

SLOW_PARENT = """
id: slow-mom
version: 1.0.0
nodes:
  - id: first
    lua: return { at = 1 }
  - id: sub
    depends_on: [first]
    workflow: {id: slow-kid, version: "^1"}
  - id: last
    depends_on: [sub]
    lua: return { child = results.sub.done.fine, first = results.first.at }
"""


async def test_parent_engine_killed_while_child_runs_reattaches_to_the_one_child(
    start_cluster: StartCluster, tmp_path: Path
) -> None:
    cluster = start_cluster(engines=2, LOAD_BALANCER_TYPE="round-robin", API_TOKEN="s3cret")
    url = cluster.url
    async with aiohttp.ClientSession() as http:
        await wait_for(
            "two engines",
            lambda: _ready_engines(http, url, 2),
        )
        await register(http, url, SLOW_CHILD)
        await register(http, url, SLOW_PARENT)
        parent_id = await start(http, url, "slow-mom")

        async def child_running() -> Any:
            doc = await execution(http, url, parent_id)
            if not doc["children"]:
                return None
            child = await execution(http, url, doc["children"][0])
            return (doc, child) if child["nodes"]["nap"]["status"] == "running" else None

        parent, child = await wait_for("the child running", child_running)
        parent_engine = parent["nodes"]["sub"]["engine_id"]
        assert child["nodes"]["nap"]["engine_id"] != parent_engine
        victim = next(e for e in cluster.engines if e.env["ENGINE_ID"] == parent_engine)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(10)

        doc = await wait_end(http, url, parent_id, timeout=60)
        assert doc["status"] == "succeeded", doc
        assert doc["outputs"] == {"last": {"child": True, "first": 1}}
        assert doc["children"] == [child["id"]]
        timeline = await events(http, url, parent_id)
        started = Counter(e["node_id"] for e in timeline if e["type"] == "node.started")
        assert started["first"] == 1  # checkpointed before the kill: never again
        reattached = [e for e in timeline if e["type"] == "subworkflow.started"]
        assert {e["data"]["child_execution_id"] for e in reattached} == {child["id"]}
        assert len(reattached) == 2  # announced to the first engine, then to the second
        assert (await execution(http, url, child["id"]))["status"] == "succeeded"


async def _ready_engines(http: aiohttp.ClientSession, url: str, n: int) -> bool:
    engines = (await get(http, f"{url}/api/v1/engines"))["engines"]
    return sum(1 for e in engines if e["state"] == "ready") == n


BOUNDED = """
id: bounded
version: 1.0.0
nodes:
  - id: sub
    timeout: 700ms
    workflow: {id: lvl3, version: "^1"}
"""

WAITS_ON_CHILD = """
id: waits
version: 1.0.0
nodes:
  - id: sub
    workflow: {id: lvl3, version: "^1"}
  - id: after
    depends_on: [sub]
    trigger_rule: all_done
    lua: return { saw = "child ended" }
"""


async def test_parent_node_timeout_cancels_its_child(subs: Cluster) -> None:
    url = subs.url
    async with aiohttp.ClientSession() as http:
        await register(http, url, LONG)
        await register(http, url, BOUNDED)
        doc = await wait_end(http, url, await start(http, url, "bounded"))
        assert doc["status"] == "failed"
        assert "timed out after" in doc["nodes"]["sub"]["error"], doc
        child = await wait_end(http, url, doc["children"][0], timeout=20)
        assert child["status"] == "cancelled", child


LOUD_CHILD = """
id: loud
version: 1.0.0
nodes:
  - id: check
    lua: |
      if inputs.i == 0 then error(string.rep("E", 2000)) end
      return 1
  - id: nap
    depends_on: [check]
    sleep: 60s
"""

LOUD_FAN = """
id: loudfan
version: 1.0.0
nodes:
  - id: items
    lua: return {0, 1}
  - id: each
    depends_on: [items]
    foreach: "{{ results.items }}"
    concurrency: 2
    workflow: {id: loud, version: "^1"}
    inputs: {i: "{{ ctx.item }}"}
  - id: other
    sleep: 60s
"""


async def test_a_node_failing_with_a_long_error_cancels_its_other_children(
    subs: Cluster,
) -> None:
    url = subs.url
    async with aiohttp.ClientSession() as http:
        await register(http, url, LOUD_CHILD)
        await register(http, url, LOUD_FAN)
        parent_id = await start(http, url, "loudfan")

        async def each_failed() -> Any:
            doc = await execution(http, url, parent_id)
            return doc if doc["nodes"]["each"]["status"] == "failed" else None

        doc = await wait_for("node each to fail", each_failed, timeout=30)
        assert len(doc["children"]) == 2
        # before: the reason, the child's 2,000-character error in it, was refused as too long
        # for a cancel, and the other child slept on until its parent's run ended
        ended = [await wait_end(http, url, child, timeout=20) for child in doc["children"]]
        assert sorted(c["status"] for c in ended) == ["cancelled", "failed"]
        [sibling] = [c for c in ended if c["status"] == "cancelled"]
        assert sibling["error"].startswith("its parent node 'each' failed: item 0: "), sibling
        assert "more characters)" in sibling["error"]
        assert (await execution(http, url, parent_id))["status"] == "running"
        async with http.post(
            f"{url}/api/v1/executions/{parent_id}/cancel", json={}, headers=TOKEN
        ) as resp:
            assert resp.status == 200, await resp.text()
        assert "cancel of sub-workflow execution" not in subs.orchestrator.log()


async def test_cancelling_a_child_fails_its_parent_node(subs: Cluster) -> None:
    url = subs.url
    async with aiohttp.ClientSession() as http:
        await register(http, url, LONG)
        await register(http, url, WAITS_ON_CHILD)
        parent_id = await start(http, url, "waits")

        async def child_id() -> str | None:
            children = (await execution(http, url, parent_id))["children"]
            return str(children[0]) if children else None

        child = await wait_for("the child", child_id)
        async with http.post(
            f"{url}/api/v1/executions/{child}/cancel", json={"reason": "not needed"}, headers=TOKEN
        ) as resp:
            assert resp.status == 200, await resp.text()
        doc = await wait_end(http, url, parent_id)
        error = doc["nodes"]["sub"]["error"]
        assert doc["nodes"]["sub"]["status"] == "failed"
        assert "ended cancelled" in error and "not needed" in error, error
        assert doc["nodes"]["after"]["output"] == {"saw": "child ended"}
        assert doc["status"] == "partial"


async def test_orchestrator_killed_while_a_child_runs_finishes_the_tree_once(
    start_cluster: StartCluster,
) -> None:
    cluster = start_cluster(engines=2, LOAD_BALANCER_TYPE="round-robin", API_TOKEN="s3cret")
    async with aiohttp.ClientSession() as http:
        await wait_for("two engines", lambda: _ready_engines(http, cluster.url, 2))
        await register(http, cluster.url, SLOW_CHILD)
        await register(http, cluster.url, SLOW_PARENT)
        parent_id = await start(http, cluster.url, "slow-mom")

        async def child_running() -> Any:
            children = (await execution(http, cluster.url, parent_id))["children"]
            if not children:
                return None
            child = await execution(http, cluster.url, children[0])
            return child if child["nodes"]["nap"]["status"] == "running" else None

        child = await wait_for("the child running", child_running)
    cluster.orchestrator.proc.send_signal(signal.SIGKILL)
    cluster.orchestrator.proc.wait(10)
    cluster.restart_orchestrator()
    async with aiohttp.ClientSession() as http:
        doc = await wait_end(http, cluster.url, parent_id, timeout=60)
        assert doc["status"] == "succeeded", doc
        assert doc["outputs"] == {"last": {"child": True, "first": 1}}
        assert doc["children"] == [child["id"]]
        assert (await execution(http, cluster.url, child["id"]))["status"] == "succeeded"


async def test_parents_filling_every_slot_still_get_their_children_run(
    start_cluster: StartCluster,
) -> None:
    # one slot in the whole fleet, and three parents that each wait on a child: were children
    # held to capacity, the first parent would hold the slot its own child needs, forever
    cluster = start_cluster(engines=1, engine_env={"CAPACITY": "1"}, API_TOKEN="s3cret")
    url = cluster.url
    async with aiohttp.ClientSession() as http:
        await wait_for("the engine", lambda: _ready_engines(http, url, 1))
        await register(http, url, CHILD.format(id="tight-kid", version="1.0.0"))
        await register(http, url, PARENT.format(id="tight-mom", child="tight-kid", pause="0s"))
        parents = [await start(http, url, "tight-mom") for _ in range(3)]
        for parent_id in parents:
            doc = await wait_end(http, url, parent_id, timeout=60)
            assert doc["status"] == "succeeded", doc
            assert doc["outputs"] == {"last": {"got": 42, "v": "1.0.0"}}
        # roots still wait their turn: the engine never ran two parents at once
        timelines = [await events(http, url, p) for p in parents]
        spans = sorted(
            (
                next(e["time"] for e in t if e["type"] == "execution.started"),
                t[-1]["time"],
            )
            for t in timelines
        )
        # each parent started after the one before it ended
        assert all(b[0] >= a[1] for a, b in itertools.pairwise(spans)), spans
