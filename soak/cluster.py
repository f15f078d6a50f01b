"""What the soak runs on: its redis-servers, its RabbitMQ node, and its worker subprocesses.

* the lock store, kept with an append-only file (``appendfsync always``), so
  that a SIGKILL and a restart keep every lock it acknowledged;
* the broker and result backend: one redis-server for both, or with
  ``--broker amqp`` a RabbitMQ node of the soak's own (``tests.rabbitmq``)
  and the redis-server for the results;
* the records server, where the tasks record their executions; never faulted.

Workers are ``celery worker`` subprocesses running ``soak.app`` on the pool
the soak was given (two processes or threads; solo runs one task at a time).
Each keeps one log file across its restarts, in the soak's directory, each
start headed by a line with its pid.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from tests.rabbitmq import RabbitNode
from tests.support import ROOT, RedisServer


class Servers:
    """The soak's servers, each on free ports in a temp dir of its own."""

    def __init__(self, broker: str = "redis") -> None:
        self.locks = RedisServer(appendonly=True)
        #: The broker with ``--broker redis``; the result backend either way.
        self.broker = RedisServer()
        self.records = RedisServer()
        self.rabbit: Optional[RabbitNode] = None
        self.vhost = ""
        if broker == "amqp":
            self.rabbit = RabbitNode()
            self.vhost = self.rabbit.add_vhost("soak")

    @property
    def broker_url(self) -> str:
        return self.rabbit.url(self.vhost) if self.rabbit is not None else f"{self.broker.url}/0"

    def environment(self, heartbeat_timeout: int, visibility_timeout: int, policy: str, body: str,
                    running_limit: int = 1, debounce: float = 0, window: str = "",
                    unique_for: float = 0, throttle: str = "") -> dict[str, str]:
        """What ``soak.app`` reads."""
        return {
            "SOAK_BROKER_URL": self.broker_url,
            "SOAK_BACKEND_URL": f"{self.broker.url}/1",
            # Lock operations give up on a stalled store after a second, and
            # are retried by Celery's publish retry policy.
            "SOAK_LOCKS_URL": f"{self.locks.url}/0?socket_timeout=1&socket_connect_timeout=1",
            "SOAK_RECORDS_URL": f"{self.records.url}/0",
            "SOAK_HEARTBEAT_TIMEOUT": str(heartbeat_timeout),
            "SOAK_VISIBILITY_TIMEOUT": str(visibility_timeout),
            "SOAK_POLICY": policy,
            "SOAK_BODY": body,
            "SOAK_RUNNING_LIMIT": str(running_limit),
            "SOAK_DEBOUNCE": str(debounce),
            "SOAK_WINDOW": window,
            "SOAK_UNIQUE_FOR": str(unique_for),
            "SOAK_THROTTLE": throttle,
        }

    def stop(self) -> None:
        for server in (self.locks, self.broker, self.records):
            try:
                server.stop()
            except Exception as exc:  # the others must stop all the same
                print(f"redis-server on port {server.port} did not stop: {exc}", file=sys.stderr)
        if self.rabbit is not None:
            try:
                self.rabbit.stop()
            except Exception as exc:
                print(f"RabbitMQ node {self.rabbit.name} did not stop: {exc}", file=sys.stderr)


class SoakWorker:
    """One ``celery worker`` of the soak, which can be killed and started again under the same node name."""

    def __init__(self, index: int, log_dir: Path, env: dict[str, str], pool: str = "prefork") -> None:
        self.name = f"soak{index}@{socket.gethostname()}"
        self.pool = pool
        self.log_path = log_dir / f"worker-soak{index}.log"
        self.env = {**os.environ, **env}
        self.process: Optional[subprocess.Popen[bytes]] = None
        self._log_start = 0
        self.starts = 0

    def start(self) -> None:
        with open(self.log_path, "a") as log:
            self._log_start = log.tell()
            log.write(f"=== soak: start {self.starts + 1} of {self.name} at {time.time():.3f}\n")
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "soak.app", "worker", "-P", self.pool,
                 "-c", "1" if self.pool == "solo" else "2",
                 "-n", self.name, "-l", "info", "--without-mingle", "--without-gossip", "--without-heartbeat"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        self.starts += 1

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ready(self) -> bool:
        """Whether the current start logged "ready."."""
        if not self.alive():
            return False
        with open(self.log_path, "rb") as log:
            log.seek(self._log_start)
            return b"ready." in log.read()

    def children(self) -> list[int]:
        """The pool processes of the current start."""
        if self.process is None:
            return []
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def kill(self) -> list[int]:
        """SIGKILL the main process; return the pids killed with it (its pool children die with it)."""
        assert self.process is not None
        pids = [self.process.pid, *self.children()]
        self.process.kill()
        self.process.wait(10)
        return pids

    def terminate(self, timeout: float) -> list[int]:
        """Warm shutdown; SIGKILL after ``timeout``. Return the pids killed (none if it exited by itself)."""
        if not self.alive():
            return []
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return self.kill()
        return []
