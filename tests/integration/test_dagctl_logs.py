"""``dagctl logs`` against a real orchestrator and a real engine: what Lua scripts logged, from
the stored timeline and followed live with ``-f`` across the moment the stored lines end and
the live ones begin, filtered by node, and where a parent's sub-workflow runs keep theirs.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.dagctl import main
from tests.integration.conftest import (
    OrchestratorProcess,
    spawn_engine,
    spawn_orchestrator,
    stop_process,
    wait_until_serving,
)

pytestmark = pytest.mark.slow

CHATTY = """
id: chatty
version: 1.0.0
nodes:
  - id: extract
    lua: |
      log("info", "reading rows")
      log("debug", "two\\nlines")
      return { rows = { 1, 2, 3 } }
  - id: flaky
    retry: {max_attempts: 2, delay: 10ms}
    lua: |
      log("info", "try " .. ctx.attempt)
      if ctx.attempt < 2 then error("not ready") end
  - id: each
    depends_on: [extract, flaky]
    foreach: "{{ results.extract.rows }}"
    concurrency: 1
    retry: {max_attempts: 2, delay: 10ms}
    lua: |
      log("warn", "item " .. ctx.item .. " attempt " .. ctx.attempt)
      if ctx.item == 2 and ctx.attempt == 1 then error("odd") end
      return ctx.item
  - id: last
    depends_on: [each]
    lua: print("done", 42)
"""

QUIET = """
id: quiet
version: 1.0.0
nodes:
  - id: a
    lua: return 1
"""

# three bursts of lines a second apart: -f is started after the first burst is stored
TICKER = """
id: ticker
version: 1.0.0
inputs_schema: {type: object}
nodes:
  - id: one
    lua: for i = 1, 50 do log("info", "one " .. i) end
  - id: pause1
    depends_on: [one]
    sleep: 1500ms
  - id: two
    depends_on: [pause1]
    lua: for i = 1, 50 do log("info", "two " .. i) end
  - id: pause2
    depends_on: [two]
    sleep: 1s
  - id: three
    depends_on: [pause2]
    lua: |
      for i = 1, 50 do log("info", "three " .. i) end
      if inputs.fail then error("boom") end
"""

CHILD = """
id: child
version: 1.0.0
nodes:
  - id: say
    lua: log("info", "child says " .. inputs.n)
"""

PARENT = """
id: parent
version: 1.0.0
nodes:
  - id: before
    lua: log("info", "parent starts")
  - id: kids
    depends_on: [before]
    foreach: [1, 2]
    workflow: {id: child, version: "^1"}
    inputs: {n: "{{ ctx.item }}"}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An orchestrator and one engine, the workflows above registered: the HTTP URL."""
    tmp = tmp_path_factory.mktemp("logs")
    engine = wait_until_serving(spawn_engine(tmp / "engine.log", CAPACITY="20"))
    orch: OrchestratorProcess | None = None
    try:
        orch = spawn_orchestrator(tmp / "orchestrator.log", tmp / "state.db", [engine])
        for name, text in [
            ("chatty", CHATTY),
            ("quiet", QUIET),
            ("ticker", TICKER),
            ("child", CHILD),
            ("parent", PARENT),
        ]:
            (tmp / f"{name}.yaml").write_text(text)
            assert (
                main(["apply", "-f", str(tmp / f"{name}.yaml")], {"DAGCTL_SERVER": orch.url}) == 0
            )
        yield orch.url
    finally:
        if orch is not None:
            stop_process(orch.proc)
        stop_process(engine.proc)


def dagctl(url: str, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv), {"DAGCTL_SERVER": url})
    seen = capsys.readouterr()
    return code, seen.out, seen.err


def fetch(url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url,
        data=data,
        headers={"Content-Type": "application/json"},
        method="POST" if data else "GET",
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)


def run(url: str, workflow: str, inputs: dict[str, Any] | None = None, wait: bool = True) -> str:
    body = {"inputs": inputs or {}, "wait": wait}
    return str(fetch(f"{url}/trigger/{workflow}", body)["execution_id"])


def columns(out: str) -> list[tuple[str, str, str]]:
    """(source, level, message) of each line, columns two spaces or more apart: the time (13
    characters) left out."""
    rows = []
    for line in out.splitlines():
        found = re.fullmatch(r"(\S.*?) {2,}(\S+) {2,}(.*)", line[13:].strip())
        assert found, line
        rows.append((found[1], found[2], found[3]))
    return rows


def test_logs_prints_a_runs_lines_in_order_with_items_and_attempts(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    execution_id = run(server, "chatty")
    code, out, err = dagctl(server, capsys, "logs", execution_id)
    assert (code, err) == (0, "")
    assert columns(out) == [
        ("extract", "info", "reading rows"),
        ("extract", "debug", "two\\x0alines"),  # a line a record, as events writes it
        ("flaky", "info", "try 1"),
        ("flaky attempt 2", "info", "try 2"),
        ("each[0]", "warn", "item 1 attempt 1"),
        ("each[1]", "warn", "item 2 attempt 1"),
        ("each[1] attempt 2", "warn", "item 2 attempt 2"),
        ("each[2]", "warn", "item 3 attempt 1"),
        ("last", "info", "done\\x0942"),
    ]
    assert all(line[2] == ":" and line[12] == "Z" for line in out.splitlines())
    # the events' timeline holds more than the lines: only node.log is shown
    code, timeline, _ = dagctl(server, capsys, "events", execution_id)
    assert code == 0 and len(timeline.splitlines()) > len(out.splitlines())
    # by the last 8 characters of its id, as events takes it; -o json: the events as sent
    code, as_json, _ = dagctl(server, capsys, "logs", execution_id[-8:], "-o", "json")
    events = [json.loads(line) for line in as_json.splitlines()]
    assert code == 0 and {e["type"] for e in events} == {"node.log"}
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert [e["data"]["message"] for e in events][1] == "two\nlines"


def test_node_picks_one_nodes_lines_and_an_unknown_node_is_refused(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    execution_id = run(server, "chatty")
    code, out, err = dagctl(server, capsys, "logs", execution_id, "--node", "each")
    assert (code, err) == (0, "")
    assert [source for source, _, _ in columns(out)] == [
        "each[0]",
        "each[1]",
        "each[1] attempt 2",
        "each[2]",
    ]
    code, out, err = dagctl(server, capsys, "logs", execution_id, "--node", "eahc")
    assert (code, out) == (2, "")
    assert "has no node 'eahc'; did you mean 'each'?" in err
    assert "its nodes: extract, flaky, each, last" in err
    code, out, err = dagctl(server, capsys, "logs", execution_id, "--node", "")
    assert code == 2 and "logs: --node is empty" in err


def test_a_run_without_lines_says_so_and_exits_0(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    execution_id = run(server, "quiet")
    code, out, err = dagctl(server, capsys, "logs", execution_id)
    assert (code, out) == (0, "")
    assert err == f"execution {execution_id} has no log lines\n"
    code, out, err = dagctl(server, capsys, "logs", execution_id, "--node", "a", "-f")
    assert (code, out) == (0, "")
    assert err == f"node a of execution {execution_id} has no log lines\n"


def test_an_unknown_execution_is_the_error_other_commands_give(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = dagctl(server, capsys, "logs", "0123456789abcdef0123456789abcdef")
    assert (code, out) == (1, "")
    assert "no execution '0123456789abcdef0123456789abcdef'" in err
    _, _, described = dagctl(server, capsys, "describe", "execution", "0123456789abcdef")
    code, _, err = dagctl(server, capsys, "logs", "0123456789abcdef")
    assert code == 1 and err == described


def stored_lines(url: str, execution_id: str) -> int:
    page = fetch(f"{url}/api/v1/executions/{execution_id}/events?limit=10000")
    return sum(1 for e in page["events"] if e["type"] == "node.log")


@pytest.mark.parametrize(("fail", "exit_code"), [(False, 0), (True, 1)])
def test_follow_shows_stored_then_live_lines_each_once_and_exits_as_run_wait(
    server: str, capsys: pytest.CaptureFixture[str], fail: bool, exit_code: int
) -> None:
    execution_id = run(server, "ticker", {"fail": fail}, wait=False)
    deadline = time.monotonic() + 30
    while stored_lines(server, execution_id) < 50:  # the first burst is stored, no more
        assert time.monotonic() < deadline
        time.sleep(0.05)
    code, out, err = dagctl(server, capsys, "logs", "-f", execution_id)
    assert (code, err) == (exit_code, "")
    assert [message for _, _, message in columns(out)] == [
        f"{node} {i}" for node in ("one", "two", "three") for i in range(1, 51)
    ]
    # what -f showed is what the stored timeline shows now the run is over
    code, stored, _ = dagctl(server, capsys, "logs", execution_id)
    assert code == 0 and stored == out
    # followed again once it is over: the same lines and the same code
    assert dagctl(server, capsys, "logs", "-f", execution_id) == (exit_code, out, "")


def test_follow_from_before_the_first_line(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Started while the run has logged nothing yet: every line comes live."""
    execution_id = run(server, "ticker", wait=False)
    result: list[int] = []
    follower = threading.Thread(
        target=lambda: result.append(main(["logs", "-f", execution_id], {"DAGCTL_SERVER": server}))
    )
    capsys.readouterr()
    follower.start()
    follower.join(60)
    out = capsys.readouterr().out
    assert result == [0]
    assert len(columns(out)) == 150 and len(set(out.splitlines())) == 150


def test_a_parent_names_its_sub_workflow_runs_whose_lines_are_their_own(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    execution_id = run(server, "parent")
    children = fetch(f"{server}/api/v1/executions/{execution_id}")["children"]
    assert len(children) == 2
    code, out, err = dagctl(server, capsys, "logs", execution_id)
    assert code == 0
    assert columns(out) == [("before", "info", "parent starts")]
    said = err.splitlines()
    assert said[0] == (
        f"{execution_id} started 2 sub-workflow runs, whose log lines are their own: "
        "dagctl logs CHILD_ID"
    )
    items = {
        child: fetch(f"{server}/api/v1/executions/{child}")["parent_item"] for child in children
    }
    assert sorted(said[1:]) == sorted(
        f"  {child}  kids[{item}]  child@1.0.0" for child, item in items.items()
    )
    for child in children:
        code, out, err = dagctl(server, capsys, "logs", child)
        assert (code, err) == (0, "")
        (line,) = columns(out)
        assert line[0] == "say" and line[2].startswith("child says ")
    # --node of a node that logs nothing, whose runs do
    code, out, err = dagctl(server, capsys, "logs", execution_id, "--node", "kids")
    assert code == 0 and out == ""
    assert err.startswith(f"node kids of execution {execution_id} has no log lines\n")
    assert "started 2 sub-workflow runs" in err
