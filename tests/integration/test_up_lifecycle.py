"""``dagctl up``'s local life cycle with real processes: however ``up`` ends (SIGHUP, SIGQUIT,
SIGKILL, a double Ctrl-C, a Ctrl-C after the pipe it wrote to closed), no child outlives it; a
second ``up`` leaves the first one's logs alone; a specific HOST is reached there; a restarted
engine is ready only when it listens itself; a failure is said last, with the exit status the
orchestrator and engines use.

Most tests run ``up`` (``run_up``, in a process of its own where signals matter) over a stand-in
for the Python interpreter, as tests/integration/test_dagctl.py does: a tiny orchestrator that
listens on its HOST, and engines that listen on their port, or, when something else has it,
stay alive without listening (an engine slow to come back).
"""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from orchestrator.dagctl import launching
from orchestrator.dagctl.launching import RestartPolicy, run_up
from tests.integration.fake_up import stand_in_python
from tests.integration.test_dagctl import ROOT, WAIT, Up, start_up

pytestmark = pytest.mark.slow

FAKE_ORCHESTRATOR = """
import json, os, re, socket
from aiohttp import web

if os.environ.get("ORCHESTRATOR_EXIT"):
    print("error: HTTP_PORT must be a port number, got 'x'", flush=True)
    raise SystemExit(int(os.environ["ORCHESTRATOR_EXIT"]))
addresses = os.environ["ENGINE_ADDRESSES"].split(",")
print("fake orchestrator starting", flush=True)

async def readyz(request):
    return web.json_response({"status": "ready"})

def state(address):
    host, port = address.rsplit(":", 1)
    with socket.socket() as probe:
        return "ready" if probe.connect_ex((host, int(port))) == 0 else "unhealthy"

async def engines(request):
    return web.json_response({"engines": [
        {"id": f"engine-{i}", "address": a, "state": state(a)} for i, a in enumerate(addresses)
    ]})

async def register(request):
    text = await request.text()
    wid = re.search(r"^id: *(\\S+)", text, re.M).group(1)
    if wid == "broken":
        problems = ["nodes: missing", "version: missing"]
        return web.json_response({"error": {"code": "invalid_spec", "message": "2 problems",
                                            "details": {"problems": problems}}}, status=400)
    return web.json_response({"workflow": {"id": wid, "version": "1.0.0"}}, status=201)

app = web.Application()
app.router.add_get("/readyz", readyz)
app.router.add_get("/api/v1/engines", engines)
app.router.add_post("/api/v1/workflows", register)
web.run_app(app, host=os.environ["HOST"].strip("[]"), port=int(os.environ["HTTP_PORT"]), print=None)
"""

FAKE_ENGINE = """
import os, signal, socket, sys, time

# as a real engine drains its runs on SIGTERM, this one takes a while to stop
signal.signal(signal.SIGTERM, lambda *_: (time.sleep(0.3), sys.exit(0)))
name = os.environ["ENGINE_ID"]
cue = os.path.join(os.environ["DUMP_DIR"], "die-" + name)
listener = socket.socket()
try:
    listener.bind(("127.0.0.1", int(os.environ["PORT"])))
    listener.listen()
    print(f"fake {name} listening", flush=True)
except OSError as exc:
    print(f"fake {name}: {exc}; waiting", flush=True)
while not os.path.exists(cue):
    time.sleep(0.05)
os.remove(cue)
sys.exit(3)
"""

FAKE_PYTHON = """#!/bin/sh
if [ "$2" = orchestrator ]; then
    exec {python} {orchestrator}
fi
if [ "$ENGINE_ID" = "$DIE_AT_START" ]; then
    echo "error: CAPACITY must be a whole number, got 'many'"
    exit 2
fi
exec {python} {engine}
"""

# run_up as `dagctl up` runs it: in the main thread of a process of its own, its handlers set,
# started as from a terminal. A test runner started in the background by a shell without job
# control has SIGINT and SIGQUIT ignored, which up (as nohup asks) would keep ignoring
HARNESS = """
import os, signal, sys
from pathlib import Path
from orchestrator.dagctl.launching import RestartPolicy, run_up
for stop in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTERM):
    signal.signal(stop, signal.SIG_DFL)
sys.exit(run_up(
    dict(os.environ), server="http://127.0.0.1:8080", token=None, engines=2, examples=False,
    python=sys.argv[1], cwd=Path.cwd(), out=sys.stdout, err=sys.stderr, start_timeout=60,
    restart=RestartPolicy(first_delay=0.05, max_delay=0.2),
))
"""
FAST = RestartPolicy(first_delay=0.05, max_delay=0.2)
STARTED = "Ctrl-C stops everything."  # the banner's last line


@pytest.fixture
def fake_python(tmp_path: Path) -> tuple[str, dict[str, str]]:
    return stand_in_python(
        tmp_path,
        FAKE_PYTHON,
        at=tmp_path / "bin" / "python",
        orchestrator=FAKE_ORCHESTRATOR,
        engine=FAKE_ENGINE,
    )


def alive(pid: int) -> bool:
    """Running: neither gone nor a zombie waiting for whoever took it in."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def pids_in_banner(text: str) -> list[int]:
    found = [int(p) for p in re.findall(r"^  (?:orchestrator|engine-\d) .*?pid (\d+)", text, re.M)]
    assert len(found) == 3, text
    return found


def children_of(parent: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


def gone_within(pids: list[int], seconds: float) -> list[int]:
    """Those of ``pids`` still running after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def spawn_up(
    cwd: Path, python: str, environ: dict[str, str], **streams: Any
) -> subprocess.Popen[bytes]:
    """``up`` in a process of its own (its own session, as from a terminal of its own), writing
    to ``streams`` (``stdout=``, ``stderr=``)."""
    return subprocess.Popen(
        [sys.executable, "-c", HARNESS, python],
        cwd=cwd,
        env={**environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        **streams,
    )


def its_three_children(up: subprocess.Popen[bytes]) -> list[int]:
    pids = children_of(up.pid)
    assert len(pids) == 3, pids
    return pids


def kill_what_is_left(up: subprocess.Popen[bytes], pids: list[int]) -> None:
    for pid in [up.pid, *pids]:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    up.wait(10)


class UpProcess:
    """``up`` in a process of its own, its output and errors in one file."""

    def __init__(self, cwd: Path, python: str, environ: dict[str, str]) -> None:
        self.out_path = cwd / "up.out"
        with self.out_path.open("wb") as out:
            self.proc = spawn_up(cwd, python, environ, stdout=out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.out_path.read_text()

    def wait_for(self, text: str) -> str:
        deadline = time.monotonic() + WAIT
        while text not in self.text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"never saw {text!r}:\n{self.text()}")
            time.sleep(0.05)
        return self.text()


@contextmanager
def up_in_a_process(
    cwd: Path, fake_python: tuple[str, dict[str, str]]
) -> Iterator[tuple[UpProcess, list[int]]]:
    """``up`` in a process of its own once it has started, with its three children; whatever
    is left of them is killed at the end."""
    up = UpProcess(cwd, *fake_python)
    pids: list[int] = []
    try:
        up.wait_for(STARTED)
        pids = its_three_children(up.proc)
        yield up, pids
    finally:
        kill_what_is_left(up.proc, pids)


@contextmanager
def serving_up(cwd: Path, python: str, environ: dict[str, str], **kwargs: object) -> Iterator[Up]:
    """``up`` in a thread once it has started; stopped at the end, which must go well."""
    up = start_up(cwd, python, environ, **kwargs)
    try:
        up.wait_for(STARTED)
        yield up
    finally:
        up.stop.set()
        assert up.finish() == 0, up.err.getvalue()


def up_once(cwd: Path, python: str, environ: dict[str, str]) -> tuple[int, str]:
    """``up`` with one engine, run to its end: its exit status and what it said on stderr."""
    out, err = io.StringIO(), io.StringIO()
    code = run_up(
        environ,
        server="http://127.0.0.1:8080",
        token=None,
        engines=1,
        examples=False,
        python=python,
        cwd=cwd,
        out=out,
        err=err,
    )
    return code, err.getvalue()


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGQUIT, signal.SIGKILL])
def test_no_child_outlives_up_however_it_is_ended(
    sig: signal.Signals, tmp_path: Path, fake_python: tuple[str, dict[str, str]]
) -> None:
    with up_in_a_process(tmp_path, fake_python) as (up, pids):
        os.kill(up.proc.pid, sig)
        assert up.proc.wait(WAIT) == (-sig if sig == signal.SIGKILL else 0), up.text()
        assert gone_within(pids, 10) == [], up.text()
        if sig != signal.SIGKILL:
            stopped = up.text().split("Stopping ...\n", 1)[1]
            assert "  orchestrator stopped (exit" in stopped, stopped


def test_the_next_up_names_an_orchestrator_left_behind(
    tmp_path: Path, fake_python: tuple[str, dict[str, str]]
) -> None:
    python, environ = fake_python
    # an orchestrator whose up was killed (before up had the kernel stop it): python -m
    # orchestrator in a session of its own, its parent gone, holding the state lock
    module = tmp_path / "left" / "orchestrator"
    module.mkdir(parents=True)
    state = tmp_path / ".dagengine" / "state.db"
    state.parent.mkdir()
    (module / "__main__.py").write_text(
        "import fcntl, os, time\n"
        f"fd = os.open({str(state) + '.lock'!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, f'{os.getpid()}\\n'.encode())\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n"
    )
    starter = subprocess.run(
        [
            sys.executable,
            "-c",
            "import subprocess, sys\n"
            "p = subprocess.Popen([sys.executable, '-m', 'orchestrator'], cwd=sys.argv[1],"
            " stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)\n"
            "p.stdout.readline()\n"
            "print(p.pid)\n",
            str(module.parent),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    orphan = int(starter.stdout)
    try:
        code, err = up_once(tmp_path, python, environ)
    finally:
        os.kill(orphan, signal.SIGKILL)
    assert code == 1
    assert err == (
        f"dagctl: .dagengine/state.db is in use by process {orphan}, an orchestrator left "
        f"behind by a dagctl up that was killed: kill {orphan} (it stops cleanly on SIGTERM), "
        "or set STATE_DB to use another state database\n"
    )


def test_up_stops_everything_when_the_pipe_it_wrote_to_closed_before_the_ctrl_c(
    tmp_path: Path, fake_python: tuple[str, dict[str, str]]
) -> None:
    # `dagctl up | tee up.log`, then Ctrl-C: the terminal interrupts tee too, which dies first
    python, environ = fake_python
    with (tmp_path / "up.err").open("wb") as errors:
        proc = spawn_up(tmp_path, python, environ, stdout=subprocess.PIPE, stderr=errors)
    assert proc.stdout is not None
    text = ""
    pids: list[int] = []
    try:
        while STARTED not in text:
            line = proc.stdout.readline().decode()
            assert line, text
            text += line
        pids = its_three_children(proc)
        proc.stdout.close()  # tee is gone
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(WAIT) == 0, (tmp_path / "up.err").read_text()
        assert gone_within(pids, 10) == []
        assert (tmp_path / "up.err").read_text() == ""  # no traceback
    finally:
        kill_what_is_left(proc, pids)


@pytest.mark.parametrize("gap", [0.001, 0.005])
def test_ctrl_c_again_and_again_leaves_no_child(
    gap: float, tmp_path: Path, fake_python: tuple[str, dict[str, str]]
) -> None:
    # a Ctrl-C held down, or hit twice a few ms apart: some land while the stop is set up
    with up_in_a_process(tmp_path, fake_python) as (up, pids):
        for _ in range(10):
            os.kill(up.proc.pid, signal.SIGINT)
            time.sleep(gap)
        up.proc.wait(WAIT)  # how it exits after its stop does not matter: a late Ctrl-C may
        assert gone_within(pids, 5) == [], up.text()


def test_a_second_up_with_a_state_database_of_its_own_leaves_the_first_ones_logs(
    tmp_path: Path, fake_python: tuple[str, dict[str, str]]
) -> None:
    python, environ = fake_python
    logs = tmp_path / ".dagengine" / "logs"
    with serving_up(tmp_path, python, environ, examples=False, restart=FAST):
        with serving_up(
            tmp_path, python, {**environ, "STATE_DB": "b.db"}, examples=False, restart=FAST
        ) as second:
            assert f"logs       {tmp_path / 'b.db.logs'}/" in second.out.getvalue()
        # one on the same state database, started while the first one's orchestrator had not
        # yet taken its lock (this stand-in never does): refused before it rotates anything
        third = start_up(tmp_path, python, environ, examples=False, restart=FAST)
        assert third.finish() == 1
        assert third.err.getvalue() == (
            f"dagctl: {logs} is in use by another dagctl up (process {os.getpid()}): stop it "
            "first, or set STATE_DB to use another state database (its logs go beside it)\n"
        )
        assert not list(logs.glob("*.log.1"))
        assert (logs / "engine-0.log").read_text() == "fake engine-0 listening\n"


def test_up_reaches_its_orchestrator_on_the_address_host_names(
    tmp_path: Path, fake_python: tuple[str, dict[str, str]]
) -> None:
    python, environ = fake_python
    with serving_up(tmp_path, python, {**environ, "HOST": "127.0.0.2"}, examples=False) as up:
        assert re.search(r"HTTP API   http://127\.0\.0\.2:\d+ ", up.out.getvalue())


def test_a_restarted_engine_is_not_serving_while_another_program_holds_its_port(
    tmp_path: Path, fake_python: tuple[str, dict[str, str]]
) -> None:
    python, environ = fake_python
    second = RestartPolicy(first_delay=1.0)
    with serving_up(tmp_path, python, environ, examples=False, restart=second) as up:
        found = re.search(r"  engine-0 +127\.0\.0\.1:(\d+)", up.out.getvalue())
        assert found is not None
        (Path(environ["DUMP_DIR"]) / "die-engine-0").touch()
        up.wait_for("engine-0 (pid", err=True)
        with socket.socket() as squatter:  # another program takes the port meanwhile
            squatter.bind(("127.0.0.1", int(found.group(1))))
            squatter.listen()
            log = tmp_path / ".dagengine" / "logs" / "engine-0.log"
            deadline = time.monotonic() + WAIT
            while "restart 1 of engine-0" not in log.read_text():
                assert time.monotonic() < deadline
                time.sleep(0.05)
            time.sleep(1.0)  # two of the looks up takes every 0.5 s
            assert "serving again" not in up.out.getvalue()


def test_up_where_it_cannot_write_says_so_in_one_line(
    tmp_path: Path, fake_python: tuple[str, dict[str, str]]
) -> None:
    python, environ = fake_python
    (tmp_path / ".dagengine").write_text("not a directory\n")  # as root, chmod would not do
    code, err = up_once(tmp_path, python, environ)
    assert code == 1
    assert err == (
        f"dagctl: cannot write the logs in {tmp_path / '.dagengine' / 'logs'}/: Not a directory\n"
    )


def test_up_shows_the_problems_of_an_example_it_cannot_register(
    tmp_path: Path, fake_python: tuple[str, dict[str, str]]
) -> None:
    python, environ = fake_python
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "broken.yaml").write_text("id: broken\n")
    with serving_up(tmp_path, python, environ, restart=FAST) as up:
        said = up.out.getvalue()
    assert (
        "  could not register broken.yaml: invalid_spec: 2 problems\n"
        "    - nodes: missing\n"
        "    - version: missing\n"
    ) in said
    # hello is offered only when it was registered (before: whenever examples were asked for)
    assert "run hello" not in said and "/trigger/hello" not in said
    assert "apply -f my-workflow.yaml" in said


def test_up_with_no_examples_to_find_says_so(
    tmp_path: Path, fake_python: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    python, environ = fake_python
    monkeypatch.setattr(launching, "find_examples", lambda cwd: [])  # an installed copy
    with serving_up(tmp_path, python, environ, restart=FAST) as up:
        said = up.out.getvalue()
    assert "No examples/ here or beside the package: none registered" in said
    assert "run hello" not in said and "apply -f my-workflow.yaml" in said


def test_up_says_its_orchestrator_was_killed_and_says_it_last(
    tmp_path: Path, fake_python: tuple[str, dict[str, str]]
) -> None:
    python, environ = fake_python
    up = start_up(tmp_path, python, environ, examples=False, restart=FAST, terminal=True)
    up.wait_for(STARTED)
    said = up.out  # out and err as one terminal shows them
    orchestrator = pids_in_banner(said.getvalue())[0]
    os.kill(orchestrator, signal.SIGKILL)
    assert up.finish() == 1
    lines = said.getvalue().split(f"{STARTED}\n", 1)[1].splitlines()
    assert lines == [
        "Stopping the others ...",
        "  engine-0 stopped (exit 0)",
        "  engine-1 stopped (exit 0)",
        f"dagctl: orchestrator (pid {orchestrator}) was killed by SIGKILL, not by dagctl up",
    ]


@pytest.mark.parametrize("who", ["engine", "orchestrator"])
def test_up_exits_2_when_a_child_refuses_its_settings(
    who: str, tmp_path: Path, fake_python: tuple[str, dict[str, str]]
) -> None:
    python, environ = fake_python
    refusing = {"DIE_AT_START": "engine-1"} if who == "engine" else {"ORCHESTRATOR_EXIT": "2"}
    up = start_up(tmp_path, python, {**environ, **refusing}, examples=False, restart=FAST)
    assert up.finish() == 2, up.err.getvalue()
    assert "exited with code 2 while starting" in up.err.getvalue()


OLD_PYTHON = """#!/bin/sh
# a Python 3.10: too old for DAG Engine
[ "$1" = -V ] && echo "Python 3.10.13" && exit 0
[ "$1" = -c ] && exit 1
echo "old python asked: $*" >&2
exit 1
"""

NEW_PYTHON = """#!/bin/sh
# a Python new enough, whose venv is made of fakes
case "$1" in
    -V) echo "Python 3.12.1" ;;
    -c) exit 0 ;;
    -m)
        if [ "$2" = venv ]; then
            echo "venv $*" >> "$CALLS"
            mkdir -p .venv/bin
            cp "$0" .venv/bin/python
            printf '#!/bin/sh\\necho "dagctl $*"\\n' > .venv/bin/dagctl
            chmod +x .venv/bin/dagctl
        else
            echo "pip $*" >> "$CALLS"
        fi ;;
esac
"""


def test_ci_up_makes_a_venv_of_a_too_old_python_again(tmp_path: Path) -> None:
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci" / "up").write_text((ROOT / ".ci" / "up").read_text())
    (tmp_path / "pyproject.toml").write_text('[project]\nrequires-python = ">=3.11"\n')
    venv_python = tmp_path / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text(OLD_PYTHON)
    venv_python.chmod(0o755)
    new = tmp_path / "python3.12"
    new.write_text(NEW_PYTHON)
    new.chmod(0o755)
    calls = tmp_path / "calls"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHON": str(new), "CALLS": str(calls)}
    done = subprocess.run(
        ["bash", str(tmp_path / ".ci" / "up"), "--engines", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "dagctl up --engines 3\n"
    assert done.stderr == (
        ".ci/up: .venv has Python 3.10.13, DAG Engine needs Python 3.11 or later: making it "
        f"again with {new}\n"
    )
    assert calls.read_text().splitlines() == [
        "venv -m venv --clear .venv",
        "pip -m pip install --quiet --disable-pip-version-check -e .",
    ]
    # and with only a Python too old at hand, it says which and stops
    venv_python.write_text(OLD_PYTHON)
    done = subprocess.run(
        ["bash", str(tmp_path / ".ci" / "up")],
        env={**env, "PYTHON": str(venv_python)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr == (
        f".ci/up: DAG Engine needs Python 3.11 or later, and {venv_python} is Python 3.10.13: "
        "set PYTHON to a newer one\n"
    )


def test_a_child_of_an_up_started_ignoring_sigterm_still_dies_with_it() -> None:
    from orchestrator.dagctl.launching import STOP_SIGNALS, _dies_with

    read, write = os.pipe()
    stand_in = os.fork()
    if stand_in == 0:  # ``up``, started (by a script, say) with SIGTERM ignored
        try:
            os.close(read)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            child = subprocess.Popen(
                ["sleep", "60"], preexec_fn=_dies_with(os.getpid()), start_new_session=True
            )
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            os.write(write, f"{child.pid}\n".encode())
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(write)
    child = int(os.read(read, 100).decode())
    os.close(read)
    os.kill(stand_in, signal.SIGKILL)
    os.waitpid(stand_in, 0)
    # before: the child inherited the ignored SIGTERM the kernel sends it when up dies, and
    # one still starting (its own handlers not yet in) outlived a killed up
    assert gone_within([child], 5) == []
