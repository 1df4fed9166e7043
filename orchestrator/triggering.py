"""Triggers: cron schedules and HTTP endpoints that start executions.

Each trigger implements ``Trigger`` (id, type, start, stop, is_active, describe); cron and HTTP
are two kinds, and a new kind plugs in beside them. ``Triggers`` holds them all, keeps them in
step with the store (triggers made through the API) and the registry (those of each workflow's
latest spec), and answers the API.

The one idea: a cron slot fires at most once. Its row in ``trigger_fires`` (unique per trigger
and scheduled instant) is written in the same durable transaction as the execution it starts,
before that run is dispatched; a slot skipped or missed gets its row too. After a restart the
newest row of each trigger says where its schedule stands, and the slots since then get the
trigger's catch-up policy. Slot arithmetic is the pure ``orchestrator.schedule``; ``CronLoop``
sleeps until the earliest next slot of all triggers (a heap) and never polls them.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import hmac
import itertools
import json
import logging
import re
import secrets
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Final, Protocol, TypeVar, cast

import grpc

from engine.core.errors import EngineError, SpecError
from engine.core.events import isoformat
from engine.core.spec import CronTrigger as CronSpec
from engine.core.spec import HttpTrigger as HttpSpec
from engine.core.spec import WorkflowSpec
from engine.core.values import JSON, JSONObject
from engine.inputs import TRIGGER_KEY, check_inputs
from orchestrator.errors import (
    NotFound,
    OrchestratorError,
    StoreUnavailable,
    refuse_trigger_inputs,
)
from orchestrator.schedule import (
    Catchup,
    Overlap,
    Schedule,
    ScheduleError,
    overlap_action,
    plan_catchup,
)
from orchestrator.store import SlotTaken, Store, StoredTrigger, TriggerFire, WorkflowDeleted
from orchestrator.versions import Registry

log = logging.getLogger(__name__)

T = TypeVar("T")

TRIGGER_ID: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_REARM_CHUNK: Final = 16
"""Triggers re-armed between two yields to the event loop after a burst of fires."""
STORE_RETRIES: Final = (1.0, 2.0, 4.0, 8.0, 16.0)
"""Seconds between tries of a slot the store could not take (a full disk); after the last,
the slot stays undecided and the next start's catch-up sees it."""
LATE_GRACE: Final = 30.0
"""A slot the loop reaches later than this (the process stalled, the machine slept) is treated
as missed: the trigger's catch-up policy decides, as after downtime."""
UPCOMING: Final = 3
"""Next fire times shown per cron trigger."""
SIGNATURE_HEADERS: Final = ("X-Signature-256", "X-Hub-Signature-256")
_CREATE_FIELDS: Final = (
    "id",
    "workflow_id",
    "version",
    "cron",
    "timezone",
    "overlap",
    "catchup",
    "inputs",
    "paused",
)
_OVERLAPS: Final = ("skip", "allow", "cancel_previous")
_CATCHUPS: Final = ("none", "latest", "all")
_RUNNING: Final = frozenset({"queued", "running"})


# -- errors -----------------------------------------------------------------------------------


class InvalidTrigger(OrchestratorError):
    http_status = 400
    code = "invalid_trigger"
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class TriggerConflict(OrchestratorError):
    """An id or HTTP path already taken, or a change a spec trigger does not allow."""

    http_status = 409
    code = "trigger_conflict"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class TriggerPaused(OrchestratorError):
    http_status = 409
    code = "trigger_paused"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class TriggerUnauthorized(OrchestratorError):
    http_status = 401
    code = "unauthorized"
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class TriggerForbidden(OrchestratorError):
    http_status = 403
    code = "forbidden"
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class TriggerSecretMissing(OrchestratorError):
    """The spec names an environment variable the orchestrator was not started with."""

    http_status = 503
    code = "trigger_secret_missing"
    grpc_code = grpc.StatusCode.UNAVAILABLE


# -- what the triggers need from the orchestrator ----------------------------------------------


class Host(Protocol):
    store: Store
    registry: Registry

    async def execute(
        self,
        workflow_id: str,
        *,
        inputs: JSON,
        version: str | None,
        idempotency_key: str | None,
        wait: float | None,
        fire: TriggerFire | None = None,
        brief: bool = False,
        default_version: str | None = None,
        by_trigger: bool = False,
    ) -> tuple[JSONObject, bool]: ...
    async def cancel_run(self, execution_id: str, reason: str) -> None: ...
    def publish(self, events: list[JSONObject]) -> None: ...


# -- the interface ----------------------------------------------------------------------------


class Trigger(ABC):
    """Something that starts executions of one workflow. ``start`` arms it, ``stop`` disarms
    it; a paused trigger stays known (listed, resumable) but inactive."""

    type: ClassVar[str]

    def __init__(self, row: StoredTrigger) -> None:
        self.id = row.id
        self.workflow_id = row.workflow_id
        self.source = row.source
        self.version = row.version
        self.paused = row.paused
        self.since = row.since
        self.created_at = row.created_at
        self._started = False

    @abstractmethod
    async def start(self, now: float | None = None) -> None:
        """Begin serving; ``now``: the instant slots up to which are decided already (the
        catch-up's), by default the clock's."""

    @abstractmethod
    async def stop(self) -> None: ...

    async def settled(self) -> None:
        """Returns once nothing this trigger began is still being recorded (after ``stop``:
        what it recorded can then be deleted with the rest of it)."""
        return None  # an HTTP trigger records nothing of its own: its runs are the callers'

    def is_active(self) -> bool:
        return self._started and not self.paused

    def describe(self, now: float) -> JSONObject:
        return {
            "id": self.id,
            "type": self.type,
            "workflow_id": self.workflow_id,
            "version": self.version,
            "source": self.source,
            "paused": self.paused,
            "active": self.is_active(),
            "created_at": isoformat(self.created_at),
        }


class CronTrigger(Trigger):
    type = "cron"

    def __init__(self, row: StoredTrigger, loop: CronLoop) -> None:
        super().__init__(row)
        config = row.config
        self.cron = str(config["cron"])
        self.timezone = str(config.get("timezone") or "UTC")
        self.overlap = cast(Overlap, config.get("overlap") or "skip")
        self.catchup = cast(Catchup, config.get("catchup") or "latest")
        inputs = config.get("inputs")
        self.inputs: JSONObject = inputs if isinstance(inputs, dict) else {}
        self.schedule = Schedule(self.cron, self.timezone)
        self.last_slot = row.last_slot
        self.last_execution_id = row.last_execution_id
        self.next_slot: float | None = None
        self.undecided: float | None = None
        """The first slot given up on while the store refused writes, not yet decided."""
        self.lock = asyncio.Lock()  # one slot at a time, in order
        self._loop = loop

    @property
    def anchor(self) -> float:
        """Slots after this instant are still to be decided."""
        return max(self.since, self.last_slot or 0.0)

    async def start(self, now: float | None = None) -> None:
        self._started = True
        if not self.paused:
            self._loop.arm(self, self._loop.clock() if now is None else now)

    async def stop(self) -> None:
        self._started = False
        self.next_slot = None  # its heap entry is dropped when reached

    async def settled(self) -> None:
        async with self.lock:  # a slot being decided is recorded first
            pass

    def describe(self, now: float) -> JSONObject:
        doc = super().describe(now)
        upcoming: list[JSON] = (
            [isoformat(t) for t in self.schedule.upcoming(max(now, self.anchor), UPCOMING)]
            if not self.paused
            else []
        )
        doc.update(
            {
                "cron": self.cron,
                "timezone": self.timezone,
                "overlap": self.overlap,
                "catchup": self.catchup,
                "inputs": self.inputs,
                "next_fire_times": upcoming,
                "last_scheduled_time": isoformat(self.last_slot),
                "last_execution_id": self.last_execution_id,
            }
        )
        return doc


def as_sent(text: str) -> bytes:
    """A header's (or an environment variable's) text as the bytes that were sent: those that
    are not UTF-8 arrive as surrogates, which a plain ``encode()`` refuses with an error."""
    return text.encode("utf-8", "surrogateescape")


class HttpTrigger(Trigger):
    """A spec's ``http.path``: its own auth (a bearer token or an HMAC of the body, from the
    environment variable the spec names); without either, the API token rule applies."""

    type = "http"

    def __init__(self, row: StoredTrigger, routes: dict[str, HttpTrigger]) -> None:
        super().__init__(row)
        config = row.config
        self.path = str(config["path"])
        self.bearer_env = _opt_str(config.get("bearer_env"))
        self.hmac_env = _opt_str(config.get("hmac_env"))
        self.raw_body = bool(config.get("raw_body"))
        self._routes = routes

    async def start(self, now: float | None = None) -> None:
        self._started = True
        self._routes[self.path] = self

    async def stop(self) -> None:
        self._started = False
        if self._routes.get(self.path) is self:
            del self._routes[self.path]

    def describe(self, now: float) -> JSONObject:
        doc = super().describe(now)
        auth = "bearer" if self.bearer_env else "hmac" if self.hmac_env else None
        doc.update(
            {
                "path": self.path,
                "auth": auth,
                "secret_env": self.bearer_env or self.hmac_env,
                "raw_body": self.raw_body,
            }
        )
        return doc

    def authenticate(
        self,
        headers: Mapping[str, str],
        body: bytes,
        environ: Mapping[str, str],
        api_token: str | None,
    ) -> str | None:
        """Refuse the request unless it carries what this trigger asks for: 401 when nothing
        was sent, 403 when it does not match; compared in constant time. Returns the body's
        signature when the trigger signs (``hmac_env``), else None."""
        if self.hmac_env is not None:
            key = self._secret(self.hmac_env, environ)
            given = next((headers[h] for h in SIGNATURE_HEADERS if headers.get(h)), "")
            if not given:
                raise TriggerUnauthorized(
                    f"{self.path} needs an X-Signature-256: sha256=<hex> header, the "
                    "HMAC-SHA256 of the body"
                )
            scheme, _, digest = given.strip().partition("=")
            expected = hmac.new(as_sent(key), body, hashlib.sha256).hexdigest()
            if scheme.lower() != "sha256" or not hmac.compare_digest(
                as_sent(digest.strip().lower()), expected.encode()
            ):
                raise TriggerForbidden(f"the signature does not match the body sent to {self.path}")
            return expected
        token = self._secret(self.bearer_env, environ) if self.bearer_env is not None else api_token
        if token is None:
            return None
        scheme, _, given = headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise TriggerUnauthorized(f"{self.path} needs Authorization: Bearer <token>")
        if not hmac.compare_digest(as_sent(given.strip()), as_sent(token)):
            raise TriggerForbidden(f"the bearer token is not valid for {self.path}")
        return None

    def _secret(self, name: str, environ: Mapping[str, str]) -> str:
        # Stripped, as API_TOKEN is: a secret made from a file (kubectl create secret
        # --from-file) ends in a newline no client sends, and would never match.
        value = (environ.get(name) or "").strip()
        if not value:
            raise TriggerSecretMissing(
                f"the trigger on {self.path} reads its secret from the environment variable "
                f"{name}, which is not set on the orchestrator: nothing is accepted here until "
                "it is",
                {"variable": name, "path": self.path},
            )
        return value


def _opt_str(value: JSON) -> str | None:
    return value if isinstance(value, str) and value else None


# -- the cron loop ----------------------------------------------------------------------------


class CronLoop:
    """Sleeps until the earliest next slot of every armed cron trigger (a heap).

    An entry is live while its slot is its trigger's ``next_slot``: disarming or re-arming a
    trigger leaves the old entry behind, to be dropped when it comes up. ``on_due`` is told of
    each slot reached (it starts the fire) and ``next_slot`` says what comes after it (or None).
    """

    def __init__(
        self,
        on_due: Callable[[CronTrigger, float, float], None],
        next_slot: Callable[[CronTrigger, float, float], float | None],
        clock: Callable[[], float] = time.time,
        recheck: float = 30.0,
    ) -> None:
        self.clock = clock
        self.recheck = recheck
        """The longest wait between looks at the clock. Slots are wall-clock times, but the
        wait runs on the monotonic clock, which does not see the wall clock set forward and
        stops while the machine is suspended: without this, a slot passed that way would
        fire (or be caught up) only when the old wait ran out, up to a day late."""
        self._on_due = on_due
        self._next_slot = next_slot
        self._heap: list[tuple[float, int, CronTrigger]] = []
        self._order = itertools.count()
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._heap)

    def arm(self, trigger: CronTrigger, after: float) -> None:
        """Schedule the first slot of ``trigger`` after ``after`` (and after its anchor)."""
        try:
            slot = trigger.schedule.next_after(max(after, trigger.anchor))
        except ScheduleError as exc:
            log.warning("trigger %s will not fire again: %s", trigger.id, exc)
            trigger.next_slot = None
            return
        self.push(trigger, slot)

    def push(self, trigger: CronTrigger, slot: float) -> None:
        trigger.next_slot = slot
        first = self._heap[0][0] if self._heap else None
        heapq.heappush(self._heap, (slot, next(self._order), trigger))
        if first is None or slot < first:
            self._changed.set()  # the sleeper wakes sooner

    def run_due(self, now: float) -> int:
        """Hand every slot at or before ``now`` to ``on_due`` and re-arm each trigger;
        returns how many."""
        due = self._take_due(now)
        for trigger, slot in due:
            self._rearm(trigger, slot, now)
        return len(due)

    def _take_due(self, now: float) -> list[tuple[CronTrigger, float]]:
        heap = self._heap
        due: list[tuple[CronTrigger, float]] = []
        while heap and heap[0][0] <= now:
            slot, _, trigger = heapq.heappop(heap)
            if trigger.next_slot != slot or not trigger.is_active():
                continue  # stale: the trigger was paused, re-armed or removed
            due.append((trigger, slot))
            self._on_due(trigger, slot, now)
        return due

    def _rearm(self, trigger: CronTrigger, slot: float, now: float) -> None:
        if trigger.next_slot != slot or not trigger.is_active():
            return  # paused, or re-armed by someone else, since its slot came up
        upcoming = self._next_slot(trigger, slot, now)
        if upcoming is None:
            trigger.next_slot = None
        else:
            self.push(trigger, upcoming)

    def next_wake(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    async def run(self) -> None:
        while True:
            now = self.clock()
            due = self._take_due(now)
            if due:
                # The fires go first: each runs up to its store write, and the writes commit
                # on the store's thread while the next slots are worked out here (cron
                # arithmetic costs about as much as a fire). Yielding now and then lets fires
                # whose commit is back finish, so the last fire of a burst is not held behind
                # the arithmetic of all the others.
                await asyncio.sleep(0)
                for i, (trigger, slot) in enumerate(due):
                    self._rearm(trigger, slot, now)
                    if i % _REARM_CHUNK == _REARM_CHUNK - 1:
                        await asyncio.sleep(0)
            self._changed.clear()
            wake = self.next_wake()
            delay = None if wake is None else min(self.recheck, max(0.0, wake - self.clock()))
            try:
                await asyncio.wait_for(self._changed.wait(), delay)
            except TimeoutError:
                pass


# -- all of them -------------------------------------------------------------------------------


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:8]


def spec_trigger_rows(spec: WorkflowSpec, now: float) -> list[StoredTrigger]:
    """The triggers a spec declares, as rows. Ids are stable across versions: a named cron
    trigger is ``<workflow>:<name>``, others are keyed by their schedule and zone (cron) or
    path (http), so a new version that keeps a schedule keeps its history and paused state.
    Unnamed cron triggers sharing a schedule and zone are told apart by the rest of their
    settings, never by their place: removing one must not hand its id, history and paused
    state to another."""
    schedules = Counter(
        (t.cron, t.timezone) for t in spec.triggers if isinstance(t, CronSpec) and not t.id
    )
    rows: list[StoredTrigger] = []
    taken: set[str] = set()
    for t in spec.triggers:
        config: JSONObject
        if isinstance(t, CronSpec):
            kind = "cron"
            config = {
                "cron": t.cron,
                "timezone": t.timezone,
                "overlap": t.overlap,
                "catchup": t.catchup,
                "inputs": t.inputs,
            }
            key = t.id or f"cron-{_short_hash(t.cron, t.timezone)}"
            if not t.id and schedules[t.cron, t.timezone] > 1:
                key += f"-{_short_hash(_canon(config))}"
        else:
            assert isinstance(t, HttpSpec)
            key, kind = f"http-{_short_hash(t.path)}", "http"
            config = {
                "path": t.path,
                "bearer_env": t.bearer_env,
                "hmac_env": t.hmac_env,
                "raw_body": t.raw_body,
            }
        tid = f"{spec.id}:{key}"
        n = 2
        while tid in taken:  # the very same trigger twice: either may have either id
            tid, n = f"{spec.id}:{key}-{n}", n + 1
        taken.add(tid)
        rows.append(
            StoredTrigger(tid, spec.id, kind, "spec", spec.version, config, False, now, now)
        )
    return rows


_PLACE: Final = re.compile(r"-([2-9]|[1-9][0-9]+)")


def _twin_place(row: StoredTrigger) -> int | None:
    """Where an unnamed spec cron trigger stands among those of its spec that share its id
    stem (1, 2, 3 ... in the spec's order), read from its id; None for any other trigger.
    Ids of both schemes are read: ``cron-<schedule>[-N]`` from before c12de23, where N counted
    every unnamed trigger of the schedule, and ``cron-<schedule>[-<settings>][-N]`` since."""
    cron, zone = row.config.get("cron"), row.config.get("timezone")
    if row.source != "spec" or row.kind != "cron":
        return None
    if not isinstance(cron, str) or not isinstance(zone, str):
        return None
    rest = row.id.removeprefix(f"{row.workflow_id}:cron-{_short_hash(cron, zone)}")
    if rest == row.id:
        return None  # a named one: its name is its identity
    rest = rest.removeprefix(f"-{_short_hash(_canon(row.config))}")
    if not rest:
        return 1
    place = _PLACE.fullmatch(rest)
    return int(place.group(1)) if place else None


def spec_trigger_renames(
    stored: Iterable[StoredTrigger], wanted: Sequence[StoredTrigger]
) -> dict[str, str]:
    """Stored ids of one workflow's spec triggers that are to move to a wanted id, old to new.

    An unnamed cron trigger's id says whether its schedule is shared and, before c12de23, its
    place among those sharing it, so the same trigger gets another id when the scheme changed
    (an upgrade) or when a trigger joins or leaves its schedule. One whose id is not wanted
    but whose settings are those of a wanted unnamed one that is not stored yet is that
    trigger: it keeps its paused state, its ``since`` (catch-up) and its history under the new
    id. Triggers with the very same settings pair up in order, the old numbering's to the
    spec's, which is the order either scheme numbered them in. Named, HTTP and API triggers
    are never moved."""
    wanted_ids = {row.id for row in wanted}
    leaving: dict[str, list[tuple[int, str]]] = {}
    stored_ids: set[str] = set()
    for row in stored:
        stored_ids.add(row.id)
        place = _twin_place(row)
        if row.id not in wanted_ids and place is not None:
            leaving.setdefault(_canon(row.config), []).append((place, row.id))
    for places in leaving.values():
        places.sort(reverse=True)  # popped from the end: the lowest place first
    renames: dict[str, str] = {}
    for row in wanted:
        olds = leaving.get(_canon(row.config))
        if olds and row.id not in stored_ids and _twin_place(row) is not None:
            renames[olds.pop()[1]] = row.id
    return renames


class Triggers:
    """Every trigger of the orchestrator, the cron loop, and the trigger API behind HTTP/gRPC."""

    def __init__(
        self,
        host: Host,
        *,
        environ: Mapping[str, str] | None = None,
        api_token: str | None = None,
        catchup_limit: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.host = host
        self.store = host.store
        self.environ: Mapping[str, str] = environ or {}
        self.api_token = api_token
        self.catchup_limit = catchup_limit
        self.clock = clock
        self.loop = CronLoop(self._due, self._after, clock)
        self._triggers: dict[str, Trigger] = {}
        self._routes: dict[str, HttpTrigger] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._seq = itertools.count(1)
        self._lock = asyncio.Lock()  # API changes one at a time

    # -- life -------------------------------------------------------------------------------

    async def start(self, *, run_loop: bool = True) -> None:
        """Load the triggers, bring spec triggers in line with the registry, catch up on
        slots missed while down, and start the loop (tests drive ``tick`` instead)."""
        now = self.clock()
        stored = await self.store.load_triggers()
        by_workflow: dict[str, list[StoredTrigger]] = {}
        for row in stored:
            if row.source == "spec":
                by_workflow.setdefault(row.workflow_id, []).append(row)
        syncs = []
        for workflow_id in self.host.registry.workflow_ids():
            try:
                spec = self.host.registry.resolve_spec(workflow_id, "latest")
            except SpecError:
                # stored under older checks that today's refuse (logged as the registry
                # loaded): its triggers stay as stored, and the runs they start are refused
                by_workflow.pop(workflow_id, None)
                continue
            wanted = spec_trigger_rows(spec, now)
            mine = by_workflow.pop(workflow_id, [])
            have = {(r.id, r.version, _canon(r.config)) for r in mine}
            if have != {(r.id, r.version, _canon(r.config)) for r in wanted}:
                renames = spec_trigger_renames(mine, wanted)
                syncs.append(self.store.sync_spec_triggers(workflow_id, wanted, renames))
        for workflow_id in by_workflow:  # spec rows of a workflow the registry lacks
            syncs.append(self.store.sync_spec_triggers(workflow_id, []))
        if syncs:
            await asyncio.gather(*syncs)
            stored = await self.store.load_triggers()
        for row in stored:
            trigger = self._build(row)
            if trigger is None:
                continue
            self._triggers[trigger.id] = trigger
            if isinstance(trigger, CronTrigger) and not trigger.paused:
                self._catch_up(trigger, now)
            # armed from the instant the catch-up reached, not a later clock reading: a slot
            # between the two would be neither caught up nor fired
            await trigger.start(now)
        if run_loop:
            self._runner = asyncio.get_running_loop().create_task(self.loop.run())
        log.info(
            "%d triggers (%d cron armed, %d paused, %d HTTP paths)",
            len(self._triggers),
            sum(1 for t in self._triggers.values() if isinstance(t, CronTrigger) and not t.paused),
            sum(1 for t in self._triggers.values() if t.paused),
            len(self._routes),
        )

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        for trigger in list(self._triggers.values()):
            await trigger.stop()
        if self._tasks:
            # a fire in the middle of its store write is let finish: its slot is then decided
            _, pending = await asyncio.wait(self._tasks, timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def tick(self, now: float | None = None) -> int:
        """Fire what is due at ``now`` and wait for it: the loop's step, for tests."""
        count = self.loop.run_due(self.clock() if now is None else now)
        await self.settle()
        return count

    async def settle(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _build(self, row: StoredTrigger) -> Trigger | None:
        try:
            if row.kind == "cron":
                return CronTrigger(row, self.loop)
            if row.kind == "http":
                return HttpTrigger(row, self._routes)
        except (ScheduleError, KeyError) as exc:
            log.error("trigger %s cannot be loaded: %s", row.id, exc)
            return None
        log.error("trigger %s is of an unknown kind %r", row.id, row.kind)
        return None

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.get_running_loop().create_task(cast(Any, work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- registrations ----------------------------------------------------------------------

    def missing_secrets(self, spec: WorkflowSpec) -> list[str]:
        """What to warn of a spec whose HTTP triggers read a secret from a variable this
        orchestrator was not started with: registered, such a trigger refuses every delivery
        (503) until the variable is set, which the environment, read once at start, takes a
        restart for. Said when the spec is registered, not first at its first delivery."""
        warnings: list[str] = []
        for t in spec.triggers:
            if not isinstance(t, HttpSpec):
                continue
            name = t.bearer_env or t.hmac_env
            if name is not None and not (self.environ.get(name) or "").strip():
                warnings.append(
                    f"the trigger on {t.path} reads its secret from {name}, which is not set on "
                    "the orchestrator: its deliveries are refused (503) until it is set and the "
                    "orchestrator restarted"
                )
        return warnings

    def check_spec(self, spec: WorkflowSpec) -> None:
        """Refuse a spec whose HTTP path another workflow serves (a path named twice in one
        spec is a spec problem, refused before this)."""
        for t in spec.triggers:
            if isinstance(t, HttpSpec):
                owner = self._routes.get(t.path)
                if owner is not None and owner.workflow_id != spec.id:
                    raise TriggerConflict(
                        f"the HTTP trigger path {t.path} is already served by workflow "
                        f"{owner.workflow_id}",
                        {"path": t.path, "workflow": owner.workflow_id},
                    )
            elif isinstance(t, CronSpec):
                try:
                    Schedule(t.cron, t.timezone)
                except ScheduleError as exc:
                    raise InvalidTrigger(str(exc), {"cron": t.cron}) from exc

    async def version_registered(self, spec: WorkflowSpec) -> None:
        """A new latest version: its triggers replace the workflow's spec triggers. One kept
        (same id, or an unnamed one with the same settings whose id changed as a trigger
        joined or left its schedule) keeps its history and paused state and does not catch
        up."""
        async with self._lock:
            now = self.clock()
            wanted = spec_trigger_rows(spec, now)
            # the rows as stored, not the triggers held here: their settings as stored are
            # what tells a trigger that only changed its id
            stored = await self.store.load_triggers(spec_of=spec.id)
            renames = spec_trigger_renames(stored, wanted)
            ids = {r.id for r in wanted}
            leaving = [
                t
                for t in self._triggers.values()
                if t.workflow_id == spec.id and t.source == "spec" and t.id not in ids
            ]
            rows = await self._without(
                leaving, lambda: self.store.sync_spec_triggers(spec.id, wanted, renames)
            )
            for row in rows:
                old = self._triggers.pop(row.id, None)
                if old is not None:
                    await old.stop()
                new = self._build(row)
                if new is not None:
                    self._triggers[new.id] = new
                    await new.start()

    async def workflow_deleted(
        self, workflow_id: str, write: Callable[[], Awaitable[WorkflowDeleted]]
    ) -> WorkflowDeleted:
        """A workflow being deleted: its triggers (of its spec and made through the API) are
        stopped, a slot being decided let finish, before ``write`` deletes their rows; they
        go on as they were if it fails."""
        async with self._lock:
            leaving = [t for t in self._triggers.values() if t.workflow_id == workflow_id]
            deleted = await self._without(leaving, write)
            for trigger in leaving:
                log.info("trigger %s deleted with workflow %s", trigger.id, workflow_id)
            return deleted

    async def _without(self, leaving: list[Trigger], write: Callable[[], Awaitable[T]]) -> T:
        """``write`` (which deletes the rows of ``leaving``) once they are stopped and their
        last slot recorded, so none of their history outlives them (a later trigger of the
        same id would inherit it); they go on as they were if it fails, and are forgotten
        if it succeeds."""
        for trigger in leaving:
            await trigger.stop()
            await trigger.settled()
        try:
            done = await write()
        except BaseException:
            for trigger in leaving:
                await trigger.start()
            raise
        for trigger in leaving:
            del self._triggers[trigger.id]
        return done

    # -- the API ----------------------------------------------------------------------------

    def listing(self, workflow_id: str | None = None, limit: int = 500) -> list[JSONObject]:
        """By workflow and id, at most ``limit``."""
        return self.page(workflow_id, limit)[0]

    def page(
        self, workflow_id: str | None, limit: int, after: str | None = None
    ) -> tuple[list[JSONObject], str | None]:
        """By workflow and id, at most ``limit`` past the cursor ``after`` (computing next fire
        times costs, so a page is bounded), and the cursor of the next page when more follow.
        A cursor is ``<workflow>/<trigger id>``; InvalidTrigger when ``after`` is not one."""
        now = self.clock()
        start: tuple[str, str] | None = None
        if after is not None:
            found_workflow, slash, found_id = after.partition("/")
            if not slash or not found_workflow or not found_id:
                raise InvalidTrigger(
                    f"after must be a cursor such as next_after gives, got {after[:80]!r}",
                    {"field": "after"},
                )
            start = (found_workflow, found_id)
        chosen = sorted(
            (
                t
                for t in self._triggers.values()
                if workflow_id in (None, t.workflow_id)
                and (start is None or (t.workflow_id, t.id) > start)
            ),
            key=lambda t: (t.workflow_id, t.id),
        )
        shown = chosen[:limit]
        more = len(chosen) > limit
        return (
            [t.describe(now) for t in shown],
            f"{shown[-1].workflow_id}/{shown[-1].id}" if more else None,
        )

    def get(self, trigger_id: str) -> JSONObject:
        return self._find(trigger_id).describe(self.clock())

    def _find(self, trigger_id: str) -> Trigger:
        trigger = self._triggers.get(trigger_id)
        if trigger is None:
            raise NotFound(f"no trigger {trigger_id!r}", {"trigger": trigger_id})
        return trigger

    async def create(self, body: JSON) -> JSONObject:
        """A cron trigger made through the API (spec triggers come with their workflow)."""
        row = self._validate_create(body)
        # no API lock: the store's insert decides a race for one id, and creations made at
        # once share commits
        if row.id in self._triggers or not await self.store.create_trigger(row):
            raise TriggerConflict(f"a trigger with id {row.id!r} exists", {"trigger": row.id})
        trigger = self._build(row)
        assert trigger is not None
        self._triggers[trigger.id] = trigger
        await trigger.start()
        log.info("trigger %s created for %s", trigger.id, trigger.workflow_id)
        return trigger.describe(self.clock())

    def _validate_create(self, body: JSON) -> StoredTrigger:
        if not isinstance(body, dict):
            raise InvalidTrigger(
                'the body must be a JSON object: {"workflow_id": ..., "cron": ...}'
            )
        unknown = sorted(set(body) - set(_CREATE_FIELDS))
        if unknown:
            raise InvalidTrigger(
                f"unknown field(s) {', '.join(unknown)}", {"allowed": list(_CREATE_FIELDS)}
            )

        def text(name: str, default: str | None = None) -> str | None:
            value = body.get(name, default)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise InvalidTrigger(f"{name} must be a non-empty string", {"field": name})
            return value

        workflow_id = text("workflow_id")
        cron = text("cron")
        if workflow_id is None or cron is None:
            raise InvalidTrigger(
                "workflow_id and cron are required", {"fields": ["workflow_id", "cron"]}
            )
        version = text("version", "latest")
        # 404 / 400 before anything is stored
        spec = self.host.registry.resolve_spec(workflow_id, version)
        timezone = text("timezone", "UTC") or "UTC"
        try:
            Schedule(cron, timezone).next_after(self.clock())
        except ScheduleError as exc:
            field = "timezone" if "time zone" in str(exc) else "cron"
            raise InvalidTrigger(str(exc), {"field": field}) from exc
        overlap = text("overlap", "skip")
        if overlap not in _OVERLAPS:
            raise InvalidTrigger(
                f"overlap must be one of {', '.join(_OVERLAPS)}, got {overlap!r}",
                {"field": "overlap"},
            )
        catchup = text("catchup", "latest")
        if catchup not in _CATCHUPS:
            raise InvalidTrigger(
                f"catchup must be one of {', '.join(_CATCHUPS)}, got {catchup!r}",
                {"field": "catchup"},
            )
        inputs = body.get("inputs")
        if inputs is None:
            inputs = {}  # null is none, as for a run's inputs
        if not isinstance(inputs, dict):
            raise InvalidTrigger("inputs must be a JSON object", {"field": "inputs"})
        if TRIGGER_KEY in inputs:
            raise InvalidTrigger(
                f"inputs.{TRIGGER_KEY} is set by the trigger as it fires: leave it out",
                {"field": f"inputs.{TRIGGER_KEY}"},
            )
        # what every slot would be refused for is refused once, now (422 like a trigger's)
        check_inputs(spec, inputs)
        paused = body.get("paused", False)
        if not isinstance(paused, bool):
            raise InvalidTrigger("paused must be true or false", {"field": "paused"})
        tid = text("id") or f"{workflow_id}.{secrets.token_hex(4)}"
        if not TRIGGER_ID.fullmatch(tid):
            raise InvalidTrigger(
                f"id must match [a-z0-9][a-z0-9._-]{{0,62}}, got {tid!r}", {"field": "id"}
            )
        now = self.clock()
        config: JSONObject = {
            "cron": cron,
            "timezone": timezone,
            "overlap": overlap,
            "catchup": catchup,
            "inputs": inputs,
        }
        return StoredTrigger(tid, workflow_id, "cron", "api", version, config, paused, now, now)

    async def pause(self, trigger_id: str) -> JSONObject:
        async with self._lock:
            trigger = self._find(trigger_id)
            if not trigger.paused:
                await self.store.set_trigger_paused(trigger_id, True, self.clock())
                trigger.paused = True
                if isinstance(trigger, CronTrigger):
                    trigger.next_slot = None
            log.info("trigger %s paused", trigger_id)
            return trigger.describe(self.clock())

    async def resume(self, trigger_id: str) -> JSONObject:
        """Slots that passed while paused stay unfired: the schedule resumes from now."""
        async with self._lock:
            trigger = self._find(trigger_id)
            if trigger.paused:
                now = self.clock()
                await self.store.set_trigger_paused(trigger_id, False, now)
                trigger.paused = False
                trigger.since = now
                if isinstance(trigger, CronTrigger) and trigger.is_active():
                    self.loop.arm(trigger, now)
            log.info("trigger %s resumed", trigger_id)
            return trigger.describe(self.clock())

    async def delete(self, trigger_id: str) -> JSONObject:
        async with self._lock:
            trigger = self._find(trigger_id)
            if trigger.source == "spec":
                raise TriggerConflict(
                    f"trigger {trigger_id} comes from the spec of {trigger.workflow_id}@"
                    f"{trigger.version}: pause it, or register a version without it",
                    {"trigger": trigger_id, "workflow": trigger.workflow_id},
                )
            await self._without([trigger], lambda: self.store.delete_trigger(trigger_id))
            log.info("trigger %s deleted", trigger_id)
            return {"id": trigger_id, "deleted": True}

    async def history(self, trigger_id: str, limit: int = 50) -> list[JSONObject]:
        self._find(trigger_id)
        return await self.store.trigger_history(trigger_id, limit)

    # -- HTTP -------------------------------------------------------------------------------

    def route(self, path: str) -> HttpTrigger | None:
        """The HTTP trigger serving ``path`` (a trailing slash is ignored), if any."""
        found = self._routes.get(path)
        if found is None and len(path) > 1 and path.endswith("/"):
            found = self._routes.get(path.rstrip("/"))
        return found

    async def call(
        self,
        trigger: HttpTrigger,
        *,
        inputs: JSON,
        version: str | None,
        idempotency_key: str | None,
        wait: float | None,
    ) -> tuple[JSONObject, bool]:
        """Start a run for an authenticated request to ``trigger``'s path."""
        if trigger.paused:
            raise TriggerPaused(f"the trigger on {trigger.path} is paused", {"trigger": trigger.id})
        now = self.clock()
        # the same word whether the hook adds its own or passes the body on as it came
        refuse_trigger_inputs(inputs)
        if isinstance(inputs, dict) and not trigger.raw_body:
            inputs = {
                **inputs,
                "_trigger": {
                    "type": "http",
                    "id": trigger.id,
                    "scheduled_time": None,
                    "fired_at": isoformat(now),
                },
            }
        doc, created = await self.host.execute(
            trigger.workflow_id,
            inputs=inputs,
            version=version,
            default_version=trigger.version,
            idempotency_key=idempotency_key,
            wait=wait,
            brief=True,
            by_trigger=True,
        )
        if created:
            self._publish(
                "trigger.fired",
                "info",
                trigger,
                version=str(doc.get("version") or "") or None,
                data={"execution_id": doc.get("id"), "path": trigger.path},
            )
        return doc, created

    # -- firing -----------------------------------------------------------------------------

    def _due(self, trigger: CronTrigger, slot: float, now: float) -> None:
        """The loop reached ``slot``: fire it, or when far behind, catch up."""
        if now - slot > LATE_GRACE:
            self._spawn(self._catch_up_slots(trigger, since=slot - 0.5, now=now))
        else:
            self._spawn(self._fire_in_turn(trigger, slot))

    def _after(self, trigger: CronTrigger, slot: float, now: float) -> float | None:
        """What comes after ``slot`` (after ``now`` when the loop was far behind: the slots
        between are the catch-up's)."""
        try:
            return trigger.schedule.next_after(now if now - slot > LATE_GRACE else slot)
        except ScheduleError as exc:
            log.warning("trigger %s will not fire again: %s", trigger.id, exc)
            return None

    def _catch_up(self, trigger: CronTrigger, now: float) -> None:
        """At start: slots between the trigger's anchor and now get its catch-up policy. The
        task takes the trigger's lock before the loop can fire the next slot."""
        try:
            behind = trigger.schedule.next_after(trigger.anchor) <= now
        except ScheduleError:
            return
        if behind:
            self._spawn(self._catch_up_slots(trigger, since=trigger.anchor, now=now))

    async def _catch_up_slots(self, trigger: CronTrigger, *, since: float, now: float) -> None:
        async with trigger.lock:
            await self._catch_up_or_leave(trigger, since=since, now=now)

    async def _catch_up_or_leave(self, trigger: CronTrigger, *, since: float, now: float) -> None:
        """``_catch_up_locked``; when the store fails it, the slots are left undecided."""
        try:
            await self._catch_up_locked(trigger, since=since, now=now)
        except StoreUnavailable as exc:
            # its missed row not stored, its slots are not decided: the trigger's next
            # slot decides them with it by the catch-up policy (as ``_fire`` does)
            self._undecided(trigger, since)
            log.error(
                "trigger %s could not catch up its slots since %s: %s (its next slot, or the "
                "next start, decides them by the catch-up policy)",
                trigger.id,
                isoformat(since),
                exc.message,
            )
        except Exception:
            # as in ``_fire``: the slots stay undecided in the store, for a restart's catch-up
            log.exception(
                "trigger %s could not catch up its slots since %s", trigger.id, isoformat(since)
            )

    @staticmethod
    def _undecided(trigger: CronTrigger, since: float) -> None:
        """Slots after ``since`` were given up on: ``_fire`` looks again from ``undecided``
        less half a second, so a slot at ``since`` itself (decided) is not taken again."""
        first = since + 0.5
        if trigger.undecided is None or first < trigger.undecided:
            trigger.undecided = first

    async def _catch_up_locked(self, trigger: CronTrigger, *, since: float, now: float) -> None:
        """The trigger's catch-up policy over the slots after ``since`` up to ``now``; the
        caller holds the trigger's lock."""
        plan = plan_catchup(
            trigger.schedule, trigger.catchup, since=since, now=now, bound=self.catchup_limit
        )
        if plan.missed and plan.last_missed is not None:
            detail: JSONObject = {
                "count": plan.missed,
                "exact": plan.exact,
                "first_missed": isoformat(plan.first_missed),
                "last_missed": isoformat(plan.last_missed),
                "catchup": trigger.catchup,
                "firing": len(plan.fire),
            }
            fire = TriggerFire(trigger.id, plan.last_missed, self.clock())
            if await self.store.record_slot(fire, "missed", detail):
                self._publish(
                    "trigger.missed", "warning", trigger, slot=plan.last_missed, data=detail
                )
                log.warning(
                    "trigger %s missed %s%d slots (catchup %s)",
                    trigger.id,
                    "" if plan.exact else "at least ",
                    plan.missed,
                    trigger.catchup,
                )
            trigger.last_slot = max(trigger.last_slot or 0.0, plan.last_missed)
        for slot in plan.fire:
            await self._fire(trigger, slot, catchup=True)

    async def _fire_in_turn(self, trigger: CronTrigger, slot: float) -> None:
        async with trigger.lock:
            await self._fire(trigger, slot)

    async def _fire(self, trigger: CronTrigger, slot: float, *, catchup: bool = False) -> None:
        """Decide one slot (under the trigger's lock): fire, skip, or cancel-and-fire."""
        if not trigger.is_active() or (trigger.last_slot is not None and slot <= trigger.last_slot):
            return
        now = self.clock()
        if not catchup and trigger.undecided is not None:
            # A slot before this one was given up while the store refused writes. Firing
            # this one would store a later slot and hide it from every catch-up: it goes
            # through the catch-up policy with this one instead, as after downtime.
            first = min(trigger.undecided, slot)
            trigger.undecided = None  # a fire given up on in the catch-up sets it again
            try:
                await self._catch_up_locked(trigger, since=first - 0.5, now=now)
            except StoreUnavailable as exc:
                # still refused: this slot joins the undecided ones, for the next to decide
                trigger.undecided = min(first, trigger.undecided or first)
                log.error(
                    "trigger %s could not decide its slots since %s: %s (its next slot, or the "
                    "next start, decides them by the catch-up policy)",
                    trigger.id,
                    isoformat(first),
                    exc.message,
                )
                return
            return
        if not catchup and now - slot > LATE_GRACE:
            # its turn came too late (slots queued behind one the store would not take, or a
            # stalled loop): the catch-up policy decides, as after downtime, not a burst of
            # stale runs
            await self._catch_up_or_leave(trigger, since=slot - 0.5, now=now)
            return
        for delay in (*STORE_RETRIES, None):
            try:
                await self._decide(trigger, slot, catchup)
                return
            except StoreUnavailable as exc:
                if delay is None or not trigger.is_active():
                    log.error(
                        "trigger %s could not fire its slot at %s: %s (its next slot, or the "
                        "next start, decides it by the catch-up policy)",
                        trigger.id,
                        isoformat(slot),
                        exc.message,
                    )
                    if trigger.undecided is None or slot < trigger.undecided:
                        trigger.undecided = slot
                    return
                log.warning(
                    "trigger %s waits %s s to fire its slot at %s: %s",
                    trigger.id,
                    delay,
                    isoformat(slot),
                    exc.message,
                )
                await asyncio.sleep(delay)
            except Exception:
                # the slot stays undecided in the store; a restart's catch-up will see it
                log.exception(
                    "trigger %s could not fire its slot at %s", trigger.id, isoformat(slot)
                )
                return

    async def _decide(self, trigger: CronTrigger, slot: float, catchup: bool) -> None:
        previous = trigger.last_execution_id
        running = False
        if previous is not None and trigger.overlap != "allow":
            running = await self.store.execution_status(previous) in _RUNNING
        action = overlap_action(trigger.overlap, running)
        now = self.clock()
        fire = TriggerFire(trigger.id, slot, now)
        if action == "skip":
            detail: JSONObject = {"reason": "previous run still going", "execution_id": previous}
            if await self.store.record_slot(fire, "skipped", detail):
                self._publish("trigger.skipped", "warning", trigger, slot=slot, data=detail)
            trigger.last_slot = slot
            return
        if action == "cancel_previous" and previous is not None:
            reason = f"cancelled by trigger {trigger.id}: its slot at {isoformat(slot)} is due"
            self._spawn(self._cancel(previous, reason))
        inputs: JSONObject = {
            **trigger.inputs,
            "_trigger": {
                "type": "cron",
                "id": trigger.id,
                "scheduled_time": isoformat(slot),
                "fired_at": isoformat(now),
            },
        }
        try:
            doc, _ = await self.host.execute(
                trigger.workflow_id,
                inputs=inputs,
                version=trigger.version,
                idempotency_key=None,
                wait=None,
                fire=fire,
                by_trigger=True,
            )
        except SlotTaken:
            trigger.last_slot = slot  # decided before (by a previous process): never again
            return
        except StoreUnavailable:
            raise  # not the run's fault: the slot is tried again (``_fire``)
        except (OrchestratorError, EngineError) as exc:
            # refused (no such version any more, inputs, queue full): the slot is decided
            message = exc.message if isinstance(exc, OrchestratorError) else str(exc)
            detail = {"reason": "refused", "error": message}
            if await self.store.record_slot(fire, "failed", detail):
                self._publish("trigger.missed", "error", trigger, slot=slot, data=detail)
            trigger.last_slot = slot
            return
        trigger.last_slot = slot
        trigger.last_execution_id = str(doc["id"])
        self._publish(
            "trigger.fired",
            "info",
            trigger,
            slot=slot,
            version=str(doc.get("version")),
            data={
                "execution_id": doc["id"],
                "fired_at": isoformat(now),
                "lag_ms": round((now - slot) * 1000, 3),
                "catchup": catchup,
                "cancelled_previous": previous if action == "cancel_previous" else None,
            },
        )

    async def _cancel(self, execution_id: str, reason: str) -> None:
        try:
            await self.host.cancel_run(execution_id, reason)  # no document wanted back
        except OrchestratorError as exc:
            log.warning("could not cancel %s: %s", execution_id, exc.message)

    def _publish(
        self,
        kind: str,
        severity: str,
        trigger: Trigger,
        *,
        slot: float | None = None,
        version: str | None = None,
        data: JSONObject,
    ) -> None:
        # not bound to an execution: the run a fire started is named in data, so the per-run
        # seq of that execution's timeline is not mixed with this counter
        event: JSONObject = {
            "seq": next(self._seq),
            "time": isoformat(self.clock()),
            "type": kind,
            "severity": severity,
            "workflow_id": trigger.workflow_id,
            "version": version,
            "execution_id": None,
            "node_id": None,
            "engine_id": None,
            "attempt": None,
            "data": {
                "trigger_id": trigger.id,
                "trigger_type": trigger.type,
                "scheduled_time": isoformat(slot),
                **data,
            },
        }
        self.host.publish([event])


def _canon(config: JSONObject) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"))
