"""Deleting a workflow through the real services: its versions, triggers and HTTP path go at
once, its runs and their events after; refused while runs of it go or other workflows use it;
a deletion the orchestrator was killed in the middle of is finished by the next start."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from engine.api import dagengine_pb2 as pb
from engine.api import dagengine_pb2_grpc as pb_grpc
from orchestrator.dagctl import main
from orchestrator.store import Store
from tests.integration.api import (
    AUTH,
    TOKEN,
    call,
    first_pause_last,
    get,
    register,
    wait_for,
    wait_node,
)
from tests.integration.conftest import Cluster, StartCluster
from tests.net import error_info

HOOKED = """
id: hooked
version: {version}
triggers:
  - cron: "0 6 * * *"
  - http: {{path: /hooks/hooked}}
nodes:
  - id: say
    lua: return "{said}"
"""

LEAF = """
id: {leaf}
version: 1.0.0
nodes:
  - id: a
    lua: return 1
"""

TRUNK = """
id: {trunk}
version: 1.0.0
nodes:
  - id: sub
    workflow: {{id: {leaf}, version: ^1}}
"""


async def answer(
    http: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, url, json=body, headers=TOKEN) as resp:
        return resp.status, await resp.json()


async def run_waited(http: aiohttp.ClientSession, url: str, path: str) -> Any:
    status, body = await answer(http, "POST", f"{url}{path}", {"wait": True})
    assert status == 200, body
    return body


async def test_a_deleted_workflow_goes_with_its_triggers_runs_and_events(cluster: Cluster) -> None:
    url = cluster.url
    async with aiohttp.ClientSession() as http:
        await register(http, url, HOOKED.format(version="1.0.0", said="one"))
        await register(http, url, HOOKED.format(version="1.1.0", said="two"))
        await register(http, url, LEAF.format(leaf="bystander"))
        runs = [
            (await run_waited(http, url, "/trigger/hooked"))["execution_id"],
            (await run_waited(http, url, "/hooks/hooked"))["execution_id"],
        ]
        kept = (await run_waited(http, url, "/trigger/bystander"))["execution_id"]
        made = await call(
            http, "POST", f"{url}/api/v1/triggers", json={"workflow_id": "hooked", "cron": "@daily"}
        )

        # the API token guards it: refused without, and nothing changed
        async with http.delete(f"{url}/api/v1/workflows/hooked") as resp:
            assert resp.status == 401, await resp.text()
        assert (await get(http, f"{url}/api/v1/workflows/hooked"))["versions"] == ["1.0.0", "1.1.0"]
        status, body = await answer(http, "DELETE", f"{url}/api/v1/workflows/hooked")
        assert status == 200, body
        assert body == {
            "id": "hooked",
            "deleted": True,
            "versions": 2,
            "triggers": 3,
            "executions": 2,
        }
        # at once: not found, not listed, not run by any route, its triggers gone
        status, body = await answer(http, "GET", f"{url}/api/v1/workflows/hooked")
        assert status == 404 and "hooked" in body["error"]["message"], body
        listed = await get(http, f"{url}/api/v1/workflows")
        assert "hooked" not in [w["id"] for w in listed["workflows"]]
        assert "bystander" in [w["id"] for w in listed["workflows"]]
        for path in ("/trigger/hooked", "/hooks/hooked", "/api/v1/workflows/hooked/executions"):
            status, body = await answer(http, "POST", f"{url}{path}", {})
            assert status == 404, (path, body)
        triggers = await get(http, f"{url}/api/v1/triggers")
        assert [t for t in triggers["triggers"] if t["workflow_id"] == "hooked"] == []
        status, _ = await answer(http, "GET", f"{url}/api/v1/triggers/{made['id']}")
        assert status == 404

        # its runs and their events go after, the other workflow's stay
        async def runs_gone() -> bool:
            found = await get(http, f"{url}/api/v1/executions?workflow=hooked")
            return not found["executions"]

        await wait_for("the deleted workflow's runs to go", runs_gone)
        for eid in runs:
            for path in (f"/api/v1/executions/{eid}", f"/api/v1/executions/{eid}/events"):
                status, _ = await answer(http, "GET", f"{url}{path}")
                assert status == 404, path
        assert (await get(http, f"{url}/api/v1/executions/{kept}"))["status"] == "succeeded"

        # the id is free again: 1.0.0 with other content, its triggers and path anew
        await wait_for("the id to be free again", lambda: reregistered(http, url))
        again = await run_waited(http, url, "/hooks/hooked")
        assert again["outputs"] == {"say": "anew"}
        assert (await get(http, f"{url}/api/v1/workflows/hooked"))["versions"] == ["1.0.0"]


async def test_a_delete_is_refused_while_runs_go_or_others_use_it(cluster: Cluster) -> None:
    url = cluster.url
    async with aiohttp.ClientSession() as http:
        await register(http, url, first_pause_last("dozer", "30s"))
        status, body = await answer(http, "POST", f"{url}/trigger/dozer", {})
        assert status == 202, body
        eid = str(body["execution_id"])
        await wait_node(http, url, eid, "pause")
        status, body = await answer(http, "DELETE", f"{url}/api/v1/workflows/dozer")
        assert status == 409, body
        assert body["error"]["code"] == "workflow_busy"
        assert body["error"]["message"] == (
            "workflow dozer has 1 run(s) queued or running: cancel them or let them end, "
            "then delete it"
        )
        # nothing changed: it is there, and its run goes on
        assert (await get(http, f"{url}/api/v1/workflows/dozer"))["id"] == "dozer"
        assert (await get(http, f"{url}/api/v1/executions/{eid}"))["status"] == "running"
        await call(http, "POST", f"{url}/api/v1/executions/{eid}/cancel", json={})
        status, body = await answer(http, "DELETE", f"{url}/api/v1/workflows/dozer")
        assert status == 200 and body["executions"] == 1, body

        await register(http, url, LEAF.format(leaf="sapling"))
        await register(http, url, TRUNK.format(trunk="bough", leaf="sapling"))
        status, body = await answer(http, "DELETE", f"{url}/api/v1/workflows/sapling")
        assert status == 409, body
        assert body["error"]["message"] == (
            "workflow sapling is referenced by bough@1.0.0: register versions of them without "
            "it, or delete them first"
        )
        assert body["error"]["details"]["dependents"] == ["bough@1.0.0"]
        # the dependent first, then what it used
        for workflow in ("bough", "sapling"):
            status, body = await answer(http, "DELETE", f"{url}/api/v1/workflows/{workflow}")
            assert status == 200, body
        for _ in range(2):  # while its runs are removed, and after
            status, body = await answer(http, "DELETE", f"{url}/api/v1/workflows/sapling")
            assert status == 404, body


async def test_delete_over_grpc_and_dagctl(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    url = cluster.url
    async with aiohttp.ClientSession() as http:
        await register(http, url, LEAF.format(leaf="twig"))
        await run_waited(http, url, "/trigger/twig")
        await register(http, url, LEAF.format(leaf="stick"))
        await register(http, url, TRUNK.format(trunk="branch", leaf="stick"))
    async with grpc.aio.insecure_channel(cluster.orchestrator.grpc_address) as channel:
        stub = pb_grpc.OrchestratorStub(channel)
        done = await stub.DeleteWorkflow(
            pb.DeleteWorkflowRequest(workflow_id="twig"), metadata=AUTH
        )
        assert (done.workflow_id, done.versions, done.triggers, done.executions) == (
            "twig",
            1,
            0,
            1,
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.DeleteWorkflow(pb.DeleteWorkflowRequest(workflow_id="stick"), metadata=AUTH)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(caught.value).reason == "workflow_busy"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.DeleteWorkflow(pb.DeleteWorkflowRequest(), metadata=AUTH)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    env = {"DAGCTL_SERVER": url, "DAGCTL_TOKEN": "s3cret"}
    capsys.readouterr()
    assert main(["delete", "workflow", "stick"], env) == 1
    seen = capsys.readouterr()
    assert "workflow stick is referenced by branch@1.0.0" in seen.err, seen
    assert main(["delete", "workflow", "branch"], env) == 0
    assert capsys.readouterr().out == "workflow branch deleted (1 version)\n"
    assert main(["delete", "workflow", "stick", "-o", "json"], env) == 0
    assert '"deleted": true' in capsys.readouterr().out


async def test_a_deletion_cut_short_by_a_kill_is_finished_by_the_next_start(
    start_cluster: StartCluster, tmp_path: Path
) -> None:
    cluster = start_cluster(engines=1)
    url = cluster.url
    async with aiohttp.ClientSession() as http:
        await register(http, url, HOOKED.format(version="1.0.0", said="one"))
        runs = [(await run_waited(http, url, "/trigger/hooked"))["execution_id"] for _ in range(3)]
    cluster.orchestrator.proc.send_signal(signal.SIGKILL)
    cluster.orchestrator.proc.wait(30)
    # the delete's transaction committed, and the process died before removing any run
    store = await Store.open(cluster.orchestrator.env["STATE_DB"])
    try:
        await store.delete_workflow("hooked", 0.0)
    finally:
        await store.close()

    url = cluster.restart_orchestrator().url
    async with aiohttp.ClientSession() as http:
        status, _ = await answer(http, "GET", f"{url}/api/v1/workflows/hooked")
        assert status == 404

        async def gone() -> bool:
            status, _ = await answer(http, "GET", f"{url}/api/v1/executions/{runs[-1]}")
            return status == 404

        await wait_for("the runs to be removed after the restart", gone)
        found = await get(http, f"{url}/api/v1/executions?workflow=hooked")
        assert found["executions"] == []
        await wait_for("the id to be free again", lambda: reregistered(http, url))
        assert (await run_waited(http, url, "/hooks/hooked"))["outputs"] == {"say": "anew"}


async def reregistered(http: aiohttp.ClientSession, url: str) -> bool:
    async with http.post(
        f"{url}/api/v1/workflows",
        data=HOOKED.format(version="1.0.0", said="anew"),
        headers={"Content-Type": "application/yaml", **TOKEN},
    ) as resp:
        assert resp.status in (201, 409), await resp.text()
        return resp.status == 201


async def test_a_parent_s_logs_say_which_of_its_children_went_with_their_workflow(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    url = cluster.url
    async with aiohttp.ClientSession() as http:
        await register(http, url, LEAF.format(leaf="bud"))
        await register(http, url, TRUNK.format(trunk="stem", leaf="bud"))
        parent = (await run_waited(http, url, "/trigger/stem"))["execution_id"]
        (child,) = (await get(http, f"{url}/api/v1/executions/{parent}"))["children"]
        # its latest version no longer uses bud, which can then be deleted
        await register(http, url, LEAF.format(leaf="stem").replace("1.0.0", "2.0.0"))
        status, body = await answer(http, "DELETE", f"{url}/api/v1/workflows/bud")
        assert status == 200, body

        async def gone() -> bool:
            status, _ = await answer(http, "GET", f"{url}/api/v1/executions/{child}")
            return status == 404

        await wait_for("the child run to be removed", gone)
    env = {"DAGCTL_SERVER": url, "DAGCTL_TOKEN": "s3cret"}
    capsys.readouterr()
    assert main(["logs", parent], env) == 0
    said = capsys.readouterr().err.splitlines()
    # before: it named the child as if `dagctl logs CHILD_ID` would show it, which 404s
    assert said[-1] == f"  {child}  sub  bud@1.0.0  (deleted with its workflow)"
