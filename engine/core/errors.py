"""The engine's error tree.

::

    EngineError
    ├── SpecError            a workflow document is invalid; carries every problem found
    ├── InputsError          execution inputs do not satisfy the workflow's inputs_schema
    ├── TemplateError        a template could not be resolved at run time
    └── InvalidTransition    a node was asked to change state along an edge that does not exist

Each message names the thing and the place (file, node id, line, field) so a user can act on it
without reading code.
"""

from __future__ import annotations

from dataclasses import dataclass


class EngineError(Exception):
    """Root of every error the engine raises on purpose."""


@dataclass(frozen=True, slots=True)
class SpecProblem:
    """One thing wrong with a workflow document.

    ``path`` is the field's location in the document, written the way a user reads it
    (``nodes[transform].retry.delay``); ``line`` is filled in when the document came from a file.
    """

    path: str
    message: str
    line: int | None = None

    def render(self, source: str | None = None) -> str:
        where = source or ""
        if self.line is not None:
            where = f"{where}:{self.line}" if where else f"line {self.line}"
        prefix = f"{where}: " if where else ""
        field = f"{self.path}: " if self.path else ""
        return f"{prefix}{field}{self.message}"


class SpecError(EngineError):
    """A workflow document failed validation; ``problems`` lists all of them, in document order."""

    def __init__(self, problems: list[SpecProblem], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        lines = [p.render(source) for p in problems]
        count = len(problems)
        head = f"{count} problem{'s' if count != 1 else ''} in workflow spec"
        if source:
            head += f" {source}"
        super().__init__(head + ":\n" + "\n".join(f"  - {line}" for line in lines))

    def messages(self) -> list[str]:
        return [p.render(self.source) for p in self.problems]


class InputsError(EngineError):
    """Execution inputs were refused before anything ran."""

    def __init__(self, workflow_id: str, problems: list[str], *, schema: bool = True) -> None:
        self.workflow_id = workflow_id
        self.problems = problems
        # "do not match its inputs_schema" only where there is one to blame
        why = "do not match its inputs_schema" if schema else "are refused"
        super().__init__(f"inputs for workflow {workflow_id!r} {why}: " + "; ".join(problems))


class TemplateError(EngineError):
    """A template referenced something that is not there when the node was about to run."""


class MissingPath(TemplateError):
    """A template's path goes where its value has nothing; ``root`` is where it starts
    (``inputs``, ``results`` or ``ctx``)."""

    def __init__(self, message: str, root: str) -> None:
        super().__init__(message)
        self.root = root


class InvalidTransition(EngineError):
    """A node state change that the state machine does not allow; names node, from and to."""

    def __init__(self, node_id: str, from_state: str, to_state: str, story: str = "") -> None:
        self.node_id = node_id
        self.from_state = from_state
        self.to_state = to_state
        msg = f"node {node_id!r}: invalid transition {from_state} -> {to_state}"
        if story:
            msg += f" ({story})"
        super().__init__(msg)
