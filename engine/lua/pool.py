"""Runs Lua tasks on worker threads, so the event loop never waits for a script.

Each worker thread owns one ``LuaSandbox`` (one Lua runtime with its cache of compiled chunks)
and takes tasks from one shared queue; lupa releases the GIL while Lua runs, so workers run in
parallel. Outcomes go back in batches: while tasks are queued a worker holds what it finished
for up to 1 ms, and it wakes a loop with ``call_soon_threadsafe`` only when no wake-up for that
loop is already on its way, so whatever finishes in the meantime rides along. Under load one
wake-up carries many outcomes; when idle, none waits. Unlike draining a batch of tasks up front,
this never holds a queued task behind a slow one while another worker is free.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Final

from engine.lua.sandbox import Flag, LuaLimits, LuaOutcome, LuaSandbox, LuaTask

__all__ = ["LuaPool"]

logger = logging.getLogger(__name__)

_HOLD_SECONDS: Final = 0.001
_HOLD_MAX: Final = 64
"""While more tasks are queued, a worker keeps finished outcomes for up to 1 ms or 64 outcomes
and hands them back together: waking the loop costs more than a trivial script. A queued task
never waits for this (the worker is busy running queued tasks while it holds), and with an
empty queue the outcomes go back at once."""

INLINE_LIMITS: Final = {
    "instructions": 20_000,
    "wall_time": 0.005,
    "memory": 4 * 1024 * 1024,
    "pattern_budget": 10**5,
}
"""What a script may spend when it runs on the caller's thread (``run_inline``): a tenth of a
millisecond of Lua or so, where a trivial node takes a few hundred instructions. The C calls a
script can make are bounded by these too (allocation by ``memory``, matching by
``pattern_budget``), so the event loop is held for a moment at most."""

_INLINE_MISSES: Final = 4096
"""Chunks remembered as too big to run inline, so they are not tried there again soon."""
_INLINE_RETRY: Final = 60.0
"""Seconds before a chunk that went past the inline limits is tried inline again: one miss may
be the machine's (5 ms of wall time on a loaded one) or its inputs', not the script's, and a
trivial node that lost its place for good would cost several times more from then on."""

_CLOSE_WAIT: Final = 1.0
"""Seconds close() waits for the workers; a script stops within about 10k instructions."""


Callback = Callable[[LuaOutcome | None], None]
"""Receives a task's outcome on the loop thread; None when the task was cancelled unrun."""


@dataclass(slots=True)
class _Job:
    task: LuaTask
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[LuaOutcome] | None = None
    callback: Callback | None = None

    def dropped(self) -> bool:
        return self.future is not None and self.future.cancelled()


_Delivery = tuple[_Job, LuaOutcome | None]
"""An outcome for a job, or None to cancel it."""


class LuaPool:
    """Worker threads with one Lua sandbox each. ``submit`` and ``run`` are for the loop thread.

    A task whose awaiting coroutine is cancelled is dropped if it has not started; a started one
    runs on until it ends (give the task a ``cancel`` event to stop it early). ``close`` stops
    running scripts and cancels what is still queued.
    """

    def __init__(
        self,
        workers: int | None = None,
        limits: LuaLimits = LuaLimits(),  # noqa: B008 -- frozen, so one shared default is safe
        *,
        inline: bool = True,
    ) -> None:
        count = workers if workers is not None else (os.cpu_count() or 1)
        if count < 1:
            raise ValueError(f"a LuaPool needs at least one worker, not {count}")
        self.limits = limits
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._closed = False
        self._lock = threading.Lock()
        self._pending: dict[asyncio.AbstractEventLoop, list[_Delivery]] = {}
        self._threads = []
        for index in range(count):
            sandbox = LuaSandbox(limits, stop=self._stop)
            thread = threading.Thread(
                target=self._work, args=(sandbox,), name=f"lua-worker-{index}", daemon=True
            )
            self._threads.append(thread)
        for thread in self._threads:
            thread.start()
        self._inline: LuaSandbox | None = None
        if inline:
            # never more than the pool's own limits: a stricter pool stays as strict inline
            small = {k: min(v, getattr(limits, k)) for k, v in INLINE_LIMITS.items()}
            self._inline = LuaSandbox(replace(limits, **small), stop=self._stop)
        self._too_big: dict[str, float] = {}  # chunk key -> when to try it inline again
        self.inline_runs = 0
        self.inline_misses = 0

    @property
    def workers(self) -> int:
        return len(self._threads)

    def run_inline(self, task: LuaTask) -> LuaOutcome | None:
        """Run ``task`` on the calling thread if it fits ``INLINE_LIMITS``; None when it does
        not (then submit it: it runs again from the start on a worker, with the full limits).

        Most nodes are a few hundred instructions: run here, they skip two thread hand-offs and
        a loop wake-up, several times what the script itself costs. Scripts have no effects
        outside their run, so a run cut short here and repeated on a worker is unobservable
        (its log lines are dropped with it).
        """
        sandbox = self._inline
        if sandbox is None or self._closed:
            return None
        again = self._too_big.get(task.key)
        if again is not None:
            if time.monotonic() < again:
                return None
            del self._too_big[task.key]
        outcome = sandbox.run(task)
        if outcome.limit is None or outcome.limit == "cancelled":
            self.inline_runs += 1
            return outcome
        self.inline_misses += 1
        if len(self._too_big) >= _INLINE_MISSES:
            self._too_big.clear()
        self._too_big[task.key] = time.monotonic() + _INLINE_RETRY
        return None

    def submit(self, task: LuaTask) -> asyncio.Future[LuaOutcome]:
        """Queues ``task``; the future resolves on this loop with its outcome."""
        if self._closed:
            raise RuntimeError("the LuaPool is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[LuaOutcome] = loop.create_future()
        self._queue.put(_Job(task, loop, future=future))
        return future

    def submit_callback(self, task: LuaTask, callback: Callback) -> None:
        """Queues ``task``; ``callback`` gets its outcome on this loop's thread.

        The runner's path: a future costs an extra turn of the event loop per outcome (its
        done-callbacks are scheduled, not called), which is most of a trivial node's cost.
        """
        if self._closed:
            raise RuntimeError("the LuaPool is closed")
        self._queue.put(_Job(task, asyncio.get_running_loop(), callback=callback))

    async def run(self, task: LuaTask) -> LuaOutcome:
        return await self.submit(task)

    def close(self) -> None:
        """Stops the workers: running scripts end as cancelled, queued tasks are cancelled."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._deliver(job, None)
        for _ in self._threads:
            self._queue.put(None)
        until = time.monotonic() + _CLOSE_WAIT
        for thread in self._threads:
            thread.join(max(0.0, until - time.monotonic()))

    async def __aenter__(self) -> LuaPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- worker side -----------------------------------------------------------------------

    def _work(self, sandbox: LuaSandbox) -> None:
        held: list[_Delivery] = []
        held_since = 0.0
        while True:
            if held and (
                self._queue.empty()
                or len(held) >= _HOLD_MAX
                or time.monotonic() - held_since >= _HOLD_SECONDS
            ):
                self._deliver_all(held)
                held = []
            job = self._queue.get()
            if job is None:
                self._deliver_all(held)
                return
            if self._stop.is_set():
                held.append((job, None))
                continue
            if job.dropped():  # a benign race: at worst the task runs for nothing
                continue
            if isinstance(job.task.cancel, Flag):
                job.task.cancel.taken = True
            try:
                outcome = sandbox.run(job.task)
            except Exception as error:  # run() handles the script's failures; this is a bug
                logger.exception("Lua worker failed on %s", job.task.key)
                outcome = LuaOutcome(
                    False, None, f"internal error in the Lua pool: {error}", None, [], 0.0
                )
            if not held:
                held_since = time.monotonic()
            held.append((job, outcome))

    def _deliver_all(self, held: list[_Delivery]) -> None:
        for job, outcome in held:
            self._deliver(job, outcome)

    def _deliver(self, job: _Job, outcome: LuaOutcome | None) -> None:
        loop = job.loop
        with self._lock:
            batch = self._pending.get(loop)
            wake = batch is None
            if batch is None:
                batch = self._pending[loop] = []
            batch.append((job, outcome))
        if wake:
            try:
                loop.call_soon_threadsafe(self._flush, loop)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                with self._lock:
                    self._pending.pop(loop, None)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            batch = self._pending.pop(loop, [])
        for job, outcome in batch:
            if job.callback is not None:
                try:
                    job.callback(outcome)
                except Exception:  # one broken receiver must not starve the rest of the batch
                    logger.exception("Lua task callback failed for %s", job.task.key)
                continue
            future = job.future
            if future is None or future.done():
                continue
            if outcome is None:
                future.cancel()
            else:
                future.set_result(outcome)
