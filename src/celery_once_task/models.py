"""Django only: the permission to clear a lock from the locks page, ``celery_once_task.clear_lock``.

Locks live in Redis, not in the database: ``Lock`` is an unmanaged model with
no table, there only so that Django creates a permission an administrator can
grant to users and groups like any other ("celery_once_task | lock | Can
clear a celery-once-task lock").
"""

from __future__ import annotations

from django.db import models

#: What ``user.has_perm`` is asked before a lock is cleared from the page.
CLEAR_PERMISSION = "celery_once_task.clear_lock"


class Lock(models.Model):
    class Meta:
        managed = False
        default_permissions = ()
        permissions = [("clear_lock", "Can clear a celery-once-task lock")]
        verbose_name = "lock"
