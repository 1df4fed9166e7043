"""The connection cap's arithmetic and the filter for asyncio's failed-accept lines."""

from __future__ import annotations

import logging

from orchestrator.connections import AcceptFailures, connection_cap


def test_the_cap_leaves_file_descriptors_for_everything_else() -> None:
    assert connection_cap(1024, 1 << 20) == 1024
    assert connection_cap(1024, 1024) == 768  # a container's usual soft limit, not raised
    assert connection_cap(1024, 100) == 16  # never none at all


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, (), None)


def test_failed_accepts_are_one_line_a_minute_saying_how_many_more() -> None:
    accepts = AcceptFailures()
    line = "socket.accept() out of system resource\nsocket: <socket>"
    assert accepts.filter(record(line))
    assert [accepts.filter(record(line)) for _ in range(1000)] == [False] * 1000
    assert accepts.filter(record("something else from asyncio"))
    accepts._last -= 61
    later = record(line)
    assert accepts.filter(later)
    assert "(1000 more like it in the last minute)" in later.getMessage()
