"""Both services as real processes, as a container runs them: where they listen for each HOST,
what a SIGTERM during start-up does, what stderr holds when a port cannot be had, and what the
engine logs as it stops with health watchers connected."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.integration.conftest import (
    ROOT,
    EngineProcess,
    StartEngine,
    spawn_orchestrator,
    stop_process,
)
from tests.net import ipv6

pytestmark = pytest.mark.slow

WAIT = 60.0
"""Seconds a process gets to do what it must, before the test fails rather than hang."""


def clean_env(**env: str) -> dict[str, str]:
    """The test's environment without what would change how the services start or log."""
    keep = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HOST", "PORT", "GRPC_VERBOSITY", "METRICS_PORT", "API_TOKEN", "ENGINE_TOKEN")
    }
    return {**keep, "LOG_FORMAT": "json", **env}


def lines(raw: bytes) -> list[str]:
    return raw.decode("utf-8", "replace").splitlines()


def records(raw: bytes) -> list[dict[str, object]]:
    out = []
    for line in lines(raw):
        try:
            out.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a line of the log is not JSON: {line!r}\n{raw.decode()}")
    return out


# -- 1. where the orchestrator listens ----------------------------------------------------------


StartOrchestrator = Callable[[str], tuple[int, int]]
"""Start an orchestrator with this HOST ("": unset); its HTTP and gRPC ports."""


@pytest.fixture
def orchestrator_with_host(tmp_path: Path) -> Iterator[StartOrchestrator]:
    started: list[subprocess.Popen[bytes]] = []

    def start(host: str) -> tuple[int, int]:
        orch = spawn_orchestrator(
            tmp_path / "orchestrator.log",
            tmp_path / "state.db",
            [],
            HOST=host,  # "": unset, the default
            ENGINE_ADDRESSES="127.0.0.1:1",  # no engine: these tests need none
        )
        started.append(orch.proc)
        return orch.http_port, orch.grpc_port

    yield start
    for proc in started:
        stop_process(proc)


def health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=WAIT
        )
    return int(answer.status)


@ipv6
@pytest.mark.parametrize("host", ["", "::", "[::]", "0.0.0.0"])
def test_the_orchestrator_serves_http_and_grpc_over_ipv4_and_ipv6_on_every_interface(
    orchestrator_with_host: StartOrchestrator, host: str
) -> None:
    # before: the default (0.0.0.0) served HTTP over IPv4 only, so an IPv6 cluster's kubelet
    # could not probe /healthz; "::" stopped gRPC, "[::]" stopped HTTP
    http_port, grpc_port = orchestrator_with_host(host)
    for address in ("127.0.0.1", "[::1]"):
        with urllib.request.urlopen(f"http://{address}:{http_port}/healthz", timeout=WAIT) as r:
            assert r.status == 200, address
        assert health(f"{address}:{grpc_port}") == health_pb2.HealthCheckResponse.SERVING


@ipv6
def test_an_ipv6_address_serves_both_apis_there(
    orchestrator_with_host: StartOrchestrator,
) -> None:
    http_port, grpc_port = orchestrator_with_host("::1")
    with urllib.request.urlopen(f"http://[::1]:{http_port}/healthz", timeout=WAIT) as r:
        assert r.status == 200
    assert health(f"[::1]:{grpc_port}") == health_pb2.HealthCheckResponse.SERVING


# -- 2. a SIGTERM during start-up ---------------------------------------------------------------

# The service's start-up, with a SIGTERM sent to itself where the one a pod deleted at once
# would come: after the entry point's first lines, before the service's handlers are in place
# (reading the settings is the last step before them). No timing: it is always there.
SIGNALLED_START = """
import os, runpy, signal, sys
import {settings} as settings_module

read = settings_module.Settings.from_env.__func__

def signalled(cls, env):
    os.kill(os.getpid(), signal.SIGTERM)
    return read(cls, env)

settings_module.Settings.from_env = classmethod(signalled)
runpy.run_module("{service}", run_name="__main__")
"""


def start_signalled(service: str, settings: str, env: dict[str, str]) -> tuple[int, bytes]:
    done = subprocess.run(
        [sys.executable, "-c", SIGNALLED_START.format(service=service, settings=settings)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=WAIT,
    )
    return done.returncode, done.stdout + done.stderr


def test_an_engine_signalled_during_start_up_stops_at_once_and_cleanly() -> None:
    code, out = start_signalled(
        "engine", "engine.settings", clean_env(ENGINE_ID="early", HOST="127.0.0.1", PORT="0")
    )
    # before: killed by the signal (and as a container's PID 1, which ignores it, it served on
    # until SIGKILL)
    assert code == 0, out.decode()
    assert [r["message"] for r in records(out)] == [
        "SIGTERM received while starting: stopping without serving"
    ]


def test_an_orchestrator_signalled_during_start_up_stops_at_once_without_opening_the_store(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state.db"
    code, out = start_signalled(
        "orchestrator",
        "orchestrator.settings",
        clean_env(
            HOST="127.0.0.1",
            HTTP_PORT="0",
            GRPC_PORT="0",
            STATE_DB=str(state),
            DISCOVERY_MODE="static",
            ENGINE_ADDRESSES="127.0.0.1:1",
        ),
    )
    assert code == 0, out.decode()
    assert [r["message"] for r in records(out)] == [
        "SIGTERM received while starting: stopping without serving"
    ]
    assert not state.exists()


# -- 4. a port that cannot be had ---------------------------------------------------------------


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_an_engine_whose_port_is_taken_says_so_in_one_json_line(taken_port: int) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "engine"],
        cwd=ROOT,
        env=clean_env(ENGINE_ID="busy", HOST="127.0.0.1", PORT=str(taken_port)),
        capture_output=True,
        timeout=WAIT,
    )
    assert done.returncode == 1
    assert done.stdout == b""
    # before: gRPC's plain-text "E1130 ... add_port.cc:83] Failed to add port" line first, then
    # an error pointing to GRPC_VERBOSITY=debug for the reason
    assert records(done.stderr) == [
        {
            "time": records(done.stderr)[0]["time"],
            "level": "error",
            "logger": "engine.serving",
            "message": f"cannot listen on 127.0.0.1:{taken_port} (HOST, PORT): the port is in use"
            " (another process listens on it)",
        }
    ]


def test_an_orchestrator_whose_grpc_port_is_taken_says_so_in_json(
    taken_port: int, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator"],
        cwd=ROOT,
        env=clean_env(
            HOST="127.0.0.1",
            HTTP_PORT="0",
            GRPC_PORT=str(taken_port),
            STATE_DB=str(tmp_path / "state.db"),
            DISCOVERY_MODE="static",
            ENGINE_ADDRESSES="127.0.0.1:1",
        ),
        capture_output=True,
        timeout=WAIT,
    )
    assert done.returncode == 1
    errors = [r["message"] for r in records(done.stdout + done.stderr) if r["level"] == "error"]
    assert errors == [
        f"cannot listen on 127.0.0.1:{taken_port} (HOST, GRPC_PORT): the port is in use"
        " (another process listens on it)"
    ]


# -- 7. health watchers at the engine's stop ----------------------------------------------------


def test_an_engine_stopped_with_health_watchers_logs_no_error(start_engine: StartEngine) -> None:
    engine: EngineProcess = start_engine(DRAIN_GRACE="0")
    with grpc.insecure_channel(engine.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watches = [
            stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=WAIT)
            for service in ("", "dagengine.v1.Engine")
        ]
        for watch in watches:
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        engine.proc.send_signal(signal.SIGTERM)
        assert engine.wait(WAIT) == 0
        for watch in watches:
            # NOT_SERVING as the drain begins, then the stream ends with the server
            with pytest.raises(grpc.RpcError):
                for message in watch:
                    assert message.status == health_pb2.HealthCheckResponse.NOT_SERVING
    # before: per watcher, an ERROR ("Exception not handled by _handle_exceptions in servicer
    # method [/grpc.health.v1.Health/Watch]") and a plain CancelledError traceback on stderr
    log = engine.log()
    assert "Traceback" not in log, log
    assert [r for r in engine.log_records() if r["level"] == "error"] == []
