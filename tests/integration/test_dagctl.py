"""``dagctl up`` as a user runs it: processes started, watched, and stopped.

Most tests hand ``run_up`` a stand-in for the Python interpreter, a shell script that plays the
orchestrator (a tiny aiohttp server with ``/readyz``, ``/api/v1/engines`` and registration) and
the engines (shells that wait, or die on cue), so start-up failures can be staged. The last test
runs the real thing: ``python -m orchestrator`` and two ``python -m engine``, then ``dagctl run``.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.dagctl import main
from orchestrator.dagctl.launching import run_up

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WAIT = 60.0

FAKE_ORCHESTRATOR = """
import json, os, re, sys
from aiohttp import web

with open(os.path.join(os.environ["DUMP_DIR"], "orchestrator.json"), "w") as f:
    json.dump(dict(os.environ), f)
addresses = os.environ["ENGINE_ADDRESSES"].split(",")
print("fake orchestrator starting", flush=True)

async def readyz(request):
    return web.json_response({"status": "ready", "reason": "fake"})

async def engines(request):
    return web.json_response({"engines": [
        {"id": f"engine-{i}", "address": a, "state": "ready", "capacity": 10, "in_flight": 0}
        for i, a in enumerate(addresses)
    ]})

async def register(request):
    text = await request.text()
    wid = re.search(r"^id: *(\\S+)", text, re.M).group(1)
    version = re.search(r"^version: *(\\S+)", text, re.M).group(1)
    if wid == "broken":
        return web.json_response(
            {"error": {"code": "invalid_spec", "message": "1 problem", "details": {}}}, status=400
        )
    return web.json_response({"workflow": {"id": wid, "version": version}, "created": True},
                             status=201)

app = web.Application()
app.router.add_get("/readyz", readyz)
app.router.add_get("/api/v1/engines", engines)
app.router.add_post("/api/v1/workflows", register)
web.run_app(app, host="127.0.0.1", port=int(os.environ["HTTP_PORT"]), print=None)
"""

# $1 is -m, $2 the module; engines dump their environment and wait, or die on cue
FAKE_PYTHON = """#!/bin/sh
if [ "$2" = orchestrator ]; then
    [ -n "$ORCHESTRATOR_SILENT" ] && exec sleep 600
    exec {python} {script}
fi
env > "$DUMP_DIR/$ENGINE_ID.env"
if [ "$ENGINE_ID" = "$DIE_AT_START" ]; then
    echo "error: CAPACITY must be a whole number, got 'many'"
    exit 2
fi
while [ ! -f "$DUMP_DIR/die-$ENGINE_ID" ]; do sleep 0.05; done
echo "engine $ENGINE_ID: lost its mind"
exit 3
"""


@dataclass
class Up:
    thread: threading.Thread
    stop: threading.Event
    out: io.StringIO
    err: io.StringIO
    code: list[int]

    def wait_for(self, text: str) -> None:
        deadline = time.monotonic() + WAIT
        while text not in self.out.getvalue():
            if not self.thread.is_alive() or time.monotonic() > deadline:
                pytest.fail(f"never saw {text!r}:\n{self.out.getvalue()}\n{self.err.getvalue()}")
            time.sleep(0.05)

    def finish(self) -> int:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), self.out.getvalue()
        return self.code[0]


def start_up(cwd: Path, python: str, environ: dict[str, str], **kwargs: object) -> Up:
    stop = threading.Event()
    out, err = io.StringIO(), io.StringIO()
    code: list[int] = []

    def target() -> None:
        code.append(
            run_up(
                environ,
                server="http://127.0.0.1:8080",
                token=None,
                engines=int(kwargs.get("engines", 2)),  # type: ignore[call-overload]
                examples=bool(kwargs.get("examples", True)),
                python=python,
                cwd=cwd,
                out=out,
                err=err,
                stop=stop,
                start_timeout=float(kwargs.get("start_timeout", WAIT)),  # type: ignore[arg-type]
            )
        )

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return Up(thread, stop, out, err, code)


@pytest.fixture
def fake_python(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    script = tmp_path / "fake_orchestrator.py"
    script.write_text(FAKE_ORCHESTRATOR)
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON.format(python=sys.executable, script=script))
    python.chmod(0o755)
    dump = tmp_path / "dump"
    dump.mkdir()
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DUMP_DIR": str(dump),
        "HTTP_PORT": "0",
        "GRPC_PORT": "0",
        "SOMETHING_ELSE": "passed through",
    }
    yield str(python), environ


def env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_up_starts_registers_examples_reports_and_stops(
    tmp_path: Path, fake_python: tuple[str, dict[str, str]]
) -> None:
    python, environ = fake_python
    work = tmp_path / "work"
    (work / "examples").mkdir(parents=True)
    (work / "examples" / "one.yaml").write_text("id: one\nversion: 1.0.0\nnodes: []\n")
    (work / "examples" / "broken.yaml").write_text("id: broken\nversion: 1.0.0\n")
    up = start_up(work, python, {**environ, "CAPACITY": "4"}, engines=3)
    up.wait_for("Ctrl-C stops everything.")
    text = up.out.getvalue()
    assert "Examples registered: one@1.0.0" in text
    assert "could not register broken.yaml: invalid_spec: 1 problem" in text
    http = re.search(r"HTTP API   (http://127\.0\.0\.1:\d+)", text)
    assert http is not None
    assert f"export DAGCTL_SERVER={http.group(1)}" in text
    assert f"curl -X POST {http.group(1)}/trigger/hello" in text
    assert "dagctl run hello --input name=Ada --wait" in text
    for name in ("engine-0", "engine-1", "engine-2"):
        assert re.search(rf"  {name} +127\.0\.0\.1:\d+", text)
    # the environment each process got
    dump = Path(environ["DUMP_DIR"])
    orch = json.loads((dump / "orchestrator.json").read_text())
    assert orch["DISCOVERY_MODE"] == "static"
    assert orch["STATE_DB"] == ".dagengine/state.db"
    assert orch["ENGINE_HEALTH_CHECK_INTERVAL"] == "2"
    assert orch["SOMETHING_ELSE"] == "passed through"
    assert http.group(1).endswith(":" + orch["HTTP_PORT"])
    ports = []
    for i in range(3):
        engine = env_file(dump / f"engine-{i}.env")
        assert engine["ENGINE_ID"] == f"engine-{i}" and engine["HOST"] == "127.0.0.1"
        assert engine["CAPACITY"] == "4" and engine["SOMETHING_ELSE"] == "passed through"
        ports.append(engine["PORT"])
    assert orch["ENGINE_ADDRESSES"] == ",".join(f"127.0.0.1:{p}" for p in ports)
    assert (
        (work / ".dagengine" / "logs" / "orchestrator.log")
        .read_text()
        .startswith("fake orchestrator starting")
    )
    up.stop.set()
    assert up.finish() == 0
    stopped = up.out.getvalue().split("Stopping ...", 1)[1]
    for name in ("orchestrator", "engine-0", "engine-1", "engine-2"):
        assert f"  {name} stopped (exit" in stopped


def test_up_reports_an_engine_that_dies_at_start_with_its_log(
    tmp_path: Path, fake_python: tuple[str, dict[str, str]]
) -> None:
    python, environ = fake_python
    up = start_up(tmp_path, python, {**environ, "DIE_AT_START": "engine-1"})
    assert up.finish() == 1
    log = tmp_path / ".dagengine" / "logs" / "engine-1.log"
    assert up.err.getvalue() == (
        f"dagctl: engine-1 exited with code 2 while starting; last lines of {log}:\n"
        "  | error: CAPACITY must be a whole number, got 'many'\n"
    )
    assert "  orchestrator stopped (exit" in up.out.getvalue()
    assert "  engine-0 stopped (exit" in up.out.getvalue()


def test_up_stops_everything_when_an_engine_dies_later(
    tmp_path: Path, fake_python: tuple[str, dict[str, str]]
) -> None:
    python, environ = fake_python
    up = start_up(tmp_path, python, environ, examples=False)
    up.wait_for("Ctrl-C stops everything.")
    assert "Examples registered" not in up.out.getvalue()
    (Path(environ["DUMP_DIR"]) / "die-engine-0").touch()
    assert up.finish() == 1
    log = tmp_path / ".dagengine" / "logs" / "engine-0.log"
    assert up.err.getvalue() == (
        f"dagctl: engine-0 exited unexpectedly with code 3; last lines of {log}:\n"
        "  | engine engine-0: lost its mind\n"
    )
    assert "Stopping the others ..." in up.out.getvalue()
    assert "  orchestrator stopped (exit" in up.out.getvalue()


def test_up_gives_up_on_a_silent_orchestrator_with_its_log(
    tmp_path: Path, fake_python: tuple[str, dict[str, str]]
) -> None:
    python, environ = fake_python
    up = start_up(tmp_path, python, {**environ, "ORCHESTRATOR_SILENT": "1"}, start_timeout=1)
    assert up.finish() == 1
    err = up.err.getvalue()
    log = tmp_path / ".dagengine" / "logs" / "orchestrator.log"
    assert re.fullmatch(
        r"dagctl: timed out after 1 s: the orchestrator did not answer "
        rf"http://127\.0\.0\.1:\d+/readyz; last lines of {re.escape(str(log))}:\n"
        r"  \| \(the log is empty\)\n",
        err,
    ), err


def test_up_refuses_a_port_in_use(tmp_path: Path, fake_python: tuple[str, dict[str, str]]) -> None:
    python, environ = fake_python
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        up = start_up(tmp_path, python, {**environ, "HTTP_PORT": str(port)})
        assert up.finish() == 1
    assert up.err.getvalue() == (
        f"dagctl: port {port} (HTTP_PORT) is already in use: is another dagctl up running? "
        "Set HTTP_PORT to use another port\n"
    )
    assert not (tmp_path / ".dagengine").exists()


def test_up_runs_the_real_services_and_dagctl_drives_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HOST", "PORT", "ENGINE_ID", "STATE_DB", "API_TOKEN", "METRICS_PORT")
    }
    environ.update(HTTP_PORT="0", GRPC_PORT="0", LUA_WORKERS="1")
    (tmp_path / "examples").mkdir()
    for name in (
        "hello.yaml",
        "failure-isolation.yaml",
        "report.yaml",
        "grade.yaml",
        "digest.yaml",
    ):
        (tmp_path / "examples" / name).write_text((ROOT / "examples" / name).read_text())
    up = start_up(tmp_path, sys.executable, environ)
    try:
        up.wait_for("Ctrl-C stops everything.")
        text = up.out.getvalue()
        assert (
            "Examples registered: digest@1.0.0, failure-isolation@1.0.0, grade@1.0.0,"
            " hello@1.0.0, report@1.0.0" in text
        )
        found = re.search(r"HTTP API   (http://127\.0\.0\.1:\d+)", text)
        assert found is not None
        server = {"DAGCTL_SERVER": found.group(1)}
        capsys.readouterr()
        assert main(["run", "hello", "--input", "name=Ada", "--wait", "-o", "json"], server) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["outputs"] == {"greet": {"message": "Hello, Ada!"}}
        # the sub-workflow example: four children of grade, outputs in item order
        assert main(["run", "report", "--wait", "-o", "json"], server) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["outputs"] == {"summary": {"letters": "A C D B"}}
        assert len(doc["children"]) == 4
        # the trigger example: its HTTP path starts a run, its schedule is listed
        answer = urllib.request.urlopen(
            urllib.request.Request(
                f"{found.group(1)}/hooks/digest",
                data=json.dumps({"inputs": {"topic": "releases"}, "wait": True}).encode(),
                headers={"Content-Type": "application/json"},
            ),
            timeout=30,
        )
        hooked = json.loads(answer.read())
        assert hooked["outputs"] == {"compose": {"text": "digest of releases, started by http"}}
        assert main(["get", "triggers", "-o", "json"], server) == 0
        listed = json.loads(capsys.readouterr().out)["triggers"]
        cron = next(t for t in listed if t["workflow_id"] == "digest" and t["type"] == "cron")
        assert cron["timezone"] == "Europe/Berlin" and len(cron["next_fire_times"]) == 3
        assert main(["run", "failure-isolation", "--wait"], server) == 1
        assert " partial in " in capsys.readouterr().out
        assert main(["get", "engines"], server) == 0
        rows = [line.split()[:3] for line in capsys.readouterr().out.splitlines()[1:]]
        assert [(r[0], r[2]) for r in rows] == [("engine-0", "ready"), ("engine-1", "ready")]
    finally:
        up.stop.set()
        code = up.finish()
    assert code == 0
    assert (tmp_path / ".dagengine" / "state.db").exists()
    for name in ("orchestrator", "engine-0", "engine-1"):
        assert f"  {name} stopped (exit 0)" in up.out.getvalue()
