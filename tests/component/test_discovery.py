"""Engine discovery sources against the real resolver."""

from __future__ import annotations

import asyncio
import logging

import pytest

from orchestrator.discovery import DnsDiscovery, StaticDiscovery
from orchestrator.serving import kept_running


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


async def test_a_background_loop_that_fails_is_logged_and_started_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise AttributeError("'str' object has no attribute 'get'")
        if len(runs) == 2:
            return  # ended on its own: as wrong as failing
        await asyncio.Event().wait()

    with caplog.at_level(logging.WARNING, logger="orchestrator.serving"):
        task = asyncio.create_task(kept_running("engine discovery", flaky, first_delay=0.01))
        for _ in range(200):
            if len(runs) == 3:
                break
            await asyncio.sleep(0.01)
        assert not task.done()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(runs) == 3
    failed, ended = caplog.records
    assert failed.getMessage().startswith("engine discovery failed; starting it again in")
    assert failed.exc_info is not None and isinstance(failed.exc_info[1], AttributeError)
    assert ended.getMessage().startswith("engine discovery stopped on its own")


async def test_dns_discovery_trouble_names_the_name_it_cannot_resolve() -> None:
    source = DnsDiscovery("no-such-engine.invalid", 50051, interval=1.0)
    task = asyncio.create_task(source.run(lambda addresses, hints=None: None))
    for _ in range(100):
        if source.trouble() is not None:
            break
        await asyncio.sleep(0.02)
    task.cancel()
    assert (source.trouble() or "").startswith("cannot resolve engines at no-such-engine.invalid")
    assert StaticDiscovery(("a:1",)).trouble() is None
