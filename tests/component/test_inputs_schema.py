"""inputs_schema with the real jsonschema, referencing and re2: self-contained, linear-time.

Registration (``json_schema_problem``, through ``spec_from_text``) refuses references that leave
the schema and patterns RE2 cannot compile; ``check_inputs`` never fetches anything and never
runs a pattern on the backtracking ``re``, even for specs stored before registration refused
them (built here with ``parse_spec`` and no external checks).
"""

from __future__ import annotations

import socket
import types
import urllib.request
from typing import Any

import jsonschema._keywords
import jsonschema._legacy_keywords
import jsonschema._utils
import pytest

from engine.core.errors import InputsError, SpecError
from engine.core.spec import WorkflowSpec, parse_spec
from engine.core.values import JSON, JSONObject
from engine.inputs import check_inputs
from engine.loading import spec_from_text
from engine.spec_checks import json_schema_problem

OUTSIDE = "points outside the schema: inputs_schema must be self-contained"
RE2 = (
    "inputs_schema patterns use RE2 syntax, matched in linear time, "
    "so backreferences and lookaround are not available"
)


def stored(schema: JSONObject) -> WorkflowSpec:
    """A spec as an older registration let it through: no JSON Schema check at all."""
    return parse_spec(
        {"id": "w", "version": "1.0.0", "inputs_schema": schema, "nodes": [{"id": "a", "lua": "x"}]}
    )


def text_input(schema: JSONObject) -> JSONObject:
    """``schema`` for the input ``s``: inputs are always an object."""
    return {"properties": {"s": schema}}


def problems(spec: WorkflowSpec, inputs: JSON) -> list[str]:
    with pytest.raises(InputsError) as info:
        check_inputs(spec, inputs)
    return info.value.problems


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every way out to the network records the attempt and fails."""
    attempts: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(repr(args[:2]))
        raise OSError("network access in a test")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


@pytest.fixture
def no_backtracking(monkeypatch: pytest.MonkeyPatch) -> None:
    """jsonschema's own keywords search with ``re``; with the fix they are never called, and
    without it this fails at once instead of backtracking for ever on the inputs below."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"backtracking re.search{args!r}")

    stub = types.SimpleNamespace(search=refuse)
    for module in (jsonschema._keywords, jsonschema._utils, jsonschema._legacy_keywords):
        monkeypatch.setattr(module, "re", stub)


# registration: references


def test_a_remote_ref_is_refused_at_registration_naming_it_and_its_place() -> None:
    text = (
        "id: w\nversion: 1.0.0\ninputs_schema:\n  type: object\n"
        "  properties: {x: {$ref: 'http://example.com/schema.json'}}\n"
        "nodes:\n  - {id: a, lua: return 1}\n"
    )
    with pytest.raises(SpecError) as info:
        spec_from_text(text, "wf.yaml")
    assert info.value.messages() == [
        "wf.yaml:3: inputs_schema: not a valid JSON Schema: $ref 'http://example.com/schema.json'"
        " at properties/x points outside the schema: inputs_schema must be self-contained"
    ]


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            {"$ref": "http://example.com/schema.json"},
            f"$ref 'http://example.com/schema.json' at the root {OUTSIDE}",
        ),
        # relative, and no $id in the schema says what it is relative to
        (
            {"prefixItems": [{"$ref": "other.json"}]},
            f"$ref 'other.json' at prefixItems/0 {OUTSIDE}",
        ),
        (
            {"$id": "https://example.com/root.json", "properties": {"y": {"$ref": "other.json"}}},
            f"$ref 'other.json' at properties/y {OUTSIDE}",
        ),
        (
            {"$dynamicRef": "https://json-schema.org/draft/2020-12/schema#meta"},
            f"$dynamicRef 'https://json-schema.org/draft/2020-12/schema#meta' at the root {OUTSIDE}",
        ),
        (
            {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "definitions": {"a": {"$ref": "https://example.com/a.json"}},
            },
            f"$ref 'https://example.com/a.json' at definitions/a {OUTSIDE}",
        ),
        (
            {"properties": {"x": {"$ref": "#/$defs/missing"}}},
            "$ref '#/$defs/missing' at properties/x points to nothing in the schema",
        ),
        (
            {"properties": {"x": {"$ref": "#missing"}}},
            "$ref '#missing' at properties/x points to nothing in the schema",
        ),
        (
            {"allOf": [{"type": "string"}], "not": {"$ref": "#/allOf/first"}},
            "$ref '#/allOf/first' at not points to nothing in the schema",
        ),
        (
            {
                "properties": {
                    "a": {"const": {"type": "string"}},
                    "b": {"$ref": "#/properties/a/const"},
                }
            },
            "$ref '#/properties/a/const' at properties/b points to something that is not a schema",
        ),
        (
            {
                "properties": {
                    "a": {"$ref": "http://example.com/a.json"},
                    "b": {"$ref": "http://example.com/b.json"},
                }
            },
            f"$ref 'http://example.com/a.json' at properties/a {OUTSIDE}; "
            f"$ref 'http://example.com/b.json' at properties/b {OUTSIDE}",
        ),
    ],
)
def test_references_must_resolve_inside_the_schema(schema: JSONObject, message: str) -> None:
    assert json_schema_problem(schema) == message


@pytest.mark.parametrize(
    ("schema", "good", "bad", "error"),
    [
        (
            {"$defs": {"n": {"type": "integer"}}, "properties": {"x": {"$ref": "#/$defs/n"}}},
            {"x": 1},
            {"x": "1"},
            'inputs.x: "1" is not of type "integer"',
        ),
        (
            {
                "$defs": {"n": {"$anchor": "num", "type": "integer"}},
                "properties": {"xs": {"items": {"$ref": "#num"}}},
            },
            {"xs": [1, 2]},
            {"xs": [1, "2"]},
            'inputs.xs[1]: "2" is not of type "integer"',
        ),
        (
            {
                "$id": "https://example.com/root.json",
                "$defs": {"s": {"$id": "name.json", "type": "string"}},
                "properties": {
                    "a": {"$ref": "name.json"},
                    "b": {"$ref": "https://example.com/name.json"},
                },
            },
            {"a": "x", "b": "y"},
            {"a": "x", "b": 2},
            'inputs.b: 2 is not of type "string"',
        ),
        (
            {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "definitions": {
                    "node": {"properties": {"kids": {"type": "array", "items": {"$ref": "#"}}}}
                },
                "$ref": "#/definitions/node",
            },
            {"kids": [{"kids": []}]},
            {"kids": [{"kids": 3}]},
            'inputs.kids[0].kids: 3 is not of type "array"',
        ),
    ],
)
def test_references_inside_the_schema_register_and_resolve_offline(
    no_network: list[str], schema: JSONObject, good: JSON, bad: JSON, error: str
) -> None:
    assert json_schema_problem(schema) is None
    spec = stored(schema)
    check_inputs(spec, good)
    assert problems(spec, bad) == [error]
    assert no_network == []


def test_data_that_looks_like_a_reference_is_not_one() -> None:
    assert (
        json_schema_problem(
            {
                "properties": {"$ref": {"type": "string"}, "pattern": {"type": "string"}},
                "const": {"$ref": "http://example.com/x", "pattern": "(?=x)"},
                "default": {"$ref": "http://example.com/x"},
                "examples": [{"$ref": "http://example.com/x"}],
            }
        )
        is None
    )


# run time: references of specs stored before registration refused them


def test_a_stored_remote_ref_is_never_fetched_and_refuses_inputs_clearly(
    no_network: list[str],
) -> None:
    spec = stored({"type": "object", "properties": {"x": {"$ref": "http://example.com/s.json"}}})
    check_inputs(spec, {})  # never reached: nothing to resolve, nothing refused
    for _ in range(2):  # and again, from the cached validator
        with pytest.raises(InputsError) as info:
            check_inputs(spec, {"x": 1})
        assert info.value.problems == [
            "inputs_schema: reference 'http://example.com/s.json' points outside the schema: "
            "inputs_schema must be self-contained (nothing is fetched)"
        ]
        assert str(info.value).startswith(
            "inputs for workflow 'w' do not match its inputs_schema: inputs_schema: reference"
        )
    assert no_network == []


def test_a_stored_ref_to_nowhere_refuses_inputs_clearly() -> None:
    assert problems(stored({"$ref": "#/$defs/missing"}), {}) == [
        "inputs_schema: reference '#/$defs/missing' points to nothing in the schema"
    ]
    assert problems(stored({"$ref": "#missing"}), {}) == [
        "inputs_schema: reference '#missing' points to nothing in the schema"
    ]


# patterns


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            {"properties": {"x": {"type": "string", "pattern": "^(a)\\1$"}}},
            f"pattern '^(a)\\\\1$' at properties/x cannot be compiled by RE2 "
            f"(invalid escape sequence: \\1): {RE2}",
        ),
        (
            {"pattern": "^(?=.*[0-9])"},
            f"pattern '^(?=.*[0-9])' at the root cannot be compiled by RE2 "
            f"(invalid perl operator: (?=): {RE2}",
        ),
        (
            {"items": {"patternProperties": {"(?<!x)y": {}}}},
            f"patternProperties '(?<!x)y' at items cannot be compiled by RE2 "
            f"(invalid perl operator: (?<!): {RE2}",
        ),
    ],
)
def test_patterns_re2_cannot_compile_are_refused_at_registration(
    schema: JSONObject, message: str
) -> None:
    assert json_schema_problem(schema) == message


def test_a_pattern_re2_cannot_compile_is_reported_in_the_file() -> None:
    text = (
        "id: w\nversion: 1.0.0\ninputs_schema:\n  type: object\n"
        "  properties: {code: {type: string, pattern: '(\\w)\\1'}}\n"
        "nodes:\n  - {id: a, lua: return 1}\n"
    )
    with pytest.raises(SpecError) as info:
        spec_from_text(text, "wf.yaml")
    assert info.value.messages() == [
        "wf.yaml:3: inputs_schema: not a valid JSON Schema: pattern '(\\\\w)\\\\1' at "
        f"properties/code cannot be compiled by RE2 (invalid escape sequence: \\1): {RE2}"
    ]


def test_a_stored_pattern_re2_cannot_compile_refuses_inputs_clearly() -> None:
    spec = stored({"properties": {"x": {"pattern": "(a)\\1"}}})
    check_inputs(spec, {"y": "aa"})
    assert problems(spec, {"x": "aa"}) == [
        f"inputs_schema: pattern '(a)\\\\1' cannot be compiled by RE2 "
        f"(invalid escape sequence: \\1): {RE2}"
    ]


EVIL = "(a+)+$"
LONG = "a" * 10_000 + "!"
# LONG as a refusal shows it: JSON, cut at 200 characters, the rest counted
LONG_SHOWN = '"' + "a" * 199 + "... (9803 more characters)"


@pytest.mark.parametrize(
    ("schema", "inputs", "error"),
    [
        (
            {"properties": {"s": {"type": "string", "pattern": EVIL}}},
            {"s": LONG},
            f'inputs.s: {LONG_SHOWN} does not match "(a+)+$"',
        ),
        (
            {"patternProperties": {EVIL: {"type": "integer"}}, "additionalProperties": False},
            {LONG: 1, "aa": 1},
            f'inputs: {LONG_SHOWN} does not match any of the regexes: "(a+)+$"',
        ),
        (
            {"patternProperties": {EVIL: {"type": "integer"}}, "additionalProperties": False},
            {"aa": 1, "a": "one"},
            'inputs.a: "one" is not of type "integer"',
        ),
        (
            {"patternProperties": {EVIL: True}, "unevaluatedProperties": False},
            {LONG: 1, "aa": 2},
            f"inputs: Unevaluated properties are not allowed ({LONG_SHOWN} was unexpected)",
        ),
        (
            {
                "$schema": "https://json-schema.org/draft/2019-09/schema",
                "patternProperties": {EVIL: True},
                "unevaluatedProperties": False,
            },
            {LONG: 1, "aa": 2},
            f"inputs: Unevaluated properties are not allowed ({LONG_SHOWN} was unexpected)",
        ),
        # a $schema jsonschema knows makes it switch to its stock class, patterns and all:
        # here at the root, reached again through $ref: '#'
        (
            {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "properties": {"s": {"pattern": EVIL}, "kids": {"items": {"$ref": "#"}}},
            },
            {"kids": [{"s": LONG}]},
            f'inputs.kids[0].s: {LONG_SHOWN} does not match "(a+)+$"',
        ),
    ],
)
def test_catastrophic_patterns_run_in_linear_time(
    no_backtracking: None, schema: JSONObject, inputs: JSON, error: str
) -> None:
    assert json_schema_problem(schema) is None
    assert problems(stored(schema), inputs) == [error]


def test_catastrophic_pattern_without_any_stub() -> None:
    # a backtracking engine takes seconds here (about 2**28 steps); RE2 does not notice
    spec = stored(text_input({"pattern": EVIL}))
    assert problems(spec, {"s": "a" * 28 + "!"}) == [
        'inputs.s: "aaaaaaaaaaaaaaaaaaaaaaaaaaaa!" does not match "(a+)+$"'
    ]
    check_inputs(spec, {"s": "a" * 28})


def test_patterns_keep_ecma_262_meaning() -> None:
    # $ matches only at the very end, \d is ASCII (Python's re says otherwise to both)
    assert problems(stored(text_input({"pattern": "^[a-z]+$"})), {"s": "abc\n"}) == [
        'inputs.s: "abc\\n" does not match "^[a-z]+$"'
    ]
    assert problems(stored(text_input({"pattern": "^\\d+$"})), {"s": "\u0661\u0662"}) == [
        'inputs.s: "\u0661\u0662" does not match "^\\\\d+$"'
    ]
    # \uXXXX escapes, surrogate pairs included; an escaped backslash stays one
    pattern = "^[\\u0041-\\u005A]+\\uD83D\\uDE00$"
    schema = text_input({"pattern": pattern})
    assert json_schema_problem(schema) is None
    check_inputs(stored(schema), {"s": "AB\U0001f600"})
    assert problems(stored(schema), {"s": "ab\U0001f600"}) == [
        'inputs.s: "ab\U0001f600" does not match "^[\\\\u0041-\\\\u005A]+\\\\uD83D\\\\uDE00$"'
    ]
    check_inputs(stored(text_input({"pattern": "^\\\\u0041$"})), {"s": "\\u0041"})
    # unanchored, like ECMA-262's search
    check_inputs(stored(text_input({"pattern": "b+"})), {"s": "abbbc"})


def test_a_lone_surrogate_in_inputs_is_matched_not_a_crash() -> None:
    spec = stored({"properties": {"s": {"pattern": "^x"}}, "patternProperties": {"^k": {}}})
    check_inputs(spec, {"s": "x\ud800", "k\udc00": 1})
    assert problems(spec, {"s": "\ud800x"}) == ['inputs.s: "\\ud800x" does not match "^x"']


def test_properties_named_like_keywords_keep_their_schemas() -> None:
    spec = stored({"properties": {"$schema": {"type": "string"}, "$ref": {"type": "string"}}})
    assert problems(spec, {"$schema": 1, "$ref": 2}) == [
        'inputs.$ref: 2 is not of type "string"',
        'inputs.$schema: 1 is not of type "string"',
    ]
