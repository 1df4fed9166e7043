"""``dagctl validate``: the orchestrator's registration checks, run locally on files.

The same parser and checks the orchestrator applies when a workflow is registered (Lua syntax
through the ``python -m engine check-lua`` child process, JSON Schema, time zones), so a file
that passes here is refused by the server only for registry reasons (versions, dependents).
"""

from __future__ import annotations

from typing import TextIO

from engine.core.errors import SpecError, SpecProblem
from engine.core.spec import ExternalChecks, WorkflowSpec
from engine.documents import parse_text
from orchestrator.checking import registration_checks
from orchestrator.dagctl.calling import printable
from orchestrator.dagctl.sources import SpecSource
from orchestrator.lua_checking import LuaSyntaxChecker


def check_source(source: SpecSource, checks: ExternalChecks) -> WorkflowSpec:
    """The validated spec in ``source``; SpecError naming it and every problem."""
    if isinstance(source.error, FileNotFoundError):
        raise SpecError([SpecProblem("", "no such file")], source.name)
    if source.error is not None:
        raise SpecError([SpecProblem("", f"cannot read: {source.error}")], source.name)
    try:
        text = source.data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([SpecProblem("", f"cannot read: {exc}")], source.name) from exc
    return parse_text(text, source.name, json_only=source.is_json, checks=checks)


def validate_files(sources: list[SpecSource], out: TextIO, err: TextIO) -> int:
    """Print each source's verdict like ``python -m engine validate``; 2 when any is invalid."""
    checker = LuaSyntaxChecker()
    checks = registration_checks(checker)
    invalid = 0
    try:
        for source in sources:
            try:
                spec = check_source(source, checks)
            except SpecError as exc:
                # a file's name may hold any byte but /: shown escaped, as server text is
                err.write(f"{printable(str(exc))}\n")
                invalid += 1
                continue
            count = len(spec.nodes)
            nodes = f"{count} node{'s' if count != 1 else ''}"
            out.write(f"{printable(source.name)}: {printable(spec.ref)} is valid ({nodes})\n")
    finally:
        checker.close()
    return 2 if invalid else 0
