"""A foreach over the workflow inputs through the local runner: what large inputs cost a run.

    .venv/bin/python bench/lua_inputs.py [--repeat 3] [--items 2000,8000,16000] [--pad 100000]

Each case runs ``python -m engine run`` as a user would, and prints the median wall time of
the repeats (process start included). A foreach node over ``inputs.items`` whose script is
``return ctx.item`` never reads ``inputs``; nor does it with ``--pad`` unused integers beside
the items, a case shown next to one node over the same inputs: what reading them costs
``python -m engine run`` before anything runs. The same foreach over the output of a node
(``results``) is the yardstick: the inputs should cost no more than it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OVER_INPUTS = """\
id: fe-inputs
version: 1.0.0
nodes:
  - id: fe
    foreach: "{{ inputs.items }}"
    lua: return ctx.item
"""

ONE_NODE = """\
id: one-node
version: 1.0.0
nodes:
  - id: one
    lua: return 1
"""

OVER_RESULTS = """\
id: fe-results
version: 1.0.0
nodes:
  - id: gen
    lua: |
      local t = {} for i = 1, inputs.n do t[i] = i end return t
  - id: fe
    depends_on: [gen]
    foreach: "{{ results.gen }}"
    lua: return ctx.item
"""


def timed(spec: Path, inputs: Path, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "engine", "run", "-q", str(spec), "--inputs-file", str(inputs)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--items", default="2000,8000,16000")
    parser.add_argument("--pad", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        over_inputs, over_results = folder / "inputs.yaml", folder / "results.yaml"
        one_node = folder / "one.yaml"
        over_inputs.write_text(OVER_INPUTS)
        over_results.write_text(OVER_RESULTS)
        one_node.write_text(ONE_NODE)
        data = folder / "inputs.json"
        cases: list[tuple[str, Path, object]] = [
            (f"foreach over inputs.items, {n} items", over_inputs, {"items": list(range(n))})
            for n in map(int, args.items.split(","))
        ]
        padded = {"items": list(range(2000)), "pad": list(range(args.pad))}
        cases.append(
            (
                f"foreach over inputs.items, 2000 items, {args.pad} unused ints beside",
                over_inputs,
                padded,
            )
        )
        cases.append((f"one node, the same 2000 items and {args.pad} ints", one_node, padded))
        largest = max(map(int, args.items.split(",")))
        cases.append((f"foreach over results, {largest} items", over_results, {"n": largest}))
        for label, spec, inputs in cases:
            data.write_text(json.dumps(inputs))
            print(f"{label}: {timed(spec, data, args.repeat):.2f} s (median of {args.repeat})")


if __name__ == "__main__":
    main()
