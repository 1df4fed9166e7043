"""Reads of a run with large outputs, over the real facade and a real SQLite store.

Its document (every node's output, and the run's outputs again) is folded on the store's heavy
reader, so small reads are not queued behind it; encoded off the event loop, so probes are
answered meanwhile; and built and encoded a byte budget at a time (``LargeReads``), so many
callers of large runs take memory in turn. HTTP still answers with the whole document.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engine.api import dagengine_pb2 as pb
from engine.core.values import JSONObject
from orchestrator import orchestrating, serving_grpc, serving_http
from orchestrator import store as store_module
from orchestrator.store import HEAVY_READ_BYTES, LargeReads, Store
from tests.component.monitor_events import create_run, monitor_event
from tests.component.serving_helpers import Facade, served_facade
from tests.component.test_request_json_round3 import StubDispatcher

SPEC = {"id": "wf", "version": "1.0.0", "nodes": [{"id": "a", "lua": "return 1"}]}
BIG = "x" * (HEAVY_READ_BYTES + 1000)
"""The output of the large run's node: its events weigh past ``HEAVY_READ_BYTES``."""


async def stored_run(store: Store, execution_id: str, output: Any) -> None:
    """A finished run whose one node returned ``output``, which is also the run's."""
    await create_run(store, execution_id)
    await store.record_events(
        execution_id,
        [
            monitor_event(execution_id, 2, "execution.started"),
            monitor_event(execution_id, 3, "node.started", node_id="a"),
            monitor_event(execution_id, 4, "node.succeeded", node_id="a", data={"output": output}),
            monitor_event(execution_id, 5, "execution.succeeded", data={"outputs": {"a": output}}),
        ],
    )


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Facade]:
    async with served_facade(tmp_path, specs=[SPEC], with_triggers=False) as f:
        await stored_run(f.store, "large", [BIG, {"n": 1}])
        await stored_run(f.store, "small", {"n": 2})
        yield f


class HeldFolds:
    """``fold_nodes`` of the large run waits for ``release`` on the thread that folds it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.release = threading.Event()
        self.started = threading.Semaphore(0)
        self.folds = 0
        real: Callable[..., Any] = store_module.fold_nodes

        def held(order: Any, events: list[JSONObject]) -> Any:
            if any(isinstance(e.get("data"), dict) and BIG in str(e["data"]) for e in events):
                self.folds += 1
                self.started.release()
                assert self.release.wait(30)
            return real(order, events)

        monkeypatch.setattr(store_module, "fold_nodes", held)

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.acquire, True, 30)


def counted_folds(served: Facade, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the runs whose document the store folds from here on, in order."""
    folds: list[str] = []
    real = served.store.get_execution

    async def counted(execution_id: str, **kwargs: Any) -> Any:
        folds.append(execution_id)
        return await real(execution_id, **kwargs)

    monkeypatch.setattr(served.store, "get_execution", counted)
    return folds


async def get(url: str, timeout: float = 30) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
        http.get(url) as resp,
    ):
        return resp.status, await resp.read()


async def test_a_large_document_comes_whole_and_encoded_off_the_event_loop(
    served: Facade, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[threading.Thread] = []
    real = serving_http.encode_large

    def recorded(data: object) -> bytes:
        threads.append(threading.current_thread())
        return real(data)

    monkeypatch.setattr(serving_http, "encode_large", recorded)
    status, body = await get(f"{served.url}/api/v1/executions/large")
    assert status == 200
    doc = json.loads(body)
    assert doc["outputs"] == {"a": [BIG, {"n": 1}]}
    assert doc["nodes"]["a"]["output"] == [BIG, {"n": 1}]
    assert [t is threading.main_thread() for t in threads] == [False]
    # the same text as a small document's: compact, whatever the pieces
    assert body == json.dumps(doc, separators=(",", ":")).encode()
    status, body = await get(f"{served.url}/api/v1/executions/small")
    assert status == 200 and len(threads) == 1  # a small one is encoded as it always was


async def test_a_probe_is_answered_while_a_large_document_is_encoded(
    served: Facade, monkeypatch: pytest.MonkeyPatch
) -> None:
    release, started = threading.Event(), threading.Event()
    real = serving_http.encode_large

    def held(data: object) -> bytes:
        started.set()
        assert release.wait(30)
        return real(data)

    monkeypatch.setattr(serving_http, "encode_large", held)
    large = asyncio.create_task(get(f"{served.url}/api/v1/executions/large"))
    assert await asyncio.to_thread(started.wait, 30)
    assert (await get(f"{served.url}/healthz", timeout=5))[0] == 200
    assert not large.done()
    release.set()
    status, body = await large
    assert status == 200 and json.loads(body)["outputs"] == {"a": [BIG, {"n": 1}]}


async def test_a_small_read_is_answered_while_a_large_document_is_folded(
    served: Facade, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldFolds(monkeypatch)
    large = asyncio.create_task(get(f"{served.url}/api/v1/executions/large"))
    await held.wait_started()
    # the store's reader is not queued behind the fold: small reads of every kind go on
    status, body = await get(f"{served.url}/api/v1/executions/small", timeout=5)
    assert (status, json.loads(body)["outputs"]) == (200, {"a": {"n": 2}})
    assert (await get(f"{served.url}/api/v1/executions?limit=5", timeout=5))[0] == 200
    assert (await get(f"{served.url}/api/v1/executions/small/events", timeout=5))[0] == 200
    reply = await served.stub.GetExecution(pb.GetExecutionRequest(execution_id="small"), timeout=5)
    assert reply.id == "small"
    assert not large.done()
    held.release.set()
    assert (await large)[0] == 200


async def test_large_documents_are_built_a_budget_at_a_time(
    served: Facade, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three callers of the large run at once over both APIs, with a budget its size: one
    document is built while the others wait, and each gets it whole in turn."""
    head = await served.orch.execution_head("large", weigh=True)
    served.orch.large_reads = LargeReads(head.weight)
    held = HeldFolds(monkeypatch)
    calls = [
        asyncio.create_task(get(f"{served.url}/api/v1/executions/large")),
        asyncio.create_task(get(f"{served.url}/api/v1/executions/large")),
        asyncio.ensure_future(
            served.stub.GetExecution(pb.GetExecutionRequest(execution_id="large"), timeout=30)
        ),
    ]
    await held.wait_started()
    await asyncio.sleep(0.3)  # time for the others to start a fold, were they let
    assert held.folds == 1
    assert served.orch.large_reads.held == head.weight
    held.release.set()
    http_one, http_two, reply = await asyncio.gather(*calls)
    assert held.folds == 3
    for status, body in (http_one, http_two):
        assert status == 200 and json.loads(body)["outputs"] == {"a": [BIG, {"n": 1}]}
    assert json.loads(reply.nodes[0].output_json) == [BIG, {"n": 1}]  # fits in 4 MiB
    assert served.orch.large_reads.held == 0


async def test_a_waited_repeat_and_a_sub_workflow_status_take_their_turn_too(
    served: Facade, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ExecuteWorkflow`` with ``wait`` repeating a finished run's key, and an engine's
    ``GetSubWorkflowStatus``, fold the large run within the budget, as a GET does."""
    served.orch.attach(StubDispatcher())  # type: ignore[arg-type]
    await served.store.create_execution(
        execution_id="keyed-large",
        workflow_id="wf",
        version="1.0.0",
        inputs={},
        pinned={},
        created_at=time.time(),  # a key is kept for 24 hours from its run's creation
        node_ids=["a"],
        first_event=monitor_event("keyed-large", 1, "execution.queued"),
        idempotency_key="k",
        request_digest=orchestrating._digest({}, None),
    )
    await served.store.record_events(
        "keyed-large",
        [
            monitor_event("keyed-large", 2, "execution.started"),
            monitor_event("keyed-large", 3, "node.started", node_id="a"),
            monitor_event("keyed-large", 4, "node.succeeded", node_id="a", data={"output": BIG}),
            monitor_event("keyed-large", 5, "execution.succeeded", data={"outputs": {"a": BIG}}),
        ],
    )
    folds = counted_folds(served, monkeypatch)
    budget = served.orch.large_reads.budget
    async with served.orch.large_reads.hold(budget):  # another large read, being built
        calls = [
            asyncio.ensure_future(
                served.stub.ExecuteWorkflow(
                    pb.ExecuteWorkflowRequest(workflow_id="wf", idempotency_key="k", wait=True),
                    timeout=30,
                )
            ),
            asyncio.ensure_future(
                served.stub.GetSubWorkflowStatus(
                    pb.GetSubWorkflowStatusRequest(execution_id="large"), timeout=30
                )
            ),
        ]
        await asyncio.sleep(0.5)  # time for them to fold, were they let
        assert folds == []
        assert not any(call.done() for call in calls)
    executed, sub = await asyncio.gather(*calls)
    assert sorted(folds) == ["keyed-large", "large"]
    assert executed.execution_id == "keyed-large"
    assert json.loads(executed.execution.outputs_json) == {"a": BIG}
    assert sub.status == "succeeded" and json.loads(sub.outputs_json) == {"a": [BIG, {"n": 1}]}
    assert served.orch.large_reads.held == 0


async def test_grpc_makes_a_large_reply_off_the_event_loop(
    served: Facade, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[threading.Thread] = []
    real = serving_grpc._execution_reply

    def recorded(doc: JSONObject) -> pb.Execution:
        threads.append(threading.current_thread())
        return real(doc)

    monkeypatch.setattr(serving_grpc, "_execution_reply", recorded)
    reply = await served.stub.GetExecution(pb.GetExecutionRequest(execution_id="large"))
    assert json.loads(reply.outputs_json) == {"a": [BIG, {"n": 1}]}
    small = await served.stub.GetExecution(pb.GetExecutionRequest(execution_id="small"))
    assert json.loads(small.outputs_json) == {"a": {"n": 2}}
    assert [t is threading.main_thread() for t in threads] == [False, True]


async def test_a_cancel_of_a_large_finished_run_answers_whole_and_folds_it_once(
    served: Facade, monkeypatch: pytest.MonkeyPatch
) -> None:
    folds = counted_folds(served, monkeypatch)
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{served.url}/api/v1/executions/large/cancel", json={}) as resp,
    ):
        assert resp.status == 200
        assert (await resp.json())["outputs"] == {"a": [BIG, {"n": 1}]}
    assert folds == ["large"]  # the answer's; whether there was anything to cancel, its row


@pytest.mark.parametrize(
    "value",
    [
        {},
        [],
        {"a": [], "b": {}, "c": None, "é": "ü\u2028", "n": [1, 2.5, True, False]},
        {"nodes": {f"n{i}": {"output": {"s": i}, "status": "succeeded"} for i in range(200)}},
        {"outputs": {"each": ["x" * 10, {"deep": [[[[["y"]]]]]}] * 40}},
        [[list(range(100))], {"k": list(range(70))}],
    ],
)
def test_a_document_encoded_in_pieces_is_the_text_of_one_go(value: Any) -> None:
    assert serving_http.encode_large(value) == json.dumps(value, separators=(",", ":")).encode()


async def test_the_large_read_budget_is_taken_in_turn() -> None:
    budget = LargeReads(100)
    order: list[str] = []

    async def take(name: str, weight: int, hold: asyncio.Event) -> None:
        async with budget.hold(weight):
            order.append(name)
            await hold.wait()

    first, second, third = asyncio.Event(), asyncio.Event(), asyncio.Event()
    a = asyncio.create_task(take("a", 60, first))
    await asyncio.sleep(0)
    b = asyncio.create_task(take("b", 60, second))  # does not fit beside a
    c = asyncio.create_task(take("c", 10, third))  # fits, but waits its turn behind b
    await asyncio.sleep(0.01)
    async with budget.hold(0):  # nothing to take: passes at once
        order.append("free")
    assert order == ["a", "free"]
    first.set()
    await a
    await asyncio.sleep(0.01)
    assert order == ["a", "free", "b", "c"]
    assert budget.held == 70
    second.set()
    third.set()
    await asyncio.gather(b, c)
    assert budget.held == 0
    # over the whole budget: it goes alone; a waiter that gives up gives its place back
    hold = asyncio.Event()
    alone = asyncio.create_task(take("huge", 10**9, hold))
    await asyncio.sleep(0)
    quitter = asyncio.create_task(take("quitter", 1, asyncio.Event()))
    await asyncio.sleep(0.01)
    assert budget.held == 100
    quitter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await quitter
    hold.set()
    await alone
    assert budget.held == 0 and not budget._waiters


async def test_a_waiter_cancelled_as_the_budget_comes_free_takes_none_of_it() -> None:
    reads = LargeReads(100)
    first = reads.hold(100)
    await first.__aenter__()

    async def second() -> None:
        async with reads.hold(50):
            raise AssertionError("a cancelled waiter was let in")

    waiting = asyncio.ensure_future(second())
    await asyncio.sleep(0)
    waiting.cancel()  # its caller leaves, and in the same turn of the loop...
    await first.__aexit__(None, None, None)  # ...the holder is done: before, this raised
    with pytest.raises(asyncio.CancelledError):
        await waiting  # before: ValueError, its weight kept in ``held`` for good
    assert (reads.held, len(reads._waiters)) == (0, 0)
    async with asyncio.timeout(5), reads.hold(100):
        assert reads.held == 100  # the whole budget is there to take again


async def test_a_large_document_whose_caller_left_while_it_waited_is_not_built(
    served: Facade, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = await served.orch.execution_head("large", weigh=True)
    served.orch.large_reads = LargeReads(head.weight)
    held = HeldFolds(monkeypatch)
    first = asyncio.create_task(get(f"{served.url}/api/v1/executions/large"))
    await held.wait_started()  # the budget is taken by the first caller's document
    # a caller that gives up (a short timeout) while it waits its turn
    with pytest.raises(TimeoutError):
        await get(f"{served.url}/api/v1/executions/large", timeout=0.5)
    for _ in range(100):  # its handler is waiting in line, its connection closed
        if served.orch.large_reads._waiters:
            break
        await asyncio.sleep(0.02)
    assert served.orch.large_reads._waiters
    held.release.set()
    status, body = await first
    assert status == 200 and json.loads(body)["outputs"] == {"a": [BIG, {"n": 1}]}
    for _ in range(100):
        if not served.orch.large_reads._waiters and served.orch.large_reads.held == 0:
            break
        await asyncio.sleep(0.02)
    # before: built anyway, a whole budget's turn that everyone behind it waited out
    assert held.folds == 1
    assert served.orch.large_reads.held == 0
