"""The library's delayed publishes: whole seconds on RabbitMQ's native delayed delivery, as computed elsewhere."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import celery
import pytest
from celery import Celery, states
from kombu import Exchange, Queue

from celery_once_task.delays import delayed_options
from tests import worker_app as tasks
from tests.support import Worker, events

#: Celery sends countdowns through RabbitMQ's native delayed delivery from 5.5 on.
NATIVE_DELAYED_DELIVERY = (celery.VERSION.major, celery.VERSION.minor) >= (5, 5)
#: Native delayed delivery's routing key for a countdown of 3 s to the routing key ``feeds``.
DELAYED_FEEDS = ".".join(f"{3:028b}") + ".feeds"


@pytest.mark.any_broker
def test_a_burst_extended_to_less_than_a_second_ahead_ends_success_for_every_caller(worker: Worker,
                                                                                   recs: Any) -> None:
    doc = uuid.uuid4().hex
    first = tasks.reindex.delay(doc, 1)
    time.sleep(0.5)  # the burst's message arrives 1 s after the first call, half a second before it is due
    second = tasks.reindex.delay(doc, 2)
    last_call = time.time()
    assert [first.get(timeout=20), second.get(timeout=20)] == [2, 2]
    assert (first.state, second.state) == (states.SUCCESS, states.SUCCESS)
    (run,) = events(recs, doc, "run")
    assert run["t"] >= last_call + 1.0 - 0.2  # never before it is due (clocks of one machine)
    extended = re.search(rf"\[{first.id}\]: execution waiting: burst \S+ was extended; due in (\S+)s",
                         worker.read_log())
    assert extended is not None and 0 < float(extended.group(1)) < 1


def quorum_app() -> Celery:
    app = Celery("quorum", broker="amqp://guest:guest@127.0.0.1:1/none", set_as_current=False)
    app.conf.update(task_default_queue_type="quorum", task_default_exchange_type="topic",
                    task_queues=[Queue("celery", Exchange("celery", "topic"), routing_key="celery",
                                       queue_arguments={"x-queue-type": "quorum"}),
                                 Queue("feed-updates", Exchange("feeds", "topic"), routing_key="feeds",
                                       queue_arguments={"x-queue-type": "quorum"})])
    return app


def test_a_delay_on_quorum_queues_is_rounded_up_to_whole_seconds_where_celery_delivers_it_natively() -> None:
    app = quorum_app()
    seconds = [0.3, 1.0, 1.2, 2.9]
    assert [delayed_options(app, {"countdown": second})["countdown"] for second in seconds] == (
        [1.0, 1.0, 2.0, 3.0] if NATIVE_DELAYED_DELIVERY else seconds)


def test_a_delayed_copy_on_native_delayed_delivery_names_the_queue_of_its_routing_key() -> None:
    app = quorum_app()
    queue = "feed-updates" if NATIVE_DELAYED_DELIVERY else None
    assert delayed_options(app, {"countdown": 2.5, "exchange": "celery_delayed_delivery",
                                 "routing_key": DELAYED_FEEDS}).get("queue") == queue
    assert delayed_options(app, {"countdown": 2.5, "exchange": "feeds", "routing_key": "feeds"}).get("queue") == queue
    assert "queue" not in delayed_options(app, {"countdown": 0, "routing_key": "feeds"})


@pytest.mark.parametrize("broker", ["amqp://guest:guest@127.0.0.1:1/none", "redis://127.0.0.1:1/0"])
def test_a_delay_on_classic_queues_or_redis_keeps_its_sub_second_countdown(broker: str) -> None:
    app = Celery("classic", broker=broker, set_as_current=False)
    options = {"countdown": 0.3, "exchange": "feeds", "routing_key": "feeds"}
    assert delayed_options(app, options) == options


def test_a_redis_broker_keeps_sub_second_countdowns_with_quorum_queues_configured() -> None:
    app = quorum_app()
    app.conf.broker_url = "redis://127.0.0.1:1/0"
    assert delayed_options(app, {"countdown": 0.3}) == {"countdown": 0.3}
