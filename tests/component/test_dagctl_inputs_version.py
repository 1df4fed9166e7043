"""dagctl's ``--input`` values against a server that refuses them, ``--input`` keys given
twice, ``dagctl --version`` with and without a server, and the two durations ``run --wait``
prints of one run: against the fake orchestrator of ``test_dagctl``, whose inputs are checked
by the server's own ``engine.inputs``.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from engine import installed_version
from engine.core.errors import InputsError
from engine.inputs import inputs_problems
from orchestrator.dagctl import cli, main
from orchestrator.dagctl.calling import ApiError
from tests.component.test_dagctl import (
    Dagctl,
    FakeOrchestrator,
    Plan,
    closed_port,
    error,
    serve,
    shut,
)

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "ver": {"type": "string"},
        "level": {"enum": ["1", "2"]},
        "n": {"type": "number", "minimum": 10},
        "flags": {"type": ["string", "null"]},
    },
}


class Typed(FakeOrchestrator):
    """A fake whose ``typed`` workflow has an inputs_schema, checked as the orchestrator checks
    a run's (and a trigger's) inputs: 422 invalid_inputs with its problems; and the routes
    ``--version`` asks."""

    def __init__(self, *, engines_token: str | None = None) -> None:
        super().__init__()
        self.workflows["typed"] = {"id": "typed", "version": "1.0.0", "versions": ["1.0.0"]}
        self.plans["typed"] = Plan(["only"])
        self.engines_token = engines_token

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/api/v1/openapi.json", self.openapi)
        app.router.add_post("/api/v1/triggers", self.create_trigger)
        return app

    @staticmethod
    def refusal(workflow: str, inputs: Any) -> web.Response | None:
        problems = inputs_problems(SCHEMA, inputs) if workflow == "typed" else []
        if not problems:
            return None
        exc = InputsError(workflow, problems)
        return error(422, "invalid_inputs", str(exc), problems=problems)

    async def trigger(self, request: web.Request) -> web.Response:
        body = await request.json()
        refused = self.refusal(request.match_info["workflow_id"], body.get("inputs") or {})
        return refused if refused is not None else await super().trigger(request)

    async def create_trigger(self, request: web.Request) -> web.Response:
        body = await request.json()
        refused = self.refusal(body["workflow_id"], body.get("inputs") or {})
        if refused is not None:
            return refused
        return web.json_response({"id": "t1", "workflow_id": body["workflow_id"]}, status=201)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": "9.9.9"})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response({"openapi": "3.1.0", "info": {"title": "x", "version": "1"}})

    async def engines(self, request: web.Request) -> web.Response:
        if self.engines_token and request.headers.get("Authorization") != (
            f"Bearer {self.engines_token}"
        ):
            return error(401, "unauthorized", "this route needs Authorization: Bearer <token>")
        return await super().engines(request)


async def served(orchestrator: Typed) -> AsyncIterator[Typed]:
    runner = await serve(orchestrator)
    yield orchestrator
    await shut(orchestrator, runner)


@pytest.fixture
async def typed() -> AsyncIterator[Typed]:
    async for orchestrator in served(Typed()):
        yield orchestrator


@pytest.fixture
async def guarded() -> AsyncIterator[Typed]:
    async for orchestrator in served(Typed(engines_token="s3cret")):
        yield orchestrator


@pytest.fixture
def dagctl(capsys: pytest.CaptureFixture[str]) -> Dagctl:
    return Dagctl(capsys)


# -- 1. an --input read as JSON, refused --------------------------------------------------


async def test_a_number_refused_where_text_was_wanted_says_how_to_send_text(
    typed: Typed, dagctl: Dagctl
) -> None:
    result = await dagctl(typed, "run", "typed", "--input", "name=5")
    assert result.code == 1 and result.out == ""
    assert result.err.splitlines() == [
        "dagctl: invalid_inputs: inputs for workflow 'typed' do not match its inputs_schema: "
        'inputs.name: 5 is not of type "string"',
        '  - inputs.name: 5 is not of type "string"',
        "dagctl: --input name=5 was read as JSON, the number 5; to send text, quote it: "
        "--input 'name=\"5\"'",
    ]
    assert not typed.executions
    # as the hint says, quoted it is text, and taken
    taken = await dagctl(typed, "run", "typed", "--input", 'name="5"')
    assert taken.code == 0, taken.err
    (doc,) = typed.executions.values()
    assert doc["inputs"] == {"name": "5"}


async def test_the_hint_shows_the_number_as_sent_when_it_is_not_what_was_typed(
    typed: Typed, dagctl: Dagctl
) -> None:
    result = await dagctl(
        typed, "run", "typed", "--input", "ver=1.10", "--input", "flags=true", "--input", "n=50"
    )
    assert result.code == 1
    hints = [line for line in result.err.splitlines() if "was read as JSON" in line]
    assert hints == [
        "dagctl: --input ver=1.10 was read as JSON, the number 1.1; to send text, quote it: "
        "--input 'ver=\"1.10\"'",
        "dagctl: --input flags=true was read as JSON, the boolean true; to send text, quote "
        "it: --input 'flags=\"true\"'",
    ]


async def test_an_enum_of_texts_gets_the_hint_and_a_refusal_quoting_cannot_mend_does_not(
    typed: Typed, dagctl: Dagctl
) -> None:
    enum = await dagctl(typed, "run", "typed", "--input", "level=1")
    assert enum.code == 1
    assert enum.err.splitlines()[-1] == (
        "dagctl: --input level=1 was read as JSON, the number 1; to send text, quote it: "
        "--input 'level=\"1\"'"
    )
    # a number under its minimum: quoting would not mend it, so nothing more is said
    small = await dagctl(typed, "run", "typed", "--input", "n=5")
    assert small.code == 1
    assert small.err.splitlines() == [
        "dagctl: invalid_inputs: inputs for workflow 'typed' do not match its inputs_schema: "
        "inputs.n: 5 is less than the minimum of 10",
        "  - inputs.n: 5 is less than the minimum of 10",
    ]
    # text given as text, refused for another reason: no hint either
    text = await dagctl(typed, "run", "typed", "--input", "n=ten")
    assert text.code == 1 and "was read as JSON" not in text.err


async def test_a_trigger_refused_for_its_inputs_gets_the_hint_too(
    typed: Typed, dagctl: Dagctl
) -> None:
    result = await dagctl(
        typed, "trigger", "create", "typed", "--cron", "@daily", "--input", "name=null"
    )
    assert result.code == 1
    assert result.err.splitlines()[-1] == (
        "dagctl: --input name=null was read as JSON, null; to send text, quote it: "
        "--input 'name=\"null\"'"
    )


async def test_a_trigger_takes_inputs_as_run_does(
    typed: Typed, dagctl: Dagctl, tmp_path: Path
) -> None:
    # before: its help named --inputs and --inputs-file, which it refused as unknown
    made = await dagctl(
        typed, "trigger", "create", "typed", "--cron", "@daily", "--inputs", '{"n": 11, "x": 1}',
        "--input", "n=12",
    )  # fmt: skip
    assert made.code == 0, made.err
    inputs = tmp_path / "inputs.yaml"
    inputs.write_text("n: 13\nname: Ada\n")
    made = await dagctl(
        typed, "trigger", "create", "typed", "--cron", "@daily", "--inputs-file", str(inputs)
    )
    assert made.code == 0, made.err
    sent = [
        json.loads(body)["inputs"] for _, _, body in typed.requested("POST", "/api/v1/triggers")
    ]
    assert sent == [{"n": 12, "x": 1}, {"n": 13, "name": "Ada"}]


def test_the_hint_escapes_what_the_user_typed_and_reads_the_message_alone() -> None:
    # a server that gives no problems list: its message, which joins them with "; "
    refusal = ApiError(
        422,
        "invalid_inputs",
        "inputs for workflow 'w' do not match its inputs_schema: inputs.a: 5 is less than the "
        'minimum of 10; inputs.b\x1b[31m: 7 is not of type "string"; inputs.xb\x1b[31m: '
        '8 is not of type "string"',
        {},
    )
    assert cli.input_hints(refusal, ["a=5", "b\x1b[31m=7", "c=8"]) == [
        "dagctl: --input b\\x1b[31m=7 was read as JSON, the number 7; to send text, quote it: "
        "--input 'b\\x1b[31m=\"7\"'"
    ]
    # another status is no refusal of the inputs
    other = ApiError(404, "not_found", 'inputs.b: 7 is not of type "string"', {})
    assert cli.input_hints(other, ["b=7"]) == []


# -- 2. a key given twice ------------------------------------------------------------------


async def test_an_input_key_given_twice_is_refused_naming_it(typed: Typed, dagctl: Dagctl) -> None:
    result = await dagctl(
        typed, "run", "typed", "--input", "name=Ada", "--input", " name=Bob", "--wait"
    )
    assert result.code == 2 and result.out == ""
    assert result.err.startswith("usage: dagctl run ")
    assert result.err.endswith(
        "\ndagctl: --input name is given twice ('name=Ada' and ' name=Bob'): give it once\n"
    )
    created = await dagctl(
        typed, "trigger", "create", "typed", "--cron", "@daily", "--input", "n=11",
        "--input", "n=12",
    )  # fmt: skip
    assert created.code == 2 and "--input n is given twice ('n=11' and 'n=12')" in created.err
    assert typed.requested("POST", "/") == []
    # over a key of --inputs, --input wins, by design
    taken = await dagctl(typed, "run", "typed", "--inputs", '{"name": "x"}', "--input", "name=Ada")
    assert taken.code == 0, taken.err
    (doc,) = typed.executions.values()
    assert doc["inputs"] == {"name": "Ada"}


def test_run_help_says_input_wins_over_inputs_and_a_key_goes_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "--help"], {}) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "repeatable, each key once; it wins over the same key in --inputs or --inputs-file" in (
        said
    )
    assert "inputs as JSON; an --input of the same key wins" in said


# -- 3. --version ----------------------------------------------------------------------------


async def test_version_names_dagctl_and_what_the_server_says(typed: Typed, dagctl: Dagctl) -> None:
    result = await dagctl(typed, "--version")
    assert result.code == 0, result.err
    assert result.out.splitlines() == [
        f"dagctl {installed_version()}",
        f"server {typed.url}: reached; version 9.9.9; API 1; engine version 0.1.0",
    ]
    assert result.err == ""
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", installed_version())


async def test_version_without_the_token_says_so(guarded: Typed, dagctl: Dagctl) -> None:
    result = await dagctl(guarded, "--version")
    assert result.code == 0
    assert result.out.splitlines()[1] == (
        f"server {guarded.url}: reached; version 9.9.9; API 1; engines not shown (set DAGCTL_TOKEN (or "
        "API_TOKEN) to the orchestrator's API_TOKEN)"
    )
    given = await dagctl(guarded, "--version", DAGCTL_TOKEN="s3cret")
    assert (
        given.out.splitlines()[1]
        == f"server {guarded.url}: reached; version 9.9.9; API 1; engine version 0.1.0"
    )


def test_version_without_a_server_still_names_dagctl_and_exits_0(
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = f"http://127.0.0.1:{closed_port()}"
    assert main(["--version"], {"DAGCTL_SERVER": server}) == 0
    captured = capsys.readouterr()
    assert captured.out == (
        f"dagctl {installed_version()}\nserver {server}: not reached (connection refused)\n"
    )
    assert captured.err == ""
    # a DAGCTL_SERVER that cannot be used is said, not refused: the version is what was asked
    assert main(["--version"], {"DAGCTL_SERVER": "http://127.0.0.1:8080/api/v1"}) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"dagctl {installed_version()}"
    assert lines[1].startswith("server http://127.0.0.1:8080/api/v1: not asked (DAGCTL_SERVER")


def test_version_waits_briefly_for_a_server_that_does_not_answer(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "VERSION_TIMEOUT", 0.3)
    with socket.socket() as silent:  # listens, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        server = f"http://127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        assert main(["--version"], {"DAGCTL_SERVER": server}) == 0
        took = time.monotonic() - start
    out = capsys.readouterr().out
    assert out.startswith(f"dagctl {installed_version()}\nserver {server}: not reached (")
    assert took < 10.0  # its 0.3 s, not a request's usual 30 s


# -- 4. one duration for one run -------------------------------------------------------------


async def test_run_wait_says_the_same_duration_in_its_progress_and_its_last_line(
    typed: Typed, dagctl: Dagctl
) -> None:
    # the fake's run spans some 90 ms by its stamps, and its final event says 40 ms
    result = await dagctl(typed, "run", "diamond", "--wait")
    assert result.code == 0, result.err
    (eid,) = typed.executions
    lines = result.out.splitlines()
    (ended,) = [line for line in lines if line.split()[1:3] == ["execution", "succeeded"]]
    assert ended.split()[3] == "40ms"
    assert f"execution {eid} succeeded in 40ms" in lines


async def test_without_the_final_event_the_stamps_say_it(dagctl: Dagctl) -> None:
    orchestrator = FakeOrchestrator(sse=False)  # polled: the document alone tells the end
    runner = await serve(orchestrator)
    try:
        result = await dagctl(orchestrator, "run", "hello", "--wait")
    finally:
        await shut(orchestrator, runner)
    assert result.code == 0, result.err
    (doc,) = orchestrator.executions.values()
    (last,) = [line for line in result.out.splitlines() if " succeeded in " in line]
    assert not last.endswith(" in 40ms")  # the stamps' span, not the unseen event's
    assert re.fullmatch(rf"execution {doc['id']} succeeded in \d+ms", last)


def test_the_terminal_event_of_another_run_is_not_taken() -> None:
    told = cli.RunEnd()
    told.take({"execution_id": "b", "type": "execution.succeeded", "data": {"duration_ms": 1}}, "a")
    told.take({"execution_id": "a", "type": "node.succeeded", "data": {"duration_ms": 2}}, "a")
    assert told.duration_ms is None
    told.take({"execution_id": "a", "type": "execution.failed", "data": {"duration_ms": 3}}, "a")
    assert told.duration_ms == 3.0


async def test_version_says_what_answered_when_it_is_no_orchestrator(dagctl: Dagctl) -> None:
    other = FakeOrchestrator()  # no /healthz: something else on the port
    runner = await serve(other)
    try:
        result = await dagctl(other, "--version")
    finally:
        await shut(other, runner)
    assert result.code == 0
    assert result.out.splitlines()[1] == (
        f"server {other.url}: reached, but not an orchestrator's answer: not_found: the "
        "server has no GET /healthz (is it older than this dagctl?)"
    )
