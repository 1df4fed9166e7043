"""``dagctl apply`` against a real orchestrator: a child's new major version given with its
parents' new versions, which need it, registers without ``--force``; nothing else is forced."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.dagctl import main
from tests.integration.conftest import OrchestratorProcess, spawn_orchestrator, stop_process

pytestmark = pytest.mark.slow


def parent(version: str, child_range: str, wf: str = "parent") -> str:
    return (
        f"id: {wf}\nversion: {version}\nnodes:\n"
        f"  - id: c\n    workflow: {{id: child, version: '{child_range}'}}\n"
    )


def child(version: str) -> str:
    return f"id: child\nversion: {version}\nnodes:\n  - id: a\n    lua: return {{}}\n"


@pytest.fixture
def orchestrator(tmp_path: Path) -> Iterator[OrchestratorProcess]:
    # registering needs no engine: the one named is never there
    proc = spawn_orchestrator(
        tmp_path / "orchestrator.log", tmp_path / "state.db", [], ENGINE_ADDRESSES="127.0.0.1:9"
    )
    try:
        yield proc
    finally:
        stop_process(proc.proc)


def folder(path: Path, files: dict[str, str]) -> Path:
    path.mkdir()
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def apply(
    url: str, capsys: pytest.CaptureFixture[str], *files: Path
) -> tuple[int, list[str], list[str]]:
    capsys.readouterr()
    code = main(["apply", *(a for f in files for a in ("-f", str(f)))], {"DAGCTL_SERVER": url})
    seen = capsys.readouterr()
    return code, seen.out.splitlines(), seen.err.splitlines()


def test_a_major_upgrade_of_a_child_with_its_parents_registers_without_force(
    orchestrator: OrchestratorProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v1 = folder(
        tmp_path / "v1",
        {
            "a-parent.yaml": parent("1.0.0", "^1"),
            "b-other.yaml": parent("1.0.0", "1.x", wf="other"),
            "c-child.yaml": child("1.0.0"),
        },
    )
    assert apply(orchestrator.url, capsys, v1)[0] == 0

    # parent 2 needs child 2, and child 2 is outside both parents' 1.x ranges; other's new
    # version widens its range, parent's moves it to ^2
    v2 = folder(
        tmp_path / "v2",
        {
            "a-parent.yaml": parent("2.0.0", "^2"),
            "b-other.yaml": parent("1.1.0", ">=1 <3", wf="other"),
            "c-child.yaml": child("2.0.0"),
        },
    )
    code, out, err = apply(orchestrator.url, capsys, v2)
    # before: 1, child refused (dependents_out_of_range), the parents refused (no match)
    assert (code, err) == (0, [])
    assert out == [
        # other's new version takes child 2 in its range: no force is needed past it
        "workflow other@1.1.0 registered",
        "workflow child@2.0.0 registered, forced past parent@1.0.0 (needs ^1):"
        " new versions given with it need it",
        "workflow parent@2.0.0 registered",
    ]


def test_a_child_is_not_forced_past_more_dependents_than_the_refusal_lists(
    orchestrator: OrchestratorProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parents = [f"p{k:02d}" for k in range(51)]  # the refusal lists 50
    v1 = {f"{p}.yaml": parent("1.0.0", "^1", wf=p) for p in parents}
    assert (
        apply(orchestrator.url, capsys, folder(tmp_path / "v1", {**v1, "c.yaml": child("1.0.0")}))[
            0
        ]
        == 0
    )
    v2 = {f"{p}.yaml": parent("2.0.0", "^2", wf=p) for p in parents}
    # every parent moves to ^2 with it, yet dagctl sees 50 of 51 in the refusal: the one
    # it cannot see might not follow, so it forces nothing (before: forced past all 51)
    code, out, err = apply(
        orchestrator.url, capsys, folder(tmp_path / "v2", {**v2, "c.yaml": child("2.0.0")})
    )
    assert code == 1 and out == []
    assert any("dependents_out_of_range" in line and "and 41 more" in line for line in err), err


def test_a_child_is_not_forced_past_a_parent_that_is_not_upgraded_with_it(
    orchestrator: OrchestratorProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v1 = folder(
        tmp_path / "v1",
        {
            "parent.yaml": parent("1.0.0", "^1"),
            "other.yaml": parent("1.0.0", "^1", wf="other"),
            "child.yaml": child("1.0.0"),
        },
    )
    assert apply(orchestrator.url, capsys, v1)[0] == 0

    v2 = folder(
        tmp_path / "v2",
        {"parent.yaml": parent("2.0.0", "^2"), "child.yaml": child("2.0.0")},
    )
    # other@1.0.0 (^1) is given no new version: the child stays refused, and so the parent
    code, out, err = apply(orchestrator.url, capsys, v2)
    assert (code, out) == (1, [])
    heads = [line for line in err if line.startswith("dagctl: ")]
    assert heads[0].startswith(f"dagctl: {v2 / 'child.yaml'}: dependents_out_of_range: ")
    assert "other@1.0.0 (needs ^1)" in heads[0]
    assert heads[1].startswith(f"dagctl: {v2 / 'parent.yaml'}: no_matching_version: ")
    assert len(heads) == 2

    # a parent's new version whose range the child's does not meet forces nothing either
    (v2 / "parent.yaml").write_text(parent("2.0.0", "^3"))
    (v2 / "other.yaml").write_text(parent("2.0.0", "^3", wf="other"))
    code, out, err = apply(orchestrator.url, capsys, v2)
    assert (code, out) == (1, [])
    assert [line.split(": ")[2] for line in err if line.startswith("dagctl: ")] == [
        "dependents_out_of_range",
        "no_matching_version",
        "no_matching_version",
    ]


def test_workflows_given_together_that_use_each_other_are_told_as_a_cycle(
    orchestrator: OrchestratorProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.yaml").write_text(
        "id: a\nversion: 1.0.0\nnodes:\n  - id: x\n    workflow: {id: b, version: ^1}\n"
    )
    (tmp_path / "b.yaml").write_text(
        "id: b\nversion: 1.0.0\nnodes:\n  - id: y\n    workflow: {id: a, version: ^1}\n"
    )
    (tmp_path / "c.yaml").write_text(parent("1.0.0", "^1", wf="c"))  # waits for a child alone
    code, out, err = apply(orchestrator.url, capsys, tmp_path)
    assert (code, out) == (1, [])
    # before: each "not registered", and nothing said of why neither ever would be
    assert err[-1] == (
        "dagctl: a -> b -> a: these workflows given together use each other, and "
        "sub-workflows may not form a cycle: none can be registered first"
    )
    assert sum(line.startswith("dagctl: ") for line in err) == 4


def test_a_path_the_server_has_no_route_for_is_told_as_an_older_server(
    orchestrator: OrchestratorProcess,
) -> None:
    from orchestrator.dagctl.calling import ApiError, Client

    with pytest.raises(ApiError) as caught:
        Client(orchestrator.url).call("GET", "/api/v1/nothing-here")
    # before: "not_found: Not Found", which says nothing of what was not found
    assert (caught.value.code, caught.value.message) == (
        "not_found",
        "the server has no GET /api/v1/nothing-here (is it older than this dagctl?)",
    )
    with pytest.raises(ApiError) as caught:
        Client(orchestrator.url).call("GET", "/api/v1/executions/nope")
    assert "older" not in caught.value.message  # a run not found is not a route not found


def test_a_child_is_not_forced_for_a_parent_that_waits_for_more_than_it(
    orchestrator: OrchestratorProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v1 = folder(
        tmp_path / "v1", {"parent.yaml": parent("1.0.0", "^1"), "child.yaml": child("1.0.0")}
    )
    assert apply(orchestrator.url, capsys, v1)[0] == 0
    needs_more = parent("2.0.0", "^2") + "  - id: d\n    workflow: {id: missing, version: '^1'}\n"
    v2 = folder(tmp_path / "v2", {"parent.yaml": needs_more, "child.yaml": child("2.0.0")})
    code, out, err = apply(orchestrator.url, capsys, v2)
    # before: child@2.0.0 forced past parent@1.0.0, and parent@2.0.0 refused all the same
    assert (code, out) == (1, [])
    assert [line.split(": ")[2] for line in err if line.startswith("dagctl: ")] == [
        "dependents_out_of_range",
        "no_matching_version",
    ]


def test_two_children_upgraded_with_the_parent_that_needs_both_register(
    orchestrator: OrchestratorProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def two(version: str, rng: str) -> str:
        return parent(version, rng) + f"  - id: e\n    workflow: {{id: kid, version: '{rng}'}}\n"

    kid = child("1.0.0").replace("id: child", "id: kid")
    v1 = folder(
        tmp_path / "v1",
        {"parent.yaml": two("1.0.0", "^1"), "child.yaml": child("1.0.0"), "kid.yaml": kid},
    )
    assert apply(orchestrator.url, capsys, v1)[0] == 0
    kid2 = child("2.0.0").replace("id: child", "id: kid")
    v2 = folder(
        tmp_path / "v2",
        {"parent.yaml": two("2.0.0", "^2"), "child.yaml": child("2.0.0"), "kid.yaml": kid2},
    )
    code, out, err = apply(orchestrator.url, capsys, v2)
    assert (code, err) == (0, [])
    assert out[-1] == "workflow parent@2.0.0 registered"
    assert len(out) == 3 and all("forced past parent@1.0.0 (needs ^1)" in line for line in out[:2])


def test_a_child_is_not_forced_for_a_parent_its_own_dependents_hold_back(
    orchestrator: OrchestratorProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grand = (
        "id: grand\nversion: 1.0.0\nnodes:\n  - id: p\n    workflow: {id: parent, version: ^1}\n"
    )
    v1 = folder(
        tmp_path / "v1",
        {"grand.yaml": grand, "parent.yaml": parent("1.0.0", "^1"), "child.yaml": child("1.0.0")},
    )
    assert apply(orchestrator.url, capsys, v1)[0] == 0
    v2 = folder(
        tmp_path / "v2", {"parent.yaml": parent("2.0.0", "^2"), "child.yaml": child("2.0.0")}
    )
    code, out, err = apply(orchestrator.url, capsys, v2)
    # before: child@2.0.0 forced past parent@1.0.0, then parent@2.0.0 refused for grand@1.0.0;
    # the server told the parent's missing child first and hid that refusal
    assert (code, out) == (1, [])
    assert [line.split(": ")[2] for line in err if line.startswith("dagctl: ")] == [
        "dependents_out_of_range",
        "dependents_out_of_range",
    ]
    assert any("grand@1.0.0 (needs ^1)" in line for line in err)
