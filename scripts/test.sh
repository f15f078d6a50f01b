#!/usr/bin/env bash
# Run the test suite: installs redis-server (if missing) and a virtualenv
# (.venv), then runs pytest against a redis-server and Celery workers of its own.
#
#   bash scripts/test.sh                 # all tests
#   bash scripts/test.sh -k queue_lock   # pytest arguments pass through
#
# PYTHON, VENV and DEPS (extra pip requirements, e.g. "celery==5.0.5") choose
# the interpreter and the versions under test.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
ensure_redis_server
ensure_chromium
ensure_topology_tools
# shellcheck disable=SC2086 # DEPS is a list of requirements
make_venv "$VENV" "$PYTHON" -e ".[dev]" ${DEPS:-}
"$VENV/bin/python" -c 'import sys, celery, kombu, redis; print(f"Python {sys.version.split()[0]}, Celery {celery.__version__}, kombu {kombu.__version__}, redis-py {redis.__version__}")'
exec "$VENV/bin/python" -m pytest "$@"
