"""``running_limit``: the slots and the line of waiting calls of a limited key (see ``limits``)."""

from __future__ import annotations

import enum
from typing import NamedTuple

from . import CLOCK_LUA, Script
from .locks import FINISHED_LUA

# -- running_limit: slots and the line of waiting calls (see ``limits``) ------------
#
# A limited key has three keys, in one hash slot (``keys.limited_key``):
#   slots     a hash: S<owner token> -> "<expiry>:<expiry - since>", a running execution's slot
#             (since: when its pickup was sent, the worker's milliseconds; with the token it tells
#             that pickup sent again); R<call id> -> "<expiry>\x1f<when called>\x1f<message>", a slot
#             reserved for a waiting call handed over; L -> the limit last written (for operators).
#             Expiry is in the server's milliseconds (TIME): leases expire by one clock,
#             whatever the workers' clocks say. Only slots and reservations live here, so
#             reading them costs N, however long the line. Field names are one letter and the
#             slot's value two integers, the second small, so that a key with one slot held
#             stays a small listpack (about 200 bytes of MEMORY USAGE).
#             2.0.0 wrote s:<token> -> "<expiry>:<since, seconds>", r:<call id> and limit: the
#             scripts still read (count, renew, release, take over, clear) those fields, which a
#             process of that release may write during a rolling deploy, and write only the new.
#   waiters   a sorted set, the line: call ids scored by when they were called (microseconds,
#             the publisher's clock): a slot goes to the call made first.
#   messages  a hash: call id -> the waiting call's message, published at hand-over.
# A call id is "<task id>\x1f<attempt>"; an entry handed over is "<call id>\x1f<message>".
_SLOTS = CLOCK_LUA + r"""
-- A field's kind ('s' a slot held, 'r' a reserved one, nil otherwise) and its token or call id,
-- in either form (S<token> and R<call id>, or 2.0.0's s:<token> and r:<call id>).
local function field_kind(name)
    local first = string.sub(name, 1, 1)
    if #name > 1 and (first == 'S' or first == 'R') then return string.lower(first), string.sub(name, 2) end
    local two = string.sub(name, 1, 2)
    if two == 's:' or two == 'r:' then return first, string.sub(name, 3) end
    return nil, nil
end
-- When a slot held was taken (text), from its field's value in either form; nil for anything else.
local function taken(name, held)
    if string.sub(name, 1, 1) == 'S' then
        local expiry, span = string.match(held, '^(%d+):(-?%d+)$')
        if expiry then return tostring(tonumber(expiry) - tonumber(span)) end
    elseif string.sub(name, 1, 2) == 's:' then
        return string.match(held, '^%d+:(.*)$')
    end
    return nil
end
-- Drop expired slots and reservations (an unclaimed reservation's call goes back in line, at its
-- place); return the number of live slots and reservations, a slot holder's token, and the token
-- and field of a slot held by the same attempt (owner token prefix ``same``), if any.
local function purge(slots, line, messages, now, same)
    local fields = redis.call('HGETALL', slots)
    local live, holder, twin, twin_field = 0, '', '', ''
    for i = 1, #fields, 2 do
        local name, value = fields[i], fields[i + 1]
        local kind, id = field_kind(name)
        if kind then
            if tonumber(string.match(value, '^(%d+)')) <= now then
                redis.call('HDEL', slots, name)
                if kind == 'r' then
                    local called, message = string.match(value, '^%d+\31([^\31]*)\31(.*)$')
                    redis.call('ZADD', line, called, id)
                    redis.call('HSET', messages, id, message)
                end
            else
                live = live + 1
                if kind == 's' then
                    if holder == '' then holder = id end
                    if same ~= '' and string.sub(id, 1, #same) == same then twin, twin_field = id, name end
                end
            end
        end
    end
    return live, holder, twin, twin_field
end
local function advance(slots, line, messages, live, limit, now, reserve, own)
    local handed, reached = {}, false
    while live < limit do
        local head = redis.call('ZPOPMIN', line)
        if #head == 0 then break end
        local id, called = head[1], head[2]
        local message = redis.call('HGET', messages, id) or ''
        redis.call('HDEL', messages, id)
        live = live + 1
        if id == own then
            reached = true
        else
            redis.call('HSET', slots, 'R' .. id, (now + reserve) .. '\31' .. called .. '\31' .. message)
            handed[#handed + 1] = id .. '\31' .. message
        end
    end
    return live, reached, handed
end
-- A key with no slot held or reserved is deleted, and the line's message store once the line is
-- empty: nothing is left behind.
local function tidy(slots, line, messages, live)
    if live == 0 then redis.call('DEL', slots) end
    if redis.call('ZCARD', line) == 0 then redis.call('DEL', messages) end
end
"""

# KEYS[1] the key's slots, KEYS[2] its line of waiting calls, KEYS[3] their messages
# KEYS[4] (optional) the finished record of this attempt's task id, KEYS[5] (optional) its record
# in the other form (see ``FINISHED_LUA``)
# ARGV[1] owner token, ARGV[2] when the pickup was sent (milliseconds, an integer), ARGV[3] lease in milliseconds,
# ARGV[4] the limit, ARGV[5] the call id, ARGV[6] the owner token prefix of this attempt
# (``RunningOwner.attempt_prefix``), ARGV[7] "1" to join the line if no slot is free ("" : do
# not wait), ARGV[8] when the call was made (microseconds), ARGV[9] its message, ARGV[10] how
# long the line is kept (milliseconds), ARGV[11] how long a reservation is kept, ARGV[12] a
# token (or its prefix) whose slot this owner may take over ("" : none) -- only a slot of the
# same attempt (a token that begins with ARGV[6]) is ever taken over, ARGV[13] when that slot
# was taken ("" : whenever; a deferred copy names its own earlier pickup's moment, so that it
# never takes the slot of another copy in the same worker, which shares the token), ARGV[14]
# with KEYS[4]: the attempt, ARGV[15] its call (see ``redelivery``)
# (``SlotAcquireArgs`` below builds ARGV[1..13]; the script reads them into locals of those names.)
# return  {code, detail, entries handed over...}: code 1 a slot was taken; 2 this attempt
#         already ended (detail: the record); 3 the call waits in line (detail: its place,
#         from 1); 4 another delivery of the same attempt holds a slot (detail: its token);
#         5 no slot is free (detail: a holder's token); 6 a slot with this token, taken at
#         this same ARGV[2], is held (detail: the token): this very pickup's, if it is a try
#         sent again after a lost reply -- the caller knows, the script cannot: two pool
#         processes of one worker share a token, and may pick up two copies of one message
#         in the same millisecond. Nothing is written. The entries handed over are the
#         waiting calls that got a free slot reserved here: the caller publishes them.


class SlotCode(enum.IntEnum):
    """SLOT_ACQUIRE's reply code."""

    TAKEN = 1
    FINISHED = 2
    IN_LINE = 3
    SAME_ATTEMPT = 4
    FULL = 5
    SAME_PICKUP = 6


class SlotAcquireArgs(NamedTuple):
    """SLOT_ACQUIRE's ARGV[1..13], in order (ARGV[14], ARGV[15] follow with KEYS[4]: the attempt, its call)."""

    token: str
    since: str
    lease_ms: int
    limit: int
    call_id: str
    attempt_prefix: str
    join: str
    called_at: int
    message: str
    line_ttl_ms: int
    reserve_ms: int
    takeover: str
    takeover_since: str


SLOT_ACQUIRE = Script(
    "slot_acquire",
    FINISHED_LUA
    + _SLOTS
    + """
local slots, line, messages, record_key, legacy_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local token, since, lease, limit, call_id, same = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]
local join, called_at, message, line_ttl = ARGV[7], ARGV[8], ARGV[9], tonumber(ARGV[10])
local reserve, takeover, takeover_since = tonumber(ARGV[11]), ARGV[12], ARGV[13]
local attempt, call = ARGV[14], ARGV[15]
if record_key then
    local ended = finished(record_key, legacy_key, attempt, call)
    if ended then return {2, ended} end
end
local now = now_ms()
local function take(handed, replaced)
    if replaced ~= '' then redis.call('HDEL', slots, replaced) end
    local expiry = now + lease
    redis.call('HSET', slots, 'S' .. token, expiry .. ':' .. (expiry - tonumber(since)), 'L', limit)
    redis.call('HDEL', slots, 'limit')
    keep_at_least(slots, lease)
    if redis.call('ZCARD', line) == 0 then redis.call('DEL', messages) end
    return {1, '', unpack(handed)}
end
local live, holder, twin, twin_field = purge(slots, line, messages, now, same)
if twin == token and twin_field == 'S' .. token then
    local expiry, held = string.match(redis.call('HGET', slots, twin_field), '^(%d+):(-?%d+)$')
    if tonumber(expiry) - tonumber(held) == tonumber(since) then return {6, twin} end
end
if redis.call('HDEL', slots, 'R' .. call_id, 'r:' .. call_id) > 0 then return take({}, '') end
if takeover ~= '' and twin ~= '' and string.sub(twin, 1, #takeover) == takeover and
        (takeover_since == '' or taken(twin_field, redis.call('HGET', slots, twin_field)) == takeover_since) then
    return take({}, twin_field)
end
if twin ~= '' then return {4, twin} end
local waiting = redis.call('ZSCORE', line, call_id) ~= false
local reached, handed
live, reached, handed = advance(slots, line, messages, live, tonumber(limit), now, reserve,
                                waiting and call_id or '')
if reached then return take(handed, '') end
if not waiting and live < tonumber(limit) then return take(handed, '') end
if not waiting and join == '' then return {5, holder, unpack(handed)} end
if not waiting then
    redis.call('ZADD', line, called_at, call_id)
    redis.call('HSET', messages, call_id, message)
    redis.call('HSET', slots, 'L', limit)
    redis.call('HDEL', slots, 'limit')
    keep_at_least(slots, line_ttl)
end
keep_at_least(line, line_ttl)
keep_at_least(messages, line_ttl)
return {3, redis.call('ZRANK', line, call_id) + 1, unpack(handed)}
""",
)

# KEYS[1] the key's slots, KEYS[2] its line of waiting calls, KEYS[3] their messages
# KEYS[4] (optional) the finished record of the execution's task id
# ARGV[1] owner token, ARGV[2] the limit, ARGV[3] how long a reservation is kept (milliseconds),
# ARGV[4] when the slot was taken ("" : whenever; a pickup whose reply was lost frees only the
# slot it may have taken, never that of another copy in the same worker, which shares the token),
# ARGV[5..8] with KEYS[4]: the record to write, its time to live, the attempt, its call
# return  {1 if the token held a slot and it is now free else 0, entries handed over...}
SLOT_RELEASE = Script(
    "slot_release",
    FINISHED_LUA
    + _SLOTS
    + """
local slots, line, messages, record_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local token, limit, reserve, since = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local value, ttl, attempt, call = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
if record_key then record(record_key, value, ttl, attempt, call) end
local now = now_ms()
local released = 0
if since == '' then
    released = math.min(1, redis.call('HDEL', slots, 'S' .. token, 's:' .. token))
else
    local held = redis.call('HGET', slots, 'S' .. token)
    if held and taken('S' .. token, held) == since then released = redis.call('HDEL', slots, 'S' .. token) end
end
local live = purge(slots, line, messages, now, '')
local reached, handed
live, reached, handed = advance(slots, line, messages, live, limit, now, reserve, '')
tidy(slots, line, messages, live)
return {released, unpack(handed)}
""",
)

# KEYS[1] the key's slots
# ARGV[1] owner token, ARGV[2] lease in milliseconds
# return  1 if the token holds a slot and its lease was extended, else 0
SLOT_RENEW = Script(
    "slot_renew",
    _SLOTS
    + """
local slots = KEYS[1]
local token, lease = ARGV[1], tonumber(ARGV[2])
local expiry = now_ms() + lease
local value = redis.call('HGET', slots, 'S' .. token)
if value then
    local before, held = string.match(value, '^(%d+):(-?%d+)$')
    local since = tonumber(before) - tonumber(held)
    redis.call('HSET', slots, 'S' .. token, expiry .. ':' .. (expiry - since))
else
    -- A slot its pickup took in 2.0.0's form, during a rolling deploy: renewed in that form.
    value = redis.call('HGET', slots, 's:' .. token)
    if not value then return 0 end
    redis.call('HSET', slots, 's:' .. token, expiry .. string.match(value, '^%d+(:.*)$'))
end
keep_at_least(slots, lease)
return 1
""",
)

# KEYS[1] the key's slots
# ARGV[1] the field to delete (``S<token>``, ``R<call id>``, or 2.0.0's ``s:<token>``, ``r:<call id>``),
# ARGV[2] the value listed: a reservation must still hold it exactly; a slot held, the same taking
#         (its token, in the field's name, and when it was taken: a heartbeat rewrites the expiry)
# return  1 if the field held the value and is now deleted, else 0 (the line moves on at the key's next
#         pickup or release, or when a waiting call's safety copy comes back)
SLOT_CLEAR = Script(
    "slot_clear",
    _SLOTS
    + """
local slots = KEYS[1]
local field, value = ARGV[1], ARGV[2]
local current = redis.call('HGET', slots, field)
if not current then return 0 end
if current ~= value then
    local since = taken(field, current)
    if since == nil or since ~= taken(field, value) then return 0 end
end
redis.call('HDEL', slots, field)
for _, name in ipairs(redis.call('HKEYS', slots)) do
    if field_kind(name) then return 1 end
end
redis.call('DEL', slots)
return 1
""",
)

# KEYS[1] the key's slots, KEYS[2] its line of waiting calls, KEYS[3] their messages
# ARGV[1] a call id whose place in line (or reservation) goes: the call was revoked
# ARGV[2] the limit, ARGV[3] how long a reservation is kept (milliseconds)
# return  {1 if the call was in line or held a reservation else 0, entries handed over...}
SLOT_FORGET = Script(
    "slot_forget",
    _SLOTS
    + """
local slots, line, messages = KEYS[1], KEYS[2], KEYS[3]
local call_id, limit, reserve = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local forgotten = redis.call('HDEL', slots, 'R' .. call_id, 'r:' .. call_id) + redis.call('ZREM', line, call_id)
redis.call('HDEL', messages, call_id)
local live = purge(slots, line, messages, now, '')
local reached, handed
live, reached, handed = advance(slots, line, messages, live, limit, now, reserve, '')
tidy(slots, line, messages, live)
return {forgotten > 0 and 1 or 0, unpack(handed)}
""",
)
