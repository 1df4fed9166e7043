"""The scheduler: one execution of a workflow as a synchronous state machine.

``Run.handle(*stimuli)`` takes what happened (a task finished, a timer fired, a cancel arrived)
and returns what to do next as instruction objects (``RunTask``, ``StartTimer``, ``Emit``,
``Finish``, ...). It does no I/O and reads no clock: time arrives inside each stimulus. An async
adapter carries the instructions out and feeds the results back.

A run may resume one that began on another engine: nodes that succeeded there are ``completed``
and never run again; waits under way there (``sleeping``) keep their first start: a sleep waits
only what is left, and a sub-workflow node's attempt, which takes up the same child, times out
at its first start plus its timeout; and the whole run's timeout counts from its first
``started_at``. A Lua node's attempt runs again from the start, and so does its timeout. A
foreach node that had not ended takes the items it had done (``ItemsDone``, told by its
``node.progress`` events) as done: their outputs are in place, and they never run again.

Each node keeps a count of its unfinished dependencies. When a node settles, its dependents'
counts drop; a dependent whose count reaches zero has its trigger rule evaluated once, over its
own dependencies. A whole run therefore costs O(nodes + edges), never a rescan of all nodes.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Final, TypeAlias, cast

from engine.core import dag, templates
from engine.core.durations import format_duration
from engine.core.errors import InvalidTransition, MissingPath, TemplateError
from engine.core.spec import NodeSpec, WorkflowSpec
from engine.core.states import (
    NODE_TERMINAL,
    NODE_TRANSITIONS,
    RESUMED_ENDS,
    ExecutionStatus,
    NodeStatus,
    Severity,
)
from engine.core.values import JSON, JSONObject, json_kind

MISSING: Final = object()

PROGRESS_EVERY: Final = 1.0
"""Seconds between two ``node.progress`` events of one foreach node, at least: the items that
succeeded meanwhile are told together. A foreach node that ends within its first second tells
none (its ``node.succeeded`` carries every output), so short ones, and benchmarks, pay nothing."""
PROGRESS_BYTES: Final = 1024 * 1024
"""Bytes of item outputs (JSON, as the adapter measures them: ``TaskSucceeded.size``) past
which a ``node.progress`` goes at once, before its second is up: one event stays bounded."""


# Stimuli and instructions are made several times per node, so they are plain slotted
# dataclasses (frozen ones construct three times slower); nothing mutates them once made.

# -- stimuli: what happened ---------------------------------------------------------------


@dataclass(slots=True)
class Start:
    now: float


@dataclass(slots=True)
class TaskSucceeded:
    node_id: str
    item: int | None
    attempt: int
    output: JSON
    now: float
    size: int = 0  # the output's bytes of JSON, where the adapter knows them (node.progress)


@dataclass(slots=True)
class TaskFailed:
    node_id: str
    item: int | None
    attempt: int
    error: str
    now: float
    retryable: bool = True


@dataclass(slots=True)
class TaskLogged:
    node_id: str
    attempt: int
    level: str
    message: str
    now: float
    item: int | None = None  # the foreach item that logged it, as node.retrying names it


@dataclass(slots=True)
class ConditionEvaluated:
    node_id: str
    value: bool | None
    error: str | None
    now: float


WaitKey: TypeAlias = str | tuple[str, int | None, int]
"""A wait under way when a run resumes (``Run(sleeping=...)``): a sleep node by its id, or one
attempt of a sub-workflow node waiting on its child as ``(node, foreach item or None, attempt)``."""

TimerKey: TypeAlias = tuple[str | int | None, ...]
"""``(retry, node, item)``, ``(sleep, node)``, ``(node_timeout, node, item, attempt)``,
``(progress, node)``, ``(run_timeout,)``."""


@dataclass(slots=True)
class ItemsDone:
    """Items of a foreach node that succeeded before the run resumed (its ``node.progress``
    events told them), given in ``Run(items_done=...)``: the node starts with them done."""

    items: int
    """The node's number of items when they were done: a list that resolves to another length
    here is not the one they were items of, and every item runs."""
    outputs: dict[int, JSON]
    """Item index -> output."""
    size: int = 0
    """Their outputs' bytes of JSON as they came, counted toward the node's bound by the
    adapter (the scheduler does not use it)."""


@dataclass(slots=True)
class TimerFired:
    key: TimerKey
    now: float


@dataclass(slots=True)
class CancelRequested:
    now: float
    reason: str = "cancelled on request"


@dataclass(slots=True)
class TasksStopped:
    """What ``StopTasks`` asked for is done: the tasks it stopped came back (or were given up
    on), and what they logged was fed before this."""

    node_id: str | None
    now: float


Stimulus: TypeAlias = (
    Start
    | TaskSucceeded
    | TaskFailed
    | TaskLogged
    | ConditionEvaluated
    | TimerFired
    | CancelRequested
    | TasksStopped
)

# -- instructions: what to do -------------------------------------------------------------


@dataclass(slots=True)
class Emit:
    """A monitor event; the adapter adds seq, ids and engine, and publishes it."""

    type: str
    severity: Severity
    time: float
    node_id: str | None = None
    attempt: int | None = None
    data: JSONObject = field(default_factory=dict)


@dataclass(slots=True)
class RunTask:
    """Run one attempt of a Lua or sub-workflow node (one item of it, for foreach)."""

    node_id: str
    item: int | None
    attempt: int
    ctx: JSONObject
    inputs: JSON = None  # resolved inputs, for sub-workflow nodes
    timeout: float | None = None  # seconds left of the node's timeout: less, once resumed


@dataclass(slots=True)
class CancelTask:
    node_id: str
    item: int | None
    reason: str


@dataclass(slots=True)
class EvaluateCondition:
    node_id: str
    ctx: JSONObject


@dataclass(slots=True)
class StartTimer:
    key: TimerKey
    delay: float


@dataclass(slots=True)
class StopTasks:
    """Stop the running tasks of a node (``node_id``) or of the whole run (None), when and
    expressions included, and feed ``TasksStopped`` with the same ``node_id`` once they have
    come back, their lines first: the end they lead to (a foreach node failed by one of its
    items, a run ended by ``fail_fast``) waits for it, so that a stopped script's lines come
    before it. Only a run made with ``stop_first`` asks this."""

    node_id: str | None


@dataclass(slots=True)
class Finish:
    status: ExecutionStatus
    outputs: JSONObject
    error: str | None


Instruction: TypeAlias = (
    Emit | RunTask | CancelTask | EvaluateCondition | StartTimer | StopTasks | Finish
)


# -- state ------------------------------------------------------------------------------


class _Node:
    __slots__ = (
        "attempts",
        "done_items",
        "error",
        "finished_at",
        "item_attempts",
        "item_outputs",
        "items",
        "next_item",
        "output",
        "restored",
        "spec",
        "started_at",
        "status",
        "todo",
        "waiting",
    )

    def __init__(self, spec: NodeSpec) -> None:
        self.spec = spec
        self.status: NodeStatus = "pending"
        self.waiting = len(spec.depends_on)
        self.attempts = 0
        self.output: JSON = None
        self.error: str | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.restored = False
        self.items: list[JSON] | None = None
        self.item_outputs: list[JSON] = []
        self.item_attempts: list[int] = []
        self.next_item = 0
        self.done_items = 0
        # the items left to run of a foreach node that resumed with some done (None: all of
        # them, in order); ``next_item`` then counts in here
        self.todo: list[int] | None = None


class _Progress:
    """A foreach node's items that succeeded since its last ``node.progress``, and when the
    next one may go."""

    __slots__ = ("armed", "due", "pending", "size", "told")

    def __init__(self, due: float) -> None:
        self.due = due
        self.pending: list[int] = []
        self.size = 0
        self.armed = False  # a ("progress", node) timer is out
        self.told: int | None = None  # items done as the last node.progress said


@dataclass(slots=True)
class NodeRecord:
    status: NodeStatus
    output: JSON
    error: str | None
    attempts: int
    started_at: float | None
    finished_at: float | None


BROKEN_OUTPUTS_NAMED: Final = 5
"""Outputs a run's error names with why each could not be made; the rest it counts."""
BROKEN_OUTPUT_CHARS: Final = 300
"""Characters of why one output could not be made, in a run's error (a template is the
author's text, of any length)."""


def run_outputs(
    spec: WorkflowSpec, inputs: JSON, ctx: JSONObject, succeeded: Mapping[str, JSON]
) -> tuple[JSONObject, str | None]:
    """A run's outputs from the outputs of its nodes that ``succeeded``, and why those that
    could not be made were not, in the spec's order: the engine's end of a run and the
    orchestrator's (a run no engine had when it was cancelled or timed out) make the same
    ones."""
    if spec.outputs is None:
        return {
            node_id: succeeded[node_id]
            for node_id in spec.order
            if node_id in spec.sink_ids and node_id in succeeded
        }, None

    def lookup(node_id: str) -> JSON:
        return succeeded[node_id]  # KeyError: the node did not succeed

    out: JSONObject = {}
    broken: list[str] = []
    for name, template in spec.outputs.items():
        try:
            out[name] = templates.resolve(
                template, inputs=inputs, results=lookup, ctx=ctx, at=f"outputs.{name}"
            )
        except MissingPath as exc:
            out[name] = None
            if exc.root == "results":
                # a succeeded node's output without it: a typo or another shape; an input
                # left out is an optional one, null as it always was
                broken.append(str(exc))
        except TemplateError:
            out[name] = None  # a node the output names did not succeed: the run says why
    return out, _broken_outputs(broken)


def _broken_outputs(broken: list[str]) -> str | None:
    """Every output that could not be made, in one error of bounded length: an author who
    fixes the first should not find the next only on the next run."""
    if not broken:
        return None
    named = [
        why if len(why) <= BROKEN_OUTPUT_CHARS else why[: BROKEN_OUTPUT_CHARS - 3] + "..."
        for why in broken[:BROKEN_OUTPUTS_NAMED]
    ]
    more = len(broken) - len(named)
    return "; ".join(named) + (f"; and {more} more outputs could not be made" if more else "")


class Run:
    """One execution's scheduling state. Not thread-safe: one owner feeds it."""

    def __init__(
        self,
        spec: WorkflowSpec,
        inputs: JSON,
        *,
        ctx: JSONObject | None = None,
        completed: Mapping[str, JSON] | None = None,
        completed_attempts: Mapping[str, int] | None = None,
        ended: Mapping[str, tuple[str, str | None]] | None = None,
        retried: Mapping[tuple[str, int | None], int] | None = None,
        sleeping: Mapping[WaitKey, float] | None = None,
        started_at: float | None = None,
        items_done: Mapping[str, ItemsDone] | None = None,
        rand: Callable[[], float] = random.random,
        stop_first: bool = False,
    ) -> None:
        """``completed``: outputs of nodes that succeeded before (a resumed run); ``ended``:
        nodes that failed, were blocked or were skipped before, with their errors; ``retried``:
        attempts of a node (or a foreach item) that failed before, which its next attempt and
        its retry policy count on from; ``sleeping``: waits that had started before and not
        ended, with when they first started: sleep nodes, and the attempts of sub-workflow
        nodes (the next ones, after those ``retried``) that waited on their child;
        ``started_at``: when the run first started, if before; ``items_done``: the items foreach
        nodes that had not ended had done, which do not run again. Times are the stimuli's
        clock.

        ``stop_first``: an end the run comes to itself while tasks of it are out (a foreach
        node's, failed by one item while others run; the run's, by ``fail_fast``) waits for
        them to stop (``StopTasks``, answered by ``TasksStopped``), for an adapter whose
        stopped scripts come back with log lines; without it that end is at once."""
        self.spec = spec
        self.inputs = inputs
        self.ctx: JSONObject = {"workflow_id": spec.id, "version": spec.version, **(ctx or {})}
        self._rand = rand
        self._stop_first = stop_first
        # ends waiting for ``TasksStopped``: foreach nodes failed, with their errors, and the
        # run's own, with its status and reason
        self._failing: dict[str, str] = {}
        self._aborting: tuple[ExecutionStatus, str] | None = None
        self._last_ancestors: tuple[str, frozenset[str]] | None = None
        self.nodes: dict[str, _Node] = {n.id: _Node(n) for n in spec.nodes}
        self._completed = dict(completed or {})
        self._items_done = dict(items_done or {})
        self._progress: dict[str, _Progress] = {}  # foreach nodes begun -> what to tell
        self._completed_attempts = dict(completed_attempts or {})
        self._ended = dict(ended or {})
        self._retried = dict(retried or {})
        self._sleeping: dict[str, float] = {}
        # (node, item) -> (attempt, first start) of sub-workflow attempts that were waiting
        self._waits: dict[tuple[str, int | None], tuple[int, float]] = {}
        for key, since in (sleeping or {}).items():
            if isinstance(key, str):
                self._sleeping[key] = since
            else:
                node_id, item, attempt = key
                if (node_id, item) in self._waits:
                    raise ValueError(
                        f"resume names two waiting attempts of {node_id}"
                        + ("" if item is None else f" item {item}")
                    )
                self._waits[node_id, item] = (attempt, since)
        # a resumed sub-workflow node started when its first waiting attempt did
        self._waited_since: dict[str, float] = {}
        for (node_id, _), (_, since) in self._waits.items():
            self._waited_since[node_id] = min(since, self._waited_since.get(node_id, since))
        self._first_started_at = started_at
        unknown = (
            set(self._completed)
            | set(self._ended)
            | set(self._sleeping)
            | set(self._waited_since)
            | {node_id for node_id, _ in self._retried}
            | set(self._items_done)
        ) - set(self.nodes)
        if unknown:
            raise ValueError(f"resume names nodes not in {spec.ref}: {', '.join(sorted(unknown))}")
        wrong = sorted(
            f"{node_id} ({status})"
            for node_id, (status, _) in self._ended.items()
            if status not in RESUMED_ENDS or node_id in self._completed
        )
        if wrong:
            raise ValueError(f"resume names nodes as ended in ways they cannot: {', '.join(wrong)}")
        not_sleeps = [
            node_id
            for node_id in self._sleeping
            if self.nodes[node_id].spec.kind != "sleep"
            or node_id in self._completed
            or node_id in self._ended
        ]
        if not_sleeps:
            raise ValueError(
                f"resume names as sleeping nodes of {spec.ref} that are not unfinished sleeps: "
                + ", ".join(sorted(not_sleeps))
            )
        not_waits = sorted(
            f"{node_id}{'' if item is None else f'/{item}'} (attempt {attempt})"
            for (node_id, item), (attempt, _) in self._waits.items()
            if self.nodes[node_id].spec.kind != "workflow"
            or node_id in self._completed
            or node_id in self._ended
            or (item is None) != (self.nodes[node_id].spec.foreach is None)
            or (item is not None and item < 0)
            or attempt != self._retried.get((node_id, item), 0) + 1
        )
        if not_waits:
            raise ValueError(
                f"resume names as waiting what are not the next attempts of unfinished "
                f"sub-workflow nodes of {spec.ref} (or their foreach items): "
                + ", ".join(not_waits)
            )
        not_items = sorted(
            node_id
            for node_id, done in self._items_done.items()
            if self.nodes[node_id].spec.foreach is None
            or node_id in self._ended
            or done.items < 1
            or any(not 0 <= item < done.items for item in done.outputs)
            or any((node_id, item) in self._waits for item in done.outputs)
        )
        if not_items:
            raise ValueError(
                f"resume names as done items of {spec.ref} what are not items of unfinished "
                "foreach nodes (or are waiting): " + ", ".join(not_items)
            )
        self._ready: deque[tuple[str, int | None]] = deque()
        self._inflight: dict[tuple[str, int | None], int] = {}
        self._settled: deque[str] = deque()
        self._out: list[Instruction] = []
        self._terminal = 0
        self._now = 0.0
        self.status: ExecutionStatus = "queued"
        self.outputs: JSONObject = {}
        self.error: str | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None

    # -- public surface ---------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    @property
    def progress(self) -> int:
        """Percent of nodes ended, a running foreach node counting for its share of items
        done (one of two nodes, at 450 of 1000 items: 22%)."""
        done = Fraction(self._terminal)
        for node_id in self._progress:
            n = self.nodes[node_id]
            if n.status == "running" and n.items and n.done_items:
                done += Fraction(n.done_items, len(n.items))
        return int(100 * done) // len(self.nodes)

    def handle(self, *stimuli: Stimulus) -> list[Instruction]:
        for s in stimuli:
            self._now = s.now
            if self.finished and not isinstance(s, TaskLogged):
                continue  # late news about a run that already ended changes nothing
            match s:
                case Start():
                    self._start()
                # while the run waits for its stopped scripts to end it (fail_fast), what
                # tasks bring back changes nothing: they end cancelled with the run, as the
                # first failure cancels the rest; only their lines are kept
                case TaskSucceeded():
                    if self._aborting is None:
                        self._task_succeeded(s)
                case TaskFailed():
                    if self._aborting is None:
                        self._task_failed(s)
                case TaskLogged():
                    logged: JSONObject = {"level": s.level, "message": s.message}
                    if s.item is not None:
                        logged["item"] = s.item
                    self._emit("node.log", _log_severity(s.level), s.node_id, s.attempt, logged)
                case ConditionEvaluated():
                    self._condition(s)
                case TimerFired():
                    self._timer(s)
                case CancelRequested():
                    self._abort("cancelled", s.reason)
                case TasksStopped():
                    self._tasks_stopped(s)
        self._drain()
        out, self._out = self._out, []
        return out

    def result_of(self, requester: str, node_id: str) -> object:
        """The output ``requester`` may read as ``results.<node_id>``, or MISSING."""
        node = self.nodes.get(node_id)
        if node is None or node.status != "succeeded":
            return MISSING
        if node_id not in self.spec.deps.get(requester, ()) and node_id not in self._ancestors(
            requester
        ):
            return MISSING
        return node.output

    def readable_results(self, requester: str) -> list[str]:
        """The ids ``requester`` may read as results (its ancestors that succeeded), in the
        run's order: what a script's ``pairs(results)`` goes through."""
        ancestors = self._ancestors(requester)
        nodes = self.nodes
        return [n for n in self.spec.order if n in ancestors and nodes[n].status == "succeeded"]

    def _ancestors(self, requester: str) -> frozenset[str]:
        """``requester``'s ancestors, the last asked for kept: ``pairs(results)`` reads every
        one of them in turn, and each read asked again (a chain of n nodes that each iterate
        cost n³)."""
        last = self._last_ancestors
        if last is None or last[0] != requester:
            last = self._last_ancestors = (
                requester,
                frozenset(dag.ancestors(requester, self.spec.deps)),
            )
        return last[1]

    def record(self, node_id: str) -> NodeRecord:
        n = self.nodes[node_id]
        return NodeRecord(n.status, n.output, n.error, n.attempts, n.started_at, n.finished_at)

    def node_spec(self, node_id: str) -> NodeSpec:
        return self.nodes[node_id].spec

    def items_told(self, node_id: str) -> tuple[int, int] | None:
        """(items done, of how many) of a foreach node as its node.progress events told them,
        and every item once it succeeded; None before its first: what the orchestrator's node
        record shows as ``items_done`` and ``items_total``, folded from those events."""
        progress = self._progress.get(node_id)
        if progress is None or progress.told is None:
            return None
        n = self.nodes[node_id]
        assert n.items is not None
        total = len(n.items)
        return (total if n.status == "succeeded" else progress.told), total

    def resumed_items(self, node_id: str) -> bool:
        """Whether a foreach node started with items done before the run resumed."""
        return self.nodes[node_id].todo is not None

    def attempt_running(self, node_id: str, item: int | None) -> int | None:
        """The attempt of a task that is out (given by ``RunTask`` and not yet back), or None."""
        return self._inflight.get((node_id, item))

    # -- the machine --------------------------------------------------------------------------

    def _emit(
        self,
        type_: str,
        severity: Severity,
        node_id: str | None = None,
        attempt: int | None = None,
        data: JSONObject | None = None,
    ) -> None:
        self._out.append(Emit(type_, severity, self._now, node_id, attempt, data or {}))

    def _start(self) -> None:
        if self.status != "queued":
            return
        self.status = "running"
        # a resumed run is as old as its first start (never younger than now: clocks of two
        # machines may disagree a little)
        first = self._first_started_at
        self.started_at = self._now if first is None else min(first, self._now)
        resumed: list[JSON] = []
        resumed.extend(sorted(self._completed))
        self._emit(
            "execution.started",
            "info",
            data={"inputs": self.inputs, "resumed": resumed},
        )
        failed: tuple[str, str | None] | None = None
        for node_id in self.spec.order:
            if node_id in self._completed:
                n = self.nodes[node_id]
                n.restored = True
                n.attempts = self._completed_attempts.get(node_id, 1)
                self._settle(n, "succeeded", output=self._completed[node_id], quiet=True)
            elif node_id in self._ended:
                # counted for the trigger rules of its dependents as it ended, never run again
                n = self.nodes[node_id]
                n.restored = True
                status, error = self._ended[node_id]
                n.attempts = self._completed_attempts.get(node_id, 0)
                if status == "skipped":
                    self._settle(n, "skipped", data={"reason": error}, quiet=True)
                else:
                    self._settle(n, cast(NodeStatus, status), error=error, quiet=True)
                if status == "failed" and failed is None:
                    failed = (node_id, error)
        if failed is not None and self.spec.fail_fast:
            # the engine before stopped between the failure and its consequence
            node_id, error = failed
            self._abort("failed", f"node {node_id!r} failed and fail_fast is set: {error}")
            return
        if self.spec.timeout is not None:
            left = self.spec.timeout - (self._now - self.started_at)
            if left <= 0:
                # resumed past its deadline: nothing more may start
                self._abort(
                    "timed_out", f"execution timed out after {format_duration(self.spec.timeout)}"
                )
                return
            self._out.append(StartTimer(("run_timeout",), left))
        for node_id in self.spec.order:
            n = self.nodes[node_id]
            if n.status == "pending" and n.waiting == 0:
                self._settled_ready(n)

    def _settle(
        self,
        n: _Node,
        status: NodeStatus,
        *,
        output: JSON = None,
        error: str | None = None,
        quiet: bool = False,
        data: JSONObject | None = None,
    ) -> None:
        """Move a node to a terminal state and release its dependents."""
        self._transition(n, status)
        n.status = status
        n.output = output if status == "succeeded" else None
        n.error = error
        if status == "skipped" and data is not None:
            # why, as the execution JSON shows it for a skipped node (its event says "reason")
            reason = data.get("reason")
            n.error = reason if isinstance(reason, str) else None
        n.finished_at = self._now
        self._terminal += 1
        if not quiet:
            payload: JSONObject = dict(data or {})
            if status == "succeeded":
                payload["output"] = output
            if error is not None:
                payload["error"] = error
            if n.started_at is not None and status in ("succeeded", "failed", "cancelled"):
                # never negative: times are the wall clock's (a run's stamps must read as
                # times, and a resumed run's began on another engine's clock), and one set
                # back while the node ran would report it as taking negative time
                took = self._now - n.started_at
                payload["duration_ms"] = round(took * 1000, 3) if took > 0 else 0.0
            severity: Severity = (
                "error"
                if status == "failed"
                else ("warning" if status in ("blocked", "cancelled") else "info")
            )
            self._emit(f"node.{status}", severity, n.spec.id, n.attempts or None, payload)
        self._settled.append(n.spec.id)

    def _transition(self, n: _Node, to: NodeStatus) -> None:
        if to not in NODE_TRANSITIONS[n.status]:
            raise InvalidTransition(
                n.spec.id,
                n.status,
                to,
                f"attempts={n.attempts}, waiting on {n.waiting} dependencies",
            )

    def _drain(self) -> None:
        """Release dependents of settled nodes, then fill free slots; iterative, never recursive."""
        while True:
            while self._settled:
                node_id = self._settled.popleft()
                for dep_id in self.spec.dependents[node_id]:
                    d = self.nodes[dep_id]
                    d.waiting -= 1
                    if d.waiting == 0 and d.status == "pending":
                        self._settled_ready(d)
            self._pump()
            if not self._settled:
                break
        self._maybe_finish()

    def _settled_ready(self, n: _Node) -> None:
        """All dependencies are terminal: apply the trigger rule, then the condition."""
        if self._aborting is not None:
            return  # the run is ending: the node is cancelled with it, unreached
        verdict, reason = self._trigger_rule(n)
        if verdict == "skip":
            self._settle(n, "skipped", data={"reason": reason})
        elif verdict == "block":
            self._settle(n, "blocked", error=reason)
        elif n.spec.when is not None:
            self._out.append(EvaluateCondition(n.spec.id, self._ctx(n, None, 1)))
        else:
            self._begin(n)

    def _trigger_rule(self, n: _Node) -> tuple[str, str]:
        rule = n.spec.trigger_rule
        failed = skipped = None
        all_ok = True
        for d in n.spec.depends_on:
            st = self.nodes[d].status
            if st in ("failed", "blocked", "cancelled"):
                failed = failed or d
            elif st == "skipped":
                skipped = skipped or d
            if st != "succeeded":
                all_ok = False
        if rule == "all_success":
            if all_ok:
                return "run", ""
            if failed:
                return "block", f"upstream node {failed!r} did not succeed"
            return "skip", f"upstream node {skipped!r} was skipped"
        if rule == "none_failed":
            return ("block", f"upstream node {failed!r} did not succeed") if failed else ("run", "")
        if rule == "one_failed":
            return (
                ("run", "")
                if failed
                else ("skip", "trigger_rule one_failed: no upstream node failed")
            )
        return "run", ""  # all_done

    def _begin(self, n: _Node) -> None:
        spec = n.spec
        if spec.kind == "sleep":
            self._begin_sleep(n)
            return
        if spec.foreach is None:
            if self._retried:
                n.attempts = self._retried.get((spec.id, None), 0)
            self._ready.append((spec.id, None))
            return
        try:
            items = templates.resolve(
                spec.foreach, inputs=self.inputs, results=self._lookup, ctx=self._ctx(n, None, 1)
            )
        except TemplateError as exc:
            self._fail_node(n, f"foreach: {exc}")
            return
        if not isinstance(items, list):
            got = json_kind(items)
            self._fail_node(n, f"foreach must resolve to a list, got {got}")
            return
        n.items = items
        n.item_outputs = [None] * len(items)
        n.item_attempts = [0] * len(items)
        if self._retried:
            for (node_id, item), failed in self._retried.items():
                if node_id == spec.id and item is not None and item < len(items):
                    n.item_attempts[item] = failed
        if not items:
            self._emit("node.started", "info", spec.id, 1, {"items": 0})
            self._transition(n, "running")
            n.status, n.started_at, n.attempts = "running", self._first_start(n), 1
            self._settle(n, "succeeded", output=[])
            return
        self._progress[spec.id] = _Progress(self._now + PROGRESS_EVERY)
        done = self._items_done.get(spec.id)
        if done is not None and done.items == len(items):
            # resumed with these done elsewhere: in place, and never run again
            for item, output in done.outputs.items():
                n.item_outputs[item] = output
            n.done_items = len(done.outputs)
            n.todo = todo = [i for i in range(len(items)) if i not in done.outputs]
            if not todo:
                data: JSONObject = {"items": len(items), "resumed_items": n.done_items}
                self._emit("node.started", "info", spec.id, 1, data)
                self._transition(n, "running")
                n.status, n.started_at, n.attempts = "running", self._first_start(n), 1
                self._settle(n, "succeeded", output=n.item_outputs)
                return
            first = len(todo) if spec.concurrency is None else min(spec.concurrency, len(todo))
            for i in range(first):
                self._ready.append((spec.id, todo[i]))
            n.next_item = first
            return
        first = len(items) if spec.concurrency is None else min(spec.concurrency, len(items))
        for i in range(first):
            self._ready.append((spec.id, i))
        n.next_item = first

    def _begin_sleep(self, n: _Node) -> None:
        """Start a sleep's timer, or take up one that started before this run resumed: then
        only the rest of the sleep is left, and the node keeps its first start."""
        spec = n.spec
        sleep = spec.sleep or 0.0
        self._transition(n, "running")
        n.status = "running"
        n.attempts = 1
        since = self._sleeping.get(spec.id)
        if since is None:
            n.started_at = self._now
            self._emit("node.started", "info", spec.id, 1, {"sleep_s": sleep})
            self._out.append(StartTimer(("sleep", spec.id), sleep))
            return
        n.started_at = since = min(since, self._now)
        remaining = max(0.0, sleep - (self._now - since))
        self._emit(
            "node.started",
            "info",
            spec.id,
            1,
            {"sleep_s": sleep, "resumed": True, "remaining_s": round(remaining, 3)},
        )
        if remaining > 0:
            self._out.append(StartTimer(("sleep", spec.id), remaining))
        else:
            self._settle(n, "succeeded", output={"slept_s": sleep})

    def _pump(self) -> None:
        """Start queued tasks while the run has free slots."""
        # the hottest loop of a run: attribute lookups are hoisted into locals
        if self._aborting is not None:
            return  # the run is ending: nothing starts
        ready, inflight, nodes, out = self._ready, self._inflight, self.nodes, self._out
        limit, now, base_ctx, waits = self.spec.concurrency, self._now, self.ctx, self._waits
        failing = self._failing
        while ready and len(inflight) < limit:
            node_id, item = ready.popleft()
            n = nodes[node_id]
            status = n.status
            if status in NODE_TERMINAL or (failing and node_id in failing):
                continue
            spec = n.spec
            if item is None:
                n.attempts += 1
                attempt = n.attempts
                ctx: JSONObject = {**base_ctx, "node_id": node_id, "attempt": attempt}
            else:
                n.item_attempts[item] += 1
                attempt = n.item_attempts[item]
                if attempt > n.attempts:
                    n.attempts = attempt
                ctx = self._ctx(n, item, attempt)
            if status == "pending":
                n.status = "running"  # pending -> running is always allowed: no table lookup
                n.started_at = self._first_start(n) if waits else now
                data: JSONObject = {"items": len(n.items)} if n.items is not None else {}
                if n.todo is not None:
                    data["resumed_items"] = n.done_items  # done before the run came here
                out.append(Emit("node.started", "info", now, node_id, attempt, data))
            elif item is None:
                out.append(Emit("node.started", "info", now, node_id, attempt, {"retry": True}))
            elif attempt > 1:
                # an item's retry: each node.retrying is followed by its node.started
                retry: JSONObject = {"retry": True, "item": item}
                out.append(Emit("node.started", "info", now, node_id, attempt, retry))
            inputs: JSON = None
            if spec.kind == "workflow":
                inputs = {}  # a child without ``inputs:`` gets none, as a run triggered bare
                if spec.inputs is not None:
                    try:
                        inputs = templates.resolve(
                            spec.inputs,
                            inputs=self.inputs,
                            results=self._lookup,
                            ctx=ctx,
                            at="inputs",  # its error names the key: inputs.v: template ...
                        )
                    except TemplateError as exc:
                        # a foreach item's inputs read its ctx.item: which item, as a failed
                        # item's error says
                        self._fail_node(n, ("" if item is None else f"item {item}: ") + str(exc))
                        continue
            inflight[(node_id, item)] = attempt
            timeout = spec.timeout
            if timeout is not None and waits:
                waited = waits.get((node_id, item))
                if waited is not None and waited[0] == attempt:
                    # the attempt takes up the child it waited on before the run resumed: its
                    # timeout counts from its first start (never from later than now: clocks of
                    # two machines may disagree a little), as if the run had stayed put
                    left = timeout - (now - min(waited[1], now))
                    if left <= 0:
                        # past its end already: it fails as its timer would have failed it
                        error = f"timed out after {format_duration(timeout)}"
                        self._task_failed(TaskFailed(node_id, item, attempt, error, now))
                        continue
                    timeout = left
            out.append(RunTask(node_id, item, attempt, ctx, inputs, timeout))
            if timeout is not None:
                out.append(StartTimer(("node_timeout", node_id, item, attempt), timeout))

    def _first_start(self, n: _Node) -> float:
        """When a node starting now started: now, or for a sub-workflow node that waited on its
        child before the run resumed, when it first did (never later than now)."""
        since = self._waited_since.get(n.spec.id)
        return self._now if since is None else min(since, self._now)

    def _ctx(self, n: _Node, item: int | None, attempt: int) -> JSONObject:
        ctx: JSONObject = {**self.ctx, "node_id": n.spec.id, "attempt": attempt}
        if item is not None and n.items is not None:
            ctx["item"] = n.items[item]
            ctx["index"] = item
        return ctx

    def _lookup(self, node_id: str) -> JSON:
        n = self.nodes.get(node_id)
        if n is None or n.status != "succeeded":
            raise KeyError(node_id)
        return n.output

    def _task_succeeded(self, s: TaskSucceeded) -> None:
        key = (s.node_id, s.item)
        if self._inflight.get(key) != s.attempt:
            return  # a stale answer: the attempt was timed out or cancelled already
        del self._inflight[key]
        if self._failing and s.node_id in self._failing:
            return  # an item of a node failed already: its end is on its way
        n = self.nodes[s.node_id]
        if s.item is None:
            self._settle(n, "succeeded", output=s.output)
            return
        items = n.items
        assert items is not None
        n.item_outputs[s.item] = s.output
        n.done_items += 1
        todo = n.todo
        if todo is None:
            if n.next_item < len(items):
                self._ready.append((n.spec.id, n.next_item))
                n.next_item += 1
        elif n.next_item < len(todo):
            self._ready.append((n.spec.id, todo[n.next_item]))
            n.next_item += 1
        if n.done_items == len(items):
            self._settle(n, "succeeded", output=n.item_outputs)  # it tells every output
            return
        # told in a node.progress at most once a PROGRESS_EVERY (the first a second after the
        # node started), so a run that moves elsewhere need not run it again
        progress = self._progress[n.spec.id]
        progress.pending.append(s.item)
        progress.size += s.size
        if progress.size >= PROGRESS_BYTES:
            self._tell_progress(n, progress)
        elif not progress.armed:
            progress.armed = True
            delay = progress.due - self._now
            self._out.append(StartTimer(("progress", n.spec.id), delay if delay > 0 else 0.0))

    def _progress_due(self, n: _Node) -> None:
        """A node's progress timer fired: tell what it holds, unless an early one (past
        ``PROGRESS_BYTES``) moved its time on."""
        progress = self._progress[n.spec.id]
        progress.armed = False
        if not progress.pending or (self._failing and n.spec.id in self._failing):
            return
        if self._now < progress.due:
            progress.armed = True
            self._out.append(StartTimer(("progress", n.spec.id), progress.due - self._now))
            return
        self._tell_progress(n, progress)

    def _tell_progress(self, n: _Node, progress: _Progress) -> None:
        """``node.progress``: ``done`` items of ``items`` have succeeded, and ``outputs`` are
        those that did since the node's last one, by index (JSON keys are text)."""
        assert n.items is not None
        outputs = n.item_outputs
        data: JSONObject = {
            "done": n.done_items,
            "items": len(n.items),
            "outputs": {str(item): outputs[item] for item in sorted(progress.pending)},
        }
        progress.pending = []
        progress.size = 0
        progress.due = self._now + PROGRESS_EVERY
        progress.told = n.done_items
        # debug: a checkpoint, not a change of state, and it carries outputs in bulk; the
        # node's started and end events tell its story at info
        self._emit("node.progress", "debug", n.spec.id, n.attempts or None, data)

    def _task_failed(self, s: TaskFailed) -> None:
        key = (s.node_id, s.item)
        if self._inflight.get(key) != s.attempt:
            return
        del self._inflight[key]
        if self._failing and s.node_id in self._failing:
            return
        n = self.nodes[s.node_id]
        policy = n.spec.retry
        if s.retryable and s.attempt < policy.max_attempts:
            delay = policy.delay_before(s.attempt + 1, self._rand())
            data: JSONObject = {
                "error": s.error,
                "next_attempt": s.attempt + 1,
                "delay_s": round(delay, 3),
            }
            if s.item is not None:
                data["item"] = s.item
            self._emit("node.retrying", "warning", s.node_id, s.attempt, data)
            self._out.append(StartTimer(("retry", s.node_id, s.item), delay))
            return
        where = f"item {s.item}: " if s.item is not None else ""
        self._fail_node(n, where + s.error)

    def _fail_node(self, n: _Node, error: str) -> None:
        node_id = n.spec.id
        if self._stop_first and any(k[0] == node_id for k in self._inflight):
            # other items of it still run: its end waits for them to stop, and with fail_fast
            # the run's end (which tells it) waits for every task of the run
            self._failing[node_id] = error
            if self.spec.fail_fast:
                self._abort_when_stopped(
                    "failed", f"node {node_id!r} failed and fail_fast is set: {error}"
                )
            else:
                self._out.append(StopTasks(node_id))
            return
        self._fail_now(n, error)

    def _fail_now(self, n: _Node, error: str) -> None:
        for key in [k for k in self._inflight if k[0] == n.spec.id]:
            del self._inflight[key]
            self._out.append(CancelTask(key[0], key[1], "another item of this node failed"))
        self._settle(n, "failed", error=error)
        if self.spec.fail_fast:
            self._abort_when_stopped(
                "failed", f"node {n.spec.id!r} failed and fail_fast is set: {error}"
            )

    def _abort_when_stopped(self, status: ExecutionStatus, reason: str) -> None:
        """End the run as ``_abort`` does, once its running tasks have stopped (``stop_first``):
        until then nothing starts, and the run does not end by itself."""
        if self.finished or self._aborting is not None:
            return
        if not self._stop_first:
            self._abort(status, reason)
            return
        self._aborting = (status, reason)
        self._ready.clear()
        self._out.append(StopTasks(None))

    def _tasks_stopped(self, s: TasksStopped) -> None:
        if s.node_id is None:
            if self._aborting is not None:
                self._abort(*self._aborting)
            return
        error = self._failing.pop(s.node_id, None)
        if error is not None:
            self._fail_now(self.nodes[s.node_id], error)

    def _condition(self, s: ConditionEvaluated) -> None:
        n = self.nodes[s.node_id]
        if n.status != "pending" or n.waiting != 0 or self._aborting is not None:
            return  # ending with the run, if it is ending: it never starts
        if s.error is not None:
            self._fail_node(n, f"when: {s.error}")
        elif not s.value:
            self._settle(n, "skipped", data={"reason": f"when {n.spec.when!r} is false"})
        else:
            self._begin(n)

    def _timer(self, s: TimerFired) -> None:
        kind = s.key[0]
        if kind == "run_timeout":
            assert self.spec.timeout is not None
            self._abort(
                "timed_out", f"execution timed out after {format_duration(self.spec.timeout)}"
            )
            return
        node_id = str(s.key[1])
        n = self.nodes.get(node_id)
        if n is None or n.status != "running" or self._aborting is not None:
            return  # a sleep ending while the run waits to end is cancelled with it
        if kind == "sleep":
            self._settle(n, "succeeded", output={"slept_s": n.spec.sleep})
        elif kind == "progress":
            self._progress_due(n)
        elif kind == "retry":
            item = s.key[2]
            assert item is None or isinstance(item, int)
            self._ready.append((node_id, item))
        elif kind == "node_timeout":
            item, attempt = s.key[2], s.key[3]
            assert (item is None or isinstance(item, int)) and isinstance(attempt, int)
            if self._inflight.get((node_id, item)) == attempt:
                timeout = n.spec.timeout or 0.0
                self._out.append(CancelTask(node_id, item, "node timeout"))
                self._task_failed(
                    TaskFailed(
                        node_id, item, attempt, f"timed out after {format_duration(timeout)}", s.now
                    )
                )

    def _abort(self, status: ExecutionStatus, reason: str) -> None:
        """End the run now: running tasks are cancelled, nothing pending starts."""
        if self.finished:
            return
        self._aborting = None
        for node_id, item in list(self._inflight):
            self._out.append(CancelTask(node_id, item, reason))
        self._inflight.clear()
        self._ready.clear()
        failing, self._failing = self._failing, {}
        unreached = 0
        for node_id in self.spec.order:
            n = self.nodes[node_id]
            if n.status == "running":
                error = failing.get(node_id)
                if error is not None:
                    self._settle(n, "failed", error=error)  # it failed before the run ended
                else:
                    self._settle(n, "cancelled", error=reason)
            elif n.status == "pending":
                # no event each (a run of thousands would end in thousands of them): the
                # run's end counts them, and the timeline's fold ends them with it
                self._settle(n, "cancelled", error=reason, quiet=True)
                unreached += 1
        self._finish(status, reason, unreached)

    def _maybe_finish(self) -> None:
        if (
            self.finished
            or self._terminal < len(self.nodes)
            or self.status != "running"
            or self._aborting is not None
        ):
            return
        failed = [n for n in self.nodes.values() if n.status in ("failed", "blocked", "cancelled")]
        if not failed:
            self._finish("succeeded", None)
            return
        sink_ok = any(self.nodes[s].status == "succeeded" for s in self.spec.sink_ids)
        first = next((n for n in failed if n.status == "failed"), failed[0])
        summary = f"node {first.spec.id!r} {first.status}: {first.error}"
        if len(failed) > 1:
            summary += (
                f" (and {_others(first.status, [n.status for n in failed if n is not first])})"
            )
        self._finish("partial" if sink_ok else "failed", summary)

    def _finish(self, status: ExecutionStatus, error: str | None, unreached: int = 0) -> None:
        self.outputs, broken = self._outputs()
        if broken is not None and status == "succeeded":
            # every node did its part, but the output the spec promises is not there: a
            # typo in the template, or a node that returned another shape than expected
            status, error = "failed", broken
        self.status = status
        self.error = error
        self.finished_at = self._now
        data: JSONObject = {"outputs": self.outputs}
        if error is not None:
            data["error"] = error
        if unreached:
            data["unreached"] = unreached
        if self.started_at is not None:
            took = self._now - self.started_at
            data["duration_ms"] = round(took * 1000, 3) if took > 0 else 0.0  # as a node's
        severity: Severity = (
            "info"
            if status == "succeeded"
            else ("warning" if status in ("partial", "cancelled") else "error")
        )
        self._emit(f"execution.{status}", severity, data=data)
        self._out.append(Finish(status, self.outputs, error))

    def _outputs(self) -> tuple[JSONObject, str | None]:
        """The run's outputs, and why those that could not be made were not."""
        succeeded = {
            node_id: n.output for node_id, n in self.nodes.items() if n.status == "succeeded"
        }
        return run_outputs(self.spec, self.inputs, self.ctx, succeeded)

    # -- invariants -------------------------------------------------------------------------

    def validate_state(self) -> None:
        """Check every invariant; tests call this after each step."""
        problems: list[str] = []
        terminal = 0
        for node_id, n in self.nodes.items():
            unfinished = sum(
                1 for d in n.spec.depends_on if self.nodes[d].status not in NODE_TERMINAL
            )
            if n.waiting != unfinished:
                problems.append(f"{node_id}: waiting={n.waiting} but {unfinished} deps unfinished")
            if n.status in NODE_TERMINAL:
                terminal += 1
                if n.finished_at is None:
                    problems.append(f"{node_id}: {n.status} without finished_at")
            if n.status == "running":
                if n.waiting and not self.finished:
                    problems.append(f"{node_id}: running before its dependencies finished")
                if n.started_at is None:
                    problems.append(f"{node_id}: running without started_at")
            if n.restored and n.started_at is not None:
                problems.append(f"{node_id}: ended before the run resumed, and started again")
            if n.status == "succeeded" and not n.restored and n.started_at is None:
                problems.append(f"{node_id}: succeeded without starting")
            since = self._sleeping.get(node_id)
            if since is not None and n.started_at is not None and n.started_at > since:
                problems.append(f"{node_id}: a resumed sleep started again at {n.started_at}")
            since = self._waited_since.get(node_id)
            if since is not None and n.started_at is not None and n.started_at > since:
                problems.append(
                    f"{node_id}: a resumed sub-workflow node started again at {n.started_at}"
                )
        for node_id in self._failing:
            if self.nodes[node_id].status != "running":
                problems.append(f"{node_id}: failing but {self.nodes[node_id].status}")
        if self.finished and (self._failing or self._aborting is not None):
            problems.append("finished with an end still waiting for tasks to stop")
        for node_id, _item in self._inflight:
            if self.nodes[node_id].status != "running":
                problems.append(
                    f"{node_id}: task in flight but node is {self.nodes[node_id].status}"
                )
        if terminal != self._terminal:
            problems.append(f"terminal count {self._terminal} != {terminal}")
        if len(self._inflight) > self.spec.concurrency:
            problems.append(
                f"{len(self._inflight)} tasks in flight over concurrency {self.spec.concurrency}"
            )
        if self.finished and terminal != len(self.nodes):
            problems.append("finished with non-terminal nodes")
        if self.finished and self._inflight:
            problems.append("finished with tasks in flight")
        if problems:
            raise AssertionError(f"{self.spec.ref}: " + "; ".join(problems))


def _log_severity(level: str) -> Severity:
    return {
        "debug": "debug",
        "warn": "warning",
        "warning": "warning",
        "error": "error",
        "critical": "critical",
    }.get(level, "info")  # type: ignore[return-value]


def _others(first: str, statuses: list[NodeStatus]) -> str:
    """The other nodes that did not succeed, by how they ended ("1 more failed, 2 blocked"):
    a bare count read as that many more failures when most were only blocked by the first."""
    counts = [(status, statuses.count(status)) for status in ("failed", "blocked", "cancelled")]
    return ", ".join(
        f"{count} more {status}" if status == first else f"{count} {status}"
        for status, count in counts
        if count
    )
