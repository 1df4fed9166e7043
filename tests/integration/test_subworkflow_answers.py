"""A parent's engine that misses the one final answer for its sub-workflow node (frozen past the
call's deadline, but not for long enough to be taken for lost) still gets it: the orchestrator
sends it again while the parent's stream lives. Real processes on loopback; the orchestrator's
answer deadline is cut to a second (``RESOLVE_TIMEOUT``, set as it starts) so that missing it
takes a moment, not ten seconds."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.api import get, register, start, wait_end, wait_for
from tests.integration.conftest import ROOT, StartCluster

pytestmark = pytest.mark.slow

CHILD = """
id: kid
version: 1.0.0
nodes:
  - id: nap
    sleep: 3s
  - id: out
    depends_on: [nap]
    lua: return { v = 42 }
"""

PARENT = """
id: par
version: 1.0.0
nodes:
  - id: call
    workflow: {id: kid, version: "^1"}
  - id: after
    depends_on: [call]
    lua: return { got = results.call.out.v }
"""

SHORT_DEADLINE = """
import orchestrator.subworkflows

orchestrator.subworkflows.RESOLVE_TIMEOUT = 1.0
"""


def short_answer_deadline(tmp_path: Path) -> str:
    """The PYTHONPATH of an orchestrator whose sub-workflow answers time out after 1 s."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SHORT_DEADLINE)
    return os.pathsep.join([str(site), str(ROOT)])


def records(log: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def answers_not_taken(log: str, engine_id: str) -> list[dict[str, Any]]:
    return [
        r
        for r in records(log)
        if "not taken by" in str(r.get("message", "")) and engine_id in str(r.get("message"))
    ]


async def test_an_answer_its_frozen_engine_missed_is_sent_again(
    start_cluster: StartCluster, tmp_path: Path
) -> None:
    cluster = start_cluster(
        API_TOKEN="s3cret",
        LOAD_BALANCER_TYPE="round-robin",
        # no health check takes the frozen engine for lost. The link's pings would, 5 s into
        # a ping it does not answer (fleet.CHANNEL_OPTIONS), and the parent would then resume
        # elsewhere and ask for its answer afresh: the freeze is kept shorter (the child's 3 s
        # nap and one missed 1 s answer), and the log is read below to see it stayed short
        ENGINE_HEALTH_CHECK_INTERVAL="60",
        PYTHONPATH=short_answer_deadline(tmp_path),
    )
    url = cluster.url
    async with aiohttp.ClientSession() as http:
        await register(http, url, CHILD)
        await register(http, url, PARENT)
        parent_id = await start(http, url, "par")

        async def announced() -> Any:
            events = (await get(http, f"{url}/api/v1/executions/{parent_id}/events"))["events"]
            started = [e for e in events if e["type"] == "subworkflow.started"]
            return started[0] if started else None

        child_id = (await wait_for("the child announced", announced))["data"]["child_execution_id"]
        parent = await get(http, f"{url}/api/v1/executions/{parent_id}")
        engine_id = parent["nodes"]["call"]["engine_id"]
        [frozen] = [e for e in cluster.engines if e.env["ENGINE_ID"] == engine_id]
        frozen.proc.send_signal(signal.SIGSTOP)
        try:
            child = await get(http, f"{url}/api/v1/executions/{child_id}")
            assert child["nodes"]["nap"]["engine_id"] != engine_id, child
            assert child["finished_at"] is None, "the child ended before its parent's engine froze"
            child = await wait_end(http, url, child_id, timeout=30)
            assert child["status"] == "succeeded", child

            async def missed() -> list[dict[str, Any]]:
                return answers_not_taken(cluster.orchestrator.log(), engine_id)

            # the child's answer has missed the frozen engine at least once
            await wait_for("the answer not taken", missed)
        finally:
            frozen.proc.send_signal(signal.SIGCONT)
        # before: the node waited for good, its run "running" with its stream open
        parent = await wait_end(http, url, parent_id, timeout=30)
        assert parent["status"] == "succeeded", parent
        assert parent["outputs"] == {"after": {"got": 42}}
        events = (await get(http, f"{url}/api/v1/executions/{parent_id}/events"))["events"]
        finished = [e for e in events if e["type"] == "subworkflow.finished"]
        assert [e["data"]["child_execution_id"] for e in finished] == [child_id]
    assert all(e.proc.poll() is None for e in cluster.engines)
    messages = [str(r.get("message", "")) for r in records(cluster.orchestrator.log())]
    # the parent stayed on its stream and engine: the answer got there by being sent again,
    # not by a resumed parent asking for it
    assert any(
        m.startswith(f"sub-workflow answer for {parent_id} node call sent again") for m in messages
    ), messages
    assert not [m for m in messages if "resuming elsewhere" in m], messages
