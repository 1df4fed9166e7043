"""Spec triggers whose ids changed with the id scheme keep their history, pause and catch-up.

Before c12de23 unnamed cron triggers of a spec sharing a schedule and zone were numbered by
their place (``cron-<schedule>``, ``-2``, ``-3`` ...); since, they are keyed by their settings
(``cron-<schedule>-<settings>``). The state an older orchestrator left is made here by the real
trigger machinery with only the id scheme swapped for the old one, which the first test checks
against the ids 7b17e5d gave the same spec.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from engine.core.spec import CronTrigger as CronSpec
from engine.core.spec import WorkflowSpec
from orchestrator import triggering
from orchestrator.errors import NotFound
from orchestrator.store import StoredTrigger
from orchestrator.triggering import Triggers, spec_trigger_rows
from tests.component.test_triggers import T0, World, iso

EVERY5 = "*/5 * * * *"
OLD_STEM = "wf:cron-34d64c5f"  # what 7b17e5d called the first unnamed */5 trigger of wf


def ids_before_c12de23(spec: WorkflowSpec, now: float) -> list[StoredTrigger]:
    """The rows as 7b17e5d (and every commit before c12de23) made them: an unnamed cron trigger
    is ``cron-<hash of schedule and zone>``, and one sharing it with an earlier one of the spec
    gets ``-2``, ``-3`` ... by its place. Only the ids differ from today's rows."""
    rows = spec_trigger_rows(spec, now)
    taken: set[str] = set()
    out: list[StoredTrigger] = []
    for declared, row in zip(spec.triggers, rows, strict=True):
        tid = row.id
        if isinstance(declared, CronSpec) and not declared.id:
            digest = hashlib.sha256(f"{declared.cron}\x00{declared.timezone}".encode())
            key = f"{spec.id}:cron-{digest.hexdigest()[:8]}"
            tid, n = key, 2
            while tid in taken:
                tid, n = f"{key}-{n}", n + 1
        taken.add(tid)
        out.append(dataclasses.replace(row, id=tid))
    return out


def workflow(version: str, *triggers: dict[str, Any]) -> str:
    return json.dumps(
        {
            "id": "wf",
            "version": version,
            "triggers": list(triggers),
            "nodes": [{"id": "a", "sleep": "0s"}],
        }
    )


def unnamed(source: str, **extra: Any) -> dict[str, Any]:
    return {"cron": EVERY5, "inputs": {"source": source}, "overlap": "allow", **extra}


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = World(tmp_path / "state.db")
    await w.open()
    yield w
    await w.store.close()
    w.checker.close()


async def left_by_an_old_orchestrator(
    world: World, monkeypatch: pytest.MonkeyPatch, spec: str
) -> Triggers:
    """``spec`` registered and its triggers running under the old id scheme; the caller fires,
    pauses and stops them, then ``upgrade``s."""
    monkeypatch.setattr(triggering, "spec_trigger_rows", ids_before_c12de23)
    triggers = await world.triggers()
    await world.orch.register(spec, yaml=False, force=False)
    return triggers


async def upgrade(world: World, monkeypatch: pytest.MonkeyPatch, now: float) -> Triggers:
    monkeypatch.undo()
    await world.restart()
    world.clock.now = now
    world.events.clear()
    return await world.triggers()


def by_source(triggers: Triggers) -> dict[str, dict[str, Any]]:
    return {t["inputs"]["source"]: t for t in triggers.listing() if "inputs" in t}


async def test_twins_from_before_c12de23_keep_their_pause_history_and_catch_up(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = await left_by_an_old_orchestrator(
        world, monkeypatch, workflow("1.0.0", unnamed("A"), unnamed("B"))
    )
    before = {source: t["id"] for source, t in by_source(old).items()}
    assert before == {"A": OLD_STEM, "B": f"{OLD_STEM}-2"}
    world.clock.now = T0 + 300
    assert await old.tick() == 2
    await old.pause(before["B"])
    await old.stop()

    # down for the slots at +600 and +900; A's catch-up is ``latest``
    new = await upgrade(world, monkeypatch, T0 + 930)
    after = by_source(new)
    today = {
        row.config["inputs"]["source"]: row.id  # type: ignore[index]
        for row in spec_trigger_rows(world.orch.registry.resolve_spec("wf", "latest"), T0)
    }
    assert {source: t["id"] for source, t in after.items()} == today
    assert after["A"]["paused"] is False and after["B"]["paused"] is True
    for gone in before.values():  # renamed, not copied
        with pytest.raises(NotFound):
            new.get(gone)
    history = await new.history(today["A"])
    assert [(h["scheduled_time"], h["outcome"]) for h in history] == [
        (iso(T0 + 900), "fired"),
        (iso(T0 + 600), "missed"),
        (iso(T0 + 300), "fired"),
    ]
    assert [(h["scheduled_time"], h["outcome"]) for h in await new.history(today["B"])] == [
        (iso(T0 + 300), "fired")
    ]
    runs = await world.executions()
    assert [
        (
            r["inputs"]["source"],
            r["inputs"]["_trigger"]["id"],
            r["inputs"]["_trigger"]["scheduled_time"],
        )
        for r in runs[2:]
    ] == [("A", today["A"], iso(T0 + 900))]
    world.clock.now = T0 + 1200
    assert await new.tick() == 1  # B stays paused
    await new.stop()


async def test_identical_twins_map_in_the_order_the_old_code_numbered_them(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    named = {"cron": EVERY5, "inputs": {"source": "N"}, "id": "nightly"}
    spec = workflow("1.0.0", unnamed("A"), unnamed("B"), unnamed("A"), named)
    old = await left_by_an_old_orchestrator(world, monkeypatch, spec)
    await old.create({"workflow_id": "wf", "cron": EVERY5, "id": "api5", "inputs": {"source": "P"}})
    ids = sorted(t["id"] for t in old.listing())
    assert ids == sorted([OLD_STEM, f"{OLD_STEM}-2", f"{OLD_STEM}-3", "wf:nightly", "api5"])
    world.clock.now = T0 + 300
    assert await old.tick() == 5
    for paused in (f"{OLD_STEM}-3", "wf:nightly", "api5"):  # the second A, and the others
        await old.pause(paused)
    await old.stop()

    new = await upgrade(world, monkeypatch, T0 + 330)
    rows = spec_trigger_rows(world.orch.registry.resolve_spec("wf", "latest"), T0)
    first_a, b, second_a = (row.id for row in rows[:3])
    assert second_a == f"{first_a}-2"
    assert {t["id"]: t["paused"] for t in new.listing()} == {
        first_a: False,
        b: False,
        second_a: True,
        "wf:nightly": True,
        "api5": True,
    }
    for tid in (first_a, b, second_a, "wf:nightly", "api5"):
        [fired] = await new.history(tid)
        assert fired["outcome"] == "fired" and fired["scheduled_time"] == iso(T0 + 300)
    await new.stop()


async def test_an_unnamed_trigger_joined_by_a_twin_keeps_its_pause_and_history(
    world: World,
) -> None:
    triggers = await world.triggers()
    await world.orch.register(workflow("1.0.0", unnamed("A")), yaml=False, force=False)
    [alone] = triggers.listing()
    world.clock.now = T0 + 300
    assert await triggers.tick() == 1
    await triggers.pause(alone["id"])
    # a second trigger on the same schedule: A's id now names its settings
    await world.orch.register(
        workflow("1.1.0", unnamed("A"), unnamed("B")), yaml=False, force=False
    )
    twins = by_source(triggers)
    assert twins["A"]["id"] != alone["id"] and twins["A"]["paused"] is True
    assert twins["B"]["paused"] is False
    assert [h["scheduled_time"] for h in await triggers.history(twins["A"]["id"])] == [
        iso(T0 + 300)
    ]
    assert await triggers.history(twins["B"]["id"]) == []
    # and alone again, back under its first id with all of it
    await world.orch.register(workflow("1.2.0", unnamed("A")), yaml=False, force=False)
    [again] = triggers.listing()
    assert again["id"] == alone["id"] and again["paused"] is True
    assert [h["scheduled_time"] for h in await triggers.history(alone["id"])] == [iso(T0 + 300)]
    world.clock.now = T0 + 600
    assert await triggers.tick() == 0
    await triggers.stop()
