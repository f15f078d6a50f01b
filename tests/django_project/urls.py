"""The test project's URLs: the locks page, mounted before the admin as the README shows."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/once-locks/", include("celery_once_task.urls")),
    path("admin/", admin.site.urls),
]
