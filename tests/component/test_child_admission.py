"""A sub-workflow child is queued whenever it is stored. Its ``subworkflow.started`` event was
once a write of its own after the child's row: refused (a disk I/O error), it left the child
stored as queued and never handed to the dispatcher, and the parent asking again found it and
queued it neither, until a restart. The facade over a real store, with the real dispatcher
(no engine free, so runs stay queued) and the sub-workflow coordinator."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine.api import dagengine_pb2 as pb
from orchestrator.dispatching import Dispatcher, RunTicket
from orchestrator.errors import StoreUnavailable
from orchestrator.lua_checking import LuaSyntaxChecker
from orchestrator.store import Store
from orchestrator.subworkflows import SubWorkflows
from tests.component.serving_helpers import facade

CHILD = {"id": "kid", "version": "1.0.0", "nodes": [{"id": "out", "lua": "return { v = 42 }"}]}
PARENT = {
    "id": "par",
    "version": "1.0.0",
    "nodes": [{"id": "call", "workflow": {"id": "kid", "version": "^1"}}],
}


class NoEngineFree:
    def pick(self, key: str, *, overflow: bool = False) -> None:
        return None


class Engine:
    """The parent's engine: takes every answer."""

    key = "engine-0"

    def __init__(self) -> None:
        self.answers: list[pb.ResolveSubWorkflowRequest] = []

    @property
    def stub(self) -> Engine:
        return self

    def link_of(self, execution_id: str) -> Engine:
        return self

    async def ResolveSubWorkflow(
        self, request: pb.ResolveSubWorkflowRequest, timeout: float
    ) -> pb.ResolveSubWorkflowResponse:
        self.answers.append(request)
        return pb.ResolveSubWorkflowResponse()


def carries_child_start(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether a store call writes a child's ``subworkflow.started``, in whatever argument."""
    return any(
        isinstance(value, list | tuple)
        and any(isinstance(e, dict) and e.get("type") == "subworkflow.started" for e in value)
        for value in (*args, *kwargs.values())
    )


async def until(what: str, done: Callable[[], bool]) -> None:
    for _ in range(500):
        if done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_child_whose_start_the_store_refused_once_is_queued_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("orchestrator.errors.STORE_BACKOFF", (0.01, 0.02))
    store = await Store.open(str(tmp_path / "state.db"))
    checker = LuaSyntaxChecker()
    orch = facade(store, checker)
    dispatcher = Dispatcher(store, NoEngineFree(), publish=orch.publish)  # type: ignore[arg-type]
    submitted: Counter[str] = Counter()
    real_submit = dispatcher.submit

    def submit(execution_id: str, workflow_id: str, **kwargs: Any) -> None:
        submitted[execution_id] += 1
        real_submit(execution_id, workflow_id, **kwargs)

    dispatcher.submit = submit  # type: ignore[method-assign]
    engine = Engine()
    subworkflows = SubWorkflows(
        store,
        engine,  # type: ignore[arg-type]
        start_child=orch.start_child,
        cancel=orch.cancel_run,
        has_subworkflows=orch.has_subworkflows,
    )
    orch.attach(dispatcher, subworkflows)
    refused: list[str] = []

    def refusing_once(name: str) -> None:
        real = getattr(store, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if not refused and carries_child_start(args, kwargs):
                refused.append(name)
                raise StoreUnavailable("the state database cannot be used now: disk I/O error")
            return await real(*args, **kwargs)

        monkeypatch.setattr(store, name, call)

    try:
        for spec in (CHILD, PARENT):
            await orch.register(json.dumps(spec), yaml=False, force=False)
        doc, _ = await orch.execute("par", inputs={}, version=None, idempotency_key=None, wait=None)
        parent_id = str(doc["id"])
        refusing_once("record_events")
        refusing_once("create_execution")
        requested: dict[str, Any] = {
            "type": "subworkflow.requested",
            "node_id": "call",
            "attempt": 1,
            "data": {"workflow_id": "kid", "version": "^1", "inputs": {}},
        }
        ticket = RunTicket(parent_id, "par", "1.0.0", "{}", {}, "running")
        subworkflows.on_events(ticket, engine, [requested])  # type: ignore[arg-type]
        await until("the child announced to its parent", lambda: bool(engine.answers))
        assert refused, "the store was never asked to write the child's start"
        child = await store.child_of(parent_id, "call", None, 1)
        assert child is not None
        child_id = str(child["id"])
        assert engine.answers[0].child_execution_id == child_id
        # before: stored as queued, never handed to the dispatcher, by the first try or the
        # parent's asking again
        assert submitted[child_id] == 1, submitted
        assert dispatcher.queue_depth == 2  # the parent (no engine took it here) and its child
        events = await store.events(child_id)
        assert [(e["seq"], e["type"]) for e in events] == [
            (1, "execution.queued"),
            (2, "subworkflow.started"),
        ]
        data = events[1]["data"]
        assert isinstance(data, dict) and data["parent_execution_id"] == parent_id
    finally:
        await subworkflows.close()
        await dispatcher.close()
        await store.close()
        checker.close()
