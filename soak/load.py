"""The soak's load: publisher threads calling ``work.delay(key_index)`` at a steady rate.

Every call is kept with its time and what it got: a result (accepted), ``None``
(dropped: the same call is queued), ``LockStoreUnavailable`` (refused: the
lock store did not answer; counted, never an error of the soak), or another
exception (an error, e.g. from the broker).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

from celery_once_task import LockStoreUnavailable
from celery_once_task.signals import duplicate_call

#: What the last dropped call of each publisher thread met (``duplicate_call`` is sent in the calling thread).
_met = threading.local()


@duplicate_call.connect
def _note_holder(sender: Any = None, holder_id: Optional[str] = None, **_: Any) -> None:
    _met.holder = holder_id


ACCEPTED = "accepted"
DROPPED = "dropped"
REFUSED = "refused"
ERROR = "error"


@dataclass(frozen=True)
class Call:
    """One ``delay()`` call and what it got."""

    t: float
    key: int
    outcome: str
    result: Any = None
    error: Optional[str] = None
    #: For a dropped call: the task id holding the queue lock it met.
    holder: Optional[str] = None
    #: The call's number, in the order the calls were made (``work``'s ``seq``).
    seq: int = 0
    #: When the call returned: a call made after it reached the lock store after it.
    done: float = 0.0


class Publishers:
    """``threads`` threads making ``rate`` calls per second in all, over ``keys`` keys."""

    def __init__(self, task: Any, *, threads: int, rate: float, keys: int, seed: int) -> None:
        self.task = task
        self.keys = keys
        self.interval = threads / rate
        self.calls: list[Call] = []
        self._seq = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._publish, args=(random.Random(seed + index),), name=f"soak-publisher-{index}",
                             daemon=True)
            for index in range(threads)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            # A publish stuck on a stalled broker finishes once it resumes.
            thread.join(60)

    def _publish(self, rng: random.Random) -> None:
        next_call = time.monotonic() + rng.uniform(0, self.interval)
        while not self._stop.wait(max(0.0, next_call - time.monotonic())):
            self._add(self._call(rng.randrange(self.keys)))
            # A steady rate, without a burst to catch up after a call that blocked.
            next_call = max(next_call + self.interval, time.monotonic())

    def _call(self, key: int) -> Call:
        t = time.time()
        _met.holder = None
        with self._lock:
            self._seq += 1
            seq = self._seq
        try:
            result = self.task.delay(key, seq)
        except LockStoreUnavailable:
            return Call(t, key, REFUSED, seq=seq)
        except Exception as exc:
            return Call(t, key, ERROR, error=f"{type(exc).__name__}: {exc}", seq=seq)
        if result is None:
            return Call(t, key, DROPPED, holder=_met.holder, seq=seq, done=time.time())
        return Call(t, key, ACCEPTED, result, seq=seq, done=time.time())

    def _add(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)
