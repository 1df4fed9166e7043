"""The checks a spec needs a library for, other than Lua's: JSON Schema and time zones.

Used by the engine (``engine.checking``, with Lua syntax) and by the orchestrator and dagctl
(``orchestrator.checking``, with cron), so a spec is judged the same everywhere. Light to
import: ``jsonschema`` loads only when a spec has an ``inputs_schema``, and no Lua here.
"""

from __future__ import annotations

import zoneinfo
from functools import lru_cache

from engine.core.values import JSON


def json_schema_problem(schema: JSON) -> str | None:
    """Why ``schema`` is not a valid JSON Schema (with where in it), or None."""
    import jsonschema
    from jsonschema.exceptions import SchemaError

    if not isinstance(schema, dict):
        return "must be an object"
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        return f"{exc.message}" + (f" (at {where})" if where else "")
    return None


@lru_cache(maxsize=512)
def timezone_problem(name: str) -> str | None:
    """Why ``name`` is not an IANA time zone this machine knows, or None."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {name!r}: use an IANA name like Europe/Berlin or UTC"
    return None
