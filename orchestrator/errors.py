"""The orchestrator's errors: each knows its HTTP status, its gRPC code and a stable error code.

::

    OrchestratorError
    ├── NotFound                  404  NOT_FOUND            unknown workflow, version, execution
    │   └── NoMatchingVersion     404  NOT_FOUND            a range no registered version meets
    ├── InvalidRange              400  INVALID_ARGUMENT     a version or range that does not parse
    ├── InvalidArgument           400  INVALID_ARGUMENT     a filter or option with a bad value
    ├── VersionConflict           409  ALREADY_EXISTS       other content under a registered version
    ├── VersionNotNewer           409  FAILED_PRECONDITION  a version not above the latest
    ├── DependentsOutOfRange      409  FAILED_PRECONDITION  a dependent's range would be left behind
    ├── WorkflowCycle             409  FAILED_PRECONDITION  A uses B uses A
    ├── SubWorkflowsTooDeep       409  FAILED_PRECONDITION  runs would nest past the depth limit
    ├── IdempotencyKeyReused      422  FAILED_PRECONDITION  a key sent again with another request
    ├── QueueFull                 429  RESOURCE_EXHAUSTED   too many runs waiting for an engine
    ├── InsufficientStorage       507  RESOURCE_EXHAUSTED   no room beside STATE_DB for a backup
    ├── BackupFailed              500  INTERNAL             a backup's copy failed its own check
    ├── TooManySubscribers        503  RESOURCE_EXHAUSTED   too many live event streams
                                                            (in orchestrator.monitoring)
    └── Unavailable               503  UNAVAILABLE          starting or stopping
        └── StoreUnavailable      503  UNAVAILABLE          the state database takes no writes now

Spec and input problems are the kernel's ``SpecError`` / ``InputsError``; the HTTP and gRPC
adapters map both trees in one function each (``serving_http.error_body``,
``serving_grpc.grpc_status_for``).
"""

from __future__ import annotations

from typing import ClassVar, Final

import grpc

from engine.core.values import JSONObject
from engine.inputs import TRIGGER_KEY


class OrchestratorError(Exception):
    http_status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    retry_after: ClassVar[int | None] = None
    """Seconds after which the same call may succeed (HTTP ``Retry-After``); None: it won't."""

    def __init__(self, message: str, details: JSONObject | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: JSONObject = details or {}


class NotFound(OrchestratorError):
    http_status = 404
    code = "not_found"
    grpc_code = grpc.StatusCode.NOT_FOUND


class NoMatchingVersion(NotFound):
    code = "no_matching_version"


class InvalidRange(OrchestratorError):
    http_status = 400
    code = "invalid_version_range"
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class InvalidArgument(OrchestratorError):
    http_status = 400
    code = "bad_request"
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


def refuse_trigger_inputs(inputs: object) -> None:
    """A caller's inputs may not carry ``_trigger``: only a trigger sets it as it fires (the
    inputs schema does not look at it, so it would carry anything, and pass for a fire)."""
    if isinstance(inputs, dict) and TRIGGER_KEY in inputs:
        raise InvalidArgument(
            f"inputs.{TRIGGER_KEY} is set by triggers: a caller may not send it",
            {"field": f"inputs.{TRIGGER_KEY}"},
        )


class VersionConflict(OrchestratorError):
    http_status = 409
    code = "version_conflict"
    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class VersionNotNewer(OrchestratorError):
    http_status = 409
    code = "version_not_newer"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class DependentsOutOfRange(OrchestratorError):
    http_status = 409
    code = "dependents_out_of_range"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class WorkflowCycle(OrchestratorError):
    http_status = 409
    code = "workflow_cycle"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class SubWorkflowsTooDeep(OrchestratorError):
    """A cycle's cousin that ends: every run would fail at MAX_SUBWORKFLOW_DEPTH + 1."""

    http_status = 409
    code = "subworkflows_too_deep"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class IdempotencyKeyReused(OrchestratorError):
    """The draft IETF Idempotency-Key header answers a reused key with another payload 422."""

    http_status = 422
    code = "idempotency_key_reused"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class QueueFull(OrchestratorError):
    http_status = 429
    code = "queue_full"
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retry_after = 1


class InsufficientStorage(OrchestratorError):
    """No room in STATE_DB's directory for a backup's copy (with a margin, so that the copy
    does not leave the orchestrator's own writes without room): nothing was copied."""

    http_status = 507
    code = "insufficient_storage"
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class BackupFailed(OrchestratorError):
    """A backup's copy did not pass its check (SQLite's quick check, or what a state file
    holds): it was dropped rather than sent."""

    code = "backup_failed"


class Unavailable(OrchestratorError):
    http_status = 503
    code = "unavailable"
    grpc_code = grpc.StatusCode.UNAVAILABLE
    retry_after = 1


class StoreUnavailable(Unavailable):
    """The state database cannot be used just now (a full disk, an I/O error, a lock held past
    the busy timeout). Nothing of the call was stored, and the same call later may succeed."""

    code = "store_unavailable"
    retry_after = 5


STORE_BACKOFF: Final = (0.5, 30.0)
"""Seconds before trying again what the store refused: the first wait, doubling up to the
second. Runs whose events it refused, and sub-workflow children it could not store, wait so."""


def store_backoff(tries: int) -> float:
    """Seconds to wait after ``tries`` refusals in a row (1 or more)."""
    first, most = STORE_BACKOFF
    return float(min(most, first * 2 ** (tries - 1)))


class DepthLimit(OrchestratorError):
    http_status = 409
    code = "subworkflow_depth_limit"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class ParentEnded(OrchestratorError):
    http_status = 409
    code = "parent_ended"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class NodeNotStarted(OrchestratorError):
    http_status = 409
    code = "node_not_started"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class NotRetryable(OrchestratorError):
    """A retry asked of a run that has not ended, that succeeded, or that is a child."""

    http_status = 409
    code = "not_retryable"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class WorkflowBusy(OrchestratorError):
    """A workflow delete refused (runs of it are going, or other workflows reference it), or a
    workflow registered again while the runs of its deletion are still being removed."""

    http_status = 409
    code = "workflow_busy"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class ParentMismatch(OrchestratorError):
    http_status = 400
    code = "parent_mismatch"
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class CallerLeft(Exception):
    """The caller of a large read went away while it waited for the large-read budget: not an
    error anyone hears of."""
