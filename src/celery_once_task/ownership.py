"""Who holds a lock, and for how long a worker's hold lasts without word from it.

* A queue lock's value is the id of the task message that holds it.
* A running lock's value names the execution that holds it: the task id, the
  attempt (Celery's ``retries`` count), the *instance* (a random id of the
  worker process tree: pool children inherit their parent's, so the main
  process can renew and release a child's lock), the worker's node name where
  the instance keeps no heartbeat (a worker with the boot step is named by its
  heartbeat key instead), and when the lock was taken::

      <task id>\x1f<retries>:<instance>:<worker>\x1f<since>

  with ``<task>\x1f`` before ``<since>`` where the key is named by a
  ``lock_name`` (so that operators see which task holds a shared key).
  Everything before ``<since>`` is the *owner token*. The main process can
  rebuild it byte for byte from the message, so ownership is decided by the
  token as a prefix of the value; the time only informs operators. The value
  is short because a lock of every running execution is held in Redis (about
  70 bytes with a heartbeat, instead of 150: about 180 bytes a lock instead of 260).

  Pre-release builds of 2.0 wrote a JSON object (``{"task_id":"…","retries":0,
  "worker":"…","instance":"…","heartbeat":true,"since":…}``): ``parse`` reads
  both, an owner read from the old form keeps its token in that form, and the
  ``legacy_formats`` setting writes it while processes of such a release still run.

No process deletes, extends or replaces a lock that its own token does not match.

Leases: a worker with the boot step writes running locks with a TTL of
``Lease.ttl`` and extends them every ``Lease.interval`` while their
executions live, together with its heartbeat key. A worker that stops
(killed, or its main process stalled for ``heartbeat_timeout``) stops
extending them; they expire, and the key is free for the next execution.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from dataclasses import dataclass
from functools import cached_property
from json.encoder import encode_basestring_ascii
from typing import Any, Optional

from .record_keys import heartbeat_key

__all__ = ["HEARTBEAT_PREFIX", "INSTANCE", "Lease", "RunningOwner", "heartbeat_enabled", "heartbeat_key",
           "owner_fields", "register_worker", "running_ttl", "value_of_token", "worker_name"]

#: This process tree's id: 15 decimal digits (the first not 0), so that a finished record can
#: hold it in an integer (``redelivery``). Created at import, before a prefork pool forks, so a
#: worker's main process and its pool children share it.
INSTANCE = str(10**14 + secrets.randbelow(9 * 10**14))

#: Between the task id, the attempt and the worker, the task's name and the time in a running lock's value.
_SEP = "\x1f"

#: Between an owner token and when its pickup was sent, in the takeover header of a deferred copy.
_MOMENT_SEP = "\x1e"


def pickup_reference(token: str, since: str = "") -> str:
    """How a deferred copy names what its own earlier pickup, whose reply was lost, may have taken.

    The token alone is not enough: the pool processes of one worker share it,
    and another copy of the same attempt may hold a lock or slot in its name.
    ``since`` (when that pickup was sent, as the slot records it) tells them
    apart; a running lock's reference is its whole value, and needs none.
    """
    return f"{token}{_MOMENT_SEP}{since}" if since else token


def split_pickup_reference(reference: str) -> tuple[str, str]:
    """The token and the moment a ``pickup_reference`` names ("" : any moment, as a reference without one)."""
    token, separator, since = reference.rpartition(_MOMENT_SEP)
    return (token, since) if separator else (reference, "")


#: The heartbeats' prefix under the default ``key_prefix`` (``record_keys.heartbeat_key`` spells them).
HEARTBEAT_PREFIX = "once_task_worker"


@dataclass(frozen=True)
class Lease:
    """How a worker keeps its running locks: renewed every ``interval``, expiring after ``ttl``.

    ``ttl`` is ``heartbeat_timeout`` plus one interval: a main process that
    stalls for less than ``heartbeat_timeout`` (SIGSTOP, CPU starvation, a
    lock store that stalls) resumes renewing before any of its locks expires,
    and a worker that is gone frees its keys at most ``ttl`` after its last
    renewal.
    """

    heartbeat_timeout: float

    @property
    def interval(self) -> float:
        # Often enough that a gone worker frees its keys soon after
        # heartbeat_timeout; a renewal is one small pipeline per worker.
        return max(0.25, min(3.0, self.heartbeat_timeout / 10))

    @property
    def ttl(self) -> float:
        return self.heartbeat_timeout + self.interval


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


@dataclass(frozen=True)
class RunningOwner:
    """The execution that holds (or wants) a running lock."""

    task_id: str
    retries: int
    worker: str
    instance: str
    #: Whether the instance keeps a heartbeat, so that its death can be shown.
    heartbeat: bool
    #: The task's name where its keys are named by a ``lock_name`` (``KeySpace.holder_task``); else "".
    task: str = ""

    #: The value is written in the form of pre-release builds of 2.0 (JSON; ``legacy_formats``, or a holder read in it).
    legacy: bool = False

    @classmethod
    def for_execution(cls, task_id: str, retries: Optional[int], task: str = "",
                      legacy: bool = False) -> RunningOwner:
        """The owner an attempt of a task run by this process tree is (``task``, ``legacy``: see the attributes)."""
        return cls(
            task_id=task_id,
            retries=int(retries or 0),
            worker=worker_name(),
            instance=INSTANCE,
            heartbeat=heartbeat_enabled(),
            task=task,
            legacy=legacy,
        )

    @cached_property
    def token(self) -> str:
        """The value's prefix that names this owner: all but when the lock was taken."""
        if self.legacy:
            if self.task:
                return f'{self.attempt_prefix}{_tail(self)}"task":{json.dumps(self.task)},'
            return f'{self.attempt_prefix}{_tail(self)}'
        worker = "" if self.heartbeat else self.worker
        task = f"{self.task}{_SEP}" if self.task else ""
        return f"{self.attempt_prefix}{self.instance}:{worker}{_SEP}{task}"

    @cached_property
    def attempt_prefix(self) -> str:
        """The start of the token of every delivery of this attempt (task id and retries), whichever worker runs it."""
        if self.legacy:
            # encode_basestring_ascii is json.dumps of a str, without its wrapper.
            return f'{{"task_id":{encode_basestring_ascii(self.task_id)},"retries":{self.retries},'
        return f"{self.task_id}{_SEP}{self.retries}:"

    def value(self, since: Optional[float] = None) -> str:
        """The lock's value: the token and when the lock was taken."""
        at = time.time() if since is None else since
        return f'{self.token}"since":{at:.3f}}}' if self.legacy else f"{self.token}{at:.3f}"

    def holds(self, value: Optional[str]) -> bool:
        """Whether a lock's value is this owner's."""
        return value is not None and value.startswith(self.token)

    @classmethod
    def parse(cls, value: str | bytes) -> Optional[RunningOwner]:
        """The owner a running lock's value (or an owner token alone) names, either form, or None if it is not one."""
        fields = owner_fields(value.decode("utf-8", "replace") if isinstance(value, bytes) else value)
        if not fields:
            return None
        return cls(
            task_id=str(fields["task_id"]),
            retries=int(fields["retries"]),  # type: ignore[call-overload]
            worker=str(fields["worker"]),
            instance=str(fields["instance"]),
            heartbeat=bool(fields["heartbeat"]),
            task=str(fields.get("task") or ""),
            legacy=bool(fields["legacy"]),
        )


def owner_fields(value: str) -> dict[str, object]:
    """What a running lock's value (or an owner token) says, in either form; empty if it is neither.

    Keys: ``task_id``, ``retries``, ``worker`` (the node name; "" where the
    compact form leaves it out for a worker with a heartbeat), ``instance``,
    ``heartbeat``, ``task`` (where a ``lock_name`` names the key), ``since``
    (None in a token alone), ``legacy`` (the JSON form).
    """
    if value.startswith("{"):
        try:
            data = json.loads(value_of_token(value))
            fields: dict[str, object] = {
                "task_id": str(data["task_id"]), "retries": int(data["retries"]), "worker": str(data["worker"]),
                "instance": str(data["instance"]), "heartbeat": bool(data["heartbeat"]),
                "task": str(data.get("task") or ""), "legacy": True,
            }
            taken = data.get("since")
            fields["since"] = float(taken) if isinstance(taken, (int, float)) and taken else None
            return fields
        except (ValueError, TypeError, KeyError, AttributeError):
            return {}
    parts = value.split(_SEP)
    if len(parts) not in (3, 4):
        return {}
    retries, colon, rest = parts[1].partition(":")
    instance, colon2, worker = rest.partition(":")
    if not (colon and colon2 and retries.isdigit() and parts[0]):
        return {}
    try:
        since: Optional[float] = float(parts[-1]) if parts[-1] else None
    except ValueError:
        return {}
    return {"task_id": parts[0], "retries": int(retries), "worker": worker, "instance": instance,
            "heartbeat": not worker, "task": parts[2] if len(parts) == 4 else "", "since": since, "legacy": False}


def value_of_token(token: str) -> str:
    """An owner token (as a slot holds it) completed to a lock value; a whole value is returned as it is."""
    if token.startswith("{"):
        return token + '"since":0}' if token.endswith(",") else token
    return token


_tails: dict[tuple[str, str, bool], str] = {}


def _tail(owner: RunningOwner) -> str:
    """The part of a token that names the worker: the same for every execution of a process tree."""
    ident = (owner.worker, owner.instance, owner.heartbeat)
    tail = _tails.get(ident)
    if tail is None:
        dumps = json.dumps
        tail = _tails[ident] = (
            f'"worker":{dumps(owner.worker)},"instance":{dumps(owner.instance)},"heartbeat":{dumps(owner.heartbeat)},'
        )
    return tail


def running_ttl(settings: Any, owner: Optional[RunningOwner] = None) -> float:
    """A running lock's TTL: a lease where a worker renews it; else ``settings.running_lock_timeout``.

    ``owner``: the execution that holds it; None: one of this process tree's.
    """
    if not (owner.heartbeat if owner is not None else heartbeat_enabled()):
        return float(settings.running_lock_timeout)
    ttl = _lease_ttls.get(settings.heartbeat_timeout)
    if ttl is None:
        ttl = _lease_ttls[settings.heartbeat_timeout] = Lease(settings.heartbeat_timeout).ttl
    return ttl


_lease_ttls: dict[float, float] = {}
