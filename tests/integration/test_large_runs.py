"""Runs whose outputs are large: they resume after a failover, and one too large to carry at
all fails, saying so, instead of being run again and again."""

from __future__ import annotations

import re
import signal
from collections import Counter

import aiohttp

from tests.integration.api import get, register, start, wait_end, wait_node
from tests.integration.conftest import StartCluster

FAT = (
    """
id: fat
version: 1.0.0
nodes:
"""
    + "".join(
        f"""  - id: a{i}
    lua: return {{ s = string.rep("x", 900000) }}
"""
        for i in range(6)
    )
    + """  - id: pause
    depends_on: [a0, a1, a2, a3, a4, a5]
    sleep: 2s
  - id: last
    depends_on: [pause]
    lua: "return { n = #results.a5.s }"
"""
)

# 80 items of 900 KB: one node.succeeded event of about 72 MB
HUGE = """
id: huge
version: 1.0.0
nodes:
  - id: items
    lua: |
      local out = {}
      for i = 1, 80 do out[i] = i end
      return { list = out }
  - id: each
    depends_on: [items]
    foreach: "{{ results.items.list }}"
    lua: return { s = string.rep("y", 900000) }
"""


async def test_a_run_with_megabytes_of_checkpoints_resumes_after_a_failover(
    start_cluster: StartCluster,
) -> None:
    cluster = start_cluster(engines=2, API_TOKEN="s3cret")
    async with aiohttp.ClientSession() as http:
        await register(http, cluster.url, FAT)
        eid = await start(http, cluster.url, "fat")
        doc = await wait_node(http, cluster.url, eid, "pause")
        victim_id = doc["nodes"]["pause"]["engine_id"]
        victim = next(e for e in cluster.engines if e.env["ENGINE_ID"] == victim_id)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(10)
        # the resume request carries about 5.4 MB of outputs, past gRPC's default 4 MiB
        doc = await wait_end(http, cluster.url, eid)
        assert doc["status"] == "succeeded", doc
        assert doc["outputs"] == {"last": {"n": 900000}}
        events = (await get(http, f"{cluster.url}/api/v1/executions/{eid}/events"))["events"]
        started = Counter(e["node_id"] for e in events if e["type"] == "node.started")
        assert all(started[f"a{i}"] == 1 for i in range(6)), started


# 27 MB of foreach outputs, within the engine's bounds, named three times in the run's outputs
DOUBLED = """
id: doubled
version: 1.0.0
outputs: {a: "{{ results.each }}", b: "{{ results.each }}", c: "{{ results.each }}"}
nodes:
  - id: items
    lua: |
      local out = {}
      for i = 1, 30 do out[i] = i end
      return { list = out }
  - id: each
    depends_on: [items]
    foreach: "{{ results.items.list }}"
    lua: return { s = string.rep("y", 900000) }
"""


async def test_a_run_too_large_to_carry_fails_once_saying_so(start_cluster: StartCluster) -> None:
    # its end event (81 MB) is past what the wire carries
    cluster = start_cluster(engines=1, API_TOKEN="s3cret")
    async with aiohttp.ClientSession() as http:
        await register(http, cluster.url, DOUBLED)
        eid = await start(http, cluster.url, "doubled")
        doc = await wait_end(http, cluster.url, eid)
        assert doc["status"] == "failed", doc
        assert "larger than engines and orchestrator exchange (64 MiB" in str(doc["error"])
        events = (await get(http, f"{cluster.url}/api/v1/executions/{eid}/events"))["events"]
        kinds = Counter(e["type"] for e in events)
        assert kinds["execution.started"] == 1, kinds  # not run again and again


async def test_a_run_whose_outputs_add_up_past_what_a_resume_carries_fails_at_the_engine(
    start_cluster: StartCluster,
) -> None:
    """Two foreach nodes of 27 MB each: each within its bound, together past the run's
    (48 MiB by default). The run fails where they cross it, as it would after a failover,
    instead of succeeding unless its engine died."""
    two = HUGE.replace("80 do", "30 do").replace("id: huge", "id: two") + (
        "  - id: again\n"
        "    depends_on: [each]\n"
        '    foreach: "{{ results.items.list }}"\n'
        '    lua: return { s = string.rep("z", 900000) }\n'
    )
    cluster = start_cluster(engines=1, API_TOKEN="s3cret")
    async with aiohttp.ClientSession() as http:
        await register(http, cluster.url, two)
        doc = await wait_end(http, cluster.url, await start(http, cluster.url, "two"))
        assert doc["status"] == "failed", doc["error"][:300]
        assert doc["nodes"]["each"]["status"] == "succeeded"
        again = doc["nodes"]["again"]
        assert again["status"] == "failed"
        assert re.fullmatch(
            rf"item \d+: the outputs of this run, with its inputs and spec, add up to over "
            rf"{48 * 1024 * 1024} bytes, the "
            r"most one run carries \(RUN_OUTPUT_BYTES\): a run resumed on another engine takes "
            r"them all in one message",
            again["error"],
        ), again["error"][:300]


async def test_a_foreach_adding_up_past_its_bound_fails_at_the_engine(
    start_cluster: StartCluster,
) -> None:
    cluster = start_cluster(engines=1, API_TOKEN="s3cret")
    async with aiohttp.ClientSession() as http:
        await register(http, cluster.url, HUGE)
        doc = await wait_end(http, cluster.url, await start(http, cluster.url, "huge"))
        assert doc["status"] == "failed", doc
        each = doc["nodes"]["each"]
        assert each["error"].endswith(
            f"the outputs of this foreach node add up to over {32 * 1024 * 1024} bytes"
        ), each["error"][:300]
