"""Our ranges against npm's own: every row of npm_ranges.json, which npm's ``semver`` wrote.

The fixture holds the ranges and versions of the hunt that found our ranges to differ from
npm's, its findings, and random ranges of every shape npm documents or refuses, each with
versions next to its bounds. semantic_version's NpmSpec, used before, agreed with npm on
10,659 of its 15,179 pairs and on 575 of its 876 ranges' being ranges at all.
Regenerate it with make_npm_ranges.js (its header says how); CI only reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.core.spec import SEMVER
from orchestrator.versions import _parse_range, _precedence

FIXTURE = Path(__file__).with_name("npm_ranges.json")


def fixture() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(FIXTURE.read_text())
    return loaded


def test_the_fixture_is_npms_and_large() -> None:
    data = fixture()
    assert data["semver"] == "7.8.6"
    pairs = sum(len(inside) + len(outside) for _, inside, outside in data["ranges"])
    assert pairs >= 5000, pairs
    assert len(data["refused"]) >= 50
    for _, inside, outside in data["ranges"]:
        for version in inside + outside:
            assert SEMVER.fullmatch(version), version


def test_every_version_is_in_the_ranges_npm_puts_it_in_and_no_other() -> None:
    wrong: list[str] = []
    for text, inside, outside in fixture()["ranges"]:
        parsed = _parse_range(text)
        wrong += [f"{text!r} should take {v}" for v in inside if not parsed.matches(v)]
        wrong += [f"{text!r} should not take {v}" for v in outside if parsed.matches(v)]
    assert wrong == []


def test_a_range_resolves_to_the_highest_version_npm_puts_in_it() -> None:
    wrong: list[str] = []
    for text, inside, outside in fixture()["ranges"]:
        keys = sorted((_precedence(v), v) for v in inside + outside)
        at = _parse_range(text).highest(keys)
        got = None if at is None else keys[at][1]
        want = max(inside, key=lambda v: (_precedence(v), v)) if inside else None
        if got != want:
            wrong.append(f"{text!r}: {got} where npm's highest is {want}")
    assert wrong == []


# a bare version always names that version, as pins and /versions/{v} do: npm refuses these
# only for a number past JavaScript's 2**53 - 1, which a registered version may carry
BARE_VERSIONS_NPM_REFUSES = {"9007199254740992.0.0"}


def test_every_range_npm_refuses_is_refused_saying_why() -> None:
    accepted: list[str] = []
    for text in fixture()["refused"]:
        if text in BARE_VERSIONS_NPM_REFUSES:
            assert SEMVER.fullmatch(text)
            continue
        try:
            _parse_range(text)
        except ValueError as exc:
            assert str(exc), text
            assert "unpack" not in str(exc), (text, str(exc))
        else:
            accepted.append(text)
    assert accepted == []


@pytest.mark.parametrize(
    ("text", "inside", "outside"),
    [
        # npm's rule for pre-releases: only those on a [major, minor, patch] a comparator of
        # the same set names with a pre-release
        ("<2.0.0", ["1.0.0"], ["2.0.0-beta.1"]),
        ("<=1.2", ["1.2.0"], ["1.3.0-rc.1"]),
        ("^1.2.3-beta.2", ["1.2.3-beta.3", "1.2.3", "1.9.0"], ["1.2.4-beta.1", "1.2.3-beta.1"]),
        ("~1.2.0-beta.2", ["1.2.1", "1.2.0-beta.3"], ["1.2.1-beta.2", "1.3.0"]),
        (">=1.0.0-beta <1.0.0-rc", ["1.0.0-beta", "1.0.0-beta.9"], ["1.0.0-rc", "1.0.0"]),
        (">=1.2.3 || <1.0.0", ["1.2.3", "0.9.0"], ["1.0.0-alpha", "1.0.0-rc.1", "1.2.2"]),
        # a set of only * makes the whole range *, which takes no pre-release
        ("* || >=1.0.0-0", ["1.0.0", "0.0.1"], ["1.0.0-alpha"]),
    ],
)
def test_npms_pre_release_rule(text: str, inside: list[str], outside: list[str]) -> None:
    parsed = _parse_range(text)
    assert [v for v in inside if not parsed.matches(v)] == []
    assert [v for v in outside if parsed.matches(v)] == []
