"""What opening a one-run event stream costs, over the real facade and a real SQLite store.

Opening a stream needs to know that the run exists, its workflow, its status and its last seq:
its row says so. Folding the run's document (every event decoded, outputs included) to learn
it made fifty reconnects to a finished 10,000-node run take seconds, and every other read wait
behind them on the store's reader. And the streams of one run that read the same stretch of
its stored timeline share the page read, decoded and encoded once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from engine.api import dagengine_pb2 as pb
from engine.core.values import JSONObject
from orchestrator.store import EVENTS_PAGE, Store
from tests.component.monitor_events import create_run, monitor_event
from tests.component.serving_helpers import Facade, served_facade

SPEC = {"id": "wf", "version": "1.0.0", "nodes": [{"id": "a", "lua": "return 1"}]}
RUN = "run-1"
EVENTS = 2 * EVENTS_PAGE + 500
"""The run's events: two full pages and a part, the final event last."""


async def stored_run(store: Store, execution_id: str, total: int) -> None:
    """A finished run of ``total`` events, stored 50 to a row as an engine's messages are."""
    await create_run(store, execution_id)
    kinds = ("node.started", "node.succeeded")
    events = [
        monitor_event(execution_id, seq, kinds[seq % 2], node_id="a", data={"output": seq})
        for seq in range(2, total)
    ]
    events.append(monitor_event(execution_id, total, "execution.succeeded"))
    for start in range(0, len(events), 50):
        await store.record_events(execution_id, events[start : start + 50])


class Counted:
    """The store's ``get_execution`` (the whole fold) and ``event_page`` reads, counted."""

    def __init__(self, store: Store) -> None:
        self.folds: list[str] = []
        self.pages: list[int] = []
        fold: Callable[..., Awaitable[Any]] = store.get_execution
        page: Callable[..., Awaitable[Any]] = store.event_page

        async def counted_fold(execution_id: str, **kwargs: Any) -> Any:
            self.folds.append(execution_id)
            return await fold(execution_id, **kwargs)

        async def counted_page(execution_id: str, **kwargs: Any) -> Any:
            self.pages.append(int(kwargs.get("after_seq", 0)))
            return await page(execution_id, **kwargs)

        store.get_execution = counted_fold  # type: ignore[method-assign]
        store.event_page = counted_page  # type: ignore[method-assign]


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Facade]:
    async with served_facade(tmp_path, specs=[SPEC], with_triggers=False) as f:
        await stored_run(f.store, RUN, EVENTS)
        yield f


async def sse(url: str, headers: dict[str, str] | None = None) -> tuple[int, list[int]]:
    """The status of a stream of ``RUN`` and the ids (seqs) of the events it sent."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{url}/api/v1/events", params={"execution": RUN}, headers=headers) as resp,
    ):
        text = (await resp.read()).decode()
    seqs = [int(line[4:]) for line in text.splitlines() if line.startswith("id: ")]
    return resp.status, seqs


async def test_an_sse_reconnect_past_the_end_of_a_finished_run_gets_204_from_its_row(
    served: Facade,
) -> None:
    counted = Counted(served.store)
    for last in (EVENTS, EVENTS + 10**9):
        status, seqs = await sse(served.url, {"Last-Event-ID": str(last)})
        assert (status, seqs) == (204, [])
    assert counted.folds == []  # the run's document was never folded
    assert counted.pages == []  # nor any of its events read: its row says where it ends


async def test_a_grpc_watch_past_the_end_of_a_finished_run_ends_at_once_from_its_row(
    served: Facade,
) -> None:
    counted = Counted(served.store)
    call = served.stub.WatchEvents(pb.WatchEventsRequest(execution_id=RUN, after_seq=EVENTS))
    assert [e async for e in call] == []
    assert await call.code() == grpc.StatusCode.OK
    assert counted.folds == []
    assert counted.pages == []


async def test_a_stream_of_a_run_replays_it_whole_without_folding_it(served: Facade) -> None:
    counted = Counted(served.store)
    status, seqs = await sse(served.url, {"Last-Event-ID": "7"})
    assert status == 200
    assert seqs == list(range(8, EVENTS + 1))
    call = served.stub.WatchEvents(pb.WatchEventsRequest(execution_id=RUN, after_seq=EVENTS - 3))
    assert [e.seq async for e in call] == [EVENTS - 2, EVENTS - 1, EVENTS]
    assert counted.folds == []


async def test_a_stream_of_a_run_of_another_workflow_or_of_no_run_is_not_found(
    served: Facade,
) -> None:
    counted = Counted(served.store)
    async with aiohttp.ClientSession() as http:
        for params in ({"execution": RUN, "workflow": "other"}, {"execution": "nope"}):
            async with http.get(f"{served.url}/api/v1/events", params=params) as resp:
                assert resp.status == 404
                assert (await resp.json())["error"]["code"] == "not_found"
    call = served.stub.WatchEvents(pb.WatchEventsRequest(execution_id=RUN, workflow_id="other"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        _ = [e async for e in call]
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert counted.folds == []


async def test_streams_of_one_run_share_the_pages_they_read_back(served: Facade) -> None:
    """Five streams replay the run at once: each full page is read from the store once and
    its events encoded once; only the last page, which reaches the end of what is stored
    (and so may grow), is read by each."""
    counted = Counted(served.store)
    got = await asyncio.gather(*(sse(served.url) for _ in range(5)))
    assert all(result == (200, list(range(1, EVENTS + 1))) for result in got)
    full_pages = [0, EVENTS_PAGE, 2 * EVENTS_PAGE]  # where each page starts
    assert sorted(counted.pages) == [*full_pages[:2], *[full_pages[2]] * 5], counted.pages
    kept = served.orch.hub.pages
    assert kept.held > 0
    # one Published per event for every stream: the frames they wrote are the same objects
    page = kept._pages[(RUN, 0)]
    assert [item.event["seq"] for item in page.items] == list(range(1, EVENTS_PAGE + 1))
    assert all(item._frames for item in page.items)


async def test_a_grpc_watch_and_an_sse_stream_share_what_they_read_back(served: Facade) -> None:
    counted = Counted(served.store)
    call = served.stub.WatchEvents(pb.WatchEventsRequest(execution_id=RUN))
    watched = [e.seq async for e in call]
    status, seqs = await sse(served.url)
    assert watched == seqs == list(range(1, EVENTS + 1))
    assert status == 200
    assert counted.pages.count(0) == 1
    assert counted.pages.count(EVENTS_PAGE) == 1


async def test_what_the_kept_pages_count_covers_what_their_events_take() -> None:
    import gc
    import tracemalloc

    from orchestrator.monitoring import StoredPages
    from orchestrator.serving_grpc import _event_message

    def log_line(seq: int) -> JSONObject:
        return json.loads(
            json.dumps(
                monitor_event(
                    RUN,
                    seq,
                    "node.log",
                    node_id="a",
                    data={"level": "info", "message": f"line {seq}"},
                )
            )
        )

    async def fetch(after: int) -> tuple[list[JSONObject], bool]:
        return [log_line(seq) for seq in range(after + 1, after + 1001)], True

    pages = StoredPages()
    gc.collect()
    tracemalloc.start()
    try:
        items, _ = await pages.read(RUN, 0, fetch)
        for item in items:  # what streams make of each, and keep with it
            item.frame(True)
            item.encoded(_event_message)
        gc.collect()
        taken = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # before: counted at three times their JSON, a third of what 1,000 small events take, so
    # the cache held 110 MB under a 32 MiB cap
    assert pages.held >= taken, (pages.held, taken)
    assert pages.held < 3 * taken  # and not so high that it keeps next to nothing
