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
#   bash scripts/bench.sh --throttle only the throttle: pickup at N = 1, 10, 1000, and the rate achieved on one
#                                    key by 4 worker processes, against plain Celery's rate_limit
#   bash scripts/bench.sh --debounce only a burst of 1,000 debounced calls: round trips, messages, time per call
#   bash scripts/bench.sh --memory   only what the library keeps in Redis: MEMORY USAGE per key of each kind and
#                                    the finished records at 1,000 tasks a second, beside the release before
#   bash scripts/bench.sh --telemetry only the publish, duplicate and execution paths with OpenTelemetry off,
#                                    on with a sampled-out provider, and on recording, side by side
#   bash scripts/bench.sh --compare [--variants plain,once-task,once-task-1.0.0] [--rounds 30] [--pools none]
#                                    only the implementations side by side, interleaved round by round
#                                    (--pools none: the publishing paths alone, in under a minute)
#   bash scripts/bench.sh --compare --against REF [--variants plain,once-task,once-task@REF]
#                                    also this project at git ref REF (e.g. a commit before a refactoring),
#                                    as variant once-task@REF right after once-task, and the ratios
#                                    once-task / once-task@REF of each path
#
# Virtualenvs, one per implementation, made here and used by the benchmarks only
# (none of these packages is a dependency of the library):
#   .venv-bench                   this project and plain Celery (the baseline)
#   .venv-bench-hiredis           this project with the hiredis extra (and plain Celery)
#   .venv-bench-celery-once       celery_once 3.0.1 (QueueOnce)
#   .venv-bench-celery-singleton  celery-singleton 0.3.1 (Singleton)
#   .venv-bench-once-task-1.0.0   celery-once-task 1.0.0 from PyPI, the earlier implementation
#   .venv-bench-against           with --against REF only: this project's tree at REF (git archive),
#                                 installed non-editable; made again for each REF
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
# --telemetry, --throttle and --memory measure this project alone: the other implementations' virtualenvs are not needed.
case " $* " in *" --telemetry "*|*" --throttle "*|*" --memory "*) [ "${BENCH_SETUP_ONLY:-}" ] && exit 0; exec "$VENV/bin/python" -m benchmarks "$@" ;; esac

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

# --against REF: the tree at REF, exported and installed (not editable) in a virtualenv of its own;
# the commit installed is written in it, and python -m benchmarks checks it is the one REF names.
AGAINST=
args=("$@")
for i in "${!args[@]}"; do
    case ${args[$i]} in
        --against) AGAINST=${args[$((i + 1))]:-} ;;
        --against=*) AGAINST=${args[$i]#--against=} ;;
    esac
done
if [ -n "$AGAINST" ]; then
    if ! COMMIT=$(git rev-parse --verify --quiet "$AGAINST^{commit}"); then
        echo "--against $AGAINST: not a commit of this repository" >&2
        exit 2
    fi
    MARK="$VENV-against/bench-against-commit"
    if [ "$(cat "$MARK" 2>/dev/null)" != "$COMMIT" ]; then
        TREE=$(mktemp -d)
        trap 'rm -rf "$TREE"' EXIT
        git archive "$COMMIT" | tar -x -C "$TREE"
        rm -f "$MARK"
        # The same version number at every commit: take out the one installed, or pip keeps it.
        if [ -x "$VENV-against/bin/python" ]; then
            "$VENV-against/bin/python" -m pip uninstall -q -y --disable-pip-version-check celery-once-task
        fi
        make_venv "$VENV-against" "$PYTHON" -c "$CONSTRAINTS" "$TREE" packaging
        rm -rf "$TREE"
        trap - EXIT
        echo "$COMMIT" >"$MARK"
    fi
fi

[ "${BENCH_SETUP_ONLY:-}" ] && exit 0
exec "$VENV/bin/python" -m benchmarks "$@"
