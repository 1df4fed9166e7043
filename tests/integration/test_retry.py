"""Retrying an execution that ended without succeeding, through the real services: the nodes
that succeeded keep their outputs and never run again, the others run again, on the versions
the first run pinned."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import grpc
import pytest

from engine.api import dagengine_pb2 as pb
from engine.api import dagengine_pb2_grpc as pb_grpc
from orchestrator.dagctl import main
from tests.integration.api import (
    AUTH,
    TOKEN,
    first_pause_last,
    get,
    register,
    wait_end,
    wait_for,
    wait_node,
)
from tests.integration.conftest import Cluster
from tests.net import error_info

# ``gate`` fails until the wall clock passes ``inputs.open_at``: a failure that a later retry
# gets past, as a dependency that was down for a while
GATED = """
id: gated
version: 1.0.0
nodes:
  - id: first
    lua: return { n = inputs.n * 10 }
  - id: side
    lua: return "side"
  - id: gate
    depends_on: [first]
    lua: |
      if os.time() < inputs.open_at then error("not yet") end
      return { n = results.first.n + 1 }
  - id: last
    depends_on: [gate, side]
    lua: return { n = results.gate.n, side = results.side }
  - id: alert
    depends_on: [gate]
    trigger_rule: one_failed
    lua: return "alerted"
"""

NAP = first_pause_last("napper", "30s")

CHILD = """
id: leaf
version: {version}
nodes:
  - id: wait
    sleep: {sleep}
  - id: say
    depends_on: [wait]
    lua: return "{version}"
"""

PARENT = """
id: trunk
version: 1.0.0
nodes:
  - id: first
    lua: return 7
  - id: sub
    depends_on: [first]
    workflow: {id: leaf, version: ^1}
  - id: last
    depends_on: [sub]
    lua: return { said = results.sub.say, first = results.first }
"""


async def post(
    http: aiohttp.ClientSession, url: str, body: Any = None, **headers: str
) -> tuple[int, Any]:
    async with http.post(url, json=body, headers={**TOKEN, **headers}) as resp:
        return resp.status, await resp.json()


async def retry(
    http: aiohttp.ClientSession, url: str, eid: str, body: Any = None, **headers: str
) -> tuple[int, Any]:
    return await post(http, f"{url}/api/v1/executions/{eid}/retry", body, **headers)


async def gated_run(http: aiohttp.ClientSession, url: str, n: int, open_at: int) -> str:
    """A run of ``gated`` whose gate is shut until ``open_at``: it ends partial (its alert
    ran); the id."""
    await register(http, url, GATED)
    status, body = await post(
        http, f"{url}/trigger/gated", {"inputs": {"n": n, "open_at": open_at}, "wait": True}
    )
    assert status == 200 and body["status"] == "partial", body
    return str(body["execution_id"])


async def timeline(http: aiohttp.ClientSession, url: str, eid: str) -> list[Any]:
    events: list[Any] = (await get(http, f"{url}/api/v1/executions/{eid}/events"))["events"]
    return events


async def succeeded_nodes(http: aiohttp.ClientSession, url: str) -> float:
    async with http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    [line] = [
        line
        for line in text.splitlines()
        if line.startswith('dagengine_nodes_total{status="succeeded"}')
    ]
    return float(line.split()[-1])


def started(events: list[Any]) -> list[str]:
    return [e["node_id"] for e in events if e["type"] == "node.started"]


async def test_a_retry_keeps_what_succeeded_and_runs_the_rest(cluster: Cluster) -> None:
    url = cluster.url
    async with aiohttp.ClientSession() as http:
        await register(http, url, GATED)
        until = int(time.time()) + 4
        status, body = await post(
            http,
            f"{url}/trigger/gated",
            {"inputs": {"n": 4, "open_at": until}, "wait": True, "timeout": 30},
        )
        assert status == 200 and body["status"] == "partial", body
        first_id = body["execution_id"]
        before = await get(http, f"{url}/api/v1/executions/{first_id}")
        assert {k: n["status"] for k, n in before["nodes"].items()} == {
            "first": "succeeded",
            "side": "succeeded",
            "gate": "failed",
            "last": "blocked",
            "alert": "succeeded",
        }
        await wait_for("the gate to open", _after(until))

        counted = await succeeded_nodes(http, url)
        status, body = await retry(http, url, first_id, {"wait": True, "timeout": 30})
        assert status == 200, body
        assert body["status"] == "succeeded" and body["retry_of"] == first_id
        assert body["outputs"] == {"last": {"n": 41, "side": "side"}}
        again = body["execution_id"]
        assert again != first_id

        doc = await get(http, f"{url}/api/v1/executions/{again}")
        assert doc["workflow_id"] == "gated" and doc["version"] == "1.0.0"
        assert doc["retry_of"] == first_id and before["retry_of"] is None
        assert doc["inputs"] == {"n": 4, "open_at": until}
        # alert ran because gate failed: with gate through, it is decided again, and skips
        assert {k: n["status"] for k, n in doc["nodes"].items()} == {
            **dict.fromkeys(("first", "side", "gate", "last"), "succeeded"),
            "alert": "skipped",
        }
        assert doc["nodes"]["first"]["output"] == {"n": 40}
        # a kept node's record says where its output comes from, and it started nowhere here
        assert doc["nodes"]["first"]["reused_from"] == first_id
        assert doc["nodes"]["first"]["started_at"] is None
        assert doc["nodes"]["first"]["engine_id"] is None
        assert "reused_from" not in doc["nodes"]["gate"]
        assert doc["progress"] == 100
        events = await timeline(http, url, again)
        # the kept nodes end at once, from the first run, and never start here
        assert events[0]["type"] == "execution.queued"
        assert events[0]["data"]["retry_of"] == first_id
        kept = {e["node_id"]: e["data"] for e in events[1:3]}
        assert kept == {
            "first": {"output": {"n": 40}, "reused_from": first_id},
            "side": {"output": "side", "reused_from": first_id},
        }
        assert sorted(started(events)) == ["gate", "last"]
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        # the first run is left as it was
        assert await get(http, f"{url}/api/v1/executions/{first_id}") == before
        # the kept nodes did not run again, and the metrics count only gate and last
        assert await succeeded_nodes(http, url) == counted + 2


def _after(moment: int) -> Any:
    async def passed() -> bool:
        return time.time() > moment + 0.1

    return passed


async def test_a_cancelled_run_is_retried_from_where_it_was(cluster: Cluster) -> None:
    url = cluster.url
    async with aiohttp.ClientSession() as http:
        await register(http, url, NAP)
        status, body = await post(http, f"{url}/trigger/napper", {})
        assert status == 202, body
        first_id = body["execution_id"]
        await wait_node(http, url, first_id, "pause")
        status, body = await post(http, f"{url}/api/v1/executions/{first_id}/cancel", {})
        assert status == 200, body
        ended = await wait_end(http, url, first_id)
        assert ended["status"] == "cancelled"

        status, body = await retry(http, url, first_id)
        assert status == 202 and body["retry_of"] == first_id, body
        again = body["execution_id"]
        doc = await wait_node(http, url, again, "pause")
        assert doc["nodes"]["first"]["status"] == "succeeded"
        assert doc["progress"] == 33  # the kept node counts as done
        assert started(await timeline(http, url, again)) == ["pause"]
        # one retry of a run at a time: a second click would run its failed nodes twice
        status, body = await retry(http, url, first_id)
        assert status == 409 and body["error"]["code"] == "not_retryable", body
        assert body["error"]["details"] == {"retry": again, "status": "running"}
        assert f"being retried already, by execution {again}" in body["error"]["message"]
        # a run still going is not retried; a cancel ends this one too
        status, body = await retry(http, url, again)
        assert status == 409 and body["error"]["code"] == "not_retryable", body
        assert "has not ended (it is running)" in body["error"]["message"]
        await post(http, f"{url}/api/v1/executions/{again}/cancel", {})
        assert (await wait_end(http, url, again))["status"] == "cancelled"
        # one retry of a chain at a time: with the retry of the retry going, the first run is
        # refused too (two operators, one retrying each, ran the failed nodes twice at once)
        status, body = await retry(http, url, again)
        assert status == 202 and body["retry_of"] == again, body
        third = body["execution_id"]
        await wait_node(http, url, third, "pause")
        status, body = await retry(http, url, first_id)
        assert status == 409 and body["error"]["details"]["retry"] == third, body
        await post(http, f"{url}/api/v1/executions/{third}/cancel", {})
        assert (await wait_end(http, url, third))["status"] == "cancelled"


async def test_a_retried_parent_runs_its_child_again_on_the_pinned_version(
    cluster: Cluster,
) -> None:
    url = cluster.url
    async with aiohttp.ClientSession() as http:
        await register(http, url, CHILD.format(version="1.0.0", sleep="30s"))
        await register(http, url, PARENT)
        status, body = await post(http, f"{url}/trigger/trunk", {})
        assert status == 202, body
        parent = body["execution_id"]

        async def child() -> Any:
            doc = await get(http, f"{url}/api/v1/executions/{parent}")
            return doc["children"][0] if doc["children"] else None

        child_id = await wait_for("the child to start", child)
        await wait_node(http, url, child_id, "wait")
        # a child is retried through its parent, which starts its node's child again
        status, body = await retry(http, url, child_id)
        assert status == 409 and body["error"]["code"] == "not_retryable", body
        assert body["error"]["details"] == {"parent_execution_id": parent}
        await post(http, f"{url}/api/v1/executions/{parent}/cancel", {})
        assert (await wait_end(http, url, parent))["status"] == "cancelled"
        assert (await wait_end(http, url, child_id))["status"] == "cancelled"

        # a newer child in range since: the retry keeps the version the first run pinned,
        # whose outputs the kept nodes were made with
        await register(http, url, CHILD.format(version="1.1.0", sleep="1ms"))
        status, body = await retry(http, url, parent, {"wait": True, "timeout": 5})
        assert status == 202 and body["status"] == "running", body
        again = body["execution_id"]
        doc = await wait_node(http, url, again, "sub")
        assert doc["nodes"]["first"]["status"] == "succeeded"
        [new_child] = await wait_for("the retry's child", _children(http, url, again))
        assert new_child != child_id
        child_doc = await get(http, f"{url}/api/v1/executions/{new_child}")
        assert child_doc["version"] == "1.0.0"
        assert child_doc["parent_execution_id"] == again
        await post(http, f"{url}/api/v1/executions/{again}/cancel", {})
        assert (await wait_end(http, url, again))["status"] == "cancelled"


def _children(http: aiohttp.ClientSession, url: str, eid: str) -> Any:
    async def found() -> Any:
        return (await get(http, f"{url}/api/v1/executions/{eid}"))["children"]

    return found


async def test_retries_refused_and_sent_twice(cluster: Cluster) -> None:
    url = cluster.url
    async with aiohttp.ClientSession() as http:
        far = int(time.time()) + 3600
        failed = await gated_run(http, url, 1, far)

        status, body = await retry(http, url, "no-such-run")
        assert status == 404 and body["error"]["code"] == "not_found", body
        status, body = await retry(http, url, failed, {"inputs": {"n": 2}})
        assert status == 400 and "unknown field(s) inputs" in body["error"]["message"], body
        status, body = await retry(http, url, failed, {"wait": "yes"})
        assert status == 400 and body["error"]["message"] == "wait must be true or false"
        status, body = await retry(http, url, failed, [1])
        assert status == 400, body

        # the same key twice: one retry
        status, one = await retry(http, url, failed, {}, **{"Idempotency-Key": "k1"})
        assert status == 202, one
        status, two = await retry(http, url, failed, {}, **{"Idempotency-Key": "k1"})
        assert status == 202 and two["execution_id"] == one["execution_id"], two
        # ...and the key sent with another request is refused, as for a trigger
        status, body = await post(
            http,
            f"{url}/trigger/gated",
            {"inputs": {"n": 1, "open_at": far}},
            **{"Idempotency-Key": "k1"},
        )
        assert status == 422 and body["error"]["code"] == "idempotency_key_reused", body

        done = await wait_end(http, url, one["execution_id"])
        assert done["status"] == "partial"  # the gate is still shut
        status, body = await post(
            http, f"{url}/trigger/gated", {"inputs": {"n": 1, "open_at": 0}, "wait": True}
        )
        assert status == 200 and body["status"] == "succeeded", body
        status, body = await retry(http, url, body["execution_id"])
        assert status == 409 and body["error"]["code"] == "not_retryable", body
        assert body["error"]["message"].endswith("succeeded: it has nothing to run again")


async def test_retry_over_grpc(cluster: Cluster) -> None:
    url = cluster.url
    async with aiohttp.ClientSession() as http:
        until = int(time.time()) + 3
        failed = await gated_run(http, url, 2, until)
    await wait_for("the gate to open", _after(until))
    async with grpc.aio.insecure_channel(cluster.orchestrator.grpc_address) as channel:
        stub = pb_grpc.OrchestratorStub(channel)
        done = await stub.RetryExecution(
            pb.RetryExecutionRequest(execution_id=failed, wait=True, idempotency_key="g1"),
            metadata=AUTH,
        )
        assert done.execution.status == "succeeded" and done.execution.retry_of == failed
        assert json.loads(done.execution.outputs_json) == {"last": {"n": 21, "side": "side"}}
        assert {n.node_id: n.status for n in done.execution.nodes}["first"] == "succeeded"
        again = await stub.RetryExecution(
            pb.RetryExecutionRequest(execution_id=failed, idempotency_key="g1"), metadata=AUTH
        )
        assert again.execution_id == done.execution_id
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.RetryExecution(
                pb.RetryExecutionRequest(execution_id=done.execution_id), metadata=AUTH
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(caught.value).reason == "not_retryable"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.RetryExecution(pb.RetryExecutionRequest(), metadata=AUTH)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "execution_id" in (caught.value.details() or "")
        # a key sent before with another request is named as the field it is here
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ExecuteWorkflow(
                pb.ExecuteWorkflowRequest(workflow_id="gated", idempotency_key="g1"),
                metadata=AUTH,
            )
        assert error_info(caught.value).reason == "idempotency_key_reused"
        assert "idempotency_key 'g1' was sent with other inputs_json or version" in (
            caught.value.details() or ""
        )


def dagctl(url: str, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv), {"DAGCTL_SERVER": url, "DAGCTL_TOKEN": "s3cret"})
    seen = capsys.readouterr()
    return code, seen.out, seen.err


async def test_dagctl_retry(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    url = cluster.url
    async with aiohttp.ClientSession() as http:
        until = int(time.time()) + 3
        failed = await gated_run(http, url, 3, until)
        # by the start of its id, as cancel takes it; not by its end
        code, out, err = dagctl(url, capsys, "retry", failed[-10:])
        assert code == 2 and "retry takes an execution's whole id" in err, err
        code, out, err = dagctl(url, capsys, "retry", failed[:12])
        assert code == 0, err
        queued = out.strip()
        assert f", a retry of {failed}; status: " in err
        done = await wait_end(http, url, queued)
        assert done["status"] == "partial"  # too soon: the gate is still shut
        await wait_for("the gate to open", _after(until))
        code, out, err = dagctl(url, capsys, "retry", queued, "--wait")
        assert code == 0, err
        assert "succeeded" in out and '"n": 31' in out, out
        last = out.split("execution ", 1)[1].split(" ", 1)[0]
        code, out, err = dagctl(url, capsys, "describe", "execution", last)
        assert code == 0 and ["Retry", "of", queued] in [line.split() for line in out.splitlines()]
        # its kept nodes say so where an engine would be named
        assert f"kept from {queued[-8:]}" in out, out
        code, out, err = dagctl(url, capsys, "events", last)
        assert code == 0, err
        assert f"retry of {queued[-8:]}" in out and f"kept from {queued[-8:]}" in out, out
        code, out, err = dagctl(url, capsys, "retry", failed, "-o", "json")
        assert code == 0 and json.loads(out)["retry_of"] == failed, out
        third = json.loads(out)["execution_id"]
        assert (await wait_end(http, url, third))["status"] == "succeeded"
        # a run that succeeded is refused, named
        code, out, err = dagctl(url, capsys, "retry", third)
        assert code != 0 and out == ""
        assert err.startswith("dagctl: not_retryable: execution ") and "succeeded" in err, err
