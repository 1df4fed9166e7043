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
    try:
        problem = check_syntax(code, expression=expression)
    except UnicodeEncodeError:
        return unencodable(code), None
    return None if problem is None else (problem.message, problem.line)


def unencodable(code: str) -> str:
    """What is wrong with Lua source that Lua cannot be given: a lone UTF-16 surrogate (the
    spec check refuses those first; this keeps any other caller's answer a spec problem)."""
    at = next((i for i, c in enumerate(code) if "\ud800" <= c <= "\udfff"), 0)
    line = code.count("\n", 0, at) + 1
    return (
        f"holds U+{ord(code[at]):04X} on line {line}, half of a UTF-16 surrogate pair alone, "
        "which is not text UTF-8 can carry: write the character itself"
    )


def external_checks() -> ExternalChecks:
    return ExternalChecks(
        lua_syntax=_lua_syntax,
        json_schema=json_schema_problem,
        timezone=timezone_problem,
        cron=cron_problem,
        version_range=version_range_problem,
        inputs=trigger_inputs_problems,
    )
