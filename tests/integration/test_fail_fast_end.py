"""A run ended by ``fail_fast`` while another script of it still runs, end to end: an
orchestrator and an engine as real processes. The run's final event is its last, a caller
waiting on it is answered at once, and a parent running it as a sub-workflow goes on."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.integration.api import TOKEN, get, register, start, wait_end
from tests.integration.conftest import Cluster, running_cluster

pytestmark = pytest.mark.slow

CHILD = """
id: ffl
version: 1.0.0
fail_fast: true
nodes:
  - id: s
    sleep: 100ms
  - id: bad
    depends_on: [s]
    lua: error("bad")
  - id: busy
    lua: |
      log("info", "busy begins")
      while true do end
"""

PARENT = """
id: pffl
version: 1.0.0
nodes:
  - id: child
    workflow: {id: ffl, version: "^1"}
  - id: after
    depends_on: [child]
    trigger_rule: all_done
    lua: return "after ran"
"""


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(
        tmp_path_factory.mktemp("fail-fast-end"), engines=1, API_TOKEN="s3cret"
    ) as cluster:
        yield cluster


async def events(http: aiohttp.ClientSession, url: str, eid: str) -> list[Any]:
    got: list[Any] = (await get(http, f"{url}/api/v1/executions/{eid}/events"))["events"]
    return got


async def test_a_waited_fail_fast_run_ends_with_its_final_event_and_answers_at_once(
    one: Cluster,
) -> None:
    async with aiohttp.ClientSession() as http:
        await register(http, one.url, CHILD)
        began = time.monotonic()
        async with http.post(
            f"{one.url}/trigger/ffl", json={"wait": True, "timeout": 10}, headers=TOKEN
        ) as resp:
            body = await resp.json()
        # before: the whole 10 s, the run still "running" to the waiter
        assert time.monotonic() - began < 8, body
        assert body["status"] == "failed", body
        got = await events(http, one.url, str(body["execution_id"]))
        kinds = [(e["type"], e.get("node_id")) for e in got]
        assert kinds[-1] == ("execution.failed", None)
        assert kinds.index(("node.log", "busy")) < kinds.index(("node.cancelled", "busy"))


async def test_a_parent_of_a_fail_fast_child_goes_on_when_the_child_ends(one: Cluster) -> None:
    async with aiohttp.ClientSession() as http:
        await register(http, one.url, CHILD)
        await register(http, one.url, PARENT)
        # before: the parent stayed running for good (until a failover or a restart)
        parent = await wait_end(http, one.url, await start(http, one.url, "pffl"), timeout=20)
        assert parent["status"] == "partial", parent  # a sink succeeded, a node failed
        assert parent["nodes"]["child"]["status"] == "failed"
        assert parent["nodes"]["after"]["output"] == "after ran"
