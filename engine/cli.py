"""``python -m engine``: serve gRPC, or run or validate a workflow file locally, in one process.

With no subcommand (or ``serve``) the engine service runs, configured by the environment (PORT,
CAPACITY, METRICS_PORT, DRAIN_GRACE, ...); a bad value exits 2 with one line naming it. ``run``
prints progress lines on stderr and the execution document on stdout, and exits 0 when the run
succeeded, 1 when it did not, 2 when the spec or inputs were refused (or ``LUA_INLINE``, which it
reads as the service does).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import TextIO

from engine.core.envparse import SettingsError, boolean, whole_number
from engine.core.errors import InputsError, SpecError
from engine.core.events import Event
from engine.core.printing import duration, one_line
from engine.core.values import JSON, JSONObject, json_kind, nests_deeper
from engine.documents import MAX_DEPTH, non_json_values, read_document
from engine.inputs import caller_inputs_problem, check_inputs
from engine.loading import load_spec_file
from engine.lua import LuaPool
from engine.settings import MAX_LUA_WORKERS

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


class ProgressPrinter:
    """One short line per event, aligned, relative to the run's start."""

    def __init__(self, out: TextIO, width: int) -> None:
        self.out = out
        self.width = max(width, 9)
        self.t0: float | None = None

    def __call__(self, event: Event) -> None:
        if self.t0 is None:
            self.t0 = event.time
        label = event.node_id or "execution"
        what = event.type.split(".", 1)[1]
        detail = ""
        data = event.data
        # a foreach item's log line, retry and restart say which item, as dagctl's do
        item = data.get("item")
        of_item = f" of item {item}" if isinstance(item, int) else ""
        if event.type == "node.log":
            what = f"log:{data.get('level')}"
            detail = f"item {item}: " if isinstance(item, int) else ""
            detail += str(data.get("message"))
        elif event.type == "node.progress":
            # a long foreach node's items done so far, at most once a second (its outputs are
            # for a run that moves to another engine, not for a terminal)
            detail = f"{data.get('done')}/{data.get('items')} items"
        elif event.type == "node.retrying":
            detail = (
                f"attempt {data.get('next_attempt')}{of_item} in {data.get('delay_s')}s: "
                f"{data.get('error')}"
            )
        elif "error" in data:
            detail = str(data["error"])
        elif event.type == "node.skipped":
            detail = str(data.get("reason", ""))
        elif isinstance(took := data.get("duration_ms"), int | float):
            detail = duration(took / 1000)  # as dagctl says it
        if event.type == "node.started" and (event.attempt or 1) > 1:
            detail = f"attempt {event.attempt}{of_item}"
        stamp = f"{event.time - self.t0:8.3f}s"
        # a script's text reaches the terminal: escaped, and kept on its line
        line = one_line(f"{stamp}  {label:<{self.width}}  {what:<10} {detail}".rstrip())
        self.out.write(line + "\n")
        self.out.flush()


def _read_inputs(args: argparse.Namespace) -> JSON:
    if args.inputs is not None:
        try:
            value: JSON = json.loads(args.inputs, object_pairs_hook=_once_each)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"--inputs is not valid JSON: {exc.msg} at column {exc.colno}"
            ) from None
        except _KeyTwice as exc:
            raise ValueError(f"--inputs: {exc}") from None
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"--inputs is not valid JSON: {_unreadable(exc)}") from None
        return _plain_json(value, "--inputs")
    if args.inputs_file is not None:
        path = Path(args.inputs_file)
        origin = f"--inputs-file {path}"
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ValueError(f"{origin}: {reason}") from None
        # a byte order mark, dropped as from a spec file: YAML skips one, JSON refuses it
        text = text.removeprefix("\ufeff")
        if path.suffix == ".json":
            try:
                # the line map below costs seconds on large inputs; only a refusal needs it
                fast: JSON = json.loads(text, object_pairs_hook=_once_each)
            except (ValueError, RecursionError):
                pass
            else:
                return _plain_json(fast, origin) if fast is not None else {}
        try:
            # the specs' reader: a key written twice is named with its line, not dropped
            loaded, _, problems = read_document(text, None, json_only=path.suffix == ".json")
        except SpecError as exc:
            problems = exc.problems
        if problems:
            raise ValueError(f"{origin}: " + "; ".join(p.render() for p in problems)) from None
        return _plain_json(loaded, origin) if loaded is not None else {}
    return {}


class _KeyTwice(ValueError):
    pass


def _once_each(pairs: list[tuple[str, JSON]]) -> JSONObject:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _KeyTwice(f"duplicate key {twice!r}")
    return out


def _unreadable(exc: ValueError | RecursionError) -> str:
    # what json.loads raises past its JSONDecodeError: Python's limits, in Python's words
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return "a number has more digits than a number may have"


def _plain_json(value: JSON, origin: str) -> JSON:
    """``value`` if it is JSON a run can carry: Python's json reads NaN and Infinity, and YAML
    makes timestamps, sets and keys that are not strings, none of which a node's ``inputs``
    or the execution document can hold."""
    problems = [f"{_inputs_path(at)}: {why}" for at, why in non_json_values(value, keys=True)]
    if problems:
        raise ValueError(f"{origin}: " + "; ".join(problems))
    return value


def _inputs_path(at: tuple[object, ...]) -> str:
    return "inputs" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in at)


async def _run(args: argparse.Namespace) -> int:
    from engine.running import Execution  # imported here so `validate` stays light

    try:
        # read as the engine service reads it (Settings.lua_inline), refused the same way
        inline = boolean(os.environ, "LUA_INLINE", True)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    try:
        spec = load_spec_file(args.file)
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    try:
        inputs = _read_inputs(args)
        # refused as the server refuses them: an object, and no _trigger of the caller's
        if not isinstance(inputs, dict):
            raise ValueError(f"inputs must be a JSON object, not {json_kind(inputs)}")
        problem = caller_inputs_problem(inputs)
        if problem is not None:
            raise ValueError(problem)
        if nests_deeper(inputs, MAX_DEPTH):
            raise ValueError(f"inputs nest deeper than {MAX_DEPTH} levels, as no server takes")
        check_inputs(spec, inputs)
    except (ValueError, InputsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    printer = (
        None if args.quiet else ProgressPrinter(sys.stderr, max(len(n.id) for n in spec.nodes))
    )
    async with LuaPool(workers=args.workers, inline=inline) as pool:
        execution = Execution(spec, inputs, pool=pool, engine_id="local", on_event=printer)
        doc: JSONObject = await execution.run_to_end()
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return EXIT_OK if doc["status"] == "succeeded" else EXIT_FAILED


def _validate(args: argparse.Namespace) -> int:
    try:
        spec = load_spec_file(args.file)
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    count = len(spec.nodes)
    print(f"{args.file}: {spec.ref} is valid ({count} node{'s' if count != 1 else ''})")
    return EXIT_OK


def _serve() -> int:
    # the service's modules are imported here so `validate` stays light
    from engine.logformat import configure_logging
    from engine.serving import serve
    from engine.settings import Settings, SettingsError, refusal_line

    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as exc:
        print(refusal_line(exc, os.environ, "engine.settings"), file=sys.stderr)
        return EXIT_INVALID
    configure_logging(settings.log_format, settings.log_level)
    return asyncio.run(serve(settings))


def _check_lua() -> int:
    """JSON lines on stdin -> JSON lines on stdout: Lua syntax checks for the orchestrator.

    The orchestrator never loads Lua itself; it keeps one of these processes and asks it about
    each script it registers. A request is ``{"code": "...", "expression": false}``; the answer
    is ``{"ok": true}`` or ``{"ok": false, "message": "...", "line": 3}``.
    """
    from engine.checking import unencodable
    from engine.lua import check_syntax

    # a Ctrl-C at a terminal reaches the orchestrator's whole process group: stopping is the
    # orchestrator's to do, and it ends this process by closing its stdin (a traceback here
    # was all the interrupt made)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for raw in sys.stdin:
        try:
            request = json.loads(raw)
            code = str(request["code"])
            try:
                problem = check_syntax(code, expression=bool(request.get("expression")))
            except UnicodeEncodeError:  # "\udc80": the script's problem, not the request's
                answer: JSONObject = {"ok": False, "message": unencodable(code), "line": None}
            else:
                answer = (
                    {"ok": True}
                    if problem is None
                    else {"ok": False, "message": problem.message, "line": problem.line}
                )
        except (ValueError, KeyError, TypeError) as exc:
            answer = {"ok": False, "message": f"bad request: {exc}", "line": None}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    return EXIT_OK


def _workers(text: str) -> int:
    # an ArgumentTypeError is argparse's "argument --workers: <message>" and exit 2
    count = whole_number(text)
    if count is None:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}")
    if not 1 <= count <= MAX_LUA_WORKERS:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_LUA_WORKERS}, got {count}")
    return count


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine",
        # the docstring's ``literals`` are for a reader of the source, not of --help
        description=(__doc__ or "").replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="serve the Engine gRPC API (the default)")
    run = sub.add_parser("run", help="run a workflow file once, in this process")
    run.add_argument("file", help="workflow spec, YAML or JSON")
    group = run.add_mutually_exclusive_group()
    group.add_argument("--inputs", help="inputs as a JSON object")
    group.add_argument("--inputs-file", help="inputs from a JSON or YAML file")
    run.add_argument(
        "--workers",
        type=_workers,
        default=None,
        help=f"Lua worker threads, 1 to {MAX_LUA_WORKERS} (default: cores)",
    )
    run.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    sub.add_parser(
        "check-lua", help="answer Lua syntax checks as JSON lines (for the orchestrator)"
    )
    validate = sub.add_parser("validate", help="check a workflow file and print every problem")
    validate.add_argument("file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in (None, "serve"):
        return _serve()
    if args.command == "validate":
        return _validate(args)
    if args.command == "check-lua":
        return _check_lua()
    return asyncio.run(_run(args))
