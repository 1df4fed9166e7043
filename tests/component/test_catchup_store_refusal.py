"""A catch-up whose "missed" row the store refuses leaves its slots undecided, and the
trigger's next slot decides them by the catch-up policy: they are neither dropped nor hidden
behind the next slot's fire."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import StoreUnavailable
from orchestrator.triggering import CronTrigger
from tests.component.test_triggers import T0, World, iso, spec


async def test_a_catch_up_the_store_refuses_is_decided_with_the_next_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    world = World(tmp_path / "state.db")
    await world.open()
    try:
        triggers = await world.triggers()
        await world.orch.register(spec(overlap="allow"), yaml=False, force=False)
        tid = triggers.listing()[0]["id"]
        await triggers.stop()
        await world.restart()
        real_record_slot = world.store.record_slot
        refused = True

        async def record_slot(*args: Any, **kwargs: Any) -> bool:
            if refused:
                raise StoreUnavailable("database is locked")
            return await real_record_slot(*args, **kwargs)

        monkeypatch.setattr(world.store, "record_slot", record_slot)
        world.clock.now = T0 + 330  # down for slots at +60 ... +300: the start catches up
        triggers = await world.triggers()
        [trigger] = [t for t in triggers._triggers.values() if isinstance(t, CronTrigger)]
        # before: the catch-up's task died with the refusal, and undecided stayed None
        assert trigger.undecided is not None
        assert f"trigger {tid} could not catch up its slots" in caplog.text
        assert "Traceback" not in caplog.text
        assert await world.executions() == [] and await triggers.history(tid) == []
        refused = False
        world.clock.now = T0 + 360
        await triggers.tick()
        await triggers.settle()
        history = await triggers.history(tid)
        # before: only +360 fired, and the slots of the downtime had no row at all
        assert sorted((r["outcome"], r["scheduled_time"]) for r in history) == [
            ("fired", iso(T0 + 360)),
            ("missed", iso(T0 + 300)),
        ]
        (missed,) = [r for r in history if r["outcome"] == "missed"]
        assert missed["detail"]["count"] == 5
        assert missed["detail"]["first_missed"] == iso(T0 + 60)
        assert trigger.undecided is None
        await triggers.stop()
    finally:
        await world.store.close()
        world.checker.close()
