"""Engine choice: the bounded-load hash ring, round-robin and least-loaded."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.ring import (
    Balancer,
    ConsistentHash,
    LeastLoaded,
    RoundRobin,
    load_bound,
    make_balancer,
)

KEYS = [f"workflow-{i}" for i in range(1000)]


def balancer(kind: Any, engines: list[str]) -> Balancer:
    chosen = make_balancer(kind)
    for engine in engines:
        chosen.add(engine)
    return chosen


def idle(engines: list[str], capacity: int = 10) -> tuple[dict[str, int], dict[str, int]]:
    return dict.fromkeys(engines, 0), dict.fromkeys(engines, capacity)


def test_make_balancer_builds_each_kind() -> None:
    assert isinstance(make_balancer("consistent-hash"), ConsistentHash)
    assert isinstance(make_balancer("round-robin"), RoundRobin)
    assert isinstance(make_balancer("least-loaded"), LeastLoaded)
    with pytest.raises(ValueError, match="unknown load balancer 'random'"):
        make_balancer("random")  # type: ignore[arg-type]


def test_the_bound_is_a_quarter_above_the_average_counting_the_new_run() -> None:
    assert load_bound(0, 4) == 1  # ceil(1.25 * 1 / 4)
    assert load_bound(11, 2) == 8  # ceil(1.25 * 12 / 2) = ceil(7.5)
    assert load_bound(15, 4) == 5  # exactly 5.0 stays 5
    assert load_bound(99, 10) == 13  # ceil(12.5)


# -- consistent hash ----------------------------------------------------------------------------


@st.composite
def fleets(draw: st.DrawFn) -> tuple[dict[str, int], dict[str, int], list[str]]:
    n = draw(st.integers(1, 8))
    engines = [f"engine-{i}" for i in range(n)]
    capacities = {e: draw(st.integers(0, 12)) for e in engines}
    loads = {e: draw(st.integers(0, 15)) for e in engines}
    # some engines are in the ring but not ready (absent from loads), some ready but not added
    added = [e for e in engines if draw(st.booleans()) or e == engines[0]]
    for e in engines:
        if draw(st.integers(0, 3)) == 0:
            del loads[e]
    return loads, capacities, added


@settings(max_examples=500, deadline=None)
@given(fleets(), st.text(max_size=20))
def test_the_ring_never_places_a_run_past_the_bound_or_a_capacity(
    fleet: tuple[dict[str, int], dict[str, int], list[str]], key: str
) -> None:
    loads, capacities, added = fleet
    ring = balancer("consistent-hash", added)
    chosen = ring.pick(key, loads, capacities)
    candidates = [e for e in added if e in loads]
    roomy = [e for e in candidates if loads[e] < capacities[e]]
    if not roomy:
        assert chosen is None
        return
    assert chosen in roomy
    bound = math.ceil(1.25 * (sum(loads[e] for e in candidates) + 1) / len(candidates))
    # above the bound only when every engine with room is: a spill beats leaving the run queued
    assert loads[chosen] < bound or all(loads[e] >= bound for e in roomy)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 5),
    st.lists(st.sampled_from(KEYS[:50]), min_size=1, max_size=200),
)
def test_placing_runs_one_by_one_keeps_every_engine_within_the_bound(
    n: int, capacity: int, keys: list[str]
) -> None:
    engines = [f"engine-{i}" for i in range(n)]
    ring = balancer("consistent-hash", engines)
    loads, capacities = idle(engines, capacity)
    for key in keys:
        total = sum(loads.values())
        chosen = ring.pick(key, loads, capacities)
        if total >= n * capacity:
            assert chosen is None
            continue
        assert chosen is not None
        loads[chosen] += 1
        assert loads[chosen] <= capacity
        assert loads[chosen] <= math.ceil(1.25 * (total + 1) / n)


def test_the_same_key_goes_to_the_same_engine_while_loads_are_zero() -> None:
    engines = [f"engine-{i}" for i in range(5)]
    ring = balancer("consistent-hash", engines)
    again = balancer("consistent-hash", list(reversed(engines)))
    loads, capacities = idle(engines)
    first = {k: ring.pick(k, loads, capacities) for k in KEYS}
    assert first == {k: ring.pick(k, loads, capacities) for k in KEYS}
    # the ring depends on the engines, not on the order they joined
    assert first == {k: again.pick(k, loads, capacities) for k in KEYS}
    # and every engine gets a fair share: 200 each on average
    shares = [list(first.values()).count(e) for e in engines]
    assert min(shares) > 100 and max(shares) < 300, shares


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_adding_or_removing_one_engine_moves_about_one_nth_of_keys(n: int) -> None:
    engines = [f"10.0.0.{i}:50051" for i in range(n)]
    ring = balancer("consistent-hash", engines)
    loads, capacities = idle([*engines, "new"])
    before = {k: ring.pick(k, loads, capacities) for k in KEYS}
    ring.add("new")
    after = {k: ring.pick(k, loads, capacities) for k in KEYS}
    moved = [k for k in KEYS if before[k] != after[k]]
    assert len(moved) <= 2 * len(KEYS) / (n + 1)
    # keys only move to the new engine, never between old ones
    assert all(after[k] == "new" for k in moved)
    ring.remove("new")
    assert {k: ring.pick(k, loads, capacities) for k in KEYS} == before
    ring.remove(engines[0])
    gone = {k: ring.pick(k, loads, capacities) for k in KEYS}
    assert all(gone[k] == before[k] for k in KEYS if before[k] != engines[0])


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 12), st.integers(0, 2**32))
def test_ring_stability_for_any_fleet_size_and_names(n: int, salt: int) -> None:
    engines = [f"engine-{salt}-{i}" for i in range(n)]
    ring = balancer("consistent-hash", engines[:-1])
    loads, capacities = idle(engines)
    before = {k: ring.pick(k, loads, capacities) for k in KEYS[:300]}
    ring.add(engines[-1])
    moved = sum(before[k] != ring.pick(k, loads, capacities) for k in before)
    assert moved <= 2 * len(before) / n


def test_a_hot_key_spills_to_the_next_engines_on_its_ring_walk() -> None:
    engines = ["a", "b", "c", "d"]
    ring = balancer("consistent-hash", engines)
    loads, capacities = idle(engines, capacity=100)
    home = ring.pick("hot", loads, capacities)
    assert home is not None
    placed = []
    for _ in range(40):
        chosen = ring.pick("hot", loads, capacities)
        assert chosen is not None
        loads[chosen] += 1
        placed.append(chosen)
    assert placed[0] == home
    # 40 runs over 4 engines, bound ceil(1.25 * 40 / 4) = 13: all four take part
    assert set(placed) == set(engines)
    assert max(loads.values()) <= 13


def test_with_unequal_capacities_a_run_spills_rather_than_waits() -> None:
    ring = balancer("consistent-hash", ["small", "big"])
    # bound ceil(1.25 * 12 / 2) = 8: big is above it, small is full; big still has room
    assert ring.pick("k", {"small": 1, "big": 10}, {"small": 1, "big": 100}) == "big"


def test_none_when_every_ready_engine_is_full() -> None:
    for kind in ("consistent-hash", "round-robin", "least-loaded"):
        chosen = balancer(kind, ["a", "b", "c"])
        assert chosen.pick("k", {"a": 3, "b": 5, "c": 0}, {"a": 3, "b": 4, "c": 0}) is None
        assert chosen.pick("k", {}, {}) is None
        # only engines both added and ready count
        assert chosen.pick("k", {"zzz": 0}, {"zzz": 9}) is None
        assert chosen.pick("k", {"a": 0}, {}) is None  # no capacity reported: taken as full
        assert chosen.pick("k", {"a": 0, "b": 0}, {"a": 1, "b": 1}) in ("a", "b")
        assert balancer(kind, []).pick("k", {"a": 0}, {"a": 1}) is None


def test_add_and_remove_are_idempotent() -> None:
    for kind in ("consistent-hash", "round-robin", "least-loaded"):
        chosen = make_balancer(kind)
        chosen.remove("never-added")
        chosen.add("a")
        chosen.add("a")
        chosen.remove("a")
        assert chosen.pick("k", {"a": 0}, {"a": 1}) is None
        chosen.remove("a")
        chosen.add("a")
        assert chosen.pick("k", {"a": 0}, {"a": 1}) == "a"


# -- round-robin and least-loaded ------------------------------------------------------------------


def test_round_robin_cycles_through_engines_with_room() -> None:
    rr = balancer("round-robin", ["c", "a", "b"])
    loads, capacities = idle(["a", "b", "c"])
    assert [rr.pick(f"k{i}", loads, capacities) for i in range(7)] == [
        "a",
        "b",
        "c",
        "a",
        "b",
        "c",
        "a",
    ]
    loads["c"] = 10  # full: skipped
    assert [rr.pick("k", loads, capacities) for _ in range(4)] == ["b", "a", "b", "a"]


def test_round_robin_keeps_its_turn_when_engines_come_and_go() -> None:
    rr = balancer("round-robin", ["a", "b", "c"])
    loads, capacities = idle(["a", "b", "c", "bb"])
    assert rr.pick("k", loads, capacities) == "a"
    assert rr.pick("k", loads, capacities) == "b"
    rr.remove("b")
    rr.add("bb")
    assert [rr.pick("k", loads, capacities) for _ in range(3)] == ["bb", "c", "a"]


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6), st.integers(1, 40))
def test_round_robin_spreads_evenly(n: int, picks: int) -> None:
    engines = [f"e{i}" for i in range(n)]
    rr = balancer("round-robin", engines)
    loads, capacities = idle(engines, capacity=1000)
    counts = dict.fromkeys(engines, 0)
    for _ in range(picks):
        chosen = rr.pick("k", loads, capacities)
        assert chosen is not None
        counts[chosen] += 1
    assert max(counts.values()) - min(counts.values()) <= 1


def test_least_loaded_picks_the_lowest_ratio_ties_by_key() -> None:
    ll = balancer("least-loaded", ["a", "b", "c"])
    # ratios: a 5/10, b 2/4, c 3/10 -> c
    assert ll.pick("k", {"a": 5, "b": 2, "c": 3}, {"a": 10, "b": 4, "c": 10}) == "c"
    # a 1/3 and b 2/6 tie exactly: the lower key wins
    assert ll.pick("k", {"a": 1, "b": 2, "c": 3}, {"a": 3, "b": 6, "c": 4}) == "a"
    # the lowest ratio is full (0/0 has no room): the next one
    assert ll.pick("k", {"a": 4, "b": 1, "c": 0}, {"a": 4, "b": 10, "c": 0}) == "b"


@settings(max_examples=300, deadline=None)
@given(fleets())
def test_least_loaded_choice_has_room_and_no_engine_with_room_is_lower(
    fleet: tuple[dict[str, int], dict[str, int], list[str]],
) -> None:
    loads, capacities, added = fleet
    chosen = balancer("least-loaded", added).pick("k", loads, capacities)
    roomy = [e for e in added if e in loads and loads[e] < capacities[e]]
    if not roomy:
        assert chosen is None
        return
    assert chosen in roomy
    assert all(loads[chosen] * capacities[e] <= loads[e] * capacities[chosen] for e in roomy)
