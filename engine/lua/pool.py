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
from dataclasses import dataclass, field, replace
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
    "memory": 256 * 1024,
    "pattern_budget": 10**5,
}
"""What a script may spend when it runs on the caller's thread (``run_inline``): a tenth of a
millisecond of Lua or so, where a trivial node takes a few hundred instructions. The C calls a
script can make are bounded by these too (allocation by ``memory``, matching by
``pattern_budget``), and the inline sandbox looks at the clock at every firing of the hook
(every 1,000 instructions, which a trivial node never reaches). The worst instruction grows
with the strings it works on (comparing two of zeros costs about 7 ms per MiB), hence a small
``memory``: a thousand of the worst hold the event loop under two seconds, once per chunk."""

_STUCK_GRACE: Final = 2.0
"""Seconds past its time, or past its cancel, after which a worker still in one run is given
up. One C call the hook never sees (comparing huge strings, sorting them) can hold a thread
for minutes: its run fails, a new worker takes its place, and the old thread ends when the call
comes back, its outcome dropped. The same grace as a node's stop (``running.STOP_GRACE``)."""
_WATCH_EVERY: Final = 0.25
_MAX_STUCK_FACTOR: Final = 1
"""Given-up threads still running, per worker, past which none is replaced: each may burn a
core and hold its heap until its call returns, so a flood of such scripts costs capacity
rather than the machine."""

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


@dataclass(slots=True, eq=False)
class _Worker:
    """A worker thread's sandbox and the run it is in, as the watchdog sees it."""

    sandbox: LuaSandbox
    name: str
    job: _Job | None = None
    due: float = 0.0
    """``time.monotonic()`` instant past which the run counts as stuck."""
    cancel_seen: float | None = None
    given_up: bool = False
    held: list[_Delivery] = field(default_factory=list)
    """Outcomes finished and not yet handed back (see ``_HOLD_SECONDS``): the watchdog hands
    them back itself when it gives up on the worker, since the thread is not coming back."""


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
        stuck_grace: float = _STUCK_GRACE,
    ) -> None:
        count = workers if workers is not None else (os.cpu_count() or 1)
        if count < 1:
            raise ValueError(f"a LuaPool needs at least one worker, not {count}")
        self.limits = limits
        self._stuck_grace = stuck_grace
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._closed = False
        self._lock = threading.Lock()
        self._pending: dict[asyncio.AbstractEventLoop, list[_Delivery]] = {}
        self._workers: list[_Worker] = []
        self._threads: list[threading.Thread] = []
        self._stuck: list[threading.Thread] = []  # given up, still in their call
        self._spawned = 0
        for _ in range(count):
            self._start_worker(LuaSandbox(limits, stop=self._stop))
        self._watchdog = threading.Thread(target=self._watch, name="lua-watchdog", daemon=True)
        self._watchdog.start()
        self._inline: LuaSandbox | None = None
        if inline:
            # never more than the pool's own limits: a stricter pool stays as strict inline
            small = {k: min(v, getattr(limits, k)) for k, v in INLINE_LIMITS.items()}
            self._inline = LuaSandbox(replace(limits, **small), stop=self._stop, check_every=1)
        self._too_big: dict[str, float] = {}  # chunk key -> when to try it inline again
        self.inline_runs = 0
        self.inline_misses = 0

    @property
    def workers(self) -> int:
        return len(self._workers)

    @property
    def given_up(self) -> int:
        """Workers given up over a stuck run whose call has not come back yet."""
        with self._lock:
            self._stuck = [t for t in self._stuck if t.is_alive()]
            return len(self._stuck)

    @property
    def wedged(self) -> bool:
        """Every worker is stuck past its time and none can be given up (``_MAX_STUCK_FACTOR``):
        nothing queued runs until one of the stuck calls comes back."""
        now = time.monotonic()
        with self._lock:
            self._stuck = [t for t in self._stuck if t.is_alive()]
            if len(self._stuck) < _MAX_STUCK_FACTOR * len(self._workers):
                return False
            return all(self._overdue(worker, now) for worker in self._workers)

    def _overdue(self, worker: _Worker, now: float) -> bool:
        """Is ``worker`` in a run past its time, or past its cancel, by the grace?"""
        job = worker.job
        if job is None:
            return False
        due = worker.due
        cancel = job.task.cancel
        if cancel is not None and cancel.is_set():
            if worker.cancel_seen is None:
                worker.cancel_seen = now
            due = min(due, worker.cancel_seen + self._stuck_grace)
        return now >= due

    def _start_worker(self, sandbox: LuaSandbox) -> _Worker:
        worker = _Worker(sandbox, f"lua-worker-{self._spawned}")
        self._spawned += 1
        thread = threading.Thread(target=self._work, args=(worker,), name=worker.name, daemon=True)
        self._workers.append(worker)
        self._threads.append(thread)
        thread.start()
        return worker

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
        with self._lock:
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
        self._watchdog.join(max(0.0, until - time.monotonic()))

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

    def _work(self, worker: _Worker) -> None:
        sandbox = worker.sandbox
        held_since = 0.0
        while True:
            held = worker.held
            if held and (
                self._queue.empty()
                or len(held) >= _HOLD_MAX
                or time.monotonic() - held_since >= _HOLD_SECONDS
            ):
                worker.held = []
                self._deliver_all(held)
                held = worker.held
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
            due = time.monotonic() + self.limits.wall_time
            if job.task.deadline is not None:
                due = min(due, job.task.deadline)
            worker.due, worker.cancel_seen = due + self._stuck_grace, None
            worker.job = job  # last: the watchdog reads the rest once it sees the job
            try:
                outcome = sandbox.run(job.task)
            except Exception as error:  # run() handles the script's failures; this is a bug
                logger.exception("Lua worker failed on %s", job.task.key)
                outcome = LuaOutcome(
                    False, None, f"internal error in the Lua pool: {error}", None, [], 0.0
                )
            with self._lock:
                gone = worker.given_up
                worker.job = None
            if gone:  # answered for, with what it held, and replaced meanwhile: it ends here
                return
            if not held:
                held_since = time.monotonic()
            held.append((job, outcome))

    def _watch(self) -> None:
        """Gives up on workers whose run went past its time, or its cancel, by the grace."""
        while not self._stop.wait(_WATCH_EVERY):
            now = time.monotonic()
            for worker in list(self._workers):
                job = worker.job
                if job is not None and self._overdue(worker, now):
                    self._give_up(worker, job, now)

    def _give_up(self, worker: _Worker, job: _Job, now: float) -> None:
        with self._lock:
            if worker.job is not job or worker.given_up:
                return  # it came back meanwhile
            self._stuck = [t for t in self._stuck if t.is_alive()]
            if len(self._stuck) >= _MAX_STUCK_FACTOR * len(self._workers):
                return  # asked again at the next look, once one of them has come back
            worker.given_up = True
            # the thread touches its held outcomes only outside a run: these are ours now
            held, worker.held = worker.held, []
            index = self._workers.index(worker)
            self._stuck.append(self._threads[index])
            del self._workers[index], self._threads[index]
        task = job.task
        since, what = worker.due - self._stuck_grace, "time"
        if task.cancel is not None and task.cancel.is_set():
            message, limit = "cancelled", "cancelled"
            if worker.cancel_seen is not None and worker.cancel_seen < since:
                since, what = worker.cancel_seen, "cancel"
        elif task.deadline is not None and task.deadline <= since:
            message, limit = "deadline exceeded", "deadline"
        else:
            message = f"wall-time limit of {self.limits.wall_time:g} seconds exceeded"
            limit = "wall_time"
        late = now - since
        logger.warning(
            "Lua worker %s gave up on %s: still in one call %.1f s past its %s (a call the "
            "sandbox cannot interrupt); a new worker takes its place",
            worker.name,
            task.key,
            late,
            what,
        )
        fresh = LuaSandbox(self.limits, stop=self._stop)  # a few ms: not under the lock
        with self._lock:  # close() decides under the lock too: no worker starts after it
            if not self._closed:
                self._start_worker(fresh)
        note = " (stuck in one call the sandbox cannot interrupt)"
        self._deliver_all(held)
        self._deliver(job, LuaOutcome(False, None, message + note, None, [], late, limit=limit))

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
