"""HTTP helpers the integration tests share: the orchestrator's API as a test client sees it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

TOKEN = {"Authorization": "Bearer s3cret"}
"""The ``API_TOKEN`` the module-scoped clusters of these tests are started with."""
AUTH = (("authorization", "Bearer s3cret"),)
"""``TOKEN`` as gRPC metadata."""


def first_pause_last(workflow_id: str, pause: str) -> str:
    """A three-node spec whose middle node sleeps ``pause``: time to kill something mid-run.
    Its output is ``{"last": {"done": 2}}``."""
    return f"""
id: {workflow_id}
version: 1.0.0
nodes:
  - id: first
    lua: return {{ at = 1 }}
  - id: pause
    depends_on: [first]
    sleep: {pause}
  - id: last
    depends_on: [pause]
    lua: return {{ done = results.first.at + 1 }}
"""


async def register(http: aiohttp.ClientSession, url: str, text: str) -> Any:
    """Register a YAML spec; fails the test unless it is accepted (201) or already there."""
    async with http.post(
        f"{url}/api/v1/workflows",
        data=text,
        headers={"Content-Type": "application/yaml", **TOKEN},
    ) as resp:
        body = await resp.json()
        assert resp.status in (200, 201), body
        return body


async def get(http: aiohttp.ClientSession, url: str) -> Any:
    """A read, with ``TOKEN``: every route but probes and metrics needs it when one is set."""
    async with http.get(url, headers=TOKEN) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def start(http: aiohttp.ClientSession, url: str, workflow: str, inputs: Any = None) -> str:
    """Trigger a run; fails the test unless it is accepted (202). Returns its id."""
    async with http.post(
        f"{url}/trigger/{workflow}", json={"inputs": inputs or {}}, headers=TOKEN
    ) as resp:
        body = await resp.json()
        assert resp.status == 202, body
        return str(body["execution_id"])


async def wait_for(what: str, probe: Any, timeout: float = 30) -> Any:
    """Until ``await probe()`` gives something true; that thing."""
    deadline = time.monotonic() + timeout
    while True:
        found = await probe()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def wait_end(http: aiohttp.ClientSession, url: str, eid: str, timeout: float = 60) -> Any:
    """The execution document once the run has ended; fails the test past ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        doc = await get(http, f"{url}/api/v1/executions/{eid}")
        if doc["finished_at"] is not None:
            return doc
        assert time.monotonic() < deadline, f"{eid} did not finish: {doc}"
        await asyncio.sleep(0.05)


async def wait_node(
    http: aiohttp.ClientSession, url: str, eid: str, node: str, timeout: float = 30
) -> Any:
    """The execution document once ``node`` runs (a moment to kill or stop something
    mid-run); fails the test past ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        doc = await get(http, f"{url}/api/v1/executions/{eid}")
        if doc["nodes"][node]["status"] == "running":
            return doc
        assert time.monotonic() < deadline, f"{node} of {eid} did not start: {doc}"
        await asyncio.sleep(0.05)


async def raw_request(port: int, head: bytes, body: bytes = b"", *, whole: bool = True) -> bytes:
    """One request written byte for byte (headers no client library would send); with
    ``whole=False`` the connection closes before the body is all there."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.replace(b"\n", b"\r\n") + b"\r\n" + body)
    await writer.drain()
    if not whole:
        writer.close()
        return b""
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return answer


async def call(
    http: aiohttp.ClientSession, method: str, url: str, headers: Any = None, **kw: Any
) -> Any:
    """Any request, with ``TOKEN``; fails the test unless it is answered 2xx. Its JSON."""
    async with http.request(method, url, headers={**TOKEN, **(headers or {})}, **kw) as resp:
        assert resp.status < 300, await resp.text()
        return await resp.json()


async def engines_ready(
    http: aiohttp.ClientSession, url: str, engines: int, within: float = 60.0
) -> None:
    """Wait until the orchestrator lists ``engines`` ready engines (a run dispatched before
    would land on the first alone); goes on after ``within`` seconds, as the test's own
    checks then tell what is wrong."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        listed = (await call(http, "GET", f"{url}/api/v1/engines"))["engines"]
        if sum(1 for e in listed if e["state"] == "ready") == engines:
            return
        await asyncio.sleep(0.1)
