"""Reading settings from an environment mapping: typed values, one-line errors naming the variable.

Both services build their ``Settings`` with these, so a bad value reads the same everywhere:
``CAPACITY must be a positive integer, got 'abc'``.
"""

from __future__ import annotations

import ipaddress
import math
import re
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


_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")
# a name only looked up, never listened on, may have what resolvers answer for: Docker
# Compose's service names (workflow_engine) and SRV-style labels have underscores
_LOOKUP_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_LOOKUP_NAME = re.compile(rf"(?=.{{1,253}}$){_LOOKUP_LABEL}(?:\.{_LOOKUP_LABEL})*\.?")


def bare_host(host: str) -> str:
    """``host`` without the brackets an IPv6 address may be written in: ``[::]`` is ``::``."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def any_address(host: str) -> bool:
    """Whether ``host`` is the address of every interface (``0.0.0.0``, ``::``, ``[::]``),
    which the services take as every interface over both IPv4 and IPv6, as gRPC does."""
    try:
        return ipaddress.ip_address(bare_host(host)).is_unspecified
    except ValueError:
        return False


def host_port(host: str, port: int) -> str:
    """``host:port`` with an IPv6 address in brackets, as gRPC and URLs take it."""
    bare = bare_host(host)
    return f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}"


def _is_host(raw: str, *, lookup: bool = False) -> bool:
    """``lookup``: a name to resolve, not one to listen on (underscores allowed)."""
    bare = bare_host(raw)
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        # a name: RFC 1123 labels, and a last one not all digits (300.1.1.1 is no address)
        return (
            bare == raw
            and (_LOOKUP_NAME if lookup else _HOST_NAME).fullmatch(raw) is not None
            and not raw.rstrip(".").rpartition(".")[2].isdigit()
        )
    return bare == raw or address.version == 6  # brackets go around IPv6 only


def host(env: Mapping[str, str], name: str, default: str) -> str:
    """An address to listen on: an IP address (IPv6 with or without brackets) or a host name,
    as written; ``bare_host`` and ``host_port`` give each server the form it takes. Checked
    here, since each server refuses a bad one its own way, and one only once the other runs."""
    raw = text(env, name)
    if raw is None:
        return default
    if not _is_host(raw):
        raise SettingsError(
            f"{name} must be an IP address (IPv6 with or without brackets: :: or [::] is every "
            f"interface) or a host name, without a port, got {env[name]!r}"
        )
    return raw


def text(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


_DIGITS = re.compile(r"[0-9]+")
# what float() takes, in ASCII: it also takes '1_0', 'infinity' and the digits of every script
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def whole_number(raw: str) -> int | None:
    """``raw`` as a whole number when it is ASCII digits alone, else None. ``int()`` also takes
    ``1_000``, ``+5`` and the digits of every script (Arabic-Indic ones, which no resolver
    takes in a port), and ``str.isdigit`` takes a superscript 2, which ``int()`` refuses."""
    if _DIGITS.fullmatch(raw) is None:
        return None
    try:
        return int(raw)
    except ValueError:  # past the digits int() converts
        return None


def decimal(raw: str) -> float | None:
    """``raw`` as a number when it is one written in ASCII (``2``, ``0.5``, ``1e3``), else None."""
    return float(raw) if _DECIMAL.fullmatch(raw) is not None else None


def positive_int(
    env: Mapping[str, str], name: str, default: int, *, most: int | None = None, why: str = ""
) -> int:
    got = optional_positive_int(env, name, most=most, why=why)
    return default if got is None else got


def int_at_least(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    """A whole number of at least ``minimum``: one below is refused rather than raised to it,
    so what runs is what the variable says."""
    got = _at_least(env, name, minimum, f"a whole number of at least {minimum}")
    return default if got is None else got


def optional_positive_int(
    env: Mapping[str, str], name: str, *, most: int | None = None, why: str = ""
) -> int | None:
    """A positive integer, None when unset; above ``most`` it is refused, the line saying
    ``why`` (`` (1 GiB)``, ``: ...``) after the bound."""
    got = _at_least(env, name, 1, "a positive integer")
    if got is not None and most is not None and got > most:
        raise SettingsError(f"{name} must be at most {most}{why}, got {env[name]!r}")
    return got


def _at_least(env: Mapping[str, str], name: str, minimum: int, what: str) -> int | None:
    raw = text(env, name)
    if raw is None:
        return None
    value = whole_number(raw)
    if value is None or value < minimum:
        raise SettingsError(f"{name} must be {what}, got {env[name]!r}")
    return value


def port(env: Mapping[str, str], name: str, default: int, *, zero: str | None) -> int:
    """A port number; 0 is taken only when ``zero`` says what it means (``any free port``,
    ``off``), and refused where the port is one to reach something at."""
    raw = text(env, name)
    if raw is None:
        return default
    value = whole_number(raw)
    lowest = 0 if zero is not None else 1
    if value is None or not lowest <= value <= 65535:
        first = f"0 ({zero})" if zero is not None else "1"
        raise SettingsError(
            f"{name} must be a port number from {first} to 65535, got {env[name]!r}"
        )
    return value


def seconds(env: Mapping[str, str], name: str, default: float, *, least: float = 0.0) -> float:
    """A number of seconds, at least ``least``: one below is refused rather than raised to it,
    so what runs is what the variable says."""
    raw = text(env, name)
    if raw is None:
        return default
    value = decimal(raw)
    if value is None or not (value >= least and math.isfinite(value)):
        what = "0 or more" if least == 0 else f"at least {least:g}"
        raise SettingsError(f"{name} must be a number of seconds ({what}), got {env[name]!r}")
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
    """``host:port`` entries separated by commas or spaces, each host checked as ``host``
    checks one, and an IPv6 address in brackets (``[fd00::2]:50051``)."""
    raw = text(env, name)
    if raw is None:
        return ()
    out = []
    for item in raw.replace(",", " ").split():
        host, sep, port_text = item.rpartition(":")
        number = whole_number(port_text)
        if not sep or not host or number is None or not 0 < number < 65536:
            raise SettingsError(f"{name} must list host:port addresses, got {item!r}")
        if not _is_host(host, lookup=True) or (bare_host(host) == host and ":" in host):
            # IPv6 without brackets too: its last group could be the port
            raise SettingsError(
                f"{name} must list host:port addresses, each host an IP address (IPv6 in "
                f"brackets, as in [fd00::2]:50051) or a host name, got {item!r}"
            )
        out.append(item)
    return tuple(out)


def host_name(env: Mapping[str, str], name: str) -> str | None:
    """A name to resolve (or an IP address, which resolves to itself), without brackets or a
    port: what ``getaddrinfo`` takes. None when unset."""
    raw = text(env, name)
    if raw is None:
        return None
    if bare_host(raw) != raw or not _is_host(raw, lookup=True):
        raise SettingsError(
            f"{name} must be a DNS name (letters, digits, '-' and '_' in labels joined by '.', "
            f"such as workflow-engines.default.svc.cluster.local), without a port, "
            f"got {env[name]!r}"
        )
    return raw
