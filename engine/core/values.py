"""JSON values as they travel between specs, Lua, the store and the wire.

Every payload in the system (inputs, node outputs, event data) is plain JSON; this module names
that type once so the rest of the code can say what it carries.
"""

from __future__ import annotations

from typing import TypeAlias

JSON: TypeAlias = bool | int | float | str | list["JSON"] | dict[str, "JSON"] | None
JSONObject: TypeAlias = dict[str, JSON]
