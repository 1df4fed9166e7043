"""What the scheduler says about a run's log lines and its broken templates: which foreach item
logged, every output that could not be made, and the key of a sub-workflow input that failed."""

from __future__ import annotations

from typing import Any

from engine.core import scheduler as sch
from engine.core import templates
from engine.core.errors import MissingPath
from tests.unit.driving import Driver, lua, spec


def sub(node_id: str, *deps: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": node_id,
        "workflow": {"id": "kid", "version": "^1"},
        "depends_on": list(deps),
        **extra,
    }


def test_a_foreach_item_s_log_line_names_its_item() -> None:
    wf = spec([lua("a"), lua("b", "a", foreach="{{ results.a.items }}")])
    d = Driver(wf).start()
    d.succeed("a", {"items": ["x", "y"]})
    d.feed(sch.TaskLogged("b", 1, "info", "doing y", d.now, 1))
    d.feed(sch.TaskLogged("a", 1, "info", "late, no item", d.now))
    logs = [e for e in d.events if e.type == "node.log"]
    assert logs[0].data == {"level": "info", "message": "doing y", "item": 1}
    # a node that is no foreach keeps the two keys it always had
    assert logs[1].data == {"level": "info", "message": "late, no item"}


def test_every_output_that_cannot_be_made_is_named_in_the_spec_s_order() -> None:
    outputs = {
        "first": "{{ results.a.list.0 }}",
        "tenth": "{{ results.a.list.10 }}",
        "neg": "{{ results.a.list.-1 }}",
    }
    d = Driver(spec([lua("a")], outputs=outputs)).start()
    d.succeed("a", {"list": [1, 2, 3]})
    assert d.finish is not None and d.finish.status == "failed"
    assert d.finish.error == (
        "outputs.tenth: template '{{ results.a.list.10 }}': results.a.list (a list) has no '10'"
        "; outputs.neg: template '{{ results.a.list.-1 }}': results.a.list (a list) has no '-1'"
    )


def test_many_broken_outputs_make_an_error_of_bounded_length() -> None:
    long = "x" * 5000
    outputs = {f"o{i}": f"{{{{ results.a.{long}{i} }}}}" for i in range(40)}
    d = Driver(spec([lua("a")], outputs=outputs)).start()
    d.succeed("a", {})
    assert d.finish is not None and d.finish.error is not None
    error = d.finish.error
    assert error.startswith("outputs.o0: template '{{ results.a.xxx")
    assert "outputs.o4: " in error and "outputs.o5: " not in error
    assert error.endswith("; and 35 more outputs could not be made")
    limit = sch.BROKEN_OUTPUTS_NAMED * (sch.BROKEN_OUTPUT_CHARS + 2) + 100
    assert len(error) < limit


def test_a_nested_output_names_the_path_that_failed() -> None:
    outputs = {"summary": {"rows": ["{{ results.a.n }}", "{{ results.a.nope }}"]}}
    d = Driver(spec([lua("a")], outputs=outputs)).start()
    d.succeed("a", {"n": 1})
    assert d.finish is not None
    assert d.finish.error is not None
    assert d.finish.error.startswith("outputs.summary.rows[1]: template '{{ results.a.nope }}'")


def test_a_sub_workflow_input_that_fails_names_its_key() -> None:
    wf = spec([lua("a"), sub("child", "a", inputs={"v": "{{ results.a.nope }}", "w": 1})])
    d = Driver(wf).start()
    d.succeed("a", {"value": 1})
    assert d.run.record("child").error == (
        "inputs.v: template '{{ results.a.nope }}': results.a (an object) has no 'nope'"
    )


def test_a_foreach_item_s_sub_workflow_input_names_its_item_and_key() -> None:
    wf = spec(
        [
            lua("a"),
            sub("each", "a", foreach="{{ results.a.items }}", inputs={"v": "{{ ctx.item.k }}"}),
        ]
    )
    d = Driver(wf).start()
    d.succeed("a", {"items": [{"k": 1}, {"j": 2}]})
    assert d.run.record("each").error == (
        "item 1: inputs.v: template '{{ ctx.item.k }}': ctx.item (an object) has no 'k'"
    )


def test_resolve_names_the_path_and_keeps_the_error_s_kind() -> None:
    def nothing(node: str) -> Any:
        raise KeyError(node)

    value = {"a": ["ok", {"b": "{{ inputs.gone }}"}]}
    try:
        templates.resolve(value, inputs={}, results=nothing, ctx={}, at="inputs")
    except MissingPath as exc:
        assert exc.root == "inputs"
        assert str(exc).startswith("inputs.a[1].b: template '{{ inputs.gone }}'")
    else:
        raise AssertionError("no error")
    # without ``at`` the message is as it always was
    try:
        templates.resolve(value, inputs={}, results=nothing, ctx={})
    except MissingPath as exc:
        assert str(exc).startswith("template '{{ inputs.gone }}'")
