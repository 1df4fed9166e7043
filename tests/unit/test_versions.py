"""The workflow registry: SemVer precedence, ranges, dependents, cycles, pinning, and its views."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.errors import SpecError
from engine.core.spec import WorkflowSpec, parse_spec
from engine.spec_checks import version_range_problem
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
from orchestrator.versions import RegisterPlan, Registry, StoredVersion, canonical_json


def wf(workflow_id: str, version: str, *uses: tuple[str, str], **top: Any) -> WorkflowSpec:
    """A spec with one Lua node and one sub-workflow node per ``(id, range)`` in ``uses``."""
    nodes: list[dict[str, Any]] = [{"id": "start", "lua": "return {}"}]
    for i, (sub, rng) in enumerate(uses):
        nodes.append(
            {"id": f"use_{i}", "depends_on": ["start"], "workflow": {"id": sub, "version": rng}}
        )
    return parse_spec({"id": workflow_id, "version": version, "nodes": nodes, **top})


def register(
    reg: Registry, spec: WorkflowSpec, *, force: bool = False, now: float = 0.0
) -> RegisterPlan:
    plan = reg.plan_register(spec, force=force, now=now)
    reg.apply(plan)
    return plan


def list_of(value: Any) -> list[Any]:
    assert isinstance(value, list)
    return value


def registry(*specs: WorkflowSpec) -> Registry:
    reg = Registry()
    for spec in specs:
        register(reg, spec)
    return reg


# -- registering ----------------------------------------------------------------------------


def test_a_first_version_plans_its_row_and_changes_nothing_until_applied() -> None:
    reg = Registry()
    spec = wf("etl", "1.0.0", name="ETL")
    plan = reg.plan_register(spec, force=False, now=1_700_000_000.5)
    text = json.dumps(spec.document, sort_keys=True, separators=(",", ":"))
    assert plan == RegisterPlan(
        spec,
        StoredVersion(
            "etl", "1.0.0", text, hashlib.sha256(text.encode()).hexdigest(), 1_700_000_000.5
        ),
        noop=False,
    )
    with pytest.raises(NotFound, match="workflow 'etl' is not registered"):
        reg.resolve("etl", None)
    reg.apply(plan)
    assert reg.resolve("etl", None) == "1.0.0"
    assert reg.spec_json("etl", "1.0.0") == text
    assert reg.resolve_spec("etl", "latest") is spec


def test_identical_content_is_a_noop_whatever_the_key_order() -> None:
    reg = registry(wf("etl", "1.0.0", name="ETL"))
    reordered = parse_spec(dict(reversed(list(wf("etl", "1.0.0", name="ETL").document.items()))))
    plan = reg.plan_register(reordered, force=False, now=99.0)
    assert plan.noop
    assert plan.stored.created_at == 0.0  # the row already stored
    reg.apply(plan)
    assert reg.describe("etl")["versions"] == ["1.0.0"]


def test_other_content_under_a_registered_version_is_a_conflict() -> None:
    reg = registry(wf("etl", "1.0.0"), wf("etl", "1.1.0"))
    with pytest.raises(VersionConflict) as err:
        reg.plan_register(wf("etl", "1.0.0", name="changed"), force=True, now=0.0)
    assert err.value.message == (
        "etl@1.0.0 is already registered with different content; versions are immutable: "
        "register the change as a version above 1.1.0"
    )
    assert err.value.details["version"] == "1.0.0"


@pytest.mark.parametrize(
    ("existing", "new", "accepted"),
    [
        ("1.9.0", "1.10.0", True),
        ("1.10.0", "1.9.0", False),
        ("1.0.0-rc.1", "1.0.0", True),
        ("1.0.0", "1.0.0-rc.1", False),
        ("1.0.0-rc.2", "1.0.0-rc.10", True),
        ("1.0.0-alpha", "1.0.0-alpha.1", True),
        ("1.0.0-alpha.beta", "1.0.0-alpha.1", False),
        ("1.0.0", "1.0.0+build.5", False),  # build metadata carries no precedence
        ("2.0.0", "10.0.0", True),
    ],
)
def test_a_new_version_must_be_above_the_highest_by_semver_precedence(
    existing: str, new: str, accepted: bool
) -> None:
    reg = registry(wf("etl", existing))
    if accepted:
        register(reg, wf("etl", new))
        assert reg.describe("etl")["versions"] == [existing, new]
        return
    with pytest.raises(VersionNotNewer) as err:
        reg.plan_register(wf("etl", new), force=True, now=0.0)
    assert err.value.message == (
        f"etl@{new} is not newer than the highest registered version {existing}: "
        "a new version must be greater by SemVer precedence"
    )
    assert err.value.details == {"workflow": "etl", "version": new, "highest": existing}


def _oracle_key(version: str) -> tuple[Any, ...]:
    """SemVer 2.0.0 section 11, written out independently of semantic_version."""
    core, _, pre = version.split("+")[0].partition("-")
    major, minor, patch = (int(x) for x in core.split("."))
    if not pre:
        return (major, minor, patch, 1, ())
    idents = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (major, minor, patch, 0, idents)


_IDENT = st.one_of(st.integers(0, 12).map(str), st.sampled_from(["alpha", "beta", "rc", "x-1"]))
_VERSIONS = st.builds(
    lambda major, minor, patch, pre: (
        f"{major}.{minor}.{patch}" + (f"-{'.'.join(pre)}" if pre else "")
    ),
    st.integers(0, 3),
    st.integers(0, 12),
    st.integers(0, 12),
    st.lists(_IDENT, max_size=3),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_VERSIONS, min_size=1, max_size=30))
def test_registering_in_any_order_accepts_exactly_the_increasing_versions(
    versions: list[str],
) -> None:
    reg = Registry()
    accepted: list[str] = []
    for version in versions:
        spec = wf("etl", version)
        if version in accepted:
            assert reg.plan_register(spec, force=False, now=0.0).noop
            continue
        newer = not accepted or _oracle_key(version) > _oracle_key(accepted[-1])
        if newer:
            register(reg, spec)
            accepted.append(version)
        else:
            with pytest.raises(
                VersionNotNewer, match=re.escape(f"highest registered version {accepted[-1]}")
            ):
                reg.plan_register(spec, force=True, now=0.0)
    described = reg.describe("etl")
    assert described["versions"] == accepted
    releases = [v for v in accepted if "-" not in v]
    assert described["latest"] == described["version"] == (releases or accepted)[-1]


@settings(max_examples=100, deadline=None)
@given(st.lists(_VERSIONS, min_size=1, max_size=20, unique=True), st.randoms(use_true_random=False))
def test_loading_rows_in_any_order_sorts_versions_by_precedence(
    versions: list[str], rnd: random.Random
) -> None:
    rows = [Registry().plan_register(wf("etl", v), force=False, now=0.0).stored for v in versions]
    rnd.shuffle(rows)
    reg = Registry()
    reg.load(rows)
    expected = sorted(versions, key=_oracle_key)
    assert reg.describe("etl")["versions"] == expected
    releases = [v for v in expected if "-" not in v]
    assert reg.resolve("etl", None) == (releases or expected)[-1]


def test_latest_is_the_highest_release_and_a_pre_release_only_while_there_is_none() -> None:
    reg = registry(wf("etl", "1.0.0-rc.1"), wf("etl", "1.0.0-rc.2"))
    assert reg.resolve("etl", "latest") == "1.0.0-rc.2"  # no release yet: the highest
    register(reg, wf("etl", "1.0.0"))
    register(reg, wf("etl", "1.1.0"))
    register(reg, wf("etl", "2.0.0-rc.1"))  # registered to be tried
    for wanted in ("latest", "", None):
        assert reg.resolve("etl", wanted) == "1.1.0"
    assert reg.resolve("etl", "2.0.0-rc.1") == "2.0.0-rc.1"
    described = reg.describe("etl")
    assert (described["version"], described["latest"]) == ("1.1.0", "1.1.0")
    assert described["versions"][-1] == "2.0.0-rc.1"
    assert [(s["version"], s["versions"][-1]) for s in reg.summaries()[0]] == [
        ("1.1.0", "2.0.0-rc.1")
    ]
    # above the pre-release, as before: the rule is by the highest registered version
    with pytest.raises(VersionNotNewer, match=re.escape("highest registered version 2.0.0-rc.1")):
        reg.plan_register(wf("etl", "1.2.0"), force=False, now=0.0)
    register(reg, wf("etl", "2.0.0"))
    assert reg.resolve("etl", "latest") == "2.0.0"


def test_a_reference_to_latest_takes_the_release_over_a_pre_release_above_it() -> None:
    reg = registry(
        wf("lib", "1.0.0"), wf("lib", "2.0.0-beta.1"), wf("app", "1.0.0", ("lib", "latest"))
    )
    assert reg.pin_versions("app", "1.0.0") == {"lib@latest": "1.0.0"}


def test_plan_register_changes_nothing_when_refused() -> None:
    reg = registry(wf("etl", "2.0.0"))
    with pytest.raises(VersionNotNewer):
        reg.plan_register(wf("etl", "1.0.0"), force=False, now=0.0)
    reg.plan_register(wf("etl", "3.0.0"), force=False, now=0.0)  # planned, never applied
    assert reg.describe("etl")["versions"] == ["2.0.0"]


# -- ranges -----------------------------------------------------------------------------------


@pytest.fixture
def ranged() -> Registry:
    return registry(
        *(
            wf("lib", v)
            for v in ("1.0.0", "1.2.0", "1.2.5", "1.3.0", "1.4.0-rc.1", "2.0.0", "2.1.0-beta")
        )
    )


@pytest.mark.parametrize(
    ("wanted", "resolved"),
    [
        ("^1.2", "1.3.0"),
        ("~1.2.3", "1.2.5"),
        ("~1.2", "1.2.5"),
        (">=1 <2", "1.3.0"),
        ("1.x", "1.3.0"),
        ("^1.4.0-rc.1", "1.4.0-rc.1"),
        ("^2", "2.0.0"),
        # the highest release: 2.1.0-beta is run only when asked for
        ("latest", "2.0.0"),
        ("", "2.0.0"),
        (None, "2.0.0"),
        ("2.1.0-beta", "2.1.0-beta"),
        (">=2.1.0-beta", "2.1.0-beta"),
        ("1.2.0", "1.2.0"),
        ("=1.2.0", "1.2.0"),
        ("<1.2", "1.0.0"),
        ("^1.0 || ^2.0", "2.0.0"),
    ],
)
def test_ranges_resolve_to_the_highest_matching_version(
    ranged: Registry, wanted: str | None, resolved: str
) -> None:
    assert ranged.resolve("lib", wanted) == resolved
    assert ranged.resolve_spec("lib", wanted).version == resolved


def test_an_exact_version_matches_only_itself(ranged: Registry) -> None:
    with pytest.raises(NoMatchingVersion) as err:
        ranged.resolve("lib", "1.2.1")
    assert err.value.message == (
        "no version of lib matches '1.2.1' (registered: 1.0.0, 1.2.0, 1.2.5, 1.3.0, "
        "1.4.0-rc.1, 2.0.0, 2.1.0-beta)"
    )


@pytest.fixture
def built() -> Registry:
    return registry(
        *(wf("lib", v) for v in ("1.0.0", "1.2.0+b1", "1.3.0-rc.1+x.7", "1.3.0", "2.0.0+2026"))
    )


@pytest.mark.parametrize(
    ("wanted", "resolved"),
    [
        ("1.2.0", "1.2.0+b1"),  # npm and SemVer ignore build metadata when matching
        (" 1.2.0 ", "1.2.0+b1"),
        ("=1.2.0", "1.2.0+b1"),
        ("1.2.0+b1", "1.2.0+b1"),
        ("=1.2.0+b1", "1.2.0+b1"),
        ("1.3.0-rc.1", "1.3.0-rc.1+x.7"),
        ("1.3.0", "1.3.0"),
        ("2.0.0", "2.0.0+2026"),
    ],
)
def test_a_bare_version_matches_whatever_the_build_metadata(
    built: Registry, wanted: str, resolved: str
) -> None:
    assert built.resolve("lib", wanted) == resolved
    assert built.resolve_spec("lib", wanted).version == resolved
    assert built.describe("lib", wanted)["version"] == resolved


@pytest.mark.parametrize("wanted", ["1.2.0+b2", "1.2.0+B1", "1.3.0+x.7", "1.3.0-rc.1+x.8"])
def test_a_version_that_names_a_build_matches_only_that_build(built: Registry, wanted: str) -> None:
    with pytest.raises(NoMatchingVersion, match=re.escape(f"no version of lib matches {wanted!r}")):
        built.resolve("lib", wanted)


def test_a_sub_workflow_reference_to_a_bare_version_meets_its_build(built: Registry) -> None:
    register(built, wf("app", "1.0.0", ("lib", "1.2.0")))
    assert built.pin_versions("app", "1.0.0") == {"lib@1.2.0": "1.2.0+b1"}
    assert built.describe("app")["references"] == [
        {"node": "use_0", "workflow": "lib", "range": "1.2.0", "resolves_to": "1.2.0+b1"}
    ]
    # the range holds only that version: a newer lib leaves app behind
    with pytest.raises(DependentsOutOfRange, match=re.escape("app@1.0.0 (needs 1.2.0)")):
        built.plan_register(wf("lib", "2.0.1"), force=False, now=0.0)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("1.2.0+b1", "1.2.0+b2"),
        ("1.2.0+b2", "1.2.0+b1"),
        ("1.2.0+b1", "1.2.0"),
        ("1.2.0", "1.2.0+b1"),
    ],
)
def test_a_second_build_of_a_version_is_not_newer(first: str, second: str) -> None:
    # so a bare version can find at most one registered build
    reg = registry(wf("lib", first))
    with pytest.raises(VersionNotNewer, match=re.escape(f"highest registered version {first}")):
        reg.plan_register(wf("lib", second), force=True, now=0.0)


def _rows(*versions: str) -> list[StoredVersion]:
    return [Registry().plan_register(wf("lib", v), force=False, now=0.0).stored for v in versions]


@pytest.mark.parametrize(
    ("stored", "wanted", "resolved"),
    [
        (("1.2.0+b2", "1.2.0", "1.2.0+b1"), "1.2.0", "1.2.0"),  # the very text first
        (("1.2.0+b2", "1.2.0", "1.2.0+b1"), "1.2.0+b1", "1.2.0+b1"),
        (("1.2.0+b2", "1.2.0", "1.2.0+b1"), "=1.2.0", "1.2.0+b2"),
        (("1.2.0+b2", "1.2.0+b1"), "1.2.0", "1.2.0+b2"),  # else the last in order, as =1.2.0
        (("1.2.0+b2", "1.2.0+b1"), "1.2.0+b1", "1.2.0+b1"),
    ],
)
def test_builds_stored_before_the_precedence_rule_resolve_the_text_asked_for_first(
    stored: tuple[str, ...], wanted: str, resolved: str
) -> None:
    reg = Registry()
    reg.load(_rows(*stored))
    assert reg.resolve("lib", wanted) == resolved
    assert reg.resolve_spec("lib", wanted).version == resolved


def test_a_range_nothing_meets_names_the_workflow_range_and_versions(ranged: Registry) -> None:
    with pytest.raises(NoMatchingVersion) as err:
        ranged.resolve("lib", "^3")
    assert isinstance(err.value, NotFound)
    assert "no version of lib matches '^3' (registered: 1.0.0," in err.value.message
    assert err.value.details["range"] == "^3"


def test_a_long_history_is_shortened_in_messages() -> None:
    reg = registry(*(wf("lib", f"1.{i}.0") for i in range(15)))
    with pytest.raises(NoMatchingVersion) as err:
        reg.resolve("lib", "^2")
    assert err.value.message == (
        "no version of lib matches '^2' (registered: 1.5.0, 1.6.0, 1.7.0, 1.8.0, 1.9.0, 1.10.0, "
        "1.11.0, 1.12.0, 1.13.0, 1.14.0 and 5 older)"
    )


@pytest.mark.parametrize("bad", ["^^1", "newest", "1.2.3.4", ">=", "01.2.3"])
def test_a_range_that_does_not_parse_is_invalid_and_wraps_the_library_error(
    ranged: Registry, bad: str
) -> None:
    with pytest.raises(InvalidRange) as err:
        ranged.resolve("lib", bad)
    assert err.value.message.startswith(f"version range {bad!r} for lib does not parse: ")
    assert isinstance(err.value.__cause__, ValueError)


def test_a_range_longer_than_a_version_may_be_is_refused_by_its_length() -> None:
    text = " || ".join(["1.0.0"] * 60)  # it would parse, and match
    with pytest.raises(InvalidRange) as err:
        registry(wf("lib", "1.0.0")).resolve("lib", text)
    assert err.value.message == (
        f"version range {text[:60]!r}... ({len(text)} characters) for lib does not parse: "
        "longer than 256 characters"
    )


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12))
def test_any_range_text_resolves_or_raises_our_own_errors(text: str) -> None:
    reg = registry(wf("lib", "1.0.0"), wf("lib", "2.0.0"))
    try:
        assert reg.resolve("lib", text) in ("1.0.0", "2.0.0")
    except (InvalidRange, NoMatchingVersion):
        pass


def test_unknown_workflows_and_versions_are_not_found(ranged: Registry) -> None:
    for call in (
        lambda: ranged.resolve("nope", "^1"),
        lambda: ranged.resolve_spec("nope", None),
        lambda: ranged.describe("nope"),
        lambda: ranged.pin_versions("nope", "1.0.0"),
        lambda: ranged.spec_json("nope", "1.0.0"),
    ):
        with pytest.raises(NotFound, match=r"^workflow 'nope' is not registered$"):
            call()
    for call in (
        lambda: ranged.spec_json("lib", "9.9.9"),
        lambda: ranged.pin_versions("lib", "9.9.9"),
    ):
        with pytest.raises(
            NotFound, match=re.escape("workflow lib has no version '9.9.9' (registered: 1.0.0,")
        ):
            call()
    with pytest.raises(NotFound, match=re.escape("no version of lib matches '9.9.9'")):
        ranged.describe("lib", "9.9.9")
    assert ranged.spec_json("lib", "1.2.0") == canonical_json(wf("lib", "1.2.0").document)
    assert ranged.dependents("nope") == []


# -- references ---------------------------------------------------------------------------------


def test_a_reference_must_name_a_registered_workflow() -> None:
    with pytest.raises(NoMatchingVersion) as err:
        Registry().plan_register(wf("app", "1.0.0", ("lib", "^1.0")), force=True, now=0.0)
    assert (
        err.value.message
        == "node 'use_0' of app@1.0.0 uses workflow lib (^1.0), which is not registered"
    )
    assert err.value.details == {"node": "use_0", "workflow": "lib", "range": "^1.0"}


def test_a_reference_must_match_a_registered_version() -> None:
    reg = registry(wf("lib", "1.0.0"), wf("lib", "1.5.0"))
    with pytest.raises(NoMatchingVersion) as err:
        reg.plan_register(wf("app", "1.0.0", ("lib", "^1.0"), ("lib", "~2.0")), force=True, now=0.0)
    assert err.value.message == (
        "node 'use_1' of app@1.0.0: no version of lib matches '~2.0' (registered: 1.0.0, 1.5.0)"
    )


def test_every_unmet_reference_is_told_at_once() -> None:
    reg = registry(wf("lib", "1.0.0"))
    spec = wf("app", "1.0.0", ("lib", "^1.0"), ("lib", "^2"), ("gone", "*"))
    with pytest.raises(NoMatchingVersion) as err:
        reg.plan_register(spec, force=True, now=0.0)
    assert err.value.message == (
        "2 sub-workflow references of app@1.0.0 cannot be met: node 'use_1' of app@1.0.0: "
        "no version of lib matches '^2' (registered: 1.0.0); node 'use_2' of app@1.0.0 uses "
        "workflow gone (*), which is not registered"
    )
    problems = err.value.details["problems"]
    assert isinstance(problems, list)
    assert [(p["node"], p["workflow"]) for p in problems] == [("use_1", "lib"), ("use_2", "gone")]  # type: ignore[index, call-overload]


def test_a_reference_range_must_parse() -> None:
    reg = registry(wf("lib", "1.0.0"))
    with pytest.raises(InvalidRange) as err:
        reg.plan_register(wf("app", "1.0.0", ("lib", "^^1")), force=True, now=0.0)
    assert err.value.message.startswith(
        "version range '^^1' in node 'use_0' of app@1.0.0 (workflow lib) does not parse: "
    )
    assert err.value.details == {"node": "use_0", "workflow": "lib", "range": "^^1"}
    assert isinstance(err.value.__cause__, ValueError)


# -- cycles ---------------------------------------------------------------------------------------


def test_a_workflow_cannot_use_itself() -> None:
    for reg in (Registry(), registry(wf("loop", "1.0.0"))):
        with pytest.raises(WorkflowCycle) as err:
            reg.plan_register(wf("loop", "2.0.0", ("loop", "^1")), force=True, now=0.0)
        assert err.value.message == (
            "loop@2.0.0 would use itself: node 'use_0' runs workflow loop (loop -> loop)"
        )
        assert err.value.details["cycle"] == ["loop", "loop"]


def test_a_two_step_cycle_is_refused() -> None:
    reg = registry(wf("b", "1.0.0"), wf("a", "1.0.0", ("b", "latest")))
    with pytest.raises(WorkflowCycle) as err:
        reg.plan_register(wf("b", "1.1.0", ("a", "^1")), force=True, now=0.0)
    assert err.value.message == "b@1.1.0 would close a cycle of sub-workflows: b -> a -> b"
    assert err.value.details["cycle"] == ["b", "a", "b"]


def test_a_three_step_cycle_is_refused() -> None:
    reg = registry(wf("c", "1.0.0"), wf("b", "1.0.0", ("c", "^1")), wf("a", "1.0.0", ("b", "^1")))
    with pytest.raises(
        WorkflowCycle,
        match=re.escape("c@1.1.0 would close a cycle of sub-workflows: c -> a -> b -> c"),
    ):
        reg.plan_register(wf("c", "1.1.0", ("a", "^1")), force=True, now=0.0)


def test_a_cycle_through_an_older_version_a_range_reaches_is_refused() -> None:
    # the latest versions are free of cycles, yet b@2 -> a@1 (^1) -> b latest = b@2 would loop
    reg = registry(wf("b", "1.0.0"), wf("a", "1.0.0", ("b", "latest")), wf("a", "2.0.0"))
    with pytest.raises(WorkflowCycle) as err:
        reg.plan_register(wf("b", "2.0.0", ("a", "^1")), force=True, now=0.0)
    assert err.value.message == (
        "b@2.0.0 would close a cycle of sub-workflows: b@2.0.0 -> a@1.0.0 -> b@2.0.0"
    )


def test_shared_sub_workflows_are_not_cycles() -> None:
    # a diamond: app uses left and right, and all three use base
    reg = registry(
        wf("base", "1.0.0"),
        wf("left", "1.0.0", ("base", "^1")),
        wf("right", "1.0.0", ("base", "^1")),
        wf("app", "1.0.0", ("left", "^1"), ("right", "^1"), ("base", "1.0.0")),
    )
    register(reg, wf("wrap", "1.0.0", ("app", "^1")))
    register(reg, wf("base", "1.1.0"), force=True)  # app pins base to exactly 1.0.0
    assert reg.pin_versions("wrap", "1.0.0") == {
        "app@^1": "1.0.0",
        "left@^1": "1.0.0",
        "right@^1": "1.0.0",
        "base@^1": "1.1.0",
        "base@1.0.0": "1.0.0",
    }


class CountingUses(dict[str, Any]):
    """What each workflow's latest version references, counting the look-ups."""

    def __init__(self, uses: dict[str, Any]) -> None:
        super().__init__(uses)
        self.reads: Counter[str] = Counter()

    def get(self, key: str, default: Any = None) -> Any:
        self.reads[key] += 1
        return super().get(key, default)


def test_cycle_searches_read_each_workflow_once_however_many_paths_reach_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a ladder of diamonds: both workflows of each level use both of the next, so 2**levels
    # paths lead to the bottom
    levels = 10
    reg = registry(wf(f"l{levels}a", "1.0.0"), wf(f"l{levels}b", "1.0.0"))
    for k in range(levels - 1, -1, -1):
        for side in "ab":
            register(reg, wf(f"l{k}{side}", "1.0.0", (f"l{k + 1}a", "^1"), (f"l{k + 1}b", "^1")))
    ladder = [f"l{k}{side}" for k in range(levels + 1) for side in "ab"]
    uses = CountingUses(reg._uses)
    refs_read: Counter[tuple[str, str]] = Counter()
    refs = reg._refs

    def counting_refs(workflow: Any, version: str) -> Any:
        refs_read[(workflow.id, version)] += 1
        return refs(workflow, version)

    monkeypatch.setattr(reg, "_uses", uses)
    monkeypatch.setattr(reg, "_refs", counting_refs)
    reg.plan_register(wf("top", "1.0.0", ("l0a", "^1"), ("l0b", "^1")), force=False, now=0.0)
    assert uses.reads == Counter(ladder)
    assert refs_read == Counter((name, "1.0.0") for name in ladder)


# -- dependents -----------------------------------------------------------------------------------


@pytest.fixture
def used() -> Registry:
    return registry(
        wf("enrich", "1.0.0"),
        wf("pipeline", "1.2.0", ("enrich", "^1.0")),
        wf("report", "3.0.0", ("enrich", "~1.0"), ("enrich", "latest")),
        wf("other", "1.0.0"),
    )


def test_dependents_are_the_latest_versions_that_reference_a_workflow(used: Registry) -> None:
    assert used.dependents("enrich") == ["pipeline@1.2.0", "report@3.0.0"]
    register(used, wf("pipeline", "1.3.0", ("other", "^1")))
    assert used.dependents("enrich") == ["report@3.0.0"]
    assert used.dependents("other") == ["pipeline@1.3.0"]
    register(used, wf("pipeline", "1.4.0"))
    assert used.dependents("other") == []


def test_a_version_inside_every_dependent_range_is_accepted(used: Registry) -> None:
    plan = register(used, wf("enrich", "1.0.1"))
    assert plan.forced_past == ()
    assert used.resolve("enrich", "~1.0") == "1.0.1"


def test_a_version_outside_dependent_ranges_is_refused_naming_each(used: Registry) -> None:
    with pytest.raises(DependentsOutOfRange) as err:
        used.plan_register(wf("enrich", "2.0.0"), force=False, now=0.0)
    assert err.value.message == (
        "enrich@2.0.0 is outside the range of its dependents: pipeline@1.2.0 (needs ^1.0), "
        "report@3.0.0 (needs ~1.0); register with force to override"
    )
    assert err.value.details["dependents"] == [
        {"workflow": "pipeline@1.2.0", "range": "^1.0"},
        {"workflow": "report@3.0.0", "range": "~1.0"},
    ]
    assert used.resolve("enrich", None) == "1.0.0"


def test_a_minor_step_is_refused_only_by_the_tighter_range(used: Registry) -> None:
    with pytest.raises(DependentsOutOfRange) as err:
        used.plan_register(wf("enrich", "1.1.0"), force=False, now=0.0)
    assert err.value.message == (
        "enrich@1.1.0 is outside the range of its dependents: report@3.0.0 (needs ~1.0); "
        "register with force to override"
    )


def test_force_registers_past_dependents_and_they_keep_resolving_in_range(used: Registry) -> None:
    plan = register(used, wf("enrich", "2.0.0"), force=True)
    assert plan.forced_past == ("pipeline@1.2.0 (needs ^1.0)", "report@3.0.0 (needs ~1.0)")
    assert used.resolve("enrich", None) == "2.0.0"
    assert used.pin_versions("pipeline", "1.2.0") == {"enrich@^1.0": "1.0.0"}
    assert used.pin_versions("report", "3.0.0") == {
        "enrich@~1.0": "1.0.0",
        "enrich@latest": "2.0.0",
    }


def test_an_exact_dependent_range_refuses_any_new_version() -> None:
    reg = registry(wf("lib", "1.0.0"), wf("app", "1.0.0", ("lib", "1.0.0")))
    with pytest.raises(DependentsOutOfRange, match=re.escape("app@1.0.0 (needs 1.0.0)")):
        reg.plan_register(wf("lib", "1.0.1"), force=False, now=0.0)


# -- pinning --------------------------------------------------------------------------------------


def test_pin_versions_follows_references_transitively() -> None:
    reg = registry(
        wf("c", "1.0.0"),
        wf("c", "1.0.3"),
        wf("b", "1.0.0", ("c", "~1.0")),
        wf("b", "1.1.0", ("c", "~1.0"), ("c", "1.0.0")),
        wf("a", "1.0.0", ("b", "^1")),
        wf("top", "1.0.0", ("a", "latest"), ("b", "1.0.0")),
    )
    assert reg.pin_versions("top", "1.0.0") == {
        "a@latest": "1.0.0",
        "b@1.0.0": "1.0.0",
        "b@^1": "1.1.0",
        "c@~1.0": "1.0.3",
        "c@1.0.0": "1.0.0",
    }
    assert reg.pin_versions("c", "1.0.3") == {}
    # resolution is now: a newer c changes what a new run pins
    register(reg, wf("c", "1.0.4"), force=True)  # b@1.1.0 holds c at exactly 1.0.0
    assert reg.pin_versions("a", "1.0.0")["c@~1.0"] == "1.0.4"


def test_pin_versions_of_an_older_version_uses_that_version_references() -> None:
    reg = registry(wf("lib", "1.0.0"), wf("app", "1.0.0", ("lib", "^1")), wf("app", "2.0.0"))
    assert reg.pin_versions("app", "1.0.0") == {"lib@^1": "1.0.0"}
    assert reg.pin_versions("app", "2.0.0") == {}


# -- views ----------------------------------------------------------------------------------------


def test_describe_shows_one_version_with_its_workflow_history(used: Registry) -> None:
    register(
        used,
        wf("pipeline", "1.3.0", ("enrich", "^1.0"), ("other", "^1"), name="Pipeline"),
        now=1_700_000_000.25,
    )
    described = used.describe("pipeline")
    described_spec = json.loads(json.dumps(described["spec"]))
    assert described == {
        "id": "pipeline",
        "version": "1.3.0",
        "name": "Pipeline",
        "spec": wf(
            "pipeline", "1.3.0", ("enrich", "^1.0"), ("other", "^1"), name="Pipeline"
        ).document,
        "created_at": "2023-11-14T22:13:20.250Z",
        "versions": ["1.2.0", "1.3.0"],
        "latest": "1.3.0",
        "dependents": [],
        "references": [
            {"node": "use_0", "workflow": "enrich", "range": "^1.0", "resolves_to": "1.0.0"},
            {"node": "use_1", "workflow": "other", "range": "^1", "resolves_to": "1.0.0"},
        ],
    }
    older = used.describe("pipeline", "1.2.0")
    assert (older["version"], older["latest"], older["name"]) == ("1.2.0", "1.3.0", None)
    assert used.describe("pipeline", "~1.2.0")["version"] == "1.2.0"
    assert used.describe("enrich")["dependents"] == ["pipeline@1.3.0", "report@3.0.0"]
    # the document handed out is a copy
    assert isinstance(described["spec"], dict)
    described["spec"]["id"] = "changed"
    assert used.describe("pipeline")["spec"] == described_spec


def test_describe_shows_a_reference_that_no_longer_resolves_as_none() -> None:
    rows = [
        Registry().plan_register(wf("lib", "1.0.0"), force=False, now=0.0).stored,
        StoredVersion(
            "app", "1.0.0", canonical_json(wf("app", "1.0.0", ("lib", "^2")).document), "x", 0.0
        ),
    ]
    reg = Registry()
    reg.load(rows)
    refs = reg.describe("app")["references"]
    assert refs == [{"node": "use_0", "workflow": "lib", "range": "^2", "resolves_to": None}]
    with pytest.raises(NoMatchingVersion):
        reg.pin_versions("app", "1.0.0")


def test_summaries_list_each_workflow_latest_version_sorted_by_id(used: Registry) -> None:
    register(used, wf("enrich", "1.0.1", name="Enrich"), now=86_400.0)
    assert used.summaries()[0] == [
        {
            "id": "enrich",
            "version": "1.0.1",
            "name": "Enrich",
            "versions": ["1.0.0", "1.0.1"],
            "nodes": 1,
            "triggers": 0,
            "created_at": "1970-01-02T00:00:00.000Z",
            "dependents": ["pipeline@1.2.0", "report@3.0.0"],
        },
        {
            "id": "other",
            "version": "1.0.0",
            "name": None,
            "versions": ["1.0.0"],
            "nodes": 1,
            "triggers": 0,
            "created_at": "1970-01-01T00:00:00.000Z",
            "dependents": [],
        },
        {
            "id": "pipeline",
            "version": "1.2.0",
            "name": None,
            "versions": ["1.2.0"],
            "nodes": 2,
            "triggers": 0,
            "created_at": "1970-01-01T00:00:00.000Z",
            "dependents": [],
        },
        {
            "id": "report",
            "version": "3.0.0",
            "name": None,
            "versions": ["3.0.0"],
            "nodes": 3,
            "triggers": 0,
            "created_at": "1970-01-01T00:00:00.000Z",
            "dependents": [],
        },
    ]
    assert Registry().summaries()[0] == []


def test_loading_stored_rows_rebuilds_the_same_registry(used: Registry) -> None:
    register(used, wf("enrich", "2.0.0"), force=True)
    rows = [
        StoredVersion(wid, str(v), used.spec_json(wid, str(v)), "", 0.0)
        for wid in ("enrich", "pipeline", "report", "other")
        for v in list_of(used.describe(wid)["versions"])
    ]
    random.Random(7).shuffle(rows)
    again = Registry()
    again.load(rows)
    assert again.summaries()[0] == used.summaries()[0]
    assert again.describe("report") == used.describe("report")
    # the rules hold after a load as before it
    with pytest.raises(DependentsOutOfRange):
        again.plan_register(wf("enrich", "3.0.0"), force=False, now=0.0)
    with pytest.raises(WorkflowCycle):
        again.plan_register(wf("enrich", "3.0.0", ("pipeline", "^1")), force=True, now=0.0)
    # load replaces what was there
    again.load([])
    assert again.summaries()[0] == []


def test_a_stored_version_that_is_not_semver_is_reported() -> None:
    with pytest.raises(
        InvalidRange, match="stored workflow x has a version that is not SemVer: 'one'"
    ):
        Registry().load([StoredVersion("x", "one", "{}", "", 0.0)])


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.text(max_size=12), st.sampled_from(["^1.2", "~1.2.3", ">=1 <2", "1.x", "latest"]))
)
def test_the_spec_check_and_the_registry_agree_on_what_parses_as_a_range(text: str) -> None:
    reg = registry(wf("lib", "1.0.0"))
    try:
        reg.resolve("lib", text)
        parses = True
    except NoMatchingVersion:
        parses = True
    except InvalidRange:
        parses = False
    assert (version_range_problem(text) is None) == parses


def test_a_stored_latest_version_todays_checks_refuse_loads_and_its_runs_are_refused() -> None:
    # depends_on as one string passed the checks of its day; a registry that refused to load
    # it would keep the orchestrator from starting
    loose = {
        "id": "old",
        "version": "1.0.0",
        "nodes": [
            {"id": "a", "lua": "return 1"},
            {"id": "b", "lua": "return 2", "depends_on": "a"},
        ],
    }
    rows = [
        Registry().plan_register(wf("lib", "1.0.0"), force=False, now=0.0).stored,
        StoredVersion("old", "1.0.0", canonical_json(loose), "x", 0.0),
    ]
    reg = Registry()
    stale = reg.load(rows)
    assert stale == ["old@1.0.0: nodes[b].depends_on: must be a list of node ids"]
    assert reg.resolve("old", None) == "1.0.0"
    with pytest.raises(SpecError, match="must be a list of node ids"):
        reg.resolve_spec("old", "latest")
    register(reg, wf("lib", "1.1.0"))  # the rest of the registry works as before
    assert reg.resolve("lib", None) == "1.1.0"


# -- npm's ranges, exactly (the hunt against npm's semver 7.8.6; tests/unit/test_npm_ranges.py
# checks thousands more) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registered", "text", "picked"),
    [
        # before, semantic_version's NpmSpec took the pre-release in each of these
        (["1.0.0", "2.0.0-beta.1"], "<2.0.0", "1.0.0"),
        (["1.2.0", "1.3.0-rc.1"], "<=1.2", "1.2.0"),
        (["1.0.0-beta.2", "1.0.0"], "=1.0.0-beta.2", "1.0.0-beta.2"),
        (["1.0.0-beta", "1.0.0"], "<=1.0.0-beta", "1.0.0-beta"),
        (["1.0.0-alpha", "1.0.0-beta", "1.0.0-rc.1"], "1.0.0-alpha - 1.0.0-rc.1", "1.0.0-rc.1"),
        (["1.0.0-beta", "1.0.0-rc", "1.0.0"], ">=1.0.0-beta <1.0.0-rc", "1.0.0-beta"),
        (["1.0.0-beta.2", "1.0.0"], ">=1.0.0-beta.1 >=1.1.0", None),
        (["1.2.0-beta.2", "1.2.1"], "~1.2.0-beta.2", "1.2.1"),
        (["1.0.0-alpha", "1.0.0-rc.1"], ">=1.2.3 || <1.0.0", None),
    ],
)
def test_ranges_pick_what_npm_picks(registered: list[str], text: str, picked: str | None) -> None:
    reg = registry(*[wf("lib", v) for v in registered])
    if picked is None:
        with pytest.raises(NoMatchingVersion):
            reg.resolve("lib", text)
    else:
        assert reg.resolve("lib", text) == picked


def test_a_pre_release_above_a_dependents_upper_bound_is_outside_its_range() -> None:
    # before: <2.0.0 took 2.0.0-beta.1, so the dependent silently moved onto the pre-release
    reg = registry(wf("lib", "1.0.0"), wf("app", "1.0.0", ("lib", "<2.0.0")))
    with pytest.raises(DependentsOutOfRange, match=r"app@1\.0\.0 \(needs <2\.0\.0\)"):
        reg.plan_register(wf("lib", "2.0.0-beta.1"), force=False, now=0.0)
    # and a later patch a pre-release range takes is inside it (before: refused)
    reg = registry(wf("lib", "1.2.0-beta.2"), wf("app", "1.0.0", ("lib", "~1.2.0-beta.2")))
    assert not register(reg, wf("lib", "1.2.1")).forced_past
    assert reg.resolve("lib", "~1.2.0-beta.2") == "1.2.1"


@pytest.mark.parametrize(
    ("text", "picked"),
    [
        (">= 1.2.0", "1.3.0"),
        ("< 1.3.0", "1.2.0"),
        ("^ 1.2.0", "1.3.0"),
        ("~>1.2", "1.2.0"),
        ("~> 1.2", "1.2.0"),
        ("=v1.2.0", "1.2.0"),
        ("^*", "1.3.0"),
        ("~*", "1.3.0"),
        (">=*", "1.3.0"),
    ],
)
def test_ranges_npm_reads_are_read(text: str, picked: str) -> None:
    # before: each was refused as no range
    reg = registry(wf("lib", "1.2.0"), wf("lib", "1.3.0"))
    assert reg.resolve("lib", text) == picked


@pytest.mark.parametrize(
    ("text", "why"),
    [
        # before: the first two were *, the next two =1.0.0, the last "too many values to
        # unpack (expected 2)"
        ("x.1.2", "'x.1.2' is not a version, a partial one (1.2, 1.x) or a comparator"),
        ("1.x.3", "'1.x.3' is not a version"),
        ("1.0.0-", "'1.0.0-' is not a version"),
        ("1.0.0+", "'1.0.0+' is not a version"),
        ("1.0.0 - 1.0.0 - 2", "'-' is not a version"),
        ("^9007199254740992", "9007199254740992 in '>=9007199254740992.0.0' is above"),
    ],
)
def test_ranges_npm_refuses_are_refused_naming_the_range(text: str, why: str) -> None:
    reg = registry(wf("lib", "1.0.0"))
    with pytest.raises(InvalidRange) as err:
        reg.resolve("lib", text)
    assert err.value.message.startswith(f"version range {text!r} for lib does not parse: {why}")
    assert err.value.details == {"workflow": "lib", "range": text}


# -- bounded refusals -------------------------------------------------------------------------


def test_no_matching_version_names_ten_and_lists_fifty_of_thousands() -> None:
    rows = [
        Registry().plan_register(wf("lib", f"1.{k // 100}.{k % 100}"), force=False, now=0.0).stored
        for k in range(2000)
    ]
    reg = Registry()
    reg.load(rows)
    with pytest.raises(NoMatchingVersion) as err:
        reg.resolve("lib", "^2")
    details = err.value.details
    # before: every one of the 2,000, a body of 21 KB
    assert details["versions"] == [f"1.19.{k}" for k in range(50, 100)]
    assert details["versions_total"] == 2000
    assert details["workflow"] == "lib" and details["range"] == "^2"
    assert err.value.message.endswith("1.19.98, 1.19.99 and 1990 older)")
    assert len(json.dumps(details)) < 1000


def test_dependents_out_of_range_names_ten_and_lists_fifty_of_many() -> None:
    reg = registry(wf("lib", "1.0.0"))
    for k in range(160):
        register(reg, wf(f"app{k:03}", "1.0.0", ("lib", "^1")))
    with pytest.raises(DependentsOutOfRange) as err:
        reg.plan_register(wf("lib", "2.0.0"), force=False, now=0.0)
    message = err.value.message
    # before: all 160 in the message (4,341 characters) and in the details
    assert message == (
        "lib@2.0.0 is outside the range of its dependents: "
        + ", ".join(f"app{k:03}@1.0.0 (needs ^1)" for k in range(10))
        + " and 150 more; register with force to override"
    )
    details = err.value.details
    assert details["dependents"] == [
        {"workflow": f"app{k:03}@1.0.0", "range": "^1"} for k in range(50)
    ]
    assert details["dependents_total"] == 160
    # force still names every one it leaves behind
    assert len(register(reg, wf("lib", "2.0.0"), force=True).forced_past) == 160


# -- depth ----------------------------------------------------------------------------------------


def chain(reg: Registry, length: int, prefix: str = "c") -> None:
    """``prefix0`` -> ``prefix1`` -> ... -> ``prefix<length>``: ``length`` levels of nesting."""
    register(reg, wf(f"{prefix}{length}", "1.0.0"))
    for k in range(length - 1, -1, -1):
        register(reg, wf(f"{prefix}{k}", "1.0.0", (f"{prefix}{k + 1}", "^1")))


def test_a_version_whose_runs_would_nest_past_the_limit_is_refused_naming_the_chain() -> None:
    reg = Registry()
    chain(reg, 16)  # c0's runs nest 16 deep: allowed
    # before: registered, and every run of it failed at depth 17
    with pytest.raises(SubWorkflowsTooDeep) as err:
        reg.plan_register(wf("top", "1.0.0", ("c0", "^1")), force=False, now=0.0)
    steps = ["top@1.0.0", *[f"c{k}@1.0.0" for k in range(17)]]
    assert err.value.message == (
        "top@1.0.0 would nest sub-workflows 17 deep, past MAX_SUBWORKFLOW_DEPTH 16: a run of "
        "top@1.0.0 would fail at depth 17: " + " -> ".join(steps)
    )
    assert err.value.details == {
        "workflow": "top",
        "version": "1.0.0",
        "depth": 17,
        "limit": 16,
        "chain": steps,
        "chain_total": 18,
    }
    assert (SubWorkflowsTooDeep.http_status, SubWorkflowsTooDeep.code) == (
        409,
        "subworkflows_too_deep",
    )


def test_a_new_version_at_the_bottom_of_a_chain_is_refused_when_it_nests_one_more() -> None:
    reg = Registry()
    chain(reg, 16)
    register(reg, wf("leaf", "1.0.0"))
    # c16's new version would run one more level under c0's 16
    with pytest.raises(SubWorkflowsTooDeep, match=r"would nest sub-workflows 17 deep") as err:
        reg.plan_register(wf("c16", "1.1.0", ("leaf", "^1")), force=False, now=0.0)
    assert err.value.details["chain"][0] == "c0@1.0.0"
    assert err.value.details["chain"][-2:] == ["c16@1.1.0", "leaf@1.0.0"]
    # outside the ranges that lead to it, it nests nothing: 2.0.0 is not ^1
    register(reg, wf("c16", "2.0.0", ("leaf", "^1")), force=True)


def test_the_depth_counts_older_versions_a_run_can_still_name() -> None:
    reg = Registry()
    chain(reg, 15)
    register(reg, wf("c0", "2.0.0"))  # the latest c0 runs nothing
    register(reg, wf("root", "1.0.0", ("c0", "1.0.0")))  # but root runs c0@1.0.0 by name
    register(reg, wf("leaf", "1.0.0"))
    with pytest.raises(SubWorkflowsTooDeep, match=r"17 deep") as err:
        reg.plan_register(wf("c15", "1.1.0", ("leaf", "^1")), force=False, now=0.0)
    assert err.value.details["chain"][:2] == ["root@1.0.0", "c0@1.0.0"]


def test_the_depth_limit_is_the_registrys_and_a_long_chain_is_named_by_its_ends() -> None:
    deep = Registry(max_subworkflow_depth=100)
    chain(deep, 30)
    shallow = Registry(max_subworkflow_depth=3)
    shallow.load(
        StoredVersion(wid, version, row.spec_json, row.digest, 0.0)
        for wid, wfl in deep._workflows.items()
        for version, row in wfl.rows.items()
    )
    with pytest.raises(SubWorkflowsTooDeep) as err:
        shallow.plan_register(wf("top", "1.0.0", ("c0", "^1")), force=False, now=0.0)
    message = err.value.message
    assert message.startswith(
        "top@1.0.0 would nest sub-workflows 31 deep, past MAX_SUBWORKFLOW_DEPTH 3: a run of "
        "top@1.0.0 would fail at depth 4: top@1.0.0 -> c0@1.0.0 -> "
    )
    assert " -> c8@1.0.0 -> ... (12 more) -> c21@1.0.0 -> " in message
    assert message.endswith(" -> c30@1.0.0")
    assert len(err.value.details["chain"]) == 32
    # within the limit, as many levels as it allows
    register(Registry(max_subworkflow_depth=3), wf("x", "1.0.0"))
    small = Registry(max_subworkflow_depth=3)
    chain(small, 3, "s")
    with pytest.raises(SubWorkflowsTooDeep, match="4 deep"):
        small.plan_register(wf("s", "1.0.0", ("s0", "^1")), force=False, now=0.0)
