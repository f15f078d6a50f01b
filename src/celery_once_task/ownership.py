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
from dataclasses import asdict, dataclass
from typing import Optional

#: This process tree's id. Created at import, before a prefork pool forks, so
#: a worker's main process and its pool children share it.
INSTANCE = uuid.uuid4().hex[:16]

HEARTBEAT_PREFIX = "once_task_worker"
#: A worker instance writes its heartbeat this often ...
HEARTBEAT_INTERVAL = 2.0
#: ... and is taken for gone once its heartbeat is this old.
HEARTBEAT_TTL = 6.0


class _Heartbeat:
    # Set once, by the worker boot step, before the pool forks: children then
    # write it into their tokens, and the main process rebuilds the same tokens.
    enabled = False


def enable_heartbeat() -> None:
    """Declare that this process tree keeps a heartbeat (see ``bootstep``)."""
    _Heartbeat.enabled = True


def heartbeat_enabled() -> bool:
    return _Heartbeat.enabled


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
    def for_execution(
        cls, task_id: str, retries: Optional[int], worker: Optional[str], heartbeat: bool
    ) -> RunningOwner:
        return cls(
            task_id=task_id,
            retries=int(retries or 0),
            worker=worker or socket.gethostname(),
            instance=INSTANCE,
            heartbeat=heartbeat,
        )

    @property
    def token(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

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
