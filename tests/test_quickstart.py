"""The Quick Start, run as a reader runs it (README.md, docs/getting-started.md).

``examples/quickstart/`` is the project the Quick Start lays out, file for file.
Its blocks are fenced ``py``, not ``python``: they are files of a package, run
here as one, not snippets run in one namespace by the examples' harness
(``conftest.py``). The test copies the project to a temp dir, starts the worker
with the Quick Start's command there, runs its calls and compares what they
print with the output the Quick Start shows. The only difference from a
reader's machine: ``REDIS_URL`` names this test's own redis-server instead of
the default ``redis://localhost:6379/0``. The packages are this test run's, so
the install line is checked against what the project imports instead.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.support import ROOT, RedisServer, wait_until

PROJECT = ROOT / "examples" / "quickstart"
DOCUMENTS = [ROOT / "README.md", ROOT / "docs" / "getting-started.md"]
DEFAULT_URL = "redis://localhost:6379/0"
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```\n", re.MULTILINE | re.DOTALL)


class QuickStart:
    """A document's Quick Start section: its files, commands and output."""

    def __init__(self, document: Path) -> None:
        text = document.read_text()
        start = re.search(r"^## Quick [Ss]tart\n", text, re.MULTILINE)
        assert start is not None, f"{document.name} has no Quick Start section"
        end = re.compile(r"^## ", re.MULTILINE).search(text, start.end())
        blocks = _BLOCK.findall(text[start.end():end.start() if end else len(text)])
        self.files = {code.splitlines()[0].removeprefix("# "): code for language, code in blocks if language == "py"}
        commands = [code.strip() for language, code in blocks if language == "bash"]
        self.install = _one(commands, "pip install")
        self.worker = _one(commands, "celery -A")
        self.calls = _one(commands, "python -m")
        self.output = _one([code for language, code in blocks if language == "text"], "")


class Run(NamedTuple):
    output: str
    worker_log: Path


def _one(candidates: list[str], start: str) -> str:
    found = [text for text in candidates if text.startswith(start)]
    assert len(found) == 1, f"expected one block starting {start!r}, found {found}"
    return found[0]


def _project_files() -> dict[str, str]:
    return {str(path.relative_to(PROJECT)): path.read_text() for path in sorted(PROJECT.rglob("*.py"))}


def _in_the_standard_library(module: str) -> bool:
    names = getattr(sys, "stdlib_module_names", None)  # Python 3.10+
    if names is not None:
        return module in names
    try:
        spec = importlib.util.find_spec(module)
    except ValueError:  # a module that replaced itself in sys.modules (Celery 5.0's lazy module): installed
        return False
    assert spec is not None, f"the project imports {module}, which is not installed"
    origin = spec.origin or ""
    return origin in ("built-in", "frozen") or (
        origin.startswith(sysconfig.get_paths()["stdlib"]) and "site-packages" not in origin)


def _command(line: str) -> list[str]:
    """The command line as a shell runs it, with the executables of this test run's environment."""
    words = shlex.split(line)
    return [str(Path(sys.executable).parent / words[0]) if words[0] != "python" else sys.executable, *words[1:]]


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    quick = QuickStart(ROOT / "README.md")
    where = tmp_path_factory.mktemp("quickstart")
    shutil.copytree(PROJECT / "proj", where / "proj")
    server = RedisServer()
    # A reader's shell: nothing this test run set up for itself (the docs' examples set DJANGO_SETTINGS_MODULE).
    env = {name: value for name, value in os.environ.items() if name != "DJANGO_SETTINGS_MODULE"}
    env["REDIS_URL"] = f"{server.url}/0"
    log_path = where / "worker.log"
    with open(log_path, "w") as log:
        worker = subprocess.Popen(_command(quick.worker), cwd=where, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_until(lambda: worker.poll() is None and "ready." in log_path.read_text(), timeout=60,
                       what="the Quick Start's worker")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its log:\n{log_path.read_text()[-3000:]}") from None
        calls = subprocess.run(_command(quick.calls), cwd=where, env=env, capture_output=True, text=True, timeout=60)
        assert calls.returncode == 0, calls.stderr
        yield Run(calls.stdout, log_path)
    finally:
        worker.terminate()
        worker.wait(30)
        server.stop()


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_the_quick_start_shows_the_example_project_file_for_file(document: Path) -> None:
    files = QuickStart(document).files
    assert files == _project_files()


def test_the_getting_started_page_gives_the_readmes_commands_and_output() -> None:
    readme, page = (QuickStart(document) for document in DOCUMENTS)
    assert (page.install, page.worker, page.calls, page.output) == (
        readme.install, readme.worker, readme.calls, readme.output)


def test_the_install_line_names_what_the_project_imports() -> None:
    # The broker is Redis: Celery's redis extra brings redis-py and what kombu's transport imports.
    assert QuickStart(ROOT / "README.md").install == 'pip install celery-once-task "celery[redis]"'
    imported = set()
    for source in _project_files().values():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    assert {name for name in imported if not _in_the_standard_library(name)} == {"celery", "celery_once_task"}


def test_the_project_reads_the_redis_url_with_the_quick_starts_default() -> None:
    assert f'os.environ.get("REDIS_URL", "{DEFAULT_URL}")' in (PROJECT / "proj" / "celery.py").read_text()


def test_the_quick_starts_calls_print_what_it_shows(quickstart_run: Run) -> None:
    assert quickstart_run.output == QuickStart(ROOT / "README.md").output


def test_the_quick_starts_worker_runs_the_calls_without_an_error(quickstart_run: Run) -> None:
    log = quickstart_run.worker_log
    wait_until(lambda: log.read_text().count("succeeded") == 2, what="the worker to log both executions")
    assert "Traceback" not in log.read_text()
