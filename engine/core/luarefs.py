"""Static ``results.<node>`` references in Lua source, found without running it.

Registration refuses a script that names a node that is not among its ancestors, so a typo or a
missing ``depends_on`` is caught before any run rather than showing up as a nil at 3 a.m. A small
lexer skips comments and string literals, so ``-- results.old`` in a comment is not a reference.
Dynamic lookups (``results[name]``) cannot be checked statically and are resolved at run time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LONG_OPEN = re.compile(r"\[(=*)\[")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class LuaReference:
    node_id: str
    line: int


def tokens(source: str) -> list[tuple[str, str, int]]:
    """(kind, text, line) tokens: kinds are name, string, sym. Comments are dropped."""
    out: list[tuple[str, str, int]] = []
    i, line, n = 0, 1, len(source)
    while i < n:
        c = source[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif source.startswith("--", i):
            long = _LONG_OPEN.match(source, i + 2)
            if long:
                close = "]" + long.group(1) + "]"
                end = source.find(close, long.end())
                end = n if end < 0 else end + len(close)
            else:
                end = source.find("\n", i)
                end = n if end < 0 else end
            line += source.count("\n", i, end)
            i = end
        elif c in "\"'":
            j = i + 1
            buf: list[str] = []
            while j < n and source[j] != c:
                if source[j] == "\\" and j + 1 < n:
                    buf.append(source[j + 1])
                    j += 2
                    continue
                if source[j] == "\n":
                    break
                buf.append(source[j])
                j += 1
            out.append(("string", "".join(buf), line))
            i = j + 1
        elif c == "[" and _LONG_OPEN.match(source, i):
            long = _LONG_OPEN.match(source, i)
            assert long is not None
            close = "]" + long.group(1) + "]"
            end = source.find(close, long.end())
            end = n if end < 0 else end
            out.append(("string", source[long.end() : end], line))
            line += source.count("\n", i, end)
            i = end + len(close)
        elif m := _NAME.match(source, i):
            # Lua names are ASCII (lctype): a letter like 'é' is a symbol, which Lua refuses
            # with its line in the syntax check, not a name here
            out.append(("name", m.group(), line))
            i = m.end()
        else:
            out.append(("sym", c, line))
            i += 1
    return out


def result_references(source: str) -> list[LuaReference]:
    """Node ids read as ``results.x``, ``results["x"]`` or ``results['x']``, with their lines."""
    toks = tokens(source)
    refs: list[LuaReference] = []
    for k, (kind, text, line) in enumerate(toks):
        if kind != "name" or text != "results":
            continue
        # ``a.results`` or ``a:results`` is some other table's field
        if k > 0 and toks[k - 1][0] == "sym" and toks[k - 1][1] in ".:":
            continue
        nxt = toks[k + 1 : k + 4]
        if len(nxt) >= 2 and nxt[0][1] == "." and nxt[1][0] == "name":
            refs.append(LuaReference(nxt[1][1], line))
        elif len(nxt) == 3 and nxt[0][1] == "[" and nxt[1][0] == "string" and nxt[2][1] == "]":
            refs.append(LuaReference(nxt[1][1], line))
    return refs
