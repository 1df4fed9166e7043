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
    "LOG_FORMAT",
    "LOG_LEVEL",
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
