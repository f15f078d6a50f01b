"""Test support: a private redis-server, worker subprocesses, and waiting for conditions."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import redis

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``condition`` until it returns a true value; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


class RedisServer:
    """A redis-server of the test session's own, on a free port in a temp dir."""

    def __init__(self, port: Optional[int] = None, binary: Optional[str] = None, *, appendonly: bool = False) -> None:
        """``binary``: the server to run (default: $ONCE_TEST_SERVER_BINARY, else redis-server on PATH)."""
        binary = server_binary(binary)
        self.binary = binary
        self.port = port or free_port()
        self.appendonly = appendonly
        self.dir = tempfile.mkdtemp(prefix="once-task-redis-")
        self.url = f"redis://127.0.0.1:{self.port}"
        self.start()

    def start(self) -> None:
        """Start the server (again), on the same port, with the data it kept (with ``appendonly``)."""
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence,
             "--dir", self.dir, "--databases", "16"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        client = redis.Redis(port=self.port)
        wait_until(lambda: _pings(client), timeout=10, what=f"{self.binary} to answer PING")

    def client(self, db: int, **options: Any) -> redis.Redis:
        return redis.Redis(port=self.port, db=db, **options)

    def kill(self) -> None:
        """SIGKILL: the server is gone at once, with what it wrote to its append-only file."""
        self.process.kill()
        self.process.wait(10)

    def pause(self) -> None:
        """SIGSTOP: connections stay open, commands sent meanwhile run after ``resume``."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.resume()
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def server_binary(binary: Optional[str] = None) -> str:
    """The server the tests run: ``binary``, else $ONCE_TEST_SERVER_BINARY (e.g. a valkey-server), else redis-server."""
    name = binary or os.environ.get("ONCE_TEST_SERVER_BINARY") or "redis-server"
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name} is not installed: run `bash scripts/test.sh` (it installs redis-server) "
            "or `apt-get install -y redis-server`"
        )
    return path


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


class Worker:
    """A ``celery worker`` subprocess running ``tests.worker_app``."""

    def __init__(
        self,
        port: int,
        name: str,
        pool: str = "prefork",
        concurrency: int = 2,
        queues: str = "celery",
        extra_args: tuple[str, ...] = (),
        env: Optional[dict[str, str]] = None,
        app: str = "tests.worker_app",
    ) -> None:
        self.name = f"{name}@{socket.gethostname()}"
        self.log_path = Path(tempfile.mkstemp(prefix=f"worker-{name}-", suffix=".log")[1])
        environment = {**os.environ, "ONCE_TEST_REDIS_PORT": str(port), **(env or {})}
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", app, "worker", "-P", pool, "-c", str(concurrency),
             "-n", self.name, "-Q", queues, "-l", "info", "--without-mingle", "--without-gossip",
             "--without-heartbeat", *extra_args],
            cwd=ROOT, env=environment, stdout=self.log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 40.0) -> Worker:
        wait_until(lambda: self.alive() and "ready." in self.read_log(), timeout=timeout,
                   what=f"worker {self.name} to be ready; log:\n{self.read_log()[-3000:]}")
        return self

    def alive(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"worker {self.name} exited; log:\n{self.read_log()[-3000:]}")
        return True

    def read_log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def child_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


@contextlib.contextmanager
def running_worker(port: int, name: str, **kwargs: Any) -> Iterator[Worker]:
    worker = Worker(port, name, **kwargs)
    try:
        yield worker.wait_ready()
    finally:
        worker.stop()


@contextlib.contextmanager
def gated_run(task: Any, recs: redis.Redis, tag: str, timeout: float = 30) -> Iterator[Any]:
    """``task(tag)`` running on a worker, held at its gate, while the block runs; then let it finish."""
    result = task.delay(tag)
    wait_until(lambda: events(recs, tag, "start"), what=f"{task.name}({tag}) to start on the worker")
    try:
        yield result
    finally:
        recs.rpush(f"gate:{tag}", 1)
        result.get(timeout=timeout)
        recs.delete(f"gate:{tag}")  # in case the test opened the gate too


def started(recs: redis.Redis, tag: str, count: int = 1) -> list[dict[str, Any]]:
    """Wait until ``count`` executions recorded under ``tag`` have started; their start records."""
    return wait_until(lambda: len(events(recs, tag, "start")) >= count and events(recs, tag, "start"),
                      what=f"{count} start(s) of {tag}")


def lock_key_of(task: Any, lock_type: str, *args: Any) -> str:
    """The key of ``task(*args)``'s lock of ``lock_type``."""
    return str(task.once_key(args, {}, lock_type))


def is_waiting_copy(locks: Any, task: Any, tag: str, task_id: str) -> bool:
    """Whether ``task_id`` is the key's waiting copy: it holds the queue lock and left its message."""
    entry = locks.get(lock_key_of(task, "waiting", tag)) or b""
    holder = locks.get(lock_key_of(task, "queue", tag))
    return holder == task_id.encode() and entry.startswith(task_id.encode() + b"\x1f")


def records(client: redis.Redis, tag: str) -> list[dict[str, Any]]:
    return [json.loads(item) for item in client.lrange(f"records:{tag}", 0, -1)]


def events(client: redis.Redis, tag: str, event: str) -> list[dict[str, Any]]:
    return [item for item in records(client, tag) if item["event"] == event]


def decoded(reply: Any) -> Any:
    """A script's reply with its strings decoded."""
    if isinstance(reply, bytes):
        return reply.decode()
    if isinstance(reply, list):
        return [decoded(item) for item in reply]
    return reply


def run_script(client: redis.Redis, script: Any, key: str, *args: str | int, more_keys: Sequence[str] = ()) -> Any:
    """The reply of ``script`` on KEYS ``key, *more_keys`` with ARGV ``args``, run as the library runs it."""
    from celery_once_task.store import scripts

    return decoded(scripts.run(client, [scripts.Call(script, key, args, more_keys)])[0])
