"""Every Lua worker stuck in a call the sandbox cannot interrupt: the pool says so, and the
engine turns NOT_SERVING until one of the calls comes back, so new runs go elsewhere.

A real stuck call burns a core for as long as it lasts; here the pool's sandboxes are stand-ins
whose run blocks until the test lets it go, and the CPU time the watchdog reads for their
threads runs with the wall clock, as a stuck call's would (``test_lua_pool_cpu_grace`` has a
call that burns none).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2

from engine.api import dagengine_pb2 as pb
from engine.api import dagengine_pb2_grpc as pb_grpc
from engine.lua import LuaLimits, LuaPool, LuaTask
from engine.lua.sandbox import LuaOutcome
from engine.serving import ENGINE_SERVICE, EngineServer
from engine.settings import Settings
from orchestrator.fleet import health_check

BLOCK = "return 'blocked'"


class _Blocking:
    """Runs every task at once, except ``BLOCK``, which waits for ``released``."""

    released = threading.Event()

    def __init__(self, limits: LuaLimits, **_: object) -> None:
        self.limits = limits

    def run(self, task: LuaTask) -> LuaOutcome:
        if task.code == BLOCK:
            self.released.wait(30)
        if task.deadline is not None and time.monotonic() > task.deadline:
            # as the sandbox ends a run that came back from C past its deadline
            return LuaOutcome(False, None, "deadline exceeded", None, [], 0.0, limit="deadline")
        return LuaOutcome(True, task.code, None, None, [], 0.0)


@pytest.fixture
def blocking(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    released = threading.Event()
    monkeypatch.setattr(_Blocking, "released", released)
    monkeypatch.setattr("engine.lua.pool.LuaSandbox", _Blocking)
    monkeypatch.setattr("engine.lua.pool._thread_cpu_time", lambda clock: time.monotonic())
    yield released
    released.set()  # no thread outlives the test


def task(code: str) -> LuaTask:
    return LuaTask(code, code, "node", {}, lambda name: None, {"node_id": "node"})


async def until(condition: object, what: str, seconds: float = 10.0) -> None:
    assert callable(condition)
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_pool_is_wedged_only_when_every_worker_is_stuck_and_none_can_be_given_up(
    blocking: threading.Event,
) -> None:
    limits = LuaLimits(wall_time=0.05)
    async with LuaPool(workers=1, limits=limits, inline=False, stuck_grace=0.05) as pool:
        first = await pool.run(task(BLOCK))
        assert first.limit == "wall_time" and pool.given_up == 1
        # one given up, and its replacement is free: queued work still runs
        assert not pool.wedged
        assert (await pool.run(task("return 'free'"))).value == "return 'free'"
        second = pool.submit(task(BLOCK))
        # the replacement is past its time too, but as many as there are workers are given up
        # already, so it is kept: nothing queued behind it can run
        await until(lambda: pool.wedged, "the pool to be wedged")
        assert not second.done() and pool.given_up == 1
        blocking.set()
        assert (await second).value == BLOCK  # its call came back in time to answer
        await until(lambda: pool.given_up == 0, "the given-up thread to end")
        assert not pool.wedged


@pytest.fixture
async def engine(
    blocking: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[EngineServer]:
    defaults = LuaPool.__init__.__kwdefaults__
    assert defaults is not None
    monkeypatch.setitem(defaults, "stuck_grace", 0.05)
    monkeypatch.setattr("engine.serving._WEDGED_EVERY", 0.05, raising=False)
    server = EngineServer(
        Settings(engine_id="e0", host="127.0.0.1", port=0, lua_workers=1, lua_inline=False)
    )
    await server.start()
    yield server
    blocking.set()
    await server.stop()


SPEC = json.dumps(
    {
        "id": "stuck",
        "version": "1.0.0",
        "nodes": [
            {"id": "a", "lua": BLOCK, "timeout": "50ms"},
            # long enough to start on a's replacement: a task whose time runs out while it is
            # queued ends without taking a worker
            {"id": "b", "lua": BLOCK, "timeout": "1s"},
        ],
    }
)


async def test_an_engine_whose_workers_are_all_stuck_is_not_serving_until_one_comes_back(
    engine: EngineServer, blocking: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    async with grpc.aio.insecure_channel(engine.address) as channel:
        health = health_check(channel)
        request = health_pb2.HealthCheckRequest(service=ENGINE_SERVICE)
        status = health_pb2.HealthCheckResponse

        async def serving() -> int:
            return int((await health(request)).status)

        assert await serving() == status.SERVING
        events: list[str] = []

        async def run() -> None:
            stub = pb_grpc.EngineStub(channel)
            async for message in stub.Execute(pb.ExecuteRequest(spec=SPEC, execution_id="x1")):
                events.extend(e.type for e in message.events)

        running = asyncio.ensure_future(run())
        # node a's worker is given up; b's, on the replacement, cannot be: nothing can run
        for _ in range(500):
            if await serving() == status.NOT_SERVING:
                break
            await asyncio.sleep(0.02)
        assert await serving() == status.NOT_SERVING
        assert any("all 1 Lua workers are stuck" in r.getMessage() for r in caplog.records)
        blocking.set()
        for _ in range(500):
            if await serving() == status.SERVING:
                break
            await asyncio.sleep(0.02)
        assert await serving() == status.SERVING
        await asyncio.wait_for(running, 10)
        # both nodes failed on their time: the stuck calls do not hold the run
        assert events == [
            "execution.started",
            *["node.started"] * 2,
            *["node.failed"] * 2,
            "execution.failed",
        ], events
