"""Set-up shared by the tests that run Kubernetes discovery against the fake API server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from orchestrator.settings import Settings
from tests.fakes.kube_api import FakeKubeApi


def settings_for(fake: FakeKubeApi, tmp_path: Path, **overrides: object) -> Settings:
    """Kubernetes discovery through a kubeconfig for ``fake``, resyncing rarely for a test."""
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    base: dict[str, object] = {
        "discovery_mode": "kubernetes",
        "in_cluster_config": False,
        "kubeconfig": str(kubeconfig),
        "discovery_interval": 30.0,
    }
    return Settings(**{**base, **overrides})  # type: ignore[arg-type]


@asynccontextmanager
async def fake_kube_api(
    tmp_path: Path, **overrides: object
) -> AsyncIterator[tuple[FakeKubeApi, Settings]]:
    """A started fake API server and the settings to discover through it; stopped at the end."""
    fake = FakeKubeApi()
    await fake.start()
    settings = settings_for(fake, tmp_path, **overrides)
    try:
        yield fake, settings
    finally:
        await fake.stop()
