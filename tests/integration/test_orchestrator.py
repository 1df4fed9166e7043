"""The orchestrator with real engines: registry, triggers, events, failover, restarts, refusals.

Every test talks HTTP (aiohttp) or gRPC to ``python -m orchestrator`` started as a process on
loopback, with engines as processes and the state in a real SQLite file.
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
import time
from collections import Counter
from typing import Any

import aiohttp
import grpc
import pytest

from engine import installed_version, wire
from engine.api import dagengine_pb2 as pb
from engine.api import dagengine_pb2_grpc as pb_grpc
from tests.integration.api import first_pause_last, raw_request, wait_node
from tests.integration.conftest import Cluster, StartCluster, stop_process

pytestmark = pytest.mark.slow

TOKEN = {"Authorization": "Bearer s3cret"}
AUTH = (("authorization", "Bearer s3cret"),)
"""TOKEN as gRPC metadata."""

DIAMOND = """
id: diamond
version: 1.0.0
nodes:
  - id: a
    lua: return { n = inputs.n or 1 }
  - id: b
    depends_on: [a]
    lua: return { v = results.a.n * 2 }
  - id: c
    depends_on: [a]
    lua: return { v = results.a.n * 3 }
  - id: d
    depends_on: [b, c]
    lua: return { total = results.b.v + results.c.v }
"""


async def register(
    http: aiohttp.ClientSession, url: str, text: str, *, force: bool = False
) -> tuple[int, Any]:
    async with http.post(
        f"{url}/api/v1/workflows" + ("?force=true" if force else ""),
        data=text,
        headers={"Content-Type": "application/yaml", **TOKEN},
    ) as resp:
        return resp.status, await resp.json()


async def trigger(
    http: aiohttp.ClientSession, url: str, workflow: str, body: Any = None, **headers: str
) -> tuple[int, Any]:
    async with http.post(
        f"{url}/trigger/{workflow}", json=body or {}, headers={**TOKEN, **headers}
    ) as resp:
        return resp.status, await resp.json()


async def get(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url, headers=TOKEN) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def wait_status(
    http: aiohttp.ClientSession, url: str, execution_id: str, timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        doc: dict[str, Any] = await get(http, f"{url}/api/v1/executions/{execution_id}")
        if doc["finished_at"] is not None or time.monotonic() > deadline:
            return doc
        await asyncio.sleep(0.1)


async def wait_engines(http: aiohttp.ClientSession, url: str, ready: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        engines = (await get(http, f"{url}/api/v1/engines"))["engines"]
        if sum(1 for e in engines if e["state"] == "ready") == ready:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"engines never reached {ready} ready: {engines}")


# -- the shared cluster ---------------------------------------------------------------------------


async def test_trigger_and_wait_returns_outputs_and_the_execution_json(cluster: Cluster) -> None:
    async with aiohttp.ClientSession() as http:
        await wait_engines(http, cluster.url, 2)
        status, _ = await register(http, cluster.url, DIAMOND)
        assert status in (200, 201)
        status, body = await trigger(
            http, cluster.url, "diamond", {"inputs": {"n": 5}, "wait": True}
        )
        assert status == 200, body
        assert body["status"] == "succeeded"
        assert body["outputs"] == {"d": {"total": 25}}
        doc = await get(http, f"{cluster.url}{body['status_url']}")
        assert doc["workflow_id"] == "diamond" and doc["version"] == "1.0.0"
        assert doc["inputs"] == {"n": 5} and doc["progress"] == 100
        assert list(doc["nodes"]) == ["a", "b", "c", "d"]
        assert all(n["status"] == "succeeded" and n["attempts"] == 1 for n in doc["nodes"].values())
        assert doc["nodes"]["a"]["engine_id"] in ("engine-0", "engine-1")
        assert doc["nodes"]["d"]["output"] == {"total": 25}
        listed = await get(http, f"{cluster.url}/api/v1/executions?workflow=diamond&limit=5")
        assert listed["executions"][0]["id"] == body["execution_id"]


async def test_trigger_without_wait_answers_202_and_the_run_completes(cluster: Cluster) -> None:
    async with aiohttp.ClientSession() as http:
        await register(http, cluster.url, DIAMOND)
        status, body = await trigger(http, cluster.url, "diamond", {"inputs": {"n": 1}})
        assert status == 202, body
        assert body["status_url"] == f"/api/v1/executions/{body['execution_id']}"
        doc = await wait_status(http, cluster.url, body["execution_id"])
        assert doc["status"] == "succeeded"
        assert doc["outputs"] == {"d": {"total": 5}}


async def test_version_rules_over_http(cluster: Cluster) -> None:
    base = "id: lib\nversion: {v}\nnodes:\n  - id: x\n    lua: return {{ v = '{v}', k = {k} }}\n"
    user = (
        "id: app\nversion: {v}\nnodes:\n  - id: call\n    workflow: {{id: lib, version: '{r}'}}\n"
    )
    async with aiohttp.ClientSession() as http:
        url = cluster.url
        assert (await register(http, url, base.format(v="1.9.0", k=1)))[0] == 201
        # identical content: a no-op
        assert (await register(http, url, base.format(v="1.9.0", k=1)))[0] == 200
        status, body = await register(http, url, base.format(v="1.9.0", k=2))
        assert status == 409 and body["error"]["code"] == "version_conflict"
        # 1.10.0 > 1.9.0 by SemVer precedence, not by string order
        assert (await register(http, url, base.format(v="1.10.0", k=1)))[0] == 201
        status, body = await register(http, url, base.format(v="1.2.0", k=1))
        assert status == 409 and body["error"]["code"] == "version_not_newer"
        assert "1.10.0" in body["error"]["message"]
        # a dependent pins the range ^1.9
        assert (await register(http, url, user.format(v="1.0.0", r="^1.9")))[0] == 201
        status, body = await register(http, url, base.format(v="2.0.0", k=1))
        assert status == 409 and body["error"]["code"] == "dependents_out_of_range"
        assert "app@1.0.0" in body["error"]["message"]
        wf = await get(http, f"{url}/api/v1/workflows/lib")
        assert wf["version"] == "1.10.0"
        status, body = await register(http, url, base.format(v="2.0.0", k=1), force=True)
        assert status == 201
        # what force overrode is told, and only then
        assert body["workflow"]["forced_past"] == ["app@1.0.0 (needs ^1.9)"]
        assert (
            "forced_past"
            not in (await register(http, url, user.format(v="1.1.0", r="^2")))[1]["workflow"]
        )
        wf = await get(http, f"{url}/api/v1/workflows/lib")
        assert wf["version"] == "2.0.0"
        assert wf["versions"] == ["1.9.0", "1.10.0", "2.0.0"]
        one = await get(http, f"{url}/api/v1/workflows/lib/versions/1.9.0")
        assert one["spec"]["nodes"][0]["lua"] == "return { v = '1.9.0', k = 1 }"
        # ranges when triggering
        status, body = await trigger(http, url, "lib", {"version": "~1.9.0", "wait": True}, **TOKEN)
        assert status == 200 and body["outputs"] == {"x": {"v": "1.9.0", "k": 1}}
        status, body = await trigger(http, url, "lib", {"version": "^1", "wait": True})
        assert status == 200 and body["outputs"] == {"x": {"v": "1.10.0", "k": 1}}
        status, body = await trigger(http, url, "lib", {"wait": True})
        assert body["outputs"] == {"x": {"v": "2.0.0", "k": 1}}
        # a cycle between workflows: lib may not use app, which uses lib
        cyclic = "id: lib\nversion: 3.0.0\nnodes:\n  - id: back\n    workflow: {id: app}\n"
        status, body = await register(http, url, cyclic, force=True)
        assert status == 409 and body["error"]["code"] == "workflow_cycle"
        assert "lib -> app -> lib" in body["error"]["message"]


async def test_sse_streams_a_runs_events_in_order(cluster: Cluster) -> None:
    async with aiohttp.ClientSession() as http:
        await register(http, cluster.url, DIAMOND)
        status, body = await trigger(http, cluster.url, "diamond", {"inputs": {"n": 2}})
        assert status == 202
        eid = body["execution_id"]
        events: list[dict[str, Any]] = []
        async with http.get(f"{cluster.url}/api/v1/events?execution={eid}", headers=TOKEN) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            async for raw in resp.content:
                line = raw.decode().strip()
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
                    if events[-1]["type"].startswith("execution.") and events[-1]["type"] not in (
                        "execution.queued",
                        "execution.started",
                    ):
                        break
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(1, len(seqs) + 1))
        kinds = [e["type"] for e in events]
        assert kinds[0] == "execution.queued" and kinds[1] == "execution.started"
        assert kinds[-1] == "execution.succeeded"
        assert kinds.index("node.succeeded") < kinds.index("execution.succeeded")
        stored = await get(http, f"{cluster.url}/api/v1/executions/{eid}/events")
        assert [e["seq"] for e in stored["events"]] == seqs
        # a finished run's stream replays and ends by itself; resuming past its end is 204,
        # which tells an EventSource to stop reconnecting
        async with http.get(f"{cluster.url}/api/v1/events?execution={eid}", headers=TOKEN) as resp:
            text = await asyncio.wait_for(resp.text(), 30)
        ids = [int(line[3:]) for line in text.splitlines() if line.startswith("id:")]
        assert ids == seqs
        async with http.get(
            f"{cluster.url}/api/v1/events?execution={eid}",
            headers={"Last-Event-ID": str(seqs[-1]), **TOKEN},
        ) as resp:
            assert resp.status == 204
        async with http.get(
            f"{cluster.url}/api/v1/events?execution={eid}",
            headers={"Last-Event-ID": str(seqs[-2]), **TOKEN},
        ) as resp:
            text = await asyncio.wait_for(resp.text(), 30)
        assert [line for line in text.splitlines() if line.startswith("id:")] == [f"id: {seqs[-1]}"]
        # both filters: the run must be of that workflow (its events streamed regardless before)
        async with http.get(
            f"{cluster.url}/api/v1/events?execution={eid}&workflow=diamond", headers=TOKEN
        ) as resp:
            assert "execution.succeeded" in await asyncio.wait_for(resp.text(), 30)
        async with http.get(
            f"{cluster.url}/api/v1/events?execution={eid}&workflow=etl", headers=TOKEN
        ) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["message"] == (
                f"execution {eid} is a run of diamond, not of etl"
            )


async def test_idempotency_key_returns_the_first_execution(cluster: Cluster) -> None:
    async with aiohttp.ClientSession() as http:
        await register(http, cluster.url, DIAMOND)
        first = await trigger(http, cluster.url, "diamond", {}, **{"Idempotency-Key": "k-1"})
        again = await trigger(http, cluster.url, "diamond", {}, **{"Idempotency-Key": "k-1"})
        other = await trigger(http, cluster.url, "diamond", {}, **{"Idempotency-Key": "k-2"})
        assert first[1]["execution_id"] == again[1]["execution_id"]
        assert other[1]["execution_id"] != first[1]["execution_id"]
        # how long the caller waits is not part of what it asked for
        same = await trigger(
            http,
            cluster.url,
            "diamond",
            {"inputs": {}, "wait": False},
            **{"Idempotency-Key": "k-1"},
        )
        assert same[1]["execution_id"] == first[1]["execution_id"]
        changed = await trigger(
            http, cluster.url, "diamond", {"inputs": {"n": 3}}, **{"Idempotency-Key": "k-1"}
        )
        assert changed[0] == 422, changed
        assert changed[1]["error"]["code"] == "idempotency_key_reused"
        assert first[1]["execution_id"] in changed[1]["error"]["message"]
        listed = await get(http, f"{cluster.url}/api/v1/executions?workflow=diamond&limit=1000")
        ids = [e["id"] for e in listed["executions"]]
        assert ids.count(first[1]["execution_id"]) == 1
        # a root run says so in both parent fields, as a child names its parent in them
        run = await get(http, f"{cluster.url}/api/v1/executions/{first[1]['execution_id']}")
        assert (run["parent_execution_id"], run["parent_node_id"]) == (None, None)


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("post", "/trigger/diamond", {"data": b"{not json", "headers": TOKEN}, 400, "bad_json"),
        ("post", "/trigger/nope", {"json": {}, "headers": TOKEN}, 404, "not_found"),
        (
            "post",
            "/trigger/diamond",
            {"json": {"version": ">>1"}, "headers": TOKEN},
            400,
            "invalid_version_range",
        ),
        (
            "post",
            "/trigger/diamond",
            {"json": {"version": "^7"}, "headers": TOKEN},
            404,
            "no_matching_version",
        ),
        (
            "post",
            "/trigger/diamond",
            {"data": io.BytesIO(b'{"inputs": "' + b"x" * 2_000_000 + b'"}'), "headers": TOKEN},
            413,
            "body_too_large",
        ),
        ("post", "/trigger/diamond", {"json": {}}, 401, "unauthorized"),
        (
            "post",
            "/trigger/diamond",
            {"json": {}, "headers": {"Authorization": "Bearer wrong"}},
            403,
            "forbidden",
        ),
        (
            "post",
            "/api/v1/workflows",
            {
                "data": "id: x\nversion: one\nnodes: []\n",
                "headers": {**TOKEN, "Content-Type": "application/yaml"},
            },
            400,
            "invalid_spec",
        ),
        (
            "post",
            "/api/v1/workflows",
            {
                "data": "\n".join(
                    ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
                    + [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 11)]
                ),
                "headers": {**TOKEN, "Content-Type": "application/yaml"},
            },
            400,
            "invalid_spec",
        ),
        (
            "post",
            "/trigger/diamond",
            {"data": b'{"inputs": {"s": "\\udc80"}}', "headers": TOKEN},
            400,
            "bad_json",
        ),
        (
            "post",
            "/trigger/diamond",
            {"json": {"inputs": 5}, "headers": TOKEN},
            422,
            "invalid_inputs",
        ),
        (
            "post",
            "/trigger/diamond",
            {"json": {"inputs": [1, 2]}, "headers": TOKEN},
            422,
            "invalid_inputs",
        ),
        (
            "post",
            "/api/v1/workflows?force=maybe",
            {"json": {"id": "x"}, "headers": TOKEN},
            400,
            "bad_request",
        ),
        ("get", "/api/v1/executions/does-not-exist", {"headers": TOKEN}, 404, "not_found"),
        (
            "post",
            "/api/v1/executions/any/cancel",
            {"json": {"reasn": "typo"}, "headers": TOKEN},
            400,
            "bad_request",
        ),
        (
            "post",
            "/api/v1/executions/any/cancel",
            {"json": [1], "headers": TOKEN},
            400,
            "bad_request",
        ),
        ("get", "/api/v1/executions?limit=zero", {"headers": TOKEN}, 400, "bad_request"),
        ("get", "/api/v1/executions?limit=1001", {"headers": TOKEN}, 400, "bad_request"),
        ("get", "/api/v1/executions?status=bogus", {"headers": TOKEN}, 400, "bad_request"),
        (
            "get",
            "/api/v1/executions?status=succeeded&status=failed",
            {"headers": TOKEN},
            400,
            "bad_request",
        ),
        ("get", "/no/such/route", {}, 404, "not_found"),
    ],
)
async def test_bad_requests_get_a_json_error_and_the_service_goes_on(
    cluster: Cluster, method: str, path: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    async with aiohttp.ClientSession() as http:
        await register(http, cluster.url, DIAMOND)
        async with http.request(method, cluster.url + path, **kwargs) as resp:
            body = await resp.json()
            assert resp.status == status, body
        assert body["error"]["code"] == code
        assert body["error"]["message"]
        healthy = await get(http, f"{cluster.url}/healthz")
        assert healthy == {"status": "ok", "version": installed_version()}
    assert cluster.orchestrator.proc.poll() is None


async def test_listing_pages_past_the_limit_without_skipping_or_repeating(
    cluster: Cluster,
) -> None:
    async with aiohttp.ClientSession() as http:
        await register(http, cluster.url, DIAMOND.replace("id: diamond", "id: paged"))
        made = []
        for n in range(5):
            status, body = await trigger(http, cluster.url, "paged", {"inputs": {"n": n}})
            assert status == 202
            made.append(body["execution_id"])
        seen: list[str] = []
        query = "workflow=paged&limit=2"
        while True:
            page = await get(http, f"{cluster.url}/api/v1/executions?{query}")
            seen += [e["id"] for e in page["executions"]]
            if page["next_before"] is None:
                break
            query = f"workflow=paged&limit=2&before={page['next_before']}"
        assert seen == made[::-1]
        async with http.get(f"{cluster.url}/api/v1/executions?before=nope", headers=TOKEN) as resp:
            assert resp.status == 404
            assert "nope" in (await resp.json())["error"]["message"]
    async with grpc.aio.insecure_channel(cluster.orchestrator.grpc_address) as channel:
        stub = pb_grpc.OrchestratorStub(channel)
        first = await stub.ListExecutions(
            pb.ListExecutionsRequest(workflow_id="paged", limit=3), metadata=AUTH
        )
        rest = await stub.ListExecutions(
            pb.ListExecutionsRequest(workflow_id="paged", limit=3, before=first.next_before),
            metadata=AUTH,
        )
        assert [e.id for e in (*first.executions, *rest.executions)] == made[::-1]
        assert rest.next_before == ""


async def test_a_long_url_or_header_gets_the_api_s_refusal_naming_the_limit(
    cluster: Cluster,
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{cluster.url}/api/v1/executions?workflow={'w' * 10_000}") as resp:
            assert resp.status == 414
            error = (await resp.json())["error"]
            assert error["code"] == "url_too_long"
            assert "over the limit of 8190" in error["message"]
        async with http.get(
            f"{cluster.url}/api/v1/workflows", headers={"X-Trace": "t" * 9_000, **TOKEN}
        ) as resp:
            assert resp.status == 431
            error = (await resp.json())["error"]
            assert error["message"] == "header X-Trace is 9000 bytes, over the limit of 8190"
        async with http.get(f"{cluster.url}/api/v1/workflows", headers=TOKEN) as resp:
            assert resp.status == 200


async def test_malformed_bodies_and_headers_are_refused_naming_them(cluster: Cluster) -> None:
    url, port = cluster.url, cluster.orchestrator.http_port
    async with aiohttp.ClientSession() as http:
        await register(http, url, DIAMOND)
        for body, message in (
            (b'{"inputs": {"n": NaN}}', "the request body is not valid JSON: NaN is not JSON"),
            (
                b'{"inputs": {"n": 1e999}}',
                "the request body is not valid JSON: 1e999 is too large for a JSON number",
            ),
            (b'{"wait": true, "timeout": -Infinity}', "-Infinity is not JSON"),
        ):
            async with http.post(f"{url}/trigger/diamond", data=body, headers=TOKEN) as resp:
                assert resp.status == 400
                assert message in (await resp.json())["error"]["message"]
        async with http.post(
            f"{url}/trigger/diamond",
            data=b'{"inputs": {}}',
            headers={**TOKEN, "Content-Encoding": "gzip"},
        ) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["message"] == (
                "the request body cannot be read: Can not decode content-encoding: gzip"
            )
        status, done = await trigger(http, url, "diamond", {"wait": True})
        assert status == 200
        eid = done["execution_id"]
        async with http.get(
            f"{url}/api/v1/events?execution={eid}", headers={"Last-Event-ID": "9" * 5000, **TOKEN}
        ) as resp:
            assert resp.status == 400
            assert "Last-Event-ID must be an event seq" in (await resp.json())["error"]["message"]
        async with http.post(
            f"{url}/api/v1/executions/{eid}/cancel", json={"reason": "r" * 1001}, headers=TOKEN
        ) as resp:
            # it would be written on the run, on each node it stops and on their events
            assert resp.status == 400
            assert (await resp.json())["error"]["message"] == (
                "the reason is longer than 1000 characters (1001)"
            )
        for query in ("limit=1&limit=2", "limit=1_0", "limit=\u0665"):
            async with http.get(f"{url}/api/v1/executions?{query}", headers=TOKEN) as resp:
                assert resp.status == 400, query
        async with http.get(
            f"{url}/api/v1/events?execution={eid}&execution=other", headers=TOKEN
        ) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["message"] == (
                "give execution once: one value per request"
            )
    post = b"POST /trigger/diamond HTTP/1.1\nHost: x\nConnection: close\nContent-Length: 2\n"
    token = b"Authorization: Bearer s3cret\n"
    # bytes that are not UTF-8 in a header: a wrong token, and a key the store cannot keep
    answer = await raw_request(port, post + b"Authorization: Bearer s3cret\xe9\n", b"{}")
    assert answer.startswith(b"HTTP/1.1 403"), answer
    answer = await raw_request(port, post + token + b"Idempotency-Key: \xe9\xff\n", b"{}")
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b"the idempotency key must be UTF-8 text without control characters" in answer
    # a client that leaves halfway through its body: nothing to answer, nothing to report
    head = b"POST /trigger/diamond HTTP/1.1\nHost: x\nContent-Length: 2000\n" + token
    await raw_request(port, head, b'{"inputs":', whole=False)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/readyz") as resp:
            assert resp.status == 200
    await asyncio.sleep(0.5)
    log = cluster.orchestrator.log()
    assert "Traceback" not in log and '"level": "error"' not in log, log[-3000:]


async def test_an_unparseable_request_is_one_warning_not_a_server_error(cluster: Cluster) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", cluster.orchestrator.http_port)
    # past what the parser takes at all, so it answers before the API sees anything
    writer.write(b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(200), 10)
    writer.close()
    assert answer.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400"))
    deadline = time.monotonic() + 10
    while "refused a malformed request: Got more than" not in cluster.orchestrator.log():
        assert time.monotonic() < deadline, cluster.orchestrator.log()[-2000:]
        await asyncio.sleep(0.05)
    line = next(
        json.loads(x)
        for x in cluster.orchestrator.log().splitlines()
        if "refused a malformed request: Got more than" in x
    )
    assert line["level"] == "warning" and "Got more than" in line["message"]
    assert "Traceback" not in cluster.orchestrator.log()


async def test_a_wrong_method_is_405_with_the_allowed_ones(cluster: Cluster) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.delete(f"{cluster.url}/api/v1/workflows", headers=TOKEN) as resp:
            body = await resp.json()
            assert resp.status == 405
            assert resp.headers["Allow"] == "GET, HEAD, POST"
        assert body["error"]["code"] == "method_not_allowed"


async def test_bad_spec_names_every_problem_with_its_line(cluster: Cluster) -> None:
    spec = "id: broken\nversion: 1.0.0\nnodes:\n  - id: a\n    lua: 'return {'\n  - id: b\n    depends_on: [zz]\n    lua: return 1\n"
    async with aiohttp.ClientSession() as http:
        status, body = await register(http, cluster.url, spec)
        assert status == 400
        problems = body["error"]["details"]["problems"]
        assert any("nodes[a].lua" in p and "Lua syntax error" in p for p in problems), problems
        assert "line 7: nodes[b].depends_on: unknown dependency 'zz'" in problems, problems
        async with http.get(f"{cluster.url}/api/v1/workflows/broken", headers=TOKEN) as resp:
            assert resp.status == 404


async def test_openapi_describes_every_route(cluster: Cluster) -> None:
    from orchestrator.serving_http import HttpApi

    async with aiohttp.ClientSession() as http:
        doc = await get(http, f"{cluster.url}/api/v1/openapi.json")
    app = HttpApi(None, token=None, max_body=1).app()  # type: ignore[arg-type]
    routes = {
        (r.method.lower(), r.resource.canonical)
        for r in app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert routes == documented


async def test_metrics_count_executions_and_engines(cluster: Cluster) -> None:
    async with aiohttp.ClientSession() as http:
        await register(http, cluster.url, DIAMOND)
        await trigger(http, cluster.url, "diamond", {"wait": True})
        async with http.get(f"{cluster.url}/metrics") as resp:
            text = await resp.text()
    assert 'dagengine_executions_total{status="succeeded",workflow="diamond"}' in text
    assert 'dagengine_engines{state="ready"} 2.0' in text
    assert "dagengine_queue_depth 0.0" in text
    assert 'dagengine_nodes_total{status="succeeded"}' in text


async def test_an_idempotency_key_past_200_characters_is_refused_on_both_apis(
    cluster: Cluster,
) -> None:
    async with aiohttp.ClientSession() as http:
        await register(http, cluster.url, DIAMOND)
        listed = await get(http, f"{cluster.url}/api/v1/executions?workflow=diamond")
        before = len(listed["executions"])
        status, body = await trigger(http, cluster.url, "diamond", **{"Idempotency-Key": "k" * 201})
        assert status == 400 and "longer than 200" in body["error"]["message"], body
    async with grpc.aio.insecure_channel(cluster.orchestrator.grpc_address) as channel:
        stub = pb_grpc.OrchestratorStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ExecuteWorkflow(
                pb.ExecuteWorkflowRequest(workflow_id="diamond", idempotency_key="k" * 201),
                metadata=(("authorization", "Bearer s3cret"),),
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == "the idempotency key is longer than 200 characters (201)"
        after = await stub.ListExecutions(
            pb.ListExecutionsRequest(workflow_id="diamond"), metadata=AUTH
        )
    assert len(after.executions) == before  # nothing was stored


async def test_grpc_register_execute_watch_and_reflection(cluster: Cluster) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    auth = (("authorization", "Bearer s3cret"),)
    async with grpc.aio.insecure_channel(cluster.orchestrator.grpc_address) as channel:
        stub = pb_grpc.OrchestratorStub(channel)
        spec = DIAMOND.replace("id: diamond", "id: grpc-diamond")
        # API_TOKEN guards every gRPC call, as it guards HTTP
        for metadata, code in (
            ((), grpc.StatusCode.UNAUTHENTICATED),
            ((("authorization", "Bearer nope"),), grpc.StatusCode.PERMISSION_DENIED),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused_auth:
                await stub.RegisterWorkflow(
                    pb.RegisterWorkflowRequest(spec=spec), metadata=metadata
                )
            assert refused_auth.value.code() == code
        reply = await stub.RegisterWorkflow(pb.RegisterWorkflowRequest(spec=spec), metadata=auth)
        assert reply.workflow.id == "grpc-diamond" and reply.created
        done = await stub.ExecuteWorkflow(
            pb.ExecuteWorkflowRequest(
                workflow_id="grpc-diamond", inputs_json='{"n": 10}', wait=True
            ),
            metadata=auth,
        )
        assert done.execution.status == "succeeded"
        assert wire.loads(done.execution.outputs_json) == {"d": {"total": 50}}
        # integers stay integers across the wire
        assert isinstance(wire.loads(done.execution.outputs_json)["d"]["total"], int)  # type: ignore[index, call-overload]
        # one run's stream replays its timeline and ends with its final event, by itself
        watched = [
            event.type
            async for event in stub.WatchEvents(
                pb.WatchEventsRequest(execution_id=done.execution_id), timeout=30, metadata=auth
            )
        ]
        assert watched[0] == "execution.queued" and watched[-1] == "execution.succeeded"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(workflow_id="nope"), metadata=auth)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as lone:
            await stub.ExecuteWorkflow(
                pb.ExecuteWorkflowRequest(
                    workflow_id="grpc-diamond", inputs_json='{"s": "\\udc80"}'
                ),
                metadata=auth,
            )
        assert lone.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "lone UTF-16 surrogate" in (lone.value.details() or "")
        for deep in ('{"x": ' + "[" * 100 + "]" * 100 + "}", "[" * 100_000 + "]" * 100_000):
            with pytest.raises(grpc.aio.AioRpcError) as too_deep:
                await stub.ExecuteWorkflow(
                    pb.ExecuteWorkflowRequest(workflow_id="grpc-diamond", inputs_json=deep),
                    metadata=auth,
                )
            assert too_deep.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "deeper" in (too_deep.value.details() or "")
        # an answer that names a huge id stays small enough to travel
        with pytest.raises(grpc.aio.AioRpcError) as long_id:
            await stub.GetExecution(
                pb.GetExecutionRequest(execution_id="x" * 10_000), metadata=auth
            )
        assert long_id.value.code() == grpc.StatusCode.NOT_FOUND
        assert "more characters" in (long_id.value.details() or "")
        for limit, status in ((-5, ""), (5000, ""), (5, "bogus")):
            with pytest.raises(grpc.aio.AioRpcError) as listing:
                await stub.ListExecutions(
                    pb.ListExecutionsRequest(limit=limit, status=status), metadata=auth
                )
            assert listing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as conflict:
            await stub.RegisterWorkflow(
                pb.RegisterWorkflowRequest(spec=spec.replace("* 2", "* 4")), metadata=auth
            )
        assert conflict.value.code() == grpc.StatusCode.ALREADY_EXISTS
        engines = await stub.ListEngines(pb.ListEnginesRequest(), metadata=auth)
        assert sorted(e.engine_id for e in engines.engines) == ["engine-0", "engine-1"]
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask() -> Any:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        async for answer in refl.ServerReflectionInfo(ask()):
            names = {s.name for s in answer.list_services_response.service}
            break
        assert "dagengine.v1.Orchestrator" in names and "grpc.health.v1.Health" in names


# -- clusters of their own ------------------------------------------------------------------------


# Besides the pause, nodes that end otherwise than succeeding before the engine goes: they must
# stay ended as they did, or a failed node gets another go with each failover. And a node
# waiting to retry: its next attempt is its second, not a first all over again.
ENDS_BEFORE_THE_PAUSE = """
  - id: broken
    lua: error("broken on purpose")
  - id: after_broken
    depends_on: [broken]
    lua: return 1
  - id: never
    when: "false"
    lua: return 1
  - id: flaky
    retry: {max_attempts: 2, delay: 30s}
    lua: error("flaky on purpose")
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
async def test_engine_killed_mid_run_the_run_completes_elsewhere_without_rerunning(
    start_cluster: StartCluster, sig: signal.Signals
) -> None:
    # SIGTERM is a rollout or a scale-down: the drain (0.5 s here) hands the run back unfinished
    cluster = start_cluster(engines=2, engine_env={"DRAIN_GRACE": "0.5"})
    async with aiohttp.ClientSession() as http:
        await wait_engines(http, cluster.url, 2)
        spec = first_pause_last("slow", "3s") + ENDS_BEFORE_THE_PAUSE
        await register(http, cluster.url, spec)
        status, body = await trigger(http, cluster.url, "slow")
        assert status == 202
        eid = body["execution_id"]
        ends = {"first": "succeeded", "broken": "failed", "after_broken": "blocked"}
        ends |= {"never": "skipped", "pause": "running"}
        deadline = time.monotonic() + 30
        ends |= {"flaky": "running"}  # its first attempt failed; the second waits 30 s
        while time.monotonic() < deadline:
            doc = await get(http, f"{cluster.url}/api/v1/executions/{eid}")
            if {n: doc["nodes"][n]["status"] for n in ends} == ends and doc["nodes"]["flaky"][
                "error"
            ]:
                break
            await asyncio.sleep(0.05)
        assert {n: doc["nodes"][n]["status"] for n in ends} == ends, doc
        victim_id = doc["nodes"]["first"]["engine_id"]
        victim = next(e for e in cluster.engines if e.env["ENGINE_ID"] == victim_id)
        victim.proc.send_signal(sig)
        victim.proc.wait(10)
        doc = await wait_status(http, cluster.url, eid)
        assert doc["status"] == "partial", doc  # a sink blocked, another skipped
        assert (
            doc["error"]
            == "node 'broken' failed: broken on purpose (Lua line 1) (and 1 more failed, 1 blocked)"
        )
        assert doc["nodes"]["flaky"]["attempts"] == 2
        assert doc["outputs"] == {"last": {"done": 2}}
        assert doc["nodes"]["last"]["engine_id"] != victim_id
        events = (await get(http, f"{cluster.url}/api/v1/executions/{eid}/events"))["events"]
        started = Counter(e["node_id"] for e in events if e["type"] == "node.started")
        assert started["first"] == 1, "a completed node ran again after failover"
        assert started["broken"] == 1, "a failed node ran again after failover"
        flaky = [
            e["attempt"] for e in events if e["type"] == "node.started" and e["node_id"] == "flaky"
        ]
        assert flaky == [1, 2], "a node waiting to retry started over after failover"
        assert started["last"] == 1
        node_ends = Counter(
            e["node_id"]
            for e in events
            if e["type"] in ("node.succeeded", "node.failed", "node.blocked", "node.skipped")
        )
        assert set(node_ends.values()) == {1}, node_ends
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(set(seqs))
        assert [e["type"] for e in events].count("execution.partial") == 1
        engines = {
            e["id"]: e for e in (await get(http, f"{cluster.url}/api/v1/engines"))["engines"]
        }
        assert engines[victim_id]["state"] == "unhealthy"
        assert engines[doc["nodes"]["last"]["engine_id"]]["state"] == "ready"


async def test_a_run_refused_by_a_draining_engine_goes_elsewhere_and_its_runs_finish_there(
    start_cluster: StartCluster,
) -> None:
    # health checks too far apart to see the drain: the refusal itself must tell it
    cluster = start_cluster(
        engines=2, engine_env={"DRAIN_GRACE": "60"}, ENGINE_HEALTH_CHECK_INTERVAL="30"
    )
    async with aiohttp.ClientSession() as http:
        await wait_engines(http, cluster.url, 2)
        await register(http, cluster.url, first_pause_last("slow", "3s"))
        _, body = await trigger(http, cluster.url, "slow")
        first = body["execution_id"]
        doc = await wait_node(http, cluster.url, first, "pause")
        victim_id = doc["nodes"]["first"]["engine_id"]
        victim = next(e for e in cluster.engines if e.env["ENGINE_ID"] == victim_id)
        victim.proc.send_signal(signal.SIGTERM)  # a rollout: it drains what it has
        await asyncio.sleep(0.5)
        # the same workflow hashes to the same engine, which refuses it while it drains
        _, body = await trigger(http, cluster.url, "slow")
        second = await wait_status(http, cluster.url, body["execution_id"])
        assert second["status"] == "succeeded", second
        assert {n["engine_id"] for n in second["nodes"].values()} != {victim_id}
        done = await wait_status(http, cluster.url, first)
        assert done["status"] == "succeeded", done
        events = (await get(http, f"{cluster.url}/api/v1/executions/{first}/events"))["events"]
        # before: the refusal was taken for a dead engine, and this run was cut off there
        assert {e["engine_id"] for e in events if e["type"] == "node.started"} == {victim_id}
        assert victim.proc.wait(30) == 0
    assert f"engine.unhealthy {victim_id}" not in cluster.orchestrator.log()


async def test_a_stopping_orchestrator_answers_a_waiting_trigger_and_exits_promptly(
    start_cluster: StartCluster,
) -> None:
    cluster = start_cluster(engines=1, API_TOKEN="s3cret")
    async with aiohttp.ClientSession() as http:
        await wait_engines(http, cluster.url, 1)
        await register(http, cluster.url, first_pause_last("long", "10m"))
        waiting = asyncio.create_task(
            trigger(http, cluster.url, "long", {"wait": True, "timeout": 300})
        )
        deadline = time.monotonic() + 30
        while True:  # the run is under way and its trigger waits
            listed = await get(http, f"{cluster.url}/api/v1/executions?workflow=long")
            if [e["status"] for e in listed["executions"]] == ["running"]:
                break
            assert time.monotonic() < deadline, listed
            await asyncio.sleep(0.05)
        cluster.orchestrator.proc.send_signal(signal.SIGTERM)
        # before, aiohttp held the stop a minute for the open request (past the pod's grace)
        status, body = await asyncio.wait_for(waiting, 30)
        assert status == 202, body
        assert body["status"] == "running" and body["execution_id"]
        assert cluster.orchestrator.proc.wait(30) == 0


async def test_orchestrator_killed_with_runs_queued_and_running_all_complete(
    start_cluster: StartCluster,
) -> None:
    # capacity 1 per engine: of 6 runs, 2 run and 4 wait in the durable queue
    cluster = start_cluster(engines=2, engine_env={"CAPACITY": "1"})
    async with aiohttp.ClientSession() as http:
        await wait_engines(http, cluster.url, 2)
        await register(http, cluster.url, first_pause_last("slow", "1s"))
        ids = []
        for i in range(6):
            status, body = await trigger(http, cluster.url, "slow", {"inputs": {"i": i}})
            assert status == 202
            ids.append(body["execution_id"])
        listed = await get(http, f"{cluster.url}/api/v1/executions?workflow=slow")
        assert {e["status"] for e in listed["executions"]} <= {"queued", "running"}
        # kill once the two running executions have their first checkpoint stored, so
        # the assertion below is exact: a stored checkpoint never runs again (a node
        # still running at the kill legitimately would)
        deadline = time.monotonic() + 30
        checkpointed: list[str] = []
        while len(checkpointed) < 2 and time.monotonic() < deadline:
            docs = [await get(http, f"{cluster.url}/api/v1/executions/{eid}") for eid in ids]
            checkpointed = [d["id"] for d in docs if d["nodes"]["first"]["status"] == "succeeded"]
            await asyncio.sleep(0.02)
        assert len(checkpointed) == 2, docs
    cluster.orchestrator.proc.send_signal(signal.SIGKILL)
    cluster.orchestrator.proc.wait(10)
    cluster.restart_orchestrator()
    async with aiohttp.ClientSession() as http:
        for eid in ids:
            doc = await wait_status(http, cluster.url, eid, timeout=90)
            assert doc["status"] == "succeeded", doc
            assert doc["outputs"] == {"last": {"done": 2}}
        for eid in ids:
            events = (await get(http, f"{cluster.url}/api/v1/executions/{eid}/events"))["events"]
            started = Counter(e["node_id"] for e in events if e["type"] == "node.started")
            assert started["first"] == 1
            assert [e["seq"] for e in events] == sorted({e["seq"] for e in events})
    stop_process(cluster.orchestrator.proc)


async def test_no_engine_free_runs_wait_in_the_queue_and_past_the_limit_429(
    start_cluster: StartCluster,
) -> None:
    cluster = start_cluster(engines=1, engine_env={"CAPACITY": "1"}, QUEUE_LIMIT="2")
    async with aiohttp.ClientSession() as http:
        await wait_engines(http, cluster.url, 1)
        await register(http, cluster.url, first_pause_last("slow", "1s"))
        answers = [await trigger(http, cluster.url, "slow") for _ in range(4)]
        statuses = [a[0] for a in answers]
        # one runs, two wait, the fourth is refused
        assert statuses[:3] == [202, 202, 202], answers
        assert statuses[3] == 429 and answers[3][1]["error"]["code"] == "queue_full"
        for _status, body in answers[:3]:
            doc = await wait_status(http, cluster.url, body["execution_id"])
            assert doc["status"] == "succeeded"


async def without_engines(http: aiohttp.ClientSession, cluster: Cluster) -> None:
    """Its one engine killed and gone from the fleet: runs stay queued."""
    await wait_engines(http, cluster.url, 1)
    cluster.engines[0].proc.send_signal(signal.SIGKILL)
    cluster.engines[0].proc.wait(10)
    await wait_engines(http, cluster.url, 0)


async def test_requests_at_once_never_queue_past_the_limit(start_cluster: StartCluster) -> None:
    # each checked the queue before the others were stored: all passed, and the queue went
    # past its limit by as many as came together
    cluster = start_cluster(engines=1, QUEUE_LIMIT="5")
    async with aiohttp.ClientSession() as http:
        await without_engines(http, cluster)
        await register(http, cluster.url, DIAMOND)
        answers = await asyncio.gather(*(trigger(http, cluster.url, "diamond") for _ in range(40)))
        statuses = sorted(status for status, _ in answers)
        assert statuses == [202] * 5 + [429] * 35, statuses
        metrics = await (await http.get(f"{cluster.url}/metrics")).text()
        assert "dagengine_queue_depth 5.0" in metrics


async def test_a_workflow_s_share_of_the_queue_is_set_by_its_variable(
    start_cluster: StartCluster,
) -> None:
    cluster = start_cluster(engines=1, QUEUE_LIMIT_PER_WORKFLOW="2")
    async with aiohttp.ClientSession() as http:
        await without_engines(http, cluster)
        await register(http, cluster.url, DIAMOND)
        await register(http, cluster.url, first_pause_last("other", "1s"))
        statuses = [(await trigger(http, cluster.url, "diamond"))[0] for _ in range(3)]
        assert statuses == [202, 202, 429]
        status, body = await trigger(http, cluster.url, "other")
        assert status == 202, body


async def test_cancel_a_running_execution(start_cluster: StartCluster) -> None:
    cluster = start_cluster(engines=1)
    async with aiohttp.ClientSession() as http:
        await wait_engines(http, cluster.url, 1)
        await register(http, cluster.url, first_pause_last("slow", "30s"))
        _, body = await trigger(http, cluster.url, "slow")
        eid = body["execution_id"]
        # in the pause, first's end stored: a run stored as running may still be in first
        # (its script sent to a worker, as a loaded machine's inline miss sends it), and a
        # cancel then ends first cancelled too
        await wait_node(http, cluster.url, eid, "pause")
        async with http.post(f"{cluster.url}/api/v1/executions/{eid}/cancel") as resp:
            doc = await resp.json()
        assert doc["status"] == "cancelled", doc
        assert doc["nodes"]["last"]["status"] == "cancelled"
        assert doc["nodes"]["first"]["status"] == "succeeded"
        # every node the document ends cancelled is counted so, evented or not
        cancelled = [n for n, v in doc["nodes"].items() if v["status"] == "cancelled"]
        assert len(cancelled) == 2, doc["nodes"]
        assert await nodes_counted(http, cluster.url, "cancelled") == len(cancelled)


async def nodes_counted(http: aiohttp.ClientSession, url: str, status: str) -> float:
    async with http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    prefix = f'dagengine_nodes_total{{status="{status}"}} '
    return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


async def test_two_cancels_of_a_queued_run_at_once_end_it_once(
    start_cluster: StartCluster,
) -> None:
    cluster = start_cluster(engines=1)
    async with aiohttp.ClientSession() as http:
        await without_engines(http, cluster)
        await register(http, cluster.url, DIAMOND)
        for _ in range(20):
            status, body = await trigger(http, cluster.url, "diamond")
            assert status == 202
            eid = body["execution_id"]

            async def cancel(eid: str = eid) -> Any:
                url = f"{cluster.url}/api/v1/executions/{eid}/cancel"
                async with http.post(url, headers=TOKEN) as resp:
                    return await resp.json()

            first, second = await asyncio.gather(cancel(), cancel())
            assert first["status"] == second["status"] == "cancelled"
            events = (await get(http, f"{cluster.url}/api/v1/executions/{eid}/events"))["events"]
            assert [e["type"] for e in events] == ["execution.queued", "execution.cancelled"]
            nodes = len((await get(http, f"{cluster.url}/api/v1/executions/{eid}"))["nodes"])
            assert events[-1]["data"]["unreached"] == nodes
        # none of their nodes had an event, and each is counted as cancelled once
        assert await nodes_counted(http, cluster.url, "cancelled") == 20 * nodes


async def test_an_engine_that_dies_leaves_and_rejoins_when_healthy_again(
    start_cluster: StartCluster,
) -> None:
    cluster = start_cluster(engines=1)
    engine = cluster.engines[0]
    async with aiohttp.ClientSession() as http:
        await wait_engines(http, cluster.url, 1)
        seen: list[dict[str, Any]] = []

        ids: list[str] = []

        async def follow() -> None:
            async with http.get(f"{cluster.url}/api/v1/events", headers=TOKEN) as resp:
                async for raw in resp.content:
                    line = raw.decode().strip()
                    if line.startswith("data:"):
                        seen.append(json.loads(line[5:]))
                    elif line.startswith("id:"):
                        ids.append(line)

        follower = asyncio.create_task(follow())
        await asyncio.sleep(0.2)
        engine.proc.send_signal(signal.SIGKILL)
        engine.proc.wait(10)
        await wait_engines(http, cluster.url, 0)
        await register(http, cluster.url, DIAMOND)
        # no engine: the run waits in the queue, accepted
        status, body = await trigger(http, cluster.url, "diamond", {"inputs": {"n": 1}})
        assert status == 202
        # the same engine comes back on the same port
        from tests.integration.conftest import spawn_engine, wait_until_serving

        revived = wait_until_serving(
            spawn_engine(cluster.tmp / "revived.log", ENGINE_ID="engine-0", PORT=str(engine.port))
        )
        cluster.engines.append(revived)
        await wait_engines(http, cluster.url, 1)
        doc = await wait_status(http, cluster.url, body["execution_id"])
        assert doc["status"] == "succeeded"
        follower.cancel()
    kinds = [e["type"] for e in seen if e["type"].startswith("engine.")]
    # events of many runs share one stream, and seq counts per run: no id a reconnect could
    # resume from
    assert ids == []
    assert "engine.unhealthy" in kinds
    assert kinds[-1] == "engine.joined"
    assert all(e["engine_id"] == "engine-0" for e in seen if e["type"].startswith("engine."))
