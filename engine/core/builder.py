"""A Python way to write a workflow, producing exactly what a YAML document would.

    Workflow("etl", "1.0.0").node("extract", lua="...").node("load", lua="...",
        depends_on=["extract"]).build()

The builder assembles a document and runs it through ``parse_spec``, so both paths share one
validation and one model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.core.spec import ExternalChecks, WorkflowSpec, parse_spec
from engine.core.values import JSONObject


class Workflow:
    def __init__(self, workflow_id: str, version: str, **options: Any) -> None:
        self._doc: dict[str, Any] = {"id": workflow_id, "version": version, **options, "nodes": []}

    def node(self, node_id: str, *, depends_on: Sequence[str] = (), **fields: Any) -> Workflow:
        entry: dict[str, Any] = {"id": node_id}
        if depends_on:
            entry["depends_on"] = list(depends_on)
        entry.update(fields)
        self._doc["nodes"].append(entry)
        return self

    def trigger(self, **fields: Any) -> Workflow:
        self._doc.setdefault("triggers", []).append(fields)
        return self

    def to_document(self) -> JSONObject:
        return dict(self._doc)

    def build(self, checks: ExternalChecks | None = None) -> WorkflowSpec:
        return parse_spec(
            self.to_document(), source=f"Workflow({self._doc['id']!r})", checks=checks
        )
