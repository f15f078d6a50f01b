"""Locks on a TLS-only server that verifies the client's certificate (certificates made by openssl)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from celery_once_task.store.connection import make_client
from tests.lock_scenarios import (
    duplicate_call_is_dropped,
    duplicate_execution_is_rejected,
    new_tag,
    publishing_to,
    topology_worker,
)
from tests.support import RedisServer, Worker
from tests.topologies import TlsServer


@pytest.fixture(scope="module")
def tls(redis_server: RedisServer) -> Iterator[tuple[TlsServer, Worker]]:
    server = TlsServer()
    try:
        with topology_worker(redis_server.port, "tls", server.url(), server.client_certificate()) as worker:
            yield server, worker
    finally:
        server.stop()


@pytest.fixture()
def locks(tls: tuple[TlsServer, Worker]) -> Iterator[Any]:
    server, _ = tls
    with publishing_to(server.url(), server.client_certificate()):
        yield make_client(server.url(), server.client_certificate())


def test_duplicate_call_is_dropped_with_locks_on_a_tls_server(locks: Any, recs: redis.Redis) -> None:
    duplicate_call_is_dropped(recs, locks, new_tag("tls-queue"))


def test_duplicate_execution_is_rejected_with_locks_on_a_tls_server(locks: Any, recs: redis.Redis) -> None:
    duplicate_execution_is_rejected(recs, locks, new_tag("tls-running"))


def test_a_client_without_its_certificate_is_refused(tls: tuple[TlsServer, Worker]) -> None:
    server, _ = tls
    with pytest.raises(redis.ConnectionError):
        make_client(server.url()).ping()


def test_a_server_certificate_from_another_ca_is_refused(tls: tuple[TlsServer, Worker]) -> None:
    server, _ = tls
    # Verified against the system's CAs, which never signed the test CA's certificate.
    url = f"rediss://127.0.0.1:{server.port}/2"
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        make_client(url, server.client_certificate()).ping()
