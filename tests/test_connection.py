"""Lock store URLs and redis_options: the forms accepted, the errors, and secrets never shown."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from celery_once_task import LockStoreUnavailable, configure
from celery_once_task.settings import reset_configuration, resolve
from celery_once_task.store import client_for
from celery_once_task.store.connection import (
    CLUSTER,
    SENTINEL,
    SERVER,
    cluster_supported,
    make_client,
    parse_url,
    redact_url,
)
from tests import worker_app as tasks
from tests.support import RedisServer, free_port

PASSWORD = "pa:ss@w0rd"  # URL-quoted below
QUOTED = "pa%3Ass%40w0rd"


@pytest.fixture(autouse=True)
def restore_configuration() -> Iterator[None]:
    yield
    reset_configuration()
    configure(redis_url=tasks.LOCKS_URL, redis_options=tasks.LOCKS_OPTIONS)
    tasks.app.conf.pop("once_redis_options", None)


def test_sentinel_url_names_the_sentinels_service_and_database() -> None:
    spec = parse_url(f"redis+sentinel://user:{QUOTED}@10.0.0.1:26379,10.0.0.2/mymaster/3?socket_timeout=2")
    assert (spec.kind, spec.hosts, spec.service, spec.db, spec.tls) == (
        SENTINEL, (("10.0.0.1", 26379), ("10.0.0.2", 26379)), "mymaster", 3, False)
    assert (spec.username, spec.password, spec.query) == ("user", PASSWORD, {"socket_timeout": 2.0})


def test_rediss_sentinel_url_asks_for_tls_to_the_servers() -> None:
    assert parse_url("rediss+sentinel://h:1/mymaster").tls


def test_celery_broker_spelling_takes_the_service_from_redis_options() -> None:
    spec = parse_url("sentinel://h1:26379;sentinel://h2:26380/2", {"master_name": "mymaster"})
    assert (spec.kind, spec.hosts, spec.service, spec.db) == (SENTINEL, (("h1", 26379), ("h2", 26380)), "mymaster", 2)


def test_celery_broker_spelling_without_master_name_says_where_to_put_it() -> None:
    with pytest.raises(ValueError, match=r"redis_options must name the Sentinel service.*master_name"):
        make_client("sentinel://h1:26379;sentinel://h2:26380/2")


def test_cluster_url_lists_seed_nodes() -> None:
    spec = parse_url(f"rediss+cluster://:{QUOTED}@n1:7000,n2:7001,[::1]:7002")
    assert (spec.kind, spec.hosts, spec.tls, spec.password) == (
        CLUSTER, (("n1", 7000), ("n2", 7001), ("::1", 7002)), True, PASSWORD)


def test_plain_urls_keep_their_meaning() -> None:
    spec = parse_url("rediss://h:6390/4?ssl_cert_reqs=required")
    assert (spec.kind, spec.hosts, spec.db, spec.tls, spec.query) == (
        SERVER, (("h", 6390),), 4, True, {"ssl_cert_reqs": "required"})


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (f"redis+sentinel://u:{QUOTED}@h:26379", "must name the Sentinel service"),
        (f"redis+sentinel://u:{QUOTED}@h:port/mymaster", "bad port 'port'"),
        (f"redis+cluster://u:{QUOTED}@h:7000/1", "a Redis Cluster has only database 0"),
        (f"redis+sentinel://u:{QUOTED}@h:1,,h:2/mymaster", "an empty host"),
        (f"redis+sentinel://u:{QUOTED}@h:1/mymaster/x", "database 'x' that is not a number"),
        (f"http://u:{QUOTED}@h:1/0", "scheme 'http' is not"),
        (f"redis+sentinel://u:{QUOTED}@h:1/mymaster?socket_timeout=soon", "bad value 'soon' for query parameter"),
    ],
)
def test_a_bad_url_is_refused_naming_the_setting_and_the_problem_never_the_password(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match="redis_url") as raised:
        configure(redis_url=url)
    assert problem in str(raised.value)
    assert PASSWORD not in str(raised.value) and QUOTED not in str(raised.value)


def test_sentinel_options_with_a_plain_url_are_refused() -> None:
    with pytest.raises(ValueError, match="redis_options: master_name apply only to a Sentinel URL"):
        make_client("redis://h:1/0", {"master_name": "mymaster"})


def test_a_master_name_other_than_the_urls_service_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\['master_name'\] is 'other', but the URL names the service 'mymaster'"):
        make_client("redis+sentinel://h:1/mymaster", {"master_name": "other"})


def test_redis_options_must_be_a_mapping() -> None:
    with pytest.raises(ValueError, match=r"redis_options must be a mapping of the Redis client's keyword arguments.*"
                                         r"got a list"):
        configure(redis_options=["socket_timeout", 2])  # type: ignore[arg-type]


def test_redis_options_with_a_key_that_is_no_argument_name_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"redis_options must be a mapping.*got a mapping with the key 2 \(int\)"):
        configure(redis_options={2: "socket_timeout"})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://user:{QUOTED}@h:6379/2", "redis://user:***@h:6379/2"),
        (f"redis://:{QUOTED}@h:6379/2", "redis://:***@h:6379/2"),
        (f"redis+sentinel://u:{QUOTED}@h1:1,h2:2/mymaster/2?password=x&socket_timeout=2",
         "redis+sentinel://u:***@h1:1,h2:2/mymaster/2?password=***&socket_timeout=2"),
        (f"sentinel://:{QUOTED}@h1:1;sentinel://:{QUOTED}@h2:2/0", "sentinel://:***@h1:1;sentinel://:***@h2:2/0"),
        ("redis://h:6379/2", "redis://h:6379/2"),
    ],
)
def test_redact_url_hides_every_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_settings_repr_hides_passwords_in_the_url_and_the_options() -> None:
    configure(redis_url=f"redis://u:{QUOTED}@h:1/2",
              redis_options={"password": PASSWORD, "sentinel_kwargs": {"password": PASSWORD}, "socket_timeout": 2})
    shown = repr(resolve())
    assert PASSWORD not in shown and QUOTED not in shown
    assert "redis://u:***@h:1/2" in shown and "'socket_timeout': 2" in shown


def test_unreachable_lock_store_error_names_host_and_port_never_the_password() -> None:
    port = free_port()
    configure(redis_url=f"redis://u:{QUOTED}@127.0.0.1:{port}/2")
    with pytest.raises(LockStoreUnavailable) as raised:
        tasks.parked.delay(uuid.uuid4().hex)
    assert f"127.0.0.1:{port}" in str(raised.value)
    assert PASSWORD not in str(raised.value) and QUOTED not in str(raised.value)


def test_unreachable_sentinels_are_named_in_the_error() -> None:
    ports = (free_port(), free_port())
    configure(redis_url=f"redis+sentinel://u:{QUOTED}@127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/mymaster/2")
    with pytest.raises(LockStoreUnavailable) as raised:
        tasks.parked.delay(uuid.uuid4().hex)
    assert all(f"127.0.0.1:{port}" in str(raised.value) for port in ports)
    assert PASSWORD not in str(raised.value) and QUOTED not in str(raised.value)


def test_cluster_needs_redis_py_4_2() -> None:
    assert not cluster_supported("4.1.4")
    assert cluster_supported("4.2.0") and cluster_supported("8.1.0")


def client_names(server: RedisServer) -> set[str]:
    return {client["name"] for client in server.client(0).client_list()}


def test_redis_options_are_the_lock_clients_keyword_arguments(redis_server: RedisServer) -> None:
    configure(redis_options={"client_name": "once-locks-configured"})
    tasks.parked.delay(uuid.uuid4().hex)
    assert "once-locks-configured" in client_names(redis_server)


def test_app_conf_redis_options_win_over_configure(redis_server: RedisServer) -> None:
    configure(redis_options={"client_name": "once-locks-configured"})
    tasks.app.conf.once_redis_options = {"client_name": "once-locks-app-conf"}
    tasks.parked.delay(uuid.uuid4().hex)
    assert "once-locks-app-conf" in client_names(redis_server)


def test_one_client_per_url_and_options() -> None:
    url = "redis://127.0.0.1:1/2"
    assert client_for(url, {"socket_timeout": 2}) is client_for(url, {"socket_timeout": 2})
    assert client_for(url, {"socket_timeout": 2}) is not client_for(url, {"socket_timeout": 3})


def test_lock_clients_leave_retries_to_the_library() -> None:
    retry = make_client("redis://127.0.0.1:1/2").connection_pool.connection_kwargs["retry"]
    assert retry._retries == 0


def test_command_line_names_an_unreachable_lock_store_without_its_password() -> None:
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "celery_once_task", "--url", f"redis://u:{QUOTED}@127.0.0.1:{port}/2", "locks"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert f"redis://u:***@127.0.0.1:{port}/2" in done.stderr
    assert PASSWORD not in done.stdout + done.stderr and QUOTED not in done.stdout + done.stderr
