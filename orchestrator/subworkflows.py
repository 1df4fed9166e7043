"""Sub-workflows: a node that runs another workflow as a child execution.

A sub-workflow node's engine announces it with ``subworkflow.requested`` on the parent's stream
and waits. The coordinator starts the child like any execution (stored first, routed by the
ring, so possibly on another engine), keyed by the parent node's item and attempt, and tells
the parent's engine which child it got; when the child ends, ``ResolveSubWorkflow`` ends the
node with the child's outputs or its status and error.

Nothing here needs to survive a crash in memory: the parent/child links are in the store. A
parent resumed on another engine asks again for the same item and attempt and finds the child
it already has, running or finished, instead of starting a second one. A final answer its
engine did not take (frozen, overloaded) is sent again while the parent is on a stream and has
not ended: the parent asks again only when it resumes, so nothing else would. Cancelling runs down
the tree: a parent that ends, or whose waiting node fails, times out or retries, cancels the
children it no longer waits for, and they cancel theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import grpc

from engine import wire
from engine.api import dagengine_pb2 as pb
from engine.core.errors import InputsError, SpecError
from engine.core.states import EXECUTION_TERMINAL, NODE_TERMINAL
from engine.core.values import JSON, JSONObject
from orchestrator.dispatching import RunTicket
from orchestrator.errors import OrchestratorError, StoreUnavailable, store_backoff
from orchestrator.fleet import EngineLink
from orchestrator.store import ChildLink, Store, cancel_reason

log = logging.getLogger(__name__)

_AnswerKey = tuple[str, str, int | None, int]
"""(parent execution, node, item, attempt): whose answers go in order."""

_ENDED_REMEMBERED = 10_000
"""Recently ended executions kept in mind: enough to cover children whose parent ended while
they were being stored (a race of milliseconds)."""

RESOLVE_TIMEOUT = 10.0
"""Seconds an engine gets to take a sub-workflow answer."""

ANSWER_BACKOFF = (0.5, 10.0)
"""Seconds before sending again a final answer its engine did not take: the first wait,
doubling up to the second (short: the parent waits on it, holding an engine slot)."""

_SEND_AGAIN: Final = frozenset(
    {
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)
"""Codes of an answer that did not get through (an engine frozen, overloaded, restarting), as
opposed to one it refused: FAILED_PRECONDITION (its node no longer waits, or was answered
already) and NOT_FOUND (the run is not there) say the answer can change nothing there."""


def answer_backoff(tries: int) -> float:
    """Seconds to wait after ``tries`` final answers in a row not taken (1 or more)."""
    first, most = ANSWER_BACKOFF
    return float(min(most, first * 2 ** min(tries - 1, 32)))


@dataclass(frozen=True, slots=True)
class ChildRequest:
    """A parent node (one item, one attempt) asking for a child execution."""

    parent_execution_id: str
    node_id: str
    item: int | None
    attempt: int
    workflow_id: str
    version: str
    """The range the parent's spec names."""
    inputs: JSON
    parent_workflow_id: str = ""
    """From outside callers: the parent's workflow, which must be the parent execution's."""


@dataclass(frozen=True, slots=True)
class ChildStarted:
    execution_id: str
    version: str
    created: bool
    """False: the parent node already had this child (a resumed parent asking again)."""


Track = Callable[[str], None]
StartChild = Callable[[ChildRequest, Track], Awaitable[ChildStarted]]
"""Store (or find) the child; calls ``track`` with its id before it can be dispatched."""
CancelExecution = Callable[[str, str], Awaitable[object]]


class ParentLinks(Protocol):
    def link_of(self, execution_id: str) -> EngineLink | None:
        """The engine whose stream carries this execution now, if any."""


def _parent_ended(event: JSONObject) -> str:
    """Why a child is cancelled as its parent's run ends (``event``, its end)."""
    kind = str(event.get("type", ""))
    why = f"its parent execution ended {kind.partition('.')[2] or ''}".rstrip()
    data = event.get("data")
    error = data.get("error") if isinstance(data, dict) else None
    return cancel_reason(f"{why}: {error}" if isinstance(error, str) and error else why)


class SubWorkflows:
    """Starts, re-attaches, resolves and cancels child executions."""

    def __init__(
        self,
        store: Store,
        links: ParentLinks,
        *,
        start_child: StartChild,
        cancel: CancelExecution,
        has_subworkflows: Callable[[str, str], bool],
    ) -> None:
        self._store = store
        self._links = links
        self._start_child = start_child
        self._cancel = cancel
        self._has_subworkflows = has_subworkflows
        self._live: dict[str, ChildLink] = {}  # child execution id -> its parent node
        self._by_parent: dict[str, set[str]] = {}  # parent execution id -> live children
        # executions that ended lately, with why their children are cancelled
        self._ended: OrderedDict[str, str] = OrderedDict()
        self._cancelled: set[str] = set()  # live children a cancel was sent for already
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        # one parent node attempt's answers in order: the announcement before the result;
        # each with how many calls hold or wait for it, so the last one out removes it
        self._locks: dict[_AnswerKey, tuple[asyncio.Lock, int]] = {}

    async def start(self) -> None:
        """Take up the links of children a previous run left unfinished."""
        for link in await self._store.live_children():
            self._track(link)
            parent = await self._store.lineage(link.parent_execution_id)
            if parent is None or parent.status in EXECUTION_TERMINAL:
                # the parent ended while its child was still queued or running
                self._spawn(self._cancel_child(link.execution_id, "its parent execution ended"))

    async def close(self) -> None:
        # answers being sent again end here: the parent asks again when the next start
        # resumes it, and a task spawned past this point would be left pending
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- what the dispatcher and the facade report -------------------------------------------

    def on_events(self, ticket: RunTicket, link: EngineLink, events: list[JSONObject]) -> None:
        """Events of a run just stored: requests for children, and ends of waiting nodes."""
        if not self._has_subworkflows(ticket.workflow_id, ticket.version):
            return
        parent_id = ticket.execution_id
        for event in events:
            kind = event["type"]
            if kind == "subworkflow.requested":
                self._spawn(self._requested(parent_id, event))
            elif kind in ("node.retrying", "node.failed", "node.cancelled"):
                self._node_ended(parent_id, event)

    def finished(self, execution_id: str, event: JSONObject) -> None:
        """An execution ended: resolve the parent node waiting on it, cancel its children."""
        self._cancelled.discard(execution_id)
        link = self._untrack(execution_id)
        if link is not None and link.node_id:
            kind = str(event.get("type", ""))
            data = event.get("data")
            data = data if isinstance(data, dict) else {}
            error = data.get("error")
            self._spawn(
                self._resolve(
                    link,
                    execution_id,
                    str(event.get("version") or ""),
                    kind.split(".", 1)[1] if "." in kind else "failed",
                    data.get("outputs"),
                    error if isinstance(error, str) else None,
                )
            )
        # the parent's own end says why (a cancel's reason, a timeout): a run the orchestrator
        # ended itself tells its nodes' ends to no one else
        why = _parent_ended(event)
        for child in list(self._by_parent.get(execution_id, ())):
            self._spawn(self._cancel_child(child, why))
        # a child being stored for this run right now is cancelled as soon as it is tracked
        self._ended[execution_id] = why
        if len(self._ended) > _ENDED_REMEMBERED:
            self._ended.popitem(last=False)

    # -- inside ------------------------------------------------------------------------------

    def _track(self, link: ChildLink) -> None:
        self._live[link.execution_id] = link
        self._by_parent.setdefault(link.parent_execution_id, set()).add(link.execution_id)
        why = self._ended.get(link.parent_execution_id)
        if why is not None:
            self._spawn(self._cancel_child(link.execution_id, why))

    def _untrack(self, execution_id: str) -> ChildLink | None:
        link = self._live.pop(execution_id, None)
        if link is not None:
            siblings = self._by_parent.get(link.parent_execution_id)
            if siblings is not None:
                siblings.discard(execution_id)
                if not siblings:
                    del self._by_parent[link.parent_execution_id]
        return link

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._closed:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[None]) -> None:
        """A spawned call is over: one that raised what it does not expect (a channel closed
        under it as its engine was dropped) is logged here, not left for the garbage collector
        to report as never retrieved, long after and without its context."""
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("a sub-workflow call failed: %s", exc, exc_info=exc)

    def _node_ended(self, parent_id: str, event: JSONObject) -> None:
        """A waiting node gave up on an attempt (failed, timed out, retrying, cancelled): the
        children of that attempt are no longer waited for."""
        node_id = event.get("node_id")
        data = event.get("data")
        data = data if isinstance(data, dict) else {}
        item = data.get("item")
        retrying = event["type"] == "node.retrying"
        # the child says why, as its parent's node was told (a cancel's reason, a timeout)
        why = data.get("error")
        reason = f"its parent node {node_id!r} " + {
            "node.retrying": "is retrying",
            "node.failed": "failed",
            "node.cancelled": "was cancelled",
        }.get(str(event["type"]), "ended")
        if isinstance(why, str) and why:
            reason += f": {why}"
        for child in list(self._by_parent.get(parent_id, ())):
            link = self._live.get(child)
            if link is None or link.node_id != node_id:
                continue
            if retrying and (link.item != item or link.attempt != event.get("attempt")):
                continue
            # a parent node's error may be as long as a node's error is, past what a cancel
            # takes: refused, the child ran on until its parent's run ended
            self._spawn(self._cancel_child(child, cancel_reason(reason)))

    async def _cancel_child(self, child_id: str, reason: str) -> None:
        # once is enough: its node ending and then its parent would each ask again
        if child_id in self._cancelled:
            return
        if child_id in self._live:
            self._cancelled.add(child_id)
        try:
            await self._cancel(child_id, reason)
        except OrchestratorError as exc:
            self._cancelled.discard(child_id)  # not done: the next occasion asks again
            log.warning("cancel of sub-workflow execution %s failed: %s", child_id, exc)

    async def _requested(self, parent_id: str, event: JSONObject) -> None:
        data = event.get("data")
        data = data if isinstance(data, dict) else {}
        item = data.get("item")
        attempt = event.get("attempt")
        request = ChildRequest(
            parent_execution_id=parent_id,
            node_id=str(event.get("node_id") or ""),
            item=item if isinstance(item, int) else None,
            attempt=attempt if isinstance(attempt, int) else 1,
            workflow_id=str(data.get("workflow_id") or ""),
            version=str(data.get("version") or "latest"),
            inputs=data.get("inputs"),
        )
        refused = 0
        while True:
            try:
                await self.execute(request)
                return
            except StoreUnavailable as exc:
                # the parent node waits on, as for a running child
                if parent_id in self._ended:
                    return
                refused += 1
                delay = store_backoff(refused)
                log.warning(
                    "sub-workflow for %s node %s waits %s s: %s",
                    parent_id,
                    request.node_id,
                    delay,
                    exc.message,
                )
                await asyncio.sleep(delay)
            except (OrchestratorError, InputsError, SpecError) as exc:
                # the child cannot run (no such workflow, bad inputs, depth limit, a stored
                # version today's checks refuse): the node
                # fails with why, without retries (its engine takes an answer without a child
                # as final: each retry would be refused the same way)
                await self._deliver(
                    ChildLink("", parent_id, request.node_id, request.item, request.attempt),
                    error=f"sub-workflow {request.workflow_id}: {exc}",
                )
                return
            except Exception as exc:  # from inside the store or the registry: keep serving
                log.exception("starting a sub-workflow for %s node %s failed", parent_id, request)
                await self._deliver(
                    ChildLink("", parent_id, request.node_id, request.item, request.attempt),
                    error=f"sub-workflow {request.workflow_id}: {exc}",
                )
                return

    async def execute(self, request: ChildRequest) -> ChildStarted:
        """Start the child of a parent node's item and attempt, or find the one it has, and
        tell the parent's engine. Raises ``OrchestratorError`` when it cannot start."""
        key = (request.parent_execution_id, request.node_id, request.item, request.attempt)
        async with self._in_order(key):
            started = await self._start_child(
                request,
                lambda child_id: self._track(
                    ChildLink(
                        child_id,
                        request.parent_execution_id,
                        request.node_id,
                        request.item,
                        request.attempt,
                    )
                ),
            )
            link = ChildLink(
                started.execution_id,
                request.parent_execution_id,
                request.node_id,
                request.item,
                request.attempt,
            )
            if not started.created:
                doc = await self._store.get_execution(started.execution_id)
                if doc is not None and doc["status"] in EXECUTION_TERMINAL:
                    # found again after a failover and already over: answer at once, from a
                    # task of its own, as it may have to be sent again (it takes this lock)
                    self._untrack(started.execution_id)
                    self._spawn(
                        self._deliver(
                            link,
                            child_version=started.version,
                            child_status=str(doc["status"]),
                            output=doc["outputs"],
                            error=None if doc["error"] is None else str(doc["error"]),
                        )
                    )
                    return started
            if request.node_id:
                # the parent's timeline records subworkflow.started with the child's id
                refused = await self._answer(link, child_version=started.version, announce=True)
                if refused == grpc.StatusCode.FAILED_PRECONDITION:
                    self._spawn(self._unless_waited(request, started.execution_id))
        return started

    async def _unless_waited(self, request: ChildRequest, child_id: str) -> None:
        """The parent's engine took no announcement of this child: cancel it if its node
        attempt is over (timed out, failed or retried while the child was being stored, too
        late for ``_node_ended`` to see it), as the parent's stored events tell. The engine
        says the same of an attempt that has not asked yet (a foreach item queued behind
        others, a retry's delay, a run that moved): that one will ask, and find this child."""
        try:
            events = await self._store.events(request.parent_execution_id)
        except OrchestratorError as exc:
            log.warning("cannot tell whether child %s is still waited for: %s", child_id, exc)
            return
        state = node_attempts(events, request.node_id)
        if state.ended is None and state.attempt(request.item) <= request.attempt:
            return
        where = f"{request.node_id!r}" + (
            f" item {request.item}" if request.item is not None else ""
        )
        await self._cancel_child(
            child_id, f"its parent node {where} attempt {request.attempt} no longer waits for it"
        )

    async def _resolve(
        self,
        link: ChildLink,
        child_id: str,
        version: str,
        status: str,
        outputs: JSON,
        error: str | None,
    ) -> None:
        await self._deliver(
            ChildLink(child_id, link.parent_execution_id, link.node_id, link.item, link.attempt),
            child_version=version,
            child_status=status,
            output=outputs,
            error=error,
        )

    async def _deliver(
        self,
        link: ChildLink,
        *,
        child_version: str = "",
        child_status: str = "",
        output: JSON = None,
        error: str | None = None,
    ) -> None:
        """Send a final answer until the parent's engine takes it or refuses it (its node
        no longer waits), or the parent ends or leaves every stream (resumed, it asks again
        and finds its child over). Sent once only, an answer its engine missed (frozen past
        ``RESOLVE_TIMEOUT``, too busy) left the node waiting for good while the stream lived.
        Each try goes to the engine that has the parent then: one it moved to gets it there."""
        key = (link.parent_execution_id, link.node_id or "", link.item, link.attempt)
        tries = 0
        while link.parent_execution_id not in self._ended:
            # the lock is held for one try at a time: after the announcement, if that is still
            # on its way, and not over the waits, so a resumed parent's request for this
            # attempt is not held up behind an engine that does not answer
            async with self._in_order(key):
                code = await self._answer(
                    link,
                    child_version=child_version,
                    child_status=child_status,
                    output=output,
                    error=error,
                )
            if code not in _SEND_AGAIN:
                return
            tries += 1
            delay = answer_backoff(tries)
            log.warning(
                "sub-workflow answer for %s node %s sent again in %s s (try %d not taken)",
                link.parent_execution_id,
                link.node_id,
                delay,
                tries,
            )
            await asyncio.sleep(delay)

    @contextlib.asynccontextmanager
    async def _in_order(self, key: _AnswerKey) -> AsyncIterator[None]:
        """Hold ``key``'s lock. Not every call is followed by one that removes it (a child
        that could not start, one found already over, one of no node): the last call
        holding or waiting for it does."""
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    async def _answer(
        self,
        link: ChildLink,
        *,
        child_version: str = "",
        child_status: str = "",
        output: JSON = None,
        error: str | None = None,
        announce: bool = False,
    ) -> grpc.StatusCode | None:
        """Tell the parent's engine; a parent not on any stream now asks again when it resumes,
        and an answer its node no longer waits for is refused by the engine (the code it
        refused with is returned)."""
        engine = self._links.link_of(link.parent_execution_id)
        if engine is None:
            return None
        request = pb.ResolveSubWorkflowRequest(
            execution_id=link.parent_execution_id,
            node_id=link.node_id or "",
            attempt=link.attempt,
            child_execution_id=link.execution_id,
            child_version=child_version,
            child_status=child_status,
        )
        if link.item is not None:
            request.item = link.item
        if not announce:
            if child_status == "succeeded":
                request.output_json = wire.dumps(output if output is not None else {})
            else:
                request.error = _failure(link.execution_id, child_status, error)
        try:
            await engine.stub.ResolveSubWorkflow(request, timeout=RESOLVE_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            log.info(
                "sub-workflow answer for %s node %s not taken by %s: %s",
                link.parent_execution_id,
                link.node_id,
                engine.key,
                exc.details(),
            )
            return exc.code()
        return None


@dataclass(frozen=True, slots=True)
class NodeAttempts:
    """A parent's sub-workflow node as its stored events tell it: what an outside request
    for one of its children is held to (the node's own requests come from its engine)."""

    started: bool = False
    ended: str | None = None
    """How it ended (succeeded, failed, ...), once it has."""
    items: int | None = None
    """A foreach node's item count, from its last start."""
    failed: dict[int | None, int] = field(default_factory=dict)
    """Attempts that failed and were retried, per item (None: the node's own)."""

    def attempt(self, item: int | None) -> int:
        """The attempt the node (or the item) is on: the one it waits for a child of."""
        return self.failed.get(item, 0) + 1


def node_attempts(events: Iterable[JSONObject], node_id: str) -> NodeAttempts:
    """One pass over a run's events (in seq order) for one node's starts, retries and end."""
    started = False
    ended: str | None = None
    items: int | None = None
    failed: dict[int | None, int] = {}
    for event in events:
        if event.get("node_id") != node_id:
            continue
        family, _, what = str(event.get("type", "")).partition(".")
        if family != "node":
            continue
        data = event.get("data")
        data = data if isinstance(data, dict) else {}
        if what == "started":
            started = True
            count = data.get("items")
            if isinstance(count, int) and not isinstance(count, bool):
                items = count
        elif what == "retrying":
            attempt = event.get("attempt")
            item = data.get("item")
            key = item if isinstance(item, int) and not isinstance(item, bool) else None
            if isinstance(attempt, int):
                failed[key] = max(failed.get(key, 0), attempt)
        elif what in NODE_TERMINAL:
            ended = what
    return NodeAttempts(started, ended, items, failed)


def _failure(child_id: str, status: str, error: str | None) -> str:
    if not child_id:
        return error or "the sub-workflow could not start"
    text = f"sub-workflow execution {child_id} ended {status or 'failed'}"
    return f"{text}: {error}" if error else text
