"""``dagctl up`` started with a stop signal ignored (``nohup``, a background job of a script)
keeps ignoring it: a hang-up of the terminal it was started from does not stop the system."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ignoring_hangups() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what nohup does before it execs


def test_up_under_nohup_is_not_stopped_by_a_hang_up(tmp_path: Path) -> None:
    log = tmp_path / "up.out"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TLS_", "ENGINE_TLS_"))},
        "HTTP_PORT": str(free_port()),
        "GRPC_PORT": str(free_port()),
    }
    env.pop("STATE_DB", None)
    with log.open("w") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.dagctl", "up", "--no-examples", "--engines", "1"],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=ignoring_hangups,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while "Ctrl-C stops everything." not in log.read_text():
            assert up.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        up.send_signal(signal.SIGHUP)
        time.sleep(2)
        # before: up stopped its orchestrator and engines on the hang-up nohup was to keep off
        assert up.poll() is None, log.read_text()
        assert "Stopping" not in log.read_text()
        up.send_signal(signal.SIGTERM)  # not SIGINT, which a test run in the background ignores
        assert up.wait(60) == 0, log.read_text()
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait(10)
