"""The fence around other libraries' internals: each function does what its caller needs, on the installed releases.

CI runs this file on every release line the fence has a branch for: the
newest releases, redis-py 4.1 with Celery 5.0 (billiard 3.6), and redis-py 5.x.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any, Callable

import billiard.einfo
import celery
import pytest
import redis
from celery.beat import ScheduleEntry, Scheduler
from celery.exceptions import WorkerLostError

from celery_once_task import internals
from celery_once_task.store import scripts
from tests.support import RedisServer


def test_the_redis_py_version_gate_reads_the_installed_release() -> None:
    assert tuple(int(part) for part in redis.__version__.split(".")[:2]) == internals.REDIS_PY


# -- a connection pool's life -------------------------------------------------------


def test_a_pool_keeps_its_generation_until_it_is_reset() -> None:
    pool = redis.ConnectionPool(port=1)  # never connects
    generation = internals.pool_generation(pool)
    assert internals.pool_generation(pool) is generation
    pool.reset()
    assert internals.pool_generation(pool) is not generation


def test_pools_have_generations_of_their_own() -> None:
    first, second = redis.ConnectionPool(port=1), redis.ConnectionPool(port=1)
    assert internals.pool_generation(first) is not internals.pool_generation(second)


# -- billiard: a pool child's exception ------------------------------------------------


def child_failure(exc: BaseException) -> Any:
    """What the worker's main process is handed for a pool child that failed with ``exc``."""
    try:
        raise exc
    except BaseException:
        return billiard.einfo.ExceptionInfo().exception


def test_a_childs_exception_is_unwrapped_on_every_billiard() -> None:
    lost = WorkerLostError("gone")
    assert internals.unwrap_child_exception(child_failure(lost)) is lost


def test_an_exception_that_is_not_wrapped_is_returned_as_it_is() -> None:
    lost = WorkerLostError("gone")
    assert internals.unwrap_child_exception(lost) is lost


# -- Celery beat: who made an apply_async call ----------------------------------------


def test_an_apply_async_made_by_beats_scheduler_is_known_as_beats() -> None:
    seen: list[bool] = []
    app = celery.Celery("internals", broker="memory://", set_as_current=False)

    class Recording(app.Task):  # type: ignore[misc,name-defined]
        name = "internals.recording"

        def run(self) -> None:
            pass

        def apply_async(self, *args: Any, **kwargs: Any) -> Any:
            # As publish: the library's frames between apply_async and the check.
            seen.append(three_frames_down(lambda: internals.called_by_beat(3)))
            return None

    app.register_task(Recording())
    entry = ScheduleEntry(name="every", task="internals.recording", schedule=60, app=app)
    Scheduler(app, lazy=True).apply_async(entry, producer=object(), advance=False)
    assert seen == [True]


def three_frames_down(check: Callable[[], bool]) -> bool:
    return _second(check)


def _second(check: Callable[[], bool]) -> bool:
    return check()


def test_a_call_from_elsewhere_is_not_beats() -> None:
    assert not three_frames_down(lambda: internals.called_by_beat(3))


def test_beat_beyond_the_frames_looked_at_is_not_seen() -> None:
    beat_globals = {"__name__": "celery.beat"}
    exec("def from_beat(check):\n    return check()\n", beat_globals)
    from_beat = beat_globals["from_beat"]
    assert from_beat(lambda: internals.called_by_beat(0, frames=2))  # the lambda, then from_beat
    assert not from_beat(lambda: internals.called_by_beat(0, frames=1))


# -- what a client's server refused ----------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


def test_a_refusal_is_remembered_for_its_client_only_and_can_be_forgotten(server: RedisServer) -> None:
    refused, other = server.client(2), server.client(2)
    key = "internals:nx-get"
    refused.delete(key)
    refused.script_load(scripts.ACQUIRE.source)  # no NOSCRIPT to count
    scripts.refused_nx_get(refused)
    try:
        assert scripts.acquire_free(refused, key, "first", 60_000) == 1
        # Sent as the script to the marked client, as SET NX GET to the other.
        before = evalsha_calls(refused)
        assert scripts.acquire_free(refused, key, "second", 60_000) == b"first"
        assert evalsha_calls(refused) == before + 1
        assert scripts.acquire_free(other, key, "third", 60_000) == b"first"
        assert evalsha_calls(refused) == before + 1
    finally:
        scripts.forget_refusals(refused)
    assert scripts.acquire_free(refused, key, "fourth", 60_000) == b"first"
    assert evalsha_calls(refused) == before + 1


def evalsha_calls(client: Any) -> int:
    stats = client.info("commandstats").get("cmdstat_evalsha")
    return int(stats["calls"]) if stats else 0


def test_a_refusal_goes_with_its_client(server: RedisServer) -> None:
    # Remembered by the client object, held weakly: the record keeps no
    # client alive, and goes with it, so a later client that is given its
    # id() inherits nothing (as it would from a record kept by id).
    client = server.client(2)
    scripts.refused_nx_get(client)
    alive = weakref.ref(client)
    del client
    gc.collect()
    assert alive() is None


def test_refuses_more_keys_is_false_for_a_new_client(server: RedisServer) -> None:
    assert not scripts.refuses_more_keys(server.client(2))


# -- a Celery app's tasks ------------------------------------------------------------


def test_the_tasks_registered_are_read_without_finalizing_the_app() -> None:
    app = celery.Celery("registered", set_as_current=False)

    @app.task(name="tests.internals.registered", shared=False)
    def registered() -> None: ...

    assert not app.finalized
    assert registered not in internals.registered_tasks(app)  # still pending: not registered yet
    assert not app.finalized
    app.finalize()
    assert registered in internals.registered_tasks(app)
