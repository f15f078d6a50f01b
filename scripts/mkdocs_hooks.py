"""MkDocs hooks of the documentation site (mkdocs.yml's ``hooks``): the package's version on every page.

The version lives in one place, ``celery_once_task.__version__``; pyproject.toml
reads it from there, and so does the site. It is read from the source file, not
imported: the docs' environment needs no Celery.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

INIT = Path(__file__).resolve().parent.parent / "src" / "celery_once_task" / "__init__.py"


def package_version(init: Path = INIT) -> str:
    """``__version__`` as the package's ``__init__.py`` assigns it."""
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "__version__" for target in node.targets
        ):
            value = ast.literal_eval(node.value)
            if isinstance(value, str):
                return value
    raise LookupError(f"{init} assigns no __version__")


def on_config(config: Any) -> Any:
    """Put the version in the footer of every page, and in ``extra.version`` for templates."""
    version = package_version()
    config["extra"]["version"] = version
    config["copyright"] = f"celery-once-task {version} · MIT License"
    return config
