#!/usr/bin/env bash
# The documentation site (MkDocs with Material and mkdocstrings; see mkdocs.yml):
# installs a virtualenv (.venv) with the docs' tools, then
#
#   bash scripts/docs.sh serve   # preview at http://127.0.0.1:8000, rebuilt as you edit
#   bash scripts/docs.sh build   # build into site/, strictly: any warning, broken link or anchor fails
#
# The pages' Python examples are run by the test suite (conftest.py), not here.
set -euo pipefail
export NO_MKDOCS_2_WARNING=1  # MkDocs 2 notice from Material: not a problem of these pages
cd "$(dirname "$0")/.."
. scripts/setup.sh

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
make_venv "$VENV" "$PYTHON" -e ".[docs]"
case "${1:-serve}" in
    serve) shift || true; exec "$VENV/bin/mkdocs" serve "$@" ;;
    build) shift; exec "$VENV/bin/mkdocs" build --strict --site-dir "${SITE_DIR:-site}" "$@" ;;
    *) echo "usage: bash scripts/docs.sh [serve|build] [mkdocs options]" >&2; exit 2 ;;
esac
