"""What the soak found: executions rebuilt from the records, and the figures it prints.

Pure functions of what the driver collected (records, kills, calls, result
states, locks left, the locks of killed workers), so that a reader can check
each figure against its definition here.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from celery import states

from soak.faults import BlockedKey, Kill
from soak.load import ACCEPTED, DROPPED, Call

#: The exception type a rejected duplicate execution's result names.
REJECTED_TYPE = "OnceTaskLocked"


@dataclass(frozen=True)
class Execution:
    """One run of the task body: from its start record to its end record, or to the kill of its process."""

    execution: str
    task_id: str
    retries: int
    key: int
    pid: int
    ppid: int
    worker: str
    start: float
    #: None: no end record and no kill of its process (it ran on past the soak's view).
    end: Optional[float]
    #: "end" (it recorded its end), "kill" (its process, or its worker, was killed), "unknown".
    ended_by: str

    @property
    def until(self) -> float:
        return self.end if self.end is not None else math.inf


def executions(records: Iterable[Mapping[str, Any]], kills: Iterable[Kill]) -> list[Execution]:
    """Pair start and end records; an execution without an end ends when its process was killed."""
    starts: dict[str, Mapping[str, Any]] = {}
    ends: dict[str, float] = {}
    for record in records:
        if record["event"] == "start":
            starts[record["execution"]] = record
        elif record["event"] == "end":
            ends[record["execution"]] = float(record["t"])
    killed_at: dict[int, list[float]] = defaultdict(list)
    for kill in kills:
        killed_at[kill.pid].append(kill.t)
    for times in killed_at.values():
        times.sort()
    found = []
    for execution, start in starts.items():
        began = float(start["t"])
        end: Optional[float] = ends.get(execution)
        ended_by = "end"
        if end is None:
            # Its pool process was killed, or its worker's main process
            # (a pool process dies with it): the first such kill after it began.
            candidates = [_first_after(killed_at.get(int(start[pid]), []), began) for pid in ("pid", "ppid")]
            known = [t for t in candidates if t is not None]
            end = min(known) if known else None
            ended_by = "kill" if known else "unknown"
        found.append(Execution(
            execution=execution, task_id=str(start["task_id"]), retries=int(start["retries"] or 0),
            key=int(start["key"]), pid=int(start["pid"]), ppid=int(start["ppid"]), worker=str(start["worker"]),
            start=began, end=end, ended_by=ended_by,
        ))
    return sorted(found, key=lambda execution: execution.start)


def _first_after(times: Sequence[float], t: float) -> Optional[float]:
    index = bisect.bisect_left(times, t)
    return times[index] if index < len(times) else None


def overlaps(runs: Sequence[Execution]) -> list[tuple[Execution, Execution]]:
    """Pairs of executions of one key whose [start, end] intervals overlap."""
    by_key: dict[int, list[Execution]] = defaultdict(list)
    for run in runs:
        by_key[run.key].append(run)
    pairs = []
    for key_runs in by_key.values():
        key_runs.sort(key=lambda run: run.start)
        for index, first in enumerate(key_runs):
            for later in key_runs[index + 1:]:
                if later.start >= first.until:
                    break
                pairs.append((first, later))
    return pairs


def most_at_once(runs: Sequence[Execution]) -> tuple[int, Optional[int]]:
    """The most executions of one key that ran at the same time, and that key."""
    by_key: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for run in runs:
        by_key[run.key].extend([(run.start, 1), (run.until, -1)])
    most, where = 0, None
    for key, moments in by_key.items():
        now = 0
        # An end at the same instant as a start comes first: one ended, then the next began.
        for _, step in sorted(moments, key=lambda moment: (moment[0], moment[1])):
            now += step
            if now > most:
                most, where = now, key
    return most, where


def most_in_window(runs: Sequence[Execution], period: float) -> tuple[int, Optional[int]]:
    """The most starts of one key in any window of ``period`` seconds (a throttle allows N), and that key."""
    by_key: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        by_key[run.key].append(run.start)
    most, where = 0, None
    for key, starts in by_key.items():
        starts.sort()
        for index, start in enumerate(starts):
            inside = bisect.bisect_left(starts, start + period) - index
            if inside > most:
                most, where = inside, key
    return most, where


def not_terminal(calls: Sequence[Call], result_states: Mapping[str, tuple[str, Optional[str]]]) -> list[Call]:
    """Accepted calls whose result is not in a ready state."""
    return [call for call in accepted(calls) if result_states.get(call.result.id, (states.PENDING, None))[0]
            not in states.READY_STATES]


def rejected(calls: Sequence[Call], result_states: Mapping[str, tuple[str, Optional[str]]]) -> int:
    """Accepted calls whose execution was rejected as a duplicate."""
    return sum(1 for call in accepted(calls) if result_states.get(call.result.id, ("", None))[1] == REJECTED_TYPE)


def not_followed(calls: Sequence[Call], runs: Sequence[Execution]) -> list[Call]:
    """Calls made at ``t``, accepted or dropped, whose key has no execution starting after ``t``.

    Under ``running_lock_conflict="wait"`` every call not refused with an
    exception is followed by such an execution: a dropped call by the
    waiting copy's.
    """
    starts: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        starts[run.key].append(run.start)
    for times in starts.values():
        times.sort()
    made = [call for call in calls if call.outcome in (ACCEPTED, DROPPED)]
    return [call for call in made if _first_after(starts.get(call.key, []), call.t) is None]


def accepted(calls: Sequence[Call]) -> list[Call]:
    return [call for call in calls if call.outcome == ACCEPTED]


@dataclass(frozen=True)
class Blocking:
    """How long the running locks of killed workers kept their keys."""

    seconds: list[float]
    #: Locks still holding their value when the soak ended.
    unreleased: int

    @property
    def maximum(self) -> Optional[float]:
        return max(self.seconds) if self.seconds else None

    @property
    def median(self) -> Optional[float]:
        return statistics.median(self.seconds) if self.seconds else None


def blocking(blocked: Sequence[BlockedKey], now: float) -> Blocking:
    """Per lock, from the kill to the moment its key stopped holding that value (``now`` if it still does)."""
    seconds = [(item.freed_at if item.freed_at is not None else now) - item.killed_at for item in blocked]
    return Blocking(seconds, sum(1 for item in blocked if item.freed_at is None))


def describe(run: Execution, t0: float) -> str:
    end = f"+{run.end - t0:.3f}s ({run.ended_by})" if run.end is not None else "never (no end record, no kill)"
    return (f"task {run.task_id} attempt {run.retries} on {run.worker} pid {run.pid}: "
            f"+{run.start - t0:.3f}s to {end}")


def lost_by_broker(stuck: Sequence[Call], runs: Sequence[Execution], in_broker: set[str], logged: set[str],
                   republished: Mapping[str, float], consumers_stopped: Sequence[float]) -> list[Call]:
    """The calls not terminal whose message the broker transport lost, not the library.

    kombu's Redis transport takes a message off its queue (BRPOP) before it
    records it as delivered and unacknowledged; a worker that stops in
    between loses it -- killed, or (a gevent worker whose hub a computing task
    starves holds the popped message unread for seconds) shut down. Such a
    message is neither queued nor unacknowledged, no worker logged it
    (Celery logs "received" only after recording it), and a worker's main
    process was killed or stopped after it was published: the call's own
    message, never run; or a copy the library published again (deferred),
    whose publishing is the last any worker logged of the call
    (``republished``: task id -> when).
    """
    ran = {run.task_id for run in runs}

    def lost(call: Call) -> bool:
        task_id = call.result.id
        if task_id in in_broker:
            return False
        if task_id in republished:
            since = republished[task_id]
        elif task_id not in ran and task_id not in logged:
            since = call.t
        else:
            return False
        return any(t >= since for t in consumers_stopped)

    return [call for call in stuck if lost(call)]


def run_again(runs: Sequence[Execution]) -> set[str]:
    """Task ids run again after an execution of theirs that recorded its end.

    Not an overlap, and not the library's doing: with ``acks_late`` the
    message is acknowledged after the result is stored, and a worker killed
    in between (or a broker that lost the acknowledgement) has it delivered
    again.
    """
    ended: set[str] = set()
    again: set[str] = set()
    for run in sorted(runs, key=lambda run: run.start):
        if run.task_id in ended:
            again.add(run.task_id)
        if run.ended_by == "end":
            ended.add(run.task_id)
    return again


def completed_twice(runs: Sequence[Execution], stored: set[str]) -> tuple[set[str], set[str]]:
    """Task ids whose body ran to its end more than once; and those of them whose first run's result was lost.

    ``stored``: the executions whose result Celery stored (their "stored"
    record). Lost: the first run to end never had its result stored -- its
    process was killed between the end of its body and its result -- so a
    second run is the promised at-least-once. Any other is a finished call
    run again.
    """
    ends: dict[str, list[Execution]] = defaultdict(list)
    for run in runs:
        if run.ended_by == "end":
            ends[run.task_id].append(run)
    twice = {task_id for task_id, ended in ends.items() if len(ended) > 1}
    lost = {task_id for task_id in twice if min(ends[task_id], key=lambda run: run.until).execution not in stored}
    return twice, lost


def behind_lost(calls: Sequence[Call], lost: Sequence[Call]) -> list[Call]:
    """Of ``calls``, those Celery lost, and those made after a call of their key that Celery lost."""
    since: dict[int, float] = {}
    for call in lost:
        since[call.key] = min(call.t, since.get(call.key, math.inf))
    return [call for call in calls if call.t >= since.get(call.key, math.inf)]


def bursts(calls: Sequence[Call], runs: Sequence[Execution], records: Iterable[Mapping[str, Any]],
           states_of: Mapping[str, tuple[str, Optional[str]]],
           lost: Sequence[Call]) -> tuple[int, list[str], list[str]]:
    """Debounced calls: how many bursts; those that ran with other than their last call's arguments; and
    those with no execution and no final result (but for the calls Celery lost).

    A burst is the calls that returned one task id.
    """
    members: dict[str, list[Call]] = defaultdict(list)
    for call in accepted(calls):
        members[call.result.id].append(call)
    ran_with: dict[str, list[int]] = defaultdict(list)
    for record in records:
        if record["event"] == "start":
            ran_with[str(record["task_id"])].append(int(record.get("seq") or 0))
    lost_ids = {call.result.id for call in lost}

    def could_be_last(seq: int, covered: list[Call]) -> bool:
        # Calls made at once from several threads reach the lock store in any order: a call is the
        # burst's last unless another call of the burst began after it had returned.
        call = next((call for call in covered if call.seq == seq), None)
        return call is not None and not any(other.t > call.done for other in covered)

    wrong = [burst for burst, covered in members.items()
             if ran_with.get(burst) and not any(could_be_last(seq, covered) for seq in ran_with[burst])]
    unrun = [burst for burst in members
             if not ran_with.get(burst) and burst not in lost_ids
             and states_of.get(burst, (states.PENDING, None))[0] not in states.READY_STATES]
    return len(members), wrong, unrun


def dropped_behind(calls: Sequence[Call], lost: Sequence[Call]) -> int:
    """Calls dropped as duplicates of a message Celery lost: its queue lock outlives it."""
    since: dict[int, float] = {}
    for call in lost:
        since[call.key] = min(call.t, since.get(call.key, math.inf))
    return sum(1 for call in calls if call.outcome == DROPPED and call.t > since.get(call.key, math.inf))


#: A call made this long before the end of another's window is inside it whatever the clocks' rounding.
WINDOW_MARGIN = 0.01


def window_name(window: str) -> str:
    return {"end": 'queue_lock_until="end"', "unique_for": "unique_for"}.get(window, "queued (the default)")


def accepted_inside_windows(calls: Sequence[Call], runs: Sequence[Execution], window: str,
                            unique_for: float) -> list[tuple[Call, Call]]:
    """Pairs (C, D) of accepted calls of one key where D was accepted while C's window surely held the key.

    C's lock was taken before its call returned (``C.done``), and D's was
    tried between D's call and its return: D made after C returned and
    returned before C's window ended was tried inside it, and must have been
    a duplicate. The window ends ``unique_for`` seconds after C's call, or
    (``"end"``) when C's first execution recorded its end -- the release
    comes after. A call whose first execution was cut short by a kill is left
    out: a lost worker ends its window within a lease, as promised.
    """
    first_runs: dict[str, Execution] = {}
    for run in sorted(runs, key=lambda run: run.start):
        first_runs.setdefault(run.task_id, run)
    by_key: dict[int, list[Call]] = defaultdict(list)
    for call in accepted(calls):
        by_key[call.key].append(call)
    pairs = []
    for made in by_key.values():
        made.sort(key=lambda call: call.t)
        for index, first in enumerate(made):
            if window == "end":
                run = first_runs.get(first.result.id)
                if run is None or run.ended_by != "end" or run.end is None:
                    continue
                until = run.end
            else:
                until = first.t + unique_for
            for second in made[index + 1:]:
                if second.t > until:
                    break
                if (second.result.id != first.result.id and second.t > first.done
                        and second.done < until - WINDOW_MARGIN):
                    pairs.append((first, second))
    return pairs
