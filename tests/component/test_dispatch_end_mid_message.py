"""A run's final event that is not the last of its message (an engine of an earlier release put
the lines of scripts stopped by ``fail_fast`` after it): the dispatcher takes it as the run's
end wherever it is, stores the whole message, and tells whoever waits, a parent included,
against a fake engine and the real store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from engine.api import dagengine_pb2 as pb
from orchestrator.dispatching import Dispatcher, run_end
from orchestrator.lua_checking import LuaSyntaxChecker
from orchestrator.store import Store
from tests.component.dispatch_helpers import FakeLink, OneEngine
from tests.component.serving_helpers import facade

SPEC = {
    "id": "ffl",
    "version": "1.0.0",
    "fail_fast": True,
    "nodes": [
        {"id": "bad", "lua": 'error("bad")'},
        {"id": "other", "lua": 'log("info", "hello from other")\nreturn 1'},
    ],
}

# (type, node) of each message the engine sends: the end is in the middle of the last one
MESSAGES: list[list[tuple[str, str | None]]] = [
    [("execution.started", None), ("node.started", "bad"), ("node.started", "other")],
    [
        ("node.failed", "bad"),
        ("node.cancelled", "other"),
        ("execution.failed", None),
        ("node.log", "other"),
    ],
]


class FakeCall:
    def __init__(self, request: pb.ExecuteRequest) -> None:
        self.request = request

    def __aiter__(self) -> AsyncIterator[pb.ExecuteResponse]:
        return self._responses()

    async def _responses(self) -> AsyncIterator[pb.ExecuteResponse]:
        seq = self.request.first_seq or 1
        for message in MESSAGES:
            events = []
            for kind, node in message:
                data: dict[str, Any] = {}
                if kind == "execution.failed":
                    data = {"outputs": {}, "error": "node 'bad' failed and fail_fast is set"}
                elif kind == "node.log":
                    data = {"level": "info", "message": "hello from other"}
                events.append(
                    pb.Event(
                        seq=seq,
                        time="2026-01-01T00:00:00Z",
                        type=kind,
                        severity="info",
                        workflow_id="ffl",
                        version="1.0.0",
                        execution_id=self.request.execution_id,
                        node_id=node or "",
                        data_json=json.dumps(data),
                    )
                )
                seq += 1
            yield pb.ExecuteResponse(events=events)

    def cancel(self) -> None:
        pass


@dataclass
class FakeStub:
    calls: list[FakeCall] = field(default_factory=list)

    def Execute(self, request: pb.ExecuteRequest) -> FakeCall:
        call = FakeCall(request)
        self.calls.append(call)
        return call


class Parents:
    """What ``SubWorkflows`` is told of a run's end: a parent waiting on it is resolved so."""

    def __init__(self) -> None:
        self.told: list[tuple[str, str]] = []

    def finished(self, execution_id: str, event: dict[str, Any]) -> None:
        self.told.append((execution_id, str(event["type"])))


def test_the_end_is_found_wherever_it_is_in_a_message() -> None:
    end: dict[str, Any] = {"type": "execution.failed", "seq": 7}
    assert run_end([{"type": "node.cancelled"}, end, {"type": "node.log"}]) is end
    assert run_end([{"type": "node.log"}, {"type": "execution.started"}]) is None


async def test_a_run_ended_mid_message_is_finished_and_its_waiters_told(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = await Store.open(str(tmp_path / "state.db"))
    checker = LuaSyntaxChecker()
    orch = facade(store, checker)
    link = FakeLink(FakeStub())
    dispatcher = Dispatcher(
        store,
        OneEngine(link),  # type: ignore[arg-type]
        publish=orch.publish,
        on_finished=orch.finished,
    )
    parents = Parents()
    orch.attach(dispatcher)
    orch.subworkflows = parents  # type: ignore[assignment]
    try:
        await orch.register(json.dumps(SPEC), yaml=False, force=False)
        # before: the wait ran its whole 10 s, and the run was dispatched again as if its
        # stream had broken early ("ended early: resuming elsewhere")
        doc, _ = await asyncio.wait_for(
            orch.execute("ffl", inputs={}, version=None, idempotency_key=None, wait=10),
            5,
        )
        assert doc["status"] == "failed"
        eid = str(doc["id"])
        assert parents.told == [(eid, "execution.failed")]
        await asyncio.sleep(0.2)  # a requeued run would be on its way to the engine again
        assert len(link.stub.calls) == 1
        assert "ended early" not in caplog.text
        stored = [(int(str(e["seq"])), e["type"]) for e in await store.events(eid)]
        assert [kind for _, kind in stored][-3:] == [
            "node.cancelled",
            "execution.failed",
            "node.log",
        ]
        assert [seq for seq, _ in stored] == sorted(seq for seq, _ in stored)
    finally:
        await dispatcher.close()
        await store.close()
        checker.close()
