"""Monitor events: the one record every state change becomes (DESIGN section 7)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from engine.core.states import Severity
from engine.core.values import JSONObject

EVENT_TYPES: Final = (
    "execution.queued",
    "execution.started",
    "execution.succeeded",
    "execution.partial",
    "execution.failed",
    "execution.cancelled",
    "execution.timed_out",
    "node.started",
    "node.succeeded",
    "node.failed",
    "node.retrying",
    "node.skipped",
    "node.blocked",
    "node.cancelled",
    "node.log",
    "node.progress",
    "subworkflow.requested",
    "subworkflow.started",
    "subworkflow.finished",
    "engine.joined",
    "engine.left",
    "engine.unhealthy",
    "trigger.fired",
    "trigger.skipped",
    "trigger.missed",
    "subscriber.lagged",
)


_second: list[object] = [None, ""]
"""The last whole second formatted, and its text up to the seconds: events come many to a
second, and only the milliseconds differ between them."""


def isoformat(ts: float | None) -> str | None:
    """UTC ISO 8601 with milliseconds and a Z, the one time format on the wire.

    As ``datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")`` gives it (the
    instant rounded to the microsecond, then cut to the millisecond), at a fraction of the
    cost: every event carries one, and it was a tenth of an event's making."""
    if ts is None:
        return None
    # split as datetime does (whole seconds, then the fraction rounded to microseconds), so
    # the text is the same to the last digit
    fraction, whole = math.modf(ts)
    seconds, micros = int(whole), round(fraction * 1_000_000)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    elif micros < 0:
        seconds, micros = seconds - 1, micros + 1_000_000
    if _second[0] != seconds:
        _second[0] = seconds
        _second[1] = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{_second[1]}.{micros // 1000:03d}Z"


# Not frozen: several events are made per node, and frozen dataclasses construct three times
# slower. Nothing changes an event once it is published.
@dataclass(slots=True)
class Event:
    seq: int
    time: float
    type: str
    severity: Severity
    workflow_id: str
    version: str
    execution_id: str
    node_id: str | None = None
    engine_id: str | None = None
    attempt: int | None = None
    data: JSONObject = field(default_factory=dict)

    def to_dict(self) -> JSONObject:
        return {
            "seq": self.seq,
            "time": isoformat(self.time),
            "type": self.type,
            "severity": self.severity,
            "workflow_id": self.workflow_id,
            "version": self.version,
            "execution_id": self.execution_id,
            "node_id": self.node_id,
            "engine_id": self.engine_id,
            "attempt": self.attempt,
            "data": self.data,
        }
