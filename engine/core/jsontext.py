"""JSON as text: the one reader and writer of every payload (inputs, outputs, event data).

Strict where Python's json is not: NaN and Infinity are refused, and so is a number a double
cannot hold, which Lua and JSON clients could not read back. JSON a user sent (a request body,
a dagctl flag) also may not write a key twice (``loads_sent``).
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

from engine.core.values import JSON, JSONObject

# One encoder and one decoder for every call: json.dumps/loads with options build a new one
# each time, which costs more than the work on a small event's data.
_encoder = json.JSONEncoder(separators=(",", ":"))
_encode = _encoder.encode
# What JSONEncoder.encode does for anything but a string, without its two Python frames and the
# closure it makes each call: half the cost of an event's small data. Markers are a new dict
# each call, as there: a cycle is refused the same, and no other call's (another thread's) can
# be taken for one.
_ENCODER_ARGS: Final = (
    _encoder.default,
    json.encoder.encode_basestring_ascii,
    None,  # indent
    ":",
    ",",
    False,  # sort_keys
    False,  # skipkeys
    True,  # allow_nan, as JSONEncoder's default
)


def _fast_encoder() -> Any:
    """CPython's C encoder, when it is there and answers as JSONEncoder does: its arguments
    are the interpreter's business, so a Python that changed them keeps the plain path."""
    make = getattr(json.encoder, "c_make_encoder", None)
    probe = {"a": [1, -2.5, None, True, "\u00e9\ud800"], "b": {}, "c": float("nan")}
    try:
        if make is not None and "".join(make({}, *_ENCODER_ARGS)(probe, 0)) == _encode(probe):
            return make
    except Exception:  # any refusal means: not this one
        pass
    return None


_make_encoder: Any = _fast_encoder()


def dumps(value: JSON) -> str:
    # escaped to ASCII: a stray lone surrogate must not make protobuf refuse a whole event
    if _make_encoder is None or type(value) is str:
        return _encode(value)
    return "".join(_make_encoder({}, *_ENCODER_ARGS)(value, 0))


def escaped_length(text: str) -> int:
    """The length of JSON ``text`` as ``dumps`` writes it, every non-ASCII character escaped:
    six characters for one of the Basic Multilingual Plane, twelve (a surrogate pair) past it.
    What a payload takes on the wire, whoever wrote it unescaped (the Lua encoder)."""
    deletes = 5 * text.count("\x7f")  # DEL is ASCII, and escaped all the same
    if text.isascii():
        return len(text) + deletes
    ascii = len(text.encode("ascii", "ignore"))
    astral = len(text.encode("utf-16-le", "surrogatepass")) // 2 - len(text)
    return ascii + deletes + 6 * (len(text) - ascii - astral) + 12 * astral


def _no_constants(name: str) -> JSON:
    raise ValueError(f"{name} is not JSON")


class RefusedJson(ValueError):
    """Well-formed JSON text refused all the same: a number no double holds, or (``loads_sent``)
    a key written twice. Not JSON at all (``NaN``, broken syntax) is any other ValueError."""


class DuplicateKey(RefusedJson):
    """An object of JSON a user sent writes ``key`` twice (``loads_sent``); ``shown`` is the
    key as a message may quote it: a key may be a megabyte long."""

    def __init__(self, key: str) -> None:
        self.key = key
        # a key may be a megabyte long: a message quotes its start
        self.shown = (
            key if len(key) <= 200 else f"{key[:200]}... ({len(key) - 200} more characters)"
        )
        super().__init__(f"duplicate key {self.shown!r}")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise RefusedJson(f"{text} is too large for a JSON number")
    return value


_DOUBLE_DIGITS: Final = 309
"""Digits of the largest double (1.8e308): an integer with fewer always fits one."""


def _integer(text: str) -> int:
    # only integers come here, and almost all are short: the length check is the whole cost
    if len(text) < _DOUBLE_DIGITS:
        return int(text)
    digits = text.lstrip("-")
    if len(digits) <= _DOUBLE_DIGITS:
        value = int(text)
        try:
            float(value)
        except OverflowError:
            pass
        else:
            return value
    # Lua, and every client that reads JSON numbers as doubles, could not hold it
    sign = text[: len(text) - len(digits)]
    raise RefusedJson(
        f"{sign}{digits[:20]}... ({len(digits)} digits) is too large for a JSON number"
    )


_decode = json.JSONDecoder(parse_constant=_no_constants, parse_float=_finite).decode
_decode_checking_integers = json.JSONDecoder(
    parse_constant=_no_constants, parse_float=_finite, parse_int=_integer
).decode
"""For text long enough to hold an integer a double cannot: ``_integer`` is a Python call per
integer, where ``int`` is the C scanner's own, so shorter text, most events, goes without."""


def loads(text: str | bytes) -> JSON:
    """Strict JSON: NaN and Infinity, which Python's json accepts, are refused, and so is a
    number too large for a double (1e999, which it reads as infinity, and an integer of 400
    digits, which Lua could not hold even as a float). ValueError names the problem
    (json.JSONDecodeError, with its place, for broken syntax; RefusedJson for a number)."""
    if text == "{}":
        return {}  # the data of most events
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    value: JSON = (_decode if len(text) < _DOUBLE_DIGITS else _decode_checking_integers)(text)
    return value


def _once_each(pairs: list[tuple[str, JSON]]) -> JSONObject:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        raise DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))  # type: ignore[func-returns-value]
    return found


MAX_JSON_DEPTH: Final = 64
"""Levels JSON a user sends may nest, as spec files may: the orchestrator holds request bodies
and JSON fields to it once parsed, and dagctl its inputs, so deeper is told as such by both."""

_decode_sent = json.JSONDecoder(
    parse_constant=_no_constants, parse_float=_finite, object_pairs_hook=_once_each
).decode
_decode_sent_checking_integers = json.JSONDecoder(
    parse_constant=_no_constants,
    parse_float=_finite,
    parse_int=_integer,
    object_pairs_hook=_once_each,
).decode


def loads_sent(text: str | bytes) -> JSON:
    """``loads`` for JSON a user sent (a request's body or JSON field, a dagctl flag): a key
    written twice in one object is refused (DuplicateKey, naming it), as spec files and
    ``python -m engine run`` refuse it, where ``loads`` lets the last one win unseen. The
    check is a Python call per object (a few percent more on a body of a megabyte, under a
    microsecond on a small one): events and documents the system wrote itself, which hold no
    key twice and are most of what is read, go through ``loads``."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    decode = _decode_sent if len(text) < _DOUBLE_DIGITS else _decode_sent_checking_integers
    value: JSON = decode(text)
    return value
