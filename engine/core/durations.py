"""Durations as written in specs: ``500ms``, ``30s``, ``10m``, ``1h30m``, ``2d``, or seconds."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")

DURATION_HINT = "use a number of seconds or units like 500ms, 30s, 10m, 1h30m, 2d"


def parse_duration(value: object) -> float:
    """Seconds for a duration value; raises ValueError with a message naming the bad value."""
    if isinstance(value, bool):
        raise ValueError(f"bad duration {value!r}: {DURATION_HINT}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        elif _WHOLE.fullmatch(text):
            seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
        else:
            raise ValueError(f"bad duration {value!r}: {DURATION_HINT}")
    else:
        raise ValueError(f"bad duration {value!r}: {DURATION_HINT}")
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"bad duration {value!r}: must be a finite, non-negative time")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest readable form, used in messages (``1.5s``, ``250ms``, ``10m``)."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds < 60 or seconds % 60:
        return f"{seconds:g}s"
    if seconds < 3600 or seconds % 3600:
        return f"{seconds / 60:g}m"
    return f"{seconds / 3600:g}h"
