"""The monitor hub: every event fans out to live subscribers without ever waiting on one.

Each subscriber has a buffer bounded in events and in bytes. Publishing appends to the buffers of
matching subscribers and returns at once; when a buffer is full the event is dropped for that
subscriber alone and counted, and the subscriber reads a ``subscriber.lagged`` marker carrying
how many it missed where they are missing: after the events buffered before the gap, before
those after it. A slow SSE client or gRPC watcher therefore never slows the pipeline.

An event is published as one ``Published``: its encodings (JSON text, SSE frames, the gRPC
message) are made once, on first use, and shared by every subscriber, so a subscriber costs a
reference per event, not an encode. An event too large for a default gRPC client (4 MiB) streams
with its ``data`` replaced by a note saying so and where to read it whole.

Events a one-run stream reads back from the store (its replay, or what it missed while it
lagged) are shared the same way: ``StoredPages`` keeps the pages read as ``Published``, so the
streams of one run that read the same stretch decode and encode it once, not once each.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar, cast

import grpc

from engine import wire
from engine.core.events import isoformat
from engine.core.values import JSONObject
from orchestrator.errors import OrchestratorError

SUBSCRIBER_EVENTS: Final = 1000
"""Events one subscriber's buffer holds; past it (or ``SUBSCRIBER_BYTES``) events drop for it."""
SUBSCRIBER_BYTES: Final = 16 * 1024 * 1024
"""Bytes of encoded events one subscriber's buffer holds (it always takes one when empty)."""
MAX_SUBSCRIBERS: Final = 1000
"""Live subscribers at once (SSE streams and WatchEvents streams together)."""
STREAM_EVENT_MAX: Final = 4 * 1024 * 1024
"""Largest event, as JSON bytes, a live stream carries whole: a gRPC client with default options
refuses a message over 4 MiB, and the event's JSON is never smaller than its message. A larger
one streams with its ``data`` replaced by ``too_large_data``'s note."""
BATCH_BYTES: Final = 64 * 1024
"""About how much of its buffer a reader takes at once: one write's worth."""
_EVENT_OVERHEAD: Final = 3072
"""Bytes a kept event costs beyond three times its JSON: its decoded dicts, the objects that
hold its encodings, its gRPC message once a watcher asks for it (measured: about 2.5 KiB)."""
STORED_PAGES_BYTES: Final = 32 * 1024 * 1024
"""About how much memory ``StoredPages`` keeps (events as decoded, JSON and SSE frames)."""

T = TypeVar("T")


class TooManySubscribers(OrchestratorError):
    """``MAX_SUBSCRIBERS`` streams are open: a new one is refused until one ends."""

    http_status = 503
    code = "too_many_subscribers"
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retry_after = 5


def too_large_data(event: JSONObject, size: int) -> JSONObject:
    """What a live stream carries as ``data`` of an event of ``size`` JSON bytes, over
    ``STREAM_EVENT_MAX``: the sizes, and (for a run's event) where to read it whole."""
    note: JSONObject = {"too_large": True, "bytes": size, "limit": STREAM_EVENT_MAX}
    execution_id, seq = event.get("execution_id"), event.get("seq")
    if isinstance(execution_id, str) and isinstance(seq, int) and seq > 0:
        note["read_whole"] = f"/api/v1/executions/{execution_id}/events?after_seq={seq - 1}&limit=1"
    return note


class Published:
    """One event as streams send it. Its encodings are made on first use and kept, so every
    subscriber writes the same bytes object and every watcher sends the same message."""

    __slots__ = ("_data_text", "_frames", "_json", "_memo", "_size", "_whole", "event")

    def __init__(self, event: JSONObject) -> None:
        self.event = event
        self._data_text: str | None = None
        self._json: str | None = None
        self._size = -1  # len(self.json) once encoded
        self._whole = -1  # the event's own JSON length, the note's when too large
        self._frames: dict[bool, bytes] = {}
        self._memo: dict[object, object] = {}

    def _encode(self) -> None:
        event = self.event
        envelope = {key: value for key, value in event.items() if key != "data"}
        text = wire.dumps(envelope)
        if "data" not in event:
            self._data_text, self._json, self._size = "{}", text, len(text)
            self._whole = self._size
            return
        data = wire.dumps(event["data"])
        # data last, as Event.to_dict orders it: the same text json.dumps(event) makes
        head = f'{text[:-1]}{"," if len(text) > 2 else ""}"data":'
        size = self._whole = len(head) + len(data) + 1
        if size > STREAM_EVENT_MAX:
            data = wire.dumps(too_large_data(event, size))
        self._data_text, self._json = data, f"{head}{data}}}"
        self._size = len(self._json)

    @property
    def data_text(self) -> str:
        """``data`` as JSON text, as streamed (the note when the event is too large)."""
        if self._data_text is None:
            self._encode()
        assert self._data_text is not None
        return self._data_text

    @property
    def json(self) -> str:
        """The whole event as JSON text, as streamed."""
        if self._json is None:
            self._encode()
        assert self._json is not None
        return self._json

    @property
    def size(self) -> int:
        """Bytes the event takes on a stream, about: its JSON's length (ASCII, escaped)."""
        if self._size < 0:
            self._encode()
        return self._size

    @property
    def whole_size(self) -> int:
        """The event's own JSON length (over ``STREAM_EVENT_MAX`` when it streams as a note):
        about what its ``event`` holds in memory."""
        if self._whole < 0:
            self._encode()
        return self._whole

    def frame(self, with_id: bool) -> bytes:
        """The Server-Sent Events frame; with ``id: <seq>`` for a one-run stream."""
        frame = self._frames.get(with_id)
        if frame is None:
            event = self.event
            head = f"id: {event.get('seq')}\n" if with_id else ""
            frame = f"{head}event: {event.get('type')}\ndata: {self.json}\n\n".encode()
            self._frames[with_id] = frame
        return frame

    def encoded(self, make: Callable[[Published], T]) -> T:
        """``make(self)``, made once per event (the gRPC message: serving_grpc knows it)."""
        try:
            return cast(T, self._memo[make])
        except KeyError:
            made = self._memo[make] = make(self)
            return made


@dataclass(slots=True)
class _Page:
    """A full page of one run's stored events: every event with seq in (after, seqs[-1]]."""

    after: int
    items: list[Published]
    seqs: list[int]
    weight: int


class StoredPages:
    """Pages of runs' stored timelines, read back for one-run streams, kept as ``Published``
    (least recently used first out, ``max_bytes`` in all) so that the streams of one run share
    their decoding and encoding: a hundred lagging watchers of a busy run read each stretch of
    it from the store once, not a hundred times. Only full pages are kept (more was stored past
    them), and stored events never change, so a page kept is never stale. Reads of one run are
    taken in turn, so streams that ask for the same stretch at once wait for the first read."""

    def __init__(self, max_bytes: int = STORED_PAGES_BYTES) -> None:
        self.max_bytes = max_bytes
        self.held = 0
        self._pages: OrderedDict[tuple[str, int], _Page] = OrderedDict()
        self._starts: dict[str, list[int]] = {}  # each run's kept pages, by their after
        self._reading: dict[str, tuple[asyncio.Lock, list[int]]] = {}  # lock, its users

    async def read(
        self,
        execution_id: str,
        after: int,
        fetch: Callable[[int], Awaitable[tuple[list[JSONObject], bool]]],
    ) -> tuple[list[Published], bool]:
        """The run's stored events past ``after``, a page of them, and whether more are stored
        past it: from a page kept, else ``fetch(after)`` (the events, and whether more follow)."""
        found = self._find(execution_id, after)
        if found is not None:
            return found
        lock, users = self._reading.setdefault(execution_id, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                found = self._find(execution_id, after)
                if found is not None:
                    return found
                events, more = await fetch(after)
                items = [Published(event) for event in events]
                if more and items:
                    self._keep(execution_id, after, items)
                return items, more
        finally:
            users[0] -= 1
            if not users[0]:
                del self._reading[execution_id]

    def _find(self, execution_id: str, after: int) -> tuple[list[Published], bool] | None:
        starts = self._starts.get(execution_id)
        if not starts:
            return None
        at = bisect.bisect_right(starts, after) - 1
        if at < 0:
            return None
        key = (execution_id, starts[at])
        page = self._pages[key]
        if after >= page.seqs[-1]:
            return None  # past this page: the next one is not kept
        self._pages.move_to_end(key)
        return page.items[bisect.bisect_right(page.seqs, after) :], True

    def _keep(self, execution_id: str, after: int, items: list[Published]) -> None:
        # the event as decoded, its JSON text, its SSE frame and its gRPC message: about three
        # times its JSON, and a fixed cost per event that dominates small ones (a node.log's
        # dicts and objects weigh more than its 800 bytes of JSON)
        weight = sum(3 * item.whole_size + _EVENT_OVERHEAD for item in items)
        if weight > self.max_bytes // 4:
            return  # a page of huge events would push out everything else
        seqs = [seq if isinstance(seq := item.event.get("seq"), int) else 0 for item in items]
        key = (execution_id, after)
        if key in self._pages:
            return
        self._pages[key] = _Page(after, items, seqs, weight)
        bisect.insort(self._starts.setdefault(execution_id, []), after)
        self.held += weight
        while self.held > self.max_bytes:
            (run, start), old = self._pages.popitem(last=False)
            self.held -= old.weight
            starts = self._starts[run]
            starts.remove(start)
            if not starts:
                del self._starts[run]


@dataclass(frozen=True, slots=True)
class EventFilter:
    workflow_id: str | None = None
    execution_id: str | None = None
    type_prefix: str | None = None

    def matches(self, event: JSONObject) -> bool:
        if self.workflow_id is not None and event.get("workflow_id") != self.workflow_id:
            return False
        if self.execution_id is not None and event.get("execution_id") != self.execution_id:
            return False
        if self.type_prefix is not None:
            kind = event.get("type")
            if not isinstance(kind, str) or not kind.startswith(self.type_prefix):
                return False
        return True


class Subscription:
    """One subscriber's buffer; iterate it, or ``await next_event()``, or (streams) take
    what is buffered at once with ``await next_batch()``."""

    def __init__(self, hub: Hub, flt: EventFilter, limit: int, max_bytes: int) -> None:
        self._hub = hub
        self.filter = flt
        self._limit = limit
        self._max_bytes = max_bytes
        self._buffer: deque[Published] = deque()
        self.buffered_bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self._offered = 0  # events ever buffered
        self._taken = 0  # of those, read
        # runs of dropped events, oldest first: [events buffered before the run, its length]
        self._gaps: deque[list[int]] = deque()
        self.closed = False

    @property
    def missed(self) -> int:
        """Dropped events not yet reported by a marker."""
        return sum(count for _, count in self._gaps)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def offer(self, item: Published) -> bool:
        """Buffer an event; False (and counted) when full. Never blocks."""
        buffer = self._buffer
        size = item._size if item._size >= 0 else item.size  # the hot path: no call when known
        if len(buffer) >= self._limit or (buffer and self.buffered_bytes + size > self._max_bytes):
            gaps = self._gaps
            if gaps and gaps[-1][0] == self._offered:
                gaps[-1][1] += 1
            else:
                gaps.append([self._offered, 1])
            return False
        buffer.append(item)
        self.buffered_bytes += size
        self._offered += 1
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    def _take(self) -> Published | None:
        """The next marker or event, None when there is none."""
        gaps = self._gaps
        if gaps and gaps[0][0] == self._taken:
            return Published(self._marker(gaps.popleft()[1]))
        if self._buffer:
            self._taken += 1
            item = self._buffer.popleft()
            self.buffered_bytes -= item.size
            return item
        return None

    def _marker(self, missed: int) -> JSONObject:
        return {
            "seq": 0,
            "time": isoformat(time.time()),
            "type": "subscriber.lagged",
            "severity": "warning",
            "workflow_id": self.filter.workflow_id,
            "version": None,
            "execution_id": self.filter.execution_id,
            "node_id": None,
            "engine_id": None,
            "attempt": None,
            "data": {"missed": missed},
        }

    async def _wait(self, timeout: float | None) -> bool:
        """Wait for something to read; False when ``timeout`` seconds pass first."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._waiter
        except TimeoutError:
            return False
        finally:
            self._waiter = None
        return True

    async def next_batch(self, timeout: float | None = None) -> list[Published]:
        """What is buffered, markers in place, up to about ``BATCH_BYTES`` (one item at
        least); waits for some first, and returns [] after ``timeout`` seconds of quiet.
        Raises StopAsyncIteration when closed and read to the end."""
        while True:
            item = self._take()
            if item is not None:
                break
            if self.closed:
                raise StopAsyncIteration
            if not await self._wait(timeout):
                return []
        batch = [item]
        held = item.size
        gaps, buffer = self._gaps, self._buffer
        while gaps or buffer:
            if gaps and gaps[0][0] == self._taken:  # a marker next is always taken
                batch.append(Published(self._marker(gaps.popleft()[1])))
                continue
            upcoming = buffer[0]
            size = upcoming._size  # known: offer measured it
            if held + size > BATCH_BYTES:
                break
            buffer.popleft()
            self._taken += 1
            self.buffered_bytes -= size
            held += size
            batch.append(upcoming)
        return batch

    async def next_event(self) -> JSONObject:
        while True:
            item = self._take()
            if item is not None:
                return item.event
            if self.closed:
                raise StopAsyncIteration
            await self._wait(None)

    def __aiter__(self) -> AsyncIterator[JSONObject]:
        return self

    async def __anext__(self) -> JSONObject:
        return await self.next_event()

    def close(self) -> None:
        self.closed = True
        self._hub.unsubscribe(self)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Hub:
    def __init__(
        self,
        on_drop: Callable[[int], None] | None = None,
        *,
        max_subscribers: int | None = None,
    ) -> None:
        self._subscribers: set[Subscription] = set()
        self.pages = StoredPages()
        """Stored events read back by one-run streams, shared between them."""
        self._on_drop = on_drop
        self.max_subscribers = MAX_SUBSCRIBERS if max_subscribers is None else max_subscribers

    def subscribe(
        self,
        flt: EventFilter | None = None,
        limit: int = SUBSCRIBER_EVENTS,
        max_bytes: int = SUBSCRIBER_BYTES,
    ) -> Subscription:
        """A new subscription; TooManySubscribers when ``max_subscribers`` are open."""
        if len(self._subscribers) >= self.max_subscribers:
            raise TooManySubscribers(
                f"too many live event streams: at most {self.max_subscribers} "
                "(SSE and WatchEvents together) are open at once; try again later",
                {"limit": self.max_subscribers},
            )
        sub = Subscription(self, flt or EventFilter(), limit, max_bytes)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def close_all(self) -> None:
        """End every subscription: their readers see the end of the stream (shutdown)."""
        for sub in list(self._subscribers):
            sub.close()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, event: JSONObject) -> None:
        item = Published(event)  # one per event: its encodings are shared by every subscriber
        dropped = 0
        for sub in self._subscribers:
            if sub.filter.matches(event) and not sub.offer(item):
                dropped += 1
        if dropped and self._on_drop is not None:
            self._on_drop(dropped)

    def publish_many(self, events: list[JSONObject]) -> None:
        if not self._subscribers:
            return
        for event in events:
            self.publish(event)
