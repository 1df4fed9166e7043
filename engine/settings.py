"""The engine service's settings: one frozen dataclass, read from the environment once.

``Settings.from_env`` is the only place the engine reads environment variables (DESIGN section
6); the entry point builds it and passes it down. A bad value raises ``SettingsError`` with one
line that names the variable, which the entry point prints before exiting 2.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from engine.core.errors import EngineError

LogFormat = Literal["json", "plain"]

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SettingsError(EngineError):
    """An environment variable holds a value the engine cannot start with."""


@dataclass(frozen=True, slots=True)
class Settings:
    engine_id: str
    host: str = "[::]"
    """Address the gRPC server binds; ``[::]`` is every interface, IPv4 included."""
    port: int = 50051
    """0 lets the system pick a free port; the engine logs the one it got."""
    capacity: int = 10
    """Executions run at once; one more is refused with RESOURCE_EXHAUSTED."""
    metrics_port: int | None = None
    """Prometheus ``/metrics`` on this port; None: no metrics endpoint."""
    drain_grace: float = 30.0
    """Seconds runs in flight get to finish after SIGTERM, before they are cancelled."""
    lua_workers: int | None = None
    """Lua worker threads; None: one per core."""
    log_format: LogFormat = "plain"
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        return cls(
            engine_id=_text(env, "ENGINE_ID") or socket.gethostname(),
            host=_text(env, "HOST") or "[::]",
            port=_port(env, "PORT", 50051, zero="any free port"),
            capacity=_positive_int(env, "CAPACITY", 10),
            metrics_port=_port(env, "METRICS_PORT", 0, zero="off") or None,
            drain_grace=_seconds(env, "DRAIN_GRACE", 30.0),
            lua_workers=_optional_positive_int(env, "LUA_WORKERS"),
            log_format=_log_format(env),
            log_level=_log_level(env),
        )


def _text(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    got = _optional_positive_int(env, name)
    return default if got is None else got


def _optional_positive_int(env: Mapping[str, str], name: str) -> int | None:
    raw = _text(env, name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise SettingsError(f"{name} must be a positive integer, got {env[name]!r}")
    return value


def _port(env: Mapping[str, str], name: str, default: int, *, zero: str) -> int:
    raw = _text(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise SettingsError(
            f"{name} must be a port number from 0 ({zero}) to 65535, got {env[name]!r}"
        )
    return value


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = _text(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):
        raise SettingsError(f"{name} must be a number of seconds (0 or more), got {env[name]!r}")
    return value


def _log_format(env: Mapping[str, str]) -> LogFormat:
    raw = (_text(env, "LOG_FORMAT") or "plain").lower()
    if raw == "json":
        return "json"
    if raw == "plain":
        return "plain"
    raise SettingsError(f"LOG_FORMAT must be json or plain, got {env['LOG_FORMAT']!r}")


def _log_level(env: Mapping[str, str]) -> str:
    raw = (_text(env, "LOG_LEVEL") or "INFO").upper()
    if raw == "WARN":
        raw = "WARNING"
    if raw not in _LOG_LEVELS:
        raise SettingsError(
            f"LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)}, got {env['LOG_LEVEL']!r}"
        )
    return raw
