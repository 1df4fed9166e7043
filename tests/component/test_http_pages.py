"""Pages of the HTTP API over the real facade and a real SQLite store: a run's stored timeline
(``after_seq``/``limit``, ``next_after_seq``) and the executions listing (bounded by bytes as
well as rows, ``next_before``), and dagctl following both to the end.

Runs and events are written to the store directly: a timeline of tens of thousands of events
takes a moment, where running one would take minutes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from engine.api import dagengine_pb2 as pb
from engine.api import dagengine_pb2_grpc as pb_grpc
from engine.core.spec import parse_spec
from orchestrator import store as store_module
from orchestrator.dagctl import main
from orchestrator.lua_checking import LuaSyntaxChecker
from orchestrator.store import LIST_PAGE_BYTES, Store
from orchestrator.versions import Registry
from tests.component.monitor_events import monitor_event
from tests.component.serving_helpers import facade, serving

SPEC = {"id": "wf", "version": "1.0.0", "nodes": [{"id": "a", "lua": "return 1"}]}


def event(execution_id: str, seq: int, kind: str, node: str | None = None) -> dict[str, Any]:
    data = {"output": {"n": seq}} if kind == "node.succeeded" else {}
    return monitor_event(execution_id, seq, kind, node_id=node, data=data)


async def create(store: Store, execution_id: str, inputs: Any, created_at: float) -> None:
    await store.create_execution(
        execution_id=execution_id,
        workflow_id="wf",
        version="1.0.0",
        inputs=inputs,
        pinned={},
        created_at=created_at,
        node_ids=["a"],
        first_event=event(execution_id, 1, "execution.queued"),
    )


async def long_run(store: Store, execution_id: str, total: int, batch: int) -> None:
    """A run of ``total`` events stored ``batch`` to a row, as an engine's messages are."""
    await create(store, execution_id, {}, 1.0)
    kinds = ("node.started", "node.succeeded")
    events = [event(execution_id, seq, kinds[seq % 2], "a") for seq in range(2, total + 1)]
    for start in range(0, len(events), batch):
        await store.record_events(execution_id, events[start : start + batch])


class Served:
    def __init__(self, url: str, store: Store, grpc_target: str) -> None:
        self.url = url
        self.store = store
        self.grpc_target = grpc_target

    async def get(self, path: str) -> tuple[int, Any, int]:
        async with aiohttp.ClientSession() as http, http.get(self.url + path) as resp:
            raw = await resp.read()
            return resp.status, json.loads(raw), len(raw)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    store = await Store.open(str(tmp_path / "state.db"))
    registry = Registry()
    plan = registry.plan_register(parse_spec(SPEC), force=False, now=1.0)
    await store.register_version(plan)
    checker = LuaSyntaxChecker()
    try:
        async with serving(facade(store, checker, registry)) as (url, target):
            yield Served(url, store, target)
    finally:
        checker.close()
        await store.close()


# -- a run's stored timeline -----------------------------------------------------------------


async def test_a_long_timeline_comes_a_page_at_a_time_each_event_once_in_order(
    served: Served,
) -> None:
    await long_run(served.store, "big", 2503, batch=7)
    status, first, _ = await served.get("/api/v1/executions/big/events")
    assert status == 200
    assert [e["seq"] for e in first["events"]] == list(range(1, 1001))  # 1000 unless asked
    assert first["next_after_seq"] == 1000
    seqs: list[int] = []
    after = 0
    pages = 0
    while after is not None:
        status, page, _ = await served.get(
            f"/api/v1/executions/big/events?after_seq={after}&limit=600"
        )
        assert status == 200, page
        assert 1 <= len(page["events"]) <= 600
        seqs += [e["seq"] for e in page["events"]]
        after = page["next_after_seq"]
        pages += 1
    assert seqs == list(range(1, 2504)) and pages == 5
    # a page may start and end inside a stored batch
    status, mid, _ = await served.get("/api/v1/executions/big/events?after_seq=10&limit=3")
    assert [e["seq"] for e in mid["events"]] == [11, 12, 13] and mid["next_after_seq"] == 13
    # the last event exactly: nothing more is stored, so no next page
    status, tail, _ = await served.get("/api/v1/executions/big/events?after_seq=2500&limit=3")
    assert [e["seq"] for e in tail["events"]] == [2501, 2502, 2503]
    assert tail["next_after_seq"] is None
    status, past, _ = await served.get("/api/v1/executions/big/events?after_seq=2503")
    assert (status, past) == (200, {"events": [], "next_after_seq": None})
    status, whole, _ = await served.get("/api/v1/executions/big/events?limit=10000")
    assert len(whole["events"]) == 2503 and whole["next_after_seq"] is None


async def test_a_page_decodes_only_the_batches_it_needs(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    await long_run(served.store, "big", 20_001, batch=10)
    decoded: list[int] = []
    real = store_module._decode

    def counting(body: bytes | str) -> list[Any]:
        found = real(body)
        decoded.append(len(found))
        return found

    monkeypatch.setattr(store_module, "_decode", counting)
    status, page, _ = await served.get("/api/v1/executions/big/events?after_seq=15000&limit=25")
    assert status == 200
    assert [e["seq"] for e in page["events"]] == list(range(15001, 15026))
    assert len(decoded) <= 4, decoded  # the 3 batches that hold them (and not 2,000)


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("after_seq=-1", "after_seq must be an event seq (0 or more), got '-1'"),
        ("after_seq=1_0", "after_seq must be an event seq (0 or more), got '1_0'"),
        ("after_seq=%D9%A1", "after_seq must be an event seq (0 or more), got '\u0661'"),
        ("after_seq=", "after_seq must be an event seq (0 or more), got ''"),
        ("after_seq=1234567890123456789", "after_seq must be an event seq"),
        ("after_seq=1&after_seq=2", "give after_seq once"),
        ("limit=0", "limit must be between 1 and 10000"),
        ("limit=10001", "limit must be between 1 and 10000"),
        ("limit=ten", "limit must be a whole number, got 'ten'"),
        ("limit=1&limit=2", "give limit once"),
    ],
)
async def test_bad_paging_parameters_are_refused_naming_them(
    served: Served, query: str, says: str
) -> None:
    await long_run(served.store, "big", 5, batch=2)
    status, body, _ = await served.get(f"/api/v1/executions/big/events?{query}")
    assert status == 400, body
    assert body["error"]["code"] == "bad_request"
    assert body["error"]["message"].startswith(says), body


async def test_the_timeline_of_no_execution_is_404(served: Served) -> None:
    status, body, _ = await served.get("/api/v1/executions/nope/events?after_seq=3")
    assert status == 404 and "nope" in body["error"]["message"]


# -- the executions listing ------------------------------------------------------------------

FAT = 400_000
"""Bytes of inputs each fat run carries: a few make a page's worth."""


async def test_a_listing_of_fat_runs_is_bounded_by_bytes_and_pages_see_each_run_once(
    served: Served,
) -> None:
    made = []
    for n in range(14):
        eid = f"run-{n:02d}"
        await create(served.store, eid, {"blob": "x" * FAT, "n": n}, 10.0 + n)
        made.append(eid)
    await create(served.store, "huge", {"blob": "y" * (LIST_PAGE_BYTES + 1)}, 100.0)
    made.append("huge")
    seen: list[str] = []
    query = "limit=1000"
    sizes = []
    while True:
        status, page, size = await served.get(f"/api/v1/executions?{query}")
        assert status == 200, page
        assert page["executions"], "a page always has a row while any are left"
        seen += [e["id"] for e in page["executions"]]
        sizes.append(size)
        if page["next_before"] is None:
            break
        assert page["next_before"] == page["executions"][-1]["id"]
        query = f"limit=1000&before={page['next_before']}"
    assert seen == made[::-1]  # newest first, each once
    # the one run bigger than a page is a page of its own; the others share pages of a few MiB
    assert sizes[0] > LIST_PAGE_BYTES and len(sizes) >= 4
    assert max(sizes[1:]) < LIST_PAGE_BYTES + FAT + 10_000, sizes
    # filtered, and with few enough rows to fit: one page, and nothing said to follow
    status, small, _ = await served.get("/api/v1/executions?workflow=wf&limit=2")
    assert len(small["executions"]) == 1 and small["next_before"] == "huge"


async def test_grpc_listing_of_fat_runs_pages_on_past_a_page_cut_by_size(served: Served) -> None:
    made = []
    for n in range(8):
        await create(served.store, f"run-{n}", {"blob": "x" * FAT, "n": n}, 10.0 + n)
        made.append(f"run-{n}")
    seen: list[str] = []
    pages = 0
    async with grpc.aio.insecure_channel(served.grpc_target) as channel:
        stub = pb_grpc.OrchestratorStub(channel)
        before = ""
        while True:
            page = await stub.ListExecutions(pb.ListExecutionsRequest(limit=1000, before=before))
            seen += [e.id for e in page.executions]
            pages += 1
            if not page.next_before:
                break
            before = page.next_before
    assert seen == made[::-1] and pages >= 2  # cut by size, and the next page still came


async def test_a_listing_of_small_runs_still_pages_by_limit(served: Served) -> None:
    for n in range(5):
        await create(served.store, f"r{n}", {"n": n}, float(n))
    status, page, _ = await served.get("/api/v1/executions?limit=3")
    assert [e["id"] for e in page["executions"]] == ["r4", "r3", "r2"]
    assert page["next_before"] == "r2"
    status, rest, _ = await served.get("/api/v1/executions?limit=3&before=r2")
    assert status == 200
    assert [e["id"] for e in rest["executions"]] == ["r1", "r0"]
    assert rest["next_before"] is None


# -- dagctl ----------------------------------------------------------------------------------


async def test_dagctl_events_prints_a_timeline_longer_than_a_page(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    await long_run(served.store, "big", 12_001, batch=50)
    await served.store.record_events("big", [event("big", 12_002, "execution.succeeded")])
    env = {"DAGCTL_SERVER": served.url}
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["events", "big", "-o", "json"], env)
    out = capsys.readouterr().out
    assert code == 0
    assert [json.loads(line)["seq"] for line in out.splitlines()] == list(range(1, 12_003))


async def test_dagctl_get_executions_pages_fat_runs_with_before(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    for n in range(8):
        await create(served.store, f"run-{n}", {"blob": "x" * FAT}, float(n))
    env = {"DAGCTL_SERVER": served.url}
    seen: list[str] = []
    argv = ["get", "executions", "-o", "json", "--limit", "1000"]
    while True:
        capsys.readouterr()
        code = await asyncio.to_thread(main, argv, env)
        assert code == 0
        body = json.loads(capsys.readouterr().out)
        seen += [e["id"] for e in body["executions"]]
        if not body["next_before"]:
            break
        argv = ["get", "executions", "-o", "json", "--limit", "1000"]
        argv += ["--before", body["next_before"]]
    assert seen == [f"run-{n}" for n in reversed(range(8))]
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["get", "executions", "--limit", "1000"], env)
    err = capsys.readouterr().err
    assert code == 0 and "more: dagctl get executions --limit 1000 --before run-" in err
