"""Fixtures the component tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fakes.kube_api import FakeKubeApi


@pytest.fixture
async def fake() -> AsyncIterator[FakeKubeApi]:
    """A fake Kubernetes API server on loopback, started, stopped after the test."""
    api = FakeKubeApi()
    await api.start()
    yield api
    await api.stop()
