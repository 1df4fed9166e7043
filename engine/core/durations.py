"""Durations as written in specs: ``500ms``, ``30s``, ``10m``, ``1h30m``, ``2d``, or seconds."""

from __future__ import annotations

import re

_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
"""Largest first: a duration names each unit once, in this order (``1h30m``, not ``30m1h``
or ``1s1s``)."""
_ORDER = {unit: place for place, unit in enumerate(_UNITS)}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")

DURATION_HINT = "use a number of seconds or units like 500ms, 30s, 10m, 1h30m, 2d"


def parse_duration(value: object) -> float:
    """Seconds for a duration value; raises ValueError with a message naming the bad value."""
    if isinstance(value, bool):
        raise ValueError(f"bad duration {value!r}: {DURATION_HINT}")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int past any float: as infinite as it gets
            seconds = float("inf")
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        elif _WHOLE.fullmatch(text):
            parts = _PART.findall(text)
            places = [_ORDER[u] for _, u in parts]
            if places != sorted(set(places)):
                raise ValueError(
                    f"bad duration {value!r}: give each unit once, largest first (1h30m)"
                )
            # milliseconds divided, not multiplied by 0.001: 700ms is 0.7, not 0.70000000001
            seconds = sum(float(n) / 1000 if u == "ms" else float(n) * _UNITS[u] for n, u in parts)
        else:
            raise ValueError(f"bad duration {value!r}: {DURATION_HINT}")
    else:
        raise ValueError(f"bad duration {value!r}: {DURATION_HINT}")
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"bad duration {value!r}: must be a finite, non-negative time")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest readable form, used in messages (``1.5s``, ``250ms``, ``10m``, ``3d``).

    The unit is chosen for the value as it will be shown: 0.9999996 s shows as 1000 ms, so it
    is ``1s``, and 59.9999999 s shows as 60 s, so it is ``1m``."""
    if seconds < 1:
        milliseconds = round(seconds * 1000, 3)  # no 1e-297ms for a value next to nothing
        if milliseconds < 1000:
            return f"{milliseconds:g}ms"
        seconds = milliseconds / 1000
    if seconds % 60:
        seconds = float(f"{seconds:g}")  # what the seconds would show
        if seconds % 60:
            return f"{seconds:g}s"
    if seconds < 3600 or seconds % 3600:
        return f"{seconds / 60:g}m"
    if seconds < 86400 or seconds % 86400:
        return f"{seconds / 3600:g}h"
    return f"{seconds / 86400:.10g}d"
