"""Specs a program wrote with PyYAML are read as they were dumped: a script's closing line
break written as a blank line, a long line wrapped at a space, a double-quoted value broken
with escapes. None of these joins two lines of the script, so none is refused as one; a value a
person folded over several lines still is (tests/unit/test_spec_pitfalls.py). One wrap looks
the same as a person's fold: one inside a -- comment (a person's line ending in a long comment,
the next line's code then joining it). It is refused, saying so, and a dump without wrapping
(width=float("inf")) reads back; nothing is ever read as other than it was dumped."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.errors import SpecError
from engine.documents import WRAP_WIDTH, parse_text

DUMPS: list[dict[str, Any]] = [
    {},
    {"default_flow_style": True},
    {"allow_unicode": True},
    {"allow_unicode": True, "default_flow_style": True},
    {"sort_keys": False, "indent": 4},
]
"""How a Python program dumps a spec: PyYAML's defaults (wrapping at 80 columns) but for
the style of its collections, its characters and its indentation."""

FOLDED_LUA = (
    "a value over several lines joins its lines with spaces, so a -- comment runs to the end "
    "of the script and errors all name line 1: write it as a literal block (lua: |)"
)
FOLDED_WHEN = (
    "a value over several lines joins its lines with spaces, so a -- comment runs to the end "
    "of the expression: write it as a literal block (when: |)"
)


def doc(lua: str, when: str | None = None) -> dict[str, Any]:
    b: dict[str, Any] = {"id": "b", "depends_on": ["a"], "lua": lua}
    if when is not None:
        b["when"] = when
    return {
        "id": "wf",
        "version": "1.0.0",
        "nodes": [{"id": "a", "lua": "return { ok = true, n = 1 }"}, b],
    }


def read_back(document: dict[str, Any], **dump: Any) -> None:
    text = yaml.safe_dump(document, **dump)
    assert yaml.safe_load(text) == document  # PyYAML's own word: the dump holds the values
    assert parse_text(text, "wf.yaml").document == document


def read_back_or_told(document: dict[str, Any], **dump: Any) -> None:
    """Read back as dumped, or refused for a wrap inside a comment, and then read back when
    dumped without wrapping: never read as something else."""
    text = yaml.safe_dump(document, **dump)
    try:
        got = parse_text(text, "wf.yaml").document
    except SpecError as error:
        assert all(FOLDED_LUA in m or FOLDED_WHEN in m for m in error.messages()), error
        read_back(document, **{**dump, "width": float("inf")})
        return
    assert got == document


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_text(text, "wf.yaml")
    return info.value.messages()


WORDS = "word " * 200
SCRIPTS = [
    # (a) a script ending in a line break, as every `lua: |` block does
    "return 1\n",
    "return 1\n\n\n",
    "local a = 1\nreturn a\n",
    # (b) comments on several lines
    "-- top\nlocal a = 1 -- one\n-- two\nreturn a -- three\n",
    "local x = 1 -- c\nreturn x",
    # (c) one line of 80, 200 and 1000 characters, with and without comments, with strings
    # holding -- and #
    ("return " + "1 + " * 40)[:78] + "1",
    "return " + " + ".join(["1"] * 60) + " + 2",
    "return " + " + ".join(["1"] * 330),
    "local s = 'a -- b # c' " + "x = s .. '-- #' " * 60,
    "return '" + "it''s " * 30 + "'",
    "return [[long\nstring -- not a comment\n]] -- short",
    # (d) unicode and tabs: PyYAML double-quotes them unless allow_unicode
    'return "é ü\tx" -- ünicode\n' + "local w = 'wörd' " * 10 + "\n",
    "return '😀 " + "ü " * 50 + "'",
    # spaces YAML would strip, kept by PyYAML's quoting
    "  return 1  ",
    "local a = 1 \nreturn a\n",
]


@pytest.mark.parametrize("dump", DUMPS, ids=repr)
@pytest.mark.parametrize("lua", SCRIPTS, ids=lambda s: repr(s[:30]))
def test_a_script_pyyaml_dumped_is_read_back_as_it_was(lua: str, dump: dict[str, Any]) -> None:
    read_back(doc(lua), **dump)


LONG_COMMENTS = [
    "local n = 1 -- " + WORDS[:185],
    "return 1 -- " + WORDS,
    "local t = {" + ", ".join(f'"k{i} -- #"' for i in range(60)) + "}\nreturn #t -- " + WORDS[:300],
    "x = 1  -- two spaces  " + "a  b " * 30,
    "return [[long\nstring -- not a comment\n]] -- " + WORDS[:150],
    'return "é ü\tx" -- ünicode ' + "wörd " * 30 + "\n",
    "\tlocal a = 1\n\treturn a -- 中文 " + "字 " * 60 + "\n",
]
"""Lines ending in a comment past column 80, which PyYAML may wrap inside the comment."""


@pytest.mark.parametrize("dump", DUMPS, ids=repr)
@pytest.mark.parametrize("lua", LONG_COMMENTS, ids=lambda s: repr(s[:30]))
def test_a_long_comment_pyyaml_wrapped_is_refused_or_read_back_never_changed(
    lua: str, dump: dict[str, Any]
) -> None:
    read_back_or_told(doc(lua), **dump)


def test_a_wrap_inside_a_comment_is_refused_as_a_persons_fold_would_be() -> None:
    # the reviewer's: a person's line ending in a long URL comment, the next line's code then
    # joining it; it reads as a PyYAML wrap, and is refused as one (before: run without it)
    field = (
        "    lua: local x = 41 + 1 -- see https://example.com/docs/some/long/path/explaining/why"
        "\n      return {x = x}\n"
    )
    assert problems(HEAD + field) == [f"wf.yaml:8: nodes[b].lua: {FOLDED_LUA}"]
    when = (
        "    lua: return 1\n    when: results.a.ok -- https://example.com/docs/some/long/path/why"
        "/is\n      and false\n"
    )
    assert problems(HEAD + when) == [f"wf.yaml:9: nodes[b].when: {FOLDED_WHEN}"]


WHENS = [
    "results.a.ok",
    "results.a.ok and " + " and ".join(["results.a.n > 0"] * 12),
    "results.a.n > 0 -- short",
    'results.a.ok and "x -- y" ~= "#" and ' + " and ".join(["true"] * 20),
    "results.a.ok\n",
    "results.a.ok -- one\nand results.a.n > 0\n",
]


@pytest.mark.parametrize("dump", DUMPS, ids=repr)
@pytest.mark.parametrize("when", WHENS, ids=lambda s: repr(s[:30]))
def test_a_when_pyyaml_dumped_is_read_back_as_it_was(when: str, dump: dict[str, Any]) -> None:
    read_back(doc("return 1\n", when), **dump)


def test_the_shapes_pyyaml_writes_are_the_ones_read() -> None:
    # what the hunter saw: the closing line break is a blank line, the quote alone after it
    text = yaml.safe_dump(doc("return 1\n"))
    assert "  lua: 'return 1\n\n    '\n" in text
    long = "return " + " + ".join(["1"] * 60)
    text = yaml.safe_dump(doc(long))
    assert "\n    1 + " in text  # wrapped: plain, on two lines
    unicode = "return 'é' .. '" + WORDS[:150] + "'"
    text = yaml.safe_dump(doc(unicode))
    assert "\\\n    \\ " in text  # double-quoted, broken with escapes
    for lua in ("return 1\n", long, unicode):
        assert parse_text(text, "wf.yaml") is not None
        read_back(doc(lua))


def test_a_dump_written_with_windows_line_breaks_is_read_as_well() -> None:
    document = doc(
        "local a = 1 -- one\nreturn a\n", "results.a.n > 0 and " + " and ".join(["true"] * 40)
    )
    text = yaml.safe_dump(document).replace("\n", "\r\n")
    assert parse_text(text, "wf.yaml").document == document


LINE = st.text(st.sampled_from("abcxyz019 _.,=+-#'\"\\()[]<>~éü中😀\t"), min_size=0, max_size=120)
STATEMENT = st.one_of(
    LINE,
    LINE.map(lambda t: "-- " + t),
    st.tuples(LINE, LINE).map(lambda p: f"local v = {p[0]!r} -- {p[1]}"),
    st.tuples(LINE, LINE).map(lambda p: f"x = 1 {p[0]} -- {p[1]}"),
    st.integers(0, 40).map(lambda n: "return " + " + ".join(["v -- n"] * n)),
    st.integers(0, 60).map(lambda n: "s = '" + "-- # " * n + "'"),
)
SCRIPT = st.tuples(st.lists(STATEMENT, min_size=1, max_size=6), st.booleans()).map(
    # a script of nothing but white space is refused as empty, whatever wrote it
    lambda p: "local v = 1\n" * (not "".join(p[0]).strip()) + "\n".join(p[0]) + "\n" * p[1]
)


@settings(max_examples=300, deadline=None)
@given(lua=SCRIPT, when=SCRIPT, dump=st.sampled_from(DUMPS))
def test_any_script_pyyaml_dumps_is_read_back_or_refused_never_changed(
    lua: str, when: str, dump: dict[str, Any]
) -> None:
    read_back_or_told(doc(lua, when), **dump)


# -- what a person folds over several lines is refused as ever ---------------------------------

HEAD = (
    "id: wf\nversion: 1.0.0\nnodes:\n  - id: a\n    lua: return 1\n  - id: b\n    depends_on: [a]\n"
)
"""A test's own field is on line 8."""


LONG_PLAIN = (
    "    lua: local x = compute(results.a.value, results.a.other, results.a.third) -- a note"
)
LONG_QUOTED = '    lua: "local x = compute(results.a.value, results.a.other, results.a.thirds) -- n'


@pytest.mark.parametrize(
    "field",
    [
        # short lines: no dumper breaks them, so the writer meant two lines
        "    lua: local x = 1 -- one\n      return x\n",
        "    lua: 'local x = 1 -- one\n      return x'\n",
        # a line ending past column 80, but with a space past it before its end: PyYAML
        # would have broken the line there
        LONG_PLAIN + "\n      return x\n",
        # a dumper never breaks a double-quoted line with a space
        LONG_QUOTED + '\n      return x"\n',
    ],
)
def test_a_script_a_person_folded_is_refused(field: str) -> None:
    assert problems(HEAD + field) == [f"wf.yaml:8: nodes[b].lua: {FOLDED_LUA}"]


def test_the_long_lines_above_end_past_the_width_with_a_space_past_it() -> None:
    for line in (LONG_PLAIN, LONG_QUOTED):
        assert len(line) > WRAP_WIDTH and " " in line[WRAP_WIDTH + 1 : -1]


def test_a_quote_alone_on_the_last_line_joins_nothing() -> None:
    # 'return 1 ' with the space the line break makes: nothing is joined to anything
    spec = parse_text(HEAD + "    lua: 'return 1\n    '\n", "wf.yaml")
    assert spec.by_id["b"].lua == "return 1 "


@pytest.mark.parametrize(
    ("field", "refused"),
    [
        ("    lua: return 1\n    when: results.a.ok -- one\n      and false\n", True),
        ("    lua: return 1\n    when: 'results.a.ok -- one\n      and false'\n", True),
        ("    lua: return 1\n    when: >\n      results.a.ok -- one\n      and false\n", True),
        ("    lua: return 1\n    when: >-\n      results.a.ok -- one\n      and false", True),
        # a -- in a string is no comment: the expression is joined harmlessly
        ('    lua: return 1\n    when: results.a.s ~= "a -- b"\n      and true\n', False),
        ("    lua: return 1\n    when: >\n      results.a.s ~= '--'\n      and true\n", False),
        # a long comment in brackets ends where it says
        ("    lua: return 1\n    when: results.a.ok --[[ one ]]\n      and true\n", False),
        # the blank line keeps the line break
        ("    lua: return 1\n    when: results.a.ok -- one\n\n      and false\n", False),
    ],
)
def test_a_when_is_refused_only_where_a_comment_swallows_a_joined_line(
    field: str, refused: bool
) -> None:
    if refused:
        said = FOLDED_WHEN.replace("a value over several lines", "a folded block (>)")
        assert problems(HEAD + field) == [
            f"wf.yaml:9: nodes[b].when: {said if ': >' in field else FOLDED_WHEN}"
        ]
    else:
        assert parse_text(HEAD + field, "wf.yaml").by_id["b"].when is not None
