"""Real engine processes on loopback: ``python -m engine`` started as a user (or Kubernetes) would.

Each engine binds 127.0.0.1 with PORT=0 and reports the port it got in its JSON "serving" log
line, so there is no race for a free port. Logs go to a file under the test's tmp_path and are
shown when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0
ENGINE_VARIABLES = (
    "ENGINE_ID",
    "HOST",
    "PORT",
    "CAPACITY",
    "METRICS_PORT",
    "DRAIN_GRACE",
    "LUA_WORKERS",
    "LUA_INLINE",
    "LOG_FORMAT",
    "LOG_LEVEL",
    "ENGINE_TOKEN",  # one exported in the shell must not make direct calls to engines fail
)


@dataclass
class EngineProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_records(self) -> list[dict[str, object]]:
        records = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
        return records

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout)


def spawn_engine(log_path: Path, *args: str, **env: str) -> EngineProcess:
    """Start ``python -m engine [args]`` with ``env`` on top of a clean engine environment."""
    base = {k: v for k, v in os.environ.items() if k not in ENGINE_VARIABLES}
    full = {
        **base,
        "ENGINE_ID": "test-engine",
        "HOST": "127.0.0.1",
        "PORT": "0",
        "LOG_FORMAT": "json",
        "LUA_WORKERS": "2",
        **env,
    }
    out = log_path.open("wb")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", *args],
            cwd=ROOT,
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    finally:
        out.close()
    return EngineProcess(proc, log_path, env=full)


def wait_until_serving(engine: EngineProcess) -> EngineProcess:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        for record in engine.log_records():
            if record.get("event") == "serving":
                engine.port = int(record["port"])  # type: ignore[call-overload]
                return engine
        if engine.proc.poll() is not None:
            pytest.fail(f"engine exited with {engine.proc.returncode} at start-up:\n{engine.log()}")
        time.sleep(0.05)
    engine.proc.kill()
    pytest.fail(f"engine did not start serving within {START_TIMEOUT}s:\n{engine.log()}")


class StartEngine(Protocol):
    def __call__(self, *, wait: bool = True, **env: str) -> EngineProcess: ...


@pytest.fixture
def start_engine(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[StartEngine]:
    """Start engines with the given environment; each is killed at the end if still running."""
    started: list[EngineProcess] = []

    def start(*, wait: bool = True, **env: str) -> EngineProcess:
        engine = spawn_engine(tmp_path / f"engine-{len(started)}.log", **env)
        started.append(engine)
        return wait_until_serving(engine) if wait else engine

    yield start
    for engine in started:
        if engine.proc.poll() is None:
            engine.proc.kill()
            engine.proc.wait(30)
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for engine in started:
            sys.stderr.write(f"--- log of engine on port {engine.port}:\n{engine.log()}\n")


@pytest.fixture(scope="module")
def shared_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    """One engine for the tests that need no special settings; roomy enough to run them all."""
    log_path = tmp_path_factory.mktemp("engine") / "engine.log"
    engine = wait_until_serving(spawn_engine(log_path, CAPACITY="150"))
    yield engine
    engine.terminate()
    try:
        engine.wait(60)
    except subprocess.TimeoutExpired:
        engine.proc.kill()
        engine.proc.wait(30)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    setattr(item, "rep_" + report.when, report)
    return report


# -- the orchestrator ---------------------------------------------------------------------------

ORCHESTRATOR_VARIABLES = (
    "HOST",
    "HTTP_PORT",
    "GRPC_PORT",
    "API_TOKEN",
    "ENGINE_TOKEN",
    "ENGINE_TLS_CA_FILE",
    "ENGINE_TLS_SERVER_NAME",
    "ENGINE_TLS_CERT_FILE",
    "ENGINE_TLS_KEY_FILE",
    "STATE_DB",
    "DISCOVERY_MODE",
    "ENGINE_ADDRESSES",
    "TRANSPORT_TYPE",
    "LOAD_BALANCER_TYPE",
    "ENGINE_HEALTH_CHECK_INTERVAL",
    "ENGINE_DISCOVERY_INTERVAL",
    "QUEUE_LIMIT",
    "MAX_BODY_BYTES",
    "LOG_FORMAT",
    "LOG_LEVEL",
)


@dataclass
class OrchestratorProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]
    http_port: int = 0
    grpc_port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def spawn_orchestrator(
    log_path: Path, state_db: Path, engines: list[EngineProcess], **env: str
) -> OrchestratorProcess:
    base = {k: v for k, v in os.environ.items() if k not in ORCHESTRATOR_VARIABLES}
    full = {
        **base,
        "HOST": "127.0.0.1",
        "HTTP_PORT": "0",
        "GRPC_PORT": "0",
        "STATE_DB": str(state_db),
        "DISCOVERY_MODE": "static",
        "ENGINE_ADDRESSES": ",".join(e.address for e in engines),
        "ENGINE_HEALTH_CHECK_INTERVAL": "0.5",
        "LOG_FORMAT": "json",
        **env,
    }
    # the log is appended across restarts: wait for a serving line newer than those before
    before = len(_serving_lines(log_path))
    out = log_path.open("ab")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator"],
            cwd=ROOT,
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    finally:
        out.close()
    orch = OrchestratorProcess(proc, log_path, full)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        lines = _serving_lines(log_path)
        if len(lines) > before:
            orch.http_port = int(lines[-1]["http_port"])  # type: ignore[call-overload]
            orch.grpc_port = int(lines[-1]["grpc_port"])  # type: ignore[call-overload]
            return orch
        if proc.poll() is not None:
            pytest.fail(f"orchestrator exited with {proc.returncode} at start-up:\n{orch.log()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"orchestrator did not start serving within {START_TIMEOUT}s:\n{orch.log()}")


def refused_orchestrator(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m orchestrator`` with ``env`` on top of settings that would serve (its state
    database at tmp_path/state.db, plain-text logs, no TLS setting from this process), for one
    that must refuse ``env`` and stop at start: run to its end."""
    base = {k: v for k, v in os.environ.items() if "TLS_" not in k}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator"],
        env={
            **base,
            "HOST": "127.0.0.1",
            "HTTP_PORT": "0",
            "GRPC_PORT": "0",
            "STATE_DB": str(tmp_path / "state.db"),
            "DISCOVERY_MODE": "static",
            "ENGINE_ADDRESSES": "127.0.0.1:1",
            "LOG_FORMAT": "plain",
            **env,
        },
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _serving_lines(log_path: Path) -> list[dict[str, object]]:
    if not log_path.exists():
        return []
    out = []
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("{") and '"serving"' in line:
            record = json.loads(line)
            if record.get("event") == "serving":
                out.append(record)
    return out


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


@dataclass
class Cluster:
    """An orchestrator and its engines, all real processes on loopback."""

    orchestrator: OrchestratorProcess
    engines: list[EngineProcess]
    tmp: Path

    @property
    def url(self) -> str:
        return self.orchestrator.url

    def restart_orchestrator(self, **env: str) -> OrchestratorProcess:
        old = self.orchestrator
        self.orchestrator = spawn_orchestrator(
            old.log_path, Path(old.env["STATE_DB"]), self.engines, **{**_own(old.env), **env}
        )
        return self.orchestrator

    def logs(self) -> str:
        parts = [f"--- orchestrator:\n{self.orchestrator.log()}"]
        parts += [f"--- engine {e.env.get('ENGINE_ID')}:\n{e.log()}" for e in self.engines]
        return "\n".join(parts)


def _own(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k in ORCHESTRATOR_VARIABLES}


class StartCluster(Protocol):
    def __call__(
        self, *, engines: int = 2, engine_env: dict[str, str] | None = None, **env: str
    ) -> Cluster: ...


@pytest.fixture
def start_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[StartCluster]:
    clusters: list[Cluster] = []

    def start(*, engines: int = 2, engine_env: dict[str, str] | None = None, **env: str) -> Cluster:
        n = len(clusters)
        procs = [
            wait_until_serving(
                spawn_engine(
                    tmp_path / f"c{n}-engine-{i}.log",
                    **{"ENGINE_ID": f"engine-{i}", "DRAIN_GRACE": "2", **(engine_env or {})},
                )
            )
            for i in range(engines)
        ]
        orch = spawn_orchestrator(
            tmp_path / f"c{n}-orchestrator.log", tmp_path / f"c{n}-state.db", procs, **env
        )
        cluster = Cluster(orch, procs, tmp_path)
        clusters.append(cluster)
        return cluster

    yield start
    for cluster in clusters:
        for proc in [cluster.orchestrator.proc, *(e.proc for e in cluster.engines)]:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for cluster in clusters:
            sys.stderr.write(cluster.logs() + "\n")


@contextmanager
def running_cluster(
    tmp: Path, *, engines: int = 2, engine_env: dict[str, str] | None = None, **env: str
) -> Iterator[Cluster]:
    """An orchestrator and its engines for a module's tests, stopped when it is done."""
    procs = [
        wait_until_serving(
            spawn_engine(tmp / f"engine-{i}.log", ENGINE_ID=f"engine-{i}", **(engine_env or {}))
        )
        for i in range(engines)
    ]
    orch = spawn_orchestrator(tmp / "orchestrator.log", tmp / "state.db", procs, **env)
    try:
        yield Cluster(orch, procs, tmp)
    finally:
        stop_process(orch.proc)
        for engine in procs:
            stop_process(engine.proc)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One orchestrator with two engines for the tests that leave them as they found them."""
    with running_cluster(
        tmp_path_factory.mktemp("cluster"), engine_env={"CAPACITY": "50"}, API_TOKEN="s3cret"
    ) as found:
        yield found
