# proj/__init__.py
from .celery import app

__all__ = ["app"]
