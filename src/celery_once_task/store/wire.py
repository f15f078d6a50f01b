"""Sending a lock operation's commands: packed here, written on one connection, replies read in order.

A lock operation is one or two commands. For so few, redis-py's command and
pipeline wrappers cost more than the write and the read, so they go straight
onto a connection: packed as RESP arrays of bulk strings (the request format
of every protocol version), written in one send, their replies read in order
with errors in place. The connection does what matters: a send or a read that
fails disconnects it, so that its next user reconnects, and an error reply is
read whole before it is returned, so the replies after it stay in step.

Connections come from the client's pool. Of a plain ``redis.ConnectionPool``
(TCP, TLS or a unix socket) they are taken once and then kept on a stack of
this module's, because the pool's own checkout costs more than packing and
parsing together in redis-py 6+, which records metrics on every checkout and
return. The checks that matter are kept: a connection that has anything to
read before a command is sent (the server closed it, or it is out of step)
is reconnected, as the pool would; one that an interrupted operation may have
left out of step is disconnected before it is kept; a forked child never uses
its parent's, and ``pool.reset()`` forgets them with the pool's own (the stack
is per process and per life of the pool). At most a quarter of the pool is
kept, so its other users are never starved. Other pools -- Sentinel, which
moves idle connections to a new master, and blocking pools, which count their
connections -- lend and take back a connection for every operation.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Sequence
from typing import Any, Callable, Optional, Union

import redis
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

from ..internals import pool_generation

#: What lock commands are made of: text, and numbers of milliseconds.
Arg = Union[str, int]

#: The pool attribute that holds its connections kept here.
_KEPT = "_once_task_connections"
#: Bumped in a forked child: stacks made before belong to the parent.
_process = 0


def _forked() -> None:
    global _process
    _process += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


class _Kept(list):  # type: ignore[type-arg]
    """A pool's idle connections kept by this module, for one process and one life of the pool; at most ``size``."""

    __slots__ = ("life", "process", "size")

    def __init__(self, pool: Any) -> None:
        super().__init__()
        self.process = _process
        # What ``reset()`` replaces (it forgets every connection it made):
        # these are then forgotten too.
        self.life = pool_generation(pool)
        # A quarter of the pool at most: the rest is left to the client's
        # other users (renewal, clean-up, the application's own commands).
        self.size = min(_KEEP, (pool.max_connections or 0) // 4)

    def current(self, pool: Any) -> bool:
        """Whether these connections are this process's, of the pool's present life."""
        return self.process == _process and self.life is pool_generation(pool)


def _kept_for(pool: Any) -> _Kept:
    """The pool's stack, made anew for this process and the pool's present life (under a lock: made once)."""
    with _making:
        kept: Optional[_Kept] = pool.__dict__.get(_KEPT)
        if kept is None or not kept.current(pool):
            kept = pool.__dict__[_KEPT] = _Kept(pool)
        return kept


_making = threading.Lock()


#: The most idle connections kept per pool.
_KEEP = 32


def set_nx_get(client: Any, key: str, value: str, ttl_ms: int) -> Any:
    """``SET key value PX ttl_ms NX GET``: None where it set the key, else the holder's value; an error is returned."""
    return send_packed(client, lambda encoder: _pack_set_nx_get(encoder, key, value, ttl_ms), 1)[0]


#: Packs commands with a connection's encoder (whose ``encoding`` and ``encoding_errors`` say how text is sent).
Packer = Callable[[Any], bytes]


def send_packed(client: Any, packer: Packer, replies: int) -> list[Any]:
    """Send the commands ``packer`` packs in one round trip on a connection of ``client``'s pool.

    ``replies`` is how many commands they are; their replies come back in order, errors in place.
    """
    pool = client.connection_pool
    if type(pool) is not redis.ConnectionPool:
        return _send_lent(pool, packer, replies)
    kept = pool.__dict__.get(_KEPT)
    if kept is None or not kept.current(pool):
        kept = _kept_for(pool)
    try:
        connection = kept.pop()
    except IndexError:
        connection = pool.get_connection(*_connection_args(pool))
        fresh = True  # the pool checked it
    else:
        fresh = False
    try:
        if not fresh:
            _ready(connection)
        return _exchange(connection, packer, replies)
    except BaseException:
        # Interrupted between the write and the last read (a time limit, a
        # signal, an error): a reply may be left unread. Reconnect next time.
        connection.disconnect()
        raise
    finally:
        if len(kept) < kept.size:
            kept.append(connection)
        else:
            pool.release(connection)


def _ready(connection: Any) -> None:
    """What the pool checks before it lends a connection: nothing is waiting to be read.

    Something is where the server closed the connection (a timeout, ``CLIENT
    KILL``, a restart) or a reply was left unread: it is reconnected, so that
    the command goes out on a connection known to be good rather than fail
    with an outcome unknown.
    """
    try:
        if connection.can_read():
            connection.disconnect()
    except (ConnectionError, TimeoutError, OSError):
        connection.disconnect()


def _send_lent(pool: Any, packer: Packer, replies: int) -> list[Any]:
    connection = pool.get_connection(*_connection_args(pool))
    try:
        return _exchange(connection, packer, replies)
    finally:
        pool.release(connection)


def _exchange(connection: Any, packer: Packer, count: int) -> list[Any]:
    connection.send_packed_command([packer(connection.encoder)])
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(connection.read_response())
        except ResponseError as exc:
            replies.append(exc)
    return replies


def pack_args(encoder: Any, args: Sequence[Arg]) -> bytes:
    """``args`` as RESP bulk strings (the elements of a command's array), text in the client's encoding."""
    encoding, errors = encoder.encoding, encoder.encoding_errors
    parts = []
    for arg in args:
        if type(arg) is str:
            data = arg.encode(encoding, errors)
        elif type(arg) is int:
            data = b"%d" % arg
        else:  # a bool or a float would be packed silently wrong
            raise TypeError(f"cannot send a {type(arg).__name__} to Redis: {arg!r}")
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


def _pack_set_nx_get(encoder: Any, key: str, value: str, ttl_ms: int) -> bytes:
    """One ``SET key value PX ttl_ms NX GET``, packed from a template: the publish path's only command."""
    encoding, errors = encoder.encoding, encoder.encoding_errors
    key_data, value_data, ttl_data = key.encode(encoding, errors), value.encode(encoding, errors), b"%d" % ttl_ms
    return _SET_NX_GET % (len(key_data), key_data, len(value_data), value_data, len(ttl_data), ttl_data)


_SET_NX_GET = b"*7\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$2\r\nPX\r\n$%d\r\n%b\r\n$2\r\nNX\r\n$3\r\nGET\r\n"

_connection_arguments: dict[type, tuple[str, ...]] = {}


def _connection_args(pool: Any) -> tuple[str, ...]:
    """What ``pool.get_connection`` wants: a command name before redis-py 5.3, nothing (it is deprecated) after."""
    kind = type(pool)
    arguments = _connection_arguments.get(kind)
    if arguments is None:
        parameter = inspect.signature(kind.get_connection).parameters.get("command_name")
        required = parameter is not None and parameter.default is inspect.Parameter.empty
        arguments = _connection_arguments[kind] = ("EVALSHA",) if required else ()
    return arguments


def kept_connections(client: Any) -> int:
    """How many idle connections of ``client``'s pool this process keeps here (for tests and diagnostics)."""
    pool = client.connection_pool
    kept = pool.__dict__.get(_KEPT)
    return len(kept) if kept is not None and kept.current(pool) else 0
