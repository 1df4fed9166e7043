"""A run's Execute call is freed when the run ends, by reference count: the orchestrator
collects cyclic garbage seldom (``orchestrator.serving``), and gRPC's response stream left open
at the final event held each call in a cycle (a soak grew ~480 MB an hour of them)."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

from orchestrator.local import LocalCluster

SPEC = """
id: quick
version: 1.0.0
nodes:
  - id: a
    lua: return { n = 1 }
"""


def calls_alive() -> int:
    return sum(1 for o in gc.get_objects() if type(o).__name__ == "UnaryStreamCall")


async def test_finished_runs_leave_no_execute_call_behind(tmp_path: Path) -> None:
    async with LocalCluster(engines=1, state_db=tmp_path / "state.db") as cluster:
        await cluster.register(SPEC)
        gc.collect()
        gc.disable()  # as seldom as the orchestrator's collector, for the length of the test
        try:
            for _ in range(20):
                run = await cluster.execute("quick", inputs={}, wait=30)
                assert run["status"] == "succeeded"
            # each stream is read to its end apart from the run's: a moment after the last
            deadline = asyncio.get_running_loop().time() + 5
            while calls_alive() and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
            # before: 20, one per run, until a collection
            assert calls_alive() == 0
        finally:
            gc.enable()
