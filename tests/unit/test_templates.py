"""Templates: whole-string templates keep the raw value, inline ones become text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.durations import format_duration, parse_duration
from engine.core.errors import MissingPath, TemplateError
from engine.core.templates import Reference, iter_strings, parse_reference, references, resolve
from engine.core.values import JSON

RESULTS: dict[str, JSON] = {"extract": {"rows": [1, 2, 3], "meta": {"name": "x"}}, "n": 5}


def lookup(node: str) -> JSON:
    return RESULTS[node]


def r(value: JSON) -> JSON:
    return resolve(value, inputs={"source": "cron", "limit": 10}, results=lookup, ctx={"index": 2})


def test_whole_template_keeps_type() -> None:
    assert r("{{ results.extract.rows }}") == [1, 2, 3]
    assert r("  {{inputs.limit}} ") == 10
    assert r("{{ results.extract.rows.1 }}") == 2
    assert r("{{ ctx.index }}") == 2


def test_text_after_a_template_keeps_it_inline_even_more_braces() -> None:
    # before: both were taken as one whole template, and the text after it was dropped
    assert r("{{ inputs.limit }} and }}") == "10 and }}"
    assert r("{{ inputs.limit }}}}") == "10}}"
    assert r("{{ inputs.limit }} }} ") == "10 }} "


def test_inline_template_becomes_text() -> None:
    assert r("from {{ inputs.source }}: {{ results.extract.rows }}") == "from cron: [1,2,3]"
    assert r("{{ inputs.limit }}{{ inputs.limit }}") == "1010"
    inline = resolve("v={{ inputs.o }}", inputs={"o": {"k": "é ☃"}}, results=lookup, ctx={})
    assert inline == 'v={"k":"é ☃"}'


def test_nested_values_resolve() -> None:
    assert r({"a": ["{{ results.n }}", {"b": "{{ results.extract.meta.name }}"}], "c": 1}) == {
        "a": [5, {"b": "x"}],
        "c": 1,
    }


def test_missing_paths_name_the_template() -> None:
    with pytest.raises(
        TemplateError,
        match=r"'\{\{ results.extract.nope \}\}': results.extract \(an object\) has no 'nope'",
    ):
        r("{{ results.extract.nope }}")
    with pytest.raises(TemplateError, match="node 'ghost' has no output"):
        r("{{ results.ghost }}")
    with pytest.raises(TemplateError, match="unclosed template"):
        r("{{ inputs.x")


def test_reference_syntax() -> None:
    assert parse_reference(" results.a.b.0 ").node_id == "a"
    with pytest.raises(ValueError, match="must name a node"):
        parse_reference("results")
    with pytest.raises(ValueError, match="bad path segment"):
        parse_reference("inputs.a b")
    with pytest.raises(ValueError, match=r"^empty template '\{\{ \}\}'$"):
        parse_reference("  ")


def test_an_index_equal_to_the_length_of_a_list_is_missing() -> None:
    with pytest.raises(MissingPath, match=r"inputs.xs \(a list\) has no '2'"):
        resolve("{{ inputs.xs.2 }}", inputs={"xs": [1, 2]}, results=lookup, ctx={})


def test_a_missing_path_names_the_last_value_it_reached() -> None:
    with pytest.raises(MissingPath, match=r"inputs.a.b \(an object\) has no 'c'"):
        resolve("{{ inputs.a.b.c }}", inputs={"a": {"b": {}}}, results=lookup, ctx={})


def test_strings_nested_in_lists_and_objects_are_found_with_their_paths() -> None:
    value: JSON = {"cfg": {"plain": "text", "deep": [1, ["{{ inputs.x }}"]]}, "n": 2}
    assert list(iter_strings(value)) == [
        ("cfg.plain", "text"),
        ("cfg.deep[1][0]", "{{ inputs.x }}"),
    ]
    assert list(iter_strings(["a"], "inputs")) == [("inputs[0]", "a")]


def test_references_after_plain_strings_are_all_found() -> None:
    found = list(references({"a": "plain", "b": "{{ inputs.x }}", "c": "{{ ctx.y }}"}, "in"))
    assert found == [
        ("in.b", Reference("inputs", ("x",), "inputs.x")),
        ("in.c", Reference("ctx", ("y",), "ctx.y")),
    ]


@settings(deadline=None)  # an example a loaded machine holds up is no failure
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(alphabet="abc {}"),
        lambda kids: (
            st.lists(kids, max_size=3)
            | st.dictionaries(st.text("ab", max_size=3), kids, max_size=3)
        ),
    )
)
def test_values_without_templates_are_unchanged(value: JSON) -> None:
    if "{{" in repr(value):
        return
    assert r(value) == value


def test_durations() -> None:
    assert parse_duration("500ms") == 0.5
    assert parse_duration("1h30m") == 5400
    assert parse_duration(45) == 45
    assert parse_duration("2d") == 172800
    assert format_duration(600) == "10m"
    assert format_duration(0.25) == "250ms"
    for bad in ("ten seconds", "5x", -1, True, "1.5.5s"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)
