"""The shop app's config: in every worker of the project, the lock-store check of ``guard``."""

from __future__ import annotations

from celery import signals
from django.apps import AppConfig

from tests.django_project.guard import check_worker_lock_store


class ShopConfig(AppConfig):
    name = "tests.django_project.shop"
    label = "shop"
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        signals.worker_init.connect(check_worker_lock_store, weak=False, dispatch_uid="shop.check_lock_store")
