"""One orchestrator per state database: an flock on ``<STATE_DB>.lock``, which holds the pid
and the host name.

Two orchestrators on one file would both take up its unfinished runs and run them twice, and
their events' numbers would clash. SQLite's own locks only keep each write whole, so the store
takes this lock before it opens the file, and ``dagctl up`` looks at it before it starts
anything or rotates a log. The kernel lets go of it when its process dies, even by kill -9.

The lock sits beside the database's real path, symbolic links resolved: a database reached
through a link and by its own name is one database, and must have one lock.

The holder is named by its pid and its host name (a pod's name in Kubernetes): in containers
every orchestrator is process 1, and a refusal naming "process 1" alone reads as if it named the
process refused. A lock file written before the host name was (the pid alone) still reads.
"""

from __future__ import annotations

import fcntl
import os
import socket
from dataclasses import dataclass
from pathlib import Path

_HOLDER_BYTES = 2048
"""Read of a lock file: a pid and a host name (at most 255 characters) with room to spare."""


@dataclass(frozen=True, slots=True)
class Holder:
    """What a lock file says of the process that wrote it."""

    pid: int
    """0 when the file holds none."""
    host: str | None
    """The host name it ran on; None in a lock file that names none (written before it did)."""


class StateInUse(RuntimeError):
    """Another process holds the state database."""


class Held(RuntimeError):
    """Another process holds a lock file; ``pid`` is the one it wrote there (0 if none), ``host``
    the host name it wrote (None if none)."""

    def __init__(self, pid: int, host: str | None = None) -> None:
        super().__init__(holder_named(pid, host))
        self.pid = pid
        self.host = host


def _lock_path(path: str) -> str:
    return f"{os.path.realpath(path)}.lock"


def private_dirs(path: Path) -> None:
    """Make the folder ``path`` and any of its missing parents, those it makes readable by
    their owner alone: the state database and the logs beside it hold every run's inputs and
    outputs, which often carry secrets. A folder that exists keeps its mode, which is its
    owner's choice."""
    missing: list[Path] = []
    while not path.exists() and path.parent != path:
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)


def private_file(path: str) -> None:
    """Make ``path`` empty, readable by its owner alone, unless it exists. SQLite gives the
    WAL and shared-memory files it makes beside a database the database's mode, so a new state
    database and its WAL are 0600 whatever the umask. An error is left for SQLite to say, in
    the words it says it when it makes the file itself."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except OSError:
        pass


def hold(lock_path: str) -> int:
    """Take the flock of ``lock_path`` (released when the descriptor closes, also by the kernel
    when the process dies) and write this process's pid and host name in it, a line each; Held
    while another process has it. The descriptor is not inherited by children."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder_in(fd)
        os.close(fd)
        raise Held(holder.pid, holder.host) from None
    except BaseException:
        os.close(fd)
        raise
    host = this_host()
    line = f"{os.getpid()}\n{host}\n" if host else f"{os.getpid()}\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, line.encode(), 0)
    return fd


def lock_state(path: str) -> int | None:
    """Take ``<path>.lock`` (``path`` resolved) for this process. None for ``:memory:``;
    StateInUse while another process holds it."""
    if path == ":memory:":
        return None
    try:
        return hold(_lock_path(path))
    except Held as exc:
        here = this_host()
        if exc.host is None:
            holder = f"{holder_named(exc.pid)} (another orchestrator)"
        elif exc.host == here:
            holder = f"{holder_named(exc.pid)} (another orchestrator on this host, {here})"
        else:
            # this one may well be process 1 too: say where each runs
            mine = f"; this one runs on {here}" if here else ""
            holder = f"{holder_named(exc.pid, exc.host)} (another orchestrator{mine})"
        raise StateInUse(
            f"it is in use by {holder}: stop that one first, or give this one a STATE_DB of its own"
        ) from None


def state_holder(path: str) -> int | None:
    """The pid of the process that holds ``path`` (0 if it is not known), or None when no
    process does; for ``dagctl up``, before it touches anything of a running system."""
    try:
        fd = os.open(_lock_path(path), os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder_in(fd).pid
    finally:
        os.close(fd)  # also lets go of the shared lock, if it was had
    return None


def holder_named(pid: int, host: str | None = None) -> str:
    """The holder of a lock in words: its pid, when the lock file had one, and its host, when
    given."""
    who = f"process {pid}" if pid else "another process"
    return f"{who} on {host}" if host else who


def this_host() -> str | None:
    """This machine's host name (a pod's name in Kubernetes), as a lock file holds it; None
    when it has none that can be written on a line of its own."""
    return _host_name(socket.gethostname())


def _host_name(text: str) -> str | None:
    name = text.strip()
    if not name or len(name) > 255 or not name.isprintable() or any(c.isspace() for c in name):
        return None
    return name


def _holder_in(fd: int) -> Holder:
    lines = os.pread(fd, _HOLDER_BYTES, 0).decode("utf-8", "replace").split("\n")
    pid = lines[0].strip()
    host = _host_name(lines[1]) if len(lines) > 1 else None
    return Holder(int(pid) if pid.isascii() and pid.isdigit() else 0, host)
