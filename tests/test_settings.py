"""configure(), its validation, and which value wins where several are set."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celery_once_task import configure
from celery_once_task.settings import (
    APP_CONF_NAMES,
    DEFAULT_QUEUE_LOCK_TIMEOUT,
    DEFAULT_REDIS_URL,
    DEFAULT_RUNNING_LOCK_TIMEOUT,
    TASK_OPTIONS,
    Settings,
    reset_configuration,
    resolve,
)
from tests import worker_app as tasks

REFERENCE = Path(__file__).parent.parent / "docs" / "configuration.md"


@pytest.fixture(autouse=True)
def restore_configuration() -> Iterator[None]:
    yield
    reset_configuration()
    configure(redis_url=tasks.LOCKS_URL)
    for name in ("once_queue_lock_timeout", "once_redis_url"):
        tasks.app.conf.pop(name, None)


def queue_ttl(locks: Any, tag: str) -> int:
    return int(locks.pttl(tasks.parked.once_key((tag,), {}, "queue")))


def test_defaults_are_the_documented_ones() -> None:
    reset_configuration()
    assert resolve() == Settings(DEFAULT_REDIS_URL, 3600, 3600, False)
    assert (DEFAULT_REDIS_URL, DEFAULT_QUEUE_LOCK_TIMEOUT, DEFAULT_RUNNING_LOCK_TIMEOUT) == (
        "redis://localhost:6379/3", 3600, 3600)


def test_configure_changes_only_what_it_is_given() -> None:
    configure(queue_lock_timeout=5)
    configure(running_lock_timeout=6)
    assert resolve() == Settings(tasks.LOCKS_URL, 5, 6, False)


@pytest.mark.parametrize("value", [0, -1, 1.5, "60", True, None.__class__])
def test_timeouts_must_be_positive_integers(value: Any) -> None:
    with pytest.raises(ValueError, match="queue_lock_timeout must be a positive integer"):
        configure(queue_lock_timeout=value)
    with pytest.raises(ValueError, match="running_lock_timeout must be a positive integer"):
        configure(running_lock_timeout=value)


@pytest.mark.parametrize("url", ["http://localhost:6379/0", "localhost:6379", "", 6379])
def test_redis_url_must_be_a_redis_url(url: Any) -> None:
    with pytest.raises(ValueError, match=r"redis_url .*redis://, rediss://, unix://"):
        configure(redis_url=url)


@pytest.mark.parametrize("url", ["redis://h:1/0", "rediss://h:1/0", "unix:///tmp/redis.sock"])
def test_redis_rediss_and_unix_urls_are_accepted(url: str) -> None:
    configure(redis_url=url)
    assert resolve().redis_url == url


def test_a_rejected_value_changes_nothing() -> None:
    configure(queue_lock_timeout=5)
    with pytest.raises(ValueError):
        configure(queue_lock_timeout=7, running_lock_timeout=0)
    assert resolve().queue_lock_timeout == 5


def test_configure_again_takes_effect_for_the_next_lock(locks: Any) -> None:
    configure(queue_lock_timeout=77)
    tag = uuid.uuid4().hex
    tasks.parked.delay(tag)
    assert 76_000 < queue_ttl(locks, tag) <= 77_000


def test_configure_redis_url_moves_the_locks(redis_server: Any) -> None:
    configure(redis_url=f"{redis_server.url}/5")
    tag = uuid.uuid4().hex
    tasks.parked.delay(tag)
    assert redis_server.client(5).exists(tasks.parked.once_key((tag,), {}, "queue")) == 1


def test_app_configuration_wins_over_configure(locks: Any) -> None:
    configure(queue_lock_timeout=77)
    tasks.app.conf.once_queue_lock_timeout = 55
    tag = uuid.uuid4().hex
    tasks.parked.delay(tag)
    assert 54_000 < queue_ttl(locks, tag) <= 55_000


def test_task_option_wins_over_app_configuration() -> None:
    tasks.app.conf.once_queue_lock_timeout = 55
    assert resolve(tasks.app, tasks.own_timeouts).queue_lock_timeout == 70
    assert resolve(tasks.app, tasks.parked).queue_lock_timeout == 55


def test_invalid_app_configuration_is_named_at_the_call() -> None:
    tasks.app.conf.once_queue_lock_timeout = "soon"
    with pytest.raises(ValueError, match=r"app\.conf\.once_queue_lock_timeout must be a positive integer"):
        tasks.parked.delay(uuid.uuid4().hex)


@pytest.mark.parametrize("name", sorted(APP_CONF_NAMES))
def test_the_configuration_reference_gives_every_setting_in_its_three_spellings(name: str) -> None:
    text = REFERENCE.read_text()
    assert f"### `{name}`\n" in text, f"docs/configuration.md has no section for {name}"
    section = text.split(f"### `{name}`\n", 1)[1].split("\n### ", 1)[0]
    spellings = f"`configure({name}=...)` · `app.conf.{APP_CONF_NAMES[name]}` · `CELERY_ONCE_{name.upper()}`"
    assert spellings in section, f"docs/configuration.md does not give {name} in its three spellings"


@pytest.mark.parametrize("option", sorted({*TASK_OPTIONS, "queue_lock", "running_lock", "lock_args", "running_limit"}))
def test_the_configuration_reference_lists_every_task_option(option: str) -> None:
    options = REFERENCE.read_text().split("## Task options\n", 1)[1]
    assert f"`{option}`" in options, f"docs/configuration.md does not list the task option {option}"
