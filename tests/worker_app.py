"""The Celery app the tests' workers run: a user's ``celery.py`` and ``tasks.py`` in one.

It is configured from the environment the test session sets up (the private
Redis server's port), the way the README tells users to set up theirs.
Tasks record what they do in a separate Redis database, so that tests can
count executions without touching the locks.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import redis
from celery import Celery

from celery_once_task import OnceTask, OnceTaskUnlockBootStep, configure, setup_once_task_signals
from celery_once_task import signals as once_signals

PORT = int(os.environ.get("ONCE_TEST_REDIS_PORT", "6399"))
# RabbitMQ where the test run sets it (ONCE_TEST_BROKER=amqp), else the private Redis.
BROKER_URL = os.environ.get("ONCE_TEST_BROKER_URL") or f"redis://127.0.0.1:{PORT}/0"
BACKEND_URL = f"redis://127.0.0.1:{PORT}/1"
# A test may point a worker's locks at a server it stops and starts.
LOCKS_URL = os.environ.get("ONCE_TEST_LOCKS_URL", f"redis://127.0.0.1:{PORT}/2")
# ... and at a Sentinel, a Cluster or a TLS server, with the client options (JSON) it needs.
LOCKS_OPTIONS = json.loads(os.environ.get("ONCE_TEST_LOCKS_OPTIONS", "{}"))
RECORDS_URL = f"redis://127.0.0.1:{PORT}/4"

app = Celery("tests", broker=BROKER_URL, backend=BACKEND_URL)
app.conf.update(
    task_routes={name: {"queue": "parked"} for name in (
        "tests.worker_app.parked", "tests.worker_app.parked_existing", "tests.worker_app.parked_raising",
        "tests.worker_app.charge", "tests.worker_app.rebuild_index", "tests.worker_app.parked_reindex",
    )},
    broker_transport_options={"visibility_timeout": int(os.environ.get("ONCE_TEST_VISIBILITY", "3600"))},
    worker_prefetch_multiplier=1,
    result_expires=600,
)
# RabbitMQ's HA queue type where the run asks for it (ONCE_TEST_QUEUE_TYPE=quorum): every queue
# quorum, on topic exchanges, so that Celery (5.5 and later) sends countdowns and ETAs through
# RabbitMQ's native delayed delivery; Celery asks for publisher confirms with quorum queues.
# Every app of the tests that publishes to the workers' queues sets the same (QUEUE_CONF).
QUEUE_TYPE = os.environ.get("ONCE_TEST_QUEUE_TYPE", "classic")
if QUEUE_TYPE not in ("classic", "quorum"):
    raise RuntimeError(f"ONCE_TEST_QUEUE_TYPE must be classic or quorum, got {QUEUE_TYPE!r}")
QUEUE_CONF: dict[str, Any] = {
    "task_default_queue_type": "quorum",
    "task_default_exchange_type": "topic",
    "task_create_missing_queue_type": "quorum",
    "task_create_missing_queue_exchange_type": "topic",
    "worker_detect_quorum_queues": True,
    "broker_transport_options": {"confirm_publish": True},
} if QUEUE_TYPE == "quorum" else {}
app.conf.update({**QUEUE_CONF, "broker_transport_options": {
    **app.conf.broker_transport_options, **QUEUE_CONF.get("broker_transport_options", {})}})
#: A user's short countdown: native delayed delivery refuses less than a whole second.
SHORT_COUNTDOWN = 1.0 if QUEUE_TYPE == "quorum" else 0.1

# Short, so that tests of a gone worker wait seconds, not the default half minute.
HEARTBEAT_TIMEOUT = int(os.environ.get("ONCE_TEST_HEARTBEAT_TIMEOUT", "4"))
configure(redis_url=LOCKS_URL, redis_options=LOCKS_OPTIONS, heartbeat_timeout=HEARTBEAT_TIMEOUT)
# A test may run a worker (and the once command) whose keys start with a prefix of their own.
if os.environ.get("ONCE_TEST_KEY_PREFIX"):
    configure(key_prefix=os.environ["ONCE_TEST_KEY_PREFIX"])
# A test may run a worker with the library switched off.
if os.environ.get("ONCE_TEST_DISABLED"):
    configure(enabled=False)
setup_once_task_signals()
if not os.environ.get("ONCE_TEST_WITHOUT_BOOTSTEP"):
    app.steps["worker"].add(OnceTaskUnlockBootStep)

# Longer than any gate a task waits at: redis-py 8 times sockets out after 5s by default.
_records = redis.Redis.from_url(RECORDS_URL, socket_timeout=120)


def _record_signal(name: str) -> Any:
    def receiver(sender: Any = None, **fields: Any) -> None:
        fields.pop("signal", None)
        entry = {"task": getattr(sender, "name", None), "pid": os.getpid(), **{k: str(v) for k, v in fields.items()}}
        _records.rpush(f"signals:{name}", json.dumps(entry))

    return receiver


# The library's signals, as the worker sees them: tests read them from the records database.
for _name in ("duplicate_call", "duplicate_execution", "lock_recovered", "execution_throttled"):
    getattr(once_signals, _name).connect(_record_signal(_name), weak=False, dispatch_uid=f"tests.{_name}")


def record(tag: str, event: str, **fields: Any) -> None:
    """Append an event to the tag's record list."""
    entry = {"event": event, "pid": os.getpid(), "t": time.time(), **fields}
    _records.rpush(f"records:{tag}", json.dumps(entry, default=str))


def wait_gate(tag: str, timeout: float = 60) -> bool:
    """Block until the test opens the tag's gate (or the timeout passes)."""
    return _records.blpop([f"gate:{tag}"], timeout=timeout) is not None


@app.task(base=OnceTask)
def add(x: int, y: int = 10) -> int:
    return x + y


@app.task(base=OnceTask)
def echo(tag: str, value: Any = None) -> Any:
    record(tag, "run", value=value)
    return value


@app.task(base=OnceTask)
def gated(tag: str, value: Any = None) -> str:
    """Runs until the test opens its gate."""
    record(tag, "start", value=value)
    wait_gate(tag)
    record(tag, "end")
    return tag


@app.task(base=OnceTask, bind=True)
def bound(self: Any, tag: str, n: int = 1) -> str:
    record(tag, "run", id=self.request.id)
    return str(self.request.id)


@app.task(base=OnceTask, queue_lock=False)
def without_queue_lock(tag: str) -> str:
    record(tag, "start")
    wait_gate(tag)
    return tag


@app.task(base=OnceTask, running_lock=False)
def without_running_lock(tag: str) -> str:
    record(tag, "start")
    wait_gate(tag)
    return tag


@app.task(base=OnceTask, queue_lock_timeout=70, running_lock_timeout=110)
def own_timeouts(tag: str) -> str:
    record(tag, "start")
    wait_gate(tag)
    return tag


@app.task(base=OnceTask, running_lock_timeout=2)
def short_running_lock(tag: str) -> str:
    """``gated`` with a running_lock_timeout shorter than it runs."""
    record(tag, "start")
    wait_gate(tag)
    return tag


# -- conflict policies and key selection -------------------------------------------


@app.task(base=OnceTask, running_lock_conflict="wait", lock_args=["tag"])
def waiting_gated(tag: str, value: Any = None) -> str:
    """``gated`` whose duplicate executions wait for it instead of failing; keyed on ``tag`` alone."""
    record(tag, "start", value=value)
    wait_gate(tag)
    record(tag, "end", value=value)
    return tag


@app.task(base=OnceTask, running_lock_conflict="wait", lock_args=["tag"], acks_late=True,
          reject_on_worker_lost=True)
def waiting_gated_late(tag: str, value: Any = None) -> str:
    """``waiting_gated`` whose message goes back to the broker if its pool process dies."""
    record(tag, "start", value=value)
    wait_gate(tag)
    record(tag, "end", value=value)
    return tag


@app.task(base=OnceTask, queue_lock_conflict="existing")
def parked_existing(tag: str) -> str:
    """``parked`` whose duplicate calls return the queued call's result."""
    return tag


@app.task(base=OnceTask, queue_lock_conflict="raise")
def parked_raising(tag: str) -> str:
    """``parked`` whose duplicate calls raise ``OnceTaskDuplicate``."""
    return tag


@app.task(base=OnceTask, lock_args=["account"])
def charge(account: int, amount: int, note: Any = None) -> int:
    """Keyed on the account only: one charge per account at a time, whatever the amount."""
    return amount


@app.task(base=OnceTask, lock_args=[])
def rebuild_index(section: str = "all") -> str:
    """One lock for the task, whatever its arguments."""
    return section


@app.task(base=OnceTask)
def failing(tag: str) -> None:
    record(tag, "run")
    raise ValueError(f"failing {tag}")


@app.task(base=OnceTask)
def parked(tag: str) -> str:
    """Routed to a queue no worker consumes: its messages stay in the broker."""
    return tag


@app.task(base=OnceTask)
def recursive(tag: str, depth: int) -> int:
    """Calls itself as a plain function: no lock for the inner calls."""
    record(tag, "run", depth=depth)
    return depth if depth == 0 else recursive(tag, depth - 1)


# -- lifecycle ------------------------------------------------------------------


def attempts(tag: str) -> int:
    return int(_records.incr(f"attempts:{tag}"))


@app.task(base=OnceTask, bind=True, max_retries=5)
def retrying(self: Any, tag: str, fail_times: int = 1, countdown: float = 0) -> int:
    """Retries itself ``fail_times`` times, then returns its attempt number."""
    attempt = attempts(tag)
    record(tag, "run", attempt=attempt, retries=self.request.retries)
    if attempt <= fail_times:
        raise self.retry(countdown=countdown)
    return attempt


@app.task(base=OnceTask, autoretry_for=(ValueError,), max_retries=5, default_retry_delay=0)
def autoretrying(tag: str, fail_times: int = 1) -> int:
    attempt = attempts(tag)
    record(tag, "run", attempt=attempt)
    if attempt <= fail_times:
        raise ValueError(f"attempt {attempt}")
    return attempt


class SlowRetryHook(OnceTask):
    def on_retry(self, exc: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        # The first attempt's hook is still running while its retry starts.
        record(args[0], "hook-start")
        wait_gate(f"{args[0]}:hook")
        record(args[0], "hook-end")


@app.task(base=SlowRetryHook, bind=True, max_retries=2)
def retry_with_slow_hook(self: Any, tag: str) -> int:
    attempt = attempts(tag)
    record(tag, "run", attempt=attempt)
    if attempt == 1:
        raise self.retry(countdown=0)
    return attempt


@app.task(base=OnceTask, time_limit=2)
def hard_limited(tag: str) -> str:
    record(tag, "start")
    wait_gate(tag)
    return tag


@app.task(base=OnceTask, soft_time_limit=1)
def soft_limited(tag: str) -> str:
    record(tag, "start")
    wait_gate(tag)
    return tag


@app.task(base=OnceTask, acks_late=True)
def gated_late(tag: str) -> str:
    """``gated`` with the message acknowledged only when the task ends."""
    record(tag, "start")
    wait_gate(tag)
    record(tag, "end")
    return tag


class FailingAfterReturn(OnceTask):
    def after_return(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("after_return failed")


@app.task(base=FailingAfterReturn)
def internal_error(tag: str) -> str:
    record(tag, "run")
    return tag


@app.task(base=OnceTask)
def tick(tag: str, seconds: float = 2.5) -> None:
    """A periodic job that takes longer than its period."""
    record(tag, "start")
    time.sleep(seconds)  # the work it stands for
    record(tag, "end")


@app.task(base=OnceTask)
def total(values: list[int], tag: str = "") -> int:
    """A chord body."""
    record(tag, "run", values=values)
    return sum(values)


# -- canvas ---------------------------------------------------------------------


@app.task
def errback(*args: Any, tag: str = "") -> None:
    """A ``link_error`` callback; records the id of the task that failed and the error.

    Celery calls it as ``(request, exc, traceback)``, or, for a chord body on
    older releases, publishes it as a task with the failed task's id.
    """
    failed = args[0] if isinstance(args[0], str) else args[0].id
    error = type(args[1]).__name__ if len(args) > 1 else None
    record(tag, "errback", task_id=failed, error=error)


# -- pools ----------------------------------------------------------------------


@app.task(base=OnceTask)
def spin(tag: str, seconds: float) -> str:
    """Computes for ``seconds`` without ever yielding to a gevent or eventlet hub."""
    record(tag, "start")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass
    record(tag, "end")
    return tag


# -- redelivery -----------------------------------------------------------------


def _die_with_worker() -> None:
    """Kill this worker at once: its main process (a prefork pool child's parent) and this process."""
    os.kill(os.getppid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


class DiesBeforeItsAck(OnceTask):
    """Its worker dies after the first execution's result is stored, before the message is acknowledged."""

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        if attempts(f"{args[0]}:deaths") == 1:
            _die_with_worker()


class DiesBeforeItsResult(OnceTask):
    """Its worker dies after the first execution released its lock, before its result is stored."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        value = super().__call__(*args, **kwargs)
        if not self.request.called_directly and attempts(f"{args[0]}:deaths") == 1:
            self.die()
        return value

    def die(self) -> None:
        _die_with_worker()


class PoolProcessDiesBeforeItsResult(DiesBeforeItsResult):
    """Its pool process alone dies after the first execution released its lock, before its result is stored."""

    def die(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


@app.task(base=DiesBeforeItsAck, acks_late=True)
def lost_ack(tag: str) -> str:
    record(tag, "run")
    return tag


@app.task(base=DiesBeforeItsAck, acks_late=True, ignore_result=True)
def lost_ack_without_result(tag: str) -> str:
    record(tag, "run")
    return tag


@app.task(base=DiesBeforeItsResult, acks_late=True)
def lost_result(tag: str) -> str:
    record(tag, "run")
    return tag


@app.task(base=PoolProcessDiesBeforeItsResult, acks_late=True, reject_on_worker_lost=True)
def lost_result_in_pool(tag: str) -> str:
    record(tag, "run")
    return tag


class WaitsBeforeItsAck(OnceTask):
    """Holds its pool process at a gate after its result is stored, before the message is acknowledged."""

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        record(args[0], "hook-start")
        wait_gate(f"{args[0]}:hook")


@app.task(base=WaitsBeforeItsAck, acks_late=True)
def ack_held(tag: str) -> str:
    record(tag, "run")
    return tag


# -- running_limit ----------------------------------------------------------------


@app.task(base=OnceTask, queue_lock=False, lock_args=["tenant"], running_limit=2)
def export_gated(tenant: str, n: int) -> int:
    """At most two exports of a tenant at once; the others are refused. Runs until its gate opens."""
    record(tenant, "start", n=n)
    wait_gate(f"{tenant}:{n}")
    record(tenant, "end", n=n)
    return n


@app.task(base=OnceTask, queue_lock=False, lock_args=["tenant"], running_limit=3, running_lock_conflict="wait")
def export(tenant: str, n: int, seconds: float = 0.05) -> int:
    """At most three exports of a tenant at once; every other call waits its turn."""
    record(tenant, "start", n=n)
    time.sleep(seconds)  # the work it stands for
    record(tenant, "end", n=n)
    return n


@app.task(base=OnceTask, queue_lock=False, lock_args=["tenant"], running_limit=2, running_lock_conflict="wait")
def export_waiting_gated(tenant: str, n: int) -> int:
    """``export_gated`` whose calls beyond the limit wait their turn."""
    record(tenant, "start", n=n)
    wait_gate(f"{tenant}:{n}")
    record(tenant, "end", n=n)
    return n


@app.task(base=OnceTask, lock_args=[], running_limit=2, queue_lock=False)
def partner_call(tag: str, n: int) -> int:
    """At most two calls to the partner's API in the whole fleet, whatever the arguments; the others are refused."""
    record(tag, "start", n=n)
    wait_gate(f"{tag}:{n}")
    record(tag, "end", n=n)
    return n


@app.task(base=OnceTask, queue_lock=False, lock_args=["tag"], running_lock_conflict="wait")
def in_turn(tag: str, n: int) -> int:
    """One at a time per tag, every call kept, in call order (the line, with running_limit=1); until its gate opens."""
    record(tag, "start", n=n)
    wait_gate(f"{tag}:{n}")
    record(tag, "end", n=n)
    return n


# -- debounce -------------------------------------------------------------------------


@app.task(base=OnceTask, lock_args=["doc_id"], debounce=1.0, debounce_max=3.0)
def reindex(doc_id: str, version: int) -> int:
    """Re-indexes a document once after a burst of edits, with the newest version."""
    record(doc_id, "run", version=version)
    return version


@app.task(base=OnceTask, lock_args=["doc_id"], debounce=0.5)
def reindex_gated(doc_id: str, version: int) -> int:
    """``reindex`` that runs until its gate opens."""
    record(doc_id, "start", version=version)
    wait_gate(f"{doc_id}:{version}")
    record(doc_id, "end", version=version)
    return version


@app.task(base=OnceTask, lock_args=["doc_id"], debounce=1.0, acks_late=True)
def reindex_late(doc_id: str, version: int) -> int:
    """``reindex`` whose message goes back to the broker if its worker dies."""
    record(doc_id, "run", version=version)
    return version


@app.task(base=OnceTask, lock_args=["doc_id"], debounce=0.5, bind=True)
def reindex_retrying(self: Any, doc_id: str, version: int) -> int:
    """``reindex`` whose first try asks to be retried."""
    record(doc_id, "run", version=version, retries=self.request.retries)
    if not self.request.retries:
        raise self.retry(countdown=SHORT_COUNTDOWN)
    return version


@app.task(base=OnceTask, lock_args=["doc_id"], debounce=0.5, running_lock_conflict="wait")
def reindex_waiting(doc_id: str, version: int) -> int:
    """``reindex_gated`` whose execution waits for a running one of its key."""
    record(doc_id, "start", version=version)
    wait_gate(f"{doc_id}:{version}")
    return version


@app.task(base=OnceTask, lock_args=["doc_id"], debounce=0.5, running_limit=2, queue_lock=False)
def reindex_two(doc_id: str, version: int) -> int:
    """``reindex_gated`` with two executions of a key at once."""
    record(doc_id, "start", version=version)
    wait_gate(f"{doc_id}:{version}")
    return version


@app.task(base=OnceTask, lock_args=["doc_id"], debounce=30.0)
def parked_reindex(doc_id: str, version: int) -> int:
    """Routed to a queue no worker consumes: a burst that stays open."""
    return version


# -- the library's own republish ---------------------------------------------------------


#: The header ``StampedOnCall.apply_async`` puts on every call.
STAMP_HEADER = "tests_stamped_on_call"


class StampedOnCall(OnceTask):
    """A user's ``apply_async`` override: stamps a header on each call and counts the calls (by the tag).

    Every delivery of its messages is recorded, with the stamp it carries, once it is over: it ran, or the
    library put it off or ignored it.
    """

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        tag = args[0]
        _records.incr(f"applied:{tag}")
        options["headers"] = {**(options.get("headers") or {}), STAMP_HEADER: tag}
        return super().apply_async(args, kwargs, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.request.called_directly:
            return super().__call__(*args, **kwargs)
        try:
            return super().__call__(*args, **kwargs)
        finally:
            record(args[0], "delivered", value=args[1], id=self.request.id, stamp=stamp_of(self.request))


def stamp_of(request: Any) -> Any:
    """The stamp of the message a request runs: Celery 5.0 puts custom headers on the request itself."""
    return (request.headers or {}).get(STAMP_HEADER) or getattr(request, STAMP_HEADER, None)


@app.task(base=StampedOnCall, running_lock_conflict="wait", lock_args=["tag"])
def stamped_waiting_gated(tag: str, value: Any = None) -> str:
    """``waiting_gated`` whose calls go through a user's ``apply_async`` override."""
    record(tag, "start", value=value)
    wait_gate(tag)
    record(tag, "end", value=value)
    return tag


# -- windows, lock names, replace ---------------------------------------------------------


@app.task(base=OnceTask, queue_lock_until="end")
def until_end(tag: str, value: Any = None) -> str:
    """``gated`` whose call is a duplicate until its run ends, not only while it is queued."""
    record(tag, "start", value=value)
    wait_gate(tag)
    record(tag, "end", value=value)
    return tag


@app.task(base=OnceTask, queue_lock_until="end", queue_lock_conflict="existing")
def until_end_existing(tag: str) -> str:
    """``until_end`` whose duplicates get the queued or running call's result."""
    record(tag, "start")
    wait_gate(tag)
    return tag


@app.task(base=OnceTask, queue_lock_until="end", bind=True, max_retries=2)
def until_end_retrying(self: Any, tag: str) -> int:
    """``until_end`` that asks once to be retried, a moment later, and runs to its end the second time."""
    record(tag, "start", retries=self.request.retries)
    if not self.request.retries:
        raise self.retry(countdown=1)
    wait_gate(tag)
    return int(self.request.retries)


@app.task(base=OnceTask, queue_lock_until="end")
def until_end_failing(tag: str) -> None:
    record(tag, "run")
    raise ValueError(f"failing {tag}")


@app.task(base=OnceTask, unique_for=3)
def remind(tag: str) -> str:
    """Sends a reminder at most once every three seconds, however often it is asked."""
    record(tag, "run")
    return tag


@app.task(base=OnceTask, unique_for=3, queue_lock_conflict="existing", queue_lock=False)
def remind_alone(tag: str) -> str:
    """``remind`` with its window alone (no queue lock); a duplicate gets the call that opened the window."""
    record(tag, "run")
    return tag


@app.task(base=OnceTask, lock_name="account", lock_args=["account"])
def sync_account(account: int, full: bool = False) -> int:
    """One of two tasks that must exclude each other on an account (``rebuild_account``)."""
    record(str(account), "start", task="sync")
    wait_gate(str(account))
    return account


@app.task(base=OnceTask, lock_name="account", lock_args=["account"])
def rebuild_account(account: int) -> int:
    record(str(account), "start", task="rebuild")
    wait_gate(str(account))
    return account


@app.task(base=OnceTask, lock_args=["account"], queue_lock_conflict="replace")
def push_balance(account: str, balance: int) -> int:
    """Pushes an account's balance: the queued call runs once, with the newest balance asked for."""
    record(account, "run", balance=balance)
    return balance


@app.task(base=OnceTask, lock_args=["account"], queue_lock_conflict="replace", acks_late=True,
          reject_on_worker_lost=True)
def push_balance_late(account: str, balance: int) -> int:
    """``push_balance`` held at its gate, whose message goes back to the broker if its pool process dies."""
    record(account, "start", balance=balance)
    wait_gate(account)
    return balance


# Throttled tasks (tests/test_throttle.py): each start recorded with the attempt it is.
@app.task(base=OnceTask, bind=True, throttle=(3, 2), lock_args=["tenant"], queue_lock=False)
def throttled(self: Any, tenant: str, tag: str, n: int) -> int:
    record(tag, "start", tenant=tenant, n=n, retries=self.request.retries)
    return n


@app.task(base=OnceTask, throttle="2/s", throttle_conflict="reject", lock_args=[], queue_lock=False)
def throttled_reject(tag: str, n: int) -> int:
    record(tag, "start", n=n)
    return n


@app.task(base=OnceTask, throttle=["2/s", (3, 3)], lock_args=["tag"], queue_lock=False)
def throttled_twice(tag: str, n: int) -> int:
    record(tag, "start", n=n)
    return n


@app.task(base=OnceTask, throttle=(1, 1), lock_args=["tag"])
def throttled_queued(tag: str, n: int) -> int:
    record(tag, "start", n=n)
    return n


@app.task(base=OnceTask, throttle=(1, 3), lock_args=["tag"], queue_lock=False, acks_late=True,
          reject_on_worker_lost=True)
def throttled_late(tag: str, n: int) -> int:
    """A throttled task whose message goes back to the broker if its pool process dies; the second call waits."""
    record(tag, "start", n=n)
    if n > 1:
        wait_gate(tag)
    return n


@app.task(base=OnceTask, throttle=(3, 2), running_limit=2, running_lock_conflict="wait", queue_lock=False,
          lock_args=["tag"])
def throttled_limited(tag: str, n: int) -> int:
    record(tag, "start", n=n)
    time.sleep(0.3)
    record(tag, "end", n=n)
    return n


# Every task above is made now, not when first used: a test that defines a task on this app with bad options
# meets the error at once, and leaves nothing pending for whatever later reads ``app.tasks`` (the rescuer does).
app.finalize()
