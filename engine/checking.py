"""Checks that need a library: Lua syntax, JSON Schema and time zones.

The pure spec parser takes these as ``ExternalChecks``; this module supplies the real ones.
"""

from __future__ import annotations

import zoneinfo
from functools import lru_cache

import jsonschema
from jsonschema.exceptions import SchemaError

from engine.core.spec import ExternalChecks
from engine.core.values import JSON
from engine.lua import check_syntax


def _lua_syntax(code: str, expression: bool) -> tuple[str, int | None] | None:
    problem = check_syntax(code, expression=expression)
    return None if problem is None else (problem.message, problem.line)


def _json_schema(schema: JSON) -> str | None:
    if not isinstance(schema, dict):
        return "must be an object"
    try:
        validator = jsonschema.validators.validator_for(schema)
        validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        return f"{exc.message}" + (f" (at {where})" if where else "")
    return None


@lru_cache(maxsize=512)
def _timezone(name: str) -> str | None:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {name!r}: use an IANA name like Europe/Berlin or UTC"
    return None


def external_checks() -> ExternalChecks:
    return ExternalChecks(lua_syntax=_lua_syntax, json_schema=_json_schema, timezone=_timezone)
