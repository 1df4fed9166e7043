"""Loading specs from YAML/JSON text and files, with lines, Lua syntax and JSON Schema checks."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import _read_inputs
from engine.core.errors import InputsError, SpecError
from engine.inputs import check_inputs
from engine.loading import load_spec_file, spec_from_text


def messages(text: str, source: str = "wf.yaml", json_only: bool = False) -> list[str]:
    with pytest.raises(SpecError) as info:
        spec_from_text(text, source, json_only=json_only)
    return info.value.messages()


def test_lua_syntax_error_points_at_file_line_and_lua_line() -> None:
    got = messages(
        "id: w\nversion: 1.0.0\nnodes:\n"
        "  - id: calc\n"
        "    lua: |\n"
        "      local a = 1\n"
        "      local b = = 2\n"
    )
    assert len(got) == 1
    assert got[0].startswith("wf.yaml:7: nodes[calc].lua: Lua syntax error: ")
    assert "unexpected symbol near '='" in got[0]
    assert got[0].endswith("(Lua line 2)")


def test_bad_when_expression_is_reported() -> None:
    got = messages(
        "id: w\nversion: 1.0.0\nnodes:\n  - id: a\n    lua: return {}\n    when: 'x >'\n"
    )
    assert got[0].startswith("wf.yaml:6: nodes[a].when: bad Lua expression:")
    # the parenthesis the sandbox wraps an expression in is not blamed
    assert "unexpected symbol at the end of the expression" in got[0]
    assert "')'" not in got[0]


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ("results.a.x >", "unexpected symbol at the end of the expression"),
        ("results.a.", "<name> expected at the end of the expression"),
        ("(x", "')' expected (to close '(' at line 1) near <eof>"),
        ("x )", "the expression closes a parenthesis it never opened"),
        ("x + ) 1", "unexpected symbol near ')'"),
    ],
)
def test_when_syntax_errors_name_what_the_user_wrote(when: str, message: str) -> None:
    got = messages(
        "id: w\nversion: 1.0.0\nnodes:\n  - id: a\n    lua: return {}\n"
        f"  - id: b\n    depends_on: [a]\n    lua: return {{}}\n    when: '{when}'\n"
    )
    assert got == [f"wf.yaml:9: nodes[b].when: bad Lua expression: {message}"]


def test_duplicate_yaml_keys_are_refused() -> None:
    got = messages("id: w\nversion: 1.0.0\nid: v\nnodes: []\n")
    assert got == [  # with the rest of what is wrong, not alone
        "wf.yaml:3: id: duplicate key 'id' (first on line 1)",
        "wf.yaml:4: nodes: must be a non-empty list of nodes",
    ]


def test_yaml_syntax_error_names_the_line() -> None:
    got = messages("id: w\nnodes:\n  - id: a\n   lua: x\n")
    assert got[0].startswith("wf.yaml:4: invalid YAML:")


def test_a_character_yaml_refuses_is_named_with_its_line() -> None:
    assert messages("id: w\nname: a\x00b\n") == [
        "wf.yaml:2: invalid YAML: character U+0000 is not allowed"
    ]


def test_json_nested_past_what_python_reads_is_refused_not_crashed() -> None:
    deep = '{"a": ' + "[" * 200_000 + "]" * 200_000 + "}"
    assert messages(deep, json_only=True) == ["wf.yaml: invalid JSON: nested too deeply"]
    assert messages(deep) == ["wf.yaml: invalid YAML: nested too deeply"]


def test_json_documents_work_and_report_lines() -> None:
    spec = spec_from_text(
        '{"id": "j", "version": "2.0.0", "nodes": [{"id": "a", "lua": "return 1"}]}',
        "w.json",
        json_only=True,
    )
    assert spec.ref == "j@2.0.0"
    got = messages(
        '{"id": "j",\n "version": "2.0.0",\n "nodes": [{"id": "a", "lua": "return 1",\n "sleep": 1}]}',
        "w.json",
        json_only=True,
    )
    assert got == [
        "w.json:3: nodes[a]: needs exactly one of lua, workflow, sleep (found: lua, sleep)"
    ]
    assert messages("{nope", "w.json", json_only=True)[0].startswith("w.json:1: invalid JSON:")


def test_invalid_inputs_schema_is_refused_at_registration() -> None:
    got = messages(
        "id: w\nversion: 1.0.0\ninputs_schema: {type: 12}\nnodes:\n  - {id: a, lua: return 1}\n"
    )
    assert got[0].startswith("wf.yaml:3: inputs_schema: not a valid JSON Schema:")


def test_unknown_timezone() -> None:
    got = messages(
        "id: w\nversion: 1.0.0\ntriggers:\n  - cron: '0 * * * *'\n    timezone: Mars/Olympus\n"
        "nodes:\n  - {id: a, lua: return 1}\n"
    )
    assert got == [
        "wf.yaml:5: triggers[0].timezone: unknown time zone 'Mars/Olympus': use an IANA name like Europe/Berlin or UTC"
    ]


def test_inputs_checked_against_schema_with_every_problem() -> None:
    spec = spec_from_text(
        "id: w\nversion: 1.0.0\ninputs_schema:\n  type: object\n  required: [n]\n"
        "  properties: {n: {type: integer}, tags: {type: array, items: {type: string}}}\n"
        "nodes:\n  - {id: a, lua: return 1}\n"
    )
    check_inputs(spec, {"n": 1, "tags": ["x"]})
    with pytest.raises(InputsError) as info:
        check_inputs(spec, {"tags": ["x", 3]})
    assert info.value.problems == [
        'inputs: "n" is a required property',
        'inputs.tags[1]: 3 is not of type "string"',
    ]


def test_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"missing\.yaml: no such file"):
        load_spec_file(tmp_path / "missing.yaml")
    f = tmp_path / "ok.yaml"
    f.write_text("id: ok\nversion: 0.1.0\nnodes:\n  - id: a\n    lua: return 1\n")
    assert load_spec_file(f).ref == "ok@0.1.0"


def test_what_a_trigger_adds_is_not_held_against_a_closed_schema() -> None:
    spec = spec_from_text(
        "id: w\nversion: 1.0.0\ninputs_schema:\n  type: object\n"
        "  properties: {name: {type: string}}\n  additionalProperties: false\n"
        "nodes:\n  - {id: a, lua: return 1}\n"
    )
    fired = {"type": "cron", "id": "w.nightly", "scheduled_time": "2027-01-15T02:30:00.000Z"}
    check_inputs(spec, {"name": "Ada", "_trigger": fired})
    with pytest.raises(InputsError) as info:
        check_inputs(spec, {"name": "Ada", "other": 1, "_trigger": fired})
    assert info.value.problems == [
        'inputs: Additional properties are not allowed ("other" was unexpected)'
    ]


def test_a_cron_triggers_inputs_must_pass_the_specs_inputs_schema() -> None:
    got = messages(
        "id: w\nversion: 1.0.0\n"
        "inputs_schema: {type: object, required: [x], properties: {x: {type: integer}}}\n"
        "triggers:\n"
        "  - cron: '@daily'\n"
        "    inputs: {x: 1}\n"
        "  - cron: '@hourly'\n"
        "    inputs: {y: oops}\n"
        "nodes:\n  - {id: a, lua: return 1}\n"
    )
    # every fire of it would be refused: said now, with the line, not at each slot
    assert got == ['wf.yaml:8: triggers[1].inputs: inputs: "x" is a required property']


def laughs(levels: int) -> str:
    """Ten anchors, each nine aliases of the one before: about 9**levels values."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_alias_expansion_bomb_is_refused_before_anything_walks_it() -> None:
    text = laughs(10)  # a kilobyte naming 9**10 (3.5 billion) values
    assert len(text) < 1000
    got = messages(text)
    assert got == ["wf.yaml:7: the document's aliases expand it past 1,000,000 values"]


def test_self_referring_alias_is_refused() -> None:
    assert messages("id: w\nloop: &a [1, *a]\n") == [
        "wf.yaml:2: an alias refers to a node that contains it"
    ]


def test_ordinary_anchors_and_merge_keys_still_load() -> None:
    spec = spec_from_text(
        "id: w\nversion: 1.0.0\n"
        "nodes:\n"
        "  - &base\n"
        "    id: a\n"
        "    lua: return {}\n"
        "    retry: &retry {max_attempts: 3, delay: 1s}\n"
        "  - <<: *base\n"
        "    id: b\n"
        "    depends_on: [a]\n",
        "wf.yaml",
    )
    assert [n.id for n in spec.nodes] == ["a", "b"]
    assert spec.nodes[1].retry.max_attempts == 3
    assert spec.nodes[1].depends_on == ("a",)


def test_deeply_nested_yaml_is_a_clear_error() -> None:
    got = messages("a: " + "[" * 5000 + "]" * 5000 + "\n")
    assert got == ["wf.yaml: invalid YAML: nested too deeply"]


def test_the_readme_workflow_is_valid() -> None:
    # the first thing a reader copies: it must pass the checks it describes
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## A workflow") :]
    block = section[
        section.index("```yaml\n") + 8 : section.index("```", section.index("```yaml") + 7)
    ]
    spec = spec_from_text(block, "README.md")
    assert spec.id == "diamond" and len(spec.nodes) == 6
    assert spec.outputs == {"total": "{{ results.sum.value }}"}


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_validates_with_no_scalar_yaml_versions_read_differently(
    example: Path,
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "validate", str(example)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "is valid" in proc.stdout


def test_a_yaml_1_1_boolean_in_a_spec_file_is_told_with_its_line(tmp_path: Path) -> None:
    spec = tmp_path / "wf.yaml"
    spec.write_text("id: w\nversion: 1.0.0\nfail_fast: off\nnodes:\n  - {id: a, lua: return 1}\n")
    with pytest.raises(SpecError) as info:
        load_spec_file(spec)
    assert info.value.messages() == [
        f"{spec}:3: fail_fast: `off` is false in YAML 1.1 and text in YAML 1.2: "
        "write false, or quote it ('off')"
    ]


@pytest.mark.parametrize("name", ["in.json", "in.yaml"])
def test_a_byte_order_mark_is_dropped_from_an_inputs_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + b'{"name": "Ada"}\n')
    args = argparse.Namespace(inputs=None, inputs_file=str(path))
    assert _read_inputs(args) == {"name": "Ada"}


def test_an_inputs_file_value_yaml_versions_read_differently_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "in.yaml"
    path.write_text("name: Ada\nready: yes\n", encoding="utf-8")
    args = argparse.Namespace(inputs=None, inputs_file=str(path))
    with pytest.raises(ValueError) as info:
        _read_inputs(args)
    assert str(info.value) == (
        f"--inputs-file {path}: line 2: ready: `yes` is true in YAML 1.1 and text in YAML 1.2: "
        "write true, or quote it ('yes')"
    )
