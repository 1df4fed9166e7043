"""The orchestrator itself: registry, durable store, dispatch and monitoring behind one facade.

HTTP and gRPC both call this class (``serving_http.Api``). The rule it keeps: an execution is
committed to the store before anyone is told it was accepted, and every event is stored before
it is published, so whatever a client has seen survives a crash.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Protocol

from engine.core.errors import SpecError
from engine.core.events import isoformat
from engine.core.spec import MAX_NAME, WorkflowSpec
from engine.core.states import EXECUTION_STATUSES, EXECUTION_TERMINAL
from engine.core.values import JSON, JSONObject
from engine.documents import parse_text
from engine.inputs import TRIGGER_KEY, check_inputs
from orchestrator import retention
from orchestrator.checking import registration_checks
from orchestrator.dispatching import Dispatcher, RunTicket, end_events
from orchestrator.errors import (
    CallerLeft,
    DepthLimit,
    InvalidArgument,
    NodeNotStarted,
    NotFound,
    NotRetryable,
    OrchestratorError,
    ParentEnded,
    ParentMismatch,
    QueueFull,
    StoreUnavailable,
    Unavailable,
    WorkflowBusy,
    refuse_trigger_inputs,
)
from orchestrator.fleet import Fleet
from orchestrator.lua_checking import LuaSyntaxChecker
from orchestrator.metrics import Metrics
from orchestrator.monitoring import Hub
from orchestrator.store import (
    HEAVY_READ_BYTES,
    LIST_LIMIT,
    MAX_CANCEL_REASON,
    MAX_IDEMPOTENCY_KEY,
    EventPage,
    ExecutionHead,
    LargeReads,
    Store,
    TriggerFire,
    WorkflowDeleted,
)
from orchestrator.subworkflows import ChildRequest, ChildStarted, SubWorkflows, node_attempts
from orchestrator.timeline import Checkpoint, retry_keeps
from orchestrator.versions import Registry

log = logging.getLogger(__name__)

_PURGE_WAIT = 1.0
"""Seconds between looks at a deleted workflow whose only runs left are still going."""
_PURGE_PUT_OFF = 10.0
"""Seconds between tries of a removal the store refused (a full disk)."""


@dataclass(slots=True)
class _Purge:
    """A deleted workflow's removal so far, for its progress lines."""

    began: float
    told: float
    runs: int = 0


_entropy = bytearray()


def new_execution_id(now: float) -> str:
    """32 hex digits, milliseconds first (the layout of UUIDv7): ids sort by creation, and
    the store's indexes take new rows at their end instead of on random pages."""
    # the random part comes from the OS 4 KiB at a time: one system call per 400 ids
    if len(_entropy) < 10:
        _entropy.extend(secrets.token_bytes(4000))
    tail = _entropy[-10:]
    del _entropy[-10:]
    return f"{int(now * 1000):012x}{tail.hex()}"


def _printable_text(text: str) -> bool:
    """Valid UTF-8 (an HTTP header's other bytes arrive as surrogates) without control
    characters: what the store keeps and every client can show."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return text.isprintable()


def _check_key(idempotency_key: str | None) -> None:
    """Every API's limits on an idempotency key (HTTP checks its header's length first)."""
    if idempotency_key is None:
        return
    if len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
        raise InvalidArgument(
            f"the idempotency key is longer than {MAX_IDEMPOTENCY_KEY} characters "
            f"({len(idempotency_key)})"
        )
    if not _printable_text(idempotency_key):
        raise InvalidArgument("the idempotency key must be UTF-8 text without control characters")


@dataclass(frozen=True, slots=True)
class Retry:
    """The run a new execution retries, and the nodes of it that succeeded."""

    execution_id: str
    succeeded: tuple[Checkpoint, ...]


def _digest(inputs: JSON, version: str | None) -> str:
    """What an idempotent request asked for, whatever its key order or spacing. What a trigger
    adds (``_trigger``: when it fired) differs between deliveries of one request, so it is not
    part of it."""
    if isinstance(inputs, dict) and TRIGGER_KEY in inputs:
        inputs = {k: v for k, v in inputs.items() if k != TRIGGER_KEY}
    text = json.dumps([inputs, version or ""], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class RegistrationHooks(Protocol):
    """What the triggers need to hear of registrations (``orchestrator.triggering``)."""

    def check_spec(self, spec: WorkflowSpec) -> None: ...
    def missing_secrets(self, spec: WorkflowSpec) -> list[str]: ...
    async def version_registered(self, spec: WorkflowSpec) -> None: ...
    async def workflow_deleted(
        self, workflow_id: str, write: Callable[[], Awaitable[WorkflowDeleted]]
    ) -> WorkflowDeleted: ...


class Orchestrator:
    def __init__(
        self,
        *,
        store: Store,
        registry: Registry,
        fleet: Fleet,
        hub: Hub,
        metrics: Metrics,
        lua_checker: LuaSyntaxChecker,
        queue_limit: int,
        queue_limit_per_workflow: int | None = None,
        max_subworkflow_depth: int = 16,
    ) -> None:
        self.store = store
        self.registry = registry
        self.fleet = fleet
        self.hub = hub
        self.metrics = metrics
        self.queue_limit = queue_limit
        self.queue_limit_per_workflow = queue_limit_per_workflow
        self.large_reads = LargeReads()
        """Shared by both APIs: large documents are built and encoded a budget at a time."""
        self._admitting = 0  # runs being stored and queued: they count toward QUEUE_LIMIT
        self._admitting_of: collections.Counter[str] = collections.Counter()  # by workflow
        # runs being stored and queued, referenced until they end (their caller may be gone)
        self._storing: set[asyncio.Future[tuple[str, bool, float]]] = set()
        self.max_subworkflow_depth = max_subworkflow_depth
        self.subworkflows: SubWorkflows | None = None
        self.triggers: RegistrationHooks | None = None  # cron and HTTP triggers, when serving
        self._calls_children: dict[tuple[str, str], bool] = {}
        self._checks = registration_checks(lua_checker)
        self._stored_checks = replace(self._checks, registering=False)
        # runs someone waits on -> their futures, given the run's final event
        self._waiters: dict[str, list[asyncio.Future[JSONObject]]] = {}
        self._cancelling: set[str] = set()
        """Queued runs whose cancellation is being stored: a second request waits for it."""
        self._register_lock = asyncio.Lock()
        # deleted workflows whose runs are still being removed (``purge_deleted``)
        self._purging: set[str] = set()
        self._purge_wake = asyncio.Event()
        self.dispatcher: Dispatcher  # set by attach(): the dispatcher calls back into us
        self.started = False

    def attach(self, dispatcher: Dispatcher, subworkflows: SubWorkflows | None = None) -> None:
        self.dispatcher = dispatcher
        self.subworkflows = subworkflows

    # -- events -----------------------------------------------------------------------------

    def publish(self, events: list[JSONObject]) -> None:
        """Events already stored (or not execution-bound) go to metrics and live subscribers."""
        self.metrics.observe(events)
        self.hub.publish_many(events)

    def finished(self, execution_id: str, event: JSONObject) -> None:
        if self.subworkflows is not None:
            self.subworkflows.finished(execution_id, event)
        for waiter in self._waiters.pop(execution_id, []):
            if not waiter.done():
                waiter.set_result(event)

    def _forget_waiter(self, execution_id: str, waiter: asyncio.Future[JSONObject]) -> None:
        """A waiter that stopped waiting; the run's list goes with its last one (a run that
        ended before this waiter came has no end left to remove it)."""
        pending = self._waiters.get(execution_id)
        if pending is not None and waiter in pending:
            pending.remove(waiter)
            if not pending:
                del self._waiters[execution_id]
        if waiter.done() and not waiter.cancelled():
            # answered by ``release_waiters`` before its caller came to await it: seen here,
            # or asyncio would log the stopping's TimeoutError as an error never retrieved
            waiter.exception()

    def release_waiters(self) -> None:
        """Stopping: whoever waits for a run to end (``wait``, a cancel) is answered now with
        the run as it stands, as when the wait runs out; the run goes on after a restart."""
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(TimeoutError("the orchestrator is stopping"))

    # -- start ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the registry and take up every execution a previous run left unfinished."""
        for problem in self.registry.load(await self.store.load_versions()):
            log.warning(
                "stored workflow %s; its runs are refused until a new version is registered",
                problem,
            )
        self._purging.update(await self.store.deleted_workflows())
        if self._purging:
            self._purge_wake.set()
        if self.subworkflows is not None:
            await self.subworkflows.start()
        recovered = await self.store.unfinished_executions()
        for execution_id, workflow_id, child in recovered:
            self.dispatcher.submit(execution_id, workflow_id, child=child)
        # a run that had started keeps its whole-run deadline while it waits for an engine
        for execution_id, workflow_id, version, started_at in await self.store.started_unfinished():
            try:
                spec_json = self.registry.spec_json(workflow_id, version)
            except OrchestratorError:
                continue  # its version did not load (warned above): no deadline to read
            self.dispatcher.keep_deadline(
                RunTicket(
                    execution_id,
                    workflow_id,
                    version,
                    spec_json,
                    None,
                    "running",
                    started_at=started_at,
                )
            )
        if recovered:
            log.info("taking up %d unfinished executions from the store", len(recovered))
        self.started = True

    # -- workflows --------------------------------------------------------------------------

    async def register(self, text: str, *, yaml: bool, force: bool) -> tuple[JSONObject, bool]:
        # Lua checks go to a child process: keep the loop free while they run
        spec = await asyncio.to_thread(
            # no source name: the problems read "line 7: nodes[b]...", which clients can prefix
            # with the file they sent
            parse_text,
            text,
            None,
            json_only=not yaml,
            checks=self._stored_checks,
        )
        async with self._register_lock:
            if spec.id in self._purging:
                raise WorkflowBusy(
                    f"workflow {spec.id} was deleted and its runs are still being removed: "
                    "register it again once they are gone",
                    {"workflow": spec.id},
                )
            plan = self.registry.plan_register(spec, force=force, now=time.time())
            if plan.noop:
                # a version stored before a limit for new ones came is that version still
                return self._warned(spec, self.registry.describe(spec.id, spec.version)), False
            if spec.name is not None and len(spec.name) > MAX_NAME:
                # read again, to be refused as a new version is, with the problem's line
                await asyncio.to_thread(
                    parse_text, text, None, json_only=not yaml, checks=self._checks
                )
            if self.triggers is not None:
                self.triggers.check_spec(spec)  # an HTTP path another workflow has: refused
            await self.store.register_version(plan)
            self.registry.apply(plan)
            if self.triggers is not None and self.registry.resolve(spec.id, "latest") == (
                spec.version
            ):
                # its triggers replace the old; a pre-release above a release leaves the
                # release's triggers on, as it leaves runs without a version on the release
                await self.triggers.version_registered(spec)
        described = self._warned(spec, self.registry.describe(spec.id, spec.version))
        if plan.forced_past:
            # what force overrode is said where it can be found later, and to the caller
            log.warning(
                "registered %s with force, outside the range of %d dependent(s): %s",
                spec.ref,
                len(plan.forced_past),
                ", ".join(plan.forced_past),
            )
            described["forced_past"] = list(plan.forced_past)
        else:
            log.info("registered %s", spec.ref)
        return described, True

    def _warned(self, spec: WorkflowSpec, described: JSONObject) -> JSONObject:
        """``described`` with ``warnings`` of what the spec will not do as it stands here (an
        HTTP trigger's secret not set), logged too; registered all the same."""
        warnings = self.triggers.missing_secrets(spec) if self.triggers is not None else []
        for warning in warnings:
            log.warning("workflow %s: %s", spec.ref, warning)
        if warnings:
            described["warnings"] = list(warnings)
        return described

    def stored_refusal(self, workflow_id: str, version: str) -> str | None:
        """Why runs of ``workflow_id@version`` cannot run, when it was stored under older checks
        that today's refuse (an upgrade made them stricter), else None."""
        try:
            self.registry.resolve_spec(workflow_id, version)
        except SpecError as exc:
            more = len(exc.problems) - 1
            return (
                f"{workflow_id}@{version} was stored under older checks, and this version of the "
                f"orchestrator refuses it: {exc.messages()[0]}"
                + (f" (and {more} more)" if more else "")
                + "; register a fixed version and run that"
            )
        except OrchestratorError:
            return None  # not in the registry: the engine says what it makes of the run
        return None

    async def list_workflows(
        self, after: str | None = None, limit: int | None = None
    ) -> tuple[list[JSONObject], str | None]:
        """A page of workflows by id, and the id the next starts past (None: the last)."""
        return self.registry.summaries(after, limit)

    async def get_workflow(self, workflow_id: str, version: str | None = None) -> JSONObject:
        self._not_deleted(workflow_id)
        return self.registry.describe(workflow_id, version)

    def _not_deleted(self, workflow_id: str) -> None:
        if workflow_id in self._purging:
            raise NotFound(
                f"workflow {workflow_id!r} was deleted; its runs are being removed",
                {"workflow": workflow_id},
            )

    async def delete_workflow(self, workflow_id: str) -> WorkflowDeleted:
        """Delete a workflow: every version and trigger at once, its runs with their events
        after, a batch at a time (``purge_deleted``). Refused while runs of it are going, or
        while other workflows' latest versions reference it."""
        async with self._register_lock:
            self._not_deleted(workflow_id)
            dependents = self.registry.dependents(workflow_id)
            if dependents:
                raise WorkflowBusy(
                    f"workflow {workflow_id} is referenced by "
                    + ", ".join(dependents[:10])
                    + (f" and {len(dependents) - 10} more" if len(dependents) > 10 else "")
                    + ": register versions of them without it, or delete them first",
                    {"workflow": workflow_id, "dependents": list(dependents[:50])},
                )
            # a delete refused for runs going is refused before anything changes: while it is
            # out of the registry below, its triggers and runs are refused
            live = await self.store.live_runs(workflow_id)
            busy = live.refusal(workflow_id, self._admitting_of[workflow_id])
            if busy is not None:
                raise busy
            # out of the registry, then: no new run of it can start while it is deleted (one
            # already past the registry and being stored is run, and waited for by the purge)
            removed = self.registry.remove(workflow_id)

            def write() -> Awaitable[WorkflowDeleted]:
                return self.store.delete_workflow(workflow_id, time.time())

            try:
                if self.triggers is not None:
                    deleted = await self.triggers.workflow_deleted(workflow_id, write)
                else:
                    deleted = await write()
            except BaseException:
                self.registry.restore(removed)
                raise
            self._purging.add(workflow_id)
            self._purge_wake.set()
            for key in [k for k in self._calls_children if k[0] == workflow_id]:
                del self._calls_children[key]
        log.info(
            "workflow %s deleted: %d version(s), %d trigger(s); %d run(s) to remove",
            workflow_id,
            deleted.versions,
            deleted.triggers,
            deleted.executions,
        )
        return deleted

    async def purge_deleted(self) -> None:
        """Remove the runs of deleted workflows, a batch per transaction so that other
        writes go between them; then their versions. Runs for good (``kept_running``)."""
        progress: dict[str, _Purge] = {}
        put_off = False
        while True:
            if not self._purging:
                await self._purge_wake.wait()
            self._purge_wake.clear()
            while self._purging:
                busy = False
                for workflow_id in sorted(self._purging):
                    try:
                        purged = await self.store.purge_workflow(workflow_id, retention.BATCH)
                    except StoreUnavailable as exc:
                        # the store logs its trouble too; once said, the next tries are not
                        if not put_off:
                            log.warning(
                                "removing deleted workflow %s put off: %s", workflow_id, exc
                            )
                        put_off = True
                        break
                    put_off = False
                    now = time.monotonic()
                    done = progress.setdefault(workflow_id, _Purge(now, now))
                    done.runs += purged.deleted
                    busy = busy or purged.deleted > 0
                    if purged.done:
                        self._purging.discard(workflow_id)
                        del progress[workflow_id]
                        # its series would stay until a restart, one set per deleted id
                        self.metrics.forget(workflow_id)
                        log.info(
                            "workflow %s: removed, with %d run(s), in %.1f s",
                            workflow_id,
                            done.runs,
                            time.monotonic() - done.began,
                        )
                    elif time.monotonic() - done.told >= retention.PROGRESS_EVERY:
                        # a workflow with a long history takes minutes: show it moving
                        done.told = time.monotonic()
                        log.info(
                            "removing deleted workflow %s: %d run(s) so far, %d still going",
                            workflow_id,
                            done.runs,
                            purged.waiting,
                        )
                if put_off:
                    await asyncio.sleep(_PURGE_PUT_OFF)
                elif self._purging and not busy:
                    # only runs still going are left: they are removed once they end
                    await asyncio.sleep(_PURGE_WAIT)

    # -- executions -------------------------------------------------------------------------

    async def execute(
        self,
        workflow_id: str,
        *,
        inputs: JSON,
        version: str | None,
        idempotency_key: str | None,
        wait: float | None,
        fire: TriggerFire | None = None,
        brief: bool = False,
        default_version: str | None = None,
        by_trigger: bool = False,
    ) -> tuple[JSONObject, bool]:
        """``fire``: the cron slot this run is for, stored with it (``SlotTaken`` if decided).
        ``brief``: a run that ends while waited for is answered from its final event (id,
        status, outputs, error, times; no nodes) instead of being read back whole.
        ``default_version``: the range to run when the caller named none (a trigger's); an
        idempotency key stands for what the caller sent, so it is not part of that.
        ``by_trigger``: the inputs' ``_trigger`` is a trigger's own; from anyone else it is
        refused (the inputs schema does not look at it, so it would carry anything)."""
        if not by_trigger:
            refuse_trigger_inputs(inputs)
        _check_key(idempotency_key)
        spec = self.registry.resolve_spec(workflow_id, version or default_version or "latest")
        check_inputs(spec, inputs)
        await self._check_room(spec.id, idempotency_key)
        # counted from here until stored and queued (``_store_execution``), with no await
        # between the check above and the count: a caller that leaves meanwhile still has its
        # run queued, so its place is held as long as the store takes
        stored_id, created, now = await self._store_execution(
            spec,
            inputs,
            self.registry.pin_versions(spec.id, spec.version),
            idempotency_key,
            request_digest=None if idempotency_key is None else _digest(inputs, version),
            fire=fire,
        )
        return await self._answer(stored_id, created, now, spec, inputs, wait=wait, brief=brief)

    async def retry(
        self,
        execution_id: str,
        *,
        idempotency_key: str | None,
        wait: float | None,
        brief: bool = False,
    ) -> tuple[JSONObject, bool]:
        """A new run of an execution that ended without succeeding: the same version, pinned
        sub-workflow versions and inputs. The nodes that succeeded on what will hold again
        (``retry_keeps``) keep their outputs (stored as the new run's first node events, so
        they are its checkpoints, and never run again); the others run again. Answered as
        ``execute`` answers."""
        _check_key(idempotency_key)
        head = await self.execution_head(execution_id, weigh=True)
        if head.parent_execution_id is not None:
            raise NotRetryable(
                f"execution {execution_id} is a sub-workflow run of execution "
                f"{head.parent_execution_id}: retry that one, which starts its failed "
                "sub-workflow nodes again",
                {"parent_execution_id": head.parent_execution_id},
            )
        if head.status not in EXECUTION_TERMINAL:
            raise NotRetryable(
                f"execution {execution_id} has not ended (it is {head.status}): wait for "
                "its end, or cancel it first",
                {"status": head.status},
            )
        if head.status == "succeeded":
            raise NotRetryable(
                f"execution {execution_id} succeeded: it has nothing to run again",
                {"status": head.status},
            )
        spec = self.registry.resolve_spec(head.workflow_id, head.version)
        await self._check_room(spec.id, idempotency_key)
        # the run's events are read whole, and the outputs it keeps held until the new run is
        # stored: a large one holds its weight of the large-read budget meanwhile, as a large
        # document does, so that retries of it sent together do not multiply the memory
        large = head.weight > HEAVY_READ_BYTES
        async with self.large_reads.hold(head.weight if large else 0):
            source = await self.store.retry_source(execution_id, head.weight)
            if source is None:  # deleted by retention since
                raise NotFound(f"no execution {execution_id!r}")
            kept = retry_keeps(spec.order, spec.deps, source.ended)
            stored_id, created, now = await self._store_execution(
                spec,
                source.inputs,
                source.pinned,
                idempotency_key,
                # what the run is retried from stands for the request: its inputs go with it
                request_digest=(
                    None if idempotency_key is None else _digest({}, f"retry {execution_id}")
                ),
                retry=Retry(execution_id, tuple(kept)),
            )
            inputs, kept_count = source.inputs, len(kept)
            del source, kept  # not held through a wait below, outside the budget
        if created:
            log.info(
                "execution %s retries %s (%s@%s), keeping %d succeeded node(s)",
                stored_id,
                execution_id,
                spec.id,
                spec.version,
                kept_count,
            )
        return await self._answer(
            stored_id,
            created,
            now,
            spec,
            inputs,
            wait=wait,
            brief=brief,
            retry_of=execution_id,
        )

    async def _check_room(self, workflow_id: str, idempotency_key: str | None) -> None:
        """Refuse a new root run of ``workflow_id`` when its queue is full (``QueueFull``)."""
        # runs being stored count too: requests that all passed the check while the first
        # was being written went past the limit together
        full = self._queue_full(workflow_id)
        # a repeat of a request whose run is stored creates nothing: it gets its run
        if full is not None and (
            idempotency_key is None
            or await self.store.keyed_run(workflow_id, idempotency_key) is None
        ):
            raise full

    async def _answer(
        self,
        stored_id: str,
        created: bool,
        now: float,
        spec: WorkflowSpec,
        inputs: JSON,
        *,
        wait: float | None,
        brief: bool,
        retry_of: str | None = None,
    ) -> tuple[JSONObject, bool]:
        """What a request that stored (or found, by its key) a run gets: the queued document at
        once, or with ``wait`` the run as it stands when it ends or the wait runs out."""
        waiter: asyncio.Future[JSONObject] | None = None
        if wait is not None:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(stored_id, []).append(waiter)
        if created and waiter is None:
            # the answer to a fresh 202 is known without reading it back
            return self._queued_document(stored_id, spec, inputs, now, retry_of), True
        if waiter is not None and wait is not None:
            done = False
            if not created:  # a repeat of an idempotent request: the first run may be over
                first = await self.store.execution_head(stored_id)
                done = first is not None and first.status in EXECUTION_TERMINAL
            try:
                if not done:
                    final = await asyncio.wait_for(asyncio.shield(waiter), wait)
                    if brief:
                        # the final event is stored already and says all the answer needs
                        ended = self._ended_document(stored_id, spec, inputs, now, final)
                        return {**ended, "retry_of": retry_of}, created
            except TimeoutError:
                pass
            finally:
                self._forget_waiter(stored_id, waiter)
        # folded as a GET is, within the large-read budget; its encoding, the caller's, is not
        async with self.execution_document(stored_id) as (doc, _large):
            return doc, created

    async def _store_execution(
        self,
        spec: WorkflowSpec,
        inputs: JSON,
        pinned: dict[str, str],
        idempotency_key: str | None = None,
        *,
        request_digest: str | None = None,
        child: ChildRequest | None = None,
        depth: int = 0,
        track: Callable[[str], None] | None = None,
        fire: TriggerFire | None = None,
        retry: Retry | None = None,
    ) -> tuple[str, bool, float]:
        """Store a new execution (or find the one the key or parent node already has) and
        queue it; returns (id, created, created_at). A caller cancelled meanwhile (a gRPC
        deadline) does not stop it half-way: a run stored and never queued would wait until
        the next start."""
        self._admitting += 1
        # a sub-workflow run is held to no share of the queue, so counts in none
        root = spec.id if child is None else None
        if root is not None:
            self._admitting_of[root] += 1
        admitted = [False]

        async def counted() -> tuple[str, bool, float]:
            try:
                return await self._store_and_queue(
                    spec,
                    inputs,
                    pinned,
                    idempotency_key,
                    request_digest=request_digest,
                    child=child,
                    depth=depth,
                    track=track,
                    fire=fire,
                    retry=retry,
                )
            finally:
                # in the step that queued it: a done-callback runs a turn of the loop later,
                # and a request checked in between counted this run twice, queued and being
                # stored, and was refused a place that was free
                admitted[0] = True
                self._settled_admission(root)

        storing = asyncio.ensure_future(counted())
        self._storing.add(storing)

        def stored(done: asyncio.Future[tuple[str, bool, float]]) -> None:
            self._storing.discard(done)
            if not admitted[0]:  # cancelled before it began (the loop closing)
                self._settled_admission(root)

        storing.add_done_callback(stored)
        return await asyncio.shield(storing)

    def _queue_full(self, workflow_id: str) -> QueueFull | None:
        """Why a new root run of ``workflow_id`` finds no place in the queue, or None."""
        waiting = self.dispatcher.queue_depth + self._admitting
        if waiting >= self.queue_limit:
            return QueueFull(
                f"{waiting} executions are waiting for an engine "
                f"(QUEUE_LIMIT {self.queue_limit}): try again later"
            )
        per_workflow = self.queue_limit_per_workflow
        if per_workflow is not None:
            own = self.dispatcher.queued_of(workflow_id) + self._admitting_of[workflow_id]
            if own >= per_workflow:
                return QueueFull(
                    f"{own} executions of {workflow_id!r} are waiting for an engine "
                    f"(QUEUE_LIMIT_PER_WORKFLOW {per_workflow}): try again later",
                    {"workflow": workflow_id},
                )
        return None

    def _settled_admission(self, workflow_id: str | None) -> None:
        self._admitting -= 1
        if workflow_id is not None:
            self._admitting_of[workflow_id] -= 1
            if not self._admitting_of[workflow_id]:
                del self._admitting_of[workflow_id]

    async def stores_settled(self, timeout: float) -> None:
        """Let runs being stored and queued end (up to ``timeout``): a caller may be gone."""
        if self._storing:
            await asyncio.wait(list(self._storing), timeout=timeout)

    async def _store_and_queue(
        self,
        spec: WorkflowSpec,
        inputs: JSON,
        pinned: dict[str, str],
        idempotency_key: str | None,
        *,
        request_digest: str | None,
        child: ChildRequest | None,
        depth: int,
        track: Callable[[str], None] | None,
        fire: TriggerFire | None,
        retry: Retry | None,
    ) -> tuple[str, bool, float]:
        # read before the run is stored: a delete of its workflow meanwhile must not leave a
        # stored run that is never queued (the delete's removal waits for it to end)
        spec_text = self.registry.spec_json(spec.id, spec.version)
        execution_id = new_execution_id(time.time())
        now = time.time()
        data: JSONObject = {"inputs": inputs, "pinned": dict(pinned)}
        if child is not None:
            data["parent_execution_id"] = child.parent_execution_id
            data["parent_node_id"] = child.node_id
        if retry is not None:
            data["retry_of"] = retry.execution_id
        queued: JSONObject = {
            "seq": 1,
            "time": isoformat(now),
            "type": "execution.queued",
            "severity": "info",
            "workflow_id": spec.id,
            "version": spec.version,
            "execution_id": execution_id,
            "node_id": None,
            "engine_id": None,
            "attempt": None,
            "data": data,
        }
        more: list[JSONObject] = []
        if child is not None:
            # the child's own timeline says whose node started it: written with the child's
            # row, as a write of its own refused (a disk error) left a child stored but never
            # queued, and the parent, asking again, found it and queued it neither
            more.append(
                {
                    **queued,
                    "seq": 2,
                    "type": "subworkflow.started",
                    "data": {
                        "parent_execution_id": child.parent_execution_id,
                        "node_id": child.node_id,
                        "item": child.item,
                        "attempt": child.attempt,
                    },
                }
            )
        if retry is not None:
            # the nodes kept from the run retried end first, as they did there: the run's
            # timeline and document show them, and they are the checkpoints it starts from
            more.extend(
                {
                    **queued,
                    "seq": len(more) + 2,
                    "type": "node.succeeded",
                    "node_id": kept.node_id,
                    "attempt": kept.attempts,
                    "data": {"output": kept.output, "reused_from": retry.execution_id},
                }
                for kept in retry.succeeded
            )
        stored_id, created = await self.store.create_execution(
            execution_id=execution_id,
            workflow_id=spec.id,
            version=spec.version,
            inputs=inputs,
            pinned=pinned,
            created_at=now,
            node_ids=spec.order,
            idempotency_key=idempotency_key,
            request_digest=request_digest,
            first_event=queued,
            parent_execution_id=None if child is None else child.parent_execution_id,
            parent_node_id=None if child is None else child.node_id or None,
            parent_item=None if child is None else child.item,
            parent_attempt=None if child is None else child.attempt,
            depth=depth,
            fire=fire,
            more_events=more,
            retry_of=None if retry is None else retry.execution_id,
        )
        published = [queued, *more]
        if track is not None:
            track(stored_id)  # before it can be dispatched, so its end is never missed
        if created:
            self.metrics.accept(spec.id)
            self.publish(published)
            self.dispatcher.submit(
                stored_id,
                spec.id,
                ticket=RunTicket(
                    execution_id=stored_id,
                    workflow_id=spec.id,
                    version=spec.version,
                    spec_json=spec_text,
                    inputs=inputs,
                    status="queued",
                    parent_execution_id=None if child is None else child.parent_execution_id,
                    checkpoints=[] if retry is None else list(retry.succeeded),
                    next_seq=len(published) + 1,
                ),
            )
        return stored_id, created, now

    # -- sub-workflows ----------------------------------------------------------------------

    def has_subworkflows(self, workflow_id: str, version: str) -> bool:
        found = self._calls_children.get((workflow_id, version))
        if found is None:
            try:
                spec = self.registry.resolve_spec(workflow_id, version)
            except OrchestratorError:
                return False
            found = any(n.workflow is not None for n in spec.nodes)
            self._calls_children[workflow_id, version] = found
        return found

    async def start_child(
        self, request: ChildRequest, track: Callable[[str], None]
    ) -> ChildStarted:
        """The child execution of a parent node's item and attempt: started now, or the one it
        already has (a resumed parent asking again)."""
        parent = await self.store.lineage(request.parent_execution_id)
        if parent is None:
            raise NotFound(f"no execution {request.parent_execution_id!r}")
        if request.parent_workflow_id and request.parent_workflow_id != parent.workflow_id:
            raise ParentMismatch(
                f"execution {parent.execution_id} runs workflow {parent.workflow_id!r}, "
                f"not {request.parent_workflow_id!r}"
            )
        if request.node_id:
            existing = await self.store.child_of(
                request.parent_execution_id, request.node_id, request.item, request.attempt
            )
            if existing is not None:
                if existing["status"] not in EXECUTION_TERMINAL:
                    track(str(existing["id"]))
                return ChildStarted(str(existing["id"]), str(existing["version"]), False)
        if parent.status in EXECUTION_TERMINAL:
            raise ParentEnded(
                f"execution {parent.execution_id} has ended ({parent.status}): "
                "it starts no more sub-workflows"
            )
        if parent.depth + 1 > self.max_subworkflow_depth:
            raise DepthLimit(
                f"starting {request.workflow_id} would nest sub-workflows "
                f"{parent.depth + 1} deep, past MAX_SUBWORKFLOW_DEPTH "
                f"{self.max_subworkflow_depth}"
            )
        # the version pinned when the root execution started, else resolved now (a caller
        # outside any spec, through ExecuteSubWorkflow)
        exact = parent.pinned.get(f"{request.workflow_id}@{request.version}")
        spec = self.registry.resolve_spec(request.workflow_id, exact or request.version)
        check_inputs(spec, request.inputs)
        pinned = {**self.registry.pin_versions(spec.id, spec.version), **parent.pinned}
        stored_id, created, _ = await self._store_execution(
            spec, request.inputs, pinned, child=request, depth=parent.depth + 1, track=track
        )
        return ChildStarted(stored_id, spec.version, created)

    async def execute_sub_workflow(self, request: ChildRequest) -> ChildStarted:
        """``ExecuteSubWorkflow``: a child for a parent execution, from outside any engine."""
        if self.subworkflows is None:
            raise Unavailable("sub-workflows are not coordinated by this orchestrator")
        refuse_trigger_inputs(request.inputs)
        return await self.subworkflows.execute(await self._check_outside_child(request))

    async def _check_outside_child(self, request: ChildRequest) -> ChildRequest:
        """An outside caller's child request names what the parent's spec has: a node that
        runs that very workflow, and an item only on a ``foreach`` one. Engines ask from the
        spec itself; a child under a made-up node would be shown, and waited for, as if the
        parent had one. A child of a node stands in for the one the node asks for itself: of
        the version the run pinned for it, for the item and attempt it waits on now. Returns
        the request with the node's own range, so the child gets the pinned version."""
        item = request.item
        if item is not None and item < 0:
            raise InvalidArgument(f"item must be 0 or more, got {item}", {"field": "item"})
        if not request.node_id:
            if item is not None:
                raise InvalidArgument(
                    "item needs node_id: it numbers the items of a foreach node",
                    {"field": "item"},
                )
            return request
        parent = await self.store.lineage(request.parent_execution_id)
        if parent is None:
            raise NotFound(f"no execution {request.parent_execution_id!r}")
        spec = self.registry.resolve_spec(parent.workflow_id, parent.version)
        node = spec.by_id.get(request.node_id)
        where = f"{parent.workflow_id}@{parent.version}"
        if node is None or node.workflow is None:
            shown = request.node_id if len(request.node_id) <= 64 else request.node_id[:64] + "..."
            raise InvalidArgument(
                f"node_id {shown!r} is not a sub-workflow node of {where}",
                {"field": "node_id"},
            )
        if node.workflow.id != request.workflow_id:
            raise InvalidArgument(
                f"node {node.id!r} of {where} runs workflow {node.workflow.id!r}, "
                f"not {request.workflow_id!r}",
                {"field": "workflow_id"},
            )
        if (item is None) != (node.foreach is None):
            raise InvalidArgument(
                f"node {node.id!r} of {where} is a foreach node: give the item"
                if item is None
                else f"node {node.id!r} of {where} has no foreach: give no item",
                {"field": "item"},
            )
        own = node.workflow.version
        version = parent.pinned.get(f"{node.workflow.id}@{own}") or self.registry.resolve(
            node.workflow.id, own
        )
        if request.version not in ("", own) and not self.registry.in_range(
            version, request.version, f"for {node.workflow.id}"
        ):
            raise InvalidArgument(
                f"node {node.id!r} of execution {parent.execution_id} runs "
                f"{node.workflow.id} {own!r}, pinned to {version} for this execution: "
                f"version {request.version!r} does not include it",
                {"field": "version"},
            )
        run = f"node {node.id!r} of execution {parent.execution_id}"
        state = node_attempts(await self.store.events(parent.execution_id), node.id)
        if not state.started:
            raise NodeNotStarted(
                f"{run} has not started"
                + (": its items are not known yet" if item is not None else ""),
                {"field": "node_id" if item is None else "item"},
            )
        if state.ended is not None:
            raise NodeNotStarted(
                f"{run} has ended ({state.ended}): it waits for no child",
                {"field": "node_id"},
            )
        if item is not None and state.items is not None and item >= state.items:
            raise InvalidArgument(
                f"{run} has {state.items} item(s): item must be below {state.items}, got {item}",
                {"field": "item"},
            )
        waited = state.attempt(item)
        if request.attempt != waited:
            of = f" item {item}" if item is not None else ""
            raise NodeNotStarted(
                f"{run}{of} waits on attempt {waited}: attempt must be {waited}, "
                f"got {request.attempt}",
                {"field": "attempt"},
            )
        return replace(request, version=own)

    @staticmethod
    def _ended_document(
        execution_id: str, spec: WorkflowSpec, inputs: JSON, created_at: float, event: JSONObject
    ) -> JSONObject:
        """A run that ended while its caller waited, from its final event, without nodes."""
        data = event.get("data")
        data = data if isinstance(data, dict) else {}
        kind = str(event.get("type", ""))
        return {
            "id": execution_id,
            "workflow_id": spec.id,
            "version": spec.version,
            "status": kind.split(".", 1)[1] if "." in kind else kind,
            "inputs": inputs,
            "outputs": data.get("outputs", {}),
            "error": data.get("error"),
            "progress": 100,
            "created_at": isoformat(created_at),
            "finished_at": event.get("time"),
        }

    @staticmethod
    def _queued_document(
        execution_id: str,
        spec: WorkflowSpec,
        inputs: JSON,
        created_at: float,
        retry_of: str | None = None,
    ) -> JSONObject:
        return {
            "id": execution_id,
            "workflow_id": spec.id,
            "version": spec.version,
            "status": "queued",
            "inputs": inputs,
            "outputs": {},
            "error": None,
            "progress": 0,
            "created_at": isoformat(created_at),
            "started_at": None,
            "finished_at": None,
            "parent_execution_id": None,
            "retry_of": retry_of,
            "nodes": {},
        }

    async def get_execution(self, execution_id: str) -> JSONObject:
        doc = await self.store.get_execution(execution_id)
        if doc is None:
            raise NotFound(f"no execution {execution_id!r}")
        return doc

    async def execution_head(self, execution_id: str, *, weigh: bool = False) -> ExecutionHead:
        """What the run is (its workflow, status, last seq) from its row alone: opening a
        stream, or asking whether a cancel has anything to do, folds none of its events."""
        head = await self.store.execution_head(execution_id, weigh=weigh)
        if head is None:
            raise NotFound(f"no execution {execution_id!r}")
        return head

    @asynccontextmanager
    async def execution_document(
        self, execution_id: str, *, wanted: Callable[[], bool] | None = None
    ) -> AsyncIterator[tuple[JSONObject, bool]]:
        """The run's document, and whether it is large. A large one (its events past
        ``HEAVY_READ_BYTES``) is folded on the store's heavy reader and holds its weight of
        ``large_reads`` until the caller leaves the block, its answer encoded: so many callers
        of large runs take memory a budget at a time, however many ask at once. ``wanted``:
        whether the caller is still there once its turn comes (``CallerLeft`` if not): a large
        document nobody will read is not built, so those behind it do not wait for it."""
        head = await self.execution_head(execution_id, weigh=True)
        large = head.weight > HEAVY_READ_BYTES
        async with self.large_reads.hold(head.weight if large else 0):
            if large and wanted is not None and not wanted():
                raise CallerLeft(f"the caller for execution {execution_id} left")
            doc = await self.store.get_execution(execution_id, weight=head.weight)
            if doc is None:
                raise NotFound(f"no execution {execution_id!r}")
            yield doc, large

    async def list_executions(
        self, *, workflow_id: str | None, status: str | None, limit: int, before: str | None = None
    ) -> list[JSONObject]:
        if status is not None and status not in EXECUTION_STATUSES:
            raise InvalidArgument(
                f"status {status!r} is not an execution status: use one of "
                + ", ".join(EXECUTION_STATUSES)
            )
        if not 1 <= limit <= LIST_LIMIT:
            raise InvalidArgument(f"limit must be between 1 and {LIST_LIMIT}, got {limit}")
        found = await self.store.list_executions(
            workflow_id=workflow_id, status=status, limit=limit, before=before
        )
        if found is None:
            raise NotFound(f"no execution {before!r} to list the runs before")
        return found

    async def cancel(self, execution_id: str, reason: str) -> JSONObject:
        """Cancel the run (``cancel_run``) and answer with its document."""
        await self.cancel_run(execution_id, reason)
        return await self.get_execution(execution_id)

    async def cancel_run(self, execution_id: str, reason: str) -> None:
        """Cancel the run and its children, and wait (10 s at most) for its end. What it looks
        at is the run's row (``execution_head``): a run's events are folded only when it is
        ended here from the queue, where its end needs its inputs."""
        if len(reason) > MAX_CANCEL_REASON:
            # it is written on the run, on each node it stops, and on each of their events
            raise InvalidArgument(
                f"the reason is longer than {MAX_CANCEL_REASON} characters ({len(reason)})"
            )
        head = await self.execution_head(execution_id)
        if head.status in EXECUTION_TERMINAL:
            return
        # on disk before anyone is asked: an engine that does not hear the cancel, or a
        # restart of this process, cannot let the run go on to another end (``dispatching``)
        await self.store.request_cancel(execution_id, reason)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(execution_id, []).append(waiter)
        if self.dispatcher.dequeue(execution_id):
            self._cancelling.add(execution_id)
            try:
                await self._cancel_queued(await self.get_execution(execution_id), reason)
            except BaseException:
                # not stored (the store refused it): the run stays accepted, so it goes back
                # in line, and the caller hears the cancel failed
                self.dispatcher.submit(
                    execution_id,
                    head.workflow_id,
                    front=True,
                    child=head.parent_execution_id is not None,
                )
                raise
            finally:
                self._cancelling.discard(execution_id)
        elif execution_id in self._cancelling or self.dispatcher.ending(execution_id):
            # a request just before this one is storing the cancellation, or the dispatcher
            # its end (timed out, given up): one end only
            pass
        elif not await self.dispatcher.cancel_running(execution_id, reason):
            # between queue and engine: the next dispatch sees the request and stops it; unless
            # a request before this one has just ended it (ours read it while still queued)
            now = await self.execution_head(execution_id)
            if now.status not in EXECUTION_TERMINAL:
                await self._cancel_queued(await self.get_execution(execution_id), reason)
        try:
            if not waiter.done():
                now = await self.execution_head(execution_id)
                if now.status in EXECUTION_TERMINAL:
                    return  # ended while we asked (perhaps by the request before this one)
                await asyncio.wait_for(asyncio.shield(waiter), 10)
        except TimeoutError:
            log.warning("cancel of %s not confirmed within 10 s", execution_id)
        finally:
            self._forget_waiter(execution_id, waiter)

    def _spec_text(self, workflow_id: str, version: str) -> str:
        try:
            return self.registry.spec_json(workflow_id, version)
        except NotFound:
            return ""  # a version the registry refused at start: its end names no outputs

    async def _cancel_queued(self, doc: JSONObject, reason: str) -> None:
        execution_id = str(doc["id"])
        workflow_id, version = str(doc["workflow_id"]), str(doc["version"])
        seq, stored = await self.store.end_point(execution_id)
        run = RunTicket(
            execution_id=execution_id,
            workflow_id=workflow_id,
            version=version,
            spec_json=self._spec_text(workflow_id, version),
            inputs=doc["inputs"],
            status=str(doc["status"]),
        )
        events = end_events(run, stored, seq, "execution.cancelled", "warning", reason)
        await self.store.record_events(execution_id, events)
        self.publish(events)
        self.finished(execution_id, events[-1])

    async def execution_events(self, execution_id: str, after_seq: int = 0) -> list[JSONObject]:
        await self.get_execution(execution_id)
        return await self.store.events(execution_id, after_seq=after_seq)

    async def execution_event_page(
        self, execution_id: str, *, after_seq: int, limit: int
    ) -> EventPage:
        """A page of the stored timeline (a run of thousands of nodes has too many events
        to read, hold and encode whole per request)."""
        page = await self.store.event_page(execution_id, after_seq=after_seq, limit=limit)
        if page is None:
            raise NotFound(f"no execution {execution_id!r}")
        return page

    # -- operations -------------------------------------------------------------------------

    def engines(self) -> list[JSONObject]:
        return self.fleet.describe()

    async def readiness(self) -> tuple[bool, str]:
        if not self.started:
            return False, "starting: loading the store"
        fault = self.store.fault()
        if fault is not None:
            return False, fault
        if self.store.trouble is not None:
            # the last write failed: try a small one, so that a probe alone can find the
            # database usable again when nothing else writes
            try:
                await self.store.probe()
            except OrchestratorError as exc:
                return False, exc.message
        if self.dispatcher.stalled:
            # small writes may pass while large ones still fail (a disk almost full)
            return False, (
                f"{self.dispatcher.stalled} execution(s) wait for the state database to take "
                f"their events: {self.store.trouble or 'it refused their last write'}"
            )
        ready = len(self.fleet.ready())
        reason = f"{ready} engine(s) ready, {self.dispatcher.queue_depth} queued"
        # still ready: runs are accepted and queued, and the engines last known keep working;
        # taking the orchestrator out of its Service would not bring the API server back
        trouble = self.fleet.discovery_trouble()
        return True, f"{reason}; {trouble}" if trouble else reason

    def metrics_payload(self) -> tuple[bytes, str]:
        return self.metrics.render()
