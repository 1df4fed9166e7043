"""The engine service: the runner behind gRPC (grpc.aio), with capacity, drain and resume.

``EngineService.Execute`` admits a run (not draining, a free slot, a well-formed request), starts
an ``Execution`` and streams its events as they happen; when the caller's stream goes away the
run is cancelled, because the orchestrator, which owns the durable record, re-dispatches it. A
run resumes from the completed-node outputs in its request, and its sleeps and timeout go on
from when they first started. Sub-workflow nodes ask for their
child on the run's own stream (``subworkflow.requested``) and wait for ``ResolveSubWorkflow``.

``serve`` runs the server until SIGTERM (or SIGINT), then drains: health turns NOT_SERVING, new
runs are refused with UNAVAILABLE, runs in flight get DRAIN_GRACE seconds to finish, and what
remains is handed back: its streams end with UNAVAILABLE, unfinished, as if the engine had died,
so the orchestrator resumes those runs elsewhere from their checkpoints (a rollout or a
scale-down loses nothing), and the process exits 0. A second signal cuts the grace short.

With TLS_CERT_FILE and TLS_KEY_FILE the port speaks TLS only (and with TLS_CA_FILE asks every
caller for a certificate that CA signed), the files read again when they change (``engine.tls``).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import gc
import hashlib
import logging
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, NoReturn

import grpc
from grpc_health.v1.health import aio as health_aio
from prometheus_client import start_http_server

from engine import installed_version, wire
from engine.api import dagengine_pb2 as pb
from engine.api import dagengine_pb2_grpc as pb_grpc
from engine.authenticating import RequireToken
from engine.core.envparse import any_address, bare_host, host_port
from engine.core.errors import SpecError
from engine.core.events import Event
from engine.core.spec import WorkflowSpec
from engine.core.values import JSONObject, nests_deeper
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
from engine.inputs import check_inputs
from engine.loading import spec_from_document, spec_from_text
from engine.lua import LuaPool
from engine.metrics import Metrics
from engine.running import Execution, SubWorkflowRequest
from engine.settings import (
    STOP_SIGNALS,
    Settings,
    SettingsError,
    listen_problem,
    take_held_stop_signal,
)
from engine.tls import ServerTls

log = logging.getLogger(__name__)

ENGINE_SERVICE: Final = pb.DESCRIPTOR.services_by_name["Engine"].full_name

_FLUSH_WAIT: Final = 10.0
"""Seconds the cancel events of a drained run get to reach its caller before the server stops."""
_STOP_GRACE: Final = 2.0
"""Seconds calls still open get when the server finally stops."""
_WEDGED_EVERY: Final = 1.0
"""Seconds between looks at whether every Lua worker is stuck (see ``LuaPool.wedged``)."""
_SETTLE: Final = 1.0
"""Seconds the calls gRPC ended at the server's stop get to finish their tasks, before the
process's event loop closes."""

# A caller whose host vanishes (no FIN, no RST) leaves its Execute streams open, and their runs
# held here: every dispatch of them again is refused ALREADY_EXISTS until the connection is seen
# dead, two hours later by gRPC's default. Pinging the caller sees it within half a minute.
KEEPALIVE_TIME_MS = 20_000
"""Milliseconds between the server's pings on a connection."""
KEEPALIVE_TIMEOUT_MS = 10_000
"""Milliseconds a ping waits for its answer before the connection, and its calls, are closed."""
MIN_CLIENT_PING_MS = 5_000
"""The shortest gap between a caller's pings that is taken without a strike (the orchestrator
pings every 10 s): below gRPC's default of 5 min, so a stream that sends nothing for minutes (a
run in a long sleep) is not cut with GOAWAY too_many_pings."""


def keepalive_options() -> list[tuple[str, int]]:
    """The server's keepalive and its policy for the callers' pings, read when it starts."""
    return [
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # gRPC waits this long for any ping's answer, the keepalive's included (a minute
        # unless set): keepalive_timeout alone does not shorten that wait
        ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # ping a connection without calls too, and let callers do the same
        ("grpc.keepalive_permit_without_calls", 1),
        # keep pinging a stream that sends nothing: by default gRPC stops after two pings
        # until data goes out, which leaves an idle run's dead caller unnoticed
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_MS),
    ]


@functools.lru_cache(maxsize=64)
def spec_from_request(text: str) -> WorkflowSpec:
    """A spec sent as JSON or YAML text; SpecError lists every problem, with its line.

    Cached by text: the orchestrator sends the same registered spec with every run of it, and
    validating it (YAML line map, Lua syntax of every node) costs about a millisecond even for
    three nodes, more than the run. A spec is immutable once parsed, so runs share it; refusals
    are exceptions and are not cached.
    """
    is_json = text.lstrip().startswith("{")
    if is_json and "\n" not in text.strip():
        # one line of JSON, as the orchestrator sends every stored spec: a problem's "line 1"
        # and a source name would only be noise in the error a run fails with
        try:
            doc = wire.loads_sent(text)
        except (ValueError, RecursionError):
            pass  # told with its place below
        else:
            if not nests_deeper(doc, wire.MAX_JSON_DEPTH):  # else told below, as for any text
                return spec_from_document(doc, None)
    return spec_from_text(text, None, json_only=is_json)


PARSE_OFF_LOOP: Final = 16 * 1024
"""Characters of spec text past which a spec not parsed yet is parsed on a thread: parsing
costs about half a microsecond a character (a second for 20,000 nodes, 14 s for 200,000), and
on the event loop it held up the health checks until the engine was declared lost, and its runs
moved, again and again. The parse holds the GIL, but the loop gets it back at every switch
interval (5 ms), enough to answer."""


class SpecCache:
    """Parsed specs by their text, the latest ``size`` of them (the orchestrator sends the same
    spec with every run of a version); unlike ``functools.lru_cache`` it says whether a text is
    parsed already, without parsing it. Thread-safe: a large spec is parsed on a thread.

    Refusals are kept too, the latest ``REFUSALS`` of them by the text's digest (a refused text
    may be as large as a message; its digest is 32 bytes): parsing is pure, so a text refused
    once is refused again with the same problems, and a client resending a bad large spec, or
    sending it with runs together that come in after its parse ended, had it parsed each time.
    """

    REFUSALS: Final = 32

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._specs: OrderedDict[str, WorkflowSpec] = OrderedDict()
        self._refused: OrderedDict[bytes, SpecError] = OrderedDict()
        self._lock = threading.Lock()
        # texts being parsed on a thread: runs of one new large spec sent together wait for
        # the one parse, where each parsed it again, all of them holding the GIL
        self._parsing: dict[str, asyncio.Future[WorkflowSpec]] = {}

    def get(self, text: str) -> WorkflowSpec | None:
        with self._lock:
            spec = self._specs.get(text)
            if spec is not None:
                self._specs.move_to_end(text)
            return spec

    def __call__(self, text: str) -> WorkflowSpec:
        """The spec for ``text``, parsed if it is not cached; SpecError as ``spec_from_request``."""
        spec = self.get(text)
        if spec is not None:
            return spec
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
        with self._lock:
            refused = self._refused.get(digest)
        if refused is not None:
            # a new exception each time: raising one object again grows its traceback
            raise SpecError(refused.problems, refused.source)
        try:
            spec = spec_from_request(text)
        except SpecError as error:
            with self._lock:
                self._refused[digest] = error
                while len(self._refused) > self.REFUSALS:
                    self._refused.popitem(last=False)
            raise
        with self._lock:
            self._specs[text] = spec
            while len(self._specs) > self._size:
                self._specs.popitem(last=False)
        return spec

    async def parse_off_loop(self, text: str) -> None:
        """Parses a large ``text`` not cached yet on a thread, so that the caller's next
        ``self(text)`` finds it; raises what parsing it raises."""
        if len(text) < PARSE_OFF_LOOP or self.get(text) is not None:
            return  # parsed, or refused again quickly from its digest
        parsing = self._parsing.get(text)
        if parsing is None:
            parsing = self._parsing[text] = asyncio.ensure_future(asyncio.to_thread(self, text))
            parsing.add_done_callback(functools.partial(self._parsed, text))
        await asyncio.shield(parsing)

    def _parsed(self, text: str, parsing: asyncio.Future[WorkflowSpec]) -> None:
        self._parsing.pop(text, None)
        if not parsing.cancelled():
            parsing.exception()  # told to whoever waits; retrieved even if none is left


def _serve_metrics(port: int, host: str, metrics: Metrics) -> Any:
    """Prometheus' server on ``port``: every interface means IPv6 and IPv4 (a ``::`` socket,
    which Linux makes dual-stack), as gRPC serves them, so a scraper on either family reaches
    it; IPv4 alone on a machine without IPv6."""
    if not any_address(host):
        server, _ = start_http_server(port, addr=bare_host(host), registry=metrics.registry)
        return server
    try:
        server, _ = start_http_server(port, addr="::", registry=metrics.registry)
    except OSError as error:
        if error.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
            raise
        server, _ = start_http_server(port, addr="0.0.0.0", registry=metrics.registry)
    return server


async def _refuse(context: grpc.aio.ServicerContext[Any, Any], error: BaseException) -> NoReturn:
    """End the call with the status for ``error``."""
    status = wire.grpc_status(error)
    if status.code is grpc.StatusCode.INTERNAL:
        log.error("internal error answering a call: %s", error, exc_info=error)
    await context.abort(status.code, status.details, status.trailing_metadata)


def _too_large(message: pb.ExecuteResponse) -> MessageTooLarge | None:
    """Why gRPC would refuse to send ``message``, if it would. Checked here, since gRPC refuses
    it with an ERROR line and a traceback in the log, for what is the run's doing, not ours."""
    size = message.ByteSize()
    if size <= wire.MAX_MESSAGE_BYTES:
        return None
    largest = max(message.events, key=lambda e: e.ByteSize())
    what = f"the {largest.type} event" + (
        f" of node {largest.node_id!r}" if largest.HasField("node_id") else ""
    )
    return MessageTooLarge(size, wire.MAX_MESSAGE_BYTES, f"{what} is too large to send")


def _seen(future: asyncio.Future[Any]) -> None:
    """Mark a failure as retrieved: the stream reports it, if its caller is still there."""
    if not future.cancelled():
        future.exception()


_GATHER_TURNS: Final = 3
"""Loop turns a stream waits at most, past its first event, for more to send with it."""


class _EventStream:
    """The events of one run on their way to its gRPC stream.

    The run publishes from scheduler callbacks, synchronously; the stream's coroutine takes what
    has piled up in one batch per wake-up, and sends it as one message, so a burst of events
    costs one wake-up and one message, not one each.
    """

    __slots__ = ("_buffer", "_closed", "_wakeup", "handed_back", "let_go")

    def __init__(self) -> None:
        self._buffer: list[Event] = []
        self._wakeup = asyncio.Event()
        self._closed = False
        self.handed_back = False
        """The run goes back to its caller unfinished: nothing more is sent."""
        self.let_go = False
        """Handed back, or its caller's stream ended: a cancel that follows is the engine
        letting go of the run, which the orchestrator resumes or ends, not a cancel asked for."""

    def push(self, event: Event) -> None:
        if self.handed_back:
            return
        self._buffer.append(event)
        self._wakeup.set()

    def close(self, _: object = None) -> None:
        self._closed = True
        self._wakeup.set()

    def hand_back(self) -> None:
        """End the stream here, with what was sent so far: the caller resumes the run elsewhere
        from it. What is buffered is dropped, as it would be if the engine died now."""
        self.handed_back = self.let_go = True
        self._buffer = []
        self.close()

    async def batches(self) -> AsyncIterator[list[Event]]:
        while True:
            await self._wakeup.wait()
            # a few loop turns more while each brings events: the run's next ones are often
            # queued already (a script run inline hands its outcome on with call_soon), and one
            # message carries them all for about the cost of one
            for _ in range(_GATHER_TURNS):
                self._wakeup.clear()
                await asyncio.sleep(0)
                if not self._wakeup.is_set():
                    break
            self._wakeup.clear()
            batch, self._buffer = self._buffer, []
            if batch:
                yield batch
            if self._closed and not self._buffer:
                return


class StreamedSubWorkflows:
    """Sub-workflow nodes of the runs on this engine, and which attempt of each is waiting.

    A node asks with a ``subworkflow.requested`` event on its run's stream; the orchestrator runs
    the child and answers with ``ResolveSubWorkflow``. An answer for an attempt that is no longer
    waiting (cancelled, timed out, answered already) is refused, so it can change nothing.

    Waits are kept by ``Execution``, not by execution id: a run dispatched again to this engine
    (its stream broke, the orchestrator sent it back) is admitted under the same id while its
    previous copy may still be stopping a script, and that copy's stop cancels its own waits
    when it lands, which must not be the new copy's.
    """

    def __init__(self) -> None:
        self._waiting: dict[Execution, dict[tuple[str, int | None], int]] = {}

    def start(self, execution: Execution, request: SubWorkflowRequest) -> None:
        waiting = self._waiting.setdefault(execution, {})
        waiting[(request.node_id, request.item)] = request.attempt
        data: JSONObject = {
            "workflow_id": request.ref.id,
            "version": request.ref.version,
            "inputs": request.inputs,
        }
        if request.item is not None:
            data["item"] = request.item
        execution.emit(
            "subworkflow.requested",
            "info",
            node_id=request.node_id,
            attempt=request.attempt,
            data=data,
        )

    def cancel(self, execution: Execution, node_id: str, item: int | None) -> None:
        waiting = self._waiting.get(execution)
        if waiting is not None:
            waiting.pop((node_id, item), None)
            if not waiting:
                # a copy already forgotten may still start and cancel a wait as it stops
                del self._waiting[execution]

    def resolve(self, execution: Execution, answer: wire.SubWorkflowAnswer) -> None:
        waiting = self._waiting.get(execution, {})
        key = (answer.node_id, answer.item)
        if waiting.get(key) != answer.attempt:
            raise NothingWaiting(execution.id, answer.node_id, answer.item, answer.attempt)
        ref = execution.run.node_spec(answer.node_id).workflow
        data: JSONObject = {
            "child_execution_id": answer.child_execution_id,
            "workflow_id": ref.id if ref is not None else None,
        }
        if answer.child_version:
            data["version"] = answer.child_version
        if answer.item is not None:
            data["item"] = answer.item
        if not answer.final:
            # the child runs (or ran) under the orchestrator: the node keeps waiting
            execution.emit(
                "subworkflow.started",
                "info",
                node_id=answer.node_id,
                attempt=answer.attempt,
                data=data,
            )
            return
        del waiting[key]
        if answer.child_execution_id:
            data["status"] = answer.child_status or ("failed" if answer.error else "succeeded")
            if answer.error is not None:
                data["error"] = answer.error
            execution.emit(
                "subworkflow.finished",
                "info" if answer.error is None else "warning",
                node_id=answer.node_id,
                attempt=answer.attempt,
                data=data,
            )
        execution.resolve_task(
            answer.node_id,
            answer.item,
            answer.attempt,
            output=answer.output,
            error=answer.error,
            size=answer.size,
            # no child: it was refused (no such version, its inputs, the depth limit), and
            # every retry would be refused the same way
            retryable=bool(answer.child_execution_id),
        )

    def forget(self, execution: Execution) -> None:
        self._waiting.pop(execution, None)


class EngineService(pb_grpc.EngineServicer):
    """The Engine gRPC service: admission, event streams, and the calls that steer a run."""

    def __init__(self, settings: Settings, pool: LuaPool, metrics: Metrics) -> None:
        self._settings = settings
        self._pool = pool
        self._metrics = metrics
        self._version = installed_version()
        self._runs: dict[str, Execution] = {}
        self._subworkflows = StreamedSubWorkflows()
        self._draining = False
        self._streams: dict[str, _EventStream] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        # the orchestrator sends the same spec text for every run of a version: parse it once
        self._parse_spec = SpecCache(256)

    # -- Execute ------------------------------------------------------------------------------

    async def Execute(
        self,
        request: pb.ExecuteRequest,
        context: grpc.aio.ServicerContext[pb.ExecuteRequest, pb.ExecuteResponse],
    ) -> AsyncIterator[pb.ExecuteResponse]:
        stream = _EventStream()
        try:
            self._turn_away(request)
            # a large spec is parsed on a thread, and _admit finds it parsed: the loop goes on
            # answering meanwhile (health checks first of all)
            await self._parse_spec.parse_off_loop(request.spec)
            execution = self._admit(request, stream)
        except Exception as error:
            code = wire.grpc_status(error).code
            self._metrics.executions_refused.labels(code.name).inc()
            log.info(
                "execution %s refused: %s: %s",
                # a refused id is the client's text: quoted, so it cannot forge log lines
                wire.bounded(repr(request.execution_id), 200)
                if request.execution_id
                else "(no id)",
                code.name,
                str(error).split("\n", 1)[0],
                extra={"engine_id": self._settings.engine_id},
            )
            await _refuse(context, error)
        runner = asyncio.ensure_future(execution.run_to_end())
        runner.add_done_callback(stream.close)
        runner.add_done_callback(_seen)
        streamed = self._metrics.events_streamed
        self._streams[execution.id] = stream
        too_large: MessageTooLarge | None = None
        try:
            async for batch in stream.batches():
                for message in wire.event_batches(batch):
                    too_large = _too_large(message)
                    if too_large is not None:
                        break
                    yield message
                    streamed.inc(len(message.events))
                if too_large is not None:
                    break
        finally:
            if not execution.finished:
                # a run too large to send is the caller's to fail, and is counted cancelled
                stream.let_go = too_large is None
                execution.cancel(
                    "the caller's stream closed" if too_large is None else str(too_large)
                )
            self._streams.pop(execution.id, None)
            self._release(execution, let_go=stream.let_go)
        if too_large is not None:
            # the run's own doing (its outputs), not the engine's: the caller fails the run
            log.warning(
                "execution %s ends: %s",
                execution.id,
                too_large,
                extra=self._context(execution),
            )
            await _refuse(context, too_large)
        if stream.handed_back:
            # UNAVAILABLE, as if this engine had died: the orchestrator resumes it elsewhere
            await _refuse(context, ShuttingDown(self._settings.engine_id))
        failure = runner.exception()
        if failure is not None:
            await _refuse(context, failure)

    def _turn_away(self, request: pb.ExecuteRequest) -> None:
        """ShuttingDown or AtCapacity when no run of ``request``'s kind is let in now."""
        settings = self._settings
        if self._draining:
            raise ShuttingDown(settings.engine_id)
        if len(self._runs) >= settings.capacity and not request.parent_execution_id:
            # a sub-workflow run is let in past capacity: its root was admitted within it, and
            # its parent holds a slot here or elsewhere while it waits, so refusing children
            # could leave a fleet full of parents that wait forever
            raise AtCapacity(settings.engine_id, settings.capacity)

    def _admit(self, request: pb.ExecuteRequest, stream: _EventStream) -> Execution:
        """Check, parse and register a run; no await in here, so admission cannot race."""
        settings = self._settings
        self._turn_away(request)  # again: the spec's parse may have awaited
        order = wire.run_order(request, self._parse_spec, check_inputs)
        if order.execution_id in self._runs:
            raise ExecutionExists(order.execution_id)
        observe = self._metrics.observe

        def on_event(event: Event) -> None:
            stream.push(event)
            observe(event, let_go=stream.let_go)

        execution = Execution(
            order.spec,
            order.inputs,
            pool=self._pool,
            execution_id=order.execution_id,
            engine_id=settings.engine_id,
            parent_execution_id=order.parent_execution_id,
            on_event=on_event,
            completed=order.completed,
            completed_attempts=order.completed_attempts,
            ended=order.ended,
            retried=order.retried,
            sleeping=order.sleeping,
            started_at=order.started_at,
            items_done=order.items_done,
            subworkflows=self._subworkflows,
            first_seq=order.first_seq,
            foreach_output_bytes=settings.foreach_output_bytes,
            run_output_bytes=settings.run_output_bytes,
            carried_bytes=order.carried_bytes,
        )
        self._runs[execution.id] = execution
        self._idle.clear()
        self._metrics.executions_started.inc()
        self._metrics.in_flight.set(len(self._runs))
        # per-run lines are DEBUG: the events say the same, and at hundreds of runs a second
        # the log lines cost more than the runs
        log.debug(
            "execution %s of %s started%s",
            execution.id,
            order.spec.ref,
            f", resuming after {len(order.completed_attempts)} ended nodes"
            if order.completed_attempts
            else "",
            extra=self._context(execution),
        )
        return execution

    def _release(self, execution: Execution, *, let_go: bool) -> None:
        self._runs.pop(execution.id, None)
        self._subworkflows.forget(execution)
        self._metrics.in_flight.set(len(self._runs))
        if not self._runs:
            self._idle.set()
        status: str = execution.run.status
        if let_go and status == "cancelled":
            # as the metrics count it: the orchestrator resumes or ends the run, nobody cancelled
            # it (a rollout's drain read as a cancel of every run in flight)
            status = "handed_back"
        # a run that succeeded is in the events; one that did not is worth a line here too
        log.log(
            logging.DEBUG if status == "succeeded" else logging.INFO,
            "execution %s ended %s",
            execution.id,
            status,
            extra=self._context(execution),
        )

    def _context(self, execution: Execution) -> dict[str, object]:
        return {
            "engine_id": self._settings.engine_id,
            "workflow_id": execution.spec.id,
            "version": execution.spec.version,
            "execution_id": execution.id,
        }

    def _run(self, execution_id: str) -> Execution:
        execution = self._runs.get(execution_id)
        if execution is None:
            raise UnknownExecution(execution_id)
        return execution

    # -- the calls that steer or show runs ------------------------------------------------------

    async def Cancel(
        self,
        request: pb.CancelRequest,
        context: grpc.aio.ServicerContext[pb.CancelRequest, pb.CancelResponse],
    ) -> pb.CancelResponse:
        try:
            if not request.execution_id:
                # as ResolveSubWorkflow and the orchestrator answer it, not "no execution  is
                # running" (NOT_FOUND, and an empty name)
                raise BadRequest([FieldProblem("execution_id", "required")])
            execution = self._run(request.execution_id)
        except Exception as error:
            await _refuse(context, error)
        execution.cancel(request.reason or "cancelled on request")
        return pb.CancelResponse(status=execution.run.status)

    async def ResolveSubWorkflow(
        self,
        request: pb.ResolveSubWorkflowRequest,
        context: grpc.aio.ServicerContext[
            pb.ResolveSubWorkflowRequest, pb.ResolveSubWorkflowResponse
        ],
    ) -> pb.ResolveSubWorkflowResponse:
        try:
            answer = wire.sub_workflow_answer(request)
            self._subworkflows.resolve(self._run(answer.execution_id), answer)
        except Exception as error:
            await _refuse(context, error)
        return pb.ResolveSubWorkflowResponse()

    async def GetInfo(
        self,
        request: pb.GetInfoRequest,
        context: grpc.aio.ServicerContext[pb.GetInfoRequest, pb.EngineInfo],
    ) -> pb.EngineInfo:
        return pb.EngineInfo(
            engine_id=self._settings.engine_id,
            state="draining" if self._draining else "serving",
            capacity=self._settings.capacity,
            in_flight=len(self._runs),
            version=self._version,
        )

    async def ListExecutions(
        self,
        request: pb.ListExecutionsRequest,
        context: grpc.aio.ServicerContext[pb.ListExecutionsRequest, pb.ListExecutionsResponse],
    ) -> pb.ListExecutionsResponse:
        try:
            wanted = wire.listing(request)
        except Exception as error:
            await _refuse(context, error)
        response = pb.ListExecutionsResponse()
        for execution in self._runs.values():
            if wanted.workflow_id is not None and execution.spec.id != wanted.workflow_id:
                continue
            if wanted.status is not None and execution.run.status != wanted.status:
                continue
            response.executions.append(
                wire.execution_message(execution.document(), with_nodes=False)
            )
            if wanted.limit and len(response.executions) >= wanted.limit:
                break
        return response

    # -- drain ----------------------------------------------------------------------------------

    def refuse_new_runs(self) -> None:
        self._draining = True

    async def drain(self, grace: float, hurry: asyncio.Event) -> None:
        """Refuse new runs, give those in flight ``grace`` seconds, then cancel the rest."""
        self._draining = True
        if self._runs:
            log.info(
                "draining: %d executions in flight get %gs to finish",
                len(self._runs),
                grace,
                extra={"engine_id": self._settings.engine_id},
            )
            idle = asyncio.ensure_future(self._idle.wait())
            hurried = asyncio.ensure_future(hurry.wait())
            await asyncio.wait({idle, hurried}, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
            idle.cancel()
            hurried.cancel()
        left = [e for e in self._runs.values() if not e.finished]
        if left:
            reason = f"engine {self._settings.engine_id} is shutting down"
            log.warning(
                "handing %d executions still running back to their callers: %s",
                len(left),
                reason,
                extra={"engine_id": self._settings.engine_id},
            )
            for execution in left:
                # a run is the orchestrator's: it ends its stream unfinished, and resumes it on
                # another engine from its checkpoints; cancelling would end it for good
                stream = self._streams.get(execution.id)
                if stream is not None:
                    stream.hand_back()
                execution.cancel(reason)
        if self._runs:
            # their final events are on the way to the callers: let the streams carry them out
            try:
                await asyncio.wait_for(self._idle.wait(), _FLUSH_WAIT)
            except TimeoutError:
                log.warning(
                    "%d event streams did not finish within %gs",
                    len(self._runs),
                    _FLUSH_WAIT,
                    extra={"engine_id": self._settings.engine_id},
                )


class _Signals:
    """SIGTERM and SIGINT: the first starts the drain, a second cuts its grace short. One that
    came during start-up (held back by ``__main__``) is the first, and ``early`` says so."""

    def __init__(self) -> None:
        self.first = asyncio.Event()
        self.second = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            self._loop.add_signal_handler(sig, self._received, sig)
        self.early = take_held_stop_signal()
        if self.early is not None:
            log.info("%s received while starting: stopping without serving", self.early.name)
            self.first.set()

    def _received(self, sig: signal.Signals) -> None:
        if self.first.is_set():
            log.warning("%s again: cancelling what is still running", sig.name)
            self.second.set()
        else:
            log.info("%s received: draining", sig.name)
            self.first.set()

    def remove(self) -> None:
        for sig in STOP_SIGNALS:
            self._loop.remove_signal_handler(sig)


class EngineServer:
    """One engine's gRPC server with its Lua pool; ``serve`` runs one per process, and a local
    orchestrator (TRANSPORT_TYPE=local) runs several in its own process."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        """SettingsError, naming the variable, when the TLS files cannot be served."""
        self.settings = settings
        self.tls = (
            ServerTls(settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)
            if settings.tls_cert_file is not None and settings.tls_key_file is not None
            else None
        )
        self.metrics = metrics or Metrics(settings.capacity)
        self.port = 0
        self._pool: LuaPool | None = None
        self._server: grpc.aio.Server | None = None
        self._health: health_aio.HealthServicer | None = None
        self.service: EngineService | None = None
        self._watching: asyncio.Future[None] | None = None

    @property
    def address(self) -> str:
        host = self.settings.host
        return host_port("127.0.0.1" if any_address(host) else host, self.port)

    async def start(self) -> None:
        """Listen and serve; OSError when the address cannot be had."""
        pool = LuaPool(workers=self.settings.lua_workers, inline=self.settings.lua_inline)
        await pool.__aenter__()
        self._pool = pool
        self.metrics.lua_given_up.set_function(lambda: pool.given_up)
        self.metrics.lua_queued.set_function(lambda: pool.queued)
        service = EngineService(self.settings, pool, self.metrics)
        interceptors: list[grpc.aio.ServerInterceptor] = [
            wire.DecodeRequests(wire.bad_request_status)
        ]
        if self.settings.engine_token is not None:
            # first: a call without the token is refused before its request is even parsed
            interceptors.insert(0, RequireToken(self.settings.engine_token, ENGINE_SERVICE))
        # without so_reuseport a second engine on a taken port fails instead of sharing it
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.so_reuseport", 0),
                # a resumed run's request carries its completed nodes' outputs
                ("grpc.max_receive_message_length", wire.MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", wire.MAX_MESSAGE_BYTES),
                *keepalive_options(),
            ],
        )
        pb_grpc.add_EngineServicer_to_server(service, server)
        health = await wire.add_health_and_reflection(server, ENGINE_SERVICE)
        host, port = self.settings.host, self.settings.port
        address = host_port(host, port)  # an IPv6 address in brackets, however HOST wrote it
        try:
            self.port = (
                server.add_secure_port(address, self.tls.grpc)
                if self.tls is not None
                else server.add_insecure_port(address)
            )
        except RuntimeError as error:
            await self.close_pool()
            # gRPC's own words name no reason, and point to a plain-text line outside the log
            raise OSError(
                f"cannot listen on {address} (HOST, PORT): {listen_problem(host, port)}"
            ) from error
        await server.start()
        self.service, self._server, self._health = service, server, health
        self._watching = asyncio.ensure_future(
            wire.follow_health(
                health,
                ENGINE_SERVICE,
                self._wedged(pool),
                _WEDGED_EVERY,
                log,
                {"engine_id": self.settings.engine_id},
            )
        )

    def _wedged(self, pool: LuaPool) -> Callable[[], Awaitable[str | None]]:
        """Why new runs should go elsewhere, if they should: every Lua worker is stuck in a
        call the sandbox cannot interrupt, so nothing queued here runs until one comes back
        (the orchestrator keeps the runs it sent here, and sends new ones elsewhere)."""

        async def trouble() -> str | None:
            if not pool.wedged:
                return None
            return (
                f"engine {self.settings.engine_id}: all {pool.workers} Lua workers are stuck in"
                " calls the sandbox cannot interrupt, and as many are given up already"
            )

        return trouble

    async def stop(self, hurry: asyncio.Event | None = None) -> None:
        """Drain (runs in flight get DRAIN_GRACE seconds), then stop serving."""
        self._stop_watching()
        if self.service is not None and self._server is not None and self._health is not None:
            self.service.refuse_new_runs()
            await self._health.enter_graceful_shutdown()
            await self.service.drain(self.settings.drain_grace, hurry or asyncio.Event())
            await self._server.stop(_STOP_GRACE)
        await self.close_pool()

    @property
    def workers(self) -> int:
        return self._pool.workers if self._pool is not None else 0

    def _stop_watching(self) -> None:
        if self._watching is not None:
            self._watching.cancel()
            self._watching = None

    async def close_pool(self) -> None:
        self._stop_watching()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.__aexit__(None, None, None)


async def _calls_ended() -> None:
    """Let the tasks of the calls the server's stop ended finish, before ``asyncio.run`` closes
    the loop. A grpc.health.v1 Watch never ends on its own (the library's servicer waits for
    the next change for ever), so the stop cancels every one still open, and grpcio finishes
    each in a task of its own a loop turn or two later: cancelled instead as the loop closed,
    each logged an ERROR ("Exception not handled by _handle_exceptions") and printed a plain
    traceback on stderr. The process's other tasks are done by now, so this waits on gRPC's."""
    others = asyncio.all_tasks() - {asyncio.current_task()}
    if others:
        await asyncio.wait(others, timeout=_SETTLE)


async def serve(settings: Settings) -> int:
    """Serve until a signal, drain, and return the process exit status."""
    signals = _Signals()
    if signals.early is not None:
        signals.remove()
        return 0
    metrics = Metrics(settings.capacity)
    metrics_server = None
    try:
        engine = EngineServer(settings, metrics)
    except SettingsError as error:
        log.error("%s", error)
        signals.remove()
        return 2
    try:
        if settings.metrics_port is not None:
            try:
                metrics_server = _serve_metrics(settings.metrics_port, settings.host, metrics)
            except OSError as error:
                log.error(
                    "cannot serve metrics on %s (HOST, METRICS_PORT): %s",
                    host_port(settings.host, settings.metrics_port),
                    listen_problem(settings.host, settings.metrics_port, error),
                )
                return 1
        try:
            await engine.start()
        except OSError as error:
            log.error("%s", error)
            return 1
        assert engine.service is not None
        # The process is this engine's: what is alive now (pool, sandboxes, service) lives as
        # long as it, so keep it out of the collector's scans, and collect young objects less
        # often, since every node of every run makes short-lived events and dicts.
        gc.freeze()
        gc.set_threshold(10_000, 10, 10)
        security = engine.tls.security if engine.tls is not None else "plain"
        log.info(
            "engine %s serving on port %s, %s (capacity %s, %s Lua workers; %s)",
            settings.engine_id,
            engine.port,
            security,
            settings.capacity,
            engine.workers,
            "calls need ENGINE_TOKEN"
            if settings.engine_token is not None
            else "ENGINE_TOKEN unset: calls from anyone who reaches the port are served",
            extra={
                "engine_id": settings.engine_id,
                "port": engine.port,
                "event": "serving",
                "security": security,
            },
        )
        await signals.first.wait()
        started = time.monotonic()
        await engine.stop(signals.second)
        await _calls_ended()
        log.info(
            "engine %s stopped after a %.1fs drain",
            settings.engine_id,
            time.monotonic() - started,
            extra={"engine_id": settings.engine_id, "event": "stopped"},
        )
    finally:
        signals.remove()
        await engine.close_pool()
        if metrics_server is not None:
            metrics_server.shutdown()
    return 0
