"""Execution inputs against a workflow's ``inputs_schema``, checked the same way everywhere.

The engine checks them before a run starts and the orchestrator before it stores one; both
call ``check_inputs``. ``_trigger`` (what the trigger that fired a run adds: type, id,
scheduled time) is left out of the check: a schema describes what callers send, and a
schema with ``additionalProperties: false`` must not turn every cron fire away.
"""

from __future__ import annotations

import weakref
from typing import Any, Final

import jsonschema

from engine.core.errors import InputsError
from engine.core.spec import WorkflowSpec
from engine.core.values import JSON

TRIGGER_KEY: Final = "_trigger"

_CACHE_SIZE: Final = 1024
_validators: dict[int, tuple[weakref.ref[WorkflowSpec], Any]] = {}


def _validator(spec: WorkflowSpec) -> Any:
    # compiled once per spec object: a run's inputs are checked on every execution, and
    # building a validator costs more than using one; the weak reference tells a live entry
    # from one whose spec is gone and whose id was given to another object
    found = _validators.get(id(spec))
    if found is not None and found[0]() is spec:
        return found[1]
    if len(_validators) >= _CACHE_SIZE:
        _validators.clear()
    schema = spec.inputs_schema
    assert schema is not None
    validator = jsonschema.validators.validator_for(schema)(schema)
    _validators[id(spec)] = (weakref.ref(spec), validator)
    return validator


def check_inputs(spec: WorkflowSpec, inputs: JSON) -> None:
    """Refuse inputs that do not match the spec's inputs_schema, naming every problem."""
    if spec.inputs_schema is None:
        return
    if isinstance(inputs, dict) and TRIGGER_KEY in inputs:
        inputs = {k: v for k, v in inputs.items() if k != TRIGGER_KEY}
    problems = [
        "inputs"
        + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
        + f": {err.message}"
        for err in sorted(_validator(spec).iter_errors(inputs), key=lambda e: list(e.absolute_path))
    ]
    if problems:
        raise InputsError(spec.id, problems)
