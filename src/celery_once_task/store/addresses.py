"""Lock store addresses: the URL forms, parsing and checking them, and redacting their secrets.

This module owns what a lock store URL and its ``redis_options`` say, and how
they are shown without their passwords; ``connection`` makes the clients. Both
are documented under ``connection``, which re-exports every name here.

URL forms (query parameters keep redis-py's meaning: ``ssl_ca_certs``,
``ssl_cert_reqs``, ``socket_timeout``, ...):

* ``redis://[user:password@]host:port/DB``, ``rediss://...`` (TLS) and
  ``unix:///path.sock?db=DB``: one server;
* ``redis+sentinel://[user:password@]host:port[,host:port...]/SERVICE[/DB]``
  and ``rediss+sentinel://...`` (TLS to the servers): the master of
  ``SERVICE`` as the sentinels name it, followed across failovers;
* ``sentinel://host:port;sentinel://host:port/DB``: Celery's broker spelling
  of the same, with the service taken from ``redis_options["master_name"]``;
* ``redis+cluster://[user:password@]host:port[,host:port...]`` and
  ``rediss+cluster://...``: a Redis Cluster, found from any of its nodes.

``redis_options`` are the client's extra keyword arguments (socket and TLS
options, ``sentinel_kwargs`` ...); they win over the URL's query parameters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, unquote, urlsplit

from redis.connection import URL_QUERY_ARGUMENT_PARSERS

__all__ = [
    "BROKER_ONLY_OPTIONS", "CLUSTER", "REDACTED", "SCHEMES", "SENTINEL", "SERVER", "ConnectionSpec",
    "check_options", "parse_url", "redact_options", "redact_url",
]

SERVER = "server"
SENTINEL = "sentinel"
CLUSTER = "cluster"

_SERVER_SCHEMES = ("redis", "rediss", "unix")
_SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
_CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
#: Celery's (kombu's) broker spelling: ``sentinel://h:p;sentinel://h:p/DB``.
_KOMBU_SENTINEL_SCHEME = "sentinel"
SCHEMES = (*_SERVER_SCHEMES, *_SENTINEL_SCHEMES, *_CLUSTER_SCHEMES, _KOMBU_SENTINEL_SCHEME)

#: Celery's Redis broker transport options that are not client arguments: ignored, so that
#: ``broker_transport_options`` can be copied into ``redis_options`` as they are.
BROKER_ONLY_OPTIONS = frozenset({
    "visibility_timeout", "fanout_prefix", "fanout_patterns", "global_keyprefix", "sep", "priority_steps",
    "queue_order_strategy", "ack_emulation", "unacked_key", "unacked_index_key", "unacked_mutex_key",
    "unacked_mutex_expire", "unacked_restore_limit", "polling_interval", "max_retries", "interval_start",
    "interval_step", "interval_max",
})

#: ``redis_options`` that mean something only to a Sentinel deployment.
_SENTINEL_OPTIONS = ("master_name", "sentinel_kwargs", "min_other_sentinels")

_DEFAULT_PORT = {SENTINEL: 26379, CLUSTER: 6379, SERVER: 6379}

#: Option and query keys whose values are never shown.
_SECRET_KEY = re.compile(r"pass|secret|token|credential|key_password", re.IGNORECASE)
REDACTED = "***"


@dataclass(frozen=True)
class ConnectionSpec:
    """What a lock store URL says, parsed and checked."""

    kind: str  # SERVER, SENTINEL or CLUSTER
    #: (host, port) of the server, the sentinels or the cluster's seed nodes (empty for unix://).
    hosts: tuple[tuple[str, int], ...]
    tls: bool = False
    db: int = 0
    #: The Sentinel service (master name); None for the other kinds.
    service: Optional[str] = None
    username: Optional[str] = field(default=None, repr=False)
    password: Optional[str] = field(default=None, repr=False)
    #: The query parameters, parsed the way redis-py parses them.
    query: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def addresses(self) -> str:
        """``host:port, host:port`` -- how error messages name the servers."""
        return ", ".join(f"{host}:{port}" for host, port in self.hosts) or "(unix socket)"


def parse_url(url: str, options: Optional[Mapping[str, Any]] = None, *, label: str = "redis_url") -> ConnectionSpec:
    """Parse a lock store URL; ``ValueError`` naming ``label`` and the problem (never the password).

    ``options`` (``redis_options``) supply the master name of a ``sentinel://`` URL.
    """
    options = options or {}
    shown = redact_url(url) if isinstance(url, str) else repr(url)
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"{label} must be a URL of one of the forms {_forms()}, got {shown}")
    scheme = url.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise ValueError(f"{label} must be a URL of one of the forms {_forms()}; scheme {scheme!r} is not, in {shown}")
    if scheme in _SERVER_SCHEMES:
        return _parse_server(url, scheme, label, shown)
    if scheme == _KOMBU_SENTINEL_SCHEME:
        return _parse_kombu_sentinel(url, options, label, shown)
    kind = SENTINEL if scheme in _SENTINEL_SCHEMES else CLUSTER
    return _parse_multi_host(url, scheme, kind, label, shown)


def check_options(spec: ConnectionSpec, options: Mapping[str, Any], *, label: str = "redis_options") -> None:
    """``ValueError`` if ``options`` cannot go with ``spec`` (e.g. ``master_name`` for one server)."""
    if spec.kind != SENTINEL:
        misplaced = sorted(name for name in options if name in _SENTINEL_OPTIONS)
        if misplaced:
            raise ValueError(
                f"{label}: {', '.join(misplaced)} apply only to a Sentinel URL, and the URL is a {spec.kind}"
            )
    master_name = options.get("master_name")
    if spec.kind == SENTINEL and master_name is not None and master_name != spec.service:
        raise ValueError(f"{label}['master_name'] is {master_name!r}, but the URL names the service {spec.service!r}")
    sentinel_kwargs = options.get("sentinel_kwargs")
    if sentinel_kwargs is not None and not isinstance(sentinel_kwargs, Mapping):
        raise ValueError(f"{label}['sentinel_kwargs'] must be a dict of keyword arguments for the sentinel connections")



def redact_url(url: str) -> str:
    """``url`` with every password replaced by ``***``: ``redis://user:***@host:port/db``.

    Use it wherever a lock store URL is shown: log lines, exception messages
    (e.g. ``LockStoreUnavailable``), command line output.
    """
    return ";".join(_redact_part(part) for part in url.split(";"))


def redact_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with the values of password-like keys (here and in nested dicts) replaced by ``***``."""
    shown: dict[str, Any] = {}
    for name, value in options.items():
        if isinstance(value, Mapping):
            shown[name] = redact_options(value)
        elif _SECRET_KEY.search(str(name)) and value is not None:
            shown[name] = REDACTED
        else:
            shown[name] = value
    return shown



# -- parsing --------------------------------------------------------------------


def _forms() -> str:
    return ", ".join(f"{scheme}://" for scheme in SCHEMES)


def _parse_server(url: str, scheme: str, label: str, shown: str) -> ConnectionSpec:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{label} has a port that is not a number: {shown}") from None
    db = _db_from(parts.path.strip("/") if scheme != "unix" else "", label, shown)
    query = _parse_query(parts.query, label)
    if "db" in query:
        db = query["db"]
    hosts = () if scheme == "unix" else ((parts.hostname or "localhost", port or _DEFAULT_PORT[SERVER]),)
    return ConnectionSpec(
        SERVER, hosts, tls=scheme == "rediss", db=db,
        username=_unquoted(parts.username), password=_unquoted(parts.password), query=query,
    )


def _parse_multi_host(url: str, scheme: str, kind: str, label: str, shown: str) -> ConnectionSpec:
    rest = url.split("://", 1)[1]
    rest, _, query_string = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, _, hostlist = netloc.rpartition("@")
    username, password = _userinfo(userinfo)
    hosts = _hosts(hostlist, kind, label, shown)
    segments = [segment for segment in path.split("/") if segment]
    service: Optional[str] = None
    if kind == SENTINEL:
        if not segments:
            raise ValueError(f"{label} must name the Sentinel service: {scheme}://host:port[,host:port]/SERVICE[/DB], "
                             f"got {shown}")
        service = unquote(segments.pop(0))
    if len(segments) > 1:
        raise ValueError(f"{label} has too many path segments: {shown}")
    db = _db_from(segments[0] if segments else "", label, shown)
    query = _parse_query(query_string, label)
    if "db" in query:
        db = query.pop("db")
    if kind == CLUSTER and db != 0:
        raise ValueError(f"{label}: a Redis Cluster has only database 0, got {shown}")
    return ConnectionSpec(kind, hosts, tls=scheme.startswith("rediss"), db=db, service=service,
                          username=username, password=password, query=query)


def _parse_kombu_sentinel(url: str, options: Mapping[str, Any], label: str, shown: str) -> ConnectionSpec:
    hosts: list[tuple[str, int]] = []
    dbs: set[int] = set()
    username = password = None
    for part in (part.strip() for part in url.split(";") if part.strip()):
        if not part.lower().startswith("sentinel://"):
            raise ValueError(f"{label}: every part of a sentinel:// URL must be sentinel://host:port[/DB], got {shown}")
        parts = urlsplit(part)
        try:
            port = parts.port or _DEFAULT_PORT[SENTINEL]
        except ValueError:
            raise ValueError(f"{label} has a port that is not a number: {shown}") from None
        if not parts.hostname:
            raise ValueError(f"{label} has a part without a host: {shown}")
        hosts.append((parts.hostname, port))
        if parts.path.strip("/"):
            dbs.add(_db_from(parts.path.strip("/"), label, shown))
        if parts.password or parts.username:
            username, password = _unquoted(parts.username), _unquoted(parts.password)
    if len(dbs) > 1:
        raise ValueError(f"{label} names different databases in its parts: {shown}")
    service = options.get("master_name")
    if not isinstance(service, str) or not service:
        raise ValueError(
            f"redis_options must name the Sentinel service for {label} {shown}: "
            "redis_options={'master_name': 'mymaster'} (as broker_transport_options does for Celery)"
        )
    return ConnectionSpec(SENTINEL, tuple(hosts), db=dbs.pop() if dbs else 0, service=service,
                          username=username or None, password=password or None)


def _userinfo(userinfo: str) -> tuple[Optional[str], Optional[str]]:
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None), (unquote(password) if colon else None)


def _hosts(hostlist: str, kind: str, label: str, shown: str) -> tuple[tuple[str, int], ...]:
    hosts = []
    for item in (item.strip() for item in hostlist.split(",")):
        if not item:
            raise ValueError(f"{label} has an empty host in its host list: {shown}")
        if item.startswith("["):  # [IPv6]:port
            host, _, port_text = item[1:].partition("]")
            port_text = port_text.lstrip(":")
        else:
            host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
        if not port_text:
            port = _DEFAULT_PORT[kind]
        elif port_text.isdigit() and 0 < int(port_text) < 65536:
            port = int(port_text)
        else:
            raise ValueError(f"{label} has a bad port {port_text!r} for host {host!r}: {shown}")
        if not host:
            raise ValueError(f"{label} has a port without a host: {shown}")
        hosts.append((host, port))
    return tuple(hosts)


def _db_from(text: str, label: str, shown: str) -> int:
    if not text:
        return 0
    if not text.isdigit():
        raise ValueError(f"{label} has a database {text!r} that is not a number: {shown}")
    return int(text)


def _parse_query(query: str, label: str) -> dict[str, Any]:
    """Query parameters as redis-py's ``from_url`` reads them (typed where it types them)."""
    parsed: dict[str, Any] = {}
    for name, values in parse_qs(query).items():
        if not values:
            continue
        parser: Optional[Callable[[str], Any]] = URL_QUERY_ARGUMENT_PARSERS.get(name)  # type: ignore[assignment]
        try:
            parsed[name] = parser(values[0]) if parser else values[0]
        except (TypeError, ValueError):
            shown = REDACTED if _SECRET_KEY.search(name) else repr(values[0])
            raise ValueError(f"{label} has a bad value {shown} for query parameter {name!r}") from None
    return parsed


def _unquoted(text: Optional[str]) -> Optional[str]:
    return unquote(text) if text else None


_AUTHORITY = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<authority>[^/?#]*)(?P<rest>.*)$", re.DOTALL)


def _redact_part(part: str) -> str:
    match = _AUTHORITY.match(part)
    if match is None:
        return part
    authority = match["authority"]
    userinfo, at, hosts = authority.rpartition("@")
    if at and ":" in userinfo:
        authority = f"{userinfo.split(':', 1)[0]}:{REDACTED}@{hosts}"
    rest = re.sub(
        r"([?&])([^=&#]*)=([^&#]*)",
        lambda m: f"{m[1]}{m[2]}={REDACTED if _SECRET_KEY.search(m[2]) else m[3]}",
        match["rest"],
    )
    return f"{match['scheme']}{authority}{rest}"

