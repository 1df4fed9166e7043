"""Workflow documents as text: YAML or JSON parsed, with the file line of every field.

YAML is read twice: once for the data, once as a node tree for line numbers, so every
validation problem can point at ``file:line``. Duplicate keys, which YAML parsers silently
collapse, are reported here too. No Lua and no I/O beyond the text given: the orchestrator
reads registrations with this as well.

Aliases are the one YAML feature that can make a small text stand for a huge document (ten
nested anchors of nine aliases each name billions of values), and everything after parsing
walks the expanded tree. So every YAML text this project reads goes through ``load_yaml``,
which measures what the aliases expand to before anything walks it, and refuses self-reference.

A spec is JSON whichever way it is written, so what only YAML or Python's lenient ``json`` make
(NaN and infinities, timestamps, binary, sets, integers too long to print) is refused here with
its line: stored, it would fail every run, or the store itself, later.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Callable, Iterator
from typing import Any, Final, cast

import yaml

from engine.core.errors import SpecError, SpecProblem
from engine.core.spec import ExternalChecks, Key, WorkflowSpec, parse_spec

MAX_INT_BITS: Final = 14_000
"""Whole numbers past about 4,200 digits are refused: Python will not print them (its
``int_max_str_digits``), so neither the store nor the wire could carry one."""

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
                yaml.SafeLoader("").construct_object(node)
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


_STR_TAG: Final = "tag:yaml.org,2002:str"


def _key_of(node: yaml.ScalarNode) -> Any:
    """The key ``node`` makes in the data, so its line is found under it: ``1:`` is the
    number 1 there, ``~:`` None and ``true:`` True (the spec check names them, as keys JSON
    cannot have, with these lines)."""
    if node.tag == _STR_TAG:
        return node.value
    try:
        value = yaml.SafeLoader("").construct_object(node)
    except (yaml.YAMLError, ValueError, OverflowError):
        return node.value  # construction refuses it, with its line
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        return node.value  # as text: Python will not print it (see non_json_values)
    return value


def _lines(node: yaml.Node, key: Key, out: dict[Key, int], problems: list[SpecProblem]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[object, int] = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                continue  # a list or a mapping as a key: construction refuses it, with its line
            name = _key_of(k)
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
        number: ValueError | None = None
        try:
            doc = json.loads(text)  # NaN and Infinity too: refused below, with their lines
        except json.JSONDecodeError as exc:
            raise SpecError(
                [SpecProblem("", f"invalid JSON: {exc.msg}", exc.lineno)], source
            ) from exc
        except ValueError as exc:
            number = exc  # a whole number too long to read: found below, with its line
        except RecursionError:
            raise SpecError([SpecProblem("", "invalid JSON: nested too deeply")], source) from None
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except (yaml.YAMLError, RecursionError):
            root = None  # valid JSON that YAML 1.1 cannot compose: data without line numbers
        if number is not None:
            refusal = (
                _scalar_refusal(root, number, "JSON")
                if root is not None
                else YamlRefused(f"invalid JSON: {_reason(number)}")
            )
            raise SpecError([SpecProblem("", refusal.problem, refusal.line)], source) from None
        if root is not None:
            _lines(root, (), lines, problems)
    else:
        try:
            doc = load_yaml(text, lambda root: _lines(root, (), lines, problems))
        except YamlRefused as exc:
            raise SpecError([SpecProblem("", exc.problem, exc.line)], source) from exc
    for key, message in non_json_values(doc):
        problems.append(SpecProblem(_dotted(key), message, _line_of(lines, key)))
    if problems:
        raise SpecError(sorted(problems, key=lambda p: (p.line is None, p.line or 0)), source)
    return doc, lines


def _dotted(key: Key) -> str:
    # as the spec check writes places: triggers[0].inputs.n
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in key).lstrip(".")


def _line_of(lines: dict[Key, int], key: Key) -> int | None:
    while key not in lines and key:
        key = key[:-1]
    return lines.get(key)


def non_json_values(value: object, *, keys: bool = False) -> Iterator[tuple[Key, str]]:
    """Where ``value`` holds what JSON cannot (NaN and infinities, YAML timestamps, binary or
    sets, whole numbers too long to print), with why, in document order. Keys that are not
    strings too when ``keys``; in a spec they are the spec check's to judge (``1:`` is an
    unknown field there), but for numbers too long to print, which nothing could even name."""
    stack: list[tuple[Key, object]] = [((), value)]
    while stack:
        key, each = stack.pop()
        problem = _not_json(each)
        if problem is not None:
            yield key, problem
        elif isinstance(each, dict):
            for name in each:
                if isinstance(name, int) and name.bit_length() > MAX_INT_BITS:
                    yield key, f"a key is {_LONG_INT}"
                elif keys and not isinstance(name, str):
                    yield key, f"key {name!r} is not a string: JSON keys are strings"
            # a key of another type (YAML's None, True, a date) stands in the path as it is
            stack.extend(reversed([((*key, cast(Any, k)), v) for k, v in each.items()]))
        elif isinstance(each, list):
            stack.extend(reversed([((*key, i), v) for i, v in enumerate(each)]))


_LONG_INT: Final = "a whole number too long to carry (more than about 4,200 digits)"


def _not_json(value: object) -> str | None:
    if value is None or isinstance(value, str | bool | dict | list):
        return None
    if isinstance(value, int):
        return _LONG_INT if value.bit_length() > MAX_INT_BITS else None
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        name = "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
        return f"{name} is not a number JSON can carry: write a finite number, or a string"
    if isinstance(value, datetime.date):  # datetimes too
        return (
            f"{value.isoformat()!r} is a YAML timestamp, not a JSON value: quote it to make "
            "it a string"
        )
    if isinstance(value, bytes):
        return "is YAML binary (!!binary), not a JSON value: write it as a string"
    if isinstance(value, set):
        return "is a YAML set (!!set), not a JSON value: write a list"
    if isinstance(value, tuple):
        return "is a YAML pair (!!omap, !!pairs), not a JSON value: write a mapping"
    return f"is a {type(value).__name__}, not a JSON value"


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
            doc = _strict_decode(text)
        except (ValueError, RecursionError):
            # not JSON, a key twice, NaN or Infinity, a number too long: the located path
            # below reports it
            pass
        else:
            try:
                return parse_spec(doc, source=source, checks=checks)
            except SpecError:
                pass
    doc, lines = read_document(text, source, json_only=json_only)
    return parse_spec(doc, lines=lines, source=source, checks=checks)


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
