"""A stand-in for the Python interpreter ``dagctl up`` is given, so that a test can stage what
its orchestrator and engines do.

The stand-in is a shell script that ``up`` runs as ``python -m orchestrator`` and
``python -m engine``; it runs, with the real interpreter, small programs written beside it (each
test module has its own), which leave what they saw, and find their cues, in DUMP_DIR.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def stand_in_python(
    directory: Path, script: str, *, at: Path | None = None, **programs: str
) -> tuple[str, dict[str, str]]:
    """Write each of ``programs`` as ``fake_<name>.py`` in ``directory``, and ``script`` as the
    executable ``at`` (``directory/python`` unless given), with ``{python}`` and ``{<name>}`` in
    it filled in with the real interpreter and each program's path. Returns the stand-in's path
    and the environment to run ``up`` with: this PATH, an empty DUMP_DIR, and ports picked free.
    """
    paths = {}
    for name, source in programs.items():
        paths[name] = directory / f"fake_{name}.py"
        paths[name].write_text(source)
    python = at or directory / "python"
    python.parent.mkdir(parents=True, exist_ok=True)
    python.write_text(script.format(python=sys.executable, **paths))
    python.chmod(0o755)
    dump = directory / "dump"
    dump.mkdir()
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DUMP_DIR": str(dump),
        "HTTP_PORT": "0",
        "GRPC_PORT": "0",
    }
    return str(python), environ
