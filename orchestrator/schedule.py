"""Cron arithmetic: when a schedule fires, from a moment given in, never from the clock.

The one idea: a cron expression names *wall-clock* times in its zone, and a slot is a wall-clock
time, so it fires at most once. croniter walks the wall clock (naive datetimes, no zone), and
this module maps each wall time to the instant it happens:

- a wall time that happens twice (the repeated hour on the fall-back day) fires at its first
  occurrence only; from inside the second pass, the rest of the repeated hour is skipped;
- a wall time that does not exist (the hour skipped on the spring-forward day) fires at the
  first valid instant after the gap, once: every slot in the gap and a slot at the gap's end
  share that instant, and instants are deduplicated.

Instants go in and out as float Unix seconds (UTC). Expressions: 5 fields (minute hour
day-of-month month day-of-week), 6 with seconds first, or @yearly, @annually, @monthly,
@weekly, @daily, @midnight, @hourly. ``plan_catchup`` and ``overlap_action`` decide what a
trigger does with slots passed while the orchestrator was down and with a run still going.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Final, Literal

from croniter import CroniterError

from engine.spec_checks import CronError, cron_iterator, never_fires

Overlap = Literal["skip", "allow", "cancel_previous"]
Catchup = Literal["none", "latest", "all"]
OverlapAction = Literal["fire", "skip", "cancel_previous"]

# zones whose offset never changes: wall time is UTC time plus nothing, no mapping needed
_FIXED_UTC: Final = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/GMT", "GMT", "Zulu"})
_MAX_STEPS: Final = 100_000
"""Wall times tried for one answer at most; only a pathological zone/expression pair gets near."""
_SCAN_LIMIT: Final = 2_000
"""Past slots walked forward one by one at start-up, per trigger; past that, counted at least."""


class ScheduleError(ValueError):
    """A cron expression or time zone that cannot be used; the message names it."""


@lru_cache(maxsize=1024)
def _zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as exc:
        # OSError: a name too long for a file name, or a directory of zones ("America")
        raise ScheduleError(
            f"unknown time zone {name!r}: use an IANA name like Europe/Berlin or UTC"
        ) from exc


def _epoch(when: datetime) -> float:
    return when.timestamp()


class Schedule:
    """One cron expression in one zone. Not thread-safe (it keeps a croniter cursor)."""

    __slots__ = ("_fixed", "_iter", "_zone", "expression", "timezone")

    def __init__(self, expression: str, timezone: str = "UTC") -> None:
        self.expression = expression
        self.timezone = timezone
        self._zone = _zone(timezone)
        self._fixed = timezone in _FIXED_UTC
        try:
            self._iter = cron_iterator(expression)
        except CronError as exc:
            raise ScheduleError(str(exc)) from exc

    def __repr__(self) -> str:
        return f"Schedule({self.expression!r}, {self.timezone!r})"

    # -- wall time <-> instants -------------------------------------------------------------

    def _wall(self, instant: float) -> datetime:
        """The naive local wall time of ``instant``."""
        return datetime.fromtimestamp(instant, self._zone).replace(tzinfo=None)

    def _ambiguous(self, wall: datetime) -> bool:
        a = wall.replace(tzinfo=self._zone, fold=0).utcoffset()
        b = wall.replace(tzinfo=self._zone, fold=1).utcoffset()
        return a != b

    def instant_of(self, wall: datetime) -> float:
        """When the naive wall time ``wall`` happens: its first occurrence when it happens
        twice, the end of the gap when it does not happen at all."""
        if self._fixed:
            return _epoch(wall.replace(tzinfo=UTC))
        first = _epoch(wall.replace(tzinfo=self._zone, fold=0))
        if self._wall(first) == wall:
            return first
        # In a gap, fold=0 reads the wall time with the offset from before the jump, which
        # lands after the jump; fold=1 reads it with the offset after, which lands before it.
        # The jump is between the two: find the first second whose wall time is past ``wall``.
        lo = int(_epoch(wall.replace(tzinfo=self._zone, fold=1)))
        hi = int(first) + 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self._wall(mid) > wall:
                hi = mid
            else:
                lo = mid + 1
        return float(lo)

    def _end_of_repeat(self, instant: float) -> datetime:
        """Inside the second pass of a repeated hour: the wall time at which it ends."""
        wall = self._wall(instant)
        before = wall.replace(tzinfo=self._zone, fold=0).utcoffset()
        after = wall.replace(tzinfo=self._zone, fold=1).utcoffset()
        assert before is not None and after is not None
        lo, hi = int(instant), int(instant + (before - after).total_seconds()) + 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self._ambiguous(self._wall(mid)):
                lo = mid + 1
            else:
                hi = mid
        return self._wall(lo)

    # -- the answers ------------------------------------------------------------------------

    def next_after(self, after: float) -> float:
        """The first slot strictly after the instant ``after``."""
        if self._fixed:
            start = datetime.fromtimestamp(after, UTC).replace(tzinfo=None)
        else:
            local = datetime.fromtimestamp(after, self._zone)
            start = local.replace(tzinfo=None)
            if local.fold == 1 and self._ambiguous(start):
                # every slot left in the repeated hour fired on its first pass, before now
                start = self._end_of_repeat(after) - timedelta(microseconds=1)
        self._iter.set_current(start, force=True)
        try:
            for _ in range(_MAX_STEPS):
                slot = self.instant_of(self._iter.get_next(datetime))
                if slot > after:
                    return slot
        except CroniterError as exc:
            raise ScheduleError(never_fires(self.expression, exc)) from exc
        raise ScheduleError(f"cron {self.expression!r} found no slot in {_MAX_STEPS} steps")

    def latest_at_or_before(self, when: float) -> float | None:
        """The last slot at or before the instant ``when``; None when there is none."""
        if self._fixed:
            start = datetime.fromtimestamp(when, UTC).replace(tzinfo=None)
        else:
            local = datetime.fromtimestamp(when, self._zone)
            start = local.replace(tzinfo=None)
            if local.fold == 1 and self._ambiguous(start):
                # the whole repeated hour already fired on its first pass
                start = self._end_of_repeat(when) - timedelta(microseconds=1)
        self._iter.set_current(start + timedelta(microseconds=1), force=True)
        try:
            for _ in range(_MAX_STEPS):
                slot = self.instant_of(self._iter.get_prev(datetime))
                if slot <= when:
                    return slot
        except CroniterError:
            return None
        return None

    def upcoming(self, after: float, count: int) -> list[float]:
        """The next ``count`` slots after ``after``, in order."""
        out: list[float] = []
        at = after
        for _ in range(count):
            try:
                at = self.next_after(at)
            except ScheduleError:
                break
            out.append(at)
        return out


def schedule_problem(
    expression: str, timezone: str = "UTC", now: float = 946684800.0
) -> str | None:
    """Why ``expression`` cannot be used (bad syntax, or it never fires), or None."""
    try:
        Schedule(expression, timezone).next_after(now)
    except ScheduleError as exc:
        return str(exc)
    return None


# -- what to do with slots --------------------------------------------------------------------


def overlap_action(policy: Overlap, previous_running: bool) -> OverlapAction:
    """A slot is due: fire it, skip it, or cancel the run still going and then fire it."""
    if not previous_running or policy == "allow":
        return "fire"
    return "skip" if policy == "skip" else "cancel_previous"


@dataclass(frozen=True, slots=True)
class CatchUp:
    """What a trigger does with the slots that passed while nothing watched them."""

    fire: tuple[float, ...]
    """Slots to fire now, oldest first."""
    missed: int
    """Slots passed over without firing (a lower bound when ``exact`` is false)."""
    exact: bool
    first_missed: float | None
    last_missed: float | None


def plan_catchup(
    schedule: Schedule, policy: Catchup, *, since: float, now: float, bound: int
) -> CatchUp:
    """Slots in (since, now] and the policy: none fires nothing, latest the most recent one,
    all the most recent ``bound`` ones; the rest are missed.

    The walk forward is bounded: after a long outage of a frequent schedule the missed count
    is a lower bound, and the slots to fire are found walking back from ``now``.
    """
    past: list[float] = []
    at = since
    exact = True
    while True:
        try:
            slot = schedule.next_after(at)
        except ScheduleError:
            break
        if slot > now:
            break
        if len(past) >= _SCAN_LIMIT:
            exact = False
            break
        past.append(slot)
        at = slot
    if not past:
        return CatchUp((), 0, True, None, None)
    keep = {"none": 0, "latest": 1, "all": max(0, bound)}[policy]
    if exact:
        fire = past[len(past) - keep :] if keep else []
        missed = past[: len(past) - len(fire)]
        return CatchUp(
            tuple(fire),
            len(missed),
            True,
            missed[0] if missed else None,
            missed[-1] if missed else None,
        )
    # too many to walk: the ones to fire are the newest, found walking back from now
    fire = []
    cursor = now
    while len(fire) < keep:
        found = schedule.latest_at_or_before(cursor)
        if found is None or found <= since:
            break
        fire.append(found)
        cursor = found - 0.5  # slots are whole seconds apart at the least
    fire.reverse()
    last_missed = schedule.latest_at_or_before(cursor)
    # the slots walked forward may reach the newest ones, which fire: not missed
    passed_over = sum(1 for slot in past if not fire or slot < fire[0])
    return CatchUp(tuple(fire), passed_over, False, past[0], last_missed)
