"""The demo: duplicate calls from many threads against a real Redis and a real worker.

``bash scripts/demo.sh`` runs it. It starts a redis-server of its own on a
free port, a Celery worker with two pool processes, and then:

1. fires 100 calls of ``send_invoice(42)`` and ``send_invoice(7)`` from 4
   threads at once, and counts how many were queued;
2. while invoice 42 is being sent, shows the lock keys and their TTLs, and
   sends a duplicate execution of it past ``apply_async`` (``send_task``): the
   worker rejects it with ``OnceTaskLocked``;
3. waits for the work to finish and shows that each invoice was sent once and
   no lock is left behind;
4. does the same with ``reindex_customer(42)``, whose duplicate executions
   wait (``running_lock_conflict="wait"``) instead of failing: at most one
   runs and one waits, nothing is rejected, and the last run starts after
   the last call that was queued.

The worker imports this module too (``celery -A examples.demo worker``), for
its app and task.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

import redis
from celery import Celery

from celery_once_task import OnceTask, OnceTaskLocked, OnceTaskUnlockBootStep, configure, setup_once_task_signals

PORT = int(os.environ.get("DEMO_REDIS_PORT", "0"))

app = Celery("demo", broker=f"redis://127.0.0.1:{PORT}/0", backend=f"redis://127.0.0.1:{PORT}/1")
configure(redis_url=f"redis://127.0.0.1:{PORT}/3", queue_lock_timeout=600, running_lock_timeout=300)
setup_once_task_signals()
app.steps["worker"].add(OnceTaskUnlockBootStep)

_sent = redis.Redis(port=PORT, db=4)


@app.task(base=OnceTask)
def send_invoice(customer_id: int) -> str:
    """Pretend to e-mail an invoice: it takes a while, and must never happen twice."""
    _sent.rpush("sent", customer_id)
    time.sleep(2)
    return f"invoice sent to customer {customer_id}"


@app.task(base=OnceTask, running_lock_conflict="wait")
def reindex_customer(customer_id: int) -> str:
    """Pretend to rebuild a search index from data that keeps changing: a call made while it runs needs a run after."""
    _sent.rpush("reindexed", f"{customer_id}:{time.time()}")
    time.sleep(1)
    return f"customer {customer_id} reindexed"


def main() -> int:
    redis_dir = tempfile.mkdtemp(prefix="once-task-demo-")
    port = _free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", redis_dir],
        stdout=subprocess.DEVNULL,
    )
    env = {**os.environ, "DEMO_REDIS_PORT": str(port)}
    worker = None
    try:
        _wait(lambda: _pings(port), "redis-server to start")
        print(f"redis-server started on port {port}")
        # Run the rest in a fresh interpreter that sees the port at import, as the worker does.
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "examples.demo", "worker", "-P", "prefork", "-c", "2",
             "-l", "warning", "-n", f"demo@{socket.gethostname()}", "--without-mingle", "--without-gossip"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        scenario_command = "from examples.demo import scenario; raise SystemExit(scenario())"
        return subprocess.call([sys.executable, "-c", scenario_command], env=env)
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        server.terminate()
        server.wait(10)
        shutil.rmtree(redis_dir, ignore_errors=True)


def scenario() -> int:
    locks = redis.Redis(port=PORT, db=3, decode_responses=True)
    _wait(lambda: app.control.ping(timeout=0.5), "the worker to start")
    print("worker started: prefork pool with 2 processes\n")

    print("1. 4 threads call send_invoice.delay(42) 25 times each, over half a second ...")
    results: list[object] = []
    barrier = threading.Barrier(4)

    def caller() -> None:
        barrier.wait()
        for _ in range(25):
            results.append(send_invoice.delay(42))
            time.sleep(0.02)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for thread in threads:
        thread.start()
    _wait(lambda: locks.exists(send_invoice.once_key((42,), {}, "running")), "invoice 42 to start")
    print("\n2. while invoice 42 is being sent, the locks in Redis:")
    for key in sorted(locks.scan_iter("once_task:*")):
        print(f"   {key}  TTL {locks.ttl(key)}s\n      owner {locks.get(key)}")
    for thread in threads:
        thread.join()
    queued = [result for result in results if result is not None]
    print(f"\n   calls made: {len(results)}, queued: {len(queued)}, "
          f"dropped at publish (a copy was already queued): {len(results) - len(queued)}")

    print("\n3. a duplicate execution sent past apply_async (app.send_task) while invoice 42 runs:")
    duplicate = app.send_task(send_invoice.name, args=[42])
    try:
        duplicate.get(timeout=20)
        print("   it ran -- this must not happen")
        return 1
    except OnceTaskLocked as exc:
        print(f"   rejected by the worker: OnceTaskLocked: {exc}")

    print("\n4. what became of the queued calls:")
    executed = rejected = 0
    for result in queued:
        try:
            print(f"   {result.id}: {result.get(timeout=30)}")  # type: ignore[attr-defined]
            executed += 1
        except OnceTaskLocked:
            rejected += 1
    print(f"   {rejected} others were picked up by the second pool process while invoice 42 ran, "
          "and rejected with OnceTaskLocked")
    sent = Counter(int(customer) for customer in _sent.lrange("sent", 0, -1))
    left = list(locks.scan_iter("once_task:*"))
    print(f"\n   executions of send_invoice(42): {sent[42]} (calls: {len(results) + 1}, queued: {len(queued)}, "
          f"executed: {executed}, rejected at execution: {rejected + 1})")
    print(f"   lock keys left: {left or 'none'}")
    ok = sent == Counter({42: 1}) and not left
    print("\nde-duplication held: invoice 42 was sent exactly once" if ok else "\nUNEXPECTED RESULT")
    return 0 if ok and waiting_scenario(locks) else 1


def waiting_scenario(locks: redis.Redis) -> bool:
    print('\n5. the same with reindex_customer(42), running_lock_conflict="wait": 4 threads call it 25 times each,')
    print("   over a second and a half, while it runs ...")
    calls: list[tuple[float, object]] = []
    barrier = threading.Barrier(4)

    def caller() -> None:
        barrier.wait()
        for _ in range(25):
            calls.append((time.time(), reindex_customer.delay(42)))
            time.sleep(0.06)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    queued = [(made, result) for made, result in calls if result is not None]
    outcomes: Counter[str] = Counter()
    for _, result in queued:
        try:
            result.get(timeout=60)  # type: ignore[attr-defined]
            outcomes["ran"] += 1
        except OnceTaskLocked:
            outcomes["rejected"] += 1
    runs = sorted(float(entry.split(b":")[1]) for entry in _sent.lrange("reindexed", 0, -1))
    last_call = max(made for made, _ in calls)
    _wait(lambda: not list(locks.scan_iter("once_task:*")), "the locks to be released")
    print(f"   calls made: {len(calls)}, queued: {len(queued)}, dropped: {len(calls) - len(queued)}")
    print(f"   queued calls that ran: {outcomes['ran']}, rejected: {outcomes['rejected']}; executions: {len(runs)}")
    print(f"   the last execution started {runs[-1] - last_call:.2f}s after the last call was made")
    ok = outcomes["rejected"] == 0 and runs[-1] >= last_call
    print("   every call was followed by a run that started after it; none was rejected" if ok
          else "   UNEXPECTED RESULT")
    return ok


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pings(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port).ping())
    except redis.ConnectionError:
        return False


def _wait(condition: object, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


if __name__ == "__main__":
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is required: run `bash scripts/demo.sh`, which installs it")
    sys.exit(main())
