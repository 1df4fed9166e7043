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
