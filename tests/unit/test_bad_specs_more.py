"""Bad specs a fuzzer found, refused by the pure core with a message naming the field.

Each test here failed before its fix: with a crash (an AssertionError, a TypeError out of the
registry, a ValueError in Python's own words), or by accepting what can never work.
"""

from __future__ import annotations

from typing import Any

import pytest

from engine.core import luarefs
from engine.core.errors import SpecError
from engine.core.spec import ExternalChecks, parse_spec
from engine.core.values import JSON, JSONObject
from engine.spec_checks import version_range_problem
from orchestrator.errors import InvalidRange
from orchestrator.schedule import Schedule, ScheduleError, schedule_problem
from orchestrator.versions import Registry, StoredVersion, canonical_json


def problems(doc: Any, checks: ExternalChecks | None = None) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(doc, checks=checks)
    return info.value.messages()


def base(**extra: Any) -> dict[str, Any]:
    return {"id": "wf", "version": "1.0.0", "nodes": [{"id": "a", "lua": "return {}"}], **extra}


# -- depends_on -------------------------------------------------------------------------------


def test_depends_on_as_a_string_is_refused_not_read_as_a_list() -> None:
    doc = base()
    doc["nodes"].append({"id": "b", "depends_on": "a", "lua": "return {}"})
    assert problems(doc) == ["nodes[b].depends_on: must be a list of node ids"]


# -- http paths ------------------------------------------------------------------------------


def test_an_http_path_of_the_root_or_too_long_to_call_is_refused() -> None:
    got = problems(base(triggers=[{"http": {"path": "/"}}, {"http": {"path": "/" + "a" * 10_000}}]))
    assert got == [
        "triggers[0].http.path: '/' is the server's root: give the trigger a path of its own, "
        "like /hooks/name",
        "triggers[1].http.path: is 10001 characters long: a path may have 1024 at most",
    ]
    # up to the limit is a path like any other
    spec = parse_spec(base(triggers=[{"http": {"path": "/" + "a" * 1023}}]))
    assert len(spec.triggers) == 1


def test_an_http_path_with_a_character_a_route_cannot_have_says_which_it_may() -> None:
    # it starts with '/': the message used to say that is what was wrong
    assert problems(base(triggers=[{"http": {"path": "/hooks/a%20b"}}])) == [
        "triggers[0].http.path: must be a URL path: '/' then letters, digits and . _ ~ / - "
        "(no spaces, '%' escapes or query), got '/hooks/a%20b'"
    ]


# -- time zones ------------------------------------------------------------------------------


def test_an_empty_timezone_is_refused_not_read_as_utc() -> None:
    assert problems(base(triggers=[{"cron": "@daily", "timezone": ""}])) == [
        "triggers[0].timezone: is empty: give an IANA name like Europe/Berlin, "
        "or leave it out for UTC"
    ]
    assert parse_spec(base(triggers=[{"cron": "@daily"}])).triggers[0].timezone == "UTC"  # type: ignore[union-attr]


@pytest.mark.parametrize("zone", ["a" * 5000, "America"])
def test_a_timezone_too_long_for_a_file_name_is_an_unknown_zone(zone: str) -> None:
    # before: OSError (File name too long, Is a directory) out of zoneinfo
    message = f"unknown time zone {zone!r}: use an IANA name like Europe/Berlin or UTC"
    assert schedule_problem("0 6 * * *", zone) == message
    with pytest.raises(ScheduleError, match="unknown time zone"):
        Schedule("0 6 * * *", zone)


# -- versions --------------------------------------------------------------------------------


def test_a_version_too_long_for_its_numbers_to_be_read_is_refused() -> None:
    long = "1.0." + "1" * 5000
    assert problems(base(version=long)) == [
        f"version: bad version {long[:40]!r}...: longer than 256 characters"
    ]


@pytest.mark.parametrize("text", ["^1.0." + "1" * 5000, ">=1." + "2" * 5000])
def test_a_range_too_long_to_read_is_an_invalid_range_named_briefly(text: str) -> None:
    reg = Registry()
    reg.apply(reg.plan_register(parse_spec(base()), force=False, now=0.0))
    with pytest.raises(InvalidRange) as info:
        reg.resolve("wf", text)
    message = info.value.message
    assert message.endswith("does not parse: longer than 256 characters"), message
    assert f"({len(text)} characters)" in message
    assert len(message) < 200  # the range is named by its start, not in full


def test_a_sub_workflow_range_too_long_to_read_is_refused_in_plain_words() -> None:
    text = "^1." + "1" * 5000
    expected = f"{text[:40]!r}... is not a version range: longer than 256 characters"
    # before: semantic_version's int() said "Exceeds the limit (4300 digits) ... use
    # sys.set_int_max_str_digits()", and the message carried all 5,000 digits
    assert version_range_problem(text) == expected
    doc = base()
    doc["nodes"].append({"id": "b", "workflow": {"id": "other", "version": text}})
    checks = ExternalChecks(version_range=version_range_problem)
    assert problems(doc, checks) == [f"nodes[b].workflow.version: {expected}"]


def test_a_stored_version_too_long_to_read_is_named_briefly() -> None:
    version = "1.0." + "1" * 5000
    with pytest.raises(InvalidRange) as info:
        Registry().load([StoredVersion("x", version, "{}", "", 0.0)])
    assert info.value.message == (
        f"stored workflow x has a version that is not SemVer: {version[:60]!r}... (5004 characters)"
    )


# -- keys JSON cannot have -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"outputs": {1: "a", "b": "c"}},
            "outputs: key 1 is not a string: JSON keys are strings (quote it in YAML)",
        ),
        (
            {"labels": {True: "a", "b": "c"}},
            "labels: key True is not a string: JSON keys are strings (quote it in YAML)",
        ),
        (
            {"inputs_schema": {"properties": {"x": {}, 1: {}}}},
            "inputs_schema.properties: key 1 is not a string: JSON keys are strings "
            "(quote it in YAML)",
        ),
        (
            {"triggers": [{"cron": "@daily", "inputs": {"a": {None: 1, "b": 2}}}]},
            "triggers[0].inputs.a: key None is not a string: JSON keys are strings "
            "(quote it in YAML)",
        ),
    ],
)
def test_keys_that_are_not_strings_are_refused_in_free_json_fields(
    extra: dict[str, Any], message: str
) -> None:
    # before: accepted, and then the registry's canonical JSON (sorted keys) raised TypeError
    # on mixed keys, a 500
    assert problems(base(**extra)) == [message]


def test_a_sub_workflow_nodes_inputs_and_a_foreach_list_take_string_keys_only() -> None:
    doc = base()
    doc["nodes"].append(
        {"id": "b", "workflow": "other", "inputs": {1: "x"}, "foreach": [{"k": {2: "y"}}]}
    )
    assert problems(doc) == [
        "nodes[b].inputs: key 1 is not a string: JSON keys are strings (quote it in YAML)",
        "nodes[b].foreach[0].k: key 2 is not a string: JSON keys are strings (quote it in YAML)",
    ]


def test_a_spec_with_string_keys_only_still_registers() -> None:
    spec = parse_spec(base(outputs={"1": "{{ results.a }}"}, labels={"team": "x"}))
    reg = Registry()
    plan = reg.plan_register(spec, force=False, now=0.0)
    assert plan.stored.spec_json == canonical_json(spec.document)


# -- an invalid inputs_schema is never applied ------------------------------------------------


def test_trigger_inputs_are_not_checked_against_a_schema_reported_invalid() -> None:
    applied: list[JSONObject] = []

    def inputs(schema: JSONObject, given: JSONObject) -> list[str]:
        applied.append(schema)  # jsonschema raised here on these schemas: a 500
        return []

    checks = ExternalChecks(json_schema=lambda schema: "it is bad", inputs=inputs)
    doc = base(
        inputs_schema={"type": "object", "properties": {"topic": {"type": 1}}},
        triggers=[{"cron": "0 6 * * *", "inputs": {"topic": "x"}}],
    )
    assert problems(doc, checks) == ["inputs_schema: not a valid JSON Schema: it is bad"]
    assert applied == []
    # a schema that passes is applied to them as before
    good: JSON = {"type": "object"}
    parse_spec({**doc, "inputs_schema": good}, checks=ExternalChecks(inputs=inputs))
    assert applied == [good]


def test_a_spec_trigger_may_not_set_what_the_trigger_sets() -> None:
    doc = base(triggers=[{"cron": "0 6 * * *", "inputs": {"_trigger": 1, "topic": "x"}}])
    assert problems(doc, ExternalChecks()) == [
        "triggers[0].inputs._trigger: is set by the trigger as it fires: leave it out"
    ]


# -- Lua names -------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["return é", "local x = é", "é", "results.é", "return 'é' .. é"])
def test_a_letter_lua_does_not_take_for_a_name_is_not_a_name(source: str) -> None:
    # before: AssertionError (str.isalpha() takes 'é', the ASCII name pattern does not)
    assert luarefs.result_references(source) == []


def test_references_around_a_non_ascii_letter_are_still_found() -> None:
    refs = luarefs.result_references("local é = 1\nreturn results.a.x + ñ + results['b']")
    assert [(r.node_id, r.line) for r in refs] == [("a", 2), ("b", 2)]


def test_a_non_ascii_letter_in_lua_or_when_is_left_to_the_syntax_check() -> None:
    seen: list[tuple[str, bool]] = []

    def lua_syntax(code: str, expression: bool) -> tuple[str, int | None] | None:
        seen.append((code, expression))
        return ("unexpected symbol near '<\\195>'", 1)

    doc = base()
    doc["nodes"] = [{"id": "a", "lua": "return é", "when": "é"}]
    assert problems(doc, ExternalChecks(lua_syntax=lua_syntax)) == [
        "nodes[a].lua: Lua syntax error: unexpected symbol near '<\\195>' (Lua line 1)",
        "nodes[a].when: bad Lua expression: unexpected symbol near '<\\195>'",
    ]
    assert seen == [("return é", False), ("é", True)]
