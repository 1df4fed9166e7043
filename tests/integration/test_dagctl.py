"""``dagctl up`` as a user runs it: processes started, watched, restarted, and stopped.

Most tests hand ``run_up`` a stand-in for the Python interpreter, a shell script that plays the
orchestrator (a tiny aiohttp server with ``/readyz``, ``/api/v1/engines`` and registration, that
dies on cue) and the engines (listeners on their port that die on cue, or at once), so failures
can be staged. The last tests run the real thing: ``python -m orchestrator`` and two
``python -m engine``, then ``dagctl run``, and an engine killed with SIGKILL under them.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.dagctl import main
from orchestrator.dagctl.launching import RestartPolicy, run_up
from tests.integration.api import first_pause_last
from tests.integration.fake_up import stand_in_python

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WAIT = 60.0

FAKE_ORCHESTRATOR = """
import asyncio, json, os, re, socket, sys
from aiohttp import web

with open(os.path.join(os.environ["DUMP_DIR"], "orchestrator.json"), "w") as f:
    json.dump(dict(os.environ), f)
addresses = os.environ["ENGINE_ADDRESSES"].split(",")
print("fake orchestrator starting", flush=True)

async def readyz(request):
    return web.json_response({"status": "ready", "reason": "fake"})

def state(address):
    host, port = address.rsplit(":", 1)
    with socket.socket() as probe:
        return "ready" if probe.connect_ex((host, int(port))) == 0 else "unhealthy"

async def engines(request):
    return web.json_response({"engines": [
        {"id": f"engine-{i}", "address": a, "state": state(a), "capacity": 10, "in_flight": 0}
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

async def die_on_cue(app):
    async def watch():
        while not os.path.exists(os.path.join(os.environ["DUMP_DIR"], "die-orchestrator")):
            await asyncio.sleep(0.05)
        print("fake orchestrator: lost its store", flush=True)
        os._exit(4)
    app["watch"] = asyncio.ensure_future(watch())

app = web.Application()
app.on_startup.append(die_on_cue)
app.router.add_get("/readyz", readyz)
app.router.add_get("/api/v1/engines", engines)
app.router.add_post("/api/v1/workflows", register)
web.run_app(app, host="127.0.0.1", port=int(os.environ["HTTP_PORT"]), print=None)
"""

# an engine that listens on its port (which is what ready means to dagctl) until it is told to
# die: it takes the cue away with it, so the engine started in its place stays up
FAKE_ENGINE = """
import os, socket, sys, time

name = os.environ["ENGINE_ID"]
cue = os.path.join(os.environ["DUMP_DIR"], "die-" + name)
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", int(os.environ["PORT"])))
listener.listen()
print(f"fake {name} listening", flush=True)
while not os.path.exists(cue):
    time.sleep(0.05)
os.remove(cue)
print(f"engine {name}: lost its mind", flush=True)
sys.exit(3)
"""

# $1 is -m, $2 the module; each engine start appends its environment to a file of its own
FAKE_PYTHON = """#!/bin/sh
if [ "$2" = orchestrator ]; then
    [ -n "$ORCHESTRATOR_SILENT" ] && exec sleep 600
    exec {python} {orchestrator}
fi
{{ env; echo "-- end of a start --"; }} >> "$DUMP_DIR/$ENGINE_ID.env"
if [ "$ENGINE_ID" = "$DIE_AT_START" ]; then
    echo "$DIE_MESSAGE"
    exit "$DIE_CODE"
fi
exec {python} {engine}
"""
FAST = RestartPolicy(first_delay=0.05, max_delay=0.2)


@dataclass
class Up:
    thread: threading.Thread
    stop: threading.Event
    out: io.StringIO
    err: io.StringIO
    code: list[int]

    def wait_for(self, text: str, *, err: bool = False) -> None:
        """Until ``text`` is in dagctl's stdout (or stderr), while it runs."""
        stream = self.err if err else self.out
        deadline = time.monotonic() + WAIT
        while text not in stream.getvalue():
            if not self.thread.is_alive() or time.monotonic() > deadline:
                pytest.fail(f"never saw {text!r}:\n{self.out.getvalue()}\n{self.err.getvalue()}")
            time.sleep(0.05)

    def finish(self) -> int:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), self.out.getvalue()
        return self.code[0]


def start_up(cwd: Path, python: str, environ: dict[str, str], **kwargs: object) -> Up:
    """``run_up`` in a thread; ``terminal=True`` writes its out and err to one stream, as a
    terminal shows them (``Up.out``, and ``Up.err`` too)."""
    stop = threading.Event()
    out = io.StringIO()
    err = out if kwargs.get("terminal") else io.StringIO()
    code: list[int] = []

    def target() -> None:
        code.append(
            run_up(
                environ,
                server="http://127.0.0.1:8080",
                token=kwargs.get("token"),  # type: ignore[arg-type]
                engines=int(kwargs.get("engines", 2)),  # type: ignore[call-overload]
                examples=bool(kwargs.get("examples", True)),
                python=python,
                cwd=cwd,
                out=out,
                err=err,
                stop=stop,
                start_timeout=float(kwargs.get("start_timeout", WAIT)),  # type: ignore[arg-type]
                restart=kwargs.get("restart", FAST),  # type: ignore[arg-type]
            )
        )

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return Up(thread, stop, out, err, code)


@pytest.fixture
def fake_python(tmp_path: Path) -> tuple[str, dict[str, str]]:
    python, environ = stand_in_python(
        tmp_path, FAKE_PYTHON, orchestrator=FAKE_ORCHESTRATOR, engine=FAKE_ENGINE
    )
    return python, {**environ, "SOMETHING_ELSE": "passed through"}


def env_files(path: Path) -> list[dict[str, str]]:
    """The environment of each start of one fake engine, in order."""
    starts = path.read_text().split("-- end of a start --\n")[:-1]
    return [dict(line.split("=", 1) for line in s.splitlines() if "=" in line) for s in starts]


def env_file(path: Path) -> dict[str, str]:
    (only,) = env_files(path)
    return only


def test_up_starts_registers_examples_reports_and_stops(
    tmp_path: Path, fake_python: tuple[str, dict[str, str]]
) -> None:
    python, environ = fake_python
    work = tmp_path / "work"
    (work / "examples").mkdir(parents=True)
    (work / "examples" / "one.yaml").write_text("id: hello\nversion: 1.0.0\nnodes: []\n")
    (work / "examples" / "broken.yaml").write_text("id: broken\nversion: 1.0.0\n")
    up = start_up(work, python, {**environ, "CAPACITY": "4"}, engines=3)
    up.wait_for("Ctrl-C stops everything.")
    text = up.out.getvalue()
    assert "Examples registered: hello@1.0.0" in text
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
    assert orch["PYTHONSAFEPATH"] == "1"  # ``-m orchestrator`` is ours, not one in cwd
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


def up_with_engine_1_failing_at_start(
    tmp_path: Path, fake_python: tuple[str, dict[str, str]], code: int, message: str
) -> tuple[Up, Path, dict[str, str]]:
    """``up`` run to its end while engine-1 prints ``message`` and exits ``code`` at every
    start; with engine-1's log and the environment the fake processes got."""
    python, environ = fake_python
    failing = {"DIE_AT_START": "engine-1", "DIE_CODE": str(code), "DIE_MESSAGE": message}
    up = start_up(tmp_path, python, {**environ, **failing})
    assert up.finish() == (2 if code == 2 else 1)  # a refused setting is exit 2 everywhere
    return up, tmp_path / ".dagengine" / "logs" / "engine-1.log", environ


def test_up_restarts_an_engine_that_fails_at_start_then_gives_up_with_its_log(
    tmp_path: Path, fake_python: tuple[str, dict[str, str]]
) -> None:
    crash = "error: the engine could not load its Lua runtime"
    up, log, environ = up_with_engine_1_failing_at_start(tmp_path, fake_python, 3, crash)
    lines = up.err.getvalue().splitlines()
    # four starts again, each after a pause twice the last (0.05 s doubling to 0.2 s), then stop
    delays = ("0.05", "0.1", "0.2", "0.2")
    for n, (line, delay) in enumerate(zip(lines[:8:2], delays, strict=True), 1):
        assert re.fullmatch(
            rf"dagctl: engine-1 \(pid \d+\) exited with code 3 before it was ready "
            rf"\(failed start {n} of 5\); restarting it in {delay} s; "
            rf"last lines of {re.escape(str(log))}:",
            line,
        ), line
    assert lines[1:8:2] == [f"  | {crash}"] * 4
    assert lines[8:] == [
        f"dagctl: engine-1 exited with code 3 while starting, 5 times in a row; "
        f"last lines of {log}:",
        f"  | {crash}",
    ]
    # each start got the same environment; the log keeps every start, marked
    first, *again = env_files(Path(environ["DUMP_DIR"]) / "engine-1.env")
    assert len(again) == 4 and all(e == first for e in again)
    assert log.read_text().count("--- dagctl: restart ") == 4
    out = up.out.getvalue()
    assert "Stopping everything ...\n" in out
    assert "  orchestrator stopped (exit" in out and "  engine-0 stopped (exit" in out
    assert "engine-1" not in out


def test_up_stops_at_once_when_an_engine_refuses_its_settings(
    tmp_path: Path, fake_python: tuple[str, dict[str, str]]
) -> None:
    # python -m engine exits 2 on a bad setting: every start would be refused the same
    refusal = "error: CAPACITY must be a whole number, got 'many'"
    up, log, environ = up_with_engine_1_failing_at_start(tmp_path, fake_python, 2, refusal)
    assert up.err.getvalue().splitlines() == [
        f"dagctl: engine-1 exited with code 2 while starting; last lines of {log}:",
        f"  | {refusal}",
    ]
    assert len(env_files(Path(environ["DUMP_DIR"]) / "engine-1.env")) == 1


def test_up_restarts_an_engine_that_dies_later_on_the_same_port(
    tmp_path: Path, fake_python: tuple[str, dict[str, str]]
) -> None:
    python, environ = fake_python
    up = start_up(tmp_path, python, environ, examples=False)
    up.wait_for("Ctrl-C stops everything.")
    assert "Examples registered" not in up.out.getvalue()
    banner = re.search(r"  engine-0 +(127\.0\.0\.1:\d+) +pid (\d+)\n", up.out.getvalue())
    assert banner is not None
    address, pid = banner.groups()
    (Path(environ["DUMP_DIR"]) / "die-engine-0").touch()
    up.wait_for(f"engine-0 is serving again on {address} (pid ")
    log = tmp_path / ".dagengine" / "logs" / "engine-0.log"
    assert up.err.getvalue() == (
        f"dagctl: engine-0 (pid {pid}) exited with code 3; restarting it in 0.05 s; "
        f"last lines of {log}:\n"
        "  | fake engine-0 listening\n"
        "  | engine engine-0: lost its mind\n"
    )
    again = re.search(r"engine-0 is serving again on \S+ \(pid (\d+)\)", up.out.getvalue())
    assert again is not None and again.group(1) != pid
    before, after = env_files(Path(environ["DUMP_DIR"]) / "engine-0.env")
    assert after == before and after["PORT"] == address.rsplit(":", 1)[1]
    assert log.read_text() == (
        "fake engine-0 listening\n"
        "engine engine-0: lost its mind\n"
        "--- dagctl: restart 1 of engine-0 ---\n"
        "fake engine-0 listening\n"
    )
    assert up.thread.is_alive() and not up.code
    up.stop.set()
    assert up.finish() == 0
    stopped = up.out.getvalue().split("Stopping ...", 1)[1]
    for name in ("orchestrator", "engine-0", "engine-1"):
        assert f"  {name} stopped (exit" in stopped


def test_up_stops_cleanly_while_an_engine_waits_to_be_restarted(
    tmp_path: Path, fake_python: tuple[str, dict[str, str]]
) -> None:
    python, environ = fake_python
    hour = RestartPolicy(first_delay=3600)
    up = start_up(tmp_path, python, environ, examples=False, restart=hour)
    up.wait_for("Ctrl-C stops everything.")
    (Path(environ["DUMP_DIR"]) / "die-engine-1").touch()
    up.wait_for("exited with code 3; restarting it in 3600 s", err=True)
    up.stop.set()
    assert up.finish() == 0  # within WAIT: the hour's pause is not waited out
    stopped = up.out.getvalue().split("Stopping ...", 1)[1]
    assert "  orchestrator stopped (exit" in stopped and "  engine-0 stopped (exit" in stopped
    assert "  engine-1 not restarted (it was waiting to be)\n" in stopped
    assert len(env_files(Path(environ["DUMP_DIR"]) / "engine-1.env")) == 1


def test_up_keeps_the_logs_of_the_up_before(
    tmp_path: Path, fake_python: tuple[str, dict[str, str]]
) -> None:
    python, environ = fake_python
    logs = tmp_path / ".dagengine" / "logs"
    for n in range(2):
        if n:
            (logs / "engine-0.log").write_text("the last words of the first up\n")
        up = start_up(tmp_path, python, environ, examples=False)
        up.wait_for("Ctrl-C stops everything.")
        up.stop.set()
        assert up.finish() == 0
    assert (logs / "engine-0.log.1").read_text() == "the last words of the first up\n"
    assert "fake engine-0 listening" in (logs / "engine-0.log").read_text()
    assert not (logs / "engine-0.log.1.1").exists()


def test_up_stops_everything_when_the_orchestrator_dies(
    tmp_path: Path, fake_python: tuple[str, dict[str, str]]
) -> None:
    python, environ = fake_python
    up = start_up(tmp_path, python, environ, examples=False)
    up.wait_for("Ctrl-C stops everything.")
    (Path(environ["DUMP_DIR"]) / "die-orchestrator").touch()
    assert up.finish() == 1
    log = tmp_path / ".dagengine" / "logs" / "orchestrator.log"
    assert up.err.getvalue() == (
        f"dagctl: orchestrator exited unexpectedly with code 4; last lines of {log}:\n"
        "  | fake orchestrator starting\n"
        "  | fake orchestrator: lost its store\n"
    )
    stopped = up.out.getvalue().split("Stopping the others ...\n", 1)[1]
    assert stopped.splitlines() == [
        "  engine-0 stopped (exit -15)",
        "  engine-1 stopped (exit -15)",
    ]


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


def real_up_environ() -> dict[str, str]:
    """This process's environment for a real ``up``: its own ports, one Lua worker each."""
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HOST", "PORT", "ENGINE_ID", "STATE_DB", "API_TOKEN", "METRICS_PORT")
    }
    environ.update(HTTP_PORT="0", GRPC_PORT="0", LUA_WORKERS="1")
    return environ


def test_up_runs_the_real_services_and_dagctl_drives_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    environ = real_up_environ()
    (tmp_path / "examples").mkdir()
    for name in (
        "hello.yaml",
        "failure-isolation.yaml",
        "report.yaml",
        "grade.yaml",
        "digest.yaml",
    ):
        (tmp_path / "examples" / name).write_text((ROOT / "examples" / name).read_text())
    # a project of the user's own with packages of the same names: up's children, and the
    # orchestrator's Lua checker the examples go through, must run ours
    for package in ("engine", "orchestrator"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("raise SystemExit('not ours')\n")
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


def fetch(url: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def until(what: str, probe: Callable[[], Any]) -> Any:
    """``probe()`` again until it gives something true, for up to WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while not (found := probe()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)
    return found


def our_child(pid: int) -> bool:
    """Whether ``pid`` is a ``python -m engine`` this test process started (through run_up)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    parent = int(stat.rsplit(")", 1)[1].split()[1])
    return parent == os.getpid() and argv[1:3] == [b"-m", b"engine"]


def test_up_restarts_a_killed_real_engine_and_nothing_is_lost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    environ = real_up_environ()
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "hello.yaml").write_text(
        (ROOT / "examples" / "hello.yaml").read_text()
    )
    (tmp_path / "examples" / "nap.yaml").write_text(first_pause_last("nap", "5s"))
    up = start_up(tmp_path, sys.executable, environ, restart=RestartPolicy())
    try:
        up.wait_for("Ctrl-C stops everything.")
        text = up.out.getvalue()
        assert "Examples registered: hello@1.0.0, nap@1.0.0" in text
        found = re.search(r"HTTP API   (http://127\.0\.0\.1:\d+)", text)
        assert found is not None
        url = found.group(1)
        # a run in flight on the engine about to be killed, as when a user tries it out
        eid = fetch(f"{url}/api/v1/workflows/nap/executions", {"inputs": {}})["execution_id"]

        def execution(when: Callable[[Any], bool]) -> Any:
            doc = fetch(f"{url}/api/v1/executions/{eid}")
            return doc if when(doc) else None

        doc = until(
            "the nap to start",
            lambda: execution(lambda d: d["nodes"]["pause"]["status"] == "running"),
        )
        victim = doc["nodes"]["first"]["engine_id"]
        banner = re.search(rf"  {victim} +(127\.0\.0\.1:\d+) +pid (\d+)\n", text)
        assert banner is not None, text
        address, pid = banner.group(1), int(banner.group(2))
        assert our_child(pid)
        os.kill(pid, signal.SIGKILL)

        up.wait_for(
            f"dagctl: {victim} (pid {pid}) was killed by SIGKILL; restarting it in 0.5 s\n",
            err=True,
        )
        assert fetch(f"{url}/readyz")["status"] == "ready"  # the orchestrator goes on
        up.wait_for(f"{victim} is serving again on {address} (pid ")
        again = re.search(rf"{victim} is serving again on \S+ \(pid (\d+)\)", up.out.getvalue())
        assert again is not None and int(again.group(1)) != pid
        # the orchestrator finds it where it was, by the static list it was started with
        until(
            f"{victim} ready again",
            lambda: any(
                e["id"] == victim and e["address"] == address and e["state"] == "ready"
                for e in fetch(f"{url}/api/v1/engines")["engines"]
            ),
        )
        # the run that was on it finished elsewhere, from its checkpoint
        doc = until("the nap to end", lambda: execution(lambda d: bool(d["finished_at"])))
        assert doc["status"] == "succeeded", doc
        assert doc["outputs"] == {"last": {"done": 2}}
        events = fetch(f"{url}/api/v1/executions/{eid}/events")["events"]
        firsts = [e for e in events if e["type"] == "node.started" and e["node_id"] == "first"]
        assert len(firsts) == 1, "a node stored as done ran again"
        # and a run after it succeeds
        capsys.readouterr()
        server = {"DAGCTL_SERVER": url}
        assert main(["run", "hello", "--input", "name=Ada", "--wait", "-o", "json"], server) == 0
        assert json.loads(capsys.readouterr().out)["outputs"] == {
            "greet": {"message": "Hello, Ada!"}
        }
        assert up.thread.is_alive() and not up.code
        assert up.err.getvalue().count("restarting") == 1
    finally:
        up.stop.set()
        code = up.finish()
    assert code == 0
    for name in ("orchestrator", "engine-0", "engine-1"):
        assert f"  {name} stopped (exit 0)" in up.out.getvalue()
