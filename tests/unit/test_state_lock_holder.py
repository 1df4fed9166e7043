"""Who holds the state database, in words a second orchestrator can act on: in containers every
orchestrator is process 1, so the lock file names the host (the pod) too, and says when it is
this one; a lock file of the pid alone, as older orchestrators wrote it, still reads."""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from orchestrator.locking import StateInUse, lock_state, state_holder


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@contextmanager
def held_by(state: Path, text: str) -> Iterator[None]:
    """``state``'s lock held (by another open file, as another process would) with ``text``."""
    fd = os.open(f"{state}.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, text.encode())
        yield
    finally:
        os.close(fd)


def refusal(state: Path) -> str:
    with pytest.raises(StateInUse) as refused:
        lock_state(str(state))
    return str(refused.value)


def test_the_lock_file_holds_the_pid_and_the_host_name(state: Path) -> None:
    fd = lock_state(str(state))
    assert fd is not None
    try:
        text = Path(f"{state}.lock").read_text()
        assert text == f"{os.getpid()}\n{socket.gethostname()}\n"
        assert state_holder(str(state)) == os.getpid()
    finally:
        os.close(fd)


def test_a_holder_on_another_host_is_named_with_it_and_this_one_too(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # two orchestrator pods on one volume: both are process 1
    monkeypatch.setattr(socket, "gethostname", lambda: "orchestrator-5c8b-x2k4p")
    with held_by(state, "1\norchestrator-7d9f-abcde\n"):
        assert refusal(state) == (
            "it is in use by process 1 on orchestrator-7d9f-abcde (another orchestrator; this"
            " one runs on orchestrator-5c8b-x2k4p): stop that one first, or give this one a"
            " STATE_DB of its own"
        )
        assert state_holder(str(state)) == 1


def test_a_holder_on_this_host_is_said_to_be(state: Path) -> None:
    fd = lock_state(str(state))
    assert fd is not None
    try:
        assert refusal(state) == (
            f"it is in use by process {os.getpid()} (another orchestrator on this host,"
            f" {socket.gethostname()}): stop that one first, or give this one a STATE_DB of its"
            " own"
        )
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("text", "holder"),
    [
        ("4242\n", "process 4242"),  # as orchestrators before the host name wrote it
        ("4242", "process 4242"),
        ("4242\n\n", "process 4242"),
        ("4242\nhas spaces\n", "process 4242"),  # not a host name: left out
        ("", "another process"),
        ("x\n", "another process"),
    ],
)
def test_a_lock_file_without_a_host_name_names_the_pid_alone(
    state: Path, text: str, holder: str
) -> None:
    with held_by(state, text):
        assert refusal(state).startswith(f"it is in use by {holder} (another orchestrator): ")
