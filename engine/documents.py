"""Workflow documents as text: YAML or JSON parsed, with the file line of every field.

YAML is read twice: once for the data, once as a node tree for line numbers, so every
validation problem can point at ``file:line``. Duplicate keys, which YAML parsers silently
collapse, are reported here too. No Lua and no I/O beyond the text given: the orchestrator
reads registrations with this as well.

Aliases are the one YAML feature that can make a small text stand for a huge document (ten
nested anchors of nine aliases each name billions of values), and everything after parsing
walks the expanded tree. So every YAML text this project reads goes through ``load_yaml``,
which measures what the aliases expand to before anything walks it, and refuses self-reference.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

import yaml

from engine.core.errors import SpecError, SpecProblem
from engine.core.spec import ExternalChecks, Key, WorkflowSpec, parse_spec

MAX_YAML_VALUES: Final = 1_000_000
"""Values (scalars, lists, maps) one YAML document may stand for with its aliases expanded;
a 10,000-node workflow written out in full is about a tenth of that."""


class YamlRefused(ValueError):
    """Text that is not YAML, or YAML this project will not expand; says why and on which
    line (``line``, 1-based, when known)."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(f"{message} (line {line})" if line is not None else message)
        self.problem = message
        self.line = line


def load_yaml(text: str, inspect: Callable[[yaml.Node], None] | None = None) -> Any:
    """The data in ``text`` (None for an empty document), or YamlRefused. ``inspect`` is shown
    the node tree first: building the data flattens merge keys (``<<``) into it."""
    try:
        # the loader reads the whole text on creation: a character YAML refuses (a NUL)
        # is found here already
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise YamlRefused(f"invalid YAML: character U+{char:04X} is not allowed", line) from None
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_expansion(root)
        if inspect is not None:
            inspect(root)
        return loader.construct_document(root)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise YamlRefused(f"invalid YAML: {problem}", mark.line + 1 if mark else None) from None
    except RecursionError:
        raise YamlRefused("invalid YAML: nested too deeply") from None
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node) -> None:
    """YamlRefused when the aliases under ``root`` expand past ``MAX_YAML_VALUES`` values or
    refer to a node that contains them. Each distinct node is sized once, so this costs the
    text's own size, never the expansion's."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_sized = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = _children(node)
        if children_sized:
            open_.discard(key)
            size = 1 + sum(sizes[id(c)] for c in children)
            if size > MAX_YAML_VALUES:
                raise YamlRefused(
                    f"the document's aliases expand it past {MAX_YAML_VALUES:,} values",
                    node.start_mark.line + 1,
                )
            sizes[key] = size
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


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _lines(node: yaml.Node, key: Key, out: dict[Key, int], problems: list[SpecProblem]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[object, int] = {}
        for k, v in node.value:
            name = k.value
            line = k.start_mark.line + 1
            child = (*key, name)
            path = ".".join(str(p) for p in child)
            if name in seen:
                problems.append(
                    SpecProblem(path, f"duplicate key {name!r} (first on line {seen[name]})", line)
                )
            seen[name] = line
            # a block scalar's text starts on the line after its '|' or '>'
            block = isinstance(v, yaml.ScalarNode) and v.style in ("|", ">")
            out[child] = v.start_mark.line + 2 if block else line
            _lines(v, child, out, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out[(*key, i)] = v.start_mark.line + 1
            _lines(v, (*key, i), out, problems)


def read_document(
    text: str, source: str | None, *, json_only: bool = False
) -> tuple[Any, dict[Key, int]]:
    """The parsed document and its line map; SpecError for text that is not YAML/JSON."""
    lines: dict[Key, int] = {}
    problems: list[SpecProblem] = []
    if json_only:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(
                [SpecProblem("", f"invalid JSON: {exc.msg}", exc.lineno)], source
            ) from exc
        except RecursionError:
            raise SpecError([SpecProblem("", "invalid JSON: nested too deeply")], source) from None
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except (yaml.YAMLError, RecursionError):
            root = None  # valid JSON that YAML 1.1 cannot compose: data without line numbers
        if root is not None:
            _lines(root, (), lines, problems)
    else:
        try:
            doc = load_yaml(text, lambda root: _lines(root, (), lines, problems))
        except YamlRefused as exc:
            raise SpecError([SpecProblem("", exc.problem, exc.line)], source) from exc
    if problems:
        raise SpecError(problems, source)
    return doc, lines


def parse_text(
    text: str, source: str | None, *, json_only: bool = False, checks: ExternalChecks | None = None
) -> WorkflowSpec:
    """The validated spec in ``text``; SpecError with file lines for every problem.

    The line map costs far more than the parse (composing YAML nodes over a large JSON
    document takes seconds), and only refusals need it: a spec is parsed without it first,
    and again with it only when something is wrong.
    """
    if json_only:
        try:
            doc = json.loads(text, object_pairs_hook=_unique_keys)
        except (json.JSONDecodeError, _DuplicateKey, RecursionError):
            pass  # the located path below reports it
        else:
            try:
                return parse_spec(doc, source=source, checks=checks)
            except SpecError:
                pass
    doc, lines = read_document(text, source, json_only=json_only)
    return parse_spec(doc, lines=lines, source=source, checks=checks)


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _DuplicateKey
    return out
