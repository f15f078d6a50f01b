"""A second Celery app of the project, configured without Django's settings.

Its ``app.conf`` holds no ``once_*`` values, so its workers and callers get
``CELERY_ONCE_*`` from ``OnceTaskAppConfig`` alone. Celery's Django fixup
runs ``django.setup()`` when such a worker starts.
"""

from __future__ import annotations

import os

from celery import Celery

from celery_once_task import OnceTaskUnlockBootStep

_REDIS = f"redis://127.0.0.1:{int(os.environ['ONCE_TEST_REDIS_PORT'])}"

app = Celery("plain", broker=f"{_REDIS}/12", backend=f"{_REDIS}/13", set_as_current=False)
app.conf.update(worker_prefetch_multiplier=1, result_expires=600)
app.autodiscover_tasks()
app.steps["worker"].add(OnceTaskUnlockBootStep)
