"""Checks that need a library: Lua syntax, JSON Schema, time zones and cron.

The pure spec parser takes these as ``ExternalChecks``; this module supplies the real ones.
"""

from __future__ import annotations

from engine.core.spec import ExternalChecks
from engine.lua import check_syntax
from engine.spec_checks import (
    cron_problem,
    json_schema_problem,
    timezone_problem,
    trigger_inputs_problems,
    version_range_problem,
)


def _lua_syntax(code: str, expression: bool) -> tuple[str, int | None] | None:
    problem = check_syntax(code, expression=expression)
    return None if problem is None else (problem.message, problem.line)


def external_checks() -> ExternalChecks:
    return ExternalChecks(
        lua_syntax=_lua_syntax,
        json_schema=json_schema_problem,
        timezone=timezone_problem,
        cron=cron_problem,
        version_range=version_range_problem,
        inputs=trigger_inputs_problems,
    )
