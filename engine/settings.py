"""The engine service's settings: one frozen dataclass, read from the environment once.

``Settings.from_env`` is the only place the engine reads environment variables (DESIGN section
6); the entry point builds it and passes it down. A bad value raises ``SettingsError`` with one
line that names the variable, which the entry point prints before exiting 2.

Both services' start-ups share the rest: ``ENGINE_TOKEN``, the TLS files they serve with, the
line a refused setting is told in, the stop signals each ``__main__`` holds back until its
service takes them up, and why an address from the settings cannot be listened on.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from engine.core.envparse import (
    LogFormat,
    SettingsError,
    bare_host,
    boolean,
    log_format,
    log_level,
    optional_positive_int,
    port,
    positive_int,
    seconds,
    text,
)
from engine.core.envparse import host as read_host

__all__ = [
    "MAX_CAPACITY",
    "MAX_LUA_WORKERS",
    "STOP_SIGNALS",
    "LogFormat",
    "Settings",
    "SettingsError",
    "bearer_token",
    "capacity",
    "engine_token",
    "in_process",
    "listen_problem",
    "refusal_line",
    "server_tls_files",
    "take_held_stop_signal",
]

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
"""What stops either service. Each ``__main__`` holds them back (blocks them) from its first
line, and the service takes them up once its handlers are in place."""


RUN_OUTPUT_BYTES_MAX: Final = 56 * 1024 * 1024
"""The most ``RUN_OUTPUT_BYTES`` may be: a resume message (``wire.MAX_MESSAGE_BYTES``, 64 MiB)
carries the outputs with the run's spec, inputs and errors, for which 8 MiB are left."""


def run_output_bytes(env: Mapping[str, str]) -> int:
    """``RUN_OUTPUT_BYTES``: what a run's node outputs may add up to (48 MiB by default)."""
    got = positive_int(env, "RUN_OUTPUT_BYTES", 48 * 1024 * 1024)
    if got > RUN_OUTPUT_BYTES_MAX:
        raise SettingsError(
            f"RUN_OUTPUT_BYTES must be at most {RUN_OUTPUT_BYTES_MAX} (56 MiB): a run resumed "
            f"on another engine carries its outputs in one message of at most 64 MiB, got {got}"
        )
    return got


MAX_CAPACITY: Final = 1_000_000
"""The most ``CAPACITY`` (and the orchestrator's ``ENGINE_CAPACITY``) may be, as the
``workflow-engine/capacity`` pod annotation: ``GetInfo`` and ``ListEngines`` carry capacities
as int32, and a larger one failed every call that reported it."""

MAX_LUA_WORKERS: Final = 256
"""The most ``LUA_WORKERS`` (and ``python -m engine run --workers``) may be: each is a thread
with a Lua runtime of its own, and 100,000 of them took minutes and gigabytes to start, deaf
to SIGTERM meanwhile."""


def capacity(env: Mapping[str, str], default: int) -> int:
    """``CAPACITY``: executions an engine runs at once."""
    return positive_int(env, "CAPACITY", default, most=MAX_CAPACITY)


def _lua_workers(env: Mapping[str, str]) -> int | None:
    return optional_positive_int(env, "LUA_WORKERS", most=MAX_LUA_WORKERS)


def _foreach_output_bytes(env: Mapping[str, str]) -> int:
    return positive_int(env, "FOREACH_OUTPUT_BYTES", 32 * 1024 * 1024)


def bearer_token(env: Mapping[str, str], name: str) -> str | None:
    """A bearer token from variable ``name``, surrounding whitespace stripped; None when unset
    or blank. It travels as gRPC metadata, which holds printable ASCII only: a token with any
    other character is refused here rather than failing every call."""
    token = text(env, name)
    if token is None:
        return None
    for index, char in enumerate(token, 1):
        if not " " <= char <= "~":
            # the token is a secret: shown is the one character that cannot go, not the token
            raise SettingsError(
                f"{name}: character {index} ({char!r}) cannot go in gRPC metadata, "
                "which holds printable ASCII only (secrets.token_urlsafe makes a fitting one)"
            )
    return token


def engine_token(env: Mapping[str, str]) -> str | None:
    """``ENGINE_TOKEN``, the bearer token on the link between the orchestrator and its engines.
    Both services read it with this, so they agree on what the token is."""
    return bearer_token(env, "ENGINE_TOKEN")


def server_tls_files(env: Mapping[str, str]) -> tuple[str | None, str | None, str | None]:
    """``TLS_CERT_FILE``, ``TLS_KEY_FILE`` and ``TLS_CA_FILE``, the files a service serves TLS
    with (``engine.tls``, which reads them at start): the first two together or neither, and
    the third only with them. Both services read them with this, so they refuse alike."""
    cert, key = text(env, "TLS_CERT_FILE"), text(env, "TLS_KEY_FILE")
    if (cert is None) != (key is None):
        raise SettingsError("TLS_CERT_FILE and TLS_KEY_FILE must be set together")
    ca = text(env, "TLS_CA_FILE")
    if ca is not None and cert is None:
        # Asked for client certificates without a server certificate: serving plain
        # would silently drop the mutual TLS the operator asked for.
        raise SettingsError(
            "TLS_CA_FILE (client certificates) needs TLS_CERT_FILE and TLS_KEY_FILE too"
        )
    return cert, key, ca


def refusal_line(error: SettingsError, env: Mapping[str, str], logger: str) -> str:
    """The one line a setting refused at start-up is told in, before logging is set up: a JSON
    log record when ``LOG_FORMAT`` is json (a container's log is parsed as such), else
    ``error: ...``."""
    if env.get("LOG_FORMAT", "").strip().lower() != "json":
        return f"error: {error}"
    from engine.logformat import JsonLines  # the entry point's concern, not this module's

    record = logging.LogRecord(logger, logging.ERROR, __file__, 0, "%s", (error,), None)
    return JsonLines().format(record)


def take_held_stop_signal() -> signal.Signals | None:
    """The stop signal that came while ``__main__`` held them back, taken, or None; and from
    now on they reach the event loop's handlers, which must be in place.

    A container's PID 1 ignores a signal it has no handler for: a SIGTERM in the second or
    two of imports before asyncio's handlers are in place was lost, and the pod served on
    until the kubelet's SIGKILL. Held back, it stays pending in the kernel, and is taken here
    (rather than let through to the handler, where it would count as a second signal)."""
    held = signal.sigpending() & set(STOP_SIGNALS)
    for sig in held:
        signal.sigwait({sig})  # pending: returns at once, and the signal is taken
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if signal.SIGTERM in held:
        return signal.SIGTERM
    return next(iter(held), None)


_BIND_ERRORS: Final = {
    errno.EADDRINUSE: "the port is in use (another process listens on it)",
    errno.EADDRNOTAVAIL: "{host} is not an address of this machine",
    errno.EACCES: "permission denied (a port below 1024 needs privileges)",
}


def listen_problem(bind_host: str, bind_port: int, error: OSError | None = None) -> str:
    """Why ``bind_host:bind_port`` cannot be listened on, as ``error`` (a failed bind) says, or
    without one as a bind of our own finds: gRPC says only that it failed (its reason goes to
    a plain-text line on stderr, outside the log and its JSON, which is turned off)."""
    if error is None:
        error = _bind_error(bare_host(bind_host), bind_port)
    if isinstance(error, socket.gaierror):
        return f"{bind_host} does not resolve to an address ({error.strerror})"
    if error is None:
        return "the address is refused (in use, or not this machine's)"
    known = _BIND_ERRORS.get(error.errno or 0)
    return known.format(host=bind_host) if known else (error.strerror or str(error)).lower()


def _bind_error(bind_host: str, bind_port: int) -> OSError | None:
    try:
        found = socket.getaddrinfo(
            bind_host, bind_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as error:
        return error
    for family, kind, proto, _, address in found:
        try:
            with socket.socket(family, kind, proto) as probe:
                # as the servers bind: a port whose last connections linger is not in use
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
        except OSError as error:
            return error
    return None


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
    lua_inline: bool = True
    """Small scripts first try the event loop's thread (``LuaPool.run_inline``); False: every
    script runs on a worker."""
    foreach_output_bytes: int = 32 * 1024 * 1024
    """Bytes a foreach node's item outputs may add up to (``engine.running``)."""
    run_output_bytes: int = 48 * 1024 * 1024
    """Bytes a run's node outputs may add up to (``engine.running``): at most what a resume
    message carries besides the run's spec and inputs (``RUN_OUTPUT_BYTES_MAX``)."""
    engine_token: str | None = field(default=None, repr=False)
    """ENGINE_TOKEN: every ``dagengine.v1.Engine`` call must carry it as a bearer token
    (``engine.authenticating``); None: calls are taken from anyone who reaches the port."""
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    """TLS_CERT_FILE and TLS_KEY_FILE: the engine serves gRPC over TLS only, with this
    certificate (chain) and key, read again when they change (``engine.tls``); None: plain."""
    tls_ca_file: str | None = None
    """TLS_CA_FILE, with the two above: callers must show a certificate this CA signed."""
    log_format: LogFormat = "plain"
    log_level: str = "INFO"

    @property
    def security(self) -> str:
        """What a caller of the engine gets: plain, TLS or mutual TLS."""
        if self.tls_cert_file is None:
            return "plain"
        return "mutual TLS" if self.tls_ca_file is not None else "TLS"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        cert, key, ca = server_tls_files(env)
        serve_port = port(env, "PORT", 50051, zero="any free port")
        metrics_port = port(env, "METRICS_PORT", 0, zero="off")
        if metrics_port and metrics_port == serve_port:
            # refused here, as dagctl up refuses it: else the second bind failed as though
            # another process held the port
            raise SettingsError(
                f"METRICS_PORT and PORT are both {serve_port}: the engine needs two ports, "
                "set one of them to another"
            )
        return cls(
            engine_id=text(env, "ENGINE_ID") or socket.gethostname(),
            host=read_host(env, "HOST", "[::]"),
            port=serve_port,
            capacity=capacity(env, 10),
            metrics_port=metrics_port or None,
            drain_grace=seconds(env, "DRAIN_GRACE", 30.0),
            lua_workers=_lua_workers(env),
            lua_inline=boolean(env, "LUA_INLINE", True),
            foreach_output_bytes=_foreach_output_bytes(env),
            run_output_bytes=run_output_bytes(env),
            engine_token=engine_token(env),
            tls_cert_file=cert,
            tls_key_file=key,
            tls_ca_file=ca,
            log_format=log_format(env),
            log_level=log_level(env),
        )


def in_process(
    env: Mapping[str, str], *, capacity_default: int, drain_grace: float, lua_workers: int
) -> Settings:
    """An engine served inside another process (the orchestrator's ``TRANSPORT_TYPE=local``),
    on a free loopback port: the variables that shape how it runs (``CAPACITY``,
    ``DRAIN_GRACE``, ``LUA_WORKERS``, ``LUA_INLINE``, ``FOREACH_OUTPUT_BYTES``,
    ``RUN_OUTPUT_BYTES``) read as the engine reads them, with that process's defaults; where and
    how it serves (``ENGINE_ID``, ``HOST``, ``PORT``, ``METRICS_PORT``, ``TLS_*``) are the
    host process's own variables, not the engine's."""
    return Settings(
        engine_id="local",
        host="127.0.0.1",
        port=0,
        capacity=capacity(env, capacity_default),
        drain_grace=seconds(env, "DRAIN_GRACE", drain_grace),
        lua_workers=_lua_workers(env) or lua_workers,
        lua_inline=boolean(env, "LUA_INLINE", True),
        foreach_output_bytes=_foreach_output_bytes(env),
        run_output_bytes=run_output_bytes(env),
        engine_token=engine_token(env),
        log_format=log_format(env),
        log_level=log_level(env),
    )
