"""The Python builder, fifth hunt: it owns what it is given, takes lists only where order is
kept, runs the library checks when given them, and is typed."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine.checking import external_checks
from engine.core import builder
from engine.core.builder import Workflow
from engine.core.errors import SpecError
from engine.loading import spec_from_document

ROOT = Path(__file__).resolve().parents[2]


def messages(build: Callable[[], object]) -> list[str]:
    with pytest.raises(SpecError) as info:
        build()
    return info.value.messages()


# -- 1. the builder owns what it is given ----------------------------------------------------


def test_a_triggers_list_two_workflows_share_is_not_changed_by_either() -> None:
    common = [{"cron": "@daily"}]
    a = (
        Workflow("a", "1.0.0", triggers=common)
        .trigger(http={"path": "/hooks/a"})
        .node("x", lua="return 1")
        .build()
    )
    assert common == [{"cron": "@daily"}]
    b = Workflow("b", "1.0.0", triggers=common).node("x", lua="return 1").build()
    assert b.document["triggers"] == [{"cron": "@daily"}]
    assert [type(t).__name__ for t in a.triggers] == ["CronTrigger", "HttpTrigger"]
    assert [type(t).__name__ for t in b.triggers] == ["CronTrigger"]


def test_what_the_caller_changes_after_giving_it_changes_no_spec() -> None:
    labels = {"team": ["data"]}
    retry = {"max_attempts": 2}
    inputs = {"n": 1}
    hook = {"path": "/hooks/w", "auth": {"bearer_env": "W_TOKEN"}}
    schedule = {"source": "cron"}
    flow = (
        Workflow("w", "1.0.0", labels=labels)
        .node("a", lua="return 1", retry=retry)
        .node("b", workflow={"id": "child"}, inputs=inputs, depends_on=["a"])
        .trigger(http=hook)
        .trigger(cron="@daily", inputs=schedule)
    )
    labels["team"].append("ops")
    retry["max_attempts"] = 9
    inputs["n"] = 2
    hook["path"] = "/hooks/other"
    hook["auth"]["bearer_env"] = "OTHER"  # type: ignore[index]
    schedule["source"] = "changed"
    doc = flow.build().document
    assert doc["labels"] == {"team": ["data"]}
    assert doc["nodes"][0]["retry"] == {"max_attempts": 2}
    assert doc["nodes"][1]["inputs"] == {"n": 1}
    assert doc["triggers"] == [
        {"http": {"path": "/hooks/w", "auth": {"bearer_env": "W_TOKEN"}}},
        {"cron": "@daily", "inputs": {"source": "cron"}},
    ]


def test_a_tuple_of_triggers_takes_more_and_is_stored_as_a_list() -> None:
    spec = (
        Workflow("w", "1.0.0", triggers=({"cron": "@daily"},))
        .trigger(cron="@hourly", id="hourly")
        .node("a", lua="return 1", foreach=(1, 2))
        .build()
    )
    assert spec.document["triggers"] == [{"cron": "@daily"}, {"cron": "@hourly", "id": "hourly"}]
    assert spec.document["nodes"][0]["foreach"] == [1, 2]


def test_triggers_given_as_none_take_more() -> None:
    spec = (
        Workflow("w", "1.0.0", triggers=None)
        .trigger(cron="@hourly")
        .node("a", lua="return 1")
        .build()
    )
    assert spec.document["triggers"] == [{"cron": "@hourly"}]


def test_triggers_given_as_something_else_are_refused_not_a_crash() -> None:
    flow = Workflow("w", "1.0.0", triggers="@daily").trigger(cron="@hourly")  # type: ignore[arg-type]
    assert messages(flow.node("a", lua="return 1").build) == [
        "Workflow('w'): triggers: must be a list"
    ]


# -- 2. depends_on is a list: a set's order is the hash seed's --------------------------------


def _three() -> Workflow:
    return (
        Workflow("wf", "1.0.0")
        .node("extract", lua="return 1")
        .node("transform", lua="return 1")
        .node("clean", lua="return 1")
    )


@pytest.mark.parametrize(
    ("given", "told"),
    [
        (
            {"extract", "transform", "clean"},
            "got a set, whose order changes from one process to the next (and the stored "
            "spec with it): pass a list, as depends_on=sorted(...)",
        ),
        (
            frozenset({"extract"}),
            "got a frozenset, whose order changes from one process to the next (and the "
            "stored spec with it): pass a list, as depends_on=sorted(...)",
        ),
        (
            {"extract": 1, "clean": 2},
            "got a dict: pass a list, as depends_on=[...]",
        ),
        (
            (n for n in ("extract", "clean")),
            "got a generator: pass a list, as depends_on=[...]",
        ),
        (
            {"extract": 1}.keys(),
            "got a dict_keys: pass a list, as depends_on=[...]",
        ),
    ],
    ids=["set", "frozenset", "dict", "generator", "dict_keys"],
)
def test_depends_on_must_be_a_list_or_a_tuple(given: Any, told: str) -> None:
    flow = _three().node("load", lua="return 1", depends_on=given)
    assert messages(flow.build) == [
        f"Workflow('wf'): nodes[load].depends_on: must be a list of node ids, {told}"
    ]


def test_the_same_code_stores_the_same_document_whatever_the_hash_seed() -> None:
    code = (
        "import json\n"
        "from engine.core.builder import Workflow\n"
        "from engine.core.errors import SpecError\n"
        "from engine.core.spec import ExternalChecks\n"
        "w = Workflow('wf', '1.0.0')\n"
        "for n in ('extract', 'transform', 'clean'):\n"
        "    w.node(n, lua='return 1')\n"
        "w.node('load', lua='return 1', depends_on={'extract', 'transform', 'clean'})\n"
        "try:\n"
        "    print(json.dumps(w.build(checks=ExternalChecks()).document))\n"
        "except SpecError:\n"
        "    print('refused')\n"
    )
    seen = set()
    for seed in ("1", "2", "3", "4", "5"):
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        )
        seen.add(done.stdout)
    assert seen == {"refused\n"}


def test_a_tuple_of_node_ids_is_a_list_in_the_document() -> None:
    spec = _three().node("load", lua="return 1", depends_on=("extract", "clean")).build()
    assert spec.document["nodes"][-1]["depends_on"] == ["extract", "clean"]
    assert spec.by_id["load"].depends_on == ("extract", "clean")


@pytest.mark.parametrize(
    ("flow", "path"),
    [
        (
            lambda: Workflow("wf", "1.0.0").node("a", lua="return 1", foreach={1, 2}),
            "nodes[a].foreach",
        ),
        (
            lambda: Workflow("wf", "1.0.0", inputs_schema={"required": {"a", "b"}}).node(
                "a", lua="return 1"
            ),
            "inputs_schema.required",
        ),
        (
            lambda: Workflow("wf", "1.0.0", outputs={"all": {"a", "b"}}).node("a", lua="return 1"),
            "outputs.all",
        ),
        (
            lambda: (
                Workflow("wf", "1.0.0")
                .trigger(cron="@daily", inputs={"tags": {"a", "b"}})
                .node("a", lua="return 1")
            ),
            "triggers[0].inputs.tags",
        ),
        (
            lambda: (
                Workflow("wf", "1.0.0")
                .node("a", lua="return 1")
                .node("b", workflow="child", inputs={"ids": frozenset({"a"})}, depends_on=["a"])
            ),
            "nodes[b].inputs.ids",
        ),
    ],
)
def test_a_set_in_any_other_field_is_refused_where_it_is(
    flow: Callable[[], Workflow], path: str
) -> None:
    assert messages(flow().build) == [
        f"Workflow('wf'): {path}: is a YAML set (!!set), not a JSON value: write a list"
    ]


# -- 3. build(checks=external_checks()) runs the checks `python -m engine validate` runs -------


@pytest.mark.parametrize(
    "flow",
    [
        lambda: Workflow("wf", "1.0.0").node("a", lua="return {"),
        lambda: Workflow("wf", "1.0.0").node("a", lua="return 1", when="1 >"),
        lambda: Workflow("wf", "1.0.0", inputs_schema={"type": "nope"}).node("a", lua="return 1"),
        lambda: (
            Workflow("wf", "1.0.0")
            .trigger(cron="@daily", timezone="Mars/Olympus")
            .node("a", lua="return 1")
        ),
        lambda: Workflow("wf", "1.0.0").trigger(cron="61 * * * *").node("a", lua="return 1"),
        lambda: Workflow("wf", "1.0.0").node("a", workflow={"id": "child", "version": "^^1"}),
    ],
    ids=["lua", "when", "inputs_schema", "timezone", "cron", "version_range"],
)
def test_build_refuses_what_engine_validate_refuses(flow: Callable[[], Workflow]) -> None:
    with pytest.raises(SpecError) as built:
        flow().build(checks=external_checks())
    with pytest.raises(SpecError) as validated:
        spec_from_document(flow().to_document(), "Workflow('wf')")
    assert built.value.messages() == validated.value.messages()
    assert len(built.value.messages()) == 1
    # the document's shape alone, without checks: engine.core runs no library
    flow().build()


@pytest.mark.parametrize("wrong", [True, False, "lua", {"lua_syntax": None}])
def test_checks_of_another_type_are_a_type_error_saying_what_to_pass(wrong: Any) -> None:
    flow = Workflow("wf", "1.0.0").node("a", lua="return 1")
    with pytest.raises(TypeError) as info:
        flow.build(checks=wrong)
    assert str(info.value) == (
        f"build(checks=...) takes an engine.core.spec.ExternalChecks, got "
        f"{type(wrong).__name__} {wrong!r}: pass engine.checking.external_checks() for the "
        "checks `python -m engine validate` runs, or leave it out for the document's shape "
        "alone"
    )


def test_building_without_checks_loads_no_library() -> None:
    code = (
        "import sys\n"
        "from engine.core.builder import Workflow\n"
        "Workflow('wf', '1.0.0').node('a', lua='return 1').build()\n"
        "print(sorted(m for m in ('lupa', 'engine.lua', 'jsonschema') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.splitlines() == ["[]"]


# -- 7. a documented, typed builder -----------------------------------------------------------


def test_the_typed_fields_are_the_spec_s_fields() -> None:
    from engine.core import spec

    assert builder.WorkflowOptions.__optional_keys__ == set(spec._WORKFLOW_FIELDS) - {
        "id",
        "version",
        "nodes",
    }
    assert builder.NodeFields.__optional_keys__ == set(spec._NODE_FIELDS) - {"id"}
    assert builder.TriggerFields.__optional_keys__ == set(spec._CRON_FIELDS) | {"http"}


def test_the_public_builder_is_documented() -> None:
    assert builder.__all__ == ["NodeFields", "TriggerFields", "Workflow", "WorkflowOptions"]
    for method in (Workflow, Workflow.node, Workflow.trigger, Workflow.build):
        assert method.__doc__, method
    for method in (Workflow, Workflow.node, Workflow.trigger):
        assert "::" in (method.__doc__ or ""), f"{method} has no example"


def test_an_unknown_field_from_an_unchecked_caller_is_named_with_a_hint() -> None:
    fields: dict[str, Any] = {"timout": "1s"}
    options: dict[str, Any] = {"fail_fats": True}
    flow = Workflow("wf", "1.0.0", **options).node("a", lua="return 1", **fields)
    assert messages(flow.build) == [
        "Workflow('wf'): fail_fats: unknown field 'fail_fats' (did you mean 'fail_fast'?)",
        "Workflow('wf'): nodes[a].timout: unknown field 'timout' (did you mean 'timeout'?)",
    ]


def test_a_type_checker_refuses_a_misspelt_or_mistyped_field(tmp_path: Path) -> None:
    api = pytest.importorskip("mypy.api")
    caller = tmp_path / "caller.py"
    caller.write_text(
        "from typing import Any\n"
        "from engine.core.builder import Workflow\n"
        "opts: dict[str, Any] = {'concurrency': 2}\n"
        "ok = Workflow('a', '1.0.0', **opts).node('x', lua='return 1', depends_on=('y',))\n"
        "Workflow('a', '1.0.0', timout='1m')\n"
        "ok.node('y', lua='return 1', timout='1s')\n"
        "ok.node('z', lua='return 1', depends_on={'x'})\n"
        "ok.node('w', lua='return 1', trigger_rule='all_sucess')\n"
        "ok.trigger(crn='@daily')\n"
        "ok.build(checks=True)\n"
    )
    limit = sys.getrecursionlimit()
    try:
        out, _, status = api.run(
            [
                "--config-file",
                "",
                "--strict",
                "--follow-imports=silent",
                "--cache-dir",
                os.devnull,
                str(caller),
            ]
        )
    finally:
        # mypy raises the process's recursion limit for good, and a later test in this
        # process that nests a document 5,000 deep then parses it, where it would not
        sys.setrecursionlimit(limit)
    errors = [
        line.split(": error: ")[0].rsplit(":", 1)[1]
        for line in out.splitlines()
        if ": error: " in line
    ]
    assert (status, errors) == (1, ["5", "6", "7", "8", "9", "10"]), out
