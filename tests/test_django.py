"""Django: ``OnceTaskAppConfig``, ``CELERY_ONCE_*`` settings, and publishing on transaction commit.

The project under ``tests/django_project`` is set up in this process with
``django.setup()`` and a SQLite file, and its workers run as subprocesses with
the same settings. Checks that need a fresh process (a failing
``django.setup()``, other settings, an app without Django's configuration)
run a short Python subprocess. The project keeps its locks in database 11 of
the session's private redis-server, with TTLs of 1234 s (queue) and 2345 s
(running), so that none of them can be mistaken for a default.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import pytest
import redis

from celery_once_task.settings import set_integration_source
from tests.support import ROOT, RedisServer, Worker, events, free_port, running_worker, wait_until

SETTINGS = "tests.django_project.settings"
TASKS = "tests.django_project.shop.tasks"
LOCKS_DB = 11
QUEUE_TTL_MS = 1234_000
#: The lease a worker with the boot step keeps: CELERY_ONCE_HEARTBEAT_TIMEOUT (12 s) plus one renewal interval.
LEASE_MS = 13_200


@dataclass
class Project:
    app: Any
    database: Path

    def worker_env(self, overrides: Optional[dict[str, Any]] = None) -> dict[str, str]:
        return {
            "DJANGO_SETTINGS_MODULE": SETTINGS,
            "ONCE_TEST_DJANGO_DB": str(self.database),
            "ONCE_TEST_DJANGO_OVERRIDES": json.dumps(overrides or {}),
        }


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """The test project, set up in this process as a Django process sets itself up."""
    import django
    from django.core.management import call_command

    database = tmp_path_factory.mktemp("django") / "db.sqlite3"
    # Only while Django reads its settings: workers of other test modules
    # must not inherit a Django settings module.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_SETTINGS_MODULE", SETTINGS)
        patch.setenv("ONCE_TEST_DJANGO_DB", str(database))
        patch.delenv("ONCE_TEST_DJANGO_OVERRIDES", raising=False)
        django.setup()
        call_command("migrate", verbosity=0)
        from tests.django_project import celery_app
        from tests.django_project.guard import check_lock_store
    check_lock_store(celery_app)
    try:
        yield Project(celery_app, database)
    finally:
        # Django's settings must not reach the locks of other test modules.
        set_integration_source(None)


@pytest.fixture(scope="module")
def shop(project: Project) -> SimpleNamespace:
    """The app's tasks, as bound to the project's Celery app (whichever app is current)."""
    import tests.django_project.shop.tasks  # noqa: F401 - registers them, as a view importing them would

    names = ("echo", "gated", "parked", "parked_with_own_timeout", "ship_order")
    return SimpleNamespace(**{name: project.app.tasks[f"{TASKS}.{name}"] for name in names})


@pytest.fixture(scope="module")
def project_worker(project: Project, redis_server: RedisServer) -> Iterator[Worker]:
    """A worker started as Django users start theirs: ``celery -A <project> worker``."""
    with running_worker(redis_server.port, "django", app="tests.django_project", env=project.worker_env()) as worker:
        yield worker


@pytest.fixture(scope="module")
def dlocks(redis_server: RedisServer) -> redis.Redis:
    """The database ``CELERY_ONCE_REDIS_URL`` names."""
    return redis_server.client(LOCKS_DB)


@pytest.fixture(scope="module")
def drecs(redis_server: RedisServer) -> redis.Redis:
    return redis_server.client(14)


@pytest.fixture(scope="module")
def dbroker(redis_server: RedisServer) -> redis.Redis:
    return redis_server.client(12)


def new_tag() -> str:
    return uuid.uuid4().hex


def key(task: Any, lock_type: str, *args: Any) -> str:
    return str(task.once_key(args, {}, lock_type))


def parked_ids(broker: redis.Redis, tag: str) -> list[str]:
    """Ids of the messages waiting in the ``parked`` queue whose arguments mention ``tag``."""
    messages = [json.loads(raw) for raw in broker.lrange("parked", 0, -1)]
    return [message["headers"]["id"] for message in messages if tag in message["headers"]["argsrepr"]]


def run_python(
    code: str, overrides: Optional[dict[str, Any]] = None, django: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new interpreter, with the project's settings module unless ``django`` is false."""
    env = {name: value for name, value in os.environ.items() if name != "DJANGO_SETTINGS_MODULE"}
    if django:
        env["DJANGO_SETTINGS_MODULE"] = SETTINGS
    env["ONCE_TEST_DJANGO_OVERRIDES"] = json.dumps(overrides or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


# A caller that is not configured from Django's settings: only the AppConfig
# can bring CELERY_ONCE_* to its locks. It prints the queue lock's key.
PUBLISH_WITH_PLAIN_APP = """
    import django
    django.setup()
    from tests.django_project.plain_celery import app
    from tests.django_project.shop import tasks
    from tests.django_project.guard import check_lock_store
    parked = app.tasks["tests.django_project.shop.tasks.parked"]
    {before}
    check_lock_store(app)
    parked.apply_async(({tag!r},), queue="parked")
    print(parked.once_key(({tag!r},), {{}}, "queue"))
"""


# -- OnceTaskAppConfig ------------------------------------------------------


def test_app_config_sets_the_queue_lock_redis_and_ttl(dlocks: redis.Redis) -> None:
    tag = new_tag()
    queue_key = last_line(run_python(PUBLISH_WITH_PLAIN_APP.format(tag=tag, before="")))
    assert QUEUE_TTL_MS - 10_000 < dlocks.pttl(queue_key) <= QUEUE_TTL_MS


def test_app_config_sets_the_running_lock_redis_and_lease(
    project: Project, shop: SimpleNamespace, redis_server: RedisServer, dlocks: redis.Redis, drecs: redis.Redis
) -> None:
    tag = new_tag()
    with running_worker(redis_server.port, "django-plain", app="tests.django_project.plain_celery",
                        queues="plain", env=project.worker_env()):
        result = shop.gated.apply_async((tag,), queue="plain")
        wait_until(lambda: events(drecs, tag, "start"), timeout=30, what="the task to start")
        ttl = dlocks.pttl(key(shop.gated, "running", tag))
        drecs.rpush(f"gate:{tag}", 1)
        assert result.get(timeout=30) == tag
    assert LEASE_MS - 5_000 < ttl <= LEASE_MS


def test_project_worker_takes_the_running_lock_with_the_project_settings(
    shop: SimpleNamespace, project_worker: Worker, dlocks: redis.Redis, drecs: redis.Redis
) -> None:
    tag = new_tag()
    result = shop.gated.delay(tag)
    wait_until(lambda: events(drecs, tag, "start"), timeout=30, what="the task to start")
    ttl = dlocks.pttl(key(shop.gated, "running", tag))
    drecs.rpush(f"gate:{tag}", 1)
    assert result.get(timeout=30) == tag
    assert LEASE_MS - 5_000 < ttl <= LEASE_MS


def test_app_config_connects_the_signals_that_release_a_revoked_tasks_queue_lock(
    project: Project, shop: SimpleNamespace, project_worker: Worker, dlocks: redis.Redis
) -> None:
    # The project's celery.py connects no signals: only the AppConfig does.
    tag = new_tag()
    task_id = str(uuid.uuid4())
    replies = project.app.control.revoke(task_id, destination=[project_worker.name], reply=True, timeout=10)
    assert replies, "the worker did not confirm the revocation"
    shop.echo.apply_async((tag,), task_id=task_id)
    wait_until(lambda: project.app.AsyncResult(task_id).state == "REVOKED", timeout=30, what="REVOKED")
    wait_until(lambda: not dlocks.exists(key(shop.echo, "queue", tag)), timeout=10, what="queue lock release")


def test_ready_connects_the_signal_receivers_once_however_often_it_runs(project: Project) -> None:
    from celery import signals
    from django.apps import apps

    config = apps.get_app_config("celery_once_task")
    config.ready()
    config.ready()
    for signal in (signals.task_revoked, signals.task_internal_error):
        assert sum("celery_once_task" in str(lookup) for lookup, _ in signal.receivers) == 1


def test_bare_package_name_in_installed_apps_installs_the_app_config() -> None:
    result = run_python(
        """
        import django
        django.setup()
        from django.apps import apps
        from celery_once_task.signals import signals_connected
        print(type(apps.get_app_config("celery_once_task")).__name__, signals_connected())
        """,
        overrides={"INSTALLED_APPS": ["celery_once_task", "tests.django_project.shop"]},
    )
    assert last_line(result) == "OnceTaskAppConfig True"


def test_settings_are_read_when_a_lock_is_taken_not_at_import(dlocks: redis.Redis) -> None:
    tag = new_tag()
    result = run_python(
        f"""
        from celery_once_task import OnceTask
        from tests.django_project.plain_celery import app

        @app.task(base=OnceTask, name="tests.django_project.early")
        def early(tag): return tag

        import django
        django.setup()
        from django.test import override_settings
        from tests.django_project.guard import check_lock_store
        with override_settings(CELERY_ONCE_QUEUE_LOCK_TIMEOUT=99):
            check_lock_store(app)
            early.apply_async(({tag!r},), queue="parked")
        print(early.once_key(({tag!r},), {{}}, "queue"))
        """
    )
    assert 89_000 < dlocks.pttl(last_line(result)) <= 99_000


def test_redis_options_setting_reaches_the_lock_client_settings() -> None:
    result = run_python(
        """
        import json
        import django
        django.setup()
        from celery_once_task.settings import resolve
        from tests.django_project.plain_celery import app
        print(json.dumps(resolve(app).redis_options))
        """,
        overrides={"CELERY_ONCE_REDIS_OPTIONS": {"socket_timeout": 2, "client_name": "shop-locks"}},
    )
    assert json.loads(last_line(result)) == {"socket_timeout": 2, "client_name": "shop-locks"}


def test_unset_settings_take_the_documented_defaults() -> None:
    # Only resolved, never used: the default URL is a Redis these tests did not start.
    result = run_python(
        """
        import dataclasses, json
        import django
        django.setup()
        from celery_once_task.settings import resolve
        from tests.django_project.plain_celery import app
        print(json.dumps(dataclasses.asdict(resolve(app))))
        """,
        overrides={name: None for name in ("CELERY_ONCE_REDIS_URL", "CELERY_ONCE_QUEUE_LOCK_TIMEOUT",
                                           "CELERY_ONCE_RUNNING_LOCK_TIMEOUT", "CELERY_ONCE_HEARTBEAT_TIMEOUT")},
    )
    assert json.loads(last_line(result)) == {
        "redis_url": "redis://localhost:6379/3",
        "queue_lock_timeout": 3600,
        "running_lock_timeout": 3600,
        "fail_open": False,
        "heartbeat_timeout": 30,
        "running_lock_conflict": "reject",
        "queue_lock_conflict": "drop",
        "redis_options": {},
        "redelivery_guard_timeout": None,
        "debounce": None,
        "debounce_max": None,
        "queue_lock_until": "pickup",
        "unique_for": None,
        "key_prefix": "once_task",
        "telemetry": "auto",
        "enabled": True,
        "legacy_formats": False,
    }


def test_fail_open_setting_publishes_without_a_lock_when_redis_is_unreachable(dbroker: redis.Redis) -> None:
    tag = new_tag()
    result = run_python(
        PUBLISH_WITH_PLAIN_APP.format(tag=tag, before=""),
        overrides={"CELERY_ONCE_FAIL_OPEN": True, "CELERY_ONCE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"},
    )
    assert result.returncode == 0, result.stderr
    assert len(parked_ids(dbroker, tag)) == 1


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("CELERY_ONCE_REDIS_URL", "http://127.0.0.1/3"),
        ("CELERY_ONCE_QUEUE_LOCK_TIMEOUT", 0),
        ("CELERY_ONCE_RUNNING_LOCK_TIMEOUT", "60"),
        ("CELERY_ONCE_FAIL_OPEN", "yes"),
        ("CELERY_ONCE_REDIS_OPTIONS", ["socket_timeout", 2]),
    ],
)
def test_invalid_setting_fails_django_setup_with_improperly_configured_naming_it(setting: str, value: Any) -> None:
    result = run_python("import django; django.setup()", overrides={setting: value})
    assert result.returncode != 0
    assert f"django.core.exceptions.ImproperlyConfigured: {setting} must be" in result.stderr


def test_worker_with_an_invalid_setting_refuses_to_start_naming_it(
    project: Project, redis_server: RedisServer
) -> None:
    worker = Worker(redis_server.port, "django-invalid", app="tests.django_project", queues="invalid",
                    env=project.worker_env({"CELERY_ONCE_RUNNING_LOCK_TIMEOUT": -5}))
    try:
        wait_until(lambda: worker.process.poll() is not None, timeout=60, what="the worker to exit")
        assert "ImproperlyConfigured: CELERY_ONCE_RUNNING_LOCK_TIMEOUT must be" in worker.read_log()
    finally:
        worker.stop()


def test_core_package_imports_without_django_installed() -> None:
    result = run_python(
        """
        import importlib, pkgutil, sys

        class WithoutDjango:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "django":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, WithoutDjango())
        import celery_once_task
        for module in pkgutil.iter_modules(celery_once_task.__path__):
            # The Django app's own modules: the AppConfig, the permission, the locks page.
            if module.name not in ("django", "apps", "models", "views", "urls"):
                importlib.import_module("celery_once_task." + module.name)
        print(sorted(name for name in sys.modules if name.startswith(("django", "celery_once_task.django"))))
        """,
        django=False,
    )
    assert last_line(result) == "[]"


# -- Celery's own configuration, and precedence ---------------------------------


def test_celery_namespace_settings_set_the_queue_lock_redis_and_ttl(shop: SimpleNamespace, dlocks: redis.Redis) -> None:
    # The project's app reads CELERY_* with namespace="CELERY": CELERY_ONCE_*
    # arrive as app.conf.once_*, ahead of configure() and the AppConfig.
    tag = new_tag()
    result = shop.parked.delay(tag)
    queue_key = key(shop.parked, "queue", tag)
    assert dlocks.get(queue_key) == result.id.encode()
    assert QUEUE_TTL_MS - 10_000 < dlocks.pttl(queue_key) <= QUEUE_TTL_MS


def test_celery_namespace_settings_apply_in_a_worker_without_the_app_config(
    project: Project, shop: SimpleNamespace, redis_server: RedisServer, dlocks: redis.Redis, drecs: redis.Redis
) -> None:
    tag = new_tag()
    overrides = {"INSTALLED_APPS": ["tests.django_project.shop"], "CELERY_ONCE_HEARTBEAT_TIMEOUT": 18}
    with running_worker(redis_server.port, "django-bare", app="tests.django_project", queues="bare",
                        env=project.worker_env(overrides)):
        result = shop.gated.apply_async((tag,), queue="bare")
        wait_until(lambda: events(drecs, tag, "start"), timeout=30, what="the task to start")
        ttl = dlocks.pttl(key(shop.gated, "running", tag))
        drecs.rpush(f"gate:{tag}", 1)
        assert result.get(timeout=30) == tag
    assert 15_000 < ttl <= 19_800  # the lease: 18 s and one renewal interval of 1.8 s


def test_task_option_wins_over_the_django_setting(shop: SimpleNamespace, dlocks: redis.Redis) -> None:
    tag = new_tag()
    shop.parked_with_own_timeout.delay(tag)
    assert 67_000 < dlocks.pttl(key(shop.parked_with_own_timeout, "queue", tag)) <= 77_000


def test_configure_wins_over_the_app_config_settings(dlocks: redis.Redis) -> None:
    tag = new_tag()
    before = "from celery_once_task import configure; configure(queue_lock_timeout=55)"
    queue_key = last_line(run_python(PUBLISH_WITH_PLAIN_APP.format(tag=tag, before=before)))
    assert 45_000 < dlocks.pttl(queue_key) <= 55_000


# -- Publishing on transaction commit -------------------------------------------


class Rollback(Exception):
    pass


def test_delay_on_commit_takes_the_queue_lock_when_the_transaction_commits(
    shop: SimpleNamespace, dlocks: redis.Redis, dbroker: redis.Redis
) -> None:
    from django.db import transaction

    tag = new_tag()
    queue_key = key(shop.parked, "queue", tag)
    with transaction.atomic():
        assert shop.parked.delay_on_commit(tag) is None
        before_commit = (dlocks.exists(queue_key), parked_ids(dbroker, tag))
    assert before_commit == (0, [])
    (message_id,) = parked_ids(dbroker, tag)
    assert dlocks.get(queue_key) == message_id.encode()


def test_rolled_back_transaction_publishes_nothing_and_leaves_no_lock(
    shop: SimpleNamespace, dlocks: redis.Redis, dbroker: redis.Redis
) -> None:
    from django.db import transaction

    tag = new_tag()
    with contextlib.suppress(Rollback), transaction.atomic():
        shop.parked.delay_on_commit(tag)
        raise Rollback
    assert not dlocks.exists(key(shop.parked, "queue", tag))
    assert parked_ids(dbroker, tag) == []


def test_duplicate_calls_in_one_transaction_publish_once(shop: SimpleNamespace, dbroker: redis.Redis) -> None:
    from django.db import transaction

    tag = new_tag()
    with transaction.atomic():
        shop.parked.delay_on_commit(tag)
        shop.parked.delay_on_commit(tag)
        shop.parked.apply_async_on_commit((tag,))
    assert len(parked_ids(dbroker, tag)) == 1


def test_apply_async_on_commit_publishes_with_its_options(
    shop: SimpleNamespace, dlocks: redis.Redis, dbroker: redis.Redis
) -> None:
    from django.db import transaction

    tag = new_tag()
    with transaction.atomic():
        assert shop.echo.apply_async_on_commit((tag,), queue="parked", countdown=100) is None
    (message_id,) = parked_ids(dbroker, tag)
    queue_key = key(shop.echo, "queue", tag)
    assert dlocks.get(queue_key) == message_id.encode()
    # The countdown is added to the lock's TTL, as apply_async() adds it.
    assert QUEUE_TTL_MS + 90_000 < dlocks.pttl(queue_key) <= QUEUE_TTL_MS + 100_000


def test_delay_on_commit_outside_a_transaction_publishes_at_once(
    shop: SimpleNamespace, dlocks: redis.Redis, dbroker: redis.Redis
) -> None:
    tag = new_tag()
    shop.parked.delay_on_commit(tag)
    (message_id,) = parked_ids(dbroker, tag)
    assert dlocks.get(key(shop.parked, "queue", tag)) == message_id.encode()


def test_delay_on_commit_refuses_arguments_without_a_canonical_form_at_the_call(
    shop: SimpleNamespace, dbroker: redis.Redis
) -> None:
    from django.db import transaction

    tag = new_tag()
    with transaction.atomic(), pytest.raises(TypeError):
        shop.parked.delay_on_commit([tag, object()])
    assert parked_ids(dbroker, tag) == []


def test_task_published_on_commit_reads_the_row_written_in_the_transaction(
    shop: SimpleNamespace, project_worker: Worker, drecs: redis.Redis
) -> None:
    from django.db import transaction

    from tests.django_project.shop.models import Order

    tag = new_tag()
    with transaction.atomic():
        order = Order.objects.create(item=tag)
        shop.ship_order.delay_on_commit(tag, order.pk)
    shipped = wait_until(lambda: events(drecs, tag, "shipped"), timeout=30, what="the order to be shipped")
    assert [event["item"] for event in shipped] == [tag]
