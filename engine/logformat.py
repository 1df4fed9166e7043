"""How the engine's log lines look: plain text for people, JSON lines for collectors.

Context travels in ``extra`` (``workflow_id``, ``execution_id``, ``node_id``, ``engine_id``, ...);
the JSON format puts every such field at the top level of the line, the plain one appends them
as ``key=value``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Final

# attributes every LogRecord has; anything else on a record came in through ``extra``
_STANDARD: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime"}
)


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class JsonLines(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the extra fields, any traceback
    (``exception``) and any ``stack_info=True`` stack (``stack``)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_extras(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            # in a field of its own, as the plain format adds it after the message: dropping it
            # would lose exactly what the caller asked to see
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class PlainLines(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        extras = _extras(record)
        if extras:
            text += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return text


def configure_logging(log_format: str, level: str) -> None:
    """Route every logger to stderr in the chosen format; called once by the entry point."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if log_format == "json" else PlainLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Python's warnings (a library's deprecation, say) as log records too, not as loose
    # multi-line text on stderr that a JSON log collector cannot read
    logging.captureWarnings(True)
