"""Lua syntax checks at registration, without loading Lua into the orchestrator.

The orchestrator never imports the Lua runtime (a script can only ever run on an engine), yet
a script with a syntax error must be refused when it is registered, not when it first runs.
So one ``python -m engine check-lua`` child process answers the checks over JSON lines; it is
started on first use and restarted if it dies.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading

log = logging.getLogger(__name__)


class LuaSyntaxChecker:
    def __init__(self, python: str = sys.executable) -> None:
        self._python = python
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def _process(self) -> subprocess.Popen[str]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                # -P: this package's engine, never one of that name in the current directory
                [self._python, "-P", "-m", "engine", "check-lua"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
        return self._proc

    def __call__(self, code: str, expression: bool) -> tuple[str, int | None] | None:
        """None when the code compiles, else (message, line). Thread-safe."""
        request = json.dumps({"code": code, "expression": expression}) + "\n"
        with self._lock:
            for attempt in (1, 2):
                proc = self._process()
                assert proc.stdin is not None and proc.stdout is not None
                try:
                    proc.stdin.write(request)
                    proc.stdin.flush()
                    line = proc.stdout.readline()
                except (BrokenPipeError, OSError):
                    line = ""
                if line:
                    answer = json.loads(line)
                    if answer.get("ok"):
                        return None
                    return str(answer.get("message")), answer.get("line")
                log.warning("the Lua syntax checker stopped (try %d); restarting it", attempt)
                self._proc = None
        return ("could not check Lua syntax: the checker process keeps failing", None)

    def close(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                assert self._proc.stdin is not None
                self._proc.stdin.close()
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout=5)
            if self._proc is not None and self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None
