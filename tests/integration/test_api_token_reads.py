"""With ``API_TOKEN`` set, every API route and gRPC method needs the bearer token, reads and
live streams too: a run's inputs, outputs and events often carry secrets. Probes, metrics, the
OpenAPI document, gRPC health and reflection stay open; a spec's own ``http.path`` keeps its
own auth.

A real ``python -m orchestrator`` with one engine answers the routes and methods, as served;
the live-stream places are counted in process, where the hub can be looked at.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from engine import wire
from engine.api import dagengine_pb2 as pb
from engine.api import dagengine_pb2_grpc as pb_grpc
from orchestrator import serving_http
from orchestrator.fleet import health_check
from orchestrator.lua_checking import LuaSyntaxChecker
from orchestrator.orchestrating import Orchestrator
from orchestrator.serving import ORCHESTRATOR_SERVICE
from orchestrator.serving_grpc import OrchestratorService, unparsed_request_status
from orchestrator.serving_http import OPEN_PATHS, HttpApi
from orchestrator.store import Store
from tests.component.serving_helpers import facade
from tests.integration.api import wait_for
from tests.integration.conftest import Cluster, running_cluster

pytestmark = pytest.mark.slow

API_TOKEN = "s3cret"
HOOK_TOKEN = "h00k-t0ken"
RIGHT = {"Authorization": f"Bearer {API_TOKEN}"}
NO_TOKEN = "this call needs Authorization: Bearer <token>"
# metadata keys are lower case in gRPC: the refusal names the key as a client must send it
NO_GRPC_TOKEN = "this call needs 'authorization: Bearer <token>' metadata"
BAD_TOKEN = "the bearer token is not valid"
REFUSALS = [
    pytest.param({}, 401, "unauthorized", NO_TOKEN, id="none"),
    pytest.param({"Authorization": "Basic czNjcmV0"}, 401, "unauthorized", NO_TOKEN, id="basic"),
    pytest.param({"Authorization": "Bearer nope"}, 403, "forbidden", BAD_TOKEN, id="wrong"),
]
GRPC_REFUSALS = [
    pytest.param((), grpc.StatusCode.UNAUTHENTICATED, NO_GRPC_TOKEN, id="none"),
    pytest.param(
        (("authorization", "Bearer nope"),),
        grpc.StatusCode.PERMISSION_DENIED,
        BAD_TOKEN,
        id="wrong",
    ),
]

SPEC = """
id: secrets
version: 1.0.0
triggers:
  - http: {path: /hooks/own-bearer, auth: {bearer_env: HOOK_TOKEN}}
  - http: {path: /hooks/no-auth}
nodes:
  - id: a
    lua: return { echoed = inputs.password }
"""


@dataclass
class Known:
    """What the reads are asked about: a finished run, its workflow and a trigger."""

    cluster: Cluster
    execution_id: str
    trigger_id: str

    @property
    def url(self) -> str:
        return self.cluster.url


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Known]:
    with running_cluster(
        tmp_path_factory.mktemp("token-reads"),
        engines=1,
        API_TOKEN=API_TOKEN,
        HOOK_TOKEN=HOOK_TOKEN,
    ) as cluster:
        execution_id, trigger_id = asyncio.run(_prepare(cluster.url))
        yield Known(cluster, execution_id, trigger_id)


async def _prepare(url: str) -> tuple[str, str]:
    async with aiohttp.ClientSession(headers=RIGHT) as http:
        async with http.post(
            f"{url}/api/v1/workflows",
            data=SPEC,
            headers={"Content-Type": "application/yaml"},
        ) as resp:
            assert resp.status == 201, await resp.text()
        async with http.post(
            f"{url}/trigger/secrets",
            json={"inputs": {"password": "hunter2"}, "wait": True, "timeout": 60},
        ) as resp:
            done = await resp.json()
            assert resp.status == 200 and done["status"] == "succeeded", done
        async with http.get(f"{url}/api/v1/triggers", params={"workflow": "secrets"}) as resp:
            triggers = (await resp.json())["triggers"]
    return str(done["execution_id"]), str(triggers[0]["id"])


# -- HTTP ---------------------------------------------------------------------------------------

READS = [
    "/api/v1/workflows",
    "/api/v1/workflows/{workflow_id}",
    "/api/v1/workflows/{workflow_id}/versions/{version}",
    "/api/v1/executions",
    "/api/v1/executions/{execution_id}",
    "/api/v1/executions/{execution_id}/events",
    "/api/v1/events",
    "/api/v1/engines",
    "/api/v1/backup",
    "/api/v1/triggers",
    "/api/v1/triggers/{trigger_id}",
    "/api/v1/triggers/{trigger_id}/history",
]


def concrete(route: str, known: Known) -> tuple[str, dict[str, str]]:
    """The route's path with real ids in it, and its query; the live stream follows the run
    that has ended, so it replays the run's events and ends by itself."""
    path = route.format(
        workflow_id="secrets",
        version="1.0.0",
        execution_id=known.execution_id,
        trigger_id=known.trigger_id,
    )
    return path, {"execution": known.execution_id} if route == "/api/v1/events" else {}


def test_every_guarded_read_of_the_route_table_is_tried_here() -> None:
    routes = HttpApi(None, token=None, max_body=1).routes()  # type: ignore[arg-type]
    reads = {path for method, path, _ in routes if method == "GET" and path not in OPEN_PATHS}
    assert reads == set(READS)
    assert OPEN_PATHS == {"/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"}


@pytest.mark.parametrize("route", READS)
@pytest.mark.parametrize(("headers", "status", "code", "message"), REFUSALS)
async def test_a_read_without_the_right_token_is_refused(
    known: Known, route: str, headers: dict[str, str], status: int, code: str, message: str
) -> None:
    path, query = concrete(route, known)
    async with (
        aiohttp.ClientSession() as http,
        http.get(known.url + path, params=query, headers=headers) as resp,
    ):
        assert resp.status == status
        assert resp.content_type == "application/json"
        assert await resp.json() == {"error": {"code": code, "message": message, "details": {}}}


@pytest.mark.parametrize("route", READS)
async def test_a_read_with_the_token_is_answered(known: Known, route: str) -> None:
    path, query = concrete(route, known)
    async with (
        aiohttp.ClientSession() as http,
        http.get(known.url + path, params=query, headers=RIGHT) as resp,
    ):
        assert resp.status == 200, await resp.text()
        body = await resp.read()
    if route in ("/api/v1/executions/{execution_id}", "/api/v1/executions"):
        assert b"hunter2" in body  # what the token now keeps from anyone without it
    if route == "/api/v1/events":
        assert resp.content_type == "text/event-stream"
        assert b"execution.succeeded" in body


async def test_a_head_request_is_guarded_as_its_get(known: Known) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.head(f"{known.url}/api/v1/executions") as resp:
            assert resp.status == 401
        async with http.head(f"{known.url}/api/v1/executions", headers=RIGHT) as resp:
            assert resp.status == 200


@pytest.mark.parametrize("path", sorted(OPEN_PATHS))
async def test_probes_metrics_and_the_openapi_document_stay_open(known: Known, path: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(known.url + path, headers={"Authorization": "Bearer nope"}) as wrong,
        http.get(known.url + path) as resp,
    ):
        assert resp.status == 200, await resp.text()
        assert wrong.status == 200  # a wrong token is not held against an open route


async def test_the_openapi_document_marks_every_route_but_the_open_ones(known: Known) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{known.url}/api/v1/openapi.json") as resp,
    ):
        doc = await resp.json()
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    seen = 0
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            where = f"{method.upper()} {path}"
            if path in OPEN_PATHS:
                assert op.get("security", []) == [], where
                assert "401" not in op["responses"], where
                continue
            seen += 1
            assert op["security"] == [{"bearer": []}], where
            for code in ("401", "403"):
                schema = op["responses"][code]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, where
    assert seen == 22  # 12 reads, 10 changes
    for read in READS:
        assert doc["paths"][read]["get"]["security"] == [{"bearer": []}], read


async def test_a_hook_with_its_own_bearer_token_takes_it_and_not_the_api_token(
    known: Known,
) -> None:
    url = f"{known.url}/hooks/own-bearer"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            url, json={"inputs": {}}, headers={"Authorization": f"Bearer {HOOK_TOKEN}"}
        ) as resp:
            assert resp.status == 202, await resp.text()
        async with http.post(url, json={"inputs": {}}, headers=RIGHT) as resp:
            assert resp.status == 403  # its own token, not API_TOKEN
            assert (await resp.json())["error"]["message"] == (
                "the bearer token is not valid for /hooks/own-bearer"
            )
        async with http.post(url, json={"inputs": {}}) as resp:
            assert resp.status == 401


async def test_a_hook_without_auth_of_its_own_takes_the_api_token(known: Known) -> None:
    url = f"{known.url}/hooks/no-auth"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"inputs": {}}) as resp:
            assert resp.status == 401
        async with http.post(url, json={"inputs": {}}, headers=RIGHT) as resp:
            assert resp.status == 202, await resp.text()


# -- gRPC ---------------------------------------------------------------------------------------

SERVICE = pb.DESCRIPTOR.services_by_name["Orchestrator"]


def read_requests(known: Known) -> dict[str, Message]:
    return {
        "GetWorkflow": pb.GetWorkflowRequest(workflow_id="secrets"),
        "ListWorkflows": pb.ListWorkflowsRequest(),
        "GetExecution": pb.GetExecutionRequest(execution_id=known.execution_id),
        "ListExecutions": pb.ListExecutionsRequest(workflow_id="secrets"),
        "WatchEvents": pb.WatchEventsRequest(execution_id=known.execution_id),
        "GetSubWorkflowStatus": pb.GetSubWorkflowStatusRequest(execution_id=known.execution_id),
        "ListEngines": pb.ListEnginesRequest(),
        "ListTriggers": pb.ListTriggersRequest(workflow_id="secrets"),
        "GetTrigger": pb.TriggerRequest(trigger_id=known.trigger_id),
    }


async def call(
    stub: pb_grpc.OrchestratorStub, name: str, request: Message, metadata: Any = ()
) -> Any:
    method = getattr(stub, name)
    if SERVICE.methods_by_name[name].server_streaming:
        return [event async for event in method(request, metadata=metadata, timeout=30)]
    return await method(request, metadata=metadata, timeout=30)


@pytest.mark.parametrize(("metadata", "code", "message"), GRPC_REFUSALS)
async def test_every_grpc_method_without_the_right_token_is_refused_before_anything_else(
    known: Known, metadata: Any, code: grpc.StatusCode, message: str
) -> None:
    """Every method the service declares, with an empty request: the token is checked before
    the request is looked at (an empty id would be INVALID_ARGUMENT)."""
    async with grpc.aio.insecure_channel(known.cluster.orchestrator.grpc_address) as channel:
        stub = pb_grpc.OrchestratorStub(channel)
        for method in SERVICE.methods:
            request = getattr(pb, method.input_type.name)()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(stub, method.name, request, metadata)
            assert (refused.value.code(), refused.value.details()) == (code, message), method.name


@pytest.mark.parametrize(("metadata", "code", "message"), GRPC_REFUSALS)
async def test_each_grpc_read_without_the_right_token_is_refused(
    known: Known, metadata: Any, code: grpc.StatusCode, message: str
) -> None:
    async with grpc.aio.insecure_channel(known.cluster.orchestrator.grpc_address) as channel:
        stub = pb_grpc.OrchestratorStub(channel)
        for name, request in read_requests(known).items():
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(stub, name, request, metadata)
            assert (refused.value.code(), refused.value.details()) == (code, message), name


async def test_each_grpc_read_with_the_token_is_answered(known: Known) -> None:
    auth = (("authorization", f"Bearer {API_TOKEN}"),)
    async with grpc.aio.insecure_channel(known.cluster.orchestrator.grpc_address) as channel:
        stub = pb_grpc.OrchestratorStub(channel)
        answers = {
            name: await call(stub, name, request, auth)
            for name, request in read_requests(known).items()
        }
    assert answers["GetWorkflow"].id == "secrets"
    assert [w.id for w in answers["ListWorkflows"].workflows] == ["secrets"]
    assert "hunter2" in answers["GetExecution"].inputs_json
    assert known.execution_id in [e.id for e in answers["ListExecutions"].executions]
    assert answers["WatchEvents"][-1].type == "execution.succeeded"
    assert answers["GetSubWorkflowStatus"].status == "succeeded"
    assert len(answers["ListEngines"].engines) == 1
    assert known.trigger_id in [t.id for t in answers["ListTriggers"].triggers]
    assert answers["GetTrigger"].id == known.trigger_id


async def test_grpc_health_and_reflection_stay_open(known: Known) -> None:
    async with grpc.aio.insecure_channel(known.cluster.orchestrator.grpc_address) as channel:
        reply = await health_check(channel)(
            health_pb2.HealthCheckRequest(service=ORCHESTRATOR_SERVICE), timeout=30
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # the reflection package types its stub for grpc's sync channel only
        reflection: Any = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[arg-type]
        asked = reflection_pb2.ServerReflectionRequest(list_services="")
        answers = [a async for a in reflection.ServerReflectionInfo(iter([asked]), timeout=30)]
    listed = {s.name for s in answers[0].list_services_response.service}
    assert ORCHESTRATOR_SERVICE in listed


# -- live-stream places --------------------------------------------------------------------------


@asynccontextmanager
async def guarded_servers(orch: Orchestrator) -> AsyncIterator[tuple[str, str]]:
    """``orch`` behind API_TOKEN on loopback, over HTTP and gRPC, as ``python -m orchestrator``
    serves it: the base URL and the gRPC target."""
    runner = web.AppRunner(HttpApi(orch, token=API_TOKEN, max_body=1 << 20).app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server = grpc.aio.server(interceptors=[wire.DecodeRequests(unparsed_request_status)])
    pb_grpc.add_OrchestratorServicer_to_server(OrchestratorService(orch, token=API_TOKEN), server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
    finally:
        orch.hub.close_all()
        await server.stop(0)
        await runner.cleanup()


async def test_refused_streams_take_no_place_among_the_live_streams(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One place among the live streams: callers without the token, however many, never take
    it, and are refused as such even while a token holder has it."""
    monkeypatch.setattr(serving_http, "SSE_HEARTBEAT", 0.05)  # a gone reader is found soon
    store = await Store.open(str(tmp_path / "state.db"))
    checker = LuaSyntaxChecker()
    orch = facade(store, checker)
    orch.hub.max_subscribers = 1
    wrong = {"Authorization": "Bearer nope"}
    bad_metadata = (("authorization", "Bearer nope"),)
    auth = (("authorization", f"Bearer {API_TOKEN}"),)
    try:
        async with (
            guarded_servers(orch) as (base, target),
            aiohttp.ClientSession() as http,
            grpc.aio.insecure_channel(target) as channel,
        ):
            url = f"{base}/api/v1/events"
            stub = pb_grpc.OrchestratorStub(channel)

            async def refused(*, taken: bool) -> None:
                for headers, status in (({}, 401), (wrong, 403)):
                    for _ in range(3):
                        async with http.get(url, headers=headers) as resp:
                            # not its body: an opened stream would not end
                            assert resp.status == status, resp.content_type
                for metadata, code in (
                    ((), grpc.StatusCode.UNAUTHENTICATED),
                    (bad_metadata, grpc.StatusCode.PERMISSION_DENIED),
                ):
                    for _ in range(3):
                        with pytest.raises(grpc.aio.AioRpcError) as caught:
                            await call(stub, "WatchEvents", pb.WatchEventsRequest(), metadata)
                        assert caught.value.code() == code
                assert orch.hub.subscribers == (1 if taken else 0)

            await refused(taken=False)
            # the one place is still free for a token holder, over SSE
            async with http.get(url, headers=RIGHT) as sse:
                assert sse.status == 200
                assert orch.hub.subscribers == 1
                with pytest.raises(grpc.aio.AioRpcError) as full:
                    await call(stub, "WatchEvents", pb.WatchEventsRequest(), auth)
                assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                await refused(taken=True)  # the token is asked for before the place
            await wait_for("the SSE stream to give its place back", _none_open(orch))
            # and over gRPC
            watch = stub.WatchEvents(pb.WatchEventsRequest(), metadata=auth)
            await wait_for("a watch to open", _one_open(orch))
            async with http.get(url, headers=RIGHT) as full_sse:
                assert full_sse.status == 503
            await refused(taken=True)
            watch.cancel()
            await wait_for("the watch to give its place back", _none_open(orch))
    finally:
        checker.close()
        await store.close()


def _none_open(orch: Orchestrator) -> Any:
    async def probe() -> bool:
        return orch.hub.subscribers == 0

    return probe


def _one_open(orch: Orchestrator) -> Any:
    async def probe() -> bool:
        return orch.hub.subscribers == 1

    return probe
