"""``python -m engine run``'s progress lines say which foreach item logged, retried and started
again, as dagctl's do."""

from __future__ import annotations

import io
from typing import Any

import pytest

from engine.cli import ProgressPrinter, main
from engine.core.events import Event


def event(kind: str, attempt: int = 1, **data: Any) -> Event:
    return Event(1, 100.0, kind, "info", "w", "1.0.0", "e1", "b", None, attempt, data)


def lines(*events: Event) -> list[str]:
    out = io.StringIO()
    printer = ProgressPrinter(out, 1)
    for e in events:
        printer(e)
    return [" ".join(line.split()[1:]) for line in out.getvalue().splitlines()]


def test_a_foreach_item_s_lines_name_it() -> None:
    assert lines(
        event("node.log", level="info", message="processing y", item=1),
        event("node.retrying", next_attempt=2, delay_s=1.0, error="bad", item=1),
        event("node.started", 2, retry=True, item=1),
    ) == [
        "b log:info item 1: processing y",
        "b retrying attempt 2 of item 1 in 1.0s: bad",
        "b started attempt 2 of item 1",
    ]


def test_a_node_that_is_no_foreach_reads_as_before() -> None:
    assert lines(
        event("node.log", level="info", message="hello"),
        event("node.retrying", next_attempt=2, delay_s=1.0, error="bad"),
        event("node.started", 2, retry=True),
    ) == [
        "b log:info hello",
        "b retrying attempt 2 in 1.0s: bad",
        "b started attempt 2",
    ]


def test_durations_read_as_dagctl_says_them() -> None:
    # before: "30027.5 ms" here where dagctl said 30.0s
    assert lines(
        event("node.succeeded", duration_ms=30027.5),
        event("node.succeeded", duration_ms=0.2),
        event("node.succeeded", duration_ms=350.4),
    ) == ["b succeeded 30.0s", "b succeeded <1ms", "b succeeded 350ms"]


def test_help_shows_no_source_markup(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    said = capsys.readouterr().out
    assert "python -m engine: serve gRPC" in said and "``" not in said
