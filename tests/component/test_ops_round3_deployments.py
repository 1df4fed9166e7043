"""The engine's termination grace, checked against what its shutdown may take: the kubelet's
SIGKILL must not come while handed-back streams are still being flushed, which is what makes a
rollout lose nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from engine import serving

DEPLOYMENTS = Path(__file__).resolve().parents[2] / "deployments"
SLACK = 1.0
"""Seconds left over for what follows the server's stop: the Lua pool closes, the process exits."""


def manifests(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((DEPLOYMENTS / name).read_text()) if doc]


def test_the_engines_termination_grace_outlasts_its_longest_shutdown() -> None:
    (deployment,) = manifests("engine-deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (settings,) = (
        doc
        for doc in manifests("configmap.yaml")
        if doc["metadata"]["name"] == "dag-engine-settings"
    )
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(settings["data"]["DRAIN_GRACE"])
    # SIGTERM comes after preStop; then DRAIN_GRACE for runs in flight, _FLUSH_WAIT for the
    # streams of those handed back, _STOP_GRACE for calls still open, _SETTLE for their tasks
    # (before: 5 + 30 + 10 + 2 = 47 s against 45)
    longest = pre_stop + drain + serving._FLUSH_WAIT + serving._STOP_GRACE + serving._SETTLE + SLACK
    grace = pod["terminationGracePeriodSeconds"]
    assert grace >= longest, f"terminationGracePeriodSeconds {grace} < {longest}"
    # health is NOT_SERVING all that time: liveness must not kill the engine meanwhile
    liveness = container["livenessProbe"]
    assert liveness["failureThreshold"] * liveness["periodSeconds"] > grace
