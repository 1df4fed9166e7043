"""The engine's keepalive, through real gRPC and a proxy that goes silent as a vanished host does.

A caller whose host vanishes sends no FIN and no RST: without pings of its own the engine would
hold the caller's runs for gRPC's default two hours, refusing them ALREADY_EXISTS meanwhile; and
the orchestrator would wait a minute for an answer to a ping of its own to a silent engine. The
intervals are shortened here; the ratio of the engine's ping policy to the orchestrator's pings
is kept, and checked."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from engine import serving
from engine.api import dagengine_pb2 as pb
from engine.api import dagengine_pb2_grpc as pb_grpc
from engine.serving import EngineServer
from orchestrator.fleet import CHANNEL_OPTIONS
from tests.component.engine_helpers import serving_engine

WAIT = 30.0
"""Seconds a test waits for what must come, before it fails rather than hang."""
SLEEPER = json.dumps({"id": "sleeper", "version": "1.0.0", "nodes": [{"id": "nap", "sleep": "1h"}]})


class SilencingProxy:
    """Forwards loopback TCP to ``port``; ``silence`` makes every open connection act as one
    to a host that vanished: nothing more passes either way, and nothing is closed."""

    def __init__(self, port: int) -> None:
        self._target = port
        self._silent = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connected, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def silence(self) -> None:
        self._silent.set()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._pumps:
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        self._writers += [writer, up_writer]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pump(source, sink))
            self._pumps.add(task)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while True:
            data = await source.read(65536)
            if self._silent.is_set():
                # read and dropped, an end included: a vanished host acknowledges nothing
                await asyncio.Event().wait()
            if not data:
                sink.close()
                return
            sink.write(data)
            await sink.drain()


@pytest.fixture
def quick_keepalive(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's keepalive scaled down a hundredfold; its ping policy tenfold, since gRPC
    sends a caller's pings a second apart at the least."""
    monkeypatch.setattr(serving, "KEEPALIVE_TIME_MS", 200)
    monkeypatch.setattr(serving, "KEEPALIVE_TIMEOUT_MS", 100)
    monkeypatch.setattr(serving, "MIN_CLIENT_PING_MS", 500)


@pytest.fixture
async def engine(quick_keepalive: None) -> AsyncIterator[EngineServer]:
    async with serving_engine() as server:
        yield server


@pytest.fixture
async def quiet_engine(
    quick_keepalive: None, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[EngineServer]:
    """An engine that sends no pings of its own within a test, so that a caller's pings are
    all that crosses an idle stream. A caller that hears from the engine puts its own ping
    off: the engine's pings 0.2 s apart left the caller none to send, and the ping policy
    untested (in production the engine pings half as often as the orchestrator)."""
    monkeypatch.setattr(serving, "KEEPALIVE_TIME_MS", 60_000)
    async with serving_engine() as server:
        yield server


@pytest.fixture
async def proxy(engine: EngineServer) -> AsyncIterator[SilencingProxy]:
    proxy = SilencingProxy(engine.port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


def caller_options(keepalive_ms: int, **more: int) -> list[tuple[str, Any]]:
    """The orchestrator's channel options, its ping interval set to ``keepalive_ms``."""
    options = dict(CHANNEL_OPTIONS)
    options["grpc.keepalive_time_ms"] = keepalive_ms
    options.update({f"grpc.http2.{name}": value for name, value in more.items()})
    return list(options.items())


async def until(
    call: grpc.aio.UnaryStreamCall[pb.ExecuteRequest, pb.ExecuteResponse], event_type: str
) -> None:
    async for message in call:
        if any(event.type == event_type for event in message.events):
            return
    pytest.fail(f"the run's stream ended before {event_type}")


async def test_the_engine_lets_go_of_a_run_whose_caller_went_silent(
    engine: EngineServer, proxy: SilencingProxy
) -> None:
    service = engine.service
    assert service is not None
    request = pb.ExecuteRequest(execution_id="run-1", spec=SLEEPER)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
        call = pb_grpc.EngineStub(channel).Execute(request)
        await asyncio.wait_for(until(call, "execution.started"), WAIT)
        proxy.silence()  # the caller's host vanished
        # before: held for gRPC's default two hours, every dispatch of it refused meanwhile
        async with asyncio.timeout(WAIT):
            while "run-1" in service._runs:
                await asyncio.sleep(0.05)
        call.cancel()
    async with grpc.aio.insecure_channel(engine.address) as channel:
        again = pb_grpc.EngineStub(channel).Execute(request)  # a new orchestrator's dispatch
        await asyncio.wait_for(until(again, "execution.started"), WAIT)
        again.cancel()


async def test_a_stream_idle_through_many_caller_pings_is_not_cut(
    quiet_engine: EngineServer,
) -> None:
    # the caller pings at twice the engine's shortest allowed gap, as the orchestrator does,
    # four times with nothing sent either way (gRPC's default policy cuts at the third, a
    # second apart: 3 s of sleep are not enough to tell); before: the stream ended
    # UNAVAILABLE, the engine's GOAWAY too_many_pings
    nap = json.dumps({"id": "napper", "version": "1.0.0", "nodes": [{"id": "nap", "sleep": "5s"}]})
    # a caller that pings on through a silent stream, not only twice between two calls
    options = caller_options(2 * serving.MIN_CLIENT_PING_MS, max_pings_without_data=0)
    async with grpc.aio.insecure_channel(quiet_engine.address, options=options) as channel:
        call = pb_grpc.EngineStub(channel).Execute(
            pb.ExecuteRequest(execution_id="nap-1", spec=nap)
        )
        await asyncio.wait_for(until(call, "execution.succeeded"), WAIT)


async def test_the_orchestrator_sees_a_silent_engine_within_seconds(
    proxy: SilencingProxy,
) -> None:
    # its pings a second apart (gRPC's shortest), their answer awaited as in production
    options = caller_options(1000)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}", options=options) as channel:
        call = pb_grpc.EngineStub(channel).Execute(
            pb.ExecuteRequest(execution_id="run-2", spec=SLEEPER)
        )
        await asyncio.wait_for(until(call, "execution.started"), WAIT)
        proxy.silence()  # the engine's host vanished
        # before: a ping's answer was awaited a minute, whatever keepalive_timeout_ms said
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(until(call, "execution.succeeded"), WAIT)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


def test_the_orchestrator_pings_no_more_often_than_engines_take() -> None:
    options = dict(CHANNEL_OPTIONS)
    assert options["grpc.keepalive_time_ms"] >= 2 * serving.MIN_CLIENT_PING_MS
    assert options["grpc.keepalive_permit_without_calls"] == 1
    # the orchestrator sees a silent engine within a minute too, as the engine sees it
    assert options["grpc.keepalive_time_ms"] + options["grpc.http2.ping_timeout_ms"] < 60_000
    assert serving.KEEPALIVE_TIME_MS + serving.KEEPALIVE_TIMEOUT_MS < 60_000


def test_an_engine_back_on_its_address_is_tried_again_within_a_health_interval() -> None:
    """gRPC waits up to 2 minutes between attempts to reach an address that failed, unless
    told, and a health check meanwhile fails at once without trying: an engine started again
    after 90 s down was seen ready 24.8 s later (median) with a 2 s check interval, 1.8 s with
    the cap (bench/engine_rejoin.py; a timed test would be a benchmark)."""
    from orchestrator.settings import Settings

    options = dict(CHANNEL_OPTIONS)
    cap = options["grpc.max_reconnect_backoff_ms"]
    assert isinstance(cap, int) and 0 < cap <= Settings().health_check_interval * 1000
