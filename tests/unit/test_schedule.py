"""The pure cron core: every field form, macros, zones, DST days, overlap and catch-up rules.

Time is an argument everywhere (a fake clock is just a number), so each answer is exact.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.spec_checks import cron_problem
from orchestrator.schedule import (
    Schedule,
    ScheduleError,
    overlap_action,
    plan_catchup,
    schedule_problem,
)

BERLIN = ZoneInfo("Europe/Berlin")


def at(*parts: int, tz: ZoneInfo | None = None) -> float:
    return datetime(*parts, tzinfo=tz or UTC).timestamp()  # type: ignore[misc]


def utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def local(ts: float, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M:%S %Z")


def next_n(expr: str, start: float, n: int, tz: str = "UTC") -> list[str]:
    return [utc(t) for t in Schedule(expr, tz).upcoming(start, n)]


START = at(2026, 1, 1)  # a Thursday, midnight UTC


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("* * * * *", ["2026-01-01 00:01:00", "2026-01-01 00:02:00", "2026-01-01 00:03:00"]),
        ("*/15 * * * *", ["2026-01-01 00:15:00", "2026-01-01 00:30:00", "2026-01-01 00:45:00"]),
        ("5,35 * * * *", ["2026-01-01 00:05:00", "2026-01-01 00:35:00", "2026-01-01 01:05:00"]),
        ("10-12 3 * * *", ["2026-01-01 03:10:00", "2026-01-01 03:11:00", "2026-01-01 03:12:00"]),
        ("0 9-17/4 * * *", ["2026-01-01 09:00:00", "2026-01-01 13:00:00", "2026-01-01 17:00:00"]),
        ("0 0 * * MON", ["2026-01-05 00:00:00", "2026-01-12 00:00:00", "2026-01-19 00:00:00"]),
        ("0 0 * * 1-5", ["2026-01-02 00:00:00", "2026-01-05 00:00:00", "2026-01-06 00:00:00"]),
        ("0 0 1 FEB,MAR *", ["2026-02-01 00:00:00", "2026-03-01 00:00:00", "2027-02-01 00:00:00"]),
        ("0 0 L * *", ["2026-01-31 00:00:00", "2026-02-28 00:00:00", "2026-03-31 00:00:00"]),
        ("0 0 * * 1#2", ["2026-01-12 00:00:00", "2026-02-09 00:00:00", "2026-03-09 00:00:00"]),
        ("0 12 29 2 *", ["2028-02-29 12:00:00", "2032-02-29 12:00:00", "2036-02-29 12:00:00"]),
        # six fields: seconds first
        ("*/20 * * * * *", ["2026-01-01 00:00:20", "2026-01-01 00:00:40", "2026-01-01 00:01:00"]),
        ("30 0 * * * *", ["2026-01-01 00:00:30", "2026-01-01 01:00:30", "2026-01-01 02:00:30"]),
        ("0 0 12 * * SUN", ["2026-01-04 12:00:00", "2026-01-11 12:00:00", "2026-01-18 12:00:00"]),
    ],
)
def test_field_forms(expr: str, expected: list[str]) -> None:
    assert next_n(expr, START, 3) == expected


@pytest.mark.parametrize(
    ("macro", "first", "second"),
    [
        ("@hourly", "2026-01-01 01:00:00", "2026-01-01 02:00:00"),
        ("@daily", "2026-01-02 00:00:00", "2026-01-03 00:00:00"),
        ("@midnight", "2026-01-02 00:00:00", "2026-01-03 00:00:00"),
        ("@weekly", "2026-01-04 00:00:00", "2026-01-11 00:00:00"),
        ("@monthly", "2026-02-01 00:00:00", "2026-03-01 00:00:00"),
        ("@yearly", "2027-01-01 00:00:00", "2028-01-01 00:00:00"),
        ("@annually", "2027-01-01 00:00:00", "2028-01-01 00:00:00"),
        ("@HOURLY", "2026-01-01 01:00:00", "2026-01-01 02:00:00"),
    ],
)
def test_macros(macro: str, first: str, second: str) -> None:
    assert next_n(macro, START, 2) == [first, second]


def test_next_is_strictly_after_and_sub_second_moments_round_up() -> None:
    s = Schedule("* * * * * *")
    assert utc(s.next_after(START)) == "2026-01-01 00:00:01"
    assert utc(s.next_after(START + 0.999)) == "2026-01-01 00:00:01"
    assert utc(s.next_after(START + 1)) == "2026-01-01 00:00:02"


def test_time_zones_shift_the_instant() -> None:
    assert next_n("0 9 * * *", START, 1, "America/New_York") == ["2026-01-01 14:00:00"]
    assert next_n("0 9 * * *", START, 1, "Asia/Kolkata") == ["2026-01-01 03:30:00"]
    assert next_n("0 9 * * *", START, 1, "Europe/Berlin") == ["2026-01-01 08:00:00"]
    # the same wall time in summer is an hour earlier in UTC
    assert next_n("0 9 * * *", at(2026, 7, 1), 1, "Europe/Berlin") == ["2026-07-01 07:00:00"]


# -- DST: Europe/Berlin, 2026: spring forward 29 March 02:00 -> 03:00, fall back 25 October
# 03:00 -> 02:00


def test_fall_back_a_slot_in_the_repeated_hour_fires_once() -> None:
    s = Schedule("30 2 * * *", "Europe/Berlin")
    slots = s.upcoming(at(2026, 10, 24, 12), 3)
    assert [local(t, BERLIN) for t in slots] == [
        "2026-10-25 02:30:00 CEST",  # the first of the two 02:30s
        "2026-10-26 02:30:00 CET",
        "2026-10-27 02:30:00 CET",
    ]
    assert [utc(t) for t in slots][:2] == ["2026-10-25 00:30:00", "2026-10-26 01:30:00"]


def test_fall_back_from_inside_the_second_pass_skips_the_rest_of_the_repeat() -> None:
    s = Schedule("*/30 * * * *", "Europe/Berlin")
    second_pass = datetime(2026, 10, 25, 2, 10, tzinfo=BERLIN, fold=1).timestamp()
    assert [local(t, BERLIN) for t in s.upcoming(second_pass, 2)] == [
        "2026-10-25 03:00:00 CET",
        "2026-10-25 03:30:00 CET",
    ]
    # and the last slot at or before a moment in the second pass is the first pass's
    assert local(s.latest_at_or_before(second_pass) or 0, BERLIN) == "2026-10-25 02:30:00 CEST"


class CountingCursor:
    """A cron cursor that counts the slots it is asked for."""

    def __init__(self, cursor: Any) -> None:
        self.cursor = cursor
        self.steps = 0

    def set_current(self, start: datetime, force: bool) -> None:
        self.cursor.set_current(start, force=force)

    def get_next(self, kind: type[datetime]) -> datetime:
        self.steps += 1
        return self.cursor.get_next(kind)  # type: ignore[no-any-return]


def test_from_the_second_pass_the_next_slot_is_found_without_walking_the_repeat() -> None:
    s = Schedule("* * * * * *", "Europe/Berlin")
    cursor = CountingCursor(s._iter)
    s._iter = cursor
    second_pass = datetime(2026, 10, 25, 2, 0, 1, tzinfo=BERLIN, fold=1).timestamp()
    assert local(s.next_after(second_pass), BERLIN) == "2026-10-25 03:00:00 CET"
    assert cursor.steps == 1  # not one per second of the hour that already fired


def test_fall_back_every_slot_of_the_day_fires_once() -> None:
    s = Schedule("*/15 * * * *", "Europe/Berlin")
    day = s.upcoming(at(2026, 10, 24, 22, 0), 200)
    walls = [datetime.fromtimestamp(t, BERLIN).replace(tzinfo=None) for t in day]
    assert len(walls) == len(set(walls)) == 200
    assert day == sorted(day)
    # each quarter-hour of the 25-hour day once, the repeated hour on its first pass
    assert walls[:95] == [datetime(2026, 10, 25) + timedelta(minutes=15 * i) for i in range(1, 96)]
    assert [local(t, BERLIN) for t in day[7:12]] == [
        "2026-10-25 02:00:00 CEST",
        "2026-10-25 02:15:00 CEST",
        "2026-10-25 02:30:00 CEST",
        "2026-10-25 02:45:00 CEST",
        "2026-10-25 03:00:00 CET",
    ]


def test_spring_forward_a_missing_time_fires_once_at_the_next_valid_instant() -> None:
    s = Schedule("30 2 * * *", "Europe/Berlin")
    slots = s.upcoming(at(2026, 3, 28, 12), 3)
    assert [local(t, BERLIN) for t in slots] == [
        "2026-03-29 03:00:00 CEST",
        "2026-03-30 02:30:00 CEST",
        "2026-03-31 02:30:00 CEST",
    ]


def test_spring_forward_slots_in_the_gap_and_at_its_end_share_one_instant() -> None:
    s = Schedule("*/20 * * * *", "Europe/Berlin")
    slots = s.upcoming(at(2026, 3, 29, 0, 30), 4)  # 01:30 CET
    assert [local(t, BERLIN) for t in slots] == [
        "2026-03-29 01:40:00 CET",
        "2026-03-29 03:00:00 CEST",  # 02:00, 02:20, 02:40 and 03:00: once
        "2026-03-29 03:20:00 CEST",
        "2026-03-29 03:40:00 CEST",
    ]
    assert s.latest_at_or_before(slots[1]) == slots[1]
    assert s.latest_at_or_before(slots[1] - 1) == slots[0]


@settings(max_examples=200, deadline=None)
@given(
    start=st.integers(min_value=int(at(2026, 1, 1)), max_value=int(at(2028, 12, 31))),
    expr=st.sampled_from(["*/7 * * * *", "30 2 * * *", "0 */3 * * *", "15 1-3 * * *"]),
    zone=st.sampled_from(["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC"]),
)
def test_slots_increase_and_no_wall_time_fires_twice(start: int, expr: str, zone: str) -> None:
    s = Schedule(expr, zone)
    tz = ZoneInfo(zone)
    slots = s.upcoming(float(start), 40)
    assert all(a < b for a, b in itertools.pairwise(slots))
    assert slots[0] > start
    walls = [datetime.fromtimestamp(t, tz).replace(tzinfo=None) for t in slots]
    assert len(set(walls)) == len(walls)
    # walking back from each slot finds that slot, and nothing between it and the one before
    for before, slot in itertools.pairwise(slots):
        assert s.latest_at_or_before(slot) == slot
        assert s.latest_at_or_before(slot - 0.5) == before


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("* * *", "has 3 fields: use 5"),
        ("* * * * * * *", "has 7 fields"),
        ("61 * * * *", "cron '61 * * * *': minute field '61' is out of range 0-59"),
        ("0 0 * * * 8", "cron '0 0 * * * 8': weekday field '8' is out of range 0-7"),
        ("*/0 * * * *", "minute field '*/0' has step '0'"),
        ("a b c d e", "cron 'a b c d e': minute field 'a' is not a number 0-59"),
        ("H * * * *", "cron 'H * * * *' is not valid: Hashed definitions must include hash_id"),
        ("@fortnightly", "unknown cron macro '@fortnightly'"),
        # croniter's own words ("failed to find next date") said nothing of why
        ("0 0 30 2 *", "never fires: no date has its day of month in its months (30 February"),
    ],
)
def test_bad_expressions_say_why(expr: str, message: str) -> None:
    problem = cron_problem(expr)
    assert problem is not None and message in problem
    with pytest.raises(ScheduleError, match=r"cron|macro"):
        Schedule(expr).next_after(START)


def test_bad_zone() -> None:
    assert schedule_problem("@hourly", "Mars/Olympus") == (
        "unknown time zone 'Mars/Olympus': use an IANA name like Europe/Berlin or UTC"
    )


# -- what to do with slots -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "running", "action"),
    [
        ("skip", False, "fire"),
        ("skip", True, "skip"),
        ("allow", True, "fire"),
        ("cancel_previous", True, "cancel_previous"),
        ("cancel_previous", False, "fire"),
    ],
)
def test_overlap(policy: str, running: bool, action: str) -> None:
    assert overlap_action(policy, running) == action  # type: ignore[arg-type]


MINUTELY = Schedule("* * * * *")


def test_catchup_nothing_missed() -> None:
    plan = plan_catchup(MINUTELY, "latest", since=START, now=START + 59, bound=10)
    assert plan.fire == () and plan.missed == 0


@pytest.mark.parametrize(
    ("policy", "bound", "fire", "missed"),
    [
        ("none", 10, [], 5),
        ("latest", 10, [5], 4),
        ("all", 10, [1, 2, 3, 4, 5], 0),
        ("all", 2, [4, 5], 3),
    ],
)
def test_catchup_policies(policy: str, bound: int, fire: list[int], missed: int) -> None:
    plan = plan_catchup(MINUTELY, policy, since=START, now=START + 330, bound=bound)  # type: ignore[arg-type]
    assert plan.fire == tuple(START + 60 * m for m in fire)
    assert plan.missed == missed and plan.exact
    if missed:
        assert plan.first_missed == START + 60
        assert plan.last_missed == START + 60 * missed


def test_catchup_after_a_long_outage_is_bounded_and_fires_the_newest() -> None:
    every_second = Schedule("* * * * * *")
    now = START + timedelta(days=7).total_seconds()
    plan = plan_catchup(every_second, "all", since=START, now=now, bound=3)
    assert plan.fire == (now - 2, now - 1, now)
    assert not plan.exact and plan.missed >= 2000
    assert plan.first_missed == START + 1 and plan.last_missed == now - 3
    latest = plan_catchup(every_second, "latest", since=START, now=now + 0.5, bound=3)
    assert latest.fire == (now,)


def test_a_missed_count_just_past_the_walk_leaves_out_the_slots_that_fire() -> None:
    every_second = Schedule("* * * * * *")
    # 2,050 slots: the walk forward stops at 2,000, and the newest 100 fire; 1,950 missed
    plan = plan_catchup(every_second, "all", since=START, now=START + 2050, bound=100)
    assert plan.fire[0] == START + 1951 and len(plan.fire) == 100
    assert not plan.exact and plan.missed == 1950


def test_a_catch_up_past_the_walk_fires_no_slot_at_or_before_since() -> None:
    every_second = Schedule("* * * * * *")
    # 2,500 slots: more than the walk forward takes, fewer than the bound lets fire
    plan = plan_catchup(every_second, "all", since=START, now=START + 2500, bound=5000)
    assert plan.fire == tuple(START + i for i in range(1, 2501))
    assert plan.missed == 0
