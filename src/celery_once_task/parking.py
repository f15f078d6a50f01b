"""Parking: every message the library publishes with a countdown is recorded until a copy of it is taken.

Celery holds a message with a countdown in the worker that received it,
unacknowledged, until it is due. If that worker dies (SIGKILL, OOM, a lost
host), RabbitMQ hands the message out again at once, but Celery's Redis
transport only once it is ``visibility_timeout`` old -- an hour by default.
A call the library held back (a debounced burst's message, a deferred copy,
a waiting call's safety copy, a throttled call put off) would be gone for
that hour. So before each such publish the library *parks* the message in
the lock store (``store.parked``): under its task id, a token of this
publish (``PARKED_HEADER``, which the message carries), when it is due (on
the store's clock), and all it takes to publish it again -- task name,
arguments and options, serialized with the task's serializer.

* **At pickup** a copy carrying the header claims its entry, atomically, in
  the pickup's round trip (``running``, ``debounce``; alone before a slot's
  or replaced arguments' pickup, whose taking could not be undone: ``rescue``).
  The copy whose token the entry holds takes it and runs; a copy whose
  entry holds another token is turned away (another publish -- a rescued
  copy, or a later deferral of the same message -- is the one to run); a
  copy that took it before (a redelivery, a retry) runs as any redelivered
  copy does (``redelivery`` decides). The claim is remembered for
  as long as a broker may hand an older copy out (``claim_seconds``).
* **The rescuer** (``rescue.Rescuer``) in every worker's main process looks,
  about once a second, for entries due more than ``heartbeat_timeout`` ago:
  a live worker would have claimed them. It takes each (a new token, its
  due time moved on by a lease: no two rescuers take one entry, and a
  rescuer that dies before publishing leaves it to the next) and publishes
  the message again, same task id, no countdown.

Failure first:

* The store does not answer the park: the message is published all the same,
  with a warning (the broker's restore is then its only way back, as before).
  It keeps the token of the copy it was made from, if any: that entry is
  still the message's, and a rescued copy of it turns this one away.
* The park's reply is lost and a try runs it again: it writes the same entry
  (the same token). Every try failed, yet one ran: the message keeps its
  earlier token (or none) and the entry is rescued once due -- a copy of the
  same attempt, which the finished record (``redelivery``) and the running
  lock keep from running twice. Had the message taken the new token, an
  entry the lost park never wrote would leave its earlier entry to be
  rescued beside it.
* The publish fails after the park: the entry is removed (by its token) and
  the error goes on -- the caller fails visibly, as without parking; were the
  entry left, a later rescue would run a call its caller saw fail. If the
  removal fails too, a rescue may run it: at least once.
* The worker dies after the publish: the entry stays until the copy is
  claimed or rescued.
* A worker dies between a copy's claim and its next park (a deferral): the
  entry is gone, the claim names that copy, and the broker's restore of it
  runs it (``AGAIN``) -- late on Redis, never lost, never doubled.

A publish without a countdown parks nothing and carries no token (a
hand-over of a waiting call runs at once; its safety copy is the parked one).
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Callable, NamedTuple, Optional, TypeVar

from celery.exceptions import Ignore
from kombu.serialization import dumps as serialize
from kombu.serialization import loads as deserialize
from kombu.serialization import prepare_accept_content
from kombu.utils.json import dumps, loads
from redis.exceptions import RedisError

from . import telemetry
from .headers import PARKED_HEADER, header
from .protocols import TaskLike, TaskRequest
from .settings import resolve
from .settings_table import Settings
from .store import store_for
from .store.lua.parked import Claimed
from .store.parked import claim_call
from .store.scripts import Call

logger = logging.getLogger("celery_once_task")

_T = TypeVar("_T")


class Parked(NamedTuple):
    """A message parked before its publish: its task id and token (to forget it if the publish fails)."""

    task_id: str
    token: str


class Message(NamedTuple):
    """A parked message, read back to be published again."""

    task_name: str
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]


class Claim(NamedTuple):
    """A copy's claim of its parked entry: its token, and the call that claims it (for a caller's round trip)."""

    token: str
    call: Call


def claim_of(task: TaskLike, settings: Settings, request: TaskRequest, keep: float) -> Optional[Claim]:
    """The claim a copy makes at pickup; None for a message that was not parked (or an eager call).

    ``keep``: seconds the claim is remembered.
    """
    token = header(request, PARKED_HEADER)
    if not isinstance(token, str) or not token or request.is_eager:
        return None
    return Claim(token, claim_call(request.id, token, keep, settings.key_prefix))


def settle(task: TaskLike, request: TaskRequest, claim: Claim, reply: Any) -> None:
    """What a claim's reply means for the copy: ``Ignore`` where another copy is the one to run."""
    if Claimed(int(reply)) is Claimed.SUPERSEDED:
        if telemetry.active:
            telemetry.executed(task, request, "finished_copy")
        logger.warning("%s[%s]: execution ignored: another copy of this put-off message runs instead (this copy's "
                       "parked token %s was superseded: its worker was taken for dead, or it was deferred again)",
                       task.name, request.id, claim.token)
        raise Ignore()


def new_token() -> str:
    return os.urandom(8).hex()


def countdown_of(options: Mapping[str, Any]) -> float:
    """The seconds until a publish with ``options`` is due (``countdown`` or ``eta``); 0 for at once."""
    countdown = options.get("countdown")
    if isinstance(countdown, (int, float)) and countdown > 0:
        return float(countdown)
    eta = options.get("eta")
    if isinstance(eta, str):
        try:
            eta = datetime.fromisoformat(eta)
        except ValueError:
            return 0.0
    if isinstance(eta, datetime):
        if eta.tzinfo is None:
            eta = eta.replace(tzinfo=timezone.utc)
        return max(0.0, (eta - datetime.now(timezone.utc)).total_seconds())
    return 0.0


def encode(task: TaskLike, args: Optional[Sequence[Any]], kwargs: Optional[Mapping[str, Any]],
           options: Mapping[str, Any]) -> str:
    """A message as the registry keeps it: its body serialized with the task's serializer, in a JSON envelope."""
    serializer = (options.get("serializer") or getattr(task, "serializer", None)
                  or task.app.conf.get("task_serializer") or "json")
    body = {"args": list(args or ()), "kwargs": dict(kwargs or {}),
            "options": {name: value for name, value in options.items()
                        if name not in ("countdown", "eta", "producer", "connection")}}
    content_type, encoding, data = serialize(body, serializer=serializer)  # type: ignore[no-untyped-call]
    raw = data.encode(encoding if encoding != "binary" else "utf-8") if isinstance(data, str) else data
    envelope: str = dumps({"task": task.name, "type": content_type, "encoding": encoding,  # type: ignore[no-untyped-call]
                           "body": base64.b64encode(raw).decode("ascii")})
    return envelope


def decode(message: str, accept: Optional[Sequence[str]]) -> Message:
    """A parked message read back (``accept``: the serializers the app accepts, as its workers do)."""
    envelope: Any = loads(message)  # type: ignore[no-untyped-call]
    accepted = prepare_accept_content(accept) if accept else None  # type: ignore[no-untyped-call]
    data = base64.b64decode(envelope["body"])
    body: Any = deserialize(data, envelope["type"], envelope["encoding"],  # type: ignore[no-untyped-call]
                            accept=accepted)
    return Message(str(envelope["task"]), list(body.get("args") or ()), dict(body.get("kwargs") or {}),
                   dict(body.get("options") or {}))


def park(task: TaskLike, settings: Settings, task_id: str, args: Optional[Sequence[Any]],
         kwargs: Optional[Mapping[str, Any]], options: dict[str, Any],
         also: Optional[Mapping[str, Any]] = None) -> Optional[Parked]:
    """Park the message about to be published with ``options``, and put its token in ``options``' headers.

    ``also``: publish options the caller passes beside ``options`` (``link``,
    ``link_error``, ``shadow``), for the copy a rescue publishes. Returns None
    (and leaves ``options`` as they are) where there is no countdown, or
    where the store did not take it (logged).
    """
    countdown = countdown_of(options)
    if countdown <= 0:
        return None
    token = new_token()
    try:
        kept = {**options, **{name: value for name, value in (also or {}).items() if value is not None}}
        message = encode(task, args, kwargs, kept)
    except Exception as exc:  # a body its serializer refuses: publishing it will say so
        logger.warning("%s[%s]: message not parked (it cannot be serialized): %s", task.name, task_id, exc)
        return None
    try:
        store_for(task, settings).parked.park(task_id, token, message, countdown)
    except RedisError as exc:
        logger.warning("%s[%s]: lock operation failed: message put off by %.3fs not parked; if its worker dies "
                       "before it is due, only the broker brings it back: %s%s", task.name, task_id, countdown, exc,
                       acl_hint(exc))
        return None
    options["headers"] = {**(options.get("headers") or {}), PARKED_HEADER: token}
    return Parked(task_id, token)


def acl_hint(exc: Exception) -> str:
    """What to add where the store's ACL user may not touch the registry's keys."""
    return "; add the key pattern ~once_task_parked:* to the user's ACL rules" if "NOPERM" in str(exc) else ""


def forget(task: TaskLike, settings: Settings, parked: Parked) -> None:
    """Remove the entry of a message whose publish failed (a rescue would run a call its caller saw fail)."""
    try:
        store_for(task, settings).parked.forget(parked.task_id, parked.token)
    except RedisError as exc:
        logger.warning("%s[%s]: lock operation failed: parked entry of a message that was not published left "
                       "behind; it may be published again later: %s", task.name, parked.task_id, exc)


def publish_parked(task: TaskLike, settings: Optional[Settings], task_id: str, args: Optional[Sequence[Any]],
                   kwargs: Optional[Mapping[str, Any]], options: dict[str, Any], send: Callable[[], _T],
                   also: Optional[Mapping[str, Any]] = None) -> _T:
    """Park the message (if it has a countdown), then ``send()`` it with ``options`` (which carry its token).

    ``settings``: the task's (None: resolved here). ``also``: see ``park``.
    """
    settings = settings if settings is not None else resolve(task.app, task)
    parked = park(task, settings, task_id, args, kwargs, options, also)
    if parked is None:
        return send()
    try:
        return send()
    except BaseException:
        forget(task, settings, parked)
        raise


def without_token(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with no parked token: a copy published at once is no parked message."""
    headers = options.get("headers")
    if headers and PARKED_HEADER in headers:
        options = {**options, "headers": {k: v for k, v in headers.items() if k != PARKED_HEADER}}
    return options
