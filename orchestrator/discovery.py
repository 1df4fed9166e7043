"""Finding engines: one interface, several sources.

A discovery source runs forever and reports the full set of engine addresses (``host:port``)
whenever it may have changed; the fleet diffs the sets. A source that knows more about an engine
than its address (Kubernetes pod annotations) may pass hints along. Static lists and DNS live
here; Kubernetes watching has its own module, behind the same interface.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EngineHint:
    """What a discovery source knows of an engine besides its address."""

    pod: str | None = None
    capacity: int | None = None
    """At most this many runs at once are routed to the engine, whatever it reports itself."""
    engine_id: str | None = None
    """The engine's name until its GetInfo answers."""


class AddressSink(Protocol):
    def __call__(
        self, addresses: set[str], /, hints: Mapping[str, EngineHint] | None = None
    ) -> None: ...


class Discovery(Protocol):
    async def run(self, report: AddressSink) -> None:
        """Report address sets until cancelled."""

    def trouble(self) -> str | None:
        """What keeps the source from knowing the engines now (``/readyz`` shows it), or None."""


class StaticDiscovery:
    """``ENGINE_ADDRESSES``: the list is the fleet."""

    def __init__(self, addresses: tuple[str, ...]) -> None:
        self.addresses = set(addresses)

    async def run(self, report: AddressSink) -> None:
        report(set(self.addresses))
        await asyncio.Event().wait()

    def trouble(self) -> str | None:
        return None


class DnsDiscovery:
    """A headless Service name resolves to one A/AAAA record per ready engine pod."""

    def __init__(self, name: str, port: int, interval: float) -> None:
        self.name = name
        self.port = port
        self.interval = max(interval, 1.0)
        self._failing: str | None = None

    def trouble(self) -> str | None:
        return self._failing

    async def resolve(self) -> set[str]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.name, self.port, type=socket.SOCK_STREAM)
        out = set()
        for family, _, _, _, sockaddr in infos:
            host = str(sockaddr[0])
            out.add(f"[{host}]:{self.port}" if family == socket.AF_INET6 else f"{host}:{self.port}")
        return out

    async def run(self, report: AddressSink) -> None:
        while True:
            try:
                addresses = await self.resolve()
            except OSError as exc:
                # report once per outage; the last known engines stay in service meanwhile
                if not self._failing:
                    log.warning("cannot resolve engines at %s: %s", self.name, exc)
                self._failing = f"cannot resolve engines at {self.name}: {exc}"
            else:
                if self._failing:
                    log.info("resolving engines at %s again", self.name)
                self._failing = None
                report(addresses)
            await asyncio.sleep(self.interval)
