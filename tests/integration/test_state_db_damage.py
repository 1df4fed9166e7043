"""``python -m orchestrator`` on a damaged state database: refused at start in one line naming
STATE_DB, exit 2 as for a setting refused, and the file left as it was (before: it started,
took up its runs and failed them on the damaged page, again and again)."""

from __future__ import annotations

from pathlib import Path

from tests.component.test_store_damage import digest, filled, flip_page
from tests.integration.conftest import refused_orchestrator


async def test_a_damaged_state_database_is_refused_at_start_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    await filled(path)
    flip_page(path)
    before = digest(path)
    proc = refused_orchestrator(tmp_path, {})
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert proc.returncode == 2, proc.stderr
    assert len(errors) == 1, proc.stderr
    assert f"STATE_DB {path} is damaged (" in errors[0]
    assert errors[0].endswith(
        f'it is left as it was: restore a backup, or try sqlite3 {path} ".recover" (or ".dump")'
        " into a new file"
    )
    assert "Traceback" not in proc.stderr
    assert digest(path) == before
