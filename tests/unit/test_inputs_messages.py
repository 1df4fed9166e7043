"""What a refusal of inputs under an ``inputs_schema`` says: the field's path, and the values in
JSON's words (``null``, ``false``, double quotes), never Python's (``None``, ``False``, ``'x'``),
each cut to a bounded length."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest

from engine.core.errors import InputsError
from engine.core.spec import WorkflowSpec
from engine.inputs import _build, _problems, check_inputs, inputs_problems
from engine.loading import spec_from_document

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["n", "cfg"],
    "properties": {
        "n": {"type": "integer", "minimum": 1},
        "cfg": {
            "type": "object",
            "properties": {
                "mode": {"enum": ["fast", "slow"]},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
        },
    },
}


def spec(schema: dict[str, Any]) -> WorkflowSpec:
    return spec_from_document(
        {
            "id": "wf",
            "version": "1.0.0",
            "inputs_schema": schema,
            "nodes": [{"id": "a", "lua": "return {}"}],
        }
    )


def test_the_reported_refusals_read_as_json() -> None:
    inputs = {"n": True, "cfg": {"mode": None, "tags": [False, {"k": None}]}}
    with pytest.raises(InputsError) as refused:
        check_inputs(spec(SCHEMA), inputs)
    assert refused.value.problems == [
        'inputs.cfg.mode: null is not one of ["fast", "slow"]',
        'inputs.cfg.tags[0]: false is not of type "string"',
        'inputs.cfg.tags[1]: {"k": null} is not of type "string"',
        'inputs.n: true is not of type "integer"',
    ]


def test_no_python_spelling_is_left() -> None:
    problems = inputs_problems(SCHEMA, {"n": True, "cfg": {"mode": None, "tags": [False]}})
    for problem in problems:
        assert not re.search(r"\b(None|True|False)\b|'", problem), problem


@pytest.mark.parametrize(
    ("schema", "inputs", "problem"),
    [
        ({"required": ["n"]}, {}, 'inputs: "n" is a required property'),
        ({"required": ["it's"]}, {}, 'inputs: "it\'s" is a required property'),
        ({"type": ["integer", "null"]}, "x", 'inputs: "x" is not of type "integer", "null"'),
        ({"const": "fast"}, None, 'inputs: "fast" was expected, not null'),
        ({"minimum": 1}, 0.5, "inputs: 0.5 is less than the minimum of 1"),
        ({"maximum": 1}, 2, "inputs: 2 is greater than the maximum of 1"),
        ({"exclusiveMinimum": 1}, 1, "inputs: 1 is less than or equal to the minimum of 1"),
        ({"exclusiveMaximum": 3}, 3, "inputs: 3 is greater than or equal to the maximum of 3"),
        (
            {
                "$schema": "http://json-schema.org/draft-04/schema#",
                "minimum": 1,
                "exclusiveMinimum": True,
            },
            1,
            "inputs: 1 is less than or equal to the minimum of 1",
        ),
        ({"multipleOf": 2}, 3, "inputs: 3 is not a multiple of 2"),
        ({"minLength": 3}, "ab", 'inputs: "ab" is too short (at least 3 characters)'),
        ({"minLength": 1}, "", 'inputs: "" should be non-empty'),
        ({"maxLength": 1}, "xx", 'inputs: "xx" is too long (at most 1 character)'),
        ({"maxLength": 0}, "x", 'inputs: "x" is expected to be empty'),
        ({"minItems": 2}, [None], "inputs: [null] is too short (at least 2 items)"),
        ({"maxItems": 1}, [True, False], "inputs: [true, false] is too long (at most 1 item)"),
        (
            {"minProperties": 2},
            {"a": None},
            'inputs: {"a": null} has too few properties (at least 2)',
        ),
        ({"maxProperties": 0}, {"a": 1}, 'inputs: {"a": 1} is expected to be empty'),
        ({"pattern": "^a\\d$"}, "b", 'inputs: "b" does not match "^a\\\\d$"'),
        ({"uniqueItems": True}, [None, None], "inputs: [null, null] has non-unique elements"),
        (
            {"not": {"type": "null"}},
            None,
            'inputs: null should not be valid under {"type": "null"}',
        ),
        (
            {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            None,
            "inputs: null is not valid under any of the given schemas",
        ),
        (
            {"oneOf": [{"type": "integer"}, {"minimum": 0}]},
            5,
            "inputs: 5 is valid under more than one of the given schemas",
        ),
        (
            {"contains": {"type": "string"}},
            [False],
            "inputs: [false] does not contain items matching the given schema",
        ),
        (
            {"properties": {"a": {"type": "string"}}, "additionalProperties": False},
            {"a": "x", "b": None, "c": 1},
            'inputs: Additional properties are not allowed ("b", "c" were unexpected)',
        ),
        (
            {"patternProperties": {"^x": {}}, "additionalProperties": False},
            {"y": 1},
            'inputs: "y" does not match any of the regexes: "^x"',
        ),
        (
            {"unevaluatedProperties": False},
            {"z": None},
            'inputs: Unevaluated properties are not allowed ("z" was unexpected)',
        ),
        ({"dependentRequired": {"a": ["b"]}}, {"a": None}, 'inputs: "b" is a dependency of "a"'),
        (
            {"$schema": "http://json-schema.org/draft-07/schema#", "dependencies": {"a": ["b"]}},
            {"a": None},
            'inputs: "b" is a dependency of "a"',
        ),
        (
            {"prefixItems": [{}], "items": False},
            [None, True, None],
            "inputs: expected at most 1 item, found 2 more: [true, null]",
        ),
        (
            {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "items": [{}, {}],
                "additionalItems": False,
            },
            [None, True, None],
            "inputs: expected at most 2 items, found 1 more: [null]",
        ),
        # no rebuilt words for this one: the generic form, still in JSON
        (
            {"prefixItems": [{}], "unevaluatedItems": False},
            [None, True],
            'inputs: [null, true] is not valid under {"unevaluatedItems": false}',
        ),
    ],
)
def test_each_keyword_says_it_in_json(schema: dict[str, Any], inputs: Any, problem: str) -> None:
    assert inputs_problems(schema, inputs) == [problem]


def test_a_format_refusal_reads_as_json() -> None:
    # formats are not asserted by check_inputs; a validator that asserts them words them so
    schema = {"format": "ipv4"}
    validator = _build(schema).__class__(schema, format_checker=jsonschema.FormatChecker())
    assert _problems(validator, "x") == ['inputs: "x" is not a "ipv4"']


def test_a_long_value_is_cut_with_a_count() -> None:
    [problem] = inputs_problems({"properties": {"big": {"type": "string"}}}, {"big": [0] * 500})
    shown = "[" + ", ".join(["0"] * 500) + "]"
    assert problem == (
        f'inputs.big: {shown[:200]}... ({len(shown) - 200} more characters) is not of type "string"'
    )
    [problem] = inputs_problems({"enum": ["x" * 300]}, "y")
    assert problem == f'inputs: "y" is not one of ["{"x" * 198}... (104 more characters)'
    extras = {f"k{i}": i for i in range(200)}
    [problem] = inputs_problems({"additionalProperties": False}, extras)
    assert "more characters) were unexpected)" in problem and len(problem) < 300


def test_a_lone_surrogate_stays_escaped() -> None:
    [problem] = inputs_problems({"enum": ["a"]}, "\udc00")
    assert problem == 'inputs: "\\udc00" is not one of ["a"]'
    problem.encode()  # text any transport can carry
