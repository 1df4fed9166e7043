"""The spec checks' adapters, second hunt: the Lua check and the embedding API."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from engine.checking import external_checks
from engine.core.errors import SpecError
from orchestrator.local import LocalCluster


def test_the_lua_syntax_check_calls_a_lone_surrogate_a_problem_of_the_script() -> None:
    check = external_checks().lua_syntax
    assert check is not None
    assert check("local a = 1\nreturn '\udc80'", False) == (
        "holds U+DC80 on line 2, half of a UTF-16 surrogate pair alone, which is not text "
        "UTF-8 can carry: write the character itself",
        None,
    )


async def test_a_mapping_registered_with_nan_is_refused_not_stored_as_text(tmp_path: Path) -> None:
    spec = {
        "id": "wf",
        "version": "1.0.0",
        "nodes": [{"id": "a", "lua": "return 1", "foreach": [math.nan]}],
    }
    with pytest.raises(SpecError) as info:
        await LocalCluster(state_db=tmp_path / "s.db").register(
            spec
        )  # refused before anything is started
    assert info.value.messages() == [
        "nodes[0].foreach[0]: NaN is not a number JSON can carry: write a finite number, "
        "or a string"
    ]
