"""Keeps the test project's locks off any Redis the test session did not start.

If a setting failed to take effect, locks would go to the library's default,
``redis://localhost:6379/3``: a real server on many machines, which tests
must never write to. A failing test must fail here instead, before a lock
is taken: callers check before they publish, workers before they start.
"""

from __future__ import annotations

from typing import Any

from celery_once_task.settings import DEFAULT_REDIS_URL, resolve


def check_lock_store(app: Any) -> None:
    """Raise ``RuntimeError`` if ``app``'s locks would go to the default Redis."""
    url = resolve(app).redis_url
    if url == DEFAULT_REDIS_URL:
        raise RuntimeError(f"Celery app {app.main!r} would take its locks in {url}, a Redis the tests did not start")


def check_worker_lock_store(sender: Any = None, **_: Any) -> None:
    """``worker_init`` receiver: runs after ``django.setup()``, before the boot steps take any lock."""
    try:
        check_lock_store(sender.app)
    except RuntimeError as exc:
        # Celery logs and ignores exceptions from signal receivers; this one must stop the worker.
        raise SystemExit(str(exc)) from None
