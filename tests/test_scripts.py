"""Each Lua script's contract, as its header states it, against a real redis-server: no worker, no wrapper.

The scripts (``celery_once_task.store.lua``) are run as the library runs
them, with ``scripts.run``, their ARGV built position by position as the
headers document them. Every test has keys of its own on the session's
redis-server, and reads the server's clock, the one the scripts keep time
by: where time must pass, leases and debounces are a few milliseconds, and
the test waits for the server's clock to pass them.
"""

from __future__ import annotations

import uuid
from typing import Any, Optional

import pytest
import redis

from celery_once_task.store import scripts
from celery_once_task.store.lua.bursts import BURST_CALL, BURST_FORGET, BURST_TAKE
from celery_once_task.store.lua.locks import (
    ACQUIRE,
    COMPARE_AND_DELETE,
    COMPARE_AND_SWAP,
    RECORD_FINISHED,
    RELEASE_RUNNING,
    RENEW,
    TAKE,
)
from celery_once_task.store.lua.parked import PARK, PARKED_CLAIM, PARKED_FORGET, PARKED_RESCUE
from celery_once_task.store.lua.slots import SLOT_ACQUIRE, SLOT_CLEAR, SLOT_FORGET, SLOT_RELEASE, SLOT_RENEW
from celery_once_task.store.lua.throttles import THROTTLE_LOST, THROTTLE_TAKE
from tests.support import RedisServer, decoded, run_script, wait_until

#: A time to live, lease or debounce that does not run out during a test (milliseconds).
LONG = 60_000
#: A database of the session's server that no other test uses.
DB = 7


class Keys:
    """The keys of one test: a prefix of its own."""

    def __init__(self) -> None:
        prefix = f"scripts:{uuid.uuid4().hex}:"
        self.lock = prefix + "lock"
        self.record = prefix + "record"
        self.legacy_record = prefix + "legacy-record"
        self.entry = prefix + "entry"
        self.slots = prefix + "slots"
        self.line = prefix + "line"
        self.messages = prefix + "messages"
        self.burst = prefix + "burst"
        self.throttle = prefix + "throttle"


@pytest.fixture(scope="module")
def client(redis_server: RedisServer) -> Any:
    """The scripts' client: replies in bytes, as the library's lock store has them."""
    client = redis_server.client(DB)
    yield client
    client.close()


@pytest.fixture(scope="module")
def view(redis_server: RedisServer) -> Any:
    """A client to set up and read the keys with, in text."""
    view = redis_server.client(DB, decode_responses=True)
    yield view
    view.close()


@pytest.fixture
def keys() -> Keys:
    return Keys()






def server_ms(view: redis.Redis) -> int:
    """The server's clock, in milliseconds: the scripts' ``now_ms()``."""
    seconds, micros = view.time()
    return int(seconds) * 1000 + int(micros) // 1000


def wait_for_server_time_past(view: redis.Redis, ms: int) -> None:
    wait_until(lambda: server_ms(view) > ms, timeout=5, interval=0.001, what=f"the server's clock to pass {ms}")


def finished(attempt: int, call: str) -> str:
    """A finished record of the legacy form: ``<attempt>:<call>:<instance>:<pid>:<r|n>:<time>``."""
    return f"{attempt}:{call}:instance-1:4242:r:1700000000000"


def compact(attempt: int, flag: str = "2") -> str:
    """A finished record of the compact form: ``<flag><instance: 15 digits><attempt>`` (its call is in its key)."""
    return f"{flag}123456789012345{attempt}"


# -- COMPARE_AND_DELETE ------------------------------------------------------------------------------------------


def test_compare_and_delete_deletes_the_lock_its_token_holds(client: Any, view: Any, keys: Keys) -> None:
    view.set(keys.lock, "task-1")
    assert run_script(client, COMPARE_AND_DELETE, keys.lock, "task-1", "exact") == 1
    assert view.exists(keys.lock) == 0


def test_compare_and_delete_matches_a_running_lock_by_its_token_as_a_prefix(client: Any, view: Any,
                                                                           keys: Keys) -> None:
    view.set(keys.lock, "owner-1|1700000000.5")
    assert run_script(client, COMPARE_AND_DELETE, keys.lock, "owner-1", "prefix") == 1
    assert view.exists(keys.lock) == 0


def test_compare_and_delete_leaves_a_lock_another_token_holds(client: Any, view: Any, keys: Keys) -> None:
    view.set(keys.lock, "task-2")
    assert run_script(client, COMPARE_AND_DELETE, keys.lock, "task-1", "exact") == 0
    assert view.get(keys.lock) == "task-2"


def test_compare_and_delete_exact_does_not_match_a_value_the_token_only_begins(client: Any, view: Any,
                                                                               keys: Keys) -> None:
    view.set(keys.lock, "task-1|more")
    assert run_script(client, COMPARE_AND_DELETE, keys.lock, "task-1", "exact") == 0
    assert view.get(keys.lock) == "task-1|more"


def test_compare_and_delete_of_a_free_lock_is_0(client: Any, view: Any, keys: Keys) -> None:
    assert run_script(client, COMPARE_AND_DELETE, keys.lock, "task-1", "prefix") == 0
    assert view.exists(keys.lock) == 0


# -- ACQUIRE -----------------------------------------------------------------------------------------------------


def acquire(client: Any, keys: Keys, value: str, *, ttl: int = LONG, takeover: str = "", mode: str = "exact",
            attempt: Optional[int] = None, call: str = "call-1") -> Any:
    """ACQUIRE; with ``attempt``, KEYS[2] (the finished record) and ARGV[5], ARGV[6]."""
    args: tuple[str | int, ...] = (
        value,  # ARGV[1] value to write
        ttl,  # ARGV[2] time to live
        takeover,  # ARGV[3] a token whose lock this owner may take over, or ""
        mode,  # ARGV[4] how ARGV[3] is matched
    )
    if attempt is None:
        return run_script(client, ACQUIRE, keys.lock, *args)
    return run_script(client, ACQUIRE, keys.lock, *args, attempt, call, more_keys=[keys.record])


def test_acquire_takes_a_free_lock(client: Any, view: Any, keys: Keys) -> None:
    assert acquire(client, keys, "task-1", ttl=LONG) == 1
    assert view.get(keys.lock) == "task-1"
    assert 0 < view.pttl(keys.lock) <= LONG


def test_acquire_names_the_holder_of_a_held_lock(client: Any, view: Any, keys: Keys) -> None:
    view.set(keys.lock, "task-2")
    assert acquire(client, keys, "task-1") == "task-2"
    assert view.get(keys.lock) == "task-2"


def test_acquire_takes_over_the_lock_of_the_token_it_names(client: Any, view: Any, keys: Keys) -> None:
    view.set(keys.lock, "task-1", px=1000)
    assert acquire(client, keys, "task-1b", ttl=LONG, takeover="task-1", mode="exact") == 1
    assert view.get(keys.lock) == "task-1b"
    assert view.pttl(keys.lock) > 1000


def test_acquire_takes_over_a_running_lock_its_token_begins(client: Any, view: Any, keys: Keys) -> None:
    view.set(keys.lock, "owner-1|1700000000.5")
    assert acquire(client, keys, "owner-2|1700000001.5", takeover="owner-1", mode="prefix") == 1
    assert view.get(keys.lock) == "owner-2|1700000001.5"


def test_acquire_takes_over_no_lock_another_token_holds(client: Any, view: Any, keys: Keys) -> None:
    view.set(keys.lock, "owner-3|1700000000.5")
    assert acquire(client, keys, "owner-2|1700000001.5", takeover="owner-1", mode="prefix") == "owner-3|1700000000.5"
    assert view.get(keys.lock) == "owner-3|1700000000.5"


def test_acquire_exact_takeover_does_not_match_a_value_the_token_only_begins(client: Any, view: Any,
                                                                             keys: Keys) -> None:
    view.set(keys.lock, "owner-1|1700000000.5")
    assert acquire(client, keys, "owner-2", takeover="owner-1", mode="exact") == "owner-1|1700000000.5"


def test_acquire_returns_the_record_of_this_attempt_that_ended_and_takes_nothing(client: Any, view: Any,
                                                                                keys: Keys) -> None:
    view.set(keys.record, finished(2, "call-1"))
    assert acquire(client, keys, "owner-1", attempt=2, call="call-1") == [finished(2, "call-1")]
    assert view.exists(keys.lock) == 0


def test_acquire_returns_the_record_of_a_later_attempt_and_takes_nothing(client: Any, view: Any,
                                                                         keys: Keys) -> None:
    view.set(keys.record, finished(3, "call-1"))
    assert acquire(client, keys, "owner-1", attempt=2, call="call-1") == [finished(3, "call-1")]
    assert view.exists(keys.lock) == 0


def test_acquire_takes_the_lock_past_the_record_of_an_earlier_attempt(client: Any, view: Any, keys: Keys) -> None:
    view.set(keys.record, finished(1, "call-1"))
    assert acquire(client, keys, "owner-1", attempt=2, call="call-1") == 1
    assert view.get(keys.lock) == "owner-1"


def test_acquire_takes_the_lock_past_the_record_of_another_call(client: Any, view: Any, keys: Keys) -> None:
    view.set(keys.record, finished(2, "call-0"))
    assert acquire(client, keys, "owner-1", attempt=2, call="call-1") == 1
    assert view.get(keys.lock) == "owner-1"


def test_acquire_returns_a_compact_record_of_this_attempt_with_its_time_to_live(client: Any, view: Any,
                                                                               keys: Keys) -> None:
    view.set(keys.record, compact(2), px=LONG)
    [reply] = acquire(client, keys, "owner-1", attempt=2, call="call-1")
    value, ttl = reply.split(" ")
    assert value == compact(2) and 0 < int(ttl) <= LONG
    assert view.exists(keys.lock) == 0


def test_acquire_takes_the_lock_past_a_compact_record_of_an_earlier_attempt(client: Any, view: Any,
                                                                            keys: Keys) -> None:
    view.set(keys.record, compact(1))
    assert acquire(client, keys, "owner-1", attempt=12, call="call-1") == 1
    assert view.get(keys.lock) == "owner-1"


def test_acquire_reads_the_record_of_the_other_form_where_the_first_has_none(client: Any, view: Any,
                                                                             keys: Keys) -> None:
    view.set(keys.legacy_record, finished(2, "call-1"))
    reply = run_script(client, ACQUIRE, keys.lock, "owner-1", LONG, "", "prefix", 2, "call-1",
                       more_keys=[keys.record, keys.legacy_record])
    assert reply == [finished(2, "call-1")]
    assert view.exists(keys.lock) == 0


def test_acquire_with_no_record_takes_a_free_lock(client: Any, view: Any, keys: Keys) -> None:
    assert acquire(client, keys, "owner-1", attempt=0, call="call-1") == 1
    assert view.get(keys.lock) == "owner-1"


# -- acquire_free: ACQUIRE without a takeover, sent as SET NX GET ------------------------------------------------


def test_acquire_free_takes_a_free_lock_as_acquire_does(client: Any, view: Any, keys: Keys) -> None:
    scripted = Keys()
    assert scripts.acquire_free(client, keys.lock, "task-1", LONG) == acquire(client, scripted, "task-1") == 1
    assert view.get(keys.lock) == view.get(scripted.lock) == "task-1"
    assert 0 < view.pttl(keys.lock) <= LONG


def test_acquire_free_names_the_holder_as_acquire_does(client: Any, view: Any, keys: Keys) -> None:
    view.set(keys.lock, "task-2")
    assert decoded(scripts.acquire_free(client, keys.lock, "task-1", LONG)) == acquire(client, keys, "task-1")
    assert view.get(keys.lock) == "task-2"


def test_acquire_free_sent_again_finds_its_own_value_as_acquire_does(client: Any, view: Any, keys: Keys) -> None:
    assert scripts.acquire_free(client, keys.lock, "task-1", LONG) == 1
    again = decoded(scripts.acquire_free(client, keys.lock, "task-1", LONG))
    assert again == acquire(client, keys, "task-1") == "task-1"


# -- RELEASE_RUNNING ---------------------------------------------------------------------------------------------


def release_running(client: Any, keys: Keys, token: str, record: str, *, attempt: int = 0,
                    call: str = "call-1") -> Any:
    return run_script(client, RELEASE_RUNNING, keys.lock,
               token,  # ARGV[1] owner token (a prefix of the lock's value)
               record,  # ARGV[2] the record to write
               LONG,  # ARGV[3] its time to live
               attempt,  # ARGV[4] the attempt that ended
               call,  # ARGV[5] its call
               more_keys=[keys.record])


def test_release_running_deletes_its_own_lock_and_writes_the_record(client: Any, view: Any, keys: Keys) -> None:
    view.set(keys.lock, "owner-1|1700000000.5")
    assert release_running(client, keys, "owner-1", finished(0, "call-1")) == 1
    assert view.exists(keys.lock) == 0
    assert view.get(keys.record) == finished(0, "call-1")
    assert 0 < view.pttl(keys.record) <= LONG


def test_release_running_leaves_a_lock_another_token_holds_and_writes_the_record_still(
        client: Any, view: Any, keys: Keys) -> None:
    view.set(keys.lock, "owner-2|1700000001.5")
    assert release_running(client, keys, "owner-1", finished(0, "call-1")) == 0
    assert view.get(keys.lock) == "owner-2|1700000001.5"
    assert view.get(keys.record) == finished(0, "call-1")


def test_release_running_of_a_lost_lock_writes_the_record(client: Any, view: Any, keys: Keys) -> None:
    assert release_running(client, keys, "owner-1", finished(0, "call-1")) == 0
    assert view.exists(keys.lock) == 0
    assert view.get(keys.record) == finished(0, "call-1")


def test_release_running_never_replaces_the_record_of_a_later_attempt(client: Any, view: Any, keys: Keys) -> None:
    view.set(keys.lock, "owner-1|1700000000.5")
    view.set(keys.record, finished(3, "call-1"))
    assert release_running(client, keys, "owner-1", finished(2, "call-1"), attempt=2) == 1
    assert view.get(keys.record) == finished(3, "call-1")


# -- RECORD_FINISHED ---------------------------------------------------------------------------------------------


def record_finished(client: Any, keys: Keys, record: str, attempt: int, call: str = "call-1") -> Any:
    return run_script(client, RECORD_FINISHED, keys.record,
               record,  # ARGV[1] the record to write
               LONG,  # ARGV[2] its time to live
               attempt,  # ARGV[3] the attempt that ended
               call)  # ARGV[4] its call


def test_record_finished_writes_the_record_with_its_time_to_live(client: Any, view: Any, keys: Keys) -> None:
    assert record_finished(client, keys, finished(0, "call-1"), 0) == 1
    assert view.get(keys.record) == finished(0, "call-1")
    assert 0 < view.pttl(keys.record) <= LONG


def test_record_finished_stores_a_compact_record_as_an_integer(client: Any, view: Any, keys: Keys) -> None:
    # An integer lives inside Redis's value object: the record costs no allocation of its own.
    assert record_finished(client, keys, compact(0), 0) == 1
    assert view.object("encoding", keys.record) == "int"


def test_record_finished_never_replaces_a_later_attempt_of_a_compact_record(client: Any, view: Any,
                                                                            keys: Keys) -> None:
    view.set(keys.record, compact(3))
    assert record_finished(client, keys, compact(2, "1"), 2) == 1
    assert view.get(keys.record) == compact(3)


def test_record_finished_never_replaces_a_later_attempt_of_the_same_call(client: Any, view: Any,
                                                                         keys: Keys) -> None:
    view.set(keys.record, finished(3, "call-1"))
    assert record_finished(client, keys, finished(2, "call-1"), 2) == 1
    assert view.get(keys.record) == finished(3, "call-1")


def test_record_finished_replaces_an_earlier_attempt_of_the_same_call(client: Any, view: Any, keys: Keys) -> None:
    view.set(keys.record, finished(1, "call-1"))
    assert record_finished(client, keys, finished(2, "call-1"), 2) == 1
    assert view.get(keys.record) == finished(2, "call-1")


def test_record_finished_replaces_a_later_attempt_of_another_call(client: Any, view: Any, keys: Keys) -> None:
    view.set(keys.record, finished(3, "call-0"))
    assert record_finished(client, keys, finished(0, "call-1"), 0) == 1
    assert view.get(keys.record) == finished(0, "call-1")


# -- RENEW -------------------------------------------------------------------------------------------------------


def test_renew_extends_the_lease_of_the_lock_its_token_holds(client: Any, view: Any, keys: Keys) -> None:
    view.set(keys.lock, "owner-1|1700000000.5", px=1000)
    assert run_script(client, RENEW, keys.lock, "owner-1", LONG) == 1
    assert view.pttl(keys.lock) > 1000
    assert view.get(keys.lock) == "owner-1|1700000000.5"


def test_renew_leaves_the_lease_of_a_lock_another_token_holds(client: Any, view: Any, keys: Keys) -> None:
    view.set(keys.lock, "owner-2|1700000001.5", px=1000)
    assert run_script(client, RENEW, keys.lock, "owner-1", LONG) == 0
    assert view.pttl(keys.lock) <= 1000


def test_renew_does_not_bring_back_a_lost_lock(client: Any, view: Any, keys: Keys) -> None:
    assert run_script(client, RENEW, keys.lock, "owner-1", LONG) == 0
    assert view.exists(keys.lock) == 0


# -- COMPARE_AND_SWAP --------------------------------------------------------------------------------------------


def test_compare_and_swap_writes_the_new_value_over_the_expected_token(client: Any, view: Any, keys: Keys) -> None:
    view.set(keys.lock, "owner-1|1700000000.5", px=1000)
    assert run_script(client, COMPARE_AND_SWAP, keys.lock, "owner-1", "owner-2|1700000001.5", LONG) == 1
    assert view.get(keys.lock) == "owner-2|1700000001.5"
    assert 1000 < view.pttl(keys.lock) <= LONG


def test_compare_and_swap_leaves_a_lock_another_token_holds(client: Any, view: Any, keys: Keys) -> None:
    view.set(keys.lock, "owner-3|1700000000.5")
    assert run_script(client, COMPARE_AND_SWAP, keys.lock, "owner-1", "owner-2|1700000001.5", LONG) == 0
    assert view.get(keys.lock) == "owner-3|1700000000.5"


def test_compare_and_swap_does_not_take_a_free_lock(client: Any, view: Any, keys: Keys) -> None:
    assert run_script(client, COMPARE_AND_SWAP, keys.lock, "owner-1", "owner-2|1700000001.5", LONG) == 0
    assert view.exists(keys.lock) == 0


# -- TAKE --------------------------------------------------------------------------------------------------------


def test_take_returns_the_waiting_entry_and_deletes_it(client: Any, view: Any, keys: Keys) -> None:
    view.set(keys.entry, "task-1\x1f{}")
    assert run_script(client, TAKE, keys.entry) == "task-1\x1f{}"
    assert view.exists(keys.entry) == 0


def test_take_of_no_entry_is_nil(client: Any, keys: Keys) -> None:
    assert run_script(client, TAKE, keys.entry) is None


# -- running_limit: SLOT_ACQUIRE ---------------------------------------------------------------------------------


#: When two pickups were sent (milliseconds): a slot records it, with its token.
SINCE_1, SINCE_2 = "1700000000001", "1700000000002"


def attempt_prefix(task: str, retries: int = 0) -> str:
    """The owner token prefix of an attempt: ``<task id>\\x1f<retries>:``."""
    return f"{task}\x1f{retries}:"


def owner(task: str, retries: int = 0, delivery: int = 1) -> str:
    """An owner token: its attempt's prefix, then what tells that attempt's deliveries apart (the instance)."""
    return f"{attempt_prefix(task, retries)}{delivery:015d}:\x1f"


def call_id(task: str, retries: int = 0) -> str:
    return f"{task}\x1f{retries}"


def message(task: str) -> str:
    return f'{{"message of":"{task}"}}'


def handed(task: str, retries: int = 0) -> str:
    """An entry handed over: ``<call id>\\x1f<message>``."""
    return f"{call_id(task, retries)}\x1f{message(task)}"


def slot_acquire(client: Any, keys: Keys, task: str, *, retries: int = 0, delivery: int = 1, taken: str = SINCE_1,
                 lease: int = LONG, limit: int = 1, wait: bool = False, called: int = 0, reserve: int = LONG,
                 takeover: str = "", takeover_since: str = "", with_record: bool = False,
                 call: str = "call-1") -> Any:
    return run_script(client, SLOT_ACQUIRE, keys.slots,
               owner(task, retries, delivery),  # ARGV[1] owner token
               taken,  # ARGV[2] when the pickup was sent (ms)
               lease,  # ARGV[3] lease
               limit,  # ARGV[4] the limit
               call_id(task, retries),  # ARGV[5] the call id
               attempt_prefix(task, retries),  # ARGV[6] the owner token prefix of this attempt
               "1" if wait else "",  # ARGV[7] join the line if no slot is free
               called,  # ARGV[8] when the call was made (microseconds)
               message(task),  # ARGV[9] its message
               LONG,  # ARGV[10] how long the line is kept
               reserve,  # ARGV[11] how long a reservation is kept
               takeover,  # ARGV[12] a token whose slot this owner may take over
               takeover_since,  # ARGV[13] only if that slot was taken then ("": whenever)
               retries,  # ARGV[14] the attempt
               call,  # ARGV[15] its call
               more_keys=[keys.line, keys.messages, *([keys.record] if with_record else [])])


def slot_release(client: Any, keys: Keys, task: str, *, delivery: int = 1, limit: int = 1, reserve: int = LONG,
                 record: Optional[str] = None, since: str = "") -> Any:
    args: tuple[str | int, ...] = (
        owner(task, 0, delivery),  # ARGV[1] owner token
        limit,  # ARGV[2] the limit
        reserve,  # ARGV[3] how long a reservation is kept
        since,  # ARGV[4] only if the slot was taken then ("": whenever)
    )
    if record is None:
        return run_script(client, SLOT_RELEASE, keys.slots, *args, more_keys=[keys.line, keys.messages])
    # ARGV[5..8] the record to write, its time to live, the attempt, its call
    return run_script(client, SLOT_RELEASE, keys.slots, *args, record, LONG, 0, "call-1",
               more_keys=[keys.line, keys.messages, keys.record])


def slot_fields(view: Any, keys: Keys) -> list[str]:
    """The slots' and reservations' fields (``S<token>``, ``R<call id>``), sorted."""
    return sorted(name for name in view.hkeys(keys.slots) if name[:1] in ("S", "R") and len(name) > 1)


def expiry(view: Any, keys: Keys, field: str) -> int:
    """When a slot or a reservation expires, in the server's milliseconds."""
    value = view.hget(keys.slots, field)
    return int(value.split(":" if field.startswith(("S", "s:")) else "\x1f")[0])


def held_since(view: Any, keys: Keys, field: str) -> int:
    """When a slot held was taken (the pickup's ARGV[2]), from its value ``<expiry>:<expiry - since>``."""
    expiry_ms, held = view.hget(keys.slots, field).split(":")
    return int(expiry_ms) - int(held)


def test_slot_acquire_takes_a_free_slot_with_its_lease(client: Any, view: Any, keys: Keys) -> None:
    before = server_ms(view)
    assert slot_acquire(client, keys, "task-a", lease=LONG, taken=SINCE_1) == [1, ""]
    after = server_ms(view)
    assert slot_fields(view, keys) == [f"S{owner('task-a')}"]
    assert held_since(view, keys, f"S{owner('task-a')}") == int(SINCE_1)
    assert before + LONG <= expiry(view, keys, f"S{owner('task-a')}") <= after + LONG
    assert view.hget(keys.slots, "L") == "1"


def test_slot_acquire_returns_the_record_of_this_attempt_that_ended_and_takes_nothing(
        client: Any, view: Any, keys: Keys) -> None:
    view.set(keys.record, finished(0, "call-1"))
    assert slot_acquire(client, keys, "task-a", with_record=True, call="call-1") == [2, finished(0, "call-1")]
    assert view.exists(keys.slots) == 0


def test_slot_acquire_puts_a_call_that_waits_in_line_and_answers_its_place(client: Any, view: Any,
                                                                          keys: Keys) -> None:
    slot_acquire(client, keys, "task-a")
    assert slot_acquire(client, keys, "task-b", wait=True, called=200) == [3, 1]
    assert slot_acquire(client, keys, "task-c", wait=True, called=300) == [3, 2]
    assert view.zrange(keys.line, 0, -1) == [call_id("task-b"), call_id("task-c")]
    assert view.hget(keys.messages, call_id("task-b")) == message("task-b")


def test_slot_acquire_orders_the_line_by_when_the_calls_were_made(client: Any, view: Any, keys: Keys) -> None:
    slot_acquire(client, keys, "task-a")
    assert slot_acquire(client, keys, "task-b", wait=True, called=300) == [3, 1]
    assert slot_acquire(client, keys, "task-c", wait=True, called=200) == [3, 1]
    assert view.zrange(keys.line, 0, -1) == [call_id("task-c"), call_id("task-b")]


def test_slot_acquire_answers_a_call_back_in_line_with_its_place_and_adds_it_once(client: Any, view: Any,
                                                                                 keys: Keys) -> None:
    slot_acquire(client, keys, "task-a")
    slot_acquire(client, keys, "task-b", wait=True, called=200)
    slot_acquire(client, keys, "task-c", wait=True, called=300)
    assert slot_acquire(client, keys, "task-b", wait=True, called=200) == [3, 1]
    assert view.zcard(keys.line) == 2


def test_slot_acquire_refuses_another_delivery_of_an_attempt_that_holds_a_slot(client: Any, view: Any,
                                                                                keys: Keys) -> None:
    slot_acquire(client, keys, "task-a", delivery=1, limit=2)
    assert slot_acquire(client, keys, "task-a", delivery=2, limit=2) == [4, owner("task-a", delivery=1)]
    assert slot_fields(view, keys) == [f"S{owner('task-a', delivery=1)}"]


def test_slot_acquire_of_the_same_token_at_the_same_moment_names_that_slot_and_writes_nothing(
        client: Any, view: Any, keys: Keys) -> None:
    assert slot_acquire(client, keys, "task-a", taken=SINCE_1, lease=1000) == [1, ""]
    before = view.hgetall(keys.slots)
    assert slot_acquire(client, keys, "task-a", taken=SINCE_1) == [6, owner("task-a")]
    assert view.hgetall(keys.slots) == before


def test_slot_acquire_with_the_same_token_taken_at_another_time_is_another_delivery(client: Any, view: Any,
                                                                                    keys: Keys) -> None:
    slot_acquire(client, keys, "task-a", taken=SINCE_1, limit=2)
    assert slot_acquire(client, keys, "task-a", taken=SINCE_2, limit=2) == [4, owner("task-a")]
    assert held_since(view, keys, f"S{owner('task-a')}") == int(SINCE_1)


def test_slot_acquire_takes_over_only_the_slot_taken_at_the_moment_it_names(client: Any, view: Any,
                                                                            keys: Keys) -> None:
    slot_acquire(client, keys, "task-a", taken=SINCE_1)  # another copy of the attempt, in this worker
    taking = {"takeover": owner("task-a"), "takeover_since": SINCE_2}
    assert slot_acquire(client, keys, "task-a", taken="1700000000003", **taking) == [4, owner("task-a")]
    assert held_since(view, keys, f"S{owner('task-a')}") == int(SINCE_1)
    assert slot_acquire(client, keys, "task-a", taken="1700000000004", takeover=owner("task-a"),
                        takeover_since=SINCE_1) == [1, ""]
    assert held_since(view, keys, f"S{owner('task-a')}") == 1700000000004


def test_slot_acquire_takes_over_the_slot_of_the_token_it_names(client: Any, view: Any, keys: Keys) -> None:
    slot_acquire(client, keys, "task-a", delivery=1)
    assert slot_acquire(client, keys, "task-a", delivery=2, takeover=owner("task-a", delivery=1)) == [1, ""]
    assert slot_fields(view, keys) == [f"S{owner('task-a', delivery=2)}"]


def test_slot_acquire_refuses_a_call_when_no_slot_is_free_naming_a_holder(client: Any, view: Any,
                                                                          keys: Keys) -> None:
    slot_acquire(client, keys, "task-a")
    assert slot_acquire(client, keys, "task-b", wait=False) == [5, owner("task-a")]
    assert view.exists(keys.line) == 0
    assert slot_fields(view, keys) == [f"S{owner('task-a')}"]


def test_slot_acquire_takes_a_slot_under_a_limit_of_two_beside_another(client: Any, view: Any, keys: Keys) -> None:
    slot_acquire(client, keys, "task-a", limit=2)
    assert slot_acquire(client, keys, "task-b", limit=2) == [1, ""]
    assert slot_fields(view, keys) == sorted([f"S{owner('task-a')}", f"S{owner('task-b')}"])


def test_slot_acquire_claims_the_slot_reserved_for_a_call_handed_over(client: Any, view: Any, keys: Keys) -> None:
    slot_acquire(client, keys, "task-a")
    slot_acquire(client, keys, "task-b", wait=True)
    assert slot_release(client, keys, "task-a") == [1, handed("task-b")]
    assert slot_acquire(client, keys, "task-b") == [1, ""]
    assert slot_fields(view, keys) == [f"S{owner('task-b')}"]


def test_slot_acquire_hands_a_free_slot_to_the_first_call_in_line_not_to_a_newcomer(client: Any, view: Any,
                                                                                    keys: Keys) -> None:
    slot_acquire(client, keys, "task-a", limit=1)
    slot_acquire(client, keys, "task-b", wait=True)
    # The limit is now two: the slot that came free is the waiting call's.
    assert slot_acquire(client, keys, "task-c", limit=2) == [5, owner("task-a"), handed("task-b")]
    assert slot_fields(view, keys) == sorted([f"S{owner('task-a')}", f"R{call_id('task-b')}"])
    assert view.exists(keys.line) == 0


def test_slot_acquire_purges_an_expired_slot_and_takes_it(client: Any, view: Any, keys: Keys) -> None:
    slot_acquire(client, keys, "task-a", lease=5)
    wait_for_server_time_past(view, expiry(view, keys, f"S{owner('task-a')}"))
    assert slot_acquire(client, keys, "task-b") == [1, ""]
    assert slot_fields(view, keys) == [f"S{owner('task-b')}"]


def test_slot_acquire_gives_a_waiting_call_back_in_line_the_slot_that_came_free(client: Any, view: Any,
                                                                                keys: Keys) -> None:
    slot_acquire(client, keys, "task-a", lease=5)
    slot_acquire(client, keys, "task-b", wait=True)
    wait_for_server_time_past(view, expiry(view, keys, f"S{owner('task-a')}"))
    assert slot_acquire(client, keys, "task-b", wait=True) == [1, ""]
    assert slot_fields(view, keys) == [f"S{owner('task-b')}"]
    assert view.exists(keys.line, keys.messages) == 0


def test_slot_acquire_puts_a_call_whose_reservation_expired_back_in_line_at_its_place(client: Any, view: Any,
                                                                                     keys: Keys) -> None:
    slot_acquire(client, keys, "task-a")
    slot_acquire(client, keys, "task-b", wait=True, called=100)
    slot_acquire(client, keys, "task-c", wait=True, called=200)
    assert slot_release(client, keys, "task-a", reserve=5) == [1, handed("task-b")]
    wait_for_server_time_past(view, expiry(view, keys, f"R{call_id('task-b')}"))
    # Back at its place, ahead of task-c: the slot is handed to it again, and the newcomer waits behind task-c.
    assert slot_acquire(client, keys, "task-d", wait=True, called=300) == [3, 2, handed("task-b")]
    assert view.zrange(keys.line, 0, -1) == [call_id("task-c"), call_id("task-d")]


# -- running_limit: SLOT_RELEASE ---------------------------------------------------------------------------------


def test_slot_release_frees_the_slot_its_token_holds(client: Any, view: Any, keys: Keys) -> None:
    slot_acquire(client, keys, "task-a")
    assert slot_release(client, keys, "task-a") == [1]
    assert slot_acquire(client, keys, "task-b") == [1, ""]


def test_slot_release_naming_a_moment_frees_only_the_slot_taken_then(client: Any, view: Any, keys: Keys) -> None:
    slot_acquire(client, keys, "task-a", taken=SINCE_1)
    assert slot_release(client, keys, "task-a", since=SINCE_2) == [0]
    assert slot_fields(view, keys) == [f"S{owner('task-a')}"]
    assert slot_release(client, keys, "task-a", since=SINCE_1) == [1]
    assert view.exists(keys.slots) == 0


def test_slot_release_of_a_token_without_a_slot_is_0(client: Any, view: Any, keys: Keys) -> None:
    slot_acquire(client, keys, "task-b")
    assert slot_release(client, keys, "task-a") == [0]
    assert slot_fields(view, keys) == [f"S{owner('task-b')}"]


def test_slot_release_hands_the_free_slot_to_the_call_made_first(client: Any, view: Any, keys: Keys) -> None:
    slot_acquire(client, keys, "task-a")
    slot_acquire(client, keys, "task-b", wait=True, called=300)
    slot_acquire(client, keys, "task-c", wait=True, called=200)
    assert slot_release(client, keys, "task-a") == [1, handed("task-c")]
    reservation = view.hget(keys.slots, f"R{call_id('task-c')}")
    assert reservation.split("\x1f")[1:] == ["200", message("task-c")]
    assert view.zrange(keys.line, 0, -1) == [call_id("task-b")]


def test_slot_release_hands_every_free_slot_in_call_order(client: Any, view: Any, keys: Keys) -> None:
    slot_acquire(client, keys, "task-a")
    slot_acquire(client, keys, "task-b", wait=True, called=300)
    slot_acquire(client, keys, "task-c", wait=True, called=200)
    slot_acquire(client, keys, "task-d", wait=True, called=100)
    assert slot_release(client, keys, "task-a", limit=2) == [1, handed("task-d"), handed("task-c")]
    assert view.zrange(keys.line, 0, -1) == [call_id("task-b")]


def test_slot_release_writes_the_finished_record(client: Any, view: Any, keys: Keys) -> None:
    slot_acquire(client, keys, "task-a")
    assert slot_release(client, keys, "task-a", record=finished(0, "call-1")) == [1]
    assert view.get(keys.record) == finished(0, "call-1")
    assert 0 < view.pttl(keys.record) <= LONG


def test_slot_release_leaves_no_key_behind_once_nothing_is_held_or_waiting(client: Any, view: Any,
                                                                          keys: Keys) -> None:
    slot_acquire(client, keys, "task-a")
    slot_acquire(client, keys, "task-b", wait=True)
    slot_release(client, keys, "task-a")
    slot_acquire(client, keys, "task-b")
    assert slot_release(client, keys, "task-b") == [1]
    assert view.exists(keys.slots, keys.line, keys.messages) == 0


# -- running_limit: keys 2.0.0 wrote (a rolling deploy) ----------------------------------------------------------


def hold_in_2_0_0_form(view: Any, keys: Keys, task: str, lease: int = LONG) -> str:
    """A slot as a process of 2.0.0 takes it: ``s:<token>`` -> ``<expiry>:<since, seconds>``, and ``limit``."""
    field = f"s:{owner(task)}"
    view.hset(keys.slots, mapping={field: f"{server_ms(view) + lease}:1700000000.001", "limit": "1"})
    view.pexpire(keys.slots, LONG)
    return field


def test_slot_acquire_counts_a_slot_held_in_the_2_0_0_form(client: Any, view: Any, keys: Keys) -> None:
    hold_in_2_0_0_form(view, keys, "task-a")
    assert slot_acquire(client, keys, "task-b", wait=False) == [5, owner("task-a")]


def test_slot_acquire_refuses_another_delivery_of_an_attempt_holding_a_slot_in_the_2_0_0_form(
        client: Any, view: Any, keys: Keys) -> None:
    hold_in_2_0_0_form(view, keys, "task-a")
    assert slot_acquire(client, keys, "task-a", delivery=2, limit=2) == [4, owner("task-a")]


def test_slot_acquire_takes_over_a_slot_held_in_the_2_0_0_form(client: Any, view: Any, keys: Keys) -> None:
    hold_in_2_0_0_form(view, keys, "task-a")
    assert slot_acquire(client, keys, "task-a", delivery=2, takeover=owner("task-a")) == [1, ""]
    assert sorted(view.hkeys(keys.slots)) == sorted([f"S{owner('task-a', delivery=2)}", "L"])


def test_slot_acquire_claims_a_reservation_made_in_the_2_0_0_form(client: Any, view: Any, keys: Keys) -> None:
    view.hset(keys.slots, f"r:{call_id('task-b')}", f"{server_ms(view) + LONG}\x1f200\x1f{message('task-b')}")
    assert slot_acquire(client, keys, "task-c", wait=False) == [5, ""]
    assert slot_acquire(client, keys, "task-b") == [1, ""]
    assert slot_fields(view, keys) == [f"S{owner('task-b')}"]


def test_slot_release_frees_a_slot_held_in_the_2_0_0_form(client: Any, view: Any, keys: Keys) -> None:
    hold_in_2_0_0_form(view, keys, "task-a")
    assert slot_release(client, keys, "task-a") == [1]
    assert view.exists(keys.slots) == 0


def test_slot_renew_extends_a_slot_held_in_the_2_0_0_form_in_that_form(client: Any, view: Any, keys: Keys) -> None:
    field = hold_in_2_0_0_form(view, keys, "task-a", lease=1000)
    before = server_ms(view)
    assert run_script(client, SLOT_RENEW, keys.slots, owner("task-a"), LONG) == 1
    value = view.hget(keys.slots, field)
    assert value.endswith(":1700000000.001") and int(value.split(":")[0]) >= before + LONG


def test_slot_clear_deletes_a_slot_held_in_the_2_0_0_form(client: Any, view: Any, keys: Keys) -> None:
    field = hold_in_2_0_0_form(view, keys, "task-a")
    assert run_script(client, SLOT_CLEAR, keys.slots, field, view.hget(keys.slots, field)) == 1
    assert view.exists(keys.slots) == 0


# -- running_limit: SLOT_RENEW, SLOT_CLEAR, SLOT_FORGET ----------------------------------------------------------


def test_slot_renew_extends_the_lease_of_the_slot_its_token_holds(client: Any, view: Any, keys: Keys) -> None:
    slot_acquire(client, keys, "task-a", lease=1000, taken=SINCE_1)
    before = server_ms(view)
    assert run_script(client, SLOT_RENEW, keys.slots, owner("task-a"), LONG) == 1
    assert expiry(view, keys, f"S{owner('task-a')}") >= before + LONG
    assert held_since(view, keys, f"S{owner('task-a')}") == int(SINCE_1)
    assert view.pttl(keys.slots) > 1000


def test_slot_renew_of_a_token_without_a_slot_is_0(client: Any, view: Any, keys: Keys) -> None:
    assert run_script(client, SLOT_RENEW, keys.slots, owner("task-a"), LONG) == 0
    assert view.exists(keys.slots) == 0


def test_slot_clear_deletes_a_field_that_still_holds_the_value(client: Any, view: Any, keys: Keys) -> None:
    slot_acquire(client, keys, "task-a", limit=2)
    slot_acquire(client, keys, "task-b", limit=2)
    field = f"S{owner('task-a')}"
    assert run_script(client, SLOT_CLEAR, keys.slots, field, view.hget(keys.slots, field)) == 1
    assert slot_fields(view, keys) == [f"S{owner('task-b')}"]


def test_slot_clear_leaves_a_field_whose_value_changed(client: Any, view: Any, keys: Keys) -> None:
    slot_acquire(client, keys, "task-a")
    field = f"S{owner('task-a')}"
    assert run_script(client, SLOT_CLEAR, keys.slots, field, "1:0") == 0
    assert slot_fields(view, keys) == [field]


def test_slot_clear_deletes_a_slot_whose_lease_was_renewed_since_it_was_listed(client: Any, view: Any,
                                                                              keys: Keys) -> None:
    slot_acquire(client, keys, "task-a", lease=1000)
    field = f"S{owner('task-a')}"
    listed = view.hget(keys.slots, field)
    assert run_script(client, SLOT_RENEW, keys.slots, owner("task-a"), LONG) == 1
    assert view.hget(keys.slots, field) != listed
    assert run_script(client, SLOT_CLEAR, keys.slots, field, listed) == 1
    assert view.exists(keys.slots) == 0


def test_slot_clear_leaves_a_slot_its_token_took_again_at_another_time(client: Any, view: Any,
                                                                       keys: Keys) -> None:
    slot_acquire(client, keys, "task-a")
    field = f"S{owner('task-a')}"
    listed = view.hget(keys.slots, field)
    expiry, span = (int(part) for part in listed.split(":"))
    view.hset(keys.slots, field, f"{expiry}:{span + 1}")  # the same token, taken a millisecond earlier
    assert run_script(client, SLOT_CLEAR, keys.slots, field, listed) == 0
    assert slot_fields(view, keys) == [field]


def test_slot_clear_deletes_the_key_once_no_slot_or_reservation_is_left(client: Any, view: Any,
                                                                        keys: Keys) -> None:
    slot_acquire(client, keys, "task-a")
    field = f"S{owner('task-a')}"
    assert run_script(client, SLOT_CLEAR, keys.slots, field, view.hget(keys.slots, field)) == 1
    assert view.exists(keys.slots) == 0


def slot_forget(client: Any, keys: Keys, task: str, *, limit: int = 1) -> Any:
    return run_script(client, SLOT_FORGET, keys.slots,
               call_id(task),  # ARGV[1] the call id whose place or reservation goes
               limit,  # ARGV[2] the limit
               LONG,  # ARGV[3] how long a reservation is kept
               more_keys=[keys.line, keys.messages])


def test_slot_forget_takes_a_call_out_of_the_line(client: Any, view: Any, keys: Keys) -> None:
    slot_acquire(client, keys, "task-a")
    slot_acquire(client, keys, "task-b", wait=True, called=100)
    slot_acquire(client, keys, "task-c", wait=True, called=200)
    assert slot_forget(client, keys, "task-b") == [1]
    assert view.zrange(keys.line, 0, -1) == [call_id("task-c")]
    assert view.hget(keys.messages, call_id("task-b")) is None


def test_slot_forget_gives_a_forgotten_reservation_to_the_next_call_in_line(client: Any, view: Any,
                                                                          keys: Keys) -> None:
    slot_acquire(client, keys, "task-a")
    slot_acquire(client, keys, "task-b", wait=True, called=100)
    slot_acquire(client, keys, "task-c", wait=True, called=200)
    slot_release(client, keys, "task-a")
    assert slot_forget(client, keys, "task-b") == [1, handed("task-c")]
    assert slot_fields(view, keys) == [f"R{call_id('task-c')}"]


def test_slot_forget_of_a_call_neither_in_line_nor_reserved_is_0(client: Any, view: Any, keys: Keys) -> None:
    slot_acquire(client, keys, "task-a")
    assert slot_forget(client, keys, "task-b") == [0]
    assert slot_fields(view, keys) == [f"S{owner('task-a')}"]


def test_slot_forget_leaves_no_key_behind_once_nothing_is_held_or_waiting(client: Any, view: Any,
                                                                         keys: Keys) -> None:
    slot_acquire(client, keys, "task-a")
    slot_acquire(client, keys, "task-b", wait=True)
    slot_release(client, keys, "task-a")
    assert slot_forget(client, keys, "task-b") == [1]
    assert view.exists(keys.slots, keys.line, keys.messages) == 0


# -- debounce: BURST_CALL ----------------------------------------------------------------------------------------


def burst_call(client: Any, keys: Keys, token: str, arguments: str = "[]", *, debounce: int = LONG, most: int = 0,
               overdue: int = LONG) -> Any:
    return run_script(client, BURST_CALL, keys.burst,
               token,  # ARGV[1] a new task id
               debounce,  # ARGV[2] debounce
               most,  # ARGV[3] debounce_max (0: none)
               arguments,  # ARGV[4] the call's arguments
               LONG,  # ARGV[5] how long past its due time a burst is kept
               overdue)  # ARGV[6] how long past its due time a burst is taken for one whose message was lost


def burst_take(client: Any, keys: Keys, burst_id: str) -> Any:
    return run_script(client, BURST_TAKE, keys.burst,
               burst_id,  # ARGV[1] the burst's task id
               LONG)  # ARGV[2] how long a started burst's arguments are kept


def burst_forget(client: Any, keys: Keys, burst_id: str, what: str, keep: int = LONG) -> Any:
    return run_script(client, BURST_FORGET, keys.burst,
               burst_id,  # ARGV[1] a burst's task id
               what,  # ARGV[2] "open", "drop" or "closed"
               keep)  # ARGV[3] with "closed": how long the ended burst's last call is remembered


def due(view: Any, keys: Keys) -> int:
    return int(view.hget(keys.burst, "d"))


def closed_burst(client: Any, view: Any, keys: Keys) -> None:
    """Burst ``t1``, joined by ``t2`` with arguments ``[2]``, due and taken: its execution runs."""
    burst_call(client, keys, "t1", "[1]", debounce=1)
    burst_call(client, keys, "t2", "[2]", debounce=1)
    wait_for_server_time_past(view, due(view, keys))
    assert burst_take(client, keys, "t1") == [1, "[2]"]


def test_burst_call_starts_a_burst_under_its_task_id(client: Any, view: Any, keys: Keys) -> None:
    before = server_ms(view)
    assert burst_call(client, keys, "t1", "[1]", debounce=LONG) == [1, "t1", LONG]
    after = server_ms(view)
    burst = view.hgetall(keys.burst)
    # One call, by the burst's own token, and no debounce_max: no count, no last call, no first call.
    assert sorted(burst) == ["a", "d", "i"]
    assert (burst["i"], burst["a"]) == ("t1", "[1]")
    assert before + LONG <= int(burst["d"]) <= after + LONG


def test_burst_call_under_debounce_max_keeps_the_first_call_before_the_due_time(client: Any, view: Any,
                                                                                keys: Keys) -> None:
    burst_call(client, keys, "t1", debounce=1000, most=5000)
    assert view.hget(keys.burst, "f") == "1000"


def test_burst_call_joins_the_open_burst_with_its_arguments(client: Any, view: Any, keys: Keys) -> None:
    burst_call(client, keys, "t1", "[1]")
    code, burst_id, ms = burst_call(client, keys, "t2", "[2]")
    assert (code, burst_id) == (0, "t1")
    assert 0 < ms <= LONG
    burst = view.hgetall(keys.burst)
    assert (burst["i"], burst["n"], burst["a"], burst["b"]) == ("t1", "2", "[2]", "t2")


def test_burst_call_puts_the_burst_off_by_the_debounce_at_each_join(client: Any, view: Any, keys: Keys) -> None:
    burst_call(client, keys, "t1", debounce=1000)
    first_due = due(view, keys)
    wait_for_server_time_past(view, first_due - 1000 + 2)
    before = server_ms(view)
    burst_call(client, keys, "t2", debounce=1000)
    assert due(view, keys) >= before + 1000 > first_due


def test_burst_call_puts_the_burst_off_no_later_than_debounce_max_after_its_first_call(client: Any, view: Any,
                                                                                      keys: Keys) -> None:
    burst_call(client, keys, "t1", debounce=1000, most=1010)
    first = due(view, keys) - int(view.hget(keys.burst, "f"))
    wait_for_server_time_past(view, first + 20)
    code, _, ms = burst_call(client, keys, "t2", debounce=1000, most=1010)
    assert code == 0
    assert due(view, keys) == first + 1010
    assert ms <= 990


def test_burst_call_sent_again_by_the_call_that_started_the_burst_counts_once(client: Any, view: Any,
                                                                              keys: Keys) -> None:
    burst_call(client, keys, "t1")
    code, burst_id, _ = burst_call(client, keys, "t1")
    assert (code, burst_id) == (1, "t1")
    assert view.hget(keys.burst, "n") is None  # one call


def test_burst_call_sent_again_by_the_last_call_counts_once(client: Any, view: Any, keys: Keys) -> None:
    burst_call(client, keys, "t1")
    burst_call(client, keys, "t2")
    code, burst_id, _ = burst_call(client, keys, "t2")
    assert (code, burst_id) == (0, "t1")
    assert view.hget(keys.burst, "n") == "2"


def test_burst_call_sent_again_by_a_call_whose_arguments_run_is_answered_with_that_burst(
        client: Any, view: Any, keys: Keys) -> None:
    closed_burst(client, view, keys)
    assert burst_call(client, keys, "t2") == [0, "t1", 0]
    assert view.hget(keys.burst, "i") is None


def test_burst_call_sent_again_by_the_last_call_of_an_ended_burst_is_answered_with_it(
        client: Any, view: Any, keys: Keys) -> None:
    closed_burst(client, view, keys)
    burst_forget(client, keys, "t1", "closed")
    assert burst_call(client, keys, "t2") == [0, "t1", 0]
    assert view.hget(keys.burst, "i") is None


def test_burst_call_joining_an_overdue_burst_asks_for_its_message_again(client: Any, view: Any,
                                                                        keys: Keys) -> None:
    burst_call(client, keys, "t1", debounce=1, overdue=20)
    wait_for_server_time_past(view, due(view, keys) + 20)
    code, burst_id, _ = burst_call(client, keys, "t2", debounce=1, overdue=20)
    assert (code, burst_id) == (2, "t1")
    assert view.hget(keys.burst, "n") == "2"


def test_burst_call_asks_for_an_overdue_message_at_most_once_per_overdue_interval(client: Any, view: Any,
                                                                                  keys: Keys) -> None:
    overdue = 200
    burst_call(client, keys, "t1", debounce=1, overdue=overdue)
    wait_for_server_time_past(view, due(view, keys) + overdue)
    assert burst_call(client, keys, "t2", debounce=1, overdue=overdue)[0] == 2
    assert burst_call(client, keys, "t3", debounce=1, overdue=overdue)[0] == 0
    rescued = int(view.hget(keys.burst, "r"))
    assert server_ms(view) <= rescued + overdue, "the second join came too late to show the interval"
    wait_for_server_time_past(view, max(due(view, keys), rescued) + overdue)
    assert burst_call(client, keys, "t4", debounce=1, overdue=overdue)[0] == 2


# -- debounce: BURST_TAKE ----------------------------------------------------------------------------------------


def test_burst_take_of_a_burst_not_yet_due_answers_how_long_until_it_is(client: Any, view: Any,
                                                                        keys: Keys) -> None:
    burst_call(client, keys, "t1", debounce=LONG)
    code, ms = burst_take(client, keys, "t1")
    assert code == 0
    assert 0 < ms <= LONG
    assert view.hget(keys.burst, "i") == "t1"


def test_burst_take_of_a_due_burst_runs_it_with_the_last_calls_arguments(client: Any, view: Any,
                                                                         keys: Keys) -> None:
    burst_call(client, keys, "t1", "[1]", debounce=1)
    burst_call(client, keys, "t2", "[2]", debounce=1)
    wait_for_server_time_past(view, due(view, keys))
    assert burst_take(client, keys, "t1") == [1, "[2]"]


def test_burst_take_of_a_due_burst_closes_it_so_that_a_new_call_starts_a_new_burst(client: Any, view: Any,
                                                                                   keys: Keys) -> None:
    closed_burst(client, view, keys)
    assert view.hget(keys.burst, "i") is None
    assert burst_call(client, keys, "t3", debounce=LONG) == [1, "t3", LONG]


def test_burst_take_by_a_copy_of_a_closed_bursts_message_runs_the_same_arguments(client: Any, view: Any,
                                                                                 keys: Keys) -> None:
    closed_burst(client, view, keys)
    assert burst_take(client, keys, "t1") == [1, "[2]"]


def test_burst_take_of_no_burst_is_2(client: Any, keys: Keys) -> None:
    assert burst_take(client, keys, "t1") == [2]


def test_burst_take_of_another_burst_than_the_open_one_is_2(client: Any, view: Any, keys: Keys) -> None:
    burst_call(client, keys, "t1", debounce=1)
    wait_for_server_time_past(view, due(view, keys))
    assert burst_take(client, keys, "t9") == [2]
    assert view.hget(keys.burst, "i") == "t1"


# -- debounce: BURST_FORGET --------------------------------------------------------------------------------------


def test_burst_forget_open_forgets_a_burst_no_other_call_joined(client: Any, view: Any, keys: Keys) -> None:
    burst_call(client, keys, "t1")
    assert burst_forget(client, keys, "t1", "open") == 1
    assert view.hget(keys.burst, "i") is None


def test_burst_forget_open_keeps_a_burst_another_call_joined(client: Any, view: Any, keys: Keys) -> None:
    burst_call(client, keys, "t1")
    burst_call(client, keys, "t2")
    assert burst_forget(client, keys, "t1", "open") == 0
    assert view.hget(keys.burst, "i") == "t1"


def test_burst_forget_drop_forgets_the_open_burst_even_when_joined(client: Any, view: Any, keys: Keys) -> None:
    burst_call(client, keys, "t1")
    burst_call(client, keys, "t2")
    assert burst_forget(client, keys, "t1", "drop") == 1
    assert view.hget(keys.burst, "i") is None


def test_burst_forget_of_another_burst_than_the_open_one_is_0(client: Any, view: Any, keys: Keys) -> None:
    burst_call(client, keys, "t1")
    assert burst_forget(client, keys, "t9", "drop") == 0
    assert view.hget(keys.burst, "i") == "t1"


def test_burst_forget_closed_forgets_the_arguments_its_execution_ran_with(client: Any, view: Any,
                                                                          keys: Keys) -> None:
    closed_burst(client, view, keys)
    assert burst_forget(client, keys, "t1", "closed") == 1
    assert burst_take(client, keys, "t1") == [2]


def test_burst_forget_closed_remembers_only_the_ended_bursts_last_call_for_the_time_given(
        client: Any, view: Any, keys: Keys) -> None:
    closed_burst(client, view, keys)
    burst_forget(client, keys, "t1", "closed", keep=5000)
    assert view.hgetall(keys.burst) == {"p": "t2 t1"}
    assert 0 < view.pttl(keys.burst) <= 5000


def test_burst_forget_closed_of_a_burst_not_running_is_0(client: Any, keys: Keys) -> None:
    assert burst_forget(client, keys, "t1", "closed") == 0


# -- debounce: bursts 2.0.0 wrote (a rolling deploy) ------------------------------------------------------------


def test_burst_call_joins_an_open_burst_written_in_the_2_0_0_form(client: Any, view: Any, keys: Keys) -> None:
    now = server_ms(view)
    view.hset(keys.burst, mapping={"id": "t1", "first": now, "last": now, "due": now + LONG, "count": 1,
                                   "args": "[1]", "by": "t1"})
    assert burst_call(client, keys, "t2", "[2]", most=2 * LONG)[:2] == [0, "t1"]
    burst = view.hgetall(keys.burst)
    assert sorted(burst) == ["a", "b", "d", "f", "i", "n"]
    assert (burst["i"], burst["n"], burst["a"], burst["b"]) == ("t1", "2", "[2]", "t2")
    assert int(burst["d"]) - int(burst["f"]) == now


def test_burst_take_runs_a_burst_closed_in_the_2_0_0_form_again(client: Any, view: Any, keys: Keys) -> None:
    view.hset(keys.burst, mapping={"closed:t1": "[2]", "last:t1": "t2", "ran:t2": "t1"})
    assert burst_take(client, keys, "t1") == [1, "[2]"]
    assert burst_call(client, keys, "t2") == [0, "t1", 0]
    assert burst_forget(client, keys, "t1", "closed") == 1
    assert view.hgetall(keys.burst) == {"p": "t2 t1"}


# -- throttle: THROTTLE_TAKE -------------------------------------------------------------------------------------

#: The margin and the lateness a reservation is started on with, as the library sends them (ms).
MARGIN, ON_TIME = 100, 60


def throttle_take(client: Any, key: str, member: str, *limits: int, mode: str = "postpone", reserved: str = "",
                  copies: str = "count", starter: str = "instance-1", gone: str = "") -> list[Any]:
    return list(run_script(client, THROTTLE_TAKE, key, member, MARGIN, ON_TIME, mode, "spec", starter, reserved,
                           copies, gone, *limits))


def test_throttle_take_starts_calls_while_fewer_than_n_lie_in_the_window(client: Any, view: Any,
                                                                         keys: Keys) -> None:
    replies = [throttle_take(client, keys.throttle, f"call-{n}", 3, LONG) for n in range(3)]
    assert [code for code, _, _ in replies] == [1, 1, 1]
    assert all(at == now for _, at, now in replies)
    assert view.zcard(keys.throttle) == 4  # three starts and the limits (score 0)
    assert view.zscore(keys.throttle, "spec") == 0


def test_throttle_take_reserves_the_nth_latest_start_plus_the_period_and_margin(client: Any, view: Any,
                                                                                keys: Keys) -> None:
    first = throttle_take(client, keys.throttle, "call-1", 2, LONG)
    throttle_take(client, keys.throttle, "call-2", 2, LONG)
    code, at, _ = throttle_take(client, keys.throttle, "call-3", 2, LONG)
    assert (code, at) == (2, first[1] + LONG + MARGIN)
    assert view.zscore(keys.throttle, "call-3") == at
    # The next reservation comes after it, in arrival order.
    code, later, _ = throttle_take(client, keys.throttle, "call-4", 2, LONG)
    assert code == 2 and later >= at


def test_throttle_take_reject_writes_nothing_and_answers_the_earliest_start(client: Any, view: Any,
                                                                            keys: Keys) -> None:
    first = throttle_take(client, keys.throttle, "call-1", 1, LONG, mode="reject")
    code, at, _ = throttle_take(client, keys.throttle, "call-2", 1, LONG, mode="reject")
    assert (code, at) == (0, first[1] + LONG + MARGIN)
    assert view.zscore(keys.throttle, "call-2") is None


def test_throttle_take_starts_a_call_on_its_reservation_when_on_time(client: Any, view: Any, keys: Keys) -> None:
    now = server_ms(view)
    view.zadd(keys.throttle, {"other": now - 5, "mine": now - 10})
    assert throttle_take(client, keys.throttle, "mine", 1, LONG)[:2] == [1, now - 10]
    # Its reservation is now a start: a copy of the call finds none to start on.
    assert view.zscore(keys.throttle, "mine") is None
    assert view.zscore(keys.throttle, "mine@instance-1") == now - 10


def test_throttle_take_tells_a_copy_of_a_call_that_started_on_its_reservation_who_started_it(
        client: Any, view: Any, keys: Keys) -> None:
    now = server_ms(view)
    view.zadd(keys.throttle, {"mine": now - 10})
    assert throttle_take(client, keys.throttle, "mine", 1, LONG, reserved=str(now - 10), copies="ignore")[0] == 1
    # The message delivered twice: its other copy finds the start, and writes nothing.
    code, at, _, start = throttle_take(client, keys.throttle, "mine", 1, LONG, reserved=str(now - 10),
                                       copies="ignore")
    assert (code, at, start) == (3, now - 10, "mine@instance-1")
    assert view.zrange(keys.throttle, 0, -1) == ["mine@instance-1"]


def test_throttle_lost_marks_the_start_of_the_dead_process_on_the_reservation(client: Any, view: Any,
                                                                            keys: Keys) -> None:
    now = server_ms(view)
    view.zadd(keys.throttle, {"mine@instance-1/7": now - 10, "other@instance-1/7": now - 10})
    assert run_script(client, THROTTLE_LOST, keys.throttle, "mine", "instance-1/7", str(now - 10)) == 1
    # Still counted, at its start; no copy takes it for a start that lives.
    assert view.zrange(keys.throttle, 0, -1, withscores=True) == [
        (f"mine!{now - 10}", now - 10), ("other@instance-1/7", now - 10)]


def test_throttle_lost_leaves_the_start_of_another_process_of_the_same_worker(client: Any, view: Any,
                                                                             keys: Keys) -> None:
    now = server_ms(view)
    view.zadd(keys.throttle, {"mine@instance-1/8": now - 10})
    assert run_script(client, THROTTLE_LOST, keys.throttle, "mine", "instance-1/7", str(now - 10)) == 0
    assert view.zrange(keys.throttle, 0, -1) == ["mine@instance-1/8"]


def test_throttle_take_lets_a_copy_claim_a_lost_start_and_start_anew_within_the_limit(client: Any, view: Any,
                                                                                      keys: Keys) -> None:
    now = server_ms(view)
    view.zadd(keys.throttle, {f"mine!{now - 10}": now - 10})
    code, at, _ = throttle_take(client, keys.throttle, "mine", 2, LONG, reserved=str(now - 10), copies="ignore",
                                starter="instance-2/9")
    assert code == 1
    # The old start names the claimer now; the new one is a start of its own: both count.
    assert view.zrange(keys.throttle, 1, -1, withscores=True) == [
        ("mine@instance-2/9", now - 10), ("mine@2@instance-2/9", at)]
    # Another copy of the message finds the claim, and waits on it.
    code, _, _, start = throttle_take(client, keys.throttle, "mine", 2, LONG, reserved=str(now - 10),
                                      copies="ignore", starter="instance-3/9")
    assert (code, start) == (3, "mine@instance-2/9")


def test_throttle_take_lets_a_copy_claim_the_start_of_a_gone_worker(client: Any, view: Any, keys: Keys) -> None:
    now = server_ms(view)
    view.zadd(keys.throttle, {"mine@instance-1/7": now - 10})
    code, _, _ = throttle_take(client, keys.throttle, "mine", 1, LONG, reserved=str(now - 10), copies="ignore",
                               starter="instance-2/9", gone="mine@instance-1/7")
    # A limit of one, full with the old start: the new one is reserved after it; the claim holds.
    assert code == 2
    assert view.zscore(keys.throttle, "mine@instance-2/9") == now - 10
    assert view.zscore(keys.throttle, "mine@instance-1/7") is None


def test_throttle_take_rejecting_a_copy_leaves_the_lost_start_unclaimed(client: Any, view: Any,
                                                                        keys: Keys) -> None:
    now = server_ms(view)
    view.zadd(keys.throttle, {f"mine!{now - 10}": now - 10})
    code, _, _ = throttle_take(client, keys.throttle, "mine", 1, LONG, mode="reject", reserved=str(now - 10),
                               copies="ignore", starter="instance-2/9")
    assert code == 0
    assert view.zrange(keys.throttle, 0, -1) == [f"mine!{now - 10}"]


def test_throttle_take_keeps_the_start_of_a_call_whose_copy_comes_again(client: Any, view: Any,
                                                                        keys: Keys) -> None:
    code, started, _ = throttle_take(client, keys.throttle, "mine", 1, LONG)
    assert code == 1 and view.zscore(keys.throttle, "mine@instance-1") == started
    # A redelivered copy of the execution that started: its start still counts, it waits for its window.
    code, at, _ = throttle_take(client, keys.throttle, "mine", 1, LONG)
    assert (code, at) == (2, started + LONG + MARGIN)


def test_throttle_take_gives_a_copy_started_again_a_start_of_its_own(client: Any, view: Any, keys: Keys) -> None:
    first = throttle_take(client, keys.throttle, "mine", 2, LONG)
    wait_for_server_time_past(view, first[1])
    code, again, _ = throttle_take(client, keys.throttle, "mine", 2, LONG)
    assert code == 1 and again > first[1]
    # The short member holds the first start: the second is numbered, and both count.
    assert view.zrange(keys.throttle, 1, -1, withscores=True) == [
        ("mine@instance-1", first[1]), ("mine@2@instance-1", again)]


def test_throttle_take_keeps_the_reservation_of_a_call_that_arrives_early(client: Any, view: Any,
                                                                          keys: Keys) -> None:
    now = server_ms(view)
    view.zadd(keys.throttle, {"mine": now + 5000})
    assert throttle_take(client, keys.throttle, "mine", 1, LONG)[:2] == [2, now + 5000]
    assert view.zscore(keys.throttle, "mine") == now + 5000


def test_throttle_take_makes_a_late_call_reserve_again_at_the_end(client: Any, view: Any, keys: Keys) -> None:
    now = server_ms(view)
    view.zadd(keys.throttle, {"mine": now - 1000, "other": now - 500})
    code, at, _ = throttle_take(client, keys.throttle, "mine", 1, LONG)
    assert (code, at) == (2, now - 500 + LONG + MARGIN)
    assert view.zscore(keys.throttle, "mine") == at


def test_throttle_take_with_several_limits_waits_for_the_latest_of_them(client: Any, view: Any,
                                                                        keys: Keys) -> None:
    now = server_ms(view)
    # Two starts in the last 2 s (limit 2/2s), three in the last minute (limit 3/60s).
    view.zadd(keys.throttle, {"a": now - 50_000, "b": now - 1500, "c": now - 1000})
    code, at, _ = throttle_take(client, keys.throttle, "call", 2, 2000, 3, LONG)
    assert (code, at) == (2, now - 50_000 + LONG + MARGIN)


def test_throttle_take_trims_entries_no_window_sees_and_expires_the_log_after_the_last(client: Any, view: Any,
                                                                                       keys: Keys) -> None:
    now = server_ms(view)
    view.zadd(keys.throttle, {"old": now - 10_000, "spec": 0})
    throttle_take(client, keys.throttle, "call", 1, 2000)
    assert view.zscore(keys.throttle, "old") is None
    assert view.zscore(keys.throttle, "spec") == 0
    assert 2000 < view.pttl(keys.throttle) <= 2000 + MARGIN + 1


# -- the parked registry: PARK, PARKED_CLAIM, PARKED_RESCUE, PARKED_FORGET ------------------------------------------


class Parked:
    """A registry of one test's own: its entries, its due index, a task id's claimed marker."""

    def __init__(self, keys: Keys) -> None:
        tag = keys.lock.replace(":", "-")
        self.entries = f"parked:{{{tag}}}:entries"
        self.due = f"parked:{{{tag}}}:due"
        self.claimed = f"parked:{{{tag}}}:claimed:t1"


@pytest.fixture
def parked(keys: Keys) -> Parked:
    return Parked(keys)


def park(client: Any, parked: Parked, token: str, countdown_ms: int = LONG, task_id: str = "t1") -> Any:
    return run_script(client, PARK, parked.entries, task_id, token, "message-1", countdown_ms,
                      more_keys=[parked.due])


def claim(client: Any, parked: Parked, token: str, keep_ms: int = LONG) -> Any:
    return run_script(client, PARKED_CLAIM, parked.entries, "t1", token, keep_ms,
                      more_keys=[parked.due, parked.claimed])


def rescue(client: Any, parked: Parked, grace_ms: int = 0, lease_ms: int = LONG) -> Any:
    return run_script(client, PARKED_RESCUE, parked.entries, grace_ms, lease_ms, "r", 100, more_keys=[parked.due])


def test_park_records_the_message_under_its_task_id_due_after_the_countdown(client: Any, view: Any,
                                                                             parked: Parked) -> None:
    before = server_ms(view)
    due = park(client, parked, "p1", 5000)
    assert before + 5000 <= due <= server_ms(view) + 5000
    assert view.hget(parked.entries, "t1") == "p1\x1f0\x1fmessage-1"
    assert view.zscore(parked.due, "t1") == due


def test_park_of_the_same_task_id_replaces_its_entry(client: Any, view: Any, parked: Parked) -> None:
    park(client, parked, "p1")
    park(client, parked, "p2")
    assert view.hget(parked.entries, "t1").startswith("p2\x1f")
    assert view.zcard(parked.due) == 1


def test_claim_by_the_parked_token_takes_the_entry_and_remembers_the_claim(client: Any, view: Any,
                                                                           parked: Parked) -> None:
    park(client, parked, "p1")
    assert claim(client, parked, "p1", 5000) == 1
    assert view.hlen(parked.entries) == view.zcard(parked.due) == 0
    assert view.get(parked.claimed) == "p1"
    assert 0 < view.pttl(parked.claimed) <= 5000


def test_claim_by_another_token_than_the_parked_one_is_superseded(client: Any, view: Any, parked: Parked) -> None:
    park(client, parked, "p1")
    assert claim(client, parked, "p0") == 0
    assert view.hget(parked.entries, "t1").startswith("p1\x1f")


def test_claim_sent_again_by_the_copy_that_took_it_is_again(client: Any, parked: Parked) -> None:
    park(client, parked, "p1")
    claim(client, parked, "p1")
    assert claim(client, parked, "p1") == 3


def test_claim_after_another_copy_took_it_is_superseded(client: Any, parked: Parked) -> None:
    park(client, parked, "p1")
    claim(client, parked, "p1")
    assert claim(client, parked, "p0") == 0


def test_claim_of_a_task_id_nothing_is_known_of_is_unknown(client: Any, parked: Parked) -> None:
    assert claim(client, parked, "p1") == 2


def test_rescue_takes_only_entries_due_more_than_the_grace_ago(client: Any, view: Any, parked: Parked) -> None:
    park(client, parked, "p1", 1)
    park(client, parked, "p2", LONG, task_id="t2")
    wait_for_server_time_past(view, int(view.zscore(parked.due, "t1")) + 5)
    assert rescue(client, parked, grace_ms=LONG) == []
    assert rescue(client, parked) == [["t1", "r.1", 1, "message-1"]]


def test_rescue_gives_the_entry_a_new_token_that_supersedes_the_parked_copy(client: Any, view: Any,
                                                                            parked: Parked) -> None:
    park(client, parked, "p1", 1)
    wait_for_server_time_past(view, int(view.zscore(parked.due, "t1")) + 5)
    rescue(client, parked)
    assert claim(client, parked, "p1") == 0
    assert claim(client, parked, "r.1") == 1


def test_rescue_moves_the_entry_a_lease_on_so_that_no_other_rescue_takes_it(client: Any, view: Any,
                                                                            parked: Parked) -> None:
    park(client, parked, "p1", 1)
    wait_for_server_time_past(view, int(view.zscore(parked.due, "t1")) + 5)
    before = server_ms(view)
    rescue(client, parked, lease_ms=5000)
    assert rescue(client, parked) == []
    assert before + 5000 <= view.zscore(parked.due, "t1") <= server_ms(view) + 5000


def test_rescue_doubles_the_lease_at_each_rescue_of_an_entry(client: Any, view: Any, parked: Parked) -> None:
    park(client, parked, "p1", 1)
    wait_for_server_time_past(view, int(view.zscore(parked.due, "t1")) + 5)
    rescue(client, parked, lease_ms=20)
    wait_for_server_time_past(view, int(view.zscore(parked.due, "t1")) + 5)
    before = server_ms(view)
    assert rescue(client, parked, lease_ms=20)[0][2] == 2
    assert before + 40 <= view.zscore(parked.due, "t1") <= server_ms(view) + 40


def test_rescue_drops_a_due_index_entry_without_its_message(client: Any, view: Any, parked: Parked) -> None:
    view.zadd(parked.due, {"t9": 1})
    assert rescue(client, parked) == []
    assert view.zcard(parked.due) == 0


def test_forget_removes_the_entry_its_token_parked(client: Any, view: Any, parked: Parked) -> None:
    park(client, parked, "p1")
    assert run_script(client, PARKED_FORGET, parked.entries, "t1", "p1", more_keys=[parked.due]) == 1
    assert view.hlen(parked.entries) == view.zcard(parked.due) == 0


def test_forget_leaves_an_entry_another_publish_parked(client: Any, view: Any, parked: Parked) -> None:
    park(client, parked, "p2")
    assert run_script(client, PARKED_FORGET, parked.entries, "t1", "p1", more_keys=[parked.due]) == 0
    assert view.hlen(parked.entries) == 1
