"""Execution inputs against a workflow's ``inputs_schema``, checked the same way everywhere.

The engine checks them before a run starts and the orchestrator before it stores one; both
call ``check_inputs``. ``_trigger`` (what the trigger that fired a run adds: type, id,
scheduled time) is left out of the check: a schema describes what callers send, and a
schema with ``additionalProperties: false`` must not turn every cron fire away.

The orchestrator checks on its event loop, so a check must neither wait on the network nor
run long: references resolve only inside the schema (its registry fetches nothing, even for
specs stored before registration refused outside references), and every keyword that runs a
regular expression (``pattern``, ``patternProperties``, and ``additionalProperties`` and
``unevaluatedProperties``, which consult ``patternProperties``) runs it on RE2, in time
linear in the input, instead of jsonschema's backtracking ``re``.

A refusal names the field and says what is wrong in JSON's words: jsonschema's messages show
values as Python writes them (``None is not one of ['fast', 'slow']``), which no API client
sent; here they read ``null is not one of ["fast", "slow"]``, each value cut to a bounded
length.
"""

from __future__ import annotations

import ast
import json
import weakref
from collections.abc import Iterator
from functools import cache
from typing import Any, Final

import jsonschema
from jsonschema.exceptions import UnknownType, ValidationError
from referencing.exceptions import InvalidAnchor, NoSuchAnchor, PointerToNowhere, Unresolvable

from engine.core.errors import InputsError
from engine.core.spec import WorkflowSpec
from engine.core.values import JSON, JSONObject, json_kind
from engine.spec_checks import PatternError, pattern_matches, sealed_registry, single_dialect

TRIGGER_KEY: Final = "_trigger"


def caller_inputs_problem(inputs: JSON) -> str | None:
    """Why a caller's inputs are refused before any schema is asked: ``_trigger`` is set by
    a trigger as it fires, and a caller that sent it could pass for one."""
    if isinstance(inputs, dict) and TRIGGER_KEY in inputs:
        return f"inputs.{TRIGGER_KEY} is set by triggers: a caller may not send it"
    return None


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
    validator = _build(schema)
    _validators[id(spec)] = (weakref.ref(spec), validator)
    return validator


def _build(schema: JSONObject) -> Any:
    validator_class = _linear_time(jsonschema.validators.validator_for(schema))
    return validator_class(single_dialect(schema), registry=sealed_registry())


def inputs_problems(schema: JSONObject, inputs: JSONObject) -> list[str]:
    """What ``check_inputs`` would say of ``inputs`` under ``schema``, for a spec still being
    checked (a cron trigger's fixed inputs). A schema that cannot be applied says nothing
    here: the spec check reports the schema itself."""
    try:
        return _problems(_build(schema), inputs)
    except (jsonschema.SchemaError, Unresolvable, PatternError):
        return []
    except RecursionError:
        return [_TOO_DEEP]
    except UnknownType as exc:
        return [_unknown_type(exc)]


def check_inputs(spec: WorkflowSpec, inputs: JSON) -> None:
    """Refuse inputs that do not match the spec's inputs_schema, naming every problem; a schema
    that cannot be applied (a reference outside it, a pattern RE2 cannot compile: specs
    stored before registration refused them) refuses them too, saying why."""
    if not isinstance(inputs, dict):
        # every node reads inputs.<name>, with or without a schema to say so
        raise InputsError(
            spec.id, [f"inputs must be a JSON object, not {json_kind(inputs)}"], schema=False
        )
    if spec.inputs_schema is None:
        return
    if TRIGGER_KEY in inputs:
        inputs = {k: v for k, v in inputs.items() if k != TRIGGER_KEY}
    try:
        problems = _problems(_validator(spec), inputs)
    except Unresolvable as exc:
        raise InputsError(spec.id, [_unresolvable(exc)]) from exc
    except PatternError as exc:
        raise InputsError(spec.id, [f"inputs_schema: {exc}"]) from exc
    except RecursionError:
        # a schema that refers to itself in a loop (registration refuses those now, but a
        # stored spec may have one), or inputs nested deeper than its recursion can follow
        raise InputsError(spec.id, [_TOO_DEEP]) from None
    except UnknownType as exc:
        raise InputsError(spec.id, [_unknown_type(exc)]) from None
    if problems:
        raise InputsError(spec.id, problems)


def _unknown_type(exc: UnknownType) -> str:
    # draft 3's meta-schema takes any string as a type: jsonschema finds out only when it
    # checks a value against one it does not know
    return (
        f"inputs_schema: unknown type {exc.type!r}: use one JSON Schema names (object, string...)"
    )


_TOO_DEEP: Final = (
    "inputs_schema: checking the inputs recursed too deeply to finish (a $ref that leads "
    "back to itself, or inputs nested too deeply)"
)


def _problems(validator: Any, inputs: JSON) -> list[str]:
    errors = sorted(validator.iter_errors(inputs), key=lambda e: list(e.absolute_path))
    return [
        "inputs"
        + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
        + f": {_described(err)}"
        for err in errors
    ]


_SHOWN_MAX: Final = 200
"""Characters of one value a message shows; the rest is counted, not shown."""


def _shown(value: Any) -> str:
    """``value`` as JSON text for a message (``null``, ``"fast"``), cut to ``_SHOWN_MAX``."""
    return _cut(_json_text(value))


def _shown_list(values: Any) -> str:
    """``"a", "b"``: each value as JSON, the whole cut as one value is (once: a long value
    in it counts all its characters)."""
    return _cut(", ".join(_json_text(each) for each in values))


def _json_text(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (ValueError, TypeError, RecursionError):
        return f"({json_kind(value)})"  # nested past what the encoder follows
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:  # a lone surrogate, from a \ud800 escape: keep it escaped
            text = json.dumps(value, default=str)
    return text


def _cut(text: str) -> str:
    if len(text) <= _SHOWN_MAX:
        return text
    return f"{text[:_SHOWN_MAX]}... ({len(text) - _SHOWN_MAX} more characters)"


_REQUIRED: Final = " is a required property"

# keywords whose jsonschema message is a value, then these words
_SAID_OF_INSTANCE: Final = {
    "uniqueItems": "has non-unique elements",
    "contains": "does not contain items matching the given schema",
    "anyOf": "is not valid under any of the given schemas",
}


def _described(err: ValidationError) -> str:
    """What ``err`` says, rebuilt from its keyword, the keyword's value and the instance, with
    values as JSON. A keyword not named here gets a generic sentence that shows the keyword."""
    keyword, value, instance = err.validator, err.validator_value, err.instance
    if keyword in ("additionalProperties", "unevaluatedProperties"):
        return err.message  # this module's own keywords (below) write JSON already
    if keyword in ("minContains", "maxContains"):
        return err.message  # counts only, no values
    if keyword is None:
        return f"{_shown(instance)} is not allowed here (its schema is false)"
    shown = _shown(instance)
    if keyword == "type":
        types = value if isinstance(value, list) else [value]
        return f"{shown} is not of type {_shown_list(types)}"
    if keyword == "enum":
        return f"{shown} is not one of {_shown(value)}"
    if keyword == "const":
        return f"{_shown(value)} was expected, not {shown}"
    if keyword == "required" and err.message.endswith(_REQUIRED):
        name = _literal(err.message[: -len(_REQUIRED)])
        if name is not _UNREAD:
            return f"{_shown(name)}{_REQUIRED}"
    if keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return f"{shown} {_bound_words(keyword, err)} {_shown(value)}"
    if keyword in ("multipleOf", "divisibleBy"):
        return f"{shown} is not a multiple of {_shown(value)}"
    if keyword in _SIZES:
        return f"{shown} {_size_words(keyword, value)}"
    if keyword == "pattern":
        return f"{shown} does not match {_shown(value)}"
    if keyword == "format":
        return f"{shown} is not a {_shown(value)}"
    if keyword in _SAID_OF_INSTANCE:
        return f"{shown} {_SAID_OF_INSTANCE[keyword]}"
    if keyword == "oneOf":
        if err.message.endswith("is not valid under any of the given schemas"):
            return f"{shown} is not valid under any of the given schemas"
        return f"{shown} is valid under more than one of the given schemas"
    if keyword == "not":
        return f"{shown} should not be valid under {_shown(value)}"
    if keyword in ("items", "additionalItems") and value is False:
        extra = _extra_items(err)
        if extra is not None:
            return extra
    if keyword in ("dependentRequired", "dependencies"):
        pair = _dependency(err)
        if pair is not None:
            return f"{_shown(pair[0])} is a dependency of {_shown(pair[1])}"
    return f"{shown} is not valid under {{{_shown(keyword)}: {_shown(value)}}}"


_UNREAD: Final = object()


def _literal(text: str) -> Any:
    """A value jsonschema wrote with ``repr``, read back; ``_UNREAD`` when it cannot be."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return _UNREAD


def _bound_words(keyword: str, err: ValidationError) -> str:
    # drafts 3 and 4 make minimum exclusive with a boolean beside it
    exclusive = keyword.startswith("exclusive") or (
        isinstance(err.schema, dict) and err.schema.get("exclusive" + keyword.title()) is True
    )
    side = "less than" if keyword.endswith("inimum") else "greater than"
    end = "minimum" if keyword.endswith("inimum") else "maximum"
    return f"is {side}{' or equal to' if exclusive else ''} the {end} of"


# keyword -> what a value past the bound is, and the bound's unit (singular, plural)
_SIZES: Final = {
    "minLength": ("is too short (at least {}", "character", "characters"),
    "maxLength": ("is too long (at most {}", "character", "characters"),
    "minItems": ("is too short (at least {}", "item", "items"),
    "maxItems": ("is too long (at most {}", "item", "items"),
    "minProperties": ("has too few properties (at least {}", "", ""),
    "maxProperties": ("has too many properties (at most {}", "", ""),
}


def _size_words(keyword: str, bound: Any) -> str:
    if keyword.startswith("min") and bound == 1:
        return "should be non-empty"
    if keyword.startswith("max") and bound == 0:
        return "is expected to be empty"
    words, one, many = _SIZES[keyword]
    unit = one if bound == 1 else many
    return words.format(_shown(bound)) + (f" {unit})" if unit else ")")


def _extra_items(err: ValidationError) -> str | None:
    """``items: false`` after ``prefixItems`` (``additionalItems: false`` after an ``items``
    list, before draft 2020-12): how many items the array has past those."""
    instance, schema = err.instance, err.schema
    if not isinstance(instance, list) or not isinstance(schema, dict):
        return None
    allowed = schema.get("prefixItems" if err.validator == "items" else "items", [])
    if not isinstance(allowed, list) or len(instance) <= len(allowed):
        return None
    extras = instance[len(allowed) :]
    return (
        f"expected at most {len(allowed)} {'item' if len(allowed) == 1 else 'items'}, found "
        f"{len(extras)} more: {_shown(extras)}"
    )


def _dependency(err: ValidationError) -> tuple[Any, Any] | None:
    """The (missing, present) property pair a dependency error is about: jsonschema's message
    holds both as ``repr``, which cannot be split apart reliably, so the pair is found among
    those the schema names."""
    if not isinstance(err.validator_value, dict) or not isinstance(err.instance, dict):
        return None
    for present, needed in err.validator_value.items():
        names = [needed] if isinstance(needed, str) else needed
        if present not in err.instance or not isinstance(names, list):
            continue
        for missing in names:
            if err.message == f"{missing!r} is a dependency of {present!r}":
                return missing, present
    return None


def _unresolvable(exc: Unresolvable) -> str:
    # jsonschema wraps referencing's error in its own; the cause says which one it was
    cause = exc.__cause__ if isinstance(exc.__cause__, Unresolvable) else exc
    if isinstance(cause, PointerToNowhere):
        return f"inputs_schema: reference {'#' + cause.ref!r} points to nothing in the schema"
    if isinstance(cause, NoSuchAnchor | InvalidAnchor):
        return f"inputs_schema: reference {'#' + cause.anchor!r} points to nothing in the schema"
    return (
        f"inputs_schema: reference {cause.ref!r} points outside the schema: "
        "inputs_schema must be self-contained (nothing is fetched)"
    )


@cache
def _linear_time(stock: Any) -> Any:
    """``stock`` (a jsonschema validator class) with its regular-expression keywords on RE2."""
    keywords: dict[str, Any] = {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
        # draft 2019-09 counts evaluated properties its own way (it has $recursiveRef)
        "unevaluatedProperties": (
            _unevaluated_properties_2019
            if "$recursiveRef" in stock.VALIDATORS
            else _unevaluated_properties
        ),
    }
    return jsonschema.validators.extend(  # type: ignore[no-untyped-call]
        stock, {k: v for k, v in keywords.items() if k in stock.VALIDATORS}
    )


# The keywords below are jsonschema's own (jsonschema/_keywords.py, _legacy_keywords.py and
# _utils.py, 4.26), with ``re.search`` replaced by ``pattern_matches`` and values in messages
# written as JSON.


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not pattern_matches(pattern, instance):
        yield ValidationError(f"{_shown(instance)} does not match {_shown(pattern)}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for k, v in instance.items():
            if pattern_matches(pattern, k):
                yield from validator.descend(v, subschema, path=k, schema_path=pattern)


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    extras = {
        name
        for name in instance
        if name not in properties and not any(pattern_matches(p, name) for p in patterns)
    }
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        if "patternProperties" in schema:
            verb = "does" if len(extras) == 1 else "do"
            joined = _shown_list(sorted(extras))
            listed = _shown_list(sorted(patterns))
            yield ValidationError(f"{joined} {verb} not match any of the regexes: {listed}")
        else:
            yield ValidationError(
                "Additional properties are not allowed "
                f"({_extras_message(sorted(extras, key=str))} unexpected)"
            )


def _unevaluated_properties(
    validator: Any, unevaluated: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    yield from _unevaluated(validator, unevaluated, instance, schema, draft2019=False)


def _unevaluated_properties_2019(
    validator: Any, unevaluated: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    yield from _unevaluated(validator, unevaluated, instance, schema, draft2019=True)


def _unevaluated(
    validator: Any, unevaluated: Any, instance: Any, schema: Any, *, draft2019: bool
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    evaluated = _evaluated_keys(validator, instance, schema, draft2019)
    failed = [
        name
        for name in instance
        if name not in evaluated
        for _ in validator.descend(instance[name], unevaluated, path=name, schema_path=name)
    ]
    if failed:
        if unevaluated is False:
            yield ValidationError(
                "Unevaluated properties are not allowed "
                f"({_extras_message(sorted(failed, key=str))} unexpected)"
            )
        else:
            yield ValidationError(
                "Unevaluated properties are not valid under the given schema "
                f"({_extras_message(failed)} unevaluated and invalid)"
            )


def _evaluated_keys(validator: Any, instance: Any, schema: Any, draft2019: bool) -> list[Any]:
    if validator.is_type(schema, "boolean"):
        return []
    keys: list[Any] = []

    def follow(resolved: Any) -> None:
        keys.extend(
            _evaluated_keys(
                validator.evolve(schema=resolved.contents, _resolver=resolved.resolver),
                instance,
                resolved.contents,
                draft2019,
            )
        )

    if (ref := schema.get("$ref")) is not None:
        follow(validator._resolver.lookup(ref))
    if draft2019 and "$recursiveRef" in schema:
        from jsonschema._legacy_keywords import lookup_recursive_ref  # type: ignore[attr-defined]

        follow(lookup_recursive_ref(validator._resolver))
    if not draft2019 and (dynamic_ref := schema.get("$dynamicRef")) is not None:
        follow(validator._resolver.lookup(dynamic_ref))

    if draft2019:
        for keyword in ("properties", "additionalProperties", "unevaluatedProperties"):
            if keyword in schema:
                value = schema[keyword]
                if validator.is_type(value, "boolean") and value:
                    keys += instance.keys()
                elif validator.is_type(value, "object"):
                    keys += [name for name in value if name in instance]
    else:
        properties = schema.get("properties")
        if validator.is_type(properties, "object"):
            keys += properties.keys() & instance.keys()
        for keyword in ("additionalProperties", "unevaluatedProperties"):
            if (subschema := schema.get(keyword)) is not None:
                keys += [
                    name
                    for name, value in instance.items()
                    if _is_valid(validator.descend(value, subschema))
                ]

    for pattern in schema.get("patternProperties", {}):
        keys += [name for name in instance if pattern_matches(pattern, name)]

    for name, subschema in schema.get("dependentSchemas", {}).items():
        if name in instance:
            keys += _evaluated_keys(validator, instance, subschema, draft2019)

    for keyword in ("allOf", "oneOf", "anyOf"):
        for subschema in schema.get(keyword, []):
            if _is_valid(validator.descend(instance, subschema)):
                keys += _evaluated_keys(validator, instance, subschema, draft2019)

    if "if" in schema:
        if validator.evolve(schema=schema["if"]).is_valid(instance):
            keys += _evaluated_keys(validator, instance, schema["if"], draft2019)
            if "then" in schema:
                keys += _evaluated_keys(validator, instance, schema["then"], draft2019)
        elif "else" in schema:
            keys += _evaluated_keys(validator, instance, schema["else"], draft2019)
    return keys


def _is_valid(errors: Iterator[ValidationError]) -> bool:
    return next(errors, None) is None


def _extras_message(extras: list[Any]) -> str:
    verb = "was" if len(extras) == 1 else "were"
    return _shown_list(extras) + f" {verb}"
