"""The soak's driver: ``python -m soak [--short|--minutes N] [--policy reject|wait] [--pool P] [--window W] ...``.

Run it with ``bash scripts/soak.sh``, which installs what it needs. Phases:

1. start three redis-servers (lock store, broker and backend, records), with
   ``--broker amqp`` a RabbitMQ node too (the broker then), and the workers
   (3 in short mode, 4 otherwise; on ``--pool``, prefork by default), and
   wait until they are ready;
2. load: 3 publisher threads make about 20 calls/s over 16 keys while a
   fault is injected every 1.5-3 s (``soak.faults``);
3. drain: stop both; make sure every worker runs; once the broker's
   visibility timeout has passed since the last fault, restart every worker
   (a starting consumer restores the unacked messages of killed workers);
   wait until every accepted call's result is ready, or the drain deadline;
4. wait one lease (``Lease(heartbeat_timeout).ttl``) and a second more, and
   count the locks left.

Then it prints its figures (see ``soak.report``) and exits 1 if two
executions of one call overlapped, an accepted call's result is not in a
ready state, a lock was left, a call's body ran to its end twice without a
kill cutting the first run short at its end, or a killed worker's running
lock blocked its key for more than ``heartbeat_timeout + 5`` seconds (with
``--policy wait``, also if an accepted call was not followed by an
execution; with ``--window``, also if a call was accepted while the window of
another call of its key surely held it: ``queue_lock_until="end"`` from a call
until its run ended, or ``unique_for`` seconds from it); 2 if the soak itself
could not run. A message that Celery itself lost (kombu's Redis
transport loses one a worker took off the queue and was killed before it
recorded it) leaves its result pending and its queue lock in place, whatever
the library does: those are counted and shown, and fail the soak only with
``--strict``. The worker logs, the fault log, the records and the
details of every failure are in a temp dir whose path it prints; the dir is
kept when a check failed (with a copy of the lock store's append-only file).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import logging
import os
import random
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from celery.states import READY_STATES

from celery_once_task import OnceTask
from celery_once_task.ownership import Lease
from celery_once_task.rates import Rate, parse_throttle
from celery_once_task.store.throttles import margin_for
from soak import report
from soak.cluster import Servers, SoakWorker
from soak.faults import FaultLog, Faults, kinds
from soak.load import ACCEPTED, DROPPED, ERROR, REFUSED, Call, Publishers

PUBLISHER_THREADS = 3
CALLS_PER_SECOND = 20.0
#: With a running limit every call is kept: a rate the workers keep up with between the faults.
LIMITED_CALLS_PER_SECOND = 8.0
HEARTBEAT_TIMEOUT = 5
VISIBILITY_TIMEOUT = 8
#: The window of ``--window unique_for``: shorter than the lease and a second the drain waits, so none is left.
UNIQUE_FOR = 2.0
#: Worker start-up on a busy two-core machine can take a while.
READY_TIMEOUT = 120.0
#: How often the load phase logs its progress.
PROGRESS_EVERY = 15.0
#: How many failures of each kind are printed (all are in details.txt).
SHOWN = 5


@dataclass(frozen=True)
class Plan:
    load_seconds: float
    workers: int
    drain_seconds: float
    policy: str
    seed: int
    keep: bool
    #: Fail on messages Celery lost too.
    strict: bool
    pool: str = "prefork"
    broker: str = "redis"
    body: str = "sleep"
    running_limit: int = 1
    debounce: float = 0.0
    #: A window of the task's: "end" (queue_lock_until="end"), "unique_for" (``UNIQUE_FOR`` seconds); "": none.
    window: str = ""
    #: ``--throttle N/PERIOD``: at most N starts of a key in any window of the period; "": none.
    throttle: str = ""

    @property
    def rate(self) -> Optional[Rate]:
        return parse_throttle(soak_throttle(self.throttle), "--throttle")[0] if self.throttle else None

    @property
    def lease(self) -> Lease:
        return Lease(HEARTBEAT_TIMEOUT)


def parse(argv: Optional[Sequence[str]]) -> Plan:
    parser = argparse.ArgumentParser(prog="python -m soak", description=__doc__.split("\n\n")[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--short", action="store_true", help="60 s of load, 3 workers: what CI runs")
    length.add_argument("--minutes", type=float, default=10.0, help="minutes of load (default 10), 4 workers")
    parser.add_argument("--policy", choices=("reject", "wait"), default="reject",
                        help="what a duplicate execution gets (running_lock_conflict)")
    parser.add_argument("--pool", choices=("prefork", "threads", "gevent", "solo"), default="prefork",
                        help="the workers' pool")
    parser.add_argument("--broker", choices=("redis", "amqp"), default="redis",
                        help="the broker: Redis, or a RabbitMQ node of the soak's own (amqp)")
    parser.add_argument("--body", choices=("sleep", "cpu"), default=None,
                        help="what the task does: sleeps, or computes without yielding, one call in five for longer "
                             "than a lease (default: cpu on gevent, sleep otherwise)")
    parser.add_argument("--running-limit", type=int, default=1,
                        help="at most this many executions of a key at once (running_limit; with more than 1 the "
                             "calls of 4 keys are all kept: queue_lock=False)")
    parser.add_argument("--debounce", type=float, default=0.0,
                        help="seconds apart that calls of a key form a burst, run once after it (debounce_max 4x)")
    parser.add_argument("--window", choices=("end", "unique_for"), default="",
                        help="a window of the task's: a call is a duplicate until its run ends "
                             "(queue_lock_until=\"end\"), or for a few seconds from the call (unique_for)")
    parser.add_argument("--throttle", default="", metavar="N/PERIOD",
                        help="a throttle of N starts per key in any window of PERIOD (s, m, h, d, or seconds): "
                             "every call kept (queue_lock=False); reports the most starts of one key in any window")
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault and key choices")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir even when every check passed")
    parser.add_argument("--strict", action="store_true",
                        help="fail on results left pending and queue locks left by messages Celery lost, too")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    body = args.body or ("cpu" if args.pool == "gevent" else "sleep")
    if args.running_limit < 1:
        parser.error("--running-limit must be at least 1")
    if args.window and (args.debounce or args.policy == "wait" or (args.window == "end" and args.running_limit > 1)):
        parser.error(f"--window {args.window} cannot be used with --debounce, --policy wait, or (end) a running "
                     "limit: the library refuses those combinations")
    if args.throttle:
        try:
            parse_throttle(soak_throttle(args.throttle), "--throttle")
        except ValueError as exc:
            parser.error(str(exc))
        if args.debounce or args.policy == "wait" or args.window:
            parser.error("--throttle cannot be used with --debounce, --policy wait or --window in the soak")
    if args.short:
        return Plan(60.0, 3, 60.0, args.policy, seed, args.keep, args.strict, args.pool, args.broker, body,
                    args.running_limit, args.debounce, args.window, args.throttle)
    return Plan(args.minutes * 60, 4, 120.0, args.policy, seed, args.keep, args.strict, args.pool, args.broker, body,
                args.running_limit, args.debounce, args.window, args.throttle)


def soak_throttle(text: str) -> object:
    """``N/PERIOD`` as the task option takes it: ``"N/s"`` and the like as they are, ``N/<seconds>`` a tuple."""
    count, _, period = text.partition("/")
    try:
        return (int(count), float(period))
    except ValueError:
        return text


def throttled_rate(rate: Rate, keys: int) -> float:
    """Calls a second the workers keep up with under the throttle: most of what it lets start, across the keys."""
    return min(LIMITED_CALLS_PER_SECOND, 0.7 * keys * rate.starts / (rate.period + margin_for([rate])))


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.time()))


class Soak:
    """One soak: its phases over the servers and workers it is given, and the figures it prints."""

    def __init__(self, plan: Plan, servers: Servers, workers: list[SoakWorker], log: FaultLog,
                 directory: Path) -> None:
        self.plan = plan
        self.servers = servers
        self.workers = workers
        self.log = log
        self.directory = directory
        self.results = servers.broker.client(1)
        self.records = servers.records.client(0)
        self.lines: list[str] = []

    # -- phases -------------------------------------------------------------

    def run(self) -> bool:
        plan = self.plan
        app = importlib.import_module("soak.app")
        self.log(f"soak: policy {plan.policy}, running_limit {plan.running_limit}, debounce {plan.debounce or 'off'}, "
                 f"window {plan.window or 'queued'}, throttle {plan.throttle or 'off'}, "
                 f"{plan.workers} {plan.pool} "
                 f"workers, broker {plan.broker}, body {plan.body}, {plan.load_seconds:.0f}s of load, seed "
                 f"{plan.seed}, heartbeat_timeout {HEARTBEAT_TIMEOUT}s (lease ttl {plan.lease.ttl:.1f}s), "
                 f"visibility_timeout {VISIBILITY_TIMEOUT}s; logs in {self.directory}")
        if plan.policy != "reject" and not hasattr(OnceTask, "running_lock_conflict"):
            self.log("soak: OnceTask has no running_lock_conflict yet: the task has the attribute, the library "
                     "ignores it")
        for worker in self.workers:
            worker.start()
        self.wait_ready()

        rate = CALLS_PER_SECOND if plan.running_limit == 1 else LIMITED_CALLS_PER_SECOND
        if plan.rate is not None:
            rate = throttled_rate(plan.rate, app.KEYS)
        publishers = Publishers(app.work, threads=PUBLISHER_THREADS, rate=rate, keys=app.KEYS, seed=plan.seed)
        faults = Faults(self.servers, self.workers, self.log, random.Random(plan.seed), kinds(plan.pool, plan.broker))
        began = time.time()
        self.log("load: publishing and injecting faults")
        publishers.start()
        faults.start()
        load_ends = began + plan.load_seconds
        while time.time() < load_ends:
            time.sleep(max(0.0, min(PROGRESS_EVERY, load_ends - time.time())))
            self.progress(publishers.snapshot())
        publishers.stop()
        faults.stop()
        load_ended = time.time()

        calls = publishers.snapshot()
        drained_at = self.drain(faults, calls)
        self.log(f"drain: waiting one lease ({plan.lease.ttl:.1f}s) and 1s more before counting locks")
        faults.wait_for_watchers()
        sleep_until(drained_at + plan.lease.ttl + 1)
        locks_left = self.locks_left()
        ended = time.time()
        return self.figures(calls, faults, locks_left, began, load_ended, ended)

    def wait_ready(self) -> None:
        wait_for(lambda: all(worker.ready() for worker in self.workers), READY_TIMEOUT, "the workers to be ready")

    def progress(self, calls: list[Call]) -> None:
        counts = {outcome: sum(1 for call in calls if call.outcome == outcome)
                  for outcome in (ACCEPTED, DROPPED, REFUSED, ERROR)}
        starts = sum(1 for record in self.read_records() if record["event"] == "start")
        self.log(f"load: {len(calls)} calls ({', '.join(f'{n} {name}' for name, n in counts.items())}), "
                 f"{starts} executions")

    def drain(self, faults: Faults, calls: list[Call]) -> float:
        """Bring every accepted call to its end, as far as Celery can; return when the drain ended."""
        self.log("drain: publishing and faults stopped")
        for worker in self.workers:
            if not worker.alive():
                self.log(f"drain: {worker.name} is down: starting it")
                worker.start()
        self.wait_ready()
        restore_at = faults.last_fault_at + VISIBILITY_TIMEOUT + 1
        self.log(f"drain: waiting {max(0.0, restore_at - time.time()):.1f}s, until the visibility timeout has "
                 "passed since the last fault")
        sleep_until(restore_at)
        self.log("drain: restarting every worker: a starting consumer restores the unacked messages of killed "
                 "workers")
        for worker in self.workers:
            faults.restarts.append(time.time())
            killed = worker.terminate(60)
            if killed:
                faults.record_kills(killed, time.time(), worker.name, "drain", first_is_main=True)
                self.log(f"drain: {worker.name} did not stop within 60s: SIGKILLed")
        for worker in self.workers:
            worker.start()
        self.wait_ready()
        self.restore_unacked()
        ids = [call.result.id for call in report.accepted(calls)]
        deadline = time.time() + self.plan.drain_seconds
        next_log = 0.0
        hopeless: set[str] = set()
        while True:
            states = self.result_states(ids)
            pending = [task_id for task_id in ids if states.get(task_id, ("PENDING", None))[0] not in READY_STATES]
            if not pending:
                self.log(f"drain: all {len(ids)} accepted calls have a ready result")
                break
            if time.time() >= deadline:
                self.log(f"drain: deadline passed with {len(pending)} of {len(ids)} results not ready")
                break
            # A result whose message is in no queue and delivered to no
            # worker can never be ready: seen twice, a second apart, it is
            # not worth the rest of the deadline.
            in_broker = self.in_broker()
            nowhere = {task_id for task_id in pending if in_broker is not None and task_id not in in_broker}
            if nowhere and len(nowhere) == len(pending) and nowhere <= hopeless:
                self.log(f"drain: {len(pending)} of {len(ids)} results not ready, and their messages are not in the "
                         "broker any more")
                break
            hopeless = nowhere
            if time.time() >= next_log:
                self.log(f"drain: {len(pending)} of {len(ids)} results not ready yet")
                next_log = time.time() + 5
            time.sleep(1)
        return time.time()

    # -- what is collected --------------------------------------------------

    def read_records(self) -> list[dict[str, Any]]:
        return [json.loads(item) for item in self.records.lrange("soak:records", 0, -1)]

    def result_states(self, ids: Sequence[str]) -> dict[str, tuple[str, Optional[str]]]:
        """Each result's state and, for a failure, its exception type (as ``AsyncResult.state`` reads it)."""
        found: dict[str, tuple[str, Optional[str]]] = {}
        for offset in range(0, len(ids), 500):
            chunk = ids[offset:offset + 500]
            for task_id, value in zip(chunk, self.results.mget([f"celery-task-meta-{i}" for i in chunk])):
                if value is None:
                    continue
                meta = json.loads(value)
                result = meta.get("result")
                found[task_id] = (meta["status"], result.get("exc_type") if isinstance(result, dict) else None)
        return found

    def locks_left(self) -> list[tuple[str, str, int]]:
        """Every key left under ``once_task:*``: a lock, or a limited key's slots or line (shown whole)."""
        client = self.servers.locks.client(0, decode_responses=True)
        left = []
        for key in sorted(client.scan_iter(match="once_task:*", count=1000)):
            if key.endswith(":throttle"):
                continue  # a throttle's log holds no lock, and expires a period after its last start
            kind = client.type(key)
            value: Any = (client.get(key) if kind == "string" else client.hgetall(key) if kind == "hash"
                          else client.lrange(key, 0, -1) if kind == "list" else kind)
            left.append((str(key), str(value), int(client.pttl(key))))
        return left

    # -- the figures --------------------------------------------------------

    def figures(self, calls: list[Call], faults: Faults, locks_left: list[tuple[str, str, int]], began: float,
                load_ended: float, ended: float) -> bool:
        plan = self.plan
        t0 = self.log.t0
        records = self.read_records()
        runs = report.executions(records, faults.kills)
        accepted = report.accepted(calls)
        states = self.result_states([call.result.id for call in accepted])
        # A throttled task takes no running lock: executions of one key may overlap.
        overlapping = report.overlaps(runs) if plan.running_limit == 1 and not plan.throttle else []
        most, most_key = report.most_at_once(runs)
        stuck = report.not_terminal(calls, states)
        blocked = report.blocking(faults.blocked, ended)
        limit = HEARTBEAT_TIMEOUT + 5
        count = {outcome: sum(1 for call in calls if call.outcome == outcome)
                 for outcome in (ACCEPTED, DROPPED, REFUSED, ERROR)}
        # What Celery lost is told apart from what the library did (see report.lost_by_broker).
        logged = {call.result.id for call in stuck if self.log_lines(call.result.id)}
        republished = {call.result.id: t for call in stuck if (t := self.republished_last(call.result.id)) is not None}
        stopped = [kill.t for kill in faults.kills if kill.main] + faults.restarts
        in_broker = self.in_broker()
        # Only kombu's Redis transport loses a message that way; RabbitMQ keeps what it handed out.
        lost = (report.lost_by_broker(stuck, runs, in_broker, logged, republished, stopped)
                if in_broker is not None else [])
        lost_ids = {call.result.id for call in lost}
        locks_of_lost = [lock for lock in locks_left if (lock[0].endswith(":queue") and lock[1] in lost_ids)
                         or (lock[0].endswith(":burst") and any(f"'id': '{i}'" in lock[1] for i in lost_ids))]
        ended_by_kill = sum(1 for run in runs if run.ended_by == "kill")
        without_end = sum(1 for run in runs if run.ended_by == "unknown")

        self.say(f"policy: {plan.policy}; running_limit: {plan.running_limit}; debounce: {plan.debounce or 'off'}; "
                 f"window: {report.window_name(plan.window)}; "
                 f"workers: {plan.workers} ({plan.pool}); "
                 f"broker: {plan.broker}; body: {plan.body}; seed: {plan.seed}; heartbeat_timeout: "
                 f"{HEARTBEAT_TIMEOUT}s (lease ttl {plan.lease.ttl:.1f}s); visibility_timeout: {VISIBILITY_TIMEOUT}s")
        self.say(f"calls made: {len(calls)}")
        self.say(f"accepted: {count[ACCEPTED]}")
        behind_lost = report.dropped_behind(calls, lost)
        self.say(f"dropped: {count[DROPPED]}" + (
            f" ({behind_lost} of them behind the queue lock of a message Celery lost)" if behind_lost else ""))
        self.say(f"refused: {count[REFUSED]}")
        self.say(f"publish errors: {count[ERROR]}")
        rerun = report.run_again(runs)
        stored = {str(record["execution"]) for record in records if record["event"] == "stored"}
        twice, cut_short = report.completed_twice(runs, stored)
        self.say(f"executions run: {len(runs)} ({ended_by_kill} ended by a kill, {without_end} without an end; "
                 f"{len({run.task_id for run in runs})} task ids, {len(rerun)} run again after an execution that "
                 "reached its end)")
        self.say(f"executions completed twice: {len(twice)}" + (
            f" ({len(cut_short)} of them because the first run's process was killed between its end and its result: "
            "at least once)" if cut_short else ""))
        self.say(f"rejected (OnceTaskLocked results): {report.rejected(calls, states)}")
        self.say("faults: " + ", ".join(f"{kind} {faults.counts[kind]}" for kind in faults.kinds))
        self.say(f"duration: {ended - began:.1f}s (load {load_ended - began:.1f}s, drain and lease wait "
                 f"{ended - load_ended:.1f}s)")
        if plan.throttle:
            self.say(f"most executions of one key at once: {most} (key {most_key}; no running lock under a throttle)")
        else:
            self.say(f"overlaps: {len(overlapping)}" if plan.running_limit == 1 else
                     f"most executions of one key at once: {most} (key {most_key}; running_limit {plan.running_limit})")
        self.say(f"results not terminal: {len(stuck)}" + (
            f" ({len(lost)} of them lost by Celery: messages taken off the broker by a worker killed or stopped "
            "before it recorded their delivery)" if lost else ""))
        self.say(f"locks left after heartbeat_timeout: {len(locks_left)}" + (
            f" ({len(locks_of_lost)} of them the queue locks of messages Celery lost; they expire after "
            "queue_lock_timeout)" if locks_of_lost else ""))
        if blocked.seconds:
            self.say(f"crashed worker blocked its keys: max {blocked.maximum:.2f}s, median {blocked.median:.2f}s "
                     f"({len(blocked.seconds)} locks of {faults.counts['worker_kill']} worker kills"
                     f"{f', {blocked.unreleased} never released' if blocked.unreleased else ''})")
        else:
            self.say(f"crashed worker blocked its keys: max -, median - (no running lock held at "
                     f"{faults.counts['worker_kill']} worker kills)")
        failures = []
        if plan.rate is not None:
            starts, starts_key = report.most_in_window(runs, plan.rate.period)
            self.say(f"most starts of one key in any {plan.rate.period:g}s window: {starts} (key {starts_key}; "
                     f"throttle {plan.throttle})")
            if starts > plan.rate.starts:
                failures.append(f"more than {plan.rate.starts} starts in {plan.rate.period:g}s")
        elif overlapping or most > plan.running_limit:
            failures.append("overlaps" if plan.running_limit == 1 else f"more than {plan.running_limit} at once")
        if twice - cut_short:
            failures.append("executions completed twice")
        # Celery's losses fail the soak only with --strict: they happen
        # whatever the library does, in a few runs out of ten.
        if len(stuck) > (0 if plan.strict else len(lost)):
            failures.append("results not terminal")
        if len(locks_left) > (0 if plan.strict else len(locks_of_lost)):
            failures.append("locks left")
        if blocked.maximum is not None and blocked.maximum > limit:
            failures.append(f"a crashed worker blocked a key for more than {limit}s")
        if plan.policy == "wait":
            unfollowed = report.not_followed(calls, runs)
            # A call Celery lost, and the calls dropped behind its queue lock, are followed by nothing;
            # so are calls dropped against a call whose publishing then failed (it raised).
            behind = report.behind_lost(unfollowed, lost)
            failed = self.publish_failures()
            behind_failed = [call for call in unfollowed if call not in behind and call.holder in failed]
            self.say(f"calls not followed by an execution: {len(unfollowed)}" + (
                f" ({len(behind)} of them the calls of a key whose message Celery lost, or dropped behind it)"
                if behind else "") + (
                f" ({len(behind_failed)} of them dropped as duplicates of a call whose publishing failed)"
                if behind_failed else ""))
            if len(unfollowed) > (0 if plan.strict else len(behind) + len(behind_failed)):
                failures.append("calls not followed by an execution")
        else:
            unfollowed = []
        if plan.debounce:
            total, wrong, unrun = report.bursts(calls, runs, records, states, lost)
            self.say(f"bursts: {total}; without an execution: {len(unrun)}; run with other than their last call's "
                     f"arguments: {len(wrong)}; executed twice: {len(twice - cut_short)}")
            if unrun:
                failures.append("bursts without an execution")
            if wrong:
                failures.append("bursts run with other than their last call's arguments")
            for burst in (wrong + unrun)[:SHOWN]:
                covered = sorted(call.seq for call in calls if call.result is not None and call.result.id == burst)
                ran = [record.get("seq") for record in records if record["event"] == "start" and
                       record["task_id"] == burst]
                self.say(f"burst {burst}: calls {covered}; ran with {ran}")
        if plan.window:
            inside = report.accepted_inside_windows(calls, runs, plan.window, UNIQUE_FOR)
            self.say(f"calls accepted inside another call's window: {len(inside)} (of {count[ACCEPTED]} accepted; "
                     f"{count[DROPPED]} dropped)")
            if inside:
                failures.append("calls accepted inside another call's window")
            for first, second in inside[:SHOWN]:
                self.say(f"window of task {first.result.id} (key {first.key}, called at +{first.t - t0:.3f}s) "
                         f"let in task {second.result.id}, called at +{second.t - t0:.3f}s")
        if count[ERROR]:
            errors = sorted({call.error or "" for call in calls if call.outcome == ERROR})
            self.say(f"publish errors seen: {'; '.join(errors[:3])}")
        self.say(f"result: {'FAIL (' + ', '.join(failures) + ')' if failures else 'PASS'}")

        details = self.details(t0, runs, overlapping, stuck, lost_ids, locks_left, unfollowed, twice - cut_short)
        self.write_files(records, calls, states, details)
        return not failures

    def say(self, line: str) -> None:
        self.lines.append(line)
        print(line, flush=True)

    def details(self, t0: float, runs: list[report.Execution], overlapping: list[tuple[report.Execution,
                report.Execution]], stuck: list[Call], lost_ids: set[str], locks_left: list[tuple[str, str, int]],
                unfollowed: list[Call], twice: set[str]) -> list[str]:
        """What a reader needs to reproduce each failure; the first few are printed too."""
        lines: list[str] = [f"times are seconds since {t0:.3f} ({_utc(t0)} UTC), as in faults.log"]
        for task_id in sorted(twice):
            ran = [run for run in runs if run.task_id == task_id]
            lines.append(f"completed twice: task {task_id}: " + " | ".join(report.describe(run, t0) for run in ran))
            lines.extend(f"    {line}" for line in self.log_lines(task_id))
        for first, second in overlapping:
            lines.append(f"overlap on key {first.key}: {report.describe(first, t0)} | {report.describe(second, t0)}")
        by_task: dict[str, list[report.Execution]] = {}
        for run in runs:
            by_task.setdefault(run.task_id, []).append(run)
        for call in stuck:
            task_id = call.result.id
            lines.append(f"not terminal: task {task_id} key {call.key} called at +{call.t - t0:.3f}s; "
                         f"{len(by_task.get(task_id, []))} execution(s); message {self.whereabouts(task_id)}"
                         + ("; lost by Celery" if task_id in lost_ids else ""))
            lines.extend(f"    {line}" for line in self.log_lines(task_id))
        for key, value, pttl in locks_left:
            lines.append(f"lock left: {key} = {value} (pttl {pttl} ms)")
        for call in unfollowed:
            task = call.result.id if call.result is not None else "(a dropped call)"
            lines.append(f"not followed by an execution: task {task} ({call.outcome}) key {call.key} called at "
                         f"+{call.t - t0:.3f}s")
        shown: dict[str, int] = {}
        for line in lines[1:]:
            kind = line.split(":", 1)[0]
            shown[kind] = shown.get(kind, 0) + 1
            if line.startswith("    ") or shown[kind] <= SHOWN:
                print(line, flush=True)
        return lines

    def broker_messages(self) -> tuple[bytes, bytes]:
        """Every queued message, and every message delivered to a worker and not acknowledged yet."""
        broker = self.servers.broker.client(0)
        queued = b"".join(_bytes(item) for key in broker.scan_iter(match="celery*", _type="list")
                          for item in broker.lrange(key, 0, -1))
        return queued, b"".join(_bytes(item) for item in broker.hvals("unacked"))

    def restore_unacked(self) -> None:
        """Give the Redis broker's unacknowledged messages older than the visibility timeout back to their queues.

        What kombu's Redis transport does from a consumer's poll loop, done
        once more here: the restarted workers' loops may not get to it before
        the drain's deadline (a gevent worker's hub starved by computing
        tasks), and a message a killed worker took stays unacked until one does.
        """
        if self.servers.rabbit is not None:
            return  # RabbitMQ gives a closed connection's messages back itself
        from kombu import Connection

        try:
            with Connection(self.servers.broker_url,
                            transport_options={"visibility_timeout": VISIBILITY_TIMEOUT}) as connection:
                connection.default_channel.qos.restore_visible(num=10_000)
        except Exception as exc:  # the drain goes on: the workers' own restore may still come
            self.log(f"drain: could not restore unacked messages: {exc!r}")

    def in_broker(self) -> Optional[set[str]]:
        """The task ids of the messages the broker still has, queued or unacked; None where it cannot be read."""
        if self.servers.rabbit is not None:
            return None  # RabbitMQ's messages cannot be read without taking them
        queued, unacked = self.broker_messages()
        return {match.decode() for match in _TASK_ID.findall(queued + unacked)}

    def whereabouts(self, task_id: str) -> str:
        """Where the broker has the message: queued, delivered but unacked, or nowhere."""
        if self.servers.rabbit is not None:
            return "in RabbitMQ, or not (it cannot be read)"
        queued, unacked = self.broker_messages()
        where = [name for name, blob in (("queued", queued), ("delivered, unacked", unacked))
                 if task_id.encode() in blob]
        return " and ".join(where) if where else "not in the broker"

    def publish_failures(self) -> set[str]:
        """The task ids whose publishing failed in this process (the library's log says so)."""
        found = set()
        for line in _lines(self.directory / "publisher.log"):
            if "]: publish failed; queue lock" in line:
                found.add(line.split("[", 2)[2].split("]", 1)[0])
        return found

    def republished_last(self, task_id: str) -> Optional[float]:
        """When the library last published the call's message again, if no worker logged anything of it after."""
        lines = sorted((line.split("] ", 1)[0], line) for worker in self.workers
                       for line in _lines(worker.log_path) if task_id in line and line.startswith("[20"))
        if not lines or "deferred by" not in lines[-1][1]:
            return None
        stamp = lines[-1][0].lstrip("[").split(": ", 1)[0]
        return time.mktime(time.strptime(stamp.split(",")[0], "%Y-%m-%d %H:%M:%S")) + int(stamp.split(",")[1]) / 1000

    def log_lines(self, task_id: str, limit: int = 8) -> list[str]:
        found: list[str] = []
        for worker in self.workers:
            with open(worker.log_path, errors="replace") as log:
                found.extend(f"{worker.log_path.name}: {line.rstrip()}" for line in log if task_id in line)
        return found if len(found) <= limit else [*found[:limit // 2], "...", *found[-limit // 2:]]

    def write_files(self, records: list[dict[str, Any]], calls: list[Call],
                    states: dict[str, tuple[str, Optional[str]]], details: list[str]) -> None:
        with open(self.directory / "records.jsonl", "w") as out:
            out.writelines(json.dumps(record) + "\n" for record in records)
        with open(self.directory / "calls.jsonl", "w") as out:
            for call in calls:
                task_id = call.result.id if call.result is not None else None
                out.write(json.dumps({"t": call.t, "key": call.key, "seq": call.seq, "outcome": call.outcome,
                                      "task_id": task_id,
                                      "state": states.get(task_id or "", (None, None))[0],
                                      "error": call.error}) + "\n")
        (self.directory / "details.txt").write_text("\n".join(details) + "\n")
        (self.directory / "report.txt").write_text("\n".join(self.lines) + "\n")


#: A task id in a message (its headers, its properties): a UUID.
_TASK_ID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _lines(path: Path) -> list[str]:
    with open(path, errors="replace") as log:
        return log.read().splitlines()


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def shut_down(workers: list[SoakWorker]) -> None:
    for worker in workers:
        with contextlib.suppress(Exception):
            worker.terminate(30)


def main(argv: Optional[Sequence[str]] = None) -> int:
    plan = parse(argv)
    directory = Path(tempfile.mkdtemp(prefix="once-task-soak-"))
    log = FaultLog(directory / "faults.log")
    # The library's warnings in this process (refused calls) go to a log of
    # their own, beside the workers' logs, rather than between the figures.
    logging.basicConfig(filename=directory / "publisher.log", level=logging.INFO,
                        format="[%(asctime)s: %(levelname)s/%(threadName)s] %(name)s: %(message)s")
    status = 2
    servers: Optional[Servers] = None
    workers: list[SoakWorker] = []
    try:
        servers = Servers(plan.broker)
        env = servers.environment(HEARTBEAT_TIMEOUT, VISIBILITY_TIMEOUT, plan.policy, plan.body, plan.running_limit,
                                  plan.debounce, plan.window, UNIQUE_FOR, plan.throttle)
        os.environ.update(env)  # read by soak.app, here and in the workers
        workers = [SoakWorker(index, directory, env, plan.pool) for index in range(1, plan.workers + 1)]
        status = 0 if Soak(plan, servers, workers, log, directory).run() else 1
    except BaseException:
        traceback.print_exc()
        status = 2
    finally:
        # The calls' results unsubscribe from the result backend when they
        # are collected: let that happen while it still runs.
        gc.collect()
        shut_down(workers)
        if servers is not None:
            if status:
                with contextlib.suppress(Exception):
                    servers.locks.resume()
                    shutil.copytree(servers.locks.dir, directory / "lock-store")
            servers.stop()
    if status or plan.keep:
        print(f"logs, records and details kept in {directory}", flush=True)
    else:
        print(f"logs, records and details were in {directory} (removed: every check passed; --keep keeps them)",
              flush=True)
        shutil.rmtree(directory, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
