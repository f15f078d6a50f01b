"""The contracts of a call's scripts beside its queue lock (``store.lua.calls``), against a real redis-server.

Run as the library runs them (``scripts.run``), ARGV built as the headers
document them, on keys of each test's own. A script sent again after a lost
reply must answer as its first try was answered: each has a test that sends
it twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from celery_once_task.store.lua.calls import (
    ARGUMENTS_FORGET,
    ARGUMENTS_TAKE,
    ARGUMENTS_UNDO,
    CALL_ACQUIRE,
    QUEUE_LEASE,
)
from tests.support import RedisServer, run_script

LONG = 60_000
#: A database of the session's server that no other test uses.
DB = 8


class Keys:
    """A call's queue lock and the keys beside it, of one test."""

    def __init__(self) -> None:
        self.queue = f"once_task:tests.calls:{uuid.uuid4().hex[:16]}:queue"
        self.window = f"once_task:{{{self.queue}}}:unique"
        self.args = f"once_task:{{{self.queue}}}:args"


@pytest.fixture(scope="module")
def client(redis_server: RedisServer) -> Iterator[Any]:
    client = redis_server.client(DB)
    yield client
    client.close()


@pytest.fixture(scope="module")
def view(redis_server: RedisServer) -> Iterator[Any]:
    view = redis_server.client(DB, decode_responses=True)
    yield view
    view.close()


@pytest.fixture
def keys() -> Keys:
    return Keys()






def call(client: Any, keys: Keys, holder: str, *, window: int = 0, arguments: str = "", token: str = "") -> Any:
    more = [key for key, used in ((keys.window, window), (keys.args, arguments)) if used]
    return run_script(client, CALL_ACQUIRE, keys.queue, holder, LONG, window, arguments, token or holder,
                      more_keys=more)


# -- CALL_ACQUIRE ----------------------------------------------------------------------------------------------


def test_call_acquire_takes_the_queue_lock_and_the_window(client: Any, view: Any, keys: Keys) -> None:
    assert call(client, keys, "task-1", window=3000) == 1
    assert (view.get(keys.queue), view.get(keys.window)) == ("task-1", "task-1")
    assert 0 < view.pttl(keys.window) <= 3000


def test_call_acquire_sent_again_finds_its_own_queue_lock(client: Any, keys: Keys) -> None:
    assert call(client, keys, "task-1", window=3000) == 1
    assert call(client, keys, "task-1", window=3000) == 1


def test_call_acquire_names_the_holder_of_the_queue_lock(client: Any, keys: Keys) -> None:
    call(client, keys, "task-1", window=3000)
    assert call(client, keys, "task-2", window=3000) == ["task-1", 0]


def test_call_acquire_names_the_holder_of_a_window_that_stands_alone(client: Any, view: Any, keys: Keys) -> None:
    call(client, keys, "task-1", window=3000)
    view.delete(keys.queue)  # picked up: the window is left
    assert call(client, keys, "task-2", window=3000) == ["task-1", 2]
    assert view.exists(keys.queue) == 0


def test_call_acquire_replaces_the_queued_calls_arguments(client: Any, view: Any, keys: Keys) -> None:
    call(client, keys, "task-1", arguments='{"args": [1]}')
    assert call(client, keys, "task-2", arguments='{"args": [2]}') == ["task-1", 1]
    assert call(client, keys, "task-3", arguments='{"args": [3]}') == ["task-1", 1]
    assert view.hgetall(keys.args) == {"a:task-1": '{"args": [3]}', "b:task-1": "task-3", "p:task-1": '{"args": [2]}'}


def test_call_acquire_sent_again_replaces_once(client: Any, view: Any, keys: Keys) -> None:
    call(client, keys, "task-1", arguments='{"args": [1]}')
    call(client, keys, "task-2", arguments='{"args": [2]}')
    assert call(client, keys, "task-2", arguments='{"args": [2]}') == ["task-1", 1]
    assert view.hget(keys.args, "p:task-1") == ""  # what it replaced: the message's own


def test_call_acquire_replaces_nothing_in_use(client: Any, view: Any, keys: Keys) -> None:
    call(client, keys, "task-1", arguments='{"args": [1]}')
    view.hset(keys.args, "t:task-1", 1)
    assert call(client, keys, "task-2", arguments='{"args": [2]}') == ["task-1", 0]
    assert view.hget(keys.args, "a:task-1") is None


def test_call_acquire_never_replaces_the_arguments_of_another_task_of_the_same_lock_name(client: Any, view: Any,
                                                                                      keys: Keys) -> None:
    call(client, keys, "task-1\x1ftests.sync_account", arguments='{"args": [1]}')
    assert call(client, keys, "task-2\x1ftests.rebuild_account", arguments='{"args": [2]}') == [
        "task-1\x1ftests.sync_account", 0]
    assert view.exists(keys.args) == 0


def test_call_acquire_replaces_the_arguments_of_the_same_task_of_a_lock_name(client: Any, view: Any,
                                                                             keys: Keys) -> None:
    call(client, keys, "task-1\x1ftests.sync_account", arguments='{"args": [1]}')
    assert call(client, keys, "task-2\x1ftests.sync_account", arguments='{"args": [2]}') == [
        "task-1\x1ftests.sync_account", 1]


# -- QUEUE_LEASE -------------------------------------------------------------------------------------------------


def test_queue_lease_set_makes_the_holders_queue_lock_a_lease(client: Any, view: Any, keys: Keys) -> None:
    view.set(keys.queue, "task-1", px=LONG)
    assert run_script(client, QUEUE_LEASE, keys.queue, "task-1", 2000, "set") == 1
    assert 0 < view.pttl(keys.queue) <= 2000


def test_queue_lease_extend_never_shortens_it(client: Any, view: Any, keys: Keys) -> None:
    view.set(keys.queue, "task-1", px=LONG)
    assert run_script(client, QUEUE_LEASE, keys.queue, "task-1", 2000, "extend") == 1
    assert view.pttl(keys.queue) > 2000


def test_queue_lease_leaves_another_holders_queue_lock(client: Any, view: Any, keys: Keys) -> None:
    view.set(keys.queue, "task-2", px=LONG)
    assert run_script(client, QUEUE_LEASE, keys.queue, "task-1", 2000, "set") == 0
    assert view.pttl(keys.queue) > 2000


def test_queue_lease_takes_no_free_key(client: Any, view: Any, keys: Keys) -> None:
    assert run_script(client, QUEUE_LEASE, keys.queue, "task-1", 2000, "set") == 0
    assert view.exists(keys.queue) == 0


# -- ARGUMENTS_TAKE, ARGUMENTS_FORGET ------------------------------------------------------------------------


def take(client: Any, keys: Keys, holder: str, keep: str | int = "release") -> Any:
    return run_script(client, ARGUMENTS_TAKE, keys.queue, holder, keep, LONG, more_keys=[keys.args])


def test_arguments_take_releases_the_queue_lock_and_returns_the_replaced_arguments(client: Any, view: Any,
                                                                                  keys: Keys) -> None:
    call(client, keys, "task-1", arguments='{"args": [1]}')
    call(client, keys, "task-2", arguments='{"args": [2]}')
    assert take(client, keys, "task-1") == [1, '{"args": [2]}']
    assert view.exists(keys.queue) == 0


def test_arguments_take_sent_again_returns_the_same_arguments(client: Any, keys: Keys) -> None:
    call(client, keys, "task-1", arguments='{"args": [1]}')
    call(client, keys, "task-2", arguments='{"args": [2]}')
    take(client, keys, "task-1")
    assert take(client, keys, "task-1") == [0, '{"args": [2]}']


def test_arguments_take_of_a_call_nobody_replaced_returns_none(client: Any, view: Any, keys: Keys) -> None:
    call(client, keys, "task-1", arguments='{"args": [1]}')
    assert take(client, keys, "task-1") == [1, None]
    assert view.exists(keys.args) == 0  # nothing written for it


def test_arguments_take_marks_replaced_arguments_in_use_so_no_undo_changes_them(client: Any, view: Any,
                                                                              keys: Keys) -> None:
    call(client, keys, "task-1", arguments='{"args": [1]}')
    call(client, keys, "task-2", arguments='{"args": [2]}')
    take(client, keys, "task-1")
    assert view.hget(keys.args, "t:task-1") == "1"
    assert run_script(client, ARGUMENTS_UNDO, keys.args, "task-2") == 0
    assert view.hget(keys.args, "a:task-1") == '{"args": [2]}'


def test_arguments_take_keeping_the_queue_lock_marks_the_arguments_in_use(client: Any, view: Any,
                                                                         keys: Keys) -> None:
    call(client, keys, "task-1", arguments='{"args": [1]}')
    assert take(client, keys, "task-1", 2000) == [1, None]
    assert 0 < view.pttl(keys.queue) <= 2000
    assert view.hget(keys.args, "t:task-1") == "1"


def test_arguments_take_of_a_queue_lock_another_holds_marks_nothing(client: Any, view: Any, keys: Keys) -> None:
    call(client, keys, "task-2", arguments='{"args": [2]}')
    assert take(client, keys, "task-1", 2000) == [0, None]
    assert view.exists(keys.args) == 0


def test_arguments_forget_takes_every_field_of_the_holder_and_the_key_with_the_last(client: Any, view: Any,
                                                                                  keys: Keys) -> None:
    call(client, keys, "task-1", arguments='{"args": [1]}')
    call(client, keys, "task-2", arguments='{"args": [2]}')
    assert run_script(client, ARGUMENTS_FORGET, keys.args, "task-1") == 1
    assert view.exists(keys.args) == 0
    assert run_script(client, ARGUMENTS_FORGET, keys.args, "task-1") == 0


# -- ARGUMENTS_UNDO ----------------------------------------------------------------------------------------------


def test_arguments_undo_puts_back_the_arguments_a_refused_duplicate_replaced(client: Any, view: Any,
                                                                            keys: Keys) -> None:
    call(client, keys, "task-1", arguments='{"args": [1]}')
    call(client, keys, "task-2", arguments='{"args": [2]}')
    call(client, keys, "task-3", arguments='{"args": [3]}')
    assert run_script(client, ARGUMENTS_UNDO, keys.args, "task-3") == 1
    assert view.hget(keys.args, "a:task-1") == '{"args": [2]}'


def test_arguments_undo_of_the_first_replacement_leaves_the_messages_own(client: Any, view: Any,
                                                                        keys: Keys) -> None:
    call(client, keys, "task-1", arguments='{"args": [1]}')
    call(client, keys, "task-2", arguments='{"args": [2]}')
    assert run_script(client, ARGUMENTS_UNDO, keys.args, "task-2") == 1
    assert view.exists(keys.args) == 0


def test_arguments_undo_leaves_a_later_replacement(client: Any, view: Any, keys: Keys) -> None:
    call(client, keys, "task-1", arguments='{"args": [1]}')
    call(client, keys, "task-2", arguments='{"args": [2]}')
    call(client, keys, "task-3", arguments='{"args": [3]}')
    assert run_script(client, ARGUMENTS_UNDO, keys.args, "task-2") == 0
    assert view.hget(keys.args, "a:task-1") == '{"args": [3]}'


def test_arguments_undo_leaves_arguments_in_use(client: Any, view: Any, keys: Keys) -> None:
    call(client, keys, "task-1", arguments='{"args": [1]}')
    call(client, keys, "task-2", arguments='{"args": [2]}')
    take(client, keys, "task-1", 2000)
    assert run_script(client, ARGUMENTS_UNDO, keys.args, "task-2") == 0
    assert view.hget(keys.args, "a:task-1") == '{"args": [2]}'
