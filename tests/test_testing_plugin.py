"""The pytest plugin ``celery_once_task.testing``, used as a user would: a test file of theirs, run by pytest.

Each run is a pytest of its own in a subprocess (``pytester``), in a temp dir
holding only the user's file, with the plugin named by ``-p`` (installed, the
``pytest11`` entry point registers it under that same name).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support import ROOT

pytest_plugins = ["pytester"]

PLUGIN = "celery_once_task.testing"

#: A user's tasks and tests: the queue lock of a published call, the running lock around an eager one,
#: and a second test that finds none of the first test's locks.
USER_TESTS = '''
from celery import Celery

from celery_once_task import OnceTask
from celery_once_task.testing import held_keys, is_queued, is_running

app = Celery("shop", broker="memory://", set_as_current=False)


@app.task(base=OnceTask, shared=False)
def send_invoice(customer, month):
    return f"{customer}:{month}"


@app.task(base=OnceTask, shared=False)
def report(customer):
    return is_running(report, customer)


def test_a_published_call_is_queued_and_its_duplicate_dropped(once_task_store):
    assert send_invoice.delay(42, "2026-11") is not None
    assert is_queued(send_invoice, 42, "2026-11")
    assert once_task_store.is_queued(send_invoice, customer=42, month="2026-11")
    assert not is_queued(send_invoice, 43, "2026-11")
    assert send_invoice.delay(42, "2026-11") is None
    assert held_keys() == [send_invoice.once_key((42, "2026-11"), {}, "queue")]


def test_the_first_tests_lock_is_gone(once_task_store):
    assert held_keys() == []
    assert not is_queued(send_invoice, 42, "2026-11")
    assert send_invoice.delay(42, "2026-11") is not None


def test_an_eager_call_holds_its_running_lock_while_it_runs(once_task_store):
    assert report.apply((7,)).get() is True
    assert not is_running(report, 7)
    assert held_keys() == []


def test_disabled_calls_take_no_lock(once_disabled, once_task_store):
    assert send_invoice.delay(42, "2026-11") is not None
    assert send_invoice.delay(42, "2026-11") is not None
    assert held_keys() == []
'''


@pytest.fixture
def user_tests(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.delenv("ONCE_REDIS_URL", raising=False)
    monkeypatch.delenv("ONCE_REDIS_SERVER", raising=False)
    pytester.makepyfile(test_user=USER_TESTS)
    return pytester


def test_the_plugin_is_declared_as_a_pytest11_entry_point() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    section = pyproject.split("[project.entry-points.pytest11]\n", 1)[1].split("\n[", 1)[0]
    assert re.search(rf'^"{re.escape(PLUGIN)}" = "{re.escape(PLUGIN)}"$', section, re.MULTILINE)


def test_importing_the_plugin_starts_nothing_and_configures_nothing() -> None:
    # What pytest does with a registered plugin at start-up: import it. A server or a setting would
    # then come to every test session of every project that has the library installed.
    probe = textwrap.dedent(f"""
        import subprocess

        started = []
        subprocess.Popen = lambda *args, **kwargs: started.append(args)
        import {PLUGIN}
        from celery_once_task import settings

        print(started, dict(settings._configured.values()), settings._configured.integration)
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] {} None"


def test_a_users_tests_pass_with_the_plugins_fixtures_and_leave_no_locks_to_each_other(
        user_tests: pytest.Pytester) -> None:
    result = user_tests.runpytest_subprocess("-p", PLUGIN, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)


def test_a_missing_redis_server_skips_with_the_package_to_install(
        user_tests: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server on it
    result = user_tests.runpytest_subprocess("-p", PLUGIN, "-p", "no:cacheprovider", "-rs",
                                             "-k", "first_tests_lock")
    result.assert_outcomes(skipped=1, deselected=3)
    result.stdout.fnmatch_lines(["*redis-server not found: apt-get install redis-server / brew install redis*"])


def test_once_disabled_needs_no_server(user_tests: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    user_tests.makepyfile(test_disabled='''
        from celery import Celery

        from celery_once_task import OnceTask

        app = Celery("shop", broker="memory://", set_as_current=False)
        app.conf.task_always_eager = True


        @app.task(base=OnceTask, shared=False)
        def send_invoice(customer, month):
            return f"{customer}:{month}"


        def test_eager_calls_run_with_the_library_switched_off(once_disabled):
            assert send_invoice.delay(42, "2026-11").get() == "42:2026-11"
    ''')
    result = user_tests.runpytest_subprocess("-p", PLUGIN, "-p", "no:cacheprovider", "test_disabled.py")
    result.assert_outcomes(passed=1)
