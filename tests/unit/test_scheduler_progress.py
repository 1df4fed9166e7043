"""A foreach node tells the items it has done (node.progress), and a resumed run takes them as
done: the scheduler alone, on a fake clock."""

from __future__ import annotations

import pytest

from engine.core import scheduler as sch
from tests.unit.driving import Driver, lua, spec


class _Recording(Driver):
    """A driver that keeps every task it was asked to run, in order."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.run_tasks: list[tuple[str, int | None]] = []

    def feed(self, *stimuli: sch.Stimulus) -> list[sch.Instruction]:
        out = super().feed(*stimuli)
        self.run_tasks.extend((i.node_id, i.item) for i in out if isinstance(i, sch.RunTask))
        return out


def _each(items: int, concurrency: int | None = None, **extra: object) -> Driver:
    node = lua("each", foreach=list(range(items)), **extra)
    if concurrency is not None:
        node["concurrency"] = concurrency
    return Driver(spec([node]))


def _progress(d: Driver) -> list[sch.Emit]:
    return [e for e in d.events if e.type == "node.progress"]


def test_progress_comes_once_a_second_with_the_items_done_since_the_last() -> None:
    # a foreach node that ends within its first second tells none: its end has every output
    quick = _each(5).start()
    quick.advance(0.5)
    for i in range(5):
        quick.succeed("each", {"i": i}, item=i)
    quick.advance(5)
    assert _progress(quick) == []
    assert quick.types("each") == ["node.started", "node.succeeded"]

    d = _each(6, concurrency=2).start()
    d.advance(0.3)
    d.succeed("each", "o0", item=0)
    d.advance(0.3)
    d.succeed("each", "o1", item=1)
    assert _progress(d) == []  # its second is not up: coalesced
    d.advance(0.5)  # t=1.1: the node's first second is up
    (first,) = _progress(d)
    assert first.severity == "debug" and first.node_id == "each"
    assert first.time == pytest.approx(1.0)
    assert first.data == {"done": 2, "items": 6, "outputs": {"0": "o0", "1": "o1"}}
    d.succeed("each", "o3", item=3)
    d.advance(0.2)
    d.succeed("each", "o2", item=2)
    assert len(_progress(d)) == 1  # at most one a second
    d.advance(1.0)  # t=2.3: the next second is up
    second = _progress(d)[1]
    assert second.time == pytest.approx(2.0)
    # only what succeeded since the last one, by index
    assert second.data == {"done": 4, "items": 6, "outputs": {"2": "o2", "3": "o3"}}
    d.succeed("each", "o4", item=4)
    d.succeed("each", "o5", item=5)  # the last item ends the node: no progress for them
    d.advance(5)
    assert len(_progress(d)) == 2
    assert d.types("each")[-1] == "node.succeeded"
    assert d.events[-2].data["output"] == ["o0", "o1", "o2", "o3", "o4", "o5"]


def test_outputs_past_a_mebibyte_are_told_at_once() -> None:
    d = _each(3).start()
    big = sch.PROGRESS_BYTES - 10
    task = d.tasks.pop(("each", 0))
    d.feed(sch.TaskSucceeded("each", 0, task.attempt, "small", d.now, 20))
    assert _progress(d) == []
    task = d.tasks.pop(("each", 1))
    d.feed(sch.TaskSucceeded("each", 1, task.attempt, "big", d.now, big))
    (early,) = _progress(d)  # within the first second: the outputs held passed the bound
    assert early.time == 0.0
    assert early.data == {"done": 2, "items": 3, "outputs": {"0": "small", "1": "big"}}
    d.advance(0.5)
    d.succeed("each", "x", item=2)
    d.advance(3)
    assert len(_progress(d)) == 1


def test_failed_items_are_not_told_and_nothing_comes_after_the_end() -> None:
    d = _each(4, retry={"max_attempts": 2, "delay": "5s"}).start()
    d.advance(0.2)
    d.succeed("each", "o0", item=0)
    d.fail("each", "boom", item=1)  # retried in 5 s
    d.advance(1.0)
    (first,) = _progress(d)
    assert first.data["outputs"] == {"0": "o0"} and first.data["done"] == 1
    d.succeed("each", "o2", item=2)
    d.fail("each", "boom again", item=3)
    d.advance(6)  # item 1's and item 3's retries start
    d.fail("each", "still", item=1)  # its last attempt: the node fails
    d.advance(5)
    assert d.status("each") == "failed"
    told = _progress(d)
    end = next(i for i, e in enumerate(d.events) if e.type == "node.failed")
    assert all(d.events.index(e) < end for e in told)
    assert all("1" not in e.data["outputs"] for e in told)  # a failed item is never told


def test_a_resumed_foreach_node_runs_only_the_items_not_done() -> None:
    wf = spec([lua("each", foreach=["a", "b", "c", "d", "e"], concurrency=2), lua("after", "each")])
    done = sch.ItemsDone(5, {0: "A", 2: "C", 3: "D"})
    d = _Recording(wf, items_done={"each": done}).start()
    started = next(e for e in d.events if e.type == "node.started")
    assert started.data == {"items": 5, "resumed_items": 3}
    assert sorted(d.tasks) == [("each", 1), ("each", 4)]
    d.succeed("each", "B", item=1)
    d.succeed("each", "E", item=4)
    ran = [(n, i) for n, i in d.run_tasks if n == "each"]
    assert ran == [("each", 1), ("each", 4)]  # the items done before never run again
    assert d.run.record("each").output == ["A", "B", "C", "D", "E"]
    assert d.status("each") == "succeeded"


def test_a_resumed_foreach_node_with_every_item_done_succeeds_without_running_one() -> None:
    wf = spec([lua("each", foreach=[1, 2])])
    d = Driver(wf, items_done={"each": sch.ItemsDone(2, {0: "x", 1: "y"})}).start()
    assert d.tasks == {}
    assert d.run.record("each").output == ["x", "y"]
    assert d.finish is not None and d.finish.status == "succeeded"


def test_items_done_of_a_list_of_another_length_are_run_again() -> None:
    wf = spec([lua("each", foreach=[1, 2, 3])])
    d = Driver(wf, items_done={"each": sch.ItemsDone(4, {0: "x"})}).start()
    assert sorted(d.tasks) == [("each", 0), ("each", 1), ("each", 2)]


def test_progress_counts_a_running_foreach_node_by_its_items() -> None:
    wf = spec([lua("each", foreach=list(range(1000)), concurrency=2), lua("other")])
    done = sch.ItemsDone(1000, {i: i for i in range(450)})
    d = Driver(wf, items_done={"each": done}).start()
    assert d.run.progress == 22  # (0.45 + 0) of 2 nodes
    d.succeed("other")
    assert d.run.progress == 72  # (0.45 + 1) of 2
    one = Driver(spec([lua("each", foreach=list(range(1000)))]), items_done={"each": done})
    assert one.start().run.progress == 45


@pytest.mark.parametrize(
    ("nodes", "done", "says"),
    [
        ([lua("plain")], {"plain": sch.ItemsDone(2, {0: 1})}, "plain"),
        ([lua("each", foreach=[1, 2])], {"each": sch.ItemsDone(2, {2: 1})}, "each"),
        ([lua("each", foreach=[1, 2])], {"each": sch.ItemsDone(0, {})}, "each"),
    ],
)
def test_items_done_that_are_not_items_of_a_foreach_node_are_refused(
    nodes: list[dict[str, object]], done: dict[str, sch.ItemsDone], says: str
) -> None:
    with pytest.raises(ValueError, match=f"done items .*{says}"):
        sch.Run(spec(nodes), {}, items_done=done)


def test_the_engines_document_shows_the_items_told_as_the_orchestrators_does() -> None:
    from engine.core.execution import execution_document

    def record(d: Driver) -> dict[str, object]:
        doc = execution_document(d.run, execution_id="e1", created_at=0.0)
        node = doc["nodes"]["each"]  # type: ignore[index, call-overload]
        assert isinstance(node, dict)
        return node

    d = _each(4, concurrency=1).start()
    d.succeed("each", "o0", item=0)
    assert "items_done" not in record(d)  # nothing told yet, as no event says it
    d.advance(1.1)
    assert (record(d)["items_done"], record(d)["items_total"]) == (1, 4)
    d.succeed("each", "o1", item=1)
    assert record(d)["items_done"] == 1  # as told, not as counted since
    d.succeed("each", "o2", item=2)
    d.succeed("each", "o3", item=3)
    assert (record(d)["status"], record(d)["items_done"], record(d)["items_total"]) == (
        "succeeded",
        4,
        4,
    )
