"""Workflow documents as text: YAML or JSON parsed, with the file line of every field.

YAML is read twice: once for the data, once as a node tree for line numbers, so every
validation problem can point at ``file:line``. Duplicate keys, which YAML parsers silently
collapse, are reported here too, and so is a node's Lua that YAML changed without a word: a
' #' in an unquoted value starts a comment, a folded block joins lines (``_script_cut``). No
Lua and no I/O beyond the text given: the orchestrator reads registrations with this as well.

Aliases are the one YAML feature that can make a small text stand for a huge document (ten
nested anchors of nine aliases each name billions of values), and everything after parsing
walks the expanded tree. So every YAML text this project reads goes through ``load_yaml``,
which measures what the aliases expand to before anything walks it, and refuses self-reference.

A spec is JSON whichever way it is written, so what only YAML or Python's lenient ``json`` make
(NaN and infinities, timestamps, binary, sets, integers too long to print, text UTF-8 cannot
encode) is refused with its line (``engine.core.spec.non_json_values``): stored, it would fail
every run, or the store itself, later.

Plain scalars both YAML versions read alike are read so (``true``, ``null``, ``10``, ``1.5``). One
YAML 1.1 (PyYAML's default, and what this project read until it moved to YAML 1.2) and YAML 1.2
read differently is refused, with its line and what to write instead, key or value: ``yes`` and
``off`` (booleans in 1.1, text in 1.2), ``010`` (eight, or ten), ``12:30`` (750, or text),
``1_000``, ``0b101`` and ``-0x1F`` (numbers, or text), ``1e3``, ``0o10``, ``09`` and ``+.5``
(text, or numbers). The same file never means something else without a word, whichever version
its writer had in mind. Quoted scalars are text as ever. Timestamps are recognised, to be
refused: a date left unquoted is a mistake worth naming.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import yaml

from engine.core.errors import SpecError, SpecProblem
from engine.core.jsontext import MAX_JSON_DEPTH
from engine.core.spec import (
    MAX_INT_BITS,
    TEXT,
    ExternalChecks,
    Key,
    TextProblem,
    WorkflowSpec,
    dotted,
    non_json_values,
    parse_spec,
)
from engine.core.values import nests_deeper

__all__ = [
    "MAX_DEPTH",
    "MAX_INT_BITS",
    "MAX_YAML_VALUES",
    "YamlRefused",
    "load_yaml",
    "non_json_values",
    "parse_text",
    "read_document",
]

MAX_YAML_VALUES: Final = 1_000_000
"""Values (scalars, lists, maps) one YAML document may stand for with its aliases expanded;
a 10,000-node workflow written out in full is about a tenth of that."""

MAX_EXPANSION: Final = 10
FREE_EXPANSION: Final = 1 << 20
"""Aliases may make a document at most ``MAX_EXPANSION`` times as long as its own text, or
``FREE_EXPANSION`` characters (1 MiB) whichever is more. What is stored is the expanded
document, so without this 549 bytes of anchors could ask the store to keep 3 MB, and a long
string aliased a million times a terabyte, all under the value count. Sharing a retry policy or
a Lua snippet among nodes stays far below either bound; a tenfold blow-up is a bomb's."""

MAX_DEPTH: Final = MAX_JSON_DEPTH
"""Levels a YAML document may nest, as HTTP's JSON bodies (a value in a list in a mapping is
three levels). Workflows need a handful; deeper is a bomb or a mistake."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 core schema scalars (and timestamps, to refuse); the
    plain scalars YAML 1.1 reads otherwise are noted in ``ambiguous``, with why."""

    yaml_implicit_resolvers: dict[Any, Any] = {}  # noqa: RUF012 - PyYAML's class registry

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.ambiguous: dict[int, tuple[yaml.ScalarNode, Ambiguity]] = {}

    def compose_scalar_node(self, anchor: Any) -> yaml.ScalarNode:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        node: yaml.ScalarNode = super().compose_scalar_node(anchor)
        if event.tag is None and event.style is None:  # plain: its tag is the schema's guess
            why = _ambiguity(node.value, node.tag)
            if why is not None:
                self.ambiguous[id(node)] = node, why
        return node


for _tag, _pattern, _first in (
    ("bool", r"true|True|TRUE|false|False|FALSE", "tTfF"),
    ("int", r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", "-+0123456789"),
    (
        "float",
        r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)",
        "-+0123456789.",
    ),
    ("null", r"~|null|Null|NULL|", ["~", "n", "N", ""]),
    ("merge", r"<<", "<"),
    (
        "timestamp",
        # PyYAML's: a one-digit month or day only with a time (2001-1-1 is text to both)
        r"[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]"
        r"|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?"
        r"(?:[Tt]|[ \t]+)[0-9][0-9]?:[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?"
        r"(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?",
        "0123456789",
    ),
):
    _Loader.add_implicit_resolver(
        f"tag:yaml.org,2002:{_tag}", re.compile(f"^(?:{_pattern})$"), list(_first)
    )


def _construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    # YAML 1.2: 010 is ten and 0o10 eight. An explicit !!int YAML 1.2 cannot read is read as
    # YAML 1.1 read it, as before (!!int 0b101 is 5, !!int 1_000 a thousand, !!int 1:30 ninety)
    text = str(loader.construct_scalar(node))  # type: ignore[arg-type]
    try:
        if text.startswith("0o"):
            return int(text[2:], 8)
        if text.startswith("0x"):
            return int(text[2:], 16)
        return int(text)
    except ValueError as exc:
        if _too_many_digits(exc):
            raise
        try:
            return int(yaml.SafeLoader.construct_yaml_int(_OLD, node))  # type: ignore[arg-type]
        except (ValueError, IndexError):
            raise exc from None


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)

_OLD: Final = yaml.SafeLoader("")
"""PyYAML's YAML 1.1 reading, the one this project had before YAML 1.2: resolvers and scalar
constructors only, which keep no state."""
_NEW: Final = _Loader("")
_TIMESTAMP: Final = "tag:yaml.org,2002:timestamp"
_SCALAR_TAGS: Final = frozenset(
    f"tag:yaml.org,2002:{t}" for t in ("str", "bool", "int", "float", "null")
)


def _reading(loader: yaml.SafeLoader, tag: str, text: str) -> object:
    node = yaml.ScalarNode(tag, text)
    return loader.yaml_constructors[tag](loader, node)


@dataclass(frozen=True, slots=True)
class Ambiguity:
    """A plain scalar YAML 1.1 and YAML 1.2 read differently: how each reads it, and what to
    write instead (as a value; a key can only be quoted)."""

    said: str
    fixes: tuple[str, ...]

    def told(self, *, key: bool = False) -> str:
        fixes = [f for f in self.fixes if f.startswith("quote")] if key else self.fixes
        return f"{self.said}: {', or '.join(fixes)}"


def _ambiguity(text: str, tag: str) -> Ambiguity | None:
    """Why the plain scalar ``text``, which YAML 1.2 tags ``tag``, must not be read: YAML 1.1
    reads it as something else. None when both read it alike, when either reading fails (the
    loader refuses it, or PyYAML refused it before, so no file meant anything by it) and for
    timestamps (refused as such)."""
    old_tag = _OLD.resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
    if old_tag == tag == _STR_TAG:
        return None  # the common case, cheaply: a word both read as text
    if tag == _TIMESTAMP or old_tag not in _SCALAR_TAGS or tag not in _SCALAR_TAGS:
        return None
    try:
        old = _reading(_OLD, old_tag, text)
        new = _reading(_NEW, tag, text)
    except (ValueError, OverflowError, IndexError, yaml.YAMLError):
        return None
    if _same(old, new):
        return None
    said = f"{_shown(text)} is {_described(old)} in YAML 1.1 and {_described(new)} in YAML 1.2"
    return Ambiguity(said, tuple(_fixes(text, old, new)))


def _same(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and isinstance(b, float):
        return (a == b and math.copysign(1, a) == math.copysign(1, b)) or (a != a and b != b)
    return a == b


def _shown(text: str, limit: int = 40) -> str:
    return f"`{text if len(text) <= limit else text[:limit] + '...'}`"


def _described(value: object) -> str:
    if isinstance(value, str):
        return "text"
    written = _written(value)
    if written is not None:
        return written
    if isinstance(value, float):
        return "NaN" if value != value else "infinity" if value > 0 else "minus infinity"
    return "a whole number too long to carry"


def _written(value: object) -> str | None:
    """``value`` as plain YAML both versions read alike, if it has such a form."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if value.bit_length() <= MAX_INT_BITS else None
    if isinstance(value, float) and math.isfinite(value):
        mantissa, e, exponent = repr(value).partition("e")
        # 1e+16 is text to YAML 1.1: a number there has a dot
        return mantissa + ("" if "." in mantissa else ".0") + e + exponent
    return None


def _fixes(text: str, old: object, new: object) -> list[str]:
    """What to write instead of ``text``, in the likelier order. The quoted text is text to
    both; a number suggested is written in a form both read alike."""
    quote = f"quote it ('{text}')" if len(text) <= 40 else "quote it"
    old_written, new_written = _written(old), _written(new)
    if isinstance(old, str):  # a number only to YAML 1.2
        return [quote, f"write {new_written}"] if new_written is not None else [quote]
    if isinstance(new, str):  # a boolean or number only to YAML 1.1
        if old_written is None:
            return [quote]
        if ":" in text:  # sexagesimal: more likely a time of day than a count of seconds
            duration = _as_duration(old)
            also = f" (as a duration, {duration})" if duration is not None else ""
            return [quote, f"write {old_written}{also}"]
        return [f"write {old_written}", quote]
    choices = [w for w in (old_written, new_written) if w is not None]
    return [f"write {' or '.join(choices)}", quote] if choices else [quote]


def _as_duration(value: object) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        return None
    hours, rest = divmod(value, 3600)
    minutes, seconds = divmod(rest, 60)
    return "".join(f"{n}{u}" for n, u in ((hours, "h"), (minutes, "m"), (seconds, "s")) if n)


class YamlRefused(ValueError):
    """Text that is not YAML, or YAML this project will not expand; says why and on which
    line (``line``, 1-based, when known)."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(f"{message} (line {line})" if line is not None else message)
        self.problem = message
        self.line = line


def load_yaml(
    text: str, inspect: Callable[[yaml.Node, Mapping[int, Ambiguity]], None] | None = None
) -> Any:
    """The data in ``text`` (None for an empty document), or YamlRefused. ``inspect`` is shown
    the node tree first (building the data flattens merge keys, ``<<``, into it), with the
    plain scalars YAML 1.1 and 1.2 read differently (``id(node)`` -> why): it tells them. With
    no ``inspect`` the first of them is refused here, with its line."""
    try:
        # the loader reads the whole text on creation: a character YAML refuses (a NUL)
        # is found here already
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise YamlRefused(f"invalid YAML: character U+{char:04X} is not allowed", line) from None
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_expansion(root, len(text))
        if inspect is not None:
            inspect(root, {key: why for key, (_, why) in loader.ambiguous.items()})
        elif loader.ambiguous:
            # in document order: the first is the scalar composed first
            node, why = next(iter(loader.ambiguous.values()))
            raise YamlRefused(why.told(), node.start_mark.line + 1)
        try:
            return loader.construct_document(root)
        except (ValueError, OverflowError) as exc:
            # a scalar its tag cannot make: 30 February, !!int x, a decimal too long to read
            raise _scalar_refusal(root, exc) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise YamlRefused(f"invalid YAML: {problem}", mark.line + 1 if mark else None) from None
    except RecursionError:
        raise YamlRefused("invalid YAML: nested too deeply") from None
    finally:
        loader.dispose()


def _scalar_refusal(root: yaml.Node, exc: Exception, what: str = "YAML") -> YamlRefused:
    """The scalar under ``root`` that its tag cannot make, with its line; found again only
    when construction failed, so the good path pays nothing for it."""
    stack = [root]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode) and node.tag != _STR_TAG:
            try:
                _Loader("").construct_object(node)
            except (ValueError, OverflowError) as found:
                line = node.start_mark.line + 1
                if _too_many_digits(found):
                    return YamlRefused(
                        f"invalid {what}: the number {_short(node.value)} has more digits "
                        "than a number may have",
                        line,
                    )
                return YamlRefused(
                    f"invalid {what}: {_short(node.value)} is not a valid {_tag_name(node)}"
                    f" ({found})",
                    line,
                )
            except yaml.YAMLError:
                pass
        stack.extend(reversed(_children(node)))
    return YamlRefused(f"invalid {what}: {_reason(exc)}")


def _too_many_digits(exc: Exception) -> bool:
    # Python's own wording names a setting of the interpreter, no use to whoever wrote the spec
    return "int_max_str_digits" in str(exc)


def _reason(exc: Exception) -> str:
    return "a number has more digits than a number may have" if _too_many_digits(exc) else str(exc)


def _tag_name(node: yaml.Node) -> str:
    return str(node.tag).rsplit(":", 1)[-1]


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _check_expansion(root: yaml.Node, length: int) -> None:
    """YamlRefused when the aliases under ``root`` expand past ``MAX_YAML_VALUES`` values or
    past ``MAX_EXPANSION`` times ``length`` characters (see ``FREE_EXPANSION``), refer to a
    node that contains them, or it nests past ``MAX_DEPTH``. Each distinct node is sized once,
    so this costs the text's own size, never the expansion's."""
    max_chars = max(FREE_EXPANSION, MAX_EXPANSION * length)
    # node -> (values, characters, levels) it stands for, aliases expanded
    sizes: dict[int, tuple[int, int, int]] = {}
    open_: set[int] = set()
    too_long: int | None = None
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_sized = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = _children(node)
        if children_sized:
            open_.discard(key)
            values, chars, levels = 1, len(node.value) + 2 if not children else 2, 0
            for c in children:
                v, n, d = sizes[id(c)]
                values, chars, levels = values + v, chars + n + 2, max(levels, d)
            levels += 1
            line = node.start_mark.line + 1
            if values > MAX_YAML_VALUES:
                raise YamlRefused(
                    f"the document's aliases expand it past {MAX_YAML_VALUES:,} values", line
                )
            if chars > max_chars and too_long is None:
                too_long = line  # told once the values are counted: theirs is the first word
            sizes[key] = values, chars, levels
            continue
        if key in open_:
            raise YamlRefused(
                "an alias refers to a node that contains it", node.start_mark.line + 1
            )
        open_.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in open_:
                raise YamlRefused(
                    "an alias refers to a node that contains it", child.start_mark.line + 1
                )
            if id(child) not in sizes:
                stack.append((child, False))
    if sizes[id(root)][2] > MAX_DEPTH:
        # told where the 65th level is, down the deepest branch
        node = root
        for _ in range(MAX_DEPTH):
            node = max(_children(node), key=lambda c: sizes[id(c)][2])
        raise YamlRefused(
            f"invalid YAML: nested deeper than {MAX_DEPTH} levels", node.start_mark.line + 1
        )
    if too_long is not None:
        raise YamlRefused(
            f"the document's aliases expand it past {_size(max_chars)}, "
            f"{MAX_EXPANSION} times its own size",
            too_long,
        )


def _size(chars: int) -> str:
    return f"{chars / (1 << 20):.1f} MiB".replace(".0 MiB", " MiB")


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


_STR_TAG: Final = "tag:yaml.org,2002:str"


def _key_of(node: yaml.ScalarNode) -> Any:
    """The key ``node`` makes in the data, so its line is found under it: ``1:`` is the
    number 1 there, ``~:`` None and ``true:`` True (the spec check names them, as keys JSON
    cannot have, with these lines)."""
    if node.tag == _STR_TAG:
        return node.value
    try:
        value = _Loader("").construct_object(node)
    except (yaml.YAMLError, ValueError, OverflowError):
        return node.value  # construction refuses it, with its line
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        return node.value  # as text: Python will not print it (see non_json_values)
    return value


def _lines(
    root: yaml.Node,
    out: dict[Key, int],
    problems: list[SpecProblem],
    ambiguous: Mapping[int, Ambiguity] | None = None,
    *,
    spec: bool = False,
) -> None:
    """The line of every field under ``root`` into ``out``; keys written twice, and the plain
    scalars ``ambiguous`` names (each where it is first met: an alias repeats no problem),
    into ``problems``; with ``spec``, the nodes' Lua fields YAML cut short (``_script_cut``)."""
    untold = dict(ambiguous or {})

    def tell(node: yaml.Node, key: Key, path: str, line: int, key_written: bool = False) -> None:
        why = untold.pop(id(node), None) if untold else None
        if why is not None:
            # a key is text: any other fix makes it a key JSON cannot have
            problems.append(TextProblem(path, why.told(key=key_written), line, key))

    tell(root, (), "", root.start_mark.line + 1)
    _walk_lines(root, (), "", out, problems, tell, spec)


def _walk_lines(
    node: yaml.Node,
    key: Key,
    path: str,
    out: dict[Key, int],
    problems: list[SpecProblem],
    tell: Callable[..., None],
    spec: bool = False,
) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[object, int] = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                continue  # a list or a mapping as a key: construction refuses it, with its line
            name = _key_of(k)
            line = k.start_mark.line + 1
            child = (*key, name)
            where = f"{path}.{name}" if path else str(name)
            if name in seen:
                problems.append(
                    TextProblem(
                        where, f"duplicate key {name!r} (first on line {seen[name]})", line, child
                    )
                )
            seen[name] = line
            out[child] = line
            tell(k, child, where, line, True)
            tell(v, child, where, line)
            if isinstance(v, yaml.ScalarNode):
                for i, start in enumerate(_text_lines(v), 1):
                    out[(*child, TEXT, i)] = start
                if spec and len(key) == 2 and key[0] == "nodes" and isinstance(key[1], int):
                    cut = _script_cut(str(name), v)
                    if cut is not None:
                        problems.append(TextProblem(where, cut[0], cut[1], child))
            _walk_lines(v, child, where, out, problems, tell, spec)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            line = v.start_mark.line + 1
            out[(*key, i)] = line
            tell(v, (*key, i), f"{path}[{i}]", line)
            _walk_lines(v, (*key, i), f"{path}[{i}]", out, problems, tell, spec)


_SCRIPT_FIELDS: Final = {"lua": "script", "when": "expression", "foreach": "template"}
"""A node's fields whose text is code, and what to call it."""


def _script_cut(name: str, node: yaml.ScalarNode) -> tuple[str, int] | None:
    """Why the text of the node field ``name`` is not what its writer wrote, and the line to
    tell it on; None when it is.

    A ' #' in a plain (unquoted) value starts a YAML comment, so ``lua: return #rows`` is
    the script ``return``, which runs and returns nothing, and ``when: #rows > 0`` no
    condition at all; ``x#y`` is text, and quoted and block scalars hold a '#' as written.
    Every style but a literal block (``|``) joins adjacent lines with a space: a folded block
    (``>``), and a plain or quoted value that goes on over lines. In a script, a ``--``
    comment on one line then swallows the rest and every runtime error names line 1, so a
    ``lua`` written so is refused; a ``when`` only when a ``--`` comment (as Lua reads it, not
    one in a string) runs over a joined line break (an expression over two lines is joined
    harmlessly). Judged by where YAML joined lines (``_folds``), not by counting them: lines a
    block keeps apart (a blank line between them), a line break escaped in double quotes and
    the line a closing quote stands on alone join no text, and a long line a dumper such as
    PyYAML wrapped at a space (``_wrapped``) is read back as the one line it was."""
    what = _SCRIPT_FIELDS.get(name)
    buffer = node.end_mark.buffer
    if what is None or not isinstance(buffer, str):
        return None
    if node.style is None and (node.tag == _STR_TAG or not node.value):
        end = node.end_mark.index
        stop = buffer.find("\n", end)
        rest = buffer[end : stop if stop >= 0 else len(buffer)]
        if rest[:1] in (" ", "\t") and rest.lstrip(" \t").startswith("#"):
            return (
                f"a ' #' in an unquoted YAML value starts a comment, so the {what} ends before "
                f"it: write the {what} as a block ({name}: |) or quote it",
                node.end_mark.line + 1,
            )
    if name not in ("lua", "when") or node.style == "|" or not isinstance(node.value, str):
        return None
    if node.start_mark.line == node.end_mark.line:
        return None  # one line in the file: nothing to join
    folds = _folds(node, buffer)
    if folds is None:
        harmful = _joined_by_count(name, node, buffer)
    else:
        comments = _line_comments(node.value) if folds else []

        def in_comment(at: int) -> bool:
            return any(start < at < end for start, end in comments)

        # A dumper's wrap of one long line joins what was one line: the value is as written.
        # Inside a -- comment a wrap looks the same as a person's line ending in a long
        # comment (a URL past column 80), where the next line's code would join the comment:
        # refused either way, since only the second is code lost. A `when` over two lines is
        # joined harmlessly otherwise.
        harmful = any(in_comment(fold.at) or (name == "lua" and not fold.wrap) for fold in folds)
    if not harmful:
        return None
    how = "a folded block (>)" if node.style == ">" else "a value over several lines"
    if name == "lua":
        why = "a -- comment runs to the end of the script and errors all name line 1"
    else:
        why = "a -- comment runs to the end of the expression"
    return (
        f"{how} joins its lines with spaces, so {why}: write it as a literal block ({name}: |)",
        node.start_mark.line + 1,
    )


def _joined_by_count(name: str, node: yaml.ScalarNode, buffer: str) -> bool:
    """The judgement for a value ``_folds`` cannot follow (an escape it does not know, a line
    break other than LF): lines of text in the file beyond those in the value were joined."""
    written = buffer[node.start_mark.index : node.end_mark.index].split("\n")
    if node.style == ">":
        written = written[1:]  # past the header ('>', '>-', ...)
    # the last line may hold the comment: nothing follows it to be swallowed
    joined = [text for text in written if text.strip()]
    if len(joined) <= sum(1 for text in node.value.split("\n") if text.strip()):
        return False
    return name != "when" or any("--" in text for text in joined[:-1])


WRAP_WIDTH: Final = 80
"""The line width PyYAML (and ruamel.yaml) dump to unless told otherwise. Past it a dumper
breaks a plain or single-quoted value at the first single space, which YAML reads back as
that space: a wrap, not two lines joined."""


@dataclass(frozen=True, slots=True)
class _Fold:
    """A line break in a scalar's text that YAML read as a space between two pieces of text:
    ``at`` is that space's offset in the value; ``wrap`` when a dumper made it (``_wrapped``)."""

    at: int
    wrap: bool


_BREAKS: Final = re.compile("\r(?!\n)|[\x85\u2028\u2029]")
"""Line breaks YAML 1.1 knows besides LF and CRLF: left to counting."""


def _folds(node: yaml.ScalarNode, buffer: str) -> list[_Fold] | None:
    """Where YAML joined two lines of ``node``'s text with a space, found by reading the text
    again as YAML does; None when this reading does not give the value YAML gave (a line
    break other than LF, an unusual escape or header): the caller falls back to counting."""
    start, end = node.start_mark.index, node.end_mark.index
    if _BREAKS.search(buffer, start, end):
        return None
    if node.style == ">":
        return _block_folds(buffer[start:end], node.value)
    quoted = node.style in ("'", '"')
    if quoted:
        start, end = start + 1, end - 1
    if node.style not in (None, "'", '"') or start > end:
        return None
    rows = [row.removesuffix("\r") for row in buffer[start:end].split("\n")]
    line_start = buffer.rfind("\n", 0, start) + 1
    value: list[str] = []
    folds: list[_Fold] = []
    size = 0
    escaped = False  # the last row with text ended in an escaped line break (double quotes)
    blanks = 0
    last = len(rows) - 1
    for r, row in enumerate(rows):
        text = row if r == 0 else row.lstrip(" \t")
        was_escaped = escaped
        escaped = False
        if node.style == '"' and r < last and _escapes_break(text):
            text, escaped = text[:-1], True
        elif r < last:
            text = text.rstrip(" \t")
        if 0 < r < last and not text and not escaped:
            blanks += 1  # a blank line: a line break kept
            continue
        if node.style == '"':
            decoded = _unescape(text)
            if decoded is None:
                return None
            text = decoded
        elif node.style == "'":
            text = text.replace("''", "'")
        if r > 0:
            if blanks or was_escaped:
                joint = "\n" * blanks
            else:
                joint = " "
                if size and text:  # a space between two pieces of text
                    wrap = node.style != '"' and _wrapped(buffer, line_start, start, r, rows)
                    folds.append(_Fold(size, wrap))
            value.append(joint)
            size += len(joint)
            blanks = 0
        value.append(text)
        size += len(text)
    return folds if "".join(value) == node.value else None


def _wrapped(buffer: str, line_start: int, start: int, r: int, rows: list[str]) -> bool:
    """Whether the break after ``rows[r - 1]`` is where a dumper wrapping at ``WRAP_WIDTH``
    breaks: the file line ends past the width, at no space, and no single space on it before
    is past the width (PyYAML breaks at the first such space). A person who breaks a line
    of Lua exactly there looks the same and is not told, which is the price of reading dumped
    files back; a dump to another width is judged as a person's text."""
    previous = rows[r - 1]
    if previous != previous.rstrip(" \t"):
        return False
    if r == 1:
        line, first = buffer[line_start:start] + previous, start - line_start
    else:
        line = previous
        first = len(previous) - len(previous.lstrip(" \t"))
    if len(line) <= WRAP_WIDTH:
        return False
    return not any(
        line[j] == " " and line[j - 1] != " " and line[j + 1] != " "
        for j in range(max(first + 1, WRAP_WIDTH + 1), len(line) - 1)
    )


def _escapes_break(text: str) -> bool:
    """Whether a double-quoted line ending ``text`` escapes its line break (an odd run of
    backslashes)."""
    return (len(text) - len(text.rstrip("\\"))) % 2 == 1


def _unescape(text: str) -> str | None:
    """A double-quoted YAML line's text, escapes read; None for an escape YAML refuses."""
    if "\\" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        code = text[i + 1 : i + 2]
        if code in yaml.scanner.Scanner.ESCAPE_REPLACEMENTS:
            out.append(yaml.scanner.Scanner.ESCAPE_REPLACEMENTS[code])
            i += 2
        elif code in yaml.scanner.Scanner.ESCAPE_CODES:
            digits = text[i + 2 : i + 2 + yaml.scanner.Scanner.ESCAPE_CODES[code]]
            try:
                out.append(chr(int(digits, 16)))
            except ValueError:
                return None
            i += 2 + len(digits)
        else:
            return None
    return "".join(out)


_BLOCK_HEADER: Final = re.compile(r">([-+]?)[ \t]*(?:#.*)?")


def _block_folds(region: str, value: str) -> list[_Fold] | None:
    """``_folds`` for a folded block (``>``, ``>-``, ``>+``; one with an indentation
    indicator is left to counting): two lines of text at the block's indentation, with no
    blank line between them, are joined with a space."""
    rows = [row.removesuffix("\r") for row in region.split("\n")]
    header = _BLOCK_HEADER.fullmatch(rows[0])
    if header is None:
        return None
    body = rows[1:]
    texts = [row for row in body if row.strip(" ")]
    if not texts:
        return None
    indent = len(texts[0]) - len(texts[0].lstrip(" "))
    out: list[str] = []
    folds: list[_Fold] = []
    size = blanks = 0
    previous: str | None = None
    for row in body:
        if not row.strip(" "):
            blanks += 1
            continue
        if row[:indent].strip(" "):
            return None  # less indented: not the block's
        text = row[indent:]
        if previous is None:
            joint = "\n" * blanks
        elif previous[:1] not in (" ", "\t") and text[:1] not in (" ", "\t"):
            joint = "\n" * blanks if blanks else " "
            if not blanks:
                folds.append(_Fold(size, False))
        else:
            joint = "\n" * (blanks + 1)  # a more indented line keeps its line breaks
        out += (joint, text)
        size += len(joint) + len(text)
        previous, blanks = text, 0
    # the rows after the last text: its line break (none at the end of the text) and the
    # blank lines after it (the region ends after a line break, so its last row is empty)
    breaks = blanks if region.endswith("\n") else 0
    chomp = header.group(1)
    out.append("" if chomp == "-" else "\n" * breaks if chomp == "+" else "\n" * min(breaks, 1))
    return folds if "".join(out) == value else None


_LONG_BRACKET: Final = re.compile(r"\[(=*)\[")


def _line_comments(code: str) -> list[tuple[int, int]]:
    """Where each ``--`` line comment of Lua ``code`` starts and ends (the end of its line),
    strings and long brackets skipped as Lua reads them (``engine.core.luarefs.tokens``)."""
    spans: list[tuple[int, int]] = []
    i, n = 0, len(code)
    while i < n:
        c = code[i]
        if code.startswith("--", i):
            long = _LONG_BRACKET.match(code, i + 2)
            if long:
                close = code.find("]" + long.group(1) + "]", long.end())
                i = n if close < 0 else close + len(long.group(1)) + 2
                continue
            end = code.find("\n", i)
            end = n if end < 0 else end
            spans.append((i, end))
            i = end
        elif c in "\"'":
            j = i + 1
            while j < n and code[j] not in (c, "\n"):
                j += 2 if code[j] == "\\" else 1
            i = j + 1
        elif (long := _LONG_BRACKET.match(code, i)) is not None:
            close = code.find("]" + long.group(1) + "]", long.end())
            i = n if close < 0 else close + len(long.group(1)) + 2
        else:
            i += 1
    return spans


def _text_lines(node: yaml.ScalarNode) -> list[int]:
    """The file line each line of a scalar's text starts on, when it spans several file lines
    and that is knowable: a literal block keeps its lines; a folded block and a plain scalar
    join lines and turn each run of n blank lines into n line breaks. Anything else (a quoted
    scalar, escapes, more-indented folded lines) gives none: the key's line serves."""
    first, last = node.start_mark.line, node.end_mark.line
    count = node.value.rstrip("\n").count("\n") + 1
    if node.style == "|":
        return list(range(first + 2, first + 2 + count))
    if node.style not in (">", None) or last == first:
        return []
    buffer = node.start_mark.buffer
    if not isinstance(buffer, str):
        return []
    region = buffer[node.start_mark.index : node.end_mark.index].split("\n")
    body = list(enumerate(region, first + 1))
    if node.style == ">":
        body = body[1:]  # the '>' header
    starts: list[int] = []
    blanks = 0
    for line, text in body:
        if not text.strip():
            blanks += 1 if starts else 0
        elif not starts:
            starts.append(line)
        elif blanks:
            # n blank lines are n line breaks: n - 1 empty lines of text, then this one
            starts.extend(range(line - blanks + 1, line + 1))
            blanks = 0
    return starts if len(starts) == count else []


class _Twice(dict[str, Any]):
    """A JSON object that had a key twice (the last one kept), marked for ``_twice_keys``."""

    twice: list[str]


def _noting_twice(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) == len(pairs):
        return out
    marked = _Twice(out)
    seen: set[str] = set()
    marked.twice = [k for k, _ in pairs if k in seen or seen.add(k)]  # type: ignore[func-returns-value]
    return marked


def _twice_keys(doc: object) -> list[SpecProblem]:
    """Keys written twice in JSON that YAML could not read for lines (a tab, a long key):
    found by the JSON decoder, without lines."""
    problems: list[SpecProblem] = []
    stack: list[tuple[Key, object]] = [((), doc)]
    while stack:
        key, each = stack.pop()
        if isinstance(each, dict):
            if isinstance(each, _Twice):
                problems.extend(
                    TextProblem(dotted((*key, name)), f"duplicate key {name!r}", None, (*key, name))
                    for name in each.twice
                )
            stack.extend(reversed([((*key, k), v) for k, v in each.items()]))
        elif isinstance(each, list):
            stack.extend(reversed([((*key, i), v) for i, v in enumerate(each)]))
    return problems


def read_document(
    text: str, source: str | None, *, json_only: bool = False, spec: bool = False
) -> tuple[Any, dict[Key, int], list[SpecProblem]]:
    """The parsed document, its line map and the problems of its text (a key twice), which
    leave it readable; SpecError for text that is not YAML/JSON at all. With ``spec`` (the
    text is a workflow spec, not inputs) a node's Lua that YAML cuts short is a problem too:
    a comment or a fold in YAML (JSON has neither) changed the script without a word."""
    lines: dict[Key, int] = {}
    problems: list[SpecProblem] = []
    if json_only:
        number: ValueError | None = None
        try:
            # NaN and Infinity too: refused by the spec check, with their lines
            doc = json.loads(text, object_pairs_hook=_noting_twice)
        except json.JSONDecodeError as exc:
            raise SpecError(
                # the column too: JSON sent by a program is often one long line
                [SpecProblem("", f"invalid JSON: {exc.msg} (column {exc.colno})", exc.lineno)],
                source,
            ) from exc
        except ValueError as exc:
            number = exc  # a whole number too long to read: found below, with its line
        except RecursionError:
            raise SpecError([SpecProblem("", "invalid JSON: nested too deeply")], source) from None
        try:
            # a tab is only ever whitespace in JSON (json refuses one inside a string), and
            # YAML refuses it as indentation: spaces read the same and keep every line
            root = yaml.compose(text.replace("\t", " "), Loader=_Loader)
        except (yaml.YAMLError, RecursionError):
            root = None  # valid JSON that YAML 1.1 cannot compose: data without line numbers
        if number is None and nests_deeper(doc, MAX_DEPTH):
            # as YAML files and JSON bodies are: the orchestrator refuses such a spec
            raise SpecError(
                [
                    SpecProblem(
                        "",
                        f"invalid JSON: nested deeper than {MAX_DEPTH} levels",
                        _deepest_line(root),
                    )
                ],
                source,
            )
        if number is not None:
            refusal = (
                _scalar_refusal(root, number, "JSON")
                if root is not None
                else YamlRefused(f"invalid JSON: {_reason(number)}")
            )
            raise SpecError([SpecProblem("", refusal.problem, refusal.line)], source) from None
        if root is not None:
            _lines(root, lines, problems)  # JSON's numbers are JSON's: none is ambiguous
        else:
            problems = _twice_keys(doc)
    else:
        try:
            doc = load_yaml(
                text, lambda root, ambiguous: _lines(root, lines, problems, ambiguous, spec=spec)
            )
        except YamlRefused as exc:
            raise SpecError([SpecProblem("", exc.problem, exc.line)], source) from exc
    return doc, lines, problems


def _deepest_line(root: yaml.Node | None) -> int | None:
    """The line of the first node past ``MAX_DEPTH`` levels under ``root``."""
    stack = [(root, 1)] if root is not None else []
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return int(node.start_mark.line) + 1
        stack.extend((child, depth + 1) for child in reversed(_children(node)))
    return None


def parse_text(
    text: str, source: str | None, *, json_only: bool = False, checks: ExternalChecks | None = None
) -> WorkflowSpec:
    """The validated spec in ``text``; SpecError with file lines for every problem.

    The line map costs far more than the parse (composing YAML nodes over a large JSON
    document takes seconds), and only refusals need it: a spec is parsed without it first,
    and again with it only when something is wrong.
    """
    if text.startswith("\ufeff"):
        text = text[1:]  # a byte order mark: YAML skips one, JSON refuses it; no part of the text
    if json_only:
        try:
            doc = _strict_decode(text)
        except (ValueError, RecursionError):
            # not JSON, a key twice, NaN or Infinity, a number too long: the located path
            # below reports it
            pass
        else:
            if not nests_deeper(doc, MAX_DEPTH):  # too deep: the located path tells where
                try:
                    return parse_spec(doc, source=source, checks=checks)
                except SpecError:
                    pass
    doc, lines, problems = read_document(text, source, json_only=json_only, spec=True)
    return parse_spec(doc, lines=lines, source=source, checks=checks, problems=problems)


class _DuplicateKey(ValueError):
    pass


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: a number in JSON, infinite in Python
        raise ValueError(f"{text} is not a finite number")
    return value


def _whole(text: str) -> int:
    if len(text) > _MAX_DIGITS:  # refused in YAML too: see MAX_INT_BITS
        raise ValueError("a whole number too long to carry")
    return int(text)


_MAX_DIGITS: Final = int(MAX_INT_BITS * math.log10(2))


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _DuplicateKey
    return out


# the fast path's decoder: what it refuses, the located path reports with its line
_strict_decode: Final = json.JSONDecoder(
    object_pairs_hook=_unique_keys,
    parse_constant=_no_constants,
    parse_float=_finite,
    parse_int=_whole,
).decode
