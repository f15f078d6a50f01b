"""The README's and the documentation's Python examples, run as tests (Sybil).

Every fenced ``python`` block of ``README.md`` and ``docs/*.md`` is one test,
run in order in one namespace per document, against a redis-server of this
harness's own (broker, result backend and lock store). An example that no
longer matches the API fails the suite.

The examples are written for a reader's machine: ``redis://localhost:6379``.
The harness points those URLs at its own server before a block runs (it never
writes to a Redis it did not start), and gives each document:

* ``app``: a Celery app on that server, current and default, so that
  ``shared_task`` binds to it, with a queue of the document's own;
* a Celery worker, in a thread of this process, started the first time a block
  waits on a result (``.get(``), which learns the tasks blocks define after it
  started the first time it receives one of theirs;
* Django, set up with the test project's settings and its database migrated,
  for documents whose examples use it.

After a document, what its examples changed in the process is put back:
``configure()`` (the telemetry providers given to it too), the library's
signals and their receivers.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
from celery import _state
from sybil import Example, Sybil
from sybil.evaluators.python import pad
from sybil.parsers.markdown import CodeBlockParser

from celery_once_task import events, settings, signals, telemetry
from tests.support import RedisServer

_documents = itertools.count(1)
_LOCALHOST = re.compile(r"redis://(?:[^@/\s\"']*@)?localhost:6379")


@pytest.fixture(scope="session")
def docs_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


class _Strategies(dict):  # type: ignore[type-arg]
    """A worker's task strategies that learn the tasks a block defined after the worker started."""

    def __init__(self, consumer: Any) -> None:
        super().__init__()
        self._consumer = consumer

    def __missing__(self, name: str) -> Any:
        if name not in self._consumer.app.tasks:
            raise KeyError(name)
        self._consumer.update_strategies()
        return self[name]


def _consumer_class() -> type:
    from celery.worker.consumer import Consumer

    class DocsConsumer(Consumer):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.strategies = _Strategies(self)

    return DocsConsumer


class Examples:
    """One document's run: its namespace's app, worker and what it changed."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        from celery import Celery

        self.server: RedisServer = namespace["docs_redis"]
        self.number = next(_documents)
        self.app = Celery(f"docs{self.number}", set_as_current=True)
        self.app.conf.update(
            broker_url=f"{self.server.url}/0",
            result_backend=f"{self.server.url}/1",
            once_redis_url=f"{self.server.url}/3",
            task_default_queue=f"docs-{self.number}",
            worker_hijack_root_logger=False,
            worker_consumer=_consumer_class(),
        )
        self.app.set_default()
        self.worker: Any = None
        self._stack = contextlib.ExitStack()
        self._configured = dict(settings._configured.values())
        self._integration = settings._configured.integration
        self._signals_connected = signals.signals_connected()
        # ``shared_task`` binds its task to every app made from then on: not to later documents' apps.
        self._finalizers = set(_state._on_app_finalizers)
        self._receivers = {name: list(getattr(events, name).receivers or [])
                           for name in ("duplicate_call", "duplicate_execution", "lock_recovered")}
        namespace.update(__name__=f"docs{self.number}", app=self.app, _examples=self)

    def source(self, text: str) -> str:
        """The block as it runs here: the reader's localhost Redis is this harness's."""
        return _LOCALHOST.sub(self.server.url, text)

    def ensure_worker(self) -> None:
        if self.worker is None:
            from celery.contrib.testing.worker import start_worker

            self.worker = self._stack.enter_context(start_worker(
                self.app, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=30,
                queues=[self.app.conf.task_default_queue]))

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            settings._configured.reset()
            settings._configured.update(self._configured)
            settings._configured.integration = self._integration
            telemetry.reset()  # the providers an example gave configure()
            if signals.signals_connected() and not self._signals_connected:
                signals.teardown_once_task_signals()
            for name, receivers in self._receivers.items():
                getattr(events, name).receivers[:] = receivers
            _state._on_app_finalizers.intersection_update(self._finalizers)
            self.app.close()


def _teardown(namespace: dict[str, Any]) -> None:
    if "_examples" in namespace:
        namespace["_examples"].close()


def _uses_django(text: str) -> bool:
    return "django" in text


_django_ready = False


def _django(server: RedisServer) -> None:
    """Django with the test project's settings and a migrated database (once per session).

    The test suite may have set the project up already (``tests/test_django.py``); on its own,
    the project's settings read this harness's server.
    """
    global _django_ready
    if _django_ready:
        return
    import django
    from django.conf import settings as django_settings

    if not django_settings.configured:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django_project.settings")
        os.environ.setdefault("ONCE_TEST_REDIS_PORT", str(server.port))
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    _django_ready = True


def _evaluate(example: Example) -> None:
    # Made at the document's first example: fixtures reach the namespace only then.
    examples: Examples = example.namespace.get("_examples") or Examples(example.namespace)
    text = examples.source(str(example.parsed))
    if _uses_django(text):
        _django(examples.server)
    if ".get(" in text:
        examples.ensure_worker()
    code = compile(pad(text, example.line + example.parsed.line_offset), example.path, "exec", dont_inherit=True)
    exec(code, example.namespace)
    example.namespace.pop("__builtins__", None)


pytest_collect_file = Sybil(
    parsers=[CodeBlockParser("python", _evaluate)],
    patterns=["README.md", "docs/*.md"],
    teardown=_teardown,
    fixtures=["docs_redis"],
).pytest()
