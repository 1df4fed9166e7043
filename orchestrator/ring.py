"""Which engine takes the next run: consistent hashing with bounded loads, or a simple rule.

Runs of one workflow go to the same engine while it can take them, so the engine's caches (the
compiled Lua of that workflow's nodes) stay warm, and adding or losing one engine of n moves only
about 1/n of the workflows. Plain consistent hashing would also pile every run of a hot workflow
onto one engine while the rest idle; the bound (Mirrokni, Thorup and Zadimoghaddam, "Consistent
Hashing with Bounded Loads", 2016) caps each engine below ``ceil(1.25 * (total + 1) / n)``, the
+1 counting the run being placed, so an overloaded engine's runs spill to the next engines on
the ring: in ring order, hence still the same engines for the same workflow. 1.25 is the
paper's trade: at most 25 % above the average, while a change of engines moves few keys.

The bound treats engines as equal. When capacities differ, the small engines may be full while
every engine with room is above the bound; then the first engine on the ring with room takes the
run rather than none: a run waiting in the queue helps nobody.

Every balancer chooses among engines that are both added and present in ``loads`` (the ready
ones), and returns None only when each of those has ``load >= capacity``.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from fractions import Fraction
from typing import Final, Literal, Protocol

from uhashring import HashRing

BalancerName = Literal["consistent-hash", "round-robin", "least-loaded"]
LOAD_FACTOR: Final = Fraction(5, 4)
VNODES: Final = 160  # points per engine on the ring: more points, more even shares


class Balancer(Protocol):
    def add(self, key: str) -> None: ...

    def remove(self, key: str) -> None: ...

    def pick(
        self, routing_key: str, loads: Mapping[str, int], capacities: Mapping[str, int]
    ) -> str | None: ...


def _has_room(key: str, loads: Mapping[str, int], capacities: Mapping[str, int]) -> bool:
    # an engine that never reported a capacity is taken as full, not as unbounded
    capacity = capacities.get(key, 0)
    return capacity > 0 and loads[key] < capacity


def load_bound(total_load: int, engines: int, factor: Fraction = LOAD_FACTOR) -> int:
    """The load an engine must stay below to take one more run: ceil(factor*(total+1)/n)."""
    # in integers: Fraction arithmetic took more than the rest of a pick
    return -(-(factor.numerator * (total_load + 1)) // (factor.denominator * engines))


class ConsistentHash:
    """A hash ring of engines; a routing key takes the first engine from its point with room."""

    def __init__(self, *, load_factor: Fraction = LOAD_FACTOR, vnodes: int = VNODES) -> None:
        self._ring = HashRing(nodes=[], vnodes=vnodes)
        self._keys: set[str] = set()
        self._load_factor = load_factor

    def add(self, key: str) -> None:
        if key not in self._keys:
            self._keys.add(key)
            self._ring.add_node(key)

    def remove(self, key: str) -> None:
        if key in self._keys:
            self._keys.discard(key)
            self._ring.remove_node(key)

    def pick(
        self, routing_key: str, loads: Mapping[str, int], capacities: Mapping[str, int]
    ) -> str | None:
        candidates = [k for k in self._keys if k in loads]
        if not candidates:
            return None
        bound = load_bound(sum(loads[k] for k in candidates), len(candidates), self._load_factor)
        spill: str | None = None
        for key in self._ring.iterate_nodes(routing_key):
            if key not in loads or not _has_room(key, loads, capacities):
                continue
            if loads[key] < bound:
                return str(key)
            if spill is None:
                spill = str(key)
        return spill


class RoundRobin:
    """Engines in key order, each pick starting after the last one chosen."""

    def __init__(self) -> None:
        self._keys: set[str] = set()
        self._last: str | None = None

    def add(self, key: str) -> None:
        self._keys.add(key)

    def remove(self, key: str) -> None:
        self._keys.discard(key)

    def pick(
        self, routing_key: str, loads: Mapping[str, int], capacities: Mapping[str, int]
    ) -> str | None:
        candidates = sorted(k for k in self._keys if k in loads)
        # after the last choice by key, so the turn survives engines coming and going
        start = bisect.bisect_right(candidates, self._last) if self._last is not None else 0
        for i in range(len(candidates)):
            key = candidates[(start + i) % len(candidates)]
            if _has_room(key, loads, capacities):
                self._last = key
                return key
        return None


class LeastLoaded:
    """The engine with the lowest load/capacity that has room; ties go to the lowest key."""

    def __init__(self) -> None:
        self._keys: set[str] = set()

    def add(self, key: str) -> None:
        self._keys.add(key)

    def remove(self, key: str) -> None:
        self._keys.discard(key)

    def pick(
        self, routing_key: str, loads: Mapping[str, int], capacities: Mapping[str, int]
    ) -> str | None:
        roomy = [k for k in self._keys if k in loads and _has_room(k, loads, capacities)]
        if not roomy:
            return None
        # exact ratios: 1/3 and 2/6 tie, and the key decides
        return min(roomy, key=lambda k: (Fraction(loads[k], capacities[k]), k))


def make_balancer(name: BalancerName) -> Balancer:
    if name == "consistent-hash":
        return ConsistentHash()
    if name == "round-robin":
        return RoundRobin()
    if name == "least-loaded":
        return LeastLoaded()
    raise ValueError(
        f"unknown load balancer {name!r}: use consistent-hash, round-robin or least-loaded"
    )
