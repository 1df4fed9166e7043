"""JSON as text: numbers a double cannot hold and keys written twice are refused, by name."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.jsontext import (
    DuplicateKey,
    RefusedJson,
    dumps,
    escaped_length,
    loads,
    loads_sent,
)
from engine.core.values import JSON


def test_a_number_too_large_for_a_double_is_refused() -> None:
    with pytest.raises(RefusedJson, match=r"^1e999 is too large for a JSON number$"):
        loads("1e999")
    with pytest.raises(RefusedJson, match=r"^-1e999 is too large for a JSON number$"):
        loads('{"x": [-1e999]}')


def test_an_integer_past_the_largest_double_is_refused_naming_its_digits() -> None:
    too_large = "9" * 309  # 1e309: past 1.8e308
    with pytest.raises(RefusedJson) as err:
        loads(too_large)
    assert str(err.value) == f"{'9' * 20}... (309 digits) is too large for a JSON number"
    with pytest.raises(RefusedJson, match=r"\(309 digits\)"):
        loads_sent(too_large)
    with pytest.raises(RefusedJson, match=r"^-9{20}\.\.\. \(310 digits\) is too large"):
        loads_sent("[-" + "9" * 310 + "]")


def test_integers_a_double_holds_load_whatever_their_length() -> None:
    assert loads("9" * 308) == int("9" * 308)
    assert loads("1" + "0" * 308) == 10**308  # 309 digits, and still under 1.8e308
    assert loads_sent("[-" + "9" * 308 + "]") == [-int("9" * 308)]


def test_nan_and_infinity_are_not_json() -> None:
    for text in ("NaN", "[Infinity]", '{"x": -Infinity}'):
        with pytest.raises(ValueError, match="is not JSON") as err:
            loads(text)
        assert not isinstance(err.value, RefusedJson)


def test_json_a_user_sent_may_not_write_a_key_twice() -> None:
    with pytest.raises(DuplicateKey) as err:
        loads_sent('{"b": {"c": 1}, "a": 1, "a": 2}')
    assert (err.value.key, str(err.value)) == ("a", "duplicate key 'a'")
    with pytest.raises(DuplicateKey, match=r"^duplicate key 'c'$"):
        loads_sent(b'[{"c": 1, "c": 1}]')
    assert loads('{"a": 1, "a": 2}') == {"a": 2}  # what the system wrote itself


def twice(key: str) -> DuplicateKey:
    with pytest.raises(DuplicateKey) as err:
        loads_sent(f'{{"{key}": 1, "{key}": 2}}')
    return err.value


def test_a_long_duplicate_key_is_shown_cut() -> None:
    long = twice("k" * 300)
    assert long.key == "k" * 300
    assert long.shown == "k" * 200 + "... (100 more characters)"
    assert str(long) == f"duplicate key {long.shown!r}"
    assert twice("k" * 200).shown == "k" * 200
    assert twice("k" * 201).shown == "k" * 200 + "... (1 more characters)"


def test_broken_syntax_is_told_with_its_place() -> None:
    with pytest.raises(json.JSONDecodeError) as err:
        loads('{"a": }')
    assert (err.value.lineno, err.value.colno) == (1, 7)


def test_dumps_is_compact_ascii_and_loads_reads_it_back() -> None:
    value: JSON = {"b": [1, 2.5, "é ☃", None, True], "a": {}}
    text = dumps(value)
    assert text == '{"b":[1,2.5,"\\u00e9 \\u2603",null,true],"a":{}}'
    assert loads(text) == loads(text.encode()) == loads_sent(text) == value
    assert dumps("\udc80") == '"\\udc80"'  # a lone surrogate, escaped rather than refused


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(), kids, max_size=4),
)


@settings(deadline=None)  # an example a loaded machine holds up is no failure
@given(json_values)
def test_every_json_value_round_trips(value: JSON) -> None:
    assert loads(dumps(value)) == value
    assert loads_sent(dumps(value)) == value


@settings(deadline=None)  # an example a loaded machine holds up is no failure
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=20,
    )
)
def test_escaped_length_is_the_length_dumps_writes(value: JSON) -> None:
    # what the Lua encoder writes (UTF-8, unescaped) measured as the wire carries it
    unescaped = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    assert escaped_length(unescaped) == len(dumps(value))


def test_the_c_encoder_is_used_only_when_it_answers_as_json_encoder_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    from engine.core import jsontext

    assert jsontext._fast_encoder() is not None  # CPython 3.11's takes these arguments
    monkeypatch.setattr(json.encoder, "c_make_encoder", lambda *args: None)  # another's
    assert jsontext._fast_encoder() is None
    monkeypatch.delattr(json.encoder, "c_make_encoder")
    assert jsontext._fast_encoder() is None
