"""``LuaSandbox`` and ``Execution`` with real lupa: inputs converted only for scripts that read
them, a null foreach item, duplicate keys in ``json.decode``, and where a refused value sits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from engine.core.values import JSON, JSONObject
from engine.loading import spec_from_document
from engine.lua import MISSING, LuaLimits, LuaOutcome, LuaPool, LuaSandbox, LuaTask
from engine.lua import pool as lua_pool
from engine.running import Execution

LIMITS = LuaLimits(instructions=2_000_000, memory=8 * 1024 * 1024)
CTX: JSONObject = {"node_id": "n", "attempt": 1}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[LuaSandbox]:
    yield LuaSandbox(LIMITS)


@pytest.fixture
async def pool() -> AsyncIterator[LuaPool]:
    async with LuaPool(workers=2) as p:
        yield p


def run(
    sandbox: LuaSandbox,
    code: str,
    inputs: JSON | None = None,
    *,
    results: dict[str, JSON] | None = None,
    ctx: JSONObject = CTX,
    **fields: Any,
) -> LuaOutcome:
    known = results or {}
    task = LuaTask(
        key=code,
        code=code,
        chunk_name="n",
        inputs={} if inputs is None else inputs,
        results=lambda name: known.get(name, MISSING),
        ctx=ctx,
        **fields,
    )
    return sandbox.run(task)


def value(outcome: LuaOutcome) -> JSON:
    assert outcome.ok, outcome
    return outcome.value


def failure(outcome: LuaOutcome) -> tuple[str | None, int | None]:
    assert not outcome.ok, outcome
    return outcome.error, outcome.line


class Conversions:
    """Counts the conversions of one Python value into Lua, by any sandbox."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, of: object) -> None:
        self.count = 0
        convert = LuaSandbox._to_lua

        def counted(sandbox: LuaSandbox, value: JSON, depth: int = 0) -> object:
            if value is of:
                self.count += 1
            return convert(sandbox, value, depth)

        monkeypatch.setattr(LuaSandbox, "_to_lua", counted)


async def execute(doc: dict[str, Any], pool: LuaPool, inputs: JSONObject) -> JSONObject:
    spec = spec_from_document({"id": "t", "version": "1.0.0", **doc})
    return await asyncio.wait_for(Execution(spec, inputs, pool=pool).run_to_end(), 60)


# -- inputs are converted for the scripts that read them ----------------------------------


async def test_a_foreach_over_the_inputs_does_not_convert_them_for_every_item(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A script that goes past its inline limits runs again from the start on a worker, and
    # converts its inputs again there: by design, and not what is counted here. Of those
    # limits only the 5 ms of wall time changes with the machine's load (on a loaded one
    # "reads" converted its inputs inline, ran past 5 ms, and again on a worker): it is
    # lifted, and the scripts still run inline as they do in production.
    monkeypatch.setitem(lua_pool.INLINE_LIMITS, "wall_time", 60.0)
    # each of n items converted all the inputs, n in them: a foreach cost n^2
    inputs: JSONObject = {"items": list(range(200)), "pad": list(range(1000))}
    conversions = Conversions(monkeypatch, inputs)
    async with LuaPool(workers=2) as pool:
        doc = await execute(
            {
                "nodes": [
                    {"id": "each", "foreach": "{{ inputs.items }}", "lua": "return ctx.item * 2"},
                    {"id": "gate", "when": "ctx.node_id == 'gate'", "lua": "return 1"},
                    {"id": "reads", "lua": "return {#inputs.items, #inputs.pad, #inputs.items}"},
                ]
            },
            pool,
            inputs,
        )
        assert pool.inline_misses == 0
    assert doc["status"] == "succeeded", doc["error"]
    assert doc["nodes"]["each"]["output"] == [2 * i for i in range(200)]
    assert doc["nodes"]["reads"]["output"] == [200, 1000, 200]
    assert conversions.count == 1  # the script that reads them, once for its three reads


def test_a_script_that_never_reads_the_inputs_never_converts_them(
    sandbox: LuaSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs: JSONObject = {"a": [1, 2, 3]}
    conversions = Conversions(monkeypatch, inputs)
    for code in ("return 1", "return ctx.node_id", "local inputs = 5 return inputs"):
        assert value(run(sandbox, code, inputs)) is not None
    assert value(run(sandbox, "ctx.node_id == 'n'", inputs, expression=True)) is True
    assert conversions.count == 0
    assert value(run(sandbox, "return inputs.a", inputs)) == [1, 2, 3]
    assert conversions.count == 1


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("return inputs", {"a": [1, None, {}], "b": {"c": []}}),
        ("return {inputs == inputs, rawequal(inputs, _ENV.inputs)}", [True, True]),
        ("return {#inputs.a, getmetatable(inputs.a), getmetatable(inputs.b.c)}",
         [3, "json.array", "json.array"]),
        ("local n = 0 for _ in pairs(inputs) do n = n + 1 end return {n, next(inputs.b)}",
         [2, "c", []]),
        ("return json.encode(inputs)", '{"a":[1,null,{}],"b":{"c":[]}}'),
        ("return inputs.a[2] == json.null", True),
        ("inputs.a[1] = 'x' inputs.z = true return inputs", {"a": ["x", None, {}], "b": {"c": []},
                                                          "z": True}),
        ("inputs = {1} return inputs", [1]),
        # written before it is read, even with nil, the global is what was written
        ("inputs = nil return inputs == nil", True),
        ("rawset(_ENV, 'inputs', nil) return inputs == nil", True),
        ("local x = inputs inputs = nil return {x.b, inputs == nil}", [{"c": []}, True]),
        ("local names = {} for k in pairs(_ENV) do names[#names + 1] = k end "
         "table.sort(names) return names", ["ctx", "inputs", "results"]),
        ("local _ENV = setmetatable({}, {__index = _ENV}) return inputs.b", {"c": []}),
        ("return nope == nil and io == nil", True),
    ],
)  # fmt: skip
def test_inputs_read_as_they_did_when_converted_up_front(
    sandbox: LuaSandbox, code: str, expected: JSON
) -> None:
    inputs: JSON = {"a": [1, None, {}], "b": {"c": []}}
    assert value(run(sandbox, code, inputs)) == expected


def test_what_a_script_does_to_the_inputs_stays_in_its_run(sandbox: LuaSandbox) -> None:
    inputs: JSON = {"a": [1]}
    assert value(run(sandbox, "inputs.a[1] = 2 inputs.b = 1 return inputs", inputs)) == {
        "a": [2],
        "b": 1,
    }
    assert value(run(sandbox, "inputs = nil return 1", inputs)) == 1
    assert value(run(sandbox, "return inputs", inputs)) == {"a": [1]}
    assert inputs == {"a": [1]}


def test_inputs_empty_or_not_an_object(sandbox: LuaSandbox) -> None:
    assert value(run(sandbox, "return {inputs, getmetatable(inputs)}", {})) == [{}]
    assert value(run(sandbox, "return {#inputs, getmetatable(inputs)}", [])) == [0, "json.array"]
    assert value(run(sandbox, "return inputs .. '!'", "text")) == "text!"
    assert value(run(sandbox, "return math.type(inputs)", 3)) == "integer"


def test_inputs_read_late_are_not_charged_to_the_script() -> None:
    sandbox = LuaSandbox(LuaLimits(memory=64 * 1024))
    inputs: JSON = {"items": [f"item {i}" for i in range(5000)]}  # far over 64 KiB in Lua
    code = "local t = {} for i = 1, 500 do t[i] = inputs.items[i] .. '!' end return #t .. t[500]"
    assert value(run(sandbox, code, inputs)) == "500item 499!"
    # what the script itself adds is charged as ever
    error, _ = failure(
        run(sandbox, "local t = inputs.items return string.rep('x', 1 << 20)", inputs)
    )
    assert error == "memory limit of 65536 bytes exceeded"


def test_inputs_lua_cannot_hold_fail_the_script_that_reads_them(
    sandbox: LuaSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs: JSONObject = {"ok": 1, "x": [10**400]}
    assert value(run(sandbox, "return ctx.node_id", inputs)) == "n"
    assert failure(run(sandbox, "local a = 1\nreturn inputs.ok", inputs)) == (
        "inputs.x[1] holds an integer too large even for a float",
        2,
    )
    conversions = Conversions(monkeypatch, inputs)
    code = (
        "local first = select(2, pcall(function() return inputs end))\n"
        "for _ = 1, 20 do assert(not pcall(function() return inputs end)) end\n"
        "return first"
    )
    assert value(run(sandbox, code, inputs)) == (
        "n:1: inputs.x[1] holds an integer too large even for a float"
    )
    assert conversions.count == 1  # a refusal is remembered for the run, not converted again
    deep: JSON = 1
    for _ in range(101):
        deep = {"a": deep}
    assert failure(run(sandbox, "return inputs", deep)) == (
        "inputs is nested deeper than 100 levels",
        1,
    )


# -- a null foreach item --------------------------------------------------------------------


def test_a_null_foreach_item_is_json_null(sandbox: LuaSandbox) -> None:
    ctx: JSONObject = {**CTX, "item": None, "index": 1}
    code = "return {ctx.item == json.null, ctx.index, rawequal(ctx.item, json.null)}"
    assert value(run(sandbox, code, ctx=ctx)) == [True, 1, True]
    outcome = run(sandbox, "return ctx.item", ctx=ctx)
    assert outcome.ok and outcome.value is None and outcome.size == len("null")
    # outside a foreach a null field is left out, as before: `if ctx.item then` works
    ctx = {**CTX, "item": None, "index": None}
    assert value(run(sandbox, "return {ctx.item == nil, ctx.index == nil}", ctx=ctx)) == [
        True,
        True,
    ]


async def test_a_foreach_over_nulls_returns_them(pool: LuaPool) -> None:
    doc = await execute(
        {
            "nodes": [
                {"id": "each", "foreach": "{{ inputs.items }}", "lua": "return ctx.item"},
                {
                    "id": "test",
                    "foreach": "{{ inputs.items }}",
                    "lua": "return ctx.item == json.null",
                },
            ]
        },
        pool,
        {"items": [1, None, 3]},
    )
    assert doc["nodes"]["each"]["output"] == [1, None, 3]
    assert doc["nodes"]["test"]["output"] == [False, True, False]


# -- json.decode refuses a key written twice -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{"v": 1, "v": 2}', "duplicate key 'v' at line 1 column 10 (byte 10)"),
        ('{"v": null, "v": null}', "duplicate key 'v' at line 1 column 13 (byte 13)"),
        ('{"v": 1, "\\u0076": 2}', "duplicate key 'v' at line 1 column 10 (byte 10)"),
        ('[{"a": {"k": 1,\n "j": 2, "k": 3}}]', "duplicate key 'k' at line 2 column 10 (byte 26)"),
        ('{"": 1, "": 2}', "duplicate key '' at line 1 column 9 (byte 9)"),
        ('{"' + "k" * 100 + '": 1, "' + "k" * 100 + '": 2}',
         "duplicate key '" + "k" * 60 + "...' at line 1 column 109 (byte 109)"),
        # cut where a character starts, not inside the 30th 'é' (bytes 60 and 61)
        ('{"a' + "é" * 40 + '": 1, "a' + "é" * 40 + '": 2}',
         "duplicate key 'a" + "é" * 29 + "...' at line 1 column 90 (byte 90)"),
    ],
)  # fmt: skip
def test_json_decode_refuses_a_duplicate_key(sandbox: LuaSandbox, text: str, error: str) -> None:
    code = "local ok, e = pcall(json.decode, inputs.text) return {ok, e}"
    assert value(run(sandbox, code, {"text": text})) == [False, f"json.decode: {error}"]
    code = "local v = json.decode(inputs.text)\nreturn v"
    assert failure(run(sandbox, code, {"text": text})) == (f"json.decode: {error}", 1)


def test_json_decode_takes_the_same_key_in_different_objects(sandbox: LuaSandbox) -> None:
    text = '{"v": {"v": 1}, "w": [{"v": 2}, {"v": 3}], "V": 4}'
    code = "return json.decode(inputs.text)"
    assert value(run(sandbox, code, {"text": text})) == {
        "v": {"v": 1},
        "w": [{"v": 2}, {"v": 3}],
        "V": 4,
    }


# -- a refused value is named by its path ------------------------------------------------------


TOO_BIG = "holds an integer too large even for a float"
NOT_UNICODE = "holds text that is not valid Unicode (a lone surrogate)"


@pytest.mark.parametrize(
    ("refused", "path", "what"),
    [
        ({"v": 10**400}, ".v", TOO_BIG),
        ({"a": {"b": [1, 10**400]}}, ".a.b[2]", TOO_BIG),
        ({"a": {"b": [1, -(10**400), 3]}}, ".a.b[2]", TOO_BIG),
        ({"a": {"b": ["x", "\ud800"]}}, ".a.b[2]", NOT_UNICODE),
        ({"a": [{"ok": 1, "s": "\udfff"}]}, ".a[1].s", NOT_UNICODE),
        ([1, [2, 3, 10**400]], "[2][3]", TOO_BIG),
        (10**400, "", TOO_BIG),
        # a key cannot be printed: the table holding it is named
        ({"a": {"\ud800": 1}}, ".a", NOT_UNICODE),
        # nor can a path through it be, as it was: the surrogate is written as an escape
        ({"\ud800": [10**400]}, ".\\ud800[1]", TOO_BIG),
    ],
)
def test_a_refused_value_is_named_by_its_path(
    sandbox: LuaSandbox, refused: JSON, path: str, what: str
) -> None:
    outcome = run(sandbox, "return results.r", results={"r": refused})
    assert failure(outcome) == (f"results.r{path} {what}", 1)
    ctx: JSONObject = {**CTX, "item": refused, "index": 0}
    assert failure(run(sandbox, "return 1", ctx=ctx)) == (f"ctx.item{path} {what}", None)
    assert failure(run(sandbox, "return inputs", refused)) == (f"inputs{path} {what}", 1)
