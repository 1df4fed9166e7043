"""Engine discovery sources against the real resolver."""

from __future__ import annotations

import asyncio

from orchestrator.discovery import DnsDiscovery, StaticDiscovery


async def test_dns_discovery_resolves_a_name_to_engine_addresses() -> None:
    seen: list[set[str]] = []
    source = DnsDiscovery("localhost", 50123, interval=1.0)
    task = asyncio.create_task(source.run(seen.append))
    for _ in range(100):
        if seen:
            break
        await asyncio.sleep(0.02)
    task.cancel()
    assert seen and "127.0.0.1:50123" in seen[0]
    assert all(a.endswith(":50123") for a in seen[0])


async def test_dns_discovery_keeps_quiet_and_reports_nothing_for_an_unknown_name() -> None:
    seen: list[set[str]] = []
    source = DnsDiscovery("no-such-engine.invalid", 50051, interval=1.0)
    task = asyncio.create_task(source.run(seen.append))
    await asyncio.sleep(0.3)
    task.cancel()
    # the last known engines stay: a failing lookup reports no (empty) set
    assert seen == []


async def test_static_discovery_reports_its_list() -> None:
    seen: list[set[str]] = []
    task = asyncio.create_task(StaticDiscovery(("a:1", "b:2")).run(seen.append))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    task.cancel()
    assert seen == [{"a:1", "b:2"}]
