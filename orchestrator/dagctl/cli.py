"""The ``dagctl`` commands: argument parsing, one function per command, and ``main``.

``main`` reads the environment once into ``Settings`` and hands it down; commands talk to the
orchestrator through ``calling.Client`` and draw with ``showing``. Exit codes: 0 done, 1 the
server refused or a run did not succeed, 2 bad arguments or an invalid workflow file, 3 when a
followed run (``run --wait``, ``events -f``) is left because the orchestrator stayed out of reach
for ``GIVE_UP_AFTER`` (the run goes on), 130 when it is left with Ctrl-C (the run goes on too).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import ssl
import sys
import time
import urllib.parse
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, TextIO, cast

from engine import installed_version
from engine.core import jsontext
from engine.core.states import EXECUTION_STATUSES, EXECUTION_TERMINAL
from engine.core.values import JSON, JSONObject, json_kind, nests_deeper
from orchestrator.dagctl.calling import (
    NOT_HTTP,
    ApiError,
    Client,
    DagctlError,
    StreamUnavailable,
    Unreachable,
    one_line,
    printable,
    server_problem,
)
from orchestrator.dagctl.sources import SpecSource, in_reference_order, spec_sources

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from orchestrator.dagctl.showing import RunProgress
    from orchestrator.store import StateSummary

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOST, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
DEFAULT_SERVER = "http://127.0.0.1:8080"
POLL_INTERVAL = 0.5
STREAM_RETRIES = 3
TERMINAL_EVENTS = frozenset(f"execution.{status}" for status in EXECUTION_TERMINAL)

_LINE = re.compile(r"line (\d+): ")
_SURROGATE = re.compile("[\ud800-\udfff]")
"""A lone surrogate: what a byte that is not UTF-8 becomes in an argument, or a "\\udc80"
escape in the server's JSON; no output encoding takes one."""


class BadArguments(DagctlError):
    """Arguments that parse but do not make sense: the command's usage and a line naming the
    argument, exit 2."""


class Unusable(BadArguments):
    """Exit 2 told in its own lines, without the usage, which could not help: a variable or a
    file that cannot be used, or an id several runs fit."""


@dataclass(frozen=True, slots=True)
class Settings:
    """What dagctl takes from the environment, read once in ``main``."""

    server: str = DEFAULT_SERVER
    token: str | None = None
    token_variable: str = "DAGCTL_TOKEN"
    """Where ``token`` came from: DAGCTL_TOKEN, or API_TOKEN when that is unset."""
    ca_file: str | None = None
    """DAGCTL_CA_FILE: the CA that signed an https server's certificate."""
    cert_file: str | None = None
    key_file: str | None = None
    """DAGCTL_CERT_FILE, DAGCTL_KEY_FILE: a client certificate, for a server that asks one."""
    environ: Mapping[str, str] = field(default_factory=dict)
    """The whole environment, for the processes ``dagctl up`` starts (DESIGN section 6)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        server = (env.get("DAGCTL_SERVER") or "").strip() or DEFAULT_SERVER
        if "://" not in server:
            server = "http://" + server
        # a blank DAGCTL_TOKEN is unset, not a token that hides API_TOKEN
        own = (env.get("DAGCTL_TOKEN") or "").strip()
        token = own or (env.get("API_TOKEN") or "").strip() or None
        return cls(
            server=server.rstrip("/"),
            token=token,
            token_variable="DAGCTL_TOKEN" if own else "API_TOKEN",
            ca_file=(env.get("DAGCTL_CA_FILE") or "").strip() or None,
            cert_file=(env.get("DAGCTL_CERT_FILE") or "").strip() or None,
            key_file=(env.get("DAGCTL_KEY_FILE") or "").strip() or None,
            environ=MappingProxyType(dict(env)),
        )

    def check_server(self) -> None:
        """BadArguments when DAGCTL_SERVER cannot be an orchestrator's URL."""
        problem = server_problem(self.server)
        if problem is not None:
            raise Unusable(f"DAGCTL_SERVER {self.server!r}: {problem}")

    def check_token(self) -> None:
        """BadArguments when the token cannot go in an Authorization header."""
        if self.token is not None:
            header_value(self.token_variable, self.token, secret=True, error=Unusable)

    def tls(self) -> ssl.SSLContext | None:
        """The TLS client context the variables ask for; None: the system's defaults."""
        if self.ca_file is None and self.cert_file is None:
            return None
        if (self.cert_file is None) != (self.key_file is None):
            raise Unusable("DAGCTL_CERT_FILE and DAGCTL_KEY_FILE go together")
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise Unusable(f"DAGCTL_CA_FILE {self.ca_file}: {_why(exc)}") from None
        if self.cert_file is not None and self.key_file is not None:
            try:
                # no passphrase prompt on the terminal: an encrypted key is refused below
                context.load_cert_chain(self.cert_file, self.key_file, password=_no_passphrase)
            except EncryptedKey:
                raise Unusable(
                    f"DAGCTL_KEY_FILE {self.key_file} is encrypted: give the key without"
                    " its passphrase"
                ) from None
            except (OSError, ssl.SSLError) as exc:
                raise Unusable(
                    f"DAGCTL_CERT_FILE {self.cert_file} / DAGCTL_KEY_FILE {self.key_file}: "
                    f"{_why(exc)}"
                ) from None
        return context


class EncryptedKey(Exception):
    """A client key that needs a passphrase."""


def _no_passphrase() -> bytes:
    raise EncryptedKey


def _why(exc: OSError | ssl.SSLError) -> str:
    return str(exc.strerror or exc) if isinstance(exc, OSError) else str(exc)


def header_value(
    where: str,
    value: str,
    *,
    secret: bool = False,
    error: type[BadArguments] = BadArguments,
) -> str:
    """``value`` when an HTTP header can carry it as it is, else ``error`` naming ``where``
    (an option or a variable) and the first character that cannot go; a secret is not shown."""
    for index, char in enumerate(value, 1):
        if not " " <= char <= "~":
            shown = "" if secret else f" {value!r}"
            raise error(
                f"{where}{shown}: character {index} ({char!r}) cannot go in an HTTP header, "
                "which holds printable ASCII only (letters, digits, punctuation, spaces)"
            )
    return value


# -- arguments ------------------------------------------------------------------------------


FILE_HELP = (
    "a spec file, a directory (its .yaml, .yml and .json files), or - for standard input; "
    "repeatable"
)
INPUT_HELP = (
    "one input; V is read as JSON when it parses (n=5 is the number 5, on=true a boolean, "
    """'id="7"' the text 7), else as text (name=Ada); repeatable, each key once; """
    "it wins over the same key in --inputs or --inputs-file"
)


def inputs_arguments(parser: argparse.ArgumentParser) -> None:
    """``--input K=V`` (repeatable), over one of ``--inputs JSON`` or ``--inputs-file F``:
    ``run`` and ``trigger create`` take inputs alike (``read_inputs``)."""
    parser.add_argument(
        "--input", dest="pairs", action="append", default=[], metavar="K=V", help=INPUT_HELP
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--inputs",
        dest="inputs_json",
        metavar="JSON",
        help="inputs as JSON; an --input of the same key wins",
    )
    group.add_argument(
        "--inputs-file",
        metavar="FILE",
        help="inputs from a JSON or YAML file; an --input of the same key wins",
    )


def read_inputs(
    *, pairs: Sequence[str] = (), inputs_json: str | None = None, inputs_file: str | None = None
) -> JSONObject:
    """Inputs from ``--inputs`` or ``--inputs-file``, with ``--input k=v`` pairs on top (a key
    given twice by ``--input`` is refused). JSON is
    read by the server's rules (``jsontext.loads_sent``), and the inputs held to its rules for
    a caller's (an object, without ``_trigger``), so what it would refuse is refused here,
    exit 2, naming the flag: the server can only say "the request body", which the user never
    wrote, and Python's json would read ``1e999`` as infinity and a key written twice as the
    last one."""
    base: JSON = {}
    origin = "--inputs"
    if inputs_json is not None:
        base = _given_json(inputs_json, origin)
    elif inputs_file is not None:
        path = Path(inputs_file)
        origin = f"--inputs-file {path}"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise Unusable(f"{origin}: {exc.strerror or exc}") from None
        if path.suffix.lower() == ".json":
            base = _given_json(text, origin)
        else:
            base = _given_yaml(text, origin)
    # null is none, as the server reads it
    inputs = dict(_caller_inputs({} if base is None else base, origin))
    given: dict[str, str] = {}
    for pair in pairs:
        key, value = parse_input(pair)
        if key in given:
            # as a key written twice in --inputs is refused: the last one winning unsaid
            # would run with a value the user may not have meant
            raise BadArguments(
                printable(
                    f"--input {key} is given twice ({given[key]!r} and {pair!r}): give it once"
                )
            )
        given[key] = pair
        _caller_inputs({key: value}, f"--input {key}")
        inputs[key] = value
    return inputs


def _caller_inputs(inputs: JSON, origin: str) -> JSONObject:
    """``inputs`` when the server takes them from a caller, else BadArguments naming
    ``origin``: a JSON object, without the key only a trigger sets (``engine.inputs``'s rule,
    which the server applies)."""
    if not isinstance(inputs, dict):
        raise BadArguments(f"{origin}: inputs must be a JSON object, not {json_kind(inputs)}")
    if inputs:
        # imported when there is something to check: it brings jsonschema (about 0.15 s)
        from engine.inputs import caller_inputs_problem

        problem = caller_inputs_problem(inputs)
        if problem is not None:
            raise BadArguments(f"{origin}: {problem}")
    return inputs


def _given_json(text: str, origin: str) -> JSON:
    """``text`` as the server reads JSON, or BadArguments naming ``origin``
    (``_NotJsonArgument`` for text that is not JSON at all)."""
    try:
        value = jsontext.loads_sent(text)
    except jsontext.DuplicateKey as exc:
        raise BadArguments(f"{origin} holds a {exc}") from None
    except jsontext.RefusedJson as exc:  # JSON, but a number no double holds
        raise BadArguments(f"{origin}: {exc}") from None
    except ValueError as exc:  # broken syntax, NaN, Infinity
        raise _NotJsonArgument(f"{origin} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadArguments(f"{origin} nests deeper than {jsontext.MAX_JSON_DEPTH} levels") from None
    # as the server checks a body's JSON once parsed
    if nests_deeper(value, jsontext.MAX_JSON_DEPTH):
        raise BadArguments(f"{origin} nests deeper than {jsontext.MAX_JSON_DEPTH} levels")
    if _SURROGATE.search(json.dumps(value, ensure_ascii=False)):
        # an escape such as "\\udc80" reads as half a character, which no UTF-8 text holds
        raise BadArguments(
            f"{origin} holds a lone UTF-16 surrogate escape such as \\udc80: text must be "
            "valid Unicode"
        )
    return value


class _NotJsonArgument(BadArguments):
    """Text given as JSON that is not JSON at all (broken syntax, NaN): ``--input`` takes it
    as text, where ``--inputs`` refuses it."""


def _given_yaml(text: str, origin: str) -> JSON:
    """A YAML inputs file read as a spec file is (a key written twice is told with its line),
    its values held to what JSON carries: YAML reads ``.inf``, ``.nan`` and dates."""
    from engine.core.errors import SpecError
    from engine.documents import non_json_values, read_document

    try:
        loaded, _, problems = read_document(text, None)
    except SpecError as exc:
        problems = exc.problems
    if problems:
        told = "; ".join(problem.render() for problem in problems)
        raise BadArguments(f"{origin}: not valid YAML: {told}")
    # the reader refuses nesting past 64 levels already, and this, text UTF-8 cannot hold
    for at, why in non_json_values(loaded, keys=True):
        where = "inputs" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in at)
        raise BadArguments(f"{origin}: {where}: {why}")
    value: JSON = loaded
    return value


def parse_input(pair: str) -> tuple[str, JSON]:
    """``k=v`` from ``--input``: the value as JSON when it parses (``n=5`` is 5), else text
    (``name=Ada``, ``v=NaN``); JSON the server would refuse (``1e999``, 5,000 digits, a key
    twice) is refused, naming the key, not turned into infinity or into text."""
    key, sep, raw = pair.partition("=")
    key = key.strip()
    if not sep or not key:
        raise BadArguments(f"--input {pair!r}: expected key=value")
    try:
        return key, _given_json(raw, f"--input {key}")
    except _NotJsonArgument:
        return key, raw  # not JSON at all (name=Ada, v=NaN): text, as the flag says


def input_hints(refusal: ApiError, pairs: Sequence[str]) -> list[str]:
    """Lines to say after the server refused the inputs, for each ``--input`` whose value went
    as JSON other than text (``name=5`` as the number 5, ``ver=1.10`` as 1.1) where the
    refusal of that key may want text: it names the type "string", or the value as typed in
    quotes (an enum of "5" and "6"). Nothing is said of a refusal quoting would not mend (a
    number under its minimum), nor of values the server took."""
    if refusal.status not in (400, 422):
        return []
    problems = refusal.details.get("problems")
    texts = [p for p in problems if isinstance(p, str)] if isinstance(problems, list) else []
    texts = texts or [refusal.message]
    hints: list[str] = []
    for pair in pairs:
        key, value = parse_input(pair)  # read already, without a refusal
        if isinstance(value, str):
            continue
        typed = pair.partition("=")[2]
        quoted = json.dumps(typed.strip(), ensure_ascii=False)
        said = _said_of(f"inputs.{key}", texts)
        if not any('"string"' in text or quoted in text for text in said):
            continue
        if value is None:
            read = "null"
        elif isinstance(value, bool | int | float):  # as sent: 1.10 went as 1.1
            read = f"the {json_kind(value).split()[-1]} {json.dumps(value)}"
        else:
            read = json_kind(value)
        instead = shlex.quote(f"{key}={quoted}")
        hints.append(
            printable(
                f"dagctl: --input {key}={typed} was read as JSON, {read}; to send text, "
                f"quote it: --input {instead}"
            )
        )
    return hints


def _said_of(path: str, texts: Sequence[str]) -> list[str]:
    """What ``texts`` (a refusal's problems, or its message, which joins them with "; ") say
    of ``path`` itself (``inputs.name: ...``), not of a field under it or of one whose name
    ends the same."""
    prefix = f"{path}: "
    said: list[str] = []
    for text in texts:
        at = text.find(prefix)
        while at != -1:
            if at == 0 or text[at - 2 : at] in (": ", "; "):
                start = at + len(prefix)
                end = text.find("; inputs", start)
                said.append(text[start:] if end == -1 else text[start:end])
            at = text.find(prefix, at + 1)
    return said


PAGE: Final = 1000
"""Triggers or workflows ``dagctl get`` asks for at a time (pages it follows to the end)."""


def _every_trigger(client: Client, workflow: str | None) -> JSONObject:
    """Every trigger, page by page."""
    return _every("triggers", client, workflow=workflow)


def _every(resource: str, client: Client, **query: Any) -> JSONObject:
    """Every one of ``resource`` (triggers, workflows), following ``next_after`` page by page."""
    items: list[JSON] = []
    after: str | None = None
    while True:
        page = client.get(f"/api/v1/{resource}", after=after, limit=PAGE, **query)
        found = page.get(resource)
        items.extend(found if isinstance(found, list) else [])
        following = page.get("next_after")
        if not isinstance(following, str) or not following or following == after:
            return {resource: items}
        after = following


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _at_most(limit: int) -> Callable[[str], int]:
    """An argument type: a whole number from 1 to ``limit`` (what the server gives at most)."""

    def parse(text: str) -> int:
        value = _positive(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"must be at most {limit}, got {value}")
        return value

    return parse


LIST_LIMIT: Final = 1000
"""The most executions ``get executions`` asks for: what the server gives at most."""
_list_limit = _at_most(LIST_LIMIT)

HISTORY_LIMIT: Final = 1000
"""The most slots ``trigger history`` asks for: what the server gives at most."""
_history_limit = _at_most(HISTORY_LIMIT)


DEFAULT_LIMIT: Final = 50
EVENTS_PAGE: Final = 5000
"""Events asked for per page of a stored timeline (the server gives at most 10,000)."""

GET_FLAGS: Final = {
    "workflow": ("executions", "triggers"),
    "status": ("executions",),
    "limit": ("executions",),
    "before": ("executions",),
}
"""The ``get`` options and the resources each applies to; any other refuses them."""


RESOURCES = {
    "workflows": "workflows",
    "workflow": "workflows",
    "wf": "workflows",
    "executions": "executions",
    "execution": "executions",
    "exec": "executions",
    "engines": "engines",
    "engine": "engines",
    "triggers": "triggers",
    "trigger": "triggers",
}


class VersionAsked(Exception):
    """``dagctl --version``: raised as the option is read, before argparse could refuse the
    command missing after it."""


class _AskVersion(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(
            option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help
        )

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        raise VersionAsked


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dagctl",
        description="Command line for DAG Engine. The orchestrator is at $DAGCTL_SERVER "
        f"(default {DEFAULT_SERVER}); $DAGCTL_TOKEN (or $API_TOKEN) is sent as a bearer token; "
        "$DAGCTL_CA_FILE, $DAGCTL_CERT_FILE and $DAGCTL_KEY_FILE are for https servers.",
    )
    parser.add_argument(
        "--version",
        action=_AskVersion,
        help="print dagctl's version, then the API and engine versions of the server at "
        "$DAGCTL_SERVER when it answers",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def output(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-o", "--output", choices=("table", "json"), default="table", help="default: table"
        )

    up = sub.add_parser("up", help="run an orchestrator and engines locally until Ctrl-C")
    up.add_argument("--engines", type=_positive, default=2, metavar="N", help="default: 2")
    up.add_argument("--no-examples", action="store_true", help="do not register examples/*.yaml")

    validate = sub.add_parser("validate", help="check workflow files locally, without a server")
    validate.add_argument(
        "-f", "--file", dest="files", action="append", required=True, metavar="FILE", help=FILE_HELP
    )

    apply = sub.add_parser("apply", help="register workflow files")
    apply.add_argument(
        "-f", "--file", dest="files", action="append", required=True, metavar="FILE", help=FILE_HELP
    )
    apply.add_argument(
        "--force", action="store_true", help="register even if dependents' ranges are left behind"
    )

    run = sub.add_parser("run", help="start an execution (and follow it with --wait)")
    run.add_argument("workflow")
    inputs_arguments(run)
    run.add_argument("--version", metavar="RANGE", help='a version or range, e.g. "^1.2"')
    run.add_argument("--wait", action="store_true", help="follow the run live until it ends")
    run.add_argument("--idempotency-key", metavar="KEY")
    output(run)

    get = sub.add_parser("get", help="list workflows, executions, engines or triggers")
    get.add_argument(
        "resource", choices=sorted(RESOURCES), metavar="workflows|executions|engines|triggers"
    )
    get.add_argument("--workflow", metavar="ID", help="executions (or triggers) of this workflow")
    get.add_argument(
        "--status",
        choices=EXECUTION_STATUSES,
        metavar="STATUS",
        help=f"executions in this state: {', '.join(EXECUTION_STATUSES)}",
    )
    get.add_argument(
        "--limit",
        type=_list_limit,
        metavar="N",
        help=f"executions shown, 1 to {LIST_LIMIT}, default: {DEFAULT_LIMIT}",
    )
    get.add_argument(
        "--before", metavar="ID", help="executions created before this one (the next page)"
    )
    output(get)

    describe = sub.add_parser("describe", help="one execution (or workflow) in detail")
    describe.add_argument("resource", choices=("execution", "workflow"))
    describe.add_argument("id", metavar="ID", help=f"a workflow's id; {ID_HELP}")
    describe.add_argument("--version", help="with describe workflow: this version")
    output(describe)

    events = sub.add_parser("events", help="an execution's timeline, or the live stream with -f")
    events.add_argument("id", nargs="?", metavar="EXECUTION", help=f"{ID_HELP}; --execution too")
    events.add_argument("-f", "--follow", action="store_true", help="follow the live stream")
    events.add_argument("--workflow", metavar="ID")
    events.add_argument("--execution", metavar="ID", help=ID_HELP)
    output(events)

    logs = sub.add_parser(
        "logs", help="what an execution's scripts logged, or follow it live with -f"
    )
    logs.add_argument("id", metavar="EXECUTION", help=ID_HELP)
    logs.add_argument("--node", metavar="ID", help="only this node's lines (its items' too)")
    logs.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="after the stored lines, follow new ones until the run ends, then exit as "
        "run --wait does (0 only when it succeeded)",
    )
    output(logs)

    trigger = sub.add_parser("trigger", help="create, pause, resume or delete a cron trigger")
    actions = trigger.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="a cron trigger for a workflow")
    create.add_argument("workflow")
    create.add_argument("--cron", required=True, help='5 fields, 6 with seconds first, "@daily"')
    create.add_argument("--timezone", help="IANA name; default UTC")
    create.add_argument("--id", help="default: made up")
    create.add_argument("--version", metavar="RANGE", help="default: latest")
    create.add_argument("--overlap", choices=("skip", "allow", "cancel_previous"))
    create.add_argument("--catchup", choices=("none", "latest", "all"))
    inputs_arguments(create)
    create.add_argument("--paused", action="store_true")
    output(create)
    for name, what in (
        ("pause", "stop firing until resumed"),
        ("resume", "fire again from now"),
        ("delete", "delete a trigger made through the API"),
        ("history", "its decided slots, newest first"),
    ):
        action = actions.add_parser(name, help=what)
        action.add_argument("id", metavar="ID")
        if name == "history":
            action.add_argument(
                "--limit",
                type=_history_limit,
                default=DEFAULT_LIMIT,
                metavar="N",
                help=f"slots shown, 1 to {HISTORY_LIMIT}",
            )
        output(action)

    cancel = sub.add_parser("cancel", help="cancel an execution and its children")
    cancel.add_argument(
        "id",
        metavar="ID",
        help=f"the execution's id, or its first {SHORTEST_ABBREVIATION} characters or more (of "
        f"one of the newest {RECENT} runs, when no other fits them)",
    )
    cancel.add_argument("--reason", help="recorded with the cancellation")
    output(cancel)

    delete = sub.add_parser(
        "delete",
        help="delete a workflow: its versions and triggers, then its executions",
        description="Delete a workflow: every version and trigger of it at once, then its "
        "executions with their events, in the background. Refused while executions of it are "
        "queued or running, or while other workflows' latest versions reference it.",
    )
    delete.add_argument("kind", choices=["workflow"], metavar="workflow")
    delete.add_argument("id", metavar="ID", help="the workflow's id")
    output(delete)

    retry = sub.add_parser(
        "retry",
        help="run a failed, partial, cancelled or timed-out execution again, keeping the "
        "outputs of its nodes that succeeded",
    )
    retry.add_argument(
        "id",
        metavar="ID",
        help=f"the execution's id, or its first {SHORTEST_ABBREVIATION} characters or more",
    )
    retry.add_argument("--wait", action="store_true", help="follow the new run live until it ends")
    retry.add_argument("--idempotency-key", metavar="KEY")
    output(retry)

    backup = sub.add_parser(
        "backup", help="save a consistent copy of the orchestrator's state database"
    )
    backup.add_argument(
        "file", metavar="FILE", help="where to write it (a new file; written as FILE.part first)"
    )
    backup.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    # each command's own usage, shown with a refusal of its arguments as argparse shows it
    for command in (*sub.choices.values(), *actions.choices.values()):
        command.set_defaults(usage=command.format_usage)
    return parser


_FILE_ARGUMENTS: Final = frozenset({"files", "inputs_file", "file"})
"""Arguments that name files, which may be any bytes the file system takes."""


def check_text(args: argparse.Namespace) -> None:
    """BadArguments for an argument that is not UTF-8 (a shell passes such bytes through as
    lone surrogates): it could go neither in a URL nor in a JSON body."""
    for name, value in vars(args).items():
        if name in _FILE_ARGUMENTS:
            continue
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and _SURROGATE.search(text):
                raise BadArguments(f"argument {text!r} is not valid UTF-8")


# -- shared plumbing ------------------------------------------------------------------------


def _console(out: TextIO) -> Console:
    from rich.console import Console

    # off a terminal, lines are not cut to 80 columns: the output is for files and pipes;
    # what is drawn is plain text and styles, never markup or :emoji: codes from the server
    return Console(
        file=out,
        highlight=False,
        markup=False,
        emoji=False,
        width=None if out.isatty() else 160,
    )


def _print(out: TextIO, renderable: RenderableType) -> None:
    console = _console(out)
    if out.isatty():
        console.print(renderable)
        return
    with console.capture() as captured:  # for files and pipes: no padding at line ends
        console.print(renderable)
    out.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def _json(value: Any, **options: Any) -> str:
    """JSON text with its characters as they are, or as ASCII escapes when one is a lone
    surrogate, which the output could not encode."""
    text = json.dumps(value, ensure_ascii=False, **options)
    return json.dumps(value, **options) if _SURROGATE.search(text) else text


def _dump(out: TextIO, value: Any) -> None:
    out.write(_json(value, indent=2) + "\n")


def _dump_shown(out: TextIO, value: Any) -> None:
    """JSON for a person to read (outputs after a run), not ``-o json``: what JSON leaves raw
    (DEL, C1 controls, bidirectional overrides) escaped as all server text is shown."""
    out.write(printable(_json(value, indent=2)) + "\n")


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


FULL_ID: Final = 32
"""The length of an execution id (``orchestrating.new_execution_id``)."""
SHORTEST_ABBREVIATION: Final = 8
"""Fewest characters of an id that stand for it: as many as an event line shows."""
RECENT: Final = 1000
"""The newest executions an abbreviated id is looked for among."""
ID_HELP: Final = (
    f"an execution's id, or its first or last {SHORTEST_ABBREVIATION} characters or more (of "
    f"one of the newest {RECENT} runs, when no other fits them)"
)


def check_ids(args: argparse.Namespace) -> None:
    """BadArguments for an id given empty (``dagctl cancel "$ID"`` with ``ID`` unset): asked
    for as it is, it would name no execution, or a listing."""
    creating = getattr(args, "action", None) == "create"
    for name, shown in (
        ("id", "--id" if creating else "ID"),
        ("execution", "--execution"),
        ("before", "--before"),
    ):
        value = getattr(args, name, None)
        if isinstance(value, str) and not value.strip():
            raise BadArguments(f"{args.command}: {shown} is empty (an unset shell variable?)")
    workflow = getattr(args, "workflow", None)
    if (args.command == "run" or creating) and not (workflow or "").strip():
        raise BadArguments(f"{args.command}: the workflow id is empty (an unset shell variable?)")
    for name in _NOT_EMPTY:
        value = getattr(args, name, None)
        if name == "workflow" and (args.command == "run" or creating):
            continue  # the positional one, above
        if isinstance(value, str) and not value.strip():
            flag = "--" + name.replace("_", "-")
            # given empty is not "not given": --workflow "" would list every workflow's runs
            raise BadArguments(f"{args.command}: {flag} is empty (an unset shell variable?)")


_NOT_EMPTY: Final = ("idempotency_key", "workflow", "version", "timezone", "cron", "reason")
"""Options whose empty value is refused rather than taken as the option not given."""


def _execution(client: Client, execution_id: str, *, acting: str | None = None) -> JSONObject:
    """One execution by id, or by an abbreviation of a recent one's id (among the newest
    ``RECENT``) that fits it alone: its first ``SHORTEST_ABBREVIATION`` characters or more, or
    as many of its last, which event lines show. ``acting``: the command that acts on the run
    (cancel, retry) takes the first only, so that a stray word cannot act on a run whose id
    happens to end with it."""
    try:
        return client.get(f"/api/v1/executions/{_quote(execution_id)}")
    except ApiError as exc:
        if exc.status != 404 or len(execution_id) >= FULL_ID:
            raise
        unknown = exc
    if len(execution_id) < SHORTEST_ABBREVIATION:
        raise ApiError(
            404,
            unknown.code,
            f"{unknown.message} (an abbreviated id needs at least {SHORTEST_ABBREVIATION} "
            "characters)",
            unknown.details,
        )
    given = printable(execution_id)
    found = client.get("/api/v1/executions", limit=RECENT).get("executions")
    recent = [
        e for e in (found if isinstance(found, list) else []) if isinstance(e, dict) and e.get("id")
    ]
    starting = [e for e in recent if str(e["id"]).startswith(execution_id)]
    ending = [e for e in recent if str(e["id"]).endswith(execution_id)]
    if acting and not starting and ending:
        raise BadArguments(
            f"{acting} takes an execution's whole id or its first {SHORTEST_ABBREVIATION} "
            f"characters or more, not its last: {given} ends "
            + ", ".join(printable(str(e["id"])) for e in ending)
        )
    matches = starting if acting else starting + [e for e in ending if e not in starting]
    if not matches:
        raise ApiError(
            404,
            unknown.code,
            f"{unknown.message}; nor does any of the newest {RECENT} executions' ids "
            f"{'begin' if acting else 'begin or end'} with it",
            unknown.details,
        )
    if len(matches) > 1:
        shown = [
            f"  {printable(str(e['id']))}  {printable(str(e.get('workflow_id')))}  "
            f"{printable(str(e.get('status')))}"
            for e in matches[:20]
        ]
        more = [f"  ... and {len(matches) - 20} more"] if len(matches) > 20 else []
        raise Unusable(
            "\n".join(
                [f"{given} fits {len(matches)} executions: give more of the id", *shown, *more]
            )
        )
    return client.get(f"/api/v1/executions/{_quote(str(matches[0]['id']))}")


def print_error(exc: DagctlError, err: TextIO, settings: Settings | None = None) -> None:
    """The error as one line (and an ApiError's details below), the server's words escaped;
    ``settings`` tell which variable a hint about the token names."""
    if isinstance(exc, Unreachable):
        if "certificate" in str(exc).lower():
            # it answered, over TLS, with a certificate (or a demand for one) we cannot meet
            hint = "set DAGCTL_CA_FILE to the CA that signed its certificate, or DAGCTL_CERT_FILE"
            hint += " and DAGCTL_KEY_FILE when it asks for a client certificate"
        elif exc.reason == NOT_HTTP:
            hint = "set DAGCTL_SERVER to its HTTP API address, which dagctl up prints"
        elif exc.reason in _CUT_OFF and exc.server.startswith("https:"):
            # a TLS 1.3 server that wants a client certificate says so only by hanging up
            hint = "set DAGCTL_CERT_FILE and DAGCTL_KEY_FILE when it asks for a client certificate"
        elif exc.reason in _CUT_OFF:
            hint = "start it with dagctl up, or set DAGCTL_SERVER (https:// if it serves TLS)"
        else:
            hint = "start it with dagctl up, or set DAGCTL_SERVER"
        err.write(f"dagctl: {printable(str(exc))} ({hint})\n")
        return
    line = f"dagctl: {printable(str(exc))}"
    if isinstance(exc, ApiError) and exc.status in (401, 403):
        line += f" ({_token_hint(exc.status, settings or Settings())})"
    err.write(line + "\n")
    if isinstance(exc, ApiError):
        for line in detail_lines(exc.details):
            err.write(line + "\n")


_CUT_OFF: Final = frozenset({"connection reset", "the connection closed without an answer"})


def _token_hint(status: int, settings: Settings) -> str:
    if status == 403:
        return f"{settings.token_variable} is not the orchestrator's API_TOKEN"
    if settings.token is None:
        return "set DAGCTL_TOKEN (or API_TOKEN) to the orchestrator's API_TOKEN"
    # sent, yet not received: a redirect drops it (see Client._request), as a proxy may
    return (
        f"{settings.token_variable} did not reach it: a redirect or a proxy on the way may drop"
        " it, so set DAGCTL_SERVER to the orchestrator's own address"
    )


def detail_lines(details: JSONObject, rename: Callable[[str], str] = str) -> list[str]:
    """An error's details as indented lines; lists (``problems``) one item a line."""
    lines: list[str] = []
    for key, value in details.items():
        if isinstance(value, list):
            if key != "problems":
                lines.append(f"  {key}:")
            lines += [f"  - {rename(v) if isinstance(v, str) else json.dumps(v)}" for v in value]
        elif isinstance(value, str):
            lines.append(f"  {key}: {value}")
        else:
            lines.append(f"  {key}: {json.dumps(value, ensure_ascii=False)}")
    return [printable(line) for line in lines]


# -- commands -------------------------------------------------------------------------------


_WAITS_FOR_ANOTHER: Final = frozenset(
    {"not_found", "no_matching_version", "dependents_out_of_range"}
)
"""Refusals of a spec that references a workflow not registered yet, or that its dependents'
ranges leave out: one of the files given with it may be that workflow, or a dependent's new
version, so it is tried again once they are in."""


def cmd_apply(args: argparse.Namespace, client: Client, out: TextIO, err: TextIO) -> int:
    errors: dict[int, list[str]] = {}  # by the source's place, to be told in the order given
    pending: list[tuple[int, SpecSource]] = []
    unreadable = False
    for index, source in enumerate(spec_sources(args.files, sys.stdin.buffer)):
        if source.error is not None:
            said = f"{source.name}: {source.error.strerror or source.error}"
            errors[index] = [f"dagctl: {printable(said)}"]
            unreadable = True
        else:
            pending.append((index, source))
    # children first where the files say which they are; then in passes, as long as one
    # registers something: a parent refused before its child (one the server resolves
    # otherwise, or given without an id) waits for the next
    pending = in_reference_order(pending)
    last_refused: list[tuple[int, SpecSource, ApiError]] = []
    while pending:
        refused: list[tuple[int, SpecSource, ApiError]] = []
        for index, source in pending:
            try:
                reply = client.call(
                    "POST",
                    "/api/v1/workflows",
                    query={"force": "true"} if args.force else None,
                    data=source.data,
                    headers={
                        "Content-Type": "application/json" if source.is_json else "application/yaml"
                    },
                )
            except ApiError as exc:
                refused.append((index, source, exc))
                continue
            workflow = reply.body.get("workflow")
            wf = workflow if isinstance(workflow, dict) else {}
            created = reply.body.get("created", reply.status == 201)
            verdict = "registered" if created else "unchanged"
            ref = f"{wf.get('id', '?')}@{wf.get('version', '?')}"
            out.write(f"workflow {printable(ref)} {verdict}\n")
            warnings = wf.get("warnings")
            for warning in warnings if isinstance(warnings, list) else []:
                err.write(printable(f"dagctl: warning: {ref}: {warning}") + "\n")
        progress = len(refused) < len(pending)
        if not progress and not args.force:
            progress = _force_upgrades(client, refused, out)
        last_refused = refused
        pending = []
        for index, source, refusal in refused:
            if progress and refusal.code in _WAITS_FOR_ANOTHER:
                pending.append((index, source))
            else:
                errors[index] = _refusal_lines(source.name, refusal)
    for index in sorted(errors):
        for line in errors[index]:
            err.write(line + "\n")
    if last_refused:
        cycle = _waiting_cycle(_waits(last_refused))
        if cycle is not None:
            # each was told "not registered": the reason neither ever will be is the loop
            err.write(
                printable(
                    f"dagctl: {' -> '.join(cycle)}: these workflows given together use each "
                    "other, and sub-workflows may not form a cycle: none can be registered first"
                )
                + "\n"
            )
    if unreadable:  # as validate: a file that is not there is the command line's fault
        return EXIT_USAGE
    return EXIT_FAILED if errors else EXIT_OK


def _force_upgrades(
    client: Client, refused: list[tuple[int, SpecSource, ApiError]], out: TextIO
) -> bool:
    """Register with force the refused versions whose dependents left out of their range all
    have a new version given with them that waits for nothing else: children's new major
    versions applied with their parents' new versions, which need them. Those parents then
    register in the next pass. True when one was registered (it is dropped from ``refused``).
    """
    from orchestrator.versions import range_matches

    waits = _waits(refused)
    # workflow -> (entry, version, dependents) of each refusal only its dependents stand in
    candidates: dict[str, tuple[tuple[int, SpecSource, ApiError], str, list[JSONObject]]] = {}
    for entry in refused:
        details = entry[2].details
        workflow, version = details.get("workflow"), details.get("version")
        named = details.get("dependents")
        total = details.get("dependents_total")
        if (
            entry[2].code == "dependents_out_of_range"
            and isinstance(workflow, str)
            and isinstance(version, str)
            and isinstance(named, list)
            and named
            # the details list the first 50: one not listed cannot be known to follow
            and (not isinstance(total, int) or total <= len(named))
        ):
            candidates[workflow] = (entry, version, [d for d in named if isinstance(d, dict)])

    def met(user: str) -> bool:
        # every need of the user's new version is a candidate whose version it takes: forced,
        # they leave the user nothing to wait for (its other refusals would keep it out)
        needs = waits.get(user) or {}
        return bool(needs) and all(
            need in candidates and all(range_matches(rng, candidates[need][1]) for rng in ranges)
            for need, ranges in needs.items()
        )

    # a candidate one of whose dependents cannot follow it is no candidate, and without it
    # another's dependent may not follow either: dropped until none is
    while True:
        failing = [
            workflow
            for workflow, (_, _, dependents) in candidates.items()
            if not all(met(str(d.get("workflow", "")).split("@")[0]) for d in dependents)
        ]
        if not failing:
            break
        for workflow in failing:
            del candidates[workflow]
    forced = False
    for workflow, (entry, version, dependents) in candidates.items():
        source = entry[1]
        try:
            client.call(
                "POST",
                "/api/v1/workflows",
                query={"force": "true"},
                data=source.data,
                headers={
                    "Content-Type": "application/json" if source.is_json else "application/yaml"
                },
            )
        except ApiError:
            continue  # told with the rest, as refused
        refused.remove(entry)
        behind = ", ".join(f"{d.get('workflow')} (needs {d.get('range')})" for d in dependents)
        out.write(
            printable(
                f"workflow {workflow}@{version} registered, forced past {behind}: "
                "new versions given with it need it"
            )
            + "\n"
        )
        forced = True
    return forced


def _waits(refused: list[tuple[int, SpecSource, ApiError]]) -> dict[str, dict[str, list[str]]]:
    """Workflow -> the ranges its refused new version waits for, per workflow it needs."""
    waits: dict[str, dict[str, list[str]]] = {}
    for _, source, refusal in refused:
        needs_another = refusal.code in ("not_found", "no_matching_version")
        source_id = _spec_id(source) if needs_another else None
        if source_id is None:
            continue
        problems = refusal.details.get("problems")
        for problem in problems if isinstance(problems, list) else [refusal.details]:
            if isinstance(problem, dict):
                needed, rng = problem.get("workflow"), problem.get("range")
                if isinstance(needed, str) and isinstance(rng, str):
                    waits.setdefault(source_id, {}).setdefault(needed, []).append(rng)
    return waits


def _waiting_cycle(waits: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """A path a -> b -> a among workflows given together that each wait for the next."""
    for start in sorted(waits):
        path = [start]
        seen = {start}
        while True:
            following = sorted(n for n in waits.get(path[-1], {}) if n in waits)
            if not following:
                break
            nxt = following[0]
            if nxt in seen:
                return [*path[path.index(nxt) :], nxt]
            path.append(nxt)
            seen.add(nxt)
    return None


def _spec_id(source: SpecSource) -> str | None:
    """The ``id`` of the spec in ``source`` (the server read it whole already)."""
    from engine.documents import load_yaml

    try:
        text = source.data.decode("utf-8-sig")
        doc = json.loads(text) if source.is_json else load_yaml(text)
    except ValueError:  # UnicodeDecodeError, JSONDecodeError and YamlRefused all
        return None
    found = doc.get("id") if isinstance(doc, dict) else None
    return found if isinstance(found, str) else None


def _refusal_lines(name: str, refusal: ApiError) -> list[str]:
    # the server knows a problem's line ("line 7: ..."); here we know its file too
    def rename(problem: str) -> str:
        found = _LINE.match(problem)
        return f"{name}:{found[1]}: {problem[found.end() :]}" if found else problem

    head = f"dagctl: {printable(name)}: {printable(refusal.code)}: {printable(refusal.message)}"
    return [head, *detail_lines(refusal.details, rename)]


def cmd_run(args: argparse.Namespace, client: Client, out: TextIO, err: TextIO) -> int:
    inputs = read_inputs(
        pairs=args.pairs, inputs_json=args.inputs_json, inputs_file=args.inputs_file
    )
    body: JSONObject = {"inputs": inputs}
    if args.version is not None:
        body["version"] = args.version
    key = args.idempotency_key
    headers = (
        {"Idempotency-Key": header_value("--idempotency-key", key)} if key is not None else None
    )
    with _hinted(args.pairs, err):
        accepted = client.post(f"/trigger/{_quote(args.workflow)}", body, headers=headers).body
    return _started(args, client, accepted, out, err)


class Hinted(DagctlError):
    """A refusal told already, with hints after it: exit 1 with nothing more said."""


@contextmanager
def _hinted(pairs: Sequence[str], err: TextIO) -> Iterator[None]:
    """A refusal of the inputs told with ``input_hints`` after it, when there are any."""
    try:
        yield
    except ApiError as exc:
        hints = input_hints(exc, pairs)
        if not hints:
            raise
        print_error(exc, err)
        for line in hints:
            err.write(line + "\n")
        raise Hinted(str(exc)) from exc


def cmd_retry(args: argparse.Namespace, client: Client, out: TextIO, err: TextIO) -> int:
    target = _execution(client, args.id, acting="retry")
    key = args.idempotency_key
    headers = (
        {"Idempotency-Key": header_value("--idempotency-key", key)} if key is not None else None
    )
    path = f"/api/v1/executions/{_quote(str(target.get('id')))}/retry"
    accepted = client.post(path, {}, headers=headers).body
    return _started(args, client, accepted, out, err)


def _started(
    args: argparse.Namespace, client: Client, accepted: JSONObject, out: TextIO, err: TextIO
) -> int:
    """What ``run`` and ``retry`` say of the run they started, following it with ``--wait``."""
    execution_id = str(accepted.get("execution_id"))
    status_url = str(accepted.get("status_url", ""))
    if status_url.startswith("/"):
        status_url = client.server + status_url
    if not args.wait:
        if args.output == "json":
            _dump(out, {**accepted, "status_url": status_url})
        else:
            # the id alone on stdout, so that RUN=$(dagctl run wf) is the id; the rest is for
            # the person at the terminal
            out.write(f"{printable(execution_id)}\n")
            retrying = accepted.get("retry_of")
            said = f"accepted ({accepted.get('status', 'queued')})" + (
                f", a retry of {retrying}" if retrying else ""
            )
            said += f"; status: {status_url}"
            err.write(f"{printable(said)}\n")
        return EXIT_OK
    # with -o json the document is the output, so progress goes to stderr
    stream = err if args.output == "json" else out
    shown = printable(execution_id)
    told = RunEnd()
    try:
        doc = follow(client, execution_id, stream, err, told=told)
    except KeyboardInterrupt:
        err.write(f"\nstopped following {shown}; it goes on (dagctl describe execution {shown})\n")
        return EXIT_INTERRUPTED
    except FollowLost as exc:
        err.write(f"dagctl: {exc}; it goes on (dagctl describe execution {shown})\n")
        return EXIT_LOST
    status = str(doc.get("status"))
    if args.output == "json":
        _dump(out, doc)
    else:
        for line in run_end_lines(execution_id, doc, told.duration_ms):
            out.write(line + "\n")
        _dump_shown(out, doc.get("outputs"))
    return EXIT_OK if status == "succeeded" else EXIT_FAILED


def run_end_lines(
    execution_id: str, doc: JSONObject, duration_ms: float | None = None
) -> list[str]:
    """What ``run --wait`` says of a run's end before its outputs' JSON: each a line of its
    own, whatever the error holds (a newline in it would draw an ``outputs:`` line of its
    own, with a fake block after it). ``duration_ms``: how long it took as the progress lines
    said it (``RunEnd``), said again the same; else from the document's stamps, as the live
    display says it."""
    from orchestrator.dagctl.showing import duration, span

    if duration_ms is not None:
        took = duration(duration_ms / 1000)
    else:
        took = span(doc.get("started_at"), doc.get("finished_at"))
    said = f"execution {execution_id} {doc.get('status')}" + (f" in {took}" if took else "")
    lines = [one_line(said)]
    if doc.get("error"):
        lines.append(f"error: {one_line(str(doc.get('error')))}")
    lines.append("outputs:")
    return lines


RETRY_FIRST: Final = 0.5
RETRY_MOST: Final = 4.0
"""Seconds between tries of an orchestrator lost while following: 0.5 doubling to 4."""
RETRY_AFTER_MOST: Final = 30.0
"""The longest a Retry-After header is waited for at once."""
GIVE_UP_AFTER: Final = 120.0
"""Seconds without reaching the orchestrator before a follower gives up (the run goes on)."""


@dataclass(slots=True)
class Outage:
    """When to try a lost orchestrator again, and when to stop trying: pure over ``now``.

    A restart (``dagctl up`` again, a rollout) takes seconds, so the first tries come quickly,
    then less often, and only minutes of silence end the wait.
    """

    since: float | None = None
    delay: float = 0.0

    def next_try(self, now: float, retry_after: float | None = None) -> float | None:
        """Seconds to wait after a failed try at ``now``; None: give up."""
        if self.since is None:
            self.since, self.delay = now, RETRY_FIRST
        else:
            self.delay = min(self.delay * 2, RETRY_MOST)
        left = self.since + GIVE_UP_AFTER - now
        if left <= 0:
            return None
        wait = self.delay
        if retry_after is not None:
            wait = min(max(retry_after, RETRY_FIRST), RETRY_AFTER_MOST)
        return min(wait, left)

    def over(self) -> bool:
        """The orchestrator answered: True when it had been lost."""
        lost = self.since is not None
        self.since, self.delay = None, 0.0
        return lost


class FollowLost(DagctlError):
    """The orchestrator stayed out of reach for ``GIVE_UP_AFTER`` while a run (or the live
    stream) was followed: what was followed goes on without us; exit ``EXIT_LOST``."""


class Reconnecting:
    """A follower's patience with its orchestrator: says once that it was lost and once that
    it is back, and how long to wait before the next try."""

    def __init__(
        self,
        server: str,
        say: Callable[[str], object],
        *,
        reached: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``reached``: the orchestrator answered already; one never reached is no outage but
        the wrong address, or one not started, told at once."""
        self.server = printable(server)
        self.say = say
        self.reached = reached
        self.clock = clock
        self.outage = Outage()

    def failed(self, exc: Unreachable | ApiError) -> float:
        """Seconds to wait before trying again after ``exc``; ``exc`` itself when it is no
        outage (a refusal), FollowLost once the orchestrator was away too long."""
        if not self.reached or (isinstance(exc, ApiError) and not exc.passing):
            raise exc
        retry_after = exc.retry_after if isinstance(exc, ApiError) else None
        why = exc.reason if isinstance(exc, Unreachable) else f"{exc.status} {exc.code}"
        first = self.outage.since is None
        wait = self.outage.next_try(self.clock(), retry_after)
        # a full server answers: it is there, with no live stream free
        full = isinstance(exc, ApiError) and exc.code == "too_many_subscribers"
        if wait is None:
            from orchestrator.dagctl.showing import duration

            without = "a live stream from it" if full else "reaching it"
            raise FollowLost(
                f"gave up on the orchestrator at {self.server} after "
                f"{duration(GIVE_UP_AFTER)} without {without} ({printable(why)})"
            ) from exc
        if first:
            lost = (
                f"no live stream free at the orchestrator at {self.server}"
                if full
                else f"lost the orchestrator at {self.server}"
            )
            self.say(
                f"dagctl: {lost} ({printable(why)}); trying again, following on from the "
                "last event seen"
            )
        return wait

    def answered(self) -> None:
        self.reached = True
        if self.outage.over():
            self.say(f"dagctl: reached the orchestrator at {self.server} again")


def _say_on(err: TextIO) -> Callable[[str], None]:
    def say(line: str) -> None:
        err.write(line + "\n")
        err.flush()

    return say


@dataclass(slots=True)
class RunEnd:
    """How long a followed run took as its plain progress lines said it: its final event's
    ``duration_ms`` (the engine's clock), which the line after them says again. The
    document's stamps, in whole milliseconds, can make a span a millisecond off it (102ms
    above, 101ms below), and the document holds no duration of its own."""

    duration_ms: float | None = None

    def take(self, event: JSONObject, execution_id: str) -> None:
        if event.get("execution_id") != execution_id or event.get("type") not in TERMINAL_EVENTS:
            return
        data = event.get("data")
        took = data.get("duration_ms") if isinstance(data, dict) else None
        if isinstance(took, int | float) and not isinstance(took, bool):
            self.duration_ms = float(took)


def follow(
    client: Client,
    execution_id: str,
    stream: TextIO,
    err: TextIO | None = None,
    *,
    told: RunEnd | None = None,
) -> JSONObject:
    """Show a run's progress on ``stream`` until it ends; returns its final document.
    ``told``: filled with the run's duration as plain lines said it.

    Live on a terminal (a table redrawn in place), else plain lines. Events come from the SSE
    stream; when there is none, or it keeps breaking, the document is polled instead. An
    orchestrator that stops answering (a restart) is tried again, said once on ``err``, and
    FollowLost once it stayed away ``GIVE_UP_AFTER``.
    """
    from orchestrator.dagctl.showing import ProgressLines, RunProgress, ref

    err = sys.stderr if err is None else err
    progress = RunProgress(execution_id)
    doc = client.get(f"/api/v1/executions/{_quote(execution_id)}")
    if stream.isatty() and not _dumb(stream):
        from rich.live import Live
        from rich.text import Text

        progress.sync(doc)
        console = _console(stream)
        with Live(
            console=console,
            get_renderable=lambda: _drawn(progress, console.height),
            refresh_per_second=8,
        ) as live:
            # on the display's own terminal a note goes above the display, not through it
            say = (lambda line: live.console.print(Text(line))) if err.isatty() else _say_on(err)
            reconnecting = Reconnecting(client.server, say)
            final = _track(client, execution_id, doc, progress.apply, progress.sync, reconnecting)
            progress.sync(final)
            live.refresh()
        return final
    # plain lines tell the whole story from the first event, wherever the run is by now
    lines = ProgressLines(progress, stream)
    progress.workflow = ref(doc)
    lines.fit(_node_ids(doc))
    lines.header()
    end = RunEnd() if told is None else told

    def on_event(event: JSONObject) -> None:
        lines.event(event)
        end.take(event, execution_id)

    return _track(
        client,
        execution_id,
        doc,
        on_event,
        lambda d: lines.changes(progress.sync(d), time.time()),
        Reconnecting(client.server, _say_on(err)),
    )


def _dumb(stream: TextIO) -> bool:
    """A terminal that cannot move its cursor (TERM=dumb: an editor's shell, some CI logs),
    where a live display would show nothing until the end: plain lines there."""
    return _console(stream).is_dumb_terminal


def _node_ids(doc: JSONObject) -> list[str]:
    nodes = doc.get("nodes")
    return list(nodes) if isinstance(nodes, dict) else []


def _drawn(progress: RunProgress, height: int) -> RenderableType:
    return progress.render(time.time(), height)


def _seq(event: JSONObject) -> int | None:
    seq = event.get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) and seq > 0 else None


def _track(
    client: Client,
    execution_id: str,
    doc: JSONObject,
    on_event: Callable[[JSONObject], object],
    on_doc: Callable[[JSONObject], object],
    reconnecting: Reconnecting,
) -> JSONObject:
    path = f"/api/v1/executions/{_quote(execution_id)}"
    if doc.get("status") in EXECUTION_TERMINAL:  # over already: its stored timeline
        for event in _stored_events(client, execution_id):
            on_event(event)
        return doc
    last_seq = 0
    broken = 0
    ended = False  # its final event was seen: only its document is left to read
    while broken < STREAM_RETRIES and not ended:
        wait = POLL_INTERVAL
        try:
            with closing(
                client.events(
                    {"execution": execution_id},
                    last_event_id=last_seq,
                    opened=reconnecting.answered,
                )
            ) as ev:
                for event in ev:
                    broken = 0
                    if event.get("type") == "subscriber.lagged":
                        on_event(event)
                        on_doc(client.get(path))  # catch up on what the stream dropped
                        continue
                    ours = event.get("execution_id") == execution_id
                    seq = _seq(event)
                    if ours and seq is not None:
                        if seq <= last_seq:
                            continue  # told already, before a reconnect
                        last_seq = seq
                    on_event(event)
                    if ours and event.get("type") in TERMINAL_EVENTS:
                        ended = True
                        return client.get(path)
            broken += 1  # the server closed the stream before the run ended
        except StreamUnavailable as exc:
            if exc.refusal is not None:
                break
            broken += 1
        except ApiError as exc:
            if exc.code == "too_many_subscribers":
                # no live stream to be had now: the document tells how the run goes
                reconnecting.say(
                    f"dagctl: {printable(exc.message)} (too_many_subscribers): following "
                    "by polling, without log lines"
                )
                break
            wait = reconnecting.failed(exc)
        except Unreachable as exc:
            wait = reconnecting.failed(exc)
        time.sleep(wait)
    while True:
        try:
            doc = client.get(path)
        except (Unreachable, ApiError) as exc:
            time.sleep(reconnecting.failed(exc))
            continue
        reconnecting.answered()
        on_doc(doc)
        if doc.get("status") in EXECUTION_TERMINAL:
            return doc
        time.sleep(POLL_INTERVAL)


def cmd_get(args: argparse.Namespace, client: Client, out: TextIO, err: TextIO) -> int:
    from orchestrator.dagctl import showing

    resource = RESOURCES[args.resource]
    for flag, applies in GET_FLAGS.items():
        if getattr(args, flag) is not None and resource not in applies:
            only = " and ".join(f"get {r}" for r in applies)
            does = "does" if len(applies) == 1 else "do"
            raise BadArguments(f"get {resource} takes no --{flag} (only {only} {does})")
    limit = DEFAULT_LIMIT if args.limit is None else args.limit
    if resource == "executions":
        body = client.get(
            "/api/v1/executions",
            workflow=args.workflow,
            status=args.status,
            limit=limit,
            before=args.before,
        )
    elif resource == "triggers":
        body = _every_trigger(client, args.workflow)
    elif resource == "workflows":
        body = _every("workflows", client)
    else:
        body = client.get(f"/api/v1/{resource}")
    if args.output == "json":
        _dump(out, body)
        return EXIT_OK
    found = body.get(resource)
    items: list[JSON] = found if isinstance(found, list) else []
    if not items:
        err.write(f"no {resource} found\n")
        return EXIT_OK
    if resource == "workflows":
        table = showing.workflows_table(items)
    elif resource == "executions":
        table = showing.executions_table(items, time.time())
    elif resource == "triggers":
        table = showing.triggers_table(items)
    else:
        table = showing.engines_table(items)
    _print(out, table)
    if resource == "executions" and body.get("next_before"):
        same = "".join(
            f" --{flag} {value}"
            for flag, value in (("workflow", args.workflow), ("status", args.status))
            if value
        )
        more = f" --limit {limit}" if limit != DEFAULT_LIMIT else ""
        err.write(
            f"more: dagctl get executions{same}{more} "
            f"--before {printable(str(body['next_before']))}\n"
        )
    return EXIT_OK


def cmd_describe(args: argparse.Namespace, client: Client, out: TextIO, err: TextIO) -> int:
    from orchestrator.dagctl import showing

    if args.resource == "execution" and args.version is not None:
        raise BadArguments("describe execution takes no --version (only describe workflow does)")
    if args.resource == "workflow":
        path = f"/api/v1/workflows/{_quote(args.id)}"
        if args.version is not None:
            path += f"/versions/{_quote(args.version)}"
        workflow = client.get(path)
        if args.output == "json":
            _dump(out, workflow)
        else:
            _print(out, showing.workflow_details(workflow))
        return EXIT_OK
    doc = _execution(client, args.id)
    if args.output == "json":
        _dump(out, doc)
    else:
        # the tree of sub-workflow runs below this one, each with its state
        doc["children"] = _child_tree(client, doc, [MAX_TREE])
        _print(out, showing.execution_details(doc, time.time()))
    return EXIT_OK


MAX_TREE = 200
"""Child executions ``describe execution`` fetches at most; the rest are listed by id."""


def _child_tree(client: Client, doc: JSONObject, budget: list[int]) -> list[JSON]:
    out: list[JSON] = []
    children = doc.get("children")
    for child_id in children if isinstance(children, list) else []:
        if budget[0] <= 0 or not isinstance(child_id, str):
            out.append(child_id)
            continue
        budget[0] -= 1
        try:
            child = client.get(f"/api/v1/executions/{_quote(child_id)}")
        except ApiError as exc:
            if exc.status != 404:
                raise
            out.append(f"{child_id} (not found)")
            continue
        child["children"] = _child_tree(client, child, budget)
        out.append(child)
    return out


def cmd_events(args: argparse.Namespace, client: Client, out: TextIO, err: TextIO) -> int:
    from orchestrator.dagctl.showing import event_line

    def show(event: JSONObject) -> None:
        if args.output == "json":
            out.write(_json(event, separators=(",", ":")) + "\n")
        else:
            out.write(event_line(event) + "\n")
        out.flush()

    if args.id and args.execution and args.id != args.execution:
        raise BadArguments("events takes one execution: give it as ID or as --execution, not both")
    args.execution = args.execution or args.id
    if not args.follow:
        if not args.execution:
            raise BadArguments("events needs --execution ID (or -f to follow the live stream)")
        doc = _execution(client, args.execution)
        if args.workflow and doc.get("workflow_id") != args.workflow:
            # as the live stream answers the same question (its 404), not the run's events anyway
            raise ApiError(
                404,
                "not_found",
                f"execution {doc.get('id')} is a run of {doc.get('workflow_id')}, "
                f"not of {args.workflow}",
                {},
            )
        for event in _stored_events(client, str(doc.get("id"))):
            show(event)
        return EXIT_OK
    execution_id = args.execution
    if execution_id:
        execution_id = str(_execution(client, execution_id).get("id"))
    reconnecting = Reconnecting(client.server, _say_on(err), reached=bool(execution_id))
    try:
        with closing(_live(client, args.workflow, execution_id, reconnecting)) as live:
            for event in live:
                show(event)
                if (
                    execution_id
                    and event.get("type") in TERMINAL_EVENTS
                    and event.get("execution_id") == execution_id
                ):
                    break  # the run is over: nothing more will come
    except KeyboardInterrupt:
        err.write("\n")
        return EXIT_INTERRUPTED  # as run --wait left with Ctrl-C
    except FollowLost as exc:
        goes_on = (
            f"the run goes on (dagctl describe execution {printable(execution_id)})"
            if execution_id
            else "runs go on (dagctl events -f again once it is back)"
        )
        err.write(f"dagctl: {exc}; {goes_on}\n")
        return EXIT_LOST
    return EXIT_OK


def _stored_events(client: Client, execution_id: str) -> Generator[JSONObject, None, None]:
    """A run's stored timeline, page after page (the server answers a page at a time)."""
    path = f"/api/v1/executions/{_quote(execution_id)}/events"
    after = 0
    while True:
        body = client.get(path, after_seq=after, limit=EVENTS_PAGE)
        found = body.get("events")
        for event in found if isinstance(found, list) else []:
            if isinstance(event, dict):
                yield event
        following = body.get("next_after_seq")
        # a server from before pages sends no next_after_seq: its one answer was all of it
        if not isinstance(following, int) or isinstance(following, bool) or following <= after:
            return
        after = following


def _live(
    client: Client,
    workflow: str | None,
    execution_id: str | None,
    reconnecting: Reconnecting,
) -> Generator[JSONObject, None, None]:
    """The live stream, reopened when it breaks or the orchestrator is away for a while
    (from the last event seen, for one run: events of all runs carry no seq to resume from)."""
    last_seq = 0
    while True:
        wait = 1.0
        try:
            query = {"workflow": workflow, "execution": execution_id}
            with closing(
                client.events(query, last_event_id=last_seq, opened=reconnecting.answered)
            ) as stream:
                for event in stream:
                    seq = _seq(event)
                    if execution_id and seq is not None:
                        if seq <= last_seq:
                            continue  # told already, before a reconnect
                        last_seq = seq
                    yield event
        except StreamUnavailable as exc:
            if exc.refusal is not None:
                raise exc.refusal from None
        except (Unreachable, ApiError) as exc:
            wait = reconnecting.failed(exc)
        time.sleep(wait)


def cmd_logs(args: argparse.Namespace, client: Client, out: TextIO, err: TextIO) -> int:
    """What a run's scripts logged: its ``node.log`` events, read from its stored timeline a
    page at a time, or with ``-f`` followed as ``run --wait`` follows a run (``_track``: the
    stored events, then the live stream from the last one seen), exiting as it does."""
    from orchestrator.dagctl.showing import LogLines, SubRuns

    if args.node is not None and not args.node.strip():
        raise BadArguments("logs: --node is empty (an unset shell variable?)")
    doc = _execution(client, args.id)
    execution_id = str(doc.get("id"))
    if args.node is not None:
        _check_node(doc, args.node)
    lines = LogLines(out, _console(out) if out.isatty() else None, _node_ids(doc))
    children = SubRuns()
    last_seq = 0

    def on_event(event: JSONObject) -> None:
        nonlocal last_seq
        if event.get("execution_id") != execution_id:
            return  # a lagged marker: the stream of one run reads what it missed back
        last_seq = max(last_seq, _seq(event) or 0)
        if args.node is not None and event.get("node_id") != args.node:
            return
        if event.get("type") != "node.log":
            children.take(event)
        elif args.output == "json":
            lines.count += 1
            out.write(_json(event, separators=(",", ":")) + "\n")
            out.flush()
        else:
            lines.write(event)

    code = EXIT_OK
    if args.follow:
        say = _say_on(err)
        polled = False

        def on_doc(_: JSONObject) -> None:
            nonlocal polled
            if not polled:
                say("dagctl: the lines it logs meanwhile come when it ends, from its timeline")
            polled = True

        try:
            doc = _track(
                client, execution_id, doc, on_event, on_doc, Reconnecting(client.server, say)
            )
            if polled:  # the lines the document could not carry, after the last one seen
                seen = last_seq
                for event in _stored_events(client, execution_id):
                    if (_seq(event) or 0) > seen:
                        on_event(event)
        except KeyboardInterrupt:
            err.write("\n")
            return EXIT_INTERRUPTED
        except FollowLost as exc:
            shown = printable(execution_id)
            err.write(f"dagctl: {exc}; the run goes on (dagctl describe execution {shown})\n")
            return EXIT_LOST
        code = EXIT_OK if doc.get("status") == "succeeded" else EXIT_FAILED
    else:
        for event in _stored_events(client, execution_id):
            on_event(event)
    if not lines.count:
        of = f"node {args.node} of " if args.node is not None else ""
        yet = "" if doc.get("status") in EXECUTION_TERMINAL else " (yet)"
        err.write(printable(f"{of}execution {execution_id} has no log lines{yet}") + "\n")
    listed = doc.get("children")
    # of a run that has ended: no child can be started after its document was read
    kept = (
        {str(c) for c in listed}
        if isinstance(listed, list) and doc.get("status") in EXECUTION_TERMINAL
        else None
    )
    for line in children.lines(execution_id, kept):
        err.write(line + "\n")
    return code


def _check_node(doc: JSONObject, node_id: str) -> None:
    """Unusable for a node the run's workflow does not have, naming the one meant when one
    is close, and the nodes it has."""
    import difflib

    nodes = _node_ids(doc)
    if not nodes or node_id in nodes:
        return  # a document without nodes (a server from before?) is not second-guessed
    said = (
        f"logs: execution {doc.get('id')} ({doc.get('workflow_id')}@{doc.get('version')}) "
        f"has no node {node_id!r}"
    )
    close = difflib.get_close_matches(node_id, nodes, n=1)
    if close:
        said += f"; did you mean {close[0]!r}?"
    shown = ", ".join(nodes[:NODES_NAMED])
    more = f" and {len(nodes) - NODES_NAMED} more" if len(nodes) > NODES_NAMED else ""
    raise Unusable(printable(f"{said}\nits nodes: {shown}{more}"))


NODES_NAMED: Final = 20
"""Node ids a refused ``--node`` lists."""


def cmd_cancel(args: argparse.Namespace, client: Client, out: TextIO, err: TextIO) -> int:
    target = _execution(client, args.id, acting="cancel")
    execution_id = str(target.get("id"))
    before = target.get("status")
    body: JSONObject = {"reason": args.reason} if args.reason else {}
    doc = client.post(f"/api/v1/executions/{_quote(execution_id)}/cancel", body, timeout=60.0).body
    if args.output == "json":
        _dump(out, doc)
        return EXIT_OK
    status = doc.get("status")
    if before in EXECUTION_TERMINAL:
        said = f"execution {execution_id} had already finished: {status}"
    elif status in EXECUTION_TERMINAL:
        said = f"execution {execution_id} {status}"
    else:
        said = f"execution {execution_id}: cancel requested (still {status})"
    out.write(printable(said) + "\n")
    return EXIT_OK


def cmd_delete(args: argparse.Namespace, client: Client, out: TextIO, err: TextIO) -> int:
    doc = client.call("DELETE", f"/api/v1/workflows/{_quote(args.id)}", timeout=60.0).body
    if args.output == "json":
        _dump(out, doc)
        return EXIT_OK
    said = f"workflow {args.id} deleted ({_count(_number(doc, 'versions'), 'version')}"
    if _number(doc, "triggers"):
        said += f", {_count(_number(doc, 'triggers'), 'trigger')}"
    said += ")"
    if _number(doc, "executions"):
        said += f"; removing its {_count(_number(doc, 'executions'), 'execution')}"
    out.write(printable(said) + "\n")
    return EXIT_OK


def _number(doc: JSONObject, key: str) -> int:
    value = doc.get(key)
    return value if isinstance(value, int) else 0


def cmd_trigger(args: argparse.Namespace, client: Client, out: TextIO, err: TextIO) -> int:
    from orchestrator.dagctl import showing

    if args.action == "create":
        body: JSONObject = {"workflow_id": args.workflow, "cron": args.cron}
        for name in ("timezone", "id", "version", "overlap", "catchup"):
            if getattr(args, name):
                body[name] = getattr(args, name)
        if args.pairs or args.inputs_json is not None or args.inputs_file is not None:
            body["inputs"] = read_inputs(
                pairs=args.pairs, inputs_json=args.inputs_json, inputs_file=args.inputs_file
            )
        if args.paused:
            body["paused"] = True
        with _hinted(args.pairs, err):
            doc = client.post("/api/v1/triggers", body).body
    elif args.action == "history":
        doc = client.get(f"/api/v1/triggers/{_quote(args.id)}/history?limit={args.limit}")
    elif args.action == "delete":
        doc = client.call("DELETE", f"/api/v1/triggers/{_quote(args.id)}").body
    else:
        doc = client.post(f"/api/v1/triggers/{_quote(args.id)}/{args.action}").body
    if args.output == "json":
        _dump(out, doc)
    elif args.action == "history":
        history = doc.get("history")
        rows = history if isinstance(history, list) else []
        if not rows:
            err.write(f"no history found for trigger {args.id}\n")
        else:
            _print(out, showing.history_table(rows))
    elif args.action == "delete":
        out.write(f"trigger {args.id} deleted\n")
    else:
        _print(out, showing.triggers_table([doc]))
    return EXIT_OK


BACKUP_TYPE: Final = "application/vnd.sqlite3"
BACKUP_TIMEOUT: Final = 900.0
"""Seconds without a byte before a backup counts as lost: the server copies and checks the
whole database before its first byte (a few seconds a GB), after any backup already going."""


def cmd_backup(args: argparse.Namespace, client: Client, out: TextIO, err: TextIO) -> int:
    given: str = args.file
    if not given.strip():
        raise BadArguments("backup: FILE is empty (an unset shell variable?)")
    if given == "-":
        raise BadArguments(
            "backup: FILE - (standard output) is refused: the backup is a binary SQLite file; "
            "give a file name (dagctl backup state-backup.db)"
        )
    target = Path(given)
    if target.is_dir():
        raise Unusable(f"backup: {given} is a directory: give a file name")
    if target.exists() and not args.force:
        raise Unusable(f"backup: {given} exists: give a new name, or --force to overwrite it")
    # written beside FILE and renamed onto it once whole and checked: a failure never leaves
    # a half copy under FILE, and the rename stays on one file system
    part = target.with_name(target.name + ".part")
    with client.download("/api/v1/backup", accept=BACKUP_TYPE, timeout=BACKUP_TIMEOUT) as answer:
        if answer.content_type != BACKUP_TYPE:
            raise ApiError(
                200, "bad_answer", f"the answer is {answer.content_type}, not a SQLite file", {}
            )
        summary = _save(answer.chunks(), part, target, force=args.force)
    out.write(
        printable(
            f"wrote {given} ({answer.length} bytes, schema {summary.schema}, "
            f"{_count(summary.executions, 'execution')}, "
            f"{_count(summary.workflows, 'workflow')})"
        )
        + "\n"
    )
    return EXIT_OK


def _save(chunks: Iterator[bytes], part: Path, target: Path, *, force: bool) -> StateSummary:
    """``chunks`` into ``part``, on disk, checked, then renamed to ``target`` for good: what
    the copy holds."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    if force:
        _remove(part)
    try:
        # readable by its owner alone: a run's inputs and outputs often carry secrets
        fd = os.open(part, flags, 0o600)
    except FileExistsError:
        raise Unusable(
            f"backup: {part} exists (another dagctl backup writing it, or one that was "
            "stopped): remove it, or --force"
        ) from None
    except OSError as exc:
        raise DagctlError(f"cannot create {part}: {_strerror(exc)}") from None
    # ours from here: removed on any failure (before it, another's, or one left: kept)
    try:
        try:
            with os.fdopen(fd, "wb") as into:
                for chunk in chunks:
                    into.write(chunk)
                into.flush()
                os.fsync(into.fileno())
        except OSError as exc:
            raise DagctlError(
                f"cannot write {part}: {_strerror(exc)}; {target} not written"
            ) from None
        summary = _checked_backup(part, target)
    except BaseException:
        _remove(part)
        raise
    try:
        os.replace(part, target)
        # the rename itself is on disk only once the directory is
        directory = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        _remove(part)
        raise DagctlError(f"cannot rename {part} to {target}: {_strerror(exc)}") from None
    return summary


def _strerror(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _checked_backup(part: Path, target: Path) -> StateSummary:
    """What the copy holds; ``DagctlError`` unless SQLite opens it read-only, its quick check
    passes and it is a DAG Engine state database (the checks the server made before sending,
    made again on what came: a proxy on the way may have sent something else)."""
    import sqlite3

    from orchestrator.store import summarize_state

    left = f"{target} not written"
    try:
        conn = sqlite3.connect(part.absolute().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise DagctlError(f"the copy received cannot be opened ({exc}): {left}") from None
    try:
        rows = [str(row[0]) for row in conn.execute("PRAGMA quick_check(3)")]
        if rows != ["ok"]:
            raise DagctlError(f"the copy received fails SQLite's quick check ({rows[0]}): {left}")
        return summarize_state(conn, str(part))
    except sqlite3.Error as exc:
        raise DagctlError(f"the copy received is not a whole SQLite file ({exc}): {left}") from None
    except RuntimeError as exc:
        raise DagctlError(f"the copy received is refused: {exc}; {left}") from None
    finally:
        conn.close()


def cmd_up(args: argparse.Namespace, settings: Settings, out: TextIO, err: TextIO) -> int:
    from orchestrator.dagctl.launching import run_up

    return run_up(
        settings.environ,
        server=settings.server,
        token=settings.token,
        engines=args.engines,
        examples=not args.no_examples,
        python=sys.executable,
        cwd=Path.cwd(),
        out=out,
        err=err,
    )


COMMANDS: dict[str, Callable[[argparse.Namespace, Client, TextIO, TextIO], int]] = {
    "apply": cmd_apply,
    "run": cmd_run,
    "get": cmd_get,
    "describe": cmd_describe,
    "events": cmd_events,
    "logs": cmd_logs,
    "cancel": cmd_cancel,
    "delete": cmd_delete,
    "retry": cmd_retry,
    "trigger": cmd_trigger,
    "backup": cmd_backup,
}


LISTINGS: Final = frozenset({"get", "describe", "events", "logs"})
"""Commands whose outcome is their output alone: when its reader leaves (``| head``), they
stop, and that is no failure."""


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        _tolerant(stream)
    parser = build_parser()
    settings = Settings.from_env(os.environ if env is None else env)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except VersionAsked:
        try:
            return show_version(settings, sys.stdout)
        except BrokenPipeError:  # `dagctl --version | head -1`
            _leave_stdout()
            return EXIT_OK
    out, err = sys.stdout, sys.stderr
    listing = args.command in LISTINGS or getattr(args, "action", None) == "history"
    if not listing and args.command != "up":
        # what it does (and its exit code) does not depend on anyone reading what it says
        out = ReaderMayLeave.around(out)
    try:
        if args.command == "up":
            settings.check_token()  # it registers the examples with it
            return cmd_up(args, settings, out, err)
        if args.command == "validate":
            from orchestrator.dagctl.validating import validate_files

            return validate_files(spec_sources(args.files, sys.stdin.buffer), out, err)
        check_text(args)
        check_ids(args)
        settings.check_server()
        settings.check_token()
        client = Client(settings.server, settings.token, tls=settings.tls())
        return COMMANDS[args.command](args, client, out, err)
    except BadArguments as exc:
        if not isinstance(exc, Unusable):
            usage = getattr(args, "usage", parser.format_usage)
            err.write(usage())
        err.write(f"dagctl: {exc}\n")
        return EXIT_USAGE
    except Hinted:
        return EXIT_FAILED
    except DagctlError as exc:
        print_error(exc, err, settings)
        return EXIT_FAILED
    except KeyboardInterrupt:
        err.write("\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `dagctl get executions | head`: the reader had what it wanted
        _leave_stdout()
        return EXIT_OK


VERSION_TIMEOUT: Final = 2.0
"""Seconds ``--version`` waits for each answer of the server: it is asked in passing."""


def show_version(settings: Settings, out: TextIO) -> int:
    """``dagctl --version``: dagctl's version at once, then what the server tells of its
    own, or that it was not reached; exit 0 either way.

    The orchestrator's is in its ``/healthz`` answer; its OpenAPI document's ``info.version``
    is the API's, and ``GET /api/v1/engines`` has each engine's."""
    out.write(f"dagctl {installed_version()}\n")
    out.flush()
    server = printable(settings.server)
    try:
        settings.check_server()
        settings.check_token()
        client = Client(
            settings.server, settings.token, timeout=VERSION_TIMEOUT, tls=settings.tls()
        )
        # open without a token, and small beside the API's document: reached or not, quickly
        health = client.get("/healthz")
    except Unreachable as exc:
        out.write(f"server {server}: not reached ({printable(exc.reason)})\n")
        return EXIT_OK
    except BadArguments as exc:  # DAGCTL_* that cannot be used: said, as asked in passing
        out.write(f"server {server}: not asked ({printable(str(exc))})\n")
        return EXIT_OK
    except DagctlError as exc:  # something answered, not as an orchestrator does
        out.write(
            f"server {server}: reached, but not an orchestrator's answer: {printable(str(exc))}\n"
        )
        return EXIT_OK
    said = [f"server {server}: reached"]
    release = health.get("version")
    if isinstance(release, str) and release:  # an orchestrator from before says none
        said.append(f"version {printable(release)}")
    try:
        info = client.get("/api/v1/openapi.json").get("info")
        api = info.get("version") if isinstance(info, dict) else None
        if isinstance(api, str) and api:
            said.append(f"API {printable(api)}")
        found = client.get("/api/v1/engines").get("engines")
        versions = sorted(
            {
                str(e["version"])
                for e in (found if isinstance(found, list) else [])
                if isinstance(e, dict) and e.get("version")
            }
        )
        if versions:
            many = "s" if len(versions) > 1 else ""
            said.append(f"engine version{many} {printable(', '.join(versions))}")
    except ApiError as exc:
        if exc.status in (401, 403):
            said.append(f"engines not shown ({_token_hint(exc.status, settings)})")
    except DagctlError:
        pass  # what it said already is what there is
    out.write("; ".join(said) + "\n")
    return EXIT_OK


def _tolerant(stream: TextIO) -> None:
    """Characters the stream's encoding lacks (PYTHONIOENCODING=ascii, LC_ALL=C) written as
    escapes, where Python would stop with a traceback at a workflow's non-ASCII name."""
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        try:
            reconfigure(errors="backslashreplace")
        except (ValueError, OSError):
            pass


def _leave_stdout() -> None:
    """Point standard output at /dev/null: its reader is gone, and the interpreter's own
    flush of what is left at exit would fail too ("Exception ignored ... BrokenPipeError")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError):
        pass  # no file descriptor under it (a test's capture): nothing to flush at exit


class ReaderMayLeave:
    """Standard output for a command whose outcome is more than its output (``run --wait``,
    ``apply``): when its reader leaves (``dagctl run X --wait | head -1``) it goes on to the
    end, its writes dropped, and exits with its own code, not a closed pipe's 0."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self.gone = False

    @classmethod
    def around(cls, out: TextIO) -> TextIO:
        # it quacks as the TextIO it wraps: write, flush, and the rest passed through
        return cast("TextIO", cls(out))

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self._out.write(text)
            except BrokenPipeError:
                self._left()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._out.flush()
            except BrokenPipeError:
                self._left()

    def isatty(self) -> bool:
        return self._out.isatty()

    def _left(self) -> None:
        self.gone = True
        _leave_stdout()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._out, name)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
