"""Where a library call that failed as a tail call sits in the script: the sandbox names the
function, and the one line that calls it is the line."""

from __future__ import annotations

import pytest

from engine.lua.sandbox import _tail_call_line


@pytest.mark.parametrize(
    ("code", "function", "line"),
    [
        ('local x = 1\nreturn ("abc"):find("[")', "find", 2),
        ("local x = 1\nreturn string.find(s, p)", "find", 2),
        ("local t = {}\n\nreturn table.concat { {} }", "concat", 3),
        # two lines call it, or a line names it without calling: no line rather than a wrong one
        ('local a = s:find("x")\nreturn s:find("[")', "find", None),
        ("local f = string.find\nreturn s:find(p)", "find", None),
        # a call in a comment is no call; another function of a longer name is not this one
        ("-- s:find(p)\nreturn s:find(p)", "find", 2),
        ("local x = refind(1)\nreturn s:find(p)", "find", None),
    ],
)
def test_the_line_of_a_tail_call_the_sandbox_names(
    code: str, function: str, line: int | None
) -> None:
    assert _tail_call_line("malformed pattern (missing ']')", code, function) == line


def test_without_a_name_only_a_json_message_names_its_function() -> None:
    assert _tail_call_line("json.decode: bad at line 1", "local x\nreturn json.decode(b)") == 2
    assert _tail_call_line("malformed pattern", 'return ("a"):find("[")') is None
