"""JSON that users send, over the real HTTP and gRPC services on a real store: a key written
twice is refused naming the key and where it was sent (request bodies, hook bodies, JSON
fields), as spec files and ``python -m engine run`` refuse it, instead of the last one
winning unseen (but for a raw_body hook's third-party payload); and ``inputs`` of null are
none on both APIs, as inputs not given at all are.

No engines: accepted runs stay queued (a stub dispatcher takes them).
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from engine import wire
from engine.api import dagengine_pb2 as pb
from orchestrator.orchestrating import Orchestrator
from orchestrator.triggering import Triggers
from tests.component.serving_helpers import served_facade
from tests.net import error_info

SPEC = {
    "id": "w",
    "version": "1.0.0",
    "triggers": [{"http": {"path": "/hooks/raw", "raw_body": True}}],
    "nodes": [{"id": "a", "lua": "return 1"}],
}


class StubDispatcher:
    """Takes runs and keeps them queued."""

    queue_depth = 0

    def submit(self, execution_id: str, workflow_id: str, **_: object) -> None:
        pass

    def dequeue(self, execution_id: str) -> bool:
        return True


class Served:
    def __init__(self, url: str, stub: Any, orch: Orchestrator) -> None:
        self.url = url
        self.stub = stub  # grpc.aio's stubs are typed as sync ones
        self.orch = orch

    async def post(self, path: str, body: bytes) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                self.url + path, data=body, headers={"Content-Type": "application/json"}
            ) as resp,
        ):
            return resp.status, await resp.json()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with served_facade(tmp_path, specs=[SPEC], dispatcher=StubDispatcher()) as f:
        yield Served(f.url, f.stub, f.orch)


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


# -- a key written twice ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "key"),
    [
        # the whole of "inputs" twice: the run took 5, which it then refused as inputs
        ("/trigger/w", b'{"inputs": {"a": 1}, "inputs": 5}', "inputs"),
        ("/trigger/w", b'{"inputs": {"v": 1, "v": 2}, "wait": false}', "v"),
        ("/api/v1/workflows/w/executions", b'{"inputs": {"deep": [{"x": 1, "x": 1}]}}', "x"),
        (
            "/api/v1/triggers",
            b'{"workflow_id": "w", "cron": "@hourly", "inputs": {"n": 1, "n": 2}}',
            "n",
        ),
        ("/api/v1/executions/nope/cancel", b'{"reason": "a", "reason": "b"}', "reason"),
    ],
)
async def test_a_body_with_a_key_written_twice_is_a_400_naming_the_key(
    served: Served, path: str, body: bytes, key: str
) -> None:
    status, answer = await served.post(path, body)
    assert status == 400, answer
    assert answer["error"]["code"] == "bad_json"
    assert answer["error"]["message"] == f"the request body holds a duplicate key {key!r}"
    assert answer["error"]["details"] == {"key": key}
    assert await served.orch.store.list_executions(workflow_id=None, status=None, limit=10) == []
    assert isinstance(served.orch.triggers, Triggers)
    assert [t["source"] for t in served.orch.triggers.listing(None, 100)] == ["spec"]  # none made


async def test_a_json_spec_with_a_key_twice_is_still_told_by_the_spec_reader_with_its_line(
    served: Served,
) -> None:
    text = '{"id": "w2", "version": "1.0.0",\n "id": "w3",\n "nodes": []}'
    status, answer = await served.post("/api/v1/workflows", text.encode())
    assert status == 400, answer
    problems = answer["error"]["details"]["problems"]
    assert any("line 2" in p and "duplicate key 'id'" in p for p in problems), problems


@pytest.mark.parametrize("method", ["ExecuteWorkflow", "CreateTrigger", "ExecuteSubWorkflow"])
async def test_a_json_field_with_a_key_written_twice_is_invalid_argument_naming_both(
    served: Served, method: str
) -> None:
    inputs = '{"v": {"k": 1, "k": 2}}'
    request: Any = {
        "ExecuteWorkflow": pb.ExecuteWorkflowRequest(workflow_id="w", inputs_json=inputs),
        "CreateTrigger": pb.CreateTriggerRequest(
            workflow_id="w", cron="@hourly", inputs_json=inputs
        ),
        "ExecuteSubWorkflow": pb.ExecuteSubWorkflowRequest(
            parent_execution_id="p", workflow_id="w", inputs_json=inputs
        ),
    }[method]
    err = await refused(getattr(served.stub, method)(request))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "inputs_json holds a duplicate key 'k'"
    info = error_info(err)
    assert info.reason == "bad_json"
    assert dict(info.metadata) == {"field": "inputs_json", "key": "k"}


async def test_a_long_key_written_twice_is_named_cut_short(served: Served) -> None:
    key = "k" * 300_000
    status, answer = await served.post(
        "/trigger/w", json.dumps({"inputs": {key: 1}}).replace("}}", f', "{key}": 2}}}}').encode()
    )
    assert status == 400, answer
    assert len(answer["error"]["message"]) < 400
    assert answer["error"]["message"].startswith("the request body holds a duplicate key 'kkk")


def test_only_what_users_send_is_read_strictly() -> None:
    # the engine's events never hold a key twice: their decoding keeps the fast decoder
    assert wire.loads('{"a": 1, "a": 2}') == {"a": 2}
    with pytest.raises(wire.DuplicateKey, match="duplicate key 'a'"):
        wire.loads_sent('{"a": 1, "a": 2}')
    # past the length where integers are checked one by one, both checks hold
    long_text = '{"pad": "' + "x" * 400 + '", "n": 1, "n": 2}'
    with pytest.raises(wire.DuplicateKey):
        wire.loads_sent(long_text)
    with pytest.raises(wire.RefusedJson, match="too large"):
        wire.loads_sent('{"pad": "' + "x" * 400 + '", "n": ' + "9" * 400 + "}")
    assert wire.loads_sent('{"a": {"a": 1}, "b": [{"a": 2}, {"a": 3}]}') == {
        "a": {"a": 1},
        "b": [{"a": 2}, {"a": 3}],
    }


# -- inputs of null ---------------------------------------------------------------------------


async def test_a_raw_body_hook_takes_its_sender_s_payload_as_sent(served: Served) -> None:
    # a third party's webhook cannot be asked to change: the last of a key written twice wins
    status, answer = await served.post("/hooks/raw", b'{"action": "opened", "action": "closed"}')
    assert status == 202, answer
    found = await served.orch.store.list_executions(workflow_id=None, status=None, limit=10)
    assert found is not None and [e["inputs"] for e in found] == [{"action": "closed"}]


async def test_inputs_of_null_are_none_over_http_and_grpc_alike(served: Served) -> None:
    # clients write an unset map as null (Go's nil, Java's defaults): it means none on both,
    # where gRPC's inputs_json "null" was refused and HTTP's took it
    status, answer = await served.post("/trigger/w", b'{"inputs": null}')
    assert status == 202, answer
    started = await served.stub.ExecuteWorkflow(
        pb.ExecuteWorkflowRequest(workflow_id="w", inputs_json="null")
    )
    found = await served.orch.store.list_executions(workflow_id=None, status=None, limit=10)
    assert found is not None
    assert {e["id"] for e in found} == {answer["execution_id"], started.execution_id}
    assert [e["inputs"] for e in found] == [{}, {}]
    # other inputs that are not an object are refused alike
    status, answer = await served.post("/trigger/w", b'{"inputs": [1]}')
    assert (status, answer["error"]["code"]) == (422, "invalid_inputs")
    err = await refused(
        served.stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(workflow_id="w", inputs_json="[1]"))
    )
    assert (err.code(), error_info(err).reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid_inputs",
    )


async def test_inputs_not_given_are_none_over_http_and_grpc_alike(served: Served) -> None:
    status, answer = await served.post("/trigger/w", b"{}")
    assert status == 202, answer
    started = await served.stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(workflow_id="w"))
    found = await served.orch.store.list_executions(workflow_id=None, status=None, limit=10)
    assert found is not None
    assert {e["id"] for e in found} == {answer["execution_id"], started.execution_id}
    assert [e["inputs"] for e in found] == [{}, {}]


@pytest.mark.parametrize("path", ["/trigger/w", "/api/v1/workflows", "/hooks/raw"])
async def test_a_body_past_the_limit_names_the_limit_and_its_setting(
    served: Served, path: str
) -> None:
    body = io.BytesIO(b'{"inputs": "' + b"x" * (2 << 20) + b'"}')
    async with (
        aiohttp.ClientSession() as http,
        http.post(served.url + path, data=body) as resp,
    ):
        status, answer = resp.status, await resp.json()
    assert status == 413
    assert answer["error"] == {
        "code": "body_too_large",
        "message": f"the request body is larger than the {1 << 20} bytes this server takes "
        "(MAX_BODY_BYTES)",
        "details": {"limit": 1 << 20},
    }
