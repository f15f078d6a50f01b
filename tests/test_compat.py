"""The drop-ins: tasks written for celery_once and celery-singleton behave as they did, their imports changed.

The tasks are those of ``tests.compat_app``, run by a worker of that app;
tests that need no worker use throwaway apps of their own.
"""

from __future__ import annotations

import pickle
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery, states

from celery_once_task.compat.celery_once import AlreadyQueued, QueueOnce
from celery_once_task.compat.celery_singleton import DuplicateTaskError, Singleton, clear_locks, read_singleton_conf
from celery_once_task.ops.cli import LockStoreTarget
from celery_once_task.record_keys import heartbeat_pattern
from tests import compat_app as tasks
from tests.compat_app import parked
from tests.support import RedisServer, Worker, events, started, wait_until

# Redis as the broker only: the drop-ins publish and run through OnceTask's paths, which the
# RabbitMQ run covers; what is their own (options, errors, results) does not depend on the broker.


@pytest.fixture(scope="module")
def compat_worker(redis_server: RedisServer) -> Iterator[Worker]:
    worker = Worker(redis_server.port, "compat", app="tests.compat_app", queues=tasks.QUEUE, concurrency=2)
    try:
        yield worker.wait_ready()
    finally:
        worker.stop()


@pytest.fixture(scope="module")
def once_locks(redis_server: RedisServer) -> redis.Redis:
    """The database ``app.conf.ONCE`` names: the compat app's lock store."""
    return redis_server.client(tasks.ONCE_LOCKS_DB)


def new_tag() -> str:
    return uuid.uuid4().hex


def queue_key(task: Any, *args: Any) -> str:
    return str(task.once_key(args, {}, "queue"))


def throwaway_app(**conf: Any) -> Celery:
    """An app that never publishes: its settings are resolved, its tasks never called."""
    app = Celery(f"throwaway-{new_tag()}", broker="memory://", set_as_current=False)
    app.conf.update(conf)
    return app


# -- celery_once: QueueOnce --------------------------------------------------------------


def test_a_queued_call_raises_already_queued_with_a_countdown() -> None:
    tag = new_tag()
    parked(tasks.once_gated, tag)
    with pytest.raises(AlreadyQueued) as raised:
        tasks.once_gated.delay(tag)
    assert 0 < raised.value.countdown <= tasks.DEFAULT_TIMEOUT
    assert raised.value.message == f"Expires in {raised.value.countdown} seconds"


def test_a_running_call_raises_already_queued_with_a_countdown(compat_worker: Worker, recs: Any) -> None:
    tag = new_tag()
    first = tasks.once_gated.delay(tag)
    started(recs, tag)
    with pytest.raises(AlreadyQueued) as raised:
        tasks.once_gated.delay(tag)
    assert raised.value.countdown > 0
    recs.rpush(f"gate:{tag}", 1)
    assert first.get(timeout=20) == tag


def test_the_key_is_free_once_the_run_ended(compat_worker: Worker, recs: Any) -> None:
    tag = new_tag()
    recs.rpush(f"gate:{tag}", 1, 1)
    assert tasks.once_gated.delay(tag).get(timeout=20) == tag
    assert tasks.once_gated.delay(tag).get(timeout=20) == tag
    assert len(events(recs, tag, "start")) == 2


def test_graceful_gives_a_rejected_result() -> None:
    tag = new_tag()
    parked(tasks.once_graceful, tag)
    duplicate = tasks.once_graceful.delay(tag)
    assert duplicate is not None and duplicate.state == states.REJECTED


def test_graceful_at_apply_async_gives_a_rejected_result() -> None:
    tag = new_tag()
    parked(tasks.once_gated, tag)
    duplicate = tasks.once_gated.apply_async((tag,), once={"graceful": True})
    assert duplicate is not None and duplicate.state == states.REJECTED


def test_timeout_at_apply_async_is_the_queued_calls_hold(once_locks: Any) -> None:
    tag = new_tag()
    parked(tasks.once_gated, tag, once={"timeout": 50})
    assert 0 < once_locks.pttl(queue_key(tasks.once_gated, tag)) <= 50_000


def test_timeout_of_the_task_is_the_queued_calls_hold(once_locks: Any) -> None:
    tag = new_tag()
    parked(tasks.once_graceful, tag)
    assert 0 < once_locks.pttl(queue_key(tasks.once_graceful, tag)) <= 60_000


def test_unlock_before_run_frees_the_key_at_the_start(compat_worker: Worker, recs: Any) -> None:
    tag = new_tag()
    first = tasks.once_unlocked.delay(tag)
    started(recs, tag)
    second = tasks.once_unlocked.delay(tag)  # accepted: the key was freed when the first started
    assert second is not None and second.id != first.id
    recs.rpush(f"gate:{tag}", 1, 1)
    assert first.get(timeout=20) == tag and second.get(timeout=20) == tag
    kinds = [entry["event"] for entry in events(recs, tag, "start") + events(recs, tag, "end")]
    assert kinds.count("start") == 2
    # The second ran after the first, never beside it.
    timeline = sorted(wait_until(lambda: len(_records(recs, tag)) == 4 and _records(recs, tag)),
                      key=lambda entry: entry["t"])
    assert [entry["event"] for entry in timeline] == ["start", "end", "start", "end"]


def _records(recs: Any, tag: str) -> list[dict[str, Any]]:
    return [entry for kind in ("start", "end") for entry in events(recs, tag, kind)]


def test_keys_make_the_key_of_the_named_arguments_only() -> None:
    tag = new_tag()
    parked(tasks.once_keyed, tag, 1)
    with pytest.raises(AlreadyQueued):
        tasks.once_keyed.delay(tag, 2)


def test_app_conf_once_url_is_the_lock_store(once_locks: Any, locks: Any) -> None:
    tag = new_tag()
    first = parked(tasks.once_gated, tag)
    key = queue_key(tasks.once_gated, tag)
    assert once_locks.get(key) == first.id.encode()
    assert not locks.exists(key)


def test_app_conf_once_default_timeout_is_the_queued_calls_hold(once_locks: Any) -> None:
    tag = new_tag()
    parked(tasks.once_gated, tag)
    assert (tasks.DEFAULT_TIMEOUT - 10) * 1000 < once_locks.pttl(queue_key(tasks.once_gated, tag)) \
        <= tasks.DEFAULT_TIMEOUT * 1000


def test_the_workers_heartbeat_and_the_once_command_use_the_once_store(compat_worker: Worker,
                                                                        once_locks: Any) -> None:
    head, _ = heartbeat_pattern()
    assert wait_until(lambda: list(once_locks.scan_iter(f"{head}*")), what="the compat worker's heartbeat")
    assert LockStoreTarget.for_app(tasks.app).url == tasks.app.conf.ONCE["settings"]["url"]


def test_an_unsupported_once_backend_is_refused_naming_the_task() -> None:
    app = throwaway_app(ONCE={"backend": "celery_once.backends.File", "settings": {"location": "/tmp"}})

    @app.task(base=QueueOnce, shared=False)
    def report(x: int) -> int:
        return x

    with pytest.raises(ValueError, match=r"report: app.conf.ONCE\['backend'\] is 'celery_once.backends.File'"):
        report.once_settings()


def test_an_unknown_once_option_is_refused_where_the_task_is_defined() -> None:
    app = throwaway_app()
    with pytest.raises(ValueError, match=r"report: once\['lock_forever'\] is not an option of celery_once's once"):
        @app.task(base=QueueOnce, shared=False, name="report", once={"lock_forever": True})
        def report(x: int) -> int:
            return x

        app.finalize()  # the app makes its tasks' classes here


def test_keys_naming_no_argument_are_refused_where_the_task_is_defined() -> None:
    app = throwaway_app()
    with pytest.raises(ValueError, match="report: lock_args names 'y'"):
        @app.task(base=QueueOnce, shared=False, name="report", once={"keys": ["y"]})
        def report(x: int) -> int:
            return x

        app.finalize()  # the app makes its tasks' classes here


def test_already_queued_pickles() -> None:
    again = pickle.loads(pickle.dumps(AlreadyQueued(12.5)))
    assert (again.countdown, again.message) == (12.5, "Expires in 12.5 seconds")


# -- celery-singleton: Singleton ---------------------------------------------------------------


def test_a_duplicate_of_a_queued_call_gets_its_id() -> None:
    tag = new_tag()
    first = parked(tasks.singleton_gated, tag)
    again = tasks.singleton_gated.delay(tag)
    assert again is not None and again.id == first.id


def test_a_duplicate_of_a_running_call_gets_its_id(compat_worker: Worker, recs: Any) -> None:
    tag = new_tag()
    first = tasks.singleton_gated.delay(tag)
    started(recs, tag)
    again = tasks.singleton_gated.delay(tag)
    assert again is not None and again.id == first.id
    recs.rpush(f"gate:{tag}", 1)
    assert again.get(timeout=20) == tag
    assert len(events(recs, tag, "start")) == 1


def test_clear_locks_deletes_no_lock_a_live_call_holds(once_locks: Any) -> None:
    tag = new_tag()
    first = parked(tasks.singleton_gated, tag)
    clear_locks(tasks.app)
    assert once_locks.get(queue_key(tasks.singleton_gated, tag)) == first.id.encode()


def test_raise_on_duplicate_raises_duplicate_task_error() -> None:
    tag = new_tag()
    first = parked(tasks.singleton_raising, tag)
    with pytest.raises(DuplicateTaskError) as raised:
        tasks.singleton_raising.delay(tag)
    assert raised.value.task_id == first.id


def test_unique_on_makes_the_key_of_the_named_arguments_only() -> None:
    tag = new_tag()
    first = parked(tasks.singleton_unique_on, tag, 1)
    again = tasks.singleton_unique_on.delay(tag, 2)
    assert again is not None and again.id == first.id


def test_singleton_raise_on_duplicate_of_the_app_raises() -> None:
    app = Celery(f"raising-{new_tag()}", broker=tasks.BROKER_URL, set_as_current=False)
    app.conf.update(singleton_raise_on_duplicate=True, task_default_queue=tasks.PARKED)

    @app.task(base=Singleton, shared=False)
    def report(tag: str) -> str:
        return tag

    tag = new_tag()
    first = report.delay(tag)
    with pytest.raises(DuplicateTaskError) as raised:
        report.delay(tag)
    assert raised.value.task_id == first.id


def test_lock_expiry_is_the_queued_calls_hold() -> None:
    app = throwaway_app(singleton_lock_expiry=90)

    @app.task(base=Singleton, shared=False, lock_expiry=30)
    def own(tag: str) -> str:
        return tag

    @app.task(base=Singleton, shared=False)
    def apps(tag: str) -> str:
        return tag

    assert (own.once_settings().queue_lock_timeout, apps.once_settings().queue_lock_timeout) == (30, 90)


def test_the_apps_singleton_settings_are_the_lock_stores() -> None:
    app = throwaway_app(singleton_backend_url="redis://locks.example:6379/7", singleton_key_prefix="billing",
                        singleton_backend_kwargs={"socket_timeout": 3})

    @app.task(base=Singleton, shared=False)
    def report(tag: str) -> str:
        return tag

    settings = report.once_settings()
    assert (settings.redis_url, settings.key_prefix, dict(settings.redis_options)) == (
        "redis://locks.example:6379/7", "billing", {"socket_timeout": 3})


def test_without_a_configured_store_a_singleton_app_uses_its_result_backends_redis() -> None:
    app = throwaway_app(result_backend="redis://results.example:6379/1", broker_url="amqp://broker.example//")

    @app.task(base=Singleton, shared=False)
    def report(tag: str) -> str:
        return tag

    app.finalize()
    # Nothing configure() or an integration set: the reader falls back as celery-singleton did, for the app.
    assert read_singleton_conf(app, app.conf, None, {}) == {"redis_url": "redis://results.example:6379/1"}
    assert read_singleton_conf(app, app.conf, None, {"redis_url": "redis://configured:6379/3"}) == {}


def test_a_custom_singleton_backend_is_refused_naming_the_task() -> None:
    app = throwaway_app(singleton_backend_class="myproject.locks.Backend")

    @app.task(base=Singleton, shared=False)
    def report(tag: str) -> str:
        return tag

    refused = re.escape("report: app.conf.singleton_backend_class is 'myproject.locks.Backend'")
    with pytest.raises(ValueError, match=refused):
        report.once_settings()


def test_duplicate_task_error_pickles() -> None:
    again = pickle.loads(pickle.dumps(DuplicateTaskError("Attempted to queue a duplicate of task ID x", task_id="x")))
    assert (str(again), again.task_id) == ("Attempted to queue a duplicate of task ID x", "x")
