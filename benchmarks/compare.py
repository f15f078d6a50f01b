"""(g) every implementation side by side: plain Celery, this project, its 1.0.0 release, celery_once,
celery-singleton, and this project and plain Celery with hiredis and a unix socket; and, on request,
this project at an earlier commit of its own (``--compare --against REF``, see ``against_variant``).

Each variant runs in its own virtualenv (made by ``scripts/bench.sh``): a
driver process (``benchmarks.driver``) publishes, and Celery worker
subprocesses run the tasks, all with the app of ``benchmarks.peer_app``. One
redis-server of the benchmark's own, listening on a TCP port and on a unix
socket in its temp dir, is the broker (database 0) and the lock store (one
database per variant), so every variant talks to the same server.

Per variant, the same paths:

publish     ``noop.delay()`` with new arguments
duplicate   ``noop.delay()`` with the arguments of a call already queued (lock libraries only)
solo        worker throughput, one worker process (``-P solo``)
prefork     worker throughput, ``-P prefork -c 2``

The variants take turns round by round, the order rotating, as in the other
parts. Round trips to the lock store are counted in the driver per call and in
the solo worker per task (``counting.count_endpoint``). After each publishing
round the queued calls and their locks are counted and deleted; after each
drain the lock store must become empty: a lock left behind is reported.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import redis

from .servers import RedisServer
from .stats import median, percentile, rotation

ROOT = Path(__file__).resolve().parent.parent
RECORDS_DB = 15
DISTRIBUTIONS = ("celery", "kombu", "redis", "hiredis", "celery-once-task", "celery_once", "celery-singleton")
EDGE = 16  # as peer_app.EDGE (not imported: it needs the variant's environment)


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    kind: str  # peer_app.KIND
    venv_suffix: str  # the virtualenv: .venv-bench + this
    unix: bool = False  # broker and lock store over the unix socket (else TCP)
    baseline: str = "plain"  # the plain Celery variant with the same client stack

    @property
    def locks(self) -> bool:
        return self.kind != "plain"


VARIANTS = (
    Variant("plain", "plain Celery `Task`", "plain", ""),
    Variant("once-task", "`OnceTask`, this project", "once-task", ""),
    Variant("once-task-1.0.0", "celery-once-task 1.0.0 (PyPI)", "once-task", "-once-task-1.0.0"),
    Variant("celery-once", "celery_once 3.0.1 `QueueOnce`", "celery-once", "-celery-once"),
    Variant("singleton", "celery-singleton 0.3.1 `Singleton`", "singleton", "-celery-singleton"),
    Variant("plain+hiredis+unix", "plain Celery, hiredis, unix socket", "plain", "-hiredis", True,
            "plain+hiredis+unix"),
    Variant("once-task+hiredis", "`OnceTask`, hiredis, TCP", "once-task", "-hiredis"),
    Variant("once-task+hiredis+unix", "`OnceTask`, hiredis, unix socket", "once-task", "-hiredis", True,
            "plain+hiredis+unix"),
)


#: The virtualenv of ``--against REF`` (``.venv-bench-against``), and the file in it that names the commit installed.
AGAINST_SUFFIX = "-against"
AGAINST_MARK = "bench-against-commit"


def against_variant(ref: str) -> Variant:
    """This project at git ref ``ref``, installed by ``scripts/bench.sh --against REF`` in a virtualenv of its own."""
    return Variant(f"once-task@{ref}", f"`OnceTask` at {ref} (this repository)", "once-task", AGAINST_SUFFIX)


def variants(against: str | None = None) -> tuple[Variant, ...]:
    """The variants that can be measured: ``VARIANTS``, and this project at ``against`` right after ``once-task``."""
    if not against:
        return VARIANTS
    out: list[Variant] = []
    for v in VARIANTS:
        out.append(v)
        if v.name == "once-task":
            out.append(against_variant(against))
    return tuple(out)


def check_against(ref: str) -> str:
    """The commit ``ref`` names, after checking that ``.venv-bench-against`` holds that commit's tree."""
    found = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=ROOT,
                           capture_output=True, text=True)
    if found.returncode != 0:
        raise SystemExit(f"--against {ref}: not a commit of this repository")
    commit = found.stdout.strip()
    mark = Path(f"{sys.prefix}{AGAINST_SUFFIX}") / AGAINST_MARK
    installed = mark.read_text().strip() if mark.exists() else "nothing"
    if installed != commit:
        raise SystemExit(f"--against {ref}: {mark.parent} holds {installed}, not {commit}; "
                         f"run it through `bash scripts/bench.sh --compare --against {ref}`, which installs it")
    return commit


#: The keys each kind of library keeps its locks under (a worker's heartbeat key is not a lock).
LOCK_PATTERNS = {
    "plain": (),
    "once-task": ("once_task:*:queue", "once_task:*:running"),
    "celery-once": ("qo_*",),
    "singleton": ("SINGLETONLOCK_*",),
}


def held(locks: redis.Redis, kind: str) -> int:
    """How many locks of library ``kind`` the lock store holds."""
    return sum(1 for pattern in LOCK_PATTERNS[kind] for _ in locks.scan_iter(match=pattern, count=1000))


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


class Setup:
    """Where one variant runs: its interpreter, its lock database, its URLs and environment."""

    def __init__(self, variant: Variant, db: int, server: RedisServer) -> None:
        self.variant = variant
        self.db = db
        self.python = Path(f"{sys.prefix}{variant.venv_suffix}") / "bin" / "python"
        records = f"redis://127.0.0.1:{server.port}/{RECORDS_DB}"
        if variant.unix:
            sock = server.unixsocket
            broker, endpoint = f"redis+socket://{sock}", sock
            lock = f"redis+socket://{sock}?db={db}" if variant.kind == "celery-once" else f"unix://{sock}?db={db}"
        else:
            broker, endpoint = f"redis://127.0.0.1:{server.port}/0", str(server.port)
            lock = f"redis://127.0.0.1:{server.port}/{db}"
        self.env = {
            **os.environ, "BENCH_KIND": variant.kind, "BENCH_VARIANT": variant.name, "BENCH_BROKER_URL": broker,
            "BENCH_LOCK_URL": lock, "BENCH_LOCK_DB": str(db), "BENCH_LOCK_ENDPOINT": endpoint,
            "BENCH_RECORDS_URL": records, "PYTHONPATH": str(ROOT),
        }

    @property
    def available(self) -> bool:
        return self.python.exists()

    def versions(self) -> dict[str, str]:
        """The releases installed in the variant's virtualenv that its figures depend on."""
        script = (
            "import json, importlib.metadata as m\n"
            "out = {}\n"
            f"for name in {DISTRIBUTIONS!r}:\n"
            "    try: out[name] = m.version(name)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(out))"
        )
        found: dict[str, str] = json.loads(subprocess.check_output([str(self.python), "-c", script], text=True))
        return found


class Driver:
    """``python -m benchmarks.driver`` in the variant's virtualenv, answering one command at a time."""

    def __init__(self, setup: Setup) -> None:
        self.process = subprocess.Popen(
            [str(setup.python), "-m", "benchmarks.driver"], cwd=ROOT, env=setup.env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )

    def ask(self, op: str, **command: Any) -> dict[str, Any]:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps({"op": op, **command}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"driver exited ({self.process.wait()}) on {op}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def stop(self) -> None:
        assert self.process.stdin
        try:
            self.process.stdin.write('{"op": "quit"}\n')
            self.process.stdin.close()
        except BrokenPipeError:
            pass
        self.process.wait(30)


class Worker:
    """``celery -A benchmarks.peer_app worker`` in the variant's virtualenv, consuming a queue of its own."""

    def __init__(self, setup: Setup, pool: str, concurrency: int) -> None:
        # A git ref in a variant's name may hold '@' or '/': not in a node name.
        slug = re.sub(r"[^A-Za-z0-9_.+-]", "-", setup.variant.name)
        self.queue = f"bench.{slug}.{pool}"
        self.name = f"bench-{slug}-{pool}@{socket.gethostname()}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="bench-worker-", suffix=".log")  # noqa: SIM115
        self.process = subprocess.Popen(
            [str(setup.python), "-m", "celery", "-A", "benchmarks.peer_app", "worker", "-P", pool,
             "-c", str(concurrency), "-n", self.name, "-Q", self.queue, "-l", "warning",
             "--without-mingle", "--without-gossip", "--without-heartbeat"],
            cwd=ROOT, env=setup.env, stdout=self.log, stderr=subprocess.STDOUT,
        )

    def ready(self, records: redis.Redis) -> bool:
        if self.process.poll() is not None:
            self.log.seek(0)
            raise RuntimeError(f"worker {self.name} exited:\n{self.log.read()[-3000:]}")
        return self.name.encode() in records.lrange("ready", 0, -1)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


@dataclass
class CompareResult:
    variants: list[Variant]
    #: per variant and path (publish, duplicate): each round's median latency in µs, and every call's.
    round_medians: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    latencies: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    #: per variant and path: the lock-store round trips of every call (publish, duplicate) or task (solo).
    trips: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    #: per variant and pool: each round's tasks per second.
    rates: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    #: per variant: locks found after drains (should be none), and the checks of the publishing rounds.
    locks_left: dict[str, int] = field(default_factory=dict)
    publish_checks: dict[str, list[str]] = field(default_factory=dict)
    concurrency: dict[str, int] = field(default_factory=dict)
    versions: dict[str, dict[str, str]] = field(default_factory=dict)
    #: with ``--against REF``: the variant of this project at REF, and the commit REF names.
    against: str | None = None
    against_commit: str | None = None

    def _paired(self, name: str, base_name: str, path: str, base_path: str) -> list[float]:
        """Round by round, ``name``'s figure on ``path`` over ``base_name``'s on ``base_path``."""
        if path in ("publish", "duplicate"):
            return [a / b for a, b in zip(self.round_medians[name][path], self.round_medians[base_name][base_path])]
        return [a / b for a, b in zip(self.rates[name][path], self.rates[base_name][base_path])]

    def against_ratios(self, name: str = "once-task") -> dict[str, dict[str, float]]:
        """Per path, ``name`` over the same path of this project at ``--against REF``: the ratio of the medians,
        the median of the ratios paired round by round, and those paired ratios' quartiles (their spread)."""
        ref = self.against
        if not ref or name not in self.round_medians or ref not in self.round_medians:
            return {}
        out: dict[str, dict[str, float]] = {}
        for path in ("publish", "duplicate"):
            if path in self.round_medians[name] and path in self.round_medians[ref]:
                of_medians = median(self.round_medians[name][path]) / median(self.round_medians[ref][path])
                paired = self._paired(name, ref, path, path)
                out[path] = {"ratio": of_medians, "paired": median(paired), "paired_q1": percentile(paired, 25),
                             "paired_q3": percentile(paired, 75), "rounds": len(paired)}
        for pool in self.rates.get(name, {}):
            if self.rates[name][pool] and self.rates.get(ref, {}).get(pool):
                of_medians = median(self.rates[name][pool]) / median(self.rates[ref][pool])
                paired = self._paired(name, ref, pool, pool)
                out[pool] = {"ratio": of_medians, "paired": median(paired), "paired_q1": percentile(paired, 25),
                             "paired_q3": percentile(paired, 75), "rounds": len(paired)}
        return out

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"variants": {}, "concurrency": self.concurrency}
        for v in self.variants:
            entry: dict[str, Any] = {"label": v.label, "kind": v.kind, "unix": v.unix,
                                     "hiredis": "hiredis" in v.venv_suffix, "baseline": v.baseline}
            for path, medians in self.round_medians.get(v.name, {}).items():
                every = self.latencies[v.name][path]
                entry[path] = {"min_us": min(medians), "median_us": median(medians), "max_us": max(medians),
                               "calls": len(every), "median_call_us": median(every)}
            for pool, rates in self.rates.get(v.name, {}).items():
                entry[pool] = {"min_per_s": min(rates), "median_per_s": median(rates), "max_per_s": max(rates),
                               "rounds": len(rates)}
            entry["round_trips"] = {path: median(t) for path, t in self.trips.get(v.name, {}).items() if t}
            entry["round_trips_max"] = {path: max(t) for path, t in self.trips.get(v.name, {}).items() if t}
            entry["locks_left"] = self.locks_left.get(v.name, 0)
            entry["publish_checks"] = self.publish_checks.get(v.name, [])
            entry["versions"] = self.versions.get(v.name, {})
            out["variants"][v.name] = entry
        # Ratios to plain Celery of the same run: of medians, and paired round by round.
        for v in self.variants:
            entry = out["variants"][v.name]
            for base_name in {"plain", v.baseline}:
                base = out["variants"].get(base_name)
                if base is None or "publish" not in base:
                    continue
                ratios: dict[str, float] = {}
                for path in ("publish", "duplicate"):
                    if path in entry:
                        ratios[path] = entry[path]["median_us"] / base["publish"]["median_us"]
                        ratios[f"{path}_paired"] = median([
                            a / b for a, b in zip(self.round_medians[v.name][path],
                                                  self.round_medians[base_name]["publish"])])
                for pool in self.rates.get(v.name, {}):
                    if pool in base:
                        ratios[pool] = entry[pool]["median_per_s"] / base[pool]["median_per_s"]
                        ratios[f"{pool}_paired"] = median([
                            a / b for a, b in zip(self.rates[v.name][pool], self.rates[base_name][pool])])
                entry[f"ratio_to_{base_name}"] = ratios
        if self.against and self.against in out["variants"] and "once-task" in out["variants"]:
            out["against"] = {"variant": self.against, "commit": self.against_commit, "of": "once-task",
                              "ratios": self.against_ratios("once-task")}
        return out


def _publish_round(setup: Setup, driver: Driver, run: str, calls: int, broker: redis.Redis,
                   locks: redis.Redis, result: CompareResult) -> None:
    name = setup.variant.name
    answer = driver.ask("publish", run=run, calls=calls, duplicates=setup.variant.locks)
    for path in ("publish", "duplicate") if setup.variant.locks else ("publish",):
        times = answer[f"{path}_us"]
        result.latencies.setdefault(name, {}).setdefault(path, []).extend(times)
        result.round_medians.setdefault(name, {}).setdefault(path, []).append(median(times))
        result.trips.setdefault(name, {}).setdefault(path, []).extend(answer[f"{path}_trips"])
    # Every new call was published, every duplicate dropped, one lock per published call.
    queue = f"bench.{name}.publish"
    expected = calls + 1 if setup.variant.locks else calls
    published, holding = int(broker.llen(queue)), held(locks, setup.variant.kind)
    if published != expected or holding != (expected if setup.variant.locks else 0):
        result.publish_checks.setdefault(name, []).append(
            f"{run}: {published} published, {holding} locks held, expected {expected}")
    broker.delete(queue)
    for pattern in LOCK_PATTERNS[setup.variant.kind]:
        for key in locks.scan_iter(match=pattern, count=1000):
            locks.delete(key)


def _drain(setup: Setup, driver: Driver, worker: Worker, run: str, n: int, broker: redis.Redis,
           locks: redis.Redis, records: redis.Redis, result: CompareResult, count_trips: bool) -> float:
    """Have ``worker`` run ``n`` tasks from a full queue; return tasks per second."""
    key, staging = f"done:{run}", f"bench.{setup.variant.name}.staging"
    records.delete(key)
    driver.ask("stage", run=run, n=n, queue=staging)
    if broker.llen(staging) != n:
        raise RuntimeError(f"{run}: {broker.llen(staging)} messages staged, expected {n}")
    broker.rename(staging, worker.queue)
    wait_for(lambda: records.llen(key) >= min(n, 2 * EDGE), 300, f"{run} to be done")
    done = [item.split() for item in records.lrange(key, 0, -1)]
    times = {int(i): float(t) for i, t, _ in done}
    # A prefork pool may finish tasks slightly out of order: the earliest and latest finish are among the edges.
    started = min(t for i, t in times.items() if i < EDGE)
    ended = max(t for i, t in times.items() if i >= n - EDGE)
    if count_trips:
        first, last = min(times), max(times)
        # A solo worker runs one task after another: between two bodies lie whole tasks' round trips.
        trips = {int(i): int(c) for i, _, c in done}
        result.trips.setdefault(setup.variant.name, {}).setdefault("solo_task", []).append(
            (trips[last] - trips[first]) / (last - first))
    # The locks of the drain are released once its last task is over; a lock left behind is counted.
    kind = setup.variant.kind
    try:
        wait_for(lambda: held(locks, kind) == 0, 5, f"{run}: locks to be released")
    except RuntimeError:
        result.locks_left[setup.variant.name] = result.locks_left.get(setup.variant.name, 0) + held(locks, kind)
        for pattern in LOCK_PATTERNS[kind]:
            for key in locks.scan_iter(match=pattern, count=1000):
                locks.delete(key)
    wait_for(lambda: broker.llen(worker.queue) == 0, 30, f"{run}: queue to be empty")
    records.delete(key)
    return (n - 1) / (ended - started)


def run(publish_rounds: int, publish_calls: int, throughput_rounds: int, throughput_n: int,
        pools: dict[str, int], log: Callable[[str], None], only: Sequence[str] = (),
        against: str | None = None) -> CompareResult:
    """Measure every variant (or the ones named in ``only``) side by side; with ``against``, also this
    project at that git ref (``once-task@REF``, installed by ``scripts/bench.sh --against REF``)."""
    candidates = variants(against)
    unknown = set(only) - {v.name for v in candidates}
    if unknown:
        raise ValueError(f"no such variant: {', '.join(sorted(unknown))} (variants: "
                         f"{', '.join(v.name for v in candidates)})")
    if against and only and against_variant(against).name not in only:
        against = None  # not measured: its virtualenv need not hold it
    against_commit = check_against(against) if against else None
    server = RedisServer(unixsocket=True)
    try:
        setups = [Setup(v, db, server) for db, v in enumerate(candidates, start=1) if not only or v.name in only]
        for s in setups:
            if not s.available:
                log(f"    {s.variant.name}: no virtualenv at {s.python.parent.parent}, left out")
        setups = [s for s in setups if s.available]
        result = CompareResult(variants=[s.variant for s in setups], concurrency=dict(pools),
                               versions={s.variant.name: s.versions() for s in setups},
                               against=against_variant(against).name if against else None,
                               against_commit=against_commit)
        broker, records = server.client(0), server.client(RECORDS_DB)
        locks = {s.variant.name: server.client(s.db) for s in setups}
        drivers = {s.variant.name: Driver(s) for s in setups}
        names = [s.variant.name for s in setups]
        by_name = {s.variant.name: s for s in setups}
        try:
            for name in names:  # warm-up: connections open, queues declared, code paths hot
                _publish_round(by_name[name], drivers[name], "warm", 100, broker, locks[name], CompareResult([]))
            log(f"    publishing: {publish_rounds} rounds x {publish_calls} calls per variant and path")
            for r in range(publish_rounds):
                for name in rotation(names, r):
                    _publish_round(by_name[name], drivers[name], f"p{r}", publish_calls, broker, locks[name],
                                   result)
            for pool, concurrency in pools.items():
                log(f"    {pool} workers (concurrency {concurrency}): {throughput_rounds} drains x "
                    f"{throughput_n} tasks per variant")
                workers = {name: Worker(by_name[name], pool, concurrency) for name in names}
                try:
                    starting = list(workers.values())
                    wait_for(lambda: all(w.ready(records) for w in starting), 120, f"{pool} workers")  # noqa: B023
                    for name in names:
                        result.rates.setdefault(name, {})[pool] = []
                        _drain(by_name[name], drivers[name], workers[name], f"warm-{pool}-{name}",
                               min(throughput_n, 300), broker, locks[name], records, CompareResult([]), False)
                    for r in range(throughput_rounds):
                        for name in rotation(names, r):
                            rate = _drain(by_name[name], drivers[name], workers[name], f"{pool}-{name}-{r}",
                                          throughput_n, broker, locks[name], records, result, pool == "solo")
                            result.rates[name][pool].append(rate)
                finally:
                    for w in workers.values():
                        w.stop()
        finally:
            for d in drivers.values():
                d.stop()
    finally:
        server.stop()
    return result


def throughput_summary(summary: dict[str, Any], n: int) -> dict[str, Any]:
    """Plain Celery against this project, in the shape of the targets of ``report`` (part (c))."""
    plain, once = summary["variants"]["plain"], summary["variants"]["once-task"]
    ratios = once["ratio_to_plain"]
    out: dict[str, Any] = {}
    for pool, concurrency in summary["concurrency"].items():
        out[pool] = {
            "concurrency": concurrency, "plain_per_s": plain[pool]["median_per_s"],
            "once_per_s": once[pool]["median_per_s"], "ratio": ratios[pool], "ratio_paired": ratios[f"{pool}_paired"],
            "rounds": plain[pool]["rounds"], "n": n,
        }
    return out
