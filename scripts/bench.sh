#!/usr/bin/env bash
# Benchmarks of OnceTask against plain Celery and the other Celery de-duplication
# libraries (see docs/benchmarks.md): installs redis-server (if missing) and the
# virtualenvs, then runs them against redis-servers and Celery workers of their own.
#
#   bash scripts/bench.sh            measure and print the figures (8 to 10 minutes)
#   bash scripts/bench.sh --docs     also rewrite docs/benchmarks.md, .png and .json
#   bash scripts/bench.sh --quick    a short run, for trying a change (rougher figures, about 2 minutes)
#   bash scripts/bench.sh --profile  profile the publish, duplicate and worker paths (py-spy)
#   bash scripts/bench.sh --limits   only the concurrency limits' pickup and release at N = 1, 3, 100
#   bash scripts/bench.sh --debounce only a burst of 1,000 debounced calls: round trips, messages, time per call
#   bash scripts/bench.sh --compare [--variants plain,once-task,once-task-1.0.0] [--rounds 30] [--pools none]
#                                    only the implementations side by side, interleaved round by round
#                                    (--pools none: the publishing paths alone, in under a minute)
#
# Virtualenvs, one per implementation, made here and used by the benchmarks only
# (none of these packages is a dependency of the library):
#   .venv-bench                   this project and plain Celery (the baseline)
#   .venv-bench-hiredis           this project with the hiredis extra (and plain Celery)
#   .venv-bench-celery-once       celery_once 3.0.1 (QueueOnce)
#   .venv-bench-celery-singleton  celery-singleton 0.3.1 (Singleton)
#   .venv-bench-once-task-1.0.0   celery-once-task 1.0.0 from PyPI, the earlier implementation
# Every virtualenv gets the Celery, kombu and redis-py releases of .venv-bench.
#
# PYTHON and VENV choose the interpreter and the main virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-bench}
ensure_redis_server
make_venv "$VENV" "$PYTHON" -e . -r benchmarks/requirements.txt

# The same Celery stack everywhere, so that only the lock library differs.
CONSTRAINTS="$VENV/bench-constraints.txt"
"$VENV/bin/python" -m pip freeze --disable-pip-version-check \
    | grep -iE '^(celery|kombu|billiard|vine|redis|click|amqp)==' >"$CONSTRAINTS"

# kombu's Redis transport imports packaging without declaring it.
make_venv "$VENV-hiredis" "$PYTHON" -c "$CONSTRAINTS" -e ".[hiredis]" packaging
# celery_once imports six without declaring it.
make_venv "$VENV-celery-once" "$PYTHON" -c "$CONSTRAINTS" "celery_once==3.0.1" six celery packaging
make_venv "$VENV-celery-singleton" "$PYTHON" -c "$CONSTRAINTS" "celery-singleton==0.3.1" celery packaging
# The earlier release has the same import name as this project: a virtualenv of its own.
if "$VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps \
        -d "$VENV/downloads" "celery-once-task==1.0.0" >/dev/null 2>&1; then
    make_venv "$VENV-once-task-1.0.0" "$PYTHON" -c "$CONSTRAINTS" "celery-once-task==1.0.0" celery packaging
else
    echo "celery-once-task 1.0.0 is not on the package index: measuring without it" >&2
fi

[ "${BENCH_SETUP_ONLY:-}" ] && exit 0
exec "$VENV/bin/python" -m benchmarks "$@"
