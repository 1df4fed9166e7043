"""Large reads beside small ones, in one process: the real facade, store and HTTP API.

A store in a temporary folder holds a finished run whose node returned ``--items`` items of
``--item-mb`` MB each (its document carries them twice: the run's outputs and the node's),
a finished run of ``--events`` events (as many as a 10,000-node run makes), and a small run.
Clients in threads (urllib, so they do not share the server's event loop) then:

1. ``--gets`` concurrent ``GET /api/v1/executions/{large}``, while another thread asks
   ``/healthz`` and a small run's ``GET`` over and over;
2. ``--reconnects`` concurrent SSE reconnects (ten rounds) to the long run with
   ``Last-Event-ID`` past its end (each is answered 204), with the same probes.

It prints each phase's wall time, the probes' medians and maxima, their ratio to the probes
alone, and the process's peak RSS.

    python bench/large_reads.py --gets 8 --items 30 --item-mb 1 --reconnects 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web

from orchestrator.lua_checking import LuaSyntaxChecker
from orchestrator.metrics import Metrics
from orchestrator.monitoring import Hub
from orchestrator.orchestrating import Orchestrator
from orchestrator.serving_http import HttpApi
from orchestrator.store import Store
from orchestrator.versions import Registry

SPEC = {"id": "wf", "version": "1.0.0", "nodes": [{"id": "a", "lua": "return 1"}]}


def event(execution_id: str, seq: int, kind: str, **data: Any) -> dict[str, Any]:
    return {
        "seq": seq,
        "time": "2026-01-01T00:00:00.000Z",
        "type": kind,
        "severity": "info",
        "workflow_id": "wf",
        "version": "1.0.0",
        "execution_id": execution_id,
        "node_id": "a" if kind.startswith("node.") else None,
        "engine_id": "engine-0",
        "attempt": 1,
        "data": data,
    }


async def stored(store: Store, execution_id: str, events: list[dict[str, Any]]) -> None:
    await store.create_execution(
        execution_id=execution_id,
        workflow_id="wf",
        version="1.0.0",
        inputs={},
        pinned={},
        created_at=1.0,
        node_ids=["a"],
        first_event=event(execution_id, 1, "execution.queued"),
    )
    for start in range(0, len(events), 100):
        await store.record_events(execution_id, events[start : start + 100])


def one_run(execution_id: str, output: Any) -> list[dict[str, Any]]:
    return [
        event(execution_id, 2, "execution.started"),
        event(execution_id, 3, "node.started"),
        event(execution_id, 4, "node.succeeded", output=output),
        event(execution_id, 5, "execution.succeeded", outputs={"a": output}),
    ]


def long_run(execution_id: str, total: int) -> list[dict[str, Any]]:
    kinds = ("node.started", "node.succeeded")
    events = [
        event(execution_id, seq, kinds[seq % 2], output={"s": seq}) for seq in range(2, total)
    ]
    events.append(event(execution_id, total, "execution.succeeded", outputs={}))
    return events


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, int, float]:
    started = time.perf_counter()
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=300) as resp:
            status, size = resp.status, len(resp.read())
    except urllib.error.HTTPError as exc:
        status, size = exc.code, 0
    return status, size, time.perf_counter() - started


class Probes(threading.Thread):
    """``/healthz`` and a small run's GET, in turn, every 20 ms until stopped."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.healthz: list[float] = []
        self.small: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.healthz.append(get(f"{self.base}/healthz")[2])
            self.small.append(get(f"{self.base}/api/v1/executions/small")[2])
            time.sleep(0.02)

    def stop(self) -> tuple[list[float], list[float]]:
        self.done.set()
        self.join()
        return self.healthz, self.small


def shown(name: str, during: list[float], alone: list[float]) -> str:
    med, top = statistics.median(during), max(during)
    return (
        f"  {name}: median {med * 1000:.1f} ms, max {top * 1000:.1f} ms "
        f"(x{med / statistics.median(alone):.1f} the median alone)"
    )


def phase(base: str, label: str, calls: list[tuple[str, dict[str, str]]], rounds: int = 1) -> None:
    """``calls`` at once, each thread making its call ``rounds`` times, with the probes."""
    alone = Probes(base)
    alone.start()
    time.sleep(1)
    healthz_alone, small_alone = alone.stop()
    probes = Probes(base)
    probes.start()
    results: list[tuple[int, int, float]] = []

    def call(url: str, headers: dict[str, str]) -> None:
        for _ in range(rounds):
            results.append(get(url, headers))

    threads = [threading.Thread(target=call, args=call_args) for call_args in calls]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    healthz, small = probes.stop()
    statuses = sorted({status for status, _, _ in results})
    each = statistics.median(t for _, _, t in results)
    print(f"{label}: statuses {statuses}, wall {wall:.2f} s, median call {each:.2f} s")
    print(shown("/healthz", healthz, healthz_alone))
    print(shown("small run GET", small, small_alone))


async def main(args: argparse.Namespace) -> None:
    folder = tempfile.TemporaryDirectory()
    store = await Store.open(str(Path(folder.name) / "state.db"))
    checker = LuaSyntaxChecker()
    orch = Orchestrator(
        store=store,
        registry=Registry(),
        fleet=None,  # type: ignore[arg-type]
        hub=Hub(),
        metrics=Metrics(list, lambda: 0),
        lua_checker=checker,
        queue_limit=1000,
    )
    await orch.register(json.dumps(SPEC), yaml=False, force=False)
    item = "x" * int(args.item_mb * 1_000_000)
    await stored(store, "large", one_run("large", [item] * args.items))
    await stored(store, "long", long_run("long", args.events))
    await stored(store, "small", one_run("small", {"n": 1}))
    runner = web.AppRunner(HttpApi(orch, token=None, max_body=1 << 20).app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"
    try:
        large = [(f"{base}/api/v1/executions/large", {})] * args.gets
        await asyncio.to_thread(phase, base, f"{args.gets} GETs of the large run", large)
        past = {"Last-Event-ID": str(10**9)}
        reconnects = [(f"{base}/api/v1/events?execution=long", past)] * args.reconnects
        label = (
            f"{args.reconnects} SSE reconnects at once, 10 times, past the end of a "
            f"{args.events}-event run"
        )
        await asyncio.to_thread(phase, base, label, reconnects, 10)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS {rss:.0f} MB (server and clients)")
    finally:
        await runner.cleanup()
        await store.close()
        checker.close()
        folder.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gets", type=int, default=8)
    parser.add_argument("--items", type=int, default=30)
    parser.add_argument("--item-mb", type=float, default=1.0)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--reconnects", type=int, default=50)
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(main(parser.parse_args()))
