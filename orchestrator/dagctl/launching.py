"""``dagctl up``: an orchestrator and N engines as local processes, supervised until stopped.

``plan`` decides every process's command line and environment from the caller's environment
(pure but for the free ports it is handed); ``Supervisor`` starts them with their output in
``.dagengine/logs/<name>.log``, notices one that dies, and stops them all: SIGTERM, a grace
period for runs in flight (engines drain for up to 30 s), then SIGKILL.

Children run in their own session so a Ctrl-C at the terminal reaches dagctl alone, and the
shutdown is ordered from here rather than raced by every process at once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TextIO

from engine.core.values import JSON, JSONObject
from orchestrator.dagctl.calling import ApiError, Client, Unreachable

STOP_GRACE = 35.0
START_TIMEOUT = 60.0
DEFAULT_HTTP_PORT = 8080
DEFAULT_GRPC_PORT = 50051
ENGINE_ONLY = ("ENGINE_ID", "HOST", "PORT", "METRICS_PORT")
"""Variables each engine gets its own value of: the caller's are not passed on to engines."""


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

    @property
    def children(self) -> tuple[Child, ...]:
        return (self.orchestrator, *self.engines)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def plan(
    environ: Mapping[str, str],
    *,
    engines: int,
    python: str,
    base_dir: Path,
    pick_port: Callable[[], int] = free_port,
) -> Layout:
    """The processes of a local cluster: DESIGN section 6 from ``environ``, the rest passed on."""
    if engines < 1:
        raise LaunchError("--engines must be at least 1")
    log_dir = base_dir / ".dagengine" / "logs"
    common = {**environ}
    common.setdefault("PYTHONUNBUFFERED", "1")  # so a log's tail is current when we show it
    engine_env = {k: v for k, v in common.items() if k not in ENGINE_ONLY}
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
    )


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Supervisor:
    """The children of one ``up``: start, watch, stop."""

    children: tuple[Child, ...]
    cwd: Path
    out: TextIO
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self) -> None:
        for child in self.children:
            child.log_path.parent.mkdir(parents=True, exist_ok=True)
            log: IO[bytes] = child.log_path.open("wb")
            try:
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

    def dead(self) -> tuple[Child, int] | None:
        """The first child that has exited, with its exit status."""
        for child in self.children:
            proc = self.procs.get(child.name)
            if proc is not None and proc.poll() is not None:
                return child, proc.returncode
        return None

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM to every child still running, up to ``grace`` seconds, then SIGKILL."""
        alive = {name: p for name, p in self.procs.items() if p.poll() is None}
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
    ready: set[str] = set()
    engines: list[JSON] = []
    deadline = time.monotonic() + timeout
    while True:
        dead = supervisor.dead()
        if dead is not None:
            child, code = dead
            raise LaunchError(
                f"{child.name} exited with code {code} while starting; "
                f"last lines of {child.log_path}:",
                tail(child.log_path),
            )
        try:
            client.get("/readyz")
            answered = True
            listed = client.get("/api/v1/engines").get("engines")
            engines = listed if isinstance(listed, list) else []
            ready = _ready_engines(layout, engines)
            if len(ready) >= wanted:
                return
        except (Unreachable, ApiError):
            pass
        if time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    if not answered:
        child = layout.orchestrator
        what = f"the orchestrator did not answer {layout.http_url}/readyz"
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


def banner(layout: Layout, *, server: str, token_set: bool, out: TextIO) -> None:
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
        extra = f"   (metrics http://127.0.0.1:{metrics}/metrics)" if metrics else ""
        lines.append(f"  {child.name:<10} {address}{extra}")
    lines += [
        f"  state      {layout.state_db}",
        f"  logs       {layout.log_dir}/",
        "",
        "Try:",
    ]
    if server.rstrip("/") != layout.http_url:
        lines.append(f"  export DAGCTL_SERVER={layout.http_url}")
    auth = ' -H "Authorization: Bearer $API_TOKEN"' if token_set else ""
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
) -> int:
    """Start, wait until ready, register the examples, then supervise until stopped."""
    try:
        layout = plan(environ, engines=engines, python=python, base_dir=cwd)
    except LaunchError as exc:
        err.write(f"dagctl: {exc}\n")
        return 2
    for name, port in (("HTTP_PORT", layout.http_port), ("GRPC_PORT", layout.grpc_port)):
        if port_in_use(port):
            err.write(
                f"dagctl: port {port} ({name}) is already in use: is another dagctl up "
                f"running? Set {name} to use another port\n"
            )
            return 1
    stop = stop or threading.Event()
    supervisor = Supervisor(layout.children, cwd, out)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main else None
    try:
        out.write(
            f"Starting the orchestrator and {engines} engine{'s' if engines != 1 else ''} "
            f"(logs in {layout.log_dir}/) ...\n"
        )
        out.flush()
        supervisor.start()
        client = Client(layout.http_url, token, timeout=5.0)
        wait_ready(layout, supervisor, client, start_timeout)
        if examples:
            register_examples(client, find_examples(cwd), out)
        banner(layout, server=server, token_set=bool(environ.get("API_TOKEN")), out=out)
        while not stop.is_set():
            dead = supervisor.dead()
            if dead is not None:
                child, code = dead
                err.write(
                    f"dagctl: {child.name} exited unexpectedly with code {code}; "
                    f"last lines of {child.log_path}:\n{_indent(tail(child.log_path))}\n"
                )
                out.write("Stopping the others ...\n")
                supervisor.stop()
                return 1
            stop.wait(0.5)
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
