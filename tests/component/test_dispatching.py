"""The dispatcher's bookkeeping with no engine to run anything: what it keeps per run goes
when the run leaves its queue."""

from __future__ import annotations

from typing import Any

from orchestrator.dispatching import Dispatcher


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
    from orchestrator.metrics import Metrics
    from orchestrator.monitoring import Hub
    from orchestrator.orchestrating import Orchestrator
    from orchestrator.store import Store
    from orchestrator.versions import Registry

    store = await Store.open(str(tmp_path / "state.db"))
    orch = Orchestrator(
        store=store,
        registry=Registry(),
        fleet=None,  # type: ignore[arg-type]
        hub=Hub(),
        metrics=Metrics(list, lambda: 0),
        lua_checker=LuaSyntaxChecker(),
        queue_limit=100,
    )
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
