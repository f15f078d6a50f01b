"""Django integration: ``OnceTaskAppConfig`` and the ``CELERY_ONCE_*`` settings.

Add ``"celery_once_task.django.OnceTaskAppConfig"`` (or just
``"celery_once_task"``, which ``apps.py`` points here) to ``INSTALLED_APPS``.
``ready()`` validates the settings (``ImproperlyConfigured`` names the bad
one) and connects the signal receivers, once. The settings are read again
whenever a lock is needed, never at import, so the order in which settings
and modules are loaded cannot trap anyone. These values rank below the
Celery app's configuration and ``configure()`` (see ``settings``). The core
package never imports Django; only this module, ``apps`` and
``OnceTask``'s on-commit methods (inside the call) do.
"""

from __future__ import annotations

from collections.abc import Mapping

from django.apps import AppConfig
from django.core.exceptions import ImproperlyConfigured

from .settings import set_integration_source, settings_changed
from .settings_table import SETTINGS, validate
from .signals import setup_once_task_signals

#: Django setting -> library setting: ``CELERY_ONCE_`` and the setting's name in capitals, for every setting.
DJANGO_SETTINGS = {spec.django_name: spec.name for spec in SETTINGS}


def django_settings() -> Mapping[str, object]:
    """The ``CELERY_ONCE_*`` settings that are set, validated.

    Returns:
        Each setting's value, by the library's name of it (``redis_url`` for ``CELERY_ONCE_REDIS_URL``).

    Raises:
        ImproperlyConfigured: A setting's value is not valid; the message names the setting.
    """
    from django.conf import settings

    values: dict[str, object] = {}
    for django_name, name in DJANGO_SETTINGS.items():
        value = getattr(settings, django_name, None)
        if value is None:
            continue
        try:
            values[name] = validate(name, value, label=django_name)
        except ValueError as exc:
            raise ImproperlyConfigured(str(exc)) from None
    return values


def _settings_changed(**_: object) -> None:
    settings_changed()


class OnceTaskAppConfig(AppConfig):
    """The Django app: validates ``CELERY_ONCE_*`` at start-up, serves them to every lock, connects the signals.

    Add ``"celery_once_task.django.OnceTaskAppConfig"`` (or ``"celery_once_task"``) to ``INSTALLED_APPS``.
    """

    name = "celery_once_task"
    label = "celery_once_task"
    verbose_name = "Celery once task"
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        from django.core.signals import setting_changed

        django_settings()  # fail at start-up, not at the first task
        set_integration_source(django_settings)
        # Settings resolved for a task are kept until something changes them
        # (override_settings in tests, for one).
        setting_changed.connect(_settings_changed, dispatch_uid="celery_once_task.settings_changed")
        setup_once_task_signals()  # idempotent: dispatch_uid
