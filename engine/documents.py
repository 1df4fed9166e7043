"""Workflow documents as text: YAML or JSON parsed, with the file line of every field.

YAML is read twice: once for the data, once as a node tree for line numbers, so every
validation problem can point at ``file:line``. Duplicate keys, which YAML parsers silently
collapse, are reported here too. No Lua and no I/O beyond the text given: the orchestrator
reads registrations with this as well.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from engine.core.errors import SpecError, SpecProblem
from engine.core.spec import ExternalChecks, Key, WorkflowSpec, parse_spec


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
    else:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            problem = getattr(exc, "problem", None) or str(exc)
            raise SpecError([SpecProblem("", f"invalid YAML: {problem}", line)], source) from exc
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        root = None  # valid JSON that YAML 1.1 cannot compose: data without line numbers
    if root is not None:
        _lines(root, (), lines, problems)
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
        except (json.JSONDecodeError, _DuplicateKey):
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
