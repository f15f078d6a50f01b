"""Every Lua script the library runs, and how it runs them.

Each script touches exactly one key, so every call can go to the Redis Cluster
node that owns that key; several calls go out together in one pipeline, one
network round trip. Scripts are sent by SHA1 (``EVALSHA``); after a
``SCRIPT FLUSH`` or a failover to a server that never saw them, the calls that
came back with ``NOSCRIPT`` are loaded and run again. Only those: a call that
ran must not run twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import redis
from redis.exceptions import NoScriptError, ResponseError

from .connection import is_cluster

Arg = Union[str, int, float, bytes]


@dataclass(frozen=True)
class Script:
    """A Lua script and its SHA1."""

    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode("utf-8")).hexdigest())


@dataclass(frozen=True)
class Call:
    """One script applied to one key."""

    script: Script
    key: str
    args: Sequence[Arg] = ()


# KEYS[1] lock key
# ARGV[1] owner token
# return  1 if the key held the token and was deleted, else 0
COMPARE_AND_DELETE = Script(
    "compare_and_delete",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
""",
)

# KEYS[1] lock key
# ARGV[1] owner token
# ARGV[2] time to live in milliseconds
# return  1 if the key was free or already held by the token (it is now the
#         token's, with a fresh TTL), else 0
ACQUIRE_OR_RENEW = Script(
    "acquire_or_renew",
    """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
return 0
""",
)

# KEYS[1] lock key
# ARGV[1] owner token
# ARGV[2] time to live in milliseconds
# return  1 if the lock was free and is now the token's, else the holder's token
ACQUIRE_OR_HOLDER = Script(
    "acquire_or_holder",
    """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return 1
end
return redis.call('GET', KEYS[1])
""",
)

# KEYS[1] lock key
# ARGV[1] token expected to hold the lock
# ARGV[2] new owner token
# ARGV[3] time to live in milliseconds
# return  1 if the lock held the expected token and now holds the new one, else 0
COMPARE_AND_SWAP = Script(
    "compare_and_swap",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
    return 1
end
return 0
""",
)

SCRIPTS = (COMPARE_AND_DELETE, ACQUIRE_OR_RENEW, ACQUIRE_OR_HOLDER, COMPARE_AND_SWAP)


def run(client: redis.Redis, calls: Sequence[Call]) -> list[Any]:
    """Run the calls in one round trip; return their replies in order.

    A call that Redis answers with an error (other than ``NOSCRIPT``) raises it.
    """
    if is_cluster(client):
        return _run_on_cluster(client, calls)
    if len(calls) == 1:
        return [_run_one(client, calls[0])]
    pipe = client.pipeline(transaction=False)
    for call in calls:
        pipe.execute_command("EVALSHA", call.script.sha, 1, call.key, *call.args)  # type: ignore[no-untyped-call]
    replies: list[Any] = pipe.execute(raise_on_error=False)
    missing = [index for index, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    for index in missing:
        replies[index] = _load_and_run(client, calls[index])
    for reply in replies:
        if isinstance(reply, ResponseError):
            raise reply
    return replies


def _run_one(client: redis.Redis, call: Call) -> Any:
    try:
        return client.execute_command(  # type: ignore[no-untyped-call]
            "EVALSHA", call.script.sha, 1, call.key, *call.args
        )
    except NoScriptError:
        return _load_and_run(client, call)


def _load_and_run(client: redis.Redis, call: Call) -> Any:
    client.script_load(call.script.source)
    return client.execute_command(  # type: ignore[no-untyped-call]
        "EVALSHA", call.script.sha, 1, call.key, *call.args
    )


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
            pipe.execute_command("EVALSHA", call.script.sha, 1, call.key, *call.args, target_nodes=node)
        replies = _send_once(pipe)
    for index, reply in enumerate(replies):
        call = calls[index]
        if isinstance(reply, (MovedError, AskError, TryAgainError)):
            replies[index] = reply = _evalsha_on_cluster(client, call)
        if isinstance(reply, NoScriptError):
            node = client.get_node_from_key(call.key)
            client.execute_command("SCRIPT LOAD", call.script.source, target_nodes=node)
            replies[index] = _evalsha_on_cluster(client, call)
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
        return client.execute_command("EVALSHA", call.script.sha, 1, call.key, *call.args)
    except ResponseError as exc:  # NOSCRIPT included
        return exc
