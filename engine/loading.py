"""Workflow specs from files and text, validated with the engine's own checks (Lua included)."""

from __future__ import annotations

from pathlib import Path

from engine.checking import external_checks
from engine.core.errors import SpecError, SpecProblem
from engine.core.spec import WorkflowSpec, parse_spec
from engine.documents import parse_text


def spec_from_text(
    text: str, source: str | None = "<spec>", *, json_only: bool = False
) -> WorkflowSpec:
    return parse_text(text, source, json_only=json_only, checks=external_checks())


def spec_from_document(doc: object, source: str | None = "<spec>") -> WorkflowSpec:
    return parse_spec(doc, source=source, checks=external_checks())


def load_spec_file(path: str | Path) -> WorkflowSpec:
    """Read and validate a workflow file (YAML or JSON); SpecError names the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([SpecProblem("", "no such file")], str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([SpecProblem("", f"cannot read: {exc}")], str(p)) from exc
    return spec_from_text(text, str(p), json_only=p.suffix.lower() == ".json")
