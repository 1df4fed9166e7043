"""A Python way to write a workflow, producing exactly what a YAML document would.

::

    from engine.core.builder import Workflow

    spec = (
        Workflow("etl", "1.0.0", concurrency=4)
        .node("extract", lua="return { rows = {1, 2, 3} }")
        .node("load", lua="return { n = #results.extract.rows }", depends_on=["extract"])
        .build()
    )

The builder assembles a document and runs it through ``parse_spec``, so both paths share one
validation and one model: values JSON cannot hold (NaN, sets, numbers too long to print) are
refused as a file's would be. ``build(checks=engine.checking.external_checks())`` adds the
checks that need a library, as ``python -m engine validate`` runs them (Lua syntax, JSON
Schema, time zones, cron, version ranges); engine.core is pure, so it cannot run them itself.

The builder owns what it is given: each value is copied as it comes in (mappings as dicts,
lists and tuples as lists), so a list the caller shares between workflows is never changed by
one of them, and changing it later changes no workflow built from it. Each build gets a copy
of the document too, so a builder used again never changes a spec it built.

The keyword arguments are typed (``WorkflowOptions``, ``NodeFields``, ``TriggerFields``), so a
type checker refuses ``timout=``; a caller it does not check gets the spec's own "unknown field
'timout' (did you mean 'timeout'?)" from ``build()``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypedDict, Unpack, cast

from engine.core.errors import SpecProblem
from engine.core.spec import ExternalChecks, TriggerRule, WorkflowSpec, parse_spec
from engine.core.values import JSONObject

__all__ = ["NodeFields", "TriggerFields", "Workflow", "WorkflowOptions"]


class WorkflowOptions(TypedDict, total=False):
    """The workflow's fields besides ``id``, ``version`` and ``nodes`` (DESIGN section 3).

    None is as if the field were not given (YAML's null)."""

    name: str | None
    description: str | None
    concurrency: int | None
    """Nodes of one execution running at once (default 16)."""
    timeout: str | float | None
    """The whole execution: ``"10m"``, ``"1h30m"`` or seconds."""
    fail_fast: bool | None
    inputs_schema: Mapping[str, Any] | None
    """A JSON Schema the inputs must pass before anything runs."""
    outputs: Mapping[str, Any] | None
    """Default: ``{sink_node_id: output, ...}``; values may be templates."""
    triggers: Sequence[Mapping[str, Any]] | None
    """As ``.trigger(...)`` takes them, one mapping each; ``.trigger`` adds after these."""
    labels: Mapping[str, Any] | None


class NodeFields(TypedDict, total=False):
    """A node's fields besides its ``id`` (DESIGN section 3): exactly one of ``lua``,
    ``workflow`` and ``sleep`` says what it does. None is as if the field were not given."""

    depends_on: Sequence[str] | None
    """Node ids, as a list or tuple: a set or a generator is refused (a set's order changes
    from one process to the next, and so would the stored spec)."""
    lua: str | None
    workflow: str | Mapping[str, Any] | None
    """A sub-workflow: ``{"id": "enrich", "version": "^1.0"}``, or its id for ``latest``."""
    sleep: str | float | None
    """A timer node: waits this long (``"30s"``), holding no worker."""
    inputs: Mapping[str, Any] | None
    """A sub-workflow node's inputs; values may be templates."""
    retry: Mapping[str, Any] | None
    """``max_attempts``, ``backoff`` (fixed | exponential), ``delay``, ``max_delay``,
    ``jitter``."""
    timeout: str | float | None
    when: str | None
    """A Lua expression; false skips the node."""
    foreach: str | Sequence[Any] | None
    """One template (``"{{ results.extract.rows }}"``) or a list: one run per item."""
    concurrency: int | None
    """A foreach node's items running at once."""
    trigger_rule: TriggerRule | None
    description: str | None
    name: str | None


class TriggerFields(TypedDict, total=False):
    """One trigger (DESIGN section 3): ``cron=`` with its options, or ``http=``."""

    cron: str | None
    """5 fields, 6 with seconds first, or @hourly, @daily, @weekly, @monthly, @yearly."""
    timezone: str | None
    """IANA name, default UTC."""
    overlap: Literal["skip", "allow", "cancel_previous"] | None
    catchup: Literal["none", "latest", "all"] | None
    inputs: Mapping[str, Any] | None
    id: str | None
    """Names a cron trigger, so its history and paused state outlive schedule changes."""
    http: Mapping[str, Any] | None
    """``{"path": "/hooks/x", "auth": {"bearer_env": "NAME"}}`` (or ``{"hmac_env": ...}``),
    and ``raw_body``."""


class Workflow:
    """A workflow spec written in Python: ``.node(...)`` and ``.trigger(...)`` add to it, each
    returning the builder, and ``.build()`` validates it into a ``WorkflowSpec``.

    ``Workflow(workflow_id, version, **options)``: ``workflow_id`` as a spec's ``id``
    (``[a-z0-9][a-z0-9._-]{0,62}``), ``version`` SemVer 2.0.0 (``"1.2.0"``), and the options of
    ``WorkflowOptions``: ``name``, ``description``, ``concurrency``, ``timeout``,
    ``fail_fast``, ``inputs_schema``, ``outputs``, ``triggers``, ``labels``::

        Workflow("pipeline", "1.2.0", concurrency=8, timeout="10m",
                 inputs_schema={"type": "object", "required": ["source"]})
    """

    def __init__(self, workflow_id: str, version: str, **options: Unpack[WorkflowOptions]) -> None:
        self._problems: list[SpecProblem] = []
        given: dict[str, Any] = dict(options)
        # the builder writes these itself: an option of the same name would be lost or overwrite
        for name in ("id", "version", "nodes"):
            if name in given:
                self._problems.append(
                    SpecProblem(name, self._reserved(name, "Workflow(...)", _WORKFLOW_HOMES))
                )
                del given[name]
        self._doc: dict[str, Any] = {
            "id": workflow_id,
            "version": version,
            **_owned(given),
            "nodes": [],
        }

    def node(self, node_id: str, **fields: Unpack[NodeFields]) -> Workflow:
        """Add the node ``node_id`` (1-63 of letters, digits, ``_``, ``-``) with the fields of
        ``NodeFields``: exactly one of ``lua``, ``workflow``, ``sleep``; then ``depends_on``
        (a list of node ids), ``retry``, ``timeout``, ``when``, ``foreach``, ``concurrency``,
        ``trigger_rule`` (all_success | none_failed | all_done | one_failed), ``inputs``,
        ``description``, ``name``::

            .node("transform", depends_on=["extract"], timeout="30s",
                  retry={"max_attempts": 3, "backoff": "exponential", "delay": "1s"},
                  lua="return { sum = #results.extract.rows }")
        """
        given: dict[str, Any] = dict(fields)
        where = f"nodes[{node_id}]"
        if "id" in given:
            self._problems.append(
                SpecProblem(f"{where}.id", self._reserved("id", "node(...)", _NODE_HOMES))
            )
            del given["id"]
        depends_on = given.pop("depends_on", None)
        entry: dict[str, Any] = {"id": node_id}
        if depends_on is not None and not isinstance(depends_on, list | tuple):
            self._problems.append(
                SpecProblem(f"{where}.depends_on", _not_a_list(depends_on, "depends_on"))
            )
        elif depends_on:
            entry["depends_on"] = depends_on
        entry.update(given)
        self._doc["nodes"].append(_owned(entry))
        return self

    def trigger(self, **fields: Unpack[TriggerFields]) -> Workflow:
        """Add a trigger: a schedule, ``cron=`` with ``timezone``, ``overlap`` (skip | allow |
        cancel_previous), ``catchup`` (none | latest | all), ``inputs`` and ``id``; or a
        webhook, ``http={"path": ..., "auth": {"bearer_env": NAME} or {"hmac_env": NAME}}``::

            .trigger(cron="*/5 * * * *", timezone="Europe/Berlin", inputs={"source": "cron"})
            .trigger(http={"path": "/hooks/pipeline", "auth": {"bearer_env": "PIPELINE_TOKEN"}})
        """
        triggers = self._doc.get("triggers")
        if triggers is None:  # not given, or given as None: not set, as YAML's null
            triggers = self._doc["triggers"] = []
        if isinstance(triggers, list):
            triggers.append(_owned(dict(fields)))
        # else the option itself is refused by build(), which names it; this one waits for it
        return self

    def to_document(self) -> JSONObject:
        """A copy of the document built so far: changing it changes nothing here."""
        return cast(JSONObject, _owned(self._doc))

    def build(self, checks: ExternalChecks | None = None) -> WorkflowSpec:
        """The spec, or a ``SpecError`` naming every problem and its place.

        With no ``checks``, the document's shape is checked (fields, ids, dependencies,
        cycles, templates, durations, JSON values); ``checks=engine.checking.external_checks()``
        adds those that need a library, as ``python -m engine validate`` runs them (Lua
        syntax, ``when``, JSON Schema, time zones, cron, version ranges). engine.core is pure
        (no Lua, no jsonschema), so it cannot run them itself; the orchestrator checks a
        registered spec with them either way.
        """
        if checks is not None and not isinstance(checks, ExternalChecks):
            raise TypeError(
                f"build(checks=...) takes an engine.core.spec.ExternalChecks, got "
                f"{type(checks).__name__} {checks!r}: pass engine.checking.external_checks() "
                "for the checks `python -m engine validate` runs, or leave it out for the "
                "document's shape alone"
            )
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


def _owned(value: object) -> Any:
    """``value`` with every mapping, list and tuple in it copied (tuples as lists, as JSON
    has them); anything else is kept as it is, for ``parse_spec`` to judge (a set is refused
    there, naming where, as a YAML ``!!set`` is)."""
    if isinstance(value, Mapping):
        return {k: _owned(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_owned(v) for v in value]
    return value


def _not_a_list(value: object, field: str) -> str:
    if isinstance(value, str | bytes):
        # a str is a sequence of characters: "extract" would be seven dependencies
        return f"must be a list of node ids, got the string {value!r}: write {field}=[{value!r}]"
    kind = type(value).__name__
    if isinstance(value, set | frozenset):
        return (
            f"must be a list of node ids, got a {kind}, whose order changes from one process "
            f"to the next (and the stored spec with it): pass a list, as {field}=sorted(...)"
        )
    return f"must be a list of node ids, got a {kind}: pass a list, as {field}=[...]"


_WORKFLOW_HOMES = {
    "id": "give it as the first argument",
    "version": "give it as the second argument",
    "nodes": "add each with .node(...)",
}
_NODE_HOMES = {"id": "give it as the first argument"}
