"""``OnceTask``: a Celery task queued at most once and run at most once at a time per call.

A thin class over the two paths, each in a module of its own:

* ``publish``: ``apply_async()``/``delay()`` -- the lock key, the queue lock,
  and what a duplicate call gets;
* ``execute``: ``__call__`` on the worker -- pickup, the running lock, what a
  duplicate execution gets, and the release at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from celery import Task, states
from celery.app.task import Context
from celery.result import AsyncResult, EagerResult
from kombu.messaging import Producer

from . import call_options, debounce, execute, replace, rescue, telemetry
from .definition import check_shared_name, check_task_class
from .digest import call_digest, check_lock_args, signature_of, well_formed_digest
from .errors import LockStoreUnavailable, OnceTaskLocked, OnceTaskThrottled
from .headers import DIGEST_HEADER, header
from .keys import key_space
from .limits import may_wait_in_line
from .publish import Links, as_list, publish_once, with_digest
from .rates import Rate, ThrottleConflict, parse_throttle
from .settings import for_publish, resolve
from .settings_table import QueueLockConflict, QueueLockUntil, RunningLockConflict, Settings

logger = logging.getLogger("celery_once_task")

_ENTERED = "once_task_entered"


def _needs_running_lock(cls: type) -> bool:
    """Whether a task sets its running lock, or an option that works through it, itself (not left to defaults)."""
    # OnceTask's own default (the class that marks itself ``__once_task__``) is not the task's choice.
    explicit = any("running_lock" in klass.__dict__ for klass in cls.__mro__ if "__once_task__" not in klass.__dict__)
    return (explicit or getattr(cls, "running_limit", 1) > 1
            or getattr(cls, "running_lock_conflict", None) is not None
            or getattr(cls, "queue_lock_until", None) == "end"
            or getattr(cls, "queue_lock_conflict", None) == "replace")


class OnceTask(Task):
    """A Celery task that is queued at most once and runs at most once at a time per arguments.

    Each option below is a keyword of the task decorator
    (``@shared_task(base=OnceTask, queue_lock_timeout=600)``) or an attribute
    of a subclass. A bad value is a ``ValueError`` naming the task and the
    option, raised where the task is defined. An option left ``None`` takes the
    configured value (see ``configure``); a task's own option wins over it.

    Attributes:
        queue_lock: Take the queue lock in ``apply_async()``/``delay()``.
        running_lock: Take the running lock while the task body runs.
        queue_lock_timeout: Seconds a call whose message never starts keeps blocking its duplicates.
        running_lock_timeout: Seconds a running lock lasts where no worker's lease renews it.
        running_lock_conflict: A duplicate execution fails (``"reject"``: ``OnceTaskLocked``) or runs after
            (``"wait"``).
        queue_lock_conflict: A duplicate call gets ``None`` (``"drop"``), the queued ``AsyncResult``
            (``"existing"``), ``OnceTaskDuplicate`` (``"raise"``), or replaces the queued call's arguments
            (``"replace"``).
        lock_args: The arguments that form the lock key, by parameter name; ``None``: all of them.
        lock_name: The name that stands for the task in its keys: tasks with one lock name and the same values of
            ``lock_args`` are one key. ``None``: the task's name.
        redelivery_guard_timeout: Seconds a finished execution is remembered, so that its message delivered
            again does not run (default: what the app's broker needs).
        running_limit: At most this many executions of a key at once, fleet-wide (see ``limits``); 1 is the
            running lock.
        debounce: Calls of a key less than this many seconds apart form a burst, run once after it.
        debounce_max: The most seconds a burst may put its execution off, from its first call.
        queue_lock_until: A call is a duplicate of the same call until its execution starts (``"pickup"``) or ends
            (``"end"``).
        unique_for: Seconds from an accepted call during which the same call is a duplicate, whatever became of
            its execution.
        throttle: At most N executions of a key start in any window of a period, fleet-wide (see ``throttle``):
            ``"N/s"``, ``"N/m"``, ``"N/h"``, ``"N/d"``, ``(N, seconds)``, or a list of them. A throttled task's
            ``running_lock`` is off unless set explicitly.
        throttle_conflict: An execution beyond the throttle is postponed to its window (``"postpone"``) or fails
            (``"reject"``: ``OnceTaskThrottled``).
    """

    # The task options, documented above. Those that are also settings must be the task options of
    # ``settings_table.SETTINGS``, with the same types: tests/test_settings.py holds them to it.
    queue_lock: bool = True
    running_lock: bool = True
    queue_lock_timeout: Optional[int] = None
    running_lock_timeout: Optional[int] = None
    running_lock_conflict: Optional[RunningLockConflict] = None
    queue_lock_conflict: Optional[QueueLockConflict] = None
    lock_args: Optional[Sequence[str]] = None
    lock_name: Optional[str] = None
    redelivery_guard_timeout: Optional[int] = None
    running_limit: int = 1
    debounce: Optional[float] = None
    debounce_max: Optional[float] = None
    queue_lock_until: Optional[QueueLockUntil] = None
    unique_for: Optional[float] = None
    throttle: Optional[Any] = None
    throttle_conflict: Optional[ThrottleConflict] = None

    #: Runs in the worker's main process, which cleans up after a pool child that died.
    Request = "celery_once_task.request:OnceTaskRequest"

    #: Lets the rest of the library recognise these tasks without importing this module.
    __once_task__ = True

    #: Whether the task's calls may wait in a line (``limits``): they carry when they were made.
    _once_in_line = False

    #: The throttle's limits, parsed where the task is defined (empty: not throttled).
    _once_rates: tuple[Rate, ...] = ()

    #: (signature, whether ``lock_arguments`` picks the key's arguments), made on first use.
    _once_spec: Optional[tuple[Any, bool]] = None

    def __init_subclass__(cls, **kwargs: object) -> None:
        """Check the task's own options where it is defined: a bad one names the task and the option."""
        super().__init_subclass__(**kwargs)
        label = cls.__dict__.get("name") or f"{cls.__module__}.{cls.__qualname__}"
        check_task_class(cls, label)
        cls._once_rates = parse_throttle(cls.throttle, label)
        if cls._once_rates and not _needs_running_lock(cls):
            # A throttle limits starts; a running lock per key would also cap them at one at a time.
            cls.running_lock = False
        cls._once_in_line = may_wait_in_line(cls.running_limit, cls.running_lock_conflict, cls.queue_lock)

    # -- keys ---------------------------------------------------------------

    def once_digest(self, args: Optional[Sequence[Any]], kwargs: Optional[Mapping[str, Any]]) -> str:
        """The digest of a call's canonical form: the middle part of its keys.

        Args:
            args: The call's positional arguments.
            kwargs: The call's keyword arguments.

        Returns:
            The first 16 hex characters of a SHA-256 of the call's canonical form.

        Raises:
            TypeError: The arguments have no canonical form, or do not fit the task's signature.
        """
        spec = type(self).__dict__.get("_once_spec")
        if spec is None:
            spec = self._once_prepare()
        signature, selects = spec
        return call_digest(self.name, signature, args, kwargs, strict_signature=bool(self.typing),
                           select=self.lock_arguments if selects else None)

    def _once_prepare(self) -> tuple[Any, bool]:
        """What every call's key needs of the task class: its signature, and whether it picks the key's arguments.

        Kept on the class (each task has its own), not inherited: a subclass
        of a task has a run of its own.
        """
        signature = signature_of(self.run)
        if self.lock_args is not None:
            check_lock_args(self.name, signature, self.lock_args)
        if self.lock_name is not None:
            check_shared_name(self)
        selects = self.lock_args is not None or type(self).lock_arguments is not OnceTask.lock_arguments
        spec = type(self)._once_spec = (signature, selects)
        return spec

    def lock_arguments(self, arguments: dict[str, Any]) -> Mapping[str, Any]:
        """The arguments that form the lock key, from the call's arguments bound by name.

        Picks ``lock_args``. Override it where naming arguments is not
        enough, e.g. to key on ``order.id`` rather than a whole ``order``
        dict; what it returns must have a canonical form (see ``keys``).

        Args:
            arguments: The call's arguments bound to the task's signature, by parameter name, defaults applied.

        Returns:
            The arguments the key is made of: those ``lock_args`` names, or all of them.
        """
        if self.lock_args is None:
            return arguments
        return {name: arguments[name] for name in self.lock_args if name in arguments}

    def once_key(self, args: Optional[Sequence[Any]], kwargs: Optional[Mapping[str, Any]], lock_type: str) -> str:
        """The key of a call's lock of ``lock_type``, exactly as the library writes it (``celery once show`` takes it).

        Args:
            args: The call's positional arguments.
            kwargs: The call's keyword arguments.
            lock_type: ``"queue"``, ``"running"``, ``"slots"`` (a task with a ``running_limit``),
                ``"burst"`` (a debounced task) or ``"unique"`` (a ``unique_for`` window): the types
                ``celery once locks`` lists; or ``"waiting"``, ``"waiters"``, ``"messages"``, ``"args"``.

        Returns:
            ``{key_prefix}:{lock_name or name}:{digest}:{queue|running|waiting}``;
                ``{key_prefix}:{lock_name or name}:{{digest}}:{slots|waiters|messages|burst}`` (the braces are a
                Redis Cluster hash tag); ``{key_prefix}:{<queue key>}:{unique|args}``.

        Raises:
            ValueError: ``lock_type`` is none of those.
            TypeError: The arguments have no canonical form, or do not fit the task's signature.
        """
        return key_space(self, self.once_settings()).of_type(self.once_digest(args, kwargs), lock_type)

    def once_settings(self) -> Settings:
        """The settings in force for this task.

        Returns:
            Its options, over the app's ``once_*`` configuration, over ``configure()``, over the defaults.
        """
        return resolve(self.app, self)

    # -- publish ------------------------------------------------------------

    def apply_async(
        self,
        args: Optional[Sequence[Any]] = None,
        kwargs: Optional[Mapping[str, Any]] = None,
        task_id: Optional[str] = None,
        producer: Optional[Producer] = None,
        link: Links = None,
        link_error: Links = None,
        shadow: Optional[str] = None,
        **options: Any,
    ) -> Optional[AsyncResult]:
        """Publish the task unless the same call is already queued.

        Args:
            args: The positional arguments of the call.
            kwargs: The keyword arguments of the call.
            task_id: A task id fixed in advance (canvas members have one); else a new one.
            producer: The kombu producer to publish with, as Celery takes it.
            link: The callbacks, as Celery takes them.
            link_error: The errbacks, as Celery takes them.
            shadow: The name the call is shown under, as Celery takes it.
            **options: Celery's publish options (``countdown``, ``queue``, ``headers``, ...), and ``once``: a dict
                of the options this call sets for itself (``call_options.PER_CALL``: ``queue_lock``,
                ``queue_lock_conflict``, ``queue_lock_until``, ``unique_for``, and the timeouts).

        Returns:
            The call's ``AsyncResult``; for a duplicate, what ``queue_lock_conflict`` says: ``None``
            ("drop"), the ``AsyncResult`` of the call that holds the key ("existing", "replace").

        Raises:
            OnceTaskDuplicate: A duplicate, with ``queue_lock_conflict="raise"``.
            LockStoreUnavailable: The lock store did not answer (unless ``fail_open``): nothing was published.
            TypeError: An argument of the key has no canonical form, or -- under ``"replace"`` -- the arguments are
                not JSON; ``once`` is not a dict. The message names the task.
            ValueError: ``once`` names an option a call cannot set or gives a bad value; the message names it.
        """
        once = options.pop("once", None)

        def publish(task_id: Optional[str]) -> Optional[AsyncResult]:
            return super(OnceTask, self).apply_async(
                args, kwargs, task_id, producer, link, link_error, shadow, **options
            )

        locked = self.queue_lock or self.running_lock
        settings, eager = for_publish(self.app, self) if locked else (None, False)
        # ``enabled=False`` (for tests): a plain Celery task, whose calls never reach the lock store.
        if settings is None or not settings.enabled:
            if once is not None:  # refused as anywhere, though a task that takes no lock has none to set
                call_options.parse(self, once)
            return publish(task_id)
        # Before anything else: a call without a canonical form fails here,
        # with nothing published and no lock taken.
        digest = self.once_digest(args, kwargs)
        # Stamped with the time of the call where it waits in a line, or where telemetry may record how long
        # it waited to start (``celery_once.wait.duration``).
        with_digest(options, digest, fixed_id=task_id is not None, stamped=self._once_in_line or telemetry.active)
        # Its own options (``once``; a retry's are those its message carries) over the task's.
        settings, queue_lock = call_options.for_call(self, settings, once, options["headers"], task_id)
        if debounce.debounced(settings, task_id, eager):
            return debounce.publish(self, settings, digest, args, kwargs, options, lambda burst_id, opts: super(
                OnceTask, self).apply_async(args, kwargs, burst_id, producer, link, link_error, shadow, **opts),
                {"link": link, "link_error": link_error, "shadow": shadow})
        if eager or not (queue_lock or settings.unique_for is not None):  # eager: nothing is queued, nothing locked
            return publish(task_id)
        return publish_once(self, settings, digest, queue_lock, args, kwargs, task_id, link, link_error, options,
                            publish)

    # -- Django transactions --------------------------------------------------

    def delay_on_commit(self, *args: object, **kwargs: object) -> None:
        """``delay(*args, **kwargs)`` once the current Django transaction commits.

        Celery's ``DjangoTask`` method (Celery 5.4+), here for every Celery
        version. The queue lock is taken when the message is published, at
        commit: a transaction that rolls back publishes nothing and leaves no
        lock. Outside a transaction the call is published at once. Returns
        ``None``, as Celery's does: whether the call is a duplicate is known
        only at commit.

        Args:
            *args: The call's positional arguments.
            **kwargs: The call's keyword arguments.
        """
        self._publish_on_commit(args, kwargs, {})

    def apply_async_on_commit(
        self, args: Optional[Sequence[Any]] = None, kwargs: Optional[Mapping[str, Any]] = None, **options: Any
    ) -> None:
        """``apply_async(args, kwargs, **options)`` once the current Django transaction commits.

        See ``delay_on_commit``.

        Args:
            args: The call's positional arguments.
            kwargs: The call's keyword arguments.
            **options: ``apply_async``'s options, ``once={...}`` included.
        """
        self._publish_on_commit(args, kwargs, options)

    def _publish_on_commit(
        self, args: Optional[Sequence[Any]], kwargs: Optional[Mapping[str, Any]], options: dict[str, Any]
    ) -> None:
        # Imported here: the core package must work, and import, without Django.
        from django.db import transaction

        if (self.queue_lock or self.running_lock) and self.once_settings().enabled:
            # A call without a canonical form fails now, inside the caller's
            # transaction, rather than after the commit.
            self.once_digest(args, kwargs)
        transaction.on_commit(lambda: self.apply_async(args, kwargs, **options))

    # -- execute ------------------------------------------------------------

    def apply(
        self,
        args: Optional[Sequence[Any]] = None,
        kwargs: Optional[Mapping[str, Any]] = None,
        link: Links = None,
        link_error: Links = None,
        task_id: Optional[str] = None,
        retries: Optional[int] = None,
        throw: Optional[bool] = None,
        logfile: Optional[str] = None,
        loglevel: Optional[int] = None,
        headers: Optional[Mapping[str, Any]] = None,
        **options: Any,
    ) -> EagerResult:
        """Run the task in this process (``apply()``, eager mode); a duplicate fails with ``OnceTaskLocked``.

        Raises ``LockStoreUnavailable`` where the lock store does not answer
        (unless ``fail_open``): the body did not run.
        """
        result = super().apply(
            args, kwargs, link, link_error, task_id, retries, throw, logfile, loglevel, headers, **options
        )
        exc = result.result
        if isinstance(exc, LockStoreUnavailable) and result.state == states.FAILURE:
            # The call was refused, not run (``fail_open=False``): raised as a call to a worker raises it.
            raise exc
        if result.state != states.REJECTED or not isinstance(exc, (OnceTaskLocked, OnceTaskThrottled)):
            return result
        # Celery's tracer turns the rejection into a REJECTED result whose
        # get() returns None, so the call would pass for one that ran (and an
        # eager chain would go on with None). Report it as a worker does: a
        # failure, with its errbacks, raised at once if eager calls propagate.
        if link_error:
            request = Context({"id": result.id, "errbacks": as_list(link_error), "delivery_info": {"is_eager": True}})
            try:
                self.backend.mark_as_failure(result.id, exc, traceback=None, request=request, store_result=False)
            except Exception:
                logger.exception("%s[%s]: an errback of the duplicate failed", self.name, result.id)
        if self.app.conf.task_eager_propagates if throw is None else throw:
            raise exc
        # The same result in state FAILURE, rebuilt from its own constructor
        # arguments (traceback, and the task name on newer Celery releases).
        _, _, _, *rest = result.__reduce_args__()
        return EagerResult(result.id, exc, states.FAILURE, *rest)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.called_directly or getattr(request, _ENTERED, False):  # a plain call, or the body's own
            return super().__call__(*args, **kwargs)
        settings = self.once_settings()
        if not settings.enabled:  # the library switched off: no locks
            return super().__call__(*args, **kwargs)
        setattr(request, _ENTERED, True)
        held = burst = None
        if self.queue_lock or self.running_lock or self._once_rates:
            digest = header(request, DIGEST_HEADER)
            if not well_formed_digest(digest):  # app.send_task, beat, other producers
                digest = self.once_digest(args, kwargs)
            settings, queue_lock = call_options.for_request(self, settings, request)
            # A copy put off with a countdown claims its parked entry: is it the one to run?
            claim = rescue.claim_of(self, settings, request)
            if settings.debounce and not request.is_eager and debounce.is_burst(request):
                burst, args, kwargs = debounce.take(self, settings, digest, request, args, dict(kwargs), claim)
                if burst is not None:  # what self.retry() publishes again
                    request.args, request.kwargs = list(args), kwargs
                claim = None  # it rode in the burst's round trip
            try:
                held = execute.pick_up(self, settings, digest, request, queue_lock, claim)
            except OnceTaskLocked:
                if burst is not None:  # refused for good: its burst's arguments are of no more use
                    debounce.done(self, burst)
                raise
            if held is not None and held.arguments is not None:  # "replace": the newest call's arguments
                args, kwargs = replace.decode(held.arguments)
                request.args, request.kwargs = list(args), kwargs
        outcome: Optional[BaseException] = None
        try:
            return self.run(*args, **kwargs)
        except BaseException as exc:
            outcome = exc  # how it ended decides what a copy of its message gets (see ``redelivery``)
            raise
        finally:
            if held is not None:
                execute.release(self, held, request.id, outcome)
            if burst is not None:
                debounce.done(self, burst)
            outcome = None

