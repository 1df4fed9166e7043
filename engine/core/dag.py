"""Graph facts about a workflow's nodes: order, cycles, ancestry.

Everything here is linear in nodes + edges except ancestry, which is computed on demand per node
(a direct dependency is checked first, because that is what almost every lookup asks about).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence


def topological_order(deps: Mapping[str, Sequence[str]]) -> list[str] | None:
    """Kahn's order over ``deps`` (node -> its dependencies); None when there is a cycle.

    Unknown dependencies are ignored here; validation reports them separately.
    """
    indegree = {n: 0 for n in deps}
    dependents: dict[str, list[str]] = {n: [] for n in deps}
    for node, ds in deps.items():
        for d in ds:
            if d in dependents:
                dependents[d].append(node)
                indegree[node] += 1
    ready = deque(n for n, k in indegree.items() if k == 0)
    order: list[str] = []
    while ready:
        n = ready.popleft()
        order.append(n)
        for m in dependents[n]:
            indegree[m] -= 1
            if indegree[m] == 0:
                ready.append(m)
    return order if len(order) == len(deps) else None


def find_cycles(deps: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Each distinct cycle found by depth-first search, as a closed path ``[a, b, c, a]``.

    Iterative, so a 10,000-node chain does not hit the recursion limit; an acyclic graph is
    recognised by a topological sort first, which is cheaper than the search.
    """
    if topological_order(deps) is not None:
        return []
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(deps, white)
    cycles: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    for start in deps:
        if colour[start] != white:
            continue
        colour[start] = grey
        path = [start]
        on_path = {start: 0}
        stack = [iter([d for d in deps[start] if d in colour])]
        while stack:
            child = next(stack[-1], None)
            if child is None:
                stack.pop()
                done = path.pop()
                del on_path[done]
                colour[done] = black
            elif colour[child] == white:
                colour[child] = grey
                on_path[child] = len(path)
                path.append(child)
                stack.append(iter([d for d in deps[child] if d in colour]))
            elif colour[child] == grey:
                # deps point from a node to what it needs; print the cycle in run order
                loop = [*path[on_path[child] :], child]
                loop.reverse()
                key = frozenset(loop)
                if key not in seen:
                    seen.add(key)
                    cycles.append(loop)
    return cycles


def ancestors(node: str, deps: Mapping[str, Sequence[str]]) -> set[str]:
    """Every node ``node`` transitively depends on."""
    found: set[str] = set()
    todo = list(deps.get(node, ()))
    while todo:
        n = todo.pop()
        if n in found or n not in deps:
            continue
        found.add(n)
        todo.extend(deps[n])
    return found


def is_ancestor(candidate: str, node: str, deps: Mapping[str, Sequence[str]]) -> bool:
    if candidate in deps.get(node, ()):
        return True
    return candidate in ancestors(node, deps)
