"""The Lua sandbox nodes run in, and the thread pool that runs it off the event loop.

``LuaSandbox`` (in ``sandbox``) is one Lua runtime with an allow-listed environment and hard
limits; ``LuaPool`` (in ``pool``) keeps one per worker thread and hands outcomes back to asyncio.
"""

from engine.lua.pool import NEVER_STARTED, LuaPool, TaskFlag
from engine.lua.sandbox import (
    MISSING,
    CancelFlag,
    Flag,
    LuaLimits,
    LuaOutcome,
    LuaSandbox,
    LuaSyntaxProblem,
    LuaTask,
    check_syntax,
)

__all__ = [
    "MISSING",
    "NEVER_STARTED",
    "CancelFlag",
    "Flag",
    "LuaLimits",
    "LuaOutcome",
    "LuaPool",
    "LuaSandbox",
    "LuaSyntaxProblem",
    "LuaTask",
    "TaskFlag",
    "check_syntax",
]
