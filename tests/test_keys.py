"""Lock keys: the format, and one canonical form per call however it is spelled or serialized."""

from __future__ import annotations

import datetime
import decimal
import hashlib
import json
import re
import uuid
from typing import Any

import pytest
from celery import Celery
from kombu import serialization

from celery_once_task import OnceTask, OnceTaskLocked, debounce, limits
from celery_once_task.digest import canonical_call, signature_of
from celery_once_task.headers import DIGEST_HEADER
from celery_once_task.keys import KeyParts, key_space, parse_key
from tests import worker_app as tasks
from tests.support import events, wait_until


def json_round_trip(value: Any) -> Any:
    """What a worker receives for ``value`` after Celery's default serializer."""
    content_type, encoding, data = serialization.dumps(value, "json")
    return serialization.loads(data, content_type, encoding)


def test_key_is_name_digest_and_lock_type() -> None:
    key = tasks.add.once_key((1, 2), {}, "queue")
    assert re.fullmatch(r"once_task:tests\.worker_app\.add:[0-9a-f]{16}:queue", key)
    assert tasks.add.once_key((1, 2), {}, "running") == key[: -len("queue")] + "running"


@pytest.mark.parametrize(("task", "lock_type", "written"), [
    (tasks.export, "slots", lambda space, digest: limits.slots_key(space, digest)),
    (tasks.reindex, "burst", lambda space, digest: debounce.burst_key(space, digest)),
    (tasks.parked, "unique", lambda space, digest: space.companion(digest, "unique")),
], ids=["slots", "burst", "unique"])
def test_once_key_gives_the_key_the_library_writes_for_limited_debounced_and_windowed_calls(
    task: Any, lock_type: str, written: Any,
) -> None:
    args = ("tenant-1",) if task is tasks.parked else ("tenant-1", 1)
    key = task.once_key(args, {}, lock_type)
    space = key_space(task, task.once_settings())
    assert key == written(space, task.once_digest(args, {}))
    # What `celery once show KEY` reads it with.
    assert parse_key(key) == KeyParts(task.name, task.once_digest(args, {}), lock_type)


def test_once_key_tags_the_digest_of_limited_and_debounced_keys_for_redis_cluster() -> None:
    digest = tasks.reindex.once_digest(("doc", 1), {})
    assert tasks.reindex.once_key(("doc", 1), {}, "burst") == f"once_task:tests.worker_app.reindex:{{{digest}}}:burst"


def test_once_key_refuses_an_unknown_lock_type_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"^'nonsense' is not a type of lock key: one of queue, running, waiting, "
                                         r"slots, waiters, messages, burst, unique, args, throttle$"):
        tasks.add.once_key((1, 2), {}, "nonsense")


def test_digest_is_the_first_16_hex_of_a_sha256_of_the_canonical_call() -> None:
    canonical = canonical_call("tests.worker_app.add", signature_of(tasks.add.run), (1, 2), {})
    assert tasks.add.once_digest((1, 2), {}) == hashlib.sha256(canonical.encode()).hexdigest()[:16]


def test_different_arguments_get_different_keys() -> None:
    assert tasks.add.once_key((1, 2), {}, "queue") != tasks.add.once_key((2, 1), {}, "queue")


def test_positional_keyword_and_default_spellings_are_one_call() -> None:
    spellings = [((1, 10), {}), ((1,), {}), ((), {"x": 1}), ((), {"y": 10, "x": 1}), ((1,), {"y": 10})]
    assert len({tasks.add.once_digest(args, kwargs) for args, kwargs in spellings}) == 1


def test_self_of_a_bound_task_is_not_part_of_the_call() -> None:
    assert tasks.bound.once_digest(("t",), {}) == tasks.bound.once_digest((), {"tag": "t", "n": 1})


def test_tuples_and_lists_are_the_same_sequence() -> None:
    assert tasks.echo.once_digest(("t", (1, (2, 3))), {}) == tasks.echo.once_digest(("t", [1, [2, 3]]), {})


def test_dict_key_order_does_not_matter() -> None:
    assert tasks.echo.once_digest(("t", {"a": 1, "b": 2}), {}) == tasks.echo.once_digest(("t", {"b": 2, "a": 1}), {})


@pytest.mark.parametrize(
    "value",
    [
        {"nested": [(1, 2), {"z": None, "a": [True, 1.5]}], 3: "int key"},
        datetime.datetime(2026, 11, 23, 12, 30, tzinfo=datetime.timezone.utc),
        datetime.date(2026, 11, 23),
        decimal.Decimal("12.3400"),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        b"\x00\xffbytes",
    ],
    ids=["nested", "datetime", "date", "decimal", "uuid", "bytes"],
)
def test_digest_survives_json_serialization(value: Any) -> None:
    received = json_round_trip({"args": ["t", value]})["args"]
    assert tasks.echo.once_digest(received, {}) == tasks.echo.once_digest(("t", value), {})


def test_types_are_kept_apart() -> None:
    digests = {tasks.echo.once_digest(("t", value), {}) for value in (1, 1.0, True, "1", None, [1], {"1": 1})}
    assert len(digests) == 7


def test_a_repeated_call_keeps_the_digest_of_its_canonical_form() -> None:
    canonical = canonical_call("tests.worker_app.add", signature_of(tasks.add.run), (7, 8), {})
    expected = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    assert [tasks.add.once_digest((7, 8), {}) for _ in range(3)] == [expected] * 3


def test_equal_values_of_other_types_keep_their_own_digest_after_a_repeated_call() -> None:
    for _ in range(2):  # the second round after every spelling was seen once
        assert len({tasks.echo.once_digest(("t", value), {}) for value in (1, True, 1.0)}) == 3


def test_a_task_defined_again_with_another_signature_gets_the_digest_of_its_own() -> None:
    def defaults_to(default: int) -> Any:
        app = Celery("keys", set_as_current=False)

        @app.task(base=OnceTask, name="tests.keys.redefined", shared=False)
        def redefined(a: int, b: int = default) -> None:
            pass

        return redefined

    first, second = defaults_to(1), defaults_to(2)
    assert first.once_digest((5,), {}) == first.once_digest((5, 1), {})
    assert second.once_digest((5,), {}) == second.once_digest((5, 2), {}) != first.once_digest((5,), {})


def test_a_subclass_of_a_task_in_use_binds_calls_to_its_own_run() -> None:
    class Parent(OnceTask):
        name = "tests.keys.parent"

        def run(self, a: int) -> None:
            pass

    class Child(Parent):
        name = "tests.keys.child"

        def run(self, a: int, b: int = 2) -> None:  # type: ignore[override]
            pass

    Parent().once_digest((1,), {})  # the parent's key spec is made first
    canonical = canonical_call(Child.name, signature_of(Child().run), (1,), {})
    assert canonical == '{"a":1,"b":2}'
    assert Child().once_digest((1,), {}) == hashlib.sha256(canonical.encode()).hexdigest()[:16]


def test_a_scalar_call_with_a_default_that_is_not_a_scalar_gets_the_canonical_digest() -> None:
    app = Celery("keys", set_as_current=False)

    @app.task(base=OnceTask, name="tests.keys.priced", shared=False)
    def priced(a: int, b: decimal.Decimal = decimal.Decimal("1.50")) -> None:
        pass

    digest = priced.once_digest((5,), {})
    canonical = canonical_call("tests.keys.priced", signature_of(priced.run), (5,), {})
    assert canonical == '{"a":5,"b":{"__decimal__":"1.50"}}'
    assert digest == hashlib.sha256(canonical.encode()).hexdigest()[:16] == priced.once_digest(
        (5, decimal.Decimal("1.50")), {})


def test_argument_without_canonical_form_is_refused_naming_task_and_argument(locks: Any) -> None:
    before = set(locks.keys("once_task:*"))
    with pytest.raises(TypeError, match=r"tests\.worker_app\.echo: argument 'value' of type object"):
        tasks.echo.delay("t", object())
    assert set(locks.keys("once_task:*")) == before


def test_nested_argument_without_canonical_form_is_named_by_its_path() -> None:
    with pytest.raises(TypeError, match=r"argument \"value\[0\]\['k'\]\" of type set"):
        tasks.echo.delay("t", [{"k": {1, 2}}])


def test_arguments_not_matching_the_signature_are_refused_naming_the_task() -> None:
    with pytest.raises(TypeError, match=r"tests\.worker_app\.add: the arguments do not match"):
        tasks.add.delay(1, 2, 3)


def parked_message(broker: Any, tag: str) -> dict[str, Any]:
    """The message of the ``parked`` call with ``tag``, as it sits in the broker."""
    for raw in broker.lrange("parked", 0, -1):
        message = json.loads(raw)
        if tag in message["headers"]["argsrepr"]:
            return dict(message)
    raise AssertionError(f"no parked message for {tag}")


def test_digest_travels_to_the_worker_in_a_namespaced_header(broker: Any) -> None:
    tag = uuid.uuid4().hex
    tasks.parked.delay(tag)
    message = parked_message(broker, tag)
    assert message["headers"][DIGEST_HEADER] == tasks.parked.once_digest((tag,), {})


def test_caller_headers_are_kept_beside_the_digest(broker: Any) -> None:
    tag = uuid.uuid4().hex
    tasks.parked.apply_async((tag,), headers={"tenant": "acme"})
    headers = parked_message(broker, tag)["headers"]
    assert headers["tenant"] == "acme"
    assert DIGEST_HEADER in headers


def test_worker_uses_the_digest_from_the_header(worker: Any, recs: Any) -> None:
    tag, other = uuid.uuid4().hex, uuid.uuid4().hex
    running = tasks.gated.delay(tag)
    wait_until(lambda: events(recs, tag, "start"), what="the first execution to start")
    # Different arguments, but the header names the running call's digest.
    impostor = tasks.app.send_task(
        "tests.worker_app.gated", args=[other], headers={DIGEST_HEADER: tasks.gated.once_digest((tag,), {})}
    )
    try:
        with pytest.raises(OnceTaskLocked):
            impostor.get(timeout=20)
    finally:
        recs.rpush(f"gate:{tag}", 1)
    assert running.get(timeout=20) == tag


def test_worker_derives_the_publishers_key_for_a_message_without_the_header(worker: Any, recs: Any) -> None:
    """``send_task`` carries no digest: the worker derives it from the serialized call."""
    tag = uuid.uuid4().hex
    value = {"b": (1, (2, 3)), "a": [datetime.date(2026, 1, 2), decimal.Decimal("1.50"), {3: None}]}
    running = tasks.gated.delay(tag, value)
    wait_until(lambda: events(recs, tag, "start"), what="the first execution to start")
    # The same call spelled by keyword, its value already through JSON, no header.
    duplicate = tasks.app.send_task(
        "tests.worker_app.gated", kwargs={"value": json_round_trip(value), "tag": tag}
    )
    try:
        with pytest.raises(OnceTaskLocked):
            duplicate.get(timeout=20)
    finally:
        recs.rpush(f"gate:{tag}", 1)
    assert running.get(timeout=20) == tag


@pytest.mark.parametrize("layout", ["in request.headers", "flattened onto the request (Celery 5.0)"])
def test_a_copy_published_again_keeps_the_librarys_headers_wherever_celery_put_them(layout: str) -> None:
    from celery.app.task import Context

    from celery_once_task.headers import BURST_HEADER, LIBRARY_HEADERS, message_headers

    ours = {DIGEST_HEADER: "0123456789abcdef", BURST_HEADER: "1"}
    if layout == "in request.headers":
        request = Context(headers={**ours, "tenant": "acme"})
    else:
        request = Context(headers=None, tenant="acme", **ours)
    request.once_task_entered = True  # as the library marks a request it runs
    headers = message_headers(request)
    assert {name: headers[name] for name in LIBRARY_HEADERS if name in headers} == ours
    assert "once_task_entered" not in headers  # the request's own state is no header


def test_a_copy_published_again_keeps_a_custom_header_celery_flattened_onto_the_request() -> None:
    """A worker's request as Celery 5.0 builds it: the custom header is a field, beside Celery's own."""
    from celery.app.task import Context

    from celery_once_task.headers import BURST_HEADER, message_headers

    ours = {DIGEST_HEADER: "0123456789abcdef", BURST_HEADER: "1"}
    message = {  # a message's headers, as a newer client publishes them, the caller's "tenant" among them
        "lang": "py", "task": "tests.worker_app.add", "id": "an-id", "shadow": None, "eta": None, "expires": None,
        "group": None, "group_index": None, "retries": 0, "timelimit": [None, None], "root_id": "an-id",
        "parent_id": None, "argsrepr": "(1, 2)", "kwargsrepr": "{}", "origin": "gen1@host", "ignore_result": False,
        "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {}, "compression": "application/x-gzip",
        "tenant": "acme", **ours,
    }
    # What the worker adds (message properties, delivery info), then the pool and the tracer.
    fields = {**message, "reply_to": "a-reply", "correlation_id": "an-id", "hostname": "celery@host",
              "delivery_info": {"exchange": "", "routing_key": "celery", "priority": 0, "redelivered": False},
              "args": [1, 2], "kwargs": {}, "loglevel": 0, "logfile": None, "is_eager": False,
              "callbacks": None, "errbacks": None, "chain": None, "chord": None}
    request = Context(fields, args=[1, 2], called_directly=False, kwargs={})
    request.once_task_entered = True  # as the library marks a request it runs
    assert message_headers(request) == {"tenant": "acme", **ours}
