"""``OnceTask``: the queue lock at publish, the running lock around the task body.

Publish (``apply_async``/``delay``), one round trip:
    ``SET once_task:{name}:{digest}:queue <task id> NX PX <ttl>``. Taken: the
    message is published with the digest in a header (if publishing fails the
    lock is released and the error propagates). Not taken: the call is a
    duplicate and returns ``None``.

Execution, one round trip at the start and one at the end:
    Celery's tracer calls the task object (this class defines ``__call__``)
    after ``task_prerun`` and before it stores the result or sends the next
    step of a chain. Here the worker releases the queue lock (if this message
    holds it) and takes the running lock in one pipeline, runs the body, and
    releases the running lock in a ``finally`` -- before the result is visible,
    so a caller that saw the result can call again at once.

Conflicts on the running lock (rare, so they may take more round trips):
    * another task id holds it: this execution is a duplicate and is rejected
      with ``OnceTaskLocked``; its result is stored as a failure;
    * an earlier attempt of the same task id holds it: a retry that overtook
      the attempt that published it takes the lock over;
    * the same attempt holds it (the message was delivered twice): the copy
      never runs beside the original; it runs only if the original's worker
      is shown to be gone (its heartbeat expired).
"""

from __future__ import annotations

import datetime
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any, Optional

import celery
from celery import Task, states
from celery.app.task import Context
from celery.exceptions import Ignore
from celery.result import EagerResult
from celery.utils import uuid
from redis.exceptions import RedisError

from .cleanup import digest_from
from .errors import LockStoreUnavailable, OnceTaskLocked
from .keys import DIGEST_HEADER, QUEUE, RUNNING, call_digest, lock_key, signature_of
from .ownership import HEARTBEAT_INTERVAL, HEARTBEAT_TTL, RunningOwner
from .settings import Settings, resolve
from .store import LockStore

logger = logging.getLogger("celery_once_task")

_CELERY = tuple(celery.VERSION[:3])
#: Celery 5.7 stores FAILURE itself when a task rejects its message for good.
_CELERY_STORES_REJECTIONS = _CELERY >= (5, 7, 0)
#: Celery beat before 5.3.4 reads ``.id`` of what apply_async returns, and stops on None.
_BEAT_NEEDS_A_RESULT = _CELERY < (5, 3, 4)

#: Canvas options: a member published with them has a result id someone waits on.
_CANVAS_OPTIONS = ("chain", "group_id", "chord")

#: How long a message waits before it is tried again when Redis is unreachable at pickup.
DEFER_SECONDS = 5.0

_ENTERED = "once_task_entered"


class _Running:
    """The running lock this execution holds, released when the body ends."""

    __slots__ = ("key", "store", "token")

    def __init__(self, store: LockStore, key: str, token: str) -> None:
        self.store = store
        self.key = key
        self.token = token


class OnceTask(Task):
    """A Celery task that is queued at most once and runs at most once at a time per arguments."""

    #: Take the queue lock in ``apply_async()``/``delay()``.
    queue_lock: bool = True
    #: Take the running lock while the task body runs.
    running_lock: bool = True
    #: Per-task TTLs in seconds; ``None`` takes the configured value.
    queue_lock_timeout: Optional[int] = None
    running_lock_timeout: Optional[int] = None

    #: Runs in the worker's main process, which cleans up after a pool child that died.
    Request = "celery_once_task.request:OnceTaskRequest"

    _once_signature: Any = None

    # -- keys ---------------------------------------------------------------

    def once_digest(self, args: Optional[Sequence[Any]], kwargs: Optional[Mapping[str, Any]]) -> str:
        """The digest of a call's canonical form; ``TypeError`` if it has none."""
        signature = self._once_signature
        if signature is None:
            signature = signature_of(self.run) or False
            # Cached per task class: the signature is the same for every call.
            type(self)._once_signature = signature
        return call_digest(self.name, signature or None, args, kwargs, strict_signature=bool(self.typing))

    def once_key(self, args: Optional[Sequence[Any]], kwargs: Optional[Mapping[str, Any]], lock_type: str) -> str:
        """The lock key of a call: ``once_task:{name}:{digest}:{queue|running}``."""
        return lock_key(self.name, self.once_digest(args, kwargs), lock_type)

    def once_settings(self) -> Settings:
        return resolve(self._get_app(), self)

    # -- publish ------------------------------------------------------------

    def apply_async(
        self,
        args: Optional[Sequence[Any]] = None,
        kwargs: Optional[Mapping[str, Any]] = None,
        task_id: Optional[str] = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: Optional[str] = None,
        **options: Any,
    ) -> Any:
        """Publish the task unless the same call is already queued; a duplicate returns ``None``."""

        def publish(task_id: Optional[str]) -> Any:
            return super(OnceTask, self).apply_async(
                args, kwargs, task_id, producer, link, link_error, shadow, **options
            )

        if not (self.queue_lock or self.running_lock):
            return publish(task_id)
        # Before anything else: a call without a canonical form fails here,
        # with nothing published and no lock taken.
        digest = self.once_digest(args, kwargs)
        headers = dict(options.get("headers") or {})  # canvas members share one dict
        headers[DIGEST_HEADER] = digest
        options["headers"] = headers
        if not self.queue_lock or self._get_app().conf.task_always_eager:
            return publish(task_id)

        settings = self.once_settings()
        key = lock_key(self.name, digest, QUEUE)
        fixed_id = task_id is not None
        task_id = task_id or uuid()
        request = self.request
        retry = not request.called_directly and request.id == task_id
        ttl = settings.queue_lock_timeout + _seconds_until_start(options)
        try:
            # Inside the try: a Redis Cluster client connects when it is made.
            store = LockStore.for_url(settings.redis_url, settings.redis_options)
            if retry:
                # A retry is never dropped; it takes the queue lock so that new
                # calls are de-duplicated against it while it waits.
                acquired = store.acquire_or_renew_queue(key, task_id, ttl)
            else:
                acquired = store.acquire_queue(key, task_id, ttl)
        except RedisError as exc:
            if not (settings.fail_open or retry):
                raise LockStoreUnavailable(
                    f"{self.name}: the lock store is unreachable, so the call was not published "
                    f"(queue lock {key}): {exc}"
                ) from exc
            logger.warning(
                "%s[%s]: the lock store is unreachable; publishing without queue lock %s: %s",
                self.name, task_id, key, exc,
            )
            return publish(task_id)

        if not acquired:
            if retry:
                logger.info(
                    "%s[%s]: retry published; queue lock %s is held by another call", self.name, task_id, key
                )
                return publish(task_id)
            return self._duplicate_publish(store, key, task_id, fixed_id, args, kwargs, link, link_error, options)

        try:
            return publish(task_id)
        except BaseException:
            # No message behind the lock: let the next call through.
            self._release_quietly(store, key, task_id, task_id, "publish failed")
            raise

    def _duplicate_publish(
        self,
        store: LockStore,
        key: str,
        task_id: str,
        fixed_id: bool,
        args: Optional[Sequence[Any]],
        kwargs: Optional[Mapping[str, Any]],
        link: Any,
        link_error: Any,
        options: Mapping[str, Any],
    ) -> Any:
        logger.info("%s: duplicate call not published; queue lock %s is held", self.name, key)
        beat = _BEAT_NEEDS_A_RESULT and not fixed_id and _called_by_beat()
        if not (fixed_id or beat):
            return None
        # The caller fixed the id in advance (a canvas member, or
        # apply_async(task_id=...)): something may wait on that id, so it
        # gets a terminal state instead of staying PENDING for ever.
        try:
            holder = store.holder(key)
        except RedisError:
            holder = None
        if beat:
            # Old beat would stop on None: it gets the queued call's result.
            return self.AsyncResult(holder or task_id)
        if holder == task_id:  # the same message was published before
            return None
        exc = OnceTaskLocked(
            f"{self.name}[{task_id}]: not published, a duplicate of queued task {holder} (lock {key})"
        )
        request = Context(
            {
                "id": task_id,
                "task": self.name,
                "args": list(args or ()),
                "kwargs": dict(kwargs or {}),
                "group": options.get("group_id"),
                "group_index": options.get("group_index"),
                "chord": options.get("chord"),
                "chain": options.get("chain"),
                "callbacks": _as_list(link),
                "errbacks": _as_list(link_error),
                "root_id": options.get("root_id"),
                "parent_id": options.get("parent_id"),
                "reply_to": options.get("reply_to"),
                "delivery_info": {},
                "called_directly": False,
            }
        )
        try:
            self.backend.mark_as_failure(task_id, exc, traceback=None, request=request)
        except Exception:
            logger.exception("%s[%s]: could not store the duplicate's failure", self.name, task_id)
        if any(options.get(name) is not None for name in _CANVAS_OPTIONS):
            return self.AsyncResult(task_id)
        return None

    # -- Django transactions --------------------------------------------------

    def delay_on_commit(self, *args: Any, **kwargs: Any) -> None:
        """``delay(*args, **kwargs)`` once the current Django transaction commits.

        Celery's ``DjangoTask`` method (Celery 5.4+), here for every Celery
        version. The queue lock is taken when the message is published, at
        commit: a transaction that rolls back publishes nothing and leaves no
        lock. Outside a transaction the call is published at once. Returns
        ``None``, as Celery's does: whether the call is a duplicate is known
        only at commit.
        """
        self._publish_on_commit(args, kwargs, {})

    def apply_async_on_commit(
        self, args: Optional[Sequence[Any]] = None, kwargs: Optional[Mapping[str, Any]] = None, **options: Any
    ) -> None:
        """``apply_async(args, kwargs, **options)`` once the current Django transaction commits.

        See ``delay_on_commit``.
        """
        self._publish_on_commit(args, kwargs, options)

    def _publish_on_commit(
        self, args: Optional[Sequence[Any]], kwargs: Optional[Mapping[str, Any]], options: dict[str, Any]
    ) -> None:
        # Imported here: the core package must work, and import, without Django.
        from django.db import transaction

        if self.queue_lock or self.running_lock:
            # A call without a canonical form fails now, inside the caller's
            # transaction, rather than after the commit.
            self.once_digest(args, kwargs)
        transaction.on_commit(lambda: self.apply_async(args, kwargs, **options))

    # -- execute ------------------------------------------------------------

    def apply(
        self,
        args: Optional[Sequence[Any]] = None,
        kwargs: Optional[Mapping[str, Any]] = None,
        link: Any = None,
        link_error: Any = None,
        task_id: Optional[str] = None,
        retries: Optional[int] = None,
        throw: Optional[bool] = None,
        logfile: Any = None,
        loglevel: Any = None,
        headers: Optional[Mapping[str, Any]] = None,
        **options: Any,
    ) -> Any:
        """Run the task in this process (``apply()``, eager mode); a duplicate fails with ``OnceTaskLocked``."""
        result = super().apply(
            args, kwargs, link, link_error, task_id, retries, throw, logfile, loglevel, headers, **options
        )
        exc = result.result
        if result.state != states.REJECTED or not isinstance(exc, OnceTaskLocked):
            return result
        # Celery's tracer turns the rejection into a REJECTED result whose
        # get() returns None, so the call would pass for one that ran (and an
        # eager chain would go on with None). Report it as a worker does: a
        # failure, with its errbacks, raised at once if eager calls propagate.
        if link_error:
            request = Context({"id": result.id, "errbacks": _as_list(link_error), "delivery_info": {"is_eager": True}})
            try:
                self.backend.mark_as_failure(result.id, exc, traceback=None, request=request, store_result=False)
            except Exception:
                logger.exception("%s[%s]: an errback of the duplicate failed", self.name, result.id)
        if self._get_app().conf.task_eager_propagates if throw is None else throw:
            raise exc
        # The same result in state FAILURE, rebuilt from its own constructor
        # arguments (traceback, and the task name on newer Celery releases).
        _, _, _, *rest = result.__reduce_args__()
        return EagerResult(result.id, exc, states.FAILURE, *rest)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.called_directly or getattr(request, _ENTERED, False):
            # A plain function call, or the body calling itself: no locks.
            return super().__call__(*args, **kwargs)
        setattr(request, _ENTERED, True)
        running = self._pickup(request, args, kwargs)
        try:
            return self.run(*args, **kwargs)
        finally:
            if running is not None:
                self._release_quietly(running.store, running.key, running.token, request.id, "task ended")

    def _pickup(self, request: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Optional[_Running]:
        """Release the queue lock and take the running lock; return the lock to release at the end."""
        if not (self.queue_lock or self.running_lock):
            return None
        settings = self.once_settings()
        digest = digest_from(getattr(request, "headers", None)) or digest_from(
            {DIGEST_HEADER: getattr(request, DIGEST_HEADER, None)}
        )
        if digest is None:  # app.send_task, beat, other producers
            digest = self.once_digest(args, kwargs)
        # Eager calls never took a queue lock.
        queue_key = lock_key(self.name, digest, QUEUE) if self.queue_lock and not request.is_eager else None
        running_key = lock_key(self.name, digest, RUNNING) if self.running_lock else None
        owner = RunningOwner.for_execution(request.id, request.retries)
        try:
            # Inside the try: a Redis Cluster client connects when it is made.
            store = LockStore.for_url(settings.redis_url, settings.redis_options)
            pickup = store.pickup(queue_key, request.id, running_key, owner.token, settings.running_lock_timeout)
        except RedisError as exc:
            return self._lock_store_down(request, args, kwargs, settings, running_key, exc)
        if running_key is None:
            return None
        if pickup.acquired:
            return _Running(store, running_key, owner.token)
        return self._conflict(request, store, running_key, owner, pickup.holder or "", settings)

    def _conflict(
        self, request: Any, store: LockStore, key: str, owner: RunningOwner, holder_token: str, settings: Settings
    ) -> _Running:
        holder = RunningOwner.parse(holder_token)
        if holder is None or holder.task_id != owner.task_id:
            raise self._reject_duplicate(request, key, holder_token)
        ttl = settings.running_lock_timeout
        if holder.retries < owner.retries:
            # A retry that started before the attempt that published it had
            # finished: that attempt's body is over, take over.
            if store.replace(key, holder_token, owner.token, ttl):
                logger.info("%s[%s]: retry %d took over running lock %s", self.name, owner.task_id, owner.retries, key)
                return _Running(store, key, owner.token)
            # The earlier attempt released the lock in between: take it as any
            # execution would. Whoever holds it now is a newer holder, so this
            # ends after one more look.
            pickup = store.pickup(None, owner.task_id, key, owner.token, ttl)
            if pickup.acquired:
                return _Running(store, key, owner.token)
            return self._conflict(request, store, key, owner, pickup.holder or "", settings)
        if (
            # The same message delivered twice. It may run only if the worker
            # running the first delivery is shown to be gone.
            holder.retries == owner.retries
            and holder.instance != owner.instance
            and holder.heartbeat
            and self._instance_gone(store, holder.instance)
            and store.replace(key, holder_token, owner.token, ttl)
        ):
            logger.warning(
                "%s[%s]: took over running lock %s from gone worker %s",
                self.name, owner.task_id, key, holder.worker,
            )
            return _Running(store, key, owner.token)
        logger.warning(
            "%s[%s]: not run: another delivery of this task holds running lock %s (%s)",
            self.name, owner.task_id, key, holder_token,
        )
        # The original delivery owns the task id and its result: store nothing.
        raise Ignore()

    def _instance_gone(self, store: LockStore, instance: str) -> bool:
        # A worker that died less than HEARTBEAT_TTL ago still looks alive:
        # wait that long before deciding it is not gone.
        deadline = time.monotonic() + HEARTBEAT_TTL + HEARTBEAT_INTERVAL
        while store.instance_alive(instance):
            if time.monotonic() >= deadline:
                return False
            time.sleep(HEARTBEAT_INTERVAL / 4)
        return True

    def _reject_duplicate(self, request: Any, key: str, holder_token: str) -> OnceTaskLocked:
        holder = RunningOwner.parse(holder_token)
        holder_id = holder.task_id if holder else holder_token
        exc = OnceTaskLocked(f"{self.name}[{request.id}]: rejected, task {holder_id} is running (lock {key})")
        logger.warning("%s[%s]: rejected: running lock %s is held by %s", self.name, request.id, key, holder_token)
        if not _CELERY_STORES_REJECTIONS and not request.is_eager:
            # Older Celery stores nothing for a rejected task: its result
            # would stay PENDING and .get() would hang.
            store_errors = not self.ignore_result or self.store_errors_even_if_ignored
            try:
                self.backend.mark_as_failure(request.id, exc, request=request, store_result=store_errors)
            except Exception:
                logger.exception("%s[%s]: could not store the rejection", self.name, request.id)
        return exc

    def _lock_store_down(
        self,
        request: Any,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        settings: Settings,
        running_key: Optional[str],
        exc: Exception,
    ) -> Optional[_Running]:
        if settings.fail_open or request.is_eager:
            logger.warning(
                "%s[%s]: the lock store is unreachable; running without running lock %s: %s",
                self.name, request.id, running_key, exc,
            )
            return None
        # Neither run unguarded nor drop the message: publish it again, same
        # id and attempt, to run when the lock store is back.
        logger.warning(
            "%s[%s]: the lock store is unreachable; deferred by %ss: %s", self.name, request.id, DEFER_SECONDS, exc
        )
        signature = self.signature_from_request(
            request, args, kwargs, countdown=DEFER_SECONDS, retries=request.retries
        )
        signature.apply_async()
        raise Ignore()

    def _release_quietly(self, store: LockStore, key: str, token: str, task_id: Optional[str], reason: str) -> None:
        try:
            store.release(key, token)
        except Exception as exc:
            logger.warning(
                "%s[%s]: could not release lock %s (%s); it expires at its TTL: %s",
                self.name, task_id, key, reason, exc,
            )


def _called_by_beat() -> bool:
    """Whether celery beat's scheduler (or one derived from it) made the ``apply_async`` call."""
    frame: Optional[FrameType] = sys._getframe(2)  # the caller of _duplicate_publish
    # A few frames up: task classes derived from OnceTask may wrap apply_async.
    for _ in range(8):
        if frame is None:
            return False
        if frame.f_globals.get("__name__") == "celery.beat":
            return True
        frame = frame.f_back
    return False


def _as_list(value: Any) -> Optional[list[Any]]:
    if value is None:
        return None
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _seconds_until_start(options: Mapping[str, Any]) -> float:
    """How long a message waits for its countdown or ETA; the queue lock lives that much longer."""
    countdown = options.get("countdown")
    if countdown:
        return max(0.0, float(countdown))
    eta = options.get("eta")
    if isinstance(eta, str):
        try:
            eta = datetime.datetime.fromisoformat(eta)
        except ValueError:
            return 0.0
    if not isinstance(eta, datetime.datetime):
        return 0.0
    now = datetime.datetime.now(datetime.timezone.utc)
    if eta.tzinfo is None:
        # A naive ETA is read in the app's time zone, which may be ahead of
        # UTC: count from the earlier of the two readings of "now".
        local = datetime.datetime.now()
        return max(0.0, (eta - min(local, now.replace(tzinfo=None))).total_seconds())
    return max(0.0, (eta - now).total_seconds())

