"""dagctl as people drive it: empty values from unset variables, refusals with the usage, the
live display of a run too big for the screen, events of triggers and resumed runs, names with
control characters, a server URL with the API's path in it."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from orchestrator.dagctl import cli
from orchestrator.dagctl.calling import server_problem
from orchestrator.dagctl.showing import NodeProgress, RunProgress, event_message
from orchestrator.dagctl.sources import STDIN_NAME, SpecSource, in_reference_order

NOWHERE = {"DAGCTL_SERVER": "http://127.0.0.1:9"}
"""A server never reached: a command that got as far as asking it exits 1, not 2."""


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], env: Any = None) -> str:
    """What dagctl says refusing ``argv`` with exit 2, before asking any server."""
    assert cli.main(argv, NOWHERE if env is None else env) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["run", "hello", "--idempotency-key", ""], "--idempotency-key"),
        (["run", "hello", "--idempotency-key", " "], "--idempotency-key"),
        (["run", "hello", "--version", ""], "--version"),
        (["get", "executions", "--workflow", ""], "--workflow"),
        (["get", "triggers", "--workflow", " "], "--workflow"),
        (["events", "-f", "--workflow", ""], "--workflow"),
        (["describe", "workflow", "hello", "--version", ""], "--version"),
        (["trigger", "create", "hello", "--cron", "@daily", "--timezone", ""], "--timezone"),
        (["cancel", "0123456789", "--reason", ""], "--reason"),
    ],
)
def test_an_option_given_empty_is_refused_not_taken_as_not_given(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # `--workflow "$WF"` with WF unset would list every workflow's runs (and cancel them all
    # through xargs); a second `run --idempotency-key "$KEY"` would start a second run
    err = refused(argv, capsys)
    assert err.startswith(f"usage: dagctl {argv[0]} ")
    assert err.endswith(f"dagctl: {argv[0]}: {flag} is empty (an unset shell variable?)\n")


def test_status_and_limit_are_checked_before_asking_the_server(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv, said in (
        (["get", "executions", "--status", "bogus"], "invalid choice: 'bogus'"),
        (["get", "executions", "--status", ""], "invalid choice: ''"),
        (["get", "executions", "--limit", "5000"], "must be at most 1000, got 5000"),
    ):
        err = refused(argv, capsys)
        assert err.startswith("usage: dagctl get ") and said in err, err
    # a status that is one is sent (and the server, never reached here, is the failure)
    assert cli.main(["get", "executions", "--status", "timed_out", "--limit", "1000"], NOWHERE) == 1


def test_a_bad_argument_is_refused_with_the_commands_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = refused(["get", "engines", "--limit", "5"], capsys)
    assert err.startswith("usage: dagctl get [-h]")
    assert err.endswith("\ndagctl: get engines takes no --limit (only get executions does)\n")
    err = refused(["trigger", "create", "hello", "--cron", "@daily", "--input", "oops"], capsys)
    assert err.startswith("usage: dagctl trigger create [-h]")
    # a variable at fault is one line: the usage could not help
    err = refused(["get", "engines"], capsys, {"DAGCTL_SERVER": "ftp://x"})
    assert err == "dagctl: DAGCTL_SERVER 'ftp://x': the scheme must be http or https, not ftp\n"


def test_describe_execution_refuses_version(capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(["describe", "execution", "0123456789", "--version", "1.0.0"], capsys)
    assert err.endswith(
        "dagctl: describe execution takes no --version (only describe workflow does)\n"
    )


def test_a_server_url_with_the_apis_path_is_refused_in_words(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for url in ("http://h:8080/api", "http://h:8080/api/v1/", "http://h/prefix/api/v1/engines"):
        assert server_problem(url) is not None, url
    assert server_problem("http://h/prefix") is None  # a proxy's prefix is kept
    err = refused(["get", "engines"], capsys, {"DAGCTL_SERVER": "http://127.0.0.1:9/api"})
    assert err == (
        "dagctl: DAGCTL_SERVER 'http://127.0.0.1:9/api': give the orchestrator's address without "
        "the API's path (/api): http://127.0.0.1:9\n"
    )


def test_events_follow_left_with_ctrl_c_exits_130_as_run_wait(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*_: Any) -> Iterator[Any]:
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr(cli, "_live", interrupted)
    assert cli.main(["events", "-f"], NOWHERE) == cli.EXIT_INTERRUPTED == 130


def test_standard_input_is_json_only_when_it_parses_as_json() -> None:
    flow = b"{id: x, version: 1.0.0, nodes: [{id: a, lua: return 1}]}"
    assert SpecSource(STDIN_NAME, flow).is_json is False
    assert SpecSource(STDIN_NAME, b' {"id": "x", "nodes": []}').is_json is True
    assert SpecSource(STDIN_NAME, b"id: x\n").is_json is False
    assert SpecSource("spec.JSON", flow).is_json is True  # a file goes by its name
    # neither JSON nor YAML: JSON names the problem when the text began as JSON does
    assert SpecSource(STDIN_NAME, b'{"id": "x" "nodes": []}').is_json is True
    assert SpecSource(STDIN_NAME, b'{"id": "x", "nodes": [],}').is_json is False  # YAML takes it
    assert SpecSource(STDIN_NAME, b"{id: x, nodes: [}").is_json is False


def test_broken_json_on_standard_input_is_named_as_json_with_its_column(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = b'{"id": "x", "version": "1.0.0" "nodes": []}\n'
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(broken)))
    assert cli.main(["validate", "-f", "-"], {}) == 2
    said = capsys.readouterr()
    assert "<stdin>:1: invalid JSON: Expecting ',' delimiter (column 32)" in said.out + said.err


def test_flow_style_yaml_on_standard_input_validates(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    flow = b"{id: flow, version: 1.0.0, nodes: [{id: a, lua: return 1}]}\n"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(flow)))
    assert cli.main(["validate", "-f", "-"], {}) == 0
    assert capsys.readouterr().out == "<stdin>: flow@1.0.0 is valid (1 node)\n"


def test_file_names_with_control_characters_are_shown_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "evil\x1b[31m.yaml")
    assert cli.main(["validate", "-f", missing], {}) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "evil\\x1b[31m.yaml" in err
    assert cli.main(["apply", "-f", missing], NOWHERE) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "evil\\x1b[31m.yaml" in err


# -- the live display -----------------------------------------------------------------------


def drawn(progress: RunProgress, height: int | None) -> list[str]:
    console = Console(file=io.StringIO(), width=120, color_system=None)
    with console.capture() as captured:
        console.print(progress.render(1000.0, height) if height else progress.render(1000.0))
    return captured.get().rstrip("\n").splitlines()


def big_run(count: int) -> RunProgress:
    progress = RunProgress("0190aaaabbbbccccddddeeeeffff0000", workflow="big@1.0.0")
    progress.status = "running"
    for index in range(count):
        progress.nodes[f"n{index}"] = NodeProgress(status="succeeded")
    progress.nodes["n7"].status = "failed"
    progress.nodes["n7"].detail = "boom"
    for index in range(5000, 5040):
        progress.nodes[f"n{index}"].status = "running"
    for index in range(9000, count):
        progress.nodes[f"n{index}"].status = "pending"
    return progress


def test_a_run_bigger_than_the_screen_shows_what_matters_in_its_height() -> None:
    lines = drawn(big_run(10_000), 30)
    assert len(lines) <= 30
    # the whole id, which cancel takes (its tail alone it refuses)
    assert "0190aaaabbbbccccddddeeeeffff0000" in lines[0]
    rows = [line.split() for line in lines[3:-1]]
    assert rows[0][:3] == ["x", "n7", "failed"]  # failed first, then running
    assert [row[:3] for row in rows[1:]] == [
        [">", f"n{5000 + i}", "running"] for i in range(len(rows) - 1)
    ]
    hidden = 10_000 - len(rows)
    running = 40 - (len(rows) - 1)
    assert lines[-1] == f"... {hidden:,} more: 8,959 succeeded, 1,000 pending, {running} running"


def test_a_run_that_fits_the_screen_shows_every_node_in_order() -> None:
    progress = big_run(10_000)
    small = RunProgress(progress.execution_id, workflow="small@1.0.0")
    small.nodes = {k: progress.nodes[k] for k in ("n0", "n7", "n5000")}
    lines = drawn(small, 30)
    assert [line.split()[1] for line in lines[3:]] == ["n0", "n7", "n5000"]


# -- events ---------------------------------------------------------------------------------


def trigger_event(kind: str, **data: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "execution_id": None,
        "data": {
            "trigger_id": "nightly",
            "trigger_type": "cron",
            "scheduled_time": "2026-03-02T12:00:00.000Z",
            **data,
        },
    }


def test_trigger_events_say_which_trigger_which_slot_and_what_came_of_it() -> None:
    fired = trigger_event("trigger.fired", execution_id="0190aaaabbbbcccc11112222", lag_ms=3.0)
    assert event_message(fired) == "nightly slot 2026-03-02T12:00:00.000Z: run 11112222"
    skipped = trigger_event(
        "trigger.skipped", reason="previous run still going", execution_id="0190aaaa99998888"
    )
    assert event_message(skipped) == (
        "nightly slot 2026-03-02T12:00:00.000Z: previous run still going (99998888)"
    )
    refused_slot = trigger_event("trigger.missed", reason="refused", error="inputs.n: bad")
    assert event_message(refused_slot) == "nightly slot 2026-03-02T12:00:00.000Z: inputs.n: bad"
    hook = trigger_event("trigger.fired", execution_id="0190aaaa77776666", path="/hooks/x")
    hook["data"]["scheduled_time"] = None
    assert event_message(hook) == "nightly POST /hooks/x: run 77776666"


def test_a_resumed_run_and_a_resumed_sleep_say_so() -> None:
    started: dict[str, Any] = {
        "type": "execution.started",
        "data": {"inputs": {}, "resumed": ["a", "b"]},
    }
    assert event_message(started) == "resumed, 2 nodes done already"
    fresh: dict[str, Any] = {"type": "execution.started", "data": {"inputs": {}, "resumed": []}}
    assert event_message(fresh) == ""
    sleep: dict[str, Any] = {
        "type": "node.started",
        "attempt": 1,
        "data": {"sleep_s": 10, "resumed": True, "remaining_s": 3.25},
    }
    assert event_message(sleep) == "resumed, 3.2s left"


def _spec(wid: str, *uses: str) -> SpecSource:
    nodes = "".join(f"  - id: n{k}\n    workflow: {{id: {u}}}\n" for k, u in enumerate(uses))
    return SpecSource(f"{wid}.yaml", f"id: {wid}\nversion: 1.0.0\nnodes:\n{nodes}".encode())


def test_apply_order_puts_children_first_and_leaves_cycles_and_the_unreadable_in_place() -> None:
    given = [
        _spec("top", "mid", "elsewhere"),  # elsewhere: registered already, or not at all
        SpecSource("broken.yaml", b"id: [\n"),
        _spec("mid", "leaf"),
        _spec("a", "b"),
        _spec("b", "a"),
        _spec("leaf"),
        _spec("self", "self"),
    ]
    ordered = in_reference_order(list(enumerate(given)))
    assert [source.name for _, source in ordered] == [
        "broken.yaml",
        "leaf.yaml",
        "mid.yaml",
        "top.yaml",
        "self.yaml",
        "a.yaml",  # a cycle keeps the order given: the server names it
        "b.yaml",
    ]
