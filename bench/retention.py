"""A retention sweep over a backlog, and what it costs the small writes around it, in process.

    .venv/bin/python bench/retention.py --runs 200000 [--recent 5000] [--days 30]

A real SQLite store (WAL, the orchestrator's schema, made by ``Store.open``) in a temporary
directory gets one registered 3-node workflow and ``--runs`` finished root runs of it, created
evenly over the past 180 days, plus ``--recent`` runs of the last 12 hours; a tenth of them were
sent with an idempotency key. Each run has the events a real 3-node run makes (queued, started,
node started/succeeded x3, execution.succeeded), stored in 5 batches as an engine streams them.

The fill writes rows directly with sqlite3, the way the store's own code does (the
``executions``, ``event_messages`` and ``idempotency`` rows of ``orchestrator/store.py``, event
bodies encoded as the stored ``ExecuteResponse`` message), in transactions of 20,000 runs: the
Store API commits each run on its own and would take minutes for 200,000.

Then the store is opened again and the real ``orchestrator.retention.Retention`` sweeps once
with a retention of ``--days`` (batches of ``BATCH`` runs, each a transaction on the store's
writer), while a probe makes a small durable write through the same store every 20 ms
(``create_execution`` of a new run, as a trigger stores one). The probe runs alone for a
few seconds first, for its latency without a sweep.

Prints the runs deleted, the sweep's seconds and runs per second, the probe's p50/p99/max
during the sweep and p50 without it, and the file's size (database and WAL, the store closed
and so checkpointed) before and after. SQLite keeps the freed pages for reuse (no VACUUM), so
the file does not shrink: the free pages are printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import wire  # noqa: E402
from engine.api import dagengine_pb2 as pb  # noqa: E402
from engine.core.events import isoformat  # noqa: E402
from engine.core.spec import parse_spec  # noqa: E402
from orchestrator.retention import BATCH, Retention  # noqa: E402
from orchestrator.store import Store  # noqa: E402
from orchestrator.versions import Registry  # noqa: E402

DAY = 86_400.0
SPAN_DAYS = 180
FILL_CHUNK = 20_000
PROBE_EVERY = 0.02
ALONE_SECONDS = 3.0
KEYED_SHARE = 0.1
NODES = ("a", "b", "c")
SPEC = {
    "id": "bench",
    "version": "1.0.0",
    "nodes": [
        {"id": "a", "lua": "return {n = 1}"},
        {"id": "b", "lua": "return {n = 2}", "depends_on": ["a"]},
        {"id": "c", "lua": "return {n = 3}", "depends_on": ["b"]},
    ],
}


def event(
    execution_id: str, seq: int, at: float, kind: str, node: str | None = None, **data: Any
) -> dict[str, Any]:
    return {
        "seq": seq,
        "time": isoformat(at),
        "type": kind,
        "severity": "info",
        "workflow_id": "bench",
        "version": "1.0.0",
        "execution_id": execution_id,
        "node_id": node,
        "engine_id": "engine-0",
        "attempt": 1 if node else None,
        "data": data,
    }


def encode(events: list[dict[str, Any]]) -> bytes:
    """A batch as the store keeps it: the serialized ``ExecuteResponse``."""
    return pb.ExecuteResponse(
        events=[wire.event_message_from_dict(e) for e in events]
    ).SerializeToString()


def run_rows(
    execution_id: str, created: float
) -> tuple[tuple[Any, ...], list[tuple[str, int, int, bytes]]]:
    """One finished 3-node run: its ``executions`` row and its 5 ``event_messages`` rows."""
    t = created
    events = [event(execution_id, 1, t, "execution.queued")]
    events.append(event(execution_id, 2, t + 0.01, "execution.started"))
    outputs: dict[str, Any] = {}
    for i, node in enumerate(NODES):
        events.append(event(execution_id, 3 + 2 * i, t + 0.02 + 0.1 * i, "node.started", node))
        outputs[node] = {"n": i + 1}
        events.append(
            event(
                execution_id,
                4 + 2 * i,
                t + 0.1 + 0.1 * i,
                "node.succeeded",
                node,
                output=outputs[node],
            )
        )
    finished = t + 0.35
    events.append(event(execution_id, 9, finished, "execution.succeeded", outputs=outputs))
    # as an engine streams them: the first event with the run, then a few messages
    cuts = ((0, 1), (1, 3), (3, 5), (5, 7), (7, 9))
    batches = [
        (execution_id, events[lo]["seq"], events[hi - 1]["seq"], encode(events[lo:hi]))
        for lo, hi in cuts
    ]
    row = (
        execution_id,
        "bench",
        "1.0.0",
        "succeeded",
        json.dumps({"i": execution_id[:8]}),
        json.dumps(outputs, separators=(",", ":")),
        created,
        isoformat(t + 0.01),
        isoformat(finished),
        json.dumps({}),
        len(NODES),
        len(NODES),
        9,
    )
    return row, batches


def fill(path: Path, created_ats: list[float], rnd: random.Random) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")  # a fill, not a run: durability is not measured
    for start in range(0, len(created_ats), FILL_CHUNK):
        executions, batches, keys = [], [], []
        for created in created_ats[start : start + FILL_CHUNK]:
            execution_id = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
            row, rows = run_rows(execution_id, created)
            executions.append(row)
            batches.extend(rows)
            if rnd.random() < KEYED_SHARE:
                keys.append((f"bench\x00{execution_id}", execution_id, created, "digest"))
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO executions (id, workflow_id, version, status, inputs, outputs,"
            " created_at, started_at, finished_at, pinned, node_total, nodes_done, last_seq)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            executions,
        )
        conn.executemany(
            "INSERT INTO event_messages (execution_id, first_seq, last_seq, body)"
            " VALUES (?, ?, ?, ?)",
            batches,
        )
        conn.executemany(
            "INSERT INTO idempotency (key, execution_id, created_at, request) VALUES (?, ?, ?, ?)",
            keys,
        )
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def sizes(path: Path) -> tuple[float, float, int]:
    """The database and WAL files in MB, and the database's free pages."""
    wal = Path(f"{path}-wal")
    conn = sqlite3.connect(path)
    free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    conn.close()
    mb = 1 << 20
    return path.stat().st_size / mb, (wal.stat().st_size / mb if wal.exists() else 0.0), free


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Probe:
    """A new run's ``create_execution`` every 20 ms; the latency of each, in ms."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.made = 0

    async def until(self, done: asyncio.Event) -> list[float]:
        taken: list[float] = []
        while not done.is_set():
            self.made += 1
            execution_id = f"probe-{self.made}"
            now = time.time()
            began = time.perf_counter()
            await self.store.create_execution(
                execution_id=execution_id,
                workflow_id="bench",
                version="1.0.0",
                inputs={"probe": self.made},
                pinned={},
                created_at=now,
                node_ids=list(NODES),
                first_event=event(execution_id, 1, now, "execution.queued"),
            )
            taken.append((time.perf_counter() - began) * 1000)
            await asyncio.sleep(PROBE_EVERY)
        return taken


async def for_a_while(probe: Probe, seconds: float) -> list[float]:
    done = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, done.set)
    return await probe.until(done)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.db"
        store = await Store.open(str(path))
        plan = Registry().plan_register(parse_spec(SPEC), force=False, now=time.time())
        await store.register_version(plan)
        await store.close()

        rnd = random.Random(7)
        now = time.time()
        old = sorted(now - rnd.uniform(0, SPAN_DAYS * DAY) for _ in range(args.runs))
        recent = sorted(now - rnd.uniform(0, DAY / 2) for _ in range(args.recent))
        began = time.perf_counter()
        fill(path, old + recent, rnd)
        filled = time.perf_counter() - began
        total = args.runs + args.recent
        expected = sum(1 for at in old if at < now - args.days * DAY)
        db0, wal0, free0 = sizes(path)
        print(
            f"{total} finished 3-node runs ({args.runs} over {SPAN_DAYS} days, {args.recent} "
            f"in the last 12 h, {KEYED_SHARE:.0%} keyed), 5 event batches each; "
            f"filled in {filled:.1f} s (direct sqlite3 rows)"
        )
        print(
            f"  before: database {db0:.1f} MB, WAL {wal0:.1f} MB, {free0} free pages; "
            f"{expected} runs older than {args.days:g} days"
        )

        store = await Store.open(str(path))
        try:
            probe = Probe(store)
            alone = await for_a_while(probe, ALONE_SECONDS)
            done = asyncio.Event()
            probing = asyncio.create_task(probe.until(done))
            retention = Retention(store, args.days * DAY)
            began = time.perf_counter()
            deleted = await retention.sweep()
            swept = time.perf_counter() - began
            done.set()
            during = await probing
        finally:
            await store.close()
        db1, wal1, free1 = sizes(path)

        print(
            f"retention sweep ({args.days:g} days, batches of {BATCH}): {deleted} runs deleted "
            f"in {swept:.2f} s, {deleted / swept:.0f} runs/s"
        )
        print(
            f"  a create_execution every {PROBE_EVERY * 1000:.0f} ms during the sweep "
            f"({len(during)} writes): p50 {statistics.median(during):.1f} ms, "
            f"p99 {pct(during, 0.99):.1f} ms, max {max(during):.1f} ms; "
            f"without it ({len(alone)} writes): p50 {statistics.median(alone):.1f} ms"
        )
        print(
            f"  after: database {db1:.1f} MB, WAL {wal1:.1f} MB, {free1} free pages "
            "(kept for reuse: no VACUUM)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200_000)
    parser.add_argument("--recent", type=int, default=5_000)
    parser.add_argument("--days", type=float, default=30.0)
    asyncio.run(main(parser.parse_args()))
