"""What the documentation names, the code has: commands and flags, JSON fields, signal payloads, keys, the version.

The configuration reference is held to ``settings.SETTINGS`` in
tests/test_settings.py; this module does the same for the rest of what a
reader copies from the docs: every ``celery once`` subcommand and flag of
docs/operating.md against the command line's parser (and back), the fields of
its JSON, the signals' arguments and values against ``events``, every key the
docs and the README spell out against ``keys`` and ``record_keys`` (parsed
back, and built again the way the library writes it), and the version the
site shows.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

import celery_once_task
from celery_once_task import events
from celery_once_task.digest import well_formed_digest
from celery_once_task.keys import CALL_KEY_TYPES, LOCK_TYPES, QUEUE, RUNNING, KeySpace, parse_key
from celery_once_task.ops import cli
from celery_once_task.ops.rows import LockDict
from celery_once_task.ops.workers import WorkerDict
from celery_once_task.record_keys import finished_key, heartbeat_key, legacy_finished_key
from celery_once_task.settings import QUEUE_LOCK_CONFLICTS, QUEUE_LOCK_UNTIL, RUNNING_LOCK_CONFLICTS
from tests.support import RedisServer

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
OPERATING = DOCS / "operating.md"
#: The pages whose keys are checked: every page of the site, and the README (the package's long description).
PAGES = sorted([*DOCS.glob("*.md"), ROOT / "README.md"])


# -- reading the docs ---------------------------------------------------------------


def section(text: str, heading: str) -> str:
    """The text under ``heading`` (a whole heading line), up to the next heading of any level."""
    start = text.index(f"\n{heading}\n") + len(heading) + 2
    found = re.search(r"\n#{1,6} ", text[start:])
    return text[start:start + found.start()] if found else text[start:]


def table(text: str) -> list[list[str]]:
    """The rows of the first Markdown table in ``text`` (header and rule left out), as lists of cells."""
    lines = text.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("|"))
    end = next((index for index in range(start, len(lines)) if not lines[index].startswith("|")), len(lines))
    return [[cell.strip() for cell in line.strip().strip("|").split(" | ")] for line in lines[start + 2:end]]


def top_level(text: str) -> str:
    """``text`` without what its parentheses hold, however nested: what it says of itself, not of its examples."""
    out, depth = [], 0
    for character in text:
        if character == "(":
            depth += 1
        elif character == ")":
            depth = max(0, depth - 1)
        elif not depth:
            out.append(character)
    return "".join(out)


def spans(text: str) -> list[str]:
    """The inline code spans of ``text``."""
    return re.findall(r"`([^`\n]+)`", text)


def quoted(text: str) -> set[str]:
    """The values written as ``"value"`` in code spans of ``text``."""
    return {span[1:-1] for span in spans(text) if len(span) > 1 and span[0] == span[-1] == '"'}


# -- the command line ---------------------------------------------------------------------------


def long_flags(command: click.Command) -> set[str]:
    return {opt for param in command.params for opt in param.opts if opt.startswith("--")}


COMMANDS: dict[str, click.Command] = dict(cli.main.commands)


def documented_commands() -> dict[str, set[str]]:
    rows = table(section(OPERATING.read_text(), "### Commands and flags"))
    return {spans(row[0])[0].split()[0]: set(re.findall(r"--[a-z][a-z-]*", row[1])) for row in rows}


def test_the_operators_page_lists_every_subcommand_of_the_command_line_and_no_other() -> None:
    assert set(documented_commands()) == set(COMMANDS)
    assert set(cli.once.commands) == set(COMMANDS)  # `celery -A proj once` and `celery-once-task` alike


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_operators_page_gives_each_subcommands_flags_as_its_parser_takes_them(name: str) -> None:
    assert documented_commands()[name] == long_flags(COMMANDS[name])


def test_the_operators_page_gives_the_lock_types_the_type_flag_takes() -> None:
    text = section(OPERATING.read_text(), "### Commands and flags")
    sentence = re.search(r"`TYPE` is one of (.*?)\.\s", text, re.S)
    assert sentence is not None
    assert spans(top_level(sentence.group(1))) == list(LOCK_TYPES)
    type_options = [param for param in COMMANDS["locks"].params if "--type" in param.opts]
    assert list(type_options[0].type.choices) == list(LOCK_TYPES)  # type: ignore[attr-defined]


def command_lines() -> Iterator[tuple[str, str]]:
    """``(page, line)`` of every command line of the library's commands the docs and the README show."""
    for page in PAGES:
        text = page.read_text()
        for candidate in [*spans(text), *(line.strip() for line in text.splitlines())]:
            command = candidate.split("#", 1)[0].strip()
            # The program, then a flag or a subcommand: not the package's name in prose or a pip line.
            if re.match(r"(?:celery -A \S+ once|celery-once-task|python -m celery_once_task)(?: +(?:-|[a-z]+\b)|$)",
                        command) and not re.match(r"celery-once-task(?:\[| \d)", command):
                yield page.name, command


@pytest.mark.parametrize(("page", "line"), list(command_lines()))
def test_every_command_line_the_docs_show_runs_a_subcommand_with_flags_it_takes(page: str, line: str) -> None:
    words = line.split()
    standalone = not line.startswith("celery -A")
    group_flags = {opt for param in cli.main.params for opt in param.opts} if standalone else set()
    given = words[3:] if not standalone else words[1:] if words[0] == "celery-once-task" else words[3:]
    name = next((word for word in given if word in COMMANDS), None)
    if name is None:  # the program alone, or its group's flags: `celery-once-task --url URL`
        assert all(word in group_flags for word in given if word.startswith("-")), f"{page}: {line}"
        return
    before, after = given[:given.index(name)], given[given.index(name) + 1:]
    assert all(word in group_flags for word in before if word.startswith("-")), f"{page}: {line}"
    assert {word for word in after if word.startswith("--")} <= long_flags(COMMANDS[name]), f"{page}: {line}"


def test_the_operators_page_names_the_standalone_programs_own_flags() -> None:
    text = OPERATING.read_text()
    for param in cli.main.params:
        assert any(f"`{opt}`" in text or f" {opt} " in text for opt in param.opts), param.opts


# -- the JSON the commands print ----------------------------------------------------------------


def documented_fields(heading_sentence: str) -> list[str]:
    text = section(OPERATING.read_text(), "### JSON output")
    return [spans(row[0])[0] for row in table(text.split(heading_sentence, 1)[1])]


def test_the_operators_page_gives_every_field_of_a_lock_object_and_no_other() -> None:
    assert documented_fields("A lock object has these fields:") == list(LockDict.__annotations__)


def test_the_operators_page_gives_every_field_of_a_worker_object_and_no_other() -> None:
    assert documented_fields("A worker object has these fields:") == list(WorkerDict.__annotations__)


def json_shapes() -> dict[str, str]:
    rows = table(section(OPERATING.read_text(), "### JSON output"))
    return {row[0]: row[1] for row in rows}


@pytest.fixture
def standalone(redis_server: RedisServer) -> Iterator[Any]:
    runner = CliRunner()

    def run(*arguments: str) -> Any:
        return runner.invoke(cli.main, ["--url", f"{redis_server.url}/2", *arguments], catch_exceptions=False)

    yield run


@pytest.mark.parametrize(("row", "arguments", "exit_code"), [
    ("`clear ... --json` without `--yes`", ("clear", "--task", "no.such.task", "--json"), 1),
    ("`clear ... --yes --json`", ("clear", "--task", "no.such.task", "--yes", "--json"), 0),
])
def test_clears_json_has_the_documented_keys(standalone: Any, row: str, arguments: tuple[str, ...],
                                             exit_code: int) -> None:
    done = standalone(*arguments)
    assert done.exit_code == exit_code
    documented = re.findall(r'"([a-z_]+)":', json_shapes()[row])
    assert list(json.loads(done.output)) == documented


def test_workers_json_is_a_list_as_documented(standalone: Any) -> None:
    done = standalone("workers", "--json")
    assert done.exit_code == 0 and isinstance(json.loads(done.output), list)
    assert json_shapes()["`workers --json`"] == "a list of worker objects"


# -- the signals ---------------------------------------------------------------------------------


SIGNALS = {name: value for name, value in vars(events).items() if type(value).__name__ == "Signal"}


def signal_rows() -> dict[str, list[str]]:
    return {spans(row[0])[0]: row for row in table(section(OPERATING.read_text(), "## Signals"))}


def test_the_operators_page_lists_every_signal_of_the_library() -> None:
    assert set(signal_rows()) == set(SIGNALS)


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_the_operators_page_gives_each_signals_arguments_as_it_is_sent(name: str) -> None:
    documented = set(spans(top_level(signal_rows()[name][2])))
    assert documented == {"sender", *SIGNALS[name].providing_args}


def test_the_documented_policy_and_window_values_are_those_the_code_sends() -> None:
    rows = signal_rows()
    assert quoted(rows["duplicate_call"][2]) == {*QUEUE_LOCK_CONFLICTS, *QUEUE_LOCK_UNTIL, "unique_for"}
    assert quoted(rows["duplicate_execution"][2]) == set(RUNNING_LOCK_CONFLICTS)


def test_the_operators_page_lists_every_reason_of_lock_recovered() -> None:
    text = section(OPERATING.read_text(), "## Signals").split("`lock_recovered`'s `reason` is one of these", 1)[1]
    documented = [spans(row[0])[0].strip('"') for row in table(text)]
    assert documented == [reason.replace("{why}", "<why>") for reason in events.RECOVERY_REASONS]


# -- keys -----------------------------------------------------------------------------------------

#: A value for each placeholder the docs write in keys.
DIGEST = "5a22e471c650ee22"
TASK_ID = "62ac4d0e-8f7b-4c1e-9d3a-0b5c6d7e8f90"
PLACEHOLDERS = {
    "<task name>": "proj.tasks.send_invoice", "<task>": "proj.tasks.send_invoice", "<digest>": DIGEST,
    "<task id>": TASK_ID, "<instance>": "e7361c0f2a9b4d58",
    "<queue lock key>": f"once_task:proj.tasks.send_invoice:{DIGEST}:queue",
    "<running lock key>": f"once_task:proj.tasks.send_invoice:{DIGEST}:running",
}
#: A finished record's key, as the library writes it for the running lock above: its tag and id.
_RECORD = finished_key(PLACEHOLDERS["<running lock key>"], TASK_ID, "call-1")
PLACEHOLDERS["<tag>"], PLACEHOLDERS["<id>"] = _RECORD.split("{", 1)[1].split("}", 1)
TYPE_PLACEHOLDERS = ("<lock type>", "<type>")


def documented_keys() -> Iterator[tuple[str, str]]:
    """``(page, key)`` of every key the docs spell out, in code spans or alone on a line of a code block."""
    for page in PAGES:
        text = page.read_text()
        candidates = [*spans(text), *(line.strip() for line in text.splitlines())]
        for candidate in candidates:
            if not re.match(r"once_task(?:_done|_worker)?:\S+$", re.sub(r"<[a-z ]+>", "x", candidate)):
                continue
            if "..." in candidate or "*" in candidate or "…" in candidate:  # elided, or a pattern
                continue
            yield page.name, candidate


def instances(key: str) -> list[str]:
    for placeholder, value in PLACEHOLDERS.items():
        key = key.replace(placeholder, value)
    for placeholder in TYPE_PLACEHOLDERS:
        if placeholder in key:
            return [key.replace(placeholder, lock_type) for lock_type in CALL_KEY_TYPES]
    return [key]


def written(key: str) -> bool:
    """Whether the library writes ``key`` exactly so: parsed, then built again from its parts."""
    if key.startswith("once_task_worker:"):
        return key == heartbeat_key(key.split(":", 1)[1])
    if key.startswith("once_task_done:"):
        # A record's key is a digest (``finished_key``): its shape is what the docs can promise, and the
        # pre-release form a pickup still reads.
        return (re.fullmatch(r"once_task_done:\{[0-9a-zA-Z]{1,3}\}[0-9a-z]{12}", key) is not None
                or key == legacy_finished_key(PLACEHOLDERS["<running lock key>"], TASK_ID))
    parts = parse_key(key, CALL_KEY_TYPES)
    if parts is None or not well_formed_digest(parts.digest):
        return False
    return key == KeySpace("once_task", parts.task, "").of_type(parts.digest, parts.type)


@pytest.mark.parametrize(("page", "key"), sorted(set(documented_keys())))
def test_every_key_the_docs_spell_out_is_one_the_library_writes(page: str, key: str) -> None:
    assert "<" not in " ".join(instances(key)), f"{page}: {key} has a placeholder this test does not know"
    assert any(written(instance) for instance in instances(key)), f"{page}: the library writes no key like {key}"


def test_the_docs_spell_out_a_key_of_every_form() -> None:
    keys = [instance for _, key in documented_keys() for instance in instances(key) if written(instance)]
    forms = {parse_key(key, CALL_KEY_TYPES).type for key in keys if parse_key(key, CALL_KEY_TYPES)}  # type: ignore[union-attr]
    assert forms >= {QUEUE, RUNNING, "slots", "waiters", "messages", "burst", "unique", "args"}
    assert any(key.startswith("once_task_done:") for key in keys)  # a finished record
    assert any(key.startswith("once_task_worker:") for key in keys)


def test_the_example_key_of_the_guarantees_page_is_the_calls_key() -> None:
    from celery import Celery

    from celery_once_task import OnceTask

    app = Celery("reference", set_as_current=False)

    @app.task(base=OnceTask, name="proj.tasks.send_invoice", shared=False)
    def send_invoice(customer_id: int, month: str) -> None: ...

    key = send_invoice.once_key((42, "2026-11"), {}, QUEUE)
    assert f"`{key}`" in (DOCS / "guarantees.md").read_text()
    assert f"`{key}`" in (ROOT / "CHANGELOG.md").read_text()  # the upgrade's example
    # ... beside the key 1.0.0 gave the same call: a SHA-256 of the name and the str() of the arguments.
    old = hashlib.sha256(f"{send_invoice.name}:{(42, '2026-11')!s}:".encode()).hexdigest()[:16]
    changelog = " ".join((ROOT / "CHANGELOG.md").read_text().split())
    assert f"`once_task:{send_invoice.name}:{old}:queue` in 1.0.0" in changelog
    assert send_invoice.once_key((42, "2026-11"), {}, RUNNING) == PLACEHOLDERS["<running lock key>"]


# -- headings -------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", sorted(path.name for path in DOCS.glob("*.md")))
def test_every_page_of_the_site_has_sections_for_its_table_of_contents(page: str) -> None:
    text = (DOCS / page).read_text()
    if text.strip() == '--8<-- "CHANGELOG.md"':  # the changelog page is the file
        text = (ROOT / "CHANGELOG.md").read_text()
    assert re.match(r"# \S", text), f"{page} has no title"
    assert re.search(r"(?m)^## \S", text), f"{page} has no sections"


# -- the version ----------------------------------------------------------------------------------


def site_hooks() -> Any:
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "scripts" / "mkdocs_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_site_shows_the_packages_version() -> None:
    assert "\n  - scripts/mkdocs_hooks.py\n" in (ROOT / "mkdocs.yml").read_text()
    config = site_hooks().on_config({"extra": {}, "copyright": None})
    assert config["extra"]["version"] == celery_once_task.__version__
    assert celery_once_task.__version__ in config["copyright"]


def test_the_distribution_takes_its_version_from_the_package() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert 'version = {attr = "celery_once_task.__version__"}' in pyproject
    assert not re.search(r'(?m)^version = "', pyproject)


def test_the_changelogs_newest_release_is_the_packages_version() -> None:
    releases = re.findall(r"(?m)^## \[([^\]]+)\]", (ROOT / "CHANGELOG.md").read_text())
    assert releases[:2] == ["Unreleased", celery_once_task.__version__]
    assert (DOCS / "changelog.md").read_text().strip() == '--8<-- "CHANGELOG.md"'
