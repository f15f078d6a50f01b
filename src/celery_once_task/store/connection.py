"""Connecting to the lock store: client construction and listing keys; URL forms by re-export.

This module owns how a client for the locks is made (a server, the master of a
Sentinel service, a Redis Cluster) and how keys are listed on each; what is
done with the client is ``store``'s business, and what a URL says is
``addresses``'s, whose names (``parse_url``, ``redact_url``, ``ConnectionSpec``
...) are re-exported here, the documented place to import them from.

Every client is made with redis-py's own command retries disabled: a lock
command whose reply was lost may or may not have run, and only the library
knows whether running it again is safe. Redis Cluster keeps following
``MOVED``/``ASK`` redirections, which are answers, not lost replies.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, Optional, Union

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from ..internals import REDIS_PY
from .addresses import (
    BROKER_ONLY_OPTIONS,
    CLUSTER,
    REDACTED,
    SCHEMES,
    SENTINEL,
    SERVER,
    ConnectionSpec,
    check_options,
    parse_url,
    redact_options,
    redact_url,
)

__all__ = [
    "BROKER_ONLY_OPTIONS", "CLUSTER", "CLUSTER_MIN_REDIS_PY", "REDACTED", "SCHEMES", "SENTINEL", "SERVER",
    "Client", "ConnectionSpec", "check_options", "cluster_supported", "is_cluster", "make_client", "parse_url",
    "redact_options", "redact_url", "scan_keys",
]

#: Any client ``make_client`` returns: ``redis.Redis`` or ``redis.cluster.RedisCluster``.
Client = Any

#: redis-py's RedisCluster before 4.2 cannot scan or run scripts on a cluster.
CLUSTER_MIN_REDIS_PY = (4, 2)


def make_client(url: str, options: Optional[Mapping[str, Any]] = None, **overrides: Any) -> Client:
    """A new client for the lock store at ``url``, with ``options`` and then ``overrides`` as keyword arguments.

    redis-py's command retries are off (see the module docstring).
    """
    options = {name: value for name, value in (options or {}).items() if name not in BROKER_ONLY_OPTIONS}
    spec = parse_url(url, options)
    check_options(spec, options)
    kwargs: dict[str, Any] = {**spec.query, **options, **overrides}
    if spec.kind == SERVER:
        # The query was parsed into ``kwargs`` above, where the options override it.
        return redis.Redis.from_url(url.split("?", 1)[0], **{**kwargs, "retry": _no_retries()})
    if spec.kind == SENTINEL:
        return _sentinel_client(spec, kwargs)
    return _cluster_client(spec, kwargs)


def scan_keys(client: Client, match: str, count: int = 500) -> Iterator[str]:
    """The names of the keys matching ``match``, with ``SCAN`` on every primary of a cluster (or the one server)."""
    for node_client in _primaries(client):
        for key in node_client.scan_iter(match=match, count=count):
            yield key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)


def _no_retries() -> Retry:
    return Retry(NoBackoff(), 0)


class _Sentinel(Sentinel):
    """redis-py's Sentinel, whose "no master" error names the sentinels it asked."""

    def discover_master(self, service_name: str) -> Any:
        try:
            return super().discover_master(service_name)  # type: ignore[no-untyped-call,unused-ignore]
        except MasterNotFoundError as exc:
            asked = ", ".join(
                f"{s.connection_pool.connection_kwargs.get('host')}:{s.connection_pool.connection_kwargs.get('port')}"
                for s in self.sentinels
            )
            raise MasterNotFoundError(f"{exc} (sentinels asked: {asked})") from None


def _sentinel_client(spec: ConnectionSpec, kwargs: dict[str, Any]) -> redis.Redis:
    kwargs.pop("master_name", None)
    sentinel_kwargs = kwargs.pop("sentinel_kwargs", None)
    min_other_sentinels = int(kwargs.pop("min_other_sentinels", 0))
    connection = {**kwargs, "db": kwargs.get("db", spec.db), "retry": _no_retries()}
    if spec.username:
        connection.setdefault("username", spec.username)
    if spec.password:
        connection.setdefault("password", spec.password)
    if spec.tls:
        connection["ssl"] = True
    if sentinel_kwargs is None:
        # As redis-py does: the sentinels get the socket options, not the servers' credentials or TLS.
        sentinel_kwargs = {name: value for name, value in connection.items() if name.startswith("socket_")}
    # Asking the next sentinel beats asking the same one again after a backoff.
    sentinel_kwargs = {"retry": _no_retries(), **sentinel_kwargs}
    sentinel = _Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
        list(spec.hosts), min_other_sentinels=min_other_sentinels, sentinel_kwargs=dict(sentinel_kwargs)
    )
    assert spec.service is not None
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call,unused-ignore]
        spec.service, redis_class=redis.Redis, **connection
    )
    return client


def cluster_supported(version: str) -> bool:
    """Whether redis-py ``version`` can run the library on a Redis Cluster (4.2 or later)."""
    numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    return numbers >= CLUSTER_MIN_REDIS_PY


def _cluster_client(spec: ConnectionSpec, kwargs: dict[str, Any]) -> Client:
    if not cluster_supported(redis.__version__):
        raise ValueError(
            f"redis_url is a Redis Cluster URL, which needs redis-py 4.2 or later (installed: {redis.__version__}): "
            "pip install 'redis>=4.2'"
        )
    from redis.cluster import ClusterNode, RedisCluster
    from redis.exceptions import RedisClusterException

    kwargs = dict(kwargs)
    kwargs.pop("db", None)
    if spec.username:
        kwargs.setdefault("username", spec.username)
    if spec.password:
        kwargs.setdefault("password", spec.password)
    if spec.tls:
        kwargs["ssl"] = True
    if REDIS_PY >= (6, 0):
        # The cluster's own retry policy: no retries of a command after a
        # connection error (redirections are followed regardless).
        kwargs["retry"] = _no_retries()
    else:
        # Before 6.0 this counts attempts, not retries; node connections
        # already default to no retries.
        kwargs["cluster_error_retry_attempts"] = 1
    nodes = [ClusterNode(host, port) for host, port in spec.hosts]  # type: ignore[no-untyped-call]
    try:
        # Unlike the other clients, this one connects here, to read the slot map.
        return RedisCluster(startup_nodes=nodes, **kwargs)
    except RedisClusterException as exc:  # not a RedisError: callers would not take it for "unreachable"
        raise redis.ConnectionError(f"Redis Cluster unreachable at {spec.addresses()}: {exc}") from None


def is_cluster(client: Client) -> bool:
    """Whether ``client`` talks to a Redis Cluster (asked on every lock operation: a plain class check)."""
    # The plain client first: RedisCluster's bases make isinstance() slow.
    return type(client) is not redis.Redis and _CLUSTER_CLASS is not None and isinstance(client, _CLUSTER_CLASS)


try:
    from redis.cluster import RedisCluster as _CLUSTER_CLASS
except ImportError:  # pragma: no cover - redis-py < 4.1
    _CLUSTER_CLASS = None  # type: ignore[assignment,misc]


def _primaries(client: Client) -> list[Union[redis.Redis, Any]]:
    if is_cluster(client):
        return [node.redis_connection or client.get_redis_connection(node) for node in client.get_primaries()]
    return [client]
