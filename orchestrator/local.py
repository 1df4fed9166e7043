"""Engines in this process: ``TRANSPORT_TYPE=local`` and the embedding API ``LocalCluster``.

The engines are the real engine servers, listening on loopback ports of their own, and the
orchestrator reaches them over gRPC exactly as it reaches engines in a cluster: one code path,
whether the engines are pods or threads of the same process. They take a token as any engine
does: ENGINE_TOKEN, or one made at random for them when none is set (as ``dagctl up`` does),
since any local user can reach a loopback port. This module is the one place the
orchestrator package loads the engine runtime (an import-linter exception names it), and only
when local engines are asked for.

::

    async with LocalCluster(engines=2) as cluster:
        await cluster.register(open("examples/diamond.yaml").read())  # or Workflow(...).build()
        run = await cluster.execute("diamond", inputs={"n": 4}, wait=30)
        async for event in cluster.watch(execution_id=run["id"]): ...
"""

from __future__ import annotations

import asyncio
import json
import secrets
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from types import TracebackType

from engine.core.errors import SpecError, SpecProblem
from engine.core.spec import WorkflowSpec, dotted, non_json_values
from engine.core.states import EXECUTION_TERMINAL
from engine.core.values import JSON, JSONObject
from engine.serving import EngineServer
from engine.settings import Settings as EngineSettings
from orchestrator.discovery import StaticDiscovery
from orchestrator.monitoring import EventFilter
from orchestrator.orchestrating import Orchestrator
from orchestrator.settings import Settings


class LocalEngines:
    """``settings.local_engines`` engine servers on 127.0.0.1, each on a free port.

    They listen on loopback ports any local user can reach, so they always take a token:
    ENGINE_TOKEN when one is set, else a random one made here, as ``dagctl up`` makes one.
    ``settings`` is the orchestrator's settings with that token: the orchestrator that talks
    to these engines must be given them (``running_orchestrator(engines.settings, ...)``).
    """

    def __init__(self, settings: Settings) -> None:
        settings = guarded(settings)
        self.settings = settings
        shared = settings.local_engine or EngineSettings(
            engine_id="local",
            capacity=settings.engine_capacity,
            drain_grace=5.0,
            lua_workers=1,
        )
        self._servers = [
            EngineServer(
                replace(
                    shared,
                    engine_id=f"local-{i}",
                    host="127.0.0.1",
                    port=0,
                    metrics_port=None,
                    engine_token=settings.engine_token,
                )
            )
            for i in range(settings.local_engines)
        ]

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(server.address for server in self._servers)

    async def start(self) -> None:
        for server in self._servers:
            await server.start()

    async def stop(self) -> None:
        await asyncio.gather(*(server.stop() for server in self._servers))


class LocalCluster:
    """An orchestrator and its engines in this process, with the store in a SQLite file."""

    def __init__(
        self,
        engines: int = 2,
        *,
        state_db: str | Path | None = None,
        settings: Settings | None = None,
    ) -> None:
        base = settings or Settings()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if state_db is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="dagengine-")
            state_db = Path(self._tmp.name) / "state.db"
        self.settings = replace(
            base,
            transport="local",
            local_engines=engines,
            state_db=str(state_db),
            health_check_interval=min(base.health_check_interval, 1.0),
        )
        # a token of this cluster's own unless the caller gave one: its engines and its
        # orchestrator's client share it, and nothing else on this machine has it
        self.settings = guarded(self.settings)
        self._stack = AsyncExitStack()
        self._orchestrator: Orchestrator | None = None

    @property
    def orchestrator(self) -> Orchestrator:
        if self._orchestrator is None:
            raise RuntimeError("the LocalCluster is not started: use 'async with LocalCluster()'")
        return self._orchestrator

    async def __aenter__(self) -> LocalCluster:
        from orchestrator.serving import running_orchestrator  # serving imports this module

        engines = LocalEngines(self.settings)
        await engines.start()
        self._stack.push_async_callback(engines.stop)
        self._orchestrator = await self._stack.enter_async_context(
            running_orchestrator(engines.settings, StaticDiscovery(engines.addresses))
        )
        while len(self._orchestrator.fleet.ready()) < self.settings.local_engines:
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._orchestrator = None
        await self._stack.aclose()
        if self._tmp is not None:
            self._tmp.cleanup()

    async def register(
        self, spec: str | Mapping[str, JSON] | WorkflowSpec, *, force: bool = False
    ) -> JSONObject:
        """Register a spec (YAML or JSON text, a mapping, or a ``WorkflowSpec`` such as
        ``Workflow(...).build()`` makes); returns the workflow as stored.

        A mapping is sent as JSON, and what JSON cannot hold in it (NaN, a set, text UTF-8
        cannot encode) is refused first, naming where: written as YAML it would come back
        as something else (NaN as the string 'NaN'). A ``WorkflowSpec`` is sent as its
        ``document``, and checked again as any registration is."""
        if isinstance(spec, WorkflowSpec):
            spec = spec.document
        if isinstance(spec, str):
            workflow, _ = await self.orchestrator.register(spec, yaml=True, force=force)
            return workflow
        problems = [SpecProblem(dotted(at), why) for at, why in non_json_values(spec, keys=True)]
        if problems:
            raise SpecError(problems)
        text = json.dumps(dict(spec), allow_nan=False)
        workflow, _ = await self.orchestrator.register(text, yaml=False, force=force)
        return workflow

    async def execute(
        self,
        workflow_id: str,
        *,
        inputs: JSON = None,
        version: str | None = None,
        wait: float | None = None,
        idempotency_key: str | None = None,
    ) -> JSONObject:
        """Start a run; with ``wait`` (seconds), the run once it ended or the time ran out."""
        doc, _ = await self.orchestrator.execute(
            workflow_id,
            inputs=inputs if inputs is not None else {},
            version=version,
            idempotency_key=idempotency_key,
            wait=wait,
        )
        return doc

    async def get_execution(self, execution_id: str) -> JSONObject:
        return await self.orchestrator.get_execution(execution_id)

    async def watch(
        self, *, workflow_id: str | None = None, execution_id: str | None = None
    ) -> AsyncIterator[JSONObject]:
        """Events as they happen; for one execution, its stored events first, ending with it."""
        flt = EventFilter(workflow_id=workflow_id, execution_id=execution_id)
        with self.orchestrator.hub.subscribe(flt) as sub:
            last = 0
            if execution_id is not None:
                for event in await self.orchestrator.execution_events(execution_id):
                    seq = event.get("seq")
                    last = seq if isinstance(seq, int) else last
                    yield event
                    if _ends(event):
                        return
            async for event in sub:
                seq = event.get("seq")
                if execution_id is not None and isinstance(seq, int):
                    if seq <= last:
                        continue
                    last = seq
                yield event
                if execution_id is not None and _ends(event):
                    return


def guarded(settings: Settings) -> Settings:
    """``settings`` with an ENGINE_TOKEN: its own, or a new random one when none is set.

    Engines in this process listen on loopback ports, where any local user could call their
    gRPC API (and read a run's inputs) if they took calls without a token."""
    if settings.engine_token is not None:
        return settings
    return replace(settings, engine_token=secrets.token_urlsafe(32))


def _ends(event: JSONObject) -> bool:
    kind = str(event.get("type", ""))
    return kind.startswith("execution.") and kind.partition(".")[2] in EXECUTION_TERMINAL
