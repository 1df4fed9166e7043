"""``dagctl up``: an orchestrator and N engines as local processes, supervised until stopped.

``plan`` decides every process's command line and environment from the caller's environment
(pure but for the free ports it is handed); ``Supervisor`` starts them with their output in
``.dagengine/logs/<name>.log``, starts an engine that dies again (engines may die at any
moment: the orchestrator moves their runs on, and the local system stays up, as a cluster
would), ends everything when the orchestrator dies or an engine cannot get going, and stops
them all: SIGTERM, a grace period for runs in flight (engines drain for up to 30 s), then
SIGKILL.

Children run in their own session so a Ctrl-C at the terminal reaches dagctl alone, and the
shutdown is ordered from here rather than raced by every process at once.

The engines listen on loopback ports any local user can reach, so each ``up`` gives them and the
orchestrator a fresh ENGINE_TOKEN (unless one is set), and the engines get none of the secrets
they have no use for. With TLS_CERT_FILE set, ``up`` reaches the orchestrator it started over
https, trusting that server's own certificate and nothing else.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final, TextIO

from engine.core.values import JSON, JSONObject
from orchestrator.dagctl.calling import ApiError, Client, Unreachable
from orchestrator.dagctl.cli import BadArguments
from orchestrator.dagctl.cli import Settings as ClientSettings
from orchestrator.locking import holder_named, state_holder

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


def new_engine_token() -> str:
    return secrets.token_urlsafe(32)


def for_engines(name: str) -> bool:
    """Whether the caller's variable ``name`` is passed on to the engines ``up`` starts."""
    return not (
        name in ENGINE_ONLY or name in NOT_FOR_ENGINES or name.startswith(NOT_FOR_ENGINES_PREFIXES)
    )


class LaunchError(Exception):
    """A local cluster that cannot start; the message is one line, ``log`` the tail to show."""

    def __init__(self, message: str, log: str | None = None) -> None:
        super().__init__(message)
        self.log = log


def free_port() -> int:
    """A TCP port free on loopback right now (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _port(env: Mapping[str, str], name: str, default: int, pick: Callable[[], int]) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise LaunchError(f"{name} must be a port number, got {raw!r}") from None
    if not 0 <= value <= 65535:
        raise LaunchError(f"{name} must be a port number between 0 and 65535, got {value}")
    return value or pick()  # 0: any free port, chosen here so we know which


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

    @property
    def http_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.http_port}"


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
    log_dir = base_dir / ".dagengine" / "logs"
    common = {**environ}
    common.setdefault("PYTHONUNBUFFERED", "1")  # so a log's tail is current when we show it
    if not common.get("ENGINE_TOKEN", "").strip():
        # the engines' ports are open to every local user: only this up's orchestrator may
        # call them (a token set by the caller is kept, for engines started by hand too)
        common["ENGINE_TOKEN"] = make_token()
    engine_env = {k: v for k, v in common.items() if for_engines(k)}
    capacity = environ.get("CAPACITY", "").strip() or "10"
    metrics_wanted = environ.get("METRICS_PORT", "").strip() not in ("", "0")
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
    state_db = environ.get("STATE_DB", "").strip() or str(Path(".dagengine") / "state.db")
    orchestrator_env = {
        **common,
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
    {0, -signal.SIGKILL, -signal.SIGTERM, -signal.SIGINT, -signal.SIGHUP}
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


BAD_SETTINGS_EXIT: Final = 2
"""``python -m engine`` exits 2 when a setting is bad: every start would be refused the same."""


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


@dataclass
class Supervisor:
    """The children of one ``up``: start them, start an engine again when it exits, stop all.

    The orchestrator is not restarted: it holds the store, so its death is a thing to look at
    rather than to paper over, and ``up`` ends saying why. An engine is ready once it listens on
    its port; it is started again with the same name, port and environment, so the
    orchestrator's static list (``ENGINE_ADDRESSES``) finds it where it was.
    """

    orchestrator: Child
    engines: tuple[Child, ...]
    cwd: Path
    out: TextIO
    err: TextIO
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    restarts: dict[str, Restarts] = field(default_factory=dict)
    due: dict[str, float] = field(default_factory=dict)
    """Engines waiting to be started again, with the monotonic time they are due."""

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
        one of the ``up`` before as ``<name>.log.1``: a crash is often looked at after a restart."""
        child.log_path.parent.mkdir(parents=True, exist_ok=True)
        if not note and child.log_path.exists():
            child.log_path.replace(child.log_path.with_name(child.log_path.name + ".1"))
        log: IO[bytes] = child.log_path.open("ab") if note else child.log_path.open("wb")
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
            )
        except OSError as exc:
            raise LaunchError(f"cannot start {child.name}: {exc}") from exc
        finally:
            log.close()

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

        LaunchError when an engine exited ``give_up_after`` times in a row before it was ready.
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
            elif not life.ready and port_in_use(int(child.env["PORT"])):
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

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM to every child still running, up to ``grace`` seconds, then SIGKILL; an
        engine waiting to be restarted is not started again."""
        waiting = [name for name in self.procs if name in self.due]
        self.due.clear()
        alive = {
            name: p for name, p in self.procs.items() if name not in waiting and p.poll() is None
        }
        for proc in alive.values():
            _signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        try:
            for name, proc in alive.items():
                try:
                    code = proc.wait(max(deadline - time.monotonic(), 0.0))
                    self.out.write(f"  {name} stopped (exit {code})\n")
                except subprocess.TimeoutExpired:
                    _signal(proc, signal.SIGKILL)
                    proc.wait()
                    self.out.write(f"  {name} did not stop within {grace:.0f} s: killed\n")
                self.out.flush()
        except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
            for proc in alive.values():
                if proc.poll() is None:
                    _signal(proc, signal.SIGKILL)
                    proc.wait()
            self.out.write("  killed\n")
        for name in waiting:
            self.out.write(f"  {name} not restarted (it was waiting to be)\n")
        self.out.flush()


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
                f"{layout.orchestrator.name} exited with code {code} while starting; "
                f"last lines of {layout.orchestrator.log_path}:",
                tail(layout.orchestrator.log_path),
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


def register_examples(client: Client, files: list[Path], out: TextIO) -> list[str]:
    """Register each file; a second pass for those that need another registered first."""
    registered: list[str] = []
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
                failures[path] = f"{exc.code}: {exc.message}"
                continue
            except OSError as exc:
                failures[path] = str(exc)
                continue
            workflow = reply.body.get("workflow")
            wf = workflow if isinstance(workflow, dict) else {}
            registered.append(f"{wf.get('id', path.stem)}@{wf.get('version', '?')}")
        pending = list(failures)
        if not pending or len(pending) == len(files):
            break
    if registered:
        out.write(f"Examples registered: {', '.join(registered)}\n")
    for path, why in failures.items():
        out.write(f"  could not register {path.name}: {why}\n")
    return registered


def banner(
    layout: Layout,
    *,
    server: str,
    token_set: bool,
    pids: Mapping[str, int | None],
    out: TextIO,
    ca_set: bool = False,
) -> None:
    """What is up and where, and what to try. ``ca_set``: DAGCTL_CA_FILE is set already (with
    TLS, the next dagctl commands and curl need the CA that signed TLS_CERT_FILE)."""
    count = len(layout.engines)
    lines = [
        f"DAG Engine is up: an orchestrator and {count} engine{'s' if count != 1 else ''}.",
        "",
        f"  HTTP API   {layout.http_url}   (OpenAPI: {layout.http_url}/api/v1/openapi.json)",
        f"  gRPC       127.0.0.1:{layout.grpc_port}",
        f"  metrics    {layout.http_url}/metrics",
    ]
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
    lines += [
        "  dagctl run hello --input name=Ada --wait",
        f"  curl -X POST {layout.http_url}/trigger/hello{auth} "
        '-H \'Content-Type: application/json\' -d \'{"inputs": {"name": "Ada"}}\'',
        "  dagctl get executions",
        "",
        "Ctrl-C stops everything.",
    ]
    out.write("\n".join(lines) + "\n")
    out.flush()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


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
    """Start, wait until ready, register the examples, then supervise until stopped."""
    try:
        layout = plan(environ, engines=engines, python=python, base_dir=cwd)
        tls = own_server_tls(environ)
    except LaunchError as exc:
        err.write(f"dagctl: {exc}\n")
        return 2
    holder = state_holder(str(cwd / layout.state_db))
    if holder is not None:
        # before anything is started or a log is rotated: they are the running system's
        err.write(
            f"dagctl: {layout.state_db} is in use by {holder_named(holder)}: is another "
            "dagctl up running here? Stop it first, or set STATE_DB to use another state "
            "database\n"
        )
        return 1
    for name, port in (("HTTP_PORT", layout.http_port), ("GRPC_PORT", layout.grpc_port)):
        if port_in_use(port):
            err.write(
                f"dagctl: port {port} ({name}) is already in use: is another dagctl up "
                f"running? Set {name} to use another port\n"
            )
            return 1
    stop = stop or threading.Event()
    supervisor = Supervisor(
        layout.orchestrator, layout.engines, cwd, out, err, restart or RestartPolicy()
    )
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main else None
    try:
        out.write(
            f"Starting the orchestrator and {engines} engine{'s' if engines != 1 else ''} "
            f"(logs in {layout.log_dir}/) ...\n"
        )
        out.flush()
        supervisor.start()
        client = Client(layout.http_url, token, timeout=5.0, tls=tls)
        wait_ready(layout, supervisor, client, start_timeout)
        if examples:
            register_examples(client, find_examples(cwd), out)
        banner(
            layout,
            server=server,
            token_set=bool(environ.get("API_TOKEN")),
            pids={child.name: supervisor.pid(child.name) for child in layout.engines},
            out=out,
            ca_set=bool(environ.get("DAGCTL_CA_FILE", "").strip()),
        )
        orchestrator = layout.orchestrator
        while not stop.is_set():
            code = supervisor.exit_code(orchestrator.name)
            if code is not None:
                err.write(
                    f"dagctl: {orchestrator.name} exited unexpectedly with code {code}; "
                    f"last lines of {orchestrator.log_path}:\n"
                    f"{_indent(tail(orchestrator.log_path))}\n"
                )
                out.write("Stopping the others ...\n")
                supervisor.stop()
                return 1
            now = time.monotonic()
            supervisor.tend(now)
            stop.wait(supervisor.pause(now))
        out.write("Stopping ...\n")
        supervisor.stop()
        return 0
    except KeyboardInterrupt:
        out.write("\nStopping ...\n")
        out.flush()
        supervisor.stop()
        return 0
    except LaunchError as exc:
        err.write(f"dagctl: {exc}\n")
        if exc.log is not None:
            err.write(_indent(exc.log) + "\n")
        out.write("Stopping everything ...\n")
        supervisor.stop()
        return 1
    except BaseException:
        supervisor.stop()
        raise
    finally:
        if in_main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _indent(text: str) -> str:
    return "\n".join(f"  | {line}" for line in text.splitlines()) or "  | (the log is empty)"
