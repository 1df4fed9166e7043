"""Spec validation: every problem is reported at once, each naming its place."""

from __future__ import annotations

from typing import Any

import pytest

from engine.core.builder import Workflow
from engine.core.errors import SpecError
from engine.core.spec import RetryPolicy, parse_spec


def problems(doc: Any) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(doc)
    return info.value.messages()


def base(**extra: Any) -> dict[str, Any]:
    return {"id": "wf", "version": "1.0.0", "nodes": [{"id": "a", "lua": "return {}"}], **extra}


def test_valid_spec_builds_typed_model() -> None:
    wf = parse_spec(
        {
            "id": "data-pipeline",
            "version": "1.2.0",
            "concurrency": 8,
            "timeout": "10m",
            "nodes": [
                {"id": "extract", "lua": "return {rows={1,2}}"},
                {
                    "id": "transform",
                    "depends_on": ["extract"],
                    "timeout": "30s",
                    "retry": {
                        "max_attempts": 3,
                        "backoff": "exponential",
                        "delay": "1s",
                        "max_delay": "30s",
                    },
                    "lua": "return results.extract",
                },
                {"id": "wait", "depends_on": ["transform"], "sleep": "1m30s"},
            ],
            "triggers": [
                {"cron": "*/5 * * * *", "timezone": "Europe/Berlin"},
                {"http": {"path": "/hooks/p", "auth": {"bearer_env": "TOKEN"}}},
            ],
        }
    )
    assert wf.timeout == 600 and wf.concurrency == 8
    assert wf.by_id["transform"].retry.max_attempts == 3
    assert wf.by_id["transform"].timeout == 30
    assert wf.by_id["wait"].sleep == 90 and wf.by_id["wait"].kind == "sleep"
    assert wf.order == ("extract", "transform", "wait")
    assert wf.sink_ids == {"wait"}
    assert wf.triggers[0].timezone == "Europe/Berlin"  # type: ignore[union-attr]


def test_every_problem_is_reported_at_once() -> None:
    got = problems(
        {
            "id": "Bad ID",
            "version": "1.0",
            "concurency": 3,
            "nodes": [
                {"id": "a", "lua": "return {}", "timeout": "3 parsecs"},
                {"id": "a", "lua": "return {}"},
                {"id": "b", "depends_on": ["nope"], "lua": "return {}", "trigger_rule": "any"},
                {"id": "9bad", "lua": "x"},
            ],
        }
    )
    assert got == [
        "concurency: unknown field 'concurency' (did you mean 'concurrency'?)",
        "id: bad workflow id 'Bad ID': use 1-63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit",
        "version: bad version '1.0': must be SemVer 2.0.0 like 1.2.0 (quote it in YAML)",
        "nodes[a].timeout: bad duration '3 parsecs': use a number of seconds or units like 500ms, 30s, 10m, 1h30m, 2d",
        "nodes[a]: duplicate node id 'a' (first defined as nodes[0])",
        "nodes[b].trigger_rule: must be one of all_success, none_failed, all_done, one_failed, got 'any'",
        "nodes[3].id: bad node id '9bad': use 1-63 of letters, digits, '_' or '-', starting with a letter or '_'",
        "nodes[b].depends_on: unknown dependency 'nope'",
    ]


def test_cycle_is_reported_with_its_path() -> None:
    got = problems(
        base(
            nodes=[
                {"id": "a", "lua": "x", "depends_on": ["c"]},
                {"id": "b", "lua": "x", "depends_on": ["a"]},
                {"id": "c", "lua": "x", "depends_on": ["b"]},
                {"id": "d", "lua": "x"},
            ]
        )
    )
    assert got == ["nodes[a]: dependency cycle: a -> b -> c -> a"]


def test_a_cycle_does_not_hide_reads_of_non_ancestors() -> None:
    got = problems(
        base(
            nodes=[
                {"id": "a", "lua": "x", "depends_on": ["b"]},
                {"id": "b", "lua": "x", "depends_on": ["a"]},
                {"id": "d", "lua": "x"},
                {"id": "e", "foreach": "{{ results.d.rows }}", "lua": "x", "depends_on": ["a"]},
            ]
        )
    )
    assert got[0] == "nodes[a]: dependency cycle: a -> b -> a"
    assert len(got) == 2 and got[1].startswith(
        "nodes[e].foreach: results.d: node 'd' is not an ancestor of 'e'"
    ), got


def test_self_dependency() -> None:
    assert problems(base(nodes=[{"id": "a", "lua": "x", "depends_on": ["a"]}])) == [
        "nodes[a].depends_on: node 'a' depends on itself"
    ]


def test_fields_other_systems_name_otherwise_suggest_ours() -> None:
    # spelling alone pointed script at description
    got = problems(
        {
            "id": "wf",
            "version": "1.0.0",
            "steps": [],
            "nodes": [
                {"id": "a", "script": "return 1"},
                {"id": "b", "lua": "x", "needs": ["a"], "if": "true", "with_items": [1]},
            ],
        }
    )
    assert got == [
        "steps: unknown field 'steps' (did you mean 'nodes'?)",
        "nodes[a].script: unknown field 'script' (did you mean 'lua'?)",
        "nodes[a]: needs exactly one of lua, workflow, sleep (found: none)",
        "nodes[b].needs: unknown field 'needs' (did you mean 'depends_on'?)",
        "nodes[b].if: unknown field 'if' (did you mean 'when'?)",
        "nodes[b].with_items: unknown field 'with_items' (did you mean 'foreach'?)",
    ]


def test_a_node_without_an_id_has_its_other_fields_checked_too() -> None:
    got = problems(base(nodes=[{"name": "b", "script": "return 2"}, {"id": "a", "lua": "x"}]))
    assert got == [
        "nodes[0]: node has no id (its name is a title: every node needs an id)",
        "nodes[0].script: unknown field 'script' (did you mean 'lua'?)",
    ]
    assert problems(base(nodes=[{"lua": "x"}])) == ["nodes[0]: node has no id"]


def test_unknown_fields_suggest_the_right_name() -> None:
    got = problems(
        base(nodes=[{"id": "a", "lua": "x", "depend_on": ["b"], "retry": {"max_attempt": 2}}])
    )
    assert got == [
        "nodes[a].depend_on: unknown field 'depend_on' (did you mean 'depends_on'?)",
        "nodes[a].retry.max_attempt: unknown field 'max_attempt' (did you mean 'max_attempts'?)",
    ]


def test_node_kind_must_be_exactly_one() -> None:
    got = problems(base(nodes=[{"id": "a"}, {"id": "b", "lua": "x", "sleep": "1s"}]))
    assert got == [
        "nodes[a]: needs exactly one of lua, workflow, sleep (found: none)",
        "nodes[b]: needs exactly one of lua, workflow, sleep (found: lua, sleep)",
    ]


def test_templates_must_reference_ancestors() -> None:
    got = problems(
        base(
            nodes=[
                {"id": "a", "lua": "return {}"},
                {"id": "b", "lua": "return {}"},
                {
                    "id": "c",
                    "depends_on": ["a"],
                    "foreach": "{{ results.b.items }}",
                    "lua": "return results.a",
                },
                {
                    "id": "d",
                    "depends_on": ["a"],
                    "workflow": {"id": "child"},
                    "inputs": {"x": "{{ results.ghost.v }}", "y": "{{ nonsense }}"},
                },
            ]
        )
    )
    assert got == [
        "nodes[c].foreach: results.b: node 'b' is not an ancestor of 'c'; add it to depends_on",
        "nodes[d].inputs: results.ghost: there is no node 'ghost'",
        "nodes[d].inputs.y: template '{{ nonsense }}' must start with one of inputs, results, ctx",
    ]


def test_lua_result_references_are_checked_with_line() -> None:
    got = problems(
        base(
            nodes=[
                {"id": "extract", "lua": "return {}"},
                {
                    "id": "load",
                    "depends_on": ["extract"],
                    "lua": "-- results.old is fine in a comment\nlocal s = 'results.x'\nreturn results.extrct.rows",
                },
                {
                    "id": "check",
                    "depends_on": ["extract"],
                    "when": "results.load.ok",
                    "lua": "return {}",
                },
            ]
        )
    )
    assert got == [
        "nodes[load].lua: results.extrct: there is no node 'extrct' (did you mean 'extract'?) (Lua line 3)",
        "nodes[check].when: results.load: node 'load' is not an ancestor of 'check'; add it to depends_on",
    ]


def test_when_and_foreach_shapes() -> None:
    got = problems(
        base(
            nodes=[
                {"id": "a", "lua": "x", "when": "{{ results.a.ok }}"},
                {"id": "b", "lua": "x", "foreach": "items: {{ inputs.items }}"},
                {"id": "c", "lua": "x", "foreach": 42},
                {"id": "d", "lua": "x", "concurrency": 2},
            ]
        )
    )
    assert got == [
        "nodes[a].when: is a Lua expression, not a template: write results.x.y > 0, without {{ }}",
        "nodes[b].foreach: must be one template like '{{ results.extract.rows }}' or a list, got 'items: {{ inputs.items }}'",
        "nodes[c].foreach: must be a template or a list",
        "nodes[d].concurrency: applies to foreach nodes only (the workflow's concurrency bounds the rest)",
    ]


def test_durations_and_retry() -> None:
    got = problems(
        base(
            timeout="0s",
            nodes=[
                {
                    "id": "a",
                    "lua": "x",
                    "retry": {
                        "max_attempts": 0,
                        "backoff": "linear",
                        "delay": "5s",
                        "max_delay": "1s",
                    },
                },
            ],
        )
    )
    assert got == [
        "timeout: must be longer than zero",
        "nodes[a].retry.max_attempts: must be a whole number >= 1, got 0",
        "nodes[a].retry.backoff: must be one of fixed, exponential, got 'linear'",
        "nodes[a].retry: max_delay is shorter than delay",
    ]


def test_triggers() -> None:
    got = problems(
        base(
            triggers=[
                {"cron": "* * *"},
                {"cron": "@fortnightly"},
                {"cron": "0 * * * *", "overlap": "queue"},
                {"http": {"path": "/api/v1/x"}},
                {"http": {"path": "/h", "auth": {"bearer_env": "A", "hmac_env": "B"}}},
                {"webhook": "x"},
            ]
        )
    )
    assert got == [
        "triggers[0].cron: cron '* * *' has 3 fields: use 5 (minute hour day month weekday), 6 with seconds first, or a macro like @hourly",
        "triggers[1].cron: unknown cron macro '@fortnightly' (did you mean '@monthly'?)",
        "triggers[2].overlap: must be one of skip, allow, cancel_previous, got 'queue'",
        "triggers[3].http.path: '/api/v1/x' is reserved for the built-in API",
        "triggers[4].http.auth: give bearer_env or hmac_env, not both",
        "triggers[5]: must be a cron trigger {cron: ...} or an http trigger {http: {path: ...}}",
    ]


def test_a_trigger_names_one_path_or_id_and_a_path_has_one_spelling() -> None:
    got = problems(
        base(
            triggers=[
                {"http": {"path": "/hooks/a"}},
                {"http": {"path": "/hooks/a"}},
                {"http": {"path": "/hooks/a/"}},
                {"http": {"path": "/hooks//b"}},
                {"http": {"path": "/hooks/../api/v1/x"}},
                {"cron": "@daily", "id": "nightly"},
                {"cron": "@hourly", "id": "nightly"},
            ]
        )
    )
    plain = "must be a plain URL path (no trailing '/', '//', '.' or '..'), got"
    assert got == [
        "triggers[1].http.path: path '/hooks/a' is taken by triggers[0].http.path already",
        f"triggers[2].http.path: {plain} '/hooks/a/'",
        f"triggers[3].http.path: {plain} '/hooks//b'",
        f"triggers[4].http.path: {plain} '/hooks/../api/v1/x'",
        "triggers[6].id: id 'nightly' is taken by triggers[5].id already",
    ]


def test_an_auth_field_written_one_level_up_says_where_it_goes() -> None:
    got = problems(base(triggers=[{"http": {"path": "/h", "bearer_env": "TOKEN"}}]))
    assert got == [
        "triggers[0].http.bearer_env: unknown field 'bearer_env'"
        " (it belongs under auth: {bearer_env: ...})"
    ]


def test_not_a_mapping() -> None:
    assert problems(["a"]) == ["a workflow spec must be a mapping, got a list"]
    assert problems(None) == ["a workflow spec must be a mapping, got nothing"]


def test_builder_produces_the_same_model_as_a_document() -> None:
    built = (
        Workflow("etl", "1.0.0", concurrency=4)
        .node("extract", lua="return {rows={1}}")
        .node(
            "load", lua="return results.extract", depends_on=["extract"], retry={"max_attempts": 2}
        )
        .build()
    )
    parsed = parse_spec(
        {
            "id": "etl",
            "version": "1.0.0",
            "concurrency": 4,
            "nodes": [
                {"id": "extract", "lua": "return {rows={1}}"},
                {
                    "id": "load",
                    "lua": "return results.extract",
                    "depends_on": ["extract"],
                    "retry": {"max_attempts": 2},
                },
            ],
        }
    )
    assert built == parsed
    assert built.document == parsed.document


def test_builder_reports_problems_like_documents() -> None:
    with pytest.raises(SpecError, match=r"nodes\[b\].depends_on: unknown dependency 'x'"):
        Workflow("w", "1.0.0").node("b", lua="x", depends_on=["x"]).build()


def test_a_sleep_node_takes_no_timeout_or_retry() -> None:
    got = problems(
        base(
            nodes=[
                {"id": "a", "sleep": "10s", "timeout": "1s", "retry": {"max_attempts": 2}},
                {"id": "b", "sleep": "10s", "timeout": "soon", "retry": 3},
                {"id": "c", "lua": "return {}", "timeout": "1s", "retry": 2},
            ]
        )
    )
    assert got == [
        "nodes[a].retry: a sleep node cannot be retried: it only waits, and waiting cannot fail",
        "nodes[a].timeout: a sleep node cannot time out: it only waits (shorten the sleep instead)",
        "nodes[b].retry: a sleep node cannot be retried: it only waits, and waiting cannot fail",
        "nodes[b].timeout: a sleep node cannot time out: it only waits (shorten the sleep instead)",
    ]


def test_a_missing_version_an_empty_lua_and_a_workflow_that_is_no_mapping_are_named() -> None:
    got = problems(
        {
            "id": "wf",
            "nodes": [
                {"id": "a", "lua": "  \n "},
                {"id": "w", "depends_on": ["a"], "workflow": ["child", "^1"]},
            ],
        }
    )
    assert got == [
        "version: is required",
        "nodes[a].lua: is empty",
        "nodes[w].workflow: must be {id: ..., version: ...}",
    ]


def test_an_empty_template_is_named_where_it_is_written() -> None:
    sub = {"id": "w", "workflow": {"id": "child"}, "inputs": {"x": "{{ }}", "y": "a {{}} b"}}
    assert problems(base(nodes=[{"id": "a", "lua": "return 1"}, sub])) == [
        "nodes[w].inputs.x: empty template '{{ }}'",
        "nodes[w].inputs.y: empty template '{{ }}'",
    ]


def test_a_template_nested_deep_in_sub_workflow_inputs_is_checked() -> None:
    inputs = {"cfg": {"plain": "text", "deep": ["{{ results.nope.x }}"]}}
    sub = {"id": "w", "depends_on": ["a"], "workflow": {"id": "child"}, "inputs": inputs}
    assert problems(base(nodes=[{"id": "a", "lua": "return 1"}, sub])) == [
        "nodes[w].inputs: results.nope: there is no node 'nope'"
    ]


def test_the_least_allowed_whole_numbers_are_allowed() -> None:
    node = {"id": "a", "lua": "return 1", "concurrency": 1, "foreach": [1]}
    wf = parse_spec(base(concurrency=1, nodes=[{**node, "retry": {"max_attempts": 1}}]))
    assert wf.concurrency == 1 and wf.nodes[0].concurrency == 1
    assert wf.nodes[0].retry.max_attempts == 1


def test_fail_fast_as_text_is_refused() -> None:
    assert problems(base(fail_fast="false")) == ["fail_fast: must be true or false, got 'false'"]


def test_inputs_schema_that_is_not_an_object_is_refused() -> None:
    assert problems(base(inputs_schema=["string"])) == [
        "inputs_schema: must be a JSON Schema object"
    ]


def test_depends_on_that_is_not_a_list_is_one_problem_whatever_it_holds() -> None:
    got = problems(
        base(
            nodes=[
                {"id": "a", "lua": "return 1"},
                {"id": "b", "lua": "return 1", "depends_on": 5},
                {"id": "c", "lua": "return 1", "depends_on": {"a": True}},
            ]
        )
    )
    assert got == [
        "nodes[b].depends_on: must be a list of node ids",
        "nodes[c].depends_on: must be a list of node ids",
    ]


def test_a_bad_auth_env_name_is_refused() -> None:
    doc = base(triggers=[{"http": {"path": "/hook", "auth": {"bearer_env": "not a name"}}}])
    assert problems(doc) == [
        "triggers[0].http.auth.bearer_env: must name an environment variable, got 'not a name'"
    ]


def test_numbers_json_cannot_carry_are_named_as_such() -> None:
    foreach = [float("inf"), float("-inf"), float("nan")]
    got = problems(base(nodes=[{"id": "a", "lua": "return 1", "foreach": foreach}]))
    fix = "is not a number JSON can carry: write a finite number, or a string"
    assert got == [
        f"nodes[a].foreach[0]: Infinity {fix}",
        f"nodes[a].foreach[1]: -Infinity {fix}",
        f"nodes[a].foreach[2]: NaN {fix}",
    ]


def test_yaml_binary_is_named_as_such() -> None:
    got = problems(base(nodes=[{"id": "a", "lua": "return 1", "foreach": [b"x"]}]))
    assert got == [
        "nodes[a].foreach[0]: is YAML binary (!!binary), not a JSON value: write it as a string"
    ]


# -- retry policies ---------------------------------------------------------------------------


def test_retry_defaults_to_one_second_fixed_capped_at_five_minutes_without_jitter() -> None:
    wf = parse_spec(base(nodes=[{"id": "a", "lua": "return 1", "retry": {"max_attempts": 2}}]))
    r = wf.nodes[0].retry
    assert (r.max_attempts, r.backoff, r.delay, r.max_delay, r.jitter) == (
        2,
        "fixed",
        1.0,
        300.0,
        0.0,
    )


def test_jitter_true_is_half_a_fraction_is_kept_and_more_than_one_is_refused() -> None:
    def with_jitter(jitter: object) -> dict[str, Any]:
        retry = {"max_attempts": 2, "jitter": jitter}
        return base(nodes=[{"id": "a", "lua": "return 1", "retry": retry}])

    assert parse_spec(with_jitter(True)).nodes[0].retry.jitter == 0.5
    assert parse_spec(with_jitter(0.2)).nodes[0].retry.jitter == 0.2
    assert problems(with_jitter(2)) == [
        "nodes[a].retry.jitter: must be true/false or a fraction 0..1, got 2"
    ]


def test_jitter_still_spreads_a_delay_capped_at_max_delay() -> None:
    p = RetryPolicy(
        max_attempts=20, backoff="exponential", delay=100.0, max_delay=300.0, jitter=0.5
    )
    assert p.delay_before(10, 0.0) == 150.0


def test_a_zero_delay_retries_at_once() -> None:
    assert RetryPolicy(max_attempts=3, delay=0.0).delay_before(2, 0.5) == 0.0


def test_a_very_late_exponential_attempt_waits_max_delay_without_overflow() -> None:
    p = RetryPolicy(max_attempts=5000, backoff="exponential", delay=1.0, max_delay=300.0)
    assert p.delay_before(1026, 0.5) == 300.0
    assert p.delay_before(3000, 0.5) == 300.0


def test_a_node_with_a_problem_of_its_own_is_still_there_for_the_outputs() -> None:
    doc = {
        "id": "val",
        "version": "1.0.0",
        "outputs": {"x": "{{ results.a.v }}", "y": "{{ results.gone.v }}"},
        "nodes": [
            {"id": "a", "retry": {"max_attempts": 2, "delay": "50ms", "max_delay": "20ms"},
             "lua": "return { v = 1 }"},
        ],
    }  # fmt: skip
    assert problems(doc) == [
        "nodes[a].retry: max_delay is shorter than delay",
        "outputs.y: results.gone: there is no node 'gone'",
    ]
