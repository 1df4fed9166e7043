"""Dispatch: every accepted execution is driven to its end on some engine.

Executions wait in the durable queue (the store) until an engine has room. Each dispatched run
holds one ``Execute`` stream; every event that comes back is stored before anyone else sees it,
and the nodes' ends (with the outputs in node.succeeded events) are the run's checkpoints. When
a stream breaks or its engine turns unhealthy, the run goes back to the front of the queue and
resumes on the next engine from those checkpoints, numbering its events after the last one
stored: a node whose end was stored never runs again. Time already spent carries over too: a
sleep whose start was stored waits only what is left of it, and the run's timeout counts from
its first start. On start, queued and running executions are taken up the same way, so an
orchestrator restart loses nothing either.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

import grpc

from engine import wire
from engine.api import dagengine_pb2 as pb
from engine.core.durations import format_duration, parse_duration
from engine.core.errors import SpecError
from engine.core.events import isoformat
from engine.core.scheduler import run_outputs
from engine.core.spec import WorkflowSpec, parse_spec
from engine.core.states import EXECUTION_TERMINAL
from engine.core.values import JSON, JSONObject
from orchestrator.errors import StoreUnavailable, store_backoff
from orchestrator.fleet import EngineLink, Fleet
from orchestrator.timeline import Checkpoint, ItemsDone, fold_nodes

log = logging.getLogger(__name__)

_TOO_LARGE = "message larger than max"
"""How gRPC words a message refused for its size (sent or received), as opposed to an engine
that is full: both come as RESOURCE_EXHAUSTED."""

MAX_DISPATCHES = 20
"""A run that has lost this many engines mid-stream is failed rather than passed on forever.

Only streams that had started count: a run never fails because engines were down or full.
"""
BUSY_BACKOFF = 0.5
"""Seconds before a run an engine turned away (full, or still holding it) is offered again."""
FAULT_BACKOFF = 0.5
FAULT_BACKOFF_MAX = 10.0
"""Seconds before a run whose dispatch failed by a fault of this process's own (a store that
fails in a way it does not report as unavailable, say a damaged page) is tried again: doubling
per such fault in a row up to the most, as nothing bounds their number (only engines that
answered count towards ``MAX_DISPATCHES``). A fault after an engine answered is one of those
tries, bounded already: it waits ``FAULT_BACKOFF`` only, so the run is given up in seconds."""
FAULT_LOG_BURST = 5
FAULT_LOG_EVERY = 1.0
"""Faults told as errors: at most ``FAULT_LOG_BURST`` at once, then one per this many
seconds; the others go to debug and are counted in the next one told."""

Outcome = Literal["finished", "lost", "unreachable", "busy", "stalled", "faulted"]


def fault_backoff(faults: int) -> float:
    """Seconds before the next try of a run after ``faults`` (1 or more) faults in a row that
    no engine answered before."""
    return float(min(FAULT_BACKOFF_MAX, FAULT_BACKOFF * 2 ** (faults - 1)))


@dataclass(slots=True)
class FaultLog:
    """Which dispatch faults are told as errors. A run's fault is told when it differs from
    the last one of that run, within a budget of ``FAULT_LOG_BURST`` refilled at one per
    ``FAULT_LOG_EVERY`` seconds: a damaged store fails every run the same way at each try,
    and would otherwise fill the log (and the disk) at the pace of the retries. A traceback
    goes with the first warning of each error text only."""

    budget: float = FAULT_LOG_BURST
    at: float | None = None
    held: int = 0
    last: dict[str, str] = field(default_factory=dict)  # run -> its last fault
    traced: OrderedDict[str, None] = field(default_factory=OrderedDict)  # error texts, bounded

    def tell(self, execution_id: str, error: str, now: float) -> tuple[int, bool] | None:
        """None: log this fault at debug; else (faults held back before it, whether to add
        the traceback) for an error."""
        if self.at is not None:
            self.budget = min(
                float(FAULT_LOG_BURST), self.budget + (now - self.at) / FAULT_LOG_EVERY
            )
        self.at = now
        if self.last.get(execution_id) == error:
            return None
        self.last[execution_id] = error
        if self.budget < 1:
            self.held += 1
            return None
        self.budget -= 1
        held, self.held = self.held, 0
        trace = error not in self.traced
        if trace:
            self.traced[error] = None
            if len(self.traced) > 64:
                self.traced.popitem(last=False)
        return held, trace

    def forget(self, execution_id: str) -> None:
        self.last.pop(execution_id, None)


@dataclass(slots=True)
class RunTicket:
    """What an engine needs to start or resume one execution, read from the store."""

    execution_id: str
    workflow_id: str
    version: str
    spec_json: str
    inputs: JSON
    status: str
    parent_execution_id: str | None = None
    checkpoints: list[Checkpoint] = field(default_factory=list)
    next_seq: int = 1
    sleeping: dict[str, float] = field(default_factory=dict)
    """Sleeps that started and have not ended: node id -> first start, unix seconds."""
    started_at: float | None = None
    """When the run first started (unix seconds); None when it never has."""
    retried: dict[tuple[str, int | None], int] = field(default_factory=dict)
    """(node, foreach item or None) -> attempts that failed, of nodes not ended."""
    waiting: dict[tuple[str, int | None, int], float] = field(default_factory=dict)
    """(node, foreach item or None, attempt) -> first start, unix seconds: sub-workflow
    attempts that were waiting on their child, whose timeout counts from then."""
    cancel_reason: str | None = None
    """A cancel asked of the run and stored: it ends instead of going on."""
    items_done: dict[str, ItemsDone] = field(default_factory=dict)
    """Foreach nodes not ended -> the items they had done, which are not run again."""


def end_events(
    run: RunTicket,
    stored: list[JSONObject],
    seq: int,
    kind: str,
    severity: str,
    error: str,
) -> list[JSONObject]:
    """The events of an end the orchestrator gives a run no engine has (cancelled, timed out,
    given up), as an engine's end of it would have them: each node that started and had not
    ended is cancelled with an event of its own, so a stream that saw it start sees it end;
    the nodes never reached are counted in the end's ``unreached``; the outputs are those the
    nodes that succeeded make. ``stored``: the run's events so far; the new ones take seqs
    from ``seq`` on."""
    execution_id, workflow_id, version = run.execution_id, run.workflow_id, run.version
    inputs, spec_text = run.inputs, run.spec_json
    spec = _spec_of(spec_text)
    order = spec.order if spec is not None else tuple(_node_ids(stored))
    nodes = fold_nodes(order, stored)
    now = isoformat(time.time())
    head: JSONObject = {"workflow_id": workflow_id, "version": version}
    events: list[JSONObject] = []
    for node_id, node in nodes.items():
        if node["status"] == "running":
            events.append(
                {
                    "seq": seq + len(events),
                    "time": now,
                    "type": "node.cancelled",
                    "severity": "warning",
                    **head,
                    "execution_id": execution_id,
                    "node_id": node_id,
                    "engine_id": node["engine_id"],
                    "attempt": node["attempts"] or None,
                    "data": {"error": error},
                }
            )
    outputs: JSONObject = {}
    if spec is not None:
        succeeded = {k: n["output"] for k, n in nodes.items() if n["status"] == "succeeded"}
        ctx: JSONObject = {**head, "execution_id": execution_id}
        outputs, _ = run_outputs(spec, inputs, ctx, succeeded)
    data: JSONObject = {"error": error, "outputs": outputs}
    unreached = sum(1 for n in nodes.values() if n["status"] == "pending")
    if unreached:
        data["unreached"] = unreached
    events.append(
        {
            "seq": seq + len(events),
            "time": now,
            "type": kind,
            "severity": severity,
            **head,
            "execution_id": execution_id,
            "node_id": None,
            "engine_id": None,
            "attempt": None,
            "data": data,
        }
    )
    return events


def run_end(events: list[JSONObject]) -> JSONObject | None:
    """A run's final event among a message's events, wherever it is. An engine of an earlier
    release ended a run stopped by ``fail_fast`` or by a failing foreach item with the lines
    of the scripts it stopped after the end, in the same message: the whole message is stored
    (its seqs follow on), and the run has ended all the same, which its waiters and a parent
    waiting on it as a sub-workflow are told. Read as the end of the last event only, such a
    run looked like a stream broken early: it was dispatched again and nobody was told."""
    for event in events:
        kind = str(event.get("type", ""))
        if kind.startswith("execution.") and kind.split(".", 1)[1] in EXECUTION_TERMINAL:
            return event
    return None


def _spec_of(text: str) -> WorkflowSpec | None:
    """The run's spec, or None when it no longer parses (a version stored before checks that
    now refuse it): its end then names no outputs."""
    try:
        return parse_spec(json.loads(text))  # stored as canonical JSON
    except (SpecError, ValueError):
        return None


def _node_ids(events: list[JSONObject]) -> dict[str, None]:
    return {str(e["node_id"]): None for e in events if e.get("node_id") is not None}


RESUME_ERROR_BYTES: Final = 4 * 1024 * 1024
"""Most characters of ended nodes' errors a resume request carries: the engine bounds outputs,
spec and inputs (``RUN_OUTPUT_BYTES``) within the message's 64 MiB, leaving 8 MiB for the rest;
each error is at most 16 KiB, but thousands of failed nodes would take the message past it.
Past this each is cut to an equal share (the stored events keep them whole)."""
_CUT_MARK: Final = " [cut to fit the resume message]"
_DRAIN_S: Final = 5.0
"""Seconds a finished run's stream is read for its end; an engine ends it at once."""


def _resume_errors(checkpoints: Sequence[Checkpoint]) -> list[str]:
    """The ended nodes' errors as a resume carries them: whole while their UTF-8 (what the
    message holds) comes to at most ``RESUME_ERROR_BYTES``, else each cut to an equal share."""
    errors = [c.error or "" for c in checkpoints]
    sizes = [len(e.encode("utf-8", "surrogatepass")) for e in errors]
    if sum(sizes) <= RESUME_ERROR_BYTES:
        return errors
    share = RESUME_ERROR_BYTES // sum(1 for size in sizes if size) - len(_CUT_MARK)
    return [
        e if size <= share else _cut_utf8(e, max(share, 0)) + _CUT_MARK
        for e, size in zip(errors, sizes, strict=True)
    ]


def _cut_utf8(text: str, most: int) -> str:
    """The longest start of ``text`` whose UTF-8 takes at most ``most`` bytes."""
    return text.encode("utf-8", "surrogatepass")[:most].decode("utf-8", "ignore")


def execute_request(ticket: RunTicket) -> pb.ExecuteRequest:
    """The engine's request for a run: started, or resumed from what its ticket carries."""
    errors = _resume_errors(ticket.checkpoints)
    request = pb.ExecuteRequest(
        execution_id=ticket.execution_id,
        spec=ticket.spec_json,
        inputs_json=wire.dumps(ticket.inputs),
        completed=[
            pb.CompletedNode(
                node_id=c.node_id,
                output_json=wire.dumps(c.output) if c.status == "succeeded" else "",
                attempts=c.attempts,
                status=c.status,
                error=error,
            )
            for c, error in zip(ticket.checkpoints, errors, strict=True)
        ],
        # the items foreach nodes under way had done (their node.progress events): not run
        # again
        completed_items=[
            pb.CompletedItem(
                node_id=node_id, item=item, items=done.items, output_json=wire.dumps(output)
            )
            for node_id, done in ticket.items_done.items()
            for item, output in sorted(done.outputs.items())
        ],
        first_seq=ticket.next_seq,
        sleeping=[
            pb.StartedSleep(node_id=node_id, started_at=since)
            for node_id, since in ticket.sleeping.items()
        ],
        started_at=ticket.started_at or 0.0,
        retried=[
            pb.RetriedNode(node_id=node_id, item=item, failed=failed)
            for (node_id, item), failed in ticket.retried.items()
        ],
        waiting=[
            pb.WaitingNode(node_id=node_id, item=item, attempt=attempt, started_at=since)
            for (node_id, item, attempt), since in ticket.waiting.items()
        ],
    )
    if ticket.parent_execution_id:
        request.parent_execution_id = ticket.parent_execution_id
    return request


CANCEL_RETRY = 0.5
CANCEL_RETRY_MAX = 5.0
"""Seconds between Cancel calls to an engine that did not answer one: doubling to this."""


class DispatchStore(Protocol):
    async def load_ticket(self, execution_id: str) -> RunTicket | None: ...
    async def end_point(self, execution_id: str) -> tuple[int, list[JSONObject]]: ...
    async def record_events(
        self, execution_id: str, events: list[JSONObject], message: bytes | None = None
    ) -> None: ...


@dataclass(eq=False)
class _Running:
    ticket: RunTicket
    link: EngineLink
    call: grpc.aio.UnaryStreamCall[pb.ExecuteRequest, pb.ExecuteResponse] | None = None
    lost: bool = False
    answered: bool = False


class Dispatcher:
    def __init__(
        self,
        store: DispatchStore,
        fleet: Fleet,
        *,
        publish: Callable[[list[JSONObject]], None],
        on_finished: Callable[[str, JSONObject], None] | None = None,
        on_events: Callable[[RunTicket, EngineLink, list[JSONObject]], None] | None = None,
        refusal: Callable[[str, str], str | None] | None = None,
    ) -> None:
        """``refusal``: why a run of ``(workflow, version)`` cannot run at all (a version stored
        under older checks that today's refuse), or None: such a run ends here, saying so."""
        self._store = store
        self._refusal = refusal
        self._fleet = fleet
        self._publish = publish
        self._on_finished = on_finished
        self._on_events = on_events
        # root runs wait per workflow, and workflows take turns: a flood of one workflow's
        # runs (a backfill, a busy trigger) holds back another's by one run at most
        self._turns: OrderedDict[str, deque[str]] = OrderedDict()  # routing key -> runs
        self._in_turns = 0
        # runs back from an engine (lost, handed back, a store stall) go before all others
        self._front: deque[tuple[str, str]] = deque()  # (execution_id, routing key)
        # sub-workflow runs wait apart and go first, past engines' capacity: their parents
        # hold slots while they wait, so a fleet full of waiting parents would never free one
        self._child_queue: deque[tuple[str, str]] = deque()
        self._children: set[str] = set()
        self._queued: set[str] = set()
        self._running: dict[str, _Running] = {}
        self._dispatches: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._cancel_requests: dict[str, str] = {}
        self._waiting_retry: set[str] = set()
        self._stalls: dict[str, int] = {}  # run -> times the store failed it, for backoff
        # run -> the last error of this process's own in carrying it: not an engine's fault
        self._faults: dict[str, str] = {}
        self._fault_tries: dict[str, int] = {}  # run -> faults in a row, for backoff
        self._fault_log = FaultLog()
        # run -> how its engine last lost it, so that giving it up names the likely cause
        self._losses: dict[str, str] = {}
        self._stalled: set[str] = set()  # runs whose last events the store could not take
        self._fresh: dict[str, RunTicket] = {}
        # runs that started, left their engine unfinished and wait for another: the engine
        # would time them out, but none has them, so their whole-run deadline is kept here
        self._deadlines: dict[str, asyncio.TimerHandle] = {}
        self._timeouts: dict[tuple[str, str], float | None] = {}  # (workflow, version) ->
        # runs this dispatcher is ending itself (given up, timed out) while neither queued nor
        # on an engine: a cancel then must not store a second end
        self._ending: set[str] = set()
        self._closing = False

    # -- what the facade calls --------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return self._in_turns + len(self._front) + len(self._child_queue)

    def queued_of(self, workflow_id: str) -> int:
        """New runs of ``workflow_id`` waiting for an engine (those back from one, and
        sub-workflow runs, are not held to a limit)."""
        runs = self._turns.get(workflow_id)
        return len(runs) if runs is not None else 0

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def stalled(self) -> int:
        """Runs waiting for the store to take their events again."""
        return len(self._stalled)

    def submit(
        self,
        execution_id: str,
        workflow_id: str,
        *,
        front: bool = False,
        ticket: RunTicket | None = None,
        child: bool = False,
    ) -> None:
        """Queue an execution the store already holds; it starts when an engine has room.

        ``ticket``: a run just stored, whose ticket the caller has in hand; the first dispatch
        then skips reading it back. ``child``: a sub-workflow run (see ``pump``).
        """
        if execution_id in self._queued or execution_id in self._running:
            return
        if ticket is not None:
            self._fresh[execution_id] = ticket
            child = child or ticket.parent_execution_id is not None
        if child:
            self._children.add(execution_id)
        self._queued.add(execution_id)
        if execution_id in self._children:
            if front:
                self._child_queue.appendleft((execution_id, workflow_id))
            else:
                self._child_queue.append((execution_id, workflow_id))
        elif front:
            self._front.appendleft((execution_id, workflow_id))
        else:
            self._turns.setdefault(workflow_id, deque()).append(execution_id)
            self._in_turns += 1
        self.pump()

    def pump(self) -> None:
        """Start queued runs while engines have room."""
        # children first, and to any ready engine even when it is full: each belongs to a
        # tree whose root was admitted within capacity, and its parent is waiting on it
        for queue, overflow in ((self._child_queue, True), (self._front, False)):
            while queue and not self._closing:
                execution_id, key = queue[0]
                link = self._fleet.pick(key, overflow=overflow)
                if link is None:
                    return
                queue.popleft()
                self._start(execution_id, key, link)
        while self._turns and not self._closing:
            key, runs = next(iter(self._turns.items()))
            link = self._fleet.pick(key, overflow=False)
            if link is None:
                return  # every engine is full
            execution_id = runs.popleft()
            self._in_turns -= 1
            if runs:
                self._turns.move_to_end(key)  # its next run waits for the others' turns
            else:
                del self._turns[key]
            self._start(execution_id, key, link)

    def _start(self, execution_id: str, key: str, link: EngineLink) -> None:
        self._queued.discard(execution_id)
        deadline = self._deadlines.pop(execution_id, None)
        if deadline is not None:
            deadline.cancel()  # the engine keeps it from here
        link.in_flight += 1
        fresh = self._fresh.pop(execution_id, None)
        run = _Running(fresh or RunTicket(execution_id, key, "", "", None, "queued"), link)
        self._running[execution_id] = run
        task = asyncio.get_running_loop().create_task(self._drive(run))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def link_of(self, execution_id: str) -> EngineLink | None:
        """The engine whose stream carries this run now; None while it is queued or between
        engines."""
        run = self._running.get(execution_id)
        return run.link if run is not None and run.call is not None else None

    def dequeue(self, execution_id: str) -> bool:
        """Take a run that has not started off the queue; False when it is not queued."""
        if execution_id in self._waiting_retry:
            self._waiting_retry.discard(execution_id)
            self._forget(execution_id)
            return True
        if execution_id not in self._queued:
            return False
        self._queued.discard(execution_id)
        self._fresh.pop(execution_id, None)
        self._front = deque(item for item in self._front if item[0] != execution_id)
        self._child_queue = deque(item for item in self._child_queue if item[0] != execution_id)
        for key, runs in list(self._turns.items()):
            if execution_id in runs:
                runs.remove(execution_id)
                self._in_turns -= 1
                if not runs:
                    del self._turns[key]
                break
        self._forget(execution_id)  # the caller ends it (a cancel), or submits it again
        return True

    async def cancel_running(self, execution_id: str, reason: str) -> bool:
        """Ask the engine running it to cancel; its stream then ends with execution.cancelled."""
        run = self._running.get(execution_id)
        if run is None:
            return False
        self._cancel_requests[execution_id] = reason
        await self._send_cancel(run, reason)
        return True

    def engine_lost(self, link: EngineLink) -> None:
        """The fleet says an engine is gone: its runs move on without waiting for a timeout."""
        for run in list(self._running.values()):
            if run.link is link and run.call is not None:
                run.lost = True
                self._losses[run.ticket.execution_id] = (
                    f"{link.key}: {link.last_error or 'the engine left'}"
                )
                run.call.cancel()

    async def close(self) -> None:
        self._closing = True
        for run in self._running.values():
            if run.call is not None:
                run.call.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- one run on one engine --------------------------------------------------------------

    async def _drive(self, run: _Running) -> None:
        execution_id = run.ticket.execution_id
        outcome: Outcome = "lost"
        try:
            ticket = run.ticket if run.ticket.spec_json else None
            if ticket is None:
                ticket = await self._store.load_ticket(execution_id)
            if ticket is None or ticket.status in EXECUTION_TERMINAL:
                outcome = "finished"
                return
            run.ticket = ticket
            reason = self._cancel_requests.get(execution_id) or ticket.cancel_reason
            if reason is not None:
                # cancelled between the queue and the engine (or before a restart, or while
                # its engine was lost): end it here, with nothing more run
                await self._end(ticket, "execution.cancelled", "warning", reason)
                outcome = "finished"
                return
            if self._dispatches.get(execution_id, 0) >= MAX_DISPATCHES:
                await self._give_up(ticket)  # when the store could not take that before
                outcome = "finished"
                return
            refused = self._refusal(ticket.workflow_id, ticket.version) if self._refusal else None
            if refused is not None:
                # accepted before an upgrade whose checks refuse its version: every engine
                # would refuse it too, in words about the engine rather than the version
                await self._end(ticket, "execution.failed", "error", refused)
                outcome = "finished"
                return
            outcome = await self._stream(run)
        except StoreUnavailable as exc:
            outcome = "stalled"
            self._stalled.add(execution_id)
            log.debug("dispatch of %s waits for the store: %s", execution_id, exc.message)
        except asyncio.CancelledError:
            if self._closing:
                raise
        except Exception as exc:
            outcome = "faulted"
            self._fault(execution_id, exc, "dispatch of")
            self._faults[execution_id] = f"{type(exc).__name__}: {exc}"
        finally:
            run.link.in_flight = max(0, run.link.in_flight - 1)
            self._running.pop(execution_id, None)
            if outcome != "finished" and not self._closing:
                self._requeue(run, outcome)
            self.pump()

    async def _stream(self, run: _Running) -> Outcome:
        """Run the stream to its end and say how it ended."""
        ticket = run.ticket
        request = execute_request(ticket)
        log.debug(
            "dispatching %s to %s (resume from %d checkpoints, %d sleeps under way)",
            ticket.execution_id,
            run.link.key,
            len(ticket.checkpoints),
            len(ticket.sleeping),
            extra={"execution_id": ticket.execution_id, "engine_id": run.link.key},
        )
        call = run.link.stub.Execute(request)
        run.call = call
        responses = aiter(call)
        answered = False
        stored = False
        try:
            async for response in responses:
                if not answered:
                    answered = run.answered = True
                    if ticket.started_at is None:
                        ticket.started_at = time.time()  # its deadline counts from here
                    self._dispatches[ticket.execution_id] = (
                        self._dispatches.get(ticket.execution_id, 0) + 1
                    )
                    if ticket.execution_id in self._cancel_requests:
                        # asked to cancel while the run was on its way to the engine
                        self._spawn(
                            self._send_cancel(run, self._cancel_requests[ticket.execution_id])
                        )
                events = [wire.event_dict(e) for e in response.events]
                if not events:
                    continue
                try:
                    await self._store.record_events(
                        ticket.execution_id, events, response.SerializeToString()
                    )
                except StoreUnavailable as exc:
                    # Nothing of this batch is stored or seen. The engine is fine: stop its
                    # run (it resumes from the stored checkpoints later) and wait for the
                    # store, without counting a lost engine.
                    call.cancel()
                    self._dispatches[ticket.execution_id] -= 1
                    self._stalled.add(ticket.execution_id)
                    log.debug("%s stalls: %s", ticket.execution_id, exc.message)
                    return "stalled"
                if not stored:
                    stored = True
                    self._stalled.discard(ticket.execution_id)
                    self._fault_tries.pop(ticket.execution_id, None)
                self._publish(events)
                if self._on_events is not None:
                    self._on_events(ticket, run.link, events)
                end = run_end(events)
                if end is not None:
                    self._finished(ticket.execution_id, end)
                    # apart: the engine's slot is free now, whatever comes after the end
                    self._spawn(_drained(responses))
                    return "finished"
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                await self._end(
                    ticket,
                    "execution.failed",
                    "error",
                    f"the engine refused the run: {exc.details()}",
                )
                return "finished"
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED and _TOO_LARGE in (exc.details() or ""):
                # no engine takes it, and every retry would run it again for nothing
                await self._end(
                    ticket,
                    "execution.failed",
                    "error",
                    "a message of this run is larger than engines and orchestrator exchange "
                    f"({wire.MAX_MESSAGE_BYTES // (1024 * 1024)} MiB: {exc.details()}): "
                    "its spec, inputs and node outputs, taken together, are too big",
                )
                return "finished"
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                # our count was behind the engine's: leave it alone for a moment
                run.link.full_until = time.monotonic() + BUSY_BACKOFF
                return "busy"
            if code == grpc.StatusCode.ALREADY_EXISTS:
                # the engine still holds this run from a stream that broke (an orchestrator
                # restart, its host gone without closing it): it lets go once it sees that
                # stream gone, within half a minute by its keepalive, then the id is free.
                # No Cancel is sent for it: a Cancel names no copy of the run, and one that
                # reached the engine late would end the copy sent next, run and all.
                log.debug(
                    "%s is still held by %s from an earlier stream: trying again shortly",
                    ticket.execution_id,
                    run.link.key,
                )
                return "busy"
            if run.lost:
                # the fleet said the engine is gone and we cancelled the call ourselves (gRPC
                # may report that as CANCELLED rather than raise CancelledError): said already
                log.warning(
                    "engine %s lost with %s: resuming elsewhere", run.link.key, ticket.execution_id
                )
                return "lost" if answered else "unreachable"
            if wire.is_shutting_down(exc) or (
                code == grpc.StatusCode.UNAVAILABLE and run.link.state == "draining"
            ):
                # A drain (a rollout, a scale-down), not a failure: the engine refuses new runs
                # or hands back what it did not finish. It gets no more, and keeps the runs it
                # has for its grace; its health checks tell when it is gone.
                self._fleet.drain(run.link, "shutting down")
                if answered:
                    # handed back, not lost: a run outliving twenty rollouts is no reason
                    # to give it up (MAX_DISPATCHES counts engines that failed it)
                    self._dispatches[ticket.execution_id] -= 1
                log.info(
                    "%s %s by draining engine %s: %s",
                    ticket.execution_id,
                    "handed back" if answered else "refused",
                    run.link.key,
                    "resuming elsewhere" if answered else "dispatching elsewhere",
                )
                return "lost" if answered else "unreachable"
            if answered:
                log.warning(
                    "lost %s on %s (%s: %s): resuming elsewhere",
                    ticket.execution_id,
                    run.link.key,
                    code.name,
                    exc.details(),
                )
            else:
                # it never reached the engine (gone a moment ago, say, before a health check
                # saw it leave): nothing of the run is lost
                log.info(
                    "could not reach %s with %s (%s: %s): dispatching elsewhere",
                    run.link.key,
                    ticket.execution_id,
                    code.name,
                    exc.details(),
                )
            self._fleet.suspect(run.link, f"{code.name}: {exc.details()}")
            self._losses[ticket.execution_id] = f"{run.link.key}: {code.name}: {exc.details()}"
            return "lost" if answered else "unreachable"
        except asyncio.CancelledError:
            if run.lost:
                log.warning(
                    "engine %s lost with %s: resuming elsewhere", run.link.key, ticket.execution_id
                )
                return "lost" if answered else "unreachable"
            raise
        except Exception:
            # a fault of this process's own: the engine's run must stop before it is tried
            # again, or it would run on two engines at once
            call.cancel()
            raise
        log.warning(
            "stream of %s on %s ended early: resuming elsewhere", ticket.execution_id, run.link.key
        )
        return "lost"

    async def _send_cancel(self, run: _Running, reason: str) -> None:
        if not await self._try_cancel(run, reason):
            # the engine did not hear it (stopped, busy, cut off): ask again while the run is
            # on it; should the run move to another engine, its stored cancel ends it there
            self._spawn(self._keep_cancelling(run, reason))

    async def _try_cancel(self, run: _Running, reason: str) -> bool:
        """One Cancel call; False when the engine may not have heard it."""
        try:
            await run.link.stub.Cancel(
                pb.CancelRequest(execution_id=run.ticket.execution_id, reason=reason), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            # NOT_FOUND: it ended there meanwhile (a cancel before this one, its own end),
            # and its stream brings that end: nothing failed
            missing = exc.code() == grpc.StatusCode.NOT_FOUND
            log.log(
                logging.DEBUG if missing else logging.WARNING,
                "cancel of %s on %s failed: %s",
                run.ticket.execution_id,
                run.link.key,
                exc.details(),
            )
            return missing
        return True

    async def _keep_cancelling(self, run: _Running, reason: str) -> None:
        delay = CANCEL_RETRY
        while not self._closing:
            await asyncio.sleep(delay)
            if self._running.get(run.ticket.execution_id) is not run:
                return  # its stream ended (its end is stored), or it moved on
            if await self._try_cancel(run, reason):
                return
            delay = min(delay * 2, CANCEL_RETRY_MAX)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _requeue(self, run: _Running, outcome: Outcome) -> None:
        execution_id = run.ticket.execution_id
        self.keep_deadline(run.ticket)
        if outcome == "lost" and self._dispatches.get(execution_id, 0) >= MAX_DISPATCHES:
            self._spawn(self._give_up_or_wait(run))
            return
        key = run.ticket.workflow_id or execution_id
        if outcome == "busy" or outcome == "stalled" or outcome == "faulted":
            delay = BUSY_BACKOFF
            if outcome == "stalled":
                # its engine is not to blame: no lost engine is counted, it waits for the store
                stalls = self._stalls[execution_id] = self._stalls.get(execution_id, 0) + 1
                delay = store_backoff(stalls)
            elif outcome == "faulted":
                # Tried again at once, a fault that is there for good (a damaged store) would
                # spin the process; after the twentieth answered try, the next dispatch
                # gives the run up.
                delay = FAULT_BACKOFF
                if not run.answered:
                    faults = self._fault_tries.get(execution_id, 0) + 1
                    self._fault_tries[execution_id] = faults
                    delay = fault_backoff(faults)
            self._waiting_retry.add(execution_id)
            asyncio.get_running_loop().call_later(delay, self._retry, execution_id, key)
        else:
            self.submit(execution_id, key, front=True)

    def keep_deadline(self, ticket: RunTicket) -> None:
        """Time out a started run that waits for an engine past its whole-run ``timeout``."""
        if ticket.started_at is None or not ticket.spec_json:
            return
        timeout = self._run_timeout(ticket)
        if timeout is None or ticket.execution_id in self._deadlines:
            return
        delay = max(0.0, ticket.started_at + timeout - time.time())
        self._deadlines[ticket.execution_id] = asyncio.get_running_loop().call_later(
            delay, self._deadline_passed, ticket, timeout
        )

    def _run_timeout(self, ticket: RunTicket) -> float | None:
        key = (ticket.workflow_id, ticket.version)
        if key not in self._timeouts:
            timeout: float | None = None
            try:
                document = wire.loads(ticket.spec_json)
                value = document.get("timeout") if isinstance(document, dict) else None
                timeout = None if value is None else parse_duration(value)
            except ValueError:  # checked at registration; never here
                pass
            self._timeouts[key] = timeout
        return self._timeouts[key]

    def ending(self, execution_id: str) -> bool:
        """Whether the dispatcher is storing this run's end itself (see ``_ending``)."""
        return execution_id in self._ending

    def _deadline_passed(self, ticket: RunTicket, timeout: float) -> None:
        self._deadlines.pop(ticket.execution_id, None)
        child = ticket.execution_id in self._children
        if self._closing or not self.dequeue(ticket.execution_id):
            return  # on an engine again (which times it out), or ended
        self._ending.add(ticket.execution_id)
        self._spawn(self._time_out(ticket, timeout, child))

    async def _time_out(self, ticket: RunTicket, timeout: float, child: bool) -> None:
        try:
            await self._end(
                ticket,
                "execution.timed_out",
                "error",
                f"execution timed out after {format_duration(timeout)} (while no engine had it)",
            )
        except StoreUnavailable:
            # not stored: back where it was, and the next engine times it out at once
            key = ticket.workflow_id or ticket.execution_id
            self.submit(ticket.execution_id, key, front=True, child=child)
        finally:
            self._ending.discard(ticket.execution_id)

    def _forget(self, execution_id: str) -> None:
        """Drop what is kept per run, once it has ended or left the queue."""
        deadline = self._deadlines.pop(execution_id, None)
        if deadline is not None:
            deadline.cancel()
        self._children.discard(execution_id)
        self._dispatches.pop(execution_id, None)
        self._stalls.pop(execution_id, None)
        self._faults.pop(execution_id, None)
        self._fault_tries.pop(execution_id, None)
        self._fault_log.forget(execution_id)
        self._losses.pop(execution_id, None)
        self._stalled.discard(execution_id)
        self._cancel_requests.pop(execution_id, None)

    async def _give_up(self, ticket: RunTicket) -> None:
        fault = self._faults.get(ticket.execution_id)
        loss = self._losses.get(ticket.execution_id)
        await self._end(
            ticket,
            "execution.failed",
            "error",
            f"gave up after {MAX_DISPATCHES} tries: the orchestrator could not carry this "
            f"run ({fault})"
            if fault is not None
            else f"gave up after {MAX_DISPATCHES} engines lost this run"
            + ("" if loss is None else f" (the last: {loss})"),
        )

    async def _give_up_or_wait(self, run: _Running) -> None:
        self._ending.add(run.ticket.execution_id)
        try:
            await self._give_up(run.ticket)
        except StoreUnavailable:
            self._stalled.add(run.ticket.execution_id)
            self._requeue(run, "stalled")  # its next dispatch gives up, once the store can
        except Exception as exc:
            # Its end is not stored, so the run is still accepted and not ended: it waits as
            # any fault does, and its next dispatch gives it up once the store can take that.
            # Dropped here, it would wait for the next start; tried at once, it would spin.
            self._fault(run.ticket.execution_id, exc, "giving up")
            run.answered = False  # nothing answered this: the wait doubles
            if not self._closing:
                self._requeue(run, "faulted")
        finally:
            self._ending.discard(run.ticket.execution_id)

    def _fault(self, execution_id: str, exc: Exception, doing: str) -> None:
        """Log a fault of this process's own in carrying a run, within the ``FaultLog``'s
        bounds."""
        error = f"{type(exc).__name__}: {exc}"
        told = self._fault_log.tell(execution_id, error, time.monotonic())
        if told is None:
            log.debug("%s %s failed: %s", doing, execution_id, error)
            return
        held, trace = told
        log.error(
            "%s %s failed: %s (tried again shortly%s)",
            doing,
            execution_id,
            error,
            f"; {held} other faults since logged at debug only" if held else "",
            exc_info=exc if trace else None,
            extra={"execution_id": execution_id},
        )

    def _retry(self, execution_id: str, key: str) -> None:
        if execution_id in self._waiting_retry:
            self._waiting_retry.discard(execution_id)
            if not self._closing:
                self.submit(execution_id, key, front=True)

    async def _end(self, ticket: RunTicket, kind: str, severity: str, error: str) -> None:
        """End a run the engines cannot: store the final events, tell everyone."""
        seq, stored = await self._store.end_point(ticket.execution_id)
        events = end_events(ticket, stored, seq, kind, severity, error)
        await self._store.record_events(ticket.execution_id, events)
        self._publish(events)
        self._finished(ticket.execution_id, events[-1])

    def _finished(self, execution_id: str, event: JSONObject) -> None:
        self._forget(execution_id)
        if self._on_finished is not None:
            self._on_finished(execution_id, event)


async def _drained(responses: AsyncIterator[Any]) -> None:
    """Read a finished run's stream to its end, which the engine closes after the final event.
    grpc.aio's stream is an async generator whose frame holds the call (and, through an
    interceptor, another such generator holding the inner call): left at the final event, it
    kept the call (about 50 KB of gRPC's state and its last message) in a reference cycle that
    only the collector frees, and the orchestrator collects seldom (``serving``:
    gc.set_threshold): a soak grew by ~480 MB an hour of finished calls. Read to the end, the
    generators finish and the call goes by reference count."""
    try:
        async with asyncio.timeout(_DRAIN_S):
            async for _ in responses:
                pass  # nothing comes after the final event; were it to, it has no run now
    except (TimeoutError, grpc.aio.AioRpcError):
        pass  # the run is stored as ended: how its stream closes changes nothing
