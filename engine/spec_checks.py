"""The checks a spec needs a library for, other than Lua's: JSON Schema, time zones, cron and
version ranges.

Used by the engine (``engine.checking``, with Lua syntax) and by the orchestrator and dagctl
(``orchestrator.checking``), so a spec is judged the same everywhere. Light to import:
``jsonschema``, ``re2`` and ``croniter`` load only when a spec needs them (version ranges
are read by ``engine.core.ranges``, as the orchestrator resolves them), and no Lua here.

An ``inputs_schema`` is checked on the orchestrator's event loop for every trigger, so it must
not reach the network or take unbounded time: its references must resolve inside it (nothing
is ever fetched) and its patterns run on RE2, whose matching is linear in the input. The
registration check refuses schemas that break either rule; ``engine.inputs`` holds to both
at run time with the same helpers from here.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Final

from engine.core.ranges import npm_range
from engine.core.spec import CRON_MACROS, MAX_VERSION_LENGTH, SEMVER
from engine.core.values import JSON, JSONObject

if TYPE_CHECKING:
    from croniter import croniter
    from referencing import Resource
    from referencing._core import Resolver
    from referencing.jsonschema import SchemaRegistry

Place = tuple[str | int, ...]
"""Where a schema object sits in its inputs_schema, as keys and list indexes."""

# their values are data, not schemas: never walked for references or patterns, never rewritten
_DATA_KEYWORDS: Final = frozenset({"const", "enum", "default", "examples"})
# their values map names (properties, definitions, patterns) to schemas or lists of names: the
# map itself is no schema, and a property called "$ref", "pattern" or "$schema" is no keyword
_NAME_MAPS: Final = frozenset(
    {
        "properties",
        "patternProperties",
        "$defs",
        "definitions",
        "dependentSchemas",
        "dependentRequired",
        "dependencies",
    }
)
_REFERENCES: Final = ("$ref", "$dynamicRef")

_RE2_WHY: Final = (
    "inputs_schema patterns use RE2 syntax, matched in linear time, "
    "so backreferences and lookaround are not available"
)
# ECMA-262 writes code points as \uXXXX (JSON Schema patterns are ECMA-262); RE2 as \x{XXXX}
_ECMA_UNICODE_ESCAPE: Final = re.compile(r"\\u([0-9A-Fa-f]{4})")


def json_schema_problem(schema: JSON) -> str | None:
    """Why ``schema`` is not a valid JSON Schema (with where in it), or None.

    Beyond the meta-schema: every ``$ref``/``$dynamicRef`` must resolve inside the schema, and
    every ``pattern`` and ``patternProperties`` key must compile with RE2."""
    import jsonschema
    from jsonschema.exceptions import SchemaError

    if not isinstance(schema, dict):
        return "must be an object"
    # jsonschema reads the root's $schema as a URI before any check: another type crashes it
    dialect = schema.get("$schema")
    if dialect is not None and not isinstance(dialect, str):
        return f"$schema must be a string (a JSON Schema dialect's URI), got {dialect!r}"
    validator_class: Any = jsonschema.validators.validator_for(schema)
    try:
        validator_class.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        return f"{exc.message}" + (f" (at {where})" if where else "")
    except RecursionError:
        return "nested too deeply to check"
    problems = [
        *_reference_problems(schema, validator_class.ID_OF(validator_class.META_SCHEMA)),
        *_pattern_problems(schema),
    ]
    return "; ".join(problems) or None


def schema_objects(schema: JSON) -> Iterator[tuple[Place, Place | None, dict[str, JSON]]]:
    """Every object in ``schema`` that jsonschema may apply as a (sub)schema, parents first, as
    ``(place, parent's place, object)``: all of them but the insides of const, enum, default
    and examples, and the name-keyed maps (``properties``...) themselves. Unknown keywords are
    walked too: a JSON pointer may make a schema of anything."""
    stack: list[tuple[Place, Place | None, JSON]] = [((), None, schema)]
    while stack:
        place, parent, value = stack.pop()
        if isinstance(value, list):
            stack.extend(((*place, i), parent, v) for i, v in reversed(list(enumerate(value))))
            continue
        if not isinstance(value, dict):
            continue
        yield place, parent, value
        children: list[tuple[Place, Place | None, JSON]] = []
        for key, sub in value.items():
            if key in _DATA_KEYWORDS:
                continue
            if key in _NAME_MAPS and isinstance(sub, dict):
                children.extend(((*place, key, name), place, each) for name, each in sub.items())
            else:
                children.append(((*place, key), place, sub))
        stack.extend(reversed(children))


def single_dialect(schema: JSONObject) -> JSONObject:
    """``schema`` without ``$schema`` in any of its ``schema_objects``: jsonschema switches to its
    stock validator class (which runs patterns with the backtracking ``re``) wherever it meets
    a ``$schema`` it knows, even at the root through ``$ref: '#'``. Without them the class
    chosen for the root, with RE2 patterns, applies throughout."""

    def strip(value: JSON) -> JSON:
        if isinstance(value, list):
            return [strip(v) for v in value]
        if not isinstance(value, dict):
            return value
        out: JSONObject = {}
        for key, sub in value.items():
            if key == "$schema":
                continue
            if key in _DATA_KEYWORDS:
                out[key] = sub
            elif key in _NAME_MAPS and isinstance(sub, dict):
                out[key] = {name: strip(each) for name, each in sub.items()}
            else:
                out[key] = strip(sub)
        return out

    stripped = strip(schema)
    assert isinstance(stripped, dict)
    return stripped


def sealed_registry() -> SchemaRegistry:
    """The registry an inputs_schema's references are resolved in: its ``retrieve`` fetches
    nothing, so a reference to anything outside the schema is unresolvable, never a request
    (jsonschema's default registry would urlopen it)."""
    from referencing import Registry

    return Registry(retrieve=_refuse_to_fetch)  # type: ignore[call-arg]  # an attrs alias


def _refuse_to_fetch(uri: str) -> Resource[Any]:
    from referencing.exceptions import NoSuchResource

    raise NoSuchResource(uri)


def _where(place: Place) -> str:
    return "/".join(str(p) for p in place) or "the root"


def _reference_problems(schema: JSONObject, dialect: str | None) -> Iterator[str]:
    import referencing
    import referencing.jsonschema
    from referencing.exceptions import InvalidAnchor, NoSuchAnchor, PointerToNowhere, Unresolvable

    # resolved as engine.inputs resolves them at run time: one dialect, the root's
    schema = single_dialect(schema)
    specification = referencing.jsonschema.specification_with(
        dialect or "urn:unknown-dialect", default=referencing.Specification.OPAQUE
    )
    root = sealed_registry().resolver_with_root(specification.create_resource(schema))
    resolvers: dict[Place, Resolver[Any]] = {}
    places: dict[int, Place] = {}
    # schema objects (by id) -> those applied to the same value: in-place keywords, references
    same_value: dict[int, list[tuple[int, str | None]]] = {}
    found: list[tuple[str, str, Place, Resolver[Any]]] = []
    by_place: dict[Place, int] = {}
    for place, parent, node in schema_objects(schema):
        places[id(node)] = place
        by_place[place] = id(node)
        same_value.setdefault(id(node), [])  # an alias may place one object twice
        resolver = root if parent is None else resolvers[parent]
        if isinstance(_id_of(specification, node), str):
            resolver = resolver.in_subresource(specification.create_resource(node))
        resolvers[place] = resolver
        if parent is not None and place[len(parent)] in _IN_PLACE:
            same_value[by_place[parent]].append((id(node), None))
        for keyword in (*_REFERENCES, "$recursiveRef"):
            ref = node.get(keyword)
            if isinstance(ref, str):
                if keyword != "$recursiveRef":
                    found.append((keyword, ref, place, resolver))
            elif ref is not None:
                # the meta-schemas of drafts 4 to 7 leave $ref to the validator, which
                # crashes on anything but a string
                yield f"{keyword} at {_where(place)} must be a string (a URI), got {ref!r}"
        # draft 2019-09's $recursiveRef: the root of its resource, or an outer one; either
        # way a way back to a schema already applied to the value
        if isinstance(recursive := node.get("$recursiveRef"), str):
            try:
                target = resolver.lookup(recursive).contents
            except (Unresolvable, LookupError, ValueError, TypeError, AttributeError):
                pass
            else:
                if id(target) in places:  # a schema walked already: the root, or the node
                    label = f"$recursiveRef {recursive!r} at {_where(place)}"
                    same_value[id(node)].append((id(target), label))
    for keyword, ref, place, resolver in found:
        at = f"{keyword} {ref!r} at {_where(place)}"
        try:
            target = resolver.lookup(ref).contents
        except (PointerToNowhere, NoSuchAnchor, InvalidAnchor):
            yield f"{at} points to nothing in the schema"
            continue
        except Unresolvable:
            yield f"{at} points outside the schema: inputs_schema must be self-contained"
            continue
        except (LookupError, ValueError, TypeError, AttributeError):
            # referencing's own slips on pointers through lists, strings or booleans, and on
            # what it crawls on the way: a string where the dialect has a schema, an $id of 3
            yield f"{at} points to nothing in the schema"
            continue
        if isinstance(target, bool):
            continue
        if id(target) not in places:
            yield f"{at} points to something that is not a schema"
            continue
        same_value[by_place[place]].append((id(target), at))
    yield from _loop_problems(same_value, places)


def _id_of(specification: Any, node: JSONObject) -> object:
    try:
        return specification.id_of(node)
    except (AttributeError, TypeError):
        # an $id that is no string, where the meta-schema does not look (an unknown keyword's
        # insides): jsonschema never applies it, so it names nothing
        return None


# keywords whose schemas apply to the value their schema applies to, not to a part of it
# (draft 3's type and disallow may hold schemas too); $ref and its kin are added as resolved
_IN_PLACE: Final = frozenset(
    {
        "allOf",
        "anyOf",
        "oneOf",
        "not",
        "if",
        "then",
        "else",
        "dependentSchemas",
        "dependencies",
        "extends",
        "type",
        "disallow",
    }
)


def _loop_problems(
    same_value: dict[int, list[tuple[int, str | None]]], places: dict[int, Place]
) -> Iterator[str]:
    """A reference that leads back to a schema already applied to the same value, without
    going into a part of it: checking any value that gets there would never end (jsonschema
    recurses until Python's stack runs out). A reference that goes through ``properties`` or
    ``items`` first, like a tree's, ends with the value."""
    state: dict[int, int] = {}  # 1 on the current path, 2 done
    for start in same_value:
        if start in state:
            continue
        path: list[tuple[int, str | None]] = [(start, None)]
        edges = [iter(same_value[start])]
        state[start] = 1
        while edges:
            step = next(edges[-1], None)
            if step is None:
                edges.pop()
                state[path.pop()[0]] = 2
                continue
            target = step[0]
            if state.get(target) == 1:
                at = next(i for i, (node, _) in enumerate(path) if node == target)
                loop = [*path[at + 1 :], step]
                # a loop needs a reference: the keywords alone make a tree
                first = next((each for _, each in loop if each is not None), "a reference")
                names = [_where(places[node]) for node, _ in [path[at], *loop]]
                yield (
                    f"{first} refers back to itself ({' -> '.join(names)}) without going "
                    "into a part of the value: checking inputs would never end"
                )
            elif target not in state:
                state[target] = 1
                path.append(step)
                edges.append(iter(same_value[target]))


def _pattern_problems(schema: JSONObject) -> Iterator[str]:
    for place, _, node in schema_objects(schema):
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            yield from _re2_problem("pattern", pattern, place)
        keyed = node.get("patternProperties")
        if isinstance(keyed, dict):
            for each in keyed:
                yield from _re2_problem("patternProperties", each, place)


def _re2_problem(keyword: str, pattern: str, place: Place) -> Iterator[str]:
    try:
        compile_pattern(pattern)
    except PatternError as exc:
        yield (
            f"{keyword} {pattern!r} at {_where(place)} cannot be compiled by RE2 "
            f"({exc.reason}): {_RE2_WHY}"
        )


class PatternError(ValueError):
    """A JSON Schema pattern RE2 cannot compile; the message names the pattern and why."""

    def __init__(self, pattern: str, reason: str) -> None:
        self.pattern = pattern
        self.reason = reason
        super().__init__(f"pattern {pattern!r} cannot be compiled by RE2 ({reason}): {_RE2_WHY}")


@lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> Any:
    """``pattern`` (ECMA-262, as JSON Schema writes them) compiled by RE2, to search UTF-8 bytes;
    ``PatternError`` when RE2 cannot compile it."""
    import re2  # type: ignore[import-untyped]

    options = re2.Options()
    options.log_errors = False  # the error is ours to report, not stderr's
    options.never_capture = True
    try:
        # surrogatepass: a lone surrogate (valid in a JSON string) reaches RE2 as bytes that
        # match nothing, instead of failing to encode
        return re2.compile(_re2_syntax(pattern).encode("utf-8", "surrogatepass"), options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "invalid pattern"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise PatternError(pattern, str(reason)) from exc


def pattern_matches(pattern: str, text: str) -> bool:
    """Whether ``pattern`` matches anywhere in ``text`` (JSON Schema patterns are unanchored),
    in time linear in ``text``."""
    return compile_pattern(pattern).search(text.encode("utf-8", "surrogatepass")) is not None


def _re2_syntax(pattern: str) -> str:
    # \uXXXX to \x{XXXX}, a surrogate pair to the one code point it stands for; an escaped
    # backslash is copied as is, so "\\u0041" stays a backslash and "u0041"
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern[i] != "\\":
            out.append(pattern[i])
            i += 1
            continue
        escape = _ECMA_UNICODE_ESCAPE.match(pattern, i)
        if escape is None:
            out.append(pattern[i : i + 2])
            i += 2
            continue
        code, i = int(escape[1], 16), escape.end()
        low = _ECMA_UNICODE_ESCAPE.match(pattern, i)
        if 0xD800 <= code < 0xDC00 and low is not None and 0xDC00 <= int(low[1], 16) < 0xE000:
            code = 0x10000 + ((code - 0xD800) << 10) + (int(low[1], 16) - 0xDC00)
            i = low.end()
        out.append(f"\\x{{{code:X}}}")
    return "".join(out)


@lru_cache(maxsize=512)
def timezone_problem(name: str) -> str | None:
    """Why ``name`` is not an IANA time zone this machine knows, or None."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        # OSError: a name too long for a file name, or a directory of zones ("America")
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
        problem = None if text.startswith("@") else _cron_fields_problem(text.split(" "))
        if problem is not None:
            raise CronError(f"cron {expression!r}: {problem}") from exc
        raise CronError(f"cron {expression!r} is not valid: {exc}") from exc


@dataclass(frozen=True, slots=True)
class _CronField:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] stands for the number low + i

    @property
    def accepts(self) -> str:
        number = f"a number {self.low}-{self.high}"
        return f"{number} or a name {self.names[0]}-{self.names[-1]}" if self.names else number


_SECOND: Final = _CronField("second", 0, 59)
_MINUTE: Final = _CronField("minute", 0, 59)
_HOUR: Final = _CronField("hour", 0, 23)
_DAY: Final = _CronField("day", 1, 31)
_MONTH: Final = _CronField(
    "month",
    1,
    12,
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
)
# 0 and 7 are both Sunday
_WEEKDAY: Final = _CronField("weekday", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat"))
_CRON_FIELDS: Final[dict[int, tuple[_CronField, ...]]] = {
    5: (_MINUTE, _HOUR, _DAY, _MONTH, _WEEKDAY),
    6: (_SECOND, _MINUTE, _HOUR, _DAY, _MONTH, _WEEKDAY),
}
_CRON_NUMBER: Final = re.compile(r"[0-9]+")
# croniter's hashed (H) and random (R) values, left to croniter to judge, and its day and
# weekday extensions: 15W or W15 (the weekday nearest the 15th), L5 (the month's last Friday)
_CRON_HASHED: Final = re.compile(r"[hr](\([0-9]+-[0-9]+\))?(/[0-9]+)?")
_CRON_NEAREST_WEEKDAY: Final = re.compile(r"([0-9]+)w|w([0-9]+)")
_CRON_LAST_WEEKDAY: Final = re.compile(r"l([0-9]+)")


def _cron_fields_problem(fields: list[str]) -> str | None:
    """What is wrong with the first bad field of a cron expression croniter refused, naming the
    field and what it accepts, or None when this finds nothing (croniter's text is used then).

    Only for the message: croniter does the parsing, and its errors name neither the field nor
    its range. So this must never find fault with what croniter accepts.
    """
    for kind, text in zip(_CRON_FIELDS.get(len(fields), ()), fields, strict=False):
        fault = _cron_field_fault(kind, text)
        if fault is not None:
            part, why = fault
            where = f"{kind.name} field {text!r}"
            return f"{where} {why}" if part == text else f"{where}: {part!r} {why}"
    return None


def _cron_field_fault(kind: _CronField, text: str) -> tuple[str, str] | None:
    """The first bad part of one field and what is wrong with it, or None."""
    if "?" in text:
        if text == "?" and kind in (_DAY, _WEEKDAY):
            return None
        return "?", "is allowed only as the whole day or weekday field"
    for item in text.split(","):
        if not item:
            return text, "has an empty list item"
        fault = _cron_item_fault(kind, item)
        if fault is not None:
            return fault
    return None


def _cron_item_fault(kind: _CronField, item: str) -> tuple[str, str] | None:
    """What is wrong with one list item, ``base[/step]`` with base ``*``, ``a`` or ``a-b``."""
    lowered = item.lower()
    if _CRON_HASHED.fullmatch(lowered):
        return None
    if kind is _DAY:
        if lowered == "l":
            return None
        nearest = _CRON_NEAREST_WEEKDAY.fullmatch(lowered)
        if nearest is not None:
            return _cron_value_fault(kind, nearest[1] or nearest[2])
    if kind is _WEEKDAY:
        if _CRON_LAST_WEEKDAY.fullmatch(lowered):
            return _cron_value_fault(kind, item[1:])
        base, hash_, nth = item.partition("#")
        if hash_:
            digits = nth.lstrip("0")
            if not (_CRON_NUMBER.fullmatch(nth) and len(digits) == 1 and "1" <= digits <= "5"):
                return item, f"asks for weekday #{nth} of the month: use #1 to #5"
            item = base
    malformed = (item, "is not a value, a range like 1-5 or a step like */5")
    base, slash, step = item.partition("/")
    if slash:
        if not base or "/" in step:
            return malformed
        if not _CRON_NUMBER.fullmatch(step) or not step.strip("0"):
            return item, f"has step {step!r}: use a whole number of 1 or more"
    if base == "*":
        return None
    low, dash, high = base.partition("-")
    if not dash:
        return _cron_value_fault(kind, low)
    if not low or not high or "-" in high:
        return malformed
    if kind is _DAY and high.lower() == "l":
        return _cron_value_fault(kind, low)  # 5-L: to the month's last day
    fault = _cron_value_fault(kind, low, floor=False) or _cron_value_fault(kind, high, floor=False)
    if fault is not None:
        return fault
    # croniter reads an equal range (0-0) as the whole field and a falling one (5-0) as
    # wrapping round from its top, so only a rising range can reach below the field's low end
    first, last = _cron_value(kind, low), _cron_value(kind, high)
    if first < last and first < kind.low:
        return low, f"is out of range {kind.low}-{kind.high}"
    return None


def _cron_value_fault(kind: _CronField, part: str, *, floor: bool = True) -> tuple[str, str] | None:
    """What is wrong with ``part`` as one value of the field (a number or a name), or None;
    without ``floor``, a number below the field's low end is let by."""
    if _CRON_NUMBER.fullmatch(part):
        digits = part.lstrip("0") or "0"
        # a number of thousands of digits is too long for int(), and out of range anyway
        if len(digits) > 4 or int(digits) > kind.high or (floor and int(digits) < kind.low):
            return part, f"is out of range {kind.low}-{kind.high}"
        return None
    if part.lower() in kind.names:
        return None
    if kind is _WEEKDAY and _CRON_NUMBER.fullmatch(part[:-1]) and part[-1] in "lL":
        return part, f"is not {kind.accepts} (the last one in the month is L{part[:-1]})"
    return part, f"is not {kind.accepts}"


def _cron_value(kind: _CronField, part: str) -> int:
    """The number a valid value stands for, Sunday as 0 (croniter reads 7 as 0)."""
    value = int(part) if _CRON_NUMBER.fullmatch(part) else kind.low + kind.names.index(part.lower())
    return 0 if kind is _WEEKDAY and value == 7 else value


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
        return never_fires(expression, exc)
    return None


def never_fires(expression: str, exc: Exception) -> str:
    """What is said of a cron expression croniter finds no next slot for: in its own words
    ("failed to find next date") the user is left to guess why."""
    why = (
        "no date has its day of month in its months (30 February, 31 April)"
        if "failed to find" in str(exc)
        else str(exc)
    )
    return f"cron {expression!r} never fires: {why}"


@lru_cache(maxsize=512)
def version_range_problem(text: str) -> str | None:
    """Why ``text`` is not a sub-workflow version range (npm style), or None."""
    stripped = text.strip()
    if len(stripped) > MAX_VERSION_LENGTH:
        return (
            f"{text[:40]!r}... is not a version range: longer than {MAX_VERSION_LENGTH} characters"
        )
    if stripped in ("", "latest") or SEMVER.fullmatch(stripped):
        return None
    try:
        npm_range(text)
    except ValueError as exc:
        return (
            f"{text!r} is not a version range ({exc}): use an npm-style range such as "
            "^1.2, ~1.2.3, >=1 <2, 1.x, or latest"
        )
    return None


def trigger_inputs_problems(schema: JSONObject, inputs: JSONObject) -> list[str]:
    """What ``inputs_schema`` says of a cron trigger's fixed inputs (``ExternalChecks.inputs``);
    ``engine.inputs`` (jsonschema) loads only for a spec that has both."""
    from engine.inputs import inputs_problems  # it imports this module

    return inputs_problems(schema, inputs)
