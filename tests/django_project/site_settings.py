"""The test project served as a web site: the admin, and the locks page at ``/admin/once-locks/``.

Everything else is ``settings``. The lock store's URL carries a user and a
password (``ONCE_TEST_LOCK_STORE_PASSWORD``; the session's redis-server lets
its default user in with any password) so that tests can check that the page
never shows it.
"""

from __future__ import annotations

import os

from .settings import *  # noqa: F403 - this project's settings, with a web site on top
from .settings import _REDIS, INSTALLED_APPS

DEBUG = True  # runserver serves the admin's static files
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "tests.django_project.urls"
STATIC_URL = "static/"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    *INSTALLED_APPS,
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

_PASSWORD = os.environ.get("ONCE_TEST_LOCK_STORE_PASSWORD", "not-a-secret")
CELERY_ONCE_REDIS_URL = _REDIS.replace("redis://", f"redis://default:{_PASSWORD}@") + "/11"
