"""The import path of ``celery once`` and ``celery-once-task`` in installs made before 2.0: see ``ops.cli``."""

from .ops.cli import main, once

__all__ = ["main", "once"]
