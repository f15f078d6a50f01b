"""Django only: ``include("celery_once_task.urls")`` mounts the locks page (see ``views``)."""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "celery_once_task"

urlpatterns = [
    path("", views.locks_page, name="locks"),
]
