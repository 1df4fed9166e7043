from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExecuteRequest(_message.Message):
    __slots__ = ("execution_id", "spec", "inputs_json", "completed", "parent_execution_id", "first_seq", "sleeping", "started_at", "retried", "waiting", "completed_items")
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    INPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    PARENT_EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    SLEEPING_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    RETRIED_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    execution_id: str
    spec: str
    inputs_json: str
    completed: _containers.RepeatedCompositeFieldContainer[CompletedNode]
    parent_execution_id: str
    first_seq: int
    sleeping: _containers.RepeatedCompositeFieldContainer[StartedSleep]
    started_at: float
    retried: _containers.RepeatedCompositeFieldContainer[RetriedNode]
    waiting: _containers.RepeatedCompositeFieldContainer[WaitingNode]
    completed_items: _containers.RepeatedCompositeFieldContainer[CompletedItem]
    def __init__(self, execution_id: _Optional[str] = ..., spec: _Optional[str] = ..., inputs_json: _Optional[str] = ..., completed: _Optional[_Iterable[_Union[CompletedNode, _Mapping]]] = ..., parent_execution_id: _Optional[str] = ..., first_seq: _Optional[int] = ..., sleeping: _Optional[_Iterable[_Union[StartedSleep, _Mapping]]] = ..., started_at: _Optional[float] = ..., retried: _Optional[_Iterable[_Union[RetriedNode, _Mapping]]] = ..., waiting: _Optional[_Iterable[_Union[WaitingNode, _Mapping]]] = ..., completed_items: _Optional[_Iterable[_Union[CompletedItem, _Mapping]]] = ...) -> None: ...

class CompletedItem(_message.Message):
    __slots__ = ("node_id", "item", "items", "output_json")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    item: int
    items: int
    output_json: str
    def __init__(self, node_id: _Optional[str] = ..., item: _Optional[int] = ..., items: _Optional[int] = ..., output_json: _Optional[str] = ...) -> None: ...

class RetriedNode(_message.Message):
    __slots__ = ("node_id", "item", "failed")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    item: int
    failed: int
    def __init__(self, node_id: _Optional[str] = ..., item: _Optional[int] = ..., failed: _Optional[int] = ...) -> None: ...

class WaitingNode(_message.Message):
    __slots__ = ("node_id", "item", "attempt", "started_at")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    item: int
    attempt: int
    started_at: float
    def __init__(self, node_id: _Optional[str] = ..., item: _Optional[int] = ..., attempt: _Optional[int] = ..., started_at: _Optional[float] = ...) -> None: ...

class StartedSleep(_message.Message):
    __slots__ = ("node_id", "started_at")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    started_at: float
    def __init__(self, node_id: _Optional[str] = ..., started_at: _Optional[float] = ...) -> None: ...

class ExecuteResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class CompletedNode(_message.Message):
    __slots__ = ("node_id", "output_json", "attempts", "status", "error")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    output_json: str
    attempts: int
    status: str
    error: str
    def __init__(self, node_id: _Optional[str] = ..., output_json: _Optional[str] = ..., attempts: _Optional[int] = ..., status: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("seq", "time", "type", "severity", "workflow_id", "version", "execution_id", "node_id", "engine_id", "attempt", "data_json")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ENGINE_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time: str
    type: str
    severity: str
    workflow_id: str
    version: str
    execution_id: str
    node_id: str
    engine_id: str
    attempt: int
    data_json: str
    def __init__(self, seq: _Optional[int] = ..., time: _Optional[str] = ..., type: _Optional[str] = ..., severity: _Optional[str] = ..., workflow_id: _Optional[str] = ..., version: _Optional[str] = ..., execution_id: _Optional[str] = ..., node_id: _Optional[str] = ..., engine_id: _Optional[str] = ..., attempt: _Optional[int] = ..., data_json: _Optional[str] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("execution_id", "reason")
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    execution_id: str
    reason: str
    def __init__(self, execution_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: str
    def __init__(self, status: _Optional[str] = ...) -> None: ...

class ResolveSubWorkflowRequest(_message.Message):
    __slots__ = ("execution_id", "node_id", "item", "attempt", "output_json", "error", "child_execution_id", "child_status", "child_version")
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CHILD_EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    CHILD_STATUS_FIELD_NUMBER: _ClassVar[int]
    CHILD_VERSION_FIELD_NUMBER: _ClassVar[int]
    execution_id: str
    node_id: str
    item: int
    attempt: int
    output_json: str
    error: str
    child_execution_id: str
    child_status: str
    child_version: str
    def __init__(self, execution_id: _Optional[str] = ..., node_id: _Optional[str] = ..., item: _Optional[int] = ..., attempt: _Optional[int] = ..., output_json: _Optional[str] = ..., error: _Optional[str] = ..., child_execution_id: _Optional[str] = ..., child_status: _Optional[str] = ..., child_version: _Optional[str] = ...) -> None: ...

class ResolveSubWorkflowResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EngineInfo(_message.Message):
    __slots__ = ("engine_id", "address", "state", "capacity", "in_flight", "version")
    ENGINE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    engine_id: str
    address: str
    state: str
    capacity: int
    in_flight: int
    version: str
    def __init__(self, engine_id: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[str] = ..., capacity: _Optional[int] = ..., in_flight: _Optional[int] = ..., version: _Optional[str] = ...) -> None: ...

class ListExecutionsRequest(_message.Message):
    __slots__ = ("workflow_id", "status", "limit", "before")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    status: str
    limit: int
    before: str
    def __init__(self, workflow_id: _Optional[str] = ..., status: _Optional[str] = ..., limit: _Optional[int] = ..., before: _Optional[str] = ...) -> None: ...

class ListExecutionsResponse(_message.Message):
    __slots__ = ("executions", "next_before")
    EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    executions: _containers.RepeatedCompositeFieldContainer[Execution]
    next_before: str
    def __init__(self, executions: _Optional[_Iterable[_Union[Execution, _Mapping]]] = ..., next_before: _Optional[str] = ...) -> None: ...

class Execution(_message.Message):
    __slots__ = ("id", "workflow_id", "version", "status", "inputs_json", "outputs_json", "error", "progress", "created_at", "started_at", "finished_at", "parent_execution_id", "nodes", "children", "parent_node_id", "parent_item", "parent_attempt", "retry_of", "nodes_omitted", "children_omitted")
    ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    PARENT_EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    PARENT_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_ITEM_FIELD_NUMBER: _ClassVar[int]
    PARENT_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RETRY_OF_FIELD_NUMBER: _ClassVar[int]
    NODES_OMITTED_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_OMITTED_FIELD_NUMBER: _ClassVar[int]
    id: str
    workflow_id: str
    version: str
    status: str
    inputs_json: str
    outputs_json: str
    error: str
    progress: int
    created_at: str
    started_at: str
    finished_at: str
    parent_execution_id: str
    nodes: _containers.RepeatedCompositeFieldContainer[NodeState]
    children: _containers.RepeatedScalarFieldContainer[str]
    parent_node_id: str
    parent_item: int
    parent_attempt: int
    retry_of: str
    nodes_omitted: int
    children_omitted: int
    def __init__(self, id: _Optional[str] = ..., workflow_id: _Optional[str] = ..., version: _Optional[str] = ..., status: _Optional[str] = ..., inputs_json: _Optional[str] = ..., outputs_json: _Optional[str] = ..., error: _Optional[str] = ..., progress: _Optional[int] = ..., created_at: _Optional[str] = ..., started_at: _Optional[str] = ..., finished_at: _Optional[str] = ..., parent_execution_id: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[NodeState, _Mapping]]] = ..., children: _Optional[_Iterable[str]] = ..., parent_node_id: _Optional[str] = ..., parent_item: _Optional[int] = ..., parent_attempt: _Optional[int] = ..., retry_of: _Optional[str] = ..., nodes_omitted: _Optional[int] = ..., children_omitted: _Optional[int] = ...) -> None: ...

class NodeState(_message.Message):
    __slots__ = ("node_id", "status", "output_json", "error", "attempts", "started_at", "finished_at", "engine_id", "reused_from", "items_done", "items_total")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ENGINE_ID_FIELD_NUMBER: _ClassVar[int]
    REUSED_FROM_FIELD_NUMBER: _ClassVar[int]
    ITEMS_DONE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    status: str
    output_json: str
    error: str
    attempts: int
    started_at: str
    finished_at: str
    engine_id: str
    reused_from: str
    items_done: int
    items_total: int
    def __init__(self, node_id: _Optional[str] = ..., status: _Optional[str] = ..., output_json: _Optional[str] = ..., error: _Optional[str] = ..., attempts: _Optional[int] = ..., started_at: _Optional[str] = ..., finished_at: _Optional[str] = ..., engine_id: _Optional[str] = ..., reused_from: _Optional[str] = ..., items_done: _Optional[int] = ..., items_total: _Optional[int] = ...) -> None: ...

class RegisterWorkflowRequest(_message.Message):
    __slots__ = ("spec", "force")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    spec: str
    force: bool
    def __init__(self, spec: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class RegisterWorkflowResponse(_message.Message):
    __slots__ = ("workflow", "created", "warnings")
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    workflow: Workflow
    created: bool
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, workflow: _Optional[_Union[Workflow, _Mapping]] = ..., created: _Optional[bool] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class Workflow(_message.Message):
    __slots__ = ("id", "version", "name", "spec_json", "created_at", "versions", "dependents", "references")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    DEPENDENTS_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    id: str
    version: str
    name: str
    spec_json: str
    created_at: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    dependents: _containers.RepeatedScalarFieldContainer[str]
    references: _containers.RepeatedCompositeFieldContainer[WorkflowReference]
    def __init__(self, id: _Optional[str] = ..., version: _Optional[str] = ..., name: _Optional[str] = ..., spec_json: _Optional[str] = ..., created_at: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ..., dependents: _Optional[_Iterable[str]] = ..., references: _Optional[_Iterable[_Union[WorkflowReference, _Mapping]]] = ...) -> None: ...

class WorkflowReference(_message.Message):
    __slots__ = ("node", "workflow", "range", "resolves_to")
    NODE_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    RESOLVES_TO_FIELD_NUMBER: _ClassVar[int]
    node: str
    workflow: str
    range: str
    resolves_to: str
    def __init__(self, node: _Optional[str] = ..., workflow: _Optional[str] = ..., range: _Optional[str] = ..., resolves_to: _Optional[str] = ...) -> None: ...

class GetWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id", "version")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    version: str
    def __init__(self, workflow_id: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class DeleteWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id",)
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    def __init__(self, workflow_id: _Optional[str] = ...) -> None: ...

class DeleteWorkflowResponse(_message.Message):
    __slots__ = ("workflow_id", "versions", "triggers", "executions")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    TRIGGERS_FIELD_NUMBER: _ClassVar[int]
    EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    versions: int
    triggers: int
    executions: int
    def __init__(self, workflow_id: _Optional[str] = ..., versions: _Optional[int] = ..., triggers: _Optional[int] = ..., executions: _Optional[int] = ...) -> None: ...

class ListWorkflowsRequest(_message.Message):
    __slots__ = ("limit", "after")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    limit: int
    after: str
    def __init__(self, limit: _Optional[int] = ..., after: _Optional[str] = ...) -> None: ...

class ListWorkflowsResponse(_message.Message):
    __slots__ = ("workflows", "next_after")
    WORKFLOWS_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_FIELD_NUMBER: _ClassVar[int]
    workflows: _containers.RepeatedCompositeFieldContainer[Workflow]
    next_after: str
    def __init__(self, workflows: _Optional[_Iterable[_Union[Workflow, _Mapping]]] = ..., next_after: _Optional[str] = ...) -> None: ...

class ExecuteWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id", "version", "inputs_json", "wait", "idempotency_key")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    version: str
    inputs_json: str
    wait: bool
    idempotency_key: str
    def __init__(self, workflow_id: _Optional[str] = ..., version: _Optional[str] = ..., inputs_json: _Optional[str] = ..., wait: _Optional[bool] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class ExecuteWorkflowResponse(_message.Message):
    __slots__ = ("execution_id", "execution")
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_FIELD_NUMBER: _ClassVar[int]
    execution_id: str
    execution: Execution
    def __init__(self, execution_id: _Optional[str] = ..., execution: _Optional[_Union[Execution, _Mapping]] = ...) -> None: ...

class GetExecutionRequest(_message.Message):
    __slots__ = ("execution_id",)
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    execution_id: str
    def __init__(self, execution_id: _Optional[str] = ...) -> None: ...

class CancelExecutionRequest(_message.Message):
    __slots__ = ("execution_id", "reason")
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    execution_id: str
    reason: str
    def __init__(self, execution_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelExecutionResponse(_message.Message):
    __slots__ = ("execution",)
    EXECUTION_FIELD_NUMBER: _ClassVar[int]
    execution: Execution
    def __init__(self, execution: _Optional[_Union[Execution, _Mapping]] = ...) -> None: ...

class RetryExecutionRequest(_message.Message):
    __slots__ = ("execution_id", "wait", "idempotency_key")
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    execution_id: str
    wait: bool
    idempotency_key: str
    def __init__(self, execution_id: _Optional[str] = ..., wait: _Optional[bool] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("workflow_id", "execution_id", "after_seq")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    execution_id: str
    after_seq: int
    def __init__(self, workflow_id: _Optional[str] = ..., execution_id: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class ExecuteSubWorkflowRequest(_message.Message):
    __slots__ = ("parent_execution_id", "node_id", "item", "attempt", "workflow_id", "version", "inputs_json", "parent_workflow_id")
    PARENT_EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    PARENT_WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    parent_execution_id: str
    node_id: str
    item: int
    attempt: int
    workflow_id: str
    version: str
    inputs_json: str
    parent_workflow_id: str
    def __init__(self, parent_execution_id: _Optional[str] = ..., node_id: _Optional[str] = ..., item: _Optional[int] = ..., attempt: _Optional[int] = ..., workflow_id: _Optional[str] = ..., version: _Optional[str] = ..., inputs_json: _Optional[str] = ..., parent_workflow_id: _Optional[str] = ...) -> None: ...

class ExecuteSubWorkflowResponse(_message.Message):
    __slots__ = ("execution_id", "version")
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    execution_id: str
    version: str
    def __init__(self, execution_id: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class GetSubWorkflowStatusRequest(_message.Message):
    __slots__ = ("execution_id",)
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    execution_id: str
    def __init__(self, execution_id: _Optional[str] = ...) -> None: ...

class SubWorkflowStatus(_message.Message):
    __slots__ = ("execution_id", "status", "outputs_json", "error")
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    execution_id: str
    status: str
    outputs_json: str
    error: str
    def __init__(self, execution_id: _Optional[str] = ..., status: _Optional[str] = ..., outputs_json: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class ListEnginesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListEnginesResponse(_message.Message):
    __slots__ = ("engines",)
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    engines: _containers.RepeatedCompositeFieldContainer[EngineInfo]
    def __init__(self, engines: _Optional[_Iterable[_Union[EngineInfo, _Mapping]]] = ...) -> None: ...

class TriggerInfo(_message.Message):
    __slots__ = ("id", "workflow_id", "type", "source", "version", "paused", "active", "created_at", "cron", "timezone", "overlap", "catchup", "inputs_json", "next_fire_times", "last_scheduled_time", "path", "auth", "raw_body")
    ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CRON_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    CATCHUP_FIELD_NUMBER: _ClassVar[int]
    INPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIRE_TIMES_FIELD_NUMBER: _ClassVar[int]
    LAST_SCHEDULED_TIME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    RAW_BODY_FIELD_NUMBER: _ClassVar[int]
    id: str
    workflow_id: str
    type: str
    source: str
    version: str
    paused: bool
    active: bool
    created_at: str
    cron: str
    timezone: str
    overlap: str
    catchup: str
    inputs_json: str
    next_fire_times: _containers.RepeatedScalarFieldContainer[str]
    last_scheduled_time: str
    path: str
    auth: str
    raw_body: bool
    def __init__(self, id: _Optional[str] = ..., workflow_id: _Optional[str] = ..., type: _Optional[str] = ..., source: _Optional[str] = ..., version: _Optional[str] = ..., paused: _Optional[bool] = ..., active: _Optional[bool] = ..., created_at: _Optional[str] = ..., cron: _Optional[str] = ..., timezone: _Optional[str] = ..., overlap: _Optional[str] = ..., catchup: _Optional[str] = ..., inputs_json: _Optional[str] = ..., next_fire_times: _Optional[_Iterable[str]] = ..., last_scheduled_time: _Optional[str] = ..., path: _Optional[str] = ..., auth: _Optional[str] = ..., raw_body: _Optional[bool] = ...) -> None: ...

class ListTriggersRequest(_message.Message):
    __slots__ = ("workflow_id", "limit", "after")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    limit: int
    after: str
    def __init__(self, workflow_id: _Optional[str] = ..., limit: _Optional[int] = ..., after: _Optional[str] = ...) -> None: ...

class ListTriggersResponse(_message.Message):
    __slots__ = ("triggers", "next_after")
    TRIGGERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_FIELD_NUMBER: _ClassVar[int]
    triggers: _containers.RepeatedCompositeFieldContainer[TriggerInfo]
    next_after: str
    def __init__(self, triggers: _Optional[_Iterable[_Union[TriggerInfo, _Mapping]]] = ..., next_after: _Optional[str] = ...) -> None: ...

class TriggerRequest(_message.Message):
    __slots__ = ("trigger_id",)
    TRIGGER_ID_FIELD_NUMBER: _ClassVar[int]
    trigger_id: str
    def __init__(self, trigger_id: _Optional[str] = ...) -> None: ...

class CreateTriggerRequest(_message.Message):
    __slots__ = ("id", "workflow_id", "version", "cron", "timezone", "overlap", "catchup", "inputs_json", "paused")
    ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CRON_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    CATCHUP_FIELD_NUMBER: _ClassVar[int]
    INPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    id: str
    workflow_id: str
    version: str
    cron: str
    timezone: str
    overlap: str
    catchup: str
    inputs_json: str
    paused: bool
    def __init__(self, id: _Optional[str] = ..., workflow_id: _Optional[str] = ..., version: _Optional[str] = ..., cron: _Optional[str] = ..., timezone: _Optional[str] = ..., overlap: _Optional[str] = ..., catchup: _Optional[str] = ..., inputs_json: _Optional[str] = ..., paused: _Optional[bool] = ...) -> None: ...

class DeleteTriggerResponse(_message.Message):
    __slots__ = ("trigger_id",)
    TRIGGER_ID_FIELD_NUMBER: _ClassVar[int]
    trigger_id: str
    def __init__(self, trigger_id: _Optional[str] = ...) -> None: ...
