"""Durations at their edges: huge, tiny, repeated units, and the retry delay that doubles."""

from __future__ import annotations

import pytest

from engine.core.durations import format_duration, parse_duration
from engine.core.spec import RetryPolicy


def test_an_integer_past_any_float_is_a_bad_duration_not_a_crash() -> None:
    with pytest.raises(ValueError, match="must be a finite, non-negative time"):
        parse_duration(10**400)


@pytest.mark.parametrize("text", ["1s1s", "30m1h", "5ms1s", "1h1h30m"])
def test_each_unit_once_largest_first(text: str) -> None:
    with pytest.raises(ValueError, match="give each unit once, largest first"):
        parse_duration(text)


def test_milliseconds_are_exact() -> None:
    assert parse_duration("700ms") == 0.7
    assert parse_duration("1h30m15s250ms") == 5415.25


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(8.64e9, "100000d"), (172800, "2d"), (90000, "25h"), (1e-300, "0ms"), (0.0005, "0.5ms")],
)
def test_formatting_keeps_to_plain_numbers(seconds: float, shown: str) -> None:
    assert format_duration(seconds) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.9999996, "1s"),  # shows as 1000 ms: a second
        (0.9994, "999.4ms"),
        (59.9999999, "1m"),  # shows as 60 s: a minute
        (3599.9999999, "1h"),
        (59.5, "59.5s"),
        (12345660, "205761m"),  # exact: never rounded into another unit
    ],
)
def test_the_unit_is_chosen_for_the_value_as_shown(seconds: float, shown: str) -> None:
    assert format_duration(seconds) == shown


def test_an_exponential_retry_keeps_its_cap_past_a_thousand_attempts() -> None:
    policy = RetryPolicy(max_attempts=10_000, backoff="exponential", delay=0.5, max_delay=1.0)
    assert [policy.delay_before(n, 0.5) for n in (2, 3, 1026, 5000)] == [0.5, 1.0, 1.0, 1.0]
    never_waits = RetryPolicy(max_attempts=2000, backoff="exponential", delay=0.0, max_delay=1e-3)
    assert never_waits.delay_before(1100, 0.9) == 0.0
