"""Settings the orchestrator took and then failed on, at start or later: each stops ``python -m
orchestrator`` with one line naming the variable, exit 2, before the state database is touched
(no ``.lock`` beside it)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.integration.conftest import refused_orchestrator


def test_bad_settings_stop_the_start_in_one_line_before_the_state_database(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    cases = [
        # before: the store opened the directory (exit 1, state.lock made beside it), then
        # gRPC died on the body size with an OverflowError traceback
        (
            {"STATE_DB": str(state), "MAX_BODY_BYTES": "2147418112"},
            "error: MAX_BODY_BYTES must be at most 1073741824 (1 GiB), got '2147418112'",
        ),
        (
            {"STATE_DB": str(state)},
            f"error: STATE_DB must be a SQLite database file, got {str(state)!r}: "
            "it is a directory",
        ),
    ]
    for env, line in cases:
        proc = refused_orchestrator(tmp_path, env)
        assert (proc.returncode, proc.stderr.splitlines(), proc.stdout) == (2, [line], ""), env
        assert sorted(os.listdir(tmp_path)) == ["state"]  # no state.lock, no state.db
        assert os.listdir(state) == []
