"""Runs Lua tasks on worker threads, so the event loop never waits for a script.

Each worker thread owns one ``LuaSandbox`` (one Lua runtime with its cache of compiled chunks);
lupa releases the GIL while Lua runs, so workers run in parallel. Tasks queue per run, and the
workers take from the runs in turn (see ``_Turns``): a run with a thousand ready items does not
hold up another run's one task, which waits for at most one task of each other run.

Outcomes go back in batches: while tasks are queued a worker holds what it finished
for up to 1 ms, and it wakes a loop with ``call_soon_threadsafe`` only when no wake-up for that
loop is already on its way, so whatever finishes in the meantime rides along. Under load one
wake-up carries many outcomes; when idle, none waits. Unlike draining a batch of tasks up front,
this never holds a queued task behind a slow one while another worker is free.

A worker stuck in one C call is judged by the CPU the call spends past its time or cancel, not
by the wall clock: on a loaded machine a thread starved of a core is slow, not stuck, and a
replacement would only compete with it for the core (see ``_STUCK_GRACE``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from heapq import heappop, heappush, heapreplace
from itertools import count
from types import TracebackType
from typing import Final

from engine.lua.sandbox import Flag, LuaLimits, LuaOutcome, LuaSandbox, LuaTask

__all__ = ["NEVER_STARTED", "LuaPool", "TaskFlag"]

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
"""Seconds of its thread's CPU time a worker still in one run may spend past the run's time, or
past its cancel, before it is given up. One C call the hook never sees (comparing huge strings,
sorting them) can hold a thread for minutes: its run fails, a new worker takes its place, and
the old thread ends when the call comes back, its outcome dropped. The same grace as a node's
stop (``running.STOP_GRACE``); on an idle machine a stuck call has a core to itself, so it is
two seconds of wall time too. CPU, not wall time: on a loaded machine (load average 6 to 13 on
two cores) an ordinary script between two looks at its cancel flag, starved of a core, was
given up 2 s after its cancel, its late lines dropped, and its replacement competed with it for
the core. Where the thread's CPU clock cannot be read, wall time (``_thread_cpu_time``)."""
_STUCK_BACKSTOP: Final = 10
"""Times ``_STUCK_GRACE`` of wall time past its time or cancel after which a worker is given up
whatever CPU it spent: a thread blocked in a call burns none, and must not hold its worker for
ever. Ten times, as a starved thread gets about a core over the runnable threads' number of its
time: one slow to stop at a load of 10 per core would spend its grace in 20 s; past that the
machine is beyond what any grace fixes, and two workers' lost time is the lesser cost."""
_WATCH_EVERY: Final = 0.25
_MAX_STUCK_FACTOR: Final = 1
"""Given-up threads still running, per worker, past which none is replaced: each may burn a
core and hold its heap until its call returns, so a flood of such scripts costs capacity
rather than the machine."""

_INLINE_MISSES: Final = 4096
"""Scripts remembered as too big to run inline, so they are not tried there again soon. By their
text, not their node: the 2,000 nodes of a fan-out that run one script pay one miss, not 2,000
(each a try of up to several milliseconds on the loop)."""
_INLINE_SLOW: Final = 0.0005
"""Seconds past which a run that fit the inline limits still counts as a miss: a script of a
millisecond or more (C calls, which the instruction count charges little, or data converted for
it) within the limits kept the loop busy for all 20,000 nodes of a run, where the workers would
have run them in parallel with it. Measured as ``wall_time`` misses are (``_SUSPECT``)."""
_INLINE_RETRY: Final = 60.0
"""Seconds before a chunk that went past the inline limits is tried inline again: one miss may
be the machine's (5 ms of wall time on a loaded one) or its inputs', not the script's, and a
trivial node that lost its place for good would cost several times more from then on."""

_SUSPECT: Final = -1.0
"""In place of the time to try a script inline again: its last run there went past the wall
time, or took longer than ``_INLINE_SLOW``, which a wait for the GIL or a core may have made:
the next run is tried inline, its CPU time measured, and the script goes to the workers for
``_INLINE_RETRY`` only if that run spent the time itself."""

_CLOSE_WAIT: Final = 1.0
"""Seconds close() waits for the workers; a script stops within about 10k instructions."""


def _cpu_clock() -> int | None:
    """The calling thread's CPU-time clock, for ``_thread_cpu_time``; None where there is none."""
    clock_of = getattr(time, "pthread_getcpuclockid", None)  # Unix only
    if clock_of is None:
        return None
    try:
        clock: int = clock_of(threading.get_ident())
    except OSError:
        return None
    return clock


def _thread_cpu_time(clock: int | None) -> float | None:
    """Seconds of CPU a worker's thread has spent, read from another thread (the watchdog's),
    or None where it cannot be: no CPU clock on this platform, or the thread has ended."""
    if clock is None:
        return None
    try:
        return time.clock_gettime(clock)
    except OSError:
        return None


class TaskFlag(Flag):
    """A task's ``cancel`` flag the pool also tells how long the task waited for a worker.

    ``waited`` is the time from its submission to a worker taking it during which every worker
    was in a run: the wait the engine's ``LUA_WORKERS`` being busy caused. A queued task whose
    worker was free but slow to come (a thread starved of a core) waited for the machine, not
    for a worker, and that wait is not in it.
    """

    __slots__ = ("waited",)

    def __init__(self) -> None:
        super().__init__()
        self.waited = 0.0
        """Seconds, set by the worker as it takes the task; 0.0 until then (or run inline)."""


Callback = Callable[[LuaOutcome | None], None]
"""Receives a task's outcome on the loop thread; None when the task was cancelled unrun."""


@dataclass(slots=True)
class _Job:
    task: LuaTask
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[LuaOutcome] | None = None
    callback: Callback | None = None
    busy_at: float = 0.0
    """The pool's ``_busy_clock`` when the job was queued (see ``TaskFlag.waited``)."""

    def dropped(self) -> bool:
        return self.future is not None and self.future.cancelled()


_Delivery = tuple[_Job, LuaOutcome | None]
"""An outcome for a job, or None to cancel it."""

NEVER_STARTED: Final = "deadline exceeded while waiting for a Lua worker (the script never started)"
"""The error of a task whose deadline passed while it was queued: no worker was free in time,
which says nothing of the script. Its ``cancel`` flag, if a ``Flag``, is not ``taken``."""

_REMEMBERED: Final = 1024
"""Runs with nothing queued whose turns ``_Turns`` keeps in mind for at most this many (see
``_Turns.take``)."""


@dataclass(slots=True, eq=False)
class _Lane:
    """One run's queued jobs, and where its turns are."""

    owner: Hashable
    turn: int
    """The turn of its first queued job; with none queued, the turn its next one would get."""
    jobs: deque[_Job] = field(default_factory=deque)


class _Turns:
    """Queued jobs by run, taken from the runs in turn (start-time fair queuing, each task
    costing one turn). Not thread-safe: the pool holds its queue lock around every call.

    A job's turn is the one after its run's previous job, but never before the turn being
    served (the turn of the job taken last), so a run that sat idle has banked no turns. Workers
    take the job of the lowest turn, the first queued among equals: runs with jobs queued take
    one each in turn, whatever their numbers, and a run that just took workers (its jobs
    running, none queued) is a turn ahead of one that got none, so the next free worker goes to
    the one that waited.
    """

    __slots__ = ("_emptied", "_heads", "_lanes", "_order", "queued", "turn")

    def __init__(self) -> None:
        self._lanes: dict[Hashable, _Lane] = {}
        self._heads: list[tuple[int, int, _Lane]] = []
        """A heap of the runs with jobs queued, by the turn of their first one."""
        self._order = count()  # equal turns go to the run queued first
        self._emptied: deque[tuple[int, _Lane]] = deque()
        """Runs left with nothing queued, and the turn their next job would get, oldest first."""
        self.turn = 0
        self.queued = 0

    def put(self, owner: Hashable, job: _Job) -> None:
        lane = self._lanes.get(owner)
        if lane is None:
            lane = self._lanes[owner] = _Lane(owner, self.turn)
        if not lane.jobs:
            if lane.turn < self.turn:
                lane.turn = self.turn
            heappush(self._heads, (lane.turn, next(self._order), lane))
        lane.jobs.append(job)
        self.queued += 1

    def take(self) -> _Job | None:
        heads = self._heads
        if not heads:
            return None
        turn, _, lane = heads[0]
        job = lane.jobs.popleft()
        self.queued -= 1
        self.turn = turn
        lane.turn = turn + 1
        if lane.jobs:
            heapreplace(heads, (turn + 1, next(self._order), lane))
            return job
        heappop(heads)
        # a run with nothing queued is forgotten once the turn served reaches its next one (a
        # new job of its own would get the turn served anyway), or, when many single-task runs
        # keep the turn still, past the _REMEMBERED latest: a turn's lead lost, no more
        emptied = self._emptied
        emptied.append((turn + 1, lane))
        while emptied and (emptied[0][0] <= turn or len(emptied) > _REMEMBERED):
            _, old = emptied.popleft()
            if (
                not old.jobs
                and (old.turn <= turn or len(emptied) >= _REMEMBERED)
                and self._lanes.get(old.owner) is old
            ):
                del self._lanes[old.owner]
        return job

    def clear(self) -> list[_Job]:
        """Empties the queue; returns what was in it."""
        jobs = [job for lane in self._lanes.values() for job in lane.jobs]
        self._lanes.clear()
        self._heads.clear()
        self._emptied.clear()
        self.queued = 0
        return jobs


@dataclass(slots=True, eq=False)
class _Worker:
    """A worker thread's sandbox and the run it is in, as the watchdog sees it."""

    sandbox: LuaSandbox
    name: str
    job: _Job | None = None
    due: float = 0.0
    """``time.monotonic()`` instant past which the run is past its time: its grace begins."""
    started: float = 0.0
    """``time.monotonic()`` instant the run began."""
    cancel_seen: float | None = None
    clock: int | None = None
    """The thread's CPU clock (``_cpu_clock``), set by the thread as it starts."""
    graced: bool = False
    """The watchdog has seen the run past its time or its cancel, and read ``grace_cpu``."""
    grace_cpu: float | None = None
    """The thread's CPU time when the watchdog first saw its grace begin; None: no CPU clock,
    the grace is wall time."""
    given_up: bool = False
    held: list[_Delivery] = field(default_factory=list)
    """Outcomes finished and not yet handed back (see ``_HOLD_SECONDS``): the watchdog hands
    them back itself when it gives up on the worker, since the thread is not coming back."""


class LuaPool:
    """Worker threads with one Lua sandbox each. ``submit`` and ``run`` are for the loop thread.

    Tasks name the run they belong to (``owner``): the workers take from the runs in turn.
    A task whose awaiting coroutine is cancelled, or whose ``cancel`` is set, is dropped if it
    has not started; one whose deadline passes before a worker is free ends without starting
    (``NEVER_STARTED``); a started one runs on until it ends (give the task a ``cancel`` event to
    stop it early). ``close`` stops running scripts and cancels what is still queued.
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
        self._turns = _Turns()
        self._turns_lock = threading.Lock()
        # one True per queued job, False to end a worker: the blocking wait stays the C queue's
        self._wake: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._closed = False
        self._lock = threading.Lock()
        self._pending: dict[asyncio.AbstractEventLoop, list[_Delivery]] = {}
        self._workers: list[_Worker] = []
        self._threads: list[threading.Thread] = []
        self._stuck: list[threading.Thread] = []  # given up, still in their call
        self._spawned = 0
        # how long every worker was in a run, as a clock read at a job's submission and at its
        # taking (TaskFlag.waited); under _turns_lock
        self._free = 0  # workers not in a run
        self._busy_total = 0.0  # seconds every worker was in a run, up to _busy_since
        self._busy_since = time.monotonic()  # when the last of them began one, if none is free
        for _ in range(count):
            self._start_worker(LuaSandbox(limits, stop=self._stop))
        self._watchdog = threading.Thread(target=self._watch, name="lua-watchdog", daemon=True)
        self._watchdog.start()
        self._inline: LuaSandbox | None = None
        if inline:
            # never more than the pool's own limits: a stricter pool stays as strict inline
            small = {k: min(v, getattr(limits, k)) for k, v in INLINE_LIMITS.items()}
            self._inline = LuaSandbox(
                replace(limits, **small), stop=self._stop, check_every=1, trial=True
            )
        # script text -> when to try it inline again, or _SUSPECT
        self._too_big: dict[str, float] = {}
        self.inline_runs = 0
        self.inline_misses = 0

    @property
    def workers(self) -> int:
        return len(self._workers)

    @property
    def queued(self) -> int:
        """Tasks waiting for a worker."""
        return self._turns.queued

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
        """Is ``worker`` in a run past its time, or past its cancel, by the grace: that much of
        its thread's CPU time spent since, or ``_STUCK_BACKSTOP`` times it of wall time?"""
        job = worker.job
        if job is None:
            return False
        since = self._grace_began(worker, job, now)
        if now < since:
            return False
        cpu = self._grace_cpu(worker)  # first: the first look past its time starts its count
        wall, grace = now - since, self._stuck_grace
        if cpu is None:  # no CPU clock here: wall time
            return wall >= grace
        return cpu >= grace or wall >= grace * _STUCK_BACKSTOP

    @staticmethod
    def _grace_began(worker: _Worker, job: _Job, now: float) -> float:
        """The instant ``worker``'s run went past its time or, sooner, past its cancel (seen by
        the watchdog at ``now`` if not before)."""
        since = worker.due
        cancel = job.task.cancel
        if cancel is not None and cancel.is_set():
            if worker.cancel_seen is None:
                worker.cancel_seen = now
            since = min(since, worker.cancel_seen)
        return since

    @staticmethod
    def _grace_cpu(worker: _Worker) -> float | None:
        """Seconds of CPU ``worker``'s thread spent since its grace began, as far as the
        watchdog saw; None where its CPU clock cannot be read.

        The first look past its time or cancel reads the clock where the grace counts from: a
        thread's CPU time cannot be read for an instant gone by, and the watchdog looks every
        ``_WATCH_EVERY`` only, so a run past its time (not its cancel, which is seen at a look)
        gets up to that much wall time more, never less. Cancels are the case under load.
        """
        if not worker.graced:
            worker.grace_cpu = _thread_cpu_time(worker.clock)
            worker.graced = True
            return None if worker.grace_cpu is None else 0.0
        if worker.grace_cpu is None:
            return None
        cpu = _thread_cpu_time(worker.clock)
        return None if cpu is None else cpu - worker.grace_cpu

    def _start_worker(self, sandbox: LuaSandbox) -> _Worker:
        worker = _Worker(sandbox, f"lua-worker-{self._spawned}")
        self._spawned += 1
        with self._turns_lock:
            self._one_free(time.monotonic())
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
        (its log lines are dropped with it). Every limit met here ends the run, one the script
        could catch too (a pattern refused as too costly: the inline sandbox is a ``trial``),
        so a script never sees a limit lower than a worker's; so does data it reads that would
        take long to convert (``TRIAL_DATA``), before converting it. A script that missed, or
        whose run here took longer than ``_INLINE_SLOW``, goes to the workers for a while.
        """
        sandbox = self._inline
        if sandbox is None or self._closed:
            return None
        script = task.code
        again = self._too_big.get(script)
        measured = False
        if again is not None:
            if again == _SUSPECT:
                measured = True
            elif time.monotonic() < again:
                return None
            else:
                del self._too_big[script]
        cpu = time.thread_time_ns() if measured else 0
        outcome = sandbox.run(task)
        limit = outcome.limit
        # the task's own deadline is as near on a worker: there it would only fail sooner
        if limit is None or limit == "cancelled" or limit == "deadline":
            self.inline_runs += 1
            if limit is None and outcome.duration > _INLINE_SLOW:
                # it fit, but slowly: this once it stands, and the next run is measured
                if not measured:
                    self._remember(script, _SUSPECT)
                elif time.thread_time_ns() - cpu > _INLINE_SLOW * 1e9:
                    self._remember(script, time.monotonic() + _INLINE_RETRY)
                else:
                    self._too_big.pop(script, None)
            elif measured:
                self._too_big.pop(script, None)
            return outcome
        self.inline_misses += 1
        if limit == "wall_time" and (
            not measured or time.thread_time_ns() - cpu < sandbox.limits.wall_time * 1e9
        ):
            # past the time, which may have been the machine's rather than the script's: this
            # thread waited for the GIL (a worker or gRPC's poller held it) or for a core. It
            # runs on a worker this once, and its next run is tried here again, its thread's
            # CPU time measured (a system call, spared the runs of chunks never suspected):
            # a trivial node sent to the workers for a minute over one such wait cost the
            # engine a quarter more CPU per run meanwhile (bench/engine_grpc.py)
            self._remember(script, _SUSPECT)
            return None
        self._remember(script, time.monotonic() + _INLINE_RETRY)
        return None

    def _remember(self, script: str, again: float) -> None:
        too_big = self._too_big
        if script not in too_big and len(too_big) >= _INLINE_MISSES:
            too_big.clear()
        too_big[script] = again

    def submit(self, task: LuaTask, *, owner: Hashable = None) -> asyncio.Future[LuaOutcome]:
        """Queues ``task`` in the turn of ``owner`` (the run it is for; tasks without one share
        a turn); the future resolves on this loop with its outcome."""
        if self._closed:
            raise RuntimeError("the LuaPool is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[LuaOutcome] = loop.create_future()
        self._put(owner, _Job(task, loop, future=future))
        return future

    def submit_callback(self, task: LuaTask, callback: Callback, *, owner: Hashable = None) -> None:
        """Queues ``task`` in the turn of ``owner``; ``callback`` gets its outcome on this
        loop's thread.

        The runner's path: a future costs an extra turn of the event loop per outcome (its
        done-callbacks are scheduled, not called), which is most of a trivial node's cost.
        """
        if self._closed:
            raise RuntimeError("the LuaPool is closed")
        self._put(owner, _Job(task, asyncio.get_running_loop(), callback=callback))

    def _put(self, owner: Hashable, job: _Job) -> None:
        with self._turns_lock:
            job.busy_at = self._busy_clock(time.monotonic())
            self._turns.put(owner, job)
        self._wake.put(True)

    # the pool's busy clock, under _turns_lock: it runs while every worker is in a run

    def _busy_clock(self, now: float) -> float:
        """Seconds every worker was in a run, over the pool's life up to ``now``."""
        if self._free:
            return self._busy_total
        return self._busy_total + (now - self._busy_since)

    def _one_busy(self, now: float) -> None:
        self._free -= 1
        if not self._free:
            self._busy_since = now

    def _one_free(self, now: float) -> None:
        if not self._free:
            self._busy_total += now - self._busy_since
        self._free += 1

    async def run(self, task: LuaTask, *, owner: Hashable = None) -> LuaOutcome:
        return await self.submit(task, owner=owner)

    def close(self) -> None:
        """Stops the workers: running scripts end as cancelled, queued tasks are cancelled."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        with self._turns_lock:
            queued = self._turns.clear()
        for job in queued:
            self._deliver(job, None)
        for _ in self._threads:
            self._wake.put(False)
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
        worker.clock = _cpu_clock()
        sandbox = worker.sandbox
        held_since = 0.0
        while True:
            held = worker.held
            if held and (
                self._wake.empty()
                or len(held) >= _HOLD_MAX
                or time.monotonic() - held_since >= _HOLD_SECONDS
            ):
                worker.held = []
                self._deliver_all(held)
                held = worker.held
            if not self._wake.get():
                self._deliver_all(held)
                return
            with self._turns_lock:
                job = self._turns.take()
                if job is None:  # close() took it
                    continue
                # the clock is read under the lock, so the busy clock's readings are in order
                now = time.monotonic()
                waited = self._busy_clock(now) - job.busy_at
                self._one_busy(now)  # until it turns out not to run, rarely
            task = job.task
            closing = self._stop.is_set()
            skipped = None if closing else self._unstarted(task, now)
            if closing or skipped is not None or job.dropped():
                with self._turns_lock:
                    self._one_free(time.monotonic())
                if closing or skipped is not None:
                    if not held:
                        held_since = now
                    held.append((job, skipped))  # None while closing: cancelled unrun
                continue  # or dropped: a benign race, at worst the task runs for nothing
            cancel = task.cancel
            if isinstance(cancel, Flag):
                cancel.taken = True
                if isinstance(cancel, TaskFlag):
                    cancel.waited = waited
            due = now + self.limits.wall_time
            if task.deadline is not None:
                due = min(due, task.deadline)
            worker.due, worker.cancel_seen, worker.started = due, None, now
            worker.graced, worker.grace_cpu = False, None
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
            with self._turns_lock:
                now = time.monotonic()
                self._one_free(now)
            if not held:
                held_since = now
            held.append((job, outcome))

    @staticmethod
    def _unstarted(task: LuaTask, now: float) -> LuaOutcome | None:
        """How a task ends that a worker takes too late to start: cancelled while queued, or
        past its deadline (a run started now would stop at once, looking like the script's
        fault). None: start it."""
        cancel = task.cancel
        if cancel is not None and cancel.is_set():
            return LuaOutcome(False, None, "cancelled", None, [], 0.0, limit="cancelled")
        if task.deadline is not None and now >= task.deadline:
            return LuaOutcome(False, None, NEVER_STARTED, None, [], 0.0, limit="deadline")
        return None

    def _watch(self) -> None:
        """Gives up on workers whose run went past its time, or its cancel, by the grace."""
        while not self._stop.wait(_WATCH_EVERY):
            self._look(time.monotonic())

    def _look(self, now: float) -> None:
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
        since, what = worker.due, "time"
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
        cpu = self._grace_cpu(worker)
        logger.warning(
            "Lua worker %s gave up on %s: still in one call %.1f s past its %s%s (a call the "
            "sandbox cannot interrupt); a new worker takes its place",
            worker.name,
            task.key,
            late,
            what,
            "" if cpu is None else f", {cpu:.1f} s of CPU time in it since",
        )
        fresh = LuaSandbox(self.limits, stop=self._stop)  # a few ms: not under the lock
        with self._lock:  # close() decides under the lock too: no worker starts after it
            if not self._closed:
                self._start_worker(fresh)
        note = " (stuck in one call the sandbox cannot interrupt)"
        self._deliver_all(held)
        ran = now - worker.started
        self._deliver(job, LuaOutcome(False, None, message + note, None, [], ran, limit=limit))

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
