"""How long a run's lone Lua task waits for a worker while other runs keep every worker busy.

    .venv/bin/python bench/lua_fairness.py [--hogs 8] [--items 100] [--loop 1000000]
                                           [--samples 20] [--workers 2]

In one process, with the real sandbox and worker pool, as an engine runs them: ``--hogs`` runs
of a ``foreach`` of ``--items`` CPU loops (``--loop`` iterations each, concurrency 64: all their
items queue at once), and meanwhile, one after another, ``--samples`` runs of ``smallw``, one
node whose 20,000-iteration loop is past the inline budget, so it needs a worker. Printed: the
medians (and p90, max) of a ``smallw`` run alone and among the hogs, their ratio, and how many
``smallw`` runs failed on their node's ``--timeout`` (only those that ended while a hog still
ran count: with one shared queue there may be few). With one queue for every run, ``smallw``
waited behind every hog item queued before it; with the runs taking turns, behind at most one
item of each hog.

It also times the worker path alone: a 1,000-node DAG of trivial nodes with ``LUA_INLINE``
off, so every node goes through the pool's queue (the local-runner bench's nodes run inline).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Sequence

from engine.core.spec import WorkflowSpec, parse_spec
from engine.core.values import JSONObject
from engine.lua import LuaPool
from engine.running import Execution


def hog(items: int, loop: int) -> WorkflowSpec:
    return parse_spec(
        {
            "id": "hog",
            "version": "1.0.0",
            "concurrency": 64,
            "nodes": [
                {
                    "id": "items",
                    "lua": f"local t = {{}} for i = 1, {items} do t[i] = i end return t",
                },
                {
                    "id": "spin",
                    "depends_on": ["items"],
                    "foreach": "{{ results.items }}",
                    "concurrency": 64,
                    "lua": f"local s = 0 for i = 1, {loop} do s = s + i end return s",
                },
            ],
        }
    )


def smallw(timeout: str) -> WorkflowSpec:
    return parse_spec(
        {
            "id": "smallw",
            "version": "1.0.0",
            "nodes": [
                {
                    "id": "a",
                    "timeout": timeout,
                    "lua": "local s = 0 for i = 1, 20000 do s = s + i end return { s = s }",
                }
            ],
        }
    )


def trivial_dag(nodes: int = 1000, width: int = 100, seed: int = 3) -> WorkflowSpec:
    rnd = random.Random(seed)
    docs = []
    for i in range(nodes):
        layer = i // width
        deps = [f"n{(layer - 1) * width + j}" for j in rnd.sample(range(width), 2)] if layer else []
        docs.append({"id": f"n{i}", "lua": "return { v = 1 }", "depends_on": deps})
    return parse_spec({"id": "dag", "version": "1.0.0", "concurrency": width, "nodes": docs})


async def timed(spec: WorkflowSpec, pool: LuaPool) -> tuple[float, JSONObject]:
    t0 = time.perf_counter()
    doc = await Execution(spec, {}, pool=pool).run_to_end()
    return time.perf_counter() - t0, doc


async def samples(
    spec: WorkflowSpec,
    pool: LuaPool,
    count: int,
    during: Sequence[asyncio.Future[tuple[float, JSONObject]]] = (),
) -> tuple[list[float], int]:
    """Up to ``count`` runs of ``spec`` one after another; with ``during``, only while some
    of those are still running."""
    times: list[float] = []
    failed = 0
    while len(times) < count:
        took, doc = await timed(spec, pool)
        if during and all(f.done() for f in during):
            break  # it ran (partly) after them: not a sample of the wait among them
        times.append(took)
        failed += doc["status"] != "succeeded"
        await asyncio.sleep(0.02)
    return times, failed


def describe(times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return (
        f"median {statistics.median(ordered) * 1000:8.1f} ms   p90 {p90 * 1000:8.1f} ms   "
        f"max {ordered[-1] * 1000:8.1f} ms"
    )


async def fairness(args: argparse.Namespace) -> None:
    small = smallw(args.timeout)
    hogs = hog(args.items, args.loop)
    async with LuaPool(workers=args.workers) as pool:
        await timed(small, pool)  # warm: compiled, and known to be past the inline budget
        alone, _ = await samples(small, pool, args.samples)
        t0 = time.perf_counter()
        running = [asyncio.ensure_future(timed(hogs, pool)) for _ in range(args.hogs)]
        await asyncio.sleep(0.2)  # every hog's items are queued
        among, failed = await samples(small, pool, args.samples, running)
        during = time.perf_counter() - t0
        hog_times = [took for took, _ in await asyncio.gather(*running)]
    ratio = statistics.median(among) / statistics.median(alone)
    print(
        f"fairness: {args.hogs} hog runs x {args.items} items of a {args.loop:,}-iteration "
        f"loop, {args.workers} workers; smallw (one node past the inline budget, timeout "
        f"{args.timeout})"
    )
    print(f"  smallw alone         {describe(alone)}")
    print(f"  smallw among hogs    {describe(among)}")
    print(f"  ratio of medians     {ratio:8.1f}x   smallw runs failed: {failed} of {len(among)}")
    print(
        f"  hogs                 {statistics.median(hog_times):8.2f} s median to the end "
        f"({during:.1f} s of samples taken meanwhile)"
    )


async def worker_path(repeat: int, workers: int) -> None:
    spec = trivial_dag()
    async with LuaPool(workers=workers, inline=False) as pool:
        await timed(spec, pool)
        times = [(await timed(spec, pool))[0] for _ in range(repeat)]
    med = statistics.median(times)
    n = len(spec.nodes)
    print(f"worker path: {n} trivial nodes, LUA_INLINE off, {repeat} runs after a warm-up")
    print(
        f"  median {med * 1000:8.1f} ms = {n / med:9,.0f} nodes/s, {med / n * 1e6:6.1f} us per "
        f"node (best {min(times) / n * 1e6:.1f} us)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hogs", type=int, default=8)
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--loop", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--timeout", default="1s")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7, help="runs of the worker-path DAG")
    args = parser.parse_args()
    asyncio.run(worker_path(args.repeat, args.workers))
    asyncio.run(fairness(args))


if __name__ == "__main__":
    main()
