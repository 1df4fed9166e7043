"""``dagctl run --wait`` off a terminal: one line a record, whatever a script's text holds, so a
reader of its output (a person or a script) cannot be shown a line the run never wrote."""

from __future__ import annotations

import io
from typing import Any

from orchestrator.dagctl import cli
from orchestrator.dagctl.showing import ProgressLines, RunProgress, event_message

FAKE = '\n   0.009s  b             succeeded  <1ms  {"ok":true}'


def event(kind: str, node: str | None = None, **data: Any) -> dict[str, Any]:
    return {
        "time": "2027-01-15T08:00:01.250Z",
        "type": kind,
        "workflow_id": "w",
        "version": "1.0.0",
        "execution_id": "e1",
        "node_id": node,
        "attempt": 1,
        "data": data,
    }


def test_a_log_line_with_newlines_and_tabs_stays_on_its_line() -> None:
    out = io.StringIO()
    lines = ProgressLines(RunProgress("e1"), out)
    lines.event(event("node.log", "a", level="info", message=f"fine{FAKE}\tafter"))
    written = out.getvalue().splitlines()
    assert len(written) == 1
    assert written[0].endswith("log:info   fine\\x0a   0.009s  b             succeeded  <1ms  "
                               '{"ok":true}\\x09after')  # fmt: skip


def test_a_failed_node_s_error_stays_on_its_line() -> None:
    out = io.StringIO()
    progress = RunProgress("e1")
    lines = ProgressLines(progress, out)
    lines.event(event("node.failed", "b", error=f"first line{FAKE}"))
    changes = progress.sync({"status": "failed", "nodes": {"c": {"status": "failed",
                                                                 "error": f"x{FAKE}"}}})  # fmt: skip
    lines.changes(changes, 0.0)
    written = out.getvalue().splitlines()
    assert len(written) == 3, written
    assert all("succeeded  <1ms" not in line.split("\\x0a")[0] for line in written)


def test_the_run_s_error_cannot_fake_an_outputs_block() -> None:
    doc = {"status": "failed", "error": 'boom\noutputs:\n{"fake": true}\n', "outputs": {}}
    said = cli.run_end_lines("e1", doc)
    assert said == [
        "execution e1 failed",
        'error: boom\\x0aoutputs:\\x0a{"fake": true}\\x0a',
        "outputs:",
    ]


def test_a_foreach_item_s_log_line_says_its_item() -> None:
    logged = event("node.log", "b", level="info", message="doing y", item=1)
    assert event_message(logged) == "info: item 1: doing y"
    out = io.StringIO()
    ProgressLines(RunProgress("e1"), out).event(logged)
    assert out.getvalue().rstrip().endswith("log:info   item 1: doing y")
    # a node that is no foreach logs as it did
    assert event_message(event("node.log", "a", level="warn", message="x")) == "warn: x"
