"""OpenTelemetry: whether this process records the lock operations, and the hooks the paths call.

The library records every lock round trip as a CLIENT span and in metrics
(``recorder``) when the ``telemetry`` setting says so:

* ``"off"``: never;
* ``"on"``: always, through the providers given to ``configure()`` or the
  global ones (which may be set later: the API's proxies forward to them);
* ``"auto"`` (the default): when ``opentelemetry-api`` is importable and a
  provider is set -- given to ``configure()``, or a global one that is not
  the API's default proxy or a no-op. The global providers are looked at once
  per process, again after a fork (prefork children set OpenTelemetry up in
  ``worker_process_init``, after the fork), and again when ``configure()`` is
  called.

``active`` is the one flag the hot paths test before calling a hook here: a
call site is ``if telemetry.active: telemetry.hook(...)``. It starts True
("not decided yet"); the first hook decides for the setting it meets, and
where nothing records the flag goes False, so that from then on the paths
run no telemetry code at all. A settings change (``configure()``, a task's
settings resolved again) raises it for one more look.

Nothing here imports OpenTelemetry until a decision needs it, and nothing
here raises into a caller: a hook that fails (a broken exporter, a bug) is
logged once and the lock operation goes on.

``quietly`` runs the library's own redis-py commands (a script loaded after
``NOSCRIPT``, a Redis Cluster's commands, the lease renewal) so that a
Redis instrumentor does not trace them: the library's span covers them, and
the renewal emits no orphan root spans. The packed commands of
``store.wire`` never reach redis-py's instrumented methods.

A foundation: it imports ``ownership`` and ``protocols`` only (``store``,
``settings_table`` and ``settings`` import it); ``recorder``, ``spans`` and
``metrics`` are this package's own, imported once something records.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Literal, NamedTuple, Optional, Protocol, TypeVar, cast, get_args

from ..protocols import TaskLike, TaskRequest

if TYPE_CHECKING:
    from .recorder import Recorder

logger = logging.getLogger("celery_once_task")

#: The values of the ``telemetry`` setting.
Mode = Literal["auto", "on", "off"]
MODES: tuple[str, ...] = get_args(Mode)

#: The instrumentation scope: the tracer's and the meter's name.
SCOPE = "celery_once_task"

#: The one flag the hot paths test: False once this process knows it records nothing.
active = True

#: The attribute of a request that carries its pickup as telemetry follows it (``recorder.Pickup``): in the
#: library's namespace, which Celery 5.0 to 5.2's flattened headers leave out (``headers.message_headers``).
STASH = "once_task_telemetry"


class Operation(NamedTuple):
    """A lock round trip as its span names it (``store.operations`` has one for each)."""

    #: ``celery_once.lock.type``: queue, running, slot, burst, throttle.
    lock_type: str
    #: What the round trip does: acquire, pickup, wait, join, release, record, call, take, forget.
    verb: str
    #: ``db.operation.name`` of one command: ``SET`` or ``EVALSHA`` (``PIPELINE EVALSHA`` for several).
    command: str
    #: ``db.stored_procedure.name``: the script's name (``store.lua``), None for a plain command.
    procedure: Optional[str]


class TelemetrySettings(Protocol):
    """The settings a hook reads: the mode, and where the store is (for its address)."""

    @property
    def telemetry(self) -> str: ...
    @property
    def redis_url(self) -> str: ...


# -- the decision ---------------------------------------------------------------------

_lock = threading.Lock()
#: The providers given to ``configure()`` (None: the global one).
_tracer_provider: object = None
_meter_provider: object = None
#: The recorder decided for each mode met in this process (None: nothing records under it).
_decided: dict[str, Optional[Recorder]] = {}
#: False once ``opentelemetry`` failed to import in this process.
_importable = True
#: The library's redis-py commands run quietly: something records (None: not looked at yet).
_quiet: Optional[bool] = None


def _recorder(mode: str) -> Optional[Recorder]:
    """The recorder under ``mode`` (decided on first use), or None; lowers ``active`` where none records."""
    global active
    try:
        recorder = _decided[mode]
    except KeyError:
        recorder = _decide(mode)
    if recorder is None and active and not any(list(_decided.values())):
        active = False
    return recorder


def _decide(mode: str) -> Optional[Recorder]:
    global _importable, _quiet
    with _lock:
        if mode in _decided:
            return _decided[mode]
        recorder = None
        if mode != "off" and _importable:
            try:
                from .recorder import make_recorder

                recorder = make_recorder(mode == "on", _tracer_provider, _meter_provider)
            except ImportError as exc:
                _importable = False
                if mode == "on":
                    logger.warning("telemetry is on but OpenTelemetry cannot be imported (%s): install "
                                   "celery-once-task[otel]; nothing is recorded", exc)
            except Exception:  # a broken install or provider: the lock operations go on unrecorded
                logger.warning("telemetry: no tracer or meter could be made; nothing is recorded", exc_info=True)
        _decided[mode] = recorder
        _quiet = any(_decided.values())
        return recorder


def _request_recorder(request: Optional[TaskRequest]) -> Optional[Recorder]:
    """The recorder of the mode an execution's pickup was followed under (None: it was not)."""
    pickup = getattr(request, STASH, None)
    return _recorder(pickup.mode) if pickup is not None else None


def _process_mode() -> str:
    """The mode a hook without settings goes by: one that records, else ``"auto"``."""
    # A copy: another thread's configure() may clear the decisions meanwhile.
    return next((mode for mode, recorder in list(_decided.items()) if recorder is not None), "auto")


def rearm() -> None:
    """Look once more at the next hook: settings were resolved again, and may say otherwise now."""
    global active
    if _importable:
        active = True


def check_providers(tracer_provider: object, meter_provider: object) -> None:
    """``ValueError`` unless each provider given is one (has ``get_tracer`` / ``get_meter``)."""
    for name, provider, method in (("tracer_provider", tracer_provider, "get_tracer"),
                                   ("meter_provider", meter_provider, "get_meter")):
        if provider is not None and not callable(getattr(provider, method, None)):
            raise ValueError(f"{name} must be an OpenTelemetry {name.replace('_', ' ')} (with {method}()), "
                             f"got {type(provider).__name__}")


def reconfigure(tracer_provider: object = None, meter_provider: object = None) -> None:
    """``configure()`` was called: use the providers given (None: keep), and decide again."""
    global _tracer_provider, _meter_provider
    with _lock:
        if tracer_provider is not None:
            _tracer_provider = tracer_provider
        if meter_provider is not None:
            _meter_provider = meter_provider
        _forget()


def reset() -> None:
    """Forget the providers ``configure()`` gave, and every decision (for tests)."""
    global _tracer_provider, _meter_provider
    with _lock:
        _tracer_provider = _meter_provider = None
        _forget()


def _forget() -> None:
    global active, _quiet
    _decided.clear()
    _quiet = None
    active = _importable


def _forked() -> None:
    # A prefork child sets its providers up after the fork (worker_process_init): decide again there.
    global _lock
    _lock = threading.Lock()
    _forget()


os.register_at_fork(after_in_child=_forked)


# -- the library's own redis-py commands --------------------------------------------

_T = TypeVar("_T")


def quietly(command: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """``command(*args, **kwargs)``, kept out of a Redis instrumentor's traces while something records.

    Before any hook decided (a worker's main process renewing leases), the
    commands are quiet where a provider is set: what ``"auto"`` would say.
    """
    quiet = _quiet
    if quiet is None:
        quiet = _guess_quiet()
    if not quiet:
        return command(*args, **kwargs)
    from .spans import suppressed

    with suppressed():
        return command(*args, **kwargs)


def _guess_quiet() -> bool:
    global _quiet, _importable
    if not _importable:
        _quiet = False
        return False
    try:
        from .recorder import provider_set

        quiet = provider_set(False, _tracer_provider, _meter_provider)
    except ImportError:
        _importable = quiet = False
    except Exception:  # the command runs all the same, traced or not
        quiet = False
    _quiet = quiet
    return quiet


# -- the hooks ------------------------------------------------------------------------

_Hook = TypeVar("_Hook", bound=Callable[..., None])
_failed: set[str] = set()


def _guarded(hook: _Hook) -> _Hook:
    """The hook, never raising: a failure is logged once per hook and process."""

    @functools.wraps(hook)
    def guarded(*args: Any, **kwargs: Any) -> None:
        try:
            hook(*args, **kwargs)
        except Exception:
            if hook.__name__ not in _failed:
                _failed.add(hook.__name__)
                logger.warning("telemetry: %s failed; the lock operation goes on", hook.__name__, exc_info=True)

    return cast(_Hook, guarded)


def started(settings: TelemetrySettings) -> int:
    """The clock at a round trip's start (``time.perf_counter_ns``), or 0 where nothing records."""
    try:
        recording = _recorder(settings.telemetry) is not None
    except Exception:  # never into a lock operation
        return 0
    return time.perf_counter_ns() if recording else 0


@_guarded
def called(task: TaskLike, settings: TelemetrySettings, client: object, operation: Operation, key: str,
           task_id: str, started: int, outcome: str, *, holder: Optional[str] = None, policy: Optional[str] = None,
           error: Optional[BaseException] = None) -> None:
    """A call's round trip at publish (queue lock, burst) ended with ``outcome``: ``celery_once.calls``."""
    recorder = _recorder(settings.telemetry)
    if recorder is not None:
        recorder.called(task, settings, client, operation, key, task_id, started, outcome, holder, policy, error)


@_guarded
def picking_up(task: TaskLike, settings: TelemetrySettings, request: TaskRequest, operation: Operation,
               digest: str, batch: int = 1) -> None:
    """An execution's pickup starts (``batch`` commands in its round trip): its span ends with the decision."""
    recorder = _recorder(settings.telemetry)
    if recorder is not None:
        recorder.picking_up(task, settings, request, operation, digest, batch)


@_guarded
def step(request: TaskRequest, outcome: str, then: Optional[Operation] = None, batch: int = 1, *,
         holder: Optional[str] = None, policy: Optional[str] = None, client: object = None) -> None:
    """The pickup's round trip ended with ``outcome``, the decision still to come; ``then``: the next round trip."""
    recorder = _request_recorder(request)
    if recorder is not None:
        recorder.step(request, outcome, then, batch, holder, policy, client)


@_guarded
def executed(task: TaskLike, request: TaskRequest, outcome: str, *, holder: Optional[str] = None,
             policy: Optional[str] = None, error: Optional[BaseException] = None, client: object = None) -> None:
    """The execution does not run (rejected, waiting, postponed, finished_copy, store_unavailable)."""
    recorder = _request_recorder(request)
    if recorder is not None:
        recorder.executed(task, request, outcome, holder, policy, error, client)


@_guarded
def picked_up(task: TaskLike, request: TaskRequest, client: object) -> None:
    """The execution runs: it holds its lock (or slot), or its task has none."""
    recorder = _request_recorder(request)
    if recorder is not None:
        recorder.picked_up(task, request, client)


@_guarded
def recovered(task: object, key: str, reason: str, request: Optional[TaskRequest] = None) -> None:
    """A lock was recovered (``lock_recovered``); with ``request``, by this execution's pickup."""
    recorder = _request_recorder(request) if request is not None else _recorder(_process_mode())
    if recorder is not None:
        recorder.recovered(task, key, reason, request)


@_guarded
def released(task: TaskLike, settings: TelemetrySettings, client: object, operation: Operation, key: str,
             started: int, *, error: Optional[BaseException] = None, handed: int = 0, batch: int = 1) -> None:
    """An execution's release ended (``error``: left to the janitor); ``handed``: waiting calls handed over."""
    recorder = _recorder(settings.telemetry)
    if recorder is not None:
        recorder.released(task, settings, client, operation, key, started, error, handed, batch)


@_guarded
def round_trip(task: TaskLike, settings: TelemetrySettings, client: object, operation: Operation, key: str,
               started: int, outcome: str, *, error: Optional[BaseException] = None) -> None:
    """Another round trip of a lock operation ended (a rejection's record, a burst forgotten)."""
    recorder = _recorder(settings.telemetry)
    if recorder is not None:
        recorder.round_trip(task, settings, client, operation, key, started, outcome, error)
