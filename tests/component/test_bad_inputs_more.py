"""Bad specs and inputs a fuzzer found, through the real parsers, checks and adapters.

Each is refused with a message naming the problem and its place (file line, field), where
before it was accepted and poisoned every run, or crashed: a 500 from the orchestrator, a
traceback from ``python -m engine``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.rpc import status_pb2

from engine import cli
from engine.api import dagengine_pb2 as pb
from engine.api import dagengine_pb2_grpc as pb_grpc
from engine.core.errors import InputsError, SpecError
from engine.core.spec import WorkflowSpec, parse_spec
from engine.core.values import JSONObject
from engine.inputs import check_inputs, inputs_problems
from engine.loading import spec_from_document, spec_from_text
from engine.spec_checks import json_schema_problem, timezone_problem
from engine.wire import field_violations
from orchestrator.orchestrating import Orchestrator
from tests.component.serving_helpers import served_facade

HEAD = "id: w\nversion: 1.0.0\nnodes:\n  - id: a\n    lua: return 1\n"
"""Five lines: what a test adds starts on line 6."""

NAN = "NaN is not a number JSON can carry: write a finite number, or a string"


def messages(text: str, json_only: bool = False) -> list[str]:
    with pytest.raises(SpecError) as info:
        spec_from_text(text, "wf.yaml", json_only=json_only)
    return info.value.messages()


def json_spec(**extra: Any) -> str:
    doc = {"id": "w", "version": "1.0.0", "nodes": [{"id": "a", "lua": "return 1"}]}
    return json.dumps({**doc, **extra}, indent=1)


# -- 1. NaN and infinities ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "name"), [("NaN", "NaN"), ("Infinity", "Infinity"), ("-Infinity", "-Infinity")]
)
def test_json_nan_and_infinity_are_refused_with_their_line(value: str, name: str) -> None:
    text = (
        '{"id": "w", "version": "1.0.0",\n'
        f' "outputs": {{"x": {value}}},\n'
        ' "nodes": [{"id": "a", "lua": "return 1"}]}'
    )
    assert messages(text, json_only=True) == [
        f"wf.yaml:2: outputs.x: {name} is not a number JSON can carry: write a finite number, "
        "or a string"
    ]


def line_of(text: str, part: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if part in line)


def test_a_json_number_too_big_for_a_float_is_refused_as_infinity() -> None:
    text = json_spec(outputs={"x": 1}).replace('"x": 1', '"x": 1e999')
    assert messages(text, json_only=True) == [
        f"wf.yaml:{line_of(text, '1e999')}: outputs.x: Infinity is not a number JSON can carry: write a finite number, "
        "or a string"
    ]


@pytest.mark.parametrize(
    ("value", "name"), [(".nan", "NaN"), (".inf", "Infinity"), ("-.Inf", "-Infinity")]
)
def test_yaml_nan_and_infinities_are_refused_with_their_line(value: str, name: str) -> None:
    text = HEAD + f"triggers:\n  - cron: '@daily'\n    inputs: {{n: {value}}}\n"
    assert messages(text) == [
        f"wf.yaml:8: triggers[0].inputs.n: {name} is not a number JSON can carry: write a "
        "finite number, or a string"
    ]


def test_other_yaml_values_json_cannot_hold_are_refused_with_their_line() -> None:
    text = HEAD + "outputs:\n  day: 2024-01-01\n  blob: !!binary aGk=\n  tags: !!set {a, b}\n"
    assert messages(text) == [
        "wf.yaml:7: outputs.day: '2024-01-01' is a YAML timestamp, not a JSON value: quote it "
        "to make it a string",
        "wf.yaml:8: outputs.blob: is YAML binary (!!binary), not a JSON value: write it as a "
        "string",
        "wf.yaml:9: outputs.tags: is a YAML set (!!set), not a JSON value: write a list",
    ]


@pytest.mark.parametrize("json_only", [False, True])
def test_a_number_too_long_for_python_to_read_is_refused_with_its_line(json_only: bool) -> None:
    digits = "1" * 5000
    text = (
        json_spec(outputs={"x": 1}).replace('"x": 1', f'"x": {digits}')
        if json_only
        else HEAD + f"outputs:\n  x: {digits}\n"
    )
    line, kind = (line_of(text, digits), "JSON") if json_only else (7, "YAML")
    assert messages(text, json_only=json_only) == [
        f"wf.yaml:{line}: invalid {kind}: the number {digits[:40] + '...'!r} has more digits "
        "than a number may have"
    ]


def test_a_yaml_scalar_its_tag_cannot_make_is_refused_with_its_line() -> None:
    assert messages(HEAD + "outputs:\n  x: 2024-02-30\n") == [
        "wf.yaml:7: invalid YAML: '2024-02-30' is not a valid timestamp "
        "(day is out of range for month)"
    ]


def test_a_hex_number_too_long_to_print_is_refused() -> None:
    assert messages(HEAD + "concurrency: 0x" + "f" * 5000 + "\n") == [
        f"wf.yaml:6: concurrency: {TOO_LARGE}"
    ]


def test_a_json_number_python_reads_but_will_not_print_is_refused_as_in_yaml() -> None:
    # 4,250 digits: under Python's 4,300 to read, over what the YAML check takes; accepted
    # before, the same number refused in YAML
    text = json_spec(outputs={"x": 1}).replace('"x": 1', '"x": ' + "9" * 4250)
    assert messages(text, json_only=True) == [
        f"wf.yaml:{line_of(text, '999')}: outputs.x: {TOO_LARGE}"
    ]


TOO_LARGE = (
    "a whole number too large to carry: past about 1.8e308, more than a double holds (Lua and "
    "JSON clients read numbers as doubles); write it as a string"
)


@pytest.mark.parametrize("digits", [309, 400, 4000])
def test_a_whole_number_no_double_holds_is_refused_in_a_spec(digits: int) -> None:
    # before: 309 to about 4,200 digits were registered, and every run of the spec was then
    # tried on 20 engines, its nodes run again each time, and failed with an internal error
    text = HEAD + "outputs:\n  huge: " + "9" * digits + "\n"
    assert messages(text) == [f"wf.yaml:7: outputs.huge: {TOO_LARGE}"]
    assert messages(json_spec(outputs={"huge": 10**digits}), json_only=True)[0].endswith(
        f"outputs.huge: {TOO_LARGE}"
    )
    largest = int(sys.float_info.max)  # the largest double, as a whole number: it fits
    spec = spec_from_text(HEAD + f"outputs:\n  max: {largest}\n", "wf.yaml")
    assert spec.outputs == {"max": largest}


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


DIAMOND = str(Path(__file__).resolve().parents[2] / "examples" / "diamond.yaml")


@pytest.mark.parametrize(
    ("given", "name"), [('{"n": NaN}', "NaN"), ('{"n": [1, -Infinity]}', "-Infinity")]
)
def test_engine_run_refuses_nan_inputs_naming_the_field(
    capsys: pytest.CaptureFixture[str], given: str, name: str
) -> None:
    code, out, err = run_cli(capsys, "run", DIAMOND, "-q", "--inputs", given)
    where = "inputs.n" if name == "NaN" else "inputs.n[1]"
    assert (code, out) == (2, "")
    assert err == (
        f"error: --inputs: {where}: {name} is not a number JSON can carry: write a finite "
        "number, or a string\n"
    )


def test_engine_run_refuses_an_inputs_file_json_cannot_hold(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "inputs.yaml"
    path.write_text("n: .nan\n1: x\n")
    code, out, err = run_cli(capsys, "run", DIAMOND, "-q", "--inputs-file", str(path))
    assert (code, out) == (2, "")
    assert err == (
        f"error: --inputs-file {path}: inputs: key 1 is not a string: JSON keys are strings; "
        f"inputs.n: {NAN}\n"
    )


def test_engine_run_refuses_inputs_no_server_takes_naming_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    deep: Any = 1
    for _ in range(64):  # the object (1) and 64 lists past it: 66 levels
        deep = [deep]
    # before: both ran; the deep ones went through, the long number failed a node, exit 1
    code, out, err = run_cli(capsys, "run", DIAMOND, "-q", "--inputs", json.dumps({"n": deep}))
    assert (code, out, err) == (
        2,
        "",
        "error: inputs nest deeper than 64 levels, as no server takes\n",
    )
    code, out, err = run_cli(capsys, "run", DIAMOND, "-q", "--inputs", '{"n": [' + "9" * 400 + "]}")
    assert (code, out, err) == (2, "", f"error: --inputs: inputs.n[0]: {TOO_LARGE}\n")


def test_engine_run_reads_a_valid_json_inputs_file_without_the_line_map(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "inputs.json"
    path.write_text(json.dumps({"n": 3, "pad": list(range(1000))}))

    def line_map(*_: object, **__: object) -> None:
        # before: every inputs file went through it, seconds for a few hundred kilobytes
        raise AssertionError("a valid inputs file was read for its lines")

    monkeypatch.setattr(cli, "read_document", line_map)
    code, out, _ = run_cli(capsys, "run", DIAMOND, "-q", "--inputs-file", str(path))
    assert code == 0 and json.loads(out)["inputs"]["n"] == 3


def test_engine_run_progress_escapes_what_a_script_logs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(
        "id: w\nversion: 1.0.0\nnodes:\n  - id: a\n    lua: |\n"
        '      log("info", "\\27[2Jclear\\0 \\u{202E}rtl\\nline")\n      return 1\n'
    )
    code, _, err = run_cli(capsys, "run", str(path))
    assert code == 0
    [logged] = [line for line in err.splitlines() if "log:info" in line]
    # before: the escape cleared the terminal, the NUL and the override went out raw
    assert logged.endswith("log:info   \\x1b[2Jclear\\x00 \\u202ertl\\x0aline")


# -- 2. inputs_schema loops --------------------------------------------------------------------

LOOP = "without going into a part of the value: checking inputs would never end"


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            {"$ref": "#"},
            f"$ref '#' at the root refers back to itself (the root -> the root) {LOOP}",
        ),
        (
            {
                "$ref": "#/$defs/a",
                "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}},
            },
            f"$ref '#/$defs/b' at $defs/a refers back to itself ($defs/a -> $defs/b -> $defs/a) "
            f"{LOOP}",
        ),
        (
            {"anyOf": [{"type": "string"}, {"$ref": "#"}]},
            f"$ref '#' at anyOf/1 refers back to itself (the root -> anyOf/1 -> the root) {LOOP}",
        ),
        (
            {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "definitions": {"a": {"allOf": [{"$ref": "#/definitions/a"}]}},
            },
            "$ref '#/definitions/a' at definitions/a/allOf/0 refers back to itself "
            f"(definitions/a -> definitions/a/allOf/0 -> definitions/a) {LOOP}",
        ),
        (
            {"$schema": "https://json-schema.org/draft/2019-09/schema", "$recursiveRef": "#"},
            f"$recursiveRef '#' at the root refers back to itself (the root -> the root) {LOOP}",
        ),
    ],
)
def test_a_schema_that_refers_back_to_itself_in_place_is_refused(
    schema: JSONObject, message: str
) -> None:
    assert json_schema_problem(schema) == message


def test_a_schema_loop_is_refused_in_the_file_with_its_line() -> None:
    assert messages(HEAD + "inputs_schema: {$ref: '#'}\n") == [
        "wf.yaml:6: inputs_schema: not a valid JSON Schema: $ref '#' at the root refers back "
        f"to itself (the root -> the root) {LOOP}"
    ]


def test_a_recursive_schema_that_goes_into_the_value_is_still_accepted() -> None:
    schema: JSONObject = {
        "type": "object",
        "properties": {"kids": {"type": "array", "items": {"$ref": "#"}}},
    }
    assert json_schema_problem(schema) is None
    spec = spec_from_document({**json.loads(json_spec()), "inputs_schema": schema})
    check_inputs(spec, {"kids": [{"kids": []}]})
    with pytest.raises(InputsError, match='is not of type "array"'):
        check_inputs(spec, {"kids": [{"kids": 3}]})


def test_inputs_that_are_not_an_object_are_not_blamed_on_a_schema_there_is_not() -> None:
    with pytest.raises(InputsError) as info:
        check_inputs(spec_from_text(HEAD, "wf.yaml"), [1])
    # before: "... do not match its inputs_schema: ...", of a workflow that has none
    assert (
        str(info.value)
        == "inputs for workflow 'w' are refused: inputs must be a JSON object, not a list"
    )


def stored(schema: JSONObject) -> WorkflowSpec:
    """A spec as an older registration let it through: no JSON Schema check at all."""
    return parse_spec({**json.loads(json_spec()), "inputs_schema": schema})


def test_a_stored_schema_loop_refuses_inputs_instead_of_recursing_out() -> None:
    spec = stored({"$ref": "#"})
    for _ in range(2):  # and from the cached validator
        with pytest.raises(InputsError) as info:
            check_inputs(spec, {"x": 1})
        assert info.value.problems == [
            "inputs_schema: checking the inputs recursed too deeply to finish (a $ref that "
            "leads back to itself, or inputs nested too deeply)"
        ]


def test_inputs_nested_past_what_a_recursive_schema_can_follow_are_refused() -> None:
    # a tree's schema is fine (registration takes it), but jsonschema follows each level of
    # the value with a few Python frames: 2,000 levels run out of stack
    schema: JSONObject = {"properties": {"x": {"$ref": "#/$defs/list"}}}
    schema["$defs"] = {"list": {"type": "array", "items": {"$ref": "#/$defs/list"}}}
    assert json_schema_problem(schema) is None
    deep: Any = []
    for _ in range(2000):
        deep = [deep]
    too_deep = [
        "inputs_schema: checking the inputs recursed too deeply to finish (a $ref that "
        "leads back to itself, or inputs nested too deeply)"
    ]
    assert inputs_problems(schema, {"x": deep}) == too_deep
    with pytest.raises(InputsError) as info:
        check_inputs(stored(schema), {"x": deep})
    assert info.value.problems == too_deep


def test_engine_validate_and_run_refuse_a_schema_loop(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text(HEAD + "inputs_schema: {$ref: '#'}\n")
    for command in ("validate", "run"):
        code, out, err = run_cli(capsys, command, str(path))
        assert (code, out) == (2, "")
        assert f"{path}:6: inputs_schema: not a valid JSON Schema: $ref '#'" in err
        assert "Traceback" not in err


# -- 3. an invalid inputs_schema and cron trigger inputs ---------------------------------------


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        (
            "{type: object, properties: {topic: {type: 1}}}",
            "1 is not valid under any of the given schemas (at properties/topic/type)",
        ),
        (
            "{type: object, properties: {topic: {type: '}}'}}}",
            "'}}' is not valid under any of the given schemas (at properties/topic/type)",
        ),
        ("{type: object, properties: oops}", "'oops' is not of type 'object' (at properties)"),
        ("{type: [1, 2]}", "[1, 2] is not valid under any of the given schemas (at type)"),
    ],
)
def test_a_bad_schema_with_cron_trigger_inputs_is_the_schema_problem_alone(
    schema: str, problem: str
) -> None:
    text = (
        HEAD + f"inputs_schema: {schema}\ntriggers: [{{cron: '0 6 * * *', inputs: {{topic: x}}}}]\n"
    )
    assert messages(text) == [f"wf.yaml:6: inputs_schema: not a valid JSON Schema: {problem}"]


# -- 4. non-ASCII letters in Lua ---------------------------------------------------------------


def test_a_non_ascii_letter_in_lua_is_a_lua_syntax_error_with_its_line() -> None:
    text = (
        "id: w\nversion: 1.0.0\nnodes:\n  - id: a\n    lua: |\n      local x = 1\n      return é\n"
    )
    assert messages(text) == [
        "wf.yaml:7: nodes[a].lua: Lua syntax error: unexpected symbol near '<\\195>' (Lua line 2)"
    ]


def test_a_non_ascii_letter_in_when_is_a_bad_expression_with_its_line() -> None:
    assert messages(HEAD + "    when: 'é'\n") == [
        "wf.yaml:6: nodes[a].when: bad Lua expression: unexpected symbol near '<\\195>'"
    ]


def test_engine_validate_reports_a_non_ascii_letter_without_a_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(HEAD.replace("return 1", "return é"), encoding="utf-8")
    code, out, err = run_cli(capsys, "validate", str(path))
    assert (code, out) == (2, "")
    assert f"{path}:5: nodes[a].lua: Lua syntax error: unexpected symbol near" in err


# -- 5. other crashes --------------------------------------------------------------------------


def test_a_schema_dialect_that_is_not_a_string_is_refused() -> None:
    assert messages(HEAD + "inputs_schema: {$schema: 5}\n") == [
        "wf.yaml:6: inputs_schema: not a valid JSON Schema: $schema must be a string "
        "(a JSON Schema dialect's URI), got 5"
    ]


def test_a_schema_nested_deeper_than_jsonschema_can_check_is_refused() -> None:
    schema: JSONObject = {}
    inner = schema
    for _ in range(300):
        inner["items"] = inner = {}
    # before: RecursionError out of the meta-schema check, a 500
    assert json_schema_problem(schema) == "nested too deeply to check"
    doc = {**json.loads(json_spec()), "inputs_schema": schema}
    with pytest.raises(SpecError) as info:
        spec_from_document(doc, "wf.yaml")
    assert info.value.messages() == [
        "wf.yaml: inputs_schema: not a valid JSON Schema: nested too deeply to check"
    ]
    # a file holding it is refused first for its nesting, as a JSON body is
    assert messages(json.dumps(doc), json_only=True) == [
        "wf.yaml:1: invalid JSON: nested deeper than 64 levels"
    ]


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        # drafts 4 to 7 leave $ref out of their meta-schemas: referencing crashed on it
        (
            {"$schema": "http://json-schema.org/draft-04/schema#", "oneOf": [{"$ref": 5}]},
            "$ref at oneOf/0 must be a string (a URI), got 5",
        ),
        # an $id of 3 where the meta-schema does not look: referencing crashed reading it
        (
            {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "unevaluatedProperties": {"additionalProperties": {"$id": 3, "$dynamicRef": "#a"}},
            },
            "$dynamicRef '#a' at unevaluatedProperties/additionalProperties points to nothing "
            "in the schema",
        ),
    ],
)
def test_references_the_meta_schema_leaves_unchecked_are_refused_not_crashed(
    schema: JSONObject, message: str
) -> None:
    assert json_schema_problem(schema) == message


def test_a_draft3_type_jsonschema_does_not_know_refuses_inputs_not_crashes() -> None:
    schema: JSONObject = {"$schema": "http://json-schema.org/draft-03/schema#", "type": "x"}
    assert json_schema_problem(schema) is None  # draft 3 takes any string as a type
    message = "inputs_schema: unknown type 'x': use one JSON Schema names (object, string...)"
    assert inputs_problems(schema, {}) == [message]
    with pytest.raises(InputsError) as info:
        check_inputs(stored(schema), {})
    assert info.value.problems == [message]


def test_engine_run_refuses_inputs_with_a_number_too_long_to_read(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(capsys, "run", DIAMOND, "-q", "--inputs", '{"n": ' + "1" * 5000 + "}")
    assert (code, out) == (2, "")
    assert err == (
        "error: --inputs is not valid JSON: a number has more digits than a number may have\n"
    )


def test_a_pattern_properties_key_that_is_not_a_string_is_refused_with_its_line() -> None:
    assert messages(HEAD + "inputs_schema:\n  patternProperties:\n    1: {}\n") == [
        "wf.yaml:8: inputs_schema.patternProperties: key 1 is not a string: JSON keys are "
        "strings (quote it in YAML)"
    ]


def test_a_yaml_complex_key_is_refused_with_its_line() -> None:
    assert messages(HEAD + "? [a, b]\n: 1\n") == ["wf.yaml:6: invalid YAML: found unhashable key"]


def test_a_version_with_a_number_too_long_to_read_is_refused_with_its_line() -> None:
    long = "1.0." + "1" * 5000
    assert messages(HEAD.replace("1.0.0", long)) == [
        f"wf.yaml:2: version: bad version {long[:40]!r}...: longer than 256 characters"
    ]


# -- 6. time zones -----------------------------------------------------------------------------


@pytest.mark.parametrize("zone", ["a" * 5000, "America"])
def test_a_zone_no_file_can_be_named_after_is_an_unknown_zone(zone: str) -> None:
    message = f"unknown time zone {zone!r}: use an IANA name like Europe/Berlin or UTC"
    assert timezone_problem(zone) == message
    text = HEAD + f"triggers: [{{cron: '0 6 * * *', timezone: {zone}}}]\n"
    assert messages(text) == [f"wf.yaml:6: triggers[0].timezone: {message}"]


def test_an_empty_zone_is_refused_with_its_line() -> None:
    assert messages(HEAD + "triggers:\n  - cron: '0 6 * * *'\n    timezone: ''\n") == [
        "wf.yaml:8: triggers[0].timezone: is empty: give an IANA name like Europe/Berlin, "
        "or leave it out for UTC"
    ]


# -- 7. --workers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("workers", "why"),
    [
        ("0", "must be 1 to 256, got 0"),
        ("-1", "must be a whole number, got '-1'"),
        ("1_0", "must be a whole number, got '1_0'"),  # int() takes it
        ("\u0661", "must be a whole number, got '\u0661'"),  # an Arabic-Indic 1: int() too
        ("100000", "must be 1 to 256, got 100000"),
        ("many", "must be a whole number, got 'many'"),
    ],
)
def test_engine_run_refuses_a_worker_count_it_cannot_use(
    capsys: pytest.CaptureFixture[str], workers: str, why: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", DIAMOND, "--workers", workers])
    out, err = capsys.readouterr()
    assert (exit_.value.code, out) == (2, "")
    assert err.endswith(f"python -m engine run: error: argument --workers: {why}\n")


# -- 8. lines of keys that are not strings -----------------------------------------------------


def test_top_level_keys_that_are_not_strings_get_their_line() -> None:
    # before: no line, as the line map kept "1" where the data has 1
    assert messages(HEAD + "1: x\n~: y\nfalse: z\n") == [
        "wf.yaml:6: 1: unknown field 1",
        "wf.yaml:7: None: unknown field None",
        "wf.yaml:8: False: unknown field False",
    ]


def test_keys_that_are_not_strings_in_free_json_get_their_line() -> None:
    assert messages(HEAD + "outputs:\n  b: c\n  2: d\n") == [
        "wf.yaml:8: outputs: key 2 is not a string: JSON keys are strings (quote it in YAML)"
    ]


def test_keys_yaml_reads_as_one_are_duplicates() -> None:
    assert messages(HEAD + "outputs:\n  1: a\n  0x1: b\n") == [
        "wf.yaml:8: outputs.1: duplicate key 1 (first on line 7)"
    ]


# -- 9. depends_on -----------------------------------------------------------------------------


def test_depends_on_as_a_string_is_refused_with_its_line() -> None:
    text = HEAD + "  - id: b\n    depends_on: a\n    lua: return 2\n"
    assert messages(text) == ["wf.yaml:7: nodes[b].depends_on: must be a list of node ids"]


# -- 10. http paths ----------------------------------------------------------------------------


def test_http_paths_of_the_root_or_too_long_are_refused_with_their_lines() -> None:
    text = HEAD + "triggers:\n  - http: {path: /}\n  - http:\n      path: /" + "a" * 10_000 + "\n"
    assert messages(text) == [
        "wf.yaml:7: triggers[0].http.path: '/' is the server's root: give the trigger a path "
        "of its own, like /hooks/name",
        "wf.yaml:9: triggers[1].http.path: is 10001 characters long: a path may have 1024 at most",
    ]


# -- through the orchestrator's HTTP and gRPC APIs ---------------------------------------------


class Served:
    def __init__(self, url: str, stub: pb_grpc.OrchestratorStub, orch: Orchestrator) -> None:
        self.url = url
        self.stub = stub
        self.orch = orch


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with served_facade(tmp_path) as f:
        yield Served(f.url, f.stub, f.orch)


async def test_registration_over_http_refuses_nan_and_schema_loops_with_lines(
    served: Served,
) -> None:
    async with aiohttp.ClientSession() as http:
        for text, problem in [
            (HEAD + "outputs: {x: .nan}\n", f"line 6: outputs.x: {NAN}"),
            (
                HEAD + "inputs_schema: {$ref: '#'}\n",
                "line 6: inputs_schema: not a valid JSON Schema: $ref '#' at the root refers "
                f"back to itself (the root -> the root) {LOOP}",
            ),
        ]:
            async with http.post(
                f"{served.url}/api/v1/workflows",
                data=text.encode(),
                headers={"Content-Type": "application/yaml"},
            ) as resp:
                body = await resp.json()
            assert resp.status == 400, body
            assert body["error"]["details"]["problems"] == [problem]
    assert served.orch.registry.summaries()[0] == []


async def test_yaml_registered_without_its_content_type_is_told_how_to_send_it(
    served: Served,
) -> None:
    text = HEAD
    async with aiohttp.ClientSession() as http:
        # curl --data-binary sends a form's type; a client may send none
        for headers, sent in [
            ({"Content-Type": "application/x-www-form-urlencoded"}, "Content-Type application/"),
            ({}, "no Content-Type"),
        ]:
            async with http.post(
                f"{served.url}/api/v1/workflows",
                data=text.encode(),
                headers=headers,
                skip_auto_headers=() if headers else ("Content-Type",),
            ) as resp:
                body = await resp.json()
            assert resp.status == 400, body
            message = body["error"]["message"]
            assert message.startswith("the request body is not valid JSON at line 1"), message
            assert f"(sent with {sent}" in message, message
            assert message.endswith("a YAML spec needs Content-Type: application/yaml)"), message
        # broken JSON is told as it was, without a word of YAML
        async with http.post(f"{served.url}/api/v1/workflows", data=b'{"id": ', headers={}) as resp:
            body = await resp.json()
        assert resp.status == 400 and "YAML" not in body["error"]["message"], body
    assert served.orch.registry.summaries()[0] == []


async def test_registration_over_grpc_refuses_json_nan_with_its_line(served: Served) -> None:
    text = '{"id": "w", "version": "1.0.0",\n "outputs": {"x": NaN},\n "nodes": [{"id": "a", "lua": "return 1"}]}'
    with pytest.raises(grpc.aio.AioRpcError) as info:
        register: Any = served.stub.RegisterWorkflow  # grpc.aio's stubs are typed as sync
        await register(pb.RegisterWorkflowRequest(spec=text))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    packed = dict(info.value.trailing_metadata() or ())["grpc-status-details-bin"]
    assert isinstance(packed, bytes)
    violations = field_violations(status_pb2.Status.FromString(packed))
    assert [description for _, description in violations] == [f"line 2: outputs.x: {NAN}"]
    assert served.orch.registry.summaries()[0] == []


async def test_an_api_trigger_with_a_zone_too_long_for_a_file_name_is_a_400(
    served: Served,
) -> None:
    await served.orch.register(json_spec(), yaml=False, force=False)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{served.url}/api/v1/triggers",
            json={"workflow_id": "w", "cron": "@hourly", "timezone": "a" * 5000},
        ) as resp:
            body = await resp.json()
    assert resp.status == 400, body
    assert body["error"]["message"].startswith("unknown time zone 'aaaa")
