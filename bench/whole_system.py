"""The whole system on this machine: an orchestrator and two engines as real processes.

    .venv/bin/python bench/whole_system.py [--latency-runs 300] [--burst 5000]
                                           [--big-nodes 10000] [--repeat 3]

1. Latency: a 3-node workflow (a -> b -> c, trivial Lua) through ``POST /trigger/{id}`` with
   ``wait: true``, one request at a time; p50 and p99, against a bare aiohttp POST round trip
   to a server in another process measured in the same run (targets: p50 <= 5 ms, ratio <= 15x).
2. Throughput: ``--burst`` executions of that workflow fired at once (the client keeps 256
   requests in flight), timed from the first request to the last execution stored as
   succeeded; executions per second (target >= 500/s). Every one of them is then counted in
   the SQLite file itself, with the file's size a run and what the orchestrator wrote to disk
   a run meanwhile (the kernel's ``write_bytes``: WAL frames, checkpoints and logs).
3. One ``--big-nodes``-node workflow (layers of 100, each node depending on two of the layer
   above) through the whole system with ``wait: true`` (target <= 2 s).

Medians of ``--repeat`` runs where a figure is repeated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_runner import dag
from services import read_proc, start, start_system, stop

THREE = {
    "id": "bench3",
    "version": "1.0.0",
    "nodes": [
        {"id": "a", "lua": "return { v = 1 }"},
        {"id": "b", "depends_on": ["a"], "lua": "return { v = results.a.v + 1 }"},
        {"id": "c", "depends_on": ["b"], "lua": "return { v = results.b.v + 1 }"},
    ],
}


def big_spec(nodes: int) -> dict[str, Any]:
    """The local runner benchmark's DAG (layers of 100, two parents each), as a document."""
    return {**dag(nodes).document, "id": "big"}


# -- processes ----------------------------------------------------------------------------------


async def echo_server() -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response(await request.json())

    app = web.Application()
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(json.dumps({"event": "serving", "port": port}), flush=True)
    await asyncio.Event().wait()


# -- measurements -------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def written_bytes(pid: int) -> int:
    """Bytes a process has caused to be written to storage, from /proc (Linux): its SQLite
    file, WAL and logs, as the kernel counts pages it dirtied."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError(f"no write_bytes in /proc/{pid}/io")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def latency(
    http: aiohttp.ClientSession, url: str, echo: str, runs: int
) -> tuple[list[float], list[float]]:
    body = {"inputs": {"n": 1}, "wait": True}
    system, bare = [], []
    for _ in range(20):  # warm-up: connections, compiled chunks
        async with http.post(f"{url}/trigger/bench3", json=body) as resp:
            await resp.read()
        async with http.post(echo, json=body) as resp:
            await resp.read()
    for _ in range(runs):
        t0 = time.perf_counter()
        async with http.post(f"{url}/trigger/bench3", json=body) as resp:
            answer = await resp.json()
        system.append(time.perf_counter() - t0)
        assert answer.get("status") == "succeeded", answer
        t0 = time.perf_counter()
        async with http.post(echo, json=body) as resp:
            await resp.read()
        bare.append(time.perf_counter() - t0)
    return system, bare


async def succeeded_count(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith('dagengine_executions_total{status="succeeded",workflow="bench3"}'):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


async def burst(http: aiohttp.ClientSession, url: str, count: int) -> tuple[float, list[str]]:
    base = await succeeded_count(http, url)
    limit = asyncio.Semaphore(256)
    ids: list[str] = []

    async def fire(i: int) -> None:
        async with limit, http.post(f"{url}/trigger/bench3", json={"inputs": {"i": i}}) as resp:
            answer = await resp.json()
            assert resp.status == 202, answer
            ids.append(answer["execution_id"])

    t0 = time.perf_counter()
    await asyncio.gather(*(fire(i) for i in range(count)))
    while await succeeded_count(http, url) < base + count:
        await asyncio.sleep(0.02)
    return time.perf_counter() - t0, ids


async def big(http: aiohttp.ClientSession, url: str) -> float:
    t0 = time.perf_counter()
    async with http.post(f"{url}/trigger/big", json={"wait": True, "timeout": 120}) as resp:
        answer = await resp.json()
    elapsed = time.perf_counter() - t0
    assert answer.get("status") == "succeeded", answer
    return elapsed


async def main_async(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="dagengine-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        running = start_system(
            tmp,
            procs,
            engine_env={"CAPACITY": "1000"},
            orchestrator_env={
                "ENGINE_HEALTH_CHECK_INTERVAL": "1",
                "MAX_BODY_BYTES": str(16 * 1024 * 1024),
            },
        )
        url = running.url
        named = running.named
        _, rec = start([__file__, "--echo-server"], {}, tmp / "echo.log", procs)
        echo = f"http://127.0.0.1:{rec['port']}/echo"

        connector = aiohttp.TCPConnector(limit=300)
        async with aiohttp.ClientSession(connector=connector) as http:
            for _ in range(300):
                async with http.get(f"{url}/api/v1/engines") as resp:
                    ready = [e for e in (await resp.json())["engines"] if e["state"] == "ready"]
                if len(ready) == 2:
                    break
                await asyncio.sleep(0.1)
            for spec in (THREE, big_spec(args.big_nodes)):
                async with http.post(f"{url}/api/v1/workflows", json=spec) as resp:
                    assert resp.status in (200, 201), await resp.text()

            print(
                f"orchestrator + 2 engines on loopback ({os.cpu_count()} cores, "
                f"Python {sys.version.split()[0]}); medians of {args.repeat} runs"
            )
            p50s, p99s, ratios = [], [], []
            for _ in range(args.repeat):
                system, bare = await latency(http, url, echo, args.latency_runs)
                p50s.append(statistics.median(system))
                p99s.append(pct(system, 0.99))
                ratios.append(statistics.median(system) / statistics.median(bare))
                bare_p50 = statistics.median(bare)
            p50 = statistics.median(p50s)
            ratio = statistics.median(ratios)
            print(
                f"1. trigger+wait, 3 nodes    p50 {p50 * 1e3:7.2f} ms"
                f"   p99 {statistics.median(p99s) * 1e3:7.2f} ms"
            )
            print(f"   bare aiohttp POST        p50 {bare_p50 * 1e3:7.2f} ms")
            print(
                f"   p50 target <= 5 ms: {'met' if p50 <= 0.005 else 'MISSED'};"
                f" ratio {ratio:5.1f}x, target <= 15x: {'met' if ratio <= 15 else 'MISSED'}"
            )
            rates = []
            before = {name: cpu_seconds(p.pid) for name, p in named.items()}
            before["client"] = cpu_seconds(os.getpid())
            written = written_bytes(named["orchestrator"].pid)
            for _ in range(args.repeat):
                elapsed, _ids = await burst(http, url, args.burst)
                rates.append(args.burst / elapsed)
            spent = {name: cpu_seconds(p.pid) - before[name] for name, p in named.items()}
            spent["client"] = cpu_seconds(os.getpid()) - before["client"]
            written = written_bytes(named["orchestrator"].pid) - written
            conn = sqlite3.connect(tmp / "state.db")
            stored = conn.execute(
                "SELECT status, count(*) FROM executions"
                " WHERE workflow_id = 'bench3' GROUP BY status"
            ).fetchall()
            (every,) = conn.execute("SELECT count(*) FROM executions").fetchone()
            conn.close()
            # what the runs take on disk, the WAL's pages not yet in the file included
            size = sum(p.stat().st_size for p in tmp.glob("state.db*") if p.suffix != ".lock")
            wal = sum(p.stat().st_size for p in tmp.glob("state.db-wal"))
            rate = statistics.median(rates)
            print(
                f"2. {args.burst} concurrent executions  {rate:8.0f} executions/s"
                f"   target >= 500/s: {'met' if rate >= 500 else 'MISSED'}"
            )
            print(f"   in the store: {dict(stored)}")
            print(
                f"   state database: {size / every / 1024:.1f} KB a run"
                f" ({every} runs, {size / 2**20:.0f} MB with its WAL of {wal / 2**20:.0f} MB);"
                f" the orchestrator wrote {written / (args.burst * args.repeat) / 1024:.1f} KB"
                " a run to disk"
            )
            runs = args.burst * args.repeat
            print(
                "   CPU per execution: "
                + ", ".join(f"{name} {sec / runs * 1e6:.0f} us" for name, sec in spent.items())
            )
            times = [await big(http, url) for _ in range(args.repeat)]
            wall = statistics.median(times)
            print(
                f"3. one {args.big_nodes}-node workflow  {wall:6.2f} s"
                f"   target <= 2 s: {'met' if wall <= 2 else 'MISSED'}"
            )
            peaks = {name: read_proc(p.pid)[1] for name, p in named.items()}
            print(
                "   peak memory (VmHWM) of the whole run: "
                + ", ".join(f"{name} {mb:.0f} MB" for name, mb in peaks.items())
            )
    finally:
        stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)  # the services' logs and a state file of 5,000+ runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-runs", type=int, default=300)
    parser.add_argument("--burst", type=int, default=5000)
    parser.add_argument("--big-nodes", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        asyncio.run(echo_server())
        return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
