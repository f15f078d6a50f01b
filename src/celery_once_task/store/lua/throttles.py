"""The log of a throttled key: at most N starts in any window of a period (``throttle``).

The log is a sorted set of the key's starts -- past ones, and starts reserved
for postponed calls -- scored by the store's clock in milliseconds. A
reservation's member is its call id (``ids.call_id``); a start's is
``<call id>@<starter>``, the starter being ``<worker instance>/<pid>`` of the
process that started it, so that a copy of a postponed call that started on
its reservation (a message the broker delivered twice) finds that start, and
who made it, and a start stays counted whatever becomes of its execution.
Where that member already holds another start of the same call by the same
process (a copy started again, under ``"count"``), the start is
``<call id>@<n>@<starter>``, with the least n from 2 whose member is free:
every start is a member of its own, as when every start carried its time
(``<call id>@<ms>@<worker instance>``, 2.0.0's members, read alike).

A start on a reservation whose process died before its execution ended (a
pool process killed, its message handed out again) is marked *lost* by its
worker's main process (``THROTTLE_LOST``): ``<call id>!<reservation>``, still
counted. The first copy of the message that finds it *claims* it -- it names
the claimer's process again, so that every other copy waits on the claimer --
and runs as a new start; so does a copy that found the start's worker gone
(``ARGV[9]``).

Short members keep the log a listpack: Redis stores a sorted set with a
member over 64 bytes (``zset-max-listpack-value``) as a skiplist, about five
times the memory for a few entries. One more member, scored 0, records the limits (``rates.spec_of``)
for operators. A call may start at ``t`` iff, for each limit, fewer than N
entries lie after ``t - period - margin``: an exact sliding window, O(N)
entries per key (the most of any limit).
"""

from __future__ import annotations

from . import CLOCK_LUA, Script

# KEYS[1] the key's log (a sorted set)
# ARGV[1] the call's id (its reservation's member)
# ARGV[2] margin in milliseconds, added to every period
# ARGV[3] how late (ms) a postponed call may arrive and still start on its reservation
# ARGV[4] "postpone" or "reject": what a call gets when no window allows it now
# ARGV[5] the limits, as operators read them (``rates.spec_of``)
# ARGV[6] the process that starts it, recorded in its start: ``<worker instance>/<pid>`` (the instance ""
#         where it keeps no heartbeat)
# ARGV[7] the reservation a postponed copy carries (ms), or ""
# ARGV[8] "ignore" or "count": what a copy of a postponed call that already started on that reservation gets
# ARGV[9] under "ignore": the start on that reservation this copy found its worker gone (a member), or "";
#         it claims that start, as a lost one, if it is still there
# ARGV[10], ARGV[11], ...  N and the period in milliseconds, per limit
# return  {code, at, now[, start]}: the store's clock now, and when the call starts (ms). code 1: it starts
#         now (``at``: now, or its reservation when it arrived on time); 2: postponed -- a start is reserved
#         at ``at`` in its name (or was, for a copy that arrived early); 0: rejected, ``at`` is the earliest
#         start a window would allow, nothing was written; 3 (under "ignore"): the call already started on
#         its reservation ``at``, ``start`` is that start's member, nothing was written. A lost start (or
#         ARGV[9]) claimed is written with the start or reservation of codes 1 and 2.
THROTTLE_TAKE = Script(
    "throttle_take",
    CLOCK_LUA
    + """
local key, member = KEYS[1], ARGV[1]
local margin, on_time, mode, spec = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]
local instance, reserved, copies, gone = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local now = now_ms()
-- The member of a start at ``at``: the first of <member>@<instance>, <member>@2@<instance>, ... that holds
-- no other start (see the module's docstring).
local function start_of(at)
    local name, n = member .. '@' .. instance, 1
    while true do
        local held = redis.call('ZSCORE', key, name)
        if not held or tonumber(held) == at then return name end
        n = n + 1
        name = member .. '@' .. n .. '@' .. instance
    end
end
local limits, longest = {}, 0
for i = 10, #ARGV, 2 do
    local count, period = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
    limits[#limits + 1] = {count, period}
    if period > longest then longest = period end
end
-- No window can see an entry older than the longest period: trimmed at every call (score 0: the limits).
redis.call('ZREMRANGEBYSCORE', key, '(0', now - longest - margin)
local mine, claim = redis.call('ZSCORE', key, member), nil
if mine then
    mine = tonumber(mine)
    if mine > now then return {2, mine, now} end
    redis.call('ZREM', key, member)
    if now - mine <= on_time then
        redis.call('ZADD', key, mine, start_of(mine))
        return {1, mine, now}
    end
    -- Late (its worker died, or its pool was busy): its reservation, never started on, is given up and
    -- it reserves again at the end; starting now on an older entry could put N+1 starts in a window.
elseif reserved ~= '' and copies == 'ignore' then
    -- No reservation left: another copy of this message may have started on it.
    local prefix, lost = member .. '@', member .. '!' .. reserved
    for _, other in ipairs(redis.call('ZRANGEBYSCORE', key, reserved, reserved)) do
        if other == lost or other == gone then
            -- That start's execution died: this copy runs it again, as a new start, and claims the old one.
            claim = other
        elseif string.sub(other, 1, string.len(prefix)) == prefix then
            return {3, tonumber(reserved), now, other}
        end
    end
end
local at = now
for _, limit in ipairs(limits) do
    local count, period = limit[1], limit[2]
    if redis.call('ZCOUNT', key, '(' .. (now - period - margin), '+inf') >= count then
        -- The N-th latest entry, past or reserved: the earliest start after it whose window holds N-1 others.
        local nth = redis.call('ZREVRANGE', key, count - 1, count - 1, 'WITHSCORES')
        local free = tonumber(nth[2]) + period + margin
        if free > at then at = free end
    end
end
if at > now and mode == 'reject' then return {0, at, now} end
if claim then
    -- The old start, still counted, names this process: every other copy of the message waits on this one.
    redis.call('ZREM', key, claim)
    redis.call('ZADD', key, tonumber(reserved), start_of(tonumber(reserved)))
end
redis.call('ZADD', key, at, at > now and member or start_of(at))
redis.call('ZADD', key, 0, spec)
local last = redis.call('ZREVRANGE', key, 0, 0, 'WITHSCORES')
redis.call('PEXPIRE', key, math.floor(tonumber(last[2]) - now + longest + margin) + 1)
if at > now then return {2, at, now} end
return {1, at, now}
""",
)

# KEYS[1] the key's log (a sorted set)
# ARGV[1] the call's id
# ARGV[2] the process that started it (``<worker instance>/<pid>``), now gone before its execution ended
# ARGV[3] the reservation (ms) it started on
# return  1 if that process's start on the reservation is now marked lost (``<call id>!<reservation>``), else 0
THROTTLE_LOST = Script(
    "throttle_lost",
    """
local key, member, starter, reserved = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local prefix, suffix = member .. '@', '@' .. starter
for _, other in ipairs(redis.call('ZRANGEBYSCORE', key, reserved, reserved)) do
    if string.sub(other, 1, string.len(prefix)) == prefix and string.sub(other, -string.len(suffix)) == suffix then
        redis.call('ZREM', key, other)
        redis.call('ZADD', key, tonumber(reserved), member .. '!' .. reserved)
        return 1
    end
end
return 0
""",
)
