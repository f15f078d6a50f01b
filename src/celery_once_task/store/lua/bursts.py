"""``debounce``: the bursts of calls of a debounced key (see ``debounce``)."""

from __future__ import annotations

from . import CLOCK_LUA, Script

# -- debounce: bursts of calls (see ``debounce``) ----------------------------------------
#
# A debounced call's burst is a hash (``keys.limited_key(..., "burst")``), with the open
# burst's fields -- id (its task id), first, last, due (server milliseconds), count, args
# (the last call's arguments), by (the last call's token), rescued -- and, once its
# execution started and until it ends, closed:<id> -> the arguments it runs with,
# last:<id> -> the token of the call they came from, ran:<token> -> <id>; after it ended,
# prev -> "<token> <id>" of the key's latest ended burst.
#
# A call's token is the task id it would start a burst under. A call whose reply was lost
# is sent again with the same token, and must not count twice: its own open burst (id),
# the burst it is still the last call of (by), or the execution its arguments run in
# (ran:<token>, then prev) answer it as the first try was answered.

# KEYS[1] the key's burst
# ARGV[1] a new task id, ARGV[2] debounce in milliseconds, ARGV[3] debounce_max in milliseconds
# (0: none), ARGV[4] the call's arguments, ARGV[5] how long past its due time a burst is kept,
# ARGV[6] how long past its due time (and past its last rescue) a burst is taken for one whose
#         message was lost
# return  {1, id, ms until due}: a new burst, under the new task id (the caller publishes its
#         message; also to a retry whose first try started it); {0, id, ms until due}: the call
#         joined the open burst (or its first try did: it is still the last call, or its
#         arguments run); {2, id, ms}: it joined a burst whose message is overdue (the caller
#         publishes it again: at most once per ARGV[6])
BURST_CALL = Script(
    "burst_call",
    CLOCK_LUA
    + """
local burst, now = KEYS[1], now_ms()
local debounce, most = tonumber(ARGV[2]), tonumber(ARGV[3])
local ran = redis.call('HGET', burst, 'ran:' .. ARGV[1])
if ran then return {0, ran, 0} end
local prev = redis.call('HGET', burst, 'prev')
if prev and string.sub(prev, 1, #ARGV[1] + 1) == ARGV[1] .. ' ' then
    return {0, string.sub(prev, #ARGV[1] + 2), 0}
end
local id = redis.call('HGET', burst, 'id')
if not id then
    local due = now + debounce
    redis.call('HSET', burst, 'id', ARGV[1], 'first', now, 'last', now, 'due', due, 'count', 1, 'args', ARGV[4],
               'by', ARGV[1])
    keep_at_least(burst, debounce + tonumber(ARGV[5]))
    return {1, ARGV[1], debounce}
end
local first, due = tonumber(redis.call('HGET', burst, 'first')), tonumber(redis.call('HGET', burst, 'due'))
if id == ARGV[1] then return {1, id, math.max(0, due - now)} end
if redis.call('HGET', burst, 'by') == ARGV[1] then return {0, id, math.max(0, due - now)} end
local code = 0
local rescued = tonumber(redis.call('HGET', burst, 'rescued') or '0')
if now > math.max(due, rescued) + tonumber(ARGV[6]) then
    code = 2
    redis.call('HSET', burst, 'rescued', now)
end
local later = now + debounce
if most > 0 then later = math.min(later, first + most) end
later = math.max(later, due)
redis.call('HSET', burst, 'last', now, 'due', later, 'args', ARGV[4], 'by', ARGV[1])
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
    CLOCK_LUA
    + """
local burst, now = KEYS[1], now_ms()
if redis.call('HGET', burst, 'id') == ARGV[1] then
    local due = tonumber(redis.call('HGET', burst, 'due'))
    if now < due then return {0, due - now} end
    local args, by = redis.call('HGET', burst, 'args'), redis.call('HGET', burst, 'by')
    redis.call('HDEL', burst, 'id', 'first', 'last', 'due', 'count', 'args', 'by', 'rescued')
    redis.call('HSET', burst, 'closed:' .. ARGV[1], args, 'last:' .. ARGV[1], by, 'ran:' .. by, ARGV[1])
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
# ARGV[2] "open": forget the open burst if it is still this one and no other call joined it (its
#         message could not be published); "drop": forget the open burst if it is still this one
#         (an operator's clear); "closed": forget the arguments its execution ran with (it ended)
# ARGV[3] with "closed": how long the ended burst's last call is remembered, if nothing else is
#         left (milliseconds: its reply may have been lost, and the call sent again)
# return  1 if something was forgotten, else 0
BURST_FORGET = Script(
    "burst_forget",
    """
if ARGV[2] == 'closed' then
    local by = redis.call('HGET', KEYS[1], 'last:' .. ARGV[1])
    if by then
        redis.call('HDEL', KEYS[1], 'ran:' .. by)
        redis.call('HSET', KEYS[1], 'prev', by .. ' ' .. ARGV[1])
    end
    local forgotten = redis.call('HDEL', KEYS[1], 'closed:' .. ARGV[1], 'last:' .. ARGV[1])
    if redis.call('HLEN', KEYS[1]) == 1 and redis.call('HEXISTS', KEYS[1], 'prev') == 1 then
        redis.call('PEXPIRE', KEYS[1], ARGV[3])
    end
    return math.min(forgotten, 1)
end
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 0 end
-- Calls that joined it since were told they are in it: it stays, for the next call to publish
-- its message again once overdue.
if ARGV[2] == 'open' and tonumber(redis.call('HGET', KEYS[1], 'count')) > 1 then return 0 end
redis.call('HDEL', KEYS[1], 'id', 'first', 'last', 'due', 'count', 'args', 'by', 'rescued')
return 1
""",
)
