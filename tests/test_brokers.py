"""How long finished records are kept follows the app's broker; a window that would let a copy through is refused."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery

from celery_once_task import OnceTask, brokers
from celery_once_task.bootstep import refuse_short_guards


def conf(url: str, **transport_options: Any) -> Any:
    return SimpleNamespace(broker_url=url, broker_transport_options=transport_options)


def test_the_redis_broker_keeps_records_for_its_visibility_timeout_and_a_margin() -> None:
    assert brokers.default_guard(conf("redis://localhost:6379/0")) == 3600 + brokers.MARGIN
    assert brokers.default_guard(conf("rediss://h/0", visibility_timeout=43200)) == 43200 + brokers.MARGIN
    assert brokers.default_guard(conf("sentinel://h:26379;sentinel://g:26379")) == 3600 + brokers.MARGIN


def test_the_sqs_broker_keeps_records_for_its_visibility_timeout_and_a_margin() -> None:
    assert brokers.default_guard(conf("sqs://")) == 1800 + brokers.MARGIN
    assert brokers.default_guard(conf("sqs://", visibility_timeout=600)) == 600 + brokers.MARGIN


def test_rabbitmq_keeps_records_for_minutes() -> None:
    for url in ("amqp://guest@localhost//", "pyamqp://h//", "amqps://h//", None):
        assert brokers.default_guard(conf(url)) == brokers.AMQP_GUARD  # type: ignore[arg-type]


def test_another_broker_keeps_records_for_an_hour() -> None:
    assert brokers.default_guard(conf("memory://")) == brokers.OTHER_GUARD


def test_an_explicit_window_wins() -> None:
    assert brokers.guard_seconds(conf("redis://h/0"), 7200) == 7200
    assert brokers.guard_seconds(conf("amqp://h//"), 60) == 60


def test_a_window_shorter_than_the_visibility_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match=r"redelivery_guard_timeout=600 .*visibility_timeout \(3600 s"):
        brokers.guard_seconds(conf("redis://h/0"), 600)


def test_a_worker_refuses_to_start_with_a_window_shorter_than_the_visibility_timeout() -> None:
    app = Celery("guards", broker="redis://localhost:6379/0", set_as_current=False)
    app.conf.broker_transport_options = {"visibility_timeout": 1200}

    @app.task(base=OnceTask, name="guards.short", redelivery_guard_timeout=900, shared=False)
    def short() -> None:
        """Its records would expire before the broker's copy comes."""

    with pytest.raises(ValueError, match=r"task guards.short: redelivery_guard_timeout=900 .*1200"):
        refuse_short_guards(app)
    app.conf.broker_transport_options = {"visibility_timeout": 900}
    refuse_short_guards(app)
