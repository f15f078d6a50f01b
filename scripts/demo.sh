#!/usr/bin/env bash
# Run the demo: installs redis-server (if missing) and a virtualenv (.venv),
# then shows de-duplication against a redis-server and a Celery worker of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
ensure_redis_server
# The demo uses Redis as its broker too: Celery's redis extra brings what kombu needs for it.
make_venv "$VENV" "$PYTHON" -e . "celery[redis]"
exec "$VENV/bin/python" -m examples.demo
