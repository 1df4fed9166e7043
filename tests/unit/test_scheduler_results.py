"""What a script reads as ``results``: its ancestors' outputs, and what ``pairs(results)`` goes
through."""

from __future__ import annotations

import pytest

from engine.core import dag
from engine.core.scheduler import MISSING
from tests.unit.driving import Driver, lua, spec


def chain(n: int) -> Driver:
    wf = spec([lua("n0"), *(lua(f"n{i}", f"n{i - 1}") for i in range(1, n))])
    d = Driver(wf).start()
    for i in range(n - 1):
        d.succeed(f"n{i}", i)
    return d


def test_pairs_goes_through_the_ancestors_that_succeeded_in_order() -> None:
    wf = spec([lua("a"), lua("b"), lua("c", "a"), lua("d", "b", "c"), lua("other")])
    d = Driver(wf).start()
    for node in ("a", "b", "c", "other"):
        d.succeed(node, node.upper())
    assert d.run.readable_results("d") == ["a", "b", "c"]
    assert [d.run.result_of("d", n) for n in ("a", "c", "other")] == ["A", "C", MISSING]


def test_reading_every_ancestor_finds_them_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # pairs(results) reads each name it lists: each read found the ancestors again, so a
    # chain of n nodes that each iterate cost n³ (15,000: past the 30 s wall time)
    d = chain(300)
    calls = []
    real = dag.ancestors

    def counted(node: str, deps: object) -> set[str]:
        calls.append(node)
        return real(node, deps)  # type: ignore[arg-type]

    monkeypatch.setattr(dag, "ancestors", counted)
    names = d.run.readable_results("n299")
    assert len(names) == 299
    assert [d.run.result_of("n299", n) for n in names] == list(range(299))
    assert calls == ["n299"]
