"""The orchestrator's settings: one frozen dataclass, read from the environment once (DESIGN 6).

Names are kept from the system this replaces. ``Settings.from_env`` is the only place the
orchestrator reads environment variables; a bad value raises ``SettingsError`` naming the
variable, which the entry point prints as one line before exiting 2.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal, cast

from engine.core import envparse as ep
from engine.core.envparse import LogFormat, SettingsError
from engine.settings import (
    MAX_CAPACITY,
    MAX_LUA_WORKERS,
    bearer_token,
    engine_token,
    in_process,
    server_tls_files,
)
from engine.settings import Settings as EngineSettings
from engine.tls import ENGINE_LINK_NAMES, ClientTls, server_name_problem

__all__ = ["Settings", "SettingsError"]

DiscoveryMode = Literal["kubernetes", "static", "dns"]
Transport = Literal["grpc", "local"]
Balancer = Literal["consistent-hash", "round-robin", "least-loaded"]
KubernetesSource = Literal["endpointslices", "pods"]

MIN_CONNECTIONS: Final = 16
"""The fewest HTTP connections the server takes at once: lowering MAX_CONNECTIONS to fit the
file descriptors stops here (``connections.connection_cap``), so a value below it is refused
at start rather than raised to it, and what runs is what the variable says."""

MAX_BODY_BYTES: Final = 1024 * 1024 * 1024
"""The most ``MAX_BODY_BYTES`` may be (1 GiB): gRPC takes the request size (this plus 64 KiB)
as a C int, and refused 2 GiB less 64 KiB or more with a traceback at start."""

MAX_LOCAL_ENGINES: Final = 64
"""The most ``LOCAL_ENGINES`` may be, as ``dagctl up --engines``."""

MIN_HEALTH_CHECK_INTERVAL: Final = 0.1
MIN_DISCOVERY_INTERVAL: Final = 1.0
"""The shortest ``ENGINE_HEALTH_CHECK_INTERVAL`` and ``ENGINE_DISCOVERY_INTERVAL``: the fleet
and discovery wait at least this between looks, so a shorter value is refused rather than
raised to it, and what runs is what the variable says."""

MAX_DURATION_DAYS: Final = 36500
"""The longest duration (``EXECUTION_RETENTION``): 100 years. The retention sweep takes it
from now, and a cutoff before year 1 failed every sweep with a traceback."""

DEFAULT_STATE_DB: Final = "/var/lib/dagengine/state.db"
SQLITE_HEADER: Final = b"SQLite format 3\x00"
"""The first 16 bytes of every SQLite database file (an empty file is one too, not yet
written)."""

_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

# Kubernetes' own rules (apimachinery validation), checked at start: the API server refuses a
# name or a selector that breaks them, and discovery retried that refusal for ever while
# /readyz stayed 200
_DNS_1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_1123_SUBDOMAIN = re.compile(
    r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
)
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_SELECTOR_TOKEN = re.compile(r"==|!=|[=!(),<>]|[^\s=!(),<>]+")
_PUNCTUATION = frozenset(("==", "!=", "=", "!", "(", ")", ",", "<", ">"))
_SELECTOR_FORMS = "key=value, key!=value, key in (a,b), key notin (a), key or !key, comma-separated"


def _dns_name(env: Mapping[str, str], name: str, default: str, rule: re.Pattern[str]) -> str:
    value = ep.text(env, name) or default
    if rule.fullmatch(value) is None:
        ends = (
            "starting with a letter and ending with a letter or digit"
            if rule is _DNS_1035_LABEL
            else "starting and ending with a letter or digit"
        )
        raise SettingsError(
            f"{name} must be a Kubernetes name of at most 63 lowercase letters, digits and '-', "
            f"{ends}, got {env[name]!r}"
        )
    return value


def _label_key_problem(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if slash and _DNS_1123_SUBDOMAIN.fullmatch(prefix) is None:
        return f"the prefix of label key {key!r} is not a DNS subdomain"
    if _LABEL_NAME.fullmatch(name) is None:
        return (
            f"label key {key!r} is not a label name (at most 63 letters, digits, '-', '_' and"
            " '.', starting and ending with a letter or digit)"
        )
    return None


def _label_value_problem(value: str) -> str | None:
    if value and _LABEL_NAME.fullmatch(value) is None:
        return (
            f"{value!r} is not a label value (at most 63 letters, digits, '-', '_' and '.',"
            " starting and ending with a letter or digit)"
        )
    return None


def _selector_problem(selector: str) -> str | None:
    """What makes ``selector`` a label selector the API server refuses, or None: its grammar
    and its names, as apimachinery's ``labels.Parse`` checks them (``kubectl -l`` takes the
    same)."""
    tokens = [*_SELECTOR_TOKEN.findall(selector), ""]  # "": the end
    at = 0
    while True:
        negated = tokens[at] == "!"
        at += negated
        key = tokens[at]
        if not _word(key):
            return f"expected a label key, found {_shown(key)}"
        problem = _label_key_problem(key)
        at += 1
        operator = tokens[at]
        if problem is not None:
            return problem
        if negated or operator in (",", ""):
            pass  # the key is there, or is not
        elif operator in ("=", "==", "!=", "in", "notin"):
            at += 1
            if operator in ("in", "notin"):
                if tokens[at] != "(":
                    return f"expected '(' after {key} {operator}, found {_shown(tokens[at])}"
                at += 1
            while True:  # one value after =, a list in (...); a value may be empty
                value = tokens[at] if _word(tokens[at]) else ""
                at += bool(value)
                problem = _label_value_problem(value)
                if problem is not None:
                    return problem
                if operator not in ("in", "notin"):
                    break
                if tokens[at] == ")":
                    at += 1
                    break
                if tokens[at] != ",":
                    return (
                        f"expected ',' or ')' in the values of {key} {operator} (...), found "
                        f"{_shown(tokens[at])}"
                    )
                at += 1
        elif operator in ("<", ">"):
            at += 1
            if not tokens[at].isdigit():
                return f"{key} {operator} takes a whole number, found {_shown(tokens[at])}"
            at += 1
        else:
            return f"expected an operator or ',' after {key}, found {_shown(operator)}"
        if tokens[at] == "":
            return None
        if tokens[at] != ",":
            return f"expected ',' between requirements, found {_shown(tokens[at])}"
        at += 1


def _word(token: str) -> bool:
    return token not in _PUNCTUATION and token != ""


def _shown(token: str) -> str:
    return repr(token) if token else "the end"


def _label_selector(env: Mapping[str, str], name: str, default: str) -> str:
    value = ep.text(env, name) or default
    problem = _selector_problem(value)
    if problem is not None:
        raise SettingsError(
            f"{name} must be a label selector ({_SELECTOR_FORMS}), got {env[name]!r}: {problem}"
        )
    return value


def _duration(env: Mapping[str, str], name: str) -> float:
    """Seconds from ``30d``, ``12h``, ``90m``, ``45s``; ``0`` or unset is 0.

    A bare number other than 0 is refused rather than read as seconds: ``30`` meant as days
    would otherwise delete every run half a minute after it ends."""
    raw = (ep.text(env, name) or "0").lower()
    if raw == "0":
        return 0.0
    number, unit = ep.decimal(raw[:-1]), _DURATION_UNITS.get(raw[-1:])
    value = number * unit if number is not None and unit is not None else -1.0
    if not (value >= 0 and math.isfinite(value)):
        raise SettingsError(
            f"{name} must be a duration such as 30d, 12h, 90m or 45s, or 0 for none, "
            f"got {env[name]!r}"
        )
    if value > MAX_DURATION_DAYS * _DURATION_UNITS["d"]:
        raise SettingsError(
            f"{name} must be at most {MAX_DURATION_DAYS}d (100 years), got {env[name]!r}"
        )
    return value


def state_db(env: Mapping[str, str], cwd: Path | None = None, *, parent: bool = True) -> str:
    """``STATE_DB``, checked before anything is opened: a SQLite file there or one to make, in a
    directory there or one to make. What else it could name failed only once the store opened
    it, with a ``.lock`` file made beside it (``/dev/null.lock``), in words not naming it.
    ``cwd``: where a relative path is taken from, when not this process's working directory;
    ``parent=False``: the file alone (``dagctl up``, whose orchestrator runs where ``up`` was
    started, makes the directory first for the logs it keeps beside the file, and says so when
    it cannot)."""
    path = ep.text(env, "STATE_DB") or DEFAULT_STATE_DB
    where = str(cwd / path) if cwd is not None and path != ":memory:" else path
    problem = state_db_problem(where, parent=parent)
    if problem is not None:
        raise SettingsError(f"STATE_DB must be a SQLite database file, got {path!r}: {problem}")
    return path


def state_db_problem(path: str, *, parent: bool = True) -> str | None:
    """Why the store cannot keep its state in ``path``, or None (the file may not exist yet);
    ``parent``: also when the directory it would be made in cannot be."""
    if path == ":memory:":
        return (
            "an in-memory database is not shared by the store's connections, and would lose "
            "every run when the orchestrator stops"
        )
    try:
        found = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return _parent_problem(path) if parent else None
    except OSError as exc:
        return f"cannot look at it ({exc.strerror})"
    if stat.S_ISDIR(found.st_mode):
        return "it is a directory"
    if not stat.S_ISREG(found.st_mode):
        return f"it is {_file_kind(found.st_mode)}, not a file"
    if found.st_size == 0:
        return None  # SQLite writes its header with the first write
    try:
        with open(path, "rb") as file:
            head = file.read(len(SQLITE_HEADER))
    except OSError as exc:
        return f"cannot read it ({exc.strerror})"
    if head != SQLITE_HEADER:
        return "it is another kind of file (it lacks SQLite's header), left as it was"
    return None


def _parent_problem(path: str) -> str | None:
    """The store makes the directories a new ``path`` lacks: the nearest that exists must be
    a directory."""
    for parent in Path(path).absolute().parents:
        try:
            found = os.stat(parent)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            return f"cannot look at {parent} ({exc.strerror})"
        return None if stat.S_ISDIR(found.st_mode) else f"{parent} is not a directory"
    return None


def _file_kind(mode: int) -> str:
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _engine_tls(env: Mapping[str, str]) -> ClientTls | None:
    """ENGINE_TLS_CA_FILE and the variables that go with it, their files read and checked."""
    names = ENGINE_LINK_NAMES
    ca = ep.text(env, names.ca)
    cert, key = ep.text(env, names.cert), ep.text(env, names.key)
    server_name = ep.text(env, "ENGINE_TLS_SERVER_NAME")
    if (cert is None) != (key is None):
        raise SettingsError(f"{names.cert} and {names.key} must be set together")
    if ca is None:
        # TLS without a CA to trust would be either plain or trusting anyone: neither is what
        # the operator who set one of these asked for
        for name, value in ((names.cert, cert), ("ENGINE_TLS_SERVER_NAME", server_name)):
            if value is not None:
                raise SettingsError(
                    f"{name} needs {names.ca}, the CA that signed the engines' certificates"
                )
        return None
    if server_name is not None:
        problem = server_name_problem(server_name)
        if problem is not None:
            raise SettingsError(f"ENGINE_TLS_SERVER_NAME {server_name!r} {problem}")
    return ClientTls.from_files(ca, cert, key, server_name, names=names)


def _no_engine_tls(env: Mapping[str, str]) -> None:
    """TRANSPORT_TYPE=local runs its engines in this process, serving plain on loopback:
    TLS to them could only fail."""
    for name in (*ENGINE_LINK_NAMES, "ENGINE_TLS_SERVER_NAME"):
        if ep.text(env, name) is not None:
            raise SettingsError(
                f"{name} is for engines reached over the network: the local engines of"
                " TRANSPORT_TYPE=local serve in plain text inside this process"
            )


def _no_discovery(env: Mapping[str, str]) -> None:
    """TRANSPORT_TYPE=local reaches the engines it runs, and none other: where to find
    engines, ignored before, is refused rather than let the operator think it is used."""
    for name in ("DISCOVERY_MODE", "ENGINE_ADDRESSES", "ENGINE_DNS_NAME"):
        if ep.text(env, name) is not None:
            raise SettingsError(
                f"{name} is for engines found over the network: TRANSPORT_TYPE=local runs"
                " its own (LOCAL_ENGINES) inside this process; unset one or the other"
            )


@dataclass(frozen=True, slots=True)
class Settings:
    # where we serve
    host: str = "[::]"
    """Address HTTP and gRPC listen on; ``[::]`` (or ``::``, ``0.0.0.0``) is every interface,
    IPv4 and IPv6 both, as the engine's."""
    http_port: int = 8080
    grpc_port: int = 50051
    api_token: str | None = None
    max_body_bytes: int = 1024 * 1024
    max_connections: int = 1024
    """HTTP connections served at once (within the process's file descriptors): past it, a
    new connection gets 503 and is closed."""
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_ca_file: str | None = None
    # state
    state_db: str = DEFAULT_STATE_DB
    # engines
    transport: Transport = "grpc"
    discovery_mode: DiscoveryMode = "kubernetes"
    engine_addresses: tuple[str, ...] = ()
    engine_dns_name: str | None = None
    engine_port: int = 50051
    engine_capacity: int = 10
    """Assumed capacity of an engine until its GetInfo answers."""
    local_engines: int = 2
    """With TRANSPORT_TYPE=local: engines run in this process."""
    local_engine: EngineSettings | None = None
    """With TRANSPORT_TYPE=local: the settings the local engines share (the engine's own
    variables, ``engine.settings.in_process``), each with an id and port of its own; None
    (``LocalCluster``): the engine's defaults, ENGINE_CAPACITY runs at once, one Lua worker
    and 5 s to drain each."""
    k8s_namespace: str = "default"
    k8s_service_name: str = "workflow-engines"
    k8s_label_selector: str = "app=workflow-engine"
    in_cluster_config: bool = True
    kubeconfig: str | None = None
    """With IN_CLUSTER_CONFIG=false: the kubeconfig file (KUBECONFIG); None: ~/.kube/config."""
    k8s_discovery_source: KubernetesSource = "endpointslices"
    """What DISCOVERY_MODE=kubernetes watches: the Service's EndpointSlices, or the pods."""
    discovery_interval: float = 30.0
    health_check_interval: float = 10.0
    load_balancer: Balancer = "consistent-hash"
    engine_token: str | None = field(default=None, repr=False)
    """ENGINE_TOKEN: sent as a bearer token on every call to an engine, which refuses calls
    without it when it has one too (``engine.authenticating``); None: sent nothing."""
    engine_tls: ClientTls | None = None
    """ENGINE_TLS_*: the orchestrator connects to its engines over TLS, trusting this CA,
    checking this name, showing this client certificate; read and checked at start. None:
    plain."""
    # work
    queue_limit: int = 10000
    """Queued executions past which new ones are refused (429 / RESOURCE_EXHAUSTED)."""
    queue_limit_per_workflow: int | None = None
    """QUEUE_LIMIT_PER_WORKFLOW: queued executions of one workflow past which its new ones are
    refused, so that one workflow's flood leaves room for the others; None: QUEUE_LIMIT alone."""
    max_subworkflow_depth: int = 16
    execution_retention: float = 0.0
    """Seconds a finished root execution (with its sub-workflow runs) is kept; 0: for good."""
    # triggers
    trigger_catchup_limit: int = 100
    """With ``catchup: all``: missed cron slots fired at most, per trigger, after downtime."""
    environ: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), repr=False, compare=False
    )
    """The environment as it was at start: HTTP triggers read the secrets their specs name
    (``bearer_env``, ``hmac_env``) here, since specs arrive after start-up."""
    # logs
    log_format: LogFormat = "plain"
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        transport = cast(Transport, ep.choice(env, "TRANSPORT_TYPE", ("grpc", "local"), "grpc"))
        if transport == "local":
            _no_engine_tls(env)
            _no_discovery(env)
        discovery = cast(
            DiscoveryMode,
            ep.choice(env, "DISCOVERY_MODE", ("kubernetes", "static", "dns"), "kubernetes"),
        )
        addresses = ep.address_list(env, "ENGINE_ADDRESSES")
        if transport == "grpc" and discovery == "static" and not addresses:
            raise SettingsError(
                "ENGINE_ADDRESSES must list host:port engines when DISCOVERY_MODE=static"
            )
        namespace = _dns_name(env, "K8S_NAMESPACE", "default", _DNS_1123_LABEL)
        service = _dns_name(env, "K8S_SERVICE_NAME", "workflow-engines", _DNS_1035_LABEL)
        cert, key, ca = server_tls_files(env)
        http_port = ep.port(env, "HTTP_PORT", 8080, zero="any free port")
        grpc_port = ep.port(env, "GRPC_PORT", 50051, zero="any free port")
        if http_port and http_port == grpc_port:
            # refused here, as dagctl up refuses it: else the second server failed to listen
            # as though another process held the port
            raise SettingsError(
                f"HTTP_PORT and GRPC_PORT are both {http_port}: the orchestrator needs two "
                "ports, set one of them to another"
            )
        engine_capacity = ep.positive_int(env, "ENGINE_CAPACITY", 10, most=MAX_CAPACITY)
        local_engines = ep.positive_int(env, "LOCAL_ENGINES", 2, most=MAX_LOCAL_ENGINES)
        local_engine = None
        if transport == "local":
            # the defaults local engines had: one Lua worker each (they share the machine
            # with the orchestrator and each other), and a short drain
            local_engine = in_process(
                env, capacity_default=engine_capacity, drain_grace=5.0, lua_workers=1
            )
            workers = local_engine.lua_workers or 1
            if local_engines * workers > MAX_LUA_WORKERS:
                # one process holds them all: LUA_WORKERS' own bound is for one engine's
                raise SettingsError(
                    f"LOCAL_ENGINES ({local_engines}) times LUA_WORKERS "
                    f"({workers}) must be at most {MAX_LUA_WORKERS}: the"
                    " local engines' Lua workers all run in this process"
                )
        return cls(
            host=ep.host(env, "HOST", "[::]"),
            http_port=http_port,
            grpc_port=grpc_port,
            api_token=bearer_token(env, "API_TOKEN"),
            max_body_bytes=ep.positive_int(
                env, "MAX_BODY_BYTES", 1024 * 1024, most=MAX_BODY_BYTES, why=" (1 GiB)"
            ),
            max_connections=ep.int_at_least(env, "MAX_CONNECTIONS", 1024, MIN_CONNECTIONS),
            tls_cert_file=cert,
            tls_key_file=key,
            tls_ca_file=ca,
            state_db=state_db(env),
            transport=transport,
            discovery_mode=discovery,
            engine_addresses=addresses,
            engine_dns_name=ep.host_name(env, "ENGINE_DNS_NAME")
            or f"{service}.{namespace}.svc.cluster.local",
            # where engines are reached (dns, and pods without a port annotation): 0 is none
            engine_port=ep.port(env, "ENGINE_PORT", 50051, zero=None),
            engine_capacity=engine_capacity,
            local_engines=local_engines,
            local_engine=local_engine,
            k8s_namespace=namespace,
            k8s_service_name=service,
            k8s_label_selector=_label_selector(env, "K8S_LABEL_SELECTOR", "app=workflow-engine"),
            in_cluster_config=ep.boolean(env, "IN_CLUSTER_CONFIG", True),
            # a kubeconfig list (a:b) is kubectl's merge feature; the first file is the one read
            kubeconfig=(ep.text(env, "KUBECONFIG") or "").split(":")[0] or None,
            k8s_discovery_source=cast(
                KubernetesSource,
                ep.choice(
                    env, "K8S_DISCOVERY_SOURCE", ("endpointslices", "pods"), "endpointslices"
                ),
            ),
            discovery_interval=ep.seconds(
                env, "ENGINE_DISCOVERY_INTERVAL", 30.0, least=MIN_DISCOVERY_INTERVAL
            ),
            health_check_interval=ep.seconds(
                env, "ENGINE_HEALTH_CHECK_INTERVAL", 10.0, least=MIN_HEALTH_CHECK_INTERVAL
            ),
            load_balancer=cast(
                Balancer,
                ep.choice(
                    env,
                    "LOAD_BALANCER_TYPE",
                    ("consistent-hash", "round-robin", "least-loaded"),
                    "consistent-hash",
                ),
            ),
            engine_token=engine_token(env),
            engine_tls=_engine_tls(env),
            queue_limit=ep.positive_int(env, "QUEUE_LIMIT", 10000),
            queue_limit_per_workflow=ep.optional_positive_int(env, "QUEUE_LIMIT_PER_WORKFLOW"),
            max_subworkflow_depth=ep.positive_int(env, "MAX_SUBWORKFLOW_DEPTH", 16),
            execution_retention=_duration(env, "EXECUTION_RETENTION"),
            trigger_catchup_limit=ep.positive_int(env, "TRIGGER_CATCHUP_LIMIT", 100),
            environ=MappingProxyType(dict(env)),
            log_format=ep.log_format(env),
            log_level=ep.log_level(env),
        )
