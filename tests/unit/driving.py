"""A fake clock and bookkeeping around ``Run`` for scheduler tests; checks invariants every step."""

from __future__ import annotations

from typing import Any

from engine.core import scheduler as sch
from engine.core.spec import WorkflowSpec, parse_spec
from engine.core.values import JSON


def spec(nodes: list[dict[str, Any]], **top: Any) -> WorkflowSpec:
    doc: dict[str, Any] = {"id": "t", "version": "1.0.0", "nodes": nodes, **top}
    return parse_spec(doc)


def lua(node_id: str, *deps: str, **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "lua": "return {}", "depends_on": list(deps), **extra}


class Driver:
    def __init__(self, wf: WorkflowSpec, inputs: JSON = None, **kw: Any) -> None:
        self.run = sch.Run(
            wf, inputs if inputs is not None else {}, rand=kw.pop("rand", lambda: 0.5), **kw
        )
        self.now = 0.0
        self.tasks: dict[tuple[str, int | None], sch.RunTask] = {}
        self.timers: dict[Any, float] = {}
        self.conditions: list[str] = []
        self.cancelled: list[tuple[str, int | None]] = []
        self.events: list[sch.Emit] = []
        self.started_order: list[str] = []
        self.finish: sch.Finish | None = None

    def feed(self, *stimuli: sch.Stimulus) -> list[sch.Instruction]:
        out = self.run.handle(*stimuli)
        self.run.validate_state()
        for ins in out:
            if isinstance(ins, sch.RunTask):
                self.tasks[(ins.node_id, ins.item)] = ins
                self.started_order.append(ins.node_id)
            elif isinstance(ins, sch.StartTimer):
                self.timers[ins.key] = self.now + ins.delay
            elif isinstance(ins, sch.EvaluateCondition):
                self.conditions.append(ins.node_id)
            elif isinstance(ins, sch.CancelTask):
                self.cancelled.append((ins.node_id, ins.item))
                self.tasks.pop((ins.node_id, ins.item), None)
            elif isinstance(ins, sch.Emit):
                self.events.append(ins)
            elif isinstance(ins, sch.Finish):
                assert self.finish is None, "finished twice"
                self.finish = ins
        return out

    def start(self) -> Driver:
        self.feed(sch.Start(self.now))
        return self

    def succeed(self, node_id: str, output: JSON = None, item: int | None = None) -> None:
        task = self.tasks.pop((node_id, item))
        self.feed(
            sch.TaskSucceeded(
                node_id, item, task.attempt, output if output is not None else {}, self.now
            )
        )

    def fail(self, node_id: str, error: str = "boom", item: int | None = None) -> None:
        task = self.tasks.pop((node_id, item))
        self.feed(sch.TaskFailed(node_id, item, task.attempt, error, self.now))

    def condition(self, node_id: str, value: bool | None, error: str | None = None) -> None:
        self.conditions.remove(node_id)
        self.feed(sch.ConditionEvaluated(node_id, value, error, self.now))

    def advance(self, seconds: float) -> None:
        """Move the fake clock, firing due timers in time order."""
        target = self.now + seconds
        while True:
            due = sorted((t, k) for k, t in self.timers.items() if t <= target)
            if not due:
                break
            at, key = due[0]
            del self.timers[key]
            self.now = at
            self.feed(sch.TimerFired(key, self.now))
        self.now = target

    def running(self) -> set[str]:
        return {n for n, _ in self.tasks}

    def status(self, node_id: str) -> str:
        return self.run.record(node_id).status

    def types(self, node_id: str | None = None) -> list[str]:
        return [e.type for e in self.events if node_id is None or e.node_id == node_id]
