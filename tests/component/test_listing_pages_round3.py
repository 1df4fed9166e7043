"""The executions listing over a real store: a page takes no row that would bring it past
LIST_PAGE_BYTES, but its first, so a page of several rows stays under half of what a gRPC
client with default options receives, and a large row comes on a page of its own."""

from __future__ import annotations

from pathlib import Path

from orchestrator.store import LIST_PAGE_BYTES, Store
from tests.component.monitor_events import monitor_event

MIB = 1 << 20


async def test_a_page_takes_no_row_past_its_bytes_but_its_first(tmp_path: Path) -> None:
    store = await Store.open(str(tmp_path / "state.db"))
    try:
        # oldest first; the listing is newest first
        sizes = {"small": 10, "a": 3 * MIB // 2, "b": 3 * MIB // 2, "huge": 5 * MIB, "c": 10}
        for n, (execution_id, size) in enumerate(sizes.items()):
            await store.create_execution(
                execution_id=execution_id,
                workflow_id="wf",
                version="1.0.0",
                inputs={"blob": "x" * size},
                pinned={},
                created_at=10.0 + n,
                node_ids=["a"],
                first_event=monitor_event(execution_id, 1, "execution.queued"),
            )
        pages: list[list[str]] = []
        before = None
        while True:
            found = await store.list_executions(
                workflow_id=None, status=None, limit=1000, before=before
            )
            assert found
            pages.append([str(e["id"]) for e in found])
            if not getattr(found, "cut", False):
                break
            before = pages[-1][-1]
        # before: ["c", "huge"] (5 MiB and more in one page), then ["b", "a"] (3 MiB)
        assert pages == [["c"], ["huge"], ["b"], ["a", "small"]]
        for page in pages:
            weight = sum(sizes[execution_id] for execution_id in page)
            assert len(page) == 1 or weight <= LIST_PAGE_BYTES, page
    finally:
        await store.close()
