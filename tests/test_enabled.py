"""``enabled=False``: a ``OnceTask`` is a plain Celery task; and eager calls when the lock store is away.

The lock store's "port closed" is a port nothing listens on: a connection to
it is refused at once. Where a test counts connections, a listening socket
stands in for the store and counts what it accepts.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from celery_once_task import LockStoreUnavailable, OnceTask, configure
from celery_once_task.janitor import janitor
from celery_once_task.settings import configured
from celery_once_task.store import runner
from tests import worker_app as tasks
from tests.support import RedisServer, events, free_port, running_worker, wait_until

#: A retry policy whose first pause alone is longer than any of these tests takes.
SLOW_RETRIES = {"max_retries": 3, "interval_start": 5.0, "interval_step": 5.0, "interval_max": 5.0}


@pytest.fixture(autouse=True)
def restored_configuration() -> Iterator[None]:
    """Whatever a test gives ``configure()`` is undone after it (the shared app's settings stay)."""
    with configured():
        yield


@pytest.fixture
def closed_port() -> str:
    """The URL of a lock store whose port nothing listens on."""
    return f"redis://127.0.0.1:{free_port()}/0"


class Listener:
    """A socket that listens, counts the connections it accepts, and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"redis://127.0.0.1:{self.sock.getsockname()[1]}/0"
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    listening = Listener()
    try:
        yield listening
    finally:
        listening.close()


def user_app(eager: bool, **conf: Any) -> tuple[Celery, Any]:
    """A user's app (in-memory broker) and a ``OnceTask`` of its own."""
    app = Celery(f"user-{uuid.uuid4().hex[:8]}", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.update(task_always_eager=eager, **conf)

    @app.task(base=OnceTask, shared=False)
    def send_invoice(customer: int, month: str) -> str:
        return f"{customer}:{month}"

    return app, send_invoice


def lock_clients(url: str) -> list[Any]:
    """The library's clients of ``url`` (made on first use): none where nothing asked for one."""
    return [key for key in runner._clients if key[0] == url]


# -- enabled=False ----------------------------------------------------------------


def test_configure_enabled_false_runs_eager_calls_with_the_lock_stores_port_closed(
        closed_port: str, caplog: pytest.LogCaptureFixture) -> None:
    _, send_invoice = user_app(eager=True)
    configure(redis_url=closed_port)
    configure(enabled=False)
    with caplog.at_level(logging.DEBUG, logger="celery_once_task"):
        assert send_invoice.delay(42, "2026-11").get() == "42:2026-11"
        assert send_invoice.delay(42, "2026-11").get() == "42:2026-11"  # no duplicate either
        assert send_invoice.apply((7, "2026-12")).get() == "7:2026-12"
    assert [record for record in caplog.records if record.name.startswith("celery_once_task")] == []
    assert lock_clients(closed_port) == []


def test_disabled_calls_never_connect_to_the_lock_store(listener: Listener) -> None:
    app, send_invoice = user_app(eager=False)
    configure(redis_url=listener.url, enabled=False)
    assert send_invoice.delay(42, "2026-11") is not None  # published, with no lock store contact
    assert send_invoice.delay(42, "2026-11") is not None
    app.conf.task_always_eager = True
    assert send_invoice.delay(42, "2026-11").get() == "42:2026-11"
    assert listener.accepted == []
    socket.create_connection(("127.0.0.1", int(listener.url.rsplit(":", 1)[1].split("/")[0]))).close()
    wait_until(lambda: len(listener.accepted) == 1, what="the listener to count a connection")  # it does count


def test_disabled_task_takes_no_arguments_the_lock_key_needs(closed_port: str) -> None:
    _, send_invoice = user_app(eager=True)
    configure(redis_url=closed_port, enabled=False)
    # An object without a canonical form: a lock key would refuse it; a plain Celery task does not care.
    assert send_invoice.apply((object(), "2026-11")).get().endswith(":2026-11")


def test_enabled_is_read_at_call_time(locks: Any) -> None:
    tag = uuid.uuid4().hex
    configure(enabled=False)
    assert tasks.app.conf.task_always_eager is False
    tasks.parked.delay(tag)  # queue "parked": no worker consumes it
    assert locks.exists(tasks.parked.once_key((tag,), {}, "queue")) == 0
    configure(enabled=True)
    tasks.parked.delay(tag)
    assert locks.exists(tasks.parked.once_key((tag,), {}, "queue")) == 1
    locks.delete(tasks.parked.once_key((tag,), {}, "queue"))


@pytest.mark.slow
def test_a_worker_with_enabled_false_runs_every_call_without_the_lock_store(closed_port: str, recs: Any) -> None:
    tag = uuid.uuid4().hex
    queue = f"disabled-{tag[:8]}"
    configure(redis_url=closed_port, enabled=False)
    env = {"ONCE_TEST_DISABLED": "1", "ONCE_TEST_LOCKS_URL": closed_port}
    with running_worker(tasks.PORT, f"disabled-{tag[:6]}", pool="solo", queues=queue, env=env) as worker:
        first = tasks.echo.apply_async((tag, 1), queue=queue)
        second = tasks.echo.apply_async((tag, 1), queue=queue)  # the same call: not a duplicate now
        assert (first.get(timeout=20), second.get(timeout=20)) == (1, 1)
    log = worker.read_log()  # its shutdown included
    assert len(events(recs, tag, "run")) == 2
    # The library's warnings all name a lock, a lease, a heartbeat or the store (Celery 5.0 warns of its own).
    assert [line for line in log.splitlines()
            if re.search(r"(WARNING|ERROR)/.*(lock|lease|heartbeat|store)", line, re.IGNORECASE)] == []


# -- eager mode without a lock store ---------------------------------------------------


def test_eager_call_without_fail_open_raises_at_once_when_the_store_refuses(closed_port: str) -> None:
    _, send_invoice = user_app(eager=True, task_publish_retry_policy=SLOW_RETRIES)
    configure(redis_url=closed_port, fail_open=False)
    began = time.monotonic()
    with pytest.raises(LockStoreUnavailable, match=r"did not run .*\(after 1 tries\)"):
        send_invoice.delay(42, "2026-11")
    # One try, no pause: a single pause of the policy is 5 s.
    assert time.monotonic() - began < SLOW_RETRIES["interval_start"]


def test_a_refused_connection_leaves_nothing_to_undo(closed_port: str) -> None:
    # Refused: no command was sent, so no lock can have been taken in the call's name.
    _, send_invoice = user_app(eager=False)
    configure(redis_url=closed_port)
    with pytest.raises(LockStoreUnavailable, match=r"after 1 tries"):
        send_invoice.delay(42, "2026-11")
    assert [cleanup for cleanup in janitor.pending() if cleanup.url == closed_port] == []


def test_eager_call_without_fail_open_does_not_run_the_body(closed_port: str) -> None:
    ran: list[int] = []
    app = Celery("user-ran", broker="memory://", set_as_current=False)
    app.conf.task_always_eager = True

    @app.task(base=OnceTask, shared=False)
    def record_run(n: int) -> None:
        ran.append(n)

    configure(redis_url=closed_port)
    with pytest.raises(LockStoreUnavailable):
        record_run.apply((1,))
    assert ran == []


def test_eager_call_with_fail_open_runs_without_the_lock_and_warns_once(
        closed_port: str, caplog: pytest.LogCaptureFixture) -> None:
    _, send_invoice = user_app(eager=True, task_publish_retry_policy=SLOW_RETRIES)
    configure(redis_url=closed_port, fail_open=True)
    with caplog.at_level(logging.WARNING, logger="celery_once_task"):
        assert send_invoice.delay(42, "2026-11").get() == "42:2026-11"
    warnings = [record for record in caplog.records if record.name == "celery_once_task"]
    assert len(warnings) == 1 and "running without running lock" in warnings[0].getMessage()


def test_a_lock_operation_that_times_out_is_tried_again() -> None:
    # A timeout is an unknown outcome, not a missing server: the policy's tries go on.
    server = RedisServer()
    try:
        _, send_invoice = user_app(eager=False, task_publish_retry_policy={
            "max_retries": 2, "interval_start": 0, "interval_step": 0, "interval_max": 0})
        configure(redis_url=f"{server.url}/0", redis_options={"socket_timeout": 0.1})
        server.pause()
        try:
            with pytest.raises(LockStoreUnavailable, match=r"after 3 tries"):
                send_invoice.delay(42, "2026-11")
        finally:
            server.resume()
        # The tries that may have run are undone by owner token once the server answers.
        wait_until(lambda: not [c for c in janitor.pending() if c.url.startswith(server.url)],
                   what="the janitor to delete what the timed-out tries may have taken")
        assert server.client(0).keys("once_task:*") == []
    finally:
        server.stop()
