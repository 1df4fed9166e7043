"""What ``-f`` names for ``dagctl apply`` and ``validate``: a file, a directory, or ``-``.

As with ``kubectl apply -f``: a directory stands for its spec files (``.yaml``, ``.yml``,
``.json``, not its subdirectories) in name order, and ``-`` for standard input. Each source is
read once, here; a source that cannot be read carries its error instead, so the caller reports
it in its own words and goes on with the rest.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final, TypeVar

import yaml

SPEC_SUFFIXES: Final = (".yaml", ".yml", ".json")
STDIN_NAME: Final = "<stdin>"
T = TypeVar("T", bound=tuple[int, "SpecSource"])


BOM: Final = b"\xef\xbb\xbf"
"""A UTF-8 byte order mark, which some Windows editors put first: no part of the text, so
every source drops it (YAML ignores one, but JSON refuses it), files and stdin alike."""


@dataclass(frozen=True, slots=True)
class SpecSource:
    name: str
    """What messages call it: the path as given or found, or ``<stdin>``."""
    data: bytes = b""
    error: OSError | None = None
    """Why it could not be read (then ``data`` is empty)."""
    is_json: bool = field(init=False, default=False)
    """Read as JSON: a ``.json`` file, or standard input that parses as JSON (a leading
    ``{`` is no sign: flow-style YAML, ``{id: x, nodes: [...]}``, begins with one too), or
    that begins ``{"`` and is neither JSON nor YAML: its problem is then JSON's to name."""

    def __post_init__(self) -> None:
        if self.data.startswith(BOM):
            object.__setattr__(self, "data", self.data[len(BOM) :])
        if self.name == STDIN_NAME:
            object.__setattr__(self, "is_json", _parses_as_json(self.data))
        else:
            object.__setattr__(self, "is_json", self.name.lower().endswith(".json"))


def _parses_as_json(data: bytes) -> bool:
    start = data.lstrip()
    if not start.startswith((b"{", b"[")):
        return False  # not worth parsing: no spec in JSON begins otherwise
    try:
        json.loads(data)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError both
        pass
    else:
        return True
    if not start[1:].lstrip().startswith(b'"'):
        return False  # flow-style YAML, whose keys are seldom quoted
    try:
        yaml.safe_load(data)
    except yaml.YAMLError:
        # JSON broken (a missing comma): YAML's words for it ("expected ',' or '}', but got
        # '<scalar>'") would send the author looking for YAML in a JSON document
        return True
    return False


def spec_sources(names: list[str], stdin: BinaryIO) -> list[SpecSource]:
    out: list[SpecSource] = []
    for name in names:
        if name == "-":
            try:
                out.append(SpecSource(STDIN_NAME, stdin.read()))
            except OSError as exc:  # closed, or a terminal that went away
                out.append(SpecSource(STDIN_NAME, error=exc))
            continue
        path = Path(name)
        if not path.is_dir():
            out.append(_read(name, path))
            continue
        try:
            found = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SPEC_SUFFIXES
            )
        except OSError as exc:
            out.append(SpecSource(name, error=exc))
            continue
        if not found:
            empty = OSError(f"no {', '.join(SPEC_SUFFIXES)} files in this directory")
            out.append(SpecSource(name, error=empty))
        out.extend(_read(str(p), p) for p in found)
    return out


def _read(name: str, path: Path) -> SpecSource:
    try:
        return SpecSource(name, path.read_bytes())
    except OSError as exc:
        return SpecSource(name, error=exc)


def _id_and_uses(source: SpecSource) -> tuple[str | None, set[str]]:
    """The workflow id a source registers and the ids its sub-workflow nodes run, read
    leniently: a source that does not read so is left where it is (the server names its
    problems)."""
    try:
        doc = yaml.load(source.data, Loader=_LOADER)
    except (yaml.YAMLError, ValueError, RecursionError):
        return None, set()
    if not isinstance(doc, dict):
        return None, set()
    uses: set[str] = set()
    nodes = doc.get("nodes")
    for node in nodes if isinstance(nodes, list) else ():
        ref = node.get("workflow") if isinstance(node, dict) else None
        ref = ref.get("id") if isinstance(ref, dict) else ref
        if isinstance(ref, str):
            uses.add(ref)
    wid = doc.get("id")
    return (wid if isinstance(wid, str) else None), uses


_LOADER: Final = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def in_reference_order(sources: list[T]) -> list[T]:
    """``sources`` (``(index, SpecSource)`` pairs) with each after the sources of the workflows
    it runs as sub-workflows, else in the order given: ``apply -f DIR`` registers in one pass
    what would otherwise take a pass per level (a chain of 200 named parent first took
    20,100 requests). Sources in a cycle keep their order; the server refuses the cycle."""
    read = [_id_and_uses(source) for _, source in sources]
    given: dict[str, list[int]] = {}
    for at, (wid, _) in enumerate(read):
        if wid is not None:
            given.setdefault(wid, []).append(at)
    needs = [
        {dep for wid in uses if wid != own for dep in given.get(wid, ())} for own, uses in read
    ]
    users: list[list[int]] = [[] for _ in sources]
    waiting = [len(need) for need in needs]
    for at, need in enumerate(needs):
        for dep in need:
            users[dep].append(at)
    ready = [at for at, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    placed: list[int] = []
    while ready:
        at = heapq.heappop(ready)  # the first given of those whose needs are in
        placed.append(at)
        for user in users[at]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    # what a cycle holds back keeps the order given
    seen = set(placed)
    placed += [at for at in range(len(sources)) if at not in seen]
    return [sources[at] for at in placed]
