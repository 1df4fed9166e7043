"""The checks a spec gets at registration beyond its own shape: Lua syntax, JSON Schema, zones.

Shared by the orchestrator and ``dagctl validate``, so a file that passes locally is refused by
the server only for registry reasons (versions, dependents). Light to import: ``jsonschema``
loads only when a spec has an ``inputs_schema``, and Lua never loads here at all (its syntax
is checked in a ``python -m engine check-lua`` child, see ``lua_checking``).
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable
from functools import lru_cache

from engine.core.spec import ExternalChecks
from engine.core.values import JSON
from orchestrator.schedule import cron_problem


def json_schema_problem(schema: JSON) -> str | None:
    import jsonschema
    from jsonschema.exceptions import SchemaError

    if not isinstance(schema, dict):
        return "must be an object"
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        return exc.message
    return None


@lru_cache(maxsize=512)
def timezone_problem(name: str) -> str | None:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {name!r}: use an IANA name like Europe/Berlin or UTC"
    return None


def registration_checks(
    lua_syntax: Callable[[str, bool], tuple[str, int | None] | None],
) -> ExternalChecks:
    return ExternalChecks(
        lua_syntax=lua_syntax,
        json_schema=json_schema_problem,
        timezone=timezone_problem,
        cron=cron_problem,
    )
