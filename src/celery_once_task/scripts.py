"""Every Lua script the library runs, and how it runs them.

The one lock operation that Redis has as a command is sent as that command:
taking a free lock without a takeover (``ACQUIRE`` with no ``ARGV[3]``) is
``SET key value PX ttl NX GET`` (see ``acquire_free``), which Redis 7.0+ and
Valkey run natively, a few microseconds cheaper than a script on the server
and shorter to send.

Each call's keys lie in one Redis Cluster hash slot (most scripts touch one
key; the running lock's acquisition and release also touch its finished
record, which ``keys.finished_key`` puts in the lock's slot), so every call
can go to the node that owns them; several calls go out together in one
pipeline, one network round trip. Scripts are sent by SHA1 (``EVALSHA``); after a
``SCRIPT FLUSH`` or a failover to a server that never saw them, the calls that
came back with ``NOSCRIPT`` are loaded and run again. Only those: a call that
ran must not run twice.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional

import redis
from redis import exceptions
from redis.exceptions import NoScriptError, ResponseError

from .connection import is_cluster
from .wire import Arg, pack_args, send_packed, set_nx_get

logger = logging.getLogger("celery_once_task")


@dataclass(frozen=True)
class Script:
    """A Lua script and its SHA1."""

    name: str
    source: str
    sha: str = field(init=False)
    #: ``EVALSHA sha numkeys`` packed, with the array's length, by (number of KEYS, number of ARGV).
    _heads: dict[tuple[int, int], bytes] = field(init=False, default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode("utf-8")).hexdigest())

    def head(self, keys: int, argc: int) -> bytes:
        """The start of an ``EVALSHA`` of this script on ``keys`` keys with ``argc`` arguments, packed."""
        head = self._heads.get((keys, argc))
        if head is None:
            numkeys = b"%d" % keys
            head = self._heads[(keys, argc)] = b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%b\r\n$%d\r\n%b\r\n" % (
                keys + argc + 3, self.sha.encode("ascii"), len(numkeys), numkeys)
        return head


class Call(NamedTuple):
    """One script applied to a key (a tuple: made for every lock operation).

    ``more_keys``: further keys the script touches, in ``key``'s hash slot.
    """

    script: Script
    key: str
    args: Sequence[Arg] = ()
    more_keys: Sequence[str] = ()
    #: What to run instead where the server refuses ``more_keys`` (an ACL user
    #: without their key pattern): the operation without them.
    fallback: Optional[Call] = None

    def evalsha(self) -> tuple[Any, ...]:
        """The command's arguments for redis-py's ``execute_command``."""
        return ("EVALSHA", self.script.sha, 1 + len(self.more_keys), self.key, *self.more_keys, *self.args)


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
if holds(redis.call('GET', KEYS[1]), ARGV[1], ARGV[2]) then
    return redis.call('DEL', KEYS[1])
end
return 0
""",
)

#: Lua shared by the scripts below: finished records (see ``redelivery``), valued
#: ``<attempt>:<call>:<instance>:<pid>:<r|n>:<time>``. ``finished`` returns the record if it says that
#: ``attempt`` of ``call`` (or a later attempt) ended; ``record`` writes one, unless
#: the key already holds a later attempt of the same call.
_FINISHED = """
local function parse_record(value)
    return string.match(value, '^(%d+):([^:]*):')
end
local function finished(key, attempt, call)
    local value = redis.call('GET', key)
    if not value then return false end
    local done, done_call = parse_record(value)
    if done_call == call and tonumber(done) >= tonumber(attempt) then return value end
    return false
end
local function record(key, value, ttl, attempt, call)
    local old = redis.call('GET', key)
    if old then
        local done, done_call = parse_record(old)
        if done_call == call and tonumber(done) > tonumber(attempt) then return end
    end
    redis.call('SET', key, value, 'PX', ttl)
end
"""

# KEYS[1] lock key
# KEYS[2] (running locks, optional) the finished record of this attempt's task id
# ARGV[1] value to write: the new owner's token (plus, for running locks, when it was taken)
# ARGV[2] time to live in milliseconds
# ARGV[3] a token whose lock this owner may take over, or "" for none
#         (a retry renewing its own queue lock, a deferred copy taking over
#         the lock its earlier pickup may have taken)
# ARGV[4] "exact" or "prefix": how ARGV[3] is matched
# ARGV[5] with KEYS[2]: the attempt (Celery's retries), ARGV[6] the call (see ``redelivery``)
# return  1 if the lock was free or taken over and now holds ARGV[1]; {record} (an array)
#         if KEYS[2] says that this attempt already ended, and nothing was taken;
#         else the holder's value
ACQUIRE = Script(
    "acquire",
    _HOLDS
    + _FINISHED
    + """
if KEYS[2] then
    local ended = finished(KEYS[2], ARGV[5], ARGV[6])
    if ended then return {ended} end
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return 1
end
local holder = redis.call('GET', KEYS[1])
if ARGV[3] ~= '' and holds(holder, ARGV[3], ARGV[4]) then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
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
    + _FINISHED
    + """
record(KEYS[2], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
if holds(redis.call('GET', KEYS[1]), ARGV[1], 'prefix') then
    return redis.call('DEL', KEYS[1])
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
    _FINISHED
    + """
record(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
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
if holds(redis.call('GET', KEYS[1]), ARGV[1], 'prefix') then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
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
if holds(redis.call('GET', KEYS[1]), ARGV[1], 'prefix') then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
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
local value = redis.call('GET', KEYS[1])
if value then
    redis.call('DEL', KEYS[1])
end
return value
""",
)

# -- running_limit: slots and the line of waiting calls (see ``limits``) ------------
#
# A limited key has three keys, in one hash slot (``keys.limited_key``):
#   slots     a hash: s:<owner token> -> "<expiry>:<since>", a running execution's slot;
#             r:<call id> -> "<expiry>\x1f<when called>\x1f<message>", a slot reserved for a
#             waiting call handed over; limit -> the limit last written (for operators).
#             Expiry is in the server's milliseconds (TIME): leases expire by one clock,
#             whatever the workers' clocks say. Only slots and reservations live here, so
#             reading them costs N, however long the line.
#   waiters   a sorted set, the line: call ids scored by when they were called (microseconds,
#             the publisher's clock): a slot goes to the call made first.
#   messages  a hash: call id -> the waiting call's message, published at hand-over.
# A call id is "<task id>\x1f<attempt>"; an entry handed over is "<call id>\x1f<message>".
_SLOTS = r"""
local function now_ms()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function keep_at_least(key, ms)
    if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
-- Drop expired slots and reservations (an unclaimed reservation's call goes back in line, at its
-- place); return the number of live slots and reservations, a slot holder's token, and the token
-- of a slot held by the same attempt (owner token prefix ``same``), if any.
local function purge(slots, line, messages, now, same)
    local fields = redis.call('HGETALL', slots)
    local live, holder, twin = 0, '', ''
    for i = 1, #fields, 2 do
        local name, value = fields[i], fields[i + 1]
        local kind = string.sub(name, 1, 2)
        if kind == 's:' or kind == 'r:' then
            if tonumber(string.match(value, '^(%d+)')) <= now then
                redis.call('HDEL', slots, name)
                if kind == 'r:' then
                    local called, message = string.match(value, '^%d+\31([^\31]*)\31(.*)$')
                    redis.call('ZADD', line, called, string.sub(name, 3))
                    redis.call('HSET', messages, string.sub(name, 3), message)
                end
            else
                live = live + 1
                if kind == 's:' then
                    local token = string.sub(name, 3)
                    if holder == '' then holder = token end
                    if same ~= '' and string.sub(token, 1, #same) == same then twin = token end
                end
            end
        end
    end
    return live, holder, twin
end
-- Hand the free slots to the calls made first; ``own`` (the caller's call id) is not handed over
-- but taken in the caller's name: return the slots now used, whether ``own`` got one, and the
-- entries handed over.
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
            redis.call('HSET', slots, 'r:' .. id, (now + reserve) .. '\31' .. called .. '\31' .. message)
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
# KEYS[4] (optional) the finished record of this attempt's task id
# ARGV[1] owner token, ARGV[2] when the lock is taken (text), ARGV[3] lease in milliseconds,
# ARGV[4] the limit, ARGV[5] the call id, ARGV[6] the owner token prefix of this attempt
# (``{"task_id":...,"retries":N,``), ARGV[7] "1" to join the line if no slot is free ("" : do
# not wait), ARGV[8] when the call was made (microseconds), ARGV[9] its message, ARGV[10] how
# long the line is kept (milliseconds), ARGV[11] how long a reservation is kept, ARGV[12] a
# token whose slot this owner may take over ("" : none), ARGV[13] with KEYS[4]: the attempt,
# ARGV[14] its call (see ``redelivery``)
# return  {code, detail, entries handed over...}: code 1 a slot was taken; 2 this attempt
#         already ended (detail: the record); 3 the call waits in line (detail: its place,
#         from 1); 4 the same attempt holds a slot (detail: its token); 5 no slot is free
#         (detail: a holder's token). The entries handed over are the waiting calls that
#         got a free slot reserved here: the caller publishes them.
SLOT_ACQUIRE = Script(
    "slot_acquire",
    _FINISHED
    + _SLOTS
    + """
if KEYS[4] then
    local ended = finished(KEYS[4], ARGV[13], ARGV[14])
    if ended then return {2, ended} end
end
local slots, line, messages, limit = KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[4])
local now, lease, line_ttl = now_ms(), tonumber(ARGV[3]), tonumber(ARGV[10])
local function take(handed, replaced)
    if replaced ~= '' then redis.call('HDEL', slots, 's:' .. replaced) end
    redis.call('HSET', slots, 's:' .. ARGV[1], (now + lease) .. ':' .. ARGV[2], 'limit', ARGV[4])
    keep_at_least(slots, lease)
    if redis.call('ZCARD', line) == 0 then redis.call('DEL', messages) end
    return {1, '', unpack(handed)}
end
local live, holder, twin = purge(slots, line, messages, now, ARGV[6])
local reserved = 'r:' .. ARGV[5]
if redis.call('HEXISTS', slots, reserved) == 1 then
    redis.call('HDEL', slots, reserved)
    return take({}, '')
end
if ARGV[12] ~= '' and twin ~= '' and string.sub(twin, 1, #ARGV[12]) == ARGV[12] then
    return take({}, twin)
end
if twin ~= '' then return {4, twin} end
local waiting = redis.call('ZSCORE', line, ARGV[5]) ~= false
local reached, handed
live, reached, handed = advance(slots, line, messages, live, limit, now, tonumber(ARGV[11]),
                                waiting and ARGV[5] or '')
if reached then return take(handed, '') end
if not waiting and live < limit then return take(handed, '') end
if not waiting and ARGV[7] == '' then return {5, holder, unpack(handed)} end
if not waiting then
    redis.call('ZADD', line, ARGV[8], ARGV[5])
    redis.call('HSET', messages, ARGV[5], ARGV[9])
    redis.call('HSET', slots, 'limit', ARGV[4])
    keep_at_least(slots, line_ttl)
end
keep_at_least(line, line_ttl)
keep_at_least(messages, line_ttl)
return {3, redis.call('ZRANK', line, ARGV[5]) + 1, unpack(handed)}
""",
)

# KEYS[1] the key's slots, KEYS[2] its line of waiting calls, KEYS[3] their messages
# KEYS[4] (optional) the finished record of the execution's task id
# ARGV[1] owner token, ARGV[2] the limit, ARGV[3] how long a reservation is kept (milliseconds),
# ARGV[4..7] with KEYS[4]: the record to write, its time to live, the attempt, its call
# return  {1 if the token held a slot and it is now free else 0, entries handed over...}
SLOT_RELEASE = Script(
    "slot_release",
    _FINISHED
    + _SLOTS
    + """
if KEYS[4] then record(KEYS[4], ARGV[4], ARGV[5], ARGV[6], ARGV[7]) end
local slots, line, messages, now = KEYS[1], KEYS[2], KEYS[3], now_ms()
local released = redis.call('HDEL', slots, 's:' .. ARGV[1])
local live = purge(slots, line, messages, now, '')
local reached, handed
live, reached, handed = advance(slots, line, messages, live, tonumber(ARGV[2]), now, tonumber(ARGV[3]), '')
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
local name = 's:' .. ARGV[1]
local value = redis.call('HGET', KEYS[1], name)
if not value then return 0 end
local lease = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], name, (now_ms() + lease) .. string.match(value, '^%d+(:.*)$'))
keep_at_least(KEYS[1], lease)
return 1
""",
)

# KEYS[1] the key's slots
# ARGV[1] the field to delete (``s:<token>``, ``r:<call id>``), ARGV[2] the exact value it must still hold
# return  1 if the field held the value and is now deleted, else 0 (the line moves on at the key's next
#         pickup or release, or when a waiting call's safety copy comes back)
SLOT_CLEAR = Script(
    "slot_clear",
    """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
for _, name in ipairs(redis.call('HKEYS', KEYS[1])) do
    local kind = string.sub(name, 1, 2)
    if kind == 's:' or kind == 'r:' then return 1 end
end
redis.call('DEL', KEYS[1])
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
local slots, line, messages, now = KEYS[1], KEYS[2], KEYS[3], now_ms()
local forgotten = redis.call('HDEL', slots, 'r:' .. ARGV[1]) + redis.call('ZREM', line, ARGV[1])
redis.call('HDEL', messages, ARGV[1])
local live = purge(slots, line, messages, now, '')
local reached, handed
live, reached, handed = advance(slots, line, messages, live, tonumber(ARGV[2]), now, tonumber(ARGV[3]), '')
tidy(slots, line, messages, live)
return {forgotten > 0 and 1 or 0, unpack(handed)}
""",
)

SCRIPTS = (COMPARE_AND_DELETE, ACQUIRE, RELEASE_RUNNING, RECORD_FINISHED, RENEW, COMPARE_AND_SWAP, TAKE,
           SLOT_ACQUIRE, SLOT_RELEASE, SLOT_RENEW, SLOT_CLEAR, SLOT_FORGET)


def run(client: redis.Redis, calls: Sequence[Call]) -> list[Any]:
    """Run the calls in one round trip; return their replies in order.

    A call that Redis answers with an error (other than ``NOSCRIPT``, and
    ``NOPERM`` where the call has a fallback) raises it.
    """
    if is_cluster(client):
        return _run_on_cluster(client, calls)
    replies = send_packed(client, lambda encoder: _pack_calls(encoder, calls), len(calls))
    for index, reply in enumerate(replies):
        if isinstance(reply, NoScriptError):
            replies[index] = reply = _load_and_run(client, calls[index])
        if isinstance(reply, ResponseError):
            replies[index] = _instead(client, calls[index], reply)
    return replies


def _refused(error: ResponseError) -> bool:
    """Whether the server refused a command by its ACL (redis-py reads NOPERM as NoPermissionError, from 4.1)."""
    refused = getattr(exceptions, "NoPermissionError", None)
    return (refused is not None and isinstance(error, refused)) or str(error).startswith("NOPERM")


#: ``id()`` of the clients whose server refused a call's ``more_keys``: callers leave them out from then on.
REFUSED_MORE_KEYS: set[int] = set()


def _instead(client: Any, call: Call, error: ResponseError) -> Any:
    """The reply of ``call``'s fallback where the server refused its extra keys; else raise ``error``."""
    if call.fallback is None or not _refused(error):
        raise error
    if id(client) not in REFUSED_MORE_KEYS:
        REFUSED_MORE_KEYS.add(id(client))
        logger.warning(
            "lock operation refused: the lock store's user may not touch %s (%s); finished executions are "
            "not recorded, so a redelivered copy of a finished task can run again: add the key pattern "
            "~once_task_done:* to the user's ACL rules", call.more_keys[0], error,
        )
    return run(client, [call.fallback])[0]


def _pack_calls(encoder: Any, calls: Sequence[Call]) -> bytes:
    """``EVALSHA sha numkeys *keys *args`` of each call, packed: the script's part is packed once per shape."""
    return b"".join([
        call.script.head(1 + len(call.more_keys), len(call.args))
        + pack_args(encoder, (call.key, *call.more_keys, *call.args))
        for call in calls
    ])


#: ``id()`` of the clients whose server refused ``SET ... NX GET`` (Redis 6.2): they get ACQUIRE.
#: By id, a set lookup on every call; an id reused by a later client only costs it the script.
_REFUSE_NX_GET: set[int] = set()


def acquire_free(client: Any, key: str, value: str, ttl_ms: int) -> Any:
    """``ACQUIRE`` with no takeover: 1 if ``key`` was free and now holds ``value``, else the holder's value.

    Sent as ``SET key value PX ttl NX GET``, which answers nil where it set
    the key and the holder's value where it did not: the same outcome as the
    script, and as safe to send again (a second try finds ``value``). Redis
    6.2 refuses ``NX`` with ``GET`` as a syntax error, without running
    anything; that client is given the script from then on.
    """
    if id(client) not in _REFUSE_NX_GET:
        if is_cluster(client):
            try:
                reply = client.execute_command("SET", key, value, "PX", ttl_ms, "NX", "GET", get=True)
            except ResponseError as exc:
                reply = exc
        else:
            reply = set_nx_get(client, key, value, ttl_ms)
        if not isinstance(reply, ResponseError):
            return 1 if reply is None else reply
        if "syntax error" not in str(reply).lower():
            raise reply
        _REFUSE_NX_GET.add(id(client))
    return run(client, [Call(ACQUIRE, key, (value, ttl_ms, "", "exact"))])[0]


def run_in(pipe: Any, client: redis.Redis, calls: Sequence[Call]) -> list[Any]:
    """Run the calls after the commands already queued in ``pipe``, in one round trip.

    Returns the calls' replies; an error reply to any command raises it.
    """
    queued = len(pipe)
    for call in calls:
        pipe.execute_command(*call.evalsha())
    replies: list[Any] = pipe.execute(raise_on_error=False)
    for reply in replies[:queued]:
        if isinstance(reply, Exception):
            raise reply
    replies = replies[queued:]
    missing = [index for index, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    for index in missing:
        replies[index] = _load_and_run(client, calls[index])
    for reply in replies:
        if isinstance(reply, ResponseError):
            raise reply
    return replies


def _load_and_run(client: redis.Redis, call: Call) -> Any:
    client.script_load(call.script.source)
    return client.execute_command(*call.evalsha())  # type: ignore[no-untyped-call]


# -- Redis Cluster ----------------------------------------------------------------
# A single call goes straight to its node through the cluster client, which
# follows MOVED/ASK and has no retries of its own (see ``connection``). Several
# calls go out in a cluster pipeline: the calls of one node together, all
# nodes in parallel, each call's node named from the client's slot map.
# RedisCluster.pipeline() has no evalsha helper, so the command is spelled out.
#
# The pipeline is sent without redis-py's redirections pass, because that
# pass also sends again, one by one, the calls whose reply was lost (a
# connection error or a timeout): such a call may have run, and only the
# library can decide what to do. Here a lost reply raises; a call that was
# redirected (MOVED, ASK) or told to try again (TRYAGAIN) never ran, so it is
# sent again through the cluster client, which follows redirections; a node
# that answers NOSCRIPT gets the script loaded on it alone, and only the calls
# it refused are run again.


def _run_on_cluster(client: Any, calls: Sequence[Call]) -> list[Any]:
    from redis.exceptions import AskError, MovedError, TryAgainError

    if len(calls) == 1:
        replies = [_evalsha_on_cluster(client, calls[0])]
    else:
        pipe = client.pipeline()
        for call in calls:
            # The node named, from the client's slot map: left to find it, redis-py 6+
            # asks a server (COMMAND GETKEYS) for every EVALSHA in a pipeline.
            node = client.get_node_from_key(call.key)
            pipe.execute_command(*call.evalsha(), target_nodes=node)
        replies = _send_once(pipe)
    for index, reply in enumerate(replies):
        call = calls[index]
        if isinstance(reply, (MovedError, AskError, TryAgainError)):
            replies[index] = reply = _evalsha_on_cluster(client, call)
        if isinstance(reply, NoScriptError):
            node = client.get_node_from_key(call.key)
            client.execute_command("SCRIPT LOAD", call.script.source, target_nodes=node)
            replies[index] = reply = _evalsha_on_cluster(client, call)
        if isinstance(reply, ResponseError):
            replies[index] = _instead(client, call, reply)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _send_once(pipe: Any) -> list[Any]:
    """The cluster pipeline's replies, errors in place, with no call sent twice."""
    # redis-py 6+ keeps the queued commands in an execution strategy, 4.2-5.x on the pipeline.
    strategy = getattr(pipe, "_execution_strategy", None)
    stack = strategy.command_queue if strategy is not None else pipe.command_stack
    try:
        return list(pipe.send_cluster_commands(stack, raise_on_error=False, allow_redirections=False))
    finally:
        pipe.reset()


def _evalsha_on_cluster(client: Any, call: Call) -> Any:
    try:
        return client.execute_command(*call.evalsha())
    except ResponseError as exc:  # NOSCRIPT included
        return exc
