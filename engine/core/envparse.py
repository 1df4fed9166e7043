"""Reading settings from an environment mapping: typed values, one-line errors naming the variable.

Both services build their ``Settings`` with these, so a bad value reads the same everywhere:
``CAPACITY must be a positive integer, got 'abc'``.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from typing import Literal

from engine.core.errors import EngineError

LogFormat = Literal["json", "plain"]

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SettingsError(EngineError):
    """An environment variable holds a value a service cannot start with."""


def loopback_host(host: str) -> bool:
    """Whether ``host`` (a name, or an address, IPv6 with or without brackets) is this
    machine's loopback; any other name counts as reachable from elsewhere."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def text(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    got = optional_positive_int(env, name)
    return default if got is None else got


def optional_positive_int(env: Mapping[str, str], name: str) -> int | None:
    raw = text(env, name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise SettingsError(f"{name} must be a positive integer, got {env[name]!r}")
    return value


def port(env: Mapping[str, str], name: str, default: int, *, zero: str) -> int:
    raw = text(env, name)
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


def seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = text(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):
        raise SettingsError(f"{name} must be a number of seconds (0 or more), got {env[name]!r}")
    return value


def log_format(env: Mapping[str, str]) -> LogFormat:
    raw = (text(env, "LOG_FORMAT") or "plain").lower()
    if raw == "json":
        return "json"
    if raw == "plain":
        return "plain"
    raise SettingsError(f"LOG_FORMAT must be json or plain, got {env['LOG_FORMAT']!r}")


def log_level(env: Mapping[str, str]) -> str:
    raw = (text(env, "LOG_LEVEL") or "INFO").upper()
    if raw == "WARN":
        raw = "WARNING"
    if raw not in _LOG_LEVELS:
        raise SettingsError(
            f"LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)}, got {env['LOG_LEVEL']!r}"
        )
    return raw


def boolean(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = text(env, name)
    if raw is None:
        return default
    low = raw.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {env[name]!r}")


def choice(env: Mapping[str, str], name: str, options: tuple[str, ...], default: str) -> str:
    raw = (text(env, name) or default).lower()
    if raw not in options:
        raise SettingsError(f"{name} must be one of {', '.join(options)}, got {env[name]!r}")
    return raw


def address_list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """``host:port`` entries separated by commas or spaces."""
    raw = text(env, name)
    if raw is None:
        return ()
    out = []
    for item in raw.replace(",", " ").split():
        host, sep, port_text = item.rpartition(":")
        if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise SettingsError(f"{name} must list host:port addresses, got {item!r}")
        out.append(item)
    return tuple(out)
