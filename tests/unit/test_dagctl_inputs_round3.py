"""dagctl reads inputs as the server reads JSON: what the server would refuse is refused before
anything is sent, exit 2, naming the flag (the server could only say "the request body"), and
no value is silently changed on the way (1e999 to infinity, 5,000 digits to text, a key
written twice to its last value)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.dagctl.cli import EXIT_USAGE, BadArguments, main, read_inputs

DIGITS = "1" * 5000


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ({"inputs_json": '{"v": 1e999}'}, "--inputs: 1e999 is too large for a JSON number"),
        ({"inputs_json": '{"v": -1e999}'}, "--inputs: -1e999 is too large for a JSON number"),
        ({"inputs_json": '{"v": NaN}'}, "--inputs is not valid JSON: NaN is not JSON"),
        ({"inputs_json": '{"v": Infinity}'}, "--inputs is not valid JSON: Infinity is not JSON"),
        (
            {"inputs_json": '{"v": ' + DIGITS + "}"},
            "--inputs: 11111111111111111111... (5000 digits) is too large for a JSON number",
        ),
        ({"inputs_json": '{"v": 1, "v": 2}'}, "--inputs holds a duplicate key 'v'"),
        ({"inputs_json": '{"v": {"k": [], "k": []}}'}, "--inputs holds a duplicate key 'k'"),
        ({"inputs_json": '{"v": ' + "[" * 65 + "]" * 65 + "}"}, "--inputs nests deeper than 64"),
        ({"inputs_json": '{"v": "\\udc80"}'}, "--inputs holds a lone UTF-16 surrogate escape"),
        ({"pairs": ["v=1e999"]}, "--input v: 1e999 is too large for a JSON number"),
        (
            {"pairs": ["v=" + DIGITS]},
            "--input v: 11111111111111111111... (5000 digits) is too large for a JSON number",
        ),
        ({"pairs": ['v={"a": 1, "a": 2}']}, "--input v holds a duplicate key 'a'"),
        ({"pairs": ["v=" + "[" * 5000 + "]" * 5000]}, "--input v nests deeper than 64 levels"),
    ],
)
def test_json_the_server_would_refuse_is_refused_naming_the_flag(
    given: dict[str, object], says: str
) -> None:
    with pytest.raises(BadArguments) as caught:
        read_inputs(**given)  # type: ignore[arg-type]
    assert str(caught.value).startswith(says), caught.value


def test_an_inputs_file_is_named_with_its_path(tmp_path: Path) -> None:
    cases = {
        "inf.json": ('{"v": 1e999}', "1e999 is too large for a JSON number"),
        "twice.json": ('{"v": 1,\n "v": 2}', "holds a duplicate key 'v'"),
        "digits.json": ('{"v": ' + DIGITS + "}", "(5000 digits) is too large for a JSON number"),
        "twice.yaml": ("v: 1\nv: 2\n", "line 2: v: duplicate key 'v' (first on line 1)"),
        "inf.yaml": ("v: .inf\n", "inputs.v: Infinity is not a number JSON can carry"),
    }
    for name, (text, says) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(BadArguments) as caught:
            read_inputs(inputs_file=str(tmp_path / name))
        message = str(caught.value)
        assert message.startswith(f"--inputs-file {tmp_path / name}"), message
        assert says in message, message


@pytest.mark.parametrize(
    ("pair", "value"),
    [
        # not JSON at all: text, as --input always took it
        ("v=NaN", "NaN"),
        ("v=Infinity", "Infinity"),
        ("v=[1, NaN]", "[1, NaN]"),
        ("v=Ada", "Ada"),
        ("v={nope", "{nope"),
        ("v=", ""),
        # JSON the server takes: the value
        ("v=5", 5),
        ("v=1e308", 1e308),
        ("v=" + "9" * 300, int("9" * 300)),
        ('v={"a": {"a": 1}}', {"a": {"a": 1}}),
        ('v="5"', "5"),
    ],
)
def test_input_pairs_keep_their_rule_where_it_changes_no_value(pair: str, value: object) -> None:
    got = read_inputs(pairs=[pair])
    assert isinstance(got, dict)
    assert got == {"v": value} and type(got["v"]) is type(value)


def test_dagctl_run_exits_2_before_sending_anything(capsys: pytest.CaptureFixture[str]) -> None:
    # nothing listens on port 1: a request would be exit 1, "cannot reach"
    env = {"DAGCTL_SERVER": "http://127.0.0.1:1"}
    for args in (["--inputs", '{"v": 1e999}'], ["--input", "v=1e999"]):
        assert main(["run", "wf", *args], env) == EXIT_USAGE
        err = capsys.readouterr().err
        assert "too large for a JSON number" in err and "request body" not in err, err


def test_dagctl_trigger_create_reads_inputs_by_the_same_rules(
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = {"DAGCTL_SERVER": "http://127.0.0.1:1"}
    argv = ["trigger", "create", "wf", "--cron", "* * * * *", "--input", "v=1e999"]
    # before: sent as Infinity, and refused by the server as "the request body"
    assert main(argv, env) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--input v" in err and "too large for a JSON number" in err, err
