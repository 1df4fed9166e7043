"""The JSON log format: every part of a record a collector needs lands in the one line."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from engine.logformat import JsonLines


def _record(**kwargs: object) -> logging.LogRecord:
    record = logging.LogRecord("engine.test", logging.WARNING, __file__, 1, "odd %s", ("x",), None)
    record.__dict__.update(kwargs)
    return record


def test_stack_info_travels_in_its_own_field() -> None:
    record = _record(stack_info="Stack (most recent call last):\n  File 'here.py', line 1")
    line = json.loads(JsonLines().format(record))
    assert line["message"] == "odd x"
    assert line["stack"] == "Stack (most recent call last):\n  File 'here.py', line 1"
    assert "exception" not in line
    assert "stack" not in json.loads(JsonLines().format(_record()))


def test_a_real_stack_info_and_a_traceback_are_both_kept() -> None:
    handler_lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            handler_lines.append(self.format(record))

    handler = Capture()
    handler.setFormatter(JsonLines())
    logger = logging.getLogger("tests.logformat")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            logger.error("failed: %s", "step", exc_info=sys.exc_info(), stack_info=True)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    (text,) = handler_lines
    assert "\n" not in text  # still one line
    line = json.loads(text)
    assert line["message"] == "failed: step"
    assert "ValueError: boom" in line["exception"]
    assert line["stack"].startswith("Stack (most recent call last):")
    assert "test_a_real_stack_info_and_a_traceback_are_both_kept" in line["stack"]


def test_python_warnings_become_json_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    import warnings

    from engine.logformat import configure_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("json", "INFO")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("an old call", DeprecationWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)
        root.handlers[:], level = saved
        root.setLevel(level)
    err = capsys.readouterr().err
    [line] = err.strip().splitlines()
    record = json.loads(line)
    assert record["logger"] == "py.warnings" and record["level"] == "warning"
    assert "DeprecationWarning: an old call" in record["message"]
