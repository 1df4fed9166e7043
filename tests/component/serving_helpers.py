"""The orchestrator's facade over a real store, served on loopback over HTTP and gRPC, without
engines: for tests of the APIs themselves."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from aiohttp.typedefs import Middleware

from engine.api import dagengine_pb2_grpc as pb_grpc
from engine.core.values import JSONObject
from orchestrator.lua_checking import LuaSyntaxChecker
from orchestrator.metrics import Metrics
from orchestrator.monitoring import Hub
from orchestrator.orchestrating import Orchestrator
from orchestrator.serving_grpc import OrchestratorService
from orchestrator.serving_http import HttpApi
from orchestrator.store import Store
from orchestrator.triggering import Triggers
from orchestrator.versions import Registry


def facade(
    store: Store, checker: LuaSyntaxChecker, registry: Registry | None = None
) -> Orchestrator:
    """An orchestrator over ``store`` with no fleet: runs stay queued."""
    return Orchestrator(
        store=store,
        registry=registry or Registry(),
        fleet=None,  # type: ignore[arg-type]
        hub=Hub(),
        metrics=Metrics(list, lambda: 0),
        lua_checker=checker,
        queue_limit=1000,
    )


@asynccontextmanager
async def serving(
    orch: Orchestrator,
    triggers: Triggers | None = None,
    middlewares: Sequence[Middleware] = (),
) -> AsyncIterator[tuple[str, str]]:
    """``orch`` on free loopback ports: yields the HTTP base URL and the gRPC target. Hub
    subscriptions end first as it stops, as the orchestrator ends them."""
    app = HttpApi(orch, token=None, max_body=1 << 20, triggers=triggers).app()
    app.middlewares.extend(middlewares)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server = grpc.aio.server()
    pb_grpc.add_OrchestratorServicer_to_server(OrchestratorService(orch, triggers=triggers), server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
    finally:
        orch.hub.close_all()  # live streams end now, as when the orchestrator stops
        await server.stop(0)
        await runner.cleanup()


@dataclass(frozen=True, slots=True)
class Facade:
    """An orchestrator facade served: its HTTP base URL, a gRPC stub on it, and its parts."""

    url: str
    stub: Any  # grpc.aio's stubs are typed as sync ones
    orch: Orchestrator
    store: Store


@asynccontextmanager
async def served_facade(
    folder: Path,
    *,
    specs: Sequence[JSONObject] = (),
    dispatcher: object | None = None,
    with_triggers: bool = True,
) -> AsyncIterator[Facade]:
    """A facade over a store in ``folder`` with ``specs`` registered (and ``dispatcher`` to take
    its runs, and its triggers started, not their loop), served until the block ends."""
    store = await Store.open(str(folder / "state.db"))
    checker = LuaSyntaxChecker()
    orch = facade(store, checker)
    if dispatcher is not None:
        orch.attach(dispatcher)  # type: ignore[arg-type]
    triggers = Triggers(orch) if with_triggers else None
    orch.triggers = triggers
    try:
        if triggers is not None:
            await triggers.start(run_loop=False)
        for spec in specs:
            await orch.register(json.dumps(spec), yaml=False, force=False)
        if triggers is not None:
            await triggers.settle()
        async with (
            serving(orch, triggers) as (url, target),
            grpc.aio.insecure_channel(target) as channel,
        ):
            yield Facade(url, pb_grpc.OrchestratorStub(channel), orch, store)
    finally:
        if triggers is not None:
            await triggers.stop()
        await store.close()
        checker.close()


def hold_child_writes(store: Store, gate: asyncio.Event) -> list[str]:
    """Hold the store's writes of sub-workflow runs at ``gate``: each names itself ("child")
    in the list returned as it stops there."""
    real = store.create_execution
    held: list[str] = []

    async def child_held(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("parent_execution_id"):
            held.append("child")
            await gate.wait()
        return await real(*args, **kwargs)

    store.create_execution = child_held  # type: ignore[method-assign]
    return held


async def held_until(held: list[str], name: str) -> None:
    """Wait until ``name`` is held: a store call paused mid-flight."""
    for _ in range(500):
        if name in held:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{name} was never reached")
