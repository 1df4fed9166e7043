"""The Lua half of the sandbox: the code each runtime runs once, before any node.

It captures what the sandbox needs from the full standard library (``debug.sethook`` for the
limits, ``debug.getinfo`` for error lines, the raw metatable access the JSON encoder relies on),
builds the allow-listed environment out of read-only proxies, and returns the handful of functions
``engine.lua.sandbox`` calls. After it has run, nothing reachable from a node's environment leads
back to the full library. The rules it enforces are written down in ``engine.lua.sandbox``.
"""

from __future__ import annotations

from typing import Final

PRELUDE_NAME: Final = "=(sandbox)"
"""No node id can be this, so an error position in this file is told from a script's."""

PRELUDE: Final = r"""
local config = ...

local py_check = config.check
local py_lookup = config.lookup
local py_inputs = config.inputs
local py_memory = config.memory
local HOOK_COUNT = config.hook_count
local CHECK_EVERY = config.check_every
local PATTERN_BUDGET = config.pattern_budget
local LOG_LINES = config.log_lines
local LOG_LINE_BYTES = config.log_line_bytes
local LOG_TOTAL_BYTES = config.log_total_bytes
local ERROR_BYTES = config.error_bytes
local MAX_DEPTH = config.max_depth
local TRIAL = config.trial

local error, pcall, xpcall, select, type, next = error, pcall, xpcall, select, type, next
local tostring, tonumber, ipairs, pairs, assert = tostring, tonumber, ipairs, pairs, assert
local rawget, rawset, rawequal, rawlen = rawget, rawset, rawequal, rawlen
local setmetatable, getmetatable = setmetatable, getmetatable
local sethook, getinfo, rawgetmetatable = debug.sethook, debug.getinfo, debug.getmetatable
local setupvalue = debug.setupvalue
local find, match, gmatch, gsub = string.find, string.match, string.gmatch, string.gsub
local format, sub, byte, rep = string.format, string.sub, string.byte, string.rep
local mtype, huge = math.type, math.huge
local concat, unpack, sort = table.concat, table.unpack, table.sort
local utf8len, utf8char = utf8.len, utf8.char
local co_create, co_resume, co_yield = coroutine.create, coroutine.resume, coroutine.yield
local os_time = os.time

local MEMORY_ERROR = "not enough memory"
local CHECK_REASONS = {"cancelled", "deadline", "wall_time"}

---------------------------------------------------------------------------------------------
-- Limits. The count hook charges the instruction budget and, every CHECK_EVERY firings or
-- when the second changes, asks Python about the deadline and the cancel event (so loops of
-- slow C calls, like table.insert at the front of a huge array, still get a look about once a
-- second). Once a limit trips it stays tripped: every later firing, and every pcall, xpcall
-- and resume the script makes, raises LIMIT again, so no amount of pcall can swallow it.
-- LIMIT is a table the script never sees before the trip.
---------------------------------------------------------------------------------------------

local LIMIT = setmetatable({}, {
  __metatable = false,
  __tostring = function() return "sandbox limit exceeded" end,
})
local tripped = nil      -- nil, or "instructions" | "deadline" | "cancelled" | "memory"
local budget = 0         -- instructions left
local step = HOOK_COUNT  -- instructions between hook firings in this run
local metered = false    -- false while the sandbox converts data the engine handed in
local ticks = 0
local last_second = 0    -- os.time() at the last look
local trip  -- defined with the runner, which knows the script's chunk

-- Asks Python about the deadline and the cancel event.
local function look()
  ticks = 0
  last_second = os_time()
  local code = py_check()
  if code then trip(CHECK_REASONS[code]) end
end

local function hook()
  if tripped then error(LIMIT, 0) end
  if metered then
    budget = budget - step
    if budget < 0 then trip("instructions") end
  end
  ticks = ticks + 1
  if ticks >= CHECK_EVERY or os_time() ~= last_second then look() end
end

-- Work a C call does for the script, charged as instructions (one per four elements it
-- walks, about what they cost in time), with a look at the clock when it is a lot: C loops
-- the hook never sees count against the budget and the time all the same.
local function charge(units)
  if not metered or units < step then return end
  budget = budget - units
  if budget < 0 then trip("instructions") end
  ticks = ticks + units // step
  if ticks >= CHECK_EVERY or os_time() ~= last_second then look() end
end

local function trip_memory()
  tripped = "memory"
  error(LIMIT, 0)
end

-- An error a C function raised from one of this file's wrappers carries this file's position
-- ("(sandbox):971: bad argument..."), where C called straight from the script would give the
-- script's ("b:3: bad argument..."): placed() puts the position of the wrappers' caller in its
-- place, as the C function would have, or none when that caller is C (pcall(string.rep)) or
-- is gone (the wrapper was tail-called, so its caller's line is not known). It reads the
-- stack, so it runs where the error was raised (a message handler) or on the stack a failed
-- coroutine keeps; unplaced() only drops the prefix, where the stack is gone.
local OWN_POSITION = "^%(sandbox%):%d+: "
local placed
do  -- a block of its own: the main chunk may hold at most 200 locals
  local PRELUDE_SOURCE = "=(sandbox)"
  local PLACED_DEPTH = 12

  -- A frame of the coroutine's stack, or of the running one counted from placed() (level 1)
  local function frame(co, level, what)
    if co then return getinfo(co, level, what) end
    return getinfo(level + 1, what)
  end

  function placed(e, co, level)
    if type(e) ~= "string" or byte(e, 1) ~= 40 then return e end  -- '('
    local line = match(e, "^%(sandbox%):(%d+): ")
    if not line then return e end
    local rest = sub(e, #line + 13)  -- past "(sandbox):" .. line .. ": "
    line = tonumber(line)
    -- the sandbox's frame at that line (error(msg, 2) may name one a few frames out) ...
    -- A few frames at most: getinfo walks the stack from its top, in C, so looking deep into a
    -- deep stack at every error would cost the square of its depth where the hook sees little.
    local last = level + PLACED_DEPTH
    local info
    repeat
      info = frame(co, level, "Slt")
      level = level + 1
    until not info or level > last or (info.source == PRELUDE_SOURCE and info.currentline == line)
    if not info or info.source ~= PRELUDE_SOURCE or info.currentline ~= line then return rest end
    local tail, outer
    repeat  -- ... and the sandbox's frames around it, out to their caller
      tail, outer = info.istailcall, level - 1
      info = frame(co, level, "Slt")
      level = level + 1
    until not info or info.source ~= PRELUDE_SOURCE or level > last + PLACED_DEPTH
    if info and info.source == PRELUDE_SOURCE then return rest end
    if tail then tail = frame(co, outer, "f").func end  -- the wrapper the script tail-called
    -- C numbers a method's arguments from its self, when the script's call is a method call
    -- (s:rep()); the wrapper called it as a plain function
    local arg, said = match(rest, "^bad argument #(%d+) to (.*)$")
    if arg then
      local called = frame(co, outer, "n")
      if called and called.namewhat == "method" then
        arg = tonumber(arg) - 1
        local name, why = match(said, "^'([^']*)' %((.*)%)$")
        if arg == 0 and name then
          rest = format("calling '%s' on bad self (%s)", name, why)
        elseif arg > 0 then
          rest = format("bad argument #%d to %s", arg, said)
        end
      end
    end
    if tail or not info or info.currentline <= 0 then return rest, tail end
    return format("%s:%d: %s", info.short_src, info.currentline, rest)
  end
end

local function unplaced(e)
  if type(e) == "string" and find(e, OWN_POSITION) then return (gsub(e, OWN_POSITION, "")) end
  return e
end

-- A message handler: a string error with its position as the script would see it.
local function placing(e)
  local message = placed(e, nil, 3)  -- 1 is placed, 2 this handler, 3 what raised it
  return message
end

-- What a protected call returned, unless a limit tripped meanwhile.
local function pass(ok, ...)
  if tripped then error(LIMIT, 0) end
  if not ok then
    local e = ...
    if e == MEMORY_ERROR then trip_memory() end
    return ok, unplaced(e), select(2, ...)
  end
  return ok, ...
end

-- The wrappers call the library's functions through names the library gives them: C's argument
-- errors name a function by what it was called through ("bad argument #1 to 'create'"), and
-- the script knows it as coroutine.create, not by this file's names. pcall and xpcall take
-- their arguments whole, so that C refuses a missing function or handler as it always does.
-- pcall is xpcall with placing() as handler: the stack is gone by the time pcall returns, and
-- a __close handler the error passes on its way out sees it as the handler left it.
local function sandbox_pcall(...)
  local f = ...
  if f == nil and select("#", ...) == 0 then return pcall() end  -- C's refusal
  return pass(xpcall(f, placing, select(2, ...)))
end

local function sandbox_xpcall(...)
  local f, handler = ...
  if type(handler) ~= "function" then return xpcall(...) end  -- C's refusal
  return pass(xpcall(f, function(e)
    if tripped then return e end
    return handler((placed(e, nil, 3)))
  end, select(3, ...)))
end

-- The coroutine a run's script runs in (see the runner below): the script is shown it as the
-- main thread it stands for, where stock Lua would run the chunk.
local runner_co = nil

local sandbox_create, sandbox_resume, sandbox_close, sandbox_wrap
local coroutine_seen = {}  -- running, isyieldable and yield, as the script sees them
do
  local create, resume, close, wrap = co_create, co_resume, coroutine.close, coroutine.wrap
  local co_status = coroutine.status

  function sandbox_create(f)
    local co = create(f)
    sethook(co, hook, "", step)
    -- a coroutine's count starts afresh: one that runs fewer than `step` instructions never
    -- fires its hook, so a tree of them would run unmetered. Creating one costs that much.
    hook()
    return co
  end

  local function resumed(co, ok, ...)
    if tripped then error(LIMIT, 0) end
    if not ok then
      local e = ...
      if e == MEMORY_ERROR then trip_memory() end
      return ok, (placed(e, co, 0))
    end
    return ok, ...
  end

  function sandbox_resume(co, ...)
    return resumed(co, resume(co, ...))
  end

  -- closing runs the coroutine's pending __close handlers, which a limit can stop: as resume
  function sandbox_close(co)
    return pass(close(co))
  end

  -- As C's wrap: a coroutine that failed is closed, running its pending __close handlers
  -- (whose own error takes the place of its), and a string error gets the position of the
  -- call (level 2: wrapped is tail-called in place of the wrap function, so that is its caller).
  local function wrapped(co, ok, ...)
    if tripped then error(LIMIT, 0) end
    if not ok then
      local e = ...
      if e == MEMORY_ERROR then trip_memory() end
      e = placed(e, co, 0)
      if co_status(co) == "dead" then
        local closed, ce = close(co)  -- true: it had ended before this resume, no error of its
        if tripped then error(LIMIT, 0) end
        if not closed then
          if ce == MEMORY_ERROR then trip_memory() end
          e = ce
        end
      end
      if type(e) == "string" then error(e, 2) end
      error(e, 0)
    end
    return ...
  end

  local running, isyieldable = coroutine.running, coroutine.isyieldable

  function coroutine_seen.running()
    local co = running()
    return co, co == runner_co
  end

  function coroutine_seen.isyieldable(...)
    if select("#", ...) == 0 then
      if running() == runner_co then return false end
      return isyieldable()
    end
    local co = ...
    if co ~= nil and co == runner_co then return false end
    return isyieldable(...)
  end

  -- named as in the library: a yield the script makes is the library's, with its messages
  local yield = co_yield
  function coroutine_seen.yield(...)
    if running() == runner_co then error("attempt to yield from outside a coroutine", 0) end
    return yield(...)
  end

  function sandbox_wrap(f)
    -- C's refusal, naming 'wrap': anything but a function is refused before a coroutine exists
    if type(f) ~= "function" then return wrap(f) end
    local co = sandbox_create(f)
    return function(...)
      return wrapped(co, resume(co, ...))
    end
  end
end

---------------------------------------------------------------------------------------------
-- Read-only proxies for everything runs share. rawset is the one raw write the script has, so
-- it refuses protected tables too.
---------------------------------------------------------------------------------------------

local PROTECTED = {}

local function readonly(name, backing, extra)
  local proxy = {}
  local mt = {
    __index = backing,
    __newindex = function(_, key)
      error(format("%s is read-only (cannot set %s)", name, tostring(key)), 2)
    end,
    __pairs = function()
      return function(_, key) return next(backing, key) end, proxy, nil
    end,
    __metatable = false,
  }
  if extra then
    for k, v in next, extra do mt[k] = v end
  end
  PROTECTED[proxy] = true
  return setmetatable(proxy, mt)
end

-- The running script's environment, and whether its `inputs` global is still to be fetched
-- (see INPUTS_MT): a raw write of that global settles it as an assignment does.
local run_env, inputs_pending = nil, false

-- Both pass on their arguments as given: C tells a missing one from nil (rawset(t, "k") and
-- setmetatable(t) are refused, not taken for a delete and a removal).
local function sandbox_rawset(...)
  local t, k = ...
  if PROTECTED[t] then error("cannot modify a read-only table", 2) end
  if k == "inputs" and rawequal(t, run_env) then inputs_pending = false end
  return rawset(...)
end

local function sandbox_setmetatable(...)
  local _, mt = ...
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("__gc metamethods are not allowed", 2)
  end
  return setmetatable(...)
end

---------------------------------------------------------------------------------------------
-- Text helpers.
---------------------------------------------------------------------------------------------

-- Replaces bytes that are not UTF-8 with U+FFFD: whatever reaches Python must decode.
local function valid_utf8(s)
  if utf8len(s) then return s end
  local out, n, i = {}, 0, 1
  while true do
    local ok, bad = utf8len(s, i)
    if ok then
      n = n + 1
      out[n] = sub(s, i)
      break
    end
    n = n + 1
    out[n] = sub(s, i, bad - 1)
    n = n + 1
    out[n] = "\239\191\189"
    i = bad + 1
  end
  return concat(out)
end

local function shorten(s, limit)
  if #s <= limit then return s end
  return sub(s, 1, limit) .. "..."
end

---------------------------------------------------------------------------------------------
-- Pattern guard. Lua's matcher is C code the hook never interrupts, so a call that could run
-- long is refused up front when its estimated cost n^(k+u) * 2^q * L exceeds the budget (see
-- engine.lua.sandbox for the rule).
---------------------------------------------------------------------------------------------

local pattern_shapes = {[false] = {}, [true] = {}}  -- [gmatch][pattern] -> {k + u, q, L}
local pattern_cache_size = 0
local PATTERN_CACHED = 256  -- longer patterns are worked out each time, not kept across runs

-- gmatch: Lua 5.4's gmatch takes a leading '^' as a plain character, not an anchor.
local function pattern_shape(p, gmatch)
  local cached = pattern_shapes[gmatch][p]
  if cached then return cached end
  local len = #p
  local i = 1
  local anchored = not gmatch and byte(p, 1) == 94  -- '^'
  if anchored then i = 2 end
  local k, q, l = 0, 0, 0
  local open = false  -- the previous item carried * + or -, and something follows it
  while i <= len do
    local c = byte(p, i)
    if c == 40 or c == 41 then  -- captures are not items
      i = i + 1
    elseif c == 36 and i == len then  -- a final '$' makes the quantifier before it scan
      if open then k = k + 1 end
      open = false
      i = i + 1
    elseif c == 37 and byte(p, i + 1) == 98 then  -- %bxy scans to its balancing character
      if open then k = k + 1 end
      open = false
      k = k + 1
      l = l + 1
      i = i + 4
    elseif c == 37 and byte(p, i + 1) == 102 then  -- %f[set]
      if open then k = k + 1 end
      open = false
      local from = i
      i = i + 3
      if byte(p, i) == 94 then i = i + 1 end
      repeat
        if byte(p, i) == 37 then i = i + 1 end
        i = i + 1
      until i > len or byte(p, i) == 93
      i = i + 1
      l = l + (i - from)  -- a set is read through at every character it is tried on
    elseif c == 37 and (byte(p, i + 1) or 0) >= 48 and (byte(p, i + 1) or 0) <= 57 then
      if open then k = k + 1 end  -- a back reference compares a whole capture
      open = false
      k = k + 1
      l = l + 1
      i = i + 2
    else
      local from = i
      if c == 37 then         -- %x
        i = i + 2
      elseif c == 91 then     -- [set]
        i = i + 1
        if byte(p, i) == 94 then i = i + 1 end
        repeat
          if byte(p, i) == 37 then i = i + 1 end
          i = i + 1
        until i > len or byte(p, i) == 93
        i = i + 1
      else
        i = i + 1
      end
      l = l + (c == 91 and i - from or 1)
      if open then k = k + 1 end
      local quant = byte(p, i)
      open = quant == 42 or quant == 43 or quant == 45  -- * + -
      if open then
        i = i + 1
      elseif quant == 63 then  -- ?
        q = q + 1
        i = i + 1
      end
    end
  end
  -- still open: the pattern ends in a quantifier, which never has to give anything back
  local u = anchored and 0 or 1  -- unanchored, every start position is tried
  local shape = {k + u, q, l > 0 and l or 1}
  if len <= PATTERN_CACHED then
    if pattern_cache_size >= 512 then
      pattern_shapes = {[false] = {}, [true] = {}}
      pattern_cache_size = 0
    end
    pattern_shapes[gmatch][p] = shape
    pattern_cache_size = pattern_cache_size + 1
  end
  return shape
end

-- The length of s from init on, as the library functions read init; nil for a bad argument,
-- which the library function then reports.
local function subject_length(s, init)
  local ts = type(s)
  if ts ~= "string" and ts ~= "number" then return nil end
  local n = #tostring(s)
  if type(init) == "number" then
    local start = init
    if start < 0 then start = n + start + 1 end
    if start < 1 then start = 1 end
    n = n - start + 1
  end
  return n
end

local pattern_refusal = nil  -- the last refusal's text, to tell it from a script's own error

local function too_costly(what, p, n, cost, level)
  pattern_refusal = format("%s '%s' on a %d-byte subject could run for too long "
    .. "(about %.3g steps, budget %.3g); anchor it with '^', use fewer '*', '+', '-' "
    .. "quantifiers, or cut the subject into smaller pieces",
    what, shorten(valid_utf8(p), 80), n, cost, PATTERN_BUDGET + 0.0)
  -- a trial run's budget is below a worker's: the script must not see (and catch) a refusal
  -- the worker would not make, so the run ends here and is run again there
  if TRIAL then trip("pattern") end
  error(pattern_refusal, level)
end

local function guard(s, p, init, gmatch)
  local n = subject_length(s, init)
  local tp = type(p)
  if n == nil or (tp ~= "string" and tp ~= "number") or n <= 1 then return end
  p = tostring(p)
  local shape = pattern_shape(p, gmatch)
  local cost = (n + 0.0) ^ shape[1] * 2.0 ^ shape[2] * shape[3]
  if cost > PATTERN_BUDGET then too_costly("pattern", p, n, cost, 4) end
end

-- find, match, gmatch and gsub are the library's own (see the top of this file), called by those
-- names so that C's argument errors name them as the script does
local function guarded_find(s, p, init, plain)
  if plain then
    -- a plain search compares the text at every position: n * #p at worst
    local n, tp = subject_length(s, init), type(p)
    if n and n > 1 and (tp == "string" or tp == "number") then
      local cost = (n + 0.0) * #tostring(p)
      if cost > PATTERN_BUDGET then too_costly("plain text", tostring(p), n, cost, 3) end
    end
  else
    guard(s, p, init, false)
  end
  return find(s, p, init, plain)
end
local function guarded_match(s, p, init)
  guard(s, p, init, false)
  return match(s, p, init)
end
local function guarded_gmatch(s, p, init)
  guard(s, p, init, true)
  return gmatch(s, p, init)
end
local function guarded_gsub(s, p, repl, n)
  guard(s, p, nil, false)
  return gsub(s, p, repl, n)
end

---------------------------------------------------------------------------------------------
-- JSON. See engine.lua.sandbox for the rules; the encoder never runs script code (raw access
-- only), so it also serves to turn error objects and log values into text.
---------------------------------------------------------------------------------------------

local NULL
NULL = readonly("json.null", {}, {__tostring = function() return "null" end})
local ARRAY_MT = {__metatable = "json.array"}

local ESCAPES = {['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
                 ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t"}
for code = 0, 31 do
  local ch = string.char(code)
  if not ESCAPES[ch] then ESCAPES[ch] = format("\\u%04x", code) end
end
ESCAPES["\127"] = "\\u007f"

local enc_root, enc_suffix = "value", ""
local enc_keys = {}   -- enc_keys[d]: key under which the value at depth d + 1 sits
local enc_tables = {} -- enc_tables[d]: the table being encoded at depth d

local function key_text(k)
  if type(k) == "string" then
    if find(k, "^[%a_][%w_]*$") then return "." .. k end
    return "[" .. format("%q", shorten(valid_utf8(k), 60)) .. "]"
  end
  return "[" .. tostring(k) .. "]"
end

local function enc_fail(depth, what)
  local parts = {enc_root}
  for d = 1, depth - 1 do parts[d + 1] = key_text(enc_keys[d]) end
  error(concat(parts) .. " " .. what .. enc_suffix, 0)
end

-- JSON text of short strings seen before (keys, mostly); cleared when it grows too big.
local enc_cache, enc_cache_size = {}, 0

-- bytes of string text an output may still add (nil: no bound). Checked as strings go in, so
-- an output far over its limit (one big string referred to a thousand times) is refused before
-- its text is built, not when building it runs out of memory.
local enc_room = nil
local ENC_TOO_BIG = {}

local function enc_string(s, depth)
  local text = enc_cache[s]
  if enc_room then
    enc_room = enc_room - #(text or s)
    if enc_room < 0 then error(ENC_TOO_BIG, 0) end
  end
  if text then return text end
  if not find(s, '[%c"\\\128-\255]') then
    text = '"' .. s .. '"'
  else
    if not utf8len(s) then enc_fail(depth, "is not valid UTF-8 text") end
    if find(s, '[%c"\\]') then
      text = '"' .. gsub(s, '[%c"\\]', ESCAPES) .. '"'
    else
      text = '"' .. s .. '"'
    end
  end
  if #s <= 32 then
    if enc_cache_size >= 4096 then
      enc_cache, enc_cache_size = {}, 0
    end
    enc_cache[s] = text
    enc_cache_size = enc_cache_size + 1
  end
  return text
end

local function enc_float(v, depth)
  if v ~= v then enc_fail(depth, "is NaN, which JSON cannot represent") end
  if v == huge or v == -huge then enc_fail(depth, "is infinite, which JSON cannot represent") end
  local s = format("%.14g", v)
  if tonumber(s) ~= v then s = format("%.17g", v) end
  if not find(s, "[%.eE]") then s = s .. ".0" end  -- a float stays a float: 3.0, not 3
  return s
end

-- Formatting a number costs more than a table lookup, and small integers are common.
local INT_TEXT = {}
for i = -16, 1024 do INT_TEXT[i] = format("%d", i) end

local function enc_number(v, depth)
  if mtype(v) == "integer" then return INT_TEXT[v] or format("%d", v) end
  return enc_float(v, depth)
end

local encode_table
local KIND_TEXT = {["function"] = "a function", userdata = "a userdata", thread = "a thread"}

-- JSON text of a value other than a table, or nil for a table that is not json.null.
local function enc_other(v, depth, tv)
  local text
  if tv == "number" then
    text = mtype(v) == "integer" and (INT_TEXT[v] or format("%d", v)) or enc_float(v, depth)
  elseif tv == "boolean" then
    text = v and "true" or "false"
  elseif tv == "table" then
    if not rawequal(v, NULL) then return nil end
    text = "null"
  elseif v == nil then
    text = "null"
  else
    enc_fail(depth, "is " .. KIND_TEXT[tv])
  end
  enc_room = enc_room - #text - 1  -- and its comma
  if enc_room < 0 then error(ENC_TOO_BIG, 0) end
  return text
end

local function enc_scalar(v, depth)
  local tv = type(v)
  if tv == "string" then return enc_string(v, depth) end
  if enc_room then return enc_other(v, depth, tv) end  -- an output: its size is counted
  if tv == "number" then
    if mtype(v) == "integer" then return INT_TEXT[v] or format("%d", v) end
    return enc_float(v, depth)
  end
  if tv == "boolean" then return v and "true" or "false" end
  if tv == "table" then
    if rawequal(v, NULL) then return "null" end
    return nil
  end
  if v == nil then return "null" end
  enc_fail(depth, "is " .. KIND_TEXT[tv])
end

-- A cycle always runs into the depth limit, so it is looked for only there.
local function enc_too_deep()
  for d = 2, MAX_DEPTH do
    for e = 1, d - 1 do
      if enc_tables[e] == enc_tables[d] then
        enc_fail(d, "refers back to a table that contains it (a cycle)")
      end
    end
  end
  error(enc_root .. format(" is nested deeper than %d levels", MAX_DEPTH) .. enc_suffix, 0)
end

-- Appends t to buf from index n + 1; returns the last index used.
encode_table = function(t, depth, buf, n)
  if depth > MAX_DEPTH then enc_too_deep() end
  enc_tables[depth] = t
  local marked = rawgetmetatable(t) == ARRAY_MT
  local count, strings, maxn = 0, 0, 0
  for k in next, t do
    count = count + 1
    if type(k) == "string" then
      strings = strings + 1
    elseif mtype(k) == "integer" and k > 0 then
      if k > maxn then maxn = k end
    else
      -- no tostring on a table or userdata key: that would run the script's __tostring
      local shown = (type(k) == "number" or type(k) == "boolean") and tostring(k) .. " " or ""
      enc_fail(depth, format("has the key %s(a %s), but keys must be strings, or 1..n in an "
        .. "array", shown, type(k)))
    end
  end
  if count == 0 then
    n = n + 1
    buf[n] = marked and "[]" or "{}"
    return n
  end
  local inner = depth + 1
  if strings == 0 then
    if maxn > 2 * count then
      enc_fail(depth, format("is a sparse array (%d entries, highest index %d): "
        .. "fill the holes with json.null or use string keys", count, maxn))
    end
    local sep = "["
    for i = 1, maxn do
      enc_keys[depth] = i
      local v = rawget(t, i)
      local text = enc_scalar(v, inner)
      buf[n + 1] = sep
      if text then
        buf[n + 2] = text
        n = n + 2
      else
        n = encode_table(v, inner, buf, n + 1)
      end
      sep = ","
    end
    n = n + 1
    buf[n] = "]"
    return n
  end
  if marked then
    enc_fail(depth, "is marked as a JSON array (json.array) but has string keys")
  end
  if strings < count then
    enc_fail(depth, "mixes integer and string keys: use one or the other")
  end
  local keys, k
  if count == 1 then
    k = next(t)
  else
    keys = {}
    local nk = 0
    for key in next, t do
      nk = nk + 1
      keys[nk] = key
    end
    sort(keys)  -- all strings by now
  end
  local sep = "{"
  for i = 1, count do
    if keys then k = keys[i] end
    enc_keys[depth] = k
    local v = rawget(t, k)
    local text = enc_scalar(v, inner)
    buf[n + 1] = sep
    buf[n + 2] = enc_string(k, inner)
    buf[n + 3] = ":"
    if text then
      buf[n + 4] = text
      n = n + 4
    else
      n = encode_table(v, inner, buf, n + 3)
    end
    sep = ","
  end
  n = n + 1
  buf[n] = "}"
  return n
end

-- Encodes v as JSON text; raises a message naming the path below root on failure.
local enc_buf = {}  -- reused while small: growing a fresh one costs more than the encoding

local function encode(v, root, suffix)
  enc_root, enc_suffix = root, suffix
  local text = enc_scalar(v, 1)
  if text then return text end
  local buf = enc_buf or {}
  enc_buf = nil  -- a failure halfway leaves it to the garbage collector
  local n = encode_table(v, 1, buf, 0)
  text = concat(buf, "", 1, n)
  if n <= 256 then enc_buf = buf end
  return text
end

-- json.decode: a strict JSON reader in Lua, so it runs under the hook and inside the memory
-- limit like any other script work.
local DEC_ESCAPES = {['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n",
                     r = "\r", t = "\t"}

local function dec_fail(s, pos, what)
  local line, col = 1, pos
  local last = 0
  for nl in gmatch(sub(s, 1, pos - 1), "()\n") do
    line = line + 1
    last = nl
  end
  col = pos - last
  error(format("%s at line %d column %d (byte %d)", what, line, col, pos), 0)
end

-- A key as an error quotes it, cut short at the start of a character: a key is UTF-8 text, and
-- the message a script may catch and return stays so.
local function quoted_key(k)
  if #k <= 60 then return "'" .. k .. "'" end
  local cut = 60
  while cut > 0 and ((byte(k, cut + 1) or 0) & 0xC0) == 0x80 do cut = cut - 1 end
  return "'" .. sub(k, 1, cut) .. "...'"
end

local function dec_skip(s, i)
  local _, e = find(s, "^[ \t\r\n]*", i)
  return e + 1
end

local function dec_string(s, i)
  local j = i + 1
  local parts, np = nil, 0
  while true do
    local k = find(s, '["\\\0-\31]', j)
    if not k then dec_fail(s, i, "unterminated string") end
    local c = byte(s, k)
    if c == 34 then
      if not parts then return sub(s, j, k - 1), k + 1 end
      np = np + 1
      parts[np] = sub(s, j, k - 1)
      return concat(parts, "", 1, np), k + 1
    elseif c == 92 then
      parts = parts or {}
      np = np + 1
      parts[np] = sub(s, j, k - 1)
      local e = sub(s, k + 1, k + 1)
      if e == "u" then
        local hex = match(s, "^%x%x%x%x", k + 2)
        if not hex then dec_fail(s, k, "invalid \\u escape") end
        local cp = tonumber(hex, 16)
        j = k + 6
        if cp >= 0xD800 and cp <= 0xDBFF then
          local low = match(s, "^\\u(%x%x%x%x)", j)
          local lc = low and tonumber(low, 16)
          if not lc or lc < 0xDC00 or lc > 0xDFFF then
            dec_fail(s, k, "unpaired surrogate \\u" .. hex)
          end
          cp = 0x10000 + (cp - 0xD800) * 0x400 + (lc - 0xDC00)
          j = j + 6
        elseif cp >= 0xDC00 and cp <= 0xDFFF then
          dec_fail(s, k, "unpaired surrogate \\u" .. hex)
        end
        np = np + 1
        parts[np] = utf8char(cp)
      else
        local r = DEC_ESCAPES[e]
        if not r then dec_fail(s, k, "invalid escape") end
        np = np + 1
        parts[np] = r
        j = k + 2
      end
    else
      dec_fail(s, k, "control character in string")
    end
  end
end

local dec_value

local function dec_number(s, i)
  local _, e = find(s, "^-?%d+", i)
  if not e then
    if byte(s, i) == nil then dec_fail(s, i, "unexpected end of text") end
    dec_fail(s, i, format("unexpected character %q", sub(s, i, i)))
  end
  local digits = byte(s, i) == 45 and i + 1 or i
  if byte(s, digits) == 48 and e > digits then dec_fail(s, i, "number with a leading zero") end
  if byte(s, e + 1) == 46 then
    local _, f = find(s, "^%d+", e + 2)
    if not f then dec_fail(s, e + 1, "digits expected after '.'") end
    e = f
  end
  local x = byte(s, e + 1)
  if x == 101 or x == 69 then
    local _, f = find(s, "^[-+]?%d+", e + 2)
    if not f then dec_fail(s, e + 1, "digits expected in exponent") end
    e = f
  end
  -- tonumber makes text with '.' or an exponent a float, and keeps -0.0 negative; an
  -- integer past 64 bits becomes a float too, and past a double's range infinity
  local v = tonumber(sub(s, i, e))
  if v == huge or v == -huge then
    dec_fail(s, i, "number too large for a double (JSON has no infinity)")
  end
  return v, e + 1
end

function dec_value(s, i, depth)
  i = dec_skip(s, i)
  local c = byte(s, i)
  if c == 123 then  -- {
    if depth >= MAX_DEPTH then dec_fail(s, i, format("nested deeper than %d levels", MAX_DEPTH)) end
    local t = {}
    i = dec_skip(s, i + 1)
    if byte(s, i) == 125 then return t, i + 1 end
    while true do
      if byte(s, i) ~= 34 then dec_fail(s, i, "object key (a string) expected") end
      local k, at = nil, i
      k, i = dec_string(s, i)
      -- strict: a second value for a key would take the first one's place unseen
      if t[k] ~= nil then dec_fail(s, at, "duplicate key " .. quoted_key(k)) end
      i = dec_skip(s, i)
      if byte(s, i) ~= 58 then dec_fail(s, i, "':' expected") end
      local v
      v, i = dec_value(s, i + 1, depth + 1)
      t[k] = v
      i = dec_skip(s, i)
      c = byte(s, i)
      if c == 125 then return t, i + 1 end
      if c ~= 44 then dec_fail(s, i, "',' or '}' expected") end
      i = dec_skip(s, i + 1)
    end
  elseif c == 91 then  -- [
    if depth >= MAX_DEPTH then dec_fail(s, i, format("nested deeper than %d levels", MAX_DEPTH)) end
    local t = setmetatable({}, ARRAY_MT)
    i = dec_skip(s, i + 1)
    if byte(s, i) == 93 then return t, i + 1 end
    local n = 0
    while true do
      local v
      v, i = dec_value(s, i, depth + 1)
      n = n + 1
      t[n] = v
      i = dec_skip(s, i)
      c = byte(s, i)
      if c == 93 then return t, i + 1 end
      if c ~= 44 then dec_fail(s, i, "',' or ']' expected") end
      i = i + 1
    end
  elseif c == 34 then
    return dec_string(s, i)
  elseif c == 116 then
    if sub(s, i, i + 3) == "true" then return true, i + 4 end
  elseif c == 102 then
    if sub(s, i, i + 4) == "false" then return false, i + 5 end
  elseif c == 110 then
    if sub(s, i, i + 3) == "null" then return NULL, i + 4 end
  else
    return dec_number(s, i)
  end
  dec_fail(s, i, format("unexpected character %q", sub(s, i, i)))
end

local function decode(s)
  local ok, bad = utf8len(s)
  if not ok then dec_fail(s, bad, "invalid UTF-8") end
  local v, i = dec_value(s, 1, 0)
  i = dec_skip(s, i)
  if i <= #s then dec_fail(s, i, "unexpected text after the JSON value") end
  return v
end

-- Runs a JSON helper for the script: failures name the script's line, limits stay limits.
local function json_call(name, f, ...)
  local ok, result = pcall(f, ...)
  if tripped then error(LIMIT, 0) end
  if not ok then
    if result == MEMORY_ERROR then trip_memory() end
    error(name .. ": " .. tostring(result), 3)
  end
  return result
end

-- Not tail calls: json_call raises at level 3, which must be the script's frame.
local function json_encode(v)
  local text = json_call("json.encode", encode, v, "value", ": json.encode takes JSON values")
  return text
end

local function json_decode(s)
  if type(s) ~= "string" then
    error("json.decode: expected a string, got " .. type(s), 2)
  end
  local value = json_call("json.decode", decode, s)
  return value
end

local function json_array(t)
  if t == nil then t = {} end
  if type(t) ~= "table" then error("json.array: expected a table, got " .. type(t), 2) end
  if PROTECTED[t] then error("json.array: cannot mark a read-only table", 2) end
  return setmetatable(t, ARRAY_MT)
end

---------------------------------------------------------------------------------------------
-- Logs.
---------------------------------------------------------------------------------------------

local LEVELS = {
  debug = "debug", info = "info", warn = "warn", warning = "warn", error = "error",
  critical = "critical",
}
local logs, nlogs, dropped, log_bytes = {}, 0, 0, 0
local DROPPED_LEVEL = "dropped"  -- sandbox.DROPPED_LEVEL

local function add_log(level, msg)
  if nlogs >= LOG_LINES or log_bytes >= LOG_TOTAL_BYTES then
    dropped = dropped + 1
    return
  end
  if #msg > LOG_LINE_BYTES then
    msg = sub(msg, 1, LOG_LINE_BYTES) .. format(" [%d more bytes dropped]", #msg - LOG_LINE_BYTES)
  end
  -- a limit may stop the script anywhere in here (valid_utf8 runs under the hook): the line
  -- counts only once both halves are in, so the list always holds whole pairs
  local text = valid_utf8(msg)
  logs[2 * nlogs + 1] = level
  logs[2 * nlogs + 2] = text
  nlogs = nlogs + 1
  log_bytes = log_bytes + #text
end

-- A table's own text, from its __tostring: nil when it has none, or false and why it failed.
-- It is the script's code, run where the script runs (under the hook, inside its memory
-- limit): a limit it trips stays tripped, and whatever else it raises is only reported.
local function own_text(t)
  local mt = rawgetmetatable(t)
  if mt == nil or rawget(mt, "__tostring") == nil then return nil end
  local ok, text = pcall(tostring, t)
  if tripped then error(LIMIT, 0) end
  if ok then return text end
  if text == MEMORY_ERROR then trip_memory() end
  return false, type(text) == "string" and unplaced(text) or "an error object that is a "
    .. type(text) .. " value"
end

-- What a value other than a string or table is shown as: never a memory address, which
-- tells the reader nothing and changes from run to run.
local KIND_SHOWN = {["function"] = "<function>", thread = "<coroutine>", userdata = "<userdata>",
                    table = "<table>"}

local function scalar_text(v)
  return KIND_SHOWN[type(v)] or tostring(v)
end

-- A value as log and print show it: strings as they are; a table by its __tostring, else as
-- JSON, else as <table: not JSON: why>; anything else by scalar_text.
local function log_text(v)
  local tv = type(v)
  if tv == "string" then return v end
  if tv ~= "table" then return scalar_text(v) end
  local own, failure = own_text(v)
  if own then return own end
  if failure then return "<table: __tostring failed: " .. failure .. ">" end
  local ok, text = pcall(encode, v, "value", "")
  if tripped then error(LIMIT, 0) end
  if ok then return text end
  if text == MEMORY_ERROR then trip_memory() end
  return "<table: not JSON: " .. text .. ">"
end

local function sandbox_log(level, msg, ...)
  local name = LEVELS[level]
  if not name then
    error(format("log level %s is not one of debug, info, warn, warning, error, critical",
      type(level) == "string" and format("%q", shorten(level, 40)) or scalar_text(level)), 2)
  end
  if select("#", ...) > 0 then
    local parts = {log_text(msg)}
    for i = 1, select("#", ...) do parts[i + 1] = log_text((select(i, ...))) end
    add_log(name, concat(parts, " "))
  else
    add_log(name, log_text(msg))
  end
end

local function sandbox_print(...)
  local n = select("#", ...)
  local parts = {}
  for i = 1, n do parts[i] = log_text((select(i, ...))) end
  add_log("info", concat(parts, "\t", 1, n))
end

---------------------------------------------------------------------------------------------
-- The environment. Libraries are proxies over fresh tables that hold only what is allowed;
-- string methods reach the real string table through the string metatable, so that table
-- itself loses dump and gets the guarded pattern functions, and the metatable is locked.
---------------------------------------------------------------------------------------------

local sandbox_rep, sandbox_move, sandbox_insert, sandbox_remove
local sandbox_concat, sandbox_unpack, sandbox_sort
do  -- a block of its own: the main chunk may hold at most 200 locals
  -- C loops the hook never interrupts. A plain table's run over elements that are not there
  -- allocates nothing a memory limit would catch (an empty string repeated 10^18 times, a
  -- trillion-element move), and a table with metamethods makes every element a walk of up to
  -- 2,000 __index tables in C, or answers #t once small and then huge. So counts are taken as C
  -- would take them (numeric strings too), a __len is asked once, spans of millions are refused,
  -- and a table with __index, __newindex or __len is walked here, in Lua, where the hook counts.
  local MAX_SPAN = 1 << 24
  local tointeger, maxinteger, ult = math.tointeger, math.maxinteger, math.ult
  -- named as in the library: C's argument errors name the function by its local's name
  local move, insert, remove = table.move, table.insert, table.remove

  -- an integer argument as luaL_checkinteger reads it, or nil (then C refuses it, before looping)
  local function as_integer(x)
    local tx = type(x)
    if tx == "number" then return tointeger(x) end
    if tx == "string" then return tointeger(tonumber(x)) end
    return nil
  end

  -- no metamethod C's loops would call, so they run on what the table really holds
  local function plain(t)
    local mt = rawgetmetatable(t)
    return mt == nil or (rawget(mt, "__index") == nil and rawget(mt, "__newindex") == nil
      and rawget(mt, "__len") == nil)
  end

  local function length_of(t)
    local n = as_integer(#t)
    if n == nil then error("object length is not an integer", 3) end
    return n
  end

  local function span_refused(what, count)
    -- count is an integer, one past math.maxinteger when it wrapped
    local shown = count < 0 and format("%d", maxinteger) .. "+" or format("%d", count)
    error(format("%s over %s elements: at most %d at once", what, shown, MAX_SPAN), 3)
  end

  function sandbox_rep(s, n, sep)
    local ts, tsep = type(s), type(sep)
    if as_integer(n) ~= nil and (ts == "string" or ts == "number")
        and (sep == nil or tsep == "string" or tsep == "number")
        and #tostring(s) == 0 and (sep == nil or #tostring(sep) == 0) then
      return ""  -- nothing repeated any number of times
    end
    return rep(s, n, sep)
  end

  function sandbox_move(a1, f, e, t, a2)
    local fi, ei, ti = as_integer(f), as_integer(e), as_integer(t)
    local dest = a2
    if dest == nil then dest = a1 end
    if fi == nil or ei == nil or ti == nil or type(dest) ~= "table"
        or (type(a1) ~= "table" and type(a1) ~= "string") then
      return move(a1, f, e, t, a2)  -- refused by C before any element moves
    end
    if ei < fi then return dest end
    if fi <= 0 and ei >= maxinteger + fi then
      error("bad argument #3 to 'move' (too many elements to move)", 2)
    end
    local n = ei - fi
    if n >= MAX_SPAN then span_refused("table.move", n + 1) end
    if ti > maxinteger - n then error("bad argument #4 to 'move' (destination wrap around)", 2) end
    if (type(a1) ~= "table" or plain(a1)) and plain(dest) then
      charge(n // 4)
      return move(a1, fi, ei, ti, a2)
    end
    if ti > ei or ti <= fi or (a2 ~= nil and a1 ~= dest) then
      for i = 0, n do dest[ti + i] = a1[fi + i] end
    else
      for i = n, 0, -1 do dest[ti + i] = a1[fi + i] end
    end
    return dest
  end

  -- insert and remove at a position shift everything after it
  function sandbox_insert(t, ...)
    local nargs = select("#", ...)
    if nargs ~= 2 or type(t) ~= "table" then return insert(t, ...) end  -- no shift, or refused
    local pos, v = ...
    local p = as_integer(pos)
    if p == nil then return insert(t, pos, v) end
    local n = length_of(t)
    if not ult(p - 1, n + 1) then  -- C's bounds first, as C checks them (unsigned)
      if plain(t) then return insert(t, pos, v) end
      error("bad argument #2 to 'insert' (position out of bounds)", 2)
    end
    if n - p >= MAX_SPAN then span_refused("table.insert", n - p + 1) end
    if plain(t) then
      if n > p then charge((n - p) // 4) end
      return insert(t, p, v)
    end
    for i = n + 1, p + 1, -1 do t[i] = t[i - 1] end
    t[p] = v
  end

  function sandbox_remove(t, pos)
    if type(t) ~= "table" then return remove(t, pos) end
    local n = length_of(t)
    local p = n
    if pos ~= nil then
      p = as_integer(pos)
      if p == nil then return remove(t, pos) end
    end
    if p ~= n and ult(n, p - 1) then  -- C's bounds first, as C checks them (unsigned)
      if plain(t) then return remove(t, pos) end
      error("bad argument #2 to 'remove' (position out of bounds)", 2)
    end
    if n - p >= MAX_SPAN then span_refused("table.remove", n - p) end
    if plain(t) then
      if n > p then charge((n - p) // 4) end
      return remove(t, p)
    end
    local v = t[p]
    while p < n do
      t[p] = t[p + 1]
      p = p + 1
    end
    t[p] = nil
    return v
  end

  function sandbox_concat(t, sep, i, j)
    if type(t) ~= "table" then return concat(t, sep, i, j) end
    local n = length_of(t)
    local first, last = 1, n
    if i ~= nil then first = as_integer(i) end
    if j ~= nil then last = as_integer(j) end
    if first == nil or last == nil then return concat({}, sep, i, j) end  -- C's refusal
    -- C walks up to the first value that is no string or number, at n + 1 at the latest (n is
    -- a border: t[n + 1] is nil), and is charged for that; past n + 1 it is walked here
    if plain(t) and (first <= n + 1 or last < first) then
      local stop = last
      if stop > n + 1 then stop = n + 1 end
      if stop > first then charge((stop - first) // 4) end
      return concat(t, sep, first, last)
    end
    local parts = {}
    for k = first, last do
      local v = t[k]
      local tv = type(v)
      if tv ~= "string" and tv ~= "number" then
        error(format("invalid value (%s) at index %d in table for 'concat'", tv, k), 2)
      end
      parts[#parts + 1] = v
    end
    return concat(parts, sep)
  end

  local UNPACK_MOST = 1000000  -- LUAI_MAXSTACK: C's unpack returns fewer values than this

  function sandbox_unpack(t, i, j)
    if type(t) ~= "table" then return unpack(t, i, j) end
    if plain(t) then
      local first, last = as_integer(i == nil and 1 or i), as_integer(j == nil and #t or j)
      if first and last and last > first then
        -- C refuses a million results or more before it walks any (n < 0: it wrapped around)
        local n = last - first
        if n > 0 and n < UNPACK_MOST then charge(n // 4) end
      end
      return unpack(t, i, j)
    end
    local first = 1
    if i ~= nil then first = as_integer(i) end
    if first == nil then return unpack({}, i, j) end  -- C's refusal
    local last
    if j == nil then last = length_of(t) else last = as_integer(j) end
    if last == nil then return unpack({}, i, j) end
    if first > last then return end
    local count = last - first
    if count < 0 or count >= UNPACK_MOST then return unpack({}, first, last) end  -- too many
    local items = {}
    for k = 0, count do items[k + 1] = t[first + k] end
    return unpack(items, 1, count + 1)
  end

  -- Comparing two strings walks them in C (between zero bytes a piece at a time, about 7 ms per
  -- MiB of zeros), and C's sort makes n log n comparisons in one call the hook never sees: with
  -- long strings the sort is done here, each comparison an instruction the hook counts.
  local LONG_STRING = 256

  local function merge_sort(t, n)
    local a, b = {}, {}
    for k = 1, n do a[k] = t[k] end
    local width = 1
    while width < n do
      local lo = 1
      while lo <= n do
        local mid, hi = lo + width, lo + 2 * width
        if mid > n + 1 then mid = n + 1 end
        if hi > n + 1 then hi = n + 1 end
        local l, r, k = lo, mid, lo
        while l < mid and r < hi do
          if a[r] < a[l] then
            b[k], r = a[r], r + 1
          else
            b[k], l = a[l], l + 1
          end
          k = k + 1
        end
        while l < mid do b[k], l, k = a[l], l + 1, k + 1 end
        while r < hi do b[k], r, k = a[r], r + 1, k + 1 end
        lo = hi
      end
      a, b = b, a
      width = width * 2
    end
    for k = 1, n do t[k] = a[k] end
  end

  -- as C's sort raises them: a comparison's error without this file's position
  local function sort_here(t, n)
    local ok, e = pcall(merge_sort, t, n)
    if tripped then error(LIMIT, 0) end
    if not ok then
      if e == MEMORY_ERROR then trip_memory() end
      e = unplaced(e)  -- C's sort raises a comparison's error without a position
      error(e, 0)
    end
  end

  local function log2_ceil(n)
    local bits = 0
    while (1 << bits) < n do bits = bits + 1 end
    return bits
  end

  function sandbox_sort(t, comp)
    if type(t) ~= "table" then return sort(t, comp) end
    if plain(t) then
      local n = #t
      if n > 1 and comp == nil and n < 0x7fffffff then
        for k = 1, n do
          local v = rawget(t, k)
          if type(v) == "string" and #v > LONG_STRING then return sort_here(t, n) end
        end
      end
      if n > 1 then charge(n * log2_ceil(n) // 4) end
      return sort(t, comp)
    end
    local n = length_of(t)
    if n <= 1 then return end
    if n >= 0x7fffffff then error("bad argument #1 to 'sort' (array too big)", 2) end
    if comp ~= nil and type(comp) ~= "function" then return sort({1, 2}, comp) end  -- C's refusal
    local items = {}
    for k = 1, n do items[k] = t[k] end
    sort(items, comp)
    for k = 1, n do t[k] = items[k] end
  end
end

string.dump = nil
string.rep = sandbox_rep
string.find, string.match, string.gmatch, string.gsub =
  guarded_find, guarded_match, guarded_gmatch, guarded_gsub
local string_meta = getmetatable("")
string_meta.__metatable = false

local function copy(t)
  local c = {}
  for k, v in next, t do c[k] = v end
  return c
end

-- The random generator is shared by all runs: a run that seeds it gets it reseeded afterwards.
-- (Named as in the library, for C's argument errors.)
local randomseed = math.randomseed
local reseeded = false
local math_lib = copy(math)
math_lib.randomseed = function(...)
  reseeded = true
  return randomseed(...)
end

local table_lib = copy(table)
table_lib.move, table_lib.insert, table_lib.remove = sandbox_move, sandbox_insert, sandbox_remove
table_lib.concat, table_lib.unpack, table_lib.sort = sandbox_concat, sandbox_unpack, sandbox_sort

-- os.date. C's os.date here calls gmtime and localtime (lupa builds Lua without LUA_USE_POSIX,
-- so not their _r forms), whose result is one static struct that every runtime in the process
-- shares: a script formatting a date while another thread does read the other's. So each call
-- runs under one process-wide lock: py_date takes it and calls locked_date back, here, on the
-- main thread, which has no hook (no limit trips in there; a failed allocation is the pcall's)
-- and runs no script code (os.date calls no metamethods), and Python lets go of the lock
-- whatever happens. The arguments and the answer pass through upvalues, never through Python,
-- so a string is whatever bytes it was. What the script sees is C's os.date's answer or error,
-- with the name and position C would give it (but see the tail calls in engine.lua.sandbox).
local dates  -- sandbox: os.date as scripts see it; locked: what py_date calls back
do  -- a block of its own: the main chunk may hold at most 200 locals
  local py_date = config.date
  local DATE_FORMAT_MAX = 4096
  local date = os.date  -- the name C's argument errors give it
  local date_format, date_time, date_ok, date_value = nil, nil, false, nil

  local function call_date()
    local value = date(date_format, date_time)  -- not a tail call: that would lose the name
    return value
  end

  local function locked_date()
    date_ok, date_value = pcall(call_date)
  end

  local function sandbox_date(fmt, t)
    local ok, value
    if type(fmt) == "string" and #fmt > DATE_FORMAT_MAX then
      -- the lock is held for as long as C formats: a format of megabytes would hold every
      -- other script's date (and an engine's event loop, running one inline) for a second
      ok, value = false, format("bad argument #1 to 'date' (format longer than %d bytes)",
                                DATE_FORMAT_MAX)
    else
      date_format, date_time, date_ok, date_value = fmt, t, false, nil
      py_date()
      ok, value = date_ok, date_value
      date_format, date_time, date_value = nil, nil, nil  -- nothing of the run stays reachable
    end
    if ok then return value end
    if value == MEMORY_ERROR then trip_memory() end
    value = unplaced(value)
    -- named as C names the function it was called through: as the script called it, or
    -- os.date where C called it (pcall(os.date, ...)) and the name is not known
    local n, rest = match(value, "^bad argument #(%d+) to 'date' (.*)$")
    if n then
      local info = getinfo(1, "nt")
      local name = info.name or (info.istailcall and "date" or "os.date")
      value = format("bad argument #%s to '%s' %s", n, name, rest)
    end
    error(value, 1)
  end

  dates = {sandbox = sandbox_date, locked = locked_date}
end

local coroutine_lib = copy(coroutine)
coroutine_lib.create = sandbox_create
coroutine_lib.resume = sandbox_resume
coroutine_lib.wrap = sandbox_wrap
coroutine_lib.close = sandbox_close
for name, f in next, coroutine_seen do coroutine_lib[name] = f end

local BASE = {
  string = readonly("string", string),
  table = readonly("table", table_lib),
  math = readonly("math", math_lib),
  utf8 = readonly("utf8", copy(utf8)),
  os = readonly("os", {time = os_time, date = dates.sandbox, clock = os.clock}),
  coroutine = readonly("coroutine", coroutine_lib),
  json = readonly("json", {encode = json_encode, decode = json_decode, null = NULL,
                           array = json_array}),
  log = sandbox_log,
  print = sandbox_print,
  assert = assert,
  error = error,
  ipairs = ipairs,
  pairs = pairs,
  next = next,
  pcall = sandbox_pcall,
  xpcall = sandbox_xpcall,
  select = select,
  tonumber = tonumber,
  tostring = tostring,
  type = type,
  rawequal = rawequal,
  rawlen = rawlen,
  rawget = rawget,
  rawset = sandbox_rawset,
  setmetatable = sandbox_setmetatable,
  getmetatable = getmetatable,
  unpack = sandbox_unpack,
  _VERSION = _VERSION,
}

-- `inputs` is converted on the script's first read of the global, as a result is: converted
-- for every run, a foreach item's that never reads it too, it made a foreach over the inputs
-- cost the square of their size. Once read, the global is a table of the run's own, as if it
-- had been there from the start; assigned before (nil too), it is what was assigned. Only
-- rawget and next on _ENV can tell. A global in neither the environment nor BASE comes here.
local inputs_problem = nil  -- why the inputs could not be read: not converted again

local INPUTS_MT = {
  __index = function(_, name)
    if name ~= "inputs" or not inputs_pending then return nil end
    if inputs_problem then error(inputs_problem, 2) end
    local was = metered
    metered = false
    -- converted and charged as a result is (see RESULTS_MT)
    local ok, value, problem = pcall(py_inputs)
    py_memory(true)
    metered = was
    if tripped then error(LIMIT, 0) end
    if not ok then
      if value == MEMORY_ERROR then trip_memory() end
      problem = "inputs could not be read"
    end
    if problem then
      inputs_problem = problem
      error(problem, 2)
    end
    inputs_pending = false
    rawset(run_env, "inputs", value)
    return value
  end,
}
setmetatable(BASE, INPUTS_MT)

local ENV_MT = {
  __index = BASE,
  __newindex = function(env, name, value)
    if name == "inputs" then inputs_pending = false end
    rawset(env, name, value)
  end,
  __pairs = function(env)
    if inputs_pending then local _ = env.inputs end  -- pairs(_ENV) lists it, as it always did
    return next, env, nil
  end,
  __metatable = false,
}

local missing = nil  -- names the results lookup said are not ancestors, this run
-- results read this run, by name, where the script cannot clear them: each is converted, and
-- its size added to the run's memory limit, once (a script that cleared its results table
-- and read again raised that limit without end)
local fetched = nil
local unreadable = nil  -- and those that could not be read, with why: not converted again

local RESULTS_MT = {
  __metatable = false,
  -- the ancestors that succeeded, in the run's order, each read as results[name] is: the
  -- table itself holds only what was read already
  __pairs = function(t)
    local was = metered
    metered = false
    local ok, names = pcall(config.names)  -- not a local: the main chunk has 200 at most
    py_memory(true)
    metered = was
    if tripped then error(LIMIT, 0) end
    if not ok then
      if names == MEMORY_ERROR then trip_memory() end
      error("results could not be listed", 2)
    end
    local i = 0
    return function()
      while true do
        i = i + 1
        local name = names[i]
        if name == nil then return nil end
        local value = t[name]
        if value ~= nil then return name, value end
      end
    end, t, nil
  end,
  __index = function(t, name)
    if type(name) ~= "string" or (missing and missing[name]) then return nil end
    local seen = fetched and fetched[name]
    if seen ~= nil then
      rawset(t, name, seen)
      return seen
    end
    local why = unreadable and unreadable[name]
    if why then error(why, 2) end
    if not utf8len(name) then return nil end  -- no node is named so
    local was = metered
    metered = false
    -- Python converts with the memory limit lifted (a failed allocation outside a protected
    -- call would abort the process) and does not charge the result to the script
    local ok, value, problem = pcall(py_lookup, name)
    py_memory(true)
    metered = was
    if tripped then error(LIMIT, 0) end
    if not ok then
      if value == MEMORY_ERROR then trip_memory() end
      problem = "results." .. name .. " could not be read"
    end
    if problem then
      unreadable = unreadable or {}
      unreadable[name] = problem
      error(problem, 2)
    end
    if value == nil then
      missing = missing or {}
      missing[name] = true
      return nil
    end
    fetched = fetched or {}
    fetched[name] = value
    rawset(t, name, value)
    return value
  end,
}

---------------------------------------------------------------------------------------------
-- One run. The script runs in a coroutine that alone carries the hook, so when it ends the
-- runner's own bookkeeping can never be interrupted by a limit.
---------------------------------------------------------------------------------------------

local chunk_source = nil
local error_line = nil
-- the library function a failure came from, as the script names it, when the script called it
-- as a tail call (return s:find(p)): its frame is gone, and Python looks for the line
local error_call = nil
local CALL_NAMES = {
  [guarded_find] = "find", [guarded_match] = "match", [guarded_gmatch] = "gmatch",
  [guarded_gsub] = "gsub", [sandbox_rep] = "rep", [sandbox_move] = "move",
  [sandbox_insert] = "insert", [sandbox_remove] = "remove", [sandbox_concat] = "concat",
  [sandbox_unpack] = "unpack", [sandbox_sort] = "sort", [sandbox_rawset] = "rawset",
  [sandbox_setmetatable] = "setmetatable", [dates.sandbox] = "date",
}
local OUTPUT_SUFFIX = ": outputs must be JSON values"

-- The line of the innermost frame of the script's chunk, walking out from `level`.
local function script_line(level)
  while true do
    local info = getinfo(level, "Sl")
    if not info then return nil end
    if info.source == chunk_source then return info.currentline end
    level = level + 1
  end
end

trip = function(reason)
  tripped = reason
  error_line = script_line(2)
  error(LIMIT, 0)
end

-- Message handler: runs where the error was raised, so the stack still shows the script's line.
local function on_error(e)
  if tripped then return e end
  error_line = script_line(2)
  local message, tail = placed(e, nil, 3)
  if tail and not error_line then error_call = CALL_NAMES[tail] end
  return message
end

-- An error's text is kept with the run's events and document, after every retry: cut to
-- ERROR_BYTES, or an error would carry what the output limit keeps out.
local function capped(text)
  if #text <= ERROR_BYTES then return text end
  return sub(text, 1, ERROR_BYTES) .. format(" [%d more bytes dropped]", #text - ERROR_BYTES)
end

local function error_text(e)
  local te = type(e)
  if te == "string" then return valid_utf8(capped(unplaced(e))) end
  if te == "number" then return tostring(e) end
  if te == "table" then
    local own, failure = own_text(e)
    if own then return valid_utf8(capped(own)) end
    if failure then
      return valid_utf8(capped("error object is a table whose __tostring failed: " .. failure))
    end
    local ok, text = pcall(encode, e, "error", "")
    if tripped then error(LIMIT, 0) end
    if ok then return capped(text) end
    if text == MEMORY_ERROR then trip_memory() end
    return capped("error object is a table that is not JSON: " .. text)
  end
  return "error object is a " .. te .. " value"
end

local function body(fn, expression, output_limit)
  local ok, value = xpcall(fn, on_error)
  if tripped then return "limit", tripped end
  if not ok then
    if value == MEMORY_ERROR then return "limit", "memory" end
    if pattern_refusal and type(value) == "string"
        and sub(value, -#pattern_refusal) == pattern_refusal then
      return "pattern", error_text(value)  -- the guard's, not a script's look-alike
    end
    return "error", error_text(value)
  end
  if expression then return "ok", value ~= nil and value ~= false end
  if value == nil then return "ok", "{}" end
  enc_room = 2 * output_limit  -- past the limit by a little, the exact size is worth telling
  local eok, text = pcall(encode, value, "output", OUTPUT_SUFFIX)
  enc_room = nil
  if tripped then return "limit", tripped end
  if not eok then
    if text == MEMORY_ERROR then return "limit", "memory" end
    if rawequal(text, ENC_TOO_BIG) then return "too_big", -1 end
    return "error", text
  end
  if #text > output_limit then return "too_big", #text end
  return "ok", text
end

-- The coroutine runs one job after another (creating one per run would cost more than the
-- rest of a trivial run); it is replaced when a run leaves it dead or suspended in the script.
local DONE = {}
local job_fn, job_expression, job_limit = nil, false, 0

local function next_job()
  local fn = job_fn
  job_fn = nil  -- nothing of a finished run stays reachable from the coroutine
  return body(fn, job_expression, job_limit)
end

local function runner()
  while true do co_yield(DONE, next_job()) end
end

local runner_step = nil

local function collect_logs()
  if dropped > 0 then
    -- a pair no script can log (its level is none of LEVELS): the count, which the run
    -- adds to its node's and tells in its own words
    logs[2 * nlogs + 1] = DROPPED_LEVEL
    logs[2 * nlogs + 2] = format("%d", dropped)
  end
  local text = encode(setmetatable(logs, ARRAY_MT), "logs", "")
  logs, nlogs, dropped, log_bytes = {}, 0, 0, 0
  return text
end

-- ctx arrives as name, value, name, value..., cheaper than building that table from Python;
-- lazy_inputs is false when the inputs are {}, which need no fetching.
local function run(fn, source, expression, instructions, output_limit, lazy_inputs, ...)
  tripped, metered, ticks, missing, error_line, error_call = nil, false, 0, nil, nil, nil
  pattern_refusal, fetched, unreadable = nil, nil, nil
  chunk_source = source
  budget = instructions
  step = instructions < HOOK_COUNT and instructions or HOOK_COUNT
  if step < 1 then step = 1 end
  if reseeded then
    randomseed()
    reseeded = false
  end
  local ctx, pairs_ = {}, {...}
  for i = 1, select("#", ...), 2 do ctx[pairs_[i]] = pairs_[i + 1] end
  local inputs = nil
  if not lazy_inputs then inputs = {} end
  local env = setmetatable({inputs = inputs, ctx = ctx,
                            results = setmetatable({}, RESULTS_MT)}, ENV_MT)
  run_env, inputs_pending, inputs_problem = env, lazy_inputs, nil
  local co = runner_co
  if co == nil or runner_step ~= step then
    co = co_create(runner)
    sethook(co, hook, "", step)
    runner_co, runner_step = co, step
  end
  -- the environment is the chunk's _ENV upvalue (a main chunk has that one upvalue), set for
  -- this run and cleared after it: passed as an argument, the script's `...` held it
  if setupvalue(fn, 1, env) ~= "_ENV" then error("a chunk's first upvalue is not _ENV", 0) end
  job_fn, job_expression, job_limit = fn, expression, output_limit
  metered = true
  local ok, mark, status, payload = co_resume(co)
  metered = false
  setupvalue(fn, 1, nil)
  run_env, inputs_pending = nil, false
  -- mark may be anything a script yields from its top level: compared raw, as its __eq
  -- would run here, outside the hook, and could pass for DONE (its coroutine then parked in
  -- this runtime, to answer for the next run whoever's it is)
  if not ok or not rawequal(mark, DONE) then runner_co = nil end
  if tripped == "pattern" then
    status, payload = "pattern", pattern_refusal
  elseif tripped then
    status, payload = "limit", tripped
  elseif not ok then
    if rawequal(mark, MEMORY_ERROR) then
      status, payload = "limit", "memory"
    else  -- the script's errors are handled inside; this is the sandbox failing
      status, payload = "error", type(mark) == "string" and valid_utf8(mark)
        or "the script's coroutine failed"
    end
  elseif not rawequal(mark, DONE) then
    status, payload = "error", "attempt to yield from outside a coroutine"
  end
  local log_json = nil
  if nlogs > 0 or dropped > 0 then log_json = collect_logs() end
  return status, payload, error_line, log_json, error_call
end

-- After Lua raised into Python (out of memory outside the script's coroutine).
local function reset()
  tripped, metered, missing, fetched, unreadable = nil, false, nil, nil, nil
  run_env, inputs_pending, inputs_problem = nil, false, nil
  logs, nlogs, dropped, log_bytes = {}, 0, 0, 0
end

local function mark_arrays(tables)
  for i = 1, #tables do setmetatable(tables[i], ARRAY_MT) end
end

-- Nothing reaches the real globals from a script; clear them all the same.
for _, name in ipairs({"io", "os", "debug", "package", "require", "load", "loadfile", "dofile",
                       "collectgarbage", "python"}) do
  _G[name] = nil
end

return {run = run, reset = reset, mark_arrays = mark_arrays, null = NULL,
        locked_date = dates.locked}
"""
