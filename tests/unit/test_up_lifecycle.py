"""``dagctl up``'s life cycle, the parts without processes: where it reaches its orchestrator,
which settings it refuses or keeps from it, where its logs go, the state lock through a link,
how it calls dagctl in its banner, its output that may go away, and its stop signals."""

from __future__ import annotations

import io
import os
import signal
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from orchestrator.dagctl.calling import ApiError
from orchestrator.dagctl.launching import (
    LaunchError,
    Sturdy,
    Supervisor,
    banner,
    dagctl_command,
    listens,
    plan,
    register_examples,
)
from orchestrator.locking import StateInUse, lock_state, state_holder


def ports() -> Any:
    counter = iter(range(40000, 40100))
    return lambda: next(counter)


@pytest.mark.parametrize(
    ("host", "url", "grpc"),
    [
        ("::1", "http://[::1]:8080", "[::1]:50051"),
        ("[::1]", "http://[::1]:8080", "[::1]:50051"),
        ("127.0.0.2", "http://127.0.0.2:8080", "127.0.0.2:50051"),
        ("0.0.0.0", "http://127.0.0.1:8080", "127.0.0.1:50051"),
        ("::", "http://127.0.0.1:8080", "127.0.0.1:50051"),
        ("[::]", "http://127.0.0.1:8080", "127.0.0.1:50051"),
    ],
)
def test_up_reaches_its_orchestrator_on_a_specific_host_and_on_loopback_for_a_wildcard(
    host: str, url: str, grpc: str, tmp_path: Path
) -> None:
    layout = plan({"HOST": host}, engines=1, python="py", base_dir=tmp_path, pick_port=ports())
    assert (layout.http_url, layout.grpc_address) == (url, grpc)
    assert layout.engines[0].env["HOST"] == "127.0.0.1"  # the engines stay on loopback


def test_up_refuses_one_port_for_http_and_grpc_as_a_bad_setting(tmp_path: Path) -> None:
    environ = {"HTTP_PORT": "9090", "GRPC_PORT": "9090"}
    with pytest.raises(LaunchError) as refused:
        plan(environ, engines=1, python="py", base_dir=tmp_path, pick_port=ports())
    assert str(refused.value) == (
        "HTTP_PORT and GRPC_PORT are both 9090: the orchestrator needs two ports, "
        "set one of them to another"
    )
    assert refused.value.exit_code == 2


def test_up_gives_its_orchestrator_no_tls_settings_for_engines(tmp_path: Path) -> None:
    environ = {
        "ENGINE_TLS_CA_FILE": "/ca.pem",
        "ENGINE_TLS_SERVER_NAME": "engines.example.org",
        "ENGINE_TLS_CERT_FILE": "/client.pem",
        "ENGINE_TLS_KEY_FILE": "/client.key",
        "ENGINE_TOKEN": "kept",
    }
    layout = plan(environ, engines=1, python="py", base_dir=tmp_path, pick_port=ports())
    orch = layout.orchestrator.env
    assert not [k for k in orch if k.startswith("ENGINE_TLS_")], sorted(orch)
    assert orch["ENGINE_TOKEN"] == "kept"


@pytest.mark.parametrize(
    ("state_db", "logs"),
    [
        (None, ".dagengine/logs"),
        (".dagengine/state.db", ".dagengine/logs"),
        (":memory:", ".dagengine/logs"),
        ("b.db", "b.db.logs"),
        ("other/state.db", "other/state.db.logs"),
    ],
)
def test_up_keeps_the_logs_of_each_state_database_apart(
    state_db: str | None, logs: str, tmp_path: Path
) -> None:
    environ = {} if state_db is None else {"STATE_DB": state_db}
    layout = plan(environ, engines=1, python="py", base_dir=tmp_path, pick_port=ports())
    assert layout.log_dir == tmp_path / logs
    assert layout.engines[0].log_path == tmp_path / logs / "engine-0.log"


def test_the_state_lock_is_one_for_a_database_reached_through_a_link(tmp_path: Path) -> None:
    real = tmp_path / "a" / "state.db"
    real.parent.mkdir()
    real.touch()
    link = tmp_path / "link.db"
    link.symlink_to(real)
    held = lock_state(str(real))
    assert held is not None
    try:
        assert state_holder(str(link)) == os.getpid()
        with pytest.raises(StateInUse, match=f"in use by process {os.getpid()}"):
            lock_state(str(link))
    finally:
        os.close(held)
    assert state_holder(str(link)) is None


def test_the_banner_names_a_dagctl_that_works_from_here(tmp_path: Path) -> None:
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    (bin_dir / "dagctl").write_text("#!/bin/sh\n")
    (bin_dir / "dagctl").chmod(0o755)
    assert dagctl_command(str(python), tmp_path, "/usr/bin:/bin") == ".venv/bin/dagctl"
    assert dagctl_command(str(python), tmp_path, f"{bin_dir}:/usr/bin") == "dagctl"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert dagctl_command(str(python), elsewhere, "/usr/bin") == str(bin_dir / "dagctl")
    assert dagctl_command(str(tmp_path / "python"), tmp_path, "/usr/bin") == "dagctl"  # none

    layout = plan({}, engines=1, python=str(python), base_dir=tmp_path, pick_port=ports())
    out = io.StringIO()
    banner(
        layout,
        server="http://127.0.0.1:8080",
        token_set=False,
        pids={"orchestrator": 4242, "engine-0": 4343},
        out=out,
        dagctl=".venv/bin/dagctl",
    )
    text = out.getvalue()
    assert "  orchestrator pid 4242\n" in text
    assert "  .venv/bin/dagctl run hello --input name=Ada --wait\n" in text
    assert "  .venv/bin/dagctl get executions\n" in text


class Refusing:
    """A client whose orchestrator refuses every spec, with problems, as the real one does."""

    def call(self, method: str, path: str, **kwargs: object) -> object:
        raise ApiError(
            400,
            "invalid_spec",
            "2 problems",
            {"problems": ["nodes[0].id: missing", "nodes[1].depends_on: unknown node 'x'"]},
        )


def test_up_shows_the_problems_of_an_example_it_cannot_register(tmp_path: Path) -> None:
    example = tmp_path / "broken.yaml"
    example.write_text("id: broken\n")
    out = io.StringIO()
    assert register_examples(Refusing(), [example], out) == []  # type: ignore[arg-type]
    assert out.getvalue() == (
        "  could not register broken.yaml: invalid_spec: 2 problems\n"
        "    - nodes[0].id: missing\n"
        "    - nodes[1].depends_on: unknown node 'x'\n"
    )


class Answering:
    """A client whose orchestrator has ``old`` registered from an earlier ``up``."""

    def __init__(self, old: set[str]) -> None:
        self.old = old

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        name = kwargs["data"].decode().split()[1]
        return SimpleNamespace(
            body={"workflow": {"id": name, "version": "1.0.0"}, "created": name not in self.old}
        )


def test_up_tells_examples_it_registered_from_those_there_already(tmp_path: Path) -> None:
    files = []
    for name in ("fresh", "kept"):
        files.append(tmp_path / f"{name}.yaml")
        files[-1].write_text(f"id: {name}\n")
    out = io.StringIO()
    assert register_examples(Answering({"kept"}), files, out) == ["fresh@1.0.0", "kept@1.0.0"]  # type: ignore[arg-type]
    # before: both were said registered, an up on old state claiming what it did not do
    assert out.getvalue() == (
        "Examples registered: fresh@1.0.0\nExamples there already, unchanged: kept@1.0.0\n"
    )


class Gone(io.StringIO):
    """The write end of a pipe whose reader died (``| tee`` ended by the same Ctrl-C)."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise OSError(5, "Input/output error")  # a hung-up terminal


def test_what_up_says_is_dropped_once_nobody_reads_it() -> None:
    sturdy = Sturdy(Gone())
    assert sturdy.write("Stopping ...\n") == len("Stopping ...\n")
    sturdy.flush()
    assert sturdy.lost
    sturdy.write("  engine-0 stopped (exit 0)\n")  # and no more tries


def test_a_second_stop_signal_hurries_the_stop_instead_of_escaping_it(tmp_path: Path) -> None:
    layout = plan({}, engines=1, python="py", base_dir=tmp_path, pick_port=ports())
    supervisor = Supervisor(
        layout.orchestrator, layout.engines, tmp_path, io.StringIO(), io.StringIO()
    )
    with pytest.raises(KeyboardInterrupt):
        supervisor.on_signal(2, None)
    assert supervisor.stopping and not supervisor.hurried
    supervisor.on_signal(2, None)  # 5 ms later: no exception, whatever the stop was doing
    assert supervisor.hurried


def test_a_port_is_the_engines_only_when_its_own_socket_listens_there() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert listens(os.getpid(), port)
        assert not listens(os.getppid(), port)  # it answers there, but not by a socket of its
    assert not listens(os.getpid(), port)


def test_a_terminal_s_second_hang_up_lets_the_children_drain(tmp_path: Path) -> None:
    layout = plan({}, engines=1, python="py", base_dir=tmp_path, pick_port=ports())
    supervisor = Supervisor(
        layout.orchestrator, layout.engines, tmp_path, io.StringIO(), io.StringIO()
    )
    with pytest.raises(KeyboardInterrupt):
        supervisor.on_signal(signal.SIGHUP, None)  # the shell passes the hang-up on...
    # ...and the kernel sends its own a moment later: before, that SIGKILLed every child
    supervisor.on_signal(signal.SIGHUP, None)
    assert supervisor.stopping and not supervisor.hurried
    supervisor.on_signal(signal.SIGINT, None)  # a Ctrl-C still hurries it
    assert supervisor.hurried


def test_the_banner_without_examples_suggests_no_workflow_that_is_not_there(
    tmp_path: Path,
) -> None:
    layout = plan({}, engines=1, python="py", base_dir=tmp_path, pick_port=ports())
    out = io.StringIO()
    banner(
        layout,
        server="http://127.0.0.1:8080",
        token_set=False,
        pids={},
        out=out,
        examples=False,
    )
    text = out.getvalue()
    # before: "dagctl run hello", which --no-examples left unregistered
    assert "hello" not in text
    assert "  dagctl apply -f my-workflow.yaml\n" in text
