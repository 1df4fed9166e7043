"""Fan-out of live events to many subscribers, over the real hub, aiohttp and grpcio.

Each event is encoded once whoever listens; a stream writes what its subscriber has buffered in
one write; a subscriber holds a bounded number of bytes, however large the events and however
slowly it reads; an event too large for a default gRPC client streams as a note saying where to
read it; and the number of live streams is bounded.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web

from engine import wire
from engine.api import dagengine_pb2 as pb
from engine.api import dagengine_pb2_grpc as pb_grpc
from engine.core.values import JSONObject
from orchestrator.monitoring import Hub
from orchestrator.store import EventPage, ExecutionHead
from tests.component.serving_helpers import serving
from tests.component.test_event_streams import RUN
from tests.component.test_event_streams import event as run_event


def event(seq: int, kind: str = "node.succeeded", data: JSONObject | None = None) -> JSONObject:
    """One of node n's events in run ``RUN``."""
    return {**run_event(seq, kind), "node_id": "n", "attempt": 1, "data": data or {}}


class StoredRun:
    """A facade over one run whose events are all stored already, and a hub to publish on."""

    def __init__(self, hub: Hub | None = None) -> None:
        self.hub = hub or Hub()
        self.stored: list[JSONObject] = []

    async def get_execution(self, execution_id: str) -> JSONObject:
        if execution_id != RUN:
            raise AssertionError(execution_id)
        ended = bool(self.stored) and self.stored[-1]["type"] == "execution.succeeded"
        return {"id": RUN, "workflow_id": "wf", "status": "succeeded" if ended else "running"}

    async def execution_head(self, execution_id: str, *, weigh: bool = False) -> ExecutionHead:
        if execution_id != RUN:
            raise AssertionError(execution_id)
        ended = bool(self.stored) and self.stored[-1]["type"] == "execution.succeeded"
        last = int(self.stored[-1]["seq"]) if self.stored else 0  # type: ignore[call-overload]
        status = "succeeded" if ended else "running"
        return ExecutionHead(RUN, "wf", "1.0.0", status, last, None)

    async def execution_event_page(
        self, execution_id: str, *, after_seq: int, limit: int
    ) -> EventPage:
        found = [e for e in self.stored if int(e["seq"]) > after_seq]  # type: ignore[call-overload]
        return EventPage(found[:limit], None)


class Served:
    def __init__(self, run: StoredRun, url: str, target: str) -> None:
        self.run = run
        self.url = url
        self.target = target
        self.transports: list[asyncio.Transport] = []


@pytest.fixture
def run() -> StoredRun:
    return StoredRun()


@pytest.fixture
async def served(run: StoredRun) -> AsyncIterator[Served]:
    transports: list[asyncio.Transport] = []

    @web.middleware
    async def remember(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        assert request.transport is not None
        transports.append(request.transport)  # type: ignore[arg-type]
        return await handler(request)

    async with serving(run, middlewares=[remember]) as (url, target):  # type: ignore[arg-type]
        s = Served(run, url, target)
        s.transports = transports
        yield s


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[web.StreamResponse, Any]]:
    """Every chunk an SSE response writes that carries event frames, with its response."""
    seen: list[tuple[web.StreamResponse, Any]] = []
    original = web.StreamResponse.write

    async def write(self: web.StreamResponse, data: Any) -> None:
        if b"data: " in bytes(data):
            seen.append((self, data))
        await original(self, data)

    monkeypatch.setattr(web.StreamResponse, "write", write)
    return seen


async def read_sse(http: aiohttp.ClientSession, url: str, count: int) -> list[tuple[str, Any]]:
    """The first ``count`` events of the stream at ``url``: (type, data) each."""
    got: list[tuple[str, Any]] = []
    async with http.get(url) as resp:
        assert resp.status == 200
        kind = ""
        async for line in resp.content:
            text = line.decode().rstrip("\n")
            if text.startswith("event: "):
                kind = text[7:]
            elif text.startswith("data: "):
                got.append((kind, json.loads(text[6:])))
                if len(got) == count:
                    return got
    return got


async def until(check: Callable[[], bool]) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not reached in 5 s")


async def test_every_sse_subscriber_writes_the_same_bytes_object(
    served: Served, writes: list[tuple[web.StreamResponse, Any]]
) -> None:
    async with aiohttp.ClientSession() as http:
        readers = [
            asyncio.create_task(read_sse(http, f"{served.url}/api/v1/events", 1)) for _ in range(3)
        ]
        await until(lambda: served.run.hub.subscribers == 3)
        served.run.hub.publish(event(1, data={"x": 1}))
        got = await asyncio.wait_for(asyncio.gather(*readers), 10)
    assert got == [[("node.succeeded", event(1, data={"x": 1}))]] * 3
    assert len({id(response) for response, _ in writes}) == 3
    # before: each subscriber encoded the event itself, into bytes of its own
    assert len({id(chunk) for _, chunk in writes}) == 1


async def test_every_grpc_watcher_sends_the_same_message_made_once(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[JSONObject] = []
    original = wire.event_message_from_dict

    def counting(e: JSONObject) -> pb.Event:
        made.append(e)
        return original(e)

    monkeypatch.setattr(wire, "event_message_from_dict", counting)
    async with grpc.aio.insecure_channel(served.target) as channel:
        stub = pb_grpc.OrchestratorStub(channel)
        calls = [stub.WatchEvents(pb.WatchEventsRequest()) for _ in range(3)]
        await until(lambda: served.run.hub.subscribers == 3)
        served.run.hub.publish(event(1, data={"x": 1}))
        got = [await asyncio.wait_for(call.read(), 10) for call in calls]
        for call in calls:
            call.cancel()
    assert {(m.seq, m.data_json) for m in got} == {(1, '{"x":1}')}
    assert len(made) == 1  # before: once per watcher


async def test_what_a_subscriber_has_buffered_goes_out_in_one_write(
    served: Served, writes: list[tuple[web.StreamResponse, Any]]
) -> None:
    async with aiohttp.ClientSession() as http:
        reader = asyncio.create_task(read_sse(http, f"{served.url}/api/v1/events", 50))
        await until(lambda: served.run.hub.subscribers == 1)
        served.run.hub.publish_many([event(seq) for seq in range(1, 51)])
        got = await asyncio.wait_for(reader, 10)
    assert [e["seq"] for _, e in got] == list(range(1, 51))
    assert len(writes) == 1  # before: one write per event


async def test_a_subscriber_that_never_reads_holds_a_bounded_number_of_bytes() -> None:
    dropped: list[int] = []
    hub = Hub(on_drop=dropped.append)
    stalled = hub.subscribe()  # the default bounds: 1000 events, 16 MiB
    megabyte = "x" * 1_000_000
    for seq in range(1, 41):  # 40 MB of events: each of them far below the count bound
        hub.publish(event(seq, data={"blob": megabyte}))
    # 16 of 1 MB fit in 16 MiB: before, all 40 were held, some 40 MB
    assert sum(dropped) == stalled.missed == 24
    held = 40 - 24
    assert stalled.buffered == held
    assert stalled.buffered_bytes <= 16 * 1024 * 1024
    taken = [item.event for item in await stalled.next_batch()]  # all of it: 64 KiB or one
    while taken[-1]["type"] != "subscriber.lagged":
        taken += [item.event for item in await stalled.next_batch()]
    assert [e["seq"] for e in taken[:-1]] == list(range(1, held + 1))
    assert taken[-1]["data"] == {"missed": 40 - held}  # where the gap is: after them


async def test_a_large_frame_is_written_in_pieces_to_a_client_that_does_not_read(
    served: Served,
) -> None:
    """A client that reads nothing holds a piece of a frame in the server's memory (and what
    the kernel buffers), not the frame: 3.5 MB frames, under the size that gets a note."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setblocking(False)
    port = int(served.url.rsplit(":", 1)[1])
    loop = asyncio.get_running_loop()
    await loop.sock_connect(client, ("127.0.0.1", port))
    try:
        await loop.sock_sendall(client, b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
        await until(lambda: served.run.hub.subscribers == 1)
        blob = "y" * 3_500_000
        for seq in range(1, 9):
            served.run.hub.publish(event(seq, data={"blob": blob}))
        [transport] = served.transports
        sizes = []
        for _ in range(20):
            await asyncio.sleep(0.02)
            sizes.append(transport.get_write_buffer_size())
        # before: about the whole first frame waited in the transport's buffer
        assert max(sizes) <= 256 * 1024, sizes
    finally:
        client.close()


BIG = "z" * 30_000_000


def _note(seq: int, size: int) -> JSONObject:
    return {
        "too_large": True,
        "bytes": size,
        "limit": 4 * 1024 * 1024,
        "read_whole": f"/api/v1/executions/{RUN}/events?after_seq={seq - 1}&limit=1",
    }


def _size(e: JSONObject) -> int:
    return len(json.dumps(e, separators=(",", ":")))


async def test_a_default_grpc_client_watches_past_a_30_mb_event(served: Served) -> None:
    huge = event(2, data={"items": BIG})
    served.run.stored = [event(1, "execution.started"), huge, event(3, "execution.succeeded")]
    async with grpc.aio.insecure_channel(served.target) as channel:  # default options: 4 MiB
        stub = pb_grpc.OrchestratorStub(channel)
        replayed = [
            m async for m in stub.WatchEvents(pb.WatchEventsRequest(execution_id=RUN))
        ]  # before: RESOURCE_EXHAUSTED after seq 1, and again on every reconnect
        assert [m.seq for m in replayed] == [1, 2, 3]
        assert json.loads(replayed[1].data_json) == _note(2, _size(huge))
        assert replayed[1].type == "node.succeeded" and replayed[1].node_id == "n"
        live = stub.WatchEvents(pb.WatchEventsRequest(workflow_id="wf"))
        await until(lambda: served.run.hub.subscribers == 1)
        served.run.hub.publish_many([huge, event(3, "execution.succeeded")])
        first, second = await live.read(), await live.read()
        live.cancel()
    assert json.loads(first.data_json) == _note(2, _size(huge))
    assert second.type == "execution.succeeded"


async def test_an_sse_stream_carries_a_note_for_an_event_over_4_mib(served: Served) -> None:
    huge = event(2, data={"items": BIG[:5_000_000]})
    async with aiohttp.ClientSession() as http:
        reader = asyncio.create_task(read_sse(http, f"{served.url}/api/v1/events", 2))
        await until(lambda: served.run.hub.subscribers == 1)
        served.run.hub.publish_many([huge, event(3)])
        got = await asyncio.wait_for(reader, 10)
    assert got[0] == ("node.succeeded", {**huge, "data": _note(2, _size(huge))})
    assert got[1] == ("node.succeeded", event(3))


async def test_live_streams_past_the_limit_are_refused_and_the_others_go_on() -> None:
    run = StoredRun(Hub(max_subscribers=2))
    message = (
        "too many live event streams: at most 2 (SSE and WatchEvents together) are open at "
        "once; try again later"
    )
    async with (
        serving(run) as (base, target),  # type: ignore[arg-type]
        aiohttp.ClientSession() as http,
        grpc.aio.insecure_channel(target) as channel,
    ):
        url = f"{base}/api/v1/events"
        stub = pb_grpc.OrchestratorStub(channel)
        sse = asyncio.create_task(read_sse(http, url, 1))
        watch = stub.WatchEvents(pb.WatchEventsRequest())
        await until(lambda: run.hub.subscribers == 2)
        async with http.get(url) as refused:
            assert refused.status == 503
            assert refused.headers["Retry-After"] == "5"
            assert await refused.json() == {
                "error": {
                    "code": "too_many_subscribers",
                    "message": message,
                    "details": {"limit": 2},
                }
            }
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stub.WatchEvents(pb.WatchEventsRequest()):
                pass
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert caught.value.details() == message
        run.hub.publish(event(1))
        assert (await asyncio.wait_for(sse, 10))[0][1]["seq"] == 1
        assert (await asyncio.wait_for(watch.read(), 10)).seq == 1
        watch.cancel()


async def test_a_head_of_the_live_stream_takes_no_place() -> None:
    run = StoredRun(Hub(max_subscribers=2))
    async with (
        serving(run) as (base, _),  # type: ignore[arg-type]
        aiohttp.ClientSession() as http,
    ):
        url = f"{base}/api/v1/events"
        for _ in range(5):
            async with http.head(url) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/event-stream")
        # before: each HEAD held a place until a heartbeat found no one; the third was a 503
        assert run.hub.subscribers == 0
