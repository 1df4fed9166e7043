"""``dagctl logs`` where a live system cannot be made to show it on cue: a timeline of many
pages over the real HTTP API and a real SQLite store (read a page at a time, every line once,
in order), a queued run, styles on a terminal, and a followed run whose orchestrator has no
live stream free or restarts (the fake orchestrator of ``test_dagctl_following``): every line
once either way, the lines of the polled stretch read back from the timeline at the end.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from engine.core.spec import parse_spec
from orchestrator.dagctl import main
from orchestrator.dagctl.calling import Client
from orchestrator.dagctl.cli import build_parser, cmd_logs
from orchestrator.lua_checking import LuaSyntaxChecker
from orchestrator.store import Store
from orchestrator.versions import Registry
from tests.component.monitor_events import create_run, monitor_event
from tests.component.serving_helpers import facade, serving
from tests.component.test_dagctl import Dagctl, Plan
from tests.component.test_dagctl_following import Restartable, running

SPEC = {
    "id": "wf",
    "version": "1.0.0",
    "nodes": [{"id": "a", "lua": "return 1"}, {"id": "b", "lua": "return 2"}],
}


def logged(execution_id: str, seq: int, node: str, message: str, **data: Any) -> dict[str, Any]:
    return monitor_event(
        execution_id,
        seq,
        "node.log",
        node_id=node,
        data={"level": "info", "message": message, **data},
    )


class Served:
    def __init__(self, url: str, store: Store, asked: list[str]) -> None:
        self.url = url
        self.store = store
        self.asked = asked
        """The query strings of the stored-timeline requests, in order."""

    async def create(self, execution_id: str) -> None:
        await create_run(self.store, execution_id, ["a", "b"])


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    store = await Store.open(str(tmp_path / "state.db"))
    registry = Registry()
    await store.register_version(registry.plan_register(parse_spec(SPEC), force=False, now=1.0))
    checker = LuaSyntaxChecker()
    asked: list[str] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.endswith("/events") and "/executions/" in request.path:
            asked.append(request.query_string)
        return await handler(request)  # type: ignore[no-any-return]

    try:
        async with serving(facade(store, checker, registry), middlewares=[record]) as (url, _):
            yield Served(url, store, asked)
    finally:
        checker.close()
        await store.close()


async def dagctl(url: str, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv), {"DAGCTL_SERVER": url})
    seen = capsys.readouterr()
    return code, seen.out, seen.err


async def test_a_timeline_of_many_pages_is_read_a_page_at_a_time_each_line_once(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    await served.create("big")
    events = []
    for seq in range(2, 12_002):
        if seq % 3:
            events.append(monitor_event("big", seq, "node.started", node_id="a"))
        else:
            events.append(logged("big", seq, "a" if seq % 2 else "b", f"line {seq}"))
    for start in range(0, len(events), 50):
        await served.store.record_events("big", events[start : start + 50])
    await served.store.record_events("big", [monitor_event("big", 12_002, "execution.succeeded")])
    code, out, err = await dagctl(served.url, capsys, "logs", "big")
    assert (code, err) == (0, "")
    wanted = [seq for seq in range(2, 12_002) if not seq % 3]
    assert [line.split()[-1] for line in out.splitlines()] == [str(seq) for seq in wanted]
    assert out.splitlines()[0] == "00:00:00.000Z  a             info   line 3"
    # never the whole timeline at once: a bounded page after another, from where one ended
    assert len(served.asked) >= 3 and all("limit=5000" in q for q in served.asked)
    code, out, _ = await dagctl(served.url, capsys, "logs", "big", "--node", "a", "-o", "json")
    assert code == 0
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [
        seq for seq in wanted if seq % 2
    ]


async def test_a_queued_run_has_no_lines_yet(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    await served.create("waiting")
    code, out, err = await dagctl(served.url, capsys, "logs", "waiting")
    assert (code, out) == (0, "")
    assert err == "execution waiting has no log lines (yet)\n"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_a_terminal_gets_styles_and_a_pipe_plain_text(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("NO_COLOR", raising=False)
    await served.create("styled")
    levels = ["debug", "info", "warn", "error", "critical"]
    await served.store.record_events(
        "styled",
        [
            logged("styled", 2 + i, "a", f"as {level}\x1b[31m", level=level, item=i)
            for i, level in enumerate(levels)
        ],
    )
    client = Client(served.url, None)
    args = build_parser().parse_args(["logs", "styled"])
    screen, pipe, err = Terminal(), io.StringIO(), io.StringIO()
    assert await asyncio.to_thread(cmd_logs, args, client, screen, err) == 0
    assert await asyncio.to_thread(cmd_logs, args, client, pipe, err) == 0
    plain = pipe.getvalue().splitlines()
    assert plain[3] == "00:00:00.000Z  a[3]          error  as error\\x1b[31m"
    assert "\x1b" not in pipe.getvalue()
    drawn = screen.getvalue().splitlines()
    assert "\x1b[2m00:00:00.000Z\x1b[0m" in drawn[0]  # the time dim
    assert "\x1b[2mdebug" in drawn[0]
    assert "\x1b[33mwarn" in drawn[2]
    assert "\x1b[31merror" in drawn[3]
    assert "\x1b[1;31mcritical" in drawn[4]
    # what the script wrote is never a style: its escape shows as text
    assert all(
        "as " + level + "\\x1b[31m" in line for level, line in zip(levels, drawn, strict=True)
    )


# -- followed: the fake orchestrator ---------------------------------------------------------


class Chatty(Restartable):
    """``gated`` logs a line in its first node, then, once ``gate`` is set, two more."""

    def __init__(self) -> None:
        super().__init__()
        self.plans["gated"] = Plan(["a", "b", "c"])

    async def run(self, eid: str, plan: Plan) -> None:
        if plan.nodes != ["a", "b", "c"]:
            return await super().run(eid, plan)
        await self.watched[eid].wait()
        self.emit(eid, "execution.started")
        self.emit(eid, "node.started", "a")
        self.emit(eid, "node.log", "a", level="info", message="first")
        self.emit(eid, "node.succeeded", "a", output=1)
        self.first_node_done.set()
        await self.gate.wait()
        self.emit(eid, "node.started", "b")
        self.emit(eid, "node.log", "b", level="warn", message="second", item=0)
        self.emit(eid, "node.log", "b", level="error", message="third", item=1, attempt=2)
        if self.gated_fails:
            self.emit(eid, "node.failed", "b", error="boom")
            self.emit(eid, "node.blocked", "c", error="an upstream node failed", attempt=0)
            self.emit(eid, "execution.failed", error="node b failed", outputs={})
            return
        self.emit(eid, "node.succeeded", "b", output=2)
        self.emit(eid, "node.started", "c")
        self.emit(eid, "node.succeeded", "c", output=3)
        self.emit(eid, "execution.succeeded", outputs={"c": 3})


@pytest.fixture
async def chatty() -> AsyncIterator[Chatty]:
    async with running(Chatty()) as fake:
        yield fake


@pytest.fixture
def run_dagctl(capsys: pytest.CaptureFixture[str]) -> Dagctl:
    return Dagctl(capsys)


def said(out: str) -> list[str]:
    return [" ".join(line.split()[1:]) for line in out.splitlines()]


@pytest.mark.parametrize(("fails", "code"), [(False, 0), (True, 1)])
async def test_followed_by_polling_the_lines_come_at_the_end_each_once(
    chatty: Chatty, run_dagctl: Dagctl, fails: bool, code: int
) -> None:
    chatty.busy_streams = 100  # no live stream: run --wait's way of following is polling
    chatty.gated_fails = fails
    started = await run_dagctl(chatty, "run", "gated", "-o", "json")
    eid = json.loads(started.out)["execution_id"]
    following = asyncio.create_task(run_dagctl(chatty, "logs", "-f", eid))
    await asyncio.wait_for(chatty.first_node_done.wait(), 10)
    await asyncio.sleep(0.6)  # a poll or two while it waits
    chatty.gate.set()
    result = await asyncio.wait_for(following, 30)
    assert result.code == code, result.err
    assert said(result.out) == ["a info first", "b[0] warn second", "b[1] attempt 2 error third"]
    assert result.err.splitlines() == [
        "dagctl: 1000 live streams are open (too_many_subscribers): following by polling, "
        "without log lines",
        "dagctl: the lines it logs meanwhile come when it ends, from its timeline",
    ]


async def test_followed_through_a_restart_each_line_once(
    chatty: Chatty, run_dagctl: Dagctl
) -> None:
    started = await run_dagctl(chatty, "run", "gated", "-o", "json")
    eid = json.loads(started.out)["execution_id"]
    following = asyncio.create_task(run_dagctl(chatty, "logs", "-f", eid, "--node", "b"))
    await asyncio.wait_for(chatty.first_node_done.wait(), 10)
    await asyncio.sleep(0.2)
    await chatty.stop()
    chatty.gate.set()
    await asyncio.sleep(1.0)
    await chatty.start()
    result = await asyncio.wait_for(following, 30)
    assert result.code == 0, result.err
    assert said(result.out) == ["b[0] warn second", "b[1] attempt 2 error third"]
    assert "lost the orchestrator" in result.err and "again" in result.err
