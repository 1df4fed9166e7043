"""Fan-out cost: events published to many SSE subscribers that never read, in one process.

An aiohttp server over the real hub (as the orchestrator serves ``GET /api/v1/events``) on a free
loopback port; N raw sockets open the stream and never read (default socket buffers, so the
kernel takes a few MB each before a stream blocks). Then R runs of 11 events (a ``diamond``
run's count) are published, the loop turning between runs as a pipeline's would, and the
script waits until every subscriber's writer has taken all it was given (or what is left
has waited 0.5 s behind a full stream). It prints the wall
and CPU time, and the process's peak RSS.

    python bench/event_fanout.py --subscribers 200 --runs 1000
    python bench/event_fanout.py --subscribers 30 --runs 1 --data-mb 30   # one huge event
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web

from orchestrator.monitoring import Hub
from orchestrator.serving_http import HttpApi

KINDS = ["execution.queued", "execution.started"] + ["node.started", "node.succeeded"] * 4
KINDS.append("execution.succeeded")


class Facade:
    def __init__(self) -> None:
        self.hub = Hub()


def run_events(run: int, blob: str | None) -> list[dict[str, Any]]:
    return [
        {
            "seq": seq,
            "time": "2026-01-01T00:00:00.000Z",
            "type": kind,
            "severity": "info",
            "workflow_id": "diamond",
            "version": "1.0.0",
            "execution_id": f"run-{run}",
            "node_id": None if kind.startswith("execution") else f"n{seq}",
            "engine_id": "engine-1",
            "attempt": 1,
            "data": {"outputs": {"value": seq * 7, "blob": blob}} if blob else {"value": seq},
        }
        for seq, kind in enumerate(KINDS, 1)
    ]


def buffered(hub: Hub) -> int:
    subs = hub._subscribers  # both the old Subscription and the new keep ``_buffer``
    return sum(len(sub._buffer) for sub in subs)


async def main(subscribers: int, runs: int, data_mb: float, port: int) -> None:
    facade = Facade()
    runner = web.AppRunner(HttpApi(facade, token=None, max_body=1 << 20).app())  # type: ignore[arg-type]
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    loop = asyncio.get_running_loop()
    clients = []
    for _ in range(subscribers):  # connected from this loop: the server accepts meanwhile
        client = socket.socket()
        client.setblocking(False)
        await loop.sock_connect(client, ("127.0.0.1", port))
        await loop.sock_sendall(client, b"GET /api/v1/events HTTP/1.1\r\nHost: bench\r\n\r\n")
        clients.append(client)
    while facade.hub.subscribers < subscribers:
        await asyncio.sleep(0.01)
    blob = "x" * int(data_mb * 1_000_000) if data_mb else None
    wall, cpu = time.perf_counter(), time.process_time()
    for run in range(runs):
        facade.hub.publish_many(run_events(run, blob if run == 0 else None))
        await asyncio.sleep(0)
    # until the writers are done: all taken, or what is left waits behind full streams
    left, still = buffered(facade.hub), 0
    while left and still < 50:
        await asyncio.sleep(0.01)
        now = buffered(facade.hub)
        still = still + 1 if now == left else 0
        left = now
    await asyncio.sleep(0.5)  # what was taken is written, or waits on a stream that is full
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{subscribers} subscribers, {runs} runs ({runs * len(KINDS)} events): "
        f"wall {wall:.2f} s, cpu {cpu:.2f} s, peak RSS {rss:.0f} MB"
    )
    facade.hub.close_all()
    for client in clients:
        client.close()
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--data-mb", type=float, default=0, help="the first event's size")
    parser.add_argument("--port", type=int, default=48350)
    args = parser.parse_args()
    asyncio.run(main(args.subscribers, args.runs, args.data_mb, args.port))
