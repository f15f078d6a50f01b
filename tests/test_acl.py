"""Locks held by a Redis user whose ACL allows only the library's keys and commands (docs/topologies.md).

The rule is read from the documentation, as a user copies it. Its commands are
checked against every command the library's Lua scripts run and every command
the library sends itself, read off the sources; then a worker and this process
run every feature as that user, and a user short of a command is told so, as
a permission error naming what it lacks.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import pickle
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from celery_once_task import LockStorePermissionError, LockStoreUnavailable, OnceTaskLocked, configure
from celery_once_task.keys import limited_key
from celery_once_task.ops import locks as lockinfo
from celery_once_task.record_keys import finished_key
from celery_once_task.store import client_for
from celery_once_task.store.connection import make_client
from celery_once_task.store.lua.bursts import BURST_CALL
from celery_once_task.store.permissions import lua_scripts, refusal, script_commands
from tests.lock_scenarios import (
    TOPOLOGY_QUEUE,
    duplicate_call_is_dropped,
    duplicate_execution_is_rejected,
    new_tag,
    publishing_to,
    topology_worker,
)
from tests.support import ROOT, RedisServer, Worker, events, running_worker, wait_until
from tests.topologies import Server
from tests.worker_app import (
    echo,
    export,
    gated,
    in_turn,
    parked_reindex,
    push_balance,
    reindex,
    remind,
    throttled,
    until_end,
)

PASSWORD = "S3cret-lock-pw"
DOCUMENT = ROOT / "docs" / "topologies.md"
PACKAGE = ROOT / "src" / "celery_once_task"


def documented_rules() -> str:
    """The ACL rules of docs/topologies.md, word for word: what follows the password in its ``ACL SETUSER``."""
    section = DOCUMENT.read_text().split("## ACL: the exact rules", 1)[1]
    line = re.search(r"^ACL SETUSER oncelock on >PASSWORD resetkeys (.*)$", section, re.MULTILINE)
    assert line is not None, "docs/topologies.md gives no ACL SETUSER line"
    return line.group(1)


#: The ACL rules of docs/topologies.md.
ACL_RULES = documented_rules()
#: The rules before finished records: a user set up then keeps its locks.
RULES_WITHOUT_RECORDS = ACL_RULES.replace(" ~once_task_done:*", "")
#: redis-py's methods that are not commands of their own name.
_METHOD_COMMANDS = {"scan_iter": "scan", "script_load": "script|load", "delete": "del"}


def allowed_commands() -> set[str]:
    return {word[1:] for word in ACL_RULES.split() if word.startswith("+")}


def _redis_command_methods() -> set[str]:
    """redis-py's client methods that send a Redis command (those of its command mixins)."""
    pipeline_own = set(vars(redis.client.Pipeline))  # reset, execute, ...: a pipeline's, sending no command
    return {name for name, member in inspect.getmembers(redis.Redis, inspect.isfunction)
            if not name.startswith("_") and name not in pipeline_own
            and (inspect.getmodule(member) or sys).__name__.startswith("redis.commands")}


def _name_of(node: ast.expr) -> str:
    """The name a method is called on (``client`` of ``client.get()``, ``pipe`` of ``self.pipe.get()``); else ""."""
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""


def library_commands() -> dict[str, set[str]]:
    """Every command the library sends itself, with where: client methods, ``execute_command``, packed commands."""
    methods = _redis_command_methods()
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        where = str(path.relative_to(PACKAGE))
        for node in ast.walk(ast.parse(source)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            receiver = _name_of(node.func.value)
            name = node.func.attr
            if name == "execute_command" and node.args and isinstance(node.args[0], ast.Constant):
                command = str(node.args[0].value).lower().replace(" ", "|")
            elif name in methods and re.search(r"client|pipe|node|redis", receiver, re.IGNORECASE):
                command = _METHOD_COMMANDS.get(name, name)
            else:
                continue
            found.setdefault(command, set()).add(where)
        # Commands packed by hand (RESP): the first bulk string of a b"*N\r\n$len\r\nNAME\r\n..." template.
        for command in re.findall(r"\*%?\w*\\r\\n\$\d+\\r\\n([A-Z]+)\\r\\n", source):
            found.setdefault(command.lower(), set()).add(where)
    return found


def add_user(server: Server, name: str, rules: str) -> str:
    """A user with ``rules``; its URL."""
    user = ("ACL", "SETUSER", name, "reset", "on", f">{PASSWORD}", *rules.split())
    try:
        # Redis 7.2+ and Valkey: redis-py names itself when it connects (docs/topologies.md: the optional rule).
        server.client.execute_command(*user, "+client|setinfo")
    except redis.ResponseError:  # a server without CLIENT SETINFO
        server.client.execute_command(*user)
    return f"redis://{name}:{PASSWORD}@127.0.0.1:{server.port}/2"


@pytest.fixture(scope="module")
def acl(redis_server: RedisServer) -> Iterator[tuple[str, Worker, Server]]:
    server = Server("--save", "", "--appendonly", "no", name="acl")
    try:
        url = add_user(server, "oncelock", ACL_RULES)
        with topology_worker(redis_server.port, "acl", url, {}) as worker:
            yield url, worker, server
    finally:
        server.stop()


@pytest.fixture()
def locks(acl: tuple[str, Worker, Server]) -> Iterator[Any]:
    url, _, _ = acl
    with publishing_to(url, {}):
        yield make_client(url)


OTHER_KEY = "sessions:1"
#: The commands that let a user change its own rules or read others' data: the documented rule must not need them.
NEVER = {"acl", "config", "eval", "flushall", "flushdb", "keys", "debug", "module", "shutdown"}


def once_command(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``celery -A tests.worker_app once ...`` with its locks at ``url``, as an operator runs it."""
    env = {**os.environ, "ONCE_TEST_LOCKS_URL": url}
    return subprocess.run([sys.executable, "-m", "celery", "-A", "tests.worker_app", "once", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def burst_key(doc: str) -> str:
    return limited_key(parked_reindex.name, parked_reindex.once_digest((doc, 0), {}), "burst")


def refusals(server: Server, user: str) -> list[Any]:
    """The server's ACL log entries of ``user``."""
    return [entry for entry in server.client.acl_log() if entry["username"] == user]


# -- the rule, against the sources ------------------------------------------------------


@pytest.mark.parametrize("script", lua_scripts(), ids=lambda script: script.name)
def test_the_documented_rule_allows_every_command_of_every_script(script: Any) -> None:
    assert script_commands(script) <= allowed_commands()


def test_every_module_of_the_scripts_is_read_for_their_commands() -> None:
    lua = PACKAGE / "store" / "lua"
    defined = {name for path in lua.glob("*.py")
               for name in re.findall(r"^([A-Z_]+) = Script\(", path.read_text(), re.MULTILINE)}
    modules = [importlib.import_module(f"celery_once_task.store.lua.{path.stem}") for path in lua.glob("*.py")]
    assert {getattr(module, name).name for module in modules for name in defined if hasattr(module, name)} == {
        script.name for script in lua_scripts()}


def test_the_documented_rule_allows_every_command_the_library_sends() -> None:
    sent = library_commands()
    assert {"evalsha", "set", "hgetall", "scan"} <= set(sent)  # the reading found the commands it must
    missing = {command: sorted(where) for command, where in sent.items() if command not in allowed_commands()}
    assert missing == {}


def test_the_documented_rule_allows_nothing_beyond_the_library() -> None:
    assert not allowed_commands() & NEVER


def test_the_limited_user_can_touch_no_other_key(locks: Any) -> None:
    with pytest.raises(redis.exceptions.NoPermissionError):
        locks.get(OTHER_KEY)


def test_duplicate_call_is_dropped_for_a_user_limited_to_the_library(locks: Any, recs: redis.Redis) -> None:
    duplicate_call_is_dropped(recs, locks, new_tag("acl-queue"))


def test_duplicate_execution_is_rejected_for_a_user_limited_to_the_library(locks: Any, recs: redis.Redis) -> None:
    duplicate_execution_is_rejected(recs, locks, new_tag("acl-running"))


def test_the_worker_never_logs_the_password(acl: tuple[str, Worker, Server]) -> None:
    _, worker, _ = acl
    assert PASSWORD not in worker.read_log()


def test_finished_executions_are_recorded_for_a_user_limited_to_the_library(
    acl: tuple[str, Worker, Server], locks: Any, recs: redis.Redis
) -> None:
    _, _, server = acl
    tag = new_tag("acl-record")
    result = echo.apply_async((tag,), queue=TOPOLOGY_QUEUE)
    result.get(timeout=30)
    admin = redis.Redis(port=server.port, db=2)
    assert admin.exists(finished_key(echo.once_key((tag,), {}, "running"), result.id, "-")) == 1


def test_a_user_without_the_record_pattern_keeps_its_locks_and_is_told(
    redis_server: RedisServer, acl: tuple[str, Worker, Server], recs: redis.Redis
) -> None:
    _, _, server = acl
    url = add_user(server, "oldlock", RULES_WITHOUT_RECORDS)
    tag = new_tag("acl-old")
    queue = f"acl-old-{tag}"
    env = {"ONCE_TEST_LOCKS_URL": url}
    with publishing_to(url, {}), running_worker(redis_server.port, f"acl-old-{tag}", queues=queue, env=env) as old:
        first = gated.apply_async((tag,), queue=queue)
        wait_until(lambda: events(recs, tag, "start"), what="the first call to start")
        with pytest.raises(OnceTaskLocked):
            gated.apply_async((tag,), queue=queue).get(timeout=30)
        recs.rpush(f"gate:{tag}", 1)
        assert first.get(timeout=30) == tag
    assert "add the key pattern ~once_task_done:* to the user's ACL rules" in old.read_log()
    assert server.client.exists(gated.once_key((tag,), {}, "running")) == 0


# -- every feature, as the documented user ------------------------------------------------


def test_debounce_runs_a_burst_once_with_its_last_arguments_for_a_user_limited_to_the_library(locks: Any) -> None:
    doc = new_tag("acl-debounce")
    first = reindex.apply_async((doc, 1), queue=TOPOLOGY_QUEUE)
    last = reindex.apply_async((doc, 2), queue=TOPOLOGY_QUEUE)
    assert last.id == first.id
    assert first.get(timeout=30) == 2


def test_running_limit_runs_every_call_for_a_user_limited_to_the_library(locks: Any) -> None:
    tenant = new_tag("acl-limit")
    results = [export.apply_async((tenant, n), queue=TOPOLOGY_QUEUE) for n in range(5)]
    assert [result.get(timeout=30) for result in results] == list(range(5))


def test_a_waiting_call_runs_after_the_first_for_a_user_limited_to_the_library(locks: Any, recs: redis.Redis) -> None:
    tag = new_tag("acl-wait")
    first = in_turn.apply_async((tag, 0), queue=TOPOLOGY_QUEUE)
    wait_until(lambda: events(recs, tag, "start"), what="the first call to start")
    second = in_turn.apply_async((tag, 1), queue=TOPOLOGY_QUEUE)
    recs.rpush(f"gate:{tag}:0", 1)
    recs.rpush(f"gate:{tag}:1", 1)
    assert (first.get(timeout=30), second.get(timeout=30)) == (0, 1)
    assert [event["n"] for event in events(recs, tag, "start")] == [0, 1]


def test_a_call_is_a_duplicate_until_its_run_ends_for_a_user_limited_to_the_library(
    locks: Any, recs: redis.Redis
) -> None:
    tag = new_tag("acl-until-end")
    first = until_end.apply_async((tag,), queue=TOPOLOGY_QUEUE)
    wait_until(lambda: events(recs, tag, "start"), what="the first call to start")
    assert until_end.apply_async((tag,), queue=TOPOLOGY_QUEUE) is None
    recs.rpush(f"gate:{tag}", 1)
    assert first.get(timeout=30) == tag


def test_a_call_within_its_unique_for_window_is_dropped_for_a_user_limited_to_the_library(locks: Any) -> None:
    tag = new_tag("acl-unique-for")
    assert remind.apply_async((tag,), queue=TOPOLOGY_QUEUE).get(timeout=30) == tag
    assert remind.apply_async((tag,), queue=TOPOLOGY_QUEUE) is None


def test_a_queued_call_runs_with_the_newest_arguments_for_a_user_limited_to_the_library(locks: Any) -> None:
    account = new_tag("acl-replace")
    first = push_balance.apply_async((account, 1), queue=TOPOLOGY_QUEUE, countdown=1)
    push_balance.apply_async((account, 2), queue=TOPOLOGY_QUEUE)
    assert first.get(timeout=30) == 2


def test_a_throttle_postpones_the_excess_and_runs_every_call_for_a_user_limited_to_the_library(locks: Any) -> None:
    tag = new_tag("acl-throttle")
    results = [throttled.apply_async(("acl", tag, n), queue=TOPOLOGY_QUEUE) for n in range(4)]
    assert sorted(result.get(timeout=30) for result in results) == [0, 1, 2, 3]


def test_celery_once_locks_lists_a_burst_for_a_user_limited_to_the_library(acl: tuple[str, Worker, Server]) -> None:
    url, _, _ = acl
    doc = new_tag("acl-burst")
    with publishing_to(url, {}):
        parked_reindex.delay(doc, 1)  # a queue no worker consumes: the burst stays open
    done = once_command(url, "locks", "--json")
    assert done.returncode == 0, done.stderr
    assert burst_key(doc) in [lock["key"] for lock in json.loads(done.stdout)]


def test_celery_once_show_and_workers_run_for_a_user_limited_to_the_library(acl: tuple[str, Worker, Server]) -> None:
    url, worker, _ = acl
    doc = new_tag("acl-show")
    with publishing_to(url, {}):
        parked_reindex.delay(doc, 1)
    shown = once_command(url, "show", burst_key(doc), "--json")
    workers = once_command(url, "workers", "--json")
    assert (shown.returncode, workers.returncode) == (0, 0), shown.stderr + workers.stderr
    assert worker.name in workers.stdout


def test_the_locks_pages_listing_reads_a_burst_for_a_user_limited_to_the_library(
    acl: tuple[str, Worker, Server], locks: Any
) -> None:
    url, _, _ = acl
    doc = new_tag("acl-page")
    parked_reindex.delay(doc, 1)
    # What the Django page renders: its rows come from this listing (views.py), on the same client.
    assert burst_key(doc) in [lock.key for lock in lockinfo.iter_locks(client_for(url, {}), None, None)]


def test_no_command_the_library_sent_was_refused(acl: tuple[str, Worker, Server]) -> None:
    _, worker, server = acl
    refused = [entry for entry in refusals(server, "oncelock") if entry["object"] != OTHER_KEY]
    assert refused == [], refused
    assert "NOPERM" not in worker.read_log()
    assert "permission denied" not in worker.read_log()


# -- a user short of a command is told what it lacks ---------------------------------------


def test_a_debounced_call_refused_by_the_acl_raises_a_permission_error_naming_what_the_user_lacks(
    acl: tuple[str, Worker, Server],
) -> None:
    _, _, server = acl
    url = add_user(server, "nohash", ACL_RULES.replace(" +hget ", " "))
    with publishing_to(url, {}), pytest.raises(LockStorePermissionError) as refused:
        reindex.apply_async((new_tag("acl-denied"), 1), queue=TOPOLOGY_QUEUE)
    assert "permission denied: the ACL user lacks" in str(refused.value)
    assert "hget" in refused.value.missing
    assert "unreachable" not in str(refused.value)


def test_a_call_refused_by_the_acl_is_not_tried_again(acl: tuple[str, Worker, Server]) -> None:
    _, _, server = acl
    url = add_user(server, "noset", ACL_RULES.replace(" +set ", " "))
    with publishing_to(url, {}), pytest.raises(LockStorePermissionError, match="lacks 'set'"):
        echo.apply_async((new_tag("acl-once"),), queue=TOPOLOGY_QUEUE)
    assert [entry["count"] for entry in refusals(server, "noset")] == [1]


def test_fail_open_does_not_publish_past_a_refusal_by_the_acl(acl: tuple[str, Worker, Server]) -> None:
    _, _, server = acl
    url = add_user(server, "noset-open", ACL_RULES.replace(" +set ", " "))
    with publishing_to(url, {}):
        configure(fail_open=True)
        try:
            with pytest.raises(LockStorePermissionError):
                echo.apply_async((new_tag("acl-open"),), queue=TOPOLOGY_QUEUE)
        finally:
            configure(fail_open=False)


def test_celery_once_locks_refused_by_the_acl_says_permission_denied_and_exits_3(
    acl: tuple[str, Worker, Server],
) -> None:
    url, _, server = acl
    with publishing_to(url, {}):
        parked_reindex.delay(new_tag("acl-denied-burst"), 1)
    done = once_command(add_user(server, "nohgetall", ACL_RULES.replace(" +hgetall ", " ")), "locks")
    assert done.returncode == 3
    assert "permission denied: the ACL user lacks 'hgetall'" in done.stderr
    assert "cannot reach" not in done.stderr
    assert PASSWORD not in done.stderr


def test_a_permission_error_pickles_with_what_the_user_lacks() -> None:
    error = pickle.loads(pickle.dumps(LockStorePermissionError("refused: lacks 'hgetall'", "'hgetall'")))
    assert (str(error), error.missing) == ("refused: lacks 'hgetall'", "'hgetall'")
    assert isinstance(error, LockStoreUnavailable)


@pytest.mark.parametrize(("reply", "missing"), [
    ("this user has no permissions to run the 'hgetall' command", "'hgetall' (add +hgetall to its rules)"),
    ("NOPERM User u has no permissions to run the 'hget' command script: 0123, on @user_script:9.",
     "'hget' (add +hget to its rules)"),
    (f"The user executing the script can't run this command or subcommand script: {BURST_CALL.sha}, on "
     "@user_script:12.",
     "a command of the script burst_call (it runs: +hdel +hget +hgetall +hset +pexpire +pttl +time)"),
])
def test_a_refusal_names_what_the_user_lacks(reply: str, missing: str) -> None:
    assert refusal(redis.ResponseError(reply)) == missing


def test_an_outage_is_no_refusal() -> None:
    assert refusal(redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")) is None
