"""Lock commands on the wire: packed as redis-py packs them, on a kept connection that is always in step."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from celery_once_task.store import scripts, wire
from celery_once_task.store.connection import make_client
from tests.support import RedisServer


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def client(server: RedisServer) -> Iterator[Any]:
    """The library's client for the server: redis-py's own retries off, as for every lock store."""
    client = make_client(f"{server.url}/2")
    yield client
    client.close()


def send(client: Any, *command: str | int) -> Any:
    """One command, sent the way the library sends its lock commands; its reply."""
    packed = b"*%d\r\n" % len(command)
    return wire.send_packed(client, lambda encoder: packed + wire.pack_args(encoder, command), 1)[0]


def connection_id(client: Any) -> int:
    return int(send(client, "CLIENT", "ID"))


def test_the_queue_lock_command_is_packed_as_redis_py_packs_it() -> None:
    connection = redis.Connection()
    command = ("SET", "once_task:t:é:queue", "id-1", "PX", 3_600_000, "NX", "GET")
    assert wire._pack_set_nx_get(connection.encoder, "once_task:t:é:queue", "id-1", 3_600_000) == b"".join(
        connection.pack_command(*command))


def test_script_calls_are_packed_as_redis_py_packs_their_evalsha() -> None:
    connection = redis.Connection()
    calls = [scripts.Call(scripts.COMPARE_AND_DELETE, "once_task:t:é:queue", ("id-1", "exact")),
             scripts.Call(scripts.ACQUIRE, "once_task:t:q:running", ("owner", 40_000, "", "prefix"))]
    expected = [("EVALSHA", call.script.sha, 1, call.key, *call.args) for call in calls]
    assert scripts._pack_calls(connection.encoder, calls) == b"".join(connection.pack_commands(expected))


def test_one_connection_serves_the_lock_commands_of_a_thread(client: Any) -> None:
    first = connection_id(client)
    assert [connection_id(client) for _ in range(3)] == [first] * 3
    assert wire.kept_connections(client) == 1


def test_a_kept_connection_the_server_closed_is_replaced_before_the_command_is_sent(
    client: Any, server: RedisServer
) -> None:
    killed = connection_id(client)
    server.client(0).client_kill_filter(_id=killed)
    # Sent on the closed connection, the command would fail with its outcome unknown.
    assert send(client, "SET", "wire:after-kill", "1") == b"OK"
    assert connection_id(client) != killed


def test_an_operation_interrupted_before_its_reply_leaves_no_reply_for_the_next(client: Any) -> None:
    # A time limit or a signal in the worker raises inside a lock operation.
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(KeyboardInterrupt):
            send(client, "BLPOP", "wire:never-pushed", 1)  # its reply (nil) comes after a second
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    # A connection kept in that state would hand the BLPOP's reply to the PING.
    assert send(client, "PING") == b"PONG"


def test_a_forked_child_opens_its_own_connection_and_leaves_the_parents(client: Any) -> None:
    parent = connection_id(client)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its connection's id, never return into pytest
        try:
            os.write(write, str(connection_id(client)).encode())
        finally:
            os._exit(0)
    os.close(write)
    child = int(os.read(read, 64))
    os.close(read)
    os.waitpid(pid, 0)
    assert child != parent
    assert connection_id(client) == parent


def test_a_pool_reset_forgets_the_kept_connections_with_its_own(client: Any) -> None:
    before = connection_id(client)
    client.connection_pool.reset()
    assert connection_id(client) != before
    assert wire.kept_connections(client) == 1


def test_a_small_pool_lends_its_connections_rather_than_keep_them(server: RedisServer) -> None:
    client = make_client(f"{server.url}/2", {"max_connections": 3})
    try:
        assert send(client, "PING") == b"PONG"
        assert wire.kept_connections(client) == 0
        assert len(client.connection_pool._available_connections) == 1
    finally:
        client.close()
