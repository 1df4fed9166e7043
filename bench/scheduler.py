"""Scheduler alone: node transitions per second on a 10,000-node layered DAG.

    .venv/bin/python bench/scheduler.py [--layers 100] [--width 100] [--fan-in 3] [--repeat 5]

Each node depends on ``fan-in`` nodes of the layer above. Tasks are completed in the order the
scheduler issues them, with no Lua and no I/O, so this measures the state machine itself. A node
makes two transitions (pending -> running -> succeeded). Prints the median of the repeats.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from engine.core import scheduler as sch
from engine.core.spec import WorkflowSpec, parse_spec


def layered(layers: int, width: int, fan_in: int, seed: int = 7) -> WorkflowSpec:
    rnd = random.Random(seed)
    nodes = []
    for layer in range(layers):
        for i in range(width):
            deps = []
            if layer:
                deps = [f"l{layer - 1}_{j}" for j in rnd.sample(range(width), min(fan_in, width))]
            nodes.append({"id": f"l{layer}_{i}", "lua": "return {}", "depends_on": deps})
    return parse_spec({"id": "bench", "version": "1.0.0", "concurrency": width, "nodes": nodes})


def one_run(spec: WorkflowSpec) -> float:
    started = time.perf_counter()
    run = sch.Run(spec, {})
    out = run.handle(sch.Start(0.0))
    pending = [i for i in out if isinstance(i, sch.RunTask)]
    while pending:
        out = run.handle(*(sch.TaskSucceeded(t.node_id, None, t.attempt, {}, 1.0) for t in pending))
        pending = [i for i in out if isinstance(i, sch.RunTask)]
    elapsed = time.perf_counter() - started
    assert run.status == "succeeded", run.status
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=100)
    parser.add_argument("--width", type=int, default=100)
    parser.add_argument("--fan-in", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    t0 = time.perf_counter()
    spec = layered(args.layers, args.width, args.fan_in)
    parse_s = time.perf_counter() - t0
    n = len(spec.nodes)
    edges = sum(len(x.depends_on) for x in spec.nodes)
    times = [one_run(spec) for _ in range(args.repeat)]
    med = statistics.median(times)
    best = min(times)
    print(f"scheduler: {n} nodes, {edges} edges, {args.repeat} runs")
    print(f"  spec validation          {parse_s * 1000:9.1f} ms")
    print(f"  run                      {med * 1000:9.1f} ms median, {best * 1000:.1f} ms best")
    for label, t in (("median", med), ("best", best)):
        rate = 2 * n / t
        verdict = "met" if rate >= 200_000 else "MISSED"
        print(
            f"  transitions/s ({label:<6}) {rate:12,.0f}   target >= 200,000: "
            f"{verdict} ({rate / 200_000:.2f}x)"
        )
    print("  (a node makes two transitions: pending -> running -> succeeded)")


if __name__ == "__main__":
    main()
