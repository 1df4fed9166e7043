"""The sub-workflow coordinator against fakes of its store, engines and orchestrator: the
orderings that real processes make rare (a parent ending while its child is being stored, an
answer racing its announcement) made to happen on purpose."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from engine.api import dagengine_pb2 as pb
from orchestrator.dispatching import RunTicket
from orchestrator.errors import OrchestratorError, StoreUnavailable
from orchestrator.store import ChildLink, Lineage
from orchestrator.subworkflows import ChildRequest, ChildStarted, SubWorkflows, node_attempts


@dataclass
class FakeStub:
    calls: list[pb.ResolveSubWorkflowRequest] = field(default_factory=list)
    delay: float = 0.0
    waiting: set[tuple[str, int]] | None = None
    """(node, attempt) the engine waits on; None: whatever it is asked."""

    async def ResolveSubWorkflow(
        self, request: pb.ResolveSubWorkflowRequest, timeout: float
    ) -> pb.ResolveSubWorkflowResponse:
        await asyncio.sleep(self.delay)
        self.calls.append(request)
        if self.waiting is not None and (request.node_id, request.attempt) not in self.waiting:
            # as the engine's NothingWaiting is sent
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details=f"no sub-workflow of node {request.node_id!r} is waiting",
            )
        return pb.ResolveSubWorkflowResponse()


@dataclass
class FakeLink:
    stub: FakeStub = field(default_factory=FakeStub)
    key: str = "engine-0"


class FakeStore:
    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.timeline: list[dict[str, Any]] = []  # the parent's stored events

    async def events(self, execution_id: str) -> list[dict[str, Any]]:
        return self.timeline

    async def get_execution(self, execution_id: str) -> dict[str, Any] | None:
        return self.docs.get(execution_id)

    async def live_children(self) -> list[ChildLink]:
        return []

    async def lineage(self, execution_id: str) -> Lineage | None:
        return Lineage(execution_id, "parent", "1.0.0", "running", 0, {})


class Harness:
    def __init__(self) -> None:
        self.store = FakeStore()
        self.link = FakeLink()
        self.cancelled: list[tuple[str, str]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.children = 0
        self.refusals = 0  # writes the store refuses before it takes one
        self.coordinator = SubWorkflows(
            self.store,  # type: ignore[arg-type]
            self,
            start_child=self.start_child,
            cancel=self.cancel,
            has_subworkflows=lambda workflow, version: True,
        )

    def link_of(self, execution_id: str) -> Any:
        return self.link

    async def start_child(self, request: ChildRequest, track: Any) -> ChildStarted:
        await self.release.wait()  # the store's write, as slow as the test wants
        if self.refusals:
            self.refusals -= 1
            raise StoreUnavailable("the state database cannot be used now: disk is full")
        self.children += 1
        child_id = f"child-{self.children}"
        self.store.docs[child_id] = {"status": "running", "outputs": {}, "error": None}
        track(child_id)
        return ChildStarted(child_id, "1.0.0", True)

    async def cancel(self, execution_id: str, reason: str) -> object:
        self.cancelled.append((execution_id, reason))
        return {}


def requested(node: str, attempt: int = 1, item: int | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"workflow_id": "child", "version": "^1", "inputs": {}}
    if item is not None:
        data["item"] = item
    return {"type": "subworkflow.requested", "node_id": node, "attempt": attempt, "data": data}


TICKET = RunTicket("parent-1", "parent", "1.0.0", "{}", {}, "running")


async def settle(h: Harness) -> None:
    for _ in range(20):
        await asyncio.sleep(0)
    await asyncio.gather(*h.coordinator._tasks, return_exceptions=True)


async def test_a_child_stored_after_its_parent_ended_is_cancelled() -> None:
    h = Harness()
    h.release.clear()
    h.coordinator.on_events(TICKET, h.link, [requested("sub")])  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    # the parent ends (cancelled) while its child's row is still being written
    h.coordinator.finished("parent-1", {"type": "execution.cancelled", "data": {}})
    h.release.set()
    await settle(h)
    assert h.cancelled == [("child-1", "its parent execution ended cancelled")]


async def test_a_child_is_told_why_its_parent_ended() -> None:
    h = Harness()
    h.coordinator.on_events(TICKET, h.link, [requested("sub")])  # type: ignore[arg-type]
    await settle(h)
    # a run the orchestrator ends itself (its engines gone) tells its nodes' ends to no one:
    # before, its children heard only "its parent execution ended", not the user's reason
    end = {"type": "execution.cancelled", "data": {"error": "cut tree", "outputs": {}}}
    h.coordinator.finished("parent-1", end)
    await settle(h)
    assert h.cancelled == [("child-1", "its parent execution ended cancelled: cut tree")]


async def test_a_child_the_store_cannot_take_yet_is_asked_for_again_not_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("orchestrator.errors.STORE_BACKOFF", (0.01, 0.02))
    h = Harness()
    h.refusals = 3
    h.coordinator.on_events(TICKET, h.link, [requested("sub")])  # type: ignore[arg-type]
    await settle(h)
    # the node hears of its child (announced), never of a failure
    [call] = h.link.stub.calls
    assert call.child_execution_id == "child-1" and call.WhichOneof("result") is None
    assert h.refusals == 0 and h.children == 1


async def test_the_announcement_reaches_the_engine_before_the_result() -> None:
    h = Harness()
    h.link.stub.delay = 0.05  # a slow engine: the child ends while the announcement travels
    h.coordinator.on_events(TICKET, h.link, [requested("sub")])  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    h.coordinator.finished(
        "child-1",
        {"type": "execution.succeeded", "version": "1.0.0", "data": {"outputs": {"v": 1}}},
    )
    await settle(h)
    kinds = [c.WhichOneof("result") for c in h.link.stub.calls]
    assert kinds == [None, "output_json"]
    assert all(c.child_execution_id == "child-1" for c in h.link.stub.calls)
    assert h.link.stub.calls[1].child_status == "succeeded"


async def test_a_child_stored_after_its_node_attempt_ended_is_cancelled() -> None:
    h = Harness()
    h.release.clear()  # the store is slow to take the child
    h.coordinator.on_events(TICKET, h.link, [requested("sub", attempt=1)])  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    # the node times out and retries before its first child is stored: nothing to cancel yet
    retrying = {"type": "node.retrying", "node_id": "sub", "attempt": 1, "data": {}}
    h.store.timeline.append(retrying)  # stored, then reported
    h.coordinator.on_events(TICKET, h.link, [retrying])  # type: ignore[arg-type]
    h.link.stub.waiting = {("sub", 2)}
    h.release.set()
    await settle(h)
    assert h.cancelled == [
        ("child-1", "its parent node 'sub' attempt 1 no longer waits for it"),
    ]
    # the next attempt's child is waited for, and kept
    h.coordinator.on_events(TICKET, h.link, [requested("sub", attempt=2)])  # type: ignore[arg-type]
    await settle(h)
    assert h.children == 2 and [c for c, _ in h.cancelled] == ["child-1"]


async def test_a_child_for_an_attempt_that_has_not_asked_yet_is_kept() -> None:
    # the engine takes no announcement for an item queued behind others either (or an attempt
    # in its retry delay): that item asks later, and must find this child running
    h = Harness()
    h.link.stub.waiting = set()
    h.store.timeline.append(
        {"type": "node.started", "node_id": "each", "attempt": 1, "data": {"items": 2}}
    )
    started = await h.coordinator.execute(ChildRequest("parent-1", "each", 1, 1, "child", "^1", {}))
    await settle(h)
    assert started.execution_id == "child-1" and h.cancelled == []


async def test_a_retrying_item_cancels_only_its_own_child() -> None:
    h = Harness()
    h.coordinator.on_events(
        TICKET,
        h.link,  # type: ignore[arg-type]
        [requested("each", item=0), requested("each", item=1), requested("other")],
    )
    await settle(h)
    assert h.children == 3
    retrying = {
        "type": "node.retrying",
        "node_id": "each",
        "attempt": 1,
        "data": {"item": 1, "error": "timed out after 1s"},
    }
    h.coordinator.on_events(TICKET, h.link, [retrying])  # type: ignore[arg-type]
    await settle(h)
    # the child says why, as the node was told
    assert h.cancelled == [("child-2", "its parent node 'each' is retrying: timed out after 1s")]
    # the whole node failing gives up on the rest of its items, not on other nodes
    failed = {"type": "node.failed", "node_id": "each", "attempt": 1, "data": {}}
    h.coordinator.on_events(TICKET, h.link, [failed])  # type: ignore[arg-type]
    await settle(h)
    # each once: child-2 was asked already (the fake's cancel does not end it), and a second
    # cancel of it would only be refused by its engine as a run it no longer has
    assert sorted(h.cancelled) == [
        ("child-1", "its parent node 'each' failed"),
        ("child-2", "its parent node 'each' is retrying: timed out after 1s"),
    ]


@pytest.mark.parametrize(
    ("kind", "error", "expected"),
    [
        ("execution.failed", "node 'x' failed: boom", "ended failed: node 'x' failed: boom"),
        ("execution.cancelled", None, "ended cancelled"),
    ],
)
async def test_a_child_that_did_not_succeed_fails_the_node_naming_it(
    kind: str, error: str | None, expected: str
) -> None:
    h = Harness()
    h.coordinator.on_events(TICKET, h.link, [requested("sub")])  # type: ignore[arg-type]
    await settle(h)
    h.coordinator.finished("child-1", {"type": kind, "data": {"error": error, "outputs": {}}})
    await settle(h)
    answer = h.link.stub.calls[-1]
    assert answer.WhichOneof("result") == "error"
    assert answer.error == f"sub-workflow execution child-1 {expected}"
    assert answer.child_status == kind.split(".")[1]


async def test_nothing_is_kept_for_children_that_could_not_start_or_have_no_node() -> None:
    h = Harness()

    async def refuse(request: ChildRequest, track: Any) -> ChildStarted:
        raise OrchestratorError("no version of child matches ^9")

    h.coordinator._start_child = refuse
    for item in range(3):
        with pytest.raises(OrchestratorError):
            await h.coordinator.execute(
                ChildRequest("parent-1", "each", item, 1, "child", "^9", {})
            )
    h.coordinator._start_child = h.start_child
    await h.coordinator.execute(ChildRequest("parent-1", "", None, 1, "child", "^1", {}))
    # before: an answer lock per refused item, and one per node-less call, for good
    assert h.coordinator._locks == {}
    # nor for one that started, once its announcement is out (its result takes a new one)
    await h.coordinator.execute(ChildRequest("parent-1", "sub", None, 1, "child", "^1", {}))
    await settle(h)
    assert h.coordinator._locks == {}


def test_a_nodes_attempts_are_read_from_its_events_item_by_item() -> None:
    def ev(kind: str, attempt: int = 1, **data: Any) -> dict[str, Any]:
        return {"type": f"node.{kind}", "node_id": "each", "attempt": attempt, "data": data}

    events = [
        ev("started", items=3),
        ev("retrying", 1, item=2, next_attempt=2),
        {"type": "node.started", "node_id": "other", "attempt": 1, "data": {"items": 9}},
        ev("retrying", 2, item=2, next_attempt=3),
    ]
    state = node_attempts(events, "each")
    assert (state.started, state.ended, state.items) == (True, None, 3)
    assert [state.attempt(i) for i in (0, 1, 2)] == [1, 1, 3]
    assert node_attempts([*events, ev("failed", 3)], "each").ended == "failed"
    assert not node_attempts(events, "missing").started
