"""``dagctl validate``: the orchestrator's registration checks, run locally on files.

The same parser and checks the orchestrator applies when a workflow is registered (Lua syntax
through the ``python -m engine check-lua`` child process, JSON Schema, time zones), so a file
that passes here is refused by the server only for registry reasons (versions, dependents).
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from engine.core.errors import SpecError, SpecProblem
from engine.core.spec import ExternalChecks, WorkflowSpec
from engine.documents import parse_text
from orchestrator.checking import registration_checks
from orchestrator.lua_checking import LuaSyntaxChecker


def check_file(path: Path, checks: ExternalChecks) -> WorkflowSpec:
    """The validated spec in ``path``; SpecError naming the file and every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([SpecProblem("", "no such file")], str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([SpecProblem("", f"cannot read: {exc}")], str(path)) from exc
    return parse_text(text, str(path), json_only=path.suffix.lower() == ".json", checks=checks)


def validate_files(files: list[str], out: TextIO, err: TextIO) -> int:
    """Print each file's verdict like ``python -m engine validate``; 2 when any is invalid."""
    checker = LuaSyntaxChecker()
    checks = registration_checks(checker)
    invalid = 0
    try:
        for name in files:
            try:
                spec = check_file(Path(name), checks)
            except SpecError as exc:
                err.write(f"{exc}\n")
                invalid += 1
                continue
            count = len(spec.nodes)
            out.write(f"{name}: {spec.ref} is valid ({count} node{'s' if count != 1 else ''})\n")
    finally:
        checker.close()
    return 2 if invalid else 0
