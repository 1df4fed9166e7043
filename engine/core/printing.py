"""Text from scripts and servers made safe for a terminal.

A Lua script's log line or error, a workflow's name: what any of them holds reaches a terminal
through these, so none can move the cursor, recolour the screen or break a line.
"""

from __future__ import annotations

import re

__all__ = ["duration", "one_line", "printable"]

# C0 but newline and tab, DEL, C1, line and paragraph separators, the bidirectional embeddings,
# overrides and isolates (which reorder what a terminal shows), and lone surrogates
_CONTROL = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_LINE_BREAKS = re.compile("[\n\t]")


def _escape(found: re.Match[str]) -> str:
    code = ord(found[0])
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with its control characters written as escapes (ESC as ``\\x1b``): C0 but
    newline and tab, DEL, C1, the line and paragraph separators, and lone surrogates.

    Text from the server (a Lua error, a workflow name) goes to a terminal through this, so it
    cannot move the cursor, recolour the screen or break a line; escaping twice changes
    nothing more.
    """
    return _CONTROL.sub(_escape, text)


def one_line(text: str) -> str:
    """``printable``, with newline and tab escaped too: for what must stay on its line (one
    event a line), where a newline in a script's message would print a line of its own."""
    return _LINE_BREAKS.sub(_escape, printable(text))


def duration(seconds: float | None) -> str:
    """A time span as a person reads it: ``<1ms``, ``350ms``, ``2.5s``, ``4m05s``, ``1h02m``;
    dagctl and ``engine run`` say durations alike."""
    if seconds is None:
        return ""
    seconds = max(seconds, 0.0)
    if seconds < 0.0005:
        return "<1ms"  # not "0ms": it took some time
    # each unit is chosen for the value as it will be shown: 0.9996 s is "1.0s", not "1000ms"
    if seconds < 0.9995:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 59.95:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
