"""Lets a bare ``"celery_once_task"`` entry in ``INSTALLED_APPS`` use ``OnceTaskAppConfig``.

Django looks for an ``apps`` module with one ``AppConfig`` subclass; without
this one it would install a plain ``AppConfig`` that connects no signals and
reads no settings. Only Django imports this module.
"""

from __future__ import annotations

from .django import OnceTaskAppConfig

__all__ = ["OnceTaskAppConfig"]
