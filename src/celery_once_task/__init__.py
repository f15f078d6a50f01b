"""celery-once-task: stop duplicate Celery task execution with Redis locks.

See README.md for the user guide. The modules, each with one concern:

``settings``   defaults, validation, ``configure()``, precedence
``keys``       canonical arguments, digest, key format
``scripts``    every Lua script, and running them in one round trip
``store``      the Redis client and every lock operation
``ownership``  the owner tokens stored as lock values
``task``       ``OnceTask``: queue lock at publish, running lock around the body
``request``    cleanup in the worker's main process for children that died
``cleanup``    releasing another execution's locks, never raising
``signals``    revocation and internal-error receivers
``bootstep``   worker heartbeat, release at cold shutdown
``django``     the Django ``AppConfig``, and ``apps`` for a bare ``"celery_once_task"`` entry
``cli``        the operators' command line
"""

from .bootstep import OnceTaskUnlockBootStep
from .errors import LockStoreUnavailable, OnceTaskError, OnceTaskLocked
from .settings import configure
from .signals import setup_once_task_signals, teardown_once_task_signals
from .task import OnceTask

__version__ = "1.1.0"

__all__ = [
    "LockStoreUnavailable",
    "OnceTask",
    "OnceTaskError",
    "OnceTaskLocked",
    "OnceTaskUnlockBootStep",
    "configure",
    "setup_once_task_signals",
    "teardown_once_task_signals",
]
