"""JSON values as they travel between specs, Lua, the store and the wire.

Every payload in the system (inputs, node outputs, event data) is plain JSON; this module names
that type once so the rest of the code can say what it carries.
"""

from __future__ import annotations

from typing import TypeAlias

JSON: TypeAlias = bool | int | float | str | list["JSON"] | dict[str, "JSON"] | None
JSONObject: TypeAlias = dict[str, JSON]


def json_kind(value: object) -> str:
    """What ``value`` is in JSON's words, for messages: "an object", "a string", "null"..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def nests_deeper(value: object, limit: int) -> bool:
    """Whether ``value`` nests past ``limit`` levels, a scalar counting as one (``{"a": 1}`` has
    two): the one measure for JSON bodies, fields and spec files."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False
