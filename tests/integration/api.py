"""HTTP helpers the integration tests share: the orchestrator's API as a test client sees it."""

from __future__ import annotations

from typing import Any

import aiohttp

TOKEN = {"Authorization": "Bearer s3cret"}
"""The ``API_TOKEN`` the module-scoped clusters of these tests are started with."""


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
    async with http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()
