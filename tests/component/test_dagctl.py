"""dagctl against a fake orchestrator: aiohttp on loopback, with the routes and JSON shapes of
``orchestrator/serving_http.py`` (errors, the execution document, the SSE stream).

``main`` runs in a worker thread (it is synchronous, urllib underneath) while the fake serves on
the test's event loop; runs advance only once someone watches them, so a followed run is seen
live, not just replayed.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from aiohttp import web

from orchestrator.dagctl import main
from orchestrator.dagctl.calling import Client
from orchestrator.dagctl.cli import follow

TERMINAL = ("succeeded", "partial", "failed", "cancelled", "timed_out")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def error(status: int, code: str, message: str, **details: Any) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message, "details": details}}, status=status
    )


@dataclass
class Plan:
    nodes: list[str]
    outcome: str = "succeeded"
    hold: bool = False
    """Never finish on its own (for cancel)."""


class FakeOrchestrator:
    def __init__(self, *, sse: bool = True, token: str | None = None) -> None:
        self.sse = sse
        self.token = token
        self.url = ""
        self.workflows: dict[str, dict[str, Any]] = {
            "hello": {"id": "hello", "version": "1.0.0", "name": "Hello", "versions": ["1.0.0"]},
            "diamond": {"id": "diamond", "version": "1.0.0", "versions": ["1.0.0"]},
            "shaky": {"id": "shaky", "version": "2.1.0", "versions": ["2.0.0", "2.1.0"]},
            "forever": {"id": "forever", "version": "1.0.0", "versions": ["1.0.0"]},
        }
        self.plans = {
            "hello": Plan(["greet"]),
            "diamond": Plan(["a", "b", "c", "d"]),
            "shaky": Plan(["fetch", "store", "report"], outcome="failed"),
            "forever": Plan(["wait"], hold=True),
        }
        self.registered: dict[tuple[str, str], bytes] = {}
        self.executions: dict[str, dict[str, Any]] = {}
        self.timelines: dict[str, list[dict[str, Any]]] = {}
        self.watched: dict[str, asyncio.Event] = {}
        self.streams: list[tuple[str | None, str | None, asyncio.Queue[Any]]] = []
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.stream_count = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.counter = 0

    # -- plumbing -------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware])
        r = app.router
        r.add_post("/trigger/{workflow_id}", self.trigger)
        r.add_get("/api/v1/workflows", self.list_workflows)
        r.add_post("/api/v1/workflows", self.register)
        r.add_get("/api/v1/workflows/{workflow_id}", self.get_workflow)
        r.add_get("/api/v1/executions", self.list_executions)
        r.add_get("/api/v1/executions/{execution_id}", self.get_execution)
        r.add_post("/api/v1/executions/{execution_id}/cancel", self.cancel)
        r.add_get("/api/v1/executions/{execution_id}/events", self.execution_events)
        if self.sse:
            r.add_get("/api/v1/events", self.live_events)
        r.add_get("/api/v1/engines", self.engines)
        r.add_get("/api/v1/triggers/{trigger_id}/history", self.trigger_history)
        return app

    async def trigger_history(self, request: web.Request) -> web.Response:
        # the shapes of orchestrator.store's trigger_history rows, newest first
        return web.json_response(
            {
                "history": [
                    {
                        "scheduled_time": "2026-03-02T12:02:00.000Z",
                        "outcome": "failed",
                        "execution_id": None,
                        "detail": {"reason": "refused", "error": "inputs.n: 'x' is not an integer"},
                    },
                    {
                        "scheduled_time": "2026-03-02T12:01:00.000Z",
                        "outcome": "fired",
                        "execution_id": "0190aa",
                        "detail": {},
                    },
                    {
                        "scheduled_time": "2026-03-02T11:59:00.000Z",
                        "outcome": "missed",
                        "execution_id": None,
                        "detail": {
                            "count": 3,
                            "exact": True,
                            "first_missed": "2026-03-02T11:57:00.000Z",
                            "last_missed": "2026-03-02T11:59:00.000Z",
                            "catchup": "latest",
                            "firing": 0,
                        },
                    },
                ]
            }
        )

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.read()
        self.requests.append((request.method, request.path_qs, dict(request.headers), body))
        if self.token and request.method == "POST":
            given = request.headers.get("Authorization", "")
            if not given.startswith("Bearer "):
                return error(401, "unauthorized", "this route needs Authorization: Bearer <token>")
            if given != f"Bearer {self.token}":
                return error(403, "forbidden", "the bearer token is not valid")
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except web.HTTPException as exc:  # as the real server: aiohttp's own errors as JSON
            return error(exc.status, "not_found" if exc.status == 404 else "http_error", exc.reason)

    def requested(self, method: str, prefix: str) -> list[tuple[str, dict[str, str], bytes]]:
        return [(p, h, b) for m, p, h, b in self.requests if m == method and p.startswith(prefix)]

    def emit(self, eid: str, kind: str, node: str | None = None, **data: Any) -> None:
        doc = self.executions[eid]
        timeline = self.timelines[eid]
        attempt = data.pop("attempt", 1 if node else None)
        event = {
            "seq": len(timeline) + 1,
            "time": now_iso(),
            "type": kind,
            "severity": "error" if kind.endswith("failed") else "info",
            "workflow_id": doc["workflow_id"],
            "version": doc["version"],
            "execution_id": eid,
            "node_id": node,
            "engine_id": "engine-0",
            "attempt": attempt,
            "data": data,
        }
        timeline.append(event)
        family, _, what = kind.partition(".")
        if family == "node" and node is not None:
            n = doc["nodes"][node]
            if what in ("started", "retrying"):
                n.update(status="running", attempts=attempt, engine_id="engine-0")
                n["started_at"] = n["started_at"] or event["time"]
            elif what in ("succeeded", "failed", "blocked", "skipped", "cancelled"):
                n.update(status=what, output=data.get("output"), error=data.get("error"))
                n["finished_at"] = event["time"]
        elif family == "execution":
            if what == "started":
                doc.update(status="running", started_at=event["time"])
            elif what in TERMINAL:
                doc.update(
                    status=what,
                    outputs=data.get("outputs", {}),
                    error=data.get("error"),
                    finished_at=event["time"],
                    progress=100,
                )
        for workflow, execution, queue in self.streams:
            if execution in (None, eid) and workflow in (None, doc["workflow_id"]):
                queue.put_nowait(event)

    async def run(self, eid: str, plan: Plan) -> None:
        try:
            await asyncio.wait_for(self.watched[eid].wait(), 10)
        except TimeoutError:
            pass
        step = 0.01
        self.emit(eid, "execution.started")
        if plan.hold:
            self.emit(eid, "node.started", plan.nodes[0])
            return
        outputs: dict[str, Any] = {}
        failed = False
        for i, node in enumerate(plan.nodes):
            await asyncio.sleep(step)
            if failed:
                self.emit(eid, "node.blocked", node, error="an upstream node failed", attempt=0)
                continue
            self.emit(eid, "node.started", node)
            if i == 0:
                self.emit(eid, "node.log", node, level="info", message=f"hello from {node}")
            await asyncio.sleep(step)
            if plan.outcome == "failed" and i == 1:
                self.emit(eid, "node.retrying", node, next_attempt=2, delay_s=0.01, error="flaky")
                self.emit(eid, "node.started", node, attempt=2)
                self.emit(eid, "node.failed", node, error="boom (Lua line 3)", attempt=2)
                failed = True
                continue
            output = {"step": i, "inputs": self.executions[eid]["inputs"]}
            outputs[node] = output
            self.emit(eid, "node.succeeded", node, output=output, duration_ms=3.5)
        await asyncio.sleep(step)
        if failed:
            self.emit(eid, "execution.failed", error="node store failed", outputs={})
        else:
            last = plan.nodes[-1]
            self.emit(eid, "execution.succeeded", outputs={last: outputs[last]}, duration_ms=40.0)

    # -- routes ---------------------------------------------------------------------------

    async def register(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            doc = yaml.safe_load(raw) if "yaml" in request.content_type else json.loads(raw)
        except (yaml.YAMLError, ValueError):
            return error(400, "bad_request", "not YAML/JSON")
        if doc.get("nodes") == "broken":
            return error(
                400,
                "invalid_spec",
                "2 problems in workflow spec:",
                problems=[
                    "line 4: nodes[a].lua: Lua syntax error: unexpected symbol near <eof>",
                    "line 6: nodes[b].depends_on: unknown dependency 'c'",
                ],
            )
        for node in doc.get("nodes") or []:
            used = node.get("workflow") if isinstance(node, dict) else None
            if isinstance(used, dict) and not any(k[0] == used["id"] for k in self.registered):
                return error(404, "not_found", f"no workflow {used['id']!r}")
        key = (str(doc["id"]), str(doc["version"]))
        if key in self.registered and self.registered[key] != raw:
            return error(409, "version_conflict", f"{key[0]}@{key[1]} is registered already")
        created = key not in self.registered
        self.registered[key] = raw
        workflow: dict[str, Any] = {"id": key[0], "version": key[1], "versions": [key[1]]}
        # as the orchestrator warns of a hook whose secret it was not started with
        for trigger in doc.get("triggers") or []:
            hook = trigger.get("http") if isinstance(trigger, dict) else None
            if isinstance(hook, dict) and hook.get("auth"):
                name = next(iter(hook["auth"].values()))
                workflow.setdefault("warnings", []).append(
                    f"the trigger on {hook['path']} reads its secret from {name}, which is "
                    "not set on the orchestrator"
                )
        return web.json_response(
            {"workflow": workflow, "created": created}, status=201 if created else 200
        )

    async def list_workflows(self, request: web.Request) -> web.Response:
        return web.json_response({"workflows": list(self.workflows.values())})

    async def get_workflow(self, request: web.Request) -> web.Response:
        wf = self.workflows.get(request.match_info["workflow_id"])
        if wf is None:
            return error(404, "not_found", f"no workflow {request.match_info['workflow_id']!r}")
        spec = {"id": wf["id"], "version": wf["version"], "nodes": []}
        spec["nodes"] = [{"id": n, "lua": "return {}"} for n in self.plans[wf["id"]].nodes]
        return web.json_response({**wf, "spec": spec})

    async def trigger(self, request: web.Request) -> web.Response:
        body = await request.json()
        workflow_id = request.match_info["workflow_id"]
        if workflow_id not in self.workflows:
            return error(404, "not_found", f"no workflow {workflow_id!r}")
        inputs = body.get("inputs", {})
        if isinstance(inputs, dict) and "bad" in inputs:
            return error(
                422,
                "invalid_inputs",
                f"inputs for workflow {workflow_id!r} do not match its inputs_schema",
                problems=["inputs.bad: Additional properties are not allowed"],
            )
        self.counter += 1
        eid = f"{self.counter:04d}" + "e" * 28
        plan = self.plans[workflow_id]
        self.executions[eid] = {
            "id": eid,
            "workflow_id": workflow_id,
            "version": self.workflows[workflow_id]["version"],
            "status": "queued",
            "inputs": inputs,
            "outputs": {},
            "error": None,
            "progress": 0,
            "created_at": now_iso(),
            "started_at": None,
            "finished_at": None,
            "parent_execution_id": None,
            "nodes": {
                n: {"status": "pending", "output": None, "error": None, "attempts": 0,
                    "started_at": None, "finished_at": None, "engine_id": None}
                for n in plan.nodes
            },
            "children": [],
        }  # fmt: skip
        self.timelines[eid] = []
        self.watched[eid] = asyncio.Event()
        self.emit(eid, "execution.queued", inputs=inputs)
        task = asyncio.get_running_loop().create_task(self.run(eid, plan))
        self.tasks.add(task)
        return web.json_response(
            {"execution_id": eid, "status": "queued", "status_url": f"/api/v1/executions/{eid}"},
            status=202,
        )

    async def list_executions(self, request: web.Request) -> web.Response:
        q = request.query
        found = [
            {k: v for k, v in doc.items() if k not in ("nodes", "children")}
            for doc in reversed(self.executions.values())
            if q.get("workflow") in (None, doc["workflow_id"])
            and q.get("status") in (None, doc["status"])
        ]
        if "before" in q:
            ids = [doc["id"] for doc in found]
            found = found[ids.index(q["before"]) + 1 :]
        limit = int(q.get("limit", "50"))
        more = found[limit - 1]["id"] if len(found) > limit else None
        return web.json_response({"executions": found[:limit], "next_before": more})

    def execution(self, request: web.Request) -> dict[str, Any] | None:
        return self.executions.get(request.match_info["execution_id"])

    async def get_execution(self, request: web.Request) -> web.Response:
        doc = self.execution(request)
        if doc is None:
            return error(404, "not_found", f"no execution {request.match_info['execution_id']!r}")
        if not self.sse:
            self.watched[doc["id"]].set()  # polling counts as watching
        return web.json_response(doc)

    async def cancel(self, request: web.Request) -> web.Response:
        doc = self.execution(request)
        if doc is None:
            return error(404, "not_found", f"no execution {request.match_info['execution_id']!r}")
        if doc["status"] not in TERMINAL:
            reason = (await request.json()).get("reason") or "cancelled on request"
            self.emit(doc["id"], "execution.cancelled", error=reason, outputs={})
        return web.json_response(doc)

    async def execution_events(self, request: web.Request) -> web.Response:
        doc = self.execution(request)
        if doc is None:
            return error(404, "not_found", f"no execution {request.match_info['execution_id']!r}")
        return web.json_response({"events": self.timelines[doc["id"]]})

    async def engines(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "engines": [
                    {"id": "engine-0", "address": "127.0.0.1:7001", "state": "ready",
                     "capacity": 10, "in_flight": 1, "version": "0.1.0", "last_error": None},
                    {"id": "engine-1", "address": "127.0.0.1:7002", "state": "unhealthy",
                     "capacity": 10, "in_flight": 0, "version": "0.1.0",
                     "last_error": "UNAVAILABLE: connection refused"},
                ]
            }
        )  # fmt: skip

    async def live_events(self, request: web.Request) -> web.StreamResponse:
        eid = request.query.get("execution") or None
        workflow = request.query.get("workflow") or None
        if eid is not None and eid not in self.executions:
            return error(404, "not_found", f"no execution {eid!r}")
        self.stream_count += 1
        queue: asyncio.Queue[Any] = asyncio.Queue()
        entry = (workflow, eid, queue)
        self.streams.append(entry)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        try:
            last = 0
            if eid is not None:
                after = int(request.headers.get("Last-Event-ID", "0") or 0)
                for event in list(self.timelines[eid]):
                    if event["seq"] > after:
                        await self._send(response, event)
                        last = event["seq"]
                self.watched[eid].set()
            await response.write(b": keep-alive\n\n")
            while True:
                event = await queue.get()
                if event is None:
                    break
                if eid is not None and event["seq"] <= last:
                    continue
                await self._send(response, event)
        except ConnectionResetError:
            pass
        finally:
            self.streams.remove(entry)
        return response

    @staticmethod
    async def _send(response: web.StreamResponse, event: dict[str, Any]) -> None:
        data = json.dumps(event, separators=(",", ":"))
        await response.write(
            f"id: {event['seq']}\nevent: {event['type']}\ndata: {data}\n\n".encode()
        )


async def serve(fake: FakeOrchestrator) -> web.AppRunner:
    runner = web.AppRunner(fake.app(), shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    return runner


async def shut(fake: FakeOrchestrator, runner: web.AppRunner) -> None:
    for _, _, queue in list(fake.streams):
        queue.put_nowait(None)
    for task in fake.tasks:
        task.cancel()
    await asyncio.gather(*fake.tasks, return_exceptions=True)
    await runner.cleanup()


@pytest.fixture
async def fake() -> AsyncIterator[FakeOrchestrator]:
    orchestrator = FakeOrchestrator()
    runner = await serve(orchestrator)
    yield orchestrator
    await shut(orchestrator, runner)


@pytest.fixture
async def fake_without_sse() -> AsyncIterator[FakeOrchestrator]:
    orchestrator = FakeOrchestrator(sse=False)
    runner = await serve(orchestrator)
    yield orchestrator
    await shut(orchestrator, runner)


@dataclass
class Result:
    code: int
    out: str
    err: str


class Dagctl:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    async def __call__(self, fake: FakeOrchestrator, *argv: str, **env: str) -> Result:
        environ = {"DAGCTL_SERVER": fake.url, **env}
        self.capsys.readouterr()
        code = await asyncio.to_thread(main, list(argv), environ)
        captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err)


@pytest.fixture
def dagctl(capsys: pytest.CaptureFixture[str]) -> Dagctl:
    return Dagctl(capsys)


# -- apply ----------------------------------------------------------------------------------

HELLO = "id: hello\nversion: 1.0.0\nnodes:\n  - id: greet\n    lua: return {}\n"


async def test_apply_registers_then_reports_unchanged(
    fake: FakeOrchestrator, dagctl: Dagctl, tmp_path: Any
) -> None:
    path = tmp_path / "hello.yaml"
    path.write_text(HELLO)
    first = await dagctl(fake, "apply", "-f", str(path), DAGCTL_TOKEN="s3cret")
    assert (first.code, first.out, first.err) == (0, "workflow hello@1.0.0 registered\n", "")
    again = await dagctl(fake, "apply", "-f", str(path))
    assert (again.code, again.out) == (0, "workflow hello@1.0.0 unchanged\n")
    (_, headers, body), _ = fake.requested("POST", "/api/v1/workflows")
    assert headers["Content-Type"] == "application/yaml"
    assert headers["Authorization"] == "Bearer s3cret"
    assert body == HELLO.encode()


async def test_apply_says_the_servers_warnings_on_stderr(
    fake: FakeOrchestrator, dagctl: Dagctl, tmp_path: Any
) -> None:
    path = tmp_path / "hook.yaml"
    path.write_text(HELLO + "triggers:\n  - http: {path: /hooks/h, auth: {bearer_env: T}}\n")
    result = await dagctl(fake, "apply", "-f", str(path))
    assert (result.code, result.out) == (0, "workflow hello@1.0.0 registered\n")
    assert result.err == (
        "dagctl: warning: hello@1.0.0: the trigger on /hooks/h reads its secret from T, "
        "which is not set on the orchestrator\n"
    )


async def test_apply_sends_json_files_as_json_and_force(
    fake: FakeOrchestrator, dagctl: Dagctl, tmp_path: Any
) -> None:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps({"id": "wf", "version": "2.0.0", "nodes": []}))
    result = await dagctl(fake, "apply", "-f", str(path), "--force")
    assert (result.code, result.out) == (0, "workflow wf@2.0.0 registered\n")
    ((query, headers, _),) = fake.requested("POST", "/api/v1/workflows")
    assert query == "/api/v1/workflows?force=true"
    assert headers["Content-Type"] == "application/json"


async def test_apply_sends_children_before_the_parents_that_run_them(
    fake: FakeOrchestrator, dagctl: Dagctl, tmp_path: Any
) -> None:
    # named parent first, as a directory of them often is: each waited a pass of its own
    for name, uses in (("a-top", "b-mid"), ("b-mid", "c-leaf"), ("c-leaf", None)):
        node = f"workflow: {{id: {uses}}}" if uses else "lua: return {}"
        (tmp_path / f"{name}.yaml").write_text(
            f"id: {name}\nversion: 1.0.0\nnodes:\n  - id: n\n    {node}\n"
        )
    result = await dagctl(fake, "apply", "-f", str(tmp_path))
    assert result.code == 0, result.err
    sent = [body.split(b"\n")[0] for _, _, body in fake.requested("POST", "/api/v1/workflows")]
    assert sent == [b"id: c-leaf", b"id: b-mid", b"id: a-top"]


async def test_apply_prints_every_problem_with_the_file_name_and_exits_1(
    fake: FakeOrchestrator, dagctl: Dagctl, tmp_path: Any
) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(HELLO)
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: bad\nversion: 1.0.0\nnodes: broken\n")
    conflict = tmp_path / "conflict.yaml"
    conflict.write_text(HELLO.replace("return {}", "return 1"))
    result = await dagctl(fake, "apply", "-f", str(good), "-f", str(bad), "-f", str(conflict))
    assert result.code == 1
    assert result.out == "workflow hello@1.0.0 registered\n"
    assert result.err.splitlines() == [
        f"dagctl: {bad}: invalid_spec: 2 problems in workflow spec:",
        f"  - {bad}:4: nodes[a].lua: Lua syntax error: unexpected symbol near <eof>",
        f"  - {bad}:6: nodes[b].depends_on: unknown dependency 'c'",
        f"dagctl: {conflict}: version_conflict: hello@1.0.0 is registered already",
    ]


PARENT = """id: parent
version: 1.0.0
nodes:
  - id: child
    workflow: {id: child, version: ^1}
"""
CHILD = """id: child
version: 1.0.0
nodes:
  - id: a
    lua: return {}
"""


async def test_apply_a_directory_registers_children_before_parents_that_need_them(
    fake: FakeOrchestrator, dagctl: Dagctl, tmp_path: Any
) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    # name order puts the parent first; it waits for the child named after it
    (specs / "a-parent.yaml").write_text(PARENT)
    (specs / "b-child.yml").write_text(CHILD)
    (specs / "notes.txt").write_text("not a spec")
    (specs / "nested").mkdir()
    (specs / "nested" / "x.yaml").write_text(HELLO)
    result = await dagctl(fake, "apply", "-f", str(specs))
    assert (result.code, result.err) == (0, "")
    assert result.out.splitlines() == [
        "workflow child@1.0.0 registered",
        "workflow parent@1.0.0 registered",
    ]
    # a parent whose child is nowhere is refused, in the end, with the server's words
    (specs / "b-child.yml").unlink()
    fake.registered.clear()
    alone = await dagctl(fake, "apply", "-f", str(specs))
    assert (alone.code, alone.err) == (
        1,
        f"dagctl: {specs / 'a-parent.yaml'}: not_found: no workflow 'child'\n",
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = await dagctl(fake, "apply", "-f", str(empty))
    assert (nothing.code, nothing.err) == (
        2,  # as validate: what -f names is the command line's to fix
        f"dagctl: {empty}: no .yaml, .yml, .json files in this directory\n",
    )


async def test_apply_and_validate_read_standard_input(
    fake: FakeOrchestrator, dagctl: Dagctl, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(CHILD.encode())))
    result = await dagctl(fake, "apply", "-f", "-")
    assert (result.code, result.out) == (0, "workflow child@1.0.0 registered\n")
    (_, headers, body), *_ = fake.requested("POST", "/api/v1/workflows")
    assert (headers["Content-Type"], body) == ("application/yaml", CHILD.encode())
    as_json = json.dumps({"id": "j", "version": "1.0.0", "nodes": [{"id": "a", "lua": "return 1"}]})
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(as_json.encode())))
    checked = await dagctl(fake, "validate", "-f", "-")
    assert (checked.code, checked.out) == (0, "<stdin>: j@1.0.0 is valid (1 node)\n")


async def test_a_missing_token_is_reported_with_the_servers_words(dagctl: Dagctl) -> None:
    fake = FakeOrchestrator(token="right")
    runner = await serve(fake)
    try:
        result = await dagctl(fake, "run", "hello")
        assert result.code == 1
        assert result.err == (
            "dagctl: unauthorized: this route needs Authorization: Bearer <token>"
            " (set DAGCTL_TOKEN (or API_TOKEN) to the orchestrator's API_TOKEN)\n"
        )
        result = await dagctl(fake, "run", "hello", DAGCTL_TOKEN="wrong")
        assert result.code == 1
        assert result.err == (
            "dagctl: forbidden: the bearer token is not valid"
            " (DAGCTL_TOKEN is not the orchestrator's API_TOKEN)\n"
        )
        result = await dagctl(fake, "cancel", "x" * 32, API_TOKEN="wrong")
        assert result.code == 1
        assert result.err == "dagctl: not_found: no execution 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'\n"
        ok = await dagctl(fake, "run", "hello", API_TOKEN="right")
        assert ok.code == 0
    finally:
        await shut(fake, runner)


async def test_the_token_does_not_follow_a_redirect_to_another_server(dagctl: Dagctl) -> None:
    seen: list[str | None] = []

    async def elsewhere(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"engines": []})

    other = web.Application()
    other.router.add_get("/api/v1/engines", elsewhere)
    other_runner = web.AppRunner(other)
    await other_runner.setup()
    await web.TCPSite(other_runner, "127.0.0.1", 0).start()
    target = f"http://127.0.0.1:{other_runner.addresses[0][1]}/api/v1/engines"

    async def moved(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        raise web.HTTPFound(target)

    first = web.Application()
    first.router.add_get("/api/v1/engines", moved)
    first_runner = web.AppRunner(first)
    await first_runner.setup()
    await web.TCPSite(first_runner, "127.0.0.1", 0).start()
    fake = FakeOrchestrator()
    fake.url = f"http://127.0.0.1:{first_runner.addresses[0][1]}"
    try:
        result = await dagctl(fake, "get", "engines", DAGCTL_TOKEN="s3cret")
        assert result.code == 0, result.err
        assert seen == ["Bearer s3cret", None]  # the first server had it; the one it named not
    finally:
        await first_runner.cleanup()
        await other_runner.cleanup()


# -- run ------------------------------------------------------------------------------------


async def test_run_without_wait_prints_the_id_and_status_url(
    fake: FakeOrchestrator, dagctl: Dagctl
) -> None:
    result = await dagctl(
        fake,
        "run",
        "hello",
        "--input",
        "n=5",
        "--input",
        "name=Ada",
        "--inputs",
        '{"n": 1, "tags": ["x"]}',
        "--version",
        "^1",
        "--idempotency-key",
        "k-1",
    )
    assert result.code == 0, result.err
    (eid,) = fake.executions
    assert result.out == f"{eid}\n"  # RUN=$(dagctl run hello) is the id
    assert result.err == f"accepted (queued); status: {fake.url}/api/v1/executions/{eid}\n"
    ((path, headers, body),) = fake.requested("POST", "/trigger/")
    assert path == "/trigger/hello"
    assert json.loads(body) == {"inputs": {"n": 5, "tags": ["x"], "name": "Ada"}, "version": "^1"}
    assert headers["Idempotency-Key"] == "k-1"
    assert fake.stream_count == 0 and not fake.requested("GET", "/api/v1/executions")


async def test_run_without_wait_as_json(fake: FakeOrchestrator, dagctl: Dagctl) -> None:
    result = await dagctl(fake, "run", "hello", "-o", "json")
    assert result.code == 0
    body = json.loads(result.out)
    assert body["status"] == "queued"
    assert body["status_url"] == f"{fake.url}/api/v1/executions/{body['execution_id']}"


async def test_run_wait_follows_the_stream_and_prints_the_outputs(
    fake: FakeOrchestrator, dagctl: Dagctl
) -> None:
    result = await dagctl(fake, "run", "diamond", "--input", "n=5", "--wait")
    assert result.code == 0, result.err
    (eid,) = fake.executions
    lines = result.out.splitlines()
    assert lines[0] == f"execution {eid} (diamond@1.0.0)"
    progress = [
        line.split()[1:3]
        for line in lines[1:]
        if line.strip().endswith(("started", "succeeded"))
        or "started " in line
        or "succeeded " in line
    ]
    assert ["a", "started"] in progress and ["d", "succeeded"] in progress
    assert any(line.split()[1:4] == ["a", "log:info", "hello"] for line in lines)
    summary = lines.index(
        next(line for line in lines if line.startswith(f"execution {eid} succeeded"))
    )
    assert lines[summary + 1] == "outputs:"
    assert json.loads("\n".join(lines[summary + 2 :])) == {"d": {"step": 3, "inputs": {"n": 5}}}
    assert fake.stream_count == 1
    assert result.err == ""


async def test_run_wait_exits_1_when_the_run_fails(fake: FakeOrchestrator, dagctl: Dagctl) -> None:
    result = await dagctl(fake, "run", "shaky", "--wait")
    assert result.code == 1
    (eid,) = fake.executions
    assert f"execution {eid} failed" in result.out
    assert "error: node store failed" in result.out
    assert any(
        line.split()[1:3] == ["store", "retrying"] and line.endswith("attempt 2 in 0.01s: flaky")
        for line in result.out.splitlines()
    )
    assert any(
        line.split()[1:3] == ["store", "failed"] and line.endswith("boom (Lua line 3)")
        for line in result.out.splitlines()
    )
    assert any(line.split()[1:3] == ["report", "blocked"] for line in result.out.splitlines())


async def test_run_wait_as_json_prints_the_execution_document_alone(
    fake: FakeOrchestrator, dagctl: Dagctl
) -> None:
    result = await dagctl(fake, "run", "hello", "--wait", "-o", "json")
    assert result.code == 0
    doc = json.loads(result.out)
    assert doc["status"] == "succeeded" and doc["nodes"]["greet"]["status"] == "succeeded"
    assert doc["outputs"] == {"greet": {"step": 0, "inputs": {}}}
    assert "greet" in result.err and "succeeded" in result.err  # progress went to stderr


async def test_run_wait_polls_when_there_is_no_event_stream(
    fake_without_sse: FakeOrchestrator, dagctl: Dagctl
) -> None:
    result = await dagctl(fake_without_sse, "run", "shaky", "--wait")
    assert result.code == 1
    lines = result.out.splitlines()
    assert any(line.split()[1:3] == ["fetch", "succeeded"] for line in lines)
    assert any(line.split()[1:3] == ["store", "failed"] for line in lines)
    assert "error: node store failed" in lines
    assert len(fake_without_sse.requested("GET", "/api/v1/executions/")) >= 2


async def test_run_refusals_are_printed_with_their_details(
    fake: FakeOrchestrator, dagctl: Dagctl
) -> None:
    missing = await dagctl(fake, "run", "nope", "--wait")
    assert (missing.code, missing.out) == (1, "")
    assert missing.err == "dagctl: not_found: no workflow 'nope'\n"
    bad = await dagctl(fake, "run", "hello", "--input", "bad=1")
    assert bad.code == 1
    assert bad.err.splitlines() == [
        "dagctl: invalid_inputs: inputs for workflow 'hello' do not match its inputs_schema",
        "  - inputs.bad: Additional properties are not allowed",
    ]
    usage = await dagctl(fake, "run", "hello", "--input", "oops")
    assert usage.code == 2 and usage.err.startswith("usage: dagctl run ")
    assert usage.err.endswith("\ndagctl: --input 'oops': expected key=value\n")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_the_live_display_draws_the_nodes_on_a_terminal(fake: FakeOrchestrator) -> None:
    client = Client(fake.url)
    accepted = await asyncio.to_thread(client.post, "/trigger/diamond", {"inputs": {}})
    eid = str(accepted.body["execution_id"])
    screen = Terminal()
    doc = await asyncio.to_thread(follow, client, eid, screen)
    assert doc["status"] == "succeeded"
    drawn = screen.getvalue()
    assert "\x1b[" in drawn  # drawn in place, with terminal control codes
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn)
    assert "diamond@1.0.0" in plain and "4/4 nodes" in plain
    final = plain.splitlines()[-4:]
    assert [line.split()[:3] for line in final] == [["+", node, "succeeded"] for node in "abcd"]


# -- get, describe, events, cancel ----------------------------------------------------------


async def finished_run(fake: FakeOrchestrator, dagctl: Dagctl, workflow: str) -> str:
    result = await dagctl(fake, "run", workflow, "--wait", "-o", "json")
    return str(json.loads(result.out)["id"])


async def test_get_executions_with_filters(fake: FakeOrchestrator, dagctl: Dagctl) -> None:
    first = await finished_run(fake, dagctl, "hello")
    second = await finished_run(fake, dagctl, "shaky")
    table = await dagctl(fake, "get", "executions")
    assert table.code == 0
    rows = [line.split() for line in table.out.splitlines()]
    assert rows[0] == ["ID", "WORKFLOW", "STATUS", "PROGRESS", "AGE", "DURATION", "ERROR"]
    assert [r[:4] for r in rows[1:]] == [
        [second, "shaky@2.1.0", "failed", "100%"],
        [first, "hello@1.0.0", "succeeded", "100%"],
    ]
    filtered = await dagctl(
        fake, "get", "execution", "--workflow", "shaky", "--status", "failed", "--limit", "3",
        "-o", "json",
    )  # fmt: skip
    assert [e["id"] for e in json.loads(filtered.out)["executions"]] == [second]
    (query, _, _) = fake.requested("GET", "/api/v1/executions?")[-1]
    assert query == "/api/v1/executions?workflow=shaky&status=failed&limit=3"
    empty = await dagctl(fake, "get", "executions", "--workflow", "none")
    assert (empty.code, empty.out, empty.err) == (0, "", "no executions found\n")
    # a full page says how to get the next, with the same filters
    page = await dagctl(fake, "get", "executions", "--limit", "1")
    newest = list(fake.executions.values())[-1]["id"]
    assert page.err == f"more: dagctl get executions --limit 1 --before {newest}\n"
    assert [line.split()[0] for line in page.out.splitlines()[1:]] == [second]
    last = await dagctl(fake, "get", "executions", "--limit", "1", "--before", newest)
    assert [line.split()[0] for line in last.out.splitlines()[1:]] == [first]
    assert last.err == ""


async def test_get_engines_and_workflows(fake: FakeOrchestrator, dagctl: Dagctl) -> None:
    engines = await dagctl(fake, "get", "engines")
    rows = [line.split() for line in engines.out.splitlines()]
    assert rows[0][:3] == ["ID", "ADDRESS", "STATE"]
    assert rows[1] == ["engine-0", "127.0.0.1:7001", "ready", "1", "10", "0.1.0"]
    assert rows[2][:3] == ["engine-1", "127.0.0.1:7002", "unhealthy"]
    workflows = await dagctl(fake, "get", "workflows")
    rows = [line.split() for line in workflows.out.splitlines()]
    assert rows[1] == ["hello", "1.0.0", "Hello", "1"]
    assert ["shaky", "2.1.0", "2"] in rows
    as_json = await dagctl(fake, "get", "workflows", "-o", "json")
    assert json.loads(as_json.out) == {"workflows": list(fake.workflows.values())}


async def test_describe_an_execution(fake: FakeOrchestrator, dagctl: Dagctl) -> None:
    eid = await finished_run(fake, dagctl, "shaky")
    fake.executions[eid]["children"] = ["c" * 32]
    fake.executions[eid]["nodes"]["fetch"]["output"] = {"rows": list(range(200))}
    table = await dagctl(fake, "describe", "execution", eid)
    assert table.code == 0
    text = table.out
    assert f"Execution  {eid}" in text and "Workflow   shaky@2.1.0" in text
    assert "Status     failed" in text and "Error      node store failed" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    assert rows["fetch"][1:3] == ["succeeded", "1"]
    assert rows["store"][1:3] == ["failed", "2"]
    assert "boom" in rows["store"]
    assert rows["report"][1:3] == ["blocked", "0"]
    fetch_line = next(line for line in text.splitlines() if line.startswith("fetch"))
    assert fetch_line.rstrip().endswith("...") and len(fetch_line) < 200
    assert "Sub-workflows" in text and f"{'c' * 32} (not found)" in text
    # an unambiguous prefix will do, and JSON is the document as the server sent it
    as_json = await dagctl(fake, "describe", "execution", eid[:8], "-o", "json")
    assert json.loads(as_json.out) == fake.executions[eid]
    by_tail = await dagctl(fake, "describe", "execution", eid[-8:], "-o", "json")
    assert json.loads(by_tail.out) == fake.executions[eid]
    missing = await dagctl(fake, "describe", "execution", "nope")
    assert (missing.code, missing.err) == (
        1,
        "dagctl: not_found: no execution 'nope' (an abbreviated id needs at least 8 characters)\n",
    )


async def test_describe_a_workflow(fake: FakeOrchestrator, dagctl: Dagctl) -> None:
    result = await dagctl(fake, "describe", "workflow", "diamond")
    assert result.code == 0
    assert "Workflow  diamond" in result.out
    assert [line.split()[0] for line in result.out.splitlines()[-4:]] == ["a", "b", "c", "d"]


async def test_events_print_the_stored_timeline(fake: FakeOrchestrator, dagctl: Dagctl) -> None:
    eid = await finished_run(fake, dagctl, "hello")
    result = await dagctl(fake, "events", "--execution", eid)
    assert result.code == 0
    rows = [line.split(maxsplit=5) for line in result.out.splitlines()]
    assert [r[1] for r in rows] == [
        "execution.queued",
        "execution.started",
        "node.started",
        "node.log",
        "node.succeeded",
        "execution.succeeded",
    ]
    assert all(r[2] == "hello@1.0.0" and r[3] == eid[-8:] for r in rows)
    assert rows[3][4:] == ["greet", "info: hello from greet"]
    as_json = await dagctl(fake, "events", "--execution", eid, "-o", "json")
    assert [json.loads(line) for line in as_json.out.splitlines()] == fake.timelines[eid]
    needs_id = await dagctl(fake, "events")
    assert needs_id.code == 2 and "--execution" in needs_id.err
    # the id may come as the argument, as for describe and cancel (its tail will do)
    positional = await dagctl(fake, "events", eid[-8:])
    assert (positional.code, positional.out) == (0, result.out)
    both = await dagctl(fake, "events", eid, "--execution", "other")
    assert both.code == 2 and "not both" in both.err
    # a workflow filter the run is not of: refused, as the live stream refuses it
    other = await dagctl(fake, "events", eid, "--workflow", "diamond")
    assert other.code == 1 and other.out == ""
    assert f"execution {eid} is a run of hello, not of diamond" in other.err
    same = await dagctl(fake, "events", eid, "--workflow", "hello")
    assert (same.code, same.out) == (0, result.out)


async def test_events_follow_a_run_until_it_ends(fake: FakeOrchestrator, dagctl: Dagctl) -> None:
    started = await dagctl(fake, "run", "diamond", "-o", "json")
    eid = json.loads(started.out)["execution_id"]
    result = await dagctl(fake, "events", "-f", "--execution", eid)
    assert result.code == 0
    kinds = [line.split()[1] for line in result.out.splitlines()]
    assert kinds[0] == "execution.queued" and kinds[-1] == "execution.succeeded"
    assert kinds.count("node.succeeded") == 4
    unknown = await dagctl(fake, "events", "-f", "--execution", "zz")
    assert (unknown.code, unknown.err) == (
        1,
        "dagctl: not_found: no execution 'zz' (an abbreviated id needs at least 8 characters)\n",
    )


async def test_trigger_history_says_why_a_slot_did_not_fire(
    fake: FakeOrchestrator, dagctl: Dagctl
) -> None:
    result = await dagctl(fake, "trigger", "history", "nightly", "--limit", "3")
    assert result.code == 0
    assert result.out.splitlines() == [
        "SCHEDULED                 OUTCOME  RUN OR WHY NOT",  # a table's head, as the others
        "2026-03-02T12:02:00.000Z  failed   inputs.n: 'x' is not an integer",
        "2026-03-02T12:01:00.000Z  fired    0190aa",
        "2026-03-02T11:59:00.000Z  missed   3 slots from 2026-03-02T11:57:00.000Z to"
        " 2026-03-02T11:59:00.000Z (catchup latest)",
    ]
    assert fake.requested("GET", "/api/v1/triggers/nightly/history?limit=3")


async def test_cancel(fake: FakeOrchestrator, dagctl: Dagctl) -> None:
    started = await dagctl(fake, "run", "forever", "-o", "json")
    eid = json.loads(started.out)["execution_id"]
    result = await dagctl(fake, "cancel", eid, "--reason", "enough")
    assert (result.code, result.out) == (0, f"execution {eid} cancelled\n")
    (_, _, body) = fake.requested("POST", f"/api/v1/executions/{eid}/cancel")[0]
    assert json.loads(body) == {"reason": "enough"}
    again = await dagctl(fake, "cancel", eid[:8])  # a prefix of 8 or more will do
    assert again.out == f"execution {eid} had already finished: cancelled\n"


# -- no server ------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    "argv",
    [
        ["get", "executions"],
        ["run", "hello", "--wait"],
        ["describe", "execution", "x"],
        ["events", "-f"],
        ["cancel", "x"],
    ],
)
async def test_an_unreachable_server_is_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    server = f"http://127.0.0.1:{closed_port()}"
    code = await asyncio.to_thread(main, argv, {"DAGCTL_SERVER": server})
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert captured.err == (
        f"dagctl: cannot reach the orchestrator at {server}: connection refused "
        "(start it with dagctl up, or set DAGCTL_SERVER)\n"
    )


def test_the_default_server_is_named_when_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    # nothing should listen on port 9 (discard) on a test machine
    code = main(["get", "engines"], {"DAGCTL_SERVER": "127.0.0.1:9"})
    assert code == 1
    assert capsys.readouterr().err.startswith(
        "dagctl: cannot reach the orchestrator at http://127.0.0.1:9: "
    )


def test_validate_reports_every_problem_and_exits_2(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(HELLO)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "id: bad\nversion: 1.0.0\ninputs_schema: {type: nope}\ntriggers:\n"
        "  - cron: '@daily'\n    timezone: Mars/Olympus\nnodes:\n"
        "  - id: a\n    lua: 'return {'\n  - id: b\n    depends_on: [c]\n    lua: return 1\n"
    )
    code = main(["validate", "-f", str(good), "-f", str(bad)], {})
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == f"{good}: hello@1.0.0 is valid (1 node)\n"
    lines = captured.err.splitlines()
    assert lines[0] == f"4 problems in workflow spec {bad}:"
    assert lines[1].startswith(f"  - {bad}:3: inputs_schema")
    assert lines[2].startswith(
        f"  - {bad}:6: triggers[0].timezone: unknown time zone 'Mars/Olympus'"
    )
    assert lines[3] == (
        f"  - {bad}:9: nodes[a].lua: Lua syntax error: unexpected symbol near <eof> (Lua line 1)"
    )
    assert lines[4] == f"  - {bad}:11: nodes[b].depends_on: unknown dependency 'c'"
    assert main(["validate", "-f", str(good)], {}) == 0


# -- bad input and hostile answers ----------------------------------------------------------


async def test_a_grpc_port_given_as_the_server_is_said_in_words(dagctl: Dagctl) -> None:
    import grpc

    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        grpc_port = FakeOrchestrator()
        grpc_port.url = f"http://127.0.0.1:{port}"
        result = await dagctl(grpc_port, "get", "engines")
    finally:
        await server.stop(None)
    # its HTTP/2 SETTINGS frame is not shown, byte for byte, as the reason
    assert (result.code, result.out) == (1, "")
    assert result.err == (
        f"dagctl: cannot reach the orchestrator at {grpc_port.url}: it did not answer HTTP;"
        " is that the gRPC port? (set DAGCTL_SERVER to its HTTP API address, which dagctl up"
        " prints)\n"
    )


async def test_apply_exits_2_when_a_file_is_missing_after_registering_the_rest(
    fake: FakeOrchestrator, dagctl: Dagctl, tmp_path: Any
) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(HELLO)
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: bad\nversion: 1.0.0\nnodes: broken\n")
    result = await dagctl(fake, "apply", "-f", str(good), "-f", "nope.yaml", "-f", str(bad))
    assert result.code == 2  # as validate: the command line named a file that is not there
    assert result.out == "workflow hello@1.0.0 registered\n"
    assert result.err.splitlines() == [
        "dagctl: nope.yaml: No such file or directory",
        f"dagctl: {bad}: invalid_spec: 2 problems in workflow spec:",
        f"  - {bad}:4: nodes[a].lua: Lua syntax error: unexpected symbol near <eof>",
        f"  - {bad}:6: nodes[b].depends_on: unknown dependency 'c'",
    ]
    alone = await dagctl(fake, "apply", "-f", "nope.yaml")
    assert (alone.code, alone.err) == (2, "dagctl: nope.yaml: No such file or directory\n")
    checked = await dagctl(fake, "validate", "-f", "nope.yaml")
    assert checked.code == 2


class QuietTriggers(FakeOrchestrator):
    async def trigger_history(self, request: web.Request) -> web.Response:
        return web.json_response({"history": []})


async def test_trigger_history_says_when_there_is_none(dagctl: Dagctl) -> None:
    fake = QuietTriggers()
    runner = await serve(fake)
    try:
        result = await dagctl(fake, "trigger", "history", "nightly")
        as_json = await dagctl(fake, "trigger", "history", "nightly", "-o", "json")
    finally:
        await shut(fake, runner)
    assert (result.code, result.out, result.err) == (
        0,
        "",
        "no history found for trigger nightly\n",
    )
    assert (as_json.code, json.loads(as_json.out), as_json.err) == (0, {"history": []}, "")


async def test_refused_arguments_never_reach_the_server(
    fake: FakeOrchestrator, dagctl: Dagctl
) -> None:
    for argv, env in (
        (["get", "workflows", "--status", "x"], {}),
        (["get", "engines", "--limit", "5"], {}),
        (["trigger", "history", "nightly", "--limit", "0"], {}),
        (["run", "hello", "--idempotency-key", "💥"], {}),
        (["run", "hello", "--idempotency-key", "a\nb"], {}),
        (["get", "engines"], {"DAGCTL_TOKEN": "s3cret\udcff"}),
    ):
        result = await dagctl(fake, *argv, **env)
        assert result.code == 2, argv
        said = result.err.strip().splitlines()
        # the usage (but where the variable is at fault), then one line naming what is wrong
        assert said[0].startswith("usage: dagctl ") or len(said) == 1, result.err
        assert said[-1].startswith("dagctl"), result.err
        assert "Traceback" not in result.err
    assert fake.requests == []
    listed = await dagctl(fake, "get", "executions", "--limit", "5")
    assert (listed.code, listed.err) == (0, "no executions found\n")


async def test_server_text_with_control_characters_is_shown_escaped(
    fake: FakeOrchestrator, dagctl: Dagctl
) -> None:
    eid = await finished_run(fake, dagctl, "shaky")
    fake.executions[eid]["error"] = "node 'store' failed: x\x1b[31mRED\x00 [/] \x85"
    fake.executions[eid]["nodes"]["store"]["error"] = "x\x1b[31mRED\x9b2J"
    fake.workflows["hello"]["name"] = "He\x1b]0;pwned\x07llo"
    shown = "x\\x1b[31mRED"
    table = await dagctl(fake, "get", "executions")
    details = await dagctl(fake, "describe", "execution", eid)
    workflows = await dagctl(fake, "get", "workflows")
    for result in (table, details, workflows):
        assert result.code == 0
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", result.out), result.out
    assert f"node 'store' failed: {shown}\\x00 [/] \\x85" in table.out
    assert f"{shown}\\x00 [/] \\x85" in details.out and f"{shown}\\x9b2J" in details.out
    assert "He\\x1b]0;pwned\\x07llo" in workflows.out
    # -o json is the document as the server sent it
    as_json = await dagctl(fake, "describe", "execution", eid, "-o", "json")
    assert json.loads(as_json.out)["error"] == fake.executions[eid]["error"]
