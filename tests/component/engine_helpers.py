"""An engine service served on loopback, in the test's own process: for tests of its gRPC
API and of the orchestrator's link to it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from engine.serving import EngineServer
from engine.settings import Settings


@asynccontextmanager
async def serving_engine(**settings: Any) -> AsyncIterator[EngineServer]:
    """Engine ``e0`` on a free loopback port, one Lua worker, no drain; ``settings`` change
    those or add to them."""
    server = EngineServer(
        Settings(
            **{
                "engine_id": "e0",
                "host": "127.0.0.1",
                "port": 0,
                "lua_workers": 1,
                "drain_grace": 0,
                **settings,
            }
        )
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
