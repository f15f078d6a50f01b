"""A Django project laid out as Celery's "First steps with Django" lays one out.

Importing the project loads its Celery app, so that ``shared_task`` binds to it.
"""

from .celery import app as celery_app

__all__ = ("celery_app",)
