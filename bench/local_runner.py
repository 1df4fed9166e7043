"""Lua nodes through the local runner: nodes per second, and the cost per node against lupa.

    .venv/bin/python bench/local_runner.py [--nodes 1000] [--repeat 7] [--workers N]

A 1,000-node DAG (layers of 100, each node depending on two of the layer above) of trivial Lua
nodes (``return { v = 1 }``) runs through ``Execution`` with the real sandbox and worker pool,
as ``python -m engine run`` does but without its progress lines. In the same process, the same
Lua function is called bare through lupa (compiled once, called, its table read back into a
dict): the ratio of the two per-node costs is what the engine adds around a script. Medians of
the repeats are printed.

It also splits a node's cost into its parts, each timed alone on the same DAG: the scheduler
state machine with no Lua at all, one sandboxed run of the node's chunk, and what is left (the
async adapter, the node's two events, the execution document). The first two are the floor
under the whole, and they show how far below it the 5x target lies.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import timeit

import lupa.lua54 as lupa

from engine.core import scheduler as sch
from engine.core.spec import WorkflowSpec, parse_spec
from engine.core.values import JSONObject
from engine.lua import MISSING, LuaPool, LuaSandbox, LuaTask
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


def scheduler_per_node(spec: WorkflowSpec, repeat: int) -> float:
    """Best time per node of the state machine alone, driven to the end with fixed outputs."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run = sch.Run(spec, {}, ctx={"execution_id": "0" * 32})
        out = run.handle(sch.Start(0.0))
        while tasks := [i for i in out if isinstance(i, sch.RunTask)]:
            out = run.handle(*(sch.TaskSucceeded(t.node_id, None, 1, {"v": 1}, 1.0) for t in tasks))
        times.append(time.perf_counter() - t0)
        assert run.status == "succeeded", run.status
    return min(times) / len(spec.nodes)


def sandbox_per_run(number: int = 20000) -> float:
    """Best time of one sandboxed run of the node's chunk, with the ctx a node gets."""
    sandbox = LuaSandbox()
    ctx: JSONObject = {
        "workflow_id": "bench",
        "version": "1.0.0",
        "execution_id": "0" * 32,
        "node_id": "n1",
        "attempt": 1,
    }
    task = LuaTask("bench@1.0.0/n1", SCRIPT, "n1", {}, lambda name: MISSING, ctx)
    assert sandbox.run(task).value == {"v": 1}
    return min(timeit.repeat(lambda: sandbox.run(task), number=number, repeat=5)) / number


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
    scheduler = scheduler_per_node(spec, args.repeat)
    sandbox = sandbox_per_run()
    rest = best / args.nodes - scheduler - sandbox
    budget = 5 * bare * 1e6
    print(f"  where a node's time goes (best of each part timed alone; 5x bare is {budget:.2f} us)")
    for label, t in (
        ("scheduler, no Lua", scheduler),
        ("one sandboxed run", sandbox),
        ("adapter, events, document", rest),
    ):
        print(f"    {label:<26} {t * 1e6:6.2f} us = {t / bare:5.1f}x bare lupa")


if __name__ == "__main__":
    main()
