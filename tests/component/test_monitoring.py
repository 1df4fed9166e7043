"""The monitor hub: filters, bounded buffers, and the lagged marker for slow subscribers."""

from __future__ import annotations

import asyncio

from orchestrator.monitoring import EventFilter, Hub


def event(seq: int, execution: str = "e1", workflow: str = "wf") -> dict[str, object]:
    return {"seq": seq, "type": "node.started", "workflow_id": workflow, "execution_id": execution}


async def test_a_slow_subscriber_gets_a_lagged_marker_and_never_blocks_publishing() -> None:
    dropped: list[int] = []
    hub = Hub(on_drop=dropped.append)
    slow = hub.subscribe(limit=3)
    fast = hub.subscribe(limit=100)
    for seq in range(1, 11):
        hub.publish(event(seq))  # returns at once however full the slow buffer is
    assert sum(dropped) == 7
    assert slow.missed == 7
    assert [(await slow.next_event())["seq"] for _ in range(3)] == [1, 2, 3]
    marker = await slow.next_event()
    assert marker["type"] == "subscriber.lagged" and marker["data"] == {"missed": 7}
    assert [(await fast.next_event())["seq"] for _ in range(10)] == list(range(1, 11))


async def test_the_lagged_marker_sits_where_the_events_are_missing() -> None:
    # a reader that resumes from the last seq it saw must see the marker right after it
    hub = Hub()
    slow = hub.subscribe(limit=2)
    for seq in (1, 2, 3):  # 3 dropped
        hub.publish(event(seq))
    assert (await slow.next_event())["seq"] == 1
    for seq in (4, 5, 6):  # 4 buffered behind 2; 5 and 6 dropped
        hub.publish(event(seq))
    read = [await slow.next_event() for _ in range(4)]
    assert [
        (e["type"], e["seq"] if e["type"] != "subscriber.lagged" else e["data"]) for e in read
    ] == [
        ("node.started", 2),
        ("subscriber.lagged", {"missed": 1}),
        ("node.started", 4),
        ("subscriber.lagged", {"missed": 2}),
    ]
    assert slow.missed == 0


async def test_filters_by_workflow_and_execution() -> None:
    hub = Hub()
    by_run = hub.subscribe(EventFilter(execution_id="e2"))
    by_workflow = hub.subscribe(EventFilter(workflow_id="other"))
    hub.publish_many([event(1, "e1"), event(2, "e2"), event(3, "e3", "other")])
    assert (await by_run.next_event())["seq"] == 2
    assert (await by_workflow.next_event())["seq"] == 3
    assert hub.subscribers == 2
    by_run.close()
    assert hub.subscribers == 1


async def test_a_waiting_reader_wakes_on_publish_and_ends_on_close() -> None:
    hub = Hub()
    sub = hub.subscribe()
    reader = asyncio.create_task(sub.next_event())
    await asyncio.sleep(0)
    hub.publish(event(5))
    assert (await reader)["seq"] == 5
    collected = asyncio.create_task(_drain(sub))
    await asyncio.sleep(0)
    sub.close()
    assert await collected == []


async def _drain(sub: object) -> list[object]:
    return [e async for e in sub]  # type: ignore[attr-defined]


async def test_a_batch_is_what_is_buffered_with_the_markers_where_the_gaps_are() -> None:
    hub = Hub()
    sub = hub.subscribe(limit=2)
    for seq in (1, 2, 3):  # 3 dropped
        hub.publish(event(seq))
    batch = await sub.next_batch()
    assert [(i.event["type"], i.event["seq"]) for i in batch] == [
        ("node.started", 1),
        ("node.started", 2),
        ("subscriber.lagged", 0),
    ]
    assert batch[2].event["data"] == {"missed": 1}
    assert await sub.next_batch(timeout=0.01) == []  # quiet: the caller's heartbeat


async def test_a_batch_stops_at_about_one_write_of_bytes() -> None:
    hub = Hub()
    sub = hub.subscribe()
    for seq in range(1, 11):  # 10 KB each: 6 fit in 64 KiB
        hub.publish({**event(seq), "data": {"text": "x" * 10_000}})
    assert [len(await sub.next_batch()) for _ in range(2)] == [6, 4]
    assert sub.buffered_bytes == 0
