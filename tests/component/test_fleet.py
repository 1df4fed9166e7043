"""The fleet against a real engine server in this process, fed by discovery.

The dispatcher is stood in for by what the fleet sees of it: ``in_flight`` on a link (a run
streaming from that engine) and the ``on_lost`` calls (runs cut off to resume elsewhere).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from engine.core.values import JSONObject
from engine.serving import EngineServer
from engine.settings import Settings as EngineSettings
from orchestrator.discovery_kubernetes import KubernetesDiscovery
from orchestrator.fleet import EngineLink, Fleet
from orchestrator.ring import make_balancer
from orchestrator.settings import Settings
from tests.component.discovery_helpers import fake_kube_api
from tests.fakes.kube_api import SLICES, endpoint_slice

DEADLINE = 10.0  # generous for a loaded machine; changes normally land in milliseconds


async def until(predicate: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"not within {DEADLINE}s: {what}")
        await asyncio.sleep(0.02)


class Watched:
    """A fleet with what it told the dispatcher and the event stream."""

    def __init__(self) -> None:
        self.lost: list[EngineLink] = []
        self.events: list[JSONObject] = []
        self.fleet = Fleet(
            make_balancer("consistent-hash"),
            default_capacity=10,
            # checks are run by hand here: the loop (fleet.run) is not started
            health_interval=60.0,
            publish=self.events.append,
            on_capacity=lambda: None,
            on_lost=self.lost.append,
        )

    def kinds(self) -> list[tuple[object, object]]:
        """(type, data.reason) of each event published."""
        out: list[tuple[object, object]] = []
        for event in self.events:
            data = event["data"]
            out.append((event["type"], data.get("reason") if isinstance(data, dict) else None))
        return out


@pytest.fixture
async def engine() -> AsyncIterator[EngineServer]:
    server = EngineServer(
        EngineSettings(engine_id="engine-0", host="127.0.0.1", port=0, lua_workers=1)
    )
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def watched() -> AsyncIterator[Watched]:
    out = Watched()
    yield out
    await out.fleet.close()


@asynccontextmanager
async def discovery_feeding(fleet: Fleet, settings: Settings) -> AsyncIterator[None]:
    """Kubernetes discovery feeding ``fleet`` for the block: it runs from the block's first await."""
    discovery = asyncio.create_task(KubernetesDiscovery(settings).run(fleet.update))
    try:
        yield
    finally:
        discovery.cancel()
        await asyncio.gather(discovery, return_exceptions=True)


async def ready_link(watched: Watched, address: str) -> EngineLink:
    watched.fleet.update({address})
    link = watched.fleet.links[address]
    await until(lambda: link.state == "ready", "the engine ready")
    return link


async def test_an_engine_whose_endpoint_turns_terminating_keeps_its_runs_until_done(
    engine: EngineServer, watched: Watched, tmp_path: Path
) -> None:
    def engine_slice(*, terminating: bool = False) -> JSONObject:
        eps = endpoint_slice("workflow-engines-a", [("127.0.0.1", not terminating)], engine.port)
        eps["endpoints"][0]["conditions"]["terminating"] = terminating
        return eps

    fleet = watched.fleet
    async with fake_kube_api(tmp_path) as (fake, settings):
        fake.put(SLICES, engine_slice())
        async with discovery_feeding(fleet, settings):
            await until(lambda: engine.address in fleet.links, "the engine discovered")
            link = fleet.links[engine.address]
            await until(lambda: link.state == "ready", "the engine ready")
            link.in_flight = 1  # a run streams from it

            # the pod is deleted: its endpoint turns terminating before the kubelet's SIGTERM
            fake.put(SLICES, engine_slice(terminating=True))
            await until(
                lambda: link.state != "ready" or engine.address not in fleet.links,
                "the engine out of the ring",
            )
            assert watched.lost == []  # its run goes on there: it is not cut off
            assert fleet.links.get(engine.address) is link
            assert link.state == "draining"
            assert fleet.pick("any-workflow") is None  # nothing new goes to it
            assert watched.kinds()[-1] == (
                "engine.left",
                "no longer discovered: finishing its 1 runs in flight",
            )

            # it still answers SERVING (its SIGTERM has not come): that does not make it ready
            await fleet.check(link)
            assert link.state == "draining"
            assert fleet.pick("any-workflow") is None

            # its last run ends: the next check lets it go, and nothing was lost on the way
            link.in_flight = 0
            await fleet.check(link)
            assert engine.address not in fleet.links
            assert watched.lost == []
            assert [kind for kind, _ in watched.kinds()] == ["engine.joined", "engine.left"]


async def undiscovered_link(watched: Watched, address: str, runs: int) -> EngineLink:
    """A ready engine with ``runs`` in flight that discovery stops listing: kept, draining."""
    link = await ready_link(watched, address)
    link.in_flight = runs
    watched.fleet.update(set())
    assert (watched.fleet.links.get(address), link.state) == (link, "draining")
    assert watched.lost == []
    return link


async def test_an_undiscovered_engine_that_stops_answering_loses_its_runs(
    engine: EngineServer, watched: Watched
) -> None:
    fleet = watched.fleet
    link = await undiscovered_link(watched, engine.address, runs=2)
    await engine.stop()  # the pod is gone before its runs ended (a SIGKILL, a node lost)
    await fleet.check(link)
    assert watched.lost == [link]  # the dispatcher resumes them elsewhere
    assert engine.address not in fleet.links  # nothing would list it again
    assert watched.events[-1]["type"] == "engine.unhealthy"


async def test_a_broken_stream_on_an_undiscovered_engine_drops_it(
    engine: EngineServer, watched: Watched
) -> None:
    fleet = watched.fleet
    link = await undiscovered_link(watched, engine.address, runs=1)
    # the engine's drain grace ran out: it hands the run back with UNAVAILABLE
    fleet.suspect(link, "UNAVAILABLE: engine engine-0 is shutting down")
    assert watched.lost == [link]
    assert engine.address not in fleet.links


async def test_an_engine_listed_again_is_ready_again(
    engine: EngineServer, watched: Watched
) -> None:
    fleet = watched.fleet
    link = await undiscovered_link(watched, engine.address, runs=1)  # a readiness blip
    fleet.update({engine.address})  # and passed again
    await until(lambda: link.state == "ready", "ready again")
    assert fleet.links[engine.address] is link
    assert fleet.pick("any-workflow") is link
    assert watched.lost == []

    # listed again, it is an ordinary engine: leaving with no runs drops it at once
    link.in_flight = 0
    fleet.update(set())
    assert engine.address not in fleet.links


async def test_engine_changes_are_logged_at_their_severity_with_the_reason(
    engine: EngineServer, watched: Watched, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = watched.fleet
    link = await ready_link(watched, engine.address)
    with caplog.at_level(logging.INFO, logger="orchestrator.fleet"):
        fleet.suspect(link, "UNAVAILABLE: Connection refused")
        fleet.update(set())  # unhealthy and gone: no second line
        await ready_link(watched, engine.address)
        fleet.update(set())  # ready and gone
    lines = [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.getMessage().startswith(("engine.unhealthy", "engine.left"))
    ]
    assert lines == [
        (
            logging.ERROR,
            f"engine.unhealthy engine-0 at {engine.address}: UNAVAILABLE: Connection refused",
        ),
        (logging.WARNING, f"engine.left engine-0 at {engine.address}: no longer discovered"),
    ]
    unhealthy = next(r for r in caplog.records if r.getMessage().startswith("engine.unhealthy"))
    assert unhealthy.__dict__["engine_id"] == "engine-0"


async def test_one_late_health_answer_is_not_a_lost_engine_but_two_in_a_row_are(
    engine: EngineServer, watched: Watched
) -> None:
    link = await ready_link(watched, engine.address)
    answer = link.health
    late = grpc.aio.AioRpcError(
        grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(), grpc.aio.Metadata(), "Deadline"
    )
    misses = 0

    async def slow_once(request: object, timeout: float) -> object:
        nonlocal misses
        if misses < 1:
            misses += 1
            raise late
        return await answer(request, timeout=timeout)  # type: ignore[arg-type]

    link.health = slow_once  # type: ignore[assignment]
    await watched.fleet.check(link)
    # a busy engine, not a dead one: its runs stay where they are
    assert (link.state, watched.lost, link.failures) == ("ready", [], 1)
    await watched.fleet.check(link)
    assert (link.state, link.failures, link.last_error) == ("ready", 0, None)

    async def slow_always(request: object, timeout: float) -> object:
        raise late

    link.health = slow_always  # type: ignore[assignment]
    await watched.fleet.check(link)
    assert link.state == "ready" and watched.lost == []
    await watched.fleet.check(link)
    assert link.state == "unhealthy" and watched.lost == [link]


async def test_two_engines_sharing_an_id_are_warned_of_and_the_one_left_keeps_working(
    watched: Watched, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    servers = [
        EngineServer(EngineSettings(engine_id="dup", host="127.0.0.1", port=0, lua_workers=1))
        for _ in range(2)
    ]
    fleet = watched.fleet
    try:
        async with fake_kube_api(tmp_path) as (fake, settings):
            for server in servers:
                await server.start()
                fake.put(
                    SLICES, endpoint_slice(f"e-{server.port}", [("127.0.0.1", True)], server.port)
                )
            first, second = (server.address for server in servers)
            async with discovery_feeding(fleet, settings):
                with caplog.at_level(logging.WARNING, logger="orchestrator.fleet"):
                    await until(lambda: len(fleet.ready()) == 2, "both engines ready")
                shared = [r.getMessage() for r in caplog.records if "ENGINE_ID" in r.getMessage()]
                assert len(shared) == 1, shared
                assert "engine id dup" in shared[0]
                assert first in shared[0] and second in shared[0]

                # one of them goes: its id must stay routable while the other still serves under it
                fake.delete(SLICES, f"e-{servers[0].port}")
                await until(lambda: first not in fleet.links, "the first engine gone")
                assert fleet.pick("any-workflow") is fleet.links[second]
    finally:
        for server in servers:
            await server.stop()


async def test_no_run_is_routed_before_every_engine_first_reported_has_answered_once(
    engine: EngineServer,
) -> None:
    # a port that takes connections and never answers: its health check runs to its timeout
    held: list[asyncio.StreamWriter] = []
    silent = await asyncio.start_server(lambda r, w: held.append(w), "127.0.0.1", 0)
    silent_address = f"127.0.0.1:{silent.sockets[0].getsockname()[1]}"
    pumped: list[bool] = []
    fleet = Fleet(
        make_balancer("consistent-hash"),
        default_capacity=10,
        health_interval=60.0,
        publish=lambda event: None,
        on_capacity=lambda: pumped.append(True),
        on_lost=lambda link: None,
        check_timeout=1.0,
    )
    try:
        assert fleet.pick("wf") is None  # nothing reported yet
        fleet.update({engine.address, silent_address})
        await until(lambda: fleet.links[engine.address].state == "ready", "the engine ready")
        # before: the first engine to answer took every run the store gave back
        assert fleet.pick("wf", overflow=True) is None
        await until(lambda: fleet.links[silent_address].state == "unhealthy", "the silent one")
        assert fleet.pick("wf", overflow=True) is fleet.links[engine.address]
        assert pumped  # the queue was told when the first round ended
    finally:
        await fleet.close()
        for writer in held:
            writer.close()
        silent.close()
        await silent.wait_closed()


async def test_an_engine_restarted_at_its_address_as_another_is_learned_again(
    watched: Watched,
) -> None:
    first = EngineServer(
        EngineSettings(engine_id="old", host="127.0.0.1", port=0, lua_workers=1, capacity=2)
    )
    await first.start()
    port = first.port
    link = await ready_link(watched, first.address)
    assert (link.engine_id, link.capacity) == ("old", 2)
    await first.stop()
    second = EngineServer(
        EngineSettings(engine_id="new", host="127.0.0.1", port=port, lua_workers=1, capacity=5)
    )
    await second.start()
    try:
        await until(lambda: _answers(link), "the new engine answering")
        await watched.fleet.check(link)
        await watched.fleet.check(link)
        # before: still "old" with capacity 2, while the engine there was "new" with 5
        assert (link.engine_id, link.capacity, link.state) == ("new", 5, "ready")
        assert ("engine.left", "now engine new") in watched.kinds()
        assert watched.fleet.pick("wf") is link
    finally:
        await second.stop()


def _answers(link: EngineLink) -> bool:
    return link.channel.get_state(try_to_connect=True) == grpc.ChannelConnectivity.READY
