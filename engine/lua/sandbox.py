"""Runs a node's Lua chunk in a sandbox: an allow-listed environment, hard limits, JSON in and out.

This is the only module that imports lupa. One ``LuaSandbox`` owns one Lua 5.4 runtime (not
LuaJIT, whose compiled loops skip the instruction hook) and is used by one thread at a time. Each
run gets a fresh globals table over read-only shared libraries, so nothing a script does survives
into the next run. The Lua half lives in ``engine.lua.prelude``.

Environment
    ``inputs``, converted on the script's first read of the global (a foreach item's script
    that never reads them does not pay for them all); ``results``, the outputs of the node's
    ancestors by node id, fetched on first use and cached for the run (any other name reads as
    nil); ``ctx``; ``log(level, ...)`` with the levels debug, info, warn (``warning`` is
    recorded as warn), error and critical; ``print(...)``, an info line;
    ``json.encode/decode/null/array``; ``string`` without ``dump``; ``table``; ``math``;
    ``utf8``; ``os.time/date/clock``; ``coroutine``; and the base functions assert, error,
    ipairs, pairs, next, pcall, xpcall, select, tonumber, tostring, type, rawequal, rawlen,
    rawget, rawset, setmetatable (which refuses ``__gc``), getmetatable, unpack and
    ``_VERSION``. Nothing else: no io, require, load, dofile, debug, collectgarbage or python,
    and chunks are compiled from text only. A chunk's value is its first return value. The
    script runs in a coroutine of the sandbox's, which it cannot tell from the main thread:
    ``coroutine.running()`` says it is the main one, ``isyieldable()`` is false, a yield there
    is the error stock Lua raises (one pcall catches), and the chunk's ``...`` is empty.

Messages
    ``log`` and ``print`` show a string as it is; a table by its ``__tostring`` when it has one
    (the script's code, run inside the limits; one that fails is shown as ``<table: __tostring
    failed: why>``), else as JSON, else as ``<table: not JSON: why>``; a function, coroutine or
    userdata as ``<function>``, ``<coroutine>``, ``<userdata>``: never by a memory address.
    ``error`` with a table shows it the same way (``error object is a table that is not JSON:
    why`` for the last). An error's text loses its chunk-name prefix, and an error caught and
    raised again with its position (``error(err)`` after a pcall) names the line it was first
    raised on. Library errors name the function as the script knows it (``bad argument #1 to
    'find'``, numbered from a method call's self as C numbers them), whatever the sandbox wraps
    it in, and carry the position of the script's call as C's do (``b:3: malformed
    pattern``): none when the caller is C (``pcall(string.find, ...)``) or the call was a tail
    call (``return s:find(p)``), whose caller's frame Lua has not kept; a run failing so takes
    the line of the one line that calls the function, if only one does. A name the sandbox
    does not have, and that a
    script written for another Lua may use (``_G``, ``setfenv``, ``bit32``, ``math.pow``...),
    gets a hint of what to use instead.

Limits (``LuaLimits``)
    Instructions and wall time are enforced by a count hook in every coroutine. Once a limit
    trips it stays tripped, so pcall cannot swallow it. A ``trial`` sandbox (``LuaPool``'s
    inline one, whose limits are below a worker's) ends the run on a pattern refusal too, which
    another sandbox raises as an error the script may catch, and on data to convert past
    ``TRIAL_DATA`` (limit ``memory``). The memory limit counts what a run adds to the Lua heap;
    what the engine hands in (inputs, ctx, results) is not charged. The output limit applies to
    the JSON text.

JSON rule
    Python to Lua (inputs, results, ctx): an object becomes a table with string keys. An array
    becomes a table with keys 1..n that carries the ``json.array`` metatable, so ``[]`` stays
    ``[]`` (``getmetatable`` reports ``"json.array"``). null becomes ``json.null``, a unique
    read-only value, so ``{"a": null}`` keeps its key; note that ``json.null`` is truthy in Lua,
    so test it with ``== json.null``. Integers become Lua integers and floats Lua floats, so 3
    and 3.0 stay apart; integers beyond 64 bits become floats, and those beyond float range are
    refused, with the path to the value. The null fields of ``ctx`` are left out, so that
    ``if ctx.item then`` works, except a foreach item that is null, which is ``json.null``.
    Nesting deeper than 100 levels is refused. Inputs and results are refused when the script
    reads them, with an error it may catch; ctx before the script runs.

    Lua to Python (a node's output, ``json.encode``): nil as the whole output means ``{}``.
    ``json.null`` is null. Booleans and strings stay what they are; strings must be valid UTF-8.
    Integers stay integers and floats stay floats (3.0 is written ``3.0``); NaN and infinities
    are refused. A table that carries the ``json.array`` metatable, or whose keys are exactly
    1..n (n >= 1), is an array. An empty table without the marker is ``{}``. Positive integer
    keys with holes make an array with null in the holes when the highest key is at most twice
    the number of keys, and are refused as a sparse array otherwise. String keys make an object,
    written with its keys sorted. Mixed integer and string keys, keys of any other kind,
    functions, userdata, coroutines, nesting deeper than 100 levels and cycles are refused with
    a message naming the path, e.g. ``output.rows[2] is a function: outputs must be JSON
    values``. Tables are read raw: metatables play no part except the ``json.array`` marker.
    ``json.decode`` reads strict JSON (RFC 8259) by the Python-to-Lua rule, refusing a key
    written twice in one object, and its errors give line, column and byte.

Pattern rule
    ``string.find``, ``match``, ``gmatch`` and ``gsub`` run in C, where the instruction hook
    never fires, and a pattern that backtracks can run for hours. So each call first estimates
    its worst case as ``n^(k+u) * 2^q * L`` and is refused with an error when that exceeds
    ``LuaLimits.pattern_budget`` (10^8). Here n is the length of the subject from ``init`` on;
    k counts the items quantified with ``*``, ``+`` or ``-`` that something follows (a
    quantifier at the very end of the pattern never has to give anything back, while one before
    a final ``$`` does), plus each ``%b`` and each back reference, which scan; u is 1 when the
    pattern is not anchored with ``^`` (every start position is tried), and always for
    ``gmatch``, which reads a leading ``^`` as a character; q is the number of ``?``
    quantifiers; L is the number of items, a set counting its length (each start position may
    compare them all). ``string.find`` with ``plain`` set costs ``n * #pattern``. So
    ``s:gsub("%s+", " ")`` passes on subjects up to 100 MB, ``s:find("a.*b")`` on up to about
    5 KB, and ``s:find("(.-)(.-)x")`` or ``s:match("^%s*(.-)%s*$")`` on a few hundred bytes.

C loops
    ``string.rep`` of an empty string returns at once, and ``table.move``, ``table.insert``
    and ``table.remove`` refuse to shift more than 2^24 elements: those loops run in C,
    allocating nothing the memory limit would see. Creating a coroutine is charged the
    instructions it could run before its hook first fires. A run whose C call still went past
    its time (the hook can only look between calls) ends with that limit, not a success.
"""

from __future__ import annotations

import json
import json.scanner
import logging
import re
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol

import lupa.lua54 as lupa

from engine.core.jsontext import dumps, escaped_length
from engine.core.values import JSON, JSONObject
from engine.lua.prelude import PRELUDE, PRELUDE_NAME

__all__ = [
    "MISSING",
    "LuaLimits",
    "LuaOutcome",
    "LuaSandbox",
    "LuaSyntaxProblem",
    "LuaTask",
    "check_syntax",
]

logger = logging.getLogger(__name__)

MISSING: Final = object()
"""What a ``LuaTask.results`` lookup returns for a name that is not an ancestor."""

MAX_DEPTH: Final = 100
"""Deepest nesting of JSON arrays and objects accepted in either direction."""

_HOOK_COUNT: Final = 1000
"""VM instructions between two firings of the count hook."""

_CHECK_EVERY: Final = 10
"""Hook firings between two looks at the deadline and the cancel event (about 10k instructions)."""

_MIN_MEMORY: Final = 64 * 1024

_CHECK_CANCELLED, _CHECK_DEADLINE, _CHECK_WALL_TIME = 1, 2, 3

_DATE_LOCK: Final = threading.Lock()
"""Held around every ``os.date`` of every sandbox in the process: C's os.date reads the one
static result of ``gmtime``/``localtime``, which another thread's call overwrites (see the
prelude)."""


@dataclass(frozen=True)
class LuaLimits:
    """What one run may spend."""

    instructions: int = 50_000_000
    """VM instructions per run."""
    wall_time: float = 30.0
    """Seconds per run, unless the task gives an earlier deadline."""
    memory: int = 64 * 1024 * 1024
    """Bytes of Lua heap one run may add; at least 64 KiB, since a failed allocation outside
    a protected call aborts the process, and lupa pushes a run's arguments unprotected."""
    output_bytes: int = 1024 * 1024
    """Size of the JSON-encoded output."""
    pattern_budget: int = 10**8
    """Largest estimated cost of one pattern match (see the pattern rule above)."""
    log_lines: int = 1000
    """Further log lines are dropped, with one marker line saying how many."""
    log_line_bytes: int = 16 * 1024
    """Longer log lines are cut, saying how much was dropped."""
    log_bytes: int = 256 * 1024
    """Log text one run may keep in all; lines past it are dropped, as past ``log_lines``."""
    error_bytes: int = 16 * 1024
    """A longer error message is cut, saying how much was dropped."""

    def __post_init__(self) -> None:
        if self.memory < _MIN_MEMORY:
            raise ValueError(f"LuaLimits.memory must be at least {_MIN_MEMORY} bytes")


class CancelFlag(Protocol):
    """What a task's ``cancel`` must offer: ``threading.Event`` does, and so does ``Flag``."""

    def is_set(self) -> bool: ...


class Flag:
    """A cancel flag without a lock: the hook only reads it, one thread sets it.

    A run makes one per task, and ``threading.Event`` (a Condition and a Lock) costs more to
    create than a trivial script costs to run.
    """

    __slots__ = ("_set", "taken")

    def __init__(self) -> None:
        self._set = False
        self.taken = False
        """Set by the pool's worker as it begins the task: until then it has logged nothing,
        and stopping it needs no wait (``engine.running``)."""

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


# Tasks and outcomes are made once per node run: slotted, not frozen (frozen dataclasses
# construct several times slower); nothing changes them after construction.
@dataclass(slots=True)
class LuaTask:
    """One run of one chunk: the code, what it sees, and when it must stop."""

    key: str
    """Cache key of the compiled chunk, e.g. ``etl@1.0.0/extract`` or ``etl@1.0.0/extract#when``."""
    code: str
    """The node's Lua chunk, or an expression when ``expression`` is set."""
    chunk_name: str
    """The node id; Lua names the chunk so in its messages."""
    inputs: JSON
    """Workflow inputs: the global ``inputs``."""
    results: Callable[[str], object]
    """``lookup(node_id)``: the JSON output of an ancestor, or ``MISSING`` for any other name."""
    ctx: JSONObject
    """The global ``ctx``: workflow_id, version, execution_id, node_id, attempt, item, index."""
    expression: bool = False
    """``code`` is a Lua expression (a node's ``when``); the value is its truthiness."""
    deadline: float | None = None
    """A ``time.monotonic()`` instant past which the run fails."""
    cancel: CancelFlag | None = None
    """Once set, the run stops with the error ``cancelled``."""
    result_names: Callable[[], Sequence[str]] | None = None
    """The ids ``pairs(results)`` goes through (the ancestors that succeeded, in the run's
    order), asked for only when a script iterates; None: it goes through none."""


@dataclass(slots=True)
class LuaOutcome:
    """How a run ended."""

    ok: bool
    value: JSON
    """The output (Lua nil becomes ``{}``), or a bool for expressions; None when not ok."""
    error: str | None
    """What went wrong, without the chunk-name prefix: ``boom``, ``cancelled``, ..."""
    line: int | None
    """Line of the chunk where the error was raised, when known."""
    logs: list[tuple[str, str]]
    """``(level, message)`` in the order they were logged."""
    duration: float
    """Seconds."""
    limit: str | None = None
    """Which limit stopped the run, when one did: instructions, wall_time, deadline,
    cancelled, memory or pattern (a match refused as too costly)."""
    size: int = 0
    """Bytes of the output's JSON text as the wire carries it, escaped to ASCII (0 for
    expressions and failures)."""
    logs_dropped: int = 0
    """Lines past ``log_lines`` or ``log_total_bytes`` the run did not keep: its node's log
    budget counts them and tells them (``running``), in one line for all its runs."""


@dataclass(frozen=True)
class LuaSyntaxProblem:
    """Why a chunk does not compile."""

    message: str
    """Lua's message without the chunk-name prefix, e.g. ``'=' expected near 'x'``."""
    line: int | None


class _Refused(Exception):
    """A value the engine handed in that Lua cannot hold; carries the path to it."""

    def __init__(self, what: str, *, anywhere: bool = False) -> None:
        super().__init__(what)
        self.what = what
        self.anywhere = anywhere  # the path would not help: say it of the whole value
        self.path: list[str | int] = []
        self.root = "value"

    def message(self) -> str:
        if self.anywhere:
            return f"{self.root} {self.what}"
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in self.path)
        text = f"{self.root}{path} {self.what}"
        # a key on the way may hold what it reports (a lone surrogate): no text could carry that
        return text if _unicode(text) else text.encode(errors="backslashreplace").decode()


def _unicode(text: str) -> bool:
    """lupa cannot encode lone surrogates, which JSON text may carry in escapes."""
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            return False
    return True


def _check_unicode(text: str) -> None:
    if not _unicode(text):
        raise _Refused(_NOT_UNICODE)


def _deny_attribute(obj: object, name: object, is_setting: bool) -> str:
    raise AttributeError("Lua code may not touch Python objects")


def _int_overflow(value: int) -> float:
    """Integers beyond 64 bits become floats; lupa raises OverflowError past float range."""
    return float(value)


def _beyond_float(value: int) -> bool:
    try:
        float(value)
    except OverflowError:
        return True
    return False


def _refusal(error: Exception, entries: Iterable[tuple[str | int, object]]) -> _Refused:
    """lupa refuses a table's scalars all at once: this finds the one, to name its path. It is
    looked for only then, so that the common case checks nothing twice."""
    for key, item in entries:
        if type(key) is str and not _unicode(key):
            return _Refused(_NOT_UNICODE)  # a key: its table is named, the key cannot be
        if type(item) is str and not _unicode(item):
            refused = _Refused(_NOT_UNICODE)
        elif type(item) is int and not _INT_MIN <= item <= _INT_MAX and _beyond_float(item):
            refused = _Refused(_TOO_BIG)
        else:
            continue
        refused.path.append(key)
        return refused
    return _Refused(_NOT_UNICODE if isinstance(error, UnicodeEncodeError) else _TOO_BIG)


@dataclass
class _Compiled:
    code: str
    chunk_name: str
    expression: bool
    function: Any = field(repr=False)


TRIAL_DATA: Final = 1_500
"""What a ``trial`` run may convert of the data the engine hands in (inputs, results, a
foreach item), in units of one table entry or 512 bytes of string, about a third of a
microsecond each: half a millisecond. Converting is Python's work, outside the script's limits
(a result of a megabyte took 40 ms on the caller's thread, the event loop's), so past this the
trial ends before converting, its limit ``memory``, and the task runs on a worker."""


def _data_units(value: object, left: int) -> int:
    """Roughly what converting ``value`` to Lua costs (see ``TRIAL_DATA``); counting stops once
    past ``left``, so a huge value costs no more to refuse than a small one to take."""
    kind = type(value)
    if kind is not dict and kind is not list:
        return len(value) >> 9 if kind is str else 0  # type: ignore[arg-type]
    spent = 0
    stack = [value]
    while stack:
        item = stack.pop()
        children: Any = item.values() if type(item) is dict else item
        spent += len(children) + 1
        if spent > left:
            return spent
        for child in children:
            kind = type(child)
            if kind is dict or kind is list:
                stack.append(child)
            elif kind is str and len(child) >= 512:
                spent += len(child) >> 9
        if spent > left:
            return spent
    return spent


_CACHE_BYTES: Final = 8 * 1024 * 1024
"""Source bytes of compiled chunks one sandbox keeps (their compiled form takes a few times as
much); the oldest go first past this, as past the count."""

_SCALARS: Final = frozenset({str, int, float, bool})
# typeshed gives make_scanner its own type as argument, where the C scanner takes a decoder
_read_json: Final[Callable[[str, int], tuple[Any, int]]] = json.scanner.make_scanner(
    json.JSONDecoder()  # type: ignore[arg-type]
)
"""``json.loads`` without its checks, which the prelude's encoder makes needless: half the cost."""
_NOT_UNICODE: Final = "holds text that is not valid Unicode (a lone surrogate)"
_TOO_BIG: Final = "holds an integer too large even for a float"
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


class LuaSandbox:
    """One Lua runtime. Not thread-safe: use one per worker thread."""

    def __init__(
        self,
        limits: LuaLimits = LuaLimits(),
        *,
        stop: threading.Event | None = None,
        cache_size: int = 1024,
        check_every: int = _CHECK_EVERY,
        trial: bool = False,
    ) -> None:
        """``stop``, once set, stops every run of this sandbox like a task's cancel event.
        ``check_every``: hook firings between two looks at the clock and the cancel event.
        ``trial``: the limits are smaller than where the task may run again (``LuaPool``'s
        inline runs), so a limit the script could catch (a pattern refused as too costly) ends
        the run with that limit instead, for the caller to run it again with the full ones."""
        self.limits = limits
        self._stop = stop
        self._cache_size = cache_size
        self._compiled: OrderedDict[str, _Compiled] = OrderedDict()
        self._cached_bytes = 0  # source bytes of the chunks in _compiled
        self._task: LuaTask | None = None
        self._deadline = 0.0
        self._deadline_code = _CHECK_WALL_TIME
        self._memory_cap: int | None = None
        self._trial = trial
        self._data_left = 0  # what this trial run may still convert (TRIAL_DATA)
        self._declined: str | None = None
        """What this trial run refused to convert, as too large for it: it ends so."""

        self._runtime = lupa.LuaRuntime(
            register_eval=False,
            register_builtins=False,
            unpack_returned_tuples=True,
            attribute_filter=_deny_attribute,
            overflow_handler=_int_overflow,
            max_memory=0,
        )
        lua_globals = self._runtime.globals()
        lua_globals["python"] = None
        lua_globals["package"]["loaded"]["python"] = None
        self._table_from = self._runtime.table_from
        # Lua holds its callbacks through references the cycle collector cannot see, so they
        # reach the sandbox weakly: otherwise no sandbox (and no Lua heap) would ever be freed.
        this = weakref.ref(self)

        def check() -> int | None:
            sandbox = this()
            return sandbox._check() if sandbox is not None else _CHECK_CANCELLED

        def lookup(name: object) -> tuple[object, str | None]:
            sandbox = this()
            return sandbox._lookup(name) if sandbox is not None else (None, None)

        def inputs() -> tuple[object, str | None]:
            sandbox = this()
            return sandbox._inputs() if sandbox is not None else (None, None)

        def memory(on: bool) -> None:
            sandbox = this()
            if sandbox is not None:
                sandbox._memory(on)

        def names() -> object:
            sandbox = this()
            return sandbox._names() if sandbox is not None else None

        def date() -> None:
            sandbox = this()
            if sandbox is not None:
                with _DATE_LOCK:
                    sandbox._locked_date()

        config = self._table_from(
            {
                "check": check,
                "lookup": lookup,
                "names": names,
                "inputs": inputs,
                "memory": memory,
                "date": date,
                "hook_count": _HOOK_COUNT,
                "check_every": check_every,
                "pattern_budget": limits.pattern_budget,
                "trial": trial,
                "log_lines": limits.log_lines,
                "log_line_bytes": limits.log_line_bytes,
                "log_total_bytes": limits.log_bytes,
                "error_bytes": limits.error_bytes,
                "max_depth": MAX_DEPTH,
            }
        )
        api = self._runtime.execute(PRELUDE, config, name=PRELUDE_NAME, mode="t")
        self._run_lua = api["run"]
        self._reset_lua = api["reset"]
        self._mark_arrays = api["mark_arrays"]
        self._null = api["null"]
        self._locked_date = api["locked_date"]

    # -- compiling -------------------------------------------------------------------------

    def check_syntax(self, code: str, *, expression: bool = False) -> LuaSyntaxProblem | None:
        """Compiles ``code`` without running it; None when it is valid."""
        try:
            self._runtime.compile(_wrap(code, expression), name="=chunk", mode="t")
        except lupa.LuaSyntaxError as error:
            return LuaSyntaxProblem(*_syntax_problem(str(error), "chunk", code, expression))
        return None

    def _function(self, task: LuaTask) -> Any:
        entry = self._compiled.get(task.key)
        if (
            entry is not None
            and entry.code == task.code
            and entry.expression == task.expression
            and entry.chunk_name == task.chunk_name
        ):
            self._compiled.move_to_end(task.key)
            return entry.function
        function = self._runtime.compile(
            _wrap(task.code, task.expression), name="=" + task.chunk_name, mode="t"
        )
        old = self._compiled.pop(task.key, None)
        if old is not None:
            self._cached_bytes -= len(old.code)
        self._compiled[task.key] = _Compiled(task.code, task.chunk_name, task.expression, function)
        self._cached_bytes += len(task.code)
        # bounded in bytes too: a compiled chunk keeps a few times its source on the Lua heap,
        # outside every run's memory limit
        while len(self._compiled) > self._cache_size or (
            self._cached_bytes > _CACHE_BYTES and len(self._compiled) > 1
        ):
            _, evicted = self._compiled.popitem(last=False)
            self._cached_bytes -= len(evicted.code)
        return function

    # -- running ---------------------------------------------------------------------------

    def run(self, task: LuaTask) -> LuaOutcome:
        """Runs ``task``; never raises for anything the script does."""
        started = time.perf_counter()
        deadline = time.monotonic() + self.limits.wall_time
        self._deadline_code = _CHECK_WALL_TIME
        if task.deadline is not None and task.deadline <= deadline:
            deadline = task.deadline
            self._deadline_code = _CHECK_DEADLINE
        self._deadline = deadline
        self._task = task
        self._memory_cap = None
        self._declined = None
        self._data_left = TRIAL_DATA
        try:
            code = self._check()
            if code is not None:
                return self._tripped(
                    self._limit_message(code), None, [], started, _CODE_NAMES[code]
                )
            try:
                function = self._function(task)
            except lupa.LuaSyntaxError as error:
                message, line = _syntax_problem(
                    str(error), task.chunk_name, task.code, task.expression
                )
                return self._failed(f"syntax error: {message}", line, [], started)
            try:
                arguments = self._arguments(task, function)
            except _Refused as refused:
                return self._failed(refused.message(), None, [], started)
            if self._declined is not None:
                return self._too_much_data(started)
            # the limit is on from here, while lupa pushes the arguments outside any protected
            # call: a few bytes against at least 64 KiB of headroom
            self._memory(True)
            status, payload, line, log_json, call = self._run_lua(*arguments)
            if self._declined is not None:
                # the script may have caught the refusal: whatever it did after, the run ends
                return self._too_much_data(started)
            if status == "ok" and time.monotonic() > self._deadline:
                # a C function can run long between two firings of the hook: a run that went
                # past its time that way has not succeeded
                status, payload = "limit", _CODE_NAMES[self._deadline_code]
        except lupa.LuaMemoryError:
            self._recover()
            return self._tripped(self._memory_message(), None, [], started, "memory")
        except Exception as error:
            logger.exception("Lua sandbox failed running %s", task.key)
            self._recover()
            return self._failed(f"internal error in the Lua sandbox: {error}", None, [], started)
        finally:
            self._runtime.set_max_memory(0)
            self._task = None
            self._collect_garbage()
        try:
            return self._outcome(task, status, payload, line, log_json, started, call)
        except Exception as error:
            logger.exception("Lua sandbox could not read the outcome of %s", task.key)
            return self._failed(f"internal error in the Lua sandbox: {error}", None, [], started)

    def _arguments(self, task: LuaTask, function: Any) -> list[object]:
        """What the prelude's ``run`` takes: ctx comes flat (name, value, ...), which Lua builds
        faster than lupa does, and whether the inputs are to be fetched: converting them all
        for every task, a foreach item's that never reads them too, made a foreach over them
        cost the square of their size. ``{}`` needs no fetching."""
        limits = self.limits
        inputs = task.inputs
        ctx = task.ctx
        arguments: list[object] = [
            function,
            "=" + task.chunk_name,
            task.expression,
            limits.instructions,
            limits.output_bytes,
            type(inputs) is not dict or bool(inputs),
        ]
        for name, value in ctx.items():
            if value is None:
                # a foreach item (it has an index) may be null, which is json.null like any null
                # in a value; the other null fields are left out (see the JSON rule)
                if name == "item" and ctx.get("index") is not None:
                    arguments += (name, self._null)
                continue
            try:
                if (
                    (type(value) is str and value.isascii())
                    or (type(value) is int and _INT_MIN <= value <= _INT_MAX)
                    or type(value) is float
                    or type(value) is bool
                ):
                    arguments += (name, value)
                elif not (self._trial and self._declines(value, "ctx.", name)):
                    arguments += (name, self._to_lua(value))
            except _Refused as refused:
                refused.root = f"ctx.{name}"
                raise
        return arguments

    def _outcome(
        self,
        task: LuaTask,
        status: str,
        payload: Any,
        line: int | None,
        log_json: str | None,
        started: float,
        call: str | None = None,
    ) -> LuaOutcome:
        """``call``: the library function the script tail-called that failed, if one did."""
        logs = _pairs(_read_json(log_json, 0)[0]) if log_json is not None else []
        if logs and logs[-1][0] == DROPPED_LEVEL:
            dropped = int(logs.pop()[1])
            ended = self._ended(task, status, payload, line, logs, started, call)
            return replace(ended, logs_dropped=dropped)
        return self._ended(task, status, payload, line, logs, started, call)

    def _ended(
        self,
        task: LuaTask,
        status: str,
        payload: Any,
        line: int | None,
        logs: list[tuple[str, str]],
        started: float,
        call: str | None = None,
    ) -> LuaOutcome:
        if status == "ok":
            output: JSON = payload if task.expression else _read_json(payload, 0)[0]
            size = 0 if task.expression else wire_length(payload, output)
            elapsed = time.perf_counter() - started
            return LuaOutcome(True, output, None, None, logs, elapsed, size=size)
        if status == "error" or status == "pattern":
            # an expression's chunk has a line _wrap adds after it
            lines = task.code.count("\n") + (2 if task.expression else 1)
            message, position = _split_position(payload, task.chunk_name, lines)
            line = _clamp(position if position is not None else line, task.code, task.expression)
            if line is None:
                line = _tail_call_line(message, task.code, call)
            if status == "pattern":  # the guard's refusal (see prelude.py), not a look-alike
                return self._tripped(message, line, logs, started, "pattern")
            return self._failed(_withheld(message, line, task.code), line, logs, started)
        if status == "too_big":
            limit = self.limits.output_bytes
            message = (
                f"output is {payload} bytes of JSON, over the limit of {limit} bytes"
                if payload >= 0  # else refused halfway, its strings alone over the limit
                else f"output is over the limit of {limit} bytes of JSON"
            )
            return self._failed(message, None, logs, started)
        if payload == "memory":
            self._runtime.gccollect()
            return self._tripped(self._memory_message(), None, logs, started, "memory")
        reason = str(payload)
        return self._tripped(
            self._limit_message(_REASON_CODES[reason]), line, logs, started, reason
        )

    def _too_much_data(self, started: float) -> LuaOutcome:
        message = f"{self._declined} is too large to convert in a trial run"
        return self._tripped(message, None, [], started, "memory")

    def _declines(self, value: object, what: str, name: str = "") -> bool:
        """Does this trial run refuse to convert ``value`` (``what`` + ``name``, joined only
        then), as past what is left of its ``TRIAL_DATA``? Then the run is to end."""
        left = self._data_left
        self._data_left = left - _data_units(value, left)
        if self._data_left >= 0:
            return False
        self._declined = what + name
        return True

    def _tripped(
        self, error: str, line: int | None, logs: list[tuple[str, str]], started: float, limit: str
    ) -> LuaOutcome:
        return LuaOutcome(False, None, error, line, logs, time.perf_counter() - started, limit)

    def _failed(
        self, error: str, line: int | None, logs: list[tuple[str, str]], started: float
    ) -> LuaOutcome:
        return LuaOutcome(False, None, error, line, logs, time.perf_counter() - started)

    def _limit_message(self, code: int) -> str:
        if code == _CHECK_CANCELLED:
            return "cancelled"
        if code == _CHECK_DEADLINE:
            return "deadline exceeded"
        if code == _CHECK_WALL_TIME:
            return f"wall-time limit of {self.limits.wall_time:g} seconds exceeded"
        return f"instruction limit of {self.limits.instructions} exceeded"

    def _memory_message(self) -> str:
        return f"memory limit of {self.limits.memory} bytes exceeded"

    def _recover(self) -> None:
        """Puts the runtime back in shape after Lua raised into Python."""
        try:
            self._runtime.set_max_memory(0)
            self._reset_lua()
            self._runtime.gccollect()
        except Exception:
            logger.exception("Lua sandbox could not reset its runtime")

    # -- callbacks from Lua: they return no new Lua strings while the memory limit is on,
    # since lupa allocates those outside any protected call -----------------------------------

    def _check(self) -> int | None:
        """Cancelled or past the deadline?"""
        task = self._task
        if task is not None and task.cancel is not None and task.cancel.is_set():
            return _CHECK_CANCELLED
        if self._declined is not None:  # the run ends: its outcome says why (_too_much_data)
            return _CHECK_CANCELLED
        if self._stop is not None and self._stop.is_set():
            return _CHECK_CANCELLED
        if time.monotonic() > self._deadline:
            return self._deadline_code
        return None

    def _collect_garbage(self) -> None:
        """After a run that left its heap well above where it started (a script stopped or
        failed after building tens of megabytes, or one that built them and returned little),
        collect now: Lua's incremental collector runs as scripts allocate, so an idle worker
        would keep a run's worth of garbage, up to the memory limit, for good."""
        cap = self._memory_cap
        if cap is None:
            return
        started_with = cap - self.limits.memory
        if self._runtime.get_memory_used() > started_with + GARBAGE_KEPT:
            self._runtime.gccollect()

    def _memory(self, on: bool) -> None:
        """Arms (with the cap this run started with) or lifts the memory limit."""
        runtime = self._runtime
        if not on:
            runtime.set_max_memory(0)
            return
        if self._memory_cap is None:
            self._memory_cap = runtime.get_memory_used() + self.limits.memory
        runtime.set_max_memory(self._memory_cap)

    def _inputs(self) -> tuple[object, str | None]:
        """``inputs`` for Lua, converted on the script's first read; the memory limit stays lifted
        on return."""
        runtime = self._runtime
        runtime.set_max_memory(0)
        task = self._task
        if task is None:
            return None, None
        if self._trial and self._declines(task.inputs, "inputs"):
            return None, "inputs are too large to convert in a trial run"
        before = runtime.get_memory_used()
        try:
            table = self._to_lua(task.inputs)
        except _Refused as refused:
            refused.root = "inputs"
            return None, refused.message()
        if self._memory_cap is not None:
            self._memory_cap += max(0, runtime.get_memory_used() - before)
        return table, None

    def _names(self) -> object:
        """The ids ``pairs(results)`` goes through, as a Lua list; the memory limit stays
        lifted on return, as ``_lookup`` leaves it."""
        self._runtime.set_max_memory(0)
        task = self._task
        listed = task.result_names if task is not None else None
        return self._table_from(list(listed()) if listed is not None else [])

    def _lookup(self, name: object) -> tuple[object, str | None]:
        """``results[name]`` for Lua, converted; the memory limit stays lifted on return."""
        runtime = self._runtime
        runtime.set_max_memory(0)
        task = self._task
        if task is None or not isinstance(name, str):
            return None, None
        try:
            value = task.results(name)
        except Exception as error:
            logger.exception("results lookup of %s failed for %s", name, task.key)
            return None, f"results.{name} could not be read: {error}"
        if value is MISSING:
            return None, None
        if self._trial and self._declines(value, "results.", name):
            return None, f"results.{name} is too large to convert in a trial run"
        before = runtime.get_memory_used()
        try:
            # two levels more than an output may have: a foreach node's result is the list of
            # its items' outputs, and a sub-workflow's the map of its nodes' outputs
            table = self._to_lua(value, depth=-2)  # type: ignore[arg-type]
        except _Refused as refused:
            refused.root = f"results.{name}"
            return None, refused.message()
        if self._memory_cap is not None:
            self._memory_cap += max(0, runtime.get_memory_used() - before)
        return table, None

    # -- Python to Lua ---------------------------------------------------------------------

    def _to_lua(self, value: JSON, depth: int = 0) -> object:
        """Builds the Lua value for ``value``; see the JSON rule. ``depth``: where its top
        level counts from (below 0 allows that many levels more)."""
        if type(value) is str:
            _check_unicode(value)
            return value
        if type(value) is int and not _INT_MIN <= value <= _INT_MAX:
            try:
                return float(value)
            except OverflowError:
                raise _Refused(_TOO_BIG) from None
        arrays: list[object] = []
        converted = self._convert(value, arrays, depth)
        if arrays:
            self._mark_arrays(self._table_from(arrays))
        return converted

    def _convert(self, value: JSON, arrays: list[object], depth: int) -> object:
        kind = type(value)
        if kind is dict:
            if depth >= MAX_DEPTH:
                raise _Refused(f"is nested deeper than {MAX_DEPTH} levels", anywhere=True)
            items: dict[str, object] = {}
            for key, item in value.items():  # type: ignore[union-attr]
                if type(item) in _SCALARS:
                    items[key] = item
                elif item is None:
                    items[key] = self._null
                else:
                    try:
                        items[key] = self._convert(item, arrays, depth + 1)
                    except _Refused as refused:
                        refused.path.insert(0, key)
                        raise
            try:
                return self._table_from(items)
            except (UnicodeEncodeError, OverflowError) as error:
                raise _refusal(error, items.items()) from None
        if kind is list:
            if depth >= MAX_DEPTH:
                raise _Refused(f"is nested deeper than {MAX_DEPTH} levels", anywhere=True)
            elements: list[object] = []
            for index, item in enumerate(value):  # type: ignore[arg-type]
                if type(item) in _SCALARS:
                    elements.append(item)
                elif item is None:
                    elements.append(self._null)
                else:
                    try:
                        elements.append(self._convert(item, arrays, depth + 1))
                    except _Refused as refused:
                        refused.path.insert(0, index + 1)
                        raise
            try:
                table = self._table_from(elements)
            except (UnicodeEncodeError, OverflowError) as error:
                raise _refusal(error, enumerate(elements, 1)) from None
            arrays.append(table)
            return table
        if value is None:
            return self._null
        if kind in _SCALARS:
            return value
        raise _Refused(f"is a {kind.__name__}, not a JSON value")


_REASON_CODES: Final = {
    "cancelled": _CHECK_CANCELLED,
    "deadline": _CHECK_DEADLINE,
    "wall_time": _CHECK_WALL_TIME,
    "instructions": 0,
}
_CODE_NAMES: Final = {code: name for name, code in _REASON_CODES.items()}


def _wrap(code: str, expression: bool) -> str:
    """The chunk as compiled. Its environment is its ``_ENV`` upvalue, which the prelude sets
    for each run (compiled, it is the full globals table, which no run ever sees)."""
    if expression:
        # the newline keeps a trailing comment from swallowing the parenthesis
        return f"return ({code}\n)"
    return code


def _syntax_problem(
    error: str, chunk_name: str, code: str, expression: bool
) -> tuple[str, int | None]:
    """A syntax error's message without its position, and its line. Only the refusal of a
    binary chunk has no position: it is the first line's."""
    message, line = _split_position(error, chunk_name)
    message = _unwrapped(message, line, code, expression)
    return message, _clamp(line, code, expression) if line is not None else 1


def _unwrapped(message: str, line: int | None, code: str, expression: bool) -> str:
    """A syntax error at the parenthesis ``_wrap`` closes an expression with is an expression
    that ends too early: say so, instead of naming a ')' the user never wrote."""
    if expression and line is not None and line > code.count("\n") + 1:
        if message.startswith("<eof> expected"):
            # the user's own ')' closed the wrapper's '('
            return "the expression closes a parenthesis it never opened"
        return message.replace("near ')'", "at the end of the expression")
    return message


_WITHHELD_GLOBALS: Final = frozenset(
    (
        "io",
        "debug",
        "package",
        "require",
        "load",
        "loadfile",
        "dofile",
        "collectgarbage",
        "python",
        "loadstring",
    )
)
_NOT_IN_54: Final = "is not in Lua 5.4, which the sandbox runs"
# globals a script from another Lua (5.1, 5.2, LuaJIT) may reach for, with what to do instead
_GLOBAL_HINTS: Final = {
    "_G": "the sandbox has no _G; the script's globals table is _ENV",
    "getfenv": f"getfenv {_NOT_IN_54}: _ENV takes its place",
    "setfenv": f"setfenv {_NOT_IN_54}: _ENV takes its place",
    "module": f"module {_NOT_IN_54}, and the sandbox loads no modules",
    "newproxy": f"newproxy {_NOT_IN_54}: use setmetatable({{}}, mt)",
    "gcinfo": f"gcinfo {_NOT_IN_54}, and the sandbox offers no collectgarbage",
    "bit32": f"bit32 {_NOT_IN_54}: use its operators a & b, a | b, a ~ b (xor), ~a, a << n, a >> n",
    "jit": "jit is LuaJIT's; the sandbox runs Lua 5.4",
    "warn": 'the sandbox has no warn: use log("warn", ...)',
}
# field -> (library, what to do instead, or None for what the sandbox offers)
_WITHHELD_FIELDS: Final[dict[str, tuple[str, str | None]]] = {
    **{
        name: ("os", None)
        for name in ("execute", "exit", "getenv", "remove", "rename", "tmpname", "setlocale")
    },
    "dump": ("string", None),
    "difftime": ("os", "the sandbox has no os.difftime: subtract one os.time() from the other"),
    "pow": ("math", f"math.pow {_NOT_IN_54}: use x ^ y"),
    "atan2": ("math", f"math.atan2 {_NOT_IN_54}: use math.atan(y, x)"),
    "log10": ("math", f"math.log10 {_NOT_IN_54}: use math.log(x, 10)"),
    "mod": ("math", f"math.mod {_NOT_IN_54}: use math.fmod(x, y) or x % y"),
    "getn": ("table", f"table.getn {_NOT_IN_54}: use #t"),
    "gfind": ("string", f"string.gfind {_NOT_IN_54}: use string.gmatch"),
}
_NIL_NAME: Final = re.compile(r"attempt to (?:call|index) a nil value \((global|field) '(\w+)'\)$")
GARBAGE_KEPT: Final = 8 * 1024 * 1024
"""Bytes of a run's garbage a runtime may keep past the run without a full collection."""
_LIBRARY_ERROR: Final = re.compile(r"((?:json|string|table|math|utf8|os)\.\w+): ")
_OFFERED: Final = "string, table, math, utf8, coroutine, json, log, print and os.time/date/clock"


def _withheld(message: str, line: int | None, code: str) -> str:
    """Lua's own words for reaching a library the sandbox leaves out ("attempt to index a nil
    value (global 'io')"), with what the sandbox offers or what to use instead: a field only
    when its line says ``<library>.<name>`` (``os.exit``), since a table of the script's own may
    lack a field of that name."""
    found = _NIL_NAME.search(message)
    if found is None:
        return message
    kind, name = found.groups()
    if kind == "global":
        hint = _GLOBAL_HINTS.get(name)
        if hint is not None:
            return f"{message}: {hint}"
        if name in _WITHHELD_GLOBALS:
            return f"{message}: the sandbox has no {name}; it offers {_OFFERED}"
        return message
    field = _WITHHELD_FIELDS.get(name)
    if field is not None and line is not None:
        library, hint = field
        lines = code.splitlines()
        if 0 < line <= len(lines) and f"{library}.{name}" in lines[line - 1]:
            if hint is None:
                hint = f"the sandbox has no {library}.{name}; it offers {_OFFERED}"
            return f"{message}: {hint}"
    return message


_FLOAT_LIKE: Final = re.compile(r"[0-9][.eE]")


def wire_length(payload: str, value: JSON) -> int:
    """The length of an output's JSON as the wire carries it (``wire.dumps``), the measure of
    the bounds on a foreach node's and a run's outputs, so a run is held to the same whether it
    runs here or is resumed elsewhere. Lua's text differs from it in escaping non-ASCII (counted
    exactly) and in writing floats (``1e+15`` against ``1000000000000000.0``): text that may
    hold a float is encoded again and measured."""
    if _FLOAT_LIKE.search(payload) is None:
        return escaped_length(payload)
    return len(dumps(value))


def _tail_call_line(message: str, code: str, function: str | None = None) -> int | None:
    """The line of a library call that failed as a tail call (``return json.decode(body)``,
    ``return s:find(p)``): Lua reuses the script's frame for it, so no frame is left to say
    where. ``function``: the name of the library function that failed, when the sandbox knows
    it (else a ``json.*`` message names it). The one line of the script that calls that
    function by its name, outside a comment, when only one does and nothing names it otherwise
    (``local decode = json.decode`` may call it anywhere)."""
    if function is not None:
        name = function
        prefix = r"(?<![\w])"  # s:find(, string.find(, find(: not refind(
    else:
        found = _LIBRARY_ERROR.match(message)
        if found is None:
            return None
        name, prefix = found[1], ""
    if "[[" in code or "[=" in code:
        return None  # a long comment or string may name it: no line rather than a wrong one
    # a call: name(...), name"...", name'...' or name{...}
    call = re.compile(prefix + re.escape(name) + r"""\s*[("'{]""")
    calls, named = [], False
    for number, text in enumerate(code.splitlines(), 1):
        text = text.split("--", 1)[0]
        if call.search(text):
            calls.append(number)
        elif name in text:
            named = True
    return calls[0] if len(calls) == 1 and not named else None


def _clamp(line: int | None, code: str, expression: bool) -> int | None:
    """Lua may blame an expression's last token on the line ``_wrap`` adds after it."""
    if line is None or not expression:
        return line
    return min(line, code.count("\n") + 1)


def _split_position(
    message: str, chunk_name: str, lines: int | None = None
) -> tuple[str, int | None]:
    """``"extract:3: boom"`` -> ``("boom", 3)``; other messages come back as they are.

    A message caught and raised again with its position (``error(err)`` after a ``pcall`` or a
    ``coroutine.resume``) carries this chunk's position once per raise, ``"extract:5:
    extract:3: boom"``: the innermost one is where it was first raised, and is kept. Only a
    position within the chunk's ``lines`` (None: none is looked for) reads as one: a message of
    the script's own that starts so (``error("db:5432: refused")`` in node ``db``) is text."""
    prefix = chunk_name[:59] + ":"
    text, line = _position(message, prefix)
    if line is None:
        return _position(message, "sandbox:")[0], None
    while lines is not None:
        inner, inner_line = _position(text, prefix)
        if inner_line is None or not 1 <= inner_line <= lines:
            break
        text, line = inner, inner_line
    return text, line


def _position(message: str, prefix: str) -> tuple[str, int | None]:
    """``message`` without a leading ``<prefix><line>: `` and that line, if it has one."""
    if message.startswith(prefix):
        digits, colon, text = message[len(prefix) :].partition(": ")
        if colon and digits.isdigit():
            return text, int(digits)
    return message, None


DROPPED_LEVEL: Final = "dropped"
"""The level of the last pair of a run's logs when it dropped lines: its message is how many.
No script logs at it (``log`` takes only its levels)."""


def _pairs(flat: list[str]) -> list[tuple[str, str]]:
    # a level without its message (an allocation refused between the two) is no log line
    return list(zip(flat[::2], flat[1::2], strict=False))


_local = threading.local()


def check_syntax(code: str, *, expression: bool = False) -> LuaSyntaxProblem | None:
    """Compiles ``code`` in this thread's sandbox; None when it is valid. For spec validation."""
    sandbox: LuaSandbox | None = getattr(_local, "sandbox", None)
    if sandbox is None:
        sandbox = _local.sandbox = LuaSandbox()
    return sandbox.check_syntax(code, expression=expression)
