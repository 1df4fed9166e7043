"""Graph facts about a workflow's nodes: order, cycles, ancestry.

Everything here is linear in nodes + edges. ``ancestors`` answers for one node (the scheduler's
occasional lookup); validation, which asks about every node, uses ``ancestor_bits`` once for the
whole graph, so a 10,000-node chain costs one pass, not one walk per node.
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


def ancestor_bits(deps: Mapping[str, Sequence[str]], targets: Sequence[str]) -> dict[str, int]:
    """For every node, which of ``targets`` it transitively depends on, as an int bitset (bit
    ``i`` is ``targets[i]``). Defined around a cycle too: each member of one depends on every
    member, as ``ancestors`` says.

    One pass over nodes + edges in dependency order (Tarjan's strongly connected components,
    iterative), each step an OR of ``len(targets)``-bit ints; only the nodes asked about take a
    bit, so a chain whose nodes all read its first node carries one bit, not 10,000.
    """
    bit = {t: 1 << i for i, t in enumerate(targets)}
    bits: dict[str, int] = {}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    for root in deps:
        if root in index:
            continue
        work = [(root, iter(deps[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in deps:
                    continue
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(deps[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] != index[node]:
                continue
            # node roots a component, and every component it depends on is done already
            members = [stack.pop()]
            while members[-1] != node:
                members.append(stack.pop())
            on_stack.difference_update(members)
            inside = set(members)
            found = 0
            for m in members:
                for d in deps[m]:
                    if d in deps and d not in inside:
                        found |= bits[d] | bit.get(d, 0)
            if len(members) > 1 or node in deps[node]:
                for m in members:
                    found |= bit.get(m, 0)
            for m in members:
                bits[m] = found
    return bits
