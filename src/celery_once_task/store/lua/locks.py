"""The queue and running locks, and the finished records of the executions that held them."""

from __future__ import annotations

from typing import Literal

from . import Script

#: How an owner token is matched against a lock's value: the whole value (a queue lock's task id), or
#: its start (a running lock's value is its token and when it was taken).
Mode = Literal["exact", "prefix"]

#: Lua shared by the scripts below: whether a lock value belongs to an owner.
#: Queue locks are matched whole (the value is the task id). A running lock's
#: value is its owner token followed by the time it was taken, so it is
#: matched by the token as a prefix (``mode`` "prefix").
_HOLDS = """
local function holds(value, token, mode)
    if not value then return false end
    if mode == 'prefix' then return string.sub(value, 1, string.len(token)) == token end
    return value == token
end
"""

# KEYS[1] lock key
# ARGV[1] owner token
# ARGV[2] "exact" or "prefix": how the token is matched against the lock's value
# return  1 if the lock was the token's and is now deleted, else 0
COMPARE_AND_DELETE = Script(
    "compare_and_delete",
    _HOLDS
    + """
local key = KEYS[1]
local token, mode = ARGV[1], ARGV[2]
if holds(redis.call('GET', key), token, mode) then
    return redis.call('DEL', key)
end
return 0
""",
)

#: Lua shared by the scripts below: finished records (see ``redelivery``), in two forms. The compact one
#: is digits, ``<flag><instance: 15 digits><attempt>``, the call being in its key; the legacy one (pre-release
#: builds of 2.0) is ``<attempt>:<call>:<instance>:<pid>:<r|n>:<time>``. ``finished`` returns the record of
#: ``key`` (or, if given, of ``legacy_key``) if it says that ``attempt`` of ``call`` (or a later attempt)
#: ended: a compact record followed by a space and its remaining TTL in milliseconds (its end is told by
#: it). ``record`` writes one, unless the key already holds a later attempt of the same call.
FINISHED_LUA = """
local function ended_attempt(value, call)
    local done, done_call = string.match(value, '^(%d+):([^:]*):')
    if done then
        if done_call == call then return tonumber(done) end
        return nil
    end
    return tonumber(string.sub(value, 17))
end
local function finished_in(key, attempt, call)
    local value = redis.call('GET', key)
    if not value then return false end
    local done = ended_attempt(value, call)
    if not done or done < tonumber(attempt) then return false end
    if string.find(value, ':', 1, true) then return value end
    return value .. ' ' .. redis.call('PTTL', key)
end
local function finished(key, legacy_key, attempt, call)
    local value = finished_in(key, attempt, call)
    if not value and legacy_key then value = finished_in(legacy_key, attempt, call) end
    return value
end
local function record(key, value, ttl, attempt, call)
    local old = redis.call('GET', key)
    if old then
        local done = ended_attempt(old, call)
        if done and done > tonumber(attempt) then return end
    end
    redis.call('SET', key, value, 'PX', ttl)
end
"""

# KEYS[1] lock key
# KEYS[2] (running locks, optional) the finished record of this attempt's task id, and
# KEYS[3] (optional) its record in the other form (see ``FINISHED_LUA``)
# ARGV[1] value to write: the new owner's token (plus, for running locks, when it was taken)
# ARGV[2] time to live in milliseconds
# ARGV[3] a token whose lock this owner may take over, or "" for none
#         (a retry renewing its own queue lock, a deferred copy taking over
#         the lock its earlier pickup may have taken)
# ARGV[4] "exact" or "prefix": how ARGV[3] is matched
# ARGV[5] with KEYS[2]: the attempt (Celery's retries), ARGV[6] the call (see ``redelivery``)
# return  1 if the lock was free or taken over and now holds ARGV[1]; {record} (an array; see
#         ``finished``) if KEYS[2] or KEYS[3] says that this attempt already ended, and nothing was taken;
#         else the holder's value
ACQUIRE = Script(
    "acquire",
    _HOLDS
    + FINISHED_LUA
    + """
local key, record_key, legacy_key = KEYS[1], KEYS[2], KEYS[3]
local value, ttl, takeover, mode, attempt, call = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if record_key then
    local ended = finished(record_key, legacy_key, attempt, call)
    if ended then return {ended} end
end
if redis.call('SET', key, value, 'NX', 'PX', ttl) then
    return 1
end
local holder = redis.call('GET', key)
if takeover ~= '' and holds(holder, takeover, mode) then
    redis.call('SET', key, value, 'PX', ttl)
    return 1
end
return holder
""",
)

# KEYS[1] running lock key
# KEYS[2] the finished record of the execution's task id (in KEYS[1]'s slot)
# ARGV[1] owner token (matched as a prefix of the lock's value)
# ARGV[2] the record to write, ARGV[3] its time to live in milliseconds
# ARGV[4] the attempt that ended, ARGV[5] its call
# return  1 if the token held the lock and it is now deleted, else 0; the record is
#         written either way (the execution ended even where its lock was lost)
RELEASE_RUNNING = Script(
    "release_running",
    _HOLDS
    + FINISHED_LUA
    + """
local key, record_key = KEYS[1], KEYS[2]
local token, value, ttl, attempt, call = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
record(record_key, value, ttl, attempt, call)
if holds(redis.call('GET', key), token, 'prefix') then
    return redis.call('DEL', key)
end
return 0
""",
)

# KEYS[1] a finished record
# ARGV[1] the record to write, ARGV[2] its time to live in milliseconds
# ARGV[3] the attempt that ended, ARGV[4] its call
# return  1
RECORD_FINISHED = Script(
    "record_finished",
    FINISHED_LUA
    + """
local record_key = KEYS[1]
local value, ttl, attempt, call = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
record(record_key, value, ttl, attempt, call)
return 1
""",
)

# KEYS[1] running lock key
# ARGV[1] owner token (matched as a prefix of the lock's value)
# ARGV[2] time to live in milliseconds
# return  1 if the token holds the lock and its lease was extended, else 0
RENEW = Script(
    "renew",
    _HOLDS
    + """
local key = KEYS[1]
local token, ttl = ARGV[1], ARGV[2]
if holds(redis.call('GET', key), token, 'prefix') then
    return redis.call('PEXPIRE', key, ttl)
end
return 0
""",
)

# KEYS[1] lock key
# ARGV[1] token expected to hold the lock (matched as a prefix)
# ARGV[2] value to write
# ARGV[3] time to live in milliseconds
# return  1 if the lock held the expected token and now holds the new value, else 0
COMPARE_AND_SWAP = Script(
    "compare_and_swap",
    _HOLDS
    + """
local key = KEYS[1]
local expected, value, ttl = ARGV[1], ARGV[2], ARGV[3]
if holds(redis.call('GET', key), expected, 'prefix') then
    redis.call('SET', key, value, 'PX', ttl)
    return 1
end
return 0
""",
)

# KEYS[1] a waiting copy's entry
# return  its value, deleted; or nil if there is none
TAKE = Script(
    "take",
    """
local entry = KEYS[1]
local value = redis.call('GET', entry)
if value then
    redis.call('DEL', entry)
end
return value
""",
)
