"""Why the engine service refuses a request; the kernel's errors (``engine.core.errors``) extend
the same tree::

    EngineError
    ├── SpecError, InputsError, ...   (engine.core.errors: the spec or the inputs are wrong)
    ├── SettingsError                 (engine.settings: the environment is wrong)
    └── ServiceError                  a request the service turns down
        ├── BadRequest                a field of the request is malformed; names each one
        ├── AtCapacity                every execution slot is taken
        ├── ShuttingDown              the engine is draining and takes no new work
        ├── ExecutionExists           that execution id is already running here
        ├── UnknownExecution          no execution with that id is running here
        ├── NothingWaiting            no sub-workflow node waits for that answer
        └── MessageTooLarge           a run's event is past the gRPC message limit: its
                                      stream ends as gRPC would end it (RESOURCE_EXHAUSTED)

``engine.wire.grpc_status`` is the one place these become gRPC status codes.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.core.errors import EngineError


class ServiceError(EngineError):
    """A request the engine service turns down; nothing changed because of it."""


@dataclass(frozen=True, slots=True)
class FieldProblem:
    field: str
    message: str


class BadRequest(ServiceError):
    """One or more fields of a request are malformed (JSON that does not parse, ...)."""

    def __init__(self, problems: list[FieldProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))


class AtCapacity(ServiceError):
    def __init__(self, engine_id: str, capacity: int) -> None:
        self.capacity = capacity
        super().__init__(
            f"engine {engine_id} is at capacity: {capacity} executions in flight; "
            "try another engine or later"
        )


class ShuttingDown(ServiceError):
    def __init__(self, engine_id: str) -> None:
        super().__init__(f"engine {engine_id} is shutting down and takes no new executions")


class ExecutionExists(ServiceError):
    def __init__(self, execution_id: str) -> None:
        self.execution_id = execution_id
        super().__init__(f"execution {execution_id} is already running on this engine")


class UnknownExecution(ServiceError):
    def __init__(self, execution_id: str) -> None:
        self.execution_id = execution_id
        super().__init__(f"no execution {execution_id} is running on this engine")


class NothingWaiting(ServiceError):
    def __init__(self, execution_id: str, node_id: str, item: int | None, attempt: int) -> None:
        where = f"node {node_id!r}" + (f" item {item}" if item is not None else "")
        super().__init__(
            f"execution {execution_id}: no sub-workflow of {where} attempt {attempt} is waiting "
            "for a result (it finished, was cancelled or timed out, or never started)"
        )


class MessageTooLarge(ServiceError):
    """An event of a run that no gRPC message can carry: the engine ends the run's stream with
    it before gRPC would, since gRPC says so only with an ERROR line in the engine's log.

    The message holds gRPC's own words for it, ``message larger than max``, which the
    orchestrator looks for to fail the run instead of running it again elsewhere."""

    def __init__(self, size: int, limit: int, what: str) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"message larger than max ({size} vs. {limit} bytes): {what}")
