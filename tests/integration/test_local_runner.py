"""``python -m engine run|validate`` as a user runs them: a real process, real files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def engine(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def run_json(*args: str) -> tuple[int, dict[str, Any], str]:
    proc = engine("run", *args)
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def test_hello_greets_the_named_input() -> None:
    code, doc, err = run_json(str(EXAMPLES / "hello.yaml"), "--inputs", '{"name": "Ada"}')
    assert code == 0, err
    assert doc["status"] == "succeeded"
    assert doc["outputs"] == {"greet": {"message": "Hello, Ada!"}}
    assert doc["nodes"]["greet"]["attempts"] == 1
    assert "greet" in err and "succeeded" in err and "greeting Ada" in err
    for key in (
        "id",
        "workflow_id",
        "version",
        "inputs",
        "error",
        "progress",
        "created_at",
        "started_at",
        "finished_at",
        "parent_execution_id",
    ):
        assert key in doc


def test_diamond_passes_data_through_both_branches() -> None:
    code, doc, err = run_json(str(EXAMPLES / "diamond.yaml"), "--inputs", '{"n": 4}')
    assert code == 0, err
    assert doc["outputs"] == {"total": 34, "summary": "sum 10 + product 24"}
    assert [doc["nodes"][n]["status"] for n in ("numbers", "sum", "product", "join")] == [
        "succeeded"
    ] * 4


def test_etl_uses_foreach_when_and_retries() -> None:
    code, doc, err = run_json(str(EXAMPLES / "etl.yaml"))
    assert code == 0, err
    assert doc["outputs"]["cleaned"] == [
        {"name": "Ada", "score": 91, "rank": 1},
        {"name": "Grace", "score": 78, "rank": 2},
        {"name": "Linus", "score": 64, "rank": 3},
    ]
    assert doc["outputs"]["loaded"] == 3
    assert doc["nodes"]["fetch_rates"]["attempts"] == 2
    assert doc["nodes"]["archive"]["status"] == "skipped"
    assert "retrying" in err and "rates service not ready yet" in err


def test_failure_isolation_ends_partial_with_exit_1() -> None:
    code, doc, _ = run_json(str(EXAMPLES / "failure-isolation.yaml"))
    assert code == 1
    assert doc["status"] == "partial"
    nodes = doc["nodes"]
    assert nodes["charge_cards"]["status"] == "failed"
    assert nodes["charge_cards"]["error"] == "payment gateway rejected the batch (Lua line 1)"
    assert nodes["send_receipts"]["status"] == "blocked"
    assert nodes["report"]["status"] == "succeeded"
    assert nodes["alert"]["output"] == {"paged": True}


def test_invalid_spec_prints_every_problem_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "id: broken\n"
        "version: 1.0.0\n"
        "nodes:\n"
        "  - id: a\n"
        "    lua: |\n"
        "      local x = 1\n"
        "      return x +\n"
        "  - id: b\n"
        "    depends_on: [c]\n"
        "    lua: return {}\n"
        "    timout: 5s\n"
    )
    proc = engine("run", str(bad))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert f"{bad}:7: nodes[a].lua: Lua syntax error:" in proc.stderr
    assert "unexpected symbol near <eof> (Lua line 2)" in proc.stderr
    assert f"{bad}:9: nodes[b].depends_on: unknown dependency 'c'" in proc.stderr
    assert (
        f"{bad}:11: nodes[b].timout: unknown field 'timout' (did you mean 'timeout'?)"
        in proc.stderr
    )


def test_validate_accepts_every_example() -> None:
    for example in sorted(EXAMPLES.glob("*.yaml")):
        proc = engine("validate", str(example))
        assert proc.returncode == 0, proc.stderr
        assert "is valid" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--inputs", "{nope"], "--inputs is not valid JSON"),
        (["--inputs", '{"name": ""}'], 'inputs.name: "" should be non-empty'),
        (
            ["--inputs", '{"nam": "x"}'],
            'Additional properties are not allowed ("nam" was unexpected)',
        ),
        (["--inputs-file", "/no/such/file.json"], "--inputs-file /no/such/file.json: No such file"),
        (["--inputs", '"Ada"'], "inputs must be a JSON object, not a string"),
    ],
)
def test_bad_inputs_are_refused_before_anything_runs(args: list[str], message: str) -> None:
    proc = engine("run", str(EXAMPLES / "hello.yaml"), *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "started" not in proc.stderr


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        (
            "61 * * * *",
            "cron '61 * * * *': minute field '61' is out of range 0-59",
        ),
        ("0 0 30 2 *", "cron '0 0 30 2 *' never fires"),
    ],
)
def test_validate_checks_cron_as_the_orchestrator_does(
    tmp_path: Path, cron: str, message: str
) -> None:
    spec = tmp_path / "nightly.yaml"
    spec.write_text(
        "id: nightly\nversion: 1.0.0\ntriggers:\n"
        f"  - cron: '{cron}'\n"
        "nodes:\n  - id: a\n    lua: return {}\n"
    )
    proc = engine("validate", str(spec))
    assert proc.returncode == 2
    assert f"{spec}:4: triggers[0].cron: {message}" in proc.stderr


def test_validate_checks_sub_workflow_version_ranges(tmp_path: Path) -> None:
    spec = tmp_path / "parent.yaml"
    spec.write_text(
        "id: parent\nversion: 1.0.0\nnodes:\n"
        "  - id: a\n    workflow: {id: child, version: 'not a range'}\n"
        "  - id: b\n    workflow: {id: child, version: '>=1 <2'}\n"
        "  - id: c\n    workflow: {id: child, version: '1.x'}\n"
    )
    proc = engine("validate", str(spec))
    assert proc.returncode == 2
    assert (
        f"{spec}:5: nodes[a].workflow.version: 'not a range' is not a version range" in proc.stderr
    )
    assert "nodes[b]" not in proc.stderr and "nodes[c]" not in proc.stderr


def test_missing_file_is_a_clear_error() -> None:
    proc = engine("validate", "nowhere.yaml")
    assert proc.returncode == 2
    assert "nowhere.yaml: no such file" in proc.stderr


def test_the_runner_refuses_what_the_server_refuses_of_a_callers_inputs(tmp_path: Path) -> None:
    hello = str(EXAMPLES / "hello.yaml")
    proc = engine("run", hello, "--inputs", '{"name": "Ada", "_trigger": 1}')
    assert proc.returncode == 2
    assert proc.stderr == "error: inputs._trigger is set by triggers: a caller may not send it\n"
    twice = tmp_path / "in.json"
    twice.write_text('{"name": "Ada",\n "name": "Bob"}\n', encoding="utf-8")
    proc = engine("run", hello, "--inputs-file", str(twice))
    assert proc.returncode == 2
    assert proc.stderr == (
        f"error: --inputs-file {twice}: line 2: name: duplicate key 'name' (first on line 1)\n"
    )
    proc = engine("run", hello, "--inputs", '{"name": "Ada", "name": "Bob"}')
    assert proc.stderr == "error: --inputs: duplicate key 'name'\n"


def test_a_non_object_input_to_a_spec_without_a_schema_is_not_called_a_schema_mismatch(
    tmp_path: Path,
) -> None:
    spec = tmp_path / "wf.yaml"
    spec.write_text("id: wf\nversion: 1.0.0\nnodes:\n  - {id: a, lua: return 1}\n")
    proc = engine("run", str(spec), "--inputs", "[1]")
    assert proc.returncode == 2
    assert proc.stderr == "error: inputs must be a JSON object, not a list\n"


def test_a_lone_surrogate_in_lua_is_a_spec_problem_not_a_traceback(tmp_path: Path) -> None:
    spec = tmp_path / "wf.yaml"
    spec.write_text('id: wf\nversion: 1.0.0\nnodes:\n  - id: a\n    lua: "return \\udc80"\n')
    proc = engine("run", str(spec))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{spec}:5: nodes[a].lua: 'return \\udc80' holds U+DC80" in proc.stderr
    answer = subprocess.run(
        [sys.executable, "-m", "engine", "check-lua"],
        input=json.dumps({"code": "a = 1\nreturn '\udc80'"}) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(answer.stdout) == {
        "ok": False,
        "message": "holds U+DC80 on line 2, half of a UTF-16 surrogate pair alone, which is "
        "not text UTF-8 can carry: write the character itself",
        "line": None,
    }


def test_the_lua_checker_leaves_a_ctrl_c_to_the_orchestrator(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "check-lua"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps({"code": "return 1"}) + "\n")
    proc.stdin.flush()
    assert json.loads(proc.stdout.readline()) == {"ok": True}  # its handler is in place now
    # a terminal's Ctrl-C reaches the orchestrator's process group, this child too
    proc.send_signal(signal.SIGINT)
    proc.stdin.write(json.dumps({"code": "return ("}) + "\n")
    proc.stdin.flush()
    assert json.loads(proc.stdout.readline())["ok"] is False  # still answering
    _, err = proc.communicate(timeout=60)  # the orchestrator closes its stdin to stop it
    # before: a KeyboardInterrupt traceback in the orchestrator's log, the checker gone
    assert (proc.returncode, err) == (0, "")


def test_pairs_over_results_goes_through_the_ancestors_that_succeeded(tmp_path: Path) -> None:
    """``results`` holds the ancestors' outputs by node id (DESIGN): a fan-in that iterated it
    got nothing, as the table holds only what was read by name."""
    spec = tmp_path / "pairs.yaml"
    spec.write_text(
        """
id: pairs
version: 1.0.0
nodes:
  - {id: a, lua: "return { v = 1 }"}
  - {id: b, lua: "return 2"}
  - {id: skipped, when: "false", lua: "return 3"}
  - {id: c, depends_on: [a], lua: "return 'c'"}
  - {id: unrelated, lua: "return 4"}
  - id: sink
    depends_on: [c, b, skipped]
    trigger_rule: none_failed
    lua: |
      local seen = {}
      for name, value in pairs(results) do seen[#seen + 1] = { name, value } end
      local again = 0
      for _ in pairs(results) do again = again + 1 end
      return { seen = seen, again = again }
"""
    )
    code, doc, err = run_json(str(spec))
    assert code == 0, err
    assert doc["nodes"]["sink"]["output"] == {
        "seen": [["a", {"v": 1}], ["b", 2], ["c", "c"]],
        "again": 3,
    }
