"""A Python way to write a workflow, producing exactly what a YAML document would.

    Workflow("etl", "1.0.0").node("extract", lua="...").node("load", lua="...",
        depends_on=["extract"]).build()

The builder assembles a document and runs it through ``parse_spec``, so both paths share one
validation and one model: values JSON cannot hold (NaN, sets, numbers too long to print) are
refused as a file's would be. Each build gets a copy of the document, so a builder used again
never changes a spec it built.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from engine.core.errors import SpecProblem
from engine.core.spec import ExternalChecks, WorkflowSpec, parse_spec
from engine.core.values import JSONObject


class Workflow:
    def __init__(self, workflow_id: str, version: str, **options: Any) -> None:
        self._problems: list[SpecProblem] = []
        # the builder writes these itself: an option of the same name would be lost or overwrite
        for name in ("id", "version", "nodes"):
            if name in options:
                self._problems.append(
                    SpecProblem(name, self._reserved(name, "Workflow(...)", _WORKFLOW_HOMES))
                )
                del options[name]
        self._doc: dict[str, Any] = {"id": workflow_id, "version": version, **options, "nodes": []}

    def node(
        self, node_id: str, *, depends_on: Sequence[str] | None = None, **fields: Any
    ) -> Workflow:
        entry: dict[str, Any] = {"id": node_id}
        where = f"nodes[{node_id}]"
        if "id" in fields:
            self._problems.append(
                SpecProblem(f"{where}.id", self._reserved("id", "node(...)", _NODE_HOMES))
            )
            del fields["id"]
        if isinstance(depends_on, str | bytes):
            # a str is a sequence of characters: "extract" would be seven dependencies
            self._problems.append(
                SpecProblem(
                    f"{where}.depends_on",
                    f"must be a list of node ids, got the string {depends_on!r}: "
                    f"write depends_on=[{depends_on!r}]",
                )
            )
        elif depends_on:
            entry["depends_on"] = list(depends_on)
        entry.update(fields)
        self._doc["nodes"].append(entry)
        return self

    def trigger(self, **fields: Any) -> Workflow:
        self._doc.setdefault("triggers", []).append(fields)
        return self

    def to_document(self) -> JSONObject:
        """A copy of the document built so far: changing it changes nothing here."""
        return copy.deepcopy(self._doc)

    def build(self, checks: ExternalChecks | None = None) -> WorkflowSpec:
        # the builder's own problems are told with the rest of the document's
        return parse_spec(
            self.to_document(),
            source=f"Workflow({self._doc['id']!r})",
            checks=checks,
            problems=self._problems,
        )

    @staticmethod
    def _reserved(name: str, call: str, homes: dict[str, str]) -> str:
        return f"{call} sets {name!r} itself: {homes[name]}"


_WORKFLOW_HOMES = {
    "id": "give it as the first argument",
    "version": "give it as the second argument",
    "nodes": "add each with .node(...)",
}
_NODE_HOMES = {"id": "give it as the first argument"}
