"""Spec validation alone: seconds to validate deep workflows, as ``python -m engine validate``.

    .venv/bin/python bench/validation.py [--nodes 10000] [--repeat 3]

Three chains of ``--nodes`` nodes, each node depending on the one before: reading that one's
result, reading the first node's (an ancestor far away), and reading a missing node (a problem
per node). Each is validated as JSON (the fast path) and as YAML (with the line map), with the
engine's own checks, Lua syntax included. Time should grow linearly with ``--nodes``: a
quadratic step shows as four times the time for twice the nodes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

from engine.core.errors import SpecError
from engine.loading import spec_from_text


def chain(nodes: int, reads: Callable[[int], str]) -> dict[str, object]:
    items: list[dict[str, object]] = [{"id": "a0", "lua": "return 1"}]
    items += [
        {"id": f"a{i}", "depends_on": [f"a{i - 1}"], "lua": f"return results.{reads(i)}"}
        for i in range(1, nodes)
    ]
    return {"id": "bench", "version": "1.0.0", "nodes": items}


def yaml_text(doc: dict[str, object]) -> str:
    lines = ["id: bench", "version: 1.0.0", "nodes:"]
    for node in doc["nodes"]:  # type: ignore[attr-defined]
        lines.append("  - " + json.dumps(node))  # flow style, one line a node
    return "\n".join(lines) + "\n"


def seconds(text: str, json_only: bool, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        try:
            spec_from_text(text, "bench", json_only=json_only)
        except SpecError:
            pass
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    shapes: dict[str, Callable[[int], str]] = {
        "previous": lambda i: f"a{i - 1}",
        "first": lambda i: "a0",
        "missing": lambda i: f"b{i}",
    }
    for name, reads in shapes.items():
        doc = chain(args.nodes, reads)
        as_json = seconds(json.dumps(doc), True, args.repeat)
        as_yaml = seconds(yaml_text(doc), False, args.repeat)
        print(f"{args.nodes} nodes reading {name:<8}  JSON {as_json:6.2f} s  YAML {as_yaml:6.2f} s")


if __name__ == "__main__":
    main()
