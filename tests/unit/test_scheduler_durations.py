"""Durations in events are never negative, whatever the wall clock did during the run."""

from __future__ import annotations

from engine.core import scheduler as sch
from tests.unit.driving import Driver, lua, spec


def durations(d: Driver) -> dict[str, object]:
    return {
        f"{e.type}:{e.node_id}" if e.node_id else e.type: e.data["duration_ms"]
        for e in d.events
        if "duration_ms" in e.data
    }


def test_a_clock_stepped_back_during_a_node_gives_zero_not_a_negative_duration() -> None:
    d = Driver(spec([lua("a"), lua("b"), lua("c", "a", "b")], concurrency=2))
    d.now = 1000.0
    d.start()
    d.now = 1002.5
    d.succeed("a")
    d.now = 400.0  # NTP stepped the clock back ten minutes
    d.fail("b")
    assert durations(d) == {
        "node.succeeded:a": 2500.0,
        "node.failed:b": 0.0,
        "execution.failed": 0.0,
    }


def test_a_run_cancelled_after_the_clock_went_back_reports_zero() -> None:
    d = Driver(spec([lua("a")]))
    d.now = 50.0
    d.start()
    d.now = 10.0
    d.feed(sch.CancelRequested(d.now, "user asked"))
    assert durations(d) == {"node.cancelled:a": 0.0, "execution.cancelled": 0.0}
