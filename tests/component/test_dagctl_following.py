"""dagctl following a run (``run --wait``, ``events -f``) while its orchestrator goes away and
comes back, or has no live stream to give: against the fake orchestrator of ``test_dagctl``,
stopped and started again on the same port with its runs kept.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

import pytest
from aiohttp import web

from orchestrator.dagctl import cli
from orchestrator.dagctl.calling import ApiError, Client, Unreachable
from orchestrator.dagctl.cli import follow
from tests.component.test_dagctl import Dagctl, FakeOrchestrator, Plan, error

GATED = ["a", "b", "c"]


class Restartable(FakeOrchestrator):
    """A fake whose ``gated`` run stops after its first node until ``gate`` is set, whose
    live stream can answer 503 a few times, and that can be stopped and started again."""

    def __init__(self) -> None:
        super().__init__()
        self.workflows["gated"] = {"id": "gated", "version": "1.0.0", "versions": ["1.0.0"]}
        self.plans["gated"] = Plan(GATED)
        self.gate = asyncio.Event()
        self.busy_streams = 0
        """Live streams still to be refused with 503 too_many_subscribers."""
        self.port = 0
        self.runner: web.AppRunner | None = None
        self.first_node_done = asyncio.Event()
        self.gated_fails = False
        self.workflows["zoë"] = {"id": "zoë", "version": "1.0.0", "name": "Zoë ☃", "versions": []}

    async def run(self, eid: str, plan: Plan) -> None:
        if plan.nodes != GATED:
            return await super().run(eid, plan)
        await self.watched[eid].wait()
        self.emit(eid, "execution.started")
        self.emit(eid, "node.started", "a")
        self.emit(eid, "node.succeeded", "a", output=1)
        self.first_node_done.set()
        await self.gate.wait()
        if self.gated_fails:
            self.emit(eid, "node.started", "b")
            self.emit(eid, "node.failed", "b", error="boom")
            self.emit(eid, "node.blocked", "c", error="an upstream node failed", attempt=0)
            self.emit(eid, "execution.failed", error="node b failed", outputs={})
            return
        for node in GATED[1:]:
            self.emit(eid, "node.started", node)
            self.emit(eid, "node.succeeded", node, output=2)
        self.emit(eid, "execution.succeeded", outputs={"c": 2})

    async def live_events(self, request: web.Request) -> web.StreamResponse:
        if self.busy_streams:
            self.busy_streams -= 1
            response = error(503, "too_many_subscribers", "1000 live streams are open")
            response.headers["Retry-After"] = "1"
            return response
        return await super().live_events(request)

    async def get_execution(self, request: web.Request) -> web.Response:
        eid = request.match_info["execution_id"]
        if eid in self.watched:
            self.watched[eid].set()  # polling counts as watching
        return await super().get_execution(request)

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app(), shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = int(self.runner.addresses[0][1])
        self.url = f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        """As the orchestrator stopping: its streams end, its port refuses; runs are kept."""
        for _, _, queue in list(self.streams):
            queue.put_nowait(None)
        assert self.runner is not None
        await self.runner.cleanup()
        self.runner = None


R = TypeVar("R", bound=Restartable)


@asynccontextmanager
async def running(fake: R) -> AsyncIterator[R]:
    """``fake`` started, and stopped with its runs' tasks after."""
    await fake.start()
    try:
        yield fake
    finally:
        if fake.runner is not None:
            await fake.stop()
        for task in fake.tasks:
            task.cancel()
        await asyncio.gather(*fake.tasks, return_exceptions=True)


@pytest.fixture
async def restartable() -> AsyncIterator[Restartable]:
    async with running(Restartable()) as fake:
        yield fake


@pytest.fixture
def dagctl(capsys: pytest.CaptureFixture[str]) -> Dagctl:
    return Dagctl(capsys)


def node_lines(out: str) -> list[list[str]]:
    """(node, what) of each progress line of ``run --wait`` off a terminal."""
    return [line.split()[1:3] for line in out.splitlines() if line[:1] == " " and "s  " in line]


async def test_run_wait_follows_on_through_an_orchestrator_restart(
    restartable: Restartable, dagctl: Dagctl
) -> None:
    waiting = asyncio.create_task(dagctl(restartable, "run", "gated", "--wait"))
    await asyncio.wait_for(restartable.first_node_done.wait(), 10)
    await asyncio.sleep(0.2)  # its first events on the way to dagctl
    await restartable.stop()
    restartable.gate.set()  # the run goes on (and ends) while dagctl cannot reach it
    await asyncio.sleep(1.0)  # dagctl finds the port refusing
    await restartable.start()
    result = await asyncio.wait_for(waiting, 30)
    assert result.code == 0, result.err
    (eid,) = restartable.executions
    lines = node_lines(result.out)
    # every event once: none lost in the outage, none told twice after it
    for node in GATED:
        assert lines.count([node, "started"]) == 1, result.out
        assert lines.count([node, "succeeded"]) == 1, result.out
    assert f"execution {eid} succeeded" in result.out
    said = result.err.splitlines()
    assert len(said) == 2, result.err
    assert said[0].startswith(f"dagctl: lost the orchestrator at {restartable.url} (")
    assert said[1] == f"dagctl: reached the orchestrator at {restartable.url} again"


async def test_run_wait_gives_up_on_an_orchestrator_gone_for_good_with_its_own_code(
    restartable: Restartable, dagctl: Dagctl, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "GIVE_UP_AFTER", 1.5)
    waiting = asyncio.create_task(dagctl(restartable, "run", "gated", "--wait"))
    await asyncio.wait_for(restartable.first_node_done.wait(), 10)
    await restartable.stop()
    result = await asyncio.wait_for(waiting, 30)
    (eid,) = restartable.executions
    # not 1, which says the run failed: it goes on, unseen
    assert result.code == cli.EXIT_LOST == 3
    said = result.err.splitlines()
    assert said[0].startswith("dagctl: lost the orchestrator")
    assert said[-1].startswith(f"dagctl: gave up on the orchestrator at {restartable.url} after")
    assert said[-1].endswith(f"; it goes on (dagctl describe execution {eid})")


async def test_run_wait_polls_when_no_live_stream_is_free(
    restartable: Restartable, dagctl: Dagctl
) -> None:
    restartable.busy_streams = 100
    restartable.gate.set()
    result = await dagctl(restartable, "run", "gated", "--wait")
    assert result.code == 0, result.err
    lines = node_lines(result.out)
    assert ["c", "succeeded"] in lines
    (eid,) = restartable.executions
    assert f"execution {eid} succeeded" in result.out
    assert result.err == (
        "dagctl: 1000 live streams are open (too_many_subscribers): following by polling, "
        "without log lines\n"
    )


async def test_run_wait_that_fails_after_a_busy_stream_still_exits_1(
    restartable: Restartable, dagctl: Dagctl
) -> None:
    restartable.busy_streams = 100
    result = await dagctl(restartable, "run", "shaky", "--wait")
    assert result.code == 1
    assert "error: node store failed" in result.out


async def test_events_follow_waits_out_busy_streams_as_asked(
    restartable: Restartable, dagctl: Dagctl
) -> None:
    started = await dagctl(restartable, "run", "diamond", "-o", "json")
    eid = json.loads(started.out)["execution_id"]
    restartable.busy_streams = 2
    result = await dagctl(restartable, "events", "-f", eid)
    assert result.code == 0, result.err
    kinds = [line.split()[1] for line in result.out.splitlines()]
    assert kinds[0] == "execution.queued" and kinds[-1] == "execution.succeeded"
    assert kinds.count("node.succeeded") == 4
    assert result.err.splitlines() == [
        f"dagctl: no live stream free at the orchestrator at {restartable.url} "
        "(503 too_many_subscribers); trying again, following on from the last event seen",
        f"dagctl: reached the orchestrator at {restartable.url} again",
    ]
    opened = restartable.requested("GET", "/api/v1/events")
    assert len(opened) == 3


async def test_events_follow_through_a_restart_tells_each_event_once(
    restartable: Restartable, dagctl: Dagctl
) -> None:
    started = await dagctl(restartable, "run", "gated", "-o", "json")
    eid = json.loads(started.out)["execution_id"]
    following = asyncio.create_task(dagctl(restartable, "events", "-f", eid))
    await asyncio.wait_for(restartable.first_node_done.wait(), 10)
    await asyncio.sleep(0.2)
    await restartable.stop()
    restartable.gate.set()
    await asyncio.sleep(1.0)
    await restartable.start()
    result = await asyncio.wait_for(following, 30)
    assert result.code == 0, result.err
    told = [tuple(line.split()[1:5:3]) for line in result.out.splitlines()]
    expected = [(e["type"], e["node_id"] or "-") for e in restartable.timelines[eid]]
    assert told == expected


def test_an_outage_is_tried_again_sooner_then_later_and_given_up_after_two_minutes() -> None:
    outage = cli.Outage()
    waits = []
    now = 100.0
    while (wait := outage.next_try(now)) is not None:
        waits.append(wait)
        now += wait
    assert waits[:5] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert sum(waits) == pytest.approx(cli.GIVE_UP_AFTER)
    assert outage.over() is True and outage.over() is False
    # a Retry-After is waited for as asked, within reason
    assert cli.Outage().next_try(0.0, retry_after=5.0) == 5.0
    assert cli.Outage().next_try(0.0, retry_after=3600.0) == cli.RETRY_AFTER_MOST


def test_a_refusal_while_following_is_no_outage() -> None:
    said: list[str] = []
    reconnecting = cli.Reconnecting("http://x", said.append)
    refusal = ApiError(404, "not_found", "gone", {})
    with pytest.raises(ApiError):
        reconnecting.failed(refusal)
    assert said == []
    # an orchestrator never reached is the wrong address, told at once
    never = cli.Reconnecting("http://x", said.append, reached=False)
    with pytest.raises(Unreachable):
        never.failed(Unreachable("http://x", "connection refused"))


async def dagctl_process(
    fake: FakeOrchestrator, *argv: str, **env: str
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator.dagctl",
        *argv,
        env={**os.environ, "DAGCTL_SERVER": fake.url, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_run_wait_whose_reader_left_still_exits_with_the_runs_code(
    restartable: Restartable,
) -> None:
    # dagctl run gated --wait | head -1: the reader leaves after the first line
    restartable.gated_fails = True
    proc = await dagctl_process(restartable, "run", "gated", "--wait")
    assert proc.stdout is not None and proc.stderr is not None
    first = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert first.startswith(b"execution ")
    await asyncio.wait_for(restartable.first_node_done.wait(), 10)
    transport = proc._transport  # type: ignore[attr-defined]
    transport.get_pipe_transport(1).close()  # the read end of its stdout, as head exits
    restartable.gate.set()
    err = await asyncio.wait_for(proc.stderr.read(), 30)
    code = await proc.wait()
    # the run failed: not the closed pipe's 0, and no traceback about the pipe
    assert code == 1, err
    assert err == b""


async def test_text_the_output_cannot_encode_is_escaped_not_a_traceback(
    restartable: Restartable,
) -> None:
    proc = await dagctl_process(restartable, "get", "workflows", PYTHONIOENCODING="ascii")
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    assert b"Zo\\xeb" in out and b"\\u2603" in out
    assert err == b""


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_a_dumb_terminal_gets_lines_as_they_happen(
    restartable: Restartable, monkeypatch: pytest.MonkeyPatch
) -> None:
    # TERM=dumb: a live display would show nothing until the run ended
    monkeypatch.setenv("TERM", "dumb")
    client = Client(restartable.url)
    accepted = await asyncio.to_thread(client.post, "/trigger/diamond", {"inputs": {}})
    eid = str(accepted.body["execution_id"])
    screen = Terminal()
    doc = await asyncio.to_thread(follow, client, eid, screen)
    assert doc["status"] == "succeeded"
    lines = screen.getvalue().splitlines()
    assert lines[0] == f"execution {eid} (diamond@1.0.0)"
    assert "\x1b[" not in screen.getvalue()
    assert ["d", "succeeded"] in [line.split()[1:3] for line in lines]


async def test_outputs_after_a_run_show_control_characters_escaped(
    restartable: Restartable, dagctl: Dagctl
) -> None:
    text = "a\u202eb\x9bc\x7fd"
    result = await dagctl(restartable, "run", "hello", "--input", f"s={text}", "--wait")
    assert result.code == 0, result.err
    outputs = result.out.split("outputs:\n", 1)[1]
    assert '"s": "a\\u202eb\\x9bc\\x7fd"' in outputs
    # -o json shows them as sent
    raw = await dagctl(restartable, "run", "hello", "--input", f"s={text}", "--wait", "-o", "json")
    assert json.loads(raw.out)["outputs"]["greet"]["inputs"]["s"] == text
