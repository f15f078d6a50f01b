"""Private redis-servers for the benchmarks, and a description of the machine they run on.

Every server is started here, on a free port, with its files in a temp dir,
and stopped at the end; the benchmarks never write to a Redis they did not
start (and never to the one on port 6379).
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server of the benchmark's own: no persistence, 16 databases."""

    def __init__(self, unixsocket: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed: run 'sudo apt-get install -y redis-server'")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="once-task-bench-redis-")
        #: The unix socket it also listens on, in its temp dir (if asked for).
        self.unixsocket = os.path.join(self.dir, "redis.sock") if unixsocket else None
        socket_args = ["--unixsocket", self.unixsocket, "--unixsocketperm", "700"] if self.unixsocket else []
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--databases", "16", *socket_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        self.url = f"redis://127.0.0.1:{self.port}"
        client = self.client(0)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.02)
        client.close()

    def client(self, db: int) -> redis.Redis:
        return redis.Redis(port=self.port, db=db)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _installed(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def machine(server: RedisServer) -> dict[str, Any]:
    """What the figures depend on: CPUs, load, and the versions of everything measured."""
    model, virtual = "unknown", False
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    # The CPU flag a hypervisor sets for its guests.
                    virtual = virtual or "hypervisor" in line.split(":", 1)[1].split()
    except OSError:
        pass
    info = server.client(0).info("server")
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "virtual": virtual,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "celery": version("celery"),
        "kombu": version("kombu"),
        "redis_py": version("redis"),
        "hiredis": _installed("hiredis"),
        "redis_server": info["redis_version"],
        "celery_once_task": version("celery-once-task"),
        "loadavg_start": os.getloadavg(),
    }
