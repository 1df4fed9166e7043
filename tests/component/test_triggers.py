"""Triggers over a real SQLite store and the real orchestrator facade, with a fake clock.

No engines: runs stay ``queued`` (the dispatcher is a stub that records what it is handed), so
overlap rules see a previous run still going. Time moves only when a test says so, and
``Triggers.tick(now)`` does what the loop does when it wakes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from engine.core.errors import InputsError
from orchestrator.errors import NotFound
from orchestrator.lua_checking import LuaSyntaxChecker
from orchestrator.metrics import Metrics
from orchestrator.monitoring import Hub
from orchestrator.orchestrating import Orchestrator
from orchestrator.store import Store
from orchestrator.triggering import (
    LATE_GRACE,
    HttpTrigger,
    InvalidTrigger,
    TriggerConflict,
    TriggerForbidden,
    Triggers,
    TriggerSecretMissing,
    TriggerUnauthorized,
)
from orchestrator.versions import Registry

T0 = datetime(2026, 3, 2, 12, 0, 0, tzinfo=UTC).timestamp()  # a Monday, on the minute


def spec(version: str = "1.0.0", cron: str = "* * * * *", **extra: Any) -> str:
    trigger = {"cron": cron, "inputs": {"source": "cron"}, **extra}
    return json.dumps(
        {
            "id": "wf",
            "version": version,
            "triggers": [trigger],
            "nodes": [{"id": "a", "sleep": "0s"}],
        }
    )


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class StubDispatcher:
    queue_depth = 0

    def __init__(self) -> None:
        self.submitted: list[str] = []

    def submit(self, execution_id: str, workflow_id: str, ticket: object = None) -> None:
        self.submitted.append(execution_id)

    def dequeue(self, execution_id: str) -> bool:
        return execution_id in self.submitted


class World:
    """An orchestrator on a state file; ``triggers()`` starts a Triggers as a process would."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.clock = Clock(T0)
        self.events: list[dict[str, Any]] = []
        self.orch: Orchestrator
        self.dispatcher: StubDispatcher
        self.store: Store
        self.checker = LuaSyntaxChecker()

    async def open(self) -> None:
        self.store = await Store.open(str(self.path))
        self.orch = Orchestrator(
            store=self.store,
            registry=Registry(),
            fleet=None,  # type: ignore[arg-type]
            hub=Hub(),
            metrics=Metrics(list, lambda: 0),
            lua_checker=self.checker,
            queue_limit=1000,
        )
        self.dispatcher = StubDispatcher()
        self.orch.attach(self.dispatcher)  # type: ignore[arg-type]
        self.orch.publish = self.events.extend  # type: ignore[method-assign]
        self.orch.registry.load(await self.store.load_versions())

    async def triggers(self, **kwargs: Any) -> Triggers:
        triggers = Triggers(self.orch, clock=self.clock, **kwargs)
        self.orch.triggers = triggers
        await triggers.start(run_loop=False)
        await triggers.settle()
        return triggers

    async def restart(self) -> None:
        await self.store.close()
        await self.open()

    async def executions(self) -> list[dict[str, Any]]:
        found = await self.store.list_executions(workflow_id=None, status=None, limit=1000)
        return [dict(e) for e in reversed(found)]

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = World(tmp_path / "state.db")
    await w.open()
    yield w
    await w.store.close()
    w.checker.close()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def test_a_spec_cron_trigger_fires_each_slot_once_with_trigger_inputs(world: World) -> None:
    triggers = await world.triggers()
    await world.orch.register(spec(), yaml=False, force=False)
    [listed] = triggers.listing()
    assert listed["type"] == "cron" and listed["source"] == "spec"
    assert listed["next_fire_times"] == [iso(T0 + 60), iso(T0 + 120), iso(T0 + 180)]

    world.clock.now = T0 + 60.004
    assert await triggers.tick() == 1
    assert await triggers.tick() == 0  # the same moment again: nothing more
    [run] = await world.executions()
    assert run["inputs"] == {
        "source": "cron",
        "_trigger": {
            "type": "cron",
            "id": listed["id"],
            "scheduled_time": iso(T0 + 60),
            "fired_at": iso(T0 + 60.004),
        },
    }
    fired = [e for e in world.events if e["type"] == "trigger.fired"]
    assert fired[0]["data"]["execution_id"] == run["id"]
    assert fired[0]["data"]["lag_ms"] == pytest.approx(4, abs=0.01)
    [row] = await triggers.history(listed["id"])
    assert row["outcome"] == "fired" and row["execution_id"] == run["id"]


async def test_overlap_skip_allow_and_cancel_previous(world: World) -> None:
    triggers = await world.triggers()
    await world.orch.register(spec(overlap="skip"), yaml=False, force=False)
    world.clock.now = T0 + 60
    await triggers.tick()
    world.clock.now = T0 + 120  # the first run is still queued: no engine here
    await triggers.tick()
    assert len(await world.executions()) == 1
    skipped = [e for e in world.events if e["type"] == "trigger.skipped"]
    assert len(skipped) == 1 and skipped[0]["severity"] == "warning"
    tid = triggers.listing()[0]["id"]
    assert [r["outcome"] for r in await triggers.history(tid)] == ["skipped", "fired"]

    await world.orch.register(spec("1.1.0", overlap="allow"), yaml=False, force=False)
    world.clock.now = T0 + 180
    await triggers.tick()
    assert len(await world.executions()) == 2

    await world.orch.register(spec("1.2.0", overlap="cancel_previous"), yaml=False, force=False)
    world.clock.now = T0 + 240
    await triggers.tick()
    runs = await world.executions()
    assert len(runs) == 3
    assert runs[1]["status"] == "cancelled"
    assert runs[2]["status"] == "queued"


async def test_a_slot_already_recorded_never_fires_again(world: World) -> None:
    """Two trigger sets on one store (as an old and a new process): one run per slot."""
    first = await world.triggers()
    await world.orch.register(spec(overlap="allow"), yaml=False, force=False)
    second = await world.triggers()
    world.clock.now = T0 + 60
    await first.tick()
    await second.tick()
    assert len(await world.executions()) == 1


@pytest.mark.parametrize(
    ("catchup", "fired_slots", "missed"),
    [("latest", [300], 4), ("none", [], 5), ("all", [240, 300], 3)],
)
async def test_catch_up_after_downtime(
    world: World, catchup: str, fired_slots: list[int], missed: int
) -> None:
    triggers = await world.triggers(catchup_limit=2)
    await world.orch.register(spec(overlap="allow", catchup=catchup), yaml=False, force=False)
    await triggers.stop()
    await world.restart()
    world.clock.now = T0 + 330  # down for slots at +60 ... +300
    world.events.clear()
    triggers = await world.triggers(catchup_limit=2)
    runs = await world.executions()
    assert [r["inputs"]["_trigger"]["scheduled_time"] for r in runs] == [
        iso(T0 + s) for s in fired_slots
    ]
    [gone] = [e for e in world.events if e["type"] == "trigger.missed"]
    assert gone["data"]["count"] == missed and gone["data"]["exact"] is True
    assert all(e["data"]["catchup"] for e in world.events if e["type"] == "trigger.fired")
    # the next slot is on time again, and the caught-up ones do not come back
    world.clock.now = T0 + 360
    await triggers.tick()
    await triggers.stop()
    await world.restart()
    await world.triggers(catchup_limit=2)
    after = await world.executions()
    assert len(after) == len(fired_slots) + 1
    slots = [r["inputs"]["_trigger"]["scheduled_time"] for r in after]
    assert len(slots) == len(set(slots))


def writes_refused(store: Store, refused: bool) -> None:
    """The writer's connection made read-only, as a database that cannot take writes (SQLite
    serializes its use with the writer thread)."""
    store._writer._conn.execute(f"PRAGMA query_only = {'ON' if refused else 'OFF'}")


async def test_a_slot_the_store_cannot_take_is_tried_again_until_it_can(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("orchestrator.triggering.STORE_RETRIES", (0.05,) * 100)
    triggers = await world.triggers()
    await world.orch.register(spec(), yaml=False, force=False)
    tid = triggers.listing()[0]["id"]
    writes_refused(world.store, True)
    world.clock.now = T0 + 60
    ticking = asyncio.create_task(triggers.tick())  # returns once the slot is decided
    while world.store.trouble is None:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # a few more tries, all refused
    assert await world.executions() == [] and await triggers.history(tid) == []
    writes_refused(world.store, False)
    assert await ticking == 1
    [run] = await world.executions()
    assert run["inputs"]["_trigger"]["scheduled_time"] == iso(T0 + 60)
    assert [r["outcome"] for r in await triggers.history(tid)] == ["fired"]
    assert "trigger.missed" not in world.types()


async def test_a_slot_the_store_never_takes_is_left_for_the_next_start(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("orchestrator.triggering.STORE_RETRIES", (0.01, 0.01))
    triggers = await world.triggers()
    await world.orch.register(spec(), yaml=False, force=False)
    tid = triggers.listing()[0]["id"]
    writes_refused(world.store, True)
    world.clock.now = T0 + 60
    await triggers.tick()
    await triggers.settle()
    writes_refused(world.store, False)
    assert await world.executions() == [] and await triggers.history(tid) == []
    assert f"trigger {tid} could not fire its slot at {iso(T0 + 60)}" in caplog.text
    assert "Traceback" not in caplog.text
    # the slot is undecided in the store: the next start's catch-up fires it
    await triggers.stop()
    await world.restart()
    world.clock.now = T0 + 90
    await world.triggers()
    [run] = await world.executions()
    assert run["inputs"]["_trigger"]["scheduled_time"] == iso(T0 + 60)


@pytest.mark.parametrize("outage", [1, 2])  # slots that came while the store refused writes
async def test_slots_given_up_on_are_decided_with_the_next_one_not_hidden_by_it(
    world: World, monkeypatch: pytest.MonkeyPatch, outage: int
) -> None:
    monkeypatch.setattr("orchestrator.triggering.STORE_RETRIES", (0.01, 0.01))
    triggers = await world.triggers()
    await world.orch.register(spec(), yaml=False, force=False)
    tid = triggers.listing()[0]["id"]
    writes_refused(world.store, True)
    for minute in range(1, outage + 1):
        world.clock.now = T0 + 60 * minute
        await triggers.tick()
        await triggers.settle()
    writes_refused(world.store, False)
    after = T0 + 60 * (outage + 1)  # the next slot, with the store back
    world.clock.now = after
    await triggers.tick()
    await triggers.settle()
    history = await triggers.history(tid)
    # before: only the last slot fired, and no catch-up ever looked before it again (with two
    # slots in the outage, the first fix still lost both)
    assert sorted((r["outcome"], r["scheduled_time"]) for r in history) == [
        ("fired", iso(after)),
        ("missed", iso(after - 60)),  # the last of the missed range, with its count
    ]
    (missed,) = [r for r in history if r["outcome"] == "missed"]
    assert missed["detail"]["count"] == outage
    assert missed["detail"]["first_missed"] == iso(T0 + 60)
    assert "trigger.missed" in world.types()
    [run] = await world.executions()
    assert run["inputs"]["_trigger"]["scheduled_time"] == iso(after)


async def test_slots_held_up_past_the_grace_by_the_store_follow_the_catchup_policy(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # each slot's tries take a tenth of a second while the fake clock moves a second every
    # hundredth: slots queue behind the one being tried, and come up long after their time
    monkeypatch.setattr("orchestrator.triggering.STORE_RETRIES", (0.02,) * 5)
    triggers = await world.triggers()
    every_second = spec(cron="* * * * * *", overlap="allow", catchup="none")
    await world.orch.register(every_second, yaml=False, force=False)
    writes_refused(world.store, True)
    for k in range(1, 41):
        world.clock.now = T0 + k
        triggers.loop.run_due(world.clock.now)
        await asyncio.sleep(0.01)
    writes_refused(world.store, False)
    world.clock.now = T0 + 41
    triggers.loop.run_due(world.clock.now)
    await triggers.settle()
    # before: every slot queued meanwhile fired at once on recovery, up to 36 s late
    fired = [e["data"]["lag_ms"] for e in world.events if e["type"] == "trigger.fired"]
    assert len(fired) <= 3 and all(lag < (LATE_GRACE + 15) * 1000 for lag in fired), fired
    missed = [e for e in world.events if e["type"] == "trigger.missed"]
    assert missed and all(e["data"]["catchup"] == "none" for e in missed)


async def test_a_slot_due_while_triggers_start_is_fired(world: World) -> None:
    triggers = await world.triggers()
    await world.orch.register(
        spec(cron="* * * * * *", overlap="allow", catchup="all"), yaml=False, force=False
    )
    for k in range(1, 6):
        world.clock.now = T0 + k
        await triggers.tick()
    await triggers.stop()
    await world.restart()
    readings = iter([T0 + 10.9])  # start-up reads the clock, then time passes a slot

    def clock() -> float:
        return next(readings, T0 + 11.1)

    later = Triggers(world.orch, clock=clock)
    world.orch.triggers = later
    await later.start(run_loop=False)
    await later.settle()
    await later.tick(T0 + 12)
    await later.tick(T0 + 12)  # the loop goes round again for the slot re-armed at 12
    slots = sorted(r["inputs"]["_trigger"]["scheduled_time"] for r in await world.executions())
    # slots 6..10 caught up, 11 (between the two readings) and 12 fired: none left undecided
    assert slots == [iso(T0 + s) for s in range(1, 13)], slots


async def test_pause_and_resume_persist_and_resume_does_not_catch_up(world: World) -> None:
    await world.orch.register(spec(version="1.0.0", cron="@daily"), yaml=False, force=False)
    triggers = await world.triggers()
    made = await triggers.create(
        {"workflow_id": "wf", "cron": "*/5 * * * * *", "id": "every5", "overlap": "allow"}
    )
    assert made["next_fire_times"][0] == iso(T0 + 5)
    await triggers.pause("every5")
    world.clock.now = T0 + 30
    await triggers.tick()
    assert await world.executions() == []
    await triggers.stop()
    await world.restart()
    triggers = await world.triggers()
    assert triggers.get("every5")["paused"] is True
    world.clock.now = T0 + 60
    await triggers.tick()
    assert await world.executions() == []
    resumed = await triggers.resume("every5")
    assert resumed["next_fire_times"][0] == iso(T0 + 65)
    world.clock.now = T0 + 65
    await triggers.tick()
    [run] = await world.executions()
    assert run["inputs"]["_trigger"]["scheduled_time"] == iso(T0 + 65)
    await triggers.delete("every5")
    with pytest.raises(NotFound):
        triggers.get("every5")


async def test_api_triggers_are_checked_before_anything_is_stored(world: World) -> None:
    await world.orch.register(spec(), yaml=False, force=False)
    triggers = await world.triggers()
    with pytest.raises(InvalidTrigger, match="out of range") as bad_cron:
        await triggers.create({"workflow_id": "wf", "cron": "61 * * * *"})
    assert bad_cron.value.details == {"field": "cron"}
    with pytest.raises(InvalidTrigger, match="unknown time zone 'Mars/Base'") as bad_zone:
        await triggers.create({"workflow_id": "wf", "cron": "@hourly", "timezone": "Mars/Base"})
    assert bad_zone.value.details == {"field": "timezone"}
    with pytest.raises(InvalidTrigger, match="overlap must be one of"):
        await triggers.create({"workflow_id": "wf", "cron": "@hourly", "overlap": "maybe"})
    with pytest.raises(InvalidTrigger, match="unknown field"):
        await triggers.create({"workflow_id": "wf", "cron": "@hourly", "cronn": "x"})
    with pytest.raises(NotFound):
        await triggers.create({"workflow_id": "nope", "cron": "@hourly"})
    closed = {
        "id": "closed",
        "version": "1.0.0",
        "inputs_schema": {"type": "object", "additionalProperties": False},
        "nodes": [{"id": "a", "lua": "return {}"}],
    }
    await world.orch.register(json.dumps(closed), yaml=False, force=False)
    with pytest.raises(InputsError, match='"bad" was unexpected'):
        await triggers.create({"workflow_id": "closed", "cron": "@hourly", "inputs": {"bad": 1}})
    await triggers.create({"workflow_id": "wf", "cron": "@hourly", "id": "h"})
    with pytest.raises(TriggerConflict):
        await triggers.create({"workflow_id": "wf", "cron": "@hourly", "id": "h"})
    spec_id = next(t["id"] for t in triggers.listing() if t["source"] == "spec")
    with pytest.raises(TriggerConflict, match="comes from the spec"):
        await triggers.delete(spec_id)
    assert {t["id"] for t in triggers.listing()} == {"h", spec_id}


async def test_a_new_version_replaces_the_spec_triggers(world: World) -> None:
    triggers = await world.triggers()
    await world.orch.register(spec(cron="*/5 * * * *"), yaml=False, force=False)
    old = triggers.listing()[0]["id"]
    await triggers.pause(old)
    await world.orch.register(spec("1.1.0", cron="*/5 * * * *"), yaml=False, force=False)
    [kept] = triggers.listing()
    assert kept["id"] == old and kept["paused"] is True and kept["version"] == "1.1.0"
    await world.orch.register(spec("1.2.0", cron="0 * * * *"), yaml=False, force=False)
    [new] = triggers.listing()
    assert new["id"] != old and new["cron"] == "0 * * * *" and new["paused"] is False


async def test_a_pre_release_above_a_release_leaves_the_release_triggers_on(world: World) -> None:
    triggers = await world.triggers()
    await world.orch.register(spec("1.0.0", cron="*/5 * * * *"), yaml=False, force=False)
    [release] = triggers.listing()
    await world.orch.register(spec("2.0.0-rc.1", cron="0 * * * *"), yaml=False, force=False)
    assert triggers.listing() == [release]
    # and so after a restart, which brings spec triggers in line with what ``latest`` runs
    await triggers.stop()
    await world.restart()
    triggers = await world.triggers()
    [after] = triggers.listing()
    assert (after["id"], after["version"], after["cron"]) == (release["id"], "1.0.0", "*/5 * * * *")
    await world.orch.register(spec("2.0.0", cron="0 * * * *"), yaml=False, force=False)
    [new] = triggers.listing()
    assert (new["version"], new["cron"]) == ("2.0.0", "0 * * * *")


async def test_a_changed_schedule_does_not_catch_up_its_slots_from_before_the_change(
    world: World,
) -> None:
    triggers = await world.triggers()
    daily = spec(cron="0 0 * * *", id="nightly", overlap="allow", catchup="all")
    await world.orch.register(daily, yaml=False, force=False)
    midnight = T0 + 12 * 3600
    world.clock.now = midnight + 0.01
    assert await triggers.tick() == 1
    world.clock.now = midnight + 10 * 3600 + 30  # 10:00:30: hourly from now on
    hourly = spec("1.1.0", cron="0 * * * *", id="nightly", overlap="allow", catchup="all")
    await world.orch.register(hourly, yaml=False, force=False)
    await triggers.stop()
    await world.restart()
    world.clock.now = midnight + 10 * 3600 + 300  # back at 10:05: no hourly slot passed
    world.events.clear()
    triggers = await world.triggers()
    fired = [r["inputs"]["_trigger"]["scheduled_time"] for r in await world.executions()]
    assert fired == [iso(midnight)]  # not 01:00 to 10:00 of a schedule that did not exist
    assert "trigger.missed" not in world.types()
    assert triggers.listing()[0]["next_fire_times"][0] == iso(midnight + 11 * 3600)


async def test_a_spec_trigger_that_goes_takes_its_history_along(world: World) -> None:
    triggers = await world.triggers()
    await world.orch.register(spec(cron="*/5 * * * *"), yaml=False, force=False)
    tid = triggers.listing()[0]["id"]
    world.clock.now = T0 + 300
    assert await triggers.tick() == 1
    await world.orch.register(spec("1.1.0", cron="0 * * * *"), yaml=False, force=False)
    await world.orch.register(spec("1.2.0", cron="*/5 * * * *"), yaml=False, force=False)
    assert triggers.listing()[0]["id"] == tid
    assert await triggers.history(tid) == []  # the 12:05 fire went with the trigger
    world.clock.now = T0 + 600
    assert await triggers.tick() == 1
    [fired] = await triggers.history(tid)
    # the 12:05 run is still queued, but it is not this trigger's: its slot fires
    assert fired["outcome"] == "fired" and fired["scheduled_time"] == iso(T0 + 600)


def two_same_schedule(version: str, *sources: str) -> str:
    triggers = [{"cron": "*/5 * * * *", "inputs": {"source": s}} for s in sources]
    return json.dumps(
        {
            "id": "wf",
            "version": version,
            "triggers": triggers,
            "nodes": [{"id": "a", "sleep": "0s"}],
        }
    )


async def test_triggers_sharing_a_schedule_keep_their_own_ids(world: World) -> None:
    triggers = await world.triggers()
    await world.orch.register(two_same_schedule("1.0.0", "A", "B"), yaml=False, force=False)
    ids = {t["inputs"]["source"]: t["id"] for t in triggers.listing()}
    assert len(set(ids.values())) == 2
    await triggers.pause(ids["A"])
    # A goes: B keeps its own id and state, and does not take A's pause
    await world.orch.register(two_same_schedule("1.1.0", "C", "B"), yaml=False, force=False)
    listed = {t["inputs"]["source"]: (t["id"], t["paused"]) for t in triggers.listing()}
    assert listed["B"] == (ids["B"], False)
    assert listed["C"][0] not in ids.values() and listed["C"][1] is False
    world.clock.now = T0 + 300
    assert await triggers.tick() == 2
    assert sorted(r["inputs"]["source"] for r in await world.executions()) == ["B", "C"]


async def test_http_paths_belong_to_one_workflow(world: World) -> None:
    triggers = await world.triggers()
    hook = {"id": "a", "version": "1.0.0", "nodes": [{"id": "n", "sleep": "0s"}]}
    hook["triggers"] = [{"http": {"path": "/hooks/x", "auth": {"hmac_env": "X_SECRET"}}}]
    await world.orch.register(json.dumps(hook), yaml=False, force=False)
    assert triggers.route("/hooks/x") is not None and triggers.route("/hooks/x/") is not None
    other = {**hook, "id": "b"}
    with pytest.raises(TriggerConflict, match="already served by workflow a"):
        await world.orch.register(json.dumps(other), yaml=False, force=False)
    with pytest.raises(NotFound):
        await world.orch.get_workflow("b")


async def test_a_hook_whose_secret_is_not_set_is_registered_with_a_warning(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    await world.triggers(environ={"SET_TOKEN": "t0k", "BLANK": "  "})
    hook = {"id": "a", "version": "1.0.0", "nodes": [{"id": "n", "sleep": "0s"}]}
    hook["triggers"] = [
        {"http": {"path": "/hooks/set", "auth": {"bearer_env": "SET_TOKEN"}}},
        {"http": {"path": "/hooks/unset", "auth": {"hmac_env": "UNSET_SECRET"}}},
        {"http": {"path": "/hooks/blank", "auth": {"bearer_env": "BLANK"}}},
        {"http": {"path": "/hooks/open"}},
    ]
    said = [
        "the trigger on /hooks/unset reads its secret from UNSET_SECRET, which is not set on the "
        "orchestrator: its deliveries are refused (503) until it is set and the orchestrator "
        "restarted",
        "the trigger on /hooks/blank reads its secret from BLANK, which is not set on the "
        "orchestrator: its deliveries are refused (503) until it is set and the orchestrator "
        "restarted",
    ]
    described, created = await world.orch.register(json.dumps(hook), yaml=False, force=False)
    assert created and described["warnings"] == said  # registered all the same
    assert any("UNSET_SECRET" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    # said again to whoever applies it again, unchanged
    described, created = await world.orch.register(json.dumps(hook), yaml=False, force=False)
    assert not created and described["warnings"] == said
    quiet = {**hook, "id": "b", "triggers": [{"http": {"path": "/hooks/b"}}]}
    described, _ = await world.orch.register(json.dumps(quiet), yaml=False, force=False)
    assert "warnings" not in described


def _hook(**config: Any) -> HttpTrigger:
    from orchestrator.store import StoredTrigger

    row = StoredTrigger(
        "wf:h", "wf", "http", "spec", "1.0.0", {"path": "/h", **config}, False, 0, 0
    )
    return HttpTrigger(row, {})


def test_hmac_auth_good_bad_and_missing() -> None:
    hook = _hook(hmac_env="SECRET")
    env = {"SECRET": "k3y"}
    body = b'{"action":"opened"}'
    good = "sha256=" + hmac.new(b"k3y", body, hashlib.sha256).hexdigest()
    hook.authenticate({"X-Signature-256": good}, body, env, None)
    hook.authenticate(
        {"X-Hub-Signature-256": good.upper().replace("SHA256", "sha256")}, body, env, None
    )
    with pytest.raises(TriggerForbidden):
        hook.authenticate({"X-Signature-256": good}, body + b" ", env, None)
    with pytest.raises(TriggerForbidden):
        hook.authenticate({"X-Signature-256": "sha1=" + good[7:]}, body, env, None)
    with pytest.raises(TriggerUnauthorized):
        hook.authenticate({}, body, env, None)
    with pytest.raises(TriggerSecretMissing, match="SECRET, which is not set"):
        hook.authenticate({"X-Signature-256": good}, body, {}, None)


def test_bearer_auth_and_the_api_token_fallback() -> None:
    hook = _hook(bearer_env="TOKEN")
    env = {"TOKEN": "t0k"}
    hook.authenticate({"Authorization": "Bearer t0k"}, b"", env, "api")
    with pytest.raises(TriggerForbidden):
        hook.authenticate({"Authorization": "Bearer api"}, b"", env, "api")
    with pytest.raises(TriggerUnauthorized):
        hook.authenticate({}, b"", env, None)
    open_hook = _hook()
    open_hook.authenticate({}, b"", {}, None)  # no auth named, no API token: open
    with pytest.raises(TriggerUnauthorized):
        open_hook.authenticate({}, b"", {}, "api")
    open_hook.authenticate({"Authorization": "Bearer api"}, b"", {}, "api")


def test_a_secret_made_from_a_file_matches_without_its_newline() -> None:
    env = {"TOKEN": "t0k\n", "SECRET": "k3y\n", "BLANK": " \n"}
    _hook(bearer_env="TOKEN").authenticate({"Authorization": "Bearer t0k"}, b"", env, None)
    body = b"{}"
    signed = "sha256=" + hmac.new(b"k3y", body, hashlib.sha256).hexdigest()
    _hook(hmac_env="SECRET").authenticate({"X-Signature-256": signed}, body, env, None)
    with pytest.raises(TriggerSecretMissing, match="BLANK, which is not set"):
        _hook(bearer_env="BLANK").authenticate({"Authorization": "Bearer x"}, b"", env, None)


async def test_asking_again_for_a_finished_keyed_run_leaves_no_waiters(world: World) -> None:
    await world.orch.register(spec(), yaml=False, force=False)
    first, created = await world.orch.execute(
        "wf", inputs={}, version=None, idempotency_key="k", wait=None
    )
    assert created
    eid = str(first["id"])
    final = {
        "seq": 2,
        "time": iso(T0),
        "type": "execution.succeeded",
        "severity": "info",
        "workflow_id": "wf",
        "version": "1.0.0",
        "execution_id": eid,
        "node_id": None,
        "engine_id": None,
        "attempt": None,
        "data": {"outputs": {}},
    }
    await world.store.record_events(eid, [final])
    world.orch.finished(eid, final)
    for _ in range(3):
        again, created = await world.orch.execute(
            "wf", inputs={}, version=None, idempotency_key="k", wait=5.0
        )
        assert (again["id"], again["status"], created) == (eid, "succeeded", False)
    # before: an empty list of waiters kept for the run, for good
    assert world.orch._waiters == {}


async def test_deleting_a_trigger_while_its_slot_is_being_decided_deletes_that_slot_too(
    world: World,
) -> None:
    triggers = await world.triggers()
    await world.orch.register(spec(cron="0 0 1 1 *"), yaml=False, force=False)
    made = await triggers.create({"id": "every-minute", "workflow_id": "wf", "cron": "* * * * *"})
    assert made["id"] == "every-minute"
    execute = world.orch.execute
    storing = asyncio.Event()
    go_on = asyncio.Event()

    async def slow_execute(*args: Any, **kwargs: Any) -> Any:
        storing.set()
        await go_on.wait()  # the slot's run is on its way to the store
        return await execute(*args, **kwargs)

    world.orch.execute = slow_execute  # type: ignore[method-assign]
    world.clock.now = T0 + 60
    tick = asyncio.ensure_future(triggers.tick())
    await asyncio.wait_for(storing.wait(), 5)
    delete = asyncio.ensure_future(triggers.delete("every-minute"))
    await asyncio.sleep(0.05)
    assert not delete.done()  # it waits for the slot being decided
    go_on.set()
    await asyncio.wait_for(asyncio.gather(tick, delete), 5)
    # before: the slot's row was written after the delete, and a trigger made again with the
    # same id showed a fire from before it existed (and resumed after it)
    again = await triggers.create({"id": "every-minute", "workflow_id": "wf", "cron": "* * * * *"})
    assert again["id"] == "every-minute"
    assert await triggers.history("every-minute") == []


async def test_a_wall_clock_set_forward_past_a_slot_fires_it_without_waiting_for_the_slot() -> None:
    from orchestrator.store import StoredTrigger
    from orchestrator.triggering import CronLoop, CronTrigger

    wall = [T0]  # 12:00:00; the next hourly slot is 13:00
    fired: list[float] = []
    reached = asyncio.Event()

    def on_due(trigger: CronTrigger, slot: float, now: float) -> None:
        fired.append(slot)
        reached.set()

    loop = CronLoop(on_due, lambda trigger, slot, now: None, clock=lambda: wall[0], recheck=0.05)
    row = StoredTrigger("wf:c", "wf", "cron", "spec", "1.0.0", {"cron": "0 * * * *"}, False, 0, 0)
    trigger = CronTrigger(row, loop)
    await trigger.start()
    running = asyncio.ensure_future(loop.run())
    try:
        await asyncio.sleep(0.1)  # the loop now waits for 13:00 on the monotonic clock
        assert fired == []
        wall[0] = T0 + 3601  # set forward (or a machine suspended for an hour) past 13:00
        await asyncio.wait_for(reached.wait(), 10)  # not an hour
        assert fired == [T0 + 3600]
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
