"""configure(), its validation, which value wins where several are set, and the one table of settings.

Where Python's typing needs a setting's name written out (the ``Settings``
fields, ``configure()``'s keywords, ``OnceTask``'s options) and where it is
documented (their docstrings, docs/configuration.md), the tests at the end
hold it to ``settings.SETTINGS``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, Optional, get_type_hints

import pytest

from celery_once_task import OnceTask, configure
from celery_once_task.settings import (
    APP_CONF_NAMES,
    CONFIGURE_ONLY,
    DEFAULT_QUEUE_LOCK_TIMEOUT,
    DEFAULT_REDIS_URL,
    DEFAULT_RUNNING_LOCK_TIMEOUT,
    SETTINGS,
    TASK_OPTIONS,
    Settings,
    SettingSpec,
    reset_configuration,
    resolve,
)
from tests import worker_app as tasks

REFERENCE = Path(__file__).parent.parent / "docs" / "configuration.md"
#: The options of ``OnceTask`` that are not settings: a task's alone.
TASK_ONLY_OPTIONS = ("queue_lock", "running_lock", "lock_args", "lock_name", "running_limit", "throttle",
                     "throttle_conflict")
#: The type of a setting's value in ``Settings``, by its kind (a choice: the ``Literal`` of its values).
KIND_TYPES: dict[str, Any] = {
    "url": str, "options": Mapping[str, Any], "int_seconds": int, "seconds": Optional[float], "bool": bool,
    "name": str,
}
#: What the configuration reference says of each kind of value.
KIND_PHRASES = {
    "url": "Any other form is an error.", "options": "Must be a dict with string keys.",
    "int_seconds": "A positive integer (seconds)", "seconds": "A positive number of seconds",
    "bool": "`True` or `False`.",
    "name": "A text of 1 to 100 printable characters, without braces, whitespace or colons.",
}


@pytest.fixture(autouse=True)
def restore_configuration() -> Iterator[None]:
    yield
    reset_configuration()
    configure(redis_url=tasks.LOCKS_URL)
    for name in ("once_queue_lock_timeout", "once_redis_url"):
        tasks.app.conf.pop(name, None)


def queue_ttl(locks: Any, tag: str) -> int:
    return int(locks.pttl(tasks.parked.once_key((tag,), {}, "queue")))


def test_defaults_are_the_documented_ones() -> None:
    reset_configuration()
    assert resolve() == Settings(DEFAULT_REDIS_URL, 3600, 3600, False)
    assert (DEFAULT_REDIS_URL, DEFAULT_QUEUE_LOCK_TIMEOUT, DEFAULT_RUNNING_LOCK_TIMEOUT) == (
        "redis://localhost:6379/3", 3600, 3600)


def test_configure_changes_only_what_it_is_given() -> None:
    configure(queue_lock_timeout=5)
    configure(running_lock_timeout=6)
    assert resolve() == Settings(tasks.LOCKS_URL, 5, 6, False)


@pytest.mark.parametrize("value", [0, -1, 1.5, "60", True, None.__class__])
def test_timeouts_must_be_positive_integers(value: Any) -> None:
    with pytest.raises(ValueError, match="queue_lock_timeout must be a positive integer"):
        configure(queue_lock_timeout=value)
    with pytest.raises(ValueError, match="running_lock_timeout must be a positive integer"):
        configure(running_lock_timeout=value)


@pytest.mark.parametrize("url", ["http://localhost:6379/0", "localhost:6379", "", 6379])
def test_redis_url_must_be_a_redis_url(url: Any) -> None:
    with pytest.raises(ValueError, match=r"redis_url .*redis://, rediss://, unix://"):
        configure(redis_url=url)


@pytest.mark.parametrize("url", ["redis://h:1/0", "rediss://h:1/0", "unix:///tmp/redis.sock"])
def test_redis_rediss_and_unix_urls_are_accepted(url: str) -> None:
    configure(redis_url=url)
    assert resolve().redis_url == url


def test_a_rejected_value_changes_nothing() -> None:
    configure(queue_lock_timeout=5)
    with pytest.raises(ValueError):
        configure(queue_lock_timeout=7, running_lock_timeout=0)
    assert resolve().queue_lock_timeout == 5


def test_configure_refuses_debounce_max_below_debounce_when_it_is_called() -> None:
    with pytest.raises(ValueError, match=r"^configure\(\): debounce_max \(1\) must be at least debounce \(5\)$"):
        configure(debounce=5, debounce_max=1)
    assert resolve().debounce is None


def test_configure_refuses_a_setting_that_contradicts_one_it_set_before() -> None:
    configure(debounce=5)
    with pytest.raises(ValueError, match="debounce_max"):
        configure(debounce_max=1)
    with pytest.raises(ValueError, match="unique_for cannot be used with debounce"):
        configure(unique_for=60)
    assert resolve().debounce_max is None


def test_configure_again_takes_effect_for_the_next_lock(locks: Any) -> None:
    configure(queue_lock_timeout=77)
    tag = uuid.uuid4().hex
    tasks.parked.delay(tag)
    assert 76_000 < queue_ttl(locks, tag) <= 77_000


def test_configure_redis_url_moves_the_locks(redis_server: Any) -> None:
    configure(redis_url=f"{redis_server.url}/5")
    tag = uuid.uuid4().hex
    tasks.parked.delay(tag)
    assert redis_server.client(5).exists(tasks.parked.once_key((tag,), {}, "queue")) == 1


def test_app_configuration_wins_over_configure(locks: Any) -> None:
    configure(queue_lock_timeout=77)
    tasks.app.conf.once_queue_lock_timeout = 55
    tag = uuid.uuid4().hex
    tasks.parked.delay(tag)
    assert 54_000 < queue_ttl(locks, tag) <= 55_000


def test_task_option_wins_over_app_configuration() -> None:
    tasks.app.conf.once_queue_lock_timeout = 55
    assert resolve(tasks.app, tasks.own_timeouts).queue_lock_timeout == 70
    assert resolve(tasks.app, tasks.parked).queue_lock_timeout == 55


def test_invalid_app_configuration_is_named_at_the_call() -> None:
    tasks.app.conf.once_queue_lock_timeout = "soon"
    with pytest.raises(ValueError, match=r"app\.conf\.once_queue_lock_timeout must be a positive integer"):
        tasks.parked.delay(uuid.uuid4().hex)


def spec_id(spec: SettingSpec) -> str:
    return spec.name


def field_type(spec: SettingSpec) -> Any:
    kind = Literal[spec.choices] if spec.kind == "choice" else KIND_TYPES[spec.kind]
    # A setting unset by default (None: decided elsewhere, such as by the broker) is Optional.
    return Optional[kind] if spec.default is None else kind


def docstring_entries(obj: Any, section: str) -> dict[str, str]:
    """The entries of a Google-style docstring section (``Args:``, ``Attributes:``): name -> text, in order."""
    lines = (inspect.getdoc(obj) or "").splitlines()
    assert f"{section}:" in lines, f"{obj.__qualname__}'s docstring has no {section} section"
    entries: dict[str, str] = {}
    name = ""
    for line in lines[lines.index(f"{section}:") + 1:]:
        if not line.startswith("    "):
            break
        if line.startswith("        "):  # the entry goes on
            entries[name] += " " + line.strip()
        else:
            name, _, text = line.strip().partition(": ")
            entries[name] = text
    return entries


def test_the_table_derives_the_names_and_the_task_options() -> None:
    assert {spec.name: f"once_{spec.name}" for spec in SETTINGS} == APP_CONF_NAMES
    assert tuple(spec.name for spec in SETTINGS if spec.task_option) == TASK_OPTIONS
    assert [spec.django_name for spec in SETTINGS] == [f"CELERY_ONCE_{spec.name.upper()}" for spec in SETTINGS]
    assert all((spec.kind == "choice") == bool(spec.choices) for spec in SETTINGS)


def test_the_settings_fields_are_the_table() -> None:
    fields = dataclasses.fields(Settings)
    assert [field.name for field in fields] == [spec.name for spec in SETTINGS]
    hints = get_type_hints(Settings)
    for field, spec in zip(fields, SETTINGS):
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default  # type: ignore[operator]
        assert default == spec.default, f"Settings.{spec.name} defaults to {default!r}, the table to {spec.default!r}"
        assert hints[spec.name] == field_type(spec), f"Settings.{spec.name} is a {hints[spec.name]}"
        if spec.default is not None:  # None is "not set", never checked
            assert spec.check(spec.default, spec.name) == spec.default, f"{spec.name}'s default is not valid"


def test_configure_takes_every_setting_and_documents_it() -> None:
    parameters = inspect.signature(configure).parameters
    # The settings, then the arguments that are not settings (the OpenTelemetry providers).
    assert list(parameters) == [*(spec.name for spec in SETTINGS), *CONFIGURE_ONLY]
    # The first three stay positional, as they were before the others came.
    assert [p.kind for p in parameters.values()] == (
        [inspect.Parameter.POSITIONAL_OR_KEYWORD] * 3
        + [inspect.Parameter.KEYWORD_ONLY] * (len(SETTINGS) - 3 + len(CONFIGURE_ONLY)))
    assert all(p.default is None for p in parameters.values())
    hints = get_type_hints(configure)
    for spec in SETTINGS:
        assert hints[spec.name] == Optional[field_type(spec)], f"configure({spec.name}) takes a {hints[spec.name]}"
    documented = docstring_entries(configure, "Args")
    assert list(documented) == [*(spec.name for spec in SETTINGS), *CONFIGURE_ONLY]
    for spec in SETTINGS:
        assert documented[spec.name].startswith(spec.doc), f"configure()'s docstring: {spec.name} is not {spec.doc!r}"
    assert "ValueError" in docstring_entries(configure, "Raises")


def test_the_task_options_of_oncetask_are_those_of_the_table() -> None:
    options = [name for name in OnceTask.__annotations__ if not name.startswith("_")]
    assert sorted(options) == sorted({*TASK_OPTIONS, *TASK_ONLY_OPTIONS})
    assert not [spec.name for spec in SETTINGS if not spec.task_option and hasattr(OnceTask, spec.name)]
    hints = get_type_hints(OnceTask)
    for spec in SETTINGS:
        if spec.task_option:
            assert getattr(OnceTask, spec.name) is None, f"OnceTask.{spec.name} must default to None (the setting)"
            assert hints[spec.name] == Optional[field_type(spec)], f"OnceTask.{spec.name} is a {hints[spec.name]}"
    documented = docstring_entries(OnceTask, "Attributes")
    assert list(documented) == options, "OnceTask's docstring documents its options, in their order"
    for name in TASK_OPTIONS:
        doc = next(spec.doc for spec in SETTINGS if spec.name == name)
        assert documented[name].startswith(doc), f"OnceTask's docstring: {name} is not {doc!r}"


def test_a_task_option_is_checked_where_the_task_is_defined() -> None:
    with pytest.raises(ValueError, match=r"^\S+\.Bad: running_lock_conflict must be one of 'reject', 'wait', "
                                         r"got 'later'$"):
        class Bad(OnceTask):
            running_lock_conflict = "later"  # type: ignore[assignment]


@pytest.mark.parametrize("spec", SETTINGS, ids=spec_id)
def test_the_configuration_reference_gives_every_setting_in_its_three_spellings(spec: SettingSpec) -> None:
    name = spec.name
    text = REFERENCE.read_text()
    assert f"### `{name}`\n" in text, f"docs/configuration.md has no section for {name}"
    section = " ".join(text.split(f"### `{name}`\n", 1)[1].split("\n### ", 1)[0].split())
    spellings = f"`configure({name}=...)` · `app.conf.{APP_CONF_NAMES[name]}` · `CELERY_ONCE_{name.upper()}`"
    assert spellings in section, f"docs/configuration.md does not give {name} in its three spellings"
    # What the table says of the setting, the reference says too.
    shown = json.dumps(spec.default) if isinstance(spec.default, str) else repr(spec.default)
    assert f"Default: `{shown}`" in section, f"docs/configuration.md does not give {name}'s default, {shown}"
    kind = (f"One of {', '.join(f'`{json.dumps(choice)}`' for choice in spec.choices)}." if spec.kind == "choice"
            else KIND_PHRASES[spec.kind])
    assert kind in section, f"docs/configuration.md does not say of {name}: {kind}"
    assert ("Also a task option." in section) == spec.task_option, f"docs/configuration.md: is {name} a task option?"


@pytest.mark.parametrize("option", sorted({*TASK_OPTIONS, *TASK_ONLY_OPTIONS}))
def test_the_configuration_reference_lists_every_task_option(option: str) -> None:
    options = REFERENCE.read_text().split("## Task options\n", 1)[1]
    assert f"`{option}`" in options, f"docs/configuration.md does not list the task option {option}"
