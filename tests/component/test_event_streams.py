"""One execution's live stream over the real hub, served by the real gRPC and HTTP adapters.

The facade is a small fake that keeps a run's events as the store does (stored before they are
published), so a test can make the run race ahead of a reader: the hub's bounded buffer really
overflows and drops events, as it does for a slow client of a busy orchestrator.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from grpc._cython import cygrpc

from engine.api import dagengine_pb2 as pb
from engine.api import dagengine_pb2_grpc as pb_grpc
from engine.core.values import JSONObject
from orchestrator.monitoring import Hub
from orchestrator.serving_grpc import OrchestratorService
from orchestrator.serving_http import HttpApi
from orchestrator.store import EventPage, ExecutionHead
from tests.component.monitor_events import monitor_event

RUN = "run-1"
BURST = 1500
PAGE = 100
"""Events the run makes while the stream replays its first ones: more than a subscriber's
buffer (``Hub.subscribe``'s limit of 1000), so the hub drops the tail, final event included."""


def event(seq: int, kind: str) -> JSONObject:
    return monitor_event(RUN, seq, kind)


class RacingRun:
    """The facade over one run that gets far ahead while its stored timeline is being read:
    its next ``BURST`` events, the final one last, are stored and published before the first
    read returns what was stored when it began."""

    def __init__(self) -> None:
        self.hub = Hub()
        self.stored = [event(1, "execution.queued"), event(2, "execution.started")]
        self.reads: list[int] = []

    async def get_execution(self, execution_id: str) -> JSONObject:
        assert execution_id == RUN
        ended = self.stored[-1]["type"] == "execution.succeeded"
        return {"id": RUN, "status": "succeeded" if ended else "running"}

    async def execution_head(self, execution_id: str, *, weigh: bool = False) -> ExecutionHead:
        assert execution_id == RUN
        ended = self.stored[-1]["type"] == "execution.succeeded"
        last = int(self.stored[-1]["seq"])  # type: ignore[call-overload]
        status = "succeeded" if ended else "running"
        return ExecutionHead(RUN, "wf", "1.0.0", status, last, None)

    async def execution_event_page(
        self, execution_id: str, *, after_seq: int, limit: int
    ) -> EventPage:
        assert execution_id == RUN
        self.reads.append(after_seq)
        found = [e for e in self.stored if int(e["seq"]) > after_seq]  # type: ignore[call-overload]
        if len(self.reads) == 1:
            burst = [event(3 + i, "node.succeeded") for i in range(BURST - 1)]
            burst.append(event(2 + BURST, "execution.succeeded"))
            for e in burst:
                self.stored.append(e)  # stored first, then published, as the dispatcher does
                self.hub.publish(e)
        # pages smaller than the server's, so that reading back the gap takes several
        page = found[:PAGE]
        more = len(found) > PAGE
        return EventPage(page, int(page[-1]["seq"]) if more else None)  # type: ignore[call-overload]


@pytest.fixture
async def grpc_stub(run: RacingRun) -> AsyncIterator[pb_grpc.OrchestratorStub]:
    server = grpc.aio.server()
    pb_grpc.add_OrchestratorServicer_to_server(OrchestratorService(run), server)  # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield pb_grpc.OrchestratorStub(channel)
    finally:
        await server.stop(0)


@pytest.fixture
async def http_url(run: RacingRun) -> AsyncIterator[str]:
    app = HttpApi(run, token=None, max_body=1 << 20).app()  # type: ignore[arg-type]
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
def run() -> RacingRun:
    return RacingRun()


def _whole_run(seqs: list[int]) -> None:
    assert seqs == list(range(1, BURST + 3)), (len(seqs), seqs[:3], seqs[-3:])


def _gap_read_back(run: RacingRun) -> None:
    """The events the hub buffered came live; those it dropped (all after them: the buffer
    holds 1000) were read back from the store, page by page, and nothing else was."""
    buffered_to = 2 + 1000
    assert run.reads == [0, *range(buffered_to, BURST + 2, PAGE)], run.reads


async def test_a_lagging_grpc_watch_of_one_run_fills_the_gap_and_ends_with_the_final_event(
    run: RacingRun, grpc_stub: pb_grpc.OrchestratorStub
) -> None:
    got: list[Any] = []

    async def watch() -> None:
        async for e in grpc_stub.WatchEvents(pb.WatchEventsRequest(execution_id=RUN)):
            got.append(e)

    await asyncio.wait_for(watch(), 10)  # before: the final event was dropped, and it hung
    assert got[-1].type == "execution.succeeded"
    assert "subscriber.lagged" not in {e.type for e in got}  # nothing was missed after all
    _whole_run([e.seq for e in got])
    _gap_read_back(run)


async def test_a_lagging_sse_stream_of_one_run_fills_the_gap_and_ends_with_the_final_event(
    run: RacingRun, http_url: str
) -> None:
    seqs: list[int] = []
    kinds: list[str] = []
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{http_url}/api/v1/events", params={"execution": RUN}) as resp,
    ):
        assert resp.status == 200

        async def read() -> None:
            async for line in resp.content:
                text = line.decode().strip()
                if text.startswith("id: "):
                    seqs.append(int(text[4:]))
                elif text.startswith("event: "):
                    kinds.append(text[7:])

        await asyncio.wait_for(read(), 10)  # the server ends the stream on the final event
    assert kinds[-1] == "execution.succeeded"
    assert "subscriber.lagged" not in kinds
    _whole_run(seqs)
    _gap_read_back(run)


async def test_a_stored_timeline_longer_than_a_page_is_replayed_page_by_page(
    run: RacingRun, grpc_stub: pb_grpc.OrchestratorStub, http_url: str
) -> None:
    # an ended run of 351 events: replayed whole, in order, never read whole at once
    run.stored = [event(seq, "node.succeeded") for seq in range(1, 351)]
    run.stored.append(event(351, "execution.succeeded"))
    run.reads = [0]  # no burst: the run has ended
    watched = [e.seq async for e in grpc_stub.WatchEvents(pb.WatchEventsRequest(execution_id=RUN))]
    assert watched == list(range(1, 352))
    assert len(run.reads) - 1 == 4  # pages of 100
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{http_url}/api/v1/events", params={"execution": RUN}) as resp,
    ):
        ids = [int(line[4:]) async for line in resp.content if line.startswith(b"id: ")]
    assert ids == list(range(1, 352))


def test_a_client_gone_mid_stream_is_one_warning_line_without_a_traceback(
    run: RacingRun, caplog: pytest.LogCaptureFixture
) -> None:
    """A client killed while its stream is being written can make the write fail before
    grpcio sees the call close; grpcio then logs this record (its aio server's
    ``_handle_exceptions``). Killing a client at that instant is a race no test wins every
    time, so the record is given to grpcio's logger as grpcio makes it."""
    OrchestratorService(run)  # type: ignore[arg-type]
    method = "/dagengine.v1.Orchestrator/WatchEvents"
    grpc_log = logging.getLogger("grpc._cython.cygrpc")
    try:
        raise cygrpc.ExecuteBatchError('Failed "execute_batch": (SendMessageOperation,)')
    except cygrpc.ExecuteBatchError:
        with caplog.at_level(logging.DEBUG, logger="grpc._cython.cygrpc"):
            # grpcio formats the text itself, as here, and passes no args
            grpc_log.exception(f"ExecuteBatchError raised in core by servicer method [{method}]")
    [record] = caplog.records
    # before: ERROR with the traceback of grpcio's internals
    assert (record.levelname, record.getMessage()) == (
        "WARNING",
        f"gRPC call {method} ended: its client went away",
    )
    assert "Traceback" not in logging.Formatter().format(record)
