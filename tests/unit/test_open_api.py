"""When the orchestrator says at start that its API is open to anyone who can reach it."""

from __future__ import annotations

import pytest

from orchestrator.serving import open_to_others
from orchestrator.settings import Settings

BASE = {"DISCOVERY_MODE": "static", "ENGINE_ADDRESSES": "127.0.0.1:1"}


@pytest.mark.parametrize(
    ("env", "open_"),
    [
        ({}, True),  # HOST defaults to [::], as in a pod
        ({"HOST": "10.1.2.3"}, True),
        ({"HOST": "orchestrator.example"}, True),
        ({"HOST": "[::]"}, True),
        ({"HOST": "127.0.0.1"}, False),
        ({"HOST": "::1"}, False),
        ({"HOST": "localhost"}, False),
        ({"API_TOKEN": "s3cret"}, False),
        ({"API_TOKEN": "   "}, True),  # blank is unset
    ],
)
def test_an_open_api_is_said_only_where_others_can_reach_it(
    env: dict[str, str], open_: bool
) -> None:
    assert open_to_others(Settings.from_env({**BASE, **env})) is open_
