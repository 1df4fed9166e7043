"""dagctl against a real orchestrator: which execution an id argument names, and inputs the
server would refuse.

An id given empty (``dagctl cancel "$ID"`` with ``ID`` unset) is a usage error for every
command, before anything is asked; before, ``cancel ""`` cancelled the only run. ``cancel``
takes the whole id or its first 8 characters or more, never its tail (``cancel 5`` cancelled
the run whose id ends in 5); the read commands take the first or last 8 or more (event lines
show the last 8); an abbreviation that fits several runs lists them, exit 2. The runs here
wait in the queue (their engine is never there), so each stays there unless cancelled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import combinations
from pathlib import Path

import pytest

from orchestrator.dagctl import main
from tests.integration.conftest import OrchestratorProcess, spawn_orchestrator, stop_process

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SPEC = "id: ids\nversion: 1.0.0\nnodes:\n  - id: a\n    lua: return {}\n"


@contextmanager
def serving(tmp: Path) -> Iterator[str]:
    """An orchestrator with the workflow ``ids`` and no engine: its URL."""
    proc: OrchestratorProcess = spawn_orchestrator(
        tmp / "orchestrator.log", tmp / "state.db", [], ENGINE_ADDRESSES="127.0.0.1:9"
    )
    try:
        (tmp / "ids.yaml").write_text(SPEC)
        assert main(["apply", "-f", str(tmp / "ids.yaml")], {"DAGCTL_SERVER": proc.url}) == 0
        yield proc.url
    finally:
        stop_process(proc.proc)


@pytest.fixture
def orchestrator(tmp_path: Path) -> Iterator[str]:
    """A store of the test's own: for the tests that count every run in it, or abbreviate
    ids of runs made close in time (another test's runs could fit the same abbreviation)."""
    with serving(tmp_path) as url:
        yield url


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One for the module's tests that look only at their own runs, or at how many runs a
    command added."""
    with serving(tmp_path_factory.mktemp("shared")) as url:
        yield url


def dagctl(url: str, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv), {"DAGCTL_SERVER": url})
    seen = capsys.readouterr()
    return code, seen.out, seen.err


def start_runs(url: str, capsys: pytest.CaptureFixture[str], count: int) -> list[str]:
    ids = []
    for _ in range(count):
        code, out, err = dagctl(url, capsys, "run", "ids")
        assert code == 0, err
        ids.append(out.strip())
    return ids


def said(err: str) -> str:
    """A refusal of arguments without the command's usage that comes before it."""
    usage, _, rest = err.partition("\ndagctl: ")
    assert usage.startswith("usage: dagctl "), err
    return "dagctl: " + rest


def shared_start(a: str, b: str) -> str:
    return a[: next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))]


def status(url: str, execution_id: str) -> str:
    with urllib.request.urlopen(f"{url}/api/v1/executions/{execution_id}", timeout=10) as answer:
        return str(json.load(answer)["status"])


def count_runs(url: str) -> int:
    with urllib.request.urlopen(f"{url}/api/v1/executions?limit=1000", timeout=10) as answer:
        return len(json.load(answer)["executions"])


@pytest.mark.parametrize(
    ("argv", "where"),
    [
        (["cancel", ""], "cancel: ID"),
        (["cancel", "  "], "cancel: ID"),
        (["describe", "execution", ""], "describe: ID"),
        (["events", ""], "events: ID"),
        (["events", "--execution", ""], "events: --execution"),
        (["get", "executions", "--before", ""], "get: --before"),
        (["trigger", "pause", ""], "trigger: ID"),
        (["trigger", "create", "ids", "--cron", "@daily", "--id", ""], "trigger: --id"),
        (["run", ""], "run: the workflow id"),
    ],
)
def test_an_empty_id_is_a_usage_error_and_nothing_is_cancelled(
    orchestrator: str, capsys: pytest.CaptureFixture[str], argv: list[str], where: str
) -> None:
    (only,) = start_runs(orchestrator, capsys, 1)
    code, out, err = dagctl(orchestrator, capsys, *argv)
    # before: cancel "" cancelled the only run, exit 0; with several it said "the server has
    # no GET /api/v1/executions/ (is it older than this dagctl?)"
    assert (code, out) == (2, "")
    assert said(err).startswith(f"dagctl: {where} is empty (an unset shell variable?)"), err
    assert status(orchestrator, only) == "queued"
    assert count_runs(orchestrator) == 1


@pytest.mark.parametrize("argv", [["events", "-f", ""], ["events", "-f", "--execution", ""]])
def test_following_an_empty_id_is_refused_rather_than_following_every_run(
    shared: str, argv: list[str]
) -> None:
    # before: followed the whole live stream, for ever; a process, so that would time out
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.dagctl", *argv],
        cwd=ROOT,
        env={**os.environ, "DAGCTL_SERVER": shared},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr
    assert "is empty (an unset shell variable?)" in done.stderr


def test_cancel_takes_no_tail_and_no_short_prefix(
    orchestrator: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (run,) = start_runs(orchestrator, capsys, 1)
    # before: both cancelled the run whose id ends so, exit 0
    code, _, err = dagctl(orchestrator, capsys, "cancel", run[-1:])
    assert code == 1  # an unknown id, as the server says
    assert err == (
        f"dagctl: not_found: no execution {run[-1:]!r} (an abbreviated id needs at least 8 "
        "characters)\n"
    )
    code, _, err = dagctl(orchestrator, capsys, "cancel", run[-8:])
    assert code == 2
    assert said(err) == (
        "dagctl: cancel takes an execution's whole id or its first 8 characters or more, not "
        f"its last: {run[-8:]} ends {run}\n"
    )
    code, _, err = dagctl(orchestrator, capsys, "cancel", run[:7])
    assert code == 1 and "needs at least 8 characters" in err, err
    assert status(orchestrator, run) == "queued"

    # reading by the tail an event line shows, or by the first 8, is kept
    for given in (run[-8:], run[:8]):
        code, out, err = dagctl(orchestrator, capsys, "describe", "execution", given, "-o", "json")
        assert code == 0, err
        assert f'"id": "{run}"' in out

    code, out, err = dagctl(orchestrator, capsys, "cancel", run[:8])
    assert (code, err) == (0, "")
    assert out == f"execution {run} cancelled\n"
    assert status(orchestrator, run) == "cancelled"


def test_an_abbreviation_several_runs_fit_lists_them_and_cancels_none(
    orchestrator: str, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = start_runs(orchestrator, capsys, 3)
    # ids begin with their creation time: runs made within a second share their first 8
    # characters, but for one that crossed a 65 s boundary, so one pair at least does
    a, b = max(combinations(runs, 2), key=lambda pair: len(shared_start(*pair)))
    shared = shared_start(a, b)
    assert 8 <= len(shared) < 32
    fit = sorted(r for r in runs if r.startswith(shared))
    for argv in (["cancel", shared], ["describe", "execution", shared], ["events", shared]):
        code, out, err = dagctl(orchestrator, capsys, *argv)
        assert (code, out) == (2, ""), err
        lines = err.splitlines()
        assert lines[0] == f"dagctl: {shared} fits {len(fit)} executions: give more of the id"
        assert sorted(line.split()[0] for line in lines[1:]) == fit
        assert all(line.split()[1:] == ["ids", "queued"] for line in lines[1:])
    assert [status(orchestrator, r) for r in runs] == ["queued"] * 3

    # one more character tells a from b, and from the third (which shares less with a)
    code, out, err = dagctl(orchestrator, capsys, "cancel", a[: len(shared) + 1])
    assert (code, err) == (0, "")
    assert out == f"execution {a} cancelled\n"
    assert [status(orchestrator, r) for r in runs] == [
        "cancelled" if r == a else "queued" for r in runs
    ]


def test_an_abbreviation_no_recent_run_fits_is_not_found(
    shared: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (run,) = start_runs(shared, capsys, 1)
    other = "f" * 16  # no id begins so: they begin with their creation time
    code, _, err = dagctl(shared, capsys, "cancel", other)
    assert code == 1
    assert err == (
        f"dagctl: not_found: no execution {other!r}; nor does any of the newest 1000 "
        "executions' ids begin with it\n"
    )
    assert status(shared, run) == "queued"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["run", "ids", "--inputs", "[1]"], "--inputs: inputs must be a JSON object, not a list"),
        (
            ["run", "ids", "--inputs", '"x"'],
            "--inputs: inputs must be a JSON object, not a string",
        ),
        (
            ["run", "ids", "--inputs", '{"_trigger": 1}'],
            "--inputs: inputs._trigger is set by triggers: a caller may not send it",
        ),
        (
            ["run", "ids", "--input", "_trigger=1"],
            "--input _trigger: inputs._trigger is set by triggers: a caller may not send it",
        ),
        (
            ["trigger", "create", "ids", "--cron", "@daily", "--input", "_trigger={}"],
            "--input _trigger: inputs._trigger is set by triggers: a caller may not send it",
        ),
    ],
)
def test_inputs_the_server_would_refuse_are_refused_before_sending_naming_the_flag(
    shared: str, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    runs = count_runs(shared)
    # before: sent, and the server's 422 or 400 made it exit 1
    code, out, err = dagctl(shared, capsys, *argv)
    assert (code, out) == (2, "")
    assert said(err) == f"dagctl: {says}\n"
    assert count_runs(shared) == runs


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_an_inputs_file_the_server_would_refuse_is_named_with_its_path(
    shared: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, suffix: str
) -> None:
    runs = count_runs(shared)
    for text, says in (
        ("[1, 2]", "inputs must be a JSON object, not a list"),
        ('{"_trigger": {"id": "x"}}', "inputs._trigger is set by triggers"),
    ):
        path = tmp_path / f"inputs{suffix}"
        path.write_text(text)
        code, _, err = dagctl(shared, capsys, "run", "ids", "--inputs-file", str(path))
        assert code == 2
        assert said(err).startswith(f"dagctl: --inputs-file {path}: {says}"), err
    assert count_runs(shared) == runs
    # null, or an empty file, is no inputs, as the server reads it
    path = tmp_path / f"empty{suffix}"
    path.write_text("null")
    code, _, err = dagctl(shared, capsys, "run", "ids", "--inputs-file", str(path))
    assert code == 0, err
    assert count_runs(shared) == runs + 1
