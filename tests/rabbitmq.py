"""A RabbitMQ node of the tests' own: free ports, a temp dir, a virtual host per run, and its faults.

The node runs beside any RabbitMQ service the machine has (on 5672, say),
under a name of its own (``once<port>@localhost``); nothing here talks to
another node. Debian's ``rabbitmq-server`` runs as the ``rabbitmq`` user
(its Erlang cookie is in that user's home), so when the tests run as root
the node and ``rabbitmqctl`` run as that user, in a directory it owns.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from tests.support import free_port, wait_until

#: Debian keeps the real scripts here; /usr/sbin holds wrappers that switch user through su.
_DEBIAN_BIN = Path("/usr/lib/rabbitmq/bin")


def rabbitmq_binary(name: str) -> str:
    """``rabbitmq-server`` or ``rabbitmqctl``: Debian's own script, else the one on PATH."""
    debian = _DEBIAN_BIN / name
    if debian.exists():
        return str(debian)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(
            f"{name} is not installed: run `bash scripts/test.sh` (it installs rabbitmq-server) "
            "or `apt-get install -y rabbitmq-server`"
        )
    return found


class RabbitNode:
    """A RabbitMQ node on free ports; ``url(vhost)`` is the broker URL of one of its virtual hosts."""

    def __init__(self) -> None:
        self.port = free_port()
        self.name = f"once{self.port}@localhost"
        self.dir = Path(tempfile.mkdtemp(prefix="once-task-rabbitmq-"))
        self._user: Optional[pwd.struct_passwd] = None
        if os.geteuid() == 0:
            try:
                self._user = pwd.getpwnam("rabbitmq")
            except KeyError:
                self._user = None
        (self.dir / "mnesia").mkdir()
        (self.dir / "log").mkdir()
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        if self._user is not None:
            for path in (self.dir, *self.dir.rglob("*")):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": self._user.pw_dir if self._user is not None else os.environ.get("HOME", str(self.dir)),
            "LANG": "C.UTF-8",
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.dir / "rabbitmq.pid"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
        }
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.start()

    def _run_as(self) -> dict[str, Any]:
        return {"user": self._user.pw_uid, "group": self._user.pw_gid} if self._user is not None else {}

    def start(self, timeout: float = 90.0) -> None:
        """Start the node (again, with the queues and messages it kept) and wait until it takes connections."""
        with open(self.dir / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                [rabbitmq_binary("rabbitmq-server")], env=self.env, cwd=self.dir, stdout=log,
                stderr=subprocess.STDOUT, **self._run_as(),
            )
        wait_until(self._accepts, timeout=timeout, interval=0.2,
                   what=f"RabbitMQ node {self.name} to listen on {self.port}; log:\n{self.log_tail()}")
        self.ctl("await_startup", timeout=timeout)

    def _accepts(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"RabbitMQ node {self.name} exited; log:\n{self.log_tail()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), 0.5).close()
        except OSError:
            return False
        return True

    def log_tail(self) -> str:
        path = self.dir / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """``rabbitmqctl -n <this node> args``; its output."""
        result = subprocess.run([rabbitmq_binary("rabbitmqctl"), "-n", self.name, *args], env=self.env,
                                cwd=self.dir, capture_output=True, text=True, timeout=timeout, **self._run_as())
        if result.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stdout}{result.stderr}")
        return result.stdout

    def add_vhost(self, prefix: str = "once") -> str:
        """A virtual host of its own, open to guest; its name."""
        vhost = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.ctl("add_vhost", vhost)
        self.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        return vhost

    def url(self, vhost: str) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{vhost}"

    def close_connections(self, vhost: str, why: str = "closed by the tests") -> None:
        """Close every client connection to ``vhost``: the broker side of a network failure."""
        self.ctl("close_all_connections", "-p", vhost, why)

    def connections(self, vhost: str) -> int:
        out = self.ctl("list_connections", "-q", "--no-table-headers", "vhost")
        return sum(1 for line in out.splitlines() if line.strip() == vhost)

    def restart(self) -> float:
        """Stop the node as its operator would and start it again; return when it stopped (time.time())."""
        self.stop_node()
        stopped = time.time()
        self.start()
        return stopped

    def stop_node(self) -> None:
        self.ctl("stop")
        if self.process is not None:
            self.process.wait(60)

    def stop(self) -> None:
        try:
            if self.process is not None and self.process.poll() is None:
                try:
                    self.stop_node()
                except Exception:
                    self.process.kill()
                    self.process.wait(10)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
