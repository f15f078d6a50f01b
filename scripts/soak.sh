#!/usr/bin/env bash
# The fault-injection soak (soak/): installs redis-server (if missing) and a
# virtualenv (.venv), then runs Celery workers of its own under steady calls
# while it kills and stalls workers, pool processes, the lock store and the
# broker; prints its figures and exits non-zero if a check failed.
#
#   bash scripts/soak.sh --short            about 60 s of load, 3 workers (what CI runs; about 2 minutes in all)
#   bash scripts/soak.sh --minutes 20       a longer soak, 4 workers
#   bash scripts/soak.sh --policy wait      duplicate executions wait instead of being rejected
#   bash scripts/soak.sh --pool gevent      gevent workers (their tasks compute without yielding: --body cpu)
#   bash scripts/soak.sh --broker amqp      RabbitMQ as the broker, with its faults (connections closed, restarts)
#   bash scripts/soak.sh --running-limit 2  a task with running_limit=2: reports the most executions of a key at once
#   bash scripts/soak.sh --debounce 1       debounced calls: bursts without an execution, or executed twice
#   bash scripts/soak.sh --window end       queue_lock_until="end": no call let in while the same call is queued or runs
#   bash scripts/soak.sh --window unique_for  unique_for=2: no call let in within 2 s of an accepted one
#   bash scripts/soak.sh --throttle 3/2     throttle=(3, 2): reports the most starts of one key in any 2 s window
#
# PYTHON and VENV choose the interpreter and the virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
ensure_redis_server
case " $* " in *" --broker amqp "*|*" --broker=amqp "*) ensure_rabbitmq_server ;; esac
# The soak lists a worker's pool processes with pgrep (Debian: procps).
if ! command -v pgrep >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq procps >/dev/null
    fi
    command -v pgrep >/dev/null 2>&1 || { echo "pgrep is required: install procps" >&2; exit 1; }
fi
# The same requirements as the tests: one virtualenv serves both.
make_venv "$VENV" "$PYTHON" -e ".[dev]"
exec "$VENV/bin/python" -m soak "$@"
