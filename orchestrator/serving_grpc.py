"""The orchestrator's gRPC service (``dagengine.v1.Orchestrator``), over the same facade as HTTP.

Payloads travel as JSON text, so inputs and outputs round-trip exactly. Errors map to status
codes in one function; spec and input problems go out as BadRequest field violations, as the
engine does.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
from google.rpc import code_pb2, status_pb2
from grpc_status import rpc_status

from engine import wire
from engine.api import dagengine_pb2 as pb
from engine.api import dagengine_pb2_grpc as pb_grpc
from engine.core.errors import EngineError
from engine.core.values import JSON, JSONObject
from orchestrator.errors import OrchestratorError
from orchestrator.monitoring import EventFilter
from orchestrator.serving_http import (
    Api,
    HttpError,
    check_bearer,
    check_json,
    error_body,
    final_event,
)
from orchestrator.subworkflows import ChildRequest
from orchestrator.triggering import Triggers

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

_HTTP_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    412: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def grpc_status_for(exc: BaseException) -> grpc.Status:
    """The one mapping from an orchestrator error to a gRPC status."""
    if isinstance(exc, EngineError):
        return wire.grpc_status(exc)  # spec and input problems, with field violations
    status, body = error_body(exc)
    error = body["error"]
    message = str(error["message"]) if isinstance(error, dict) else "error"
    code = (
        exc.grpc_code
        if isinstance(exc, OrchestratorError)
        else _HTTP_TO_GRPC.get(status, grpc.StatusCode.INTERNAL)
    )
    converted: grpc.Status = rpc_status.to_status(
        status_pb2.Status(code=code.value[0] or code_pb2.UNKNOWN, message=wire.bounded(message))
    )
    return converted


async def _refuse(context: Context, exc: BaseException) -> NoReturn:
    if not isinstance(exc, EngineError | HttpError | OrchestratorError):
        log.exception("gRPC call failed")
    await context.abort_with_status(grpc_status_for(exc))
    raise AssertionError("abort_with_status returns only by raising")


def _json_arg(text: str, field: str) -> JSON:
    if not text:
        return {}
    try:
        value = wire.loads(text)
    except ValueError as exc:
        raise HttpError(400, "bad_json", f"{field} is not valid JSON: {exc}") from None
    except RecursionError:
        raise HttpError(400, "too_deep", f"{field} nests deeper than Python can read") from None
    check_json(text, value, field)
    return value


def _workflow_message(doc: JSONObject) -> pb.Workflow:
    def text(key: str) -> str:
        value = doc.get(key)
        return value if isinstance(value, str) else ""

    versions = doc.get("versions")
    dependents = doc.get("dependents")
    spec = doc.get("spec")
    return pb.Workflow(
        id=text("id"),
        version=text("version"),
        name=text("name"),
        spec_json=wire.dumps(spec) if spec is not None else "",
        created_at=text("created_at"),
        versions=[str(v.get("version") if isinstance(v, dict) else v) for v in versions]
        if isinstance(versions, list)
        else [],
        dependents=[str(d) for d in dependents] if isinstance(dependents, list) else [],
    )


class OrchestratorService(pb_grpc.OrchestratorServicer):
    """Calls that change something need ``authorization: Bearer <API_TOKEN>`` metadata when a
    token is set, as the HTTP API's mutating routes do."""

    def __init__(
        self, api: Api, *, token: str | None = None, triggers: Triggers | None = None
    ) -> None:
        self.api = api
        self.token = token
        self.triggers = triggers

    def _authorize(self, context: Context) -> None:
        metadata = context.invocation_metadata() or ()
        header = next((str(v) for k, v in metadata if k == "authorization"), "")
        check_bearer(header, self.token)

    async def RegisterWorkflow(
        self, request: pb.RegisterWorkflowRequest, context: Context
    ) -> pb.RegisterWorkflowResponse:
        try:
            self._authorize(context)
            text = request.spec
            is_yaml = not text.lstrip().startswith("{")
            workflow, created = await self.api.register(text, yaml=is_yaml, force=request.force)
        except Exception as exc:
            await _refuse(context, exc)
        return pb.RegisterWorkflowResponse(workflow=_workflow_message(workflow), created=created)

    async def GetWorkflow(self, request: pb.GetWorkflowRequest, context: Context) -> pb.Workflow:
        try:
            doc = await self.api.get_workflow(request.workflow_id, request.version or None)
        except Exception as exc:
            await _refuse(context, exc)
        return _workflow_message(doc)

    async def ListWorkflows(
        self, request: pb.ListWorkflowsRequest, context: Context
    ) -> pb.ListWorkflowsResponse:
        try:
            found = await self.api.list_workflows()
        except Exception as exc:
            await _refuse(context, exc)
        return pb.ListWorkflowsResponse(workflows=[_workflow_message(w) for w in found])

    async def ExecuteWorkflow(
        self, request: pb.ExecuteWorkflowRequest, context: Context
    ) -> pb.ExecuteWorkflowResponse:
        try:
            self._authorize(context)
            inputs = _json_arg(request.inputs_json, "inputs_json")
            execution, _ = await self.api.execute(
                request.workflow_id,
                inputs=inputs,
                version=request.version or None,
                idempotency_key=request.idempotency_key or None,
                wait=300.0 if request.wait else None,
            )
        except Exception as exc:
            await _refuse(context, exc)
        return pb.ExecuteWorkflowResponse(
            execution_id=str(execution["id"]),
            execution=wire.execution_message(execution),
        )

    async def GetExecution(self, request: pb.GetExecutionRequest, context: Context) -> pb.Execution:
        try:
            doc = await self.api.get_execution(request.execution_id)
        except Exception as exc:
            await _refuse(context, exc)
        return wire.execution_message(doc)

    async def ListExecutions(
        self, request: pb.ListExecutionsRequest, context: Context
    ) -> pb.ListExecutionsResponse:
        try:
            limit = request.limit or 50
            found = await self.api.list_executions(
                workflow_id=request.workflow_id or None,
                status=request.status or None,
                limit=limit,
                before=request.before or None,
            )
        except Exception as exc:
            await _refuse(context, exc)
        return pb.ListExecutionsResponse(
            executions=[wire.execution_message(e, with_nodes=False) for e in found],
            next_before=str(found[-1]["id"]) if len(found) == limit else "",
        )

    async def CancelExecution(
        self, request: pb.CancelExecutionRequest, context: Context
    ) -> pb.CancelExecutionResponse:
        try:
            self._authorize(context)
            doc = await self.api.cancel(
                request.execution_id, request.reason or "cancelled on request"
            )
        except Exception as exc:
            await _refuse(context, exc)
        return pb.CancelExecutionResponse(execution=wire.execution_message(doc))

    async def WatchEvents(
        self, request: pb.WatchEventsRequest, context: Context
    ) -> AsyncIterator[pb.Event]:
        flt = EventFilter(
            workflow_id=request.workflow_id or None, execution_id=request.execution_id or None
        )
        with self.api.hub.subscribe(flt) as sub:
            last = 0
            if flt.execution_id is not None:
                try:
                    stored = await self.api.execution_events(flt.execution_id, request.after_seq)
                except Exception as exc:
                    await _refuse(context, exc)
                for event in stored:
                    seq = event.get("seq")
                    last = max(last, seq if isinstance(seq, int) else 0)
                    yield wire.event_message_from_dict(event)
                    if final_event(event):
                        return  # one run's stream ends with it, as over HTTP
            while not context.done():
                try:
                    event = await sub.next_event()
                except StopAsyncIteration:
                    return  # the hub closed: the server is stopping
                seq = event.get("seq")
                if flt.execution_id is not None and event.get("type") != "subscriber.lagged":
                    if isinstance(seq, int) and seq <= last:
                        continue
                    last = seq if isinstance(seq, int) else last
                yield wire.event_message_from_dict(event)
                if flt.execution_id is not None and final_event(event):
                    return

    async def ExecuteSubWorkflow(
        self, request: pb.ExecuteSubWorkflowRequest, context: Context
    ) -> pb.ExecuteSubWorkflowResponse:
        try:
            self._authorize(context)
            problems = [
                f"{name} is required"
                for name, value in (
                    ("parent_execution_id", request.parent_execution_id),
                    ("workflow_id", request.workflow_id),
                )
                if not value
            ]
            if request.attempt < 0:
                problems.append(f"attempt must be 1 or more, got {request.attempt}")
            if problems:
                raise HttpError(400, "bad_request", "; ".join(problems))
            started = await self.api.execute_sub_workflow(
                ChildRequest(
                    parent_execution_id=request.parent_execution_id,
                    node_id=request.node_id,
                    item=request.item if request.HasField("item") else None,
                    attempt=request.attempt or 1,
                    workflow_id=request.workflow_id,
                    version=request.version or "latest",
                    inputs=_json_arg(request.inputs_json, "inputs_json"),
                    parent_workflow_id=request.parent_workflow_id,
                )
            )
        except Exception as exc:
            await _refuse(context, exc)
        return pb.ExecuteSubWorkflowResponse(
            execution_id=started.execution_id, version=started.version
        )

    async def GetSubWorkflowStatus(
        self, request: pb.GetSubWorkflowStatusRequest, context: Context
    ) -> pb.SubWorkflowStatus:
        try:
            doc = await self.api.get_execution(request.execution_id)
        except Exception as exc:
            await _refuse(context, exc)
        error = doc.get("error")
        return pb.SubWorkflowStatus(
            execution_id=str(doc["id"]),
            status=str(doc["status"]),
            outputs_json=wire.dumps(doc.get("outputs")),
            error=error if isinstance(error, str) else None,
        )

    async def ListEngines(
        self, request: pb.ListEnginesRequest, context: Context
    ) -> pb.ListEnginesResponse:
        engines = []
        for e in self.api.engines():
            capacity, in_flight = e.get("capacity"), e.get("in_flight")
            engines.append(
                pb.EngineInfo(
                    engine_id=str(e.get("id") or ""),
                    address=str(e.get("address") or ""),
                    state=str(e.get("state") or ""),
                    capacity=capacity if isinstance(capacity, int) else 0,
                    in_flight=in_flight if isinstance(in_flight, int) else 0,
                    version=str(e.get("version") or ""),
                )
            )
        return pb.ListEnginesResponse(engines=engines)

    # -- triggers ---------------------------------------------------------------------------

    def _trigger_set(self) -> Triggers:
        if self.triggers is None:
            raise HttpError(503, "unavailable", "triggers are not running in this server")
        return self.triggers

    async def ListTriggers(
        self, request: pb.ListTriggersRequest, context: Context
    ) -> pb.ListTriggersResponse:
        try:
            found = self._trigger_set().listing(request.workflow_id or None, 10_000)
        except Exception as exc:
            await _refuse(context, exc)
        return pb.ListTriggersResponse(triggers=[_trigger_message(t) for t in found])

    async def GetTrigger(self, request: pb.TriggerRequest, context: Context) -> pb.TriggerInfo:
        try:
            doc = self._trigger_set().get(request.trigger_id)
        except Exception as exc:
            await _refuse(context, exc)
        return _trigger_message(doc)

    async def CreateTrigger(
        self, request: pb.CreateTriggerRequest, context: Context
    ) -> pb.TriggerInfo:
        try:
            self._authorize(context)
            body: JSONObject = {
                "workflow_id": request.workflow_id,
                "cron": request.cron,
                "inputs": _json_arg(request.inputs_json, "inputs_json"),
                "paused": request.paused,
            }
            for name in ("id", "version", "timezone", "overlap", "catchup"):
                value = getattr(request, name)
                if value:
                    body[name] = value
            doc = await self._trigger_set().create(body)
        except Exception as exc:
            await _refuse(context, exc)
        return _trigger_message(doc)

    async def PauseTrigger(self, request: pb.TriggerRequest, context: Context) -> pb.TriggerInfo:
        try:
            self._authorize(context)
            doc = await self._trigger_set().pause(request.trigger_id)
        except Exception as exc:
            await _refuse(context, exc)
        return _trigger_message(doc)

    async def ResumeTrigger(self, request: pb.TriggerRequest, context: Context) -> pb.TriggerInfo:
        try:
            self._authorize(context)
            doc = await self._trigger_set().resume(request.trigger_id)
        except Exception as exc:
            await _refuse(context, exc)
        return _trigger_message(doc)

    async def DeleteTrigger(
        self, request: pb.TriggerRequest, context: Context
    ) -> pb.DeleteTriggerResponse:
        try:
            self._authorize(context)
            await self._trigger_set().delete(request.trigger_id)
        except Exception as exc:
            await _refuse(context, exc)
        return pb.DeleteTriggerResponse(trigger_id=request.trigger_id)


def _trigger_message(doc: JSONObject) -> pb.TriggerInfo:
    def text(key: str) -> str:
        value = doc.get(key)
        return value if isinstance(value, str) else ""

    upcoming = doc.get("next_fire_times")
    last = doc.get("last_scheduled_time")
    return pb.TriggerInfo(
        id=text("id"),
        workflow_id=text("workflow_id"),
        type=text("type"),
        source=text("source"),
        version=text("version"),
        paused=doc.get("paused") is True,
        active=doc.get("active") is True,
        created_at=text("created_at"),
        cron=text("cron"),
        timezone=text("timezone"),
        overlap=text("overlap"),
        catchup=text("catchup"),
        inputs_json=wire.dumps(doc["inputs"]) if "inputs" in doc else "",
        next_fire_times=[str(t) for t in upcoming] if isinstance(upcoming, list) else [],
        last_scheduled_time=last if isinstance(last, str) else None,
        path=text("path"),
        auth=text("auth"),
        raw_body=doc.get("raw_body") is True,
    )
