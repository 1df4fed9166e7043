"""Carrying out a run: the async adapter around the scheduler state machine.

``Execution`` owns one ``Run``. It feeds stimuli in, carries the returned instructions out
(Lua tasks to the worker pool, timers to the event loop, events to a callback) and turns
finished tasks back into stimuli. No per-node asyncio task is created: completions arrive as
future callbacks, so a run's cost is the Lua work plus a few dictionary operations per node.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Protocol, TypeAlias

from engine.core import scheduler as sch
from engine.core.durations import format_duration
from engine.core.events import Event
from engine.core.execution import execution_document
from engine.core.spec import SubWorkflowRef, WorkflowSpec
from engine.core.states import EXECUTION_TERMINAL, NODE_TERMINAL, Severity
from engine.core.values import JSON, JSONObject
from engine.lua import MISSING as LUA_MISSING
from engine.lua import NEVER_STARTED as LUA_NEVER_STARTED
from engine.lua import Flag, LuaOutcome, LuaPool, LuaTask, TaskFlag

log = logging.getLogger(__name__)

FOREACH_OUTPUT_BYTES = 32 * 1024 * 1024
"""Bytes of JSON a foreach node's item outputs may add up to, by default (``FOREACH_OUTPUT_BYTES``
for an engine): half what one message between engine and orchestrator carries
(``wire.MAX_MESSAGE_BYTES``), which its node.succeeded is."""

RUN_OUTPUT_BYTES = 48 * 1024 * 1024
"""Bytes of JSON a run's node outputs may add up to, by default (``RUN_OUTPUT_BYTES`` for an
engine). A run resumed on another engine carries them all in one message
(``wire.MAX_MESSAGE_BYTES``, with room left for its spec, inputs and errors): past this a run
would fail only if it failed over, so it fails where it crosses the limit, failover or not."""

STOP_GRACE = 2.0
"""Seconds scripts asked to stop by a cancel or a timeout get to come back with their log lines
before the run goes on without them. The sandbox looks at its cancel flag about once a second at
worst (a loop of slow C calls, ``prelude.py``), far more often in a plain loop; a busy machine
stretches that. Scripts still queued for a worker are not waited for: they have logged nothing."""

EventSink = Callable[[Event], None]

WAITED_NOTE_SHARE = 0.1
"""Share of its timeout a node that timed out must have waited for a Lua worker before the
wait is named in its error."""

StopKey: TypeAlias = tuple[str, int | None, bool]
"""``(node, item, is_when)``: a script asked to stop whose outcome the run waits for."""
LogKey: TypeAlias = tuple[str, int]
"""``(node, attempt)``: a log budget; attempt 0 for a foreach node's, which all its items and
their attempts share."""


_NODE_ENDS = frozenset(f"node.{status}" for status in NODE_TERMINAL)
_RUN_ENDS = frozenset(f"execution.{status}" for status in EXECUTION_TERMINAL)


@dataclass(slots=True)
class _NodeLogs:
    """A node's log budget: the lines and bytes it kept over all its items, attempts and its
    ``when``, and those dropped that no note has told yet."""

    lines: int = 0
    bytes: int = 0
    dropped: int = 0
    told: bool = False  # a note was published at the node's end


@dataclass(slots=True)
class _Held:
    """A stimulus that stops scripts, held until they come back (or ``STOP_GRACE`` passes) so
    that what they logged comes before the events of their end, and a node's next attempt does
    not start while its last still runs."""

    stimulus: sch.Stimulus
    keys: set[StopKey]
    whole_run: bool
    handle: asyncio.TimerHandle | None = None
    after: list[sch.Stimulus] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SubWorkflowRequest:
    """A sub-workflow node asks for a child execution; answered via ``Execution.resolve_task``."""

    execution_id: str
    node_id: str
    item: int | None
    attempt: int
    ref: SubWorkflowRef
    inputs: JSON


class SubWorkflowHandler(Protocol):
    def start(self, execution: Execution, request: SubWorkflowRequest) -> None: ...
    def cancel(self, execution: Execution, node_id: str, item: int | None) -> None: ...


def timed_out_waiting(timeout: float) -> str:
    """The error of a node whose timeout passed before a Lua worker was free to start it (a
    node's timeout counts from its start, which includes that wait)."""
    return (
        f"timed out after {format_duration(timeout)} waiting for a Lua worker (the engine's "
        "LUA_WORKERS were busy with other scripts; this one never started)"
    )


def waited_note(timeout: float, waited: float) -> str:
    """What to add to the error of a node that timed out after its script waited ``waited``
    seconds for a Lua worker while every one was busy (``TaskFlag.waited``).

    Not the timeout less the script's run: on a machine short of CPU that names a wait for a
    worker when the workers sat idle (a worker thread slow to wake, a script slow to start).
    """
    if waited < WAITED_NOTE_SHARE * timeout:
        return ""
    return (
        f" (of which {format_duration(round(waited, 2))} waiting for a Lua worker: the "
        "engine's LUA_WORKERS were busy)"
    )


class _Results:
    """What a node's script reads as ``results``: an ancestor's output by id (``LUA_MISSING``
    for any other name), and the ancestors ``pairs(results)`` goes through. One object a
    task, where a closure and a partial each cost a node some 0.3 µs."""

    __slots__ = ("_node_id", "_run")

    def __init__(self, run: sch.Run, node_id: str) -> None:
        self._run = run
        self._node_id = node_id

    def __call__(self, name: str) -> object:
        got = self._run.result_of(self._node_id, name)
        return LUA_MISSING if got is sch.MISSING else got

    def names(self) -> list[str]:
        return self._run.readable_results(self._node_id)


class Execution:
    """One run of a workflow, driven to its end on the current event loop."""

    def __init__(
        self,
        spec: WorkflowSpec,
        inputs: JSON,
        *,
        pool: LuaPool,
        execution_id: str | None = None,
        engine_id: str | None = None,
        parent_execution_id: str | None = None,
        on_event: EventSink | None = None,
        completed: Mapping[str, JSON] | None = None,
        completed_attempts: Mapping[str, int] | None = None,
        ended: Mapping[str, tuple[str, str | None]] | None = None,
        retried: Mapping[tuple[str, int | None], int] | None = None,
        sleeping: Mapping[sch.WaitKey, float] | None = None,
        started_at: float | None = None,
        items_done: Mapping[str, sch.ItemsDone] | None = None,
        subworkflows: SubWorkflowHandler | None = None,
        clock: Callable[[], float] = time.time,
        first_seq: int = 1,
        foreach_output_bytes: int = FOREACH_OUTPUT_BYTES,
        run_output_bytes: int = RUN_OUTPUT_BYTES,
        carried_bytes: int = 0,
    ) -> None:
        """``carried_bytes``: what the run's request carries already (its spec, inputs and
        ``completed``'s outputs, ``wire.RunOrder``), counted toward ``run_output_bytes`` as
        outputs made here are. The items foreach nodes under way had done (``items_done``) count
        toward their node's ``foreach_output_bytes`` as if made here."""
        self.spec = spec
        self.id = execution_id or uuid.uuid4().hex
        self.engine_id = engine_id
        self.parent_execution_id = parent_execution_id
        self._pool = pool
        self._on_event = on_event
        self._subworkflows = subworkflows
        self._clock = clock
        self.created_at = clock()
        self.run = sch.Run(
            spec,
            inputs,
            ctx={"execution_id": self.id},
            completed=completed,
            completed_attempts=completed_attempts,
            ended=ended,
            retried=retried,
            sleeping=sleeping,
            started_at=started_at,
            items_done=items_done,
            stop_first=True,
        )
        self._seq = first_seq
        self._timers: dict[sch.TimerKey, asyncio.TimerHandle] = {}
        self._cancels: dict[tuple[str, int | None], Flag] = {}
        self._conditions: dict[str, Flag] = {}  # when expressions being evaluated, by node
        self._item_bytes: dict[str, int] = {}  # foreach node -> bytes of its items' outputs
        # items done before the run came here, counted at their node's first output made here
        # if the node took them (a list of the length they were items of)
        self._carried_items = {
            node_id: done.size for node_id, done in (items_done or {}).items() if done.outputs
        }
        # a foreach node keeps as many log lines as one script run does, over all its items
        # and their attempts: the sandbox's caps are per run, so 10,000 items would keep ten
        # million. Any other node's attempts keep theirs each, so the lines that tell why its
        # last attempt failed are not the first attempts' to spend. A run resumed on another
        # engine starts its unfinished nodes afresh.
        self._log_lines = pool.limits.log_lines
        self._log_bytes = pool.limits.log_bytes
        self._logs: dict[LogKey, _NodeLogs] = {}
        self._untold: set[LogKey] = set()  # budgets with dropped lines no note has told yet
        self._foreach_output_bytes = foreach_output_bytes
        self._run_output_bytes = run_output_bytes
        self._output_bytes = carried_bytes  # of every output made, items' included
        self._backlog: list[sch.Stimulus] = []
        self._feeding = False
        self._broken: Exception | None = None
        """The fault that stopped the run (see ``feed``); nothing is fed to it after that."""
        self._completions: list[sch.Stimulus] = []
        self._stopping: dict[StopKey, Flag] = {}
        self._held: list[_Held] = []
        # while a stop of the whole run is held: what arrived meanwhile, fed just before it
        self._deferred: list[sch.Stimulus] | None = None
        self._done: asyncio.Future[JSONObject] | None = None

    # -- public -------------------------------------------------------------------------------

    async def run_to_end(self) -> JSONObject:
        """Start the run and return its execution document when it ends."""
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        self.feed(sch.Start(self._clock()))
        try:
            return await asyncio.shield(self._done)
        except asyncio.CancelledError:
            # the caller went away: the run must not keep using workers on its behalf
            self.cancel("the caller stopped waiting")
            raise

    def cancel(self, reason: str = "cancelled on request") -> None:
        self._stop_then(sch.CancelRequested(self._clock(), reason), None)

    def resolve_task(
        self,
        node_id: str,
        item: int | None,
        attempt: int,
        *,
        output: JSON = None,
        error: str | None = None,
        retryable: bool = True,
        size: int = 0,
    ) -> None:
        """Complete a task finished elsewhere (a sub-workflow child); ``retryable``: whether
        the node's retry policy may try again after this failure; ``size``: the output's bytes
        of JSON, counted toward a foreach node's as a script's are."""
        now = self._clock()
        if error is None:
            refused = self._refused_output(node_id, item, attempt, size, now)
            self.feed(refused or sch.TaskSucceeded(node_id, item, attempt, output, now, size))
        else:
            self.feed(sch.TaskFailed(node_id, item, attempt, error, now, retryable=retryable))

    def emit(
        self,
        type_: str,
        severity: Severity,
        *,
        node_id: str | None = None,
        attempt: int | None = None,
        data: JSONObject | None = None,
    ) -> None:
        """Publish an event the adapter originates (``subworkflow.requested``), numbered in line
        with the run's own events."""
        self._publish(sch.Emit(type_, severity, self._clock(), node_id, attempt, data or {}))

    def document(self) -> JSONObject:
        return execution_document(
            self.run,
            execution_id=self.id,
            created_at=self.created_at,
            engine_id=self.engine_id,
            parent_execution_id=self.parent_execution_id,
        )

    @property
    def finished(self) -> bool:
        return self.run.finished

    @property
    def next_seq(self) -> int:
        return self._seq

    # -- the loop -----------------------------------------------------------------------------

    def feed(self, *stimuli: sch.Stimulus) -> None:
        """Hand stimuli to the scheduler; re-entrant calls queue behind the one in progress."""
        deferred = self._deferred
        if deferred is None:
            self._backlog.extend(stimuli)
        else:
            for s in stimuli:
                (self._backlog if isinstance(s, sch.TaskLogged) else deferred).append(s)
        if self._feeding or self._broken is not None:
            return
        self._feeding = True
        try:
            while self._backlog:
                batch, self._backlog = self._backlog, []
                for instruction in self.run.handle(*batch):
                    self._carry_out(instruction)
        except Exception as exc:
            # A fault of this code, not of the run's: its state can no longer be trusted, and
            # without this the run would wait forever on the engine, holding its place. It
            # ends as the caller sees a broken stream: resumed from its checkpoints elsewhere,
            # and given up (with this fault named) if it keeps failing.
            self._break(exc)
        finally:
            self._feeding = False

    def _break(self, exc: Exception) -> None:
        log.exception("execution %s stopped by a fault of the engine's own", self.id)
        self._broken = exc
        self._backlog = []
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for flag in self._cancels.values():
            flag.set()  # its scripts stop; what they return is dropped (feed is closed)
        self._cancels.clear()
        if self._done is not None and not self._done.done():
            self._done.set_exception(exc)

    def _carry_out(self, ins: sch.Instruction) -> None:
        match ins:
            case sch.Emit():
                if self._untold:
                    self._tell_dropped(ins)
                self._publish(ins)
            case sch.RunTask():
                self._run_task(ins)
            case sch.EvaluateCondition():
                self._evaluate(ins)
            case sch.StartTimer():
                loop = asyncio.get_running_loop()
                old = self._timers.pop(ins.key, None)
                if old is not None:
                    old.cancel()
                self._timers[ins.key] = loop.call_later(ins.delay, self._timer_fired, ins.key)
            case sch.StopTasks():
                # an end the run came to itself (fail_fast, a foreach item's failure) waits
                # for the scripts it stops, as a cancel's does
                stopped = sch.TasksStopped(ins.node_id, self._clock())
                if ins.node_id is None:
                    self._stop_then(stopped, None)
                    for queued in self._cancels.values():
                        # one still queued is dropped unrun: the run ends without it
                        queued.set()
                else:
                    items = {(n, i, False) for n, i in self._cancels if n == ins.node_id}
                    self._stop_then(stopped, items)
                    for (node_id, _), item_flag in self._cancels.items():
                        if node_id == ins.node_id:
                            # one still queued is dropped unrun: it would log after the
                            # node's end (what comes back of it changes nothing now)
                            item_flag.set()
            case sch.CancelTask():
                flag = self._cancels.pop((ins.node_id, ins.item), None)
                if flag is not None:
                    flag.set()
                elif (
                    self._subworkflows is not None
                    and self.run.node_spec(ins.node_id).kind == "workflow"
                ):
                    self._subworkflows.cancel(self, ins.node_id, ins.item)
            case sch.Finish():
                for handle in self._timers.values():
                    handle.cancel()
                self._timers.clear()
                for held in self._held:
                    if held.handle is not None:
                        held.handle.cancel()
                self._held.clear()
                self._stopping.clear()
                for flag in [*self._cancels.values(), *self._conditions.values()]:
                    flag.set()
                self._cancels.clear()
                self._conditions.clear()
                if self._done is not None and not self._done.done():
                    self._done.set_result(self.document())

    def _publish(self, ins: sch.Emit) -> None:
        event = Event(
            seq=self._seq,
            time=ins.time,
            type=ins.type,
            severity=ins.severity,
            workflow_id=self.spec.id,
            version=self.spec.version,
            execution_id=self.id,
            node_id=ins.node_id,
            engine_id=self.engine_id,
            attempt=ins.attempt,
            data=ins.data,
        )
        self._seq += 1
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                # a broken listener must not stall the run it listens to
                log.exception("event listener failed on %s for execution %s", event.type, self.id)

    def _timer_fired(self, key: sch.TimerKey) -> None:
        self._timers.pop(key, None)
        fired = sch.TimerFired(key, self._clock())
        if key[0] == "run_timeout":
            self._stop_then(fired, None)
        elif key[0] == "node_timeout" and self._times_out(key):
            node_id, item, attempt = key[1], key[2], key[3]
            assert isinstance(node_id, str) and not isinstance(item, str)
            assert isinstance(attempt, int)
            stop: sch.Stimulus = fired
            flag = self._cancels.get((node_id, item))
            if flag is not None and not flag.taken:
                # still queued for a Lua worker: the script never ran, and the node's error
                # must not read as its fault (the scheduler's timer would word it so)
                del self._cancels[(node_id, item)]
                flag.set()  # what the scheduler's CancelTask does: a worker drops it unrun
                error = timed_out_waiting(self.run.node_spec(node_id).timeout or 0.0)
                stop = sch.TaskFailed(node_id, item, attempt, error, fired.now)
            self._stop_then(stop, {(node_id, item, False)})
        else:
            self.feed(fired)

    # -- stopping scripts before their end is told ----------------------------------------------

    def _times_out(self, key: sch.TimerKey) -> bool:
        """Whether a node's timer is for the attempt still out (an earlier one's may fire)."""
        _, node_id, item, attempt = key
        assert isinstance(node_id, str) and not isinstance(item, str)
        return self.run.attempt_running(node_id, item) == attempt

    def _stop_then(self, stimulus: sch.Stimulus, only: set[StopKey] | None) -> None:
        """Feed a stimulus that stops scripts (all of the run's, or ``only`` those) once they
        have come back: their log lines are kept, in order, and nothing else starts meanwhile."""
        if self.run.finished:
            self.feed(stimulus)
            return
        # outcomes that came back this turn are older news than this stop: they go first
        pending, self._completions = self._completions, []
        self.feed(*pending)
        whole = next((h for h in self._held if h.whole_run), None)
        if whole is not None:
            whole.after.append(stimulus)  # the stop already on its way decides the run's end
            return
        # only what a worker has begun: a script still queued has logged nothing, and behind
        # slow ones it could keep the stop waiting for its whole grace
        running: dict[StopKey, Flag] = {
            (n, i, False): f for (n, i), f in self._cancels.items() if f.taken
        }
        running.update({(n, None, True): f for n, f in self._conditions.items() if f.taken})
        if only is not None:
            running = {key: flag for key, flag in running.items() if key in only}
        if not running or self.run.finished:
            self.feed(stimulus)
            return
        for key, flag in running.items():
            flag.set()
            self._stopping[key] = flag
        held = _Held(stimulus, set(running), whole_run=only is None)
        held.handle = asyncio.get_running_loop().call_later(STOP_GRACE, self._release, held)
        self._held.append(held)
        if held.whole_run:
            self._deferred = []

    def _stopped(self, key: StopKey, flag: Flag | None) -> bool:
        """Note that a script came back; True if it had been asked to stop by ``_stop_then``."""
        if key not in self._stopping or (flag is not None and self._stopping[key] is not flag):
            return False
        del self._stopping[key]
        # its outcome is queued for the next loop turn: let the held stimulus come after it
        asyncio.get_running_loop().call_soon(self._release_done)
        return True

    def _release_done(self) -> None:
        for held in [h for h in self._held if not h.keys & self._stopping.keys()]:
            self._release(held)

    def _release(self, held: _Held) -> None:
        if held not in self._held:
            return
        self._held.remove(held)
        if held.handle is not None:
            held.handle.cancel()
        for key in held.keys:
            self._stopping.pop(key, None)  # past the grace: a late outcome is late news
        # what the stopped scripts returned waits for the next loop turn: it goes first
        pending, self._completions = self._completions, []
        if held.whole_run:
            deferred, self._deferred = self._deferred or [], None
            pending = [*deferred, *pending]
        # the scripts ran until now: that is when their nodes, or the run, ended
        self.feed(*pending, replace(held.stimulus, now=self._clock()), *held.after)

    def _results_for(self, node_id: str) -> _Results:
        return _Results(self.run, node_id)

    def _run_task(self, ins: sch.RunTask) -> None:
        spec = self.run.node_spec(ins.node_id)
        if spec.kind == "workflow":
            assert spec.workflow is not None
            if self._subworkflows is None:
                self.feed(
                    sch.TaskFailed(
                        ins.node_id,
                        ins.item,
                        ins.attempt,
                        f"sub-workflow {spec.workflow.id}@{spec.workflow.version} needs the "
                        "orchestrator to run it (dagctl up); the local runner runs Lua and "
                        "sleep nodes",
                        self._clock(),
                        retryable=False,
                    )
                )
                return
            self._subworkflows.start(
                self,
                SubWorkflowRequest(
                    self.id,
                    ins.node_id,
                    ins.item,
                    ins.attempt,
                    spec.workflow,
                    ins.inputs,
                ),
            )
            return
        assert spec.lua is not None
        flag = TaskFlag()  # the pool tells it how long the task waited for a busy worker
        self._cancels[(ins.node_id, ins.item)] = flag
        task = LuaTask(
            key=f"{self.spec.ref}/{ins.node_id}",
            code=spec.lua,
            chunk_name=ins.node_id,
            inputs=self.run.inputs,
            results=(results := self._results_for(ins.node_id)),
            result_names=results.names,
            ctx=ins.ctx,
            deadline=None if ins.timeout is None else time.monotonic() + ins.timeout,
            cancel=flag,
        )
        done = partial(self._task_done, ins.node_id, ins.item, ins.attempt, flag)
        outcome = self._pool.run_inline(task)
        if outcome is not None:
            done(outcome)  # its completion still reaches the scheduler on the next loop turn
            return
        # in this run's turn: the workers take from the runs in turn, however many each has
        self._pool.submit_callback(task, done, owner=self.id)

    def _task_done(
        self,
        node_id: str,
        item: int | None,
        attempt: int,
        flag: TaskFlag,
        outcome: LuaOutcome | None,
    ) -> None:
        if self._cancels.get((node_id, item)) is flag:
            del self._cancels[(node_id, item)]
        stopped = self._stopped((node_id, item, False), flag)
        now = self._clock()
        if outcome is None:
            # the pool closed before the task ran: the engine is stopping
            self._complete(
                [
                    sch.TaskFailed(
                        node_id,
                        item,
                        attempt,
                        "the Lua pool stopped before the task ran",
                        now,
                        retryable=False,
                    )
                ]
            )
            return
        stimuli: list[sch.Stimulus] = []
        if outcome.logs or outcome.logs_dropped:
            stimuli.extend(self._logged(node_id, item, attempt, outcome, now))
        if stopped and outcome.limit == "cancelled":
            self._complete(stimuli)  # its end is the held stimulus's to tell
            self._note_wait(node_id, item, attempt, flag.waited)
            return
        if outcome.ok:
            size = outcome.size
            refused = self._refused_output(node_id, item, attempt, size, now)
            stimuli.append(
                refused or sch.TaskSucceeded(node_id, item, attempt, outcome.value, now, size)
            )
        elif outcome.limit == "deadline":
            # the node's timeout, reached inside the script or before a worker was free to
            # start it: worded as when the scheduler's own timer gets there first (see
            # _timer_fired), whichever of the two does
            timeout = self.run.node_spec(node_id).timeout or 0.0
            if outcome.error == LUA_NEVER_STARTED:
                error = timed_out_waiting(timeout)
            else:
                error = f"timed out after {format_duration(timeout)}"
                error += waited_note(timeout, flag.waited)
            stimuli.append(sch.TaskFailed(node_id, item, attempt, error, now))
        else:
            error = outcome.error or "failed"
            if outcome.line is not None:
                # the line within the script, told from a file line as validation tells it
                error = f"{error} (Lua line {outcome.line})"
            stimuli.append(sch.TaskFailed(node_id, item, attempt, error, now))
        self._complete(stimuli)

    def _logged(
        self,
        node_id: str,
        item: int | None,
        attempt: int,
        outcome: LuaOutcome,
        now: float,
    ) -> list[sch.TaskLogged]:
        """The lines of one script run that its budget (``LogKey``) keeps; the others are
        counted, and told in one line at the end of the node or its attempt
        (``_tell_dropped``). A line is kept while the budget has kept fewer lines and bytes
        than its limits, as the sandbox keeps a run's: the line that crosses the bytes stays."""
        key = (node_id, 0 if self.run.node_spec(node_id).foreach is not None else attempt)
        budget = self._logs.get(key)
        if budget is None:
            budget = self._logs[key] = _NodeLogs()
        most_lines, most_bytes = self._log_lines, self._log_bytes
        logs, dropped = outcome.logs, outcome.logs_dropped
        kept: list[sch.TaskLogged] = []
        for index, (level, message) in enumerate(logs):
            if budget.lines >= most_lines or budget.bytes >= most_bytes:
                dropped += len(logs) - index
                break
            budget.lines += 1
            budget.bytes += _utf8_bytes(message)
            kept.append(sch.TaskLogged(node_id, attempt, level, message, now, item))
        if dropped:
            budget.dropped += dropped
            self._untold.add(key)
        return kept

    def _tell_dropped(self, ins: sch.Emit) -> None:
        """Before the end of a node, or of an attempt of one that is not a foreach, one line
        saying how many of its log lines its budget dropped; before the run's end, one more for
        each budget that dropped lines after its node's end (those of items stopped by its
        failure). Lines after the run's end are nobody's: its stream ends with it."""
        if ins.type in _NODE_ENDS:
            ending = sorted(key for key in self._untold if key[0] == ins.node_id)
        elif ins.type == "node.retrying":
            # an attempt's end; a foreach item's retry is not its node's (budget attempt 0)
            ending = [key for key in self._untold if key == (ins.node_id, ins.attempt)]
        elif ins.type in _RUN_ENDS:
            order = {node_id: i for i, node_id in enumerate(self.spec.order)}
            ending = sorted(self._untold, key=lambda key: (order.get(key[0], 0), key[1]))
        else:
            return
        for key in ending:
            self._untold.discard(key)
            budget = self._logs[key]
            note = self._log_limit_note(key, budget)
            budget.dropped, budget.told = 0, True
            node_id, attempt = key
            data: JSONObject = {"level": "warn", "message": note}
            self._publish(sch.Emit("node.log", "warning", ins.time, node_id, attempt or None, data))

    def _log_limit_note(self, key: LogKey, budget: _NodeLogs) -> str:
        node_id, attempt = key
        spec = self.run.node_spec(node_id)
        if spec.foreach is not None:
            over = " over all its items and attempts"
        elif spec.retry.max_attempts > 1:
            over = f" an attempt (attempt {attempt})"
        else:
            over = ""
        if budget.bytes >= self._log_bytes and budget.lines < self._log_lines:
            keeps = f"{self._log_bytes} bytes of log lines"
        else:
            keeps = f"{self._log_lines} log lines"
        after = " after its end" if budget.told else ""
        return (
            f"[log limit: node {node_id!r} keeps {keeps}{over}; "
            f"{budget.dropped} more dropped{after}]"
        )

    def _note_wait(self, node_id: str, item: int | None, attempt: int, waited: float) -> None:
        """A script stopped by its node's timer: the held end names the wait for a worker, when
        it took a good share of the timeout (as ``_task_done`` does when the script itself
        reached the deadline)."""
        key = ("node_timeout", node_id, item, attempt)
        for held in self._held:
            fired = held.stimulus
            if isinstance(fired, sch.TimerFired) and fired.key == key:
                timeout = self.run.node_spec(node_id).timeout or 0.0
                note = waited_note(timeout, waited)
                if note:
                    error = f"timed out after {format_duration(timeout)}{note}"
                    # its CancelTask is done: the script came back
                    held.stimulus = sch.TaskFailed(node_id, item, attempt, error, fired.now)
                return

    def _add_item_output(self, node_id: str, size: int) -> bool:
        """Count an item's output toward its foreach node's; False once they add up past
        ``foreach_output_bytes``. Each item is held to the output limit, but together they are
        one event and one value for every dependent: a thousand items of a megabyte would make
        both too big to carry, or to hold."""
        total = self._item_bytes.get(node_id, 0) + size
        self._item_bytes[node_id] = total
        return total <= self._foreach_output_bytes

    def _refused_output(
        self, node_id: str, item: int | None, attempt: int, size: int, now: float
    ) -> sch.TaskFailed | None:
        """The failure of an output of ``size`` bytes past its foreach node's bound or the
        run's, else None (and it is counted toward both). Toward the run's it counts as the
        wire carries it: an item's takes a comma in its node's list, and the node's first
        item the list's brackets."""
        carried = size
        if item is not None:
            if self._carried_items and node_id in self._carried_items:
                before = self._carried_items.pop(node_id)
                if self.run.resumed_items(node_id):
                    self._item_bytes[node_id] = before
            carried += 1 if node_id in self._item_bytes else 2
            if not self._add_item_output(node_id, size):
                return self._too_much_output(node_id, item, attempt, now)
        if not self._add_run_output(carried):
            return self._too_much_run_output(node_id, item, attempt, now)
        return None

    def _too_much_output(self, node_id: str, item: int, attempt: int, now: float) -> sch.TaskFailed:
        limit = self._foreach_output_bytes
        return sch.TaskFailed(
            node_id,
            item,
            attempt,
            f"the outputs of this foreach node add up to over {limit} bytes",
            now,
            retryable=False,
        )

    def _add_run_output(self, size: int) -> bool:
        """Count an output toward the run's; False, and not counted, when it would take them
        past ``run_output_bytes``: a refused output is not kept, so the nodes after it (a
        failure handler's small one) are held to what the run does carry."""
        if self._output_bytes + size > self._run_output_bytes:
            return False
        self._output_bytes += size
        return True

    def _too_much_run_output(
        self, node_id: str, item: int | None, attempt: int, now: float
    ) -> sch.TaskFailed:
        limit = self._run_output_bytes
        return sch.TaskFailed(
            node_id,
            item,
            attempt,
            f"the outputs of this run, with its inputs and spec, add up to over {limit} bytes, "
            "the most one run carries "
            "(RUN_OUTPUT_BYTES): a run resumed on another engine takes them all in one message",
            now,
            retryable=False,
        )

    def _evaluate(self, ins: sch.EvaluateCondition) -> None:
        spec = self.run.node_spec(ins.node_id)
        assert spec.when is not None
        # an expression is stopped like a task: when the run ends, or at the node's timeout
        flag = Flag()
        self._conditions[ins.node_id] = flag
        task = LuaTask(
            key=f"{self.spec.ref}/{ins.node_id}#when",
            code=spec.when,
            chunk_name=f"{ins.node_id}.when",
            inputs=self.run.inputs,
            results=(results := self._results_for(ins.node_id)),
            result_names=results.names,
            ctx=ins.ctx,
            expression=True,
            deadline=None if spec.timeout is None else time.monotonic() + spec.timeout,
            cancel=flag,
        )
        outcome = self._pool.run_inline(task)
        if outcome is not None:
            self._condition_done(ins.node_id, outcome)
            return
        future = self._pool.submit(task, owner=self.id)
        future.add_done_callback(partial(self._evaluated, ins.node_id))

    def _complete(self, stimuli: list[sch.Stimulus]) -> None:
        """Queue task results and hand them to the scheduler together on the next loop turn.

        The pool finishes tasks in batches; feeding them as one batch lets the scheduler release
        dependents and refill slots once per batch instead of once per task.
        """
        if not self._completions:
            asyncio.get_running_loop().call_soon(self._flush_completions)
        self._completions.extend(stimuli)

    def _flush_completions(self) -> None:
        batch, self._completions = self._completions, []
        self.feed(*batch)

    def _evaluated(self, node_id: str, fut: asyncio.Future[LuaOutcome]) -> None:
        self._conditions.pop(node_id, None)
        now = self._clock()
        if fut.cancelled():
            self._stopped((node_id, None, True), None)
            return
        exc = fut.exception()
        if exc is not None:
            self._stopped((node_id, None, True), None)
            self.feed(sch.ConditionEvaluated(node_id, None, f"engine error: {exc}", now))
            return
        self._condition_done(node_id, fut.result())

    def _condition_done(self, node_id: str, outcome: LuaOutcome) -> None:
        self._conditions.pop(node_id, None)
        now = self._clock()
        # a when expression may log too (a function it calls): its lines are the node's
        logged = (
            self._logged(node_id, None, 1, outcome, now)
            if outcome.logs or outcome.logs_dropped
            else []
        )
        if self._stopped((node_id, None, True), None) and outcome.limit == "cancelled":
            self.feed(*logged)
        elif outcome.ok:
            self.feed(*logged, sch.ConditionEvaluated(node_id, bool(outcome.value), None, now))
        else:
            error = outcome.error or "failed"
            self.feed(*logged, sch.ConditionEvaluated(node_id, None, error, now))


def _utf8_bytes(text: str) -> int:
    # as the sandbox counts a line: its bytes of UTF-8
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
