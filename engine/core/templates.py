"""``{{ ... }}`` templates in spec values.

A string that is exactly one template (``"{{ results.extract.rows }}"``) resolves to the raw
value it points at, so lists and numbers keep their type. A template inside other text
(``"total: {{ results.sum.value }}"``) is replaced by text: strings as they are, everything else
as compact JSON. Paths start at ``inputs``, ``results`` (then a node id) or ``ctx``; a numeric
segment indexes a list from 0.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from engine.core.errors import MissingPath, TemplateError
from engine.core.values import JSON, json_kind

ROOTS = ("inputs", "results", "ctx")
_TOKEN = re.compile(r"\{\{(.*?)\}\}", re.S)
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed ``{{ root.a.b }}``; for ``results`` the first path element is the node id."""

    root: str
    path: tuple[str, ...]
    text: str

    @property
    def node_id(self) -> str | None:
        return self.path[0] if self.root == "results" and self.path else None


def parse_reference(expr: str) -> Reference:
    """Parse the inside of one ``{{ }}``; ValueError names what is wrong."""
    text = expr.strip()
    if not text:
        raise ValueError("empty template '{{ }}'")
    parts = text.split(".")
    root, path = parts[0], tuple(parts[1:])
    if root not in ROOTS:
        raise ValueError(f"template '{{{{ {text} }}}}' must start with one of {', '.join(ROOTS)}")
    for segment in path:
        if not _SEGMENT.fullmatch(segment):
            raise ValueError(f"template '{{{{ {text} }}}}' has a bad path segment {segment!r}")
    if root == "results" and not path:
        raise ValueError(f"template '{{{{ {text} }}}}' must name a node: results.<node_id>")
    return Reference(root, path, text)


def template_parts(value: str) -> list[str | Reference]:
    """Split a string into literal text and references; ValueError on bad syntax."""
    parts: list[str | Reference] = []
    pos = 0
    for match in _TOKEN.finditer(value):
        if match.start() > pos:
            parts.append(value[pos : match.start()])
        parts.append(parse_reference(match.group(1)))
        pos = match.end()
    rest = value[pos:]
    if "{{" in rest:
        raise ValueError(f"unclosed template in {value!r}")
    if rest:
        parts.append(rest)
    return parts


def is_whole_template(value: str) -> bool:
    """Whether ``value`` is one template and nothing else (spaces around it aside)."""
    try:
        return _whole(template_parts(value)) is not None
    except ValueError:
        return False


def _whole(parts: list[str | Reference]) -> Reference | None:
    # text after the closing braces (even more braces: "{{ a }} }}") makes it inline
    refs = [p for p in parts if isinstance(p, Reference)]
    if len(refs) != 1 or any(isinstance(p, str) and p.strip() for p in parts):
        return None
    return refs[0]


def iter_strings(value: JSON, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string inside a JSON value with its path, for validation."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from iter_strings(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from iter_strings(item, f"{path}.{key}" if path else key)


def references(value: JSON, under: str = "") -> Iterator[tuple[str, Reference | ValueError]]:
    """Each reference found in a value (or the syntax error instead), with its path (below
    ``under``, written as ``iter_strings`` writes it)."""
    for path, text in iter_strings(value, under):
        if "{{" not in text:
            continue
        try:
            for part in template_parts(text):
                if isinstance(part, Reference):
                    yield path, part
        except ValueError as exc:
            yield path, exc


Lookup = Callable[[str], JSON]
"""Resolves ``results.<node>`` to that node's output; raises KeyError when it has none."""


def _walk(ref: Reference, inputs: JSON, results: Lookup, ctx: JSON) -> JSON:
    current: JSON
    path = list(ref.path)
    if ref.root == "inputs":
        current, where = inputs, "inputs"
    elif ref.root == "ctx":
        current, where = ctx, "ctx"
    else:
        node = path.pop(0)
        try:
            current = results(node)
        except KeyError:
            raise TemplateError(
                f"template '{{{{ {ref.text} }}}}': node {node!r} has no output"
            ) from None
        where = f"results.{node}"
    for segment in path:
        if isinstance(current, dict) and segment in current:
            current = current[segment]
        elif isinstance(current, list) and segment.isdigit() and int(segment) < len(current):
            current = current[int(segment)]
        else:
            kind = json_kind(current)
            raise MissingPath(
                f"template '{{{{ {ref.text} }}}}': {where} ({kind}) has no {segment!r}", ref.root
            )
        where = f"{where}.{segment}"
    return current


def resolve(
    value: JSON, *, inputs: JSON, results: Lookup, ctx: JSON, at: str | None = None
) -> JSON:
    """Resolve every template inside ``value``; raises TemplateError naming the template.

    ``at``: where ``value`` is in the spec (``inputs``, ``outputs.total``); the error then
    starts with the path of the string that failed (``inputs.rows[2]: template ...``), written
    as ``iter_strings`` and validation write it."""
    if isinstance(value, str):
        if "{{" not in value:
            return value
        if at is None:
            return _resolve_text(value, inputs, results, ctx)
        try:
            return _resolve_text(value, inputs, results, ctx)
        except MissingPath as exc:
            raise MissingPath(f"{at}: {exc}", exc.root) from None
        except TemplateError as exc:
            raise TemplateError(f"{at}: {exc}") from None
    if isinstance(value, list):
        return [
            resolve(v, inputs=inputs, results=results, ctx=ctx, at=_below(at, f"[{i}]"))
            for i, v in enumerate(value)
        ]
    if isinstance(value, dict):
        return {
            k: resolve(v, inputs=inputs, results=results, ctx=ctx, at=_below(at, f".{k}"))
            for k, v in value.items()
        }
    return value


def _below(at: str | None, step: str) -> str | None:
    return None if at is None else at + step


def _resolve_text(value: str, inputs: JSON, results: Lookup, ctx: JSON) -> JSON:
    try:
        parts = template_parts(value)
    except ValueError as exc:
        raise TemplateError(str(exc)) from None
    whole = _whole(parts)
    if whole is not None:
        return _walk(whole, inputs, results, ctx)
    out: list[str] = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
        else:
            got = _walk(part, inputs, results, ctx)
            if not isinstance(got, str):
                # compact JSON, text as it is (as Lua's json.encode writes it)
                got = json.dumps(got, separators=(",", ":"), ensure_ascii=False)
            out.append(got)
    return "".join(out)
