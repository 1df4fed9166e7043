"""What travels on the wire: protobuf messages to and from the engine's own objects.

Requests are made sense of here, all at once, before anything runs: every malformed field is
reported together (``BadRequest``), as the spec parser does for specs. JSON payloads are JSON
text on the wire (see ``proto/engine/api/dagengine.proto``). ``grpc_status`` is the one mapping
from engine errors to gRPC statuses; refused specs, inputs and fields travel as
``google.rpc.BadRequest`` field violations in the status details.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar, cast

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from engine.api import dagengine_pb2 as pb
from engine.core.errors import EngineError, InputsError, SpecError
from engine.core.events import Event, isoformat
from engine.core.jsontext import MAX_JSON_DEPTH as MAX_JSON_DEPTH
from engine.core.jsontext import DuplicateKey as DuplicateKey
from engine.core.jsontext import RefusedJson as RefusedJson
from engine.core.jsontext import dumps as dumps
from engine.core.jsontext import loads as loads
from engine.core.jsontext import loads_sent as loads_sent
from engine.core.scheduler import ItemsDone, WaitKey
from engine.core.spec import MAX_VERSION_LENGTH, SEMVER, WorkflowSpec
from engine.core.states import EXECUTION_STATUSES, RESUMED_ENDS
from engine.core.values import JSON, JSONObject
from engine.errors import (
    AtCapacity,
    BadRequest,
    ExecutionExists,
    FieldProblem,
    MessageTooLarge,
    NothingWaiting,
    ShuttingDown,
    UnknownExecution,
)

_EXECUTION_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


# -- JSON text (engine.core.jsontext: one set of rules for every path) ---------------------------


def _json_field(text: str, field: str, problems: list[FieldProblem], empty: JSON) -> JSON:
    if not text.strip():
        return empty
    try:
        return loads(text)
    except json.JSONDecodeError as exc:
        problems.append(
            FieldProblem(
                field, f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            )
        )
    except ValueError as exc:
        problems.append(FieldProblem(field, f"not valid JSON: {exc}"))
    except RecursionError:
        problems.append(FieldProblem(field, "not valid JSON: nested too deeply"))
    return None


# -- requests -----------------------------------------------------------------------------------


MAX_SEQ: Final = 2**53
"""The highest event seq: exact in every client's JSON (a JavaScript number), and far beyond
what any run reaches."""
MAX_FIRST_SEQ: Final = 2**52
"""The highest ``first_seq`` an engine takes: the run's events count on from it, and must stay
within ``MAX_SEQ`` however many there are."""
MAX_FAILED: Final = 2**31 - 2
"""The most failed attempts a resumed node may bring (``RetriedNode.failed``): its next attempt
must fit ``Event.attempt``, an int32."""


@dataclass(frozen=True, slots=True)
class RunOrder:
    """An ``ExecuteRequest`` made sense of: what to run, with what, and where it resumes from."""

    execution_id: str
    spec: WorkflowSpec
    inputs: JSON
    completed: dict[str, JSON]
    """Outputs of the nodes that succeeded before."""
    completed_attempts: dict[str, int]
    """Attempts of every node that ended before, whichever way."""
    ended: dict[str, tuple[str, str | None]]
    """Nodes that ended before otherwise than succeeding: node id -> (status, error)."""
    retried: dict[tuple[str, int | None], int]
    """(node id, foreach item or None) -> attempts that failed before the run came here."""
    parent_execution_id: str | None
    first_seq: int
    sleeping: dict[WaitKey, float]
    """Waits under way before the run came here -> their first start, unix seconds: sleep nodes
    (``sleeping``) by node id, and sub-workflow attempts waiting on their child (``waiting``)
    by (node id, foreach item or None, attempt). One map, as ``Run(sleeping=...)`` takes it."""
    started_at: float | None
    """When the run first started (unix seconds), if it did before it came here."""
    items_done: dict[str, ItemsDone] = field(default_factory=dict)
    """Foreach nodes that had not ended -> the items they had done (``completed_items``),
    which do not run again."""
    carried_bytes: int = 0
    """What the request carries besides what the run makes from here: its spec, its inputs
    and ``completed``'s outputs (items' included, with their list's commas and brackets), as
    they came (the run's share of a resume message)."""


def run_order(
    request: pb.ExecuteRequest,
    parse_spec: Callable[[str], WorkflowSpec],
    check_inputs: Callable[[WorkflowSpec, JSON], None],
) -> RunOrder:
    """What to run, or SpecError for a bad spec, then BadRequest naming every bad field, then
    InputsError when the inputs fail the spec's inputs_schema. The spec parser and the inputs
    check come in as arguments: they need libraries (Lua, JSON Schema) this module does not."""
    problems: list[FieldProblem] = []
    execution_id = request.execution_id or uuid.uuid4().hex
    if not _EXECUTION_ID.fullmatch(execution_id):
        problems.append(FieldProblem("execution_id", _not_an_id(execution_id)))
    inputs = _json_field(request.inputs_json, "inputs_json", problems, empty={})
    if not 0 <= request.first_seq <= MAX_SEQ:
        problems.append(FieldProblem("first_seq", f"must be 0 to 2^53, got {request.first_seq}"))
    elif request.first_seq > MAX_FIRST_SEQ:
        problems.append(
            FieldProblem(
                "first_seq",
                f"must be at most 2^52, so the run's events stay within 2^53; "
                f"got {request.first_seq}",
            )
        )
    parent_execution_id = request.parent_execution_id or None
    if parent_execution_id is not None and not _EXECUTION_ID.fullmatch(parent_execution_id):
        problems.append(FieldProblem("parent_execution_id", _not_an_id(parent_execution_id)))
    completed: dict[str, JSON] = {}
    # a resume message carries these as well: counted from the start, a fresh run and a
    # resumed one are held to the same bound (a large inputs_json leaves less for outputs)
    carried_bytes = len(request.spec) + len(request.inputs_json)
    ended: dict[str, tuple[str, str | None]] = {}
    attempts: dict[str, int] = {}
    for i, node in enumerate(request.completed):
        where = f"completed[{node.node_id or i}]"
        if not node.node_id:
            problems.append(FieldProblem(where + ".node_id", "required"))
            continue
        if node.node_id in attempts:
            problems.append(FieldProblem(where, "the node is listed twice"))
            continue
        if node.attempts < 0:
            problems.append(
                FieldProblem(where + ".attempts", f"must be 0 or more, got {node.attempts}")
            )
        status = node.status or "succeeded"
        # a success took one attempt at least; a blocked or skipped node took none
        attempts[node.node_id] = max(node.attempts, 1 if status == "succeeded" else 0)
        if status == "succeeded":
            carried_bytes += len(node.output_json)
            completed[node.node_id] = _json_field(
                node.output_json, where + ".output_json", problems, empty=None
            )
        elif status in RESUMED_ENDS:
            if node.output_json:
                problems.append(
                    FieldProblem(where + ".output_json", f"a {status} node has no output")
                )
            ended[node.node_id] = (status, node.error or None)
        else:
            problems.append(
                FieldProblem(
                    where + ".status",
                    f"must be one of succeeded, {', '.join(sorted(RESUMED_ENDS))}; got "
                    f"{bounded(status, 80)!r}",
                )
            )
    sleeping: dict[str, float] = {}
    for i, sleep in enumerate(request.sleeping):
        where = f"sleeping[{sleep.node_id or i}]"
        if not sleep.node_id:
            problems.append(FieldProblem(where + ".node_id", "required"))
        elif sleep.node_id in sleeping:
            problems.append(FieldProblem(where, "the node is listed twice"))
        elif sleep.node_id in attempts:
            problems.append(FieldProblem(where, "the node is listed as completed too"))
        elif not _a_time(sleep.started_at):
            problems.append(
                FieldProblem(
                    where + ".started_at", f"must be unix seconds, got {sleep.started_at!r}"
                )
            )
        else:
            sleeping[sleep.node_id] = sleep.started_at
    retried: dict[tuple[str, int | None], int] = {}
    for i, again in enumerate(request.retried):
        item = again.item if again.HasField("item") else None
        where = f"retried[{again.node_id or i}{'' if item is None else f'/{item}'}]"
        if not again.node_id:
            problems.append(FieldProblem(where + ".node_id", "required"))
        elif (again.node_id, item) in retried:
            problems.append(FieldProblem(where, "listed twice"))
        elif again.node_id in attempts:
            problems.append(FieldProblem(where, "the node is listed as completed too"))
        elif again.failed < 1 or (item is not None and item < 0):
            got = f"failed {again.failed}" + ("" if item is None else f", item {item}")
            problems.append(
                FieldProblem(where, f"failed must be 1 or more and item 0 or more, got {got}")
            )
        elif again.failed > MAX_FAILED:
            problems.append(
                FieldProblem(
                    where + ".failed",
                    f"must be at most 2^31 - 2, so the next attempt fits an event's attempt "
                    f"number; got {again.failed}",
                )
            )
        else:
            retried[again.node_id, item] = again.failed
    waiting: dict[tuple[str, int | None], tuple[int, float]] = {}
    for i, wait in enumerate(request.waiting):
        item = wait.item if wait.HasField("item") else None
        where = f"waiting[{wait.node_id or i}{'' if item is None else f'/{item}'}]"
        attempt = wait.attempt or 1
        failed = retried.get((wait.node_id, item), 0)
        if not wait.node_id:
            problems.append(FieldProblem(where + ".node_id", "required"))
        elif (wait.node_id, item) in waiting:
            problems.append(FieldProblem(where, "listed twice"))
        elif wait.node_id in attempts:
            problems.append(FieldProblem(where, "the node is listed as completed too"))
        elif item is not None and item < 0:
            problems.append(FieldProblem(where + ".item", f"must be 0 or more, got {item}"))
        elif attempt != failed + 1:
            # the attempt that waited is the one after those that failed: any other has ended
            problems.append(
                FieldProblem(
                    where + ".attempt",
                    f"must be {failed + 1}, the attempt after the {failed} failed (retried); "
                    f"got {wait.attempt}",
                )
            )
        elif not _a_time(wait.started_at):
            problems.append(
                FieldProblem(
                    where + ".started_at", f"must be unix seconds, got {wait.started_at!r}"
                )
            )
        else:
            waiting[wait.node_id, item] = (attempt, wait.started_at)
    items_done = _completed_items(request, attempts, waiting, problems)
    for done in items_done.values():
        # as the node's list will carry them: each output and its comma, and the brackets
        carried_bytes += done.size + len(done.outputs) + 1
    if request.started_at and not _a_time(request.started_at):
        problems.append(
            FieldProblem("started_at", f"must be unix seconds or 0, got {request.started_at!r}")
        )
    if not request.spec.strip():
        raise BadRequest([FieldProblem("spec", "required: the workflow spec as JSON or YAML")])
    spec = parse_spec(request.spec)  # SpecError before field problems: the spec matters most
    for node_id in attempts:
        if node_id not in spec.by_id:
            problems.append(FieldProblem(f"completed[{node_id}]", f"no such node in {spec.ref}"))
    for node_id in sorted({node_id for node_id, _ in retried}):
        if node_id not in spec.by_id:
            problems.append(FieldProblem(f"retried[{node_id}]", f"no such node in {spec.ref}"))
    for (node_id, item), failed in retried.items():
        found = spec.by_id.get(node_id)
        if found is not None and failed >= found.retry.max_attempts:
            # its last attempt failed, so the node ended: a run that resumes after that brings
            # it as completed, status failed (orchestrator.timeline.resume_point)
            problems.append(
                FieldProblem(
                    f"retried[{node_id}{'' if item is None else f'/{item}'}].failed",
                    f"must be below the node's retry.max_attempts ({found.retry.max_attempts}): "
                    f"a node with no attempt left has ended, and is sent as completed with "
                    f"status failed; got {failed}",
                )
            )
    for node_id in items_done:
        found = spec.by_id.get(node_id)
        if found is None:
            problems.append(
                FieldProblem(f"completed_items[{node_id}]", f"no such node in {spec.ref}")
            )
        elif found.foreach is None:
            problems.append(
                FieldProblem(f"completed_items[{node_id}]", f"a {found.kind} node without foreach")
            )
    for node_id in sleeping:
        found = spec.by_id.get(node_id)
        if found is None:
            problems.append(FieldProblem(f"sleeping[{node_id}]", f"no such node in {spec.ref}"))
        elif found.kind != "sleep":
            problems.append(
                FieldProblem(f"sleeping[{node_id}]", f"a {found.kind} node, not a sleep node")
            )
    for node_id, item in waiting:
        where = f"waiting[{node_id}{'' if item is None else f'/{item}'}]"
        found = spec.by_id.get(node_id)
        if found is None:
            problems.append(FieldProblem(where, f"no such node in {spec.ref}"))
        elif found.kind != "workflow":
            problems.append(FieldProblem(where, f"a {found.kind} node, not a sub-workflow node"))
        elif (item is None) != (found.foreach is None):
            problems.append(
                FieldProblem(
                    where + ".item",
                    "required: the node runs per foreach item"
                    if item is None
                    else "the node has no foreach",
                )
            )
    if problems:
        raise BadRequest(problems)
    check_inputs(spec, inputs)
    waits: dict[WaitKey, float] = {node_id: since for node_id, since in sleeping.items()}
    for (node_id, item), (attempt, since) in waiting.items():
        waits[node_id, item, attempt] = since
    return RunOrder(
        execution_id=execution_id,
        spec=spec,
        inputs=inputs,
        completed=completed,
        completed_attempts=attempts,
        ended=ended,
        retried=retried,
        parent_execution_id=parent_execution_id,
        first_seq=request.first_seq or 1,
        sleeping=waits,
        started_at=request.started_at or None,
        items_done=items_done,
        carried_bytes=carried_bytes,
    )


def _completed_items(
    request: pb.ExecuteRequest,
    attempts: dict[str, int],
    waiting: dict[tuple[str, int | None], tuple[int, float]],
    problems: list[FieldProblem],
) -> dict[str, ItemsDone]:
    """``completed_items`` by node, each item once, within its node's number of items; what is
    wrong with them in ``problems``."""
    done: dict[str, ItemsDone] = {}
    for i, carried in enumerate(request.completed_items):
        node_id, item = carried.node_id, carried.item
        where = f"completed_items[{node_id or i}/{item}]"
        if not node_id:
            problems.append(FieldProblem(where + ".node_id", "required"))
            continue
        if node_id in attempts:
            problems.append(FieldProblem(where, "the node is listed as completed too"))
            continue
        if carried.items < 1:
            problems.append(
                FieldProblem(where + ".items", f"must be 1 or more, got {carried.items}")
            )
            continue
        if not 0 <= item < carried.items:
            problems.append(
                FieldProblem(
                    where + ".item",
                    f"must be 0 or more and below the node's {carried.items} items, got {item}",
                )
            )
            continue
        if (node_id, item) in waiting:
            problems.append(FieldProblem(where, "the item is listed as waiting too"))
            continue
        node = done.get(node_id)
        if node is None:
            node = done[node_id] = ItemsDone(carried.items, {})
        elif node.items != carried.items:
            problems.append(
                FieldProblem(
                    where + ".items",
                    f"must be the same for every item of the node: {node.items} before, "
                    f"{carried.items} here",
                )
            )
            continue
        if item in node.outputs:
            problems.append(FieldProblem(where, "listed twice"))
            continue
        text = carried.output_json
        node.outputs[item] = _json_field(text, where + ".output_json", problems, empty=None)
        node.size += len(text) if text.strip() else 4  # as null travels
    return done


def _not_an_id(text: str) -> str:
    return f"{text[:80]!r} is not an id: use up to 128 letters, digits and . _ : -"


def _not_a_status(text: str) -> str:
    return f"{bounded(text, 80)!r} is not an execution status: use one of " + ", ".join(
        EXECUTION_STATUSES
    )


def _a_time(seconds: float) -> bool:
    """Unix seconds after 1970 that a float can do arithmetic with (not NaN or infinite)."""
    return math.isfinite(seconds) and seconds > 0


@dataclass(frozen=True, slots=True)
class SubWorkflowAnswer:
    execution_id: str
    node_id: str
    item: int | None
    attempt: int
    output: JSON
    error: str | None
    child_execution_id: str = ""
    child_status: str = ""
    child_version: str = ""
    final: bool = True
    """False: the call only announces the child (subworkflow.started); the node waits on."""
    size: int = 0
    """Characters of ``output_json``: a foreach item's share of its node's output."""


def sub_workflow_answer(request: pb.ResolveSubWorkflowRequest) -> SubWorkflowAnswer:
    problems: list[FieldProblem] = []
    if not request.execution_id:
        problems.append(FieldProblem("execution_id", "required"))
    elif request.child_execution_id == request.execution_id:
        problems.append(FieldProblem("child_execution_id", "is the run itself"))
    if not request.node_id:
        problems.append(FieldProblem("node_id", "required"))
    if request.attempt < 1:
        problems.append(FieldProblem("attempt", f"must be 1 or more, got {request.attempt}"))
    # these three go into the run's events as they are
    if request.child_execution_id and not _EXECUTION_ID.fullmatch(request.child_execution_id):
        problems.append(FieldProblem("child_execution_id", _not_an_id(request.child_execution_id)))
    if request.child_status and request.child_status not in EXECUTION_STATUSES:
        problems.append(FieldProblem("child_status", _not_a_status(request.child_status)))
    if request.child_version and not (
        len(request.child_version) <= MAX_VERSION_LENGTH and SEMVER.fullmatch(request.child_version)
    ):
        problems.append(
            FieldProblem(
                "child_version",
                f"{bounded(request.child_version, 80)!r} is not a SemVer version",
            )
        )
    output: JSON = None
    error: str | None = None
    final = True
    match request.WhichOneof("result"):
        case "output_json":
            output = _json_field(request.output_json, "output_json", problems, empty=None)
            if request.child_status in EXECUTION_STATUSES and request.child_status != "succeeded":
                # an output is a succeeded child's: the node would succeed on a failed one
                problems.append(
                    FieldProblem(
                        "child_status",
                        f"{request.child_status!r} with output_json: an output comes with "
                        "'succeeded'; a child that did not succeed is answered with error",
                    )
                )
        case "error":
            # it becomes the node's error, held to what a script's error may be
            error = bounded(request.error, ERROR_CHARACTERS) or "the sub-workflow failed"
        case _ if request.child_execution_id:
            final = False
        case _:
            problems.append(
                FieldProblem("result", "set output_json or error, or announce child_execution_id")
            )
    if problems:
        raise BadRequest(problems)
    return SubWorkflowAnswer(
        request.execution_id,
        request.node_id,
        request.item if request.HasField("item") else None,
        request.attempt,
        output,
        error,
        request.child_execution_id,
        request.child_status,
        request.child_version,
        final,
        len(request.output_json),
    )


@dataclass(frozen=True, slots=True)
class Listing:
    """A ``ListExecutionsRequest`` made sense of: which runs in flight to list."""

    workflow_id: str | None
    status: str | None
    limit: int
    """0: every one."""


ERROR_CHARACTERS: Final = 16 * 1024
"""A sub-workflow's error as its parent node keeps it: as much as a script's (``LuaLimits``)."""


def listing(request: pb.ListExecutionsRequest) -> Listing:
    """The filter of an engine's listing, or BadRequest naming each bad field, as the
    orchestrator refuses them (an unknown status would list nothing, and say nothing)."""
    problems: list[FieldProblem] = []
    if request.status and request.status not in EXECUTION_STATUSES:
        problems.append(FieldProblem("status", _not_a_status(request.status)))
    if request.limit < 0:
        problems.append(FieldProblem("limit", f"must be 0 (all) or more, got {request.limit}"))
    if request.before:
        # an engine lists only the runs it holds now: there is nothing to page through, and
        # ignoring it would answer a second page with the first
        problems.append(FieldProblem("before", "an engine's listing has no pages: leave it empty"))
    if problems:
        raise BadRequest(problems)
    return Listing(request.workflow_id or None, request.status or None, request.limit)


# -- events and executions ----------------------------------------------------------------------


def event_message(event: Event) -> pb.Event:
    return pb.Event(
        seq=event.seq,
        time=isoformat(event.time),
        type=event.type,
        severity=event.severity,
        workflow_id=event.workflow_id,
        version=event.version,
        execution_id=event.execution_id,
        node_id=event.node_id,
        engine_id=event.engine_id,
        attempt=event.attempt,
        # most nodes' node.started carries {}
        data_json="{}" if event.data == {} else dumps(event.data),
    )


def event_batches(
    events: Iterable[Event], max_bytes: int = 1 << 20
) -> Iterator[pb.ExecuteResponse]:
    """Events as stream messages of up to ``max_bytes`` (an event larger than that goes alone)."""
    chunk: list[pb.Event] = []
    size = 0
    for event in events:
        message = event_message(event)
        n = message.ByteSize()
        if chunk and size + n > max_bytes:
            yield pb.ExecuteResponse(events=chunk)
            chunk, size = [], 0
        chunk.append(message)
        size += n
    if chunk:
        yield pb.ExecuteResponse(events=chunk)


def event_message_from_dict(event: JSONObject) -> pb.Event:
    """An event as JSON (``event_dict``'s shape) back into its message, for re-streaming."""

    def opt_str(key: str) -> str | None:
        value = event.get(key)
        return value if isinstance(value, str) else None

    attempt = event.get("attempt")
    seq = event.get("seq")
    return pb.Event(
        seq=seq if isinstance(seq, int) else 0,
        time=opt_str("time") or "",
        type=opt_str("type") or "",
        severity=opt_str("severity") or "info",
        workflow_id=opt_str("workflow_id") or "",
        version=opt_str("version") or "",
        execution_id=opt_str("execution_id") or "",
        node_id=opt_str("node_id"),
        engine_id=opt_str("engine_id"),
        attempt=attempt if isinstance(attempt, int) else None,
        data_json=dumps(event.get("data") or {}),
    )


def event_dict(message: pb.Event) -> JSONObject:
    """The event as JSON (the shape of ``Event.to_dict``), for clients of the stream."""
    data = loads(message.data_json) if message.data_json else {}
    return {
        "seq": message.seq,
        "time": message.time,
        "type": message.type,
        "severity": message.severity,
        "workflow_id": message.workflow_id,
        "version": message.version,
        "execution_id": message.execution_id,
        "node_id": message.node_id if message.HasField("node_id") else None,
        "engine_id": message.engine_id if message.HasField("engine_id") else None,
        "attempt": message.attempt if message.HasField("attempt") else None,
        "data": data,
    }


def _text(value: JSON) -> str | None:
    return value if isinstance(value, str) else None


def execution_message(document: JSONObject, *, with_nodes: bool = True) -> pb.Execution:
    """An execution document (``engine.core.execution``) as its message."""
    message = pb.Execution(
        id=str(document["id"]),
        workflow_id=str(document["workflow_id"]),
        version=str(document["version"]),
        status=str(document["status"]),
        inputs_json=dumps(document["inputs"]),
        outputs_json=dumps(document["outputs"]),
        error=_text(document["error"]),
        progress=int(document["progress"] or 0),  # type: ignore[arg-type]
        created_at=_text(document["created_at"]),
        started_at=_text(document["started_at"]),
        finished_at=_text(document["finished_at"]),
        parent_execution_id=_text(document["parent_execution_id"]),
        parent_node_id=_text(document.get("parent_node_id")),
    )
    children = document.get("children")
    if isinstance(children, list):
        message.children.extend(str(c) for c in children)
    nodes = document.get("nodes")
    if with_nodes and isinstance(nodes, dict):
        for node_id, node in nodes.items():
            assert isinstance(node, dict)
            message.nodes.append(
                pb.NodeState(
                    node_id=node_id,
                    status=str(node["status"]),
                    output_json=dumps(node["output"]),
                    error=_text(node["error"]),
                    attempts=int(node["attempts"] or 0),  # type: ignore[arg-type]
                    started_at=_text(node["started_at"]),
                    finished_at=_text(node["finished_at"]),
                    engine_id=_text(node["engine_id"]),
                    reused_from=_text(node.get("reused_from")),
                    items_done=_count(node.get("items_done")),
                    items_total=_count(node.get("items_total")),
                )
            )
    return message


def _count(value: JSON) -> int | None:
    """A count of a node record, or None (unset) for a record without one."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# -- errors -------------------------------------------------------------------------------------


def _violations(error: EngineError) -> list[FieldProblem]:
    if isinstance(error, SpecError):
        return [
            FieldProblem(f"spec.{p.path}" if p.path else "spec", p.render(error.source))
            for p in error.problems
        ]
    if isinstance(error, InputsError):
        return [FieldProblem("inputs_json", problem) for problem in error.problems]
    if isinstance(error, BadRequest):
        return error.problems
    return []


_CODES: Final[list[tuple[type[EngineError], grpc.StatusCode]]] = [
    (SpecError, grpc.StatusCode.INVALID_ARGUMENT),
    (InputsError, grpc.StatusCode.INVALID_ARGUMENT),
    (BadRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (AtCapacity, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (MessageTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ShuttingDown, grpc.StatusCode.UNAVAILABLE),
    (ExecutionExists, grpc.StatusCode.ALREADY_EXISTS),
    (UnknownExecution, grpc.StatusCode.NOT_FOUND),
    (NothingWaiting, grpc.StatusCode.FAILED_PRECONDITION),
]


MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
"""Largest gRPC message between orchestrator and engines, both ways: a resumed run carries the
outputs of its completed nodes, and a foreach node's event all its items' outputs, so gRPC's
default 4 MiB is too small. One past this fails its run, saying so (orchestrator.dispatching)."""

STATUS_MESSAGE_MAX: Final = 1000
STATUS_DETAILS_MAX: Final = 3000
"""Characters of a status's message and of its field violations together. A status travels in
trailing metadata, the message twice (grpc-message and the details), and peers refuse metadata
past 8 KiB or so: a request that echoes a huge id or names 500 problems must still get its
answer, not a transport error."""


def bounded(text: str, limit: int = STATUS_MESSAGE_MAX) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def grpc_status(error: BaseException) -> grpc.Status:
    """The status a failed call ends with: code, message, and field violations in the details."""
    code = grpc.StatusCode.INTERNAL
    message = f"internal engine error: {type(error).__name__}: {error}"
    details: list[any_pb2.Any] = []
    if isinstance(error, EngineError):
        code = next((c for kind, c in _CODES if isinstance(error, kind)), code)
        if code is not grpc.StatusCode.INTERNAL:
            message = str(error)
        violations = _violations(error)
        if violations:
            kept: list[error_details_pb2.BadRequest.FieldViolation] = []
            room = STATUS_DETAILS_MAX
            for v in violations:
                described = bounded(v.message)
                room -= len(v.field) + len(described)
                if room < 0:
                    kept.append(
                        error_details_pb2.BadRequest.FieldViolation(
                            description=f"and {len(violations) - len(kept)} more problems"
                        )
                    )
                    break
                kept.append(
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=described
                    )
                )
            packed = any_pb2.Any()
            packed.Pack(error_details_pb2.BadRequest(field_violations=kept))
            details.append(packed)
    if isinstance(error, ShuttingDown):
        # said in a way a caller can tell from a dead engine's UNAVAILABLE (is_shutting_down)
        packed = any_pb2.Any()
        packed.Pack(error_details_pb2.ErrorInfo(reason=SHUTTING_DOWN, domain=ENGINE_DOMAIN))
        details.append(packed)
    status = status_pb2.Status(code=code.value[0], message=bounded(message), details=details)
    converted: grpc.Status = rpc_status.to_status(status)
    return converted


ENGINE_DOMAIN: Final = "engine.dagengine"
SHUTTING_DOWN: Final = "SHUTTING_DOWN"
"""``ErrorInfo.reason`` of an engine's refusal while it drains, and of the streams it hands
back at the end of its drain: a planned leave, not a failure."""


def is_shutting_down(error: grpc.aio.AioRpcError) -> bool:
    """Whether a call failed because its engine is draining (``grpc_status`` of ShuttingDown)."""
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        for detail in status_pb2.Status.FromString(value).details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and (info.domain, info.reason) == (ENGINE_DOMAIN, SHUTTING_DOWN):
                return True
    return False


def field_violations(status: status_pb2.Status) -> list[tuple[str, str]]:
    """(field, description) of every violation in a status's BadRequest details; for clients."""
    out: list[tuple[str, str]] = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out.extend((v.field, v.description) for v in bad.field_violations)
    return out


# -- serving --------------------------------------------------------------------------------------


_Q = TypeVar("_Q")
_R = TypeVar("_R")


class DecodeRequests(grpc.aio.ServerInterceptor):
    """A request whose bytes are not its message gets INVALID_ARGUMENT naming the message,
    instead of grpcio's UNKNOWN and a traceback in the service's log: parsing moves from
    grpcio into the handler. Only this project's services (every one of their methods takes
    one request and answers with ``return`` or ``yield``) are wrapped. ``refusal`` makes the
    status from the problem's text, in the service's own form."""

    def __init__(self, refusal: Callable[[str], grpc.Status]) -> None:
        self._refusal = refusal

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Q, _R] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Q, _R] | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        decode = None if handler is None else handler.request_deserializer
        if handler is None or decode is None or not method.startswith(f"/{_PACKAGE}."):
            return handler
        # the stubs type the behaviours as grpc's sync ones; on an aio server they are a
        # coroutine function and an async generator function
        behaviour: Any = handler.unary_stream or handler.unary_unary
        refusal = self._refusal
        wrapped: Any
        if handler.unary_stream is not None:

            async def unary_stream(raw: bytes, context: Any) -> AsyncIterator[object]:
                async for answer in behaviour(
                    await _decoded(raw, decode, refusal, context), context
                ):
                    yield answer

            wrapped = grpc.unary_stream_rpc_method_handler(
                unary_stream, response_serializer=handler.response_serializer
            )
        elif handler.unary_unary is not None:

            async def unary_unary(raw: bytes, context: Any) -> object:
                return await behaviour(await _decoded(raw, decode, refusal, context), context)

            wrapped = grpc.unary_unary_rpc_method_handler(
                unary_unary, response_serializer=handler.response_serializer
            )
        else:
            return handler
        return cast("grpc.RpcMethodHandler[_Q, _R]", wrapped)


_PACKAGE: Final = pb.DESCRIPTOR.package


async def _decoded(
    raw: bytes,
    decode: Callable[[bytes], object],
    refusal: Callable[[str], grpc.Status],
    context: Any,
) -> object:
    try:
        return decode(raw)
    except DecodeError as error:
        await context.abort_with_status(refusal(f"the request is not a valid message: {error}"))
        raise  # abort_with_status raises; this line is for the type checker


def bad_request_status(message: str) -> grpc.Status:
    """The engine's refusal of a request that does not parse (``DecodeRequests``)."""
    return grpc_status(BadRequest([FieldProblem("request", message)]))


async def follow_health(
    health: health_aio.HealthServicer,
    service_name: str,
    trouble: Callable[[], Awaitable[str | None]],
    every: float,
    log: logging.Logger,
    extra: dict[str, object] | None = None,
) -> None:
    """Keep ``service_name`` SERVING while ``trouble()`` answers None, NOT_SERVING (the reason
    logged once) while it names a trouble; asked every ``every`` seconds until cancelled.
    The server's overall health ("", what a liveness probe asks) is left as it is: a service
    that is not ready is still alive."""
    status = health_pb2.HealthCheckResponse
    shown: str | None = None
    while True:
        await asyncio.sleep(every)
        now = await trouble()
        if (now is None) == (shown is None):
            continue
        if now is not None:
            log.warning("%s is NOT_SERVING: %s", service_name, now, extra=extra)
        else:
            log.info("%s is SERVING again: %s", service_name, shown, extra=extra)
        shown = now
        await health.set(service_name, status.SERVING if now is None else status.NOT_SERVING)


class _Health(health_aio.HealthServicer):
    """grpc.health.v1 with ``List``, which the library's servicer leaves out: reflection lists
    the method, and each call of it was an UNIMPLEMENTED answer and an error traceback in the
    log, open to anyone who reaches the port."""

    async def List(self, request: object, context: object) -> object:
        # the library's type stubs predate List and do not show the status map
        answer: Any = health_pb2.HealthListResponse  # type: ignore[attr-defined]
        statuses: dict[str, Any] = self._server_status  # type: ignore[attr-defined]
        return answer(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in statuses.items()
            }
        )


async def add_health_and_reflection(
    server: grpc.aio.Server, service_name: str
) -> health_aio.HealthServicer:
    """grpc.health.v1 (``service_name`` SERVING) and server reflection on ``server``; both
    services offer them, so clients and probes find every server the same way."""
    health = _Health()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    await health.set(service_name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [
            service_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    return health
