"""A cancel the engine did not hear (stopped, busy, cut off) is sent again while the run is on
that engine, and no longer once the run has left it. The engine is a stub whose Cancel fails
with the error a real call that got no answer raises; the integration test of the same story
cannot tell this retry from the stored cancel a resumed run finds, as an engine stopped for
long is taken for lost by the link's pings."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import grpc
import pytest

from engine.api import dagengine_pb2 as pb
from orchestrator import dispatching
from orchestrator.dispatching import Dispatcher, RunTicket, _Running


def unanswered() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        "Deadline Exceeded",
    )


class DeafEngine:
    """Misses the first ``deaf_for`` Cancel calls, then hears them."""

    def __init__(self, deaf_for: int) -> None:
        self.deaf_for = deaf_for
        self.calls: list[pb.CancelRequest] = []

    async def Cancel(self, request: pb.CancelRequest, timeout: float) -> pb.CancelResponse:
        self.calls.append(request)
        if len(self.calls) <= self.deaf_for:
            raise unanswered()
        return pb.CancelResponse()


def running_on(engine: DeafEngine) -> Dispatcher:
    dispatcher = Dispatcher(None, None, publish=list)  # type: ignore[arg-type]
    link = SimpleNamespace(stub=engine, key="engine-0")
    ticket = RunTicket("run-1", "wf", "1.0.0", "{}", {}, "running")
    dispatcher._running["run-1"] = _Running(ticket, link)  # type: ignore[arg-type]
    return dispatcher


async def retries_done(dispatcher: Dispatcher) -> None:
    """Wait for the dispatcher's tasks (the cancel's retries) to end of their own accord."""
    async with asyncio.timeout(10):
        while dispatcher._tasks:
            await asyncio.gather(*list(dispatcher._tasks))


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatching, "CANCEL_RETRY", 0.01)
    monkeypatch.setattr(dispatching, "CANCEL_RETRY_MAX", 0.04)


async def test_a_cancel_the_engine_did_not_hear_is_sent_until_it_does() -> None:
    engine = DeafEngine(deaf_for=2)
    dispatcher = running_on(engine)
    try:
        assert await dispatcher.cancel_running("run-1", "stop it")
        await retries_done(dispatcher)
    finally:
        await dispatcher.close()
    # before: one call, missed, and the run went on once its engine woke
    assert len(engine.calls) == 3  # asked until heard, then no more
    assert {(c.execution_id, c.reason) for c in engine.calls} == {("run-1", "stop it")}


async def test_a_cancel_is_not_sent_again_once_the_run_left_its_engine() -> None:
    engine = DeafEngine(deaf_for=1_000)
    dispatcher = running_on(engine)
    try:
        assert await dispatcher.cancel_running("run-1", "stop it")
        async with asyncio.timeout(10):
            while len(engine.calls) < 3:
                await asyncio.sleep(0.01)
        # its stream ended (the engine lost, say): a resumed run finds the stored cancel
        del dispatcher._running["run-1"]
        await retries_done(dispatcher)  # the retries stop: they do not ask for good
    finally:
        await dispatcher.close()
