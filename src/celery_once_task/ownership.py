"""Who holds a lock: the owner tokens stored as lock values.

* A queue lock's value is the id of the task message that holds it.
* A running lock's value names the execution that holds it: the task id, the
  attempt (Celery's ``retries`` count), the worker's node name and the
  *instance*, a random id of the worker process tree (pool children inherit
  their parent's, so the main process can release a lock on behalf of a child
  that died). It is JSON so that operators can read it with ``GET``, written
  with sorted keys so that the main process can rebuild it byte for byte.

Ownership is decided by the whole token: no process deletes or replaces a lock
whose value is not the token it computed for itself.
"""

from __future__ import annotations

import json
import socket
import uuid
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Optional

#: This process tree's id. Created at import, before a prefork pool forks, so
#: a worker's main process and its pool children share it.
INSTANCE = uuid.uuid4().hex[:16]

HEARTBEAT_PREFIX = "once_task_worker"
#: A worker instance writes its heartbeat this often ...
HEARTBEAT_INTERVAL = 2.0
#: ... and is taken for gone once its heartbeat is this old.
HEARTBEAT_TTL = 6.0


class _Worker:
    # Set once, by the worker boot step, before the pool forks: children then
    # write the same values into their tokens as the main process rebuilds.
    nodename: Optional[str] = None
    heartbeat = False


def register_worker(nodename: str) -> None:
    """Declare this process tree a worker with a node name and a heartbeat (see ``bootstep``)."""
    _Worker.nodename = nodename
    _Worker.heartbeat = True


def heartbeat_enabled() -> bool:
    return _Worker.heartbeat


def worker_name() -> str:
    """The worker's node name where the boot step gave it, else the host name.

    Not the request's ``hostname``: pool children of Celery < 5.1 see the bare
    host name there while the main process sees the node name.
    """
    return _Worker.nodename or socket.gethostname()


def heartbeat_key(instance: str) -> str:
    """The key a worker instance keeps alive while it runs (see ``bootstep``)."""
    return f"{HEARTBEAT_PREFIX}:{instance}"


@dataclass(frozen=True)
class RunningOwner:
    """The execution that holds (or wants) a running lock."""

    task_id: str
    retries: int
    worker: str
    instance: str
    #: Whether the instance keeps a heartbeat, so that its death can be shown.
    heartbeat: bool

    @classmethod
    def for_execution(cls, task_id: str, retries: Optional[int]) -> RunningOwner:
        """The owner an attempt of a task run by this process tree is."""
        return cls(
            task_id=task_id,
            retries=int(retries or 0),
            worker=worker_name(),
            instance=INSTANCE,
            heartbeat=heartbeat_enabled(),
        )

    @cached_property
    def token(self) -> str:
        # Once per owner: a pickup passes it to Redis and keeps it for the
        # release. The fields as asdict() gives them, without its deep copy of
        # every value (they are str, int and bool).
        return json.dumps({name: getattr(self, name) for name in _FIELDS}, sort_keys=True, separators=(",", ":"))

    @classmethod
    def parse(cls, token: str | bytes) -> Optional[RunningOwner]:
        """The owner a token names, or None if the token is not one of ours."""
        try:
            data = json.loads(token)
            return cls(
                task_id=str(data["task_id"]),
                retries=int(data["retries"]),
                worker=str(data["worker"]),
                instance=str(data["instance"]),
                heartbeat=bool(data["heartbeat"]),
            )
        except (ValueError, TypeError, KeyError):
            return None


#: The fields a token holds: all of them.
_FIELDS = tuple(field.name for field in fields(RunningOwner))
