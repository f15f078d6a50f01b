"""The project's Celery app, made the way Django users make it, plus the worker boot step.

It reads ``CELERY_*`` Django settings through the ``CELERY`` namespace, so
``CELERY_ONCE_*`` reach ``app.conf.once_*`` too. It does not connect the
library's signals: ``OnceTaskAppConfig`` does that when Django is set up.
"""

from __future__ import annotations

import os

from celery import Celery

from celery_once_task import OnceTaskUnlockBootStep

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django_project.settings")

app = Celery("django_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
app.steps["worker"].add(OnceTaskUnlockBootStep)
