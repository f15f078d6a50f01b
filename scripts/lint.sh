#!/usr/bin/env bash
# ruff over the whole tree, mypy (strict) over the package.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

VENV=${VENV:-.venv}
make_venv "$VENV" "${PYTHON:-python3}" -e ".[dev]"
"$VENV/bin/ruff" check .
"$VENV/bin/mypy"
echo "lint: ruff and mypy clean"
