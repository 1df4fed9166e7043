"""Lua nodes through the local runner: nodes per second, and the cost per node against lupa.

    .venv/bin/python bench/local_runner.py [--nodes 1000] [--repeat 7] [--workers N]

A 1,000-node DAG (layers of 100, each node depending on two of the layer above) of trivial Lua
nodes (``return { v = 1 }``) runs through ``Execution`` with the real sandbox and worker pool,
exactly as ``python -m engine run`` does. In the same process, the same Lua function is called
bare through lupa (compiled once, called, its table read back into a dict): the ratio of the two
per-node costs is what the engine adds around a script. Medians of the repeats are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import timeit

import lupa.lua54 as lupa

from engine.core.spec import WorkflowSpec, parse_spec
from engine.lua import LuaPool
from engine.running import Execution

SCRIPT = "return { v = 1 }"


def dag(nodes: int, width: int = 100, fan_in: int = 2, seed: int = 3) -> WorkflowSpec:
    rnd = random.Random(seed)
    docs = []
    for i in range(nodes):
        layer = i // width
        deps = []
        if layer:
            deps = [f"n{(layer - 1) * width + j}" for j in rnd.sample(range(width), fan_in)]
        docs.append({"id": f"n{i}", "lua": SCRIPT, "depends_on": deps})
    return parse_spec({"id": "bench", "version": "1.0.0", "concurrency": width, "nodes": docs})


async def engine_runs(spec: WorkflowSpec, repeat: int, workers: int | None) -> list[float]:
    times = []
    async with LuaPool(workers=workers) as pool:
        await Execution(spec, {}, pool=pool).run_to_end()  # warm: chunks compiled once per runtime
        for _ in range(repeat):
            t0 = time.perf_counter()
            doc = await Execution(spec, {}, pool=pool).run_to_end()
            times.append(time.perf_counter() - t0)
            assert doc["status"] == "succeeded", doc["error"]
    return times


def bare_lupa_per_call(number: int = 20000) -> float:
    rt = lupa.LuaRuntime(register_eval=False)
    fn = rt.eval(f"function() {SCRIPT} end")

    def call() -> None:
        dict(fn().items())

    call()
    return min(timeit.repeat(call, number=number, repeat=5)) / number


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    spec = dag(args.nodes)
    times = asyncio.run(engine_runs(spec, args.repeat, args.workers))
    med = statistics.median(times)
    best = min(times)
    bare = bare_lupa_per_call()
    print(f"local runner: {args.nodes} trivial Lua nodes, {args.repeat} runs after a warm-up")
    print(f"  run                      {med * 1000:9.1f} ms median, {best * 1000:.1f} ms best")
    print(f"  bare lupa call           {bare * 1e6:9.2f} us   (same function, result read back)")
    for label, t in (("median", med), ("best", best)):
        rate = args.nodes / t
        ratio = t / args.nodes / bare
        print(
            f"  {label:<6} nodes/s {rate:10,.0f}   target >= 20,000: "
            f"{'met' if rate >= 20_000 else 'MISSED'} ({rate / 20_000:.2f}x); "
            f"per node {t / args.nodes * 1e6:6.1f} us = {ratio:5.1f}x bare lupa "
            f"(target <= 5x: {'met' if ratio <= 5 else 'MISSED'})"
        )


if __name__ == "__main__":
    main()
