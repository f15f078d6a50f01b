"""Threads that no pool can starve: a real OS thread, and waits that suit it, under every pool.

Celery's gevent and eventlet pools monkey-patch ``threading`` before the app
is imported: a ``threading.Thread`` started in such a worker is a greenlet,
and runs only when the greenlet running a task yields. A task body that
computes, or calls a C library the pool does not patch (a database driver
without a green adapter, numpy, an image library), never yields; a lease
renewed by a greenlet would run out under it, and a duplicate would run
beside a live execution.

So the lease keeper runs on a thread made with the interpreter's own
``_thread.start_new_thread``, taken from before the patching. Under gevent
and eventlet the sockets it opens are served by that thread's own hub (both
keep one hub per OS thread), so its round trips never wait for the starved
one. Two rules keep such a thread from hurting the main one:

* it makes its first round trip while the thread that starts it waits
  (``LeaseKeeper.start``): the hub, the resolver and the modules that first
  connection needs are made and imported then, never while the main thread
  imports the same modules;
* between round trips it waits with the pool's own sleep, in short slices
  (``Event.wait``), so that its hub runs: a lock that the main thread waits
  for and this thread released (a logging handler's, say) is handed over
  by that hub, and would otherwise never be.

Without monkey-patching (prefork, threads, solo) these are plain threads and
a plain lock.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Callable

#: How long a wait on a green pool sleeps between looks at its event.
GREEN_SLICE = 0.05


def _original_thread_module() -> Any:
    """``_thread`` as it was before gevent or eventlet patched it (or as it is, if neither did)."""
    gevent_monkey = sys.modules.get("gevent.monkey")
    if gevent_monkey is not None and gevent_monkey.is_module_patched("threading"):
        import types

        return types.SimpleNamespace(
            start_new_thread=gevent_monkey.get_original("_thread", "start_new_thread"),
            allocate_lock=gevent_monkey.get_original("_thread", "allocate_lock"),
        )
    eventlet_patcher = sys.modules.get("eventlet.patcher")
    if eventlet_patcher is not None and eventlet_patcher.is_monkey_patched("thread"):
        return eventlet_patcher.original("_thread")
    import _thread

    return _thread


def green_pool() -> bool:
    """Whether gevent or eventlet has patched ``threading`` in this process."""
    import _thread

    return bool(_original_thread_module().start_new_thread is not _thread.start_new_thread)


def start_thread(target: Callable[[], None]) -> None:
    """Run ``target`` on a new OS thread (a daemon: it never holds the process up at exit)."""
    _original_thread_module().start_new_thread(target, ())


class Event:
    """``threading.Event``'s ``set``/``is_set``/``wait`` that any thread may wait on, under every pool.

    Without a green pool it is an OS lock. With one, ``wait`` sleeps in
    slices of ``GREEN_SLICE`` with the pool's sleep, which runs the waiting
    thread's hub (see the module's docstring).
    """

    def __init__(self) -> None:
        self._green = green_pool()
        self._lock = _original_thread_module().allocate_lock()
        self._lock.acquire()
        self._set = False

    def set(self) -> None:
        if not self._set:
            self._set = True
            with contextlib.suppress(RuntimeError):  # set by another thread at the same moment
                self._lock.release()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        """Wait until ``set`` or ``timeout`` seconds; return whether it was set."""
        if self._set:
            return True
        if self._green:
            deadline = time.monotonic() + timeout
            while not self._set:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                time.sleep(min(GREEN_SLICE, left))  # the pool's sleep: this thread's hub runs
            return True
        return self.block(timeout)

    def block(self, timeout: float) -> bool:
        """``wait`` that holds the whole OS thread, its hub included: nothing else runs in it meanwhile."""
        if self._lock.acquire(True, max(0.0, timeout)):
            self._lock.release()  # every other waiter sees it set too
            return True
        return self._set
