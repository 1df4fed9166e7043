"""``python -m orchestrator`` takes no arguments: ``--help`` is answered and anything else
refused, both before the service starts, so neither makes ``STATE_DB`` nor binds a port.
Before, ``--help`` started the service (and made /var/lib/dagengine/state.db by default)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def orchestrator(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"},
        "STATE_DB": str(tmp_path / "state.db"),
        # were it to start after all: loopback, free ports, no engines, found at once
        "HOST": "127.0.0.1",
        "HTTP_PORT": "0",
        "GRPC_PORT": "0",
        "DISCOVERY_MODE": "static",
        "ENGINE_ADDRESSES": "127.0.0.1:1",
    }
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["--help", "extra"]])
def test_help_says_what_it_is_and_where_its_settings_are_then_exits_0(
    tmp_path: Path, args: list[str]
) -> None:
    done = orchestrator(tmp_path, *args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m orchestrator [-h]\n"), done.stdout
    assert "configured by environment variables" in done.stdout
    assert '"The orchestrator" in README.md' in done.stdout
    assert done.stderr == ""
    assert list(tmp_path.iterdir()) == []  # no STATE_DB, nor its .lock


@pytest.mark.parametrize("args", [["serve"], ["--port", "8080"], ["-v"], [""]])
def test_any_other_argument_is_refused_in_one_line_with_exit_2(
    tmp_path: Path, args: list[str]
) -> None:
    done = orchestrator(tmp_path, *args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        f"python -m orchestrator: unexpected argument {args[0]!r}: it takes none (its settings "
        "are environment variables; see --help)\n"
    )
    assert list(tmp_path.iterdir()) == []
