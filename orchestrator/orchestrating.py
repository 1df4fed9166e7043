"""The orchestrator itself: registry, durable store, dispatch and monitoring behind one facade.

HTTP and gRPC both call this class (``serving_http.Api``). The rule it keeps: an execution is
committed to the store before anyone is told it was accepted, and every event is stored before
it is published, so whatever a client has seen survives a crash.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

import jsonschema

from engine.core.errors import InputsError
from engine.core.events import isoformat
from engine.core.spec import WorkflowSpec
from engine.core.states import EXECUTION_TERMINAL
from engine.core.values import JSON, JSONObject
from engine.documents import parse_text
from orchestrator.checking import registration_checks
from orchestrator.dispatching import Dispatcher, RunTicket
from orchestrator.errors import NotFound, QueueFull
from orchestrator.fleet import Fleet
from orchestrator.lua_checking import LuaSyntaxChecker
from orchestrator.metrics import Metrics
from orchestrator.monitoring import Hub
from orchestrator.store import Store
from orchestrator.versions import Registry

log = logging.getLogger(__name__)


_VALIDATORS: dict[int, tuple[WorkflowSpec, Any]] = {}


def _validator(spec: WorkflowSpec) -> Any:
    # one compiled validator per registered version (specs are immutable and live as long as
    # the registry); the spec is kept beside it so its id is never reused for another
    found = _VALIDATORS.get(id(spec))
    if found is None:
        assert spec.inputs_schema is not None
        schema = spec.inputs_schema
        found = (spec, jsonschema.validators.validator_for(schema)(schema))
        _VALIDATORS[id(spec)] = found
    return found[1]


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


def check_inputs(spec: WorkflowSpec, inputs: JSON) -> None:
    if spec.inputs_schema is None:
        return
    validator = _validator(spec)
    problems = [
        "inputs"
        + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
        + f": {err.message}"
        for err in sorted(validator.iter_errors(inputs), key=lambda e: list(e.absolute_path))
    ]
    if problems:
        raise InputsError(spec.id, problems)


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
    ) -> None:
        self.store = store
        self.registry = registry
        self.fleet = fleet
        self.hub = hub
        self.metrics = metrics
        self.queue_limit = queue_limit
        self._checks = registration_checks(lua_checker)
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._register_lock = asyncio.Lock()
        self.dispatcher: Dispatcher  # set by attach(): the dispatcher calls back into us
        self.started = False

    def attach(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    # -- events -----------------------------------------------------------------------------

    def publish(self, events: list[JSONObject]) -> None:
        """Events already stored (or not execution-bound) go to metrics and live subscribers."""
        self.metrics.observe(events)
        self.hub.publish_many(events)

    def finished(self, execution_id: str, event: JSONObject) -> None:
        for waiter in self._waiters.pop(execution_id, []):
            if not waiter.done():
                waiter.set_result(None)

    # -- start ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the registry and take up every execution a previous run left unfinished."""
        self.registry.load(await self.store.load_versions())
        recovered = await self.store.unfinished_executions()
        for execution_id, workflow_id in recovered:
            self.dispatcher.submit(execution_id, workflow_id)
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
            checks=self._checks,
        )
        async with self._register_lock:
            plan = self.registry.plan_register(spec, force=force, now=time.time())
            if plan.noop:
                return self.registry.describe(spec.id, spec.version), False
            await self.store.register_version(plan)
            self.registry.apply(plan)
        log.info("registered %s", spec.ref)
        return self.registry.describe(spec.id, spec.version), True

    async def list_workflows(self) -> list[JSONObject]:
        return self.registry.summaries()

    async def get_workflow(self, workflow_id: str, version: str | None = None) -> JSONObject:
        return self.registry.describe(workflow_id, version)

    # -- executions -------------------------------------------------------------------------

    async def execute(
        self,
        workflow_id: str,
        *,
        inputs: JSON,
        version: str | None,
        idempotency_key: str | None,
        wait: float | None,
    ) -> tuple[JSONObject, bool]:
        spec = self.registry.resolve_spec(workflow_id, version or "latest")
        check_inputs(spec, inputs)
        if self.dispatcher.queue_depth >= self.queue_limit:
            raise QueueFull(
                f"{self.dispatcher.queue_depth} executions are waiting for an engine "
                f"(QUEUE_LIMIT {self.queue_limit}): try again later"
            )
        pinned = self.registry.pin_versions(spec.id, spec.version)
        execution_id = new_execution_id(time.time())
        now = time.time()
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
            "data": {"inputs": inputs, "pinned": dict(pinned)},
        }
        stored_id, created = await self.store.create_execution(
            execution_id=execution_id,
            workflow_id=spec.id,
            version=spec.version,
            inputs=inputs,
            pinned=pinned,
            created_at=now,
            node_ids=spec.order,
            idempotency_key=idempotency_key,
            first_event=queued,
        )
        waiter: asyncio.Future[None] | None = None
        if wait is not None:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(stored_id, []).append(waiter)
        if created:
            self.metrics.accepted.labels(spec.id).inc()
            self.publish([queued])
            self.dispatcher.submit(
                stored_id,
                spec.id,
                ticket=RunTicket(
                    execution_id=stored_id,
                    workflow_id=spec.id,
                    version=spec.version,
                    spec_json=self.registry.spec_json(spec.id, spec.version),
                    inputs=inputs,
                    status="queued",
                    next_seq=2,
                ),
            )
            if waiter is None:
                # the answer to a fresh 202 is known without reading it back
                return self._queued_document(stored_id, spec, inputs, now), True
        if waiter is not None and wait is not None:
            done = False
            if not created:  # a repeat of an idempotent request: the first run may be over
                first = await self.store.get_execution(stored_id)
                done = first is not None and first["status"] in EXECUTION_TERMINAL
            try:
                if not done:
                    await asyncio.wait_for(asyncio.shield(waiter), wait)
            except TimeoutError:
                pass
            finally:
                pending = self._waiters.get(stored_id, [])
                if waiter in pending:
                    pending.remove(waiter)
        doc = await self.store.get_execution(stored_id)
        if doc is None:
            raise NotFound(f"execution {stored_id!r} vanished from the store")
        return doc, created

    @staticmethod
    def _queued_document(
        execution_id: str, spec: WorkflowSpec, inputs: JSON, created_at: float
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
            "nodes": {},
        }

    async def get_execution(self, execution_id: str) -> JSONObject:
        doc = await self.store.get_execution(execution_id)
        if doc is None:
            raise NotFound(f"no execution {execution_id!r}")
        return doc

    async def list_executions(
        self, *, workflow_id: str | None, status: str | None, limit: int
    ) -> list[JSONObject]:
        return await self.store.list_executions(workflow_id=workflow_id, status=status, limit=limit)

    async def cancel(self, execution_id: str, reason: str) -> JSONObject:
        doc = await self.get_execution(execution_id)
        if doc["status"] in EXECUTION_TERMINAL:
            return doc
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(execution_id, []).append(waiter)
        if self.dispatcher.dequeue(execution_id):
            await self._cancel_queued(doc, reason)
        elif not await self.dispatcher.cancel_running(execution_id, reason):
            # between queue and engine: the next dispatch sees the request and stops it
            await self._cancel_queued(doc, reason)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), 10)
        except TimeoutError:
            log.warning("cancel of %s not confirmed within 10 s", execution_id)
        return await self.get_execution(execution_id)

    async def _cancel_queued(self, doc: JSONObject, reason: str) -> None:
        execution_id = str(doc["id"])
        event: JSONObject = {
            "seq": await self.store.next_seq(execution_id),
            "time": isoformat(time.time()),
            "type": "execution.cancelled",
            "severity": "warning",
            "workflow_id": doc["workflow_id"],
            "version": doc["version"],
            "execution_id": execution_id,
            "node_id": None,
            "engine_id": None,
            "attempt": None,
            "data": {"error": reason, "outputs": {}},
        }
        await self.store.record_events(execution_id, [event])
        self.publish([event])
        self.finished(execution_id, event)

    async def execution_events(self, execution_id: str, after_seq: int = 0) -> list[JSONObject]:
        await self.get_execution(execution_id)
        return await self.store.events(execution_id, after_seq=after_seq)

    # -- operations -------------------------------------------------------------------------

    def engines(self) -> list[JSONObject]:
        return self.fleet.describe()

    def readiness(self) -> tuple[bool, str]:
        if not self.started:
            return False, "starting: loading the store"
        ready = len(self.fleet.ready())
        return True, f"{ready} engine(s) ready, {self.dispatcher.queue_depth} queued"

    def metrics_payload(self) -> tuple[bytes, str]:
        return self.metrics.render()
