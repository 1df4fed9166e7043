"""dagctl's pure parts: arguments, --input values, settings, SSE parsing, the `up` plan, tables."""

from __future__ import annotations

import io
import json
import ssl
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console, RenderableType

from orchestrator.dagctl import cli
from orchestrator.dagctl.calling import ApiError, Unreachable, parse_sse
from orchestrator.dagctl.cli import BadArguments, Settings, build_parser, parse_input, read_inputs
from orchestrator.dagctl.launching import (
    BAD_SETTINGS_EXIT,
    RESTART_MARK,
    LaunchError,
    RestartPolicy,
    Restarts,
    how_it_ended,
    plan,
    tail,
)
from orchestrator.dagctl.showing import (
    ProgressLines,
    RunProgress,
    duration,
    engines_table,
    event_line,
    event_message,
    execution_details,
    executions_table,
    span,
    wall_clock,
    workflow_details,
    workflows_table,
)

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def render(renderable: RenderableType, width: int = 160) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, highlight=False).print(renderable)
    return buf.getvalue()


# -- --input and inputs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pair", "expected"),
    [
        ("n=5", ("n", 5)),
        ("ratio=0.5", ("ratio", 0.5)),
        ("name=Ada", ("name", "Ada")),
        ("flag=true", ("flag", True)),
        ("nothing=null", ("nothing", None)),
        ("items=[1, 2]", ("items", [1, 2])),
        ('obj={"a": {"b": 1}}', ("obj", {"a": {"b": 1}})),
        ('quoted="5"', ("quoted", "5")),
        ("empty=", ("empty", "")),
        ("eq=a=b", ("eq", "a=b")),
        ("nan=NaN", ("nan", "NaN")),
        ("inf=Infinity", ("inf", "Infinity")),
        ("text=hello world", ("text", "hello world")),
        (" key =1", ("key", 1)),
    ],
)
def test_input_values_are_json_when_they_parse_else_text(pair: str, expected: Any) -> None:
    assert parse_input(pair) == expected


@pytest.mark.parametrize("pair", ["novalue", "=5", ""])
def test_an_input_without_a_key_is_refused(pair: str) -> None:
    with pytest.raises(BadArguments, match="expected key=value"):
        parse_input(pair)


def test_pairs_go_on_top_of_inputs_json() -> None:
    assert read_inputs(pairs=["n=7", "extra=x"], inputs_json='{"n": 1, "keep": [1]}') == {
        "n": 7,
        "keep": [1],
        "extra": "x",
    }
    assert read_inputs() == {}


def test_inputs_json_must_parse_and_be_an_object() -> None:
    with pytest.raises(BadArguments, match="--inputs is not valid JSON"):
        read_inputs(inputs_json="{nope")
    # the server refuses any other inputs (422): refused here, naming the flag
    for pairs in ([], ["a=1"]):
        with pytest.raises(
            BadArguments, match="--inputs: inputs must be a JSON object, not a list"
        ):
            read_inputs(pairs=pairs, inputs_json="[1, 2]")


def test_inputs_files_are_json_or_yaml(tmp_path: Path) -> None:
    (tmp_path / "in.json").write_text('{"n": 3}')
    (tmp_path / "in.yaml").write_text("n: 4\nnames: [a, b]\n")
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "bad.yaml").write_text("a: [1\n")
    assert read_inputs(inputs_file=str(tmp_path / "in.json")) == {"n": 3}
    assert read_inputs(inputs_file=str(tmp_path / "in.yaml"), pairs=["n=5"]) == {
        "n": 5,
        "names": ["a", "b"],
    }
    assert read_inputs(inputs_file=str(tmp_path / "empty.yaml")) == {}
    with pytest.raises(BadArguments, match="not valid YAML"):
        read_inputs(inputs_file=str(tmp_path / "bad.yaml"))
    with pytest.raises(BadArguments, match=r"missing\.json"):
        read_inputs(inputs_file=str(tmp_path / "missing.json"))


# -- arguments and settings -----------------------------------------------------------------


def test_run_arguments() -> None:
    args = build_parser().parse_args(
        ["run", "hello", "--input", "n=5", "--input", "name=Ada", "--version", "^1", "--wait"]
    )
    assert args.command == "run" and args.workflow == "hello"
    assert args.pairs == ["n=5", "name=Ada"]
    assert args.version == "^1" and args.wait and args.output == "table"
    assert args.idempotency_key is None


def test_get_apply_validate_up_and_events_arguments() -> None:
    parser = build_parser()
    get = parser.parse_args(["get", "executions", "--workflow", "w", "--limit", "5", "-o", "json"])
    assert (get.resource, get.workflow, get.limit, get.output) == ("executions", "w", 5, "json")
    apply = parser.parse_args(["apply", "-f", "a.yaml", "-f", "b.json", "--force"])
    assert apply.files == ["a.yaml", "b.json"] and apply.force
    assert parser.parse_args(["validate", "-f", "x.yaml"]).files == ["x.yaml"]
    up = parser.parse_args(["up"])
    assert up.engines == 2 and not up.no_examples
    assert parser.parse_args(["up", "--engines", "3", "--no-examples"]).engines == 3
    events = parser.parse_args(["events", "-f", "--execution", "abc"])
    assert events.follow and events.execution == "abc"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["get", "pods"],
        ["run"],
        ["run", "w", "--inputs", "{}", "--inputs-file", "f"],
        ["up", "--engines", "0"],
        ["validate"],
        ["get", "executions", "-o", "yaml"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv, {}) == 2
    assert "usage: dagctl" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"], {}) == 0
    assert "validate" in capsys.readouterr().out


def test_settings_from_the_environment() -> None:
    assert Settings.from_env({}).server == "http://127.0.0.1:8080"
    assert Settings.from_env({}).token is None
    s = Settings.from_env({"DAGCTL_SERVER": "orch.local:9000/", "API_TOKEN": "a"})
    assert s.server == "http://orch.local:9000" and s.token == "a"
    s = Settings.from_env({"DAGCTL_SERVER": "https://x", "API_TOKEN": "a", "DAGCTL_TOKEN": "b"})
    assert s.server == "https://x" and s.token == "b"
    # a blank DAGCTL_TOKEN is unset: API_TOKEN is sent, and named as what was sent
    s = Settings.from_env({"API_TOKEN": "a", "DAGCTL_TOKEN": "  "})
    assert (s.token, s.token_variable) == ("a", "API_TOKEN")
    assert Settings.from_env({"HOME": "/h"}).environ["HOME"] == "/h"


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "reason", "hint"),
    [
        (
            "http://127.0.0.1:1",
            "connection reset",
            "start it with dagctl up, or set DAGCTL_SERVER (https:// if it serves TLS)",
        ),
        (
            "https://127.0.0.1:1",
            "the connection closed without an answer",
            "set DAGCTL_CERT_FILE and DAGCTL_KEY_FILE when it asks for a client certificate",
        ),
    ],
)
def test_a_connection_cut_off_says_what_may_be_missing(server: str, reason: str, hint: str) -> None:
    err = io.StringIO()
    cli.print_error(Unreachable(server, reason), err)
    assert err.getvalue() == (
        f"dagctl: cannot reach the orchestrator at {server}: {reason} ({hint})\n"
    )


def test_a_refused_token_names_the_variable_it_came_from() -> None:
    err = io.StringIO()
    settings = cli.Settings.from_env({"API_TOKEN": "t"})
    cli.print_error(ApiError(403, "forbidden", "the bearer token is not valid", {}), err, settings)
    assert err.getvalue() == (
        "dagctl: forbidden: the bearer token is not valid"
        " (API_TOKEN is not the orchestrator's API_TOKEN)\n"
    )
    err = io.StringIO()
    cli.print_error(ApiError(401, "unauthorized", "needs a token", {}), err, settings)
    assert "API_TOKEN did not reach it: a redirect or a proxy on the way may drop it" in (
        err.getvalue()
    )


def test_an_encrypted_client_key_is_refused_without_a_prompt(tmp_path: Path) -> None:
    import trustme

    from tests.keys import encrypted_copy

    issued = trustme.CA().issue_cert("dagctl@example.com")
    cert, key = tmp_path / "c.pem", tmp_path / "c.key"
    cert.write_bytes(b"".join(b.bytes() for b in issued.cert_chain_pems))
    encrypted_copy(issued.private_key_pem.bytes(), key)
    settings = cli.Settings.from_env({"DAGCTL_CERT_FILE": str(cert), "DAGCTL_KEY_FILE": str(key)})
    with pytest.raises(BadArguments, match=r"DAGCTL_KEY_FILE .* is encrypted"):
        settings.tls()


def test_error_lines() -> None:
    err = io.StringIO()
    cli.print_error(Unreachable("http://127.0.0.1:1", "connection refused"), err)
    assert err.getvalue() == (
        "dagctl: cannot reach the orchestrator at http://127.0.0.1:1: connection refused"
        " (start it with dagctl up, or set DAGCTL_SERVER)\n"
    )
    err = io.StringIO()
    cli.print_error(
        ApiError(
            400,
            "invalid_spec",
            "2 problems",
            {"problems": ["spec:3: a", "spec:5: b"], "allowed": ["x"], "limit": 3, "why": "w"},
        ),
        err,
    )
    assert err.getvalue().splitlines() == [
        "dagctl: invalid_spec: 2 problems",
        "  - spec:3: a",
        "  - spec:5: b",
        "  allowed:",
        "  - x",
        "  limit: 3",
        "  why: w",
    ]


# -- SSE ------------------------------------------------------------------------------------


def test_sse_frames_are_parsed_with_ids_comments_and_multiline_data() -> None:
    raw = [
        b": keep-alive\n",
        b"\n",
        b"id: 1\n",
        b"event: node.started\n",
        b'data: {"seq": 1}\n',
        b"\n",
        b"id: 2\r\n",
        b"data: [1,\r\n",
        b"data: 2]\r\n",
        b"\r\n",
        b"data:x\n",
    ]
    assert list(parse_sse(raw)) == [("1", '{"seq": 1}'), ("2", "[1,\n2]"), (None, "x")]


# -- the `up` plan --------------------------------------------------------------------------


def ports() -> Any:
    counter = iter(range(40000, 40100))
    return lambda: next(counter)


def test_up_plans_engines_on_free_ports_and_a_static_orchestrator(tmp_path: Path) -> None:
    environ = {"PATH": "/bin", "PORT": "1", "HOST": "0.0.0.0", "LOG_FORMAT": "json"}
    layout = plan(environ, engines=2, python="/py", base_dir=tmp_path, pick_port=ports())
    e0, e1 = layout.engines
    assert e0.argv == ("/py", "-m", "engine")
    assert (e0.name, e0.env["ENGINE_ID"], e0.env["PORT"], e0.env["HOST"]) == (
        "engine-0",
        "engine-0",
        "40000",
        "127.0.0.1",
    )
    assert e1.env["PORT"] == "40001" and e1.env["CAPACITY"] == "10"
    assert e0.env["LOG_FORMAT"] == "json" and e0.env["PATH"] == "/bin"
    assert "METRICS_PORT" not in e0.env
    assert e0.log_path == tmp_path / ".dagengine" / "logs" / "engine-0.log"
    orch = layout.orchestrator.env
    assert layout.orchestrator.argv == ("/py", "-m", "orchestrator")
    assert orch["DISCOVERY_MODE"] == "static"
    assert orch["ENGINE_ADDRESSES"] == "127.0.0.1:40000,127.0.0.1:40001"
    assert orch["STATE_DB"] == ".dagengine/state.db"
    assert (orch["HTTP_PORT"], orch["GRPC_PORT"]) == ("8080", "50051")
    assert orch["ENGINE_HEALTH_CHECK_INTERVAL"] == "2"
    assert orch["LOG_FORMAT"] == "json"
    assert orch["HOST"] == "0.0.0.0"  # asked for: the orchestrator listens everywhere
    assert layout.http_url == "http://127.0.0.1:8080"
    assert layout.orchestrator.log_path.name == "orchestrator.log"


def test_up_honours_the_environment(tmp_path: Path) -> None:
    environ = {
        "HTTP_PORT": "9090",
        "GRPC_PORT": "0",
        "STATE_DB": "/data/s.db",
        "ENGINE_HEALTH_CHECK_INTERVAL": "7",
        "CAPACITY": "3",
        "METRICS_PORT": "9100",
        "API_TOKEN": "t",
    }
    layout = plan(environ, engines=1, python="py", base_dir=tmp_path, pick_port=ports())
    (engine,) = layout.engines
    assert engine.env["CAPACITY"] == "3"
    assert engine.env["METRICS_PORT"] == "40001"  # one port each: they cannot share 9100
    assert layout.engine_metrics == (40001,)
    orch = layout.orchestrator.env
    assert (orch["HTTP_PORT"], orch["GRPC_PORT"]) == ("9090", "40002")
    assert layout.grpc_port == 40002
    assert orch["STATE_DB"] == "/data/s.db" and layout.state_db == "/data/s.db"
    assert orch["ENGINE_HEALTH_CHECK_INTERVAL"] == "7"
    assert orch["API_TOKEN"] == "t"
    assert orch["HOST"] == "127.0.0.1"  # not asked for: this machine only


@pytest.mark.parametrize("value", ["http", "70000", "-1"])
def test_up_refuses_a_bad_port(value: str, tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="HTTP_PORT must be a port number"):
        plan({"HTTP_PORT": value}, engines=1, python="py", base_dir=tmp_path, pick_port=ports())


# -- restarting an engine that exits -------------------------------------------------------


def test_restarts_double_the_pause_up_to_the_cap_while_an_engine_keeps_dying() -> None:
    life = Restarts(RestartPolicy())
    pauses = []
    now = 0.0
    for _ in range(10):
        life.started(now)
        life.became_ready()  # up, then dead again at once: never a reason to give up
        now += 1.0
        pause = life.exited(now)
        assert pause is not None
        pauses.append(pause)
        now += pause
    assert pauses == [0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30]
    assert life.starts == 10


def test_restarts_pause_briefly_again_after_an_engine_stayed_up_a_while() -> None:
    life = Restarts(RestartPolicy(stable_after=60))
    life.started(0)
    life.became_ready()
    assert life.exited(1) == 0.5
    life.started(1.5)
    life.became_ready()
    assert life.exited(2) == 1
    life.started(3)
    life.became_ready()
    assert life.exited(3 + 60) == 0.5  # a minute up: the backoff starts afresh
    life.started(64)
    assert life.exited(65) == 1


def test_restarts_give_up_on_an_engine_that_never_gets_ready() -> None:
    life = Restarts(RestartPolicy(give_up_after=5))
    life.started(0)
    assert [life.exited(0), life.exited(0), life.exited(0), life.exited(0)] == [0.5, 1, 2, 4]
    assert life.failed_starts == 4
    assert life.exited(0) is None
    # getting ready once clears the count
    life = Restarts(RestartPolicy(give_up_after=2))
    life.started(0)
    assert life.exited(1) == 0.5
    life.started(2)
    life.became_ready()
    assert life.exited(3) == 1
    life.started(4)
    assert life.exited(5) == 2
    assert life.exited(6) is None


@pytest.mark.parametrize(
    ("code", "said"),
    [
        (0, "exited with code 0"),
        (3, "exited with code 3"),
        (-9, "was killed by SIGKILL"),
        (-11, "was killed by SIGSEGV"),
        (-200, "was killed by signal 200"),
    ],
)
def test_how_a_child_ended(code: int, said: str) -> None:
    assert how_it_ended(code) == said


def test_a_logs_tail_is_of_its_latest_start(tmp_path: Path) -> None:
    log = tmp_path / "engine-0.log"
    assert tail(log) == ""
    log.write_text("one\ntwo\n")
    assert tail(log) == "one\ntwo"
    log.write_text(f"one\ntwo\n{RESTART_MARK}restart 1 of engine-0 ---\nthree\n")
    assert tail(log) == "three"
    log.write_text("".join(f"{i}\n" for i in range(30)))
    assert tail(log, 3) == "27\n28\n29"


# -- tables ---------------------------------------------------------------------------------


def execution(**extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": "3f2a9c1e0b7d4e5f8a6b1c2d3e4f5a6b",
        "workflow_id": "diamond",
        "version": "1.0.0",
        "status": "succeeded",
        "inputs": {"n": 5},
        "outputs": {"d": {"total": 25}},
        "error": None,
        "progress": 100,
        "created_at": iso(NOW - 120),
        "started_at": iso(NOW - 119.5),
        "finished_at": iso(NOW - 118.25),
        "parent_execution_id": None,
    }
    doc.update(extra)
    return doc


def test_executions_table() -> None:
    running = execution(
        id="b" * 32, status="running", progress=50, finished_at=None, started_at=iso(NOW - 2)
    )
    failed = execution(id="c" * 32, status="failed", error="node b failed: boom", progress=75)
    text = render(executions_table([execution(), running, failed], NOW))
    lines = text.splitlines()
    assert lines[0].split() == ["ID", "WORKFLOW", "STATUS", "PROGRESS", "AGE", "DURATION", "ERROR"]
    assert lines[1].split() == [
        "3f2a9c1e0b7d4e5f8a6b1c2d3e4f5a6b",
        "diamond@1.0.0",
        "succeeded",
        "100%",
        "2m00s",
        "1.2s",
    ]
    assert lines[2].split()[2:] == ["running", "50%", "2m00s", "2.0s"]
    assert lines[3].split()[2:] == [
        "failed",
        "75%",
        "2m00s",
        "1.2s",
        "node",
        "b",
        "failed:",
        "boom",
    ]


def test_engines_and_workflows_tables() -> None:
    engines: list[Any] = [
        {"id": "engine-0", "address": "127.0.0.1:4000", "state": "ready", "capacity": 10,
         "in_flight": 2, "version": "0.1.0", "last_error": None},
        {"id": "127.0.0.1:4001", "address": "127.0.0.1:4001", "state": "unhealthy",
         "capacity": 10, "in_flight": 0, "last_error": "UNAVAILABLE: refused"},
    ]  # fmt: skip
    text = render(engines_table(engines)).splitlines()
    assert text[1].split() == ["engine-0", "127.0.0.1:4000", "ready", "2", "10", "0.1.0"]
    assert text[2].split()[:3] == ["127.0.0.1:4001", "127.0.0.1:4001", "unhealthy"]
    assert "UNAVAILABLE: refused" in text[2]
    workflows: list[Any] = [
        {"id": "hello", "version": "1.2.0", "name": "Hello", "versions": ["1.0.0", "1.2.0"],
         "spec": {"nodes": [{"id": "a"}], "triggers": [{"cron": "@daily"}]}},
        {"id": "bare", "latest": "0.1.0"},
    ]  # fmt: skip
    text = render(workflows_table(workflows)).splitlines()
    assert text[0].split() == ["ID", "VERSION", "NAME", "VERSIONS", "NODES", "TRIGGERS"]
    assert text[1].split() == ["hello", "1.2.0", "Hello", "2", "1", "1"]
    assert text[2].split() == ["bare", "0.1.0"]


def test_execution_details_show_nodes_truncated_outputs_and_children() -> None:
    doc = execution(
        status="partial",
        error="node b failed",
        nodes={
            "a": {"status": "succeeded", "output": {"rows": list(range(100))}, "error": None,
                  "attempts": 1, "started_at": iso(NOW - 119), "finished_at": iso(NOW - 118.9),
                  "engine_id": "engine-0"},
            "b": {"status": "failed", "output": None, "error": "boom (Lua line 3)",
                  "attempts": 3, "started_at": iso(NOW - 118.9), "finished_at": iso(NOW - 118.5),
                  "engine_id": "engine-1"},
            "c": {"status": "blocked", "output": None, "error": None, "attempts": 0,
                  "started_at": None, "finished_at": None, "engine_id": None},
        },
        children=["child-1", {"id": "child-2", "workflow_id": "sub", "version": "2.0.0",
                              "status": "succeeded", "parent_node_id": "b",
                              "children": [{"id": "grandchild", "workflow_id": "leaf",
                                            "version": "1.0.0", "status": "cancelled",
                                            "parent_node_id": "x", "children": []}]}],
    )  # fmt: skip
    text = render(execution_details(doc, NOW))
    assert "Execution  3f2a9c1e0b7d4e5f8a6b1c2d3e4f5a6b" in text
    assert "Workflow   diamond@1.0.0" in text
    assert "Status     partial" in text
    assert "Duration   1.2s" in text
    assert "Error      node b failed" in text
    rows = {
        line.split()[0]: line
        for line in text.splitlines()
        if line.split()[:1] in (["a"], ["b"], ["c"])
    }
    assert rows["a"].split()[1:5] == ["succeeded", "1", "100ms", "engine-0"]
    assert '{"rows":[0,1,2,' in rows["a"] and rows["a"].rstrip().endswith("...")
    assert len(rows["a"].rstrip()) < 160
    assert rows["b"].split()[1:5] == ["failed", "3", "400ms", "engine-1"]
    assert "boom (Lua line 3)" in rows["b"]
    assert rows["c"].split() == ["c", "blocked", "0"]
    assert "Sub-workflows" in text and "child-1" in text
    lines = text.splitlines()
    child = next(i for i, line in enumerate(lines) if "child-2" in line)
    assert lines[child].split()[-4:] == ["b", "sub@2.0.0", "succeeded", "child-2"]
    # the grandchild hangs one level deeper, below its parent
    grandchild = lines[child + 1]
    assert grandchild.split()[-4:] == ["x", "leaf@1.0.0", "cancelled", "grandchild"]
    assert grandchild.index("x") > lines[child].index("b")


def test_execution_details_of_a_run_of_thousands_of_nodes_draw_500_failed_ones_first() -> None:
    """rich took 16 s to lay out a table of 20,000 nodes."""

    def node(status: str) -> dict[str, Any]:
        return {"status": status, "output": 1 if status == "succeeded" else None,
                "error": None, "attempts": 1, "started_at": None, "finished_at": None,
                "engine_id": None}  # fmt: skip

    nodes = {f"n{i:05d}": node("succeeded") for i in range(20_000)}
    nodes["n19999"] = node("failed")
    nodes["n10000"] = node("blocked")
    children: list[Any] = [f"c{i}" for i in range(600)]
    children[0] = {"id": "c0", "workflow_id": "sub", "version": "1.0.0", "status": "running",
                   "parent_node_id": "n00000", "children": [f"g{i}" for i in range(3000)]}  # fmt: skip
    doc = execution(status="partial", nodes=nodes, children=children)
    text = render(execution_details(doc, NOW))
    drawn = [line.split()[0] for line in text.splitlines() if line.startswith("n")]
    assert len(drawn) == 500
    # the run's order, with the ones that did not succeed in whatever their place
    assert drawn == sorted(drawn) and {"n10000", "n19999", "n00000", "n00497"} <= set(drawn)
    assert (
        "... and 19500 more nodes (19500 succeeded): dagctl describe execution "
        "3f2a9c1e0b7d4e5f8a6b1c2d3e4f5a6b -o json shows every one"
    ) in text
    assert "c499" in text and "c500" not in text and "... and 100 more" in text
    # each branch alike: a child's own children were drawn whole
    assert "g499" in text and "g500" not in text and "... and 2500 more" in text


def test_workflow_details() -> None:
    wf: dict[str, Any] = {
        "id": "etl",
        "version": "1.1.0",
        "versions": ["1.0.0", "1.1.0"],
        "spec": {
            "id": "etl",
            "version": "1.1.0",
            "name": "ETL",
            "description": "Loads the day's rows",
            "labels": {"team": "data", "tier": "2"},
            "triggers": [
                {"cron": "30 2 * * *", "timezone": "Europe/Berlin", "id": "nightly"},
                {"cron": "@hourly"},
                {"http": {"path": "/hooks/etl", "auth": {"bearer_env": "T"}}},
            ],
            "nodes": [
                {"id": "extract", "lua": "return {}"},
                {"id": "each", "depends_on": ["extract"], "foreach": "{{ x }}", "lua": "x"},
                {"id": "sub", "depends_on": ["each"], "workflow": {"id": "lib"},
                 "trigger_rule": "all_done"},
                {"id": "grade", "workflow": {"id": "grade", "version": "^1.0"}},
                {"id": "nap", "depends_on": ["sub"], "sleep": "5s"},
            ],
        },
        "dependents": ["report@1.0.0", "audit@2.1.0"],
    }  # fmt: skip
    text = render(workflow_details(wf))
    assert "Versions     1.0.0, 1.1.0" in text
    assert "Description  Loads the day's rows" in text
    assert "Labels       team=data, tier=2" in text
    assert "Dependents   report@1.0.0, audit@2.1.0" in text  # as Versions, not a JSON list
    assert (
        "Triggers     cron '30 2 * * *' Europe/Berlin (id nightly); cron '@hourly' UTC; "
        "http /hooks/etl"
    ) in text
    assert "each" in text and "lua (foreach)" in text
    # a reference as a spec writes it, not as JSON
    assert "workflow lib " in text and "workflow grade ^1.0" in text and "all_done" in text
    assert "{" not in text
    assert "sleep 5s" in text


# -- events ---------------------------------------------------------------------------------


def event(kind: str, node: str | None = None, **data: Any) -> dict[str, Any]:
    return {
        "seq": 3,
        "time": "2027-01-15T08:00:01.250Z",
        "type": kind,
        "severity": "info",
        "workflow_id": "hello",
        "version": "1.0.0",
        "execution_id": "3f2a9c1e0b7d4e5f8a6b",
        "node_id": node,
        "engine_id": "engine-0",
        "attempt": 1 if node else None,
        "data": data,
    }


def test_event_lines() -> None:
    line = event_line(event("node.log", "greet", level="info", message="greeting Ada"))
    assert line.split(maxsplit=5) == [
        "08:00:01.250Z",
        "node.log",
        "hello@1.0.0",
        "4e5f8a6b",
        "greet",
        "info: greeting Ada",
    ]
    line = event_line(event("execution.started"))
    assert line.split() == ["08:00:01.250Z", "execution.started", "hello@1.0.0", "4e5f8a6b", "-"]
    joined = {**event("engine.joined", address="127.0.0.1:1"), "workflow_id": None}
    joined["execution_id"] = None
    assert event_line(joined).split() == [
        "08:00:01.250Z",
        "engine.joined",
        "-",
        "-",
        "engine-0",
        "127.0.0.1:1",
    ]


def test_sub_workflow_events_name_the_child_or_the_parent() -> None:
    child = "01a229e244f0a8adf2ed13d8166b136e"
    requested = event("subworkflow.requested", "grades", workflow_id="grade", version="^1", item=2)
    assert event_message(requested) == "item 2: asks for grade@^1"
    started = event(
        "subworkflow.started", "grades", child_execution_id=child, workflow_id="grade",
        version="1.0.0",
    )  # fmt: skip
    assert event_message(started) == "child 166b136e (grade@1.0.0)"
    finished = event(
        "subworkflow.finished", "grades", child_execution_id=child, status="failed", error="boom"
    )
    assert event_message(finished) == "child 166b136e failed: boom"
    in_child = event("subworkflow.started", None, parent_execution_id=child, node_id="grades")
    assert event_message(in_child) == "child of 166b136e node grades"


def test_event_messages() -> None:
    assert event_message(event("node.succeeded", "a", duration_ms=12.5, output={"v": 1})) == (
        '12ms  {"v":1}'
    )
    assert event_message(
        event("node.retrying", "a", next_attempt=2, delay_s=1.0, error="boom")
    ) == ("attempt 2 in 1.0s: boom")
    assert event_message(event("node.failed", "a", error="boom")) == "boom"
    assert event_message(event("node.skipped", "a", reason="when false")) == "when false"
    assert event_message(event("execution.succeeded", outputs={"a": 1}, duration_ms=2500)) == (
        '2.5s  outputs {"a":1}'
    )
    assert event_message(event("subscriber.lagged", missed=7)).startswith("missed 7 events")
    started = event("node.started", "a")
    started["attempt"] = 3
    assert event_message(started) == "attempt 3"
    item = event("node.started", "a", retry=True, item=4)
    item["attempt"] = 2
    assert event_message(item) == "attempt 2 of item 4"
    assert event_message(
        event("node.retrying", "a", next_attempt=2, delay_s=1.0, error="boom", item=4)
    ) == ("attempt 2 of item 4 in 1.0s: boom")


def test_durations() -> None:
    assert [duration(s) for s in (0.0123, 1.25, 61, 3725, 0.0007, 0.0002, -1)] == [
        "12ms",
        "1.2s",
        "1m01s",
        "1h02m",
        "1ms",
        "<1ms",  # not "0ms": a run that took 0.2 ms took some time
        "<1ms",
    ]
    # rounding never pushes a value past its unit
    assert [duration(s) for s in (0.9996, 59.96, 3599.7)] == ["1.0s", "1m00s", "1h00m"]
    assert span(None, None, NOW) == ""
    assert span(iso(NOW - 3), None, NOW) == "3.0s"
    assert span(NOW - 3, NOW - 1) == "2.0s"


# -- a run's progress -----------------------------------------------------------------------


def test_a_polled_document_tells_the_nodes_ends_before_the_runs() -> None:
    progress = RunProgress("3f2a9c1e0b7d4e5f8a6b")
    progress.sync({"status": "queued", "nodes": {"a": {"status": "pending"}}})
    started = progress.sync({"status": "running", "nodes": {"a": {"status": "running"}}})
    assert started == [("execution", "running"), ("a", "running")]
    ended = progress.sync({"status": "failed", "nodes": {"a": {"status": "failed"}}})
    assert ended == [("a", "failed"), ("execution", "failed")]


def test_progress_folds_documents_and_events_in_any_order() -> None:
    eid = "3f2a9c1e0b7d4e5f8a6b"
    progress = RunProgress(eid)
    changes = progress.sync(
        {"workflow_id": "hello", "version": "1.0.0", "status": "queued",
         "nodes": {"a": {"status": "pending"}, "b": {"status": "pending"}}}
    )  # fmt: skip
    assert changes == []
    assert list(progress.nodes) == ["a", "b"] and progress.workflow == "hello@1.0.0"
    progress.apply(event("execution.started"))
    progress.apply(event("node.started", "a"))
    assert progress.status == "running" and progress.nodes["a"].status == "running"
    retry = event("node.retrying", "a", next_attempt=2, delay_s=0.5, error="flaky")
    progress.apply(retry)
    assert progress.nodes["a"].detail == "attempt 2 in 0.5s: flaky"
    again = event("node.started", "a")
    again["attempt"] = 2
    progress.apply(again)
    progress.apply(event("node.succeeded", "a", output={}))
    progress.apply(event("node.started", "a"))  # a late duplicate changes nothing
    assert progress.nodes["a"].status == "succeeded" and progress.nodes["a"].attempts == 2
    other = event("node.failed", "b", error="x")
    other["execution_id"] = "someone-else"
    progress.apply(other)
    assert progress.nodes["b"].status == "pending"
    progress.apply(event("node.failed", "b", error="boom"))
    progress.apply(event("execution.failed", error="node b failed"))
    assert progress.finished and progress.status == "failed" and progress.done_count() == 2
    assert progress.error == "node b failed"
    # a document that is behind does not undo what events said, and vice versa
    assert progress.sync({"status": "failed", "nodes": {"b": {"status": "failed"}}}) == []
    text = render(progress.render(NOW))
    assert "hello@1.0.0" in text and "failed" in text and "2/2 nodes" in text
    assert "boom" in text


def test_plain_progress_lines() -> None:
    out = io.StringIO()
    progress = RunProgress("e1")
    lines = ProgressLines(progress, out)
    progress.sync({"workflow_id": "w", "version": "1.0.0", "status": "queued",
                   "nodes": {"only": {"status": "pending"}}})  # fmt: skip
    lines.header()
    for ev in (
        {**event("node.started", "only"), "execution_id": "e1", "time": "2027-01-15T08:00:01.000Z"},
        {**event("node.log", "only", level="warn", message="careful"), "execution_id": "e1",
         "time": "2027-01-15T08:00:01.500Z"},
        {**event("node.succeeded", "only", duration_ms=900.0), "execution_id": "e1",
         "time": "2027-01-15T08:00:02.000Z"},
    ):  # fmt: skip
        lines.event(ev)
    lines.changes(progress.sync({"status": "succeeded", "nodes": {}}), 0.0)
    assert out.getvalue().splitlines()[:4] == [
        "execution e1 (w@1.0.0)",
        "   0.000s  only          started",
        "   0.500s  only          log:warn   careful",
        "   1.000s  only          succeeded  900ms",
    ]
    assert out.getvalue().splitlines()[4].split()[-2:] == ["execution", "succeeded"]


def test_json_dump_is_stable() -> None:
    out = io.StringIO()
    cli._dump(out, {"b": [1], "a": "é"})
    assert json.loads(out.getvalue()) == {"b": [1], "a": "é"}


def test_restarts_give_up_at_once_on_refused_settings_but_not_once_ready() -> None:
    life = Restarts(RestartPolicy(give_up_after=5))
    life.started(0)
    assert life.exited(0, code=BAD_SETTINGS_EXIT) is None
    # a ready engine that exits 2 later is restarted like any other
    life = Restarts(RestartPolicy(give_up_after=5))
    life.started(0)
    life.became_ready()
    assert life.exited(1, code=BAD_SETTINGS_EXIT) == 0.5


def test_next_fire_times_read_in_the_triggers_own_zone() -> None:
    assert wall_clock("2026-12-01T05:00:00.000Z", "Europe/Berlin") == "2026-12-01 06:00:00 CET"
    assert wall_clock("2026-07-01T04:00:00.000Z", "Europe/Berlin") == "2026-07-01 06:00:00 CEST"
    assert wall_clock("2026-12-01T05:00:00.000Z", "UTC") == "2026-12-01 05:00:00 UTC"
    assert wall_clock("soon", "Europe/Berlin") == "soon"
    assert wall_clock("2026-12-01T05:00:00.000Z", "Mars/Olympus") == "2026-12-01T05:00:00.000Z"


# -- bad input is one line, exit 2 (no server is ever reached) ------------------------------

NOWHERE = {"DAGCTL_SERVER": "http://127.0.0.1:9"}
"""A server nothing should answer at: a command that got as far as calling it exits 1."""


@pytest.mark.parametrize(
    ("server", "why"),
    [
        ("http://[::1", "not a URL: Invalid IPv6 URL"),
        ("ftp://127.0.0.1:8080", "the scheme must be http or https, not ftp"),
        ("file:///etc/passwd", "the scheme must be http or https, not file"),
        ("http://127.0.0.1:99999", "the port must be a number from 1 to 65535, not 99999"),
        ("http://127.0.0.1:0", "the port must be a number from 1 to 65535, not 0"),
        ("http://127.0.0.1:http", "the port must be a number from 1 to 65535, not http"),
        ("http://:8080", "no host"),
        ("http://127.0.0.1:8080?x=1", "a server URL takes no ?query or #fragment"),
        (
            "http://me:pw@127.0.0.1:8080",
            "a server URL takes no user or password (DAGCTL_TOKEN is sent as a bearer token)",
        ),
        (
            "http://💥:8080",
            "character 8 ('💥') cannot be in a URL, which holds printable ASCII without spaces"
            " (a host name in its xn-- form, a path percent-encoded)",
        ),
    ],
)
def test_a_server_url_that_cannot_work_is_refused_naming_it(
    server: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["get", "engines"], {"DAGCTL_SERVER": server}) == 2
    assert capsys.readouterr().err == f"dagctl: DAGCTL_SERVER {server!r}: {why}\n"


def test_good_server_urls_pass_and_a_bad_one_is_no_loopback() -> None:
    from orchestrator.dagctl.calling import Client, server_problem

    for url in ("http://127.0.0.1:8080", "https://[::1]:8443", "http://orch/prefix", "http://h:"):
        assert server_problem(url) is None, url
    assert Client("http://[::1").server == "http://[::1"  # no ValueError from the proxy choice
    # validate needs no server, so a bad one does not stop it
    assert cli.main(["validate", "-f", "/nowhere.yaml"], {"DAGCTL_SERVER": "ftp://x"}) == 2


@pytest.mark.parametrize(
    ("argv", "env", "said"),
    [
        (
            ["run", "hello", "--idempotency-key", "💥"],
            NOWHERE,
            "--idempotency-key '💥': character 1 ('💥')",
        ),
        (
            ["run", "hello", "--idempotency-key", "a\nb"],
            NOWHERE,
            "--idempotency-key 'a\\nb': character 2 ('\\n')",
        ),
        (
            ["get", "engines"],
            {**NOWHERE, "DAGCTL_TOKEN": "s3cret\udcff"},
            "DAGCTL_TOKEN: character 7 ('\\udcff')",
        ),
        (
            ["get", "engines"],
            {**NOWHERE, "API_TOKEN": "tok\u00e9n"},
            "API_TOKEN: character 4 ('é')",
        ),
        (["up"], {"DAGCTL_TOKEN": "\u2603"}, "DAGCTL_TOKEN: character 1 ('☃')"),
    ],
)
def test_what_an_http_header_cannot_carry_is_refused_naming_the_option_or_variable(
    argv: list[str], env: dict[str, str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv, env) == 2
    err = capsys.readouterr().err
    # a variable at fault is one line; an option, the usage and a line
    assert (told(err) if said.startswith("--") else err) == (
        f"dagctl: {said} cannot go in an HTTP header, which holds printable ASCII only "
        "(letters, digits, punctuation, spaces)\n"
    )


def test_an_argument_that_is_not_utf8_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    # what a shell passes for $'\xff': it could go neither in a URL nor in JSON
    assert cli.main(["describe", "execution", "\udcff"], NOWHERE) == 2
    assert told(capsys.readouterr().err) == "dagctl: argument '\\udcff' is not valid UTF-8\n"
    assert cli.main(["get", "executions", "--workflow", "w\udcff"], NOWHERE) == 2
    assert told(capsys.readouterr().err) == "dagctl: argument 'w\\udcff' is not valid UTF-8\n"


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["get", "workflows", "--status", "failed"], "get workflows takes no --status (only get executions does)"),
        (["get", "engines", "--limit", "5"], "get engines takes no --limit (only get executions does)"),
        (["get", "engines", "--before", "e1"], "get engines takes no --before (only get executions does)"),
        (["get", "triggers", "--limit", "5"], "get triggers takes no --limit (only get executions does)"),
        (
            ["get", "wf", "--workflow", "w"],
            "get workflows takes no --workflow (only get executions and get triggers do)",
        ),
    ],
)  # fmt: skip
def test_get_refuses_an_option_that_does_not_apply_to_the_resource(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv, NOWHERE) == 2
    assert told(capsys.readouterr().err) == f"dagctl: {said}\n"


def told(err: str) -> str:
    """A refusal of arguments without the command's usage before it (which it must have)."""
    usage, _, said = err.partition("\ndagctl: ")
    assert usage.startswith("usage: dagctl "), err
    return "dagctl: " + said


@pytest.mark.parametrize(
    ("limit", "said"),
    [("0", "must be at least 1, got 0"), ("1001", "must be at most 1000, got 1001")],
)
def test_trigger_history_limit_is_checked_locally_as_get_limit_is(
    limit: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["get", "executions", "--limit", "0"], NOWHERE) == 2
    assert "argument --limit: must be at least 1, got 0" in capsys.readouterr().err
    assert cli.main(["trigger", "history", "nightly", "--limit", limit], NOWHERE) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"dagctl trigger history: error: argument --limit: {said}"
    )


def test_apply_of_a_missing_file_exits_2_as_validate_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "missing.yaml")
    assert cli.main(["validate", "-f", missing], NOWHERE) == 2
    assert cli.main(["apply", "-f", missing], NOWHERE) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"dagctl: {missing}: No such file or directory"
    )


# -- server text on the screen --------------------------------------------------------------

RED = "x\x1b[31mRED\x00\x07\x7f\x85\u2028\ud800"
RED_SHOWN = "x\\x1b[31mRED\\x00\\x07\\x7f\\x85\\u2028\\ud800"


def test_control_characters_are_escaped_and_newlines_and_tabs_kept() -> None:
    from orchestrator.dagctl.calling import printable

    assert printable(RED) == RED_SHOWN
    assert printable(printable(RED)) == RED_SHOWN
    assert printable("a\nb\tc 💥 日本 é") == "a\nb\tc 💥 日本 é"
    assert printable("\r\x1b]8;;http://evil\x1b\\") == "\\x0d\\x1b]8;;http://evil\\x1b\\"


def no_controls(text: str) -> bool:
    return not any(
        (ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) < 0xE000
        for c in text
    )


def test_tables_and_details_show_server_text_escaped_and_markup_as_written() -> None:
    doc: dict[str, Any] = {
        "id": f"e-{RED}",
        "workflow_id": f"wf{RED}",
        "version": "1.0.0",
        "status": "failed",
        "progress": 100,
        "created_at": iso(NOW - 5),
        "started_at": iso(NOW - 4),
        "finished_at": iso(NOW - 3),
        "error": f"node 'a' failed: {RED} [/bold] :smile:",
        "inputs": {"k": RED},
        "outputs": {},
        "parent_execution_id": "p1",
        "parent_node_id": f"n{RED}",
        "nodes": {
            f"a{RED}": {"status": "failed", "attempts": 1, "error": RED, "output": {"o": RED},
                        "engine_id": f"eng{RED}"},
        },
        "children": [f"c{RED}", {"id": "c2", "workflow_id": RED, "status": "running",
                                  "parent_node_id": RED}],
    }  # fmt: skip
    for text in (
        render(executions_table([doc], NOW)),
        render(execution_details(doc, NOW)),
        render(
            workflows_table([{"id": RED, "version": "1", "name": f"[/]{RED}", "versions": [1]}])
        ),
        render(engines_table([{"id": RED, "address": RED, "state": RED, "last_error": RED}])),
        render(workflow_details({"id": RED, "name": RED, "spec": {"nodes": [{"id": RED}]}})),
    ):
        assert no_controls(text), text
        assert "x\\x1b[31mRED" in text
    details = render(execution_details(doc, NOW))
    assert "[/bold] :smile:" in details  # rich markup and emoji codes shown as written
    assert "[/]x" in render(workflows_table([{"id": "w", "name": f"[/]{RED}"}]))


def test_an_event_stays_on_its_line_whatever_its_message_holds() -> None:
    # a newline in a script's log line printed a line of its own, which could pass for another
    # event; a right-to-left override reordered what the terminal showed after it
    message = "line1\n00:00:01.000Z node.succeeded\tw@1 \u202eabc"
    line = event_line({"type": "node.log", "data": {"level": "info", "message": message}})
    assert "\n" not in line and "\t" not in line and "\u202e" not in line
    assert line.endswith("info: line1\\x0a00:00:01.000Z node.succeeded\\x09w@1 \\u202eabc")


def test_event_and_progress_lines_show_server_text_escaped() -> None:
    ev: dict[str, Any] = {
        "time": f"2027-01-15T08:00:01.000Z{RED}",
        "type": "node.log",
        "workflow_id": RED,
        "version": "1",
        "execution_id": f"e1{RED}",
        "node_id": f"n{RED}",
        "data": {"level": RED, "message": RED},
    }
    line = event_line(ev)
    assert no_controls(line) and line.endswith(f"{RED_SHOWN}: {RED_SHOWN}")
    assert no_controls(event_message({"type": "node.failed", "data": {"error": RED}}))
    out = io.StringIO()
    progress = RunProgress(f"e1{RED}")
    lines = ProgressLines(progress, out)
    progress.sync({"workflow_id": RED, "version": "1", "status": "running",
                   "nodes": {f"n{RED}": {"status": "running"}}})  # fmt: skip
    lines.header()
    lines.event({**ev, "execution_id": f"e1{RED}"})
    lines.changes(progress.sync({"nodes": {f"n{RED}": {"status": "failed", "error": RED}}}), NOW)
    assert no_controls(out.getvalue()), out.getvalue()
    assert out.getvalue().count(RED_SHOWN) >= 5
    assert no_controls(render(progress.render(NOW)))


def test_event_and_progress_lines_keep_columns_with_wide_characters() -> None:
    def event(workflow: str, node: str) -> dict[str, Any]:
        return {"time": "2027-01-15T08:00:01.000Z", "type": "node.log", "workflow_id": workflow,
                "version": "1", "execution_id": "e1", "node_id": node,
                "data": {"level": "info", "message": "end"}}  # fmt: skip

    wide, narrow = event_line(event("日本💥", "節点")), event_line(event("abcdef", "ab"))
    console = Console(width=200)
    assert console.measure(wide).maximum == console.measure(narrow).maximum
    out = io.StringIO()
    lines = ProgressLines(RunProgress("e1"), out)
    lines.fit(["節点節点節点節点", "a"])
    lines.changes([("節点節点節点節点", "running"), ("a", "running")], 0.0)
    first, second = out.getvalue().splitlines()
    assert console.measure(first).maximum == console.measure(second).maximum


def test_json_output_keeps_characters_but_escapes_lone_surrogates() -> None:
    out = io.StringIO()
    cli._dump(out, {"a": "é\x1b", "b": "\udc80"})
    assert '"\\udc80"' in out.getvalue() and json.loads(out.getvalue())["a"] == "é\x1b"
    out = io.StringIO()
    cli._dump(out, {"a": "é"})
    assert '"é"' in out.getvalue()


def test_an_answer_that_is_not_http_is_said_in_words() -> None:
    import http.client

    from orchestrator.dagctl.calling import NOT_HTTP, _reason

    frame = "\x00\x00\x18\x04\x00\x00\x00\x00\x00\x00\x04\x00@\x00\x00\x00\x05\x00@"
    assert _reason(http.client.BadStatusLine(frame)) == NOT_HTTP
    # https:// to a plain-HTTP server: OpenSSL's own words said nothing of what to change
    wrong = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)")
    wrong.reason = "WRONG_VERSION_NUMBER"
    assert _reason(wrong) == "it answered without TLS: is its address http://, not https://?"
    assert _reason(OSError(5, "Bad \x1b[31m thing")) == "bad \\x1b[31m thing"
    err = io.StringIO()
    cli.print_error(Unreachable("http://127.0.0.1:50051", NOT_HTTP), err)
    assert err.getvalue() == (
        "dagctl: cannot reach the orchestrator at http://127.0.0.1:50051: it did not answer HTTP;"
        " is that the gRPC port? (set DAGCTL_SERVER to its HTTP API address, which dagctl up"
        " prints)\n"
    )
    err = io.StringIO()
    cli.print_error(ApiError(400, "bad\x1b", f"m{RED}", {"problems": [RED], "x": RED}), err)
    assert no_controls(err.getvalue()) and err.getvalue().count(RED_SHOWN) == 3


def test_standard_input_that_cannot_be_read_is_a_source_error() -> None:
    from orchestrator.dagctl.sources import spec_sources

    class Closed(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            raise OSError(9, "Bad file descriptor")

    (source,) = spec_sources(["-"], Closed())
    assert source.name == "<stdin>" and isinstance(source.error, OSError)
