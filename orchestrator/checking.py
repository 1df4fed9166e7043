"""The checks a spec gets at registration beyond its own shape: Lua syntax, JSON Schema, zones,
cron.

Shared by the orchestrator and ``dagctl validate``, so a file that passes locally is refused by
the server only for registry reasons (versions, dependents). Light to import: ``jsonschema``
loads only when a spec has an ``inputs_schema``, and Lua never loads here at all (its syntax
is checked in a ``python -m engine check-lua`` child, see ``lua_checking``).
"""

from __future__ import annotations

from collections.abc import Callable

from engine.core.spec import ExternalChecks
from engine.spec_checks import (
    cron_problem,
    json_schema_problem,
    timezone_problem,
    trigger_inputs_problems,
    version_range_problem,
)


def registration_checks(
    lua_syntax: Callable[[str, bool], tuple[str, int | None] | None],
) -> ExternalChecks:
    return ExternalChecks(
        lua_syntax=lua_syntax,
        json_schema=json_schema_problem,
        timezone=timezone_problem,
        cron=cron_problem,
        version_range=version_range_problem,
        inputs=trigger_inputs_problems,
        registering=True,
    )
