"""Spec text that YAML or the run reads otherwise than its writer meant: a ' #' that starts a
YAML comment in a plain Lua value, a folded block that joins Lua lines, and a ``when`` that
reads the per-item ``ctx.item``. Each is refused with its line; its close neighbours are not."""

from __future__ import annotations

from typing import Any

import pytest

from engine.core.errors import SpecError
from engine.core.spec import parse_spec
from engine.documents import load_yaml, parse_text, read_document

HEAD = "id: wf\nversion: 1.0.0\nnodes:\n  - id: a\n    lua: return { list = {1, 2} }\n"
"""Lines 1-5; a test's own node starts on line 6, its field on line 8."""


def problems(text: str, source: str = "wf.yaml") -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_text(text, source, json_only=source.endswith(".json"))
    return info.value.messages()


def node(field: str) -> str:
    return HEAD + f"  - id: b\n    depends_on: [a]\n{field}"


COMMENT = (
    "a ' #' in an unquoted YAML value starts a comment, so the {what} ends before it: "
    "write the {what} as a block ({name}: |) or quote it"
)
FOLDED = (
    "a folded block (>) joins its lines with spaces, so a -- comment runs to the end of the "
    "script and errors all name line 1: write it as a literal block (lua: |)"
)
PER_ITEM = (
    "ctx.{name} is only set in a foreach node's script, once per item; "
    "when is decided once for the whole node"
)


# -- a ' #' in a plain value ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "line", "name", "what"),
    [
        ("    lua: return #results.a.list\n", 8, "lua", "script"),
        ("    lua: return { n = #results.a.list }\n", 8, "lua", "script"),
        ("    lua:\n      local n = 1\n      return n + #results.a.list\n", 10, "lua", "script"),
        ("    lua: return 1\n    when: #results.a.list > 0\n", 9, "when", "expression"),
        ("    lua: return 1\n    when: results.a.list[1] #> 0\n", 9, "when", "expression"),
        (
            "    lua: return ctx.item\n    foreach: # {{ results.a.list }}\n",
            9,
            "foreach",
            "template",
        ),
        ("    lua: return ctx.item\n    foreach: x #y\n", 9, "foreach", "template"),
    ],
)
def test_a_hash_after_a_space_in_a_plain_value_is_refused_on_its_line(
    field: str, line: int, name: str, what: str
) -> None:
    assert problems(node(field)) == [
        f"wf.yaml:{line}: nodes[b].{name}: {COMMENT.format(name=name, what=what)}"
    ]


def test_a_hash_in_a_flow_mapping_is_refused_too() -> None:
    text = HEAD + "  - {id: b, depends_on: [a], lua: return #results.a.list  # count\n    }\n"
    assert problems(text) == [
        f"wf.yaml:6: nodes[b].lua: {COMMENT.format(name='lua', what='script')}"
    ]


@pytest.mark.parametrize(
    "field",
    [
        '    lua: "return #results.a.list"  # the count\n',
        "    lua: 'return #results.a.list' # the count\n",
        "    lua: |  # the count\n      return #results.a.list  -- # too\n",
        "    lua: >-\n      return #results.a.list\n",
        "    lua: return x#y\n",
        "    lua: return 1\n    when: '#results.a.list > 0'  # some\n",
        "    lua: return 1\n    when: |\n      #results.a.list > 0\n",
        "    lua: return 1\n    # a comment on its own line\n    when: results.a.list[1] > 0\n",
        '    lua: return ctx.item\n    foreach: "{{ results.a.list }}"  # each\n',
        "    lua: return ctx.item\n    foreach: [1, 2]  # two\n",
        "    lua: return 1\n    description: counts # things\n",
    ],
)
def test_a_hash_yaml_keeps_or_a_comment_after_quotes_is_not_refused(field: str) -> None:
    assert parse_text(node(field), "wf.yaml").by_id["b"].lua is not None


def test_a_hash_after_a_space_elsewhere_in_the_document_is_a_comment_as_ever() -> None:
    # only a node's Lua fields are code; an input's or a label's value is the writer's data
    text = (
        "id: wf  # the id\nversion: 1.0.0\nlabels: {team: data}  # who\n"
        "nodes:\n  - id: a  # first\n    lua: return 1\n"
    )
    assert parse_text(text, "wf.yaml").document["labels"] == {"team": "data"}


def test_an_inputs_file_is_not_held_to_the_spec_rules() -> None:
    doc, _, found = read_document("nodes:\n  - lua: return #x\n", None)
    assert doc == {"nodes": [{"lua": "return"}]} and found == []


def test_json_holds_a_hash_as_written() -> None:
    # a problem elsewhere takes the JSON through the reader that finds lines
    text = (
        '{"id": "wf", "version": "1.0.0", "bogus": 1,\n "nodes": [{"id": "a", "lua": "return #x"}]}'
    )
    assert problems(text, "wf.json") == ["wf.json:1: bogus: unknown field 'bogus'"]


# -- a folded Lua block -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        "    lua: >-\n      -- compute the answer\n      local a = 1\n      return { a = a }\n",
        "    lua: >\n      local a = 1\n      return a\n",
        "    lua: >  # folded\n\n      local a = 1\n      return a\n\n",
    ],
)
def test_a_folded_lua_block_that_joins_lines_is_refused_on_its_header_line(field: str) -> None:
    assert problems(node(field)) == [f"wf.yaml:8: nodes[b].lua: {FOLDED}"]


@pytest.mark.parametrize(
    "field",
    [
        "    lua: >-\n      return 1\n",
        "    lua: >\n\n      return 1\n\n",
        # blank lines between them keep the lines apart: the script is as written
        "    lua: >\n      local a = 1\n\n      return a\n",
        "    lua: |\n      -- compute\n      return 1\n",
        "    lua: return 1\n    when: >\n      results.a.list[1]\n      > 0\n",
    ],
)
def test_a_folded_block_that_joins_no_lua_lines_is_valid(field: str) -> None:
    assert parse_text(node(field), "wf.yaml").by_id["b"].lua is not None


JOINED = (
    "{how} joins its lines with spaces, so a -- comment runs to the end "
    "of the {what}{lines}: write it as a literal block ({name}: |)"
)


@pytest.mark.parametrize(
    ("field", "line", "name"),
    [
        # YAML joins a plain or quoted value's lines as a folded block's
        ("    lua:\n      local rows = {1, 2} -- two rows\n      return rows\n", 9, "lua"),
        ("    lua: local a = 1\n      return a\n", 8, "lua"),
        ('    lua: "local a = 1\n      return a"\n', 8, "lua"),
        ("    lua: 'local a = 1 -- one\n      return a'\n", 8, "lua"),
        ("    lua: return 1\n    when: results.a.ok -- one\n      and false\n", 9, "when"),
        ("    lua: return 1\n    when: >\n      results.a.ok -- one\n      and false\n", 9, "when"),
    ],
)
def test_a_lua_or_when_whose_lines_yaml_joins_is_refused(field: str, line: int, name: str) -> None:
    what, lines = ("script", " and errors all name line 1") if name == "lua" else ("expression", "")
    how = "a folded block (>)" if ": >" in field else "a value over several lines"
    said = JOINED.format(how=how, what=what, lines=lines, name=name)
    assert problems(node(field)) == [f"wf.yaml:{line}: nodes[b].{name}: {said}"]


@pytest.mark.parametrize(
    "field",
    [
        # one line, its line break written as an escape: the script is as written
        '    lua: "local a = 1\\nreturn a"\n',
        # an expression over two lines without a comment joins harmlessly
        "    lua: return 1\n    when: results.a.ok\n      and results.a.ok\n",
        "    lua: return 1\n    when: 'results.a.ok\n      and true'\n",
        # a comment on the last line swallows nothing
        "    lua: return 1\n    when: >\n      results.a.ok\n      and true -- last\n",
    ],
)
def test_values_yaml_joins_harmlessly_are_valid(field: str) -> None:
    assert parse_text(node(field), "wf.yaml").by_id["b"] is not None


# -- ctx.item in when -------------------------------------------------------------------------


def doc(**b: Any) -> dict[str, Any]:
    return {
        "id": "wf",
        "version": "1.0.0",
        "nodes": [{"id": "a", "lua": "return 1"}, {"id": "b", "depends_on": ["a"], **b}],
    }


@pytest.mark.parametrize(
    ("when", "name"),
    [
        ("ctx.item > 1", "item"),
        ("results.a > 0 and ctx.index == 1", "index"),
        ('ctx["item"] ~= nil', "item"),
        ("ctx\n.item", "item"),
    ],
)
def test_a_when_reading_a_foreach_item_is_refused(when: str, name: str) -> None:
    for extra in ({"foreach": [1, 2]}, {}):
        with pytest.raises(SpecError) as info:
            parse_spec(doc(lua="return ctx.item", when=when, **extra))
        assert info.value.messages() == [f"nodes[b].when: {PER_ITEM.format(name=name)}"]


@pytest.mark.parametrize(
    "when",
    [
        "ctx.attempt == 1 and ctx.node_id == 'b'",
        "results.a.item > 0",
        "x.ctx.item",
        "'ctx.item' ~= nil -- ctx.index",
    ],
)
def test_a_when_reading_other_fields_named_so_is_valid(when: str) -> None:
    assert parse_spec(doc(lua="return ctx.item", foreach=[1], when=when)).by_id["b"].when == when


def test_a_when_reading_ctx_item_is_told_on_its_line() -> None:
    text = node("    foreach: [1, 2]\n    when: ctx.item > 1\n    lua: return ctx.item\n")
    assert problems(text) == [f"wf.yaml:9: nodes[b].when: {PER_ITEM.format(name='item')}"]


# -- a date with a one-digit month ------------------------------------------------------------


@pytest.mark.parametrize("written", ["2001-1-1", "0001-1-1", "2024-3-15"])
def test_a_date_with_a_one_digit_month_or_day_and_no_time_is_text_as_pyyaml_reads_it(
    written: str,
) -> None:
    # YAML 1.1's timestamp takes one digit there only with a time; YAML 1.2 has no timestamps
    assert load_yaml(f"v: {written}\n") == {"v": written}
