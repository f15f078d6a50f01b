"""The Django locks page, in a real browser: headless Chromium driven by Selenium, against ``runserver``.

The test project (``tests/django_project``) is served by ``python -m django
runserver`` with ``site_settings`` (the admin on top of the project's settings),
on SQLite in a temp dir, with three users: a superuser, a staff user without
the ``celery_once_task.clear_lock`` permission (``viewer``) and one it was
granted to (``clearer``). The locks on the page are taken by real calls of the
project's tasks, made in a subprocess with the project's own settings, and by
a real worker of the project.

``ONCE_TEST_SCREENSHOT=path.png`` saves a screenshot of the page there
(docs/operations-locks-page.png is one).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.support import ROOT, RedisServer, Worker, events, free_port, running_worker, wait_until

SITE_SETTINGS = "tests.django_project.site_settings"
PROJECT_SETTINGS = "tests.django_project.settings"
#: In the lock store's URL: the page must never show it.
STORE_PASSWORD = f"store-pw-{uuid.uuid4().hex[:12]}"
USER_PASSWORD = "page-user-password"

CREATE_USERS = f"""
from django.contrib.auth.models import Permission, User
User.objects.create_superuser("admin", "admin@example.com", {USER_PASSWORD!r})
User.objects.create_user("viewer", password={USER_PASSWORD!r}, is_staff=True)
clearer = User.objects.create_user("clearer", password={USER_PASSWORD!r}, is_staff=True)
clearer.user_permissions.add(Permission.objects.get(content_type__app_label="celery_once_task", codename="clear_lock"))
"""

# Publishes shop.tasks.<name>(tag) as the project's code would; prints its id and lock keys.
PUBLISH = """
import json, sys
import django
django.setup()
from tests.django_project import celery_app
from tests.django_project.guard import check_lock_store
from tests.django_project.shop import tasks
check_lock_store(celery_app)
task, tag = getattr(tasks, sys.argv[1]), sys.argv[2]
result = task.delay(tag)
print(json.dumps({"id": result.id, "queue": task.once_key((tag,), {}, "queue"),
                  "running": task.once_key((tag,), {}, "running")}))
"""


@dataclass
class Site:
    url: str
    database: Path

    def env(self, settings: str) -> dict[str, str]:
        env = {name: value for name, value in os.environ.items() if name != "ONCE_TEST_DJANGO_OVERRIDES"}
        return {**env, "DJANGO_SETTINGS_MODULE": settings, "ONCE_TEST_DJANGO_DB": str(self.database),
                "ONCE_TEST_LOCK_STORE_PASSWORD": STORE_PASSWORD}

    def publish(self, task: str, tag: str) -> dict[str, str]:
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(PUBLISH), task, tag], cwd=ROOT,
                              env=self.env(PROJECT_SETTINGS), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _django(site: Site, *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "django", *args], cwd=ROOT, env=site.env(SITE_SETTINGS),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def site(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("site")
    port = free_port()
    site = Site(f"http://127.0.0.1:{port}", directory / "db.sqlite3")
    _django(site, "migrate", "--verbosity", "0")
    _django(site, "shell", "-c", CREATE_USERS)
    with open(directory / "runserver.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "django", "runserver", f"127.0.0.1:{port}", "--noreload"],
                                  cwd=ROOT, env=site.env(SITE_SETTINGS), stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: server.poll() is None and _answers(f"{site.url}/admin/login/"), timeout=60,
                       what=f"runserver to answer; log:\n{(directory / 'runserver.log').read_text()}")
            yield site
        finally:
            server.terminate()
            server.wait(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    driver_path = shutil.which("chromedriver")
    assert driver_path, "chromedriver is not installed: run `bash scripts/test.sh` (it installs chromium-driver)"
    options = Options()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,700"):
        options.add_argument(argument)
    # The driver given: Selenium must not try to download one.
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def dlocks(redis_server: RedisServer) -> redis.Redis:
    """The project's lock store (``CELERY_ONCE_REDIS_URL``: database 11)."""
    return redis_server.client(11)


@pytest.fixture(scope="module")
def drecs(redis_server: RedisServer) -> redis.Redis:
    return redis_server.client(14)


@pytest.fixture
def held_running(site: Site, redis_server: RedisServer, drecs: redis.Redis) -> Iterator[tuple[Worker, dict[str, str]]]:
    """``shop.tasks.gated`` held running on a real worker of the project, while the test runs."""
    tag = uuid.uuid4().hex
    with running_worker(redis_server.port, "page", app="tests.django_project",
                        env=site.env(PROJECT_SETTINGS)) as worker:
        published = site.publish("gated", tag)
        try:
            wait_until(lambda: events(drecs, tag, "start"), timeout=30, what="shop.tasks.gated to start")
            yield worker, published
        finally:
            drecs.rpush(f"gate:{tag}", 1)
            wait_until(lambda: events(drecs, tag, "end"), timeout=30, what="shop.tasks.gated to end")
            drecs.delete(f"records:{tag}", f"gate:{tag}")


def log_in(browser: WebDriver, site: Site, user: str) -> None:
    browser.delete_all_cookies()
    browser.get(f"{site.url}/admin/login/?next=/admin/once-locks/")
    browser.find_element(By.ID, "id_username").send_keys(user)
    browser.find_element(By.ID, "id_password").send_keys(USER_PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_until(lambda: browser.find_elements(By.ID, "once-locks"), timeout=20, what=f"the locks page as {user}")


def row(browser: WebDriver, key: str) -> Any:
    return browser.find_element(By.CSS_SELECTOR, f'tr.once-lock[data-key="{key}"]')


def cell(browser: WebDriver, key: str, name: str) -> str:
    return str(row(browser, key).find_element(By.CLASS_NAME, name).text)


def rows(browser: WebDriver, key: str) -> list[Any]:
    return list(browser.find_elements(By.CSS_SELECTOR, f'tr.once-lock[data-key="{key}"]'))


def test_page_lists_a_queue_lock_taken_by_a_real_call(browser: WebDriver, site: Site) -> None:
    parked = site.publish("parked", uuid.uuid4().hex)
    log_in(browser, site, "viewer")
    assert cell(browser, parked["queue"], "task-id") == parked["id"]


def test_page_lists_a_running_lock_with_its_worker_alive(
    browser: WebDriver, site: Site, held_running: tuple[Worker, dict[str, str]]
) -> None:
    worker, published = held_running
    site.publish("parked", uuid.uuid4().hex)  # a queue lock beside it, for the screenshot
    log_in(browser, site, "clearer")
    key = published["running"]
    assert (cell(browser, key, "task-id"), cell(browser, key, "worker"), cell(browser, key, "liveness")) == (
        published["id"], worker.name, "alive")
    screenshot = os.environ.get("ONCE_TEST_SCREENSHOT")
    if screenshot:
        browser.save_screenshot(screenshot)


def test_page_never_shows_the_lock_stores_password(browser: WebDriver, site: Site) -> None:
    log_in(browser, site, "admin")
    assert browser.find_element(By.ID, "once-store").text.startswith("redis://default:***@127.0.0.1:")
    assert STORE_PASSWORD not in browser.page_source


def test_staff_without_the_permission_sees_no_clear_button(browser: WebDriver, site: Site) -> None:
    parked = site.publish("parked", uuid.uuid4().hex)
    log_in(browser, site, "viewer")
    assert row(browser, parked["queue"]).find_elements(By.CSS_SELECTOR, "input.once-clear") == []


def test_staff_without_the_permission_gets_403_for_a_clear(browser: WebDriver, site: Site, dlocks: Any) -> None:
    parked = site.publish("parked", uuid.uuid4().hex)
    log_in(browser, site, "viewer")
    # The POST a clear button would send, with the session's CSRF token.
    status, body = browser.execute_async_script(
        """
        const [key, value, done] = arguments;
        const token = document.cookie.split("; ").find(c => c.startsWith("csrftoken=")).split("=")[1];
        const body = new URLSearchParams({key, value, csrfmiddlewaretoken: token});
        fetch(location.pathname, {method: "POST", body, credentials: "same-origin", redirect: "manual"})
            .then(response => response.text().then(text => done([response.status, text])));
        """,
        parked["queue"], parked["id"],
    )
    assert status == 403
    assert "CSRF" not in body  # refused for the permission, not for the token
    assert dlocks.get(parked["queue"]) == parked["id"].encode()


def test_a_user_granted_the_permission_clears_a_lock_and_it_is_gone_from_redis(
    browser: WebDriver, site: Site, dlocks: Any
) -> None:
    parked = site.publish("parked", uuid.uuid4().hex)
    log_in(browser, site, "clearer")
    row(browser, parked["queue"]).find_element(By.CSS_SELECTOR, "input.once-clear").click()
    wait_until(lambda: f"Cleared {parked['queue']}." in browser.page_source, timeout=20, what="the page's answer")
    assert dlocks.exists(parked["queue"]) == 0
    assert rows(browser, parked["queue"]) == []


def test_clear_leaves_a_lock_that_changed_hands_since_the_page_was_loaded(
    browser: WebDriver, site: Site, dlocks: Any
) -> None:
    parked = site.publish("parked", uuid.uuid4().hex)
    log_in(browser, site, "clearer")
    dlocks.set(parked["queue"], "another-owner", px=60_000)
    row(browser, parked["queue"]).find_element(By.CSS_SELECTOR, "input.once-clear").click()
    wait_until(lambda: "it changed hands since the page was loaded" in browser.page_source, timeout=20,
               what="the page's answer")
    assert dlocks.get(parked["queue"]) == b"another-owner"
    dlocks.delete(parked["queue"])
