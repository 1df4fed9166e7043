"""``dagctl up``: an orchestrator and N engines as local processes, supervised until stopped.

``plan`` decides every process's command line and environment from the caller's environment
(pure but for the free ports it is handed); ``Supervisor`` starts them with their output in
``.dagengine/logs/<name>.log``, starts an engine that dies again (engines may die at any
moment: the orchestrator moves their runs on, and the local system stays up, as a cluster
would), ends everything when the orchestrator dies or an engine cannot get going, and stops
them all: SIGTERM, a grace period for runs in flight (engines drain for up to 30 s), then
SIGKILL.

Children run in their own session so a Ctrl-C at the terminal reaches dagctl alone, and the
shutdown is ordered from here rather than raced by every process at once. Since a session of
their own also hides them from the terminal's hang-up, ``up`` stops them on SIGHUP and SIGQUIT
as on SIGINT and SIGTERM, and on Linux the kernel sends each child SIGTERM when ``up`` dies by
any means, SIGKILL included (PR_SET_PDEATHSIG): no child outlives it holding the ports and the
state database. The stop runs in a ``finally`` and every write on its way ignores a closed pipe
or a hung-up terminal, so ``dagctl up | tee up.log`` stopped by Ctrl-C (tee dies first) stops
everything too.

The engines listen on loopback ports any local user can reach, so each ``up`` gives them and the
orchestrator a fresh ENGINE_TOKEN (unless one is set), and the engines get none of the secrets
they have no use for. With TLS_CERT_FILE set, ``up`` reaches the orchestrator it started over
https, trusting that server's own certificate and nothing else.
"""

from __future__ import annotations

import ctypes
import ipaddress
import itertools
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Final, Protocol, TextIO, TypeVar

from engine.core import envparse as ep
from engine.core.envparse import SettingsError
from engine.core.values import JSON, JSONObject
from orchestrator.dagctl.calling import ApiError, Client, Unreachable
from orchestrator.dagctl.cli import BadArguments, detail_lines
from orchestrator.dagctl.cli import Settings as ClientSettings
from orchestrator.locking import Held, hold, holder_named, private_dirs, state_holder
from orchestrator.settings import state_db as state_db_setting

_T = TypeVar("_T")

STOP_GRACE = 35.0
START_TIMEOUT = 60.0
DEFAULT_HTTP_PORT = 8080
DEFAULT_GRPC_PORT = 50051
ENGINE_ONLY = ("ENGINE_ID", "HOST", "PORT", "METRICS_PORT")
"""Variables each engine gets its own value of: the caller's are not passed on to engines."""
NOT_FOR_ENGINES = ("API_TOKEN",)
NOT_FOR_ENGINES_PREFIXES = ("DAGCTL_", "TLS_")
"""Secrets of the orchestrator and of dagctl, which the engines neither need nor get: an engine
runs whatever Lua it is sent, and its environment is the place a leak would start."""
NOT_FOR_THE_ORCHESTRATOR_PREFIXES = ("ENGINE_TLS_",)
"""How an orchestrator reaches engines over TLS: ``up``'s engines serve plain gRPC on loopback,
so a CA or client certificate exported for another system would make them unreachable."""
STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
"""Each stops ``up`` and everything it started: Ctrl-C, kill, a closed terminal, Ctrl-\\."""


def new_engine_token() -> str:
    return secrets.token_urlsafe(32)


def for_engines(name: str) -> bool:
    """Whether the caller's variable ``name`` is passed on to the engines ``up`` starts."""
    return not (
        name in ENGINE_ONLY or name in NOT_FOR_ENGINES or name.startswith(NOT_FOR_ENGINES_PREFIXES)
    )


BAD_SETTINGS_EXIT: Final = 2
"""``python -m engine`` and ``python -m orchestrator`` exit 2 when a setting is bad (every start
would be refused the same), and so does ``up`` for its own settings and for theirs."""


class LaunchError(Exception):
    """A local cluster that cannot start; the message is one line, ``log`` the tail to show,
    ``exit_code`` what ``up`` exits with: 2 for a bad setting, 1 for the rest."""

    def __init__(self, message: str, log: str | None = None, exit_code: int = 1) -> None:
        super().__init__(message)
        self.log = log
        self.exit_code = exit_code


def free_port() -> int:
    """A TCP port free on loopback right now (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


LOOPBACK: Final = "127.0.0.1"
WILDCARDS: Final = frozenset({"", "*", "0.0.0.0", "::"})


def reachable_host(host: str) -> str:
    """Where ``up`` reaches a server that listens on ``host``: that address when it is a specific
    one (``::1``, ``127.0.0.2``, a name), loopback when it is every interface. No brackets."""
    bare = host.strip()
    if bare.startswith("[") and bare.endswith("]"):
        bare = bare[1:-1]
    return LOOPBACK if bare in WILDCARDS else bare


def in_url(host: str) -> str:
    """``host`` as a URL or ``host:port`` takes it: an IPv6 address in brackets."""
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """Whether something answers a TCP connect on ``host``:``port``."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return False
    family, kind, proto, _, address = found[0]
    with socket.socket(family, kind, proto) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(address) == 0


PROC_NET: Final = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
TCP_LISTEN: Final = "0A"


def listening_sockets(port: int) -> set[int]:
    """The inodes of the sockets that listen on TCP ``port``, any address (Linux' /proc)."""
    found: set[int] = set()
    for table in PROC_NET:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == TCP_LISTEN:
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    found.add(int(fields[9]))
    return found


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself listens on TCP ``port``: a socket of its own, not merely
    something that answers there (another program holding the port is not the engine up). On
    a system without /proc a connect to loopback stands in."""
    if not PROC_NET[0].exists():
        return port_in_use(port)
    sockets = listening_sockets(port)
    if not sockets:
        return False
    fds = Path(f"/proc/{pid}/fd")
    try:
        names = os.listdir(fds)
    except OSError:  # it is gone
        return False
    for name in names:
        try:
            link = os.readlink(fds / name)
        except OSError:
            continue
        if link.startswith("socket:[") and int(link[8:-1]) in sockets:
            return True
    return False


def _port(env: Mapping[str, str], name: str, default: int, pick: Callable[[], int]) -> int:
    # read as the services read it (ASCII digits alone: int() took 1_000 as 1000)
    value = _setting(lambda: ep.port(env, name, default, zero="any free port"))
    return value or pick()  # 0: any free port, chosen here so we know which


def _setting(read: Callable[[], _T]) -> _T:
    """What ``read`` reads with the services' own readers, their refusal as up's (exit 2)."""
    try:
        return read()
    except SettingsError as exc:
        raise LaunchError(str(exc), exit_code=BAD_SETTINGS_EXIT) from None


@dataclass(frozen=True, slots=True)
class Child:
    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    log_path: Path


@dataclass(frozen=True, slots=True)
class Layout:
    """What ``up`` starts, and where each part can be reached."""

    orchestrator: Child
    engines: tuple[Child, ...]
    http_port: int
    grpc_port: int
    engine_addresses: tuple[str, ...]
    engine_metrics: tuple[int | None, ...]
    state_db: str
    log_dir: Path
    tls: bool = False
    """TLS_CERT_FILE is set: the orchestrator serves https (and gRPC over TLS) only."""
    mutual_tls: bool = False
    """TLS_CA_FILE is set too: it asks every client for a certificate."""
    host: str = LOOPBACK
    """Where ``up`` reaches the orchestrator: its HOST when that is a specific address."""

    @property
    def http_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{in_url(self.host)}:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"{in_url(self.host)}:{self.grpc_port}"


DEFAULT_STATE_DB: Final = str(Path(".dagengine") / "state.db")


def log_dir_of(state_db: str, base_dir: Path) -> Path:
    """Where the logs of an ``up`` on ``state_db`` go: ``.dagengine/logs`` for the default one
    (and ``:memory:``, which ``run_up`` refuses before making anything, as the orchestrator
    refuses it), else ``<STATE_DB>.logs`` beside the database. One directory per state
    database, since another ``up`` here with a STATE_DB of its own must not rotate this one's
    logs, nor a later crash of this one show that one's lines."""
    default = base_dir / ".dagengine" / "logs"
    if state_db == ":memory:":
        return default
    path = base_dir / state_db  # an absolute STATE_DB stays as it is
    if os.path.realpath(path) == os.path.realpath(base_dir / DEFAULT_STATE_DB):
        return default
    return path.with_name(path.name + ".logs")


MAX_ENGINES: Final = 64
"""Engines one ``up`` starts at most: each is a process with its Lua threads, and the
orchestrator's ENGINE_ADDRESSES lists them all."""


def plan(
    environ: Mapping[str, str],
    *,
    engines: int,
    python: str,
    base_dir: Path,
    pick_port: Callable[[], int] = free_port,
    make_token: Callable[[], str] = new_engine_token,
) -> Layout:
    """The processes of a local cluster: DESIGN section 6 from ``environ``, the rest passed on
    (to the engines, but for the secrets they have no use for: see ``for_engines``)."""
    if not 1 <= engines <= MAX_ENGINES:
        raise LaunchError(f"--engines must be between 1 and {MAX_ENGINES}, got {engines}")
    if (environ.get("TRANSPORT_TYPE") or "").strip().lower() == "local":
        # its orchestrator would run engines of its own, and up would wait for its engines
        # to join a minute in vain
        raise LaunchError(
            "TRANSPORT_TYPE=local: dagctl up starts its own engines: unset TRANSPORT_TYPE, or "
            "run `python -m orchestrator` for in-process engines",
            exit_code=BAD_SETTINGS_EXIT,
        )
    state_db = environ.get("STATE_DB", "").strip() or DEFAULT_STATE_DB
    log_dir = log_dir_of(state_db, base_dir)
    common = {**environ}
    common.setdefault("PYTHONUNBUFFERED", "1")  # so a log's tail is current when we show it
    # ``-m engine`` and ``-m orchestrator`` are ours, not a package of the same name in the
    # directory up is run from (a project's own engine/): the current directory stays off
    # sys.path, as -P keeps it (the orchestrator's Lua checker inherits it)
    common["PYTHONSAFEPATH"] = "1"
    if not common.get("ENGINE_TOKEN", "").strip():
        # the engines' ports are open to every local user: only this up's orchestrator may
        # call them (a token set by the caller is kept, for engines started by hand too)
        common["ENGINE_TOKEN"] = make_token()
    engine_env = {k: v for k, v in common.items() if for_engines(k)}
    capacity = environ.get("CAPACITY", "").strip() or "10"
    # each engine gets a port of its own: the value is read for whether it is on, as the
    # engine reads it (abc, 70000 or off were taken as on)
    metrics_wanted = _setting(lambda: ep.port(environ, "METRICS_PORT", 0, zero="off")) != 0
    children: list[Child] = []
    addresses: list[str] = []
    metrics: list[int | None] = []
    for i in range(engines):
        name = f"engine-{i}"
        port = pick_port()
        metrics_port = pick_port() if metrics_wanted else None
        env = {
            **engine_env,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "ENGINE_ID": name,
            "CAPACITY": capacity,
        }
        if metrics_port is not None:
            env["METRICS_PORT"] = str(metrics_port)
        children.append(Child(name, (python, "-m", "engine"), env, log_dir / f"{name}.log"))
        addresses.append(f"127.0.0.1:{port}")
        metrics.append(metrics_port)
    http_port = _port(environ, "HTTP_PORT", DEFAULT_HTTP_PORT, pick_port)
    grpc_port = _port(environ, "GRPC_PORT", DEFAULT_GRPC_PORT, pick_port)
    if http_port == grpc_port:
        raise LaunchError(
            f"HTTP_PORT and GRPC_PORT are both {http_port}: the orchestrator needs two ports, "
            "set one of them to another",
            exit_code=BAD_SETTINGS_EXIT,
        )
    orchestrator_env = {
        **{k: v for k, v in common.items() if not k.startswith(NOT_FOR_THE_ORCHESTRATOR_PREFIXES)},
        "DISCOVERY_MODE": "static",
        "ENGINE_ADDRESSES": ",".join(addresses),
        "STATE_DB": state_db,
        "HTTP_PORT": str(http_port),
        "GRPC_PORT": str(grpc_port),
    }
    orchestrator_env.setdefault("ENGINE_HEALTH_CHECK_INTERVAL", "2")
    # a system for this machine: reachable from elsewhere only when HOST says so (it runs
    # whatever Lua it is sent, and API_TOKEN is unset unless the user sets it)
    orchestrator_env.setdefault("HOST", "127.0.0.1")
    orchestrator = Child(
        "orchestrator",
        (python, "-m", "orchestrator"),
        orchestrator_env,
        log_dir / "orchestrator.log",
    )
    return Layout(
        orchestrator=orchestrator,
        engines=tuple(children),
        http_port=http_port,
        grpc_port=grpc_port,
        engine_addresses=tuple(addresses),
        engine_metrics=tuple(metrics),
        state_db=state_db,
        log_dir=log_dir,
        tls=bool(environ.get("TLS_CERT_FILE", "").strip()),
        mutual_tls=bool(environ.get("TLS_CA_FILE", "").strip()),
        host=reachable_host(orchestrator_env["HOST"]),
    )


def own_server_tls(environ: Mapping[str, str]) -> ssl.SSLContext | None:
    """How ``up`` reaches the orchestrator it started when TLS_CERT_FILE makes it serve https:
    trusting that certificate and nothing else (VERIFY_X509_PARTIAL_CHAIN: a leaf is its own
    anchor), without a host name check, since ``up`` connects to the address it had it bind
    rather than to a name on the certificate; and, when TLS_CA_FILE asks every client for a
    certificate, showing DAGCTL_CERT_FILE and DAGCTL_KEY_FILE, loaded as dagctl's own client
    loads them (``cli.Settings.tls``: an encrypted key is refused, not prompted for).

    None without TLS_CERT_FILE; LaunchError, one line, when it cannot be done."""

    def variable(name: str) -> str | None:
        return environ.get(name, "").strip() or None

    cert = variable("TLS_CERT_FILE")
    if cert is None:
        return None
    mutual = variable("TLS_CA_FILE") is not None
    client_cert, client_key = variable("DAGCTL_CERT_FILE"), variable("DAGCTL_KEY_FILE")
    if mutual and (client_cert is None or client_key is None):
        raise LaunchError(
            "TLS_CA_FILE makes the orchestrator ask every client for a certificate: set "
            "DAGCTL_CERT_FILE and DAGCTL_KEY_FILE to one that CA signed, for dagctl up to reach it"
        )
    try:
        # read here first, so that a bad one is named as what it is to up: TLS_CERT_FILE
        ssl.create_default_context(cafile=cert)
    except (OSError, ssl.SSLError) as exc:
        raise LaunchError(f"TLS_CERT_FILE {cert}: {_why(exc)}") from None
    client = ClientSettings(
        ca_file=cert,
        cert_file=client_cert if mutual else None,
        key_file=client_key if mutual else None,
    )
    try:
        context = client.tls()
    except BadArguments as exc:
        raise LaunchError(str(exc)) from None
    assert context is not None  # a CA file is given
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def _why(exc: OSError | ssl.SSLError) -> str:
    return str(exc.strerror or exc) if isinstance(exc, OSError) else str(exc)


RESTART_MARK = "--- dagctl: "
"""Begins the line ``up`` writes into an engine's log before it starts the engine again."""


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log, from the latest start of its process on."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    found = text.splitlines()
    marks = [i for i, line in enumerate(found) if line.startswith(RESTART_MARK)]
    if marks:
        found = found[marks[-1] + 1 :]
    return "\n".join(found[-lines:])


def how_it_ended(code: int) -> str:
    """``exited with code 3``, or ``was killed by SIGKILL`` for a negative ``Popen`` status."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


KILLED_FROM_OUTSIDE = frozenset(
    {0, -signal.SIGKILL, -signal.SIGTERM, -signal.SIGINT, -signal.SIGHUP, -signal.SIGQUIT}
)
"""Exits whose cause is not in the log: a kill, or a clean stop asked for by someone."""


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How ``up`` treats an engine that exits: it starts it again, after a pause that doubles
    while it keeps exiting, since engines may die at any moment and the orchestrator moves their
    runs on; only an engine that never gets going is a reason to stop the whole system."""

    first_delay: float = 0.5
    max_delay: float = 30.0
    stable_after: float = 60.0
    """An engine that was up this long before it exited is paused ``first_delay`` again."""
    give_up_after: int = 5
    """Exits in a row without the engine ever listening on its port: ``up`` stops."""


@dataclass(slots=True)
class Restarts:
    """One engine's starts and exits, and the pause before its next start. Pure: time is passed
    in, so the policy is tested without a clock."""

    policy: RestartPolicy
    starts: int = 0
    started_at: float = 0.0
    ready: bool = False
    failed_starts: int = 0
    """Exits in a row before the engine was ready."""
    delay: float = 0.0

    def started(self, now: float) -> None:
        self.starts += 1
        self.started_at = now
        self.ready = False

    def became_ready(self) -> None:
        self.ready = True
        self.failed_starts = 0

    def exited(self, now: float, code: int | None = None) -> float | None:
        """Seconds to wait before the next start, or None: give up, because it keeps failing
        to start, or refused its settings (which no restart changes)."""
        if not self.ready:
            self.failed_starts += 1
            if self.failed_starts >= self.policy.give_up_after or code == BAD_SETTINGS_EXIT:
                return None
        if self.delay == 0.0 or now - self.started_at >= self.policy.stable_after:
            self.delay = self.policy.first_delay
        else:
            self.delay = min(self.delay * 2, self.policy.max_delay)
        return self.delay


class Output(Protocol):
    """Where ``up`` writes: a text stream, or one that may have gone away (see ``Sturdy``)."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


class Sturdy:
    """A stream whose writes never fail: once the reader is gone (``| tee`` ended by the same
    Ctrl-C, a terminal hung up: EPIPE, EIO) what ``up`` says is dropped, and it goes on with
    what matters, which is stopping its children. Its file descriptor, if it has one, is pointed
    at /dev/null, so that the interpreter's last flush at exit does not fail either."""

    def __init__(self, stream: Output) -> None:
        self.stream = stream
        self.lost = False

    def write(self, text: str, /) -> int:
        if not self.lost:
            try:
                self.stream.write(text)
            except (OSError, ValueError):
                self._lose()
        return len(text)

    def flush(self) -> None:
        if not self.lost:
            try:
                self.stream.flush()
            except (OSError, ValueError):
                self._lose()

    def _lose(self) -> None:
        self.lost = True
        try:
            fd = self.stream.fileno()  # type: ignore[attr-defined]
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, fd)
            finally:
                os.close(null)
        except (AttributeError, OSError, ValueError):  # not a file (io.StringIO), or closed
            pass


PR_SET_PDEATHSIG: Final = 1


def _load_prctl() -> Callable[[int, int], int] | None:
    """libc's ``prctl``, on Linux; loaded before any fork, since the child between fork and exec
    must not load a library."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # this process's own libc
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL: Final = _load_prctl()


def _dies_with(parent: int) -> Callable[[], None]:
    """What a child does between fork and exec: take back the stop signals ``up`` blocks while it
    spawns (the mask is inherited: an engine that ignores SIGTERM would not drain), and ask the
    kernel for SIGTERM when ``up`` dies, even by SIGKILL, which no handler of ours sees.

    Chosen over a lifeline pipe, which every child would have to watch: the engines and the
    orchestrator already stop gracefully on SIGTERM, and the kernel keeps this promise for any
    program. If ``up`` died before the request was made, the child is the orphan that the request
    is there to prevent, so it does not go on to exec (getppid is no longer ``parent``). The
    signal follows the death of the spawning *thread*; ``up`` spawns from the one thread it runs
    in, which lives as long as its children do."""

    def setup() -> None:
        # SIGTERM is how a child is stopped, by ``up`` and by the kernel when ``up`` dies: an
        # ``up`` started ignoring it (its disposition is inherited across exec) must not pass
        # that on, or a child still starting when ``up`` is killed would outlive it
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:
                os._exit(1)

    return setup


@dataclass
class Supervisor:
    """The children of one ``up``: start them, start an engine again when it exits, stop all.

    The orchestrator is not restarted: it holds the store, so its death is a thing to look at
    rather than to paper over, and ``up`` ends saying why. An engine is ready once it listens on
    its port itself (``listens``: another program on that port is not the engine back); it is
    started again with the same name, port and environment, so the orchestrator's static list
    (``ENGINE_ADDRESSES``) finds it where it was.
    """

    orchestrator: Child
    engines: tuple[Child, ...]
    cwd: Path
    out: Output
    err: Output
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    restarts: dict[str, Restarts] = field(default_factory=dict)
    due: dict[str, float] = field(default_factory=dict)
    """Engines waiting to be started again, with the monotonic time they are due."""
    stopping: bool = False
    """Set once a stop began: another stop signal then hurries it instead of starting one."""
    hurried: bool = False
    """A second Ctrl-C (or SIGTERM, ...): every child was sent SIGKILL, no grace is waited out."""
    _stop_deadline: float | None = None
    _not_restarted: list[str] = field(default_factory=list)
    _reported: set[str] = field(default_factory=set)

    def start(self) -> None:
        now = time.monotonic()
        self._spawn(self.orchestrator)
        for child in self.engines:
            self.restarts[child.name] = life = Restarts(self.policy)
            self._spawn(child)
            life.started(now)

    def _spawn(self, child: Child, note: str = "") -> None:
        """Start ``child`` with its output in its log: a fresh log, or after ``note`` when it is
        started again, so what it wrote before it died stays readable. A fresh log keeps the
        one of the ``up`` before as ``<name>.log.1``: a crash is often looked at after a restart.

        The stop signals are blocked meanwhile (in this thread), so that a Ctrl-C cannot land
        between the fork and the moment the child is known here, and go unstopped."""
        try:
            child.log_path.parent.mkdir(parents=True, exist_ok=True)
            if not note and child.log_path.exists():
                child.log_path.replace(child.log_path.with_name(child.log_path.name + ".1"))
            log: IO[bytes] = child.log_path.open("ab") if note else child.log_path.open("wb")
        except OSError as exc:
            raise LaunchError(f"cannot write {child.log_path}: {_why(exc)}") from None
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            if note:
                log.write(note.encode())
                log.flush()
            self.procs[child.name] = subprocess.Popen(
                list(child.argv),
                cwd=self.cwd,
                env=dict(child.env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_dies_with(os.getpid()),  # see _dies_with
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise LaunchError(f"cannot start {child.name}: {exc}") from exc
        finally:
            log.close()
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def pid(self, name: str) -> int | None:
        proc = self.procs.get(name)
        return proc.pid if proc is not None and name not in self.due else None

    def exit_code(self, name: str) -> int | None:
        """The exit status of the named child, None while it runs (or waits to be restarted)."""
        proc = self.procs.get(name)
        if proc is None or name in self.due:
            return None
        return proc.poll()

    def tend(self, now: float) -> None:
        """Notice engines that exited or came up, start those whose pause is over.

        LaunchError when an engine exited ``give_up_after`` times in a row before it was ready,
        or refused its settings (``exit_code`` 2 then, as for ``up``'s own settings).
        """
        for child in self.engines:
            life = self.restarts[child.name]
            due = self.due.get(child.name)
            if due is not None:
                if now >= due:
                    del self.due[child.name]
                    self._spawn(
                        child,
                        f"{RESTART_MARK}restart {life.starts} of {child.name} ---\n",
                    )
                    life.started(now)
                continue
            proc = self.procs[child.name]
            code = proc.poll()
            if code is not None:
                self._exited(child, proc.pid, code, now)
            elif not life.ready and listens(proc.pid, int(child.env["PORT"])):
                life.became_ready()
                if life.starts > 1:
                    self.out.write(
                        f"{child.name} is serving again on {child.env['HOST']}:"
                        f"{child.env['PORT']} (pid {proc.pid})\n"
                    )
                    self.out.flush()

    def _exited(self, child: Child, pid: int, code: int, now: float) -> None:
        life = self.restarts[child.name]
        delay = life.exited(now, code)
        if delay is None:
            times = f", {life.failed_starts} times in a row" if life.failed_starts > 1 else ""
            raise LaunchError(
                f"{child.name} {how_it_ended(code)} while starting{times}; "
                f"last lines of {child.log_path}:",
                tail(child.log_path),
                exit_code=BAD_SETTINGS_EXIT if code == BAD_SETTINGS_EXIT else 1,
            )
        line = f"dagctl: {child.name} (pid {pid}) {how_it_ended(code)}"
        if not life.ready:
            line += (
                f" before it was ready (failed start {life.failed_starts} of "
                f"{self.policy.give_up_after})"
            )
        line += f"; restarting it in {delay:g} s"
        if code not in KILLED_FROM_OUTSIDE:
            line += f"; last lines of {child.log_path}:\n{_indent(tail(child.log_path))}"
        self.err.write(line + "\n")
        self.err.flush()
        self.due[child.name] = now + delay

    def pause(self, now: float, longest: float = 0.5) -> float:
        """How long the caller may wait before ``tend`` is needed again."""
        soonest = min(self.due.values(), default=now + longest)
        return max(min(soonest - now, longest), 0.0)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """The handler of the stop signals: the first one stops (KeyboardInterrupt, caught by
        ``run_up``), a later Ctrl-C or SIGTERM hurries the stop on. It never raises once a stop
        began, so a double Ctrl-C a few ms apart cannot escape the stop and leave children
        behind. A hang-up comes twice when a terminal closes (the shell passes one on, the
        kernel sends its own) and means no hurry: the children drain as after one Ctrl-C."""
        if self.stopping:
            if signum != signal.SIGHUP:
                self.hurry()
            return
        self.stopping = True
        raise KeyboardInterrupt

    def hurry(self) -> None:
        """SIGKILL to every child still running: no more waiting for a grace period."""
        self.hurried = True
        for proc in self.procs.values():
            if proc.returncode is None:
                _signal(proc, signal.SIGKILL)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM to every child still running, up to ``grace`` seconds, then SIGKILL; an
        engine waiting to be restarted is not started again. Called again after it was cut short
        (a KeyboardInterrupt that got through), it goes on where it was until every child is
        reaped; called once more after that, it does nothing."""
        self.stopping = True
        if self._stop_deadline is None:
            self._not_restarted += [name for name in self.procs if name in self.due]
            self.due.clear()
            self._stop_deadline = time.monotonic() + grace
            for name, proc in self.procs.items():
                if name in self._not_restarted:
                    continue
                if proc.poll() is None:
                    _signal(proc, signal.SIGTERM)
                else:  # it ended before: what it did was said when it did
                    self._reported.add(name)
        if self.hurried:
            self.hurry()
        for name, proc in self.procs.items():
            if name in self._reported or name in self._not_restarted:
                continue
            try:
                code = proc.wait(max(self._stop_deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL)
                proc.wait()
                said = f"  {name} did not stop within {grace:.0f} s: killed\n"
            else:
                hurried = self.hurried and code == -signal.SIGKILL
                said = f"  {name} killed\n" if hurried else f"  {name} stopped (exit {code})\n"
            self._reported.add(name)
            self.out.write(said)
            self.out.flush()
        for name in self._not_restarted:
            if name not in self._reported:
                self._reported.add(name)
                self.out.write(f"  {name} not restarted (it was waiting to be)\n")
        self.out.flush()

    def stop_all(self) -> None:
        """``stop`` until it has run to its end, whatever KeyboardInterrupt gets through."""
        while True:
            try:
                self.stop()
                return
            except KeyboardInterrupt:
                self.hurried = True


def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        pass


# -- the whole of `dagctl up` ---------------------------------------------------------------


def wait_ready(layout: Layout, supervisor: Supervisor, client: Client, timeout: float) -> None:
    """Until /readyz answers and every engine of ours is "ready"; LaunchError otherwise."""
    wanted = len(layout.engines)
    answered = False
    why_not = ""
    ready: set[str] = set()
    engines: list[JSON] = []
    deadline = time.monotonic() + timeout
    while True:
        code = supervisor.exit_code(layout.orchestrator.name)
        if code is not None:
            raise LaunchError(
                f"{layout.orchestrator.name} {how_it_ended(code)} while starting; "
                f"last lines of {layout.orchestrator.log_path}:",
                tail(layout.orchestrator.log_path),
                exit_code=BAD_SETTINGS_EXIT if code == BAD_SETTINGS_EXIT else 1,
            )
        supervisor.tend(time.monotonic())
        try:
            client.get("/readyz")
            answered = True
            listed = client.get("/api/v1/engines").get("engines")
            engines = listed if isinstance(listed, list) else []
            ready = _ready_engines(layout, engines)
            if len(ready) >= wanted:
                return
        except Unreachable as exc:
            # not listening yet is what starting looks like; anything else (a TLS handshake
            # that fails) is worth telling when the time is up
            why_not = "" if exc.reason == "connection refused" else f" ({exc.reason})"
        except ApiError:
            pass
        if time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    if not answered:
        child = layout.orchestrator
        what = f"the orchestrator did not answer {layout.http_url}/readyz{why_not}"
    else:
        child = next(c for c in layout.engines if c.name not in ready)
        state = next(
            (
                f" (state {e.get('state')}"
                + (f": {e.get('last_error')}" if e.get("last_error") else "")
                + ")"
                for e in engines
                if isinstance(e, dict) and _engine_name(layout, e) == child.name
            ),
            " (the orchestrator does not list it)",
        )
        what = (
            f"{child.name} at {child.env.get('HOST')}:{child.env.get('PORT')} is not ready{state}"
        )
    raise LaunchError(
        f"timed out after {timeout:.0f} s: {what}; last lines of {child.log_path}:",
        tail(child.log_path),
    )


def _engine_name(layout: Layout, engine: JSONObject) -> str | None:
    for child, address in zip(layout.engines, layout.engine_addresses, strict=True):
        if engine.get("address") == address or engine.get("id") == child.name:
            return child.name
    return None


def _ready_engines(layout: Layout, engines: list[JSON]) -> set[str]:
    names = set()
    for engine in engines:
        if isinstance(engine, dict) and engine.get("state") == "ready":
            name = _engine_name(layout, engine)
            if name is not None:
                names.add(name)
    return names


def find_examples(cwd: Path) -> list[Path]:
    """``examples/*.yaml`` here, else beside the installed package (a source checkout)."""
    for folder in (cwd / "examples", Path(__file__).resolve().parents[2] / "examples"):
        found = sorted(folder.glob("*.yaml"))
        if found:
            return found
    return []


def register_examples(client: Client, files: list[Path], out: Output) -> list[str]:
    """Register each file; a second pass for those that need another registered first. A file
    refused is shown with its problems, as ``dagctl apply`` shows them."""
    registered: list[str] = []
    unchanged: list[str] = []
    failures: dict[Path, str] = {}
    pending = list(files)
    for _ in range(2):
        failures = {}
        for path in pending:
            try:
                reply = client.call(
                    "POST",
                    "/api/v1/workflows",
                    data=path.read_bytes(),
                    headers={"Content-Type": "application/yaml"},
                )
            except ApiError as exc:
                details = "".join(f"\n  {line}" for line in detail_lines(exc.details))
                failures[path] = f"{exc.code}: {exc.message}{details}"
                continue
            except OSError as exc:
                failures[path] = str(exc)
                continue
            workflow = reply.body.get("workflow")
            wf = workflow if isinstance(workflow, dict) else {}
            shown = f"{wf.get('id', path.stem)}@{wf.get('version', '?')}"
            # an up on state from before finds them there: identical content is no new version
            (registered if reply.body.get("created") is not False else unchanged).append(shown)
        pending = list(failures)
        if not pending or len(pending) == len(files):
            break
    if registered:
        out.write(f"Examples registered: {', '.join(registered)}\n")
    if unchanged:
        out.write(f"Examples there already, unchanged: {', '.join(unchanged)}\n")
    for path, why in failures.items():
        out.write(f"  could not register {path.name}: {why}\n")
    return registered + unchanged


def dagctl_command(python: str, cwd: Path, path: str | None) -> str:
    """How to call the dagctl beside ``python`` (the one running now) from ``cwd``: ``dagctl``
    when that is the one PATH finds, else its path (``.venv/bin/dagctl`` after ``.ci/up``)."""
    beside = Path(python).parent / "dagctl"
    if not beside.is_file():
        return "dagctl"
    found = shutil.which("dagctl", path=path)
    if found is not None and os.path.realpath(found) == os.path.realpath(beside):
        return "dagctl"
    absolute = beside if beside.is_absolute() else cwd / beside
    try:
        return str(absolute.relative_to(cwd))
    except ValueError:
        return str(absolute)


def banner(
    layout: Layout,
    *,
    server: str,
    token_set: bool,
    pids: Mapping[str, int | None],
    out: Output,
    ca_set: bool = False,
    dagctl: str = "dagctl",
    examples: bool = True,
) -> None:
    """What is up and where, and what to try. ``ca_set``: DAGCTL_CA_FILE is set already (with
    TLS, the next dagctl commands and curl need the CA that signed TLS_CERT_FILE); ``dagctl``:
    how to call dagctl from here (see ``dagctl_command``); ``examples``: they were registered,
    so the ``hello`` to try is there."""
    count = len(layout.engines)
    orchestrator = pids.get(layout.orchestrator.name)
    lines = [
        f"DAG Engine is up: an orchestrator and {count} engine{'s' if count != 1 else ''}.",
        "",
        f"  HTTP API   {layout.http_url}   (OpenAPI: {layout.http_url}/api/v1/openapi.json)",
        f"  gRPC       {layout.grpc_address}",
        f"  metrics    {layout.http_url}/metrics",
    ]
    if orchestrator is not None:
        lines.append(f"  {layout.orchestrator.name:<10} pid {orchestrator}")
    for child, address, metrics in zip(
        layout.engines, layout.engine_addresses, layout.engine_metrics, strict=True
    ):
        pid = pids.get(child.name)
        extra = f"   pid {pid}" if pid is not None else ""
        extra += f"   (metrics http://127.0.0.1:{metrics}/metrics)" if metrics else ""
        lines.append(f"  {child.name:<10} {address}{extra}")
    lines += [
        f"  state      {layout.state_db}",
        f"  logs       {layout.log_dir}/",
        "",
        "Try:",
    ]
    if server.rstrip("/") != layout.http_url:
        lines.append(f"  export DAGCTL_SERVER={layout.http_url}")
    if layout.tls and not ca_set:
        lines += [
            "  (dagctl and curl check the server: set DAGCTL_CA_FILE to the CA that signed",
            "   TLS_CERT_FILE, or to TLS_CERT_FILE itself if it signed itself)",
        ]
    auth = ' -H "Authorization: Bearer $API_TOKEN"' if token_set else ""
    if layout.tls:
        auth = ' --cacert "$DAGCTL_CA_FILE"' + auth
    if layout.mutual_tls:
        auth = ' --cert "$DAGCTL_CERT_FILE" --key "$DAGCTL_KEY_FILE"' + auth
    if examples:
        lines += [
            f"  {dagctl} run hello --input name=Ada --wait",
            f"  curl -X POST {layout.http_url}/trigger/hello{auth} "
            '-H \'Content-Type: application/json\' -d \'{"inputs": {"name": "Ada"}}\'',
        ]
    else:  # nothing is registered yet, unless this state had it from before
        lines += [
            f"  {dagctl} apply -f my-workflow.yaml",
            f"  {dagctl} get workflows",
        ]
    lines += [f"  {dagctl} get executions", "", "Ctrl-C stops everything."]
    out.write("\n".join(lines) + "\n")
    out.flush()


def left_behind(pid: int) -> bool:
    """Whether process ``pid`` is an orchestrator that a ``dagctl up`` started and lost: it
    leads a session of its own, as ``up`` starts its children, yet its parent is no ``dagctl
    up`` (init, or a subreaper, took it in). False wherever /proc does not tell."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[-1].split()
    if not _runs_module(argv, b"orchestrator") or len(fields) < 4 or int(fields[3]) != pid:
        return False
    try:
        parent = Path(f"/proc/{fields[1]}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    up = b"up" in parent and (
        any(os.path.basename(arg) == b"dagctl" for arg in parent)
        or _runs_module(parent, b"orchestrator.dagctl")
    )
    return not up


def _runs_module(argv: list[bytes], module: bytes) -> bool:
    return any(a == b"-m" and b == module for a, b in itertools.pairwise(argv))


def in_use(state_db: str, cwd: Path) -> str | None:
    """Why ``up`` cannot have ``state_db``, or None when no process holds it."""
    holder = state_holder(str(cwd / state_db))
    if holder is None:
        return None
    if holder and left_behind(holder):
        return (
            f"{state_db} is in use by process {holder}, an orchestrator left behind by a dagctl "
            f"up that was killed: kill {holder} (it stops cleanly on SIGTERM), or set STATE_DB "
            "to use another state database"
        )
    return (
        f"{state_db} is in use by {holder_named(holder)}: is another dagctl up running here? "
        "Stop it first, or set STATE_DB to use another state database"
    )


UP_LOCK: Final = "up.lock"


def hold_logs(log_dir: Path) -> int:
    """Take ``<log_dir>/up.lock`` for this ``up`` (an flock, let go when it exits however it
    does) before a log is rotated: two ``up`` started at once on one state database both pass
    the look at its lock, which its orchestrator takes only later, and would rotate each other's
    logs. LaunchError when another ``up`` has it, or when the directory cannot be written."""
    try:
        private_dirs(log_dir)  # the logs carry what scripts log, and .dagengine the database
        return hold(str(log_dir / UP_LOCK))
    except Held as exc:
        raise LaunchError(
            f"{log_dir} is in use by another dagctl up ({holder_named(exc.pid)}): stop it first, "
            "or set STATE_DB to use another state database (its logs go beside it)"
        ) from None
    except OSError as exc:
        raise LaunchError(f"cannot write the logs in {log_dir}/: {_why(exc)}") from None


def orchestrator_died(child: Child, pid: int | None, code: int) -> LaunchError:
    """What ``up`` says when its orchestrator ended: a crash with its log's last lines, a kill
    from outside (SIGKILL, a SIGTERM not ours) without them, since the log does not know."""
    if code in KILLED_FROM_OUTSIDE:
        return LaunchError(f"{child.name} (pid {pid}) {how_it_ended(code)}, not by dagctl up")
    return LaunchError(
        f"{child.name} exited unexpectedly with code {code}; last lines of {child.log_path}:",
        tail(child.log_path),
    )


def run_up(
    environ: Mapping[str, str],
    *,
    server: str,
    token: str | None,
    engines: int,
    examples: bool,
    python: str,
    cwd: Path,
    out: TextIO,
    err: TextIO,
    stop: threading.Event | None = None,
    start_timeout: float = START_TIMEOUT,
    restart: RestartPolicy | None = None,
) -> int:
    """Start, wait until ready, register the examples, then supervise until stopped. Exits 2
    for a bad setting (``up``'s own, or one its orchestrator or an engine refused at start), 1
    when it could not start or something died, 0 when stopped."""
    say, complain = Sturdy(out), Sturdy(err)
    try:
        layout = plan(environ, engines=engines, python=python, base_dir=cwd)
        tls = own_server_tls(environ)
        # as its orchestrator would refuse it, before anything is made or started; the
        # directory it goes in is the logs' too, which hold_logs makes, or says it cannot
        _setting(lambda: state_db_setting({"STATE_DB": layout.state_db}, cwd=cwd, parent=False))
    except LaunchError as exc:
        complain.write(f"dagctl: {exc}\n")
        return BAD_SETTINGS_EXIT
    # before anything is started or a log is rotated: they are the running system's
    why = in_use(layout.state_db, cwd)
    if why is not None:
        complain.write(f"dagctl: {why}\n")
        return 1
    for name, port in (("HTTP_PORT", layout.http_port), ("GRPC_PORT", layout.grpc_port)):
        if port_in_use(port, layout.host):
            complain.write(
                f"dagctl: port {port} ({name}) is already in use: is another dagctl up "
                f"running? Set {name} to use another port\n"
            )
            return 1
    try:
        held = hold_logs(layout.log_dir)
    except LaunchError as exc:
        complain.write(f"dagctl: {exc}\n")
        return exc.exit_code
    supervisor = Supervisor(
        layout.orchestrator, layout.engines, cwd, say, complain, restart or RestartPolicy()
    )
    try:
        failure = _supervise(
            layout,
            supervisor,
            Client(layout.http_url, token, timeout=5.0, tls=tls),
            stop or threading.Event(),
            start_timeout=start_timeout,
            examples=examples,
            banner_of=lambda pids, hello: banner(
                layout,
                server=server,
                token_set=bool(environ.get("API_TOKEN")),
                pids=pids,
                out=say,
                ca_set=bool(environ.get("DAGCTL_CA_FILE", "").strip()),
                dagctl=dagctl_command(python, cwd, environ.get("PATH")),
                examples=hello,
            ),
        )
    finally:
        os.close(held)
    if failure is None:
        return 0
    # the last thing said: after the children's stop lines, not lost above them
    complain.write(f"dagctl: {failure}\n")
    if failure.log is not None:
        complain.write(_indent(failure.log) + "\n")
    complain.flush()
    return failure.exit_code


def _supervise(
    layout: Layout,
    supervisor: Supervisor,
    client: Client,
    stop: threading.Event,
    *,
    start_timeout: float,
    examples: bool,
    banner_of: Callable[[Mapping[str, int | None], bool], None],
) -> LaunchError | None:
    """Start the children and tend them until ``stop``, a stop signal, or a failure (returned);
    everything started is stopped whatever ends it, an exception included."""
    out = supervisor.out
    in_main = threading.current_thread() is threading.main_thread()
    # a signal ``up`` was started ignoring stays ignored: under ``nohup`` a hang-up must not
    # stop it, nor a Ctrl-C meant for the shell a background job of a script
    previous = (
        {
            sig: signal.signal(sig, supervisor.on_signal)
            for sig in STOP_SIGNALS
            if signal.getsignal(sig) is not signal.SIG_IGN
        }
        if in_main
        else {}
    )
    failure: LaunchError | None = None
    try:
        count = len(layout.engines)
        out.write(
            f"Starting the orchestrator and {count} engine{'s' if count != 1 else ''} "
            f"(logs in {layout.log_dir}/) ...\n"
        )
        out.flush()
        supervisor.start()
        wait_ready(layout, supervisor, client, start_timeout)
        hello = False  # what the banner's first suggestion runs
        if examples:
            files = find_examples(supervisor.cwd)
            if not files:
                # an installed copy: the examples come with a source checkout only
                out.write(
                    "No examples/ here or beside the package: none registered "
                    "(they come with a clone of the repository)\n"
                )
            registered = register_examples(client, files, out)
            hello = any(ref.startswith("hello@") for ref in registered)
        names = (layout.orchestrator.name, *(child.name for child in layout.engines))
        banner_of({name: supervisor.pid(name) for name in names}, hello)
        orchestrator = layout.orchestrator
        while not stop.is_set():
            code = supervisor.exit_code(orchestrator.name)
            if code is not None:
                failure = orchestrator_died(orchestrator, supervisor.pid(orchestrator.name), code)
                out.write("Stopping the others ...\n")
                break
            now = time.monotonic()
            supervisor.tend(now)
            stop.wait(supervisor.pause(now))
        else:
            out.write("Stopping ...\n")
    except KeyboardInterrupt:
        out.write("\nStopping ...\n")
    except LaunchError as exc:
        failure = exc
        out.write("Stopping everything ...\n")
    finally:
        out.flush()
        supervisor.stop_all()
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
    return failure


def _indent(text: str) -> str:
    return "\n".join(f"  | {line}" for line in text.splitlines()) or "  | (the log is empty)"
