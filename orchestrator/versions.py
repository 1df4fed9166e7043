"""The workflow registry: every registered version, how ranges resolve, and who depends on whom.

Pure and in memory; the store keeps the rows and hands them back at start-up. Registration is
two steps so nothing changes unless the row is stored: ``plan_register`` checks every rule of
DESIGN section 4 and raises or returns a ``RegisterPlan``; the caller writes ``plan.stored`` and
then calls ``apply``. Versions only ever grow (each new one is above the latest), so the newest
version of a workflow is also its highest, and an index of what each workflow's latest version
references answers "who depends on Y" and "would this close a cycle" without a full rescan.

Cycles are refused twice over: through the latest versions (section 4's rule), and through the
versions a run would really reach by resolving ranges, since an older version a range still
selects can lead back where the latest ones do not; a run of such a loop would never end. A
version whose runs would nest sub-workflows deeper than MAX_SUBWORKFLOW_DEPTH, through the
versions runs would reach, is refused too: every such run would fail at that depth.

Precedence is SemVer 2.0.0's (build metadata ignored). Ranges are npm's, read as npm's own
``semver`` reads them (strict, pre-releases only where a comparator of the same set names one
on the same [major, minor, patch]; see ``engine.core.ranges``), plus ``latest`` (or empty) for
the highest release (see ``_Workflow.current``). A bare version is ``=version``,
as in npm: ``1.2.3`` matches 1.2.3 whatever its build metadata (``1.2.3+b1``), while one that
names a build (``1.2.3+b1``) matches only that build. Registration refuses a second version of equal
precedence (it would not be above the latest), so ``1.2.3`` finds at most one; only rows stored
before that rule can hold two, and then the very text asked for wins, else the last in order.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final, TypeAlias

from engine.core.errors import SpecError
from engine.core.events import isoformat
from engine.core.ranges import Precedence, RangeSet, is_prerelease, npm_range
from engine.core.ranges import precedence as _precedence
from engine.core.spec import MAX_VERSION_LENGTH, SEMVER, WorkflowSpec, parse_spec
from engine.core.values import JSON, JSONObject
from orchestrator.errors import (
    DependentsOutOfRange,
    InvalidRange,
    NoMatchingVersion,
    NotFound,
    SubWorkflowsTooDeep,
    VersionConflict,
    VersionNotNewer,
    WorkflowCycle,
)

LATEST: Final = "latest"
_SHOWN_VERSIONS: Final = 10  # how many registered versions (or dependents) a message names
_LISTED: Final = 50  # how many an error's details list (with the total beside them)
MAX_SUBWORKFLOW_DEPTH: Final = 16  # the setting's default (orchestrator.settings)


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """One row of the store's versions table."""

    workflow_id: str
    version: str
    spec_json: str  # canonical JSON of the spec's document, see ``canonical_json``
    digest: str  # sha256 hex of spec_json
    created_at: float  # unix seconds


@dataclass(frozen=True, slots=True)
class RegisterPlan:
    """What registering ``spec`` takes; ``stored`` is the row to write (the old one when noop)."""

    spec: WorkflowSpec
    stored: StoredVersion
    noop: bool
    # dependents left out of range because force=True, as "id@version (needs RANGE)"
    forced_past: tuple[str, ...] = ()


def canonical_json(document: JSONObject) -> str:
    """The one byte form of a spec: equal documents, whatever their key order, give equal text."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def _bounded(text: str) -> None:
    if len(text) > MAX_VERSION_LENGTH:
        raise ValueError(f"longer than {MAX_VERSION_LENGTH} characters")


def _shown(text: str | None) -> str:
    """``text`` as a message shows it: a range or version of thousands of characters is
    named by its start."""
    if text is None or len(text) <= 60:
        return repr(text)
    return f"{text[:60]!r}... ({len(text)} characters)"


@dataclass(frozen=True, slots=True)
class _Range:
    """A parsed version range: ``latest``, one exact version, or an npm range."""

    text: str
    exact: str | None = None  # a bare version
    # npm's comparator sets (a bare version's too, unless it names a build: then that build
    # only); None with exact None: latest
    sets: tuple[RangeSet, ...] | None = None

    @property
    def is_latest(self) -> bool:
        return self.exact is None and self.sets is None

    def matches(self, version: str) -> bool:
        if self.sets is None:
            return self.exact is None or version == self.exact
        key = _precedence(version)
        return any(s.contains(key) for s in self.sets)

    def highest(self, keys: list[tuple[Precedence, str]]) -> int | None:
        """The index in ``keys`` (sorted, lowest first) of the highest version in range."""
        if self.sets is None:
            if self.exact is None:
                return len(keys) - 1 if keys else None
            return next((i for i in reversed(range(len(keys))) if keys[i][1] == self.exact), None)
        best: int | None = None
        for s in self.sets:
            if s.high is None:
                at = len(keys)
            elif s.high_open:
                at = bisect.bisect_left(keys, s.high, key=_first)
            else:
                at = bisect.bisect_right(keys, s.high, key=_first)
            # pre-releases the set does not take are stepped over; a release stops the search
            for i in range(at - 1, -1 if best is None else best, -1):
                if s.contains(keys[i][0]):
                    best = i
                    break
                if s.low is not None and keys[i][0] <= s.low:
                    break
        return best


def _first(entry: tuple[Precedence, str]) -> Precedence:
    return entry[0]


@lru_cache(maxsize=1024)
def _parse_range(text: str) -> _Range:
    """Raises ValueError, saying why, when ``text`` is not a range npm reads."""
    stripped = text.strip()
    _bounded(stripped)
    if stripped in ("", LATEST):
        return _Range(text)
    if SEMVER.fullmatch(stripped):
        if "+" in stripped:
            return _Range(text, exact=stripped)
        key = _precedence(stripped)
        pre = frozenset([key[:3]]) if is_prerelease(key) else frozenset()
        return _Range(text, exact=stripped, sets=(RangeSet(key, False, key, False, pre, False),))
    return _Range(text, sets=npm_range(text))


def range_matches(text: str, version: str) -> bool:
    """Whether ``version`` is in the range ``text``; False for either one malformed."""
    try:
        return _parse_range(text).matches(version)
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class _Reference:
    """A sub-workflow node of some version: which workflow it runs and in what range."""

    node: str
    workflow: str
    range: str


def _references(spec: WorkflowSpec) -> tuple[_Reference, ...]:
    return tuple(
        _Reference(node.id, node.workflow.id, node.workflow.version)
        for node in spec.nodes
        if node.workflow is not None
    )


def _stored_references(spec_json: str) -> list[tuple[str, str]]:
    """(workflow, range) of each sub-workflow node of a stored spec, read as ``parse_spec``
    reads them (``workflow: id`` is ``{id: id, version: latest}``) but without its checks,
    which take a hundred times longer: the depth check reads every stored version once."""
    if '"workflow"' not in spec_json:
        return []
    nodes = json.loads(spec_json).get("nodes")
    out: list[tuple[str, str]] = []
    for node in nodes if isinstance(nodes, list) else []:
        target = node.get("workflow") if isinstance(node, dict) else None
        if isinstance(target, str):
            target = {"id": target}
        if isinstance(target, dict) and isinstance(target.get("id"), str):
            text = target.get("version", LATEST)
            if isinstance(text, str):
                out.append((target["id"], text.strip()))
    return out


_Step: TypeAlias = tuple[str, str]


def _longest_path(start: _Step, edges: Callable[[_Step], list[_Step]]) -> list[_Step]:
    """The longest path from ``start`` along ``edges``, ``start`` first. Each step is walked
    once (an edge back onto the path, which only a store older than the cycle rules holds, is
    not followed): linear in what is reachable, where listing every path is exponential."""
    best: dict[_Step, tuple[int, _Step | None]] = {}
    on_path = {start}
    stack: list[tuple[_Step, list[_Step], int]] = [(start, edges(start), 0)]
    while stack:
        step, nexts, at = stack[-1]
        if at < len(nexts):
            stack[-1] = (step, nexts, at + 1)
            nxt = nexts[at]
            if nxt not in best and nxt not in on_path:
                on_path.add(nxt)
                stack.append((nxt, edges(nxt), 0))
            continue
        stack.pop()
        on_path.discard(step)
        done = [(best[n][0] + 1, n) for n in nexts if n in best]
        best[step] = max(done) if done else (0, None)
    path = [start]
    following = best[start][1]
    while following is not None:
        path.append(following)
        following = best[following][1]
    return path


def _chain_shown(chain: list[str]) -> str:
    """A chain of ``id@version`` steps as a message names it: a long one by its ends."""
    if len(chain) <= 2 * _SHOWN_VERSIONS:
        return " -> ".join(chain)
    middle = len(chain) - 2 * _SHOWN_VERSIONS
    return (
        " -> ".join(chain[:_SHOWN_VERSIONS])
        + f" -> ... ({middle} more) -> "
        + " -> ".join(chain[-_SHOWN_VERSIONS:])
    )


@dataclass(slots=True)
class _Workflow:
    id: str
    rows: dict[str, StoredVersion] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # versions, lowest precedence first
    keys: list[tuple[Precedence, str]] = field(default_factory=list)  # parallel sort keys
    specs: dict[str, WorkflowSpec] = field(default_factory=dict)  # parsed on demand
    refs: dict[str, tuple[_Reference, ...]] = field(default_factory=dict)  # per version
    # range text -> highest matching version; a new version clears it. The cycle and depth
    # searches resolve every reference they walk, many the same.
    resolved: dict[str, str | None] = field(default_factory=dict)

    @property
    def latest(self) -> str:
        """The highest registered version: a new one must be above it."""
        return self.order[-1]

    @property
    def current(self) -> str:
        """What ``latest`` (and no version at all) runs: the highest release, or the highest
        pre-release while there is no release. A pre-release registered to be tried is thus
        run only when asked for, by name or by a range that takes it (npm's ranges already
        leave pre-releases out), as Helm picks a chart without ``--devel``; triggers, cron
        and references to ``latest`` stay on the release."""
        for key, version in reversed(self.keys):
            if not is_prerelease(key):
                return version
        return self.order[-1]

    def insert(self, row: StoredVersion) -> None:
        self.resolved.clear()
        if row.version in self.rows:
            self.rows[row.version] = row
            self.specs.pop(row.version, None)
            self.refs.pop(row.version, None)
            return
        self.rows[row.version] = row
        key = (_precedence(row.version), row.version)
        at = bisect.bisect(self.keys, key)
        self.keys.insert(at, key)
        self.order.insert(at, row.version)

    def listing(self) -> str:
        shown = self.order[-_SHOWN_VERSIONS:]
        older = len(self.order) - len(shown)
        return ", ".join(shown) + (f" and {older} older" if older else "")


@dataclass(frozen=True, slots=True)
class Removed:
    """A workflow ``Registry.remove`` took out, as ``Registry.restore`` puts it back."""

    workflow: _Workflow
    refs: tuple[_Reference, ...]


class Registry:
    """Every registered workflow version, in memory, with the rules that guard new ones."""

    def __init__(self, max_subworkflow_depth: int = MAX_SUBWORKFLOW_DEPTH) -> None:
        # a new version whose runs would nest sub-workflows deeper is refused
        self.max_subworkflow_depth = max_subworkflow_depth
        self._workflows: dict[str, _Workflow] = {}
        # what the latest version of each workflow references, and the reverse
        self._uses: dict[str, tuple[_Reference, ...]] = {}
        self._used_by: dict[str, set[str]] = {}
        # workflow -> (user, user's version, range) for every version of every workflow that
        # references it, for the depth check; read from the stored rows when first needed
        self._referrers: dict[str, list[tuple[str, str, str]]] | None = None

    # -- loading and registering ----------------------------------------------------------

    def load(self, versions: Iterable[StoredVersion]) -> list[str]:
        """Replace the contents with stored rows, given in any order. Returns what is wrong with
        latest versions that today's checks refuse (stored under older, looser ones): they are
        kept, and running them is refused with the same problems, until a newer version is
        registered; refusing to load them would keep the orchestrator from starting."""
        self._workflows = {}
        self._uses = {}
        self._used_by = {}
        self._referrers = None
        for row in versions:
            try:
                _precedence(row.version)
            except ValueError as exc:
                raise InvalidRange(
                    f"stored workflow {row.workflow_id} has a version that is not SemVer: "
                    f"{_shown(row.version)}",
                    {"workflow": row.workflow_id, "version": row.version},
                ) from exc
            wf = self._workflows.get(row.workflow_id)
            if wf is None:
                wf = self._workflows[row.workflow_id] = _Workflow(row.workflow_id)
            wf.insert(row)
        stale: list[str] = []
        for wf in self._workflows.values():
            try:
                self._spec(wf, wf.latest)
            except SpecError as exc:
                more = len(exc.problems) - 1
                stale.append(
                    f"{wf.id}@{wf.latest}: {exc.messages()[0]}"
                    + (f" (and {more} more)" if more else "")
                )
            self._index(wf.id, self._refs(wf, wf.latest))
        return stale

    def plan_register(self, spec: WorkflowSpec, *, force: bool, now: float) -> RegisterPlan:
        """Check ``spec`` against every rule and say what to store; changes nothing."""
        text = canonical_json(spec.document)
        wf = self._workflows.get(spec.id)
        if wf is not None and spec.version in wf.rows:
            row = wf.rows[spec.version]
            if row.spec_json == text:
                return RegisterPlan(spec, row, noop=True)
            raise VersionConflict(
                f"{spec.ref} is already registered with different content; versions are "
                f"immutable: register the change as a version above {wf.latest}",
                {
                    "workflow": spec.id,
                    "version": spec.version,
                    "digest": row.digest,
                    "highest": wf.latest,
                },
            )
        if wf is not None and _precedence(spec.version) <= _precedence(wf.latest):
            raise VersionNotNewer(
                f"{spec.ref} is not newer than the highest registered version {wf.latest}: "
                "a new version must be greater by SemVer precedence",
                {"workflow": spec.id, "version": spec.version, "highest": wf.latest},
            )
        # before what it needs: a version its dependents leave behind is refused for that
        # whatever else it waits for, so a client applying several at once (dagctl apply) sees
        # the refusal no other version given with it can lift
        left_behind = self._dependents_out_of_range(spec.id, spec.version)
        if left_behind and not force:
            named = ", ".join(f"{ref} (needs {rng})" for ref, rng in left_behind[:_SHOWN_VERSIONS])
            more = len(left_behind) - _SHOWN_VERSIONS
            dependents: list[JSON] = [
                {"workflow": ref, "range": rng} for ref, rng in left_behind[:_LISTED]
            ]
            raise DependentsOutOfRange(
                f"{spec.ref} is outside the range of its dependents: {named}"
                + (f" and {more} more" if more > 0 else "")
                + "; register with force to override",
                {
                    "workflow": spec.id,
                    "version": spec.version,
                    "dependents": dependents,
                    "dependents_total": len(left_behind),
                },
            )
        refs = _references(spec)
        unmet = [e for e in (self._check_reference(spec, ref) for ref in refs) if e is not None]
        if len(unmet) == 1:
            raise unmet[0]
        if unmet:
            # every one at once, as the spec check reports its problems
            raise NoMatchingVersion(
                f"{len(unmet)} sub-workflow references of {spec.ref} cannot be met: "
                + "; ".join(e.message for e in unmet),
                {"problems": [{**e.details, "message": e.message} for e in unmet]},
            )
        down, up = self._run_steps(spec, refs)
        new = (spec.id, spec.version)
        cycle = self._find_cycle(spec.id, refs) or self._find_run_cycle(new, down)
        if cycle is not None:
            path = " -> ".join(cycle)
            raise WorkflowCycle(
                f"{spec.ref} would close a cycle of sub-workflows: {path}",
                {"workflow": spec.id, "version": spec.version, "cycle": list(cycle)},
            )
        chain = self._deepest_chain(new, down, up)
        if len(chain) - 1 > self.max_subworkflow_depth:
            raise SubWorkflowsTooDeep(
                f"{spec.ref} would nest sub-workflows {len(chain) - 1} deep, past "
                f"MAX_SUBWORKFLOW_DEPTH {self.max_subworkflow_depth}: a run of "
                f"{chain[0]} would fail at depth {self.max_subworkflow_depth + 1}: "
                + _chain_shown(chain),
                {
                    "workflow": spec.id,
                    "version": spec.version,
                    "depth": len(chain) - 1,
                    "limit": self.max_subworkflow_depth,
                    "chain": list(chain[:_LISTED]),
                    "chain_total": len(chain),
                },
            )
        stored = StoredVersion(
            workflow_id=spec.id,
            version=spec.version,
            spec_json=text,
            digest=hashlib.sha256(text.encode()).hexdigest(),
            created_at=now,
        )
        forced = tuple(f"{ref} (needs {rng})" for ref, rng in left_behind)
        return RegisterPlan(spec, stored, noop=False, forced_past=forced)

    def apply(self, plan: RegisterPlan) -> None:
        """Take in a planned version once the store has written it."""
        if plan.noop:
            return
        row = plan.stored
        wf = self._workflows.get(row.workflow_id)
        if wf is None:
            wf = self._workflows[row.workflow_id] = _Workflow(row.workflow_id)
        wf.insert(row)
        wf.specs[row.version] = plan.spec
        wf.refs[row.version] = _references(plan.spec)
        if self._referrers is not None:
            for ref in wf.refs[row.version]:
                self._referrers.setdefault(ref.workflow, []).append(
                    (row.workflow_id, row.version, ref.range)
                )
        if wf.latest == row.version:
            self._index(wf.id, wf.refs[row.version])

    def remove(self, workflow_id: str) -> Removed:
        """Forget a workflow being deleted: every version, and what its latest references.
        ``restore`` takes it back (its deletion refused)."""
        wf = self._workflow(workflow_id)
        del self._workflows[workflow_id]
        refs = self._uses.get(workflow_id, ())
        self._index(workflow_id, ())
        del self._uses[workflow_id]
        self._referrers = None  # rebuilt without its versions when next needed
        return Removed(wf, refs)

    def restore(self, removed: Removed) -> None:
        wf = removed.workflow
        self._workflows[wf.id] = wf
        self._index(wf.id, removed.refs)
        self._referrers = None

    # -- reading ----------------------------------------------------------------------------

    def resolve(self, workflow_id: str, version_range: str | None) -> str:
        """The highest registered version of ``workflow_id`` within ``version_range``."""
        wanted = self._range(version_range, f"for {workflow_id}", {"workflow": workflow_id})
        wf = self._workflow(workflow_id)
        found = self._highest(wf, wanted)
        if found is None:
            # the highest ones: thousands of versions made bodies of tens of kilobytes
            versions: list[JSON] = list(wf.order[-_LISTED:])
            raise NoMatchingVersion(
                f"no version of {workflow_id} matches {wanted.text!r} (registered: {wf.listing()})",
                {
                    "workflow": workflow_id,
                    "range": wanted.text,
                    "versions": versions,
                    "versions_total": len(wf.order),
                },
            )
        return found

    def in_range(self, version: str, version_range: str, where: str) -> bool:
        """Whether ``version`` is one ``version_range`` takes; InvalidRange, saying ``where``
        the range was given, when it does not parse."""
        return self._range(version_range, where).matches(version)

    def resolve_spec(self, workflow_id: str, version_range: str | None) -> WorkflowSpec:
        version = self.resolve(workflow_id, version_range)
        return self._spec(self._workflows[workflow_id], version)

    def spec_json(self, workflow_id: str, version: str) -> str:
        """The stored text of exactly ``workflow_id@version``."""
        wf = self._workflow(workflow_id)
        return self._row(wf, version).spec_json

    def pin_versions(self, workflow_id: str, version: str) -> dict[str, str]:
        """Every sub-workflow reference reachable from ``workflow_id@version``, resolved now.

        Keys are ``"<sub_id>@<range as written>"``; the same reference always resolves the same
        way at one moment, so one entry serves every place it appears.
        """
        wf = self._workflow(workflow_id)
        self._row(wf, version)
        pinned: dict[str, str] = {}
        seen = {(workflow_id, version)}
        queue = deque([(wf, version)])
        while queue:
            current, current_version = queue.popleft()
            for ref in self._refs(current, current_version):
                key = f"{ref.workflow}@{ref.range}"
                target = pinned.get(key)
                if target is None:
                    target = pinned[key] = self.resolve(ref.workflow, ref.range)
                if (ref.workflow, target) not in seen:
                    seen.add((ref.workflow, target))
                    queue.append((self._workflows[ref.workflow], target))
        return pinned

    def describe(self, workflow_id: str, version: str | None = None) -> JSONObject:
        """One version (exact or a range; default latest) with its workflow's history."""
        wf = self._workflow(workflow_id)
        chosen = self.resolve(workflow_id, version)
        name, _, _ = self._outline(wf, chosen)
        references: list[JSON] = [
            {
                "node": ref.node,
                "workflow": ref.workflow,
                "range": ref.range,
                "resolves_to": self._try_resolve(ref.workflow, ref.range),
            }
            for ref in self._refs(wf, chosen)
        ]
        versions: list[JSON] = list(wf.order)
        dependents: list[JSON] = list(self.dependents(workflow_id))
        return {
            "id": workflow_id,
            "version": chosen,
            "name": name,
            # a fresh copy: callers may change what they are given
            "spec": json.loads(wf.rows[chosen].spec_json),
            "created_at": isoformat(wf.rows[chosen].created_at),
            "versions": versions,
            "latest": wf.current,
            "dependents": dependents,
            "references": references,
        }

    def workflow_ids(self) -> list[str]:
        return sorted(self._workflows)

    def summaries(
        self, after: str | None = None, limit: int | None = None
    ) -> tuple[list[JSONObject], str | None]:
        """One entry per workflow, for the version ``latest`` runs, sorted by id: at most
        ``limit`` past the id ``after``, and the id to page on from (None after the last)."""
        ids = sorted(self._workflows)
        start = 0 if after is None else bisect.bisect_right(ids, after)
        end = len(ids) if limit is None else min(len(ids), start + limit)
        out: list[JSONObject] = []
        for workflow_id in ids[start:end]:
            wf = self._workflows[workflow_id]
            versions: list[JSON] = list(wf.order)
            dependents: list[JSON] = list(self.dependents(workflow_id))
            current = wf.current
            name, nodes, triggers = self._outline(wf, current)
            out.append(
                {
                    "id": workflow_id,
                    "version": current,
                    "name": name,
                    "versions": versions,
                    "nodes": nodes,
                    "triggers": triggers,
                    "created_at": isoformat(wf.rows[current].created_at),
                    "dependents": dependents,
                }
            )
        return out, (ids[end - 1] if end < len(ids) else None)

    def dependents(self, workflow_id: str) -> list[str]:
        """``id@version`` of each workflow whose latest version references ``workflow_id``."""
        return [
            f"{user}@{self._workflows[user].latest}"
            for user in sorted(self._used_by.get(workflow_id, ()))
        ]

    # -- rules ------------------------------------------------------------------------------

    def _check_reference(self, spec: WorkflowSpec, ref: _Reference) -> NoMatchingVersion | None:
        """Raises for a range that does not parse and for a workflow that would use itself;
        returns what is missing (a workflow, a matching version), to be told with the rest."""
        details: JSONObject = {"node": ref.node, "workflow": ref.workflow, "range": ref.range}
        wanted = self._range(
            ref.range, f"in node {ref.node!r} of {spec.ref} (workflow {ref.workflow})", details
        )
        if ref.workflow == spec.id:
            raise WorkflowCycle(
                f"{spec.ref} would use itself: node {ref.node!r} runs workflow {spec.id} "
                f"({spec.id} -> {spec.id})",
                {"workflow": spec.id, "version": spec.version, "cycle": [spec.id, spec.id]},
            )
        target = self._workflows.get(ref.workflow)
        if target is None:
            return NoMatchingVersion(
                f"node {ref.node!r} of {spec.ref} uses workflow {ref.workflow} "
                f"({ref.range}), which is not registered",
                details,
            )
        if self._highest(target, wanted) is None:
            return NoMatchingVersion(
                f"node {ref.node!r} of {spec.ref}: no version of {ref.workflow} matches "
                f"{ref.range!r} (registered: {target.listing()})",
                details,
            )
        return None

    def _find_cycle(self, start: str, refs: tuple[_Reference, ...]) -> list[str] | None:
        """A path start -> ... -> start through latest versions, with ``refs`` as start's."""
        visited = {start}
        stack: list[tuple[str, Iterator[str]]] = [(start, iter([r.workflow for r in refs]))]
        while stack:
            _, edges = stack[-1]
            nxt = next(edges, None)
            if nxt is None:
                stack.pop()
            elif nxt == start:
                return [name for name, _ in stack] + [start]
            elif nxt not in visited:
                visited.add(nxt)
                stack.append((nxt, iter([r.workflow for r in self._uses.get(nxt, ())])))
        return None

    def _run_steps(
        self, spec: WorkflowSpec, refs: tuple[_Reference, ...]
    ) -> tuple[Callable[[_Step], list[_Step]], Callable[[_Step], list[_Step]]]:
        """Where runs go once ``spec`` is registered, as two functions of an ``(id, version)``
        step: the steps it starts (down) and those that start it (up). Ranges that take the new
        version lead there; each step's references are read once for both searches."""
        new = (spec.id, spec.version)
        target = self._workflows.get(spec.id)
        below: dict[_Step, list[_Step]] = {}

        def resolved(workflow: str, text: str) -> _Step | None:
            try:
                wanted = _parse_range(text)
            except ValueError:
                return None  # checked when that version was registered
            if workflow == spec.id and self._takes_new(target, wanted, spec.version):
                return new
            wf = self._workflows.get(workflow)
            version = self._highest(wf, wanted) if wf is not None else None
            return None if version is None else (workflow, version)

        def down(step: _Step) -> list[_Step]:
            if step not in below:
                found = refs if step == new else self._refs(self._workflows[step[0]], step[1])
                below[step] = [
                    t for t in (resolved(r.workflow, r.range) for r in found) if t is not None
                ]
            return below[step]

        def up(step: _Step) -> list[_Step]:
            return [
                (user, version)
                for user, version, text in self._referrers_of(step[0])
                if (user, version) != new and resolved(step[0], text) == step
            ]

        return down, up

    @staticmethod
    def _find_run_cycle(start: _Step, down: Callable[[_Step], list[_Step]]) -> list[str] | None:
        """A loop a run would actually take once ``start`` is registered, as ``id@version``
        steps.

        The latest versions may be free of cycles while an older version, reached through a
        range, leads back: a@1 uses b, a@2 does not, and b@2 uses a with ^1. Only paths through
        the new version can be new, so the search starts there.
        """
        visited = {start}
        stack: list[tuple[_Step, Iterator[_Step]]] = [(start, iter(down(start)))]
        while stack:
            nxt = next(stack[-1][1], None)
            if nxt is None:
                stack.pop()
            elif nxt == start:
                return [f"{wid}@{ver}" for (wid, ver), _ in stack] + ["@".join(start)]
            elif nxt not in visited:
                visited.add(nxt)
                stack.append((nxt, iter(down(nxt))))
        return None

    @staticmethod
    def _deepest_chain(
        start: _Step, down: Callable[[_Step], list[_Step]], up: Callable[[_Step], list[_Step]]
    ) -> list[str]:
        """The longest chain of runs through the new version ``start`` once it is registered,
        as ``id@version`` steps from a version some run could start to one that starts none.

        The new version changes only where ranges that take it lead, so every chain it
        lengthens passes through it: up through whatever could run it (any version of any
        workflow, by a range or by name) and down through what it runs.
        """
        above = _longest_path(start, up)
        below = _longest_path(start, down)
        return [f"{wid}@{version}" for wid, version in [*reversed(above), *below[1:]]]

    @staticmethod
    def _takes_new(wf: _Workflow | None, wanted: _Range, version: str) -> bool:
        """Whether ``wanted`` resolves to ``version`` once it is registered above ``wf``'s."""
        if not wanted.is_latest:
            return wanted.matches(version)
        # latest: the highest release, a pre-release only while there is none
        return (
            wf is None
            or not is_prerelease(_precedence(version))
            or is_prerelease(_precedence(wf.current))
        )

    def _referrers_of(self, workflow_id: str) -> list[tuple[str, str, str]]:
        if self._referrers is None:
            self._referrers = {}
            for wf in self._workflows.values():
                for version, row in wf.rows.items():
                    for target, text in _stored_references(row.spec_json):
                        self._referrers.setdefault(target, []).append((wf.id, version, text))
        return self._referrers.get(workflow_id, [])

    def _dependents_out_of_range(self, workflow_id: str, version: str) -> list[tuple[str, str]]:
        """(dependent ``id@version``, range) for each dependent range ``version`` misses."""
        out: list[tuple[str, str]] = []
        inside: dict[str, bool] = {}  # many dependents share a few ranges
        for user in sorted(self._used_by.get(workflow_id, ())):
            ranges = sorted({r.range for r in self._uses[user] if r.workflow == workflow_id})
            for rng in ranges:
                if rng not in inside:
                    try:
                        inside[rng] = _parse_range(rng).matches(version)
                    except ValueError:
                        inside[rng] = False  # only a damaged store gets here: ask for force
                if not inside[rng]:
                    out.append((f"{user}@{self._workflows[user].latest}", rng))
        return out

    # -- plumbing ---------------------------------------------------------------------------

    def _index(self, workflow_id: str, refs: tuple[_Reference, ...]) -> None:
        for old in self._uses.get(workflow_id, ()):
            users = self._used_by.get(old.workflow)
            if users is not None:
                users.discard(workflow_id)
                if not users:
                    del self._used_by[old.workflow]
        self._uses[workflow_id] = refs
        for ref in refs:
            self._used_by.setdefault(ref.workflow, set()).add(workflow_id)

    def _workflow(self, workflow_id: str) -> _Workflow:
        wf = self._workflows.get(workflow_id)
        if wf is None:
            raise NotFound(f"workflow {workflow_id!r} is not registered", {"workflow": workflow_id})
        return wf

    @staticmethod
    def _row(wf: _Workflow, version: str) -> StoredVersion:
        row = wf.rows.get(version)
        if row is None:
            raise NotFound(
                f"workflow {wf.id} has no version {version!r} (registered: {wf.listing()})",
                {"workflow": wf.id, "version": version},
            )
        return row

    @staticmethod
    def _range(text: str | None, where: str, details: JSONObject | None = None) -> _Range:
        try:
            return _parse_range(text or "")
        except ValueError as exc:
            raise InvalidRange(
                f"version range {_shown(text)} {where} does not parse: {exc}",
                {**(details or {}), "range": text},
            ) from exc

    @staticmethod
    def _highest(wf: _Workflow, wanted: _Range) -> str | None:
        if wanted.is_latest:
            return wf.current
        if wanted.exact in wf.rows:
            # the very version, not another build of it: stored executions and pins name
            # exact versions, and must get the one they name
            return wanted.exact
        if wanted.text in wf.resolved:
            return wf.resolved[wanted.text]
        at = wanted.highest(wf.keys)
        found = None if at is None else wf.keys[at][1]
        wf.resolved[wanted.text] = found
        return found

    def _try_resolve(self, workflow_id: str, version_range: str) -> str | None:
        wf = self._workflows.get(workflow_id)
        if wf is None:
            return None
        try:
            return self._highest(wf, _parse_range(version_range))
        except ValueError:
            return None

    @classmethod
    def _refs(cls, wf: _Workflow, version: str) -> tuple[_Reference, ...]:
        refs = wf.refs.get(version)
        if refs is None:
            try:
                refs = _references(cls._spec(wf, version))
            except SpecError:
                refs = ()  # a stored spec today's checks refuse (``load``) runs nothing
            wf.refs[version] = refs
        return refs

    @classmethod
    def _outline(cls, wf: _Workflow, version: str) -> tuple[str | None, int, int]:
        """Name, node count and trigger count of a version, for listings: read from the stored
        document when today's checks refuse it (``load``), so it is still shown."""
        try:
            spec = cls._spec(wf, version)
        except SpecError:
            doc = json.loads(wf.rows[version].spec_json)
            doc = doc if isinstance(doc, dict) else {}
            name = doc.get("name")
            nodes, triggers = doc.get("nodes"), doc.get("triggers")
            return (
                name if isinstance(name, str) else None,
                len(nodes) if isinstance(nodes, list) else 0,
                len(triggers) if isinstance(triggers, list) else 0,
            )
        return spec.name, len(spec.nodes), len(spec.triggers)

    @staticmethod
    def _spec(wf: _Workflow, version: str) -> WorkflowSpec:
        spec = wf.specs.get(version)
        if spec is None:
            spec = wf.specs[version] = parse_spec(json.loads(wf.rows[version].spec_json))
        return spec
