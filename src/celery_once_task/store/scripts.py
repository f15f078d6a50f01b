"""How the library runs its Lua scripts (``lua``): in one round trip, by SHA1, on a Cluster too.

The one lock operation that Redis has as a command is sent as that command:
taking a free lock without a takeover (``ACQUIRE`` with no ``ARGV[3]``) is
``SET key value PX ttl NX GET`` (see ``acquire_free``), which Redis 7.0+ and
Valkey run natively, a few microseconds cheaper than a script on the server
and shorter to send.

Each call's keys lie in one Redis Cluster hash slot (most scripts touch one
key; the running lock's acquisition and release also touch its finished
record, which ``record_keys.finished_key`` puts in the lock's slot), so every call
can go to the node that owns them; several calls go out together in one
pipeline, one network round trip. Scripts are sent by SHA1 (``EVALSHA``); after a
``SCRIPT FLUSH`` or a failover to a server that never saw them, the calls that
came back with ``NOSCRIPT`` are loaded and run again. Only those: a call that
ran must not run twice.

What goes through redis-py's commands and pipelines (a Redis Cluster's
calls, a script loaded again) runs ``telemetry.quietly`` while telemetry may
record: the library's own span covers it, and a Redis instrumentor would
count it twice.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import Any, NamedTuple, Optional

import redis
from redis import exceptions
from redis.exceptions import NoScriptError, ResponseError

from .. import telemetry
from ..internals import cluster_pipeline_queue
from .connection import is_cluster
from .lua import Script
from .lua.bursts import BURST_CALL, BURST_FORGET, BURST_TAKE
from .lua.calls import ARGUMENTS_FORGET, ARGUMENTS_TAKE, ARGUMENTS_UNDO, CALL_ACQUIRE, QUEUE_LEASE
from .lua.locks import ACQUIRE, COMPARE_AND_DELETE, COMPARE_AND_SWAP, RECORD_FINISHED, RELEASE_RUNNING, RENEW, TAKE
from .lua.parked import PARK, PARKED_CLAIM, PARKED_FORGET, PARKED_RESCUE
from .lua.slots import SLOT_ACQUIRE, SLOT_CLEAR, SLOT_FORGET, SLOT_RELEASE, SLOT_RENEW
from .lua.throttles import THROTTLE_LOST, THROTTLE_TAKE
from .wire import Arg, pack_args, send_packed, set_nx_get

__all__ = [
    "ACQUIRE", "ARGUMENTS_FORGET", "ARGUMENTS_TAKE", "ARGUMENTS_UNDO", "BURST_CALL", "BURST_FORGET", "BURST_TAKE",
    "CALL_ACQUIRE", "COMPARE_AND_DELETE", "COMPARE_AND_SWAP", "PARK", "PARKED_CLAIM", "PARKED_FORGET",
    "PARKED_RESCUE", "QUEUE_LEASE", "RECORD_FINISHED", "RELEASE_RUNNING", "RENEW", "SCRIPTS", "SLOT_ACQUIRE",
    "SLOT_CLEAR", "SLOT_FORGET", "SLOT_RELEASE", "SLOT_RENEW", "TAKE", "THROTTLE_LOST", "THROTTLE_TAKE", "Call",
    "Script", "acquire_free", "forget_refusals", "refused_nx_get", "refuses_more_keys", "run", "run_in",
]

logger = logging.getLogger("celery_once_task")


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


SCRIPTS = (COMPARE_AND_DELETE, ACQUIRE, RELEASE_RUNNING, RECORD_FINISHED, RENEW, COMPARE_AND_SWAP, TAKE,
           SLOT_ACQUIRE, SLOT_RELEASE, SLOT_RENEW, SLOT_CLEAR, SLOT_FORGET, BURST_CALL, BURST_TAKE, BURST_FORGET,
           CALL_ACQUIRE, QUEUE_LEASE, ARGUMENTS_TAKE, ARGUMENTS_FORGET, ARGUMENTS_UNDO, THROTTLE_TAKE, PARK,
           PARKED_CLAIM, PARKED_RESCUE, PARKED_FORGET, THROTTLE_LOST)


def run(client: redis.Redis, calls: Sequence[Call]) -> list[Any]:
    """Run the calls in one round trip; return their replies in order.

    A call that Redis answers with an error (other than ``NOSCRIPT``, and
    ``NOPERM`` where the call has a fallback) raises it.
    """
    if is_cluster(client):
        return telemetry.quietly(_run_on_cluster, client, calls) if telemetry.active else _run_on_cluster(client, calls)
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


# What a client's server refused, remembered per client object: held weakly
# (a client's record goes with it) and by the object, which redis-py's
# clients hash by identity, so a later client that is given a dead one's
# ``id()`` starts with a clean record. A WeakSet lookup costs about as much as
# a lookup by id.

#: The clients whose server refused a call's ``more_keys``: callers leave them out from then on.
_REFUSED_MORE_KEYS: weakref.WeakSet[Any] = weakref.WeakSet()


def refuses_more_keys(client: Any) -> bool:
    """Whether ``client``'s server refused a call's ``more_keys`` (its ACL user lacks their key pattern).

    Callers leave the extra keys out for that client from then on.
    """
    return client in _REFUSED_MORE_KEYS


def forget_refusals(client: Any) -> None:
    """Forget what ``client``'s server refused (extra keys, ``SET ... NX GET``): it is tried again.

    For a server whose ACL rules or release changed under a long-lived client, and for tests.
    """
    _REFUSED_MORE_KEYS.discard(client)
    _REFUSES_NX_GET.discard(client)


def _instead(client: Any, call: Call, error: ResponseError) -> Any:
    """The reply of ``call``'s fallback where the server refused its extra keys; else raise ``error``."""
    if call.fallback is None or not _refused(error):
        raise error
    if client not in _REFUSED_MORE_KEYS:
        _REFUSED_MORE_KEYS.add(client)
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


#: The clients whose server refused ``SET ... NX GET`` (Redis 6.2): they get ACQUIRE.
_REFUSES_NX_GET: weakref.WeakSet[Any] = weakref.WeakSet()


def refused_nx_get(client: Any) -> None:
    """Remember that ``client``'s server refused ``SET ... NX GET``: ``acquire_free`` sends it the script.

    ``acquire_free`` calls it on the server's syntax error; a test calls it
    for a server it cannot have (and ``forget_refusals`` after).
    """
    _REFUSES_NX_GET.add(client)


def acquire_free(client: Any, key: str, value: str, ttl_ms: int) -> Any:
    """``ACQUIRE`` with no takeover: 1 if ``key`` was free and now holds ``value``, else the holder's value.

    Sent as ``SET key value PX ttl NX GET``, which answers nil where it set
    the key and the holder's value where it did not: the same outcome as the
    script, and as safe to send again (a second try finds ``value``). Redis
    6.2 refuses ``NX`` with ``GET`` as a syntax error, without running
    anything; that client is given the script from then on.
    """
    if client not in _REFUSES_NX_GET:
        if is_cluster(client):
            reply = telemetry.quietly(_set_nx_get_on_cluster, client, key, value, ttl_ms) if telemetry.active else (
                _set_nx_get_on_cluster(client, key, value, ttl_ms))
        else:
            reply = set_nx_get(client, key, value, ttl_ms)
        if not isinstance(reply, ResponseError):
            return 1 if reply is None else reply
        if "syntax error" not in str(reply).lower():
            raise reply
        refused_nx_get(client)
    return run(client, [Call(ACQUIRE, key, (value, ttl_ms, "", "exact"))])[0]


def _set_nx_get_on_cluster(client: Any, key: str, value: str, ttl_ms: int) -> Any:
    try:
        return client.execute_command("SET", key, value, "PX", ttl_ms, "NX", "GET", get=True)
    except ResponseError as exc:
        return exc


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
    return telemetry.quietly(_load_and_run_now, client, call) if telemetry.active else _load_and_run_now(client, call)


def _load_and_run_now(client: redis.Redis, call: Call) -> Any:
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
    try:
        return list(pipe.send_cluster_commands(
            cluster_pipeline_queue(pipe), raise_on_error=False, allow_redirections=False,
        ))
    finally:
        pipe.reset()


def _evalsha_on_cluster(client: Any, call: Call) -> Any:
    try:
        return client.execute_command(*call.evalsha())
    except ResponseError as exc:  # NOSCRIPT included
        return exc
