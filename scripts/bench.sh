#!/usr/bin/env bash
# Benchmarks of OnceTask against plain Celery (see docs/benchmarks.md): installs
# redis-server (if missing) and a virtualenv (.venv-bench), then runs them
# against redis-servers and Celery workers of their own.
#
#   bash scripts/bench.sh            measure and print the figures (about 5 minutes)
#   bash scripts/bench.sh --docs     also rewrite docs/benchmarks.md, .png and .json
#   bash scripts/bench.sh --quick    a short run, for trying a change (rougher figures)
#
# PYTHON and VENV choose the interpreter and the virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-bench}
ensure_redis_server
make_venv "$VENV" "$PYTHON" -e . -r benchmarks/requirements.txt
exec "$VENV/bin/python" -m benchmarks "$@"
