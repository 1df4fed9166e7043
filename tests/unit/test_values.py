"""JSON values: what each is called in messages, and how deep one nests."""

from __future__ import annotations

import pytest

from engine.core.values import json_kind, nests_deeper


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (None, "null"),
        (True, "a boolean"),
        (0, "a number"),
        (1.5, "a number"),
        ("", "a string"),
        ([], "a list"),
        ((1,), "a list"),
        ({}, "an object"),
        (b"x", "a bytes"),
    ],
)
def test_json_kind_names_a_value_in_json_words(value: object, kind: str) -> None:
    assert json_kind(value) == kind


def test_a_scalar_is_one_level_and_each_object_or_list_one_more() -> None:
    assert nests_deeper({"a": 1}, 1) is True
    assert nests_deeper({"a": 1}, 2) is False
    assert nests_deeper(5, 1) is False
    assert nests_deeper({}, 1) is False
    assert nests_deeper([[1]], 2) is True
    assert nests_deeper([[1]], 3) is False


def test_the_deepest_branch_counts_wherever_it_is() -> None:
    value = {"shallow": 1, "deep": [1, {"x": [2]}], "last": "s"}  # deep.1.x.0: 5 levels
    assert nests_deeper(value, 4) is True
    assert nests_deeper(value, 5) is False
