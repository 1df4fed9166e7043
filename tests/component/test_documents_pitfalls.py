"""Spec text YAML reads otherwise than its writer meant, with the engine's own checks (Lua
syntax included): the reader's word on a field is the one told, not a Lua error it caused."""

from __future__ import annotations

import pytest

from engine.core.errors import SpecError
from engine.loading import spec_from_text

HEAD = "id: wf\nversion: 1.0.0\nnodes:\n  - id: a\n    lua: return { list = {1, 2} }\n"
COMMENT = (
    "a ' #' in an unquoted YAML value starts a comment, so the script ends before it: "
    "write the script as a block (lua: |) or quote it"
)
FOLDED = (
    "a folded block (>) joins its lines with spaces, so a -- comment runs to the end of the "
    "script and errors all name line 1: write it as a literal block (lua: |)"
)


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        spec_from_text(text, "wf.yaml")
    return info.value.messages()


def test_a_table_cut_by_a_comment_is_told_as_the_comment_not_as_lua_syntax() -> None:
    text = HEAD + "  - id: b\n    depends_on: [a]\n    lua: return { n = #results.a.list }\n"
    assert problems(text) == [f"wf.yaml:8: nodes[b].lua: {COMMENT}"]


def test_a_script_cut_to_a_bare_return_is_refused() -> None:
    text = HEAD + "  - id: b\n    depends_on: [a]\n    lua: return #results.a.list\n"
    assert problems(text) == [f"wf.yaml:8: nodes[b].lua: {COMMENT}"]


def test_a_folded_script_whose_comment_swallows_the_rest_is_refused() -> None:
    text = HEAD + "  - id: b\n    lua: >-\n      -- compute\n      local a = 1\n      return a\n"
    assert problems(text) == [f"wf.yaml:7: nodes[b].lua: {FOLDED}"]


def test_the_scripts_written_as_told_are_valid() -> None:
    text = (
        HEAD + "  - id: b\n    depends_on: [a]\n    lua: |\n      -- count them\n"
        "      return { n = #results.a.list }  -- # as Lua reads it\n"
        "  - id: c\n    depends_on: [a]\n    lua: 'return #results.a.list'  # quoted\n"
        "  - id: d\n    lua: >-\n      return 1\n"
    )
    spec = spec_from_text(text, "wf.yaml")
    assert spec.by_id["c"].lua == "return #results.a.list"
    assert spec.by_id["d"].lua == "return 1"


def test_a_when_reading_ctx_item_is_refused_and_a_syntax_error_is_told_first() -> None:
    node = "  - id: b\n    depends_on: [a]\n    foreach: '{{ results.a.list }}'\n"
    text = HEAD + node + "    when: ctx.item > 1\n    lua: return ctx.item\n"
    assert problems(text) == [
        "wf.yaml:9: nodes[b].when: ctx.item is only set in a foreach node's script, "
        "once per item; when is decided once for the whole node"
    ]
    text = HEAD + node + "    when: ctx.item >\n    lua: return ctx.item\n"
    assert [p.split(": ", 2)[2] for p in problems(text)] == [
        "bad Lua expression: unexpected symbol at the end of the expression"
    ]
