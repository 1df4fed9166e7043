"""The state vocabulary of nodes and executions, and the one table of allowed node transitions."""

from __future__ import annotations

from typing import Final, Literal, get_args

NodeStatus = Literal["pending", "running", "succeeded", "failed", "skipped", "blocked", "cancelled"]
ExecutionStatus = Literal[
    "queued", "running", "succeeded", "partial", "failed", "cancelled", "timed_out"
]
Severity = Literal["debug", "info", "warning", "error", "critical"]

EXECUTION_STATUSES: Final[tuple[str, ...]] = get_args(ExecutionStatus)

NODE_TERMINAL: Final[frozenset[str]] = frozenset(
    {"succeeded", "failed", "skipped", "blocked", "cancelled"}
)
EXECUTION_TERMINAL: Final[frozenset[str]] = frozenset(
    {"succeeded", "partial", "failed", "cancelled", "timed_out"}
)
RESUMED_ENDS: Final[frozenset[str]] = frozenset({"failed", "blocked", "skipped"})
"""How a node may have ended before its run resumes elsewhere, besides succeeding: carried to
the next engine, which counts it so for its dependents and never runs it again. A cancelled
node ended its run, which is then not resumed."""

# running -> running is a retry: the node keeps its place while it waits for the next attempt.
# pending -> succeeded is a node restored from a checkpoint when a run resumes.
NODE_TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    "pending": frozenset({"running", "skipped", "blocked", "cancelled", "succeeded", "failed"}),
    "running": frozenset({"running", "succeeded", "failed", "cancelled"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "skipped": frozenset(),
    "blocked": frozenset(),
    "cancelled": frozenset(),
}
