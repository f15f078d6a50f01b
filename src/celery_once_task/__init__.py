"""celery-once-task: stop duplicate Celery task execution with Redis locks.

The user guide is the documentation site (``docs/``). The package, by layer:
a module imports only modules listed before it (and, in ``store/``,
``telemetry/`` and ``ops/``, its own package's).

Foundations, importing nothing of the library above them:

``errors``      the library's exceptions
``events``      the library's signals (``duplicate_call``, ...), defined where nothing imports back
``headers``     the library's message headers, read off a request on every Celery release
``digest``      canonical arguments and their digest
``rates``       the ``throttle`` option's values: N starts per period, parsed and checked
``hash_slots``  Redis Cluster's hash slots: a key's slot, and short texts that hash to a slot
``ids``         the ids written inside values (holders, waiting entries, call ids), and new task ids
``keys``        the lock-key grammar: every key of the lock namespace, and parsing one back
``record_keys`` the keys of the library's own records: finished records, heartbeats, parked messages
``ownership``   the owner tokens stored as lock values, and the lease timing
``brokers``     what the app's broker needs: how late it may deliver a finished task's message again
``native``      an OS thread no pool can starve, for the renewal
``internals``   the one place that touches private attributes of redis-py, Celery or billiard
``protocols``   what the library needs of Celery's objects, as Protocols
``delays``      the countdown of a message the library delays: whole seconds on RabbitMQ's native delayed delivery
``telemetry/``  OpenTelemetry: whether this process records (the one flag the paths test), the
                hooks they call; its ``recorder``, ``spans`` and ``metrics`` load once something records

``store/``      every round trip to Redis: ``runner`` (clients, tries), ``locks``, ``calls``,
                ``waiting``, ``slots``, ``bursts``, ``throttles``, ``leases`` by concern, over ``lua`` (every
                script), ``scripts`` (one round trip), ``wire`` (commands on a connection),
                ``addresses`` and ``connection`` (where the store is, and its clients);
                ``operations`` names each round trip for telemetry; ``permissions`` tells a refusal by
                the store's ACL from an outage
``options``     what an option may be: the kinds of value, the combinations refused
``settings_table`` every setting declared once: its type, default and meaning; ``Settings``; validation
``settings``    where each value comes from and which wins: ``configure()``, integrations, ``resolve()``
``definition``  a task's options checked where it is defined; tasks that share a ``lock_name``
``call_options`` ``apply_async(..., once={...})``: a call's own options, and the worker's reading of them

The paths of a call:

``parking``     the messages published with a countdown, recorded until a copy is taken
``republish``   the library's own publishes of a message again
``waiting``     the waiting copy of ``running_lock_conflict="wait"`` and its hand-over
``janitor``     owner-checked deletes that wait for the store or for a process to exit
``replace``     ``queue_lock_conflict="replace"``: a queued call runs with the newest arguments
``windows``     ``queue_lock_until`` and ``unique_for``; what an execution does with its call's keys
``deferral``    publishing a message again to run later
``redelivery``  a copy of a message whose execution finished: the finished records
``rejection``   a duplicate execution refused: ``OnceTaskLocked`` and its stored failure
``holds``       what an execution holds (``Hold``) and the conflicts a lock and a slot share
``running``     the running lock: pickup, conflicts, release
``limits``      ``running_limit``: a key's slots and its line of waiting calls
``debounce``    ``debounce``: a burst of calls becomes one execution, with the last call's arguments
``throttle``    ``throttle``: at most N starts of a key in any window of a period; the excess postponed or rejected
``publish``     the queue lock at publish, and what a duplicate call gets
``rescue``      a parked message's claim at pickup, and the rescuer of those whose worker died
``execute``     pickup and release around the body, for a running lock or a slot alike
``task``        ``OnceTask``: a thin class over the paths above

The worker, the operators, the integrations:

``cleanup``     releasing another execution's locks, never raising
``request``     cleanup in the worker's main process for children that died
``renewal``     the worker's lease renewal and heartbeat
``bootstep``    leases, heartbeat, release at cold shutdown
``signals``     the signals for users; revocation and internal-error receivers
``ops/``        reading and clearing locks (``ops.locks``), the ``celery once`` command (``ops.cli``)
``django``      the Django ``AppConfig``, and ``apps`` for a bare ``"celery_once_task"`` entry
``testing``     the pytest plugin for users' own tests (the ``pytest11`` entry point)
``compat/``     drop-ins for celery_once (``QueueOnce``) and celery-singleton (``Singleton``)
``models``, ``views``, ``urls``  Django only: the permission and the locks page

``connection``, ``locks`` and ``cli`` keep the import paths of earlier releases.
"""

from .bootstep import OnceTaskUnlockBootStep
from .errors import (
    LockStorePermissionError,
    LockStoreUnavailable,
    OnceTaskDuplicate,
    OnceTaskError,
    OnceTaskLocked,
    OnceTaskThrottled,
)
from .settings import configure
from .signals import setup_once_task_signals, teardown_once_task_signals
from .task import OnceTask

__version__ = "2.0.0"

__all__ = [
    "LockStorePermissionError",
    "LockStoreUnavailable",
    "OnceTask",
    "OnceTaskDuplicate",
    "OnceTaskError",
    "OnceTaskLocked",
    "OnceTaskThrottled",
    "OnceTaskUnlockBootStep",
    "configure",
    "setup_once_task_signals",
    "teardown_once_task_signals",
]
