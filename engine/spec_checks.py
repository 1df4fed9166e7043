"""The checks a spec needs a library for, other than Lua's: JSON Schema, time zones, cron and
version ranges.

Used by the engine (``engine.checking``, with Lua syntax) and by the orchestrator and dagctl
(``orchestrator.checking``), so a spec is judged the same everywhere. Light to import:
``jsonschema`` and ``croniter`` load only when a spec needs them, and no Lua here.
"""

from __future__ import annotations

import zoneinfo
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING

from engine.core.spec import CRON_MACROS, SEMVER
from engine.core.values import JSON

if TYPE_CHECKING:
    from croniter import croniter


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


class CronError(ValueError):
    """A cron expression croniter cannot use; the message names the expression and why."""


def cron_iterator(expression: str) -> croniter:
    """A croniter over ``expression`` (5 fields, 6 with seconds first, or a macro), started at
    2000-01-01 on the naive wall clock; ``CronError`` when the expression is not valid."""
    from croniter import CroniterError, croniter

    text = " ".join(expression.split())
    seconds_first = False
    if text.startswith("@"):
        if text.lower() not in CRON_MACROS:
            raise CronError(
                f"unknown cron macro {text!r}: use one of {', '.join(sorted(CRON_MACROS))}"
            )
        text = text.lower()
    else:
        fields = len(text.split(" "))
        if fields not in (5, 6):
            raise CronError(
                f"cron {expression!r} has {fields} fields: use 5 (minute hour day month "
                "weekday), 6 with seconds first, or a macro like @hourly"
            )
        seconds_first = fields == 6
    try:
        return croniter(text, datetime(2000, 1, 1), second_at_beginning=seconds_first)
    except (CroniterError, ValueError, KeyError, IndexError, TypeError) as exc:
        # the last four are croniter's own slips on some malformed fields
        raise CronError(f"cron {expression!r} is not valid: {exc}") from exc


@lru_cache(maxsize=512)
def cron_problem(expression: str) -> str | None:
    """Why ``expression`` cannot be a spec's ``cron`` (bad syntax, or no date ever matches it,
    like 30 February), or None. The zone is checked on its own."""
    from croniter import CroniterError

    try:
        cron_iterator(expression).get_next(datetime)
    except CronError as exc:
        return str(exc)
    except CroniterError as exc:
        return f"cron {expression!r} never fires: {exc}"
    return None


@lru_cache(maxsize=512)
def version_range_problem(text: str) -> str | None:
    """Why ``text`` is not a sub-workflow version range (npm style), or None."""
    from semantic_version import NpmSpec

    stripped = text.strip()
    if stripped in ("", "latest") or SEMVER.fullmatch(stripped):
        return None
    try:
        NpmSpec(stripped)
    except ValueError as exc:
        return (
            f"{text!r} is not a version range ({exc}): use an npm-style range such as "
            "^1.2, ~1.2.3, >=1 <2, 1.x, or latest"
        )
    return None
