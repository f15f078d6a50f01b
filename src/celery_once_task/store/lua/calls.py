"""A call's keys beside its queue lock: its ``unique_for`` window, its replaced arguments, its lease until its end.

A call's queue lock is ``{prefix}:{name}:{digest}:queue``; beside it, in its
Redis Cluster hash slot (``keys.companion_key``), a call may have:

* its *window*, ``{prefix}:{<queue key>}:unique``, valued the holder (as its
  queue lock is), written when the call is accepted and left to expire after
  ``unique_for`` seconds, whatever becomes of the call (see ``windows``);
* the key's *replaced arguments*, ``{prefix}:{<queue key>}:args``, a hash
  (see ``replace``): for a queued call held by ``<holder>`` (its queue lock's
  value), ``a:<holder>`` -> the arguments a duplicate replaced its own with
  (kombu JSON), ``b:<holder>`` -> the task id of the duplicate that wrote
  them, ``p:<holder>`` -> the arguments they replaced ("" : the message's
  own), and, once its execution holds its queue lock until its end,
  ``t:<holder>`` -> 1 (taken: its arguments are in use, and no longer
  replaced).

A call sent again after a lost reply must not count twice: its own queue
lock, or its own replacement (``b:``), answers it as its first try was
answered.
"""

from __future__ import annotations

from . import CLOCK_LUA, Script

# KEYS[1] the call's queue lock
# KEYS[2] with ARGV[3] > 0: the key's window; then, with ARGV[4] ~= "": the key's replaced arguments
#         (each in KEYS[1]'s hash slot)
# ARGV[1] the holder's value (the call's task id, and its task where a lock_name names the key)
# ARGV[2] the queue lock's time to live in milliseconds
# ARGV[3] the window's time to live in milliseconds (0: the call has no window)
# ARGV[4] the call's arguments as kombu JSON ("" : the call replaces nothing)
# ARGV[5] the call's task id (what its replacement is known by: an undo names it)
# return  1 if the queue lock (and the window) are now the call's (or its earlier try's);
#         else {holder, how}: how 0 -- the queue lock is held (by a call of this task whose arguments
#         are in use, or by a call of another task of the same lock_name: its arguments are never
#         another task's); 1 -- it is held, and the call's arguments replaced its holder's (not in
#         use yet); 2 -- the window alone is held
CALL_ACQUIRE = Script(
    "call_acquire",
    CLOCK_LUA
    + """
local queue, value, queue_ttl = KEYS[1], ARGV[1], tonumber(ARGV[2])
local window_ttl, arguments, token = tonumber(ARGV[3]), ARGV[4], ARGV[5]
local window = window_ttl > 0 and KEYS[2] or nil
local replaced = arguments ~= '' and KEYS[window and 3 or 2] or nil
-- The task a holder's value names after the separator ("" where no lock_name names the key).
local function task_of(v) return string.match(v, '\\31(.*)$') or '' end
local holder = redis.call('GET', queue)
if holder == value then return 1 end
if holder then
    if replaced and task_of(holder) == task_of(value) and redis.call('HEXISTS', replaced, 't:' .. holder) == 0 then
        if redis.call('HGET', replaced, 'b:' .. holder) ~= token then
            local previous = redis.call('HGET', replaced, 'a:' .. holder) or ''
            redis.call('HSET', replaced, 'a:' .. holder, arguments, 'b:' .. holder, token, 'p:' .. holder, previous)
        end
        keep_at_least(replaced, redis.call('PTTL', queue))
        return {holder, 1}
    end
    return {holder, 0}
end
if window then
    local other = redis.call('GET', window)
    if other then return {other, 2} end
    redis.call('SET', window, value, 'PX', window_ttl)
end
redis.call('SET', queue, value, 'PX', queue_ttl)
return 1
""",
)

# KEYS[1] a call's queue lock
# ARGV[1] the holder's value (matched whole)
# ARGV[2] the lease in milliseconds
# ARGV[3] "set": the lease from now on (the pickup of a call held until its end); "extend": the lease at
#         least, never shortened (a renewal: a retry's publish may have set it longer)
# return  1 if ARGV[1] holds the lock (its time to live now the lease, or at least the lease), else 0
QUEUE_LEASE = Script(
    "queue_lease",
    CLOCK_LUA
    + """
local queue = KEYS[1]
local value, lease, how = ARGV[1], tonumber(ARGV[2]), ARGV[3]
if redis.call('GET', queue) ~= value then return 0 end
if how == 'set' then
    redis.call('PEXPIRE', queue, lease)
else
    keep_at_least(queue, lease)
end
return 1
""",
)

# KEYS[1] the call's queue lock, KEYS[2] the key's replaced arguments (in KEYS[1]'s hash slot)
# ARGV[1] the holder's value (matched whole)
# ARGV[2] "release": the queue lock goes (queue_lock_until="pickup"); else the lease in milliseconds
#         it is kept for (queue_lock_until="end"); either way, arguments a duplicate replaced are
#         marked taken (in use: no undo changes them under the execution)
# ARGV[3] how long the arguments are kept at least, in milliseconds (for a copy of the message)
# return  {1 if the holder held the queue lock (now released, or kept) else 0,
#          the arguments a duplicate replaced the holder's with, or false: its message's own}
ARGUMENTS_TAKE = Script(
    "arguments_take",
    CLOCK_LUA
    + """
local queue, replaced = KEYS[1], KEYS[2]
local value, keep, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local ours = redis.call('GET', queue) == value
if ours then
    if keep == 'release' then
        redis.call('DEL', queue)
        if redis.call('HEXISTS', replaced, 'a:' .. value) == 1 then redis.call('HSET', replaced, 't:' .. value, 1) end
    else
        redis.call('PEXPIRE', queue, tonumber(keep))
        redis.call('HSET', replaced, 't:' .. value, 1)
    end
end
local arguments = redis.call('HGET', replaced, 'a:' .. value)
if redis.call('EXISTS', replaced) == 1 then keep_at_least(replaced, ttl) end
return {ours and 1 or 0, arguments or false}
""",
)

# KEYS[1] the key's replaced arguments
# ARGV[1] the holder's value whose arguments go (its execution ended, or it was revoked)
# return  1 if any of its fields were there, else 0 (the hash goes with its last field)
ARGUMENTS_FORGET = Script(
    "arguments_forget",
    """
local replaced = KEYS[1]
local value = ARGV[1]
local gone = redis.call('HDEL', replaced, 'a:' .. value, 'b:' .. value, 'p:' .. value, 't:' .. value)
return math.min(gone, 1)
""",
)

# KEYS[1] the key's replaced arguments
# ARGV[1] the task id of a duplicate refused after a lost reply (its replacement may have been made)
# return  1 if its replacement was undone (the arguments before it are back), 0 if it was not made,
#         a later duplicate replaced it since, or the arguments are in use
ARGUMENTS_UNDO = Script(
    "arguments_undo",
    """
local replaced = KEYS[1]
local token = ARGV[1]
local fields = redis.call('HGETALL', replaced)
for i = 1, #fields, 2 do
    local name = fields[i]
    if string.sub(name, 1, 2) == 'b:' and fields[i + 1] == token then
        local holder = string.sub(name, 3)
        if redis.call('HEXISTS', replaced, 't:' .. holder) == 1 then return 0 end
        local previous = redis.call('HGET', replaced, 'p:' .. holder)
        if previous and previous ~= '' then
            redis.call('HSET', replaced, 'a:' .. holder, previous)
        else
            redis.call('HDEL', replaced, 'a:' .. holder)
        end
        redis.call('HDEL', replaced, 'b:' .. holder, 'p:' .. holder)
        return 1
    end
end
return 0
""",
)
