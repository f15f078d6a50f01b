"""``debounce``: the bursts of calls of a debounced key (see ``debounce``)."""

from __future__ import annotations

from . import Script

# -- debounce: bursts of calls (see ``debounce``) ----------------------------------------
#
# A debounced call's burst is a hash (``keys.limited_key(..., "burst")``), with the open
# burst's fields -- id (its task id), first, last, due (server milliseconds), count, args
# (the last call's arguments), rescued -- and, once its execution started, closed:<id> ->
# the arguments it runs with, until it ends.
_BURST = r"""
local function now_ms()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function keep_at_least(key, ms)
    if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
"""

# KEYS[1] the key's burst
# ARGV[1] a new task id, ARGV[2] debounce in milliseconds, ARGV[3] debounce_max in milliseconds
# (0: none), ARGV[4] the call's arguments, ARGV[5] how long past its due time a burst is kept,
# ARGV[6] how long past its due time (and past its last rescue) a burst is taken for one whose
#         message was lost
# return  {1, id, ms until due}: a new burst, under the new task id (the caller publishes its
#         message); {0, id, ms until due}: the call joined the open burst; {2, id, ms}: it joined
#         a burst whose message is overdue (the caller publishes it again: at most once per ARGV[6])
BURST_CALL = Script(
    "burst_call",
    _BURST
    + """
local burst, now = KEYS[1], now_ms()
local debounce, most = tonumber(ARGV[2]), tonumber(ARGV[3])
local id = redis.call('HGET', burst, 'id')
if not id then
    local due = now + debounce
    redis.call('HSET', burst, 'id', ARGV[1], 'first', now, 'last', now, 'due', due, 'count', 1, 'args', ARGV[4])
    keep_at_least(burst, debounce + tonumber(ARGV[5]))
    return {1, ARGV[1], debounce}
end
local first, due = tonumber(redis.call('HGET', burst, 'first')), tonumber(redis.call('HGET', burst, 'due'))
local code = 0
local rescued = tonumber(redis.call('HGET', burst, 'rescued') or '0')
if now > math.max(due, rescued) + tonumber(ARGV[6]) then
    code = 2
    redis.call('HSET', burst, 'rescued', now)
end
local later = now + debounce
if most > 0 then later = math.min(later, first + most) end
later = math.max(later, due)
redis.call('HSET', burst, 'last', now, 'due', later, 'args', ARGV[4])
redis.call('HINCRBY', burst, 'count', 1)
keep_at_least(burst, later - now + tonumber(ARGV[5]))
return {code, id, later - now}
""",
)

# KEYS[1] the key's burst
# ARGV[1] the burst's task id (this message's), ARGV[2] how long a started burst's arguments are kept
# return  {0, ms until due}: the burst is still open and not due; {1, arguments}: it is due (now
#         closed: new calls start a new burst) or was closed by a copy of this message, and runs
#         with these arguments; {2}: no such burst (lost, or ended and cleared)
BURST_TAKE = Script(
    "burst_take",
    _BURST
    + """
local burst, now = KEYS[1], now_ms()
if redis.call('HGET', burst, 'id') == ARGV[1] then
    local due = tonumber(redis.call('HGET', burst, 'due'))
    if now < due then return {0, due - now} end
    local args = redis.call('HGET', burst, 'args')
    redis.call('HDEL', burst, 'id', 'first', 'last', 'due', 'count', 'args', 'rescued')
    redis.call('HSET', burst, 'closed:' .. ARGV[1], args)
    keep_at_least(burst, tonumber(ARGV[2]))
    return {1, args}
end
local closed = redis.call('HGET', burst, 'closed:' .. ARGV[1])
if closed then return {1, closed} end
return {2}
""",
)

# KEYS[1] the key's burst
# ARGV[1] a burst's task id
# ARGV[2] "open": forget the open burst if it is still this one (its message could not be
#         published); "closed": forget the arguments its execution ran with (it ended)
# return  1 if something was forgotten, else 0
BURST_FORGET = Script(
    "burst_forget",
    """
if ARGV[2] == 'closed' then return redis.call('HDEL', KEYS[1], 'closed:' .. ARGV[1]) end
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'id', 'first', 'last', 'due', 'count', 'args', 'rescued')
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[1]) end
return 1
""",
)
