"""The one time format on the wire: UTC, milliseconds, a Z."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine.core.events import isoformat


def reference(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@settings(max_examples=3000, deadline=None)
@given(st.floats(min_value=-2e9, max_value=4e9, allow_nan=False))
@example(0.0)
@example(1.9999995)  # rounds up to the next second at the microsecond
@example(2674464887.0599995)
@example(-1.5)
def test_isoformat_is_what_datetime_says(ts: float) -> None:
    assert isoformat(ts) == reference(ts)


def test_isoformat_across_seconds_and_none() -> None:
    # the cached second must not leak into the next one
    assert isoformat(10.999) == "1970-01-01T00:00:10.999Z"
    assert isoformat(11.0) == "1970-01-01T00:00:11.000Z"
    assert isoformat(10.5) == "1970-01-01T00:00:10.500Z"
    assert isoformat(None) is None
