"""A fault of the dispatcher's own (a damaged store fails every read, the end of a run cannot
be stored) against fakes of the store and an engine: the run waits between tries instead of
spinning, the log tells it once rather than at every try, and the run is carried on (or given
up) once the fault is gone."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from engine.api import dagengine_pb2 as pb
from orchestrator import dispatching
from orchestrator.dispatching import (
    FAULT_BACKOFF,
    FAULT_BACKOFF_MAX,
    FAULT_LOG_BURST,
    MAX_DISPATCHES,
    Dispatcher,
    FaultLog,
    RunTicket,
    fault_backoff,
)
from tests.component.dispatch_helpers import FakeLink, OneEngine

SPEC = json.dumps({"id": "wf", "version": "1.0.0", "nodes": [{"id": "a", "lua": "return 1"}]})


class Damaged(Exception):
    """What a damaged database raises: not the store's ``StoreUnavailable``."""


def ticket(execution_id: str) -> RunTicket:
    return RunTicket(execution_id, "wf", "1.0.0", SPEC, {}, "queued")


class FakeStore:
    def __init__(self, read_faults: int = 0, end_faults: int = 0) -> None:
        self.read_faults = read_faults  # load_ticket fails this many times first
        self.end_faults = end_faults  # end_point fails this many times first
        self.reads = 0
        self.events: list[dict[str, Any]] = []

    async def load_ticket(self, execution_id: str) -> RunTicket | None:
        self.reads += 1
        if self.read_faults:
            self.read_faults -= 1
            raise Damaged("database disk image is malformed")
        return ticket(execution_id)

    async def end_point(self, execution_id: str) -> tuple[int, list[dict[str, Any]]]:
        if self.end_faults:
            self.end_faults -= 1
            raise Damaged("database disk image is malformed")
        return len(self.events) + 1, list(self.events)

    async def record_events(
        self, execution_id: str, events: list[dict[str, Any]], message: bytes | None = None
    ) -> None:
        self.events.extend(events)


class FakeCall:
    """An Execute stream: the given events, one response each, then its end."""

    def __init__(self, request: pb.ExecuteRequest, kinds: list[str]) -> None:
        self.request = request
        self.kinds = kinds
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[pb.ExecuteResponse]:
        return self._responses()

    async def _responses(self) -> AsyncIterator[pb.ExecuteResponse]:
        for i, kind in enumerate(self.kinds):
            yield pb.ExecuteResponse(
                events=[
                    pb.Event(
                        seq=(self.request.first_seq or 1) + i,
                        time="2026-01-01T00:00:00Z",
                        type=kind,
                        severity="info",
                        workflow_id="wf",
                        version="1.0.0",
                        execution_id=self.request.execution_id,
                        data_json="{}",
                    )
                ]
            )

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeStub:
    kinds: list[str]
    calls: list[FakeCall] = field(default_factory=list)

    def Execute(self, request: pb.ExecuteRequest) -> FakeCall:
        call = FakeCall(request, self.kinds)
        self.calls.append(call)
        return call


def harness(
    store: FakeStore, kinds: list[str]
) -> tuple[Dispatcher, FakeLink, asyncio.Future[dict[str, Any]]]:
    link = FakeLink(FakeStub(kinds))
    ended: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def finished(execution_id: str, event: dict[str, Any]) -> None:
        if not ended.done():
            ended.set_result(event)

    dispatcher = Dispatcher(
        store,  # type: ignore[arg-type]
        OneEngine(link),  # type: ignore[arg-type]
        publish=lambda events: None,
        on_finished=finished,
    )
    return dispatcher, link, ended


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The faults in a row each backoff was asked for; the waits themselves made short."""
    asked: list[int] = []

    def short(faults: int) -> float:
        asked.append(faults)
        return 0.001

    monkeypatch.setattr(dispatching, "fault_backoff", short)
    monkeypatch.setattr(dispatching, "FAULT_BACKOFF", 0.001)
    return asked


def test_the_wait_after_a_fault_doubles_up_to_its_most() -> None:
    waits = [fault_backoff(n) for n in range(1, 10)]
    assert waits[0] == FAULT_BACKOFF and waits[-1] == FAULT_BACKOFF_MAX
    assert all(b == min(2 * a, FAULT_BACKOFF_MAX) for a, b in itertools.pairwise(waits))


def test_the_fault_log_tells_each_run_once_and_within_its_budget() -> None:
    faults = FaultLog()
    same = "DatabaseError: database disk image is malformed"
    told = [faults.tell(f"run-{i}", same, now=100.0) for i in range(50)]
    warned = [t for t in told if t is not None]
    assert len(warned) == FAULT_LOG_BURST
    assert [trace for _, trace in warned] == [True] + [False] * (FAULT_LOG_BURST - 1)
    # the same fault of the same run again, later: debug only, and no budget spent
    assert faults.tell("run-0", same, now=200.0) is None
    # a new one, once the budget refilled: told, with the count of those held back
    assert faults.tell("run-0", "OSError: disk I/O error", now=200.0) == (
        50 - FAULT_LOG_BURST,
        True,
    )
    faults.forget("run-0")
    assert faults.tell("run-0", "OSError: disk I/O error", now=200.0) == (0, False)


async def test_a_run_whose_dispatch_keeps_failing_waits_between_tries_and_runs_after(
    waits: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="orchestrator.dispatching")
    store = FakeStore(read_faults=12)
    dispatcher, link, ended = harness(store, ["execution.started", "execution.succeeded"])
    try:
        dispatcher.submit("run-1", "wf")
        end = await asyncio.wait_for(ended, 10)
        assert end["type"] == "execution.succeeded"
        # before: tried again at once, with no wait, at each of the twelve faults
        assert waits == list(range(1, 13))
        assert store.reads == 13 and len(link.stub.calls) == 1
        told = [r for r in caplog.records if r.levelno >= logging.WARNING]
        # before: twelve ERROR records, each with its traceback
        assert len(told) == 1 and told[0].exc_info is not None
        assert "database disk image is malformed" in told[0].getMessage()
        assert dispatcher._fault_tries == {} and dispatcher.running == 0
    finally:
        await dispatcher.close()


async def test_a_give_up_the_store_cannot_take_is_tried_again_later(
    waits: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
    store = FakeStore(end_faults=3)
    # the engine answers, then its stream ends unfinished: the twentieth engine lost
    dispatcher, link, ended = harness(store, ["execution.started"])
    dispatcher._dispatches["run-1"] = MAX_DISPATCHES - 1
    try:
        dispatcher.submit("run-1", "wf")
        # before: the give-up's task died with the fault, and the run was left nowhere
        end = await asyncio.wait_for(ended, 10)
        assert end["type"] == "execution.failed"
        assert str(end["data"]["error"]).startswith(f"gave up after {MAX_DISPATCHES}")
        assert len(link.stub.calls) == 1  # given up, not sent to an engine again
        assert waits == [1, 2, 3]
        assert [e["type"] for e in store.events][-1] == "execution.failed"
        told = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert sum("malformed" in r.getMessage() for r in told) == 1
        assert errors == []
    finally:
        await dispatcher.close()
