"""The workflow spec: a typed, immutable model and the validation that produces it.

``parse_spec`` walks a document (already parsed from YAML or JSON) once and collects every
problem it finds, each with its place, instead of stopping at the first; the caller gets either
a ``WorkflowSpec`` or one ``SpecError`` listing them all. Checks that need a library (Lua syntax,
JSON Schema, time zones) are passed in as ``ExternalChecks`` so this module stays pure.
"""

from __future__ import annotations

import datetime
import difflib
import math
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias, cast

from engine.core import dag, luarefs, templates
from engine.core.durations import parse_duration
from engine.core.errors import SpecError, SpecProblem
from engine.core.values import JSON, JSONObject, json_kind

TriggerRule = Literal["all_success", "none_failed", "all_done", "one_failed"]
TRIGGER_RULES: Final = ("all_success", "none_failed", "all_done", "one_failed")
NodeKind = Literal["lua", "workflow", "sleep"]
Backoff = Literal["fixed", "exponential"]

WORKFLOW_ID: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
NODE_ID: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,62}")
ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
HTTP_PATH: Final = re.compile(r"/[A-Za-z0-9._~/-]*")
# The regular expression semver.org publishes for SemVer 2.0.0.
SEMVER: Final = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)
CRON_MACROS: Final = (
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
)
CRON_FIELD: Final = re.compile(r"[0-9A-Za-z*/,?#LW-]+")

DEFAULT_CONCURRENCY: Final = 16
MAX_VERSION_LENGTH: Final = 256
"""SemVer sets no bound; this one keeps every number in a version readable by Python (which
reads at most 4,300 digits) and every message that names one short."""
MAX_HTTP_PATH: Final = 1024
"""The server refuses request lines over 8 KiB: a longer path could never be called."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often a node is tried and how long to wait between tries."""

    max_attempts: int = 1
    backoff: Backoff = "fixed"
    delay: float = 1.0
    max_delay: float = 300.0
    jitter: float = 0.0  # fraction of the delay, spread both ways: 0.2 means ±20 %

    def delay_before(self, attempt: int, rand: float) -> float:
        """Seconds to wait before ``attempt`` (2 is the first retry); ``rand`` is in [0, 1)."""
        # the exponent is capped where a float still holds 2**n: past max_delay it changes
        # nothing, and 2.0**1024 raises (attempt 1026 of a long retry) instead of growing
        doubling = 2.0 ** min(max(attempt - 2, 0), 1023)
        base = self.delay if self.backoff == "fixed" else self.delay * doubling
        base = min(base, self.max_delay)
        spread = base * self.jitter * (2.0 * rand - 1.0)
        return max(0.0, min(self.max_delay, base + spread))


@dataclass(frozen=True, slots=True)
class SubWorkflowRef:
    id: str
    version: str = "latest"


@dataclass(frozen=True, slots=True)
class NodeSpec:
    id: str
    kind: NodeKind
    depends_on: tuple[str, ...] = ()
    lua: str | None = None
    workflow: SubWorkflowRef | None = None
    sleep: float | None = None
    inputs: JSON = None
    retry: RetryPolicy = RetryPolicy()
    timeout: float | None = None
    when: str | None = None
    foreach: JSON = None
    concurrency: int | None = None
    trigger_rule: TriggerRule = "all_success"
    description: str | None = None


@dataclass(frozen=True, slots=True)
class CronTrigger:
    cron: str
    timezone: str = "UTC"
    overlap: Literal["skip", "allow", "cancel_previous"] = "skip"
    catchup: Literal["none", "latest", "all"] = "latest"
    inputs: JSONObject = field(default_factory=dict)
    id: str | None = None
    """Names the trigger, so its history and paused state outlive changes to its schedule."""


@dataclass(frozen=True, slots=True)
class HttpTrigger:
    path: str
    bearer_env: str | None = None
    hmac_env: str | None = None
    raw_body: bool = False


Trigger: TypeAlias = CronTrigger | HttpTrigger


@dataclass(frozen=True)
class WorkflowSpec:
    """A validated workflow; ``document`` is its source, kept for storage and hashing."""

    id: str
    version: str
    nodes: tuple[NodeSpec, ...]
    name: str | None = None
    description: str | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    timeout: float | None = None
    fail_fast: bool = False
    inputs_schema: JSONObject | None = None
    outputs: JSONObject | None = None
    triggers: tuple[Trigger, ...] = ()
    document: JSONObject = field(default_factory=dict, compare=False, repr=False)
    # derived once, so the scheduler never rescans the node list
    by_id: Mapping[str, NodeSpec] = field(init=False, compare=False, repr=False)
    deps: Mapping[str, tuple[str, ...]] = field(init=False, compare=False, repr=False)
    dependents: Mapping[str, tuple[str, ...]] = field(init=False, compare=False, repr=False)
    order: tuple[str, ...] = field(init=False, compare=False, repr=False)
    sink_ids: frozenset[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        by_id = {n.id: n for n in self.nodes}
        deps = {n.id: n.depends_on for n in self.nodes}
        dependents: dict[str, list[str]] = {n.id: [] for n in self.nodes}
        for n in self.nodes:
            for d in n.depends_on:
                dependents[d].append(n.id)
        order = dag.topological_order(deps)
        if order is None:
            raise ValueError(f"workflow {self.id!r} has a dependency cycle")
        object.__setattr__(self, "by_id", by_id)
        object.__setattr__(self, "deps", deps)
        object.__setattr__(self, "dependents", {k: tuple(v) for k, v in dependents.items()})
        object.__setattr__(self, "order", tuple(order))
        object.__setattr__(self, "sink_ids", frozenset(k for k, v in dependents.items() if not v))

    @property
    def ref(self) -> str:
        return f"{self.id}@{self.version}"

    def is_ancestor(self, candidate: str, node_id: str) -> bool:
        return dag.is_ancestor(candidate, node_id, self.deps)


@dataclass(frozen=True, slots=True)
class ExternalChecks:
    """Checks that need a library; each returns None when fine, else a message.

    ``lua_syntax(code, expression)`` returns ``(message, line)``.
    """

    lua_syntax: Callable[[str, bool], tuple[str, int | None] | None] | None = None
    json_schema: Callable[[JSON], str | None] | None = None
    timezone: Callable[[str], str | None] | None = None
    cron: Callable[[str], str | None] | None = None
    version_range: Callable[[str], str | None] | None = None
    inputs: Callable[[JSONObject, JSONObject], list[str]] | None = None
    """``(inputs_schema, inputs)``: what the schema says of a cron trigger's fixed inputs,
    one message per problem (empty when they pass)."""
    registering: bool = False
    """The spec is a new version being registered (or validated for that): limits that keep
    listings readable (``MAX_NAME``) apply. A spec already stored, or sent to an engine to run,
    is not held to them: a version registered before a limit came must go on running."""


Key: TypeAlias = tuple[str | int, ...]
"""A location in the document as keys and list indexes; ``lines`` maps these to file lines."""

TEXT: Final = "\x00text"
"""``lines[(*key, TEXT, n)]`` is the file line where line ``n`` of the string at ``key`` starts,
when the reader knows it (a YAML block or multi-line scalar); ``lines[key]`` is its key's line.
A JSON string is on one file line whatever it holds, so its Lua lines are told apart."""


@dataclass(frozen=True, slots=True)
class TextProblem(SpecProblem):
    """A problem the reader found in a document's text (a key written twice, a scalar YAML
    versions read differently), with ``key``, the field it is about: ``parse_spec`` tells it
    once, not again as whatever the spec check makes of that field."""

    key: Key = ()


MAX_NAME: Final = 200
"""Characters a workflow's ``name`` may have: a title shown in every listing (the
``description`` holds the rest, and is shown with one version only)."""

MAX_INT_BITS: Final = 14_000
"""Whole numbers past about 4,200 digits are refused: Python will not print them (its
``int_max_str_digits``), so neither the store nor the wire could carry one."""

_WORKFLOW_FIELDS: Final = (
    "id",
    "version",
    "name",
    "description",
    "concurrency",
    "timeout",
    "fail_fast",
    "inputs_schema",
    "outputs",
    "triggers",
    "nodes",
    "labels",
)
_NODE_FIELDS: Final = (
    "id",
    "depends_on",
    "lua",
    "workflow",
    "sleep",
    "inputs",
    "retry",
    "timeout",
    "when",
    "foreach",
    "concurrency",
    "trigger_rule",
    "description",
    "name",
)
_RETRY_FIELDS: Final = ("max_attempts", "backoff", "delay", "max_delay", "jitter")
_CRON_FIELDS: Final = ("cron", "timezone", "overlap", "catchup", "inputs", "id")
_HTTP_FIELDS: Final = ("path", "auth", "raw_body")


_HINT_BUDGET: Final = 200_000
"""Node ids all "did you mean" lookups of one spec may compare, together."""

_MOVED: Final = {"bearer_env": "auth", "hmac_env": "auth"}
"""Fields users write one level off, and the field they belong under."""


_SAID_ELSEWHERE: Final = {
    "script": "lua",
    "code": "lua",
    "source": "lua",
    "run": "lua",
    "command": "lua",
    "needs": "depends_on",
    "dependencies": "depends_on",
    "depends": "depends_on",
    "retries": "retry",
    "with_items": "foreach",
    "withItems": "foreach",
    "for_each": "foreach",
    "if": "when",
    "condition": "when",
    "steps": "nodes",
    "tasks": "nodes",
    "parameters": "inputs_schema",
    "params": "inputs_schema",
}
"""Fields as other workflow systems (Argo, Airflow, GitHub Actions) or habit name them, and
ours: spelling alone would point ``script`` at ``description``."""


def _hint(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    home = _MOVED.get(word)
    return f" (it belongs under {home}: {{{word}: ...}})" if home in choices else ""


class _Checker:
    """Walks one document, collecting problems; builds the model as it goes."""

    def __init__(self, lines: Mapping[Key, int], checks: ExternalChecks) -> None:
        self.lines = lines
        self.checks = checks
        self.problems: list[SpecProblem] = []
        self.keys: list[Key] = []  # the field each of ``problems`` is about
        self.hints: dict[str, str] = {}
        self.hint_budget = _HINT_BUDGET
        self.node_ids: frozenset[str] = frozenset()  # every node given a good id, once read

    # -- reporting -------------------------------------------------------------------------

    def line_of(self, key: Key) -> int | None:
        while True:
            if key in self.lines:
                return self.lines[key]
            if not key:
                return None
            key = key[:-1]

    def hint(self, word: str, names: Collection[str]) -> str:
        """``_hint`` among node ids: the same typo is looked up once, and lookups stop once
        they have compared ``_HINT_BUDGET`` names in all (10,000 nodes that each read a
        missing node would otherwise compare 100 million pairs)."""
        if word not in self.hints:
            self.hint_budget -= len(names)
            self.hints[word] = _hint(word, list(names)) if self.hint_budget >= 0 else ""
        return self.hints[word]

    def report(self, key: Key, path: str, message: str, line: int | None = None) -> None:
        self.problems.append(SpecProblem(path, message, line or self.line_of(key)))
        self.keys.append(key)

    def unknown_fields(
        self, obj: Mapping[str, Any], allowed: Sequence[str], key: Key, path: str
    ) -> None:
        for name in obj:
            if name not in allowed:
                where = f"{path}.{name}" if path else str(name)
                ours = _SAID_ELSEWHERE.get(str(name))
                hint = (
                    f" (did you mean {ours!r}?)" if ours in allowed else _hint(str(name), allowed)
                )
                self.report((*key, name), where, f"unknown field {name!r}{hint}")

    # -- typed getters: report and return a default on a bad value ------------------------

    def text(self, obj: Mapping[str, Any], name: str, key: Key, path: str) -> str | None:
        value = obj.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            self.report((*key, name), f"{path}.{name}".lstrip("."), "must be a string")
            return None
        return value

    def integer(
        self, obj: Mapping[str, Any], name: str, key: Key, path: str, minimum: int
    ) -> int | None:
        value = obj.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.report(
                (*key, name),
                f"{path}.{name}".lstrip("."),
                f"must be a whole number >= {minimum}, got {value!r}",
            )
            return None
        return value

    def duration(
        self, obj: Mapping[str, Any], name: str, key: Key, path: str, positive: bool = True
    ) -> float | None:
        if name not in obj or obj[name] is None:
            return None
        try:
            seconds = parse_duration(obj[name])
        except ValueError as exc:
            self.report((*key, name), f"{path}.{name}".lstrip("."), str(exc))
            return None
        if positive and seconds <= 0:
            self.report((*key, name), f"{path}.{name}".lstrip("."), "must be longer than zero")
            return None
        return seconds

    def boolean(self, obj: Mapping[str, Any], name: str, key: Key, path: str) -> bool | None:
        value = obj.get(name)
        if value is None:
            return None
        if not isinstance(value, bool):
            self.report(
                (*key, name), f"{path}.{name}".lstrip("."), f"must be true or false, got {value!r}"
            )
            return None
        return value

    def choice(
        self, obj: Mapping[str, Any], name: str, options: Sequence[str], key: Key, path: str
    ) -> str | None:
        value = obj.get(name)
        if value is None:
            return None
        if value not in options:
            hint = _hint(str(value), options) if isinstance(value, str) else ""
            self.report(
                (*key, name),
                f"{path}.{name}".lstrip("."),
                f"must be one of {', '.join(options)}, got {value!r}{hint}",
            )
            return None
        return cast(str, value)

    # -- the document ---------------------------------------------------------------------

    def workflow(self, doc: object) -> WorkflowSpec | None:
        if not isinstance(doc, Mapping):
            kind = json_kind(doc) if doc is not None else "nothing"
            self.report((), "", f"a workflow spec must be a mapping, got {kind}")
            return None
        self.unknown_fields(doc, _WORKFLOW_FIELDS, (), "")
        wf_id = doc.get("id")
        if wf_id is None:
            self.report((), "id", "is required")
        elif not isinstance(wf_id, str) or not WORKFLOW_ID.fullmatch(wf_id):
            self.report(
                ("id",),
                "id",
                f"bad workflow id {wf_id!r}: use 1-63 of a-z, 0-9, '.', '_', '-', "
                "starting with a letter or digit",
            )
        version = doc.get("version")
        if version is None:
            self.report((), "version", "is required")
        elif isinstance(version, str) and len(version) > MAX_VERSION_LENGTH:
            self.report(
                ("version",),
                "version",
                f"bad version {version[:40]!r}...: longer than {MAX_VERSION_LENGTH} characters",
            )
        elif not isinstance(version, str) or not SEMVER.fullmatch(version):
            self.report(
                ("version",),
                "version",
                f"bad version {version!r}: must be SemVer 2.0.0 like 1.2.0 (quote it in YAML)",
            )
        name = self.text(doc, "name", (), "")
        if name is not None and len(name) > MAX_NAME and self.checks.registering:
            # every listing carries it: a long one would crowd out the rest of an answer
            self.report(
                ("name",), "name", f"is {len(name):,} characters: at most {MAX_NAME} (a title)"
            )
        description = self.text(doc, "description", (), "")
        concurrency = self.integer(doc, "concurrency", (), "", 1)
        timeout = self.duration(doc, "timeout", (), "")
        fail_fast = self.boolean(doc, "fail_fast", (), "")
        self.string_keys(doc.get("labels"), ("labels",), "labels")
        inputs_schema = self.inputs_schema(doc.get("inputs_schema"))
        nodes = self.nodes(doc.get("nodes"))
        # every node given an id counts as there, one with a problem of its own too: that
        # problem is told, not a second one that it is missing
        outputs = self.outputs(doc.get("outputs"), None if nodes is None else self.node_ids)
        triggers = self.triggers(doc.get("triggers"), inputs_schema)
        if self.problems or nodes is None:
            return None
        return WorkflowSpec(
            id=cast(str, wf_id),
            version=cast(str, version),
            nodes=tuple(nodes.values()),
            name=name,
            description=description,
            concurrency=concurrency or DEFAULT_CONCURRENCY,
            timeout=timeout,
            fail_fast=bool(fail_fast),
            inputs_schema=inputs_schema,
            outputs=outputs,
            triggers=tuple(triggers),
            document=dict(doc),
        )

    def inputs_schema(self, value: object) -> JSONObject | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            self.report(("inputs_schema",), "inputs_schema", "must be a JSON Schema object")
            return None
        if not self.string_keys(value, ("inputs_schema",), "inputs_schema"):
            return None
        if self.checks.json_schema is not None:
            message = self.checks.json_schema(value)
            if message:
                self.report(
                    ("inputs_schema",), "inputs_schema", f"not a valid JSON Schema: {message}"
                )
                # nothing is checked against a schema that cannot be applied (a cron
                # trigger's inputs): jsonschema would fail on it, not answer
                return None
        return value

    def string_keys(self, value: object, key: Key, path: str) -> bool:
        """Whether every mapping in ``value`` (a field of free JSON: inputs, outputs, a
        schema) has string keys, as JSON's have; each other key is reported. YAML makes
        ``1:``, ``true:`` and ``~:`` a number, a boolean and null, which no JSON can hold."""
        ok = True
        stack: list[tuple[Key, str, object]] = [(key, path, value)]
        while stack:
            at, where, each = stack.pop()
            if isinstance(each, dict):
                items = list(each.items())
                for name, _ in items:
                    if not isinstance(name, str):
                        ok = False
                        self.report(
                            (*at, name),
                            where,
                            f"key {name!r} is not a string: JSON keys are strings "
                            "(quote it in YAML)",
                        )
                stack.extend(
                    ((*at, name), f"{where}.{name}", sub)
                    for name, sub in reversed(items)
                    if isinstance(name, str)
                )
            elif isinstance(each, list):
                stack.extend(
                    ((*at, i), f"{where}[{i}]", sub) for i, sub in reversed(list(enumerate(each)))
                )
        return ok

    def nodes(self, value: object) -> dict[str, NodeSpec] | None:
        if value is None:
            self.report((), "nodes", "is required: a list of nodes")
            return None
        if not isinstance(value, list) or not value:
            self.report(("nodes",), "nodes", "must be a non-empty list of nodes")
            return None
        built: dict[str, NodeSpec] = {}
        raw: dict[str, tuple[Mapping[str, Any], Key, str]] = {}
        first_seen: dict[str, int] = {}
        for index, item in enumerate(value):
            key: Key = ("nodes", index)
            if not isinstance(item, Mapping):
                self.report(key, f"nodes[{index}]", "must be a mapping with an id")
                continue
            node_id = item.get("id")
            if node_id is None:
                titled = " (its name is a title: every node needs an id)" if "name" in item else ""
                self.report(key, f"nodes[{index}]", f"node has no id{titled}")
                # its other fields are told too: all at once, as for a node with one
                self.unknown_fields(item, _NODE_FIELDS, key, f"nodes[{index}]")
                continue
            if not isinstance(node_id, str) or not NODE_ID.fullmatch(node_id):
                self.report(
                    (*key, "id"),
                    f"nodes[{index}].id",
                    f"bad node id {node_id!r}: use 1-63 of letters, digits, '_' or '-', "
                    "starting with a letter or '_'",
                )
                continue
            if node_id in first_seen:
                self.report(
                    (*key, "id"),
                    f"nodes[{node_id}]",
                    f"duplicate node id {node_id!r} "
                    f"(first defined as nodes[{first_seen[node_id]}])",
                )
                continue
            first_seen[node_id] = index
            path = f"nodes[{node_id}]"
            node = self.node(item, key, path)
            raw[node_id] = (item, key, path)
            if node is not None:
                built[node_id] = node
        deps = {nid: self._deps_of(item) for nid, (item, _, _) in raw.items()}
        for nid, (_, key, path) in raw.items():
            for i, d in enumerate(deps[nid]):
                if d == nid:
                    self.report(
                        (*key, "depends_on", i),
                        f"{path}.depends_on",
                        f"node {nid!r} depends on itself",
                    )
                elif d not in raw:
                    self.report(
                        (*key, "depends_on", i),
                        f"{path}.depends_on",
                        f"unknown dependency {d!r}{self.hint(d, raw)}",
                    )
        self.node_ids = frozenset(raw)
        known = {n: [d for d in ds if d in raw and d != n] for n, ds in deps.items()}
        for cycle in dag.find_cycles(known):
            _, key, path = raw[cycle[0]]
            self.report((*key, "depends_on"), path, "dependency cycle: " + " -> ".join(cycle))
        # ancestry is reachability, defined around a cycle too: every problem is told at once
        self.references(raw, known)
        return built

    @staticmethod
    def _deps_of(item: Mapping[str, Any]) -> list[str]:
        value = item.get("depends_on") or []
        return [d for d in value if isinstance(d, str)] if isinstance(value, list) else []

    def node(self, item: Mapping[str, Any], key: Key, path: str) -> NodeSpec | None:
        before = len(self.problems)
        self.unknown_fields(item, _NODE_FIELDS, key, path)
        node_id = cast(str, item["id"])
        depends = item.get("depends_on")
        # a string is refused, not read as a list of one: `depends_on: a, b` would be a
        # node id of its own, and the spec's shape is one everywhere (DESIGN section 3)
        if depends is not None and not (
            isinstance(depends, list) and all(isinstance(d, str) for d in depends)
        ):
            self.report((*key, "depends_on"), f"{path}.depends_on", "must be a list of node ids")
            depends = []
        elif depends and len(set(depends)) != len(depends):
            self.report((*key, "depends_on"), f"{path}.depends_on", "lists a dependency twice")
        kinds = [k for k in ("lua", "workflow", "sleep") if item.get(k) is not None]
        kind: NodeKind = "lua"
        if len(kinds) != 1:
            found = ", ".join(kinds) if kinds else "none"
            self.report(key, path, f"needs exactly one of lua, workflow, sleep (found: {found})")
        else:
            kind = cast(NodeKind, kinds[0])
        lua = self.text(item, "lua", key, path)
        if lua is not None and not lua.strip():
            self.report((*key, "lua"), f"{path}.lua", "is empty")
        if lua and self.checks.lua_syntax is not None:
            found_err = self.checks.lua_syntax(lua, False)
            if found_err:
                msg, line = found_err
                if line is not None:
                    # '<eof>' errors name the line after a trailing newline: keep it in the block
                    line = min(line, lua.rstrip("\n").count("\n") + 1)
                self.lua_problem(key, "lua", path, f"Lua syntax error: {msg}", line)
        workflow = self.sub_workflow(item.get("workflow"), key, path)
        sleep = self.duration(item, "sleep", key, path, positive=False)
        inputs = item.get("inputs")
        if inputs is not None and kind != "workflow":
            self.report(
                (*key, "inputs"),
                f"{path}.inputs",
                "only sub-workflow nodes take inputs; a Lua node reads the workflow's `inputs`",
            )
        elif inputs is not None and not isinstance(inputs, dict):
            self.report(
                (*key, "inputs"), f"{path}.inputs", "must be a mapping of input names to values"
            )
        else:
            self.string_keys(inputs, (*key, "inputs"), f"{path}.inputs")
        # a sleep only waits: it cannot fail, so a timeout or retry on it would do nothing
        if kind == "sleep" and item.get("retry") is not None:
            self.report(
                (*key, "retry"),
                f"{path}.retry",
                "a sleep node cannot be retried: it only waits, and waiting cannot fail",
            )
            retry = RetryPolicy()
        else:
            retry = self.retry(item.get("retry"), key, path)
        if kind == "sleep" and item.get("timeout") is not None:
            self.report(
                (*key, "timeout"),
                f"{path}.timeout",
                "a sleep node cannot time out: it only waits (shorten the sleep instead)",
            )
            timeout = None
        else:
            timeout = self.duration(item, "timeout", key, path)
        when = self.text(item, "when", key, path)
        if when is not None:
            if not when.strip():
                self.report((*key, "when"), f"{path}.when", "is empty: give a Lua expression")
            elif "{{" in when:
                self.report(
                    (*key, "when"),
                    f"{path}.when",
                    "is a Lua expression, not a template: write results.x.y > 0, without {{ }}",
                )
            else:
                lua_syntax = self.checks.lua_syntax
                found_err = lua_syntax(when, True) if lua_syntax is not None else None
                per_item = None if found_err else _per_item_read(when)
                if found_err:
                    self.report(
                        (*key, "when"), f"{path}.when", f"bad Lua expression: {found_err[0]}"
                    )
                elif per_item is not None:
                    # a foreach node's condition runs once, before its items: ctx.item is
                    # nil there, and a comparison with it fails the node at run time
                    self.report(
                        (*key, "when"),
                        f"{path}.when",
                        f"ctx.{per_item} is only set in a foreach node's script, once per item; "
                        "when is decided once for the whole node",
                    )
        foreach = item.get("foreach")
        if foreach is not None:
            if kind == "sleep":
                self.report((*key, "foreach"), f"{path}.foreach", "a sleep node cannot fan out")
            elif isinstance(foreach, str):
                if not templates.is_whole_template(foreach):
                    self.report(
                        (*key, "foreach"),
                        f"{path}.foreach",
                        "must be one template like '{{ results.extract.rows }}' or a list, "
                        f"got {foreach!r}",
                    )
            elif not isinstance(foreach, list):
                self.report((*key, "foreach"), f"{path}.foreach", "must be a template or a list")
            else:
                self.string_keys(foreach, (*key, "foreach"), f"{path}.foreach")
        concurrency = self.integer(item, "concurrency", key, path, 1)
        if concurrency is not None and foreach is None:
            self.report(
                (*key, "concurrency"),
                f"{path}.concurrency",
                "applies to foreach nodes only (the workflow's concurrency bounds the rest)",
            )
        rule = self.choice(item, "trigger_rule", TRIGGER_RULES, key, path)
        description = self.text(item, "description", key, path)
        if len(self.problems) != before:
            return None
        return NodeSpec(
            id=node_id,
            kind=kind,
            depends_on=tuple(depends or ()),
            lua=lua,
            workflow=workflow,
            sleep=sleep,
            inputs=inputs,
            retry=retry,
            timeout=timeout,
            when=when,
            foreach=foreach,
            concurrency=concurrency,
            trigger_rule=cast(TriggerRule, rule or "all_success"),
            description=description,
        )

    def lua_problem(
        self, key: Key, field_name: str, path: str, message: str, line: int | None
    ) -> None:
        """A problem in Lua source: the file line of that Lua line where the document says
        where it is (YAML text over several lines); else the key's line, and the Lua line."""
        file_line = None if line is None else self.lines.get((*key, field_name, TEXT, line))
        where = f" (Lua line {line})" if line is not None else ""
        self.report((*key, field_name), f"{path}.{field_name}", message + where, file_line)

    def sub_workflow(self, value: object, key: Key, path: str) -> SubWorkflowRef | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = {"id": value}
        if not isinstance(value, Mapping):
            self.report((*key, "workflow"), f"{path}.workflow", "must be {id: ..., version: ...}")
            return None
        self.unknown_fields(value, ("id", "version"), (*key, "workflow"), f"{path}.workflow")
        wf_id = value.get("id")
        if not isinstance(wf_id, str) or not WORKFLOW_ID.fullmatch(wf_id):
            self.report(
                (*key, "workflow", "id"), f"{path}.workflow.id", f"bad workflow id {wf_id!r}"
            )
            return None
        version = value.get("version", "latest")
        if not isinstance(version, str) or not version.strip():
            self.report(
                (*key, "workflow", "version"),
                f"{path}.workflow.version",
                f"must be a version range like ^1.2 or latest, got {version!r}",
            )
            return None
        problem = self.checks.version_range and self.checks.version_range(version)
        if problem:
            self.report((*key, "workflow", "version"), f"{path}.workflow.version", problem)
            return None
        return SubWorkflowRef(wf_id, version.strip())

    def retry(self, value: object, key: Key, path: str) -> RetryPolicy:
        if value is None:
            return RetryPolicy()
        rkey: Key = (*key, "retry")
        rpath = f"{path}.retry"
        if isinstance(value, int) and not isinstance(value, bool):
            value = {"max_attempts": value}
        if not isinstance(value, Mapping):
            self.report(
                rkey, rpath, "must be a mapping (max_attempts, backoff, delay, max_delay, jitter)"
            )
            return RetryPolicy()
        self.unknown_fields(value, _RETRY_FIELDS, rkey, rpath)
        attempts = self.integer(value, "max_attempts", rkey, rpath, 1) or 1
        backoff = self.choice(value, "backoff", ("fixed", "exponential"), rkey, rpath) or "fixed"
        delay = self.duration(value, "delay", rkey, rpath, positive=False)
        max_delay = self.duration(value, "max_delay", rkey, rpath)
        jitter_raw = value.get("jitter", 0.0)
        jitter = 0.0
        if jitter_raw is True:
            jitter = 0.5
        elif (
            isinstance(jitter_raw, int | float)
            and not isinstance(jitter_raw, bool)
            and 0 <= jitter_raw <= 1
        ):
            jitter = float(jitter_raw)
        elif jitter_raw not in (False, None):
            self.report(
                (*rkey, "jitter"),
                f"{rpath}.jitter",
                f"must be true/false or a fraction 0..1, got {jitter_raw!r}",
            )
        policy = RetryPolicy(
            max_attempts=attempts,
            backoff=cast(Backoff, backoff),
            delay=1.0 if delay is None else delay,
            max_delay=300.0 if max_delay is None else max_delay,
            jitter=jitter,
        )
        if policy.max_delay < policy.delay:
            self.report(rkey, rpath, "max_delay is shorter than delay")
        return policy

    def references(
        self,
        raw: Mapping[str, tuple[Mapping[str, Any], Key, str]],
        deps: Mapping[str, Sequence[str]],
    ) -> None:
        """Templates and Lua may only read results of the node's ancestors.

        Every reference is gathered first and ancestry computed once for the whole graph
        (``dag.ancestor_bits``), only for the nodes read beyond a direct dependency: a walk per
        node would make a 10,000-node chain cost 50 million steps.
        """
        # in document order: a template's own problem, or a reference to check
        found: list[tuple[str, str | ValueError, Key, str, str, int | None, Key]] = []
        for node_id, (item, key, path) in raw.items():
            for where in ("inputs", "foreach"):
                value = item.get(where)
                if value is None:
                    continue
                for entry, prefix, sub_value in _entries(value):
                    fkey: Key = (*key, where, *entry)  # the entry's line, not the field's
                    for sub, ref in templates.references(sub_value, prefix):
                        if isinstance(ref, ValueError):
                            at = f"{where}{'.' + sub if sub else ''}"
                            found.append((node_id, ref, key, path, at, None, fkey))
                        elif ref.node_id is not None:
                            found.append((node_id, ref.node_id, key, path, where, None, fkey))
            for where in ("lua", "when"):
                code = item.get(where)
                # a templated `when` is already refused for its shape; one message is enough
                if isinstance(code, str) and not (where == "when" and "{{" in code):
                    for lref in luarefs.result_references(code):
                        line = lref.line if where == "lua" else None
                        found.append((node_id, lref.node_id, key, path, where, line, (*key, where)))
        direct = {n: set(ds) for n, ds in deps.items()}
        targets = list(
            dict.fromkeys(
                read
                for node_id, read, *_ in found
                if isinstance(read, str) and read in deps and read not in direct[node_id]
            )
        )
        bit = {t: 1 << i for i, t in enumerate(targets)}
        bits = dag.ancestor_bits(deps, targets) if targets else {}
        for node_id, read, key, path, where, line, fkey in found:
            if isinstance(read, ValueError):
                self.report(fkey, f"{path}.{where}", str(read))
                continue
            if read in direct[node_id] or bits.get(node_id, 0) & bit.get(read, 0):
                continue
            if read not in deps:
                msg = f"results.{read}: there is no node {read!r}{self.hint(read, deps)}"
            elif read == node_id:
                msg = f"results.{read}: a node cannot read its own result"
            else:
                msg = (
                    f"results.{read}: node {read!r} is not an ancestor of {node_id!r}; "
                    "add it to depends_on"
                )
            if line is not None:
                self.lua_problem(key, where, path, msg, line)
            else:
                self.report(fkey, f"{path}.{where}", msg)

    def outputs(self, value: object, nodes: Collection[str] | None) -> JSONObject | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            self.report(("outputs",), "outputs", "must be a mapping of output names to templates")
            return None
        if not self.string_keys(value, ("outputs",), "outputs"):
            return None
        for name, entry in value.items():
            key: Key = ("outputs", name)  # the entry's line, not the field's
            for sub, ref in templates.references(entry, name):
                where = f"outputs.{sub}"
                if isinstance(ref, ValueError):
                    self.report(key, where, str(ref))
                elif ref.root == "ctx":
                    self.report(key, where, "outputs can read inputs and results, not ctx")
                elif ref.node_id is not None and nodes is not None and ref.node_id not in nodes:
                    self.report(
                        key,
                        where,
                        f"results.{ref.node_id}: there is no node {ref.node_id!r}"
                        + self.hint(ref.node_id, nodes),
                    )
        return value

    def triggers(self, value: object, inputs_schema: JSONObject | None) -> list[Trigger]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.report(("triggers",), "triggers", "must be a list")
            return []
        out: list[Trigger] = []
        paths: dict[str, str] = {}
        names: dict[str, str] = {}
        for i, item in enumerate(value):
            key: Key = ("triggers", i)
            path = f"triggers[{i}]"
            if isinstance(item, Mapping) and "cron" in item:
                trigger: Trigger | None = self.cron_trigger(item, key, path)
                if isinstance(trigger, CronTrigger):
                    self.trigger_inputs(trigger, inputs_schema, key, path)
                    if trigger.id is not None:
                        self.once(names, trigger.id, (*key, "id"), f"{path}.id", "id")
            elif isinstance(item, Mapping) and "http" in item:
                self.unknown_fields(item, ("http",), key, path)
                trigger = self.http_trigger(item["http"], (*key, "http"), f"{path}.http")
                if isinstance(trigger, HttpTrigger):
                    self.once(
                        paths, trigger.path, (*key, "http", "path"), f"{path}.http.path", "path"
                    )
            else:
                self.report(
                    key,
                    path,
                    "must be a cron trigger {cron: ...} or an http trigger {http: {path: ...}}",
                )
                trigger = None
            if trigger is not None:
                out.append(trigger)
        return out

    def once(self, seen: dict[str, str], value: str, key: Key, path: str, what: str) -> None:
        """A trigger's id or path names one trigger of the spec."""
        first = seen.setdefault(value, path)
        if first != path:
            self.report(key, path, f"{what} {value!r} is taken by {first} already")

    def trigger_inputs(
        self, trigger: CronTrigger, schema: JSONObject | None, key: Key, path: str
    ) -> None:
        """A cron trigger's inputs are every fire's: the schema must take them, or every slot
        would be refused when it comes."""
        if "_trigger" in trigger.inputs:  # engine.inputs.TRIGGER_KEY, which runs are given
            self.report(
                (*key, "inputs", "_trigger"),
                f"{path}.inputs._trigger",
                "is set by the trigger as it fires: leave it out",
            )
        if schema is None or self.checks.inputs is None:
            return
        for problem in self.checks.inputs(schema, trigger.inputs):
            self.report((*key, "inputs"), f"{path}.inputs", problem)

    def cron_trigger(self, item: Mapping[str, Any], key: Key, path: str) -> CronTrigger | None:
        before = len(self.problems)
        self.unknown_fields(item, _CRON_FIELDS, key, path)
        expr = item.get("cron")
        if not isinstance(expr, str):
            self.report((*key, "cron"), f"{path}.cron", "must be a cron expression string")
        else:
            problem = _cron_shape(expr)
            if problem is None and self.checks.cron is not None:
                problem = self.checks.cron(expr)
            if problem:
                self.report((*key, "cron"), f"{path}.cron", problem)
        zone = self.text(item, "timezone", key, path)
        tz = zone or "UTC"
        if zone is not None and not zone.strip():
            self.report(
                (*key, "timezone"),
                f"{path}.timezone",
                "is empty: give an IANA name like Europe/Berlin, or leave it out for UTC",
            )
        elif self.checks.timezone is not None:
            problem = self.checks.timezone(tz)
            if problem:
                self.report((*key, "timezone"), f"{path}.timezone", problem)
        overlap = self.choice(item, "overlap", ("skip", "allow", "cancel_previous"), key, path)
        catchup = self.choice(item, "catchup", ("none", "latest", "all"), key, path)
        inputs = item.get("inputs") or {}
        if not isinstance(inputs, dict):
            self.report((*key, "inputs"), f"{path}.inputs", "must be a mapping")
        else:
            self.string_keys(inputs, (*key, "inputs"), f"{path}.inputs")
        name = self.text(item, "id", key, path)
        if name is not None and not WORKFLOW_ID.fullmatch(name):
            self.report(
                (*key, "id"), f"{path}.id", f"must match [a-z0-9][a-z0-9._-]{{0,62}}, got {name!r}"
            )
        if len(self.problems) != before:
            return None
        return CronTrigger(
            cron=cast(str, expr),
            timezone=tz,
            overlap=cast(Any, overlap or "skip"),
            catchup=cast(Any, catchup or "latest"),
            inputs=inputs,
            id=name,
        )

    def http_trigger(self, value: object, key: Key, path: str) -> HttpTrigger | None:
        if not isinstance(value, Mapping):
            self.report(key, path, "must be a mapping with a path")
            return None
        before = len(self.problems)
        self.unknown_fields(value, _HTTP_FIELDS, key, path)
        route = value.get("path")
        if isinstance(route, str) and len(route) > MAX_HTTP_PATH:
            self.report(
                (*key, "path"),
                f"{path}.path",
                f"is {len(route)} characters long: a path may have {MAX_HTTP_PATH} at most",
            )
        elif not isinstance(route, str) or not HTTP_PATH.fullmatch(route):
            self.report(
                (*key, "path"),
                f"{path}.path",
                "must be a URL path: '/' then letters, digits and . _ ~ / - "
                f"(no spaces, '%' escapes or query), got {route!r}",
            )
        elif route == "/":
            # every request no built-in route takes would run the workflow: a typo, a probe
            self.report(
                (*key, "path"),
                f"{path}.path",
                "'/' is the server's root: give the trigger a path of its own, like /hooks/name",
            )
        elif route.endswith("/") or "//" in route or {".", ".."} & set(route.split("/")):
            # one spelling per route: /a/ or /a//b would be another path than /a or /a/b,
            # and so could be given to another workflow than the one that has /a
            self.report(
                (*key, "path"),
                f"{path}.path",
                f"must be a plain URL path (no trailing '/', '//', '.' or '..'), got {route!r}",
            )
        elif route.startswith(("/api/", "/trigger/")) or route in (
            "/metrics",
            "/healthz",
            "/readyz",
        ):
            self.report(
                (*key, "path"), f"{path}.path", f"{route!r} is reserved for the built-in API"
            )
        auth = value.get("auth") or {}
        bearer = hmac = None
        if not isinstance(auth, Mapping):
            self.report(
                (*key, "auth"), f"{path}.auth", "must be {bearer_env: NAME} or {hmac_env: NAME}"
            )
        else:
            self.unknown_fields(auth, ("bearer_env", "hmac_env"), (*key, "auth"), f"{path}.auth")
            bearer, hmac = auth.get("bearer_env"), auth.get("hmac_env")
            if bearer is not None and hmac is not None:
                self.report((*key, "auth"), f"{path}.auth", "give bearer_env or hmac_env, not both")
            for name, env in (("bearer_env", bearer), ("hmac_env", hmac)):
                if env is not None and (not isinstance(env, str) or not ENV_NAME.fullmatch(env)):
                    self.report(
                        (*key, "auth", name),
                        f"{path}.auth.{name}",
                        f"must name an environment variable, got {env!r}",
                    )
        raw_body = self.boolean(value, "raw_body", key, path)
        if len(self.problems) != before:
            return None
        return HttpTrigger(cast(str, route), bearer, hmac, bool(raw_body))


def _entries(value: JSON) -> list[tuple[Key, str, JSON]]:
    """The top-level entries of a free JSON field, each with its key and its path's start."""
    if isinstance(value, dict):
        return [((name,), name, each) for name, each in value.items()]
    if isinstance(value, list):
        return [((i,), f"[{i}]", each) for i, each in enumerate(value)]
    return [((), "", value)]


def _cron_shape(expr: str) -> str | None:
    text = expr.strip()
    if text.startswith("@"):
        if text.lower() not in CRON_MACROS:
            return f"unknown cron macro {text!r}{_hint(text.lower(), CRON_MACROS)}"
        return None
    fields = text.split()
    if len(fields) not in (5, 6):
        return (
            f"cron {expr!r} has {len(fields)} fields: use 5 (minute hour day month weekday), "
            "6 with seconds first, or a macro like @hourly"
        )
    for f in fields:
        if not CRON_FIELD.fullmatch(f):
            return f"cron {expr!r}: bad field {f!r}"
    return None


def non_json_values(value: object, *, keys: bool = False) -> Iterator[tuple[Key, str]]:
    """Where ``value`` holds what JSON cannot (NaN and infinities, YAML timestamps, binary or
    sets, whole numbers too long to print, text UTF-8 cannot encode), with why, in document
    order. Keys that are not strings too when ``keys``; in a spec they are the spec check's
    to judge (``1:`` is an unknown field there), but for numbers too long to print, which
    nothing could even name, and text UTF-8 cannot carry."""
    stack: list[tuple[Key, object]] = [((), value)]
    while stack:
        key, each = stack.pop()
        problem = _not_json(each)
        if problem is not None:
            yield key, problem
        elif isinstance(each, dict):
            for name in each:
                if isinstance(name, int) and _too_large(name):
                    yield key, f"a key is {_LONG_INT}"
                elif isinstance(name, str) and _surrogate(name) is not None:
                    yield key, f"key {name!r} {_surrogate(name)}"
                elif keys and not isinstance(name, str):
                    yield key, f"key {name!r} is not a string: JSON keys are strings"
            # a key of another type (YAML's None, True, a date) stands in the path as it is
            stack.extend(reversed([((*key, cast(Any, k)), v) for k, v in each.items()]))
        elif isinstance(each, list):
            stack.extend(reversed([((*key, i), v) for i, v in enumerate(each)]))


_LONG_INT: Final = (
    "a whole number too large to carry: past about 1.8e308, more than a double holds (Lua "
    "and JSON clients read numbers as doubles); write it as a string"
)


def _too_large(value: int) -> bool:
    if value.bit_length() <= 1023:  # nearly every number: no conversion
        return False
    try:
        float(value)
    except OverflowError:
        return True
    return False


def _surrogate(text: str) -> str | None:
    """Why ``text`` cannot be stored or sent, if it holds a lone UTF-16 surrogate (YAML's and
    JSON's ``"\\udc80"``): UTF-8 has no bytes for one, so the store, gRPC and every printer
    would fail on it later, far from the spec."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        return (
            f"holds U+{code:04X}, half of a UTF-16 surrogate pair alone, which is not text "
            "UTF-8 can carry: write the character itself"
        )
    return None


def _not_json(value: object) -> str | None:
    if value is None or isinstance(value, bool | dict | list):
        return None
    if isinstance(value, str):
        problem = _surrogate(value)
        return None if problem is None else f"{_short(value)} {problem}"
    if isinstance(value, int):
        return _LONG_INT if _too_large(value) else None
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
    if isinstance(value, set | frozenset):
        return "is a YAML set (!!set), not a JSON value: write a list"
    if isinstance(value, tuple):
        return "is a YAML pair (!!omap, !!pairs), not a JSON value: write a mapping"
    return f"is a {type(value).__name__}, not a JSON value"


_FIELD_OF: Final = (("sym", "."), ("sym", ":"))


def _per_item_read(code: str) -> str | None:
    """``item`` or ``index`` when Lua ``code`` reads ``ctx.item`` or ``ctx.index`` (also as
    ``ctx["item"]``), the fields a foreach node's script gets once per item; else None."""
    # luarefs' lexer: what is in a comment or a string is not read
    toks = luarefs.tokens(code)
    for k, (kind, text, _) in enumerate(toks):
        # ``a.ctx`` or ``a:ctx`` is some other table's field
        if kind != "name" or text != "ctx" or (k > 0 and toks[k - 1][:2] in _FIELD_OF):
            continue
        nxt = toks[k + 1 : k + 4]
        if len(nxt) >= 2 and nxt[0][:2] == ("sym", ".") and nxt[1][0] == "name":
            field_name = nxt[1][1]
        elif len(nxt) == 3 and nxt[0][1] == "[" and nxt[1][0] == "string" and nxt[2][1] == "]":
            field_name = nxt[1][1]
        else:
            continue
        if field_name in ("item", "index"):
            return field_name
    return None


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def dotted(key: Key) -> str:
    """``key`` as the spec check writes places: triggers[0].inputs.n"""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in key).lstrip(".")


def _field_path(key: Key, doc: object, path: str) -> str:
    """``key`` as the spec check names the field, a node by its id (``nodes[a].retry``), when
    the document leads there; ``path`` (the reader's name for it) otherwise."""
    if len(key) < 2 or key[0] != "nodes" or not isinstance(key[1], int):
        return path
    items = doc.get("nodes") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not 0 <= key[1] < len(items):
        return path
    item = items[key[1]]
    node_id = item.get("id") if isinstance(item, dict) else None
    if not isinstance(node_id, str) or not NODE_ID.fullmatch(node_id):
        return path
    head = f"nodes[{key[1]}]"
    return f"nodes[{node_id}]" + path[len(head) :] if path.startswith(head) else path


def _printable(text: str) -> str:
    # a message may quote the text it refuses: never one no terminal or wire can carry
    return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")


def parse_spec(
    doc: object,
    *,
    lines: Mapping[Key, int] | None = None,
    source: str | None = None,
    checks: ExternalChecks | None = None,
    problems: Sequence[SpecProblem] = (),
) -> WorkflowSpec:
    """The validated model of ``doc``, or a SpecError naming every problem and its place.

    ``problems`` are those the reader found in the text (a key written twice, a scalar YAML 1.1
    and 1.2 read differently), told with the rest; the spec check's problem about the same
    field on the same line is left out (a ``TextProblem`` names its field's key). A document
    holding values JSON cannot (NaN, a set, text UTF-8 cannot encode) is refused for those
    alone: it is not a spec's document, and each would be told twice.
    """
    checker = _Checker(lines or {}, checks or ExternalChecks())
    # a field the reader found wrong is told once, by the reader: the spec check's word on
    # the same field and line goes (fail_fast: yes is not also "must be true or false"), any
    # other problem on that line stays (a one-line JSON spec has all of them on line 1)
    taken = {
        (p.key, p.line) if isinstance(p, TextProblem) else (p.path, p.line)
        for p in problems
        if p.line is not None
    }

    def told(key: Key, p: SpecProblem) -> bool:
        return p.line is not None and ((key, p.line) in taken or (p.path, p.line) in taken)

    found = [
        problem
        for key, message in non_json_values(doc)
        # a node by its id, as every other problem names it
        if not told(
            key,
            problem := SpecProblem(
                _field_path(key, doc, dotted(key)), message, checker.line_of(key)
            ),
        )
    ]
    spec = None
    if not found:
        spec = checker.workflow(doc)
        found = [
            p for key, p in zip(checker.keys, checker.problems, strict=True) if not told(key, p)
        ]
    found = [
        *(
            SpecProblem(_field_path(p.key, doc, p.path), p.message, p.line)
            if isinstance(p, TextProblem)
            else p
            for p in problems
        ),
        *found,
    ]
    if found or spec is None:
        if lines:
            found.sort(key=lambda p: (p.line is None, p.line or 0))
        raise SpecError(
            [SpecProblem(_printable(p.path), _printable(p.message), p.line) for p in found]
            or [SpecProblem("", "invalid workflow spec")],
            None if source is None else _printable(source),
        )
    return spec
