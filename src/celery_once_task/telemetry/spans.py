"""The spans of the lock round trips, their attributes, and the events on Celery's ``run/{task}`` span.

One CLIENT span per round trip, a child of the current span (the caller's,
or Celery's ``run/{task}`` on a worker), made after the fact with the round
trip's start and end times: the paths decide what a round trip meant only
once its reply is read. The database conventions' attributes (``db.*``,
``server.*``) are given at creation, where a sampler sees them; the rest --
the outcome, the task, the holder -- are built only for a span that records.

Never an argument value: a lock key appears as its task name and digest, a
lock's holder as its task id; an error as its type (``error.type``), not
its message.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Iterator, Mapping
from typing import Optional, Union

from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from redis import exceptions

from ..keys import parse_key
from ..ownership import RunningOwner
from . import Operation

#: The key types whose digest a span shows.
_KEY_TYPES = ("queue", "running", "waiting", "slots", "burst")

#: What an attribute value may be here.
Value = Union[str, int]
Attributes = Mapping[str, Value]

#: The Redis simple error prefix of redis-py's exception classes (``db.response.status_code``); others: ERR.
_PREFIXES = {
    "NoScriptError": "NOSCRIPT", "NoPermissionError": "NOPERM", "ReadOnlyError": "READONLY",
    "BusyLoadingError": "LOADING", "ExecAbortError": "EXECABORT", "OutOfMemoryError": "OOM",
    "ClusterDownError": "CLUSTERDOWN", "TryAgainError": "TRYAGAIN", "MovedError": "MOVED", "AskError": "ASK",
    "AuthenticationError": "NOAUTH", "MasterDownError": "MASTERDOWN",
}


def error_type(error: BaseException) -> tuple[str, Optional[str]]:
    """``error.type`` of an error, and ``db.response.status_code`` where the server answered with one.

    A lock operation whose tries were used up (``StoreUnavailable``) is
    described by the error of its last try, as the conventions prefer the
    original exception to the one that wraps it.
    """
    if getattr(error, "maybe_applied", None) is not None and error.__cause__ is not None:
        error = error.__cause__
    kind = type(error)
    if isinstance(error, exceptions.ResponseError):
        code = _PREFIXES.get(kind.__name__, "ERR")
        return code, code
    return f"{kind.__module__}.{kind.__qualname__}", None


# -- where the store is ----------------------------------------------------------------


class Server:
    """Where a lock client's commands go, as the conventions name it, and each round trip's attributes there."""

    __slots__ = ("_shapes", "attributes")

    def __init__(self, attributes: dict[str, Value]) -> None:
        self.attributes = attributes
        self._shapes: dict[tuple[Operation, int], dict[str, Value]] = {}

    def database_attributes(self, operation: Operation, batch: int) -> dict[str, Value]:
        """What the database conventions say of a round trip here: given at the span's creation, and to the metric.

        Made once for each shape of round trip; the span and the metric take the dict as it is.
        """
        shape = (operation, batch)
        attributes = self._shapes.get(shape)
        if attributes is None:
            attributes = self._shapes[shape] = {
                "db.system.name": "redis",
                # Several commands in one round trip: a pipeline of the lock's command.
                "db.operation.name": operation.command if batch < 2 else f"PIPELINE {operation.command}",
                "celery_once.lock.type": operation.lock_type,
                **self.attributes,
            }
            if operation.procedure is not None:
                attributes["db.stored_procedure.name"] = operation.procedure
            if batch > 1:
                attributes["db.operation.batch.size"] = batch
        return attributes


#: The server of each client, made once; and of each URL, for a hook that has no client at hand.
_by_client: weakref.WeakKeyDictionary[object, Server] = weakref.WeakKeyDictionary()
_by_url: dict[str, Server] = {}
_UNKNOWN = Server({})


def server_of(client: object, url: str) -> Server:
    """``server.address``, ``server.port`` and ``db.namespace`` of a lock client, from its configuration.

    Read from the client's connection pool's keyword arguments (a Redis
    Cluster client: its first startup node), never from a server it was
    sent to, and never a password. A Sentinel client names no server: only
    its database. The database index is the one the connection was made
    with.
    """
    if client is None:
        return _by_url.get(url, _UNKNOWN)
    try:
        return _by_client[client]
    except (KeyError, TypeError):
        pass
    attributes: dict[str, Value] = {}
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if isinstance(kwargs, Mapping):
        if kwargs.get("path"):
            attributes["server.address"] = str(kwargs["path"])
            attributes["network.transport"] = "unix"
        elif kwargs.get("host") and not hasattr(pool, "service_name"):  # Sentinel: the host is found, not set
            attributes["server.address"] = str(kwargs["host"])
            attributes["server.port"] = int(kwargs.get("port") or 6379)
        attributes["db.namespace"] = str(kwargs.get("db") or 0)
    else:
        nodes = getattr(getattr(client, "nodes_manager", None), "startup_nodes", None) or {}
        node = next(iter(nodes.values()), None) if isinstance(nodes, Mapping) else None
        if node is not None:
            attributes["server.address"] = str(node.host)
            attributes["server.port"] = int(node.port)
        attributes["db.namespace"] = "0"
    server = Server(attributes)
    with contextlib.suppress(TypeError):  # a client that takes no weak reference: made again next time
        _by_client[client] = server
    _by_url.setdefault(url, server)
    return server


# -- spans ---------------------------------------------------------------------------------


def wall_clock(started: int, ended: int) -> tuple[int, int]:
    """The start and end, in nanoseconds since the epoch, of a round trip timed with ``perf_counter_ns``."""
    wall, clock = time.time_ns(), time.perf_counter_ns()
    return wall - (clock - started), wall - (clock - ended)


def lock_span(
    tracer: Tracer, operation: Operation, creation: Attributes, started: int, ended: int, outcome: str,
    task_name: str, key: str, task_id: Optional[str], holder: Optional[str] = None, policy: Optional[str] = None,
    error: Optional[BaseException] = None, extra: Optional[Attributes] = None,
) -> None:
    """One round trip's span, from ``started`` to ``ended`` (``perf_counter_ns``), under the current span.

    A duplicate, a rejection or a wait is an outcome the library exists to
    produce: its status stays unset. An error (the store unreachable, an
    error reply) is ERROR, with ``error.type``. ``key``: the lock's key, or
    its digest (shown as the digest); ``holder``: the lock's value that met
    the round trip (shown as its task id).
    """
    start, end = wall_clock(started, ended)
    span = tracer.start_span(f"{operation.lock_type} {operation.verb}", kind=SpanKind.CLIENT, attributes=creation,
                             start_time=start)
    if span.is_recording():
        span.set_attributes(outcome_attributes(outcome, task_name, digest_of(key), task_id, holder_id(holder),
                                               policy, extra))
        if error is not None:
            kind, code = error_type(error)
            span.set_attribute("error.type", kind)
            if code is not None:
                span.set_attribute("db.response.status_code", code)
            span.set_status(Status(StatusCode.ERROR, kind))
    span.end(end_time=end)


def outcome_attributes(outcome: str, task_name: str, digest: Optional[str], task_id: Optional[str],
                       holder: Optional[str], policy: Optional[str], extra: Optional[Attributes]) -> dict[str, Value]:
    attributes: dict[str, Value] = {"celery_once.outcome": outcome, "celery_once.task.name": task_name}
    if digest:
        attributes["celery_once.lock.digest"] = digest
    if task_id:
        attributes["messaging.message.id"] = task_id
    if holder:
        attributes["celery_once.holder.task_id"] = holder
    if policy:
        attributes["celery_once.policy"] = policy
    if extra:
        attributes.update(extra)
    return attributes


def digest_of(key: str) -> str:
    """The digest of a lock key (its task name is shown beside it): never the key itself."""
    parts = parse_key(key, _KEY_TYPES) if key.startswith("once_task:") else None
    return parts.digest if parts is not None else key


def holder_id(holder: Optional[str]) -> Optional[str]:
    """A holder as a task id: a running lock's or slot's value names its owner's; a queue lock's is one."""
    if not holder:
        return None
    owner = RunningOwner.parse(holder)
    return owner.task_id if owner is not None else holder


def execution_event(outcome: str, attributes: Attributes) -> None:
    """An event named ``celery_once.<outcome>`` on the current span (Celery's ``run/{task}``), if it records."""
    current = trace.get_current_span()
    if current.is_recording():
        current.add_event(f"celery_once.{outcome}", attributes)


@contextlib.contextmanager
def suppressed() -> Iterator[None]:
    """A context in which instrumentations (redis-py's among them) record nothing.

    Sets the API's suppression key, and the plain ``"suppress_instrumentation"``
    that instrumentation releases before the key still read.
    """
    try:
        values = context.set_value("suppress_instrumentation", True)
        key = getattr(context, "_SUPPRESS_INSTRUMENTATION_KEY", None)
        if key is not None:
            values = context.set_value(key, True, values)
        token: Optional[object] = context.attach(values)
    except Exception:  # the commands run all the same, traced or not
        token = None
    try:
        yield
    finally:
        if token is not None:
            context.detach(token)  # type: ignore[arg-type]
