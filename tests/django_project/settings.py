"""Django settings of the test project: the session's private redis-server, a SQLite file, ``CELERY_ONCE_*``.

The test session passes the private redis-server's port in
``ONCE_TEST_REDIS_PORT`` and the database file in ``ONCE_TEST_DJANGO_DB``.
A test may replace settings with a JSON object in
``ONCE_TEST_DJANGO_OVERRIDES`` (an invalid value, a smaller
``INSTALLED_APPS``; ``null`` unsets a setting); it applies to the process
that reads this module.
"""

from __future__ import annotations

import json
import os

# No default port: a missing one must fail, not reach a Redis the tests did not start.
_REDIS = f"redis://127.0.0.1:{int(os.environ['ONCE_TEST_REDIS_PORT'])}"

SECRET_KEY = "celery-once-task-tests"
USE_TZ = True
INSTALLED_APPS = [
    "celery_once_task.django.OnceTaskAppConfig",
    "tests.django_project.shop",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("ONCE_TEST_DJANGO_DB", ":memory:"),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

# Databases 11-14 of the private server: apart from those tests.worker_app uses.
CELERY_BROKER_URL = f"{_REDIS}/12"
CELERY_RESULT_BACKEND = f"{_REDIS}/13"
CELERY_RESULT_EXPIRES = 600
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ROUTES = {
    "tests.django_project.shop.tasks.parked": {"queue": "parked"},
    "tests.django_project.shop.tasks.parked_with_own_timeout": {"queue": "parked"},
}

CELERY_ONCE_REDIS_URL = f"{_REDIS}/11"
CELERY_ONCE_QUEUE_LOCK_TIMEOUT = 1234
CELERY_ONCE_RUNNING_LOCK_TIMEOUT = 2345
CELERY_ONCE_HEARTBEAT_TIMEOUT = 12

# Where the project's tasks record what they do, for the tests to read.
ONCE_TEST_RECORDS_URL = f"{_REDIS}/14"

for _name, _value in json.loads(os.environ.get("ONCE_TEST_DJANGO_OVERRIDES") or "{}").items():
    if _value is None:
        globals().pop(_name, None)
    else:
        globals()[_name] = _value
