"""The dispatcher's bookkeeping with no engine to run anything: what it keeps per run goes
when the run leaves its queue."""

from __future__ import annotations

from typing import Any

from orchestrator.dispatching import RESUME_ERROR_BYTES, Dispatcher, RunTicket, execute_request
from orchestrator.timeline import Checkpoint


class NoEngines:
    def pick(self, key: str, *, overflow: bool) -> None:
        return None


async def test_a_run_taken_off_the_queue_leaves_nothing_behind() -> None:
    published: list[Any] = []
    dispatcher = Dispatcher(None, NoEngines(), publish=published.append)  # type: ignore[arg-type]
    dispatcher.submit("child-1", "child", child=True)
    dispatcher.submit("root-1", "root")
    assert dispatcher.queue_depth == 2
    assert dispatcher.dequeue("child-1") and dispatcher.dequeue("root-1")
    assert dispatcher.queue_depth == 0
    # before: a cancelled child stayed in the set of children for good
    assert dispatcher._children == set()
    assert not dispatcher.dequeue("child-1")  # once only


async def test_a_cancel_while_the_dispatcher_times_a_run_out_stores_one_end(
    tmp_path: Any, monkeypatch: Any
) -> None:
    import asyncio
    import json
    import time

    from orchestrator.lua_checking import LuaSyntaxChecker
    from orchestrator.store import Store
    from tests.component.serving_helpers import facade

    store = await Store.open(str(tmp_path / "state.db"))
    orch = facade(store, LuaSyntaxChecker())
    dispatcher = Dispatcher(
        store,  # type: ignore[arg-type]
        NoEngines(),  # type: ignore[arg-type]
        publish=orch.publish,
        on_finished=orch.finished,
    )
    orch.attach(dispatcher)
    try:
        spec = {
            "id": "wf",
            "version": "1.0.0",
            "timeout": "1s",
            "nodes": [{"id": "a", "sleep": "1h"}],
        }
        await orch.register(json.dumps(spec), yaml=False, force=False)
        doc, _ = await orch.execute("wf", inputs={}, version=None, idempotency_key=None, wait=None)
        eid = str(doc["id"])
        ticket = await store.load_ticket(eid)
        assert ticket is not None
        ticket.started_at = time.time() - 5  # started, then its engine was lost: past due
        real_end_point = store.end_point

        async def slow_end_point(execution_id: str) -> Any:
            await asyncio.sleep(0.3)  # the window in which the run is neither queued nor running
            return await real_end_point(execution_id)

        monkeypatch.setattr(store, "end_point", slow_end_point)
        dispatcher.keep_deadline(ticket)
        await asyncio.sleep(0.05)
        assert dispatcher.ending(eid)
        ended = await orch.cancel(eid, "stop it")
        events = await store.events(eid)
        ends = [e["type"] for e in events if e["type"] != "execution.queued"]
        # before: execution.timed_out and then execution.cancelled, both stored
        assert ends == ["execution.timed_out"]
        assert ended["status"] == "timed_out"
    finally:
        await dispatcher.close()
        await store.close()


class Slots:
    """Engines with ``room`` free places in all: a run takes one as it starts."""

    def __init__(self) -> None:
        self.room = 0

    def pick(self, key: str, *, overflow: bool = False) -> object | None:
        return self if self.room > 0 or overflow else None


def started_in_order(dispatcher: Dispatcher, slots: Slots) -> list[str]:
    started: list[str] = []

    def start(execution_id: str, key: str, link: object) -> None:
        dispatcher._queued.discard(execution_id)
        slots.room -= 1
        started.append(execution_id)

    dispatcher._start = start  # type: ignore[method-assign]
    return started


async def test_workflows_take_turns_for_free_engines() -> None:
    slots = Slots()
    dispatcher = Dispatcher(None, slots, publish=list)  # type: ignore[arg-type]
    started = started_in_order(dispatcher, slots)
    for i in range(1, 6):
        dispatcher.submit(f"a{i}", "flood")
    dispatcher.submit("b1", "nightly")
    dispatcher.submit("a6", "flood")
    dispatcher.submit("c1", "report")
    assert dispatcher.queue_depth == 8 and started == []
    slots.room = 4
    dispatcher.pump()
    # before: a1 to a4, first come first served, and nightly and report behind all of flood
    assert started == ["a1", "b1", "c1", "a2"]
    assert dispatcher.queue_depth == 4
    # a run back from an engine goes before every turn; a run taken off keeps the count true
    dispatcher.submit("r1", "report", front=True)
    assert dispatcher.dequeue("a4")
    slots.room = 10
    dispatcher.pump()
    assert started[4:] == ["r1", "a3", "a5", "a6"]
    assert dispatcher.queue_depth == 0 and dispatcher._turns == {}


def test_a_resume_carries_thousands_of_errors_cut_to_fit_its_message() -> None:
    """4,500 failed nodes of 16 KiB errors would take a resume past 64 MiB with outputs near
    their bound: each error is cut to a share of RESUME_ERROR_BYTES (stored events keep them
    whole); a few long ones, or many short ones, go as they are."""
    failed = [Checkpoint(f"n{i}", None, 1, "failed", "e" * 16_384) for i in range(4500)] + [
        Checkpoint("ok", {"v": 1}, 1)
    ]
    ticket = RunTicket("0" * 32, "wf", "1.0.0", "{}", {}, "running", checkpoints=failed)
    errors = [c.error for c in execute_request(ticket).completed]
    assert sum(map(len, errors)) <= RESUME_ERROR_BYTES
    assert all(e.endswith(" [cut to fit the resume message]") for e in errors[:-1])
    assert all(e.startswith("e" * 800) for e in errors[:-1]) and errors[-1] == ""
    few = [Checkpoint(f"n{i}", None, 1, "failed", "e" * 16_384) for i in range(10)]
    ticket = RunTicket("0" * 32, "wf", "1.0.0", "{}", {}, "running", checkpoints=few)
    assert [c.error for c in execute_request(ticket).completed] == ["e" * 16_384] * 10


def test_resume_errors_are_measured_in_the_bytes_the_message_holds() -> None:
    """1,024 errors of 4,096 emoji: 4 Mi characters, but 16 MiB of UTF-8 in the message."""
    emoji = "\U0001f600" * 4096
    failed = [Checkpoint(f"n{i}", None, 1, "failed", emoji) for i in range(1024)]
    ticket = RunTicket("0" * 32, "wf", "1.0.0", "{}", {}, "running", checkpoints=failed)
    errors = [c.error for c in execute_request(ticket).completed]
    assert sum(len(e.encode()) for e in errors) <= RESUME_ERROR_BYTES
    assert all(e.startswith("\U0001f600" * 900) for e in errors)
    assert all(e.endswith("\U0001f600 [cut to fit the resume message]") for e in errors)
