"""The one place the library touches private attributes of redis-py, Celery or billiard.

Each function here stands for one reach-in into another library's (or the
interpreter's) internals, made because no public API gives what the library
needs; the comment at each says why. Every other module calls these functions
and reads no private attribute itself, so that a release that moves one breaks
here, where ``tests/test_internals.py`` checks each function against the
installed releases, and nowhere else.

Where the internals differ by release, the branch is chosen once, at import,
from the installed version, and each branch names the releases it serves; a
public class that only some releases have (billiard's wrapper of a pool
child's exception) is gated here too. CI
runs every branch: the newest releases, Python 3.9 with redis-py 4.1 and
Celery 5.0 (billiard 3.6), and redis-py 5.x.

A leaf: this module imports redis, celery and billiard and nothing of the
library's own.
"""

from __future__ import annotations

import re
import sys
from types import FrameType
from typing import Any, Optional

import redis

__all__ = ["REDIS_PY", "called_by_beat", "cluster_pipeline_queue", "pool_generation", "registered_tasks",
           "unwrap_child_exception"]


def _version(text: str) -> tuple[int, int]:
    """``(major, minor)`` of a release's version string (``"5.3.1"`` is ``(5, 3)``)."""
    major, minor = [*(int(part) for part in re.findall(r"\d+", text)[:2]), 0, 0][:2]
    return major, minor


#: The installed redis-py's ``(major, minor)``: the version gate of the redis-py reach-ins.
REDIS_PY = _version(redis.__version__)


# -- redis-py: a connection pool's life -------------------------------------------


def pool_generation(pool: Any) -> object:
    """An object that stays the same for one life of ``pool`` and is replaced by ``pool.reset()``.

    ``store.wire`` keeps idle connections of a ``redis.ConnectionPool`` of its
    own, and must forget them when the pool forgets its own: compare the
    returned object by identity (``is``), and hold it only while holding
    connections of that life.
    """
    # redis-py has no public sign of a reset(): no counter, no hook, and the
    # public ``pool.pid`` it sets again is the same number within a process
    # (it tells a fork, which ``wire`` sees by os.register_at_fork, not a
    # reset). What reset() does replace, in every release from 4.1 to the
    # newest, is its record of lent connections: a new set object.
    generation: object = pool._in_use_connections
    return generation


# -- redis-py: a cluster pipeline's queued commands --------------------------------

#: redis-py 6.1+ keeps a cluster pipeline's queued commands in its execution
#: strategy (which also runs transactions); 4.2 to 6.0 keep them on the
#: pipeline as ``command_stack``, which 6.1+ still creates but never fills.
_QUEUE_IN_STRATEGY = REDIS_PY >= (6, 1)


def cluster_pipeline_queue(pipe: Any) -> list[Any]:
    """The commands queued in the Redis Cluster pipeline ``pipe``, for its ``send_cluster_commands``.

    ``store.scripts`` sends them with ``allow_redirections=False``, so that a
    call whose reply was lost is never sent again; ``execute()`` always follows
    with that pass, and ``send_cluster_commands`` wants the queue as argument.
    """
    # No public accessor of the queue exists in any release: len(pipe) counts
    # it, and only execute() sends it.
    if _QUEUE_IN_STRATEGY:  # redis-py 6.1 and later
        queue: list[Any] = pipe._execution_strategy.command_queue
    else:  # redis-py 4.2 to 6.0
        queue = pipe.command_stack
    return queue


# -- billiard: the exception a pool child's failure arrives as ----------------------

try:  # billiard 4.0.1 and later (every release Celery 5.3+ accepts) wrap it
    from billiard.einfo import ExceptionWithTraceback as _WRAPPED
except ImportError:  # billiard 3.6 and 4.0.0 pass it as it is
    _WRAPPED = None


def unwrap_child_exception(exc: BaseException) -> BaseException:
    """The exception a pool child's task failed with, out of billiard's wrapper where there is one.

    billiard 4.0.1+ hands the worker's main process an ``ExceptionWithTraceback``
    that holds the original as ``.exc``; older releases hand the original.
    """
    # The class and its ``exc`` are public, but only from billiard 4.0.1; Celery's
    # own Request unwraps it the same way, in code that no hook reaches.
    if _WRAPPED is not None and isinstance(exc, _WRAPPED):
        inner: BaseException = exc.exc
        return inner
    return exc


# -- Celery beat: who made an apply_async call ------------------------------------


def registered_tasks(app: Any) -> list[Any]:
    """The tasks registered with a Celery app so far, without finalizing it.

    ``app.tasks`` finalizes the app: it evaluates every task still pending,
    imports what autodiscovery names, and raises where the app may not be
    finalized yet. Celery's own ``send_task`` reads the registry as it is,
    ``app._tasks``, for the same reason (every release from 5.0 on has it).
    """
    registry = getattr(app, "_tasks", None)
    return list(registry.values()) if registry is not None else []


def called_by_beat(depth: int, frames: int = 8) -> bool:
    """Whether celery beat's scheduler (``celery.beat``, or a subclass defined there) made the call.

    ``depth``: how many frames above the function that calls this one the
    search starts, as ``sys._getframe`` would count from that function;
    ``frames``: how many frames it looks at from there (code between beat
    and the library, such as a task class that wraps ``apply_async``).
    """
    # Celery before 5.3.4 needs to know: its beat reads ``.id`` of what
    # apply_async returns, and stops on None. Beat passes nothing to
    # apply_async that tells it apart from any other caller (no option, no
    # header, no signal), so the stack is the only way to know; sys._getframe
    # is CPython's (and PyPy's) and costs nothing until it is called, which
    # happens only for a dropped duplicate call on such a Celery.
    frame: Optional[FrameType] = sys._getframe(depth + 1)
    for _ in range(frames):
        if frame is None:
            return False
        if frame.f_globals.get("__name__") == "celery.beat":
            return True
        frame = frame.f_back
    return False
