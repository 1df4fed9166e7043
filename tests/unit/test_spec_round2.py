"""Spec validation, second hunt: cost on deep graphs, strings UTF-8 cannot carry, JSON that
YAML cannot compose, document problems told with the rest, plain scalars YAML 1.1 and 1.2 read
differently, the builder."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core import dag
from engine.core.builder import Workflow
from engine.core.errors import SpecError
from engine.core.spec import ExternalChecks, parse_spec
from engine.documents import YamlRefused, load_yaml, parse_text
from orchestrator.dagctl.sources import SpecSource


def chain(n: int, lua: Any) -> dict[str, Any]:
    nodes: list[dict[str, Any]] = [{"id": "a0", "lua": "return 1"}]
    nodes += [{"id": f"a{i}", "depends_on": [f"a{i - 1}"], "lua": lua(i)} for i in range(1, n)]
    return {"id": "wf", "version": "1.0.0", "nodes": nodes}


# -- 1. ancestry is computed once, not walked per node ---------------------------------------


class CountingDeps(Mapping[str, Sequence[str]]):
    """deps that count how often a node's dependencies are looked up."""

    def __init__(self, deps: dict[str, list[str]]) -> None:
        self.deps = deps
        self.lookups = 0

    def __getitem__(self, key: str) -> Sequence[str]:
        self.lookups += 1
        return self.deps[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.deps)

    def __len__(self) -> int:
        return len(self.deps)


def test_ancestor_bits_looks_each_node_up_a_bounded_number_of_times() -> None:
    n = 3000
    deps = CountingDeps({f"a{i}": [f"a{i - 1}"] if i else [] for i in range(n)})
    bits = dag.ancestor_bits(deps, ["a0"])
    # lookups and membership tests: a few per node and edge; a walk per node is n * n / 2
    assert deps.lookups <= 4 * (n + n - 1)
    assert all(bits[f"a{i}"] == 1 for i in range(1, n)) and bits["a0"] == 0


def test_validating_a_chain_that_reads_its_first_node_computes_ancestry_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[list[str]] = []
    real = dag.ancestor_bits

    def spy(deps: Mapping[str, Sequence[str]], targets: Sequence[str]) -> dict[str, int]:
        calls.append(list(targets))
        return real(deps, targets)

    def walk(*args: object) -> set[str]:
        raise AssertionError("validation walked ancestry per node")

    monkeypatch.setattr(dag, "ancestor_bits", spy)
    monkeypatch.setattr(dag, "ancestors", walk)
    parse_spec(chain(2000, lambda i: "return results.a0"))
    assert calls == [["a0"]]  # one bit wide: only the node read beyond a direct dependency
    calls.clear()
    parse_spec(chain(2000, lambda i: f"return results.a{i - 1}"))
    assert calls == []  # direct dependencies only: no ancestry at all


def test_a_chain_reading_a_missing_node_everywhere_still_names_each_place() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(chain(3000, lambda i: f"return results.b{i}"))
    messages = info.value.messages()
    assert len(messages) == 2999
    assert "nodes[a1].lua: results.b1: there is no node 'b1'" in messages[0]


graphs = st.integers(1, 12).flatmap(
    lambda n: st.lists(st.lists(st.integers(0, n - 1), max_size=3), min_size=n, max_size=n)
)


@settings(deadline=None)  # an example a loaded machine holds up is no failure
@given(graphs)
def test_ancestor_bits_agree_with_ancestors_around_cycles_too(edges: list[list[int]]) -> None:
    deps = {f"n{i}": [f"n{j}" for j in ds] for i, ds in enumerate(edges)}
    targets = list(deps)
    bits = dag.ancestor_bits(deps, targets)
    for node in deps:
        got = {t for i, t in enumerate(targets) if bits[node] >> i & 1}
        assert got == dag.ancestors(node, deps)


def test_references_in_and_around_a_cycle_are_told_with_the_cycle() -> None:
    doc = {
        "id": "wf",
        "version": "1.0.0",
        "nodes": [
            {"id": "a", "depends_on": ["c"], "lua": "return results.b"},
            {"id": "b", "depends_on": ["a"], "lua": "return results.c"},
            {"id": "c", "depends_on": ["b"], "lua": "return results.d"},
            {"id": "d", "lua": "return results.a"},
        ],
    }
    with pytest.raises(SpecError) as info:
        parse_spec(doc)
    messages = info.value.messages()
    assert any("dependency cycle" in m for m in messages)
    assert any("nodes[c].lua: results.d: node 'd' is not an ancestor of 'c'" in m for m in messages)
    assert any("nodes[d].lua: results.a: node 'a' is not an ancestor of 'd'" in m for m in messages)
    assert not any("results.b" in m or "results.c" in m for m in messages)


# -- helpers for documents -------------------------------------------------------------------


def text_problems(text: str, source: str = "wf.yaml", **kw: Any) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_text(text, source, json_only=source.endswith(".json"), **kw)
    return info.value.messages()


HEAD = "id: wf\nversion: 1.0.0\n"
NODES = "nodes:\n  - id: a\n    lua: return 1\n"


# -- 2. text UTF-8 cannot carry ---------------------------------------------------------------

LONE = "holds U+DC80, half of a UTF-16 surrogate pair alone, which is not text UTF-8 can carry"


def test_a_lone_surrogate_in_yaml_is_refused_with_its_line_and_field() -> None:
    got = text_problems(HEAD + 'name: "\\udc80"\n' + NODES)
    assert got == [f"wf.yaml:3: name: '\\udc80' {LONE}: write the character itself"]


def test_a_lone_surrogate_in_json_is_refused_on_the_fast_path_too() -> None:
    text = (
        '{"id": "wf", "version": "1.0.0",\n "nodes": [{"id": "a", "lua": "return \\"\\udc80\\""}]}'
    )
    got = text_problems(text, "wf.json")
    assert got == [
        f"wf.json:2: nodes[a].lua: 'return \"\\udc80\"' {LONE}: write the character itself"
    ]


def test_a_lone_surrogate_in_a_key_is_refused_and_the_message_prints() -> None:
    got = text_problems(HEAD + 'labels: {"a\\udc80": 1}\n' + NODES)
    assert got == [f"wf.yaml:3: labels: key 'a\\udc80' {LONE}: write the character itself"]
    "\n".join(got).encode("utf-8")  # every message can be printed and sent


def test_a_lone_surrogate_given_to_the_builder_is_refused() -> None:
    with pytest.raises(SpecError) as info:
        Workflow("wf", "1.0.0", name="\udc80").node("a", lua="return 1").build()
    assert info.value.messages() == [
        f"Workflow('wf'): name: '\\udc80' {LONE}: write the character itself"
    ]


# -- 3. valid JSON that YAML cannot compose ---------------------------------------------------


def test_a_key_twice_in_tab_indented_json_is_named_with_its_lines() -> None:
    text = '{\n\t"id": "a",\n\t"version": "1.0.0",\n\t"id": "b",\n\t"nodes": [{"id": "x", "lua": "return 1"}]\n}\n'
    assert text_problems(text, "wf.json") == ["wf.json:4: id: duplicate key 'id' (first on line 2)"]


def test_a_key_twice_in_json_yaml_cannot_read_at_all_is_still_named() -> None:
    long = "k" * 1100  # YAML's simple keys stop at 1024 characters
    text = (
        f'{{"id": "a", "version": "1.0.0", "labels": {{"{long}": 1}}, "id": "b",\n'
        '"nodes": [{"id": "x", "lua": "return 1"}]}'
    )
    assert text_problems(text, "wf.json") == ["wf.json: id: duplicate key 'id'"]


# -- 4. the text's problems are told with the rest ----------------------------------------------


def test_a_key_twice_is_told_with_every_other_problem() -> None:
    text = (
        HEAD + "version: 2.0.0\nnodes:\n  - id: a\n    lua: return 1\n"
        "    depends_on: [zz]\n    timout: 3s\n"
    )
    assert text_problems(text) == [
        "wf.yaml:3: version: duplicate key 'version' (first on line 2)",
        "wf.yaml:7: nodes[a].depends_on: unknown dependency 'zz'",
        "wf.yaml:8: nodes[a].timout: unknown field 'timout' (did you mean 'timeout'?)",
    ]


# -- 5. plain scalars YAML 1.1 and YAML 1.2 read differently are refused ----------------------


def test_scalars_yaml_1_1_and_1_2_read_differently_are_refused_with_line_field_and_fix() -> None:
    text = (
        HEAD + "timeout: 12:30\nfail_fast: yes\non: x\n"
        "nodes:\n  - id: a\n    lua: return 1\n"
        "    retry: {max_attempts: 010, delay: 1_000}\n    foreach: [1e3, Off]\n"
    )
    assert text_problems(text) == [
        "wf.yaml:3: timeout: `12:30` is 750 in YAML 1.1 and text in YAML 1.2: "
        "quote it ('12:30'), or write 750 (as a duration, 12m30s)",
        # told once: not also "must be true or false, got 'yes'"
        "wf.yaml:4: fail_fast: `yes` is true in YAML 1.1 and text in YAML 1.2: "
        "write true, or quote it ('yes')",
        # a key can only be quoted; not also "unknown field 'on'"
        "wf.yaml:5: on: `on` is true in YAML 1.1 and text in YAML 1.2: quote it ('on')",
        "wf.yaml:9: nodes[a].retry.max_attempts: `010` is 8 in YAML 1.1 and 10 in YAML 1.2: "
        "write 8 or 10, or quote it ('010')",
        "wf.yaml:9: nodes[a].retry.delay: `1_000` is 1000 in YAML 1.1 and text in YAML 1.2: "
        "write 1000, or quote it ('1_000')",
        "wf.yaml:10: nodes[a].foreach[0]: `1e3` is text in YAML 1.1 and 1000.0 in YAML 1.2: "
        "quote it ('1e3'), or write 1000.0",
        "wf.yaml:10: nodes[a].foreach[1]: `Off` is false in YAML 1.1 and text in YAML 1.2: "
        "write false, or quote it ('Off')",
    ]


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("NO", "`NO` is false in YAML 1.1 and text in YAML 1.2: write false, or quote it ('NO')"),
        (
            "1:30:00",
            "`1:30:00` is 5400 in YAML 1.1 and text in YAML 1.2: quote it ('1:30:00'), "
            "or write 5400 (as a duration, 1h30m)",
        ),
        ("0b101", "`0b101` is 5 in YAML 1.1 and text in YAML 1.2: write 5, or quote it ('0b101')"),
        (
            "-0x1F",
            "`-0x1F` is -31 in YAML 1.1 and text in YAML 1.2: write -31, or quote it ('-0x1F')",
        ),
        ("0o10", "`0o10` is text in YAML 1.1 and 8 in YAML 1.2: quote it ('0o10'), or write 8"),
        ("09", "`09` is text in YAML 1.1 and 9 in YAML 1.2: quote it ('09'), or write 9"),
        ("+.5", "`+.5` is text in YAML 1.1 and 0.5 in YAML 1.2: quote it ('+.5'), or write 0.5"),
        (
            "1.5e1",
            "`1.5e1` is text in YAML 1.1 and 15.0 in YAML 1.2: quote it ('1.5e1'), or write 15.0",
        ),
        (
            "1e+20",
            "`1e+20` is text in YAML 1.1 and 1.0e+20 in YAML 1.2: quote it ('1e+20'), "
            "or write 1.0e+20",
        ),
        (
            "1_0.5",
            "`1_0.5` is 10.5 in YAML 1.1 and text in YAML 1.2: write 10.5, or quote it ('1_0.5')",
        ),
    ],
)
def test_each_form_yaml_versions_read_differently_says_what_to_write(
    written: str, message: str
) -> None:
    assert text_problems(HEAD + f"labels:\n  x: {written}\n" + NODES) == [
        f"wf.yaml:4: labels.x: {message}"
    ]


def test_a_key_yaml_versions_read_differently_is_refused_with_its_line() -> None:
    text = HEAD + "labels:\n  a: b\n  Yes: 1\n  010: 2\n" + NODES
    assert text_problems(text) == [
        "wf.yaml:5: labels.Yes: `Yes` is true in YAML 1.1 and text in YAML 1.2: quote it ('Yes')",
        "wf.yaml:6: labels.10: `010` is 8 in YAML 1.1 and 10 in YAML 1.2: quote it ('010')",
    ]


def test_an_ambiguous_scalar_is_told_with_every_other_problem() -> None:
    text = HEAD + "fail_fast: on\nnodes:\n  - id: a\n    lua: return 1\n    timout: 3s\n"
    assert text_problems(text) == [
        "wf.yaml:3: fail_fast: `on` is true in YAML 1.1 and text in YAML 1.2: "
        "write true, or quote it ('on')",
        "wf.yaml:7: nodes[a].timout: unknown field 'timout' (did you mean 'timeout'?)",
    ]


def test_an_aliased_ambiguous_scalar_is_told_once_where_it_is_written() -> None:
    text = HEAD + "labels:\n  a: &v no\n  b: *v\n" + NODES
    assert text_problems(text) == [
        "wf.yaml:4: labels.a: `no` is false in YAML 1.1 and text in YAML 1.2: "
        "write false, or quote it ('no')"
    ]


def test_quoted_and_explicitly_tagged_scalars_are_never_ambiguous() -> None:
    spec = parse_text(
        HEAD + "outputs: {a: 'yes', b: \"010\", c: '12:30', d: !!str on, e: '1e3'}\n"
        "fail_fast: !!bool yes\n" + NODES,
        "wf.yaml",
    )
    assert dict(spec.outputs) == {"a": "yes", "b": "010", "c": "12:30", "d": "on", "e": "1e3"}
    assert spec.fail_fast is True


def test_an_explicit_int_yaml_1_2_cannot_read_loads_as_before() -> None:
    assert load_yaml("a: !!int 0b101\nb: !!int 1_000\nc: !!int 1:30\nd: !!int -0x1F\n") == {
        "a": 5,
        "b": 1000,
        "c": 90,
        "d": -31,
    }
    with pytest.raises(YamlRefused, match=r"'0b2' is not a valid int"):
        load_yaml("a: !!int 0b2\n")


def test_load_yaml_alone_refuses_the_first_ambiguous_scalar_with_its_line() -> None:
    # dagctl's --inputs-file: no spec check to tell it with
    with pytest.raises(YamlRefused) as info:
        load_yaml("name: Ada\ncount: 010\nok: yes\n")
    assert str(info.value) == (
        "`010` is 8 in YAML 1.1 and 10 in YAML 1.2: write 8 or 10, or quote it ('010') (line 2)"
    )


UNAMBIGUOUS = [
    "true", "True", "FALSE", "null", "Null", "~", "0", "-0", "7", "+12", "-3",
    "1234567890123", "00", "007", "0x1F", "0xff", "1.5", "-1.5", "+2.25", "1.", "0.0",
    "-0.0", ".5", "1.0e+3", "2.5E-2", ".inf", "-.inf", "+.inf", ".NaN", "y", "n", "Y", "N",
    "x", "yes please", "on_call", "12:30 pm", "1.2.3", "1e", "0x", "0b", "v010", "a_1",
    "'010'", '"yes"', "<<x",
]  # fmt: skip


def same_reading(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and isinstance(b, float):
        return repr(a) == repr(b)
    return a == b


@pytest.mark.parametrize("written", UNAMBIGUOUS)
def test_forms_both_yaml_versions_read_alike_load_as_pyyaml_safe_loader_reads_them(
    written: str,
) -> None:
    text = f"v: {written}\nl: [{written}]\n"
    assert same_reading(load_yaml(text)["v"], yaml.safe_load(text)["v"])
    assert same_reading(load_yaml(text)["l"][0], yaml.safe_load(text)["l"][0])


@settings(deadline=None)  # an example a loaded machine holds up is no failure
@given(
    st.text(alphabet="0123456789_:.+-eEoxXbB", min_size=1, max_size=8)
    | st.sampled_from(["yes", "No", "ON", "off", "Off", "y", "n", "true", "null"])
)
def test_a_plain_scalar_is_refused_or_read_as_pyyaml_safe_loader_reads_it(written: str) -> None:
    text = f"v: {written}\n"
    try:
        old = yaml.safe_load(text)
    except yaml.YAMLError:
        return  # not YAML to PyYAML either: nothing that loaded before changes
    except ValueError:
        return  # a scalar PyYAML's constructor could not make (0b_): PyYAML refused it too
    if not isinstance(old, dict) or "v" not in old:
        return  # a leading '-' or ':' made it some other document
    try:
        new = load_yaml(text)
    except YamlRefused as exc:
        # told, never silently different
        assert "in YAML 1.1 and" in exc.problem or "is not a valid" in exc.problem, exc.problem
        return
    if isinstance(old["v"], datetime.date):
        return  # a timestamp: refused by the spec check, with its line
    assert same_reading(new["v"], old["v"]), (written, new, old)


def test_a_timestamp_is_still_refused_with_its_line() -> None:
    assert text_problems(HEAD + "description: 2024-01-01\n" + NODES) == [
        "wf.yaml:3: description: '2024-01-01' is a YAML timestamp, not a JSON value: "
        "quote it to make it a string"
    ]


def test_a_one_line_json_spec_tells_a_key_twice_with_the_other_problems_on_its_line() -> None:
    text = (
        '{"id": "wf", "version": "1.0.0", "id": "wf", "bogus": 1, '
        '"nodes": [{"id": "a", "lua": "return results.zz"}]}'
    )
    assert text_problems(text, "wf.json") == [
        "wf.json:1: id: duplicate key 'id' (first on line 1)",
        "wf.json:1: bogus: unknown field 'bogus'",
        "wf.json:1: nodes[a].lua: results.zz: there is no node 'zz' (Lua line 1)",
    ]


def test_a_key_twice_in_a_node_is_named_by_the_nodes_id() -> None:
    text = HEAD + "nodes:\n  - id: a\n    lua: return 1\n    lua: return 2\n    luaa: 1\n"
    assert text_problems(text) == [
        "wf.yaml:6: nodes[a].lua: duplicate key 'lua' (first on line 5)",
        "wf.yaml:7: nodes[a].luaa: unknown field 'luaa' (did you mean 'lua'?)",
    ]


def test_a_key_twice_in_a_node_whose_id_is_not_text_is_named_by_its_index() -> None:
    text = HEAD + "nodes:\n  - id: 5\n    lua: return 1\n    lua: return 2\n"
    assert text_problems(text) == [
        "wf.yaml:4: nodes[0].id: bad node id 5: use 1-63 of letters, digits, '_' or '-', "
        "starting with a letter or '_'",
        "wf.yaml:6: nodes[0].lua: duplicate key 'lua' (first on line 5)",
    ]


# -- 6. what aliases may make of a document, and how deep it may nest -------------------------


def test_aliases_may_not_make_a_document_ten_times_its_size_past_a_mebibyte() -> None:
    lines = [HEAD + "labels:", "  x0: &x0 {k1: v, k2: v, k3: v, k4: v, k5: v, k6: v, k7: v, k8: v}"]
    for i in range(1, 5):
        aliases = ", ".join(f"k{j}: *x{i - 1}" for j in range(1, 9))
        lines.append(f"  x{i}: &x{i} {{{aliases}}}")
    lines += [f"  y{i}: *x4" for i in range(4)]
    text = "\n".join(lines) + "\n" + NODES
    assert len(text) < 1000  # it stood for 3 MB: stored, expanded
    assert text_problems(text) == [
        "wf.yaml:4: the document's aliases expand it past 1 MiB, 10 times its own size"
    ]
    # sharing is fine: the same alias twice, or a document that stays under 1 MiB
    parse_text("\n".join(lines[:4]) + "\n" + NODES, "wf.yaml")


def test_yaml_nested_past_64_levels_is_refused_like_a_json_body() -> None:
    def nested(levels: int) -> str:
        # labels (2) in the document (1): a value in `levels` lists
        return HEAD + "labels: {a: " + "[" * (levels - 3) + "1" + "]" * (levels - 3) + "}\n"

    assert text_problems(nested(65) + NODES) == [
        "wf.yaml:3: invalid YAML: nested deeper than 64 levels"
    ]
    parse_text(nested(64) + NODES, "wf.yaml")


def test_a_json_file_nested_past_64_levels_is_refused_with_its_line() -> None:
    def nested(levels: int, indent: int | None) -> str:
        labels: Any = 1
        for _ in range(levels - 3):  # the document (1), labels (2) and a value (levels)
            labels = [labels]
        doc = {"id": "wf", "version": "1.0.0", "labels": {"a": labels}}
        doc["nodes"] = [{"id": "a", "lua": "return 1"}]
        return json.dumps(doc, indent=indent)

    # before: valid here, and refused by the orchestrator as a body too deep
    assert text_problems(nested(65, None), "wf.json") == [
        "wf.json:1: invalid JSON: nested deeper than 64 levels"
    ]
    lines = nested(65, 1).splitlines()
    [problem] = text_problems(nested(65, 1), "wf.json")
    line = int(problem.split(":")[1])
    assert problem.endswith(": invalid JSON: nested deeper than 64 levels")
    assert lines[line - 1].strip() == "1"  # the 65th level, in the file's lines
    parse_text(nested(64, 1), "wf.json", json_only=True)


# -- 7. the builder validates as a file is validated ------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: Workflow("wf", "1.0.0").node("a", lua="return 1", foreach=[float("nan")]),
            "nodes[a].foreach[0]: NaN is not a number JSON can carry: write a finite number, "
            "or a string",
        ),
        (
            lambda: Workflow("wf", "1.0.0", labels={"k": {1, 2}}).node("a", lua="return 1"),
            "labels.k: is a YAML set (!!set), not a JSON value: write a list",
        ),
        (
            lambda: Workflow("wf", "1.0.0").node("a", lua="return 1", foreach=[10**5000]),
            "nodes[a].foreach[0]: a whole number too large to carry: past about 1.8e308, more "
            "than a double holds (Lua and JSON clients read numbers as doubles); write it as a "
            "string",
        ),
        (
            lambda: (
                Workflow("wf", "1.0.0")
                .node("a", lua="return 1")
                .node("b", lua="return 1", depends_on="a")
            ),
            "nodes[b].depends_on: must be a list of node ids, got the string 'a': "
            "write depends_on=['a']",
        ),
        (
            lambda: Workflow("wf", "1.0.0", id="other").node("a", lua="return 1"),
            "id: Workflow(...) sets 'id' itself: give it as the first argument",
        ),
        (
            lambda: Workflow("wf", "1.0.0", nodes=[]).node("a", lua="return 1"),
            "nodes: Workflow(...) sets 'nodes' itself: add each with .node(...)",
        ),
        (
            lambda: Workflow("wf", "1.0.0").node("a", lua="return 1", id="b"),
            "nodes[a].id: node(...) sets 'id' itself: give it as the first argument",
        ),
    ],
)
def test_the_builder_refuses_what_a_file_could_not_say(build: Any, message: str) -> None:
    with pytest.raises(SpecError) as info:
        build().build()
    assert info.value.messages() == [f"Workflow('wf'): {message}"]


def test_a_built_spec_is_not_changed_by_using_the_builder_again() -> None:
    builder = Workflow("wf", "1.0.0", labels={"team": ["a"]}).node("a", lua="return 1")
    spec = builder.build()
    builder.node("b", lua="return 2")
    builder.to_document()["labels"]["team"].append("b")
    assert [n["id"] for n in spec.document["nodes"]] == ["a"]
    assert spec.document["labels"] == {"team": ["a"]}


# -- 8. lines ---------------------------------------------------------------------------------


def plus_line(code: str, expression: bool) -> tuple[str, int | None] | None:
    """A Lua syntax check that finds '+' ending a line, as Lua would."""
    for number, text in enumerate(code.split("\n"), 1):
        if text.rstrip().endswith("+"):
            return "unexpected symbol near '+'", number
    return None


PLUS = ExternalChecks(lua_syntax=plus_line)


def test_lua_lines_in_folded_and_plain_scalars_are_found_in_the_file() -> None:
    text = (
        HEAD + "nodes:\n"
        "  - id: fold\n    lua: >\n      local a = 1\n\n      local b = 2\n\n      return +\n"
        "  - id: plain\n    lua:\n      local a = 1\n      return +\n"
        "  - id: lit\n    lua: |\n\n      local a = 1\n      return +\n"
    )
    assert text_problems(text, checks=PLUS) == [
        "wf.yaml:10: nodes[fold].lua: Lua syntax error: unexpected symbol near '+' (Lua line 3)",
        # joined into one line by YAML: refused as such (test_spec_pitfalls), the Lua unread
        "wf.yaml:13: nodes[plain].lua: a value over several lines joins its lines with spaces,"
        " so a -- comment runs to the end of the script and errors all name line 1: write it"
        " as a literal block (lua: |)",
        "wf.yaml:19: nodes[lit].lua: Lua syntax error: unexpected symbol near '+' (Lua line 3)",
    ]


def test_a_lua_line_in_json_is_told_apart_from_the_keys_line() -> None:
    text = (
        '{"id": "wf", "version": "1.0.0", "nodes": [\n'
        '  {"id": "x",\n   "lua": "local a = 1\\nlocal b = 2\\nreturn +"}]}'
    )
    assert text_problems(text, "wf.json", checks=PLUS) == [
        "wf.json:3: nodes[x].lua: Lua syntax error: unexpected symbol near '+' (Lua line 3)"
    ]


def test_an_unknown_field_holding_a_block_is_told_on_its_keys_line() -> None:
    text = HEAD + "nodes:\n  - id: a\n    lua: return 1\n    luaa: |\n      x\n"
    assert text_problems(text) == [
        "wf.yaml:6: nodes[a].luaa: unknown field 'luaa' (did you mean 'lua'?)"
    ]


def test_template_problems_in_outputs_and_inputs_are_told_on_the_entrys_line() -> None:
    text = (
        HEAD + "outputs:\n  a: '{{ results.a }}'\n  b: '{{ results.nope.y }}'\n"
        "nodes:\n  - id: a\n    lua: return 1\n"
        "  - id: s\n    workflow: child\n    depends_on: [a]\n    inputs:\n"
        "      p: '{{ results.a }}'\n      q: '{{ results.t }}'\n"
        "  - id: t\n    lua: return 1\n"
    )
    assert text_problems(text) == [
        "wf.yaml:5: outputs.b: results.nope: there is no node 'nope'",
        "wf.yaml:14: nodes[s].inputs: results.t: node 't' is not an ancestor of 's'; "
        "add it to depends_on",
    ]


# -- 9. a byte order mark ---------------------------------------------------------------------


def test_a_byte_order_mark_is_dropped_from_json_files_and_stdin_alike() -> None:
    data = b"\xef\xbb\xbf" + b'{"id": "wf", "version": "1.0.0", "nodes": [{"id": "a", "lua": "x"}]}'
    for name in ("wf.json", "<stdin>"):
        source = SpecSource(name, data)
        assert source.is_json and source.data.startswith(b"{")
    spec = parse_text(data.decode("utf-8"), "wf.json", json_only=True)
    assert spec.id == "wf"
