"""celery-once-task: stop duplicate Celery task execution with Redis locks.

The user guide is the documentation site (``docs/``). The modules, each with one concern:

``settings``   defaults, validation, ``configure()``, precedence
``errors``     the library's exceptions
``keys``       canonical arguments, digest, key format
``connection`` lock-store URLs (one server, Sentinel, Cluster, TLS) and their clients
``wire``       lock commands packed and written straight onto a connection
``lua``        every Lua script, a module per concern, each headed by its KEYS/ARGV/return
``scripts``    running the scripts in one round trip, reloading them where a node lost them
``store``      every lock operation, retries of transient errors
``ownership``  the owner tokens stored as lock values, and the lease timing
``task``       ``OnceTask``: a thin class over the paths below
``publish``    the queue lock at publish, and what a duplicate call gets
``execute``    pickup, the running lock around the body, what a duplicate execution gets
``waiting``    the waiting copy of ``running_lock_conflict="wait"`` and its hand-over
``limits``     ``running_limit``: a key's slots and its line of waiting calls
``debounce``   ``debounce``: a burst of calls becomes one execution, with the last call's arguments
``headers``    the library's message headers, read off a request on every Celery release
``deferral``   publishing a message again to run later
``rejection``  a duplicate execution refused: ``OnceTaskLocked`` and its stored failure
``redelivery`` a copy of a message whose execution finished: the finished records
``janitor``    owner-checked deletes that wait for the store or for a process to exit
``request``    cleanup in the worker's main process for children that died
``cleanup``    releasing another execution's locks, never raising
``renewal``    the worker's lease renewal and heartbeat
``native``     an OS thread no pool can starve, for the renewal
``events``     the library's signals (``duplicate_call``, ...), defined where nothing imports back
``signals``    the signals for users; revocation and internal-error receivers
``bootstep``   leases, heartbeat, release at cold shutdown
``django``     the Django ``AppConfig``, and ``apps`` for a bare ``"celery_once_task"`` entry
``locks``      reading and clearing locks, for operators
``cli``        ``celery -A proj once ...`` and ``celery-once-task``
``models``, ``views``, ``urls``  Django only: the permission and the locks page
"""

from .bootstep import OnceTaskUnlockBootStep
from .errors import LockStoreUnavailable, OnceTaskDuplicate, OnceTaskError, OnceTaskLocked
from .settings import configure
from .signals import setup_once_task_signals, teardown_once_task_signals
from .task import OnceTask

__version__ = "1.1.0"

__all__ = [
    "LockStoreUnavailable",
    "OnceTask",
    "OnceTaskDuplicate",
    "OnceTaskError",
    "OnceTaskLocked",
    "OnceTaskUnlockBootStep",
    "configure",
    "setup_once_task_signals",
    "teardown_once_task_signals",
]
