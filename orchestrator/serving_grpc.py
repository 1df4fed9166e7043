"""The orchestrator's gRPC service (``dagengine.v1.Orchestrator``), over the same facade as HTTP.

Payloads travel as JSON text, so inputs and outputs round-trip exactly. Errors map to status
codes in one function; spec and input problems go out as BadRequest field violations, as the
engine does.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator
from contextlib import aclosing
from typing import Any, Final, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from engine import wire
from engine.api import dagengine_pb2 as pb
from engine.api import dagengine_pb2_grpc as pb_grpc
from engine.core.errors import EngineError
from engine.core.values import JSON, JSONObject
from orchestrator.errors import IdempotencyKeyReused, OrchestratorError, Unavailable
from orchestrator.monitoring import EventFilter, Published
from orchestrator.serving_http import (
    MAX_JSON_DEPTH,
    WORKFLOW_PAGE,
    Api,
    HttpError,
    check_bearer,
    check_json,
    check_run_of,
    error_body,
    final_event,
    follow_all,
    follow_execution,
    stored_page,
)
from orchestrator.store import page_continues
from orchestrator.subworkflows import ChildRequest
from orchestrator.triggering import InvalidTrigger, TriggerConflict, Triggers

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

ERROR_DOMAIN: Final = "dagengine"
"""``google.rpc.ErrorInfo.domain`` of every refusal: its reason is one of our error codes."""

_DETAILS_BIN: Final = "grpc-status-details-bin"


def _error_info(reason: str, details: JSONObject) -> any_pb2.Any:
    """HTTP's ``details`` as an ErrorInfo: metadata values are strings, so anything else goes
    as JSON text. Bounded like field violations: the status travels in trailing metadata."""
    metadata: dict[str, str] = {}
    room = wire.STATUS_DETAILS_MAX
    for key, value in details.items():
        text = wire.bounded(value if isinstance(value, str) else wire.dumps(value))
        room -= len(key) + len(text)
        if room < 0:
            break
        metadata[key] = text
    packed = any_pb2.Any()
    packed.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata))
    return packed


def grpc_status_for(exc: BaseException, code: grpc.StatusCode | None = None) -> grpc.Status:
    """The one mapping from an orchestrator error to a gRPC status: HTTP's error code and
    details as an ErrorInfo, and spec and input problems as BadRequest field violations, as
    the engine sends them. ``code``: the call knows better than the error's own code."""
    http_status, body = error_body(exc)
    error = body["error"]
    assert isinstance(error, dict)
    reason = str(error["code"])
    details = error["details"] if isinstance(error["details"], dict) else {}
    if isinstance(exc, EngineError):
        # the problems are in the field violations already: the ErrorInfo names the kind
        engine_status = wire.grpc_status(exc)
        packed = dict(engine_status.trailing_metadata)[_DETAILS_BIN]
        assert isinstance(packed, bytes)  # a -bin key's value is always bytes
        status = status_pb2.Status.FromString(packed)
        status.details.append(_error_info(reason, {}))
    else:
        if code is None:
            code = (
                exc.grpc_code
                if isinstance(exc, OrchestratorError)
                else _HTTP_TO_GRPC.get(http_status, grpc.StatusCode.INTERNAL)
            )
        status = status_pb2.Status(
            code=code.value[0] or code_pb2.UNKNOWN,
            message=wire.bounded(str(error["message"])),
            details=[_error_info(reason, details)],
        )
        field = details.get("field")
        if isinstance(field, str) and code == grpc.StatusCode.INVALID_ARGUMENT:
            # the field a client's library shows a refusal against, as the engine's refusals
            # and spec problems come
            violation = error_details_pb2.BadRequest.FieldViolation(
                field=field, description=wire.bounded(str(error["message"]))
            )
            bad_request = any_pb2.Any()
            bad_request.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
            status.details.append(bad_request)
    converted: grpc.Status = rpc_status.to_status(status)
    return converted


def unparsed_request_status(message: str) -> grpc.Status:
    """The refusal of a request that does not parse (``wire.DecodeRequests``)."""
    return grpc_status_for(HttpError(400, "bad_request", message, {"field": "request"}))


async def _refuse(
    context: Context, exc: BaseException, code: grpc.StatusCode | None = None
) -> NoReturn:
    if not isinstance(exc, EngineError | HttpError | OrchestratorError):
        log.exception("gRPC call failed")
    await context.abort_with_status(grpc_status_for(exc, code))
    raise AssertionError("abort_with_status returns only by raising")


def _required(field: str, value: str) -> None:
    """An empty id is a malformed request, not an unknown thing: INVALID_ARGUMENT naming the
    field (an HTTP route cannot even be reached without its id)."""
    if not value:
        raise HttpError(400, "bad_request", f"{field} is required", {"field": field})


def _json_arg(text: str, field: str) -> JSON:
    """A request's JSON field; empty (proto3's unset) is ``{}``."""
    if not text:
        return {}
    try:
        value = wire.loads_sent(text)
    except wire.DuplicateKey as exc:
        raise HttpError(
            400, "bad_json", f"{field} holds a {exc}", {"field": field, "key": exc.shown}
        ) from None
    except ValueError as exc:
        raise HttpError(
            400, "bad_json", f"{field} is not valid JSON: {exc}", {"field": field}
        ) from None
    except RecursionError:
        raise HttpError(
            400, "too_deep", f"{field} nests deeper than {MAX_JSON_DEPTH} levels", {"field": field}
        ) from None
    check_json(text, value, field)
    return value


def _inputs_arg(text: str) -> JSON:
    """``inputs_json``: unset and ``null`` are none, as an absent or null ``inputs`` is over
    HTTP (clients write an unset map as null)."""
    value = _json_arg(text, "inputs_json")
    return {} if value is None else value


_JSON_START: Final = re.compile(r'\{\s*"')


def _spec_is_yaml(text: str) -> bool:
    """Whether ``RegisterWorkflow.spec`` is to be read as YAML. JSON gets HTTP's JSON checks
    first (depth, lone surrogates), as an ``application/json`` body does. Text that starts like
    JSON but does not parse as JSON is YAML in flow style (``{id: x, nodes: [...]}``), unless
    its first key is quoted as JSON's are: then it is broken JSON, told as such with its place,
    not as "invalid YAML"."""
    start = text.lstrip()
    if not start.startswith(("{", "[")):
        return True
    try:
        value: JSON = json.loads(text)
    except ValueError:
        return not _JSON_START.match(start)
    except RecursionError:
        raise HttpError(
            400, "too_deep", f"spec nests deeper than {MAX_JSON_DEPTH} levels", {"field": "spec"}
        ) from None
    check_json(text, value, "spec")
    return False


def _watch_filter(request: pb.WatchEventsRequest) -> EventFilter:
    if request.after_seq and not request.execution_id:
        # a seq means nothing across runs: ignoring it would replay nothing, silently
        raise HttpError(
            400,
            "bad_request",
            "after_seq needs execution_id: seq counts per execution",
            {"field": "after_seq"},
        )
    if request.after_seq < 0:
        raise HttpError(
            400,
            "bad_request",
            f"after_seq must be 0 or more, got {request.after_seq}",
            {"field": "after_seq"},
        )
    return EventFilter(
        workflow_id=request.workflow_id or None, execution_id=request.execution_id or None
    )


def _workflow_message(doc: JSONObject) -> pb.Workflow:
    def text(key: str) -> str:
        value = doc.get(key)
        return value if isinstance(value, str) else ""

    versions = doc.get("versions")
    dependents = doc.get("dependents")
    references = doc.get("references")
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
        references=[_reference_message(r) for r in references if isinstance(r, dict)]
        if isinstance(references, list)
        else [],
    )


def _reference_message(ref: JSONObject) -> pb.WorkflowReference:
    resolved = ref.get("resolves_to")
    return pb.WorkflowReference(
        node=str(ref.get("node") or ""),
        workflow=str(ref.get("workflow") or ""),
        range=str(ref.get("range") or ""),
        resolves_to=resolved if isinstance(resolved, str) else None,
    )


def _key_reused(
    key: str, sent: str, exc: IdempotencyKeyReused, of: str = ""
) -> IdempotencyKeyReused:
    """The store's refusal, which words it for HTTP's Idempotency-Key header, for a key that
    is a field here; ``sent``: what the key came with before, for the execution it started
    (``of``: whose)."""
    first = exc.details.get("execution_id")
    return IdempotencyKeyReused(
        f"idempotency_key {key!r} was sent with {sent} for execution {first}{of}: a key "
        "stands for one request for 24 hours, so send new ones with a new key",
        exc.details,
    )


def _started_reply(execution: JSONObject) -> pb.ExecuteWorkflowResponse:
    reply = pb.ExecuteWorkflowResponse(
        execution_id=str(execution["id"]), execution=_execution_message(execution)
    )
    # the id above all: a caller that cannot read it cannot find the run it started
    return _fitted(reply, _json_fields(reply.execution), reply.execution)


def _execution_message(doc: JSONObject, *, with_nodes: bool = True) -> pb.Execution:
    """``wire.execution_message`` plus what only the orchestrator knows of a run."""
    message = wire.execution_message(doc, with_nodes=with_nodes)
    item = doc.get("parent_item")
    if isinstance(item, int) and not isinstance(item, bool):
        message.parent_item = item
    attempt = doc.get("parent_attempt")
    if isinstance(attempt, int) and not isinstance(attempt, bool):
        message.parent_attempt = attempt
    retry_of = doc.get("retry_of")
    if isinstance(retry_of, str):
        message.retry_of = retry_of
    return message


REPLY_BYTES: Final = 4 * 1024 * 1024
"""Largest reply a gRPC client with default options receives (its receive limit). Inputs and
outputs travel whole as JSON text, the run's outputs besides each node's, and a foreach may
return 32 MiB: a reply that would pass this carries notes in place of some (``_fitted``), as
``WatchEvents`` does for an event, so such a client can always read the run and page past it."""

_Reply = TypeVar("_Reply", bound=Message)
_JsonField = tuple[Message, str, str]
"""A message, the name of one of its JSON text fields, and the HTTP path that reads it whole."""


def _json_fields(execution: pb.Execution) -> Iterator[_JsonField]:
    whole = f"/api/v1/executions/{execution.id}"
    yield execution, "inputs_json", whole
    yield execution, "outputs_json", whole
    for node in execution.nodes:
        yield node, "output_json", whole


def _sub_workflow_status(doc: JSONObject) -> pb.SubWorkflowStatus:
    error = doc.get("error")
    reply = pb.SubWorkflowStatus(
        execution_id=str(doc["id"]),
        status=str(doc["status"]),
        outputs_json=wire.dumps(doc.get("outputs")),
        error=error if isinstance(error, str) else None,
    )
    whole = f"/api/v1/executions/{reply.execution_id}"
    return _fitted(reply, [(reply, "outputs_json", whole)])


def _fitted(
    reply: _Reply, fields: Iterable[_JsonField], execution: pb.Execution | None = None
) -> _Reply:
    """``reply``, within ``REPLY_BYTES``: past it, its JSON ``fields`` are replaced, largest
    first, by a note of their size and where to read it whole, until it fits. Largest
    first: a run's outputs repeat those of its sink nodes, so they go before the node outputs
    they hold, which then travel once, whole where they fit. Still past it (tens of thousands
    of node records), the ``execution``'s last node records are left off, and counted; then,
    past it still (a hundred thousand children), its last children's ids."""
    excess = reply.ByteSize() - REPLY_BYTES
    if excess <= 0:
        return reply
    _noted(fields, excess)
    excess = reply.ByteSize() - REPLY_BYTES
    if excess > 0 and execution is not None:
        _fewer_nodes(execution, excess)
        excess = reply.ByteSize() - REPLY_BYTES
        if excess > 0:  # every node record gone, and still past it: children's ids go too
            _fewer_children(execution, excess)
    return reply


def _fewer_nodes(execution: pb.Execution, excess: int) -> None:
    # each record costs its size, its length prefix and its tag; the count's own field
    # takes a few bytes more, which the margin covers
    cut, freed = len(execution.nodes), 0
    while cut > 0 and freed < excess + 16:
        cut -= 1
        size = execution.nodes[cut].ByteSize()
        freed += size + 1 + (size.bit_length() + 6) // 7
    execution.nodes_omitted = len(execution.nodes) - cut
    del execution.nodes[cut:]


def _fewer_children(execution: pb.Execution, excess: int) -> None:
    # as _fewer_nodes: each id costs its length, its length prefix and its tag
    cut, freed = len(execution.children), 0
    while cut > 0 and freed < excess + 16:
        cut -= 1
        size = len(execution.children[cut].encode())
        freed += size + 1 + (size.bit_length() + 6) // 7
    execution.children_omitted = len(execution.children) - cut
    del execution.children[cut:]


def _noted(fields: Iterable[_JsonField], excess: int) -> None:
    # stable: of fields alike in size, the first given goes first
    ranked = sorted(
        ((len(getattr(holder, name)), holder, name, whole) for holder, name, whole in fields),
        key=lambda field: field[0],
        reverse=True,
    )
    for size, holder, name, whole in ranked:
        note = wire.dumps(
            {
                "too_large": True,
                "bytes": size,
                "limit": REPLY_BYTES,
                "read_whole": whole,
            }
        )
        if excess <= 0 or size <= len(note):
            break
        # JSON text is ASCII (wire.dumps escapes the rest): characters are bytes
        setattr(holder, name, note)
        excess -= size - len(note)


def _execution_reply(doc: JSONObject) -> pb.Execution:
    message = _execution_message(doc)
    return _fitted(message, _json_fields(message), message)


def _cancel_reply(doc: JSONObject) -> pb.CancelExecutionResponse:
    reply = pb.CancelExecutionResponse(execution=_execution_message(doc))
    return _fitted(reply, _json_fields(reply.execution), reply.execution)


def _event_message(item: Published) -> pb.Event:
    """The event's message, made once and sent by every watcher: ``data_json`` is the text
    every stream carries (a note instead of data over ``STREAM_EVENT_MAX``, which a client
    with default options could not receive)."""
    event = item.event
    message = wire.event_message_from_dict({**event, "data": None})
    if event.get("data"):
        message.data_json = item.data_text
    return message


_BATCH_ERROR: Final = re.compile(r"ExecuteBatchError raised in core by servicer method \[(.*)\]")


class ClientGone(logging.Filter):
    """grpcio logs an ERROR with a traceback when a response stream's write fails because its
    client vanished (killed, its connection cut) before grpcio has seen the call close. Nothing
    is wrong on this side, and the subscription is released: one WARNING line says so."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        found = _BATCH_ERROR.match(record.getMessage()) if exc is not None else None
        if found is not None and type(exc).__name__ == "ExecuteBatchError":
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "gRPC call %s ended: its client went away", (found[1],)
            record.exc_info = record.exc_text = None
        return True


_CLIENT_GONE: Final = ClientGone()


class OrchestratorService(pb_grpc.OrchestratorServicer):
    """Every call needs ``authorization: Bearer <API_TOKEN>`` metadata when a token is set, as
    the HTTP API's routes do, reads and ``WatchEvents`` too: it is checked by ``_behind_token``
    before the method runs. Health and reflection are other services, and stay open."""

    def __init__(
        self, api: Api, *, token: str | None = None, triggers: Triggers | None = None
    ) -> None:
        self.api = api
        self.token = token
        self.triggers = triggers
        # here rather than in main: every server of this service, tests' too, logs alike
        logging.getLogger("grpc._cython.cygrpc").addFilter(_CLIENT_GONE)

    def _authorize(self, context: Context) -> None:
        """The call's ``authorization`` metadata against the token: HttpError 401 or 403."""
        metadata = context.invocation_metadata() or ()
        header = next((str(v) for k, v in metadata if k == "authorization"), "")
        check_bearer(header, self.token, grpc=True)

    async def RegisterWorkflow(
        self, request: pb.RegisterWorkflowRequest, context: Context
    ) -> pb.RegisterWorkflowResponse:
        try:
            text = request.spec
            workflow, created = await self.api.register(
                text, yaml=_spec_is_yaml(text), force=request.force
            )
        except Exception as exc:
            await _refuse(context, exc)
        warnings = workflow.get("warnings")
        return pb.RegisterWorkflowResponse(
            workflow=_workflow_message(workflow),
            created=created,
            warnings=[str(w) for w in warnings] if isinstance(warnings, list) else [],
        )

    async def GetWorkflow(self, request: pb.GetWorkflowRequest, context: Context) -> pb.Workflow:
        try:
            _required("workflow_id", request.workflow_id)
            doc = await self.api.get_workflow(request.workflow_id, request.version or None)
        except Exception as exc:
            await _refuse(context, exc)
        return _workflow_message(doc)

    async def DeleteWorkflow(
        self, request: pb.DeleteWorkflowRequest, context: Context
    ) -> pb.DeleteWorkflowResponse:
        try:
            _required("workflow_id", request.workflow_id)
            deleted = await self.api.delete_workflow(request.workflow_id)
        except Exception as exc:
            await _refuse(context, exc)
        return pb.DeleteWorkflowResponse(
            workflow_id=deleted.workflow_id,
            versions=deleted.versions,
            triggers=deleted.triggers,
            executions=deleted.executions,
        )

    async def ListWorkflows(
        self, request: pb.ListWorkflowsRequest, context: Context
    ) -> pb.ListWorkflowsResponse:
        try:
            if not 0 <= request.limit <= 10_000:
                raise HttpError(
                    400, "bad_request", "limit must be between 1 and 10000", {"field": "limit"}
                )
            found, next_after = await self.api.list_workflows(
                request.after or None, request.limit or WORKFLOW_PAGE
            )
        except Exception as exc:
            await _refuse(context, exc)
        return pb.ListWorkflowsResponse(
            workflows=[_workflow_message(w) for w in found], next_after=next_after or ""
        )

    async def ExecuteWorkflow(
        self, request: pb.ExecuteWorkflowRequest, context: Context
    ) -> pb.ExecuteWorkflowResponse:
        try:
            _required("workflow_id", request.workflow_id)
            inputs = _inputs_arg(request.inputs_json)
            execution, _ = await self.api.execute(
                request.workflow_id,
                inputs=inputs,
                version=request.version or None,
                idempotency_key=request.idempotency_key or None,
                wait=300.0 if request.wait else None,
            )
        except IdempotencyKeyReused as exc:
            sent = "other inputs_json or version"
            of = f" of {request.workflow_id!r}"
            await _refuse(context, _key_reused(request.idempotency_key, sent, exc, of))
        except Exception as exc:
            await _refuse(context, exc)
        return _started_reply(execution)

    async def GetExecution(self, request: pb.GetExecutionRequest, context: Context) -> pb.Execution:
        try:
            _required("execution_id", request.execution_id)
            return await self._execution_reply(request.execution_id, _execution_reply)
        except Exception as exc:
            await _refuse(context, exc)

    async def _execution_reply(
        self, execution_id: str, make: Callable[[JSONObject], _Reply]
    ) -> _Reply:
        """``make(document)`` of the run: a large document is built and made into its reply
        within the large-read budget, and made off the event loop (as HTTP encodes it)."""
        async with self.api.execution_document(execution_id) as (doc, large):
            return await asyncio.to_thread(make, doc) if large else make(doc)

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
        reply = pb.ListExecutionsResponse(
            executions=[_execution_message(e, with_nodes=False) for e in found],
            # a full page, or one cut by size, may have more behind it
            next_before=str(found[-1]["id"]) if page_continues(found, limit) else "",
        )
        # a page is a few MiB at most (LIST_PAGE_BYTES), but its first row is taken whatever
        # its size: without this a run too large for a client would stop its paging there
        return _fitted(reply, (f for e in reply.executions for f in _json_fields(e)))

    async def CancelExecution(
        self, request: pb.CancelExecutionRequest, context: Context
    ) -> pb.CancelExecutionResponse:
        try:
            _required("execution_id", request.execution_id)
            await self.api.cancel_run(
                request.execution_id, request.reason or "cancelled on request"
            )
            return await self._execution_reply(request.execution_id, _cancel_reply)
        except Exception as exc:
            await _refuse(context, exc)

    async def RetryExecution(
        self, request: pb.RetryExecutionRequest, context: Context
    ) -> pb.ExecuteWorkflowResponse:
        try:
            _required("execution_id", request.execution_id)
            execution, _ = await self.api.retry(
                request.execution_id,
                idempotency_key=request.idempotency_key or None,
                wait=300.0 if request.wait else None,
            )
        except IdempotencyKeyReused as exc:
            await _refuse(context, _key_reused(request.idempotency_key, "another request", exc))
        except Exception as exc:
            await _refuse(context, exc)
        return _started_reply(execution)

    async def WatchEvents(
        self, request: pb.WatchEventsRequest, context: Context
    ) -> AsyncIterator[pb.Event]:
        try:
            flt = _watch_filter(request)
        except Exception as exc:
            await _refuse(context, exc)
        try:
            sub = self.api.hub.subscribe(flt)  # before the replay, so nothing falls between
        except Exception as exc:
            await _refuse(context, exc)
        with sub:
            events: AsyncGenerator[list[Published] | None]
            if flt.execution_id is not None:
                try:
                    # the run's row, not its document: opening a stream folds none of its events
                    run = await self.api.execution_head(flt.execution_id)
                    check_run_of(run, flt)
                    replay = await stored_page(self.api, flt.execution_id, request.after_seq, run)
                except Exception as exc:
                    await _refuse(context, exc)
                if replay is None:
                    return  # ended, and its end was seen already: as HTTP's 204
                events = follow_execution(
                    self.api, sub, flt.execution_id, replay, request.after_seq
                )
            else:
                events = follow_all(sub, None)
            last: JSONObject | None = None
            try:
                async with aclosing(events):
                    async for batch in events:
                        for item in batch or ():
                            last = item.event
                            yield item.encoded(_event_message)
            except Exception as exc:  # the store, reading back what a slow reader missed
                await _refuse(context, exc)
            ended = last is not None and final_event(last)
            if flt.execution_id is not None and (ended or not sub.closed):
                return  # OK: the run has ended (now, or before a reconnect past its end)
            # The hub closed: the server is stopping. An OK end would tell a one-run watcher
            # that the run is over; UNAVAILABLE tells every watcher to come back.
            resume = ""
            if flt.execution_id is not None:
                seq = last.get("seq") if last is not None else request.after_seq
                resume = f" with after_seq={seq}"
            await _refuse(
                context, Unavailable(f"the orchestrator is stopping: watch again{resume}")
            )

    async def ExecuteSubWorkflow(
        self, request: pb.ExecuteSubWorkflowRequest, context: Context
    ) -> pb.ExecuteSubWorkflowResponse:
        try:
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
                    # none given: the node's own range (of a node), else the latest
                    version=request.version,
                    inputs=_inputs_arg(request.inputs_json),
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
            _required("execution_id", request.execution_id)
            return await self._execution_reply(request.execution_id, _sub_workflow_status)
        except Exception as exc:
            await _refuse(context, exc)

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
            if not 0 <= request.limit <= 10_000:
                raise HttpError(
                    400, "bad_request", "limit must be between 1 and 10000", {"field": "limit"}
                )
            found, next_after = self._trigger_set().page(
                request.workflow_id or None, request.limit or 1000, request.after or None
            )
        except Exception as exc:
            await _refuse(context, exc)
        reply = pb.ListTriggersResponse(
            triggers=[_trigger_message(t) for t in found], next_after=next_after or ""
        )
        # a trigger's inputs may be a mebibyte: a few of them would pass what a client takes
        return _fitted(
            reply, [(t, "inputs_json", f"/api/v1/triggers/{t.id}") for t in reply.triggers]
        )

    async def GetTrigger(self, request: pb.TriggerRequest, context: Context) -> pb.TriggerInfo:
        try:
            _required("trigger_id", request.trigger_id)
            doc = self._trigger_set().get(request.trigger_id)
        except Exception as exc:
            await _refuse(context, exc)
        return _trigger_message(doc)

    async def CreateTrigger(
        self, request: pb.CreateTriggerRequest, context: Context
    ) -> pb.TriggerInfo:
        try:
            body: JSONObject = {
                "workflow_id": request.workflow_id,
                "cron": request.cron,
                "inputs": _inputs_arg(request.inputs_json),
                "paused": request.paused,
            }
            for name in ("id", "version", "timezone", "overlap", "catchup"):
                value = getattr(request, name)
                if value:
                    body[name] = value
            doc = await self._trigger_set().create(body)
        except TriggerConflict as exc:
            # the one conflict a creation meets is its id taken: ALREADY_EXISTS, as HTTP's
            # 409 for a taken name maps everywhere else (a spec trigger's refusals keep
            # FAILED_PRECONDITION)
            await _refuse(context, exc, grpc.StatusCode.ALREADY_EXISTS)
        except InvalidTrigger as exc:
            await _refuse(context, _named_as_sent(exc))
        except Exception as exc:
            await _refuse(context, exc)
        return _trigger_message(doc)

    async def PauseTrigger(self, request: pb.TriggerRequest, context: Context) -> pb.TriggerInfo:
        try:
            _required("trigger_id", request.trigger_id)
            doc = await self._trigger_set().pause(request.trigger_id)
        except Exception as exc:
            await _refuse(context, exc)
        return _trigger_message(doc)

    async def ResumeTrigger(self, request: pb.TriggerRequest, context: Context) -> pb.TriggerInfo:
        try:
            _required("trigger_id", request.trigger_id)
            doc = await self._trigger_set().resume(request.trigger_id)
        except Exception as exc:
            await _refuse(context, exc)
        return _trigger_message(doc)

    async def DeleteTrigger(
        self, request: pb.TriggerRequest, context: Context
    ) -> pb.DeleteTriggerResponse:
        try:
            _required("trigger_id", request.trigger_id)
            await self._trigger_set().delete(request.trigger_id)
        except Exception as exc:
            await _refuse(context, exc)
        return pb.DeleteTriggerResponse(trigger_id=request.trigger_id)


def _named_as_sent(exc: InvalidTrigger) -> InvalidTrigger:
    """A refusal of a trigger's ``inputs`` (HTTP's word) as one of ``inputs_json``, the field
    a gRPC caller sent and its library shows the violation against."""
    field = exc.details.get("field")
    if not isinstance(field, str) or not (field == "inputs" or field.startswith("inputs.")):
        return exc
    named = "inputs_json" + field.removeprefix("inputs")
    message = exc.message.replace(field, named, 1)
    return InvalidTrigger(message, {**exc.details, "field": named})


_CHANGES_STATE: Final = frozenset(
    {
        "RegisterWorkflow",
        "CancelExecution",
        "ExecuteSubWorkflow",
        "CreateTrigger",
        "PauseTrigger",
        "ResumeTrigger",
        "DeleteTrigger",
    }
)
"""Methods that write and then act on what they wrote, run to their end whatever the caller
does. ``ExecuteWorkflow`` stores and queues its run uncancelled inside the orchestrator (for
HTTP too), so that its wait, up to 300 s, ends with the caller; reads end with theirs."""

_LEFT_BEHIND: set[asyncio.Future[object]] = set()
"""Calls whose caller went away, kept referenced until they end (the loop holds tasks weakly)."""


def _finished_behind(call: asyncio.Future[object]) -> None:
    _LEFT_BEHIND.discard(call)
    if not call.cancelled() and call.exception() is not None:
        # its refusal had no one to go to (aborting a call that is over raises too)
        log.debug("a call whose caller left ended with %r", call.exception())


async def calls_left_behind(timeout: float) -> None:
    """Let the calls whose callers left end (up to ``timeout``), before the store closes."""
    if _LEFT_BEHIND:
        await asyncio.wait(list(_LEFT_BEHIND), timeout=timeout)


def _behind_token(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` of the service, called only once ``_authorize`` lets the call through: before
    it reads anything, and before a watch takes one of the hub's places among live streams.
    grpc.aio tells a streaming method by its being an async generator function, so the
    wrapper of one is one too."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def streaming(
            self: OrchestratorService, request: object, context: Context
        ) -> AsyncIterator[object]:
            try:
                self._authorize(context)
            except Exception as exc:
                await _refuse(context, exc)
            async with aclosing(method(self, request, context)) as answers:
                async for answer in answers:
                    yield answer

        return streaming

    changes_state = method.__name__ in _CHANGES_STATE

    @functools.wraps(method)
    async def unary(self: OrchestratorService, request: object, context: Context) -> object:
        try:
            self._authorize(context)
        except Exception as exc:
            await _refuse(context, exc)
        if not changes_state:
            return await method(self, request, context)
        # grpc.aio cancels a handler whose caller's deadline passes or who hangs up, at any
        # await: between a store write and the step after it, that left a version stored but
        # unknown, a trigger half made. What a call has begun ends here whatever the caller
        # does; only its answer is dropped.
        call = asyncio.ensure_future(method(self, request, context))
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            _LEFT_BEHIND.add(call)
            call.add_done_callback(_finished_behind)
            raise

    return unary


# The one place the token is checked: every method the service declares, so a method added to
# the proto is guarded without a word here.
for _method in pb.DESCRIPTOR.services_by_name["Orchestrator"].methods:
    setattr(
        OrchestratorService,
        _method.name,
        _behind_token(getattr(OrchestratorService, _method.name)),
    )
del _method


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
