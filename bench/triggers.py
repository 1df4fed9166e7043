"""10,000 cron triggers: the orchestrator's CPU per minute of schedule, and how late slots fire.

    .venv/bin/python bench/triggers.py [--triggers 10000] [--seconds 60] [--idle-seconds 15]

In one process, as the orchestrator runs them: the real ``Triggers`` with its heap loop on the
real clock, the real orchestrator facade and a real SQLite store (WAL, durable commits) in a
temporary directory. The dispatcher is a stub that accepts runs and starts none, so what is
measured is the trigger side alone: computing slots, sleeping until them, recording each fire
and its execution in one durable transaction, publishing the event. Measuring starts 5 s after
the triggers are registered, with the collector set as ``python -m orchestrator`` sets it.
Three measurements:

- idle: 10,000 triggers that do not fire during the window (yearly): the loop's cost at rest;
- firing: 10,000 triggers ``S * * * * *`` with S spread over the minute, so each fires once a
  minute (about 167 fires a second), overlap ``allow``;
- baseline: the same number of plain ``execute`` calls, to show what a fire costs over the
  execution it creates.

Lag is measured twice per fire: when the slot is decided (the loop woke and the fire began)
and when its rows are committed and the ``trigger.fired`` event goes out.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.lua_checking import LuaSyntaxChecker  # noqa: E402
from orchestrator.metrics import Metrics  # noqa: E402
from orchestrator.monitoring import Hub  # noqa: E402
from orchestrator.orchestrating import Orchestrator  # noqa: E402
from orchestrator.store import Store  # noqa: E402
from orchestrator.triggering import Triggers  # noqa: E402
from orchestrator.versions import Registry  # noqa: E402

WARM_UP = 5.0
SPEC = json.dumps({"id": "bench", "version": "1.0.0", "nodes": [{"id": "a", "sleep": "0s"}]})


class StubDispatcher:
    queue_depth = 0

    def submit(self, execution_id: str, workflow_id: str, ticket: object = None) -> None:
        pass


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def world(path: Path) -> tuple[Orchestrator, Store, LuaSyntaxChecker]:
    store = await Store.open(str(path))
    checker = LuaSyntaxChecker()
    orch = Orchestrator(
        store=store,
        registry=Registry(),
        fleet=None,  # type: ignore[arg-type]
        hub=Hub(),
        metrics=Metrics(list, lambda: 0),
        lua_checker=checker,
        queue_limit=10**9,
    )
    orch.attach(StubDispatcher())  # type: ignore[arg-type]
    await orch.start()
    await orch.register(SPEC, yaml=False, force=False)
    return orch, store, checker


async def run(count: int, cron_of: Any, window: float, tmp: Path) -> dict[str, Any]:
    tmp.mkdir()
    orch, store, checker = await world(tmp / "state.db")
    decided: list[float] = []
    committed: list[float] = []

    def publish(events: list[dict[str, Any]]) -> None:
        now = time.time()
        for e in events:
            if e["type"] == "trigger.fired":
                slot = datetime.fromisoformat(e["data"]["scheduled_time"].replace("Z", "+00:00"))
                decided.append(e["data"]["lag_ms"])
                committed.append((now - slot.timestamp()) * 1000)

    orch.publish = publish  # type: ignore[method-assign]
    triggers = Triggers(orch)
    orch.triggers = triggers
    await triggers.start()
    started = time.perf_counter()
    await asyncio.gather(
        *(
            triggers.create(
                {"workflow_id": "bench", "cron": cron_of(i), "id": f"t{i}", "overlap": "allow"}
            )
            for i in range(count)
        )
    )
    created = time.perf_counter() - started
    # as ``serve`` does once started: what lives as long as the process (10,000 triggers
    # here) is kept out of the collector's scans, and young objects are collected less often
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    await asyncio.sleep(WARM_UP)  # fires queued behind the 10,000 registrations drain first
    decided.clear()
    committed.clear()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(window)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    fires = len(decided)
    await triggers.stop()
    await store.close()
    checker.close()
    gc.unfreeze()
    return {
        "create_s": created,
        "cpu_per_minute_s": cpu / wall * 60,
        "cpu_share": cpu / wall,
        "fires": fires,
        "fires_per_s": fires / wall,
        "cpu_per_fire_ms": cpu / fires * 1000 if fires else None,
        "decided_p50_ms": statistics.median(decided) if decided else None,
        "decided_p99_ms": pct(decided, 0.99) if decided else None,
        "committed_p50_ms": statistics.median(committed) if committed else None,
        "committed_p99_ms": pct(committed, 0.99) if committed else None,
        "committed_max_ms": max(committed) if committed else None,
    }


async def baseline(count: int, tmp: Path) -> float:
    """CPU per plain execute (one durable transaction), the work a fire wraps."""
    orch, store, checker = await world(tmp / "base.db")
    cpu0 = time.process_time()
    batch = 200  # as fires arrive: a few hundred a second, sharing commits
    for start in range(0, count, batch):
        await asyncio.gather(
            *(
                orch.execute(
                    "bench", inputs={"i": i}, version=None, idempotency_key=None, wait=None
                )
                for i in range(start, min(count, start + batch))
            )
        )
    cpu = time.process_time() - cpu0
    await store.close()
    checker.close()
    return cpu / count * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triggers", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--idle-seconds", type=float, default=15.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        idle = asyncio.run(
            run(args.triggers, lambda i: "0 0 1 1 *", args.idle_seconds, Path(tmp) / "idle")
        )
        firing = asyncio.run(
            run(args.triggers, lambda i: f"{i % 60} * * * * *", args.seconds, Path(tmp) / "firing")
        )
        per_execute = asyncio.run(baseline(5_000, Path(tmp)))
    print(f"{args.triggers} cron triggers, one process, real SQLite store")
    print(
        f"  registering them: {idle['create_s']:.2f} s (idle run), "
        f"{firing['create_s']:.2f} s (firing run)"
    )
    print(
        f"  idle ({args.idle_seconds:.0f} s, none due): CPU {idle['cpu_per_minute_s']:.3f} s "
        f"per minute of schedule ({idle['cpu_share'] * 100:.2f}% of a core)"
    )
    print(
        f"  firing ({args.seconds:.0f} s, every trigger once a minute): {firing['fires']} fires, "
        f"{firing['fires_per_s']:.0f}/s; CPU {firing['cpu_per_minute_s']:.1f} s per minute "
        f"of schedule ({firing['cpu_share'] * 100:.1f}% of a core), "
        f"{firing['cpu_per_fire_ms']:.2f} ms per fire"
    )
    print(
        f"  lag behind the scheduled instant: decided p50 {firing['decided_p50_ms']:.1f} ms, "
        f"p99 {firing['decided_p99_ms']:.1f} ms; committed and announced p50 "
        f"{firing['committed_p50_ms']:.1f} ms, p99 {firing['committed_p99_ms']:.1f} ms "
        f"(max {firing['committed_max_ms']:.1f} ms); target p99 <= 50 ms"
    )
    print(
        f"  a plain execute costs {per_execute:.2f} ms CPU: a fire is "
        f"{firing['cpu_per_fire_ms'] / per_execute:.2f}x the execution it creates"
    )


if __name__ == "__main__":
    main()
