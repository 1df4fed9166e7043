"""A sub-workflow's final answer that its parent's engine did not take (frozen past the call's
deadline, overloaded, restarting) is sent again, to wherever the parent is, until it is taken
or can change nothing: the parent asks again only when it resumes, so while its stream lives
nothing else would end its waiting node. The coordinator against fakes of its store and of the
engines' ResolveSubWorkflow."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from engine.api import dagengine_pb2 as pb
from orchestrator.dispatching import RunTicket
from orchestrator.errors import OrchestratorError
from orchestrator.store import ChildLink, Lineage
from orchestrator.subworkflows import ChildRequest, ChildStarted, SubWorkflows

PARENT = "parent-1"
TICKET = RunTicket(PARENT, "parent", "1.0.0", "{}", {}, "running")


def refusal(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=f"refused with {code.name}"
    )


@dataclass
class Engine:
    """An engine's ResolveSubWorkflow: announcements are taken; each final answer gets the
    next code of ``refuse`` (None: taken), then is taken once they run out."""

    key: str = "engine-0"
    refuse: list[grpc.StatusCode | None] = field(default_factory=list)
    finals: list[pb.ResolveSubWorkflowRequest] = field(default_factory=list)
    taken: list[pb.ResolveSubWorkflowRequest] = field(default_factory=list)
    hold: asyncio.Event | None = None
    """Set: final answers wait for it (an engine that does not answer yet)."""

    @property
    def stub(self) -> Engine:
        return self

    async def ResolveSubWorkflow(
        self, request: pb.ResolveSubWorkflowRequest, timeout: float
    ) -> pb.ResolveSubWorkflowResponse:
        if request.WhichOneof("result") is not None:
            self.finals.append(request)
            if self.hold is not None:
                await self.hold.wait()
            code = self.refuse.pop(0) if self.refuse else None
            if code is not None:
                raise refusal(code)
        self.taken.append(request)
        return pb.ResolveSubWorkflowResponse()


class FakeStore:
    async def events(self, execution_id: str) -> list[dict[str, Any]]:
        return []

    async def get_execution(self, execution_id: str) -> dict[str, Any] | None:
        return {"status": "running", "outputs": {}, "error": None}

    async def live_children(self) -> list[ChildLink]:
        return []

    async def lineage(self, execution_id: str) -> Lineage | None:
        return Lineage(execution_id, "parent", "1.0.0", "running", 0, {})


class Harness:
    def __init__(self, engine: Engine | None = None) -> None:
        self.engine: Engine | None = engine or Engine()
        self.children = 0
        self.by_key: dict[tuple[str, int | None, int], str] = {}
        self.coordinator = SubWorkflows(
            FakeStore(),  # type: ignore[arg-type]
            self,
            start_child=self.start_child,
            cancel=self.cancel,
            has_subworkflows=lambda workflow, version: True,
        )

    def link_of(self, execution_id: str) -> Any:
        return self.engine

    async def start_child(self, request: ChildRequest, track: Any) -> ChildStarted:
        key = (request.node_id, request.item, request.attempt)
        found = self.by_key.get(key)
        if found is not None:  # a resumed parent asking again: the child it has
            return ChildStarted(found, "1.0.0", False)
        self.children += 1
        child_id = self.by_key[key] = f"child-{self.children}"
        track(child_id)
        return ChildStarted(child_id, "1.0.0", True)

    async def cancel(self, execution_id: str, reason: str) -> object:
        return {}

    def request(self, node: str) -> None:
        event: dict[str, Any] = {
            "type": "subworkflow.requested",
            "node_id": node,
            "attempt": 1,
            "data": {"workflow_id": "child", "version": "^1", "inputs": {}},
        }
        self.coordinator.on_events(TICKET, self.engine, [event])  # type: ignore[arg-type]

    def child_ends(self, child_id: str, v: int = 1) -> None:
        self.coordinator.finished(
            child_id,
            {"type": "execution.succeeded", "version": "1.0.0", "data": {"outputs": {"v": v}}},
        )


async def until(what: str, done: Callable[[], bool]) -> None:
    for _ in range(500):
        if done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("orchestrator.subworkflows.ANSWER_BACKOFF", (0.01, 0.02), raising=False)


async def test_a_final_answer_the_engine_did_not_take_is_sent_again_until_taken() -> None:
    engine = Engine(refuse=[grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE])
    h = Harness(engine)
    h.request("call")
    await until("the announcement", lambda: len(engine.taken) == 1)
    h.child_ends("child-1", v=42)
    # before: one try, its DEADLINE_EXCEEDED logged, and the parent's node waited for good
    await until("the answer taken", lambda: len(engine.taken) == 2)
    assert len(engine.finals) == 3
    answer = engine.taken[-1]
    assert (answer.child_execution_id, answer.output_json) == ("child-1", '{"v":42}')
    await h.coordinator.close()
    assert not h.coordinator._tasks and h.coordinator._locks == {}


async def test_an_answer_goes_to_the_engine_the_parent_moved_to() -> None:
    first = Engine("engine-0", refuse=[grpc.StatusCode.UNAVAILABLE] * 1000)
    h = Harness(first)
    h.request("call")
    await until("the announcement", lambda: len(first.taken) == 1)
    h.child_ends("child-1")
    await until("tries on the first engine", lambda: len(first.finals) >= 2)
    moved = Engine("engine-1")
    h.engine = moved  # the parent resumed there, its node waiting on the same attempt
    await until("the answer taken where the parent is", lambda: len(moved.taken) == 1)
    await asyncio.sleep(0.05)
    assert len(moved.finals) == 1
    await h.coordinator.close()


@pytest.mark.parametrize("code", [grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND])
async def test_an_answer_the_engine_refuses_is_not_sent_again(code: grpc.StatusCode) -> None:
    engine = Engine(refuse=[code] * 10)
    h = Harness(engine)
    h.request("call")
    await until("the announcement", lambda: len(engine.taken) == 1)
    h.child_ends("child-1")
    await until("the answer tried", lambda: len(engine.finals) == 1)
    await until("the coordinator idle", lambda: not h.coordinator._tasks)
    assert len(engine.finals) == 1
    await h.coordinator.close()


async def test_sending_again_stops_once_the_parent_ends_or_leaves_its_stream() -> None:
    engine = Engine(refuse=[grpc.StatusCode.DEADLINE_EXCEEDED] * 1000)
    h = Harness(engine)
    h.request("a")
    h.request("b")
    await until("the announcements", lambda: len(engine.taken) == 2)
    h.child_ends("child-1")
    await until("tries", lambda: len(engine.finals) >= 2)
    h.engine = None  # the parent left its engine: resumed elsewhere, it asks again
    await until("the coordinator idle", lambda: not h.coordinator._tasks)
    h.engine = engine
    h.child_ends("child-2")
    tried = len(engine.finals)
    await until("tries", lambda: len(engine.finals) >= tried + 2)
    h.coordinator.finished(PARENT, {"type": "execution.failed", "data": {"error": "gone"}})
    await until("the coordinator idle", lambda: not h.coordinator._tasks)
    tried = len(engine.finals)
    await asyncio.sleep(0.1)
    assert len(engine.finals) == tried
    await h.coordinator.close()


async def test_an_answer_being_sent_again_holds_up_no_other() -> None:
    engine = Engine(hold=asyncio.Event())
    h = Harness(engine)
    h.request("a")
    h.request("b")
    await until("the announcements", lambda: len(engine.taken) == 2)
    h.child_ends("child-1")
    await until("a's answer on its way", lambda: len(engine.finals) == 1)
    # the engine does not answer a's yet; b's child ends and its answer is taken meanwhile
    engine.hold = None
    h.child_ends("child-2", v=2)
    await until("b's answer taken", lambda: len(engine.taken) == 3)
    assert engine.taken[-1].node_id == "b"
    await h.coordinator.close()


async def test_a_resumed_parent_asking_again_is_not_held_up_behind_the_tries() -> None:
    engine = Engine(refuse=[grpc.StatusCode.DEADLINE_EXCEEDED] * 1000)
    h = Harness(engine)
    h.request("call")
    await until("the announcement", lambda: len(engine.taken) == 1)
    h.child_ends("child-1")
    await until("tries", lambda: len(engine.finals) >= 2)
    # the same attempt asks again (its run resumed): answered between two tries, not after all
    found = await asyncio.wait_for(
        h.coordinator.execute(ChildRequest(PARENT, "call", None, 1, "child", "^1", {})), 5
    )
    assert (found.execution_id, found.created) == ("child-1", False)
    await h.coordinator.close()


async def test_the_answer_for_a_child_that_could_not_start_is_sent_again() -> None:
    engine = Engine(refuse=[grpc.StatusCode.DEADLINE_EXCEEDED])
    h = Harness(engine)

    async def refuse(request: ChildRequest, track: Any) -> ChildStarted:
        raise OrchestratorError("no version of child matches ^9")

    h.coordinator._start_child = refuse
    h.request("call")
    await until("the answer taken", lambda: len(engine.taken) == 1)
    assert len(engine.finals) == 2
    assert engine.taken[0].error == "sub-workflow child: no version of child matches ^9"
    await h.coordinator.close()


async def test_closing_ends_the_tries_and_leaves_nothing_pending() -> None:
    engine = Engine(refuse=[grpc.StatusCode.UNAVAILABLE] * 1000)
    h = Harness(engine)
    h.request("call")
    await until("the announcement", lambda: len(engine.taken) == 1)
    h.child_ends("child-1")
    await until("tries", lambda: len(engine.finals) >= 2)
    tasks = set(h.coordinator._tasks)
    assert tasks
    await h.coordinator.close()
    assert all(t.done() for t in tasks) and not h.coordinator._tasks
    # an end reported while stopping starts nothing the loop would be left with
    h.request("other")
    assert not h.coordinator._tasks
    tried = len(engine.finals)
    await asyncio.sleep(0.05)
    assert len(engine.finals) == tried


async def test_a_call_that_raises_what_it_does_not_expect_is_logged_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Closed(Engine):
        async def ResolveSubWorkflow(
            self, request: pb.ResolveSubWorkflowRequest, timeout: float
        ) -> pb.ResolveSubWorkflowResponse:
            if request.WhichOneof("result") is not None:
                # a channel closed under the call as its engine was dropped
                raise RuntimeError("Cannot invoke RPC on closed channel!")
            return await super().ResolveSubWorkflow(request, timeout)

    engine = Closed()
    h = Harness(engine)
    h.request("call")
    await until("the announcement", lambda: len(engine.taken) == 1)
    h.child_ends("child-1")
    await until("the answer's call to end", lambda: not h.coordinator._tasks)
    failed = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in failed] == [
        "a sub-workflow call failed: Cannot invoke RPC on closed channel!"
    ]
    assert failed[0].exc_info is not None
