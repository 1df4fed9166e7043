"""The monitor hub: every event fans out to live subscribers without ever waiting on one.

Each subscriber has a bounded buffer. Publishing appends to the buffers of matching subscribers
and returns at once; when a buffer is full the event is dropped for that subscriber alone and
counted, and the subscriber reads a ``subscriber.lagged`` marker carrying how many it missed
where they are missing: after the events buffered before the gap, before those after it. A slow
SSE client or gRPC watcher therefore never slows the pipeline.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from engine.core.events import isoformat
from engine.core.values import JSONObject


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
    """One subscriber's buffer; iterate it, or ``await next_event()``."""

    def __init__(self, hub: Hub, flt: EventFilter, limit: int) -> None:
        self._hub = hub
        self.filter = flt
        self._limit = limit
        self._buffer: deque[JSONObject] = deque()
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

    def offer(self, event: JSONObject) -> bool:
        """Buffer an event; False (and counted) when full. Never blocks."""
        if len(self._buffer) >= self._limit:
            gaps = self._gaps
            if gaps and gaps[-1][0] == self._offered:
                gaps[-1][1] += 1
            else:
                gaps.append([self._offered, 1])
            return False
        self._buffer.append(event)
        self._offered += 1
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    async def next_event(self) -> JSONObject:
        while True:
            gaps = self._gaps
            if gaps and gaps[0][0] == self._taken:
                missed = gaps.popleft()[1]
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
            if self._buffer:
                self._taken += 1
                return self._buffer.popleft()
            if self.closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

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
    def __init__(self, on_drop: Callable[[int], None] | None = None) -> None:
        self._subscribers: set[Subscription] = set()
        self._on_drop = on_drop

    def subscribe(self, flt: EventFilter | None = None, limit: int = 1000) -> Subscription:
        sub = Subscription(self, flt or EventFilter(), limit)
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
        dropped = 0
        for sub in self._subscribers:
            if sub.filter.matches(event) and not sub.offer(event):
                dropped += 1
        if dropped and self._on_drop is not None:
            self._on_drop(dropped)

    def publish_many(self, events: list[JSONObject]) -> None:
        if not self._subscribers:
            return
        for event in events:
            self.publish(event)
