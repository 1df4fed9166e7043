"""The services as the benchmarks start them: real processes on free loopback ports, an
orchestrator with static discovery of its engines and a ``STATE_DB`` in a temporary directory.

Imported by the scripts beside it (``bench/`` is on their ``sys.path`` when run as scripts).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _serving(log: Path) -> dict[str, Any] | None:
    """A service's ``serving`` log line (with its ports), once it has written one."""
    if not log.exists():
        return None
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"serving"' in line:
            record: dict[str, Any] = json.loads(line)
            if record.get("event") == "serving":
                return record
    return None


def start(
    args: list[str], env: dict[str, str], log: Path, procs: list[subprocess.Popen[bytes]]
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start ``python ARGS`` and wait for its ``serving`` line; it joins ``procs`` at once, so
    an interrupt meanwhile stops it too."""
    with log.open("wb") as out:
        # a session of its own: Ctrl-C reaches the script alone, which then stops the services
        # in order rather than racing their own signal handling
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    procs.append(proc)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        record = _serving(log)
        if record is not None:
            return proc, record
        if proc.poll() is not None:
            raise RuntimeError(f"{args} exited at start-up:\n{log.read_text()}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{args} did not start:\n{log.read_text()}")


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM starts each service's drain, a second one cuts it short, then SIGKILL."""
    for signum, wait in ((signal.SIGTERM, 10.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        alive = [p for p in procs if p.poll() is None]
        for proc in alive:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)
        deadline = time.monotonic() + wait
        for proc in alive:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))


def read_proc(pid: int) -> tuple[float, float, int, int]:
    """VmRSS and VmHWM in MB, open file descriptors and threads of a process, from /proc
    (Linux)."""
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        status[key] = value.strip()
    rss_kb = int(status["VmRSS"].split()[0])
    hwm_kb = int(status["VmHWM"].split()[0])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss_kb / 1024, hwm_kb / 1024, fds, int(status["Threads"])


@dataclass(frozen=True)
class System:
    url: str
    """The orchestrator's HTTP root."""
    grpc_target: str
    """The orchestrator's gRPC address."""
    named: dict[str, subprocess.Popen[bytes]]
    """``orchestrator``, then ``engine-0``, ``engine-1``, ...: each service's process."""


def start_system(
    tmp: Path,
    procs: list[subprocess.Popen[bytes]],
    *,
    engines: int = 2,
    engine_env: dict[str, str] | None = None,
    orchestrator_env: dict[str, str] | None = None,
) -> System:
    """``engines`` engines, then an orchestrator that finds them by static discovery, with
    JSON logs in ``tmp``; each ``*_env`` adds to (or overrides) the settings given here."""
    addresses = []
    engine_procs: dict[str, subprocess.Popen[bytes]] = {}
    for i in range(engines):
        name = f"engine-{i}"
        proc, rec = start(
            ["-m", "engine"],
            {
                "ENGINE_ID": name,
                "HOST": "127.0.0.1",
                "PORT": "0",
                "LOG_FORMAT": "json",
                "LOG_LEVEL": "INFO",
                **(engine_env or {}),
            },
            tmp / f"{name}.log",
            procs,
        )
        engine_procs[name] = proc
        addresses.append(f"127.0.0.1:{rec['port']}")
    proc, rec = start(
        ["-m", "orchestrator"],
        {
            "HOST": "127.0.0.1",
            "HTTP_PORT": "0",
            "GRPC_PORT": "0",
            "STATE_DB": str(tmp / "state.db"),
            "DISCOVERY_MODE": "static",
            "ENGINE_ADDRESSES": ",".join(addresses),
            "LOG_FORMAT": "json",
            **(orchestrator_env or {}),
        },
        tmp / "orchestrator.log",
        procs,
    )
    return System(
        url=f"http://127.0.0.1:{rec['http_port']}",
        grpc_target=f"127.0.0.1:{rec['grpc_port']}",
        named={"orchestrator": proc, **engine_procs},
    )
