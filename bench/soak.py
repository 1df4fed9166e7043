"""A soak: an orchestrator and two engines as real processes under steady mixed load, and their
memory, file descriptors and threads over time.

    .venv/bin/python bench/soak.py --minutes 10 [--rate 1.0] [--every 15] [--report N]
                                   [--retention 20m] [--seed 1] [--csv samples.csv] [--keep]

The services start as ``python -m orchestrator`` (a temporary ``STATE_DB``, static discovery of
the two engines, ``EXECUTION_RETENTION`` from ``--retention``) and ``python -m engine``, on free
loopback ports, with their default settings and the default C allocator. Ten workflows are
registered and, for ``--minutes``, actions come at random at ``--rate`` a second (Poisson; at
most 40 in flight, the rest are counted as skipped): small runs, some waited, some with an
``Idempotency-Key`` (drawn from 500, so a few are refused as reused with other inputs); foreach
runs of 100 to 600 items; runs whose foreach items hold 0.9 MB each (1 to 5 of them, reduced by
a later node, or the run's output itself); parents whose foreach runs a sub-workflow per item
(the child for 13 fails); runs that fail every way a node can (Lua error, retries, the
instruction limit, a timeout, the memory limit, the sandbox, an output that is no JSON);
sleeping runs and sub-workflow parents cancelled after a few seconds; SSE streams and gRPC
``WatchEvents`` watchers on one run or on all, opened and closed after a few seconds; and reads
(a run, its timeline, a listing, ``/metrics``, the engines). The same ``--seed`` draws the same
actions.

Every ``--every`` seconds each service's VmRSS (and VmHWM), open file descriptors and threads
are read from ``/proc``, and every ``--report`` minutes (2, or 5 for runs over 20 minutes) a
table shows that window. At the end, per process: RSS at the start of the load, its peak
(sampled, and the kernel's VmHWM) and its last value, the median of each tenth of the run, and
the least-squares slope over the second half in MB a minute (near 0 once the allocator has
settled; a leak shows as a steady rise).

Every run accepted is followed until it ends (its row in the state database, read-only, every
5 s; after the load, for up to ``--drain`` seconds more); the script lists any that did not,
and any run the store still has queued or running, and then exits 1. Ctrl-C stops the
services and removes the temporary directory (``--keep`` keeps it: service logs and the state
database).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import csv
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from engine.api import dagengine_pb2 as pb  # noqa: E402
from engine.api import dagengine_pb2_grpc as pbg  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from services import read_proc, start_system, stop  # noqa: E402

ITEM_BYTES = 900 * 1024
TERMINAL = frozenset({"succeeded", "partial", "failed", "cancelled", "timed_out"})
MAX_IN_FLIGHT = 40

# -- workflows ----------------------------------------------------------------------------------

SMALL = {
    "id": "soak-small",
    "version": "1.0.0",
    "nodes": [
        {"id": "a", "lua": "return { v = (inputs.n or 1) }"},
        {
            "id": "b",
            "depends_on": ["a"],
            "lua": "log('info', 'b got ' .. results.a.v) return { v = results.a.v + 1 }",
        },
        {"id": "c", "depends_on": ["a"], "lua": "return { s = string.rep('y', 200) }"},
        {
            "id": "d",
            "depends_on": ["b", "c"],
            "when": "results.b.v > 0",
            "lua": "return { v = results.b.v * 2, s = #results.c.s }",
        },
    ],
}

_LIST_MB = "local t = {} for i = 1, (inputs.mb or 2) do t[i] = i end return { items = t }"

# foreach items of 0.9 MB each, reduced by a later node: the run's output is small
BIG = {
    "id": "soak-big",
    "version": "1.0.0",
    "nodes": [
        {"id": "list", "lua": _LIST_MB},
        {
            "id": "gen",
            "depends_on": ["list"],
            "foreach": "{{ results.list.items }}",
            "concurrency": 2,
            "lua": "return { i = ctx.item,"
            f" blob = string.rep(string.char(97 + ctx.item % 26), {ITEM_BYTES}) }}",
        },
        {
            "id": "reduce",
            "depends_on": ["gen"],
            "lua": "local n = 0 for _, g in ipairs(results.gen) do n = n + #g.blob end"
            " return { bytes = n }",
        },
    ],
}

# the foreach's items are the run's output
BIGOUT = {
    "id": "soak-bigout",
    "version": "1.0.0",
    "outputs": {"all": "{{ results.gen }}"},
    "nodes": [
        {"id": "list", "lua": _LIST_MB},
        {
            "id": "gen",
            "depends_on": ["list"],
            "foreach": "{{ results.list.items }}",
            "lua": f"return string.rep('z', {ITEM_BYTES}) .. ctx.execution_id",
        },
    ],
}

FAN = {
    "id": "soak-fan",
    "version": "1.0.0",
    "nodes": [
        {
            "id": "list",
            "lua": "local t = {} for i = 1, (inputs.n or 300) do t[i] = i end return { items = t }",
        },
        {
            "id": "each",
            "depends_on": ["list"],
            "foreach": "{{ results.list.items }}",
            "concurrency": 16,
            "lua": "return { d = ctx.item * 2, id = ctx.execution_id .. ':' .. ctx.index }",
        },
        {
            "id": "sum",
            "depends_on": ["each"],
            "lua": "local s = 0 for _, e in ipairs(results.each) do s = s + e.d end"
            " return { s = s }",
        },
    ],
}

CHILD = {
    "id": "soak-child",
    "version": "1.0.0",
    "inputs_schema": {
        "type": "object",
        "properties": {"x": {"type": "integer"}},
        "required": ["x"],
    },
    "nodes": [
        {
            "id": "one",
            "lua": "return { x = inputs.x, sq = inputs.x * inputs.x, pad = string.rep('p', 2000) }",
        },
        {
            "id": "two",
            "depends_on": ["one"],
            "lua": "if inputs.x == 13 then error('unlucky') end return { y = results.one.sq + 1 }",
        },
    ],
}

PARENT = {
    "id": "soak-parent",
    "version": "1.0.0",
    "nodes": [
        {
            "id": "list",
            "lua": "local t = {} for i = 1, (inputs.n or 8) do t[i] = i + (inputs.off or 0) end"
            " return { items = t }",
        },
        {
            "id": "kids",
            "depends_on": ["list"],
            "foreach": "{{ results.list.items }}",
            "concurrency": 4,
            "workflow": {"id": "soak-child", "version": "^1.0"},
            "inputs": {"x": "{{ ctx.item }}"},
        },
        {
            "id": "done",
            "depends_on": ["kids"],
            "trigger_rule": "all_done",
            "lua": "return { n = results.kids and #results.kids or 0 }",
        },
    ],
}

FAIL = {
    "id": "soak-fail",
    "version": "1.0.0",
    "nodes": [
        {"id": "boom", "lua": "error('boom ' .. ctx.execution_id)"},
        {
            "id": "flaky",
            "retry": {"max_attempts": 3, "backoff": "fixed", "delay": "100ms"},
            "lua": "if ctx.attempt < 3 then error('flaky attempt ' .. ctx.attempt) end"
            " return { ok = ctx.attempt }",
        },
        {
            "id": "hard",
            "retry": {"max_attempts": 2, "backoff": "exponential", "delay": "200ms"},
            "lua": "error('always')",
        },
        {"id": "loop", "lua": "local i = 0 while true do i = i + 1 end"},  # instruction limit
        {"id": "slow", "timeout": "300ms", "lua": "local x = 0 while true do x = x + 1 end"},
        {
            "id": "mem",  # memory limit
            "lua": "local t = {} for i = 1, 10000000 do t[i] = string.rep('m', 64) .. i end"
            " return {}",
        },
        {"id": "sandbox", "lua": "return io.open('/etc/passwd')"},
        {"id": "badout", "lua": "return { f = function() end }"},
        {"id": "ok", "lua": "return { fine = true }"},
        {"id": "after", "depends_on": ["boom"], "lua": "return 1"},
        {
            "id": "alert",
            "depends_on": ["boom"],
            "trigger_rule": "one_failed",
            "lua": "log('warn', 'boom failed') return {}",
        },
    ],
}

SLEEPY = {
    "id": "soak-sleepy",
    "version": "1.0.0",
    "nodes": [
        {"id": "wait", "sleep": "60s"},
        {"id": "spin", "lua": "local x = 0 for i = 1, 40000000 do x = x + i end return x"},
        {"id": "after", "depends_on": ["wait"], "lua": "return 1"},
    ],
}

SLOWCHILD = {
    "id": "soak-slowchild",
    "version": "1.0.0",
    "nodes": [
        {"id": "wait", "sleep": "30s"},
        {"id": "after", "depends_on": ["wait"], "lua": "return inputs"},
    ],
}

SLOWPARENT = {
    "id": "soak-slowparent",
    "version": "1.0.0",
    "nodes": [
        {"id": "list", "lua": "return { items = {1, 2, 3, 4} }"},
        {
            "id": "kids",
            "depends_on": ["list"],
            "foreach": "{{ results.list.items }}",
            "workflow": {"id": "soak-slowchild", "version": "^1"},
            "inputs": {"i": "{{ ctx.item }}"},
        },
    ],
}

WORKFLOWS: list[dict[str, Any]] = [
    SMALL,
    BIG,
    BIGOUT,
    FAN,
    CHILD,
    PARENT,
    FAIL,
    SLEEPY,
    SLOWCHILD,
    SLOWPARENT,
]

# -- sampling -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    minute: float  # since the load started
    name: str
    rss_mb: float
    hwm_mb: float  # VmHWM: the kernel's own peak RSS, which samples may miss
    fds: int
    threads: int


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (nan with fewer than three points)."""
    if len(points) < 3:
        return float("nan")
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    den = sum((x - mx) ** 2 for x, _ in points)
    if den == 0:
        return float("nan")
    return sum((x - mx) * (y - my) for x, y in points) / den


def tenths(points: list[tuple[float, float]], minutes: float) -> list[float | None]:
    """The median y of each tenth of [0, minutes) (None where a tenth has no point)."""
    bins: list[list[float]] = [[] for _ in range(10)]
    for x, y in points:
        if 0 <= x < minutes:
            bins[min(9, int(x / minutes * 10))].append(y)
        elif x == minutes:
            bins[9].append(y)
    return [statistics.median(b) if b else None for b in bins]


# -- load ---------------------------------------------------------------------------------------


@dataclass
class Load:
    http: aiohttp.ClientSession
    url: str
    stub: pbg.OrchestratorAsyncStub
    rnd: random.Random
    db: Path
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    accepted: dict[str, tuple[str, float]] = field(default_factory=dict)  # id -> workflow, when
    ended: dict[str, str] = field(default_factory=dict)  # id -> status
    errors: list[str] = field(default_factory=list)
    recent: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=200))
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    # the runs

    def _ended(self, eid: str, status: str | None) -> None:
        if status in TERMINAL and eid not in self.ended:
            self.ended[eid] = status
            self.counts[f"ended {status}"] += 1

    async def trigger(
        self, wf: str, inputs: dict[str, Any], *, wait: bool = False, key: str | None = None
    ) -> str | None:
        headers = {"Idempotency-Key": key} if key else {}
        body = {"inputs": inputs, "wait": wait}
        async with self.http.post(f"{self.url}/trigger/{wf}", json=body, headers=headers) as r:
            answer = await r.json(content_type=None)
        self.counts["triggers"] += 1
        eid = answer.get("execution_id") if isinstance(answer, dict) else None
        if r.status == 422 and '"idempotency_key_reused"' in json.dumps(answer):
            # a key drawn again with other inputs: the refusal the API promises, not a fault
            self.counts["key reused 422"] += 1
            return None
        if r.status not in (200, 202) or not eid:
            self.counts[f"trigger {r.status}"] += 1
            self.note(f"trigger {wf} answered {r.status}: {str(answer)[:200]}")
            return None
        if eid not in self.accepted:
            self.accepted[eid] = (wf, time.monotonic())
            self.counts["accepted"] += 1
        self.recent.append(eid)
        self._ended(eid, answer.get("status"))
        return str(eid)

    async def status(self, eid: str) -> str | None:
        async with self.http.get(f"{self.url}/api/v1/executions/{eid}") as r:
            answer = await r.json(content_type=None)
        if r.status != 200:
            return None
        status = answer.get("status")
        self._ended(eid, status)
        return str(status)

    async def wait_done(self, eid: str, limit: float = 120) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and eid not in self.ended:
            await self.status(eid)
            await asyncio.sleep(1.0)

    async def cancel_later(self, eid: str, delay: float) -> None:
        await asyncio.sleep(delay)
        async with self.http.post(f"{self.url}/api/v1/executions/{eid}/cancel") as r:
            await r.read()
            self.counts[f"cancel {r.status}"] += 1
        await self.wait_done(eid)

    # the watchers

    async def sse(self, params: dict[str, str], seconds: float) -> None:
        self.counts["sse opened"] += 1
        events = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                async with self.http.get(f"{self.url}/api/v1/events", params=params) as r:
                    if r.status != 200:
                        self.counts[f"sse {r.status}"] += 1
                        return
                    async for chunk in r.content.iter_any():
                        events += chunk.count(b"data:")
        self.counts["sse events"] += events

    async def watch(self, request: pb.WatchEventsRequest, seconds: float) -> None:
        self.counts["grpc watchers opened"] += 1
        call = self.stub.WatchEvents(request)
        events = 0
        try:
            async with asyncio.timeout(seconds):
                async for _event in call:
                    events += 1
        except TimeoutError:
            pass
        except grpc.aio.AioRpcError as e:
            self.counts[f"grpc watch {e.code().name}"] += 1
        finally:
            call.cancel()
        self.counts["grpc events"] += events

    # the actions, as weights over the mix

    async def small(self) -> None:
        n = self.rnd.randint(1, 50)
        if self.rnd.random() < 0.2:
            await self.trigger("soak-small", {"n": n}, key=f"k-{self.rnd.randint(0, 500)}")
        else:
            await self.trigger("soak-small", {"n": n}, wait=self.rnd.random() < 0.5)

    async def fan(self) -> None:
        await self.trigger("soak-fan", {"n": self.rnd.randint(100, 600)})

    async def parent(self) -> None:
        n, off = self.rnd.randint(4, 16), self.rnd.randint(0, 12)
        await self.trigger("soak-parent", {"n": n, "off": off})

    async def big(self) -> None:
        await self.trigger("soak-big", {"mb": self.rnd.randint(1, 5)})

    async def bigout(self) -> None:
        eid = await self.trigger("soak-bigout", {"mb": self.rnd.randint(1, 5)})
        if eid and self.rnd.random() < 0.5:
            await self.wait_done(eid)  # reads the run's whole document while it grows

    async def fail(self) -> None:
        await self.trigger("soak-fail", {})

    async def cancel_sleepy(self) -> None:
        eid = await self.trigger("soak-sleepy", {})
        if eid:
            await self.cancel_later(eid, self.rnd.uniform(0.5, 3))

    async def cancel_parent(self) -> None:
        eid = await self.trigger("soak-slowparent", {})
        if eid:
            await self.cancel_later(eid, self.rnd.uniform(1, 4))

    async def run_and_sse(self) -> None:
        wf = self.rnd.choice(["soak-small", "soak-fan", "soak-parent", "soak-big"])
        eid = await self.trigger(wf, {"n": 200, "mb": 2} if wf != "soak-small" else {})
        if eid:
            await self.sse({"execution": eid}, self.rnd.uniform(2, 10))

    async def sse_all(self) -> None:
        params = self.rnd.choice([{}, {"workflow": "soak-fan"}, {"workflow": "soak-big"}])
        await self.sse(params, self.rnd.uniform(5, 30))

    async def run_and_watch(self) -> None:
        wf = self.rnd.choice(["soak-small", "soak-fan", "soak-parent"])
        eid = await self.trigger(wf, {"n": 100} if wf != "soak-small" else {})
        if eid:
            request = pb.WatchEventsRequest(execution_id=eid, after_seq=0)
            await self.watch(request, self.rnd.uniform(2, 10))

    async def watch_all(self) -> None:
        request = pb.WatchEventsRequest(workflow_id=self.rnd.choice(["", "soak-small"]))
        await self.watch(request, self.rnd.uniform(5, 20))

    async def read(self) -> None:
        k = self.rnd.random()
        if self.recent and k < 0.4:
            path = f"/api/v1/executions/{self.rnd.choice(self.recent)}"
        elif self.recent and k < 0.6:
            path = f"/api/v1/executions/{self.rnd.choice(self.recent)}/events"
        elif k < 0.8:
            path = f"/api/v1/executions?limit={self.rnd.choice([10, 50, 200])}"
        elif k < 0.9:
            path = "/metrics"
        else:
            path = "/api/v1/engines"
        async with self.http.get(f"{self.url}{path}") as r:
            await r.read()
            self.counts["reads"] += 1
            if r.status != 200:
                self.counts[f"read {r.status}"] += 1

    def mix(self) -> list[tuple[float, Callable[[], Awaitable[None]]]]:
        return [
            (0.36, self.small),
            (0.07, self.fan),
            (0.07, self.parent),
            (0.045, self.big),
            (0.025, self.bigout),
            (0.04, self.fail),
            (0.04, self.cancel_sleepy),
            (0.02, self.cancel_parent),
            (0.05, self.run_and_sse),
            (0.02, self.sse_all),
            (0.04, self.run_and_watch),
            (0.01, self.watch_all),
            (0.21, self.read),
        ]

    def note(self, text: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(text)

    async def guarded(self, action: Callable[[], Awaitable[None]]) -> None:
        try:
            await action()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.counts[f"error {type(e).__name__}"] += 1
            self.note(f"{action.__name__}: {e!r}"[:300])

    async def drive(self, rate: float, seconds: float) -> None:
        weights, actions = zip(*self.mix(), strict=True)
        deadline = time.monotonic() + seconds
        while True:
            await asyncio.sleep(self.rnd.expovariate(rate))
            if time.monotonic() >= deadline:
                return
            self.counts["actions"] += 1
            if len(self.tasks) >= MAX_IN_FLIGHT:
                self.counts["skipped"] += 1
                continue
            action = self.rnd.choices(actions, weights)[0]
            task = asyncio.create_task(self.guarded(action))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def follow(self, every: float = 5.0) -> None:
        """Mark the accepted runs that have ended, from the state database, until cancelled."""
        while True:
            await asyncio.sleep(every)
            await self.check_open(older_than=every)

    async def check_open(self, older_than: float = 0.0) -> None:
        now = time.monotonic()
        due = [
            eid
            for eid, (_, t) in self.accepted.items()
            if eid not in self.ended and now - t >= older_than
        ]
        if due:
            for eid, status in (await asyncio.to_thread(store_statuses, self.db, due)).items():
                self._ended(eid, status)


def _read_only(db: Path) -> sqlite3.Connection:
    # read-only and in another process, as bench/whole_system.py counts its runs: following
    # hundreds of runs by GETs would add reads (of documents up to a few MB) to the load measured
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)


def store_statuses(db: Path, ids: list[str]) -> dict[str, str]:
    """The stored status of each of these runs that the store has."""
    found: dict[str, str] = {}
    conn = _read_only(db)
    try:
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT id, status FROM executions WHERE id IN ({marks})"
            found.update(conn.execute(query, chunk).fetchall())
    finally:
        conn.close()
    return found


def store_open(db: Path) -> list[tuple[str, str, str]]:
    """Runs the store still has queued or running, sub-workflow runs included."""
    conn = _read_only(db)
    try:
        query = (
            "SELECT id, workflow_id, status FROM executions WHERE status IN ('queued', 'running')"
        )
        return [(str(a), str(b), str(c)) for a, b, c in conn.execute(query).fetchall()]
    finally:
        conn.close()


# -- the report ---------------------------------------------------------------------------------

WINDOW_KEYS = [
    "actions",
    "skipped",
    "accepted",
    "ended succeeded",
    "ended partial",
    "ended failed",
    "ended cancelled",
    "ended timed_out",
    "sse opened",
    "grpc watchers opened",
    "reads",
]


def window_table(
    samples: list[Sample], names: list[str], since: float, until: float, load: Load
) -> str:
    lines = [f"-- {since:5.1f} to {until:5.1f} min" + "-" * 60]
    lines.append(
        f"   {'process':<14}{'RSS last':>9}{'min':>8}{'median':>8}{'max':>8}{'fds':>6}{'thr':>5}"
    )
    for name in names:
        own = [s for s in samples if s.name == name and since <= s.minute <= until]
        if not own:
            continue
        rss = [s.rss_mb for s in own]
        last = own[-1]
        lines.append(
            f"   {name:<14}{last.rss_mb:9.1f}{min(rss):8.1f}{statistics.median(rss):8.1f}"
            f"{max(rss):8.1f}{last.fds:6d}{last.threads:5d}"
        )
    shown = {k: load.counts[k] for k in WINDOW_KEYS if load.counts[k]}
    open_runs = sum(1 for eid in load.accepted if eid not in load.ended)
    lines.append(
        "   so far: "
        + ", ".join(f"{k} {v}" for k, v in shown.items())
        + f"; open runs {open_runs}; actions in flight {len(load.tasks)}"
    )
    return "\n".join(lines)


def final_table(samples: list[Sample], names: list[str], minutes: float) -> str:
    lines = [
        f"   {'process':<14}{'start':>8}{'peak':>8}{'HWM':>8}{'last':>8}{'after drain':>13}"
        f"{'slope 2nd half':>16}{'fds first/last':>16}{'threads':>10}"
    ]
    tenth_lines = [f"   {'process':<14}" + "".join(f"{f'{i}/10':>7}" for i in range(1, 11))]
    for name in names:
        own = [s for s in samples if s.name == name]
        during = [s for s in own if 0 <= s.minute <= minutes]
        if not during:
            continue
        points = [(s.minute, s.rss_mb) for s in during]
        half = slope([(x, y) for x, y in points if x >= minutes / 2])
        lines.append(
            f"   {name:<14}{during[0].rss_mb:8.1f}{max(y for _, y in points):8.1f}"
            f"{during[-1].hwm_mb:8.1f}{during[-1].rss_mb:8.1f}{own[-1].rss_mb:13.1f}"
            f"{half:+12.2f} MB/min"
            f"{f'{during[0].fds}/{during[-1].fds}':>16}"
            f"{f'{during[0].threads}/{during[-1].threads}':>10}"
        )
        cells = tenths(points, minutes)
        tenth_lines.append(
            f"   {name:<14}" + "".join(f"{c:7.1f}" if c is not None else f"{'-':>7}" for c in cells)
        )
    return "\n".join(
        [
            *lines,
            "   RSS in MB (peak: of the samples; HWM: the kernel's peak, VmHWM);"
            " median RSS of each tenth of the load:",
            *tenth_lines,
        ]
    )


# -- the run ------------------------------------------------------------------------------------


async def soak(args: argparse.Namespace, tmp: Path, procs: list[subprocess.Popen[bytes]]) -> int:
    running = start_system(tmp, procs, orchestrator_env={"EXECUTION_RETENTION": args.retention})
    named = running.named
    names = list(named)
    url = running.url
    grpc_target = running.grpc_target

    samples: list[Sample] = []
    t0 = time.monotonic()  # reset when the load starts
    dead: list[str] = []

    def take_sample() -> None:
        minute = (time.monotonic() - t0) / 60
        for name, p in named.items():
            try:
                if p.poll() is not None:
                    raise ProcessLookupError
                rss, hwm, fds, threads = read_proc(p.pid)
            except (OSError, ProcessLookupError):
                dead.append(f"{name} (pid {p.pid}) exited with {p.poll()}")
                continue
            samples.append(Sample(minute, name, rss, hwm, fds, threads))

    async def sample_forever() -> None:
        while not dead:
            take_sample()
            await asyncio.sleep(args.every)

    db = tmp / "state.db"
    timeout = aiohttp.ClientTimeout(total=120)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        grpc.aio.insecure_channel(grpc_target) as channel,
    ):
        for _ in range(600):
            async with http.get(f"{url}/api/v1/engines") as resp:
                ready = [e for e in (await resp.json())["engines"] if e["state"] == "ready"]
            if len(ready) == 2:
                break
            await asyncio.sleep(0.1)
        for spec in WORKFLOWS:
            async with http.post(f"{url}/api/v1/workflows", json=spec) as resp:
                if resp.status not in (200, 201):
                    raise RuntimeError(f"registering {spec['id']}: {await resp.text()}")
        stub = pbg.OrchestratorStub(channel)
        load = Load(http, url, stub, random.Random(args.seed), db)
        print(
            f"orchestrator + 2 engines on loopback ({os.cpu_count()} cores,"
            f" Python {sys.version.split()[0]}); pids "
            + ", ".join(f"{n} {p.pid}" for n, p in named.items())
        )
        print(
            f"{args.minutes:g} min of load at {args.rate:g} actions/s (seed {args.seed}),"
            f" samples every {args.every:g} s, EXECUTION_RETENTION={args.retention}",
            flush=True,
        )
        t0 = time.monotonic()
        sampling = asyncio.create_task(sample_forever())
        following = asyncio.create_task(load.follow())
        driving = asyncio.create_task(load.drive(args.rate, args.minutes * 60))
        try:
            shown = 0.0
            while not driving.done() and not dead:
                await asyncio.wait([driving, sampling], timeout=1.0)
                now = (time.monotonic() - t0) / 60
                # a short remainder goes into the last window rather than one of its own
                if now - shown >= args.report and args.minutes - now > args.report / 4:
                    print(window_table(samples, names, shown, now, load), flush=True)
                    shown = now
            if dead:
                print("STOPPED, a service died: " + "; ".join(dead))
                for name in names:
                    print(f"-- the end of {name}'s log:")
                    text = (tmp / f"{name}.log").read_text(errors="replace")
                    print("\n".join(text.splitlines()[-15:]))
                return 1
            driving.result()
            take_sample()  # the load's last instant
            load_end = (time.monotonic() - t0) / 60
            print(window_table(samples, names, shown, load_end, load), flush=True)

            # drain: the actions still going, then every accepted run to its end
            drain_until = time.monotonic() + args.drain
            sampling.cancel()
            if load.tasks:
                await asyncio.wait(list(load.tasks), timeout=args.drain)
            while time.monotonic() < drain_until and len(load.ended) < len(load.accepted):
                await load.check_open()
                await asyncio.sleep(2.0)
            drained = (time.monotonic() - t0) / 60 - load_end
            take_sample()  # for the "after drain" column
            stuck = await asyncio.to_thread(store_open, db)
            final = await asyncio.to_thread(store_statuses, db, list(load.accepted))
        finally:
            for task in [driving, sampling, following, *load.tasks]:
                task.cancel()
            await asyncio.gather(driving, sampling, following, *load.tasks, return_exceptions=True)

    print(f"== after {load_end:.1f} min of load and {drained * 60:.0f} s of drain")
    print(final_table(samples, names, load_end))
    c = load.counts
    cancels = sum(v for k, v in c.items() if k.startswith("cancel "))
    print(
        f"   actions {c['actions']} ({c['skipped']} skipped at {MAX_IN_FLIGHT} in flight):"
        f" triggers {c['triggers']} ({c['key reused 422']} refused as a reused"
        f" Idempotency-Key), cancels {cancels}, reads {c['reads']},"
        f" SSE streams {c['sse opened']} ({c['sse events']} events),"
        f" gRPC watchers {c['grpc watchers opened']} ({c['grpc events']} events)"
    )
    ended = {eid: st for eid, st in final.items() if st in TERMINAL}
    # a run seen to end and deleted by the retention sweep since is ended, not lost: runs of a
    # soak longer than --retention are gone from the store by the end
    swept = {eid: st for eid, st in load.ended.items() if eid not in final}
    ended.update(swept)
    by_status = collections.Counter(ended.values())
    by_workflow = collections.Counter(wf for wf, _ in load.accepted.values())
    print(
        f"   runs accepted {len(load.accepted)}, ended {len(ended)}"
        + (f" ({len(swept)} seen to end, then deleted by retention)" if swept else "")
        + ": "
        + ", ".join(f"{k} {v}" for k, v in sorted(by_status.items()))
    )
    print(
        "   accepted by workflow: " + ", ".join(f"{k} {v}" for k, v in sorted(by_workflow.items()))
    )
    odd = {
        k: v
        for k, v in c.items()
        if k.startswith(("error ", "trigger ", "read ", "sse ", "grpc watch ", "cancel "))
        and k not in ("sse opened", "sse events", "cancel 200")
    }
    if odd:
        print("   unexpected answers: " + ", ".join(f"{k} {v}" for k, v in sorted(odd.items())))
    for line in load.errors:
        print(f"     {line}")
    unended = [eid for eid in load.accepted if eid not in ended]
    if unended:
        print(f"NOT ENDED: {len(unended)} accepted run(s):")
        for eid in unended:
            print(f"   {eid} ({load.accepted[eid][0]}): {final.get(eid, 'not in the store')}")
    if stuck:
        print(f"STILL OPEN IN THE STORE: {len(stuck)} run(s):")
        for eid, wf, status in stuck:
            print(f"   {eid} ({wf}): {status}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["minute", "process", "rss_mb", "hwm_mb", "fds", "threads"])
            for s in samples:
                row = [f"{s.minute:.3f}", s.name, f"{s.rss_mb:.1f}", f"{s.hwm_mb:.1f}"]
                out.writerow([*row, s.fds, s.threads])
    return 1 if unended or stuck else 0


async def main_async(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="dagengine-soak-"))
    procs: list[subprocess.Popen[bytes]] = []
    main_task = asyncio.current_task()
    assert main_task is not None
    # SIGTERM as Ctrl-C: cancel the run, so the cleanup below happens either way
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    try:
        return await soak(args, tmp, procs)
    finally:
        stop(procs)
        if args.keep:
            print(f"kept {tmp} (service logs, state.db)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of load")
    parser.add_argument("--rate", type=float, default=1.0, help="actions a second, on average")
    parser.add_argument("--every", type=float, default=15.0, help="seconds between samples")
    parser.add_argument("--report", type=float, help="minutes between tables (2, or 5 past 20)")
    parser.add_argument("--drain", type=float, default=180.0, help="seconds for runs to end")
    parser.add_argument("--retention", default="20m", help="the orchestrator's retention")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--csv", help="write every sample to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    if args.report is None:
        args.report = 2.0 if args.minutes <= 20 else 5.0
    try:
        code = asyncio.run(main_async(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: services stopped", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
