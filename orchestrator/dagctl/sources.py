"""What ``-f`` names for ``dagctl apply`` and ``validate``: a file, a directory, or ``-``.

As with ``kubectl apply -f``: a directory stands for its spec files (``.yaml``, ``.yml``,
``.json``, not its subdirectories) in name order, and ``-`` for standard input. Each source is
read once, here; a source that cannot be read carries its error instead, so the caller reports
it in its own words and goes on with the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

import yaml

SPEC_SUFFIXES: Final = (".yaml", ".yml", ".json")
STDIN_NAME: Final = "<stdin>"


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
