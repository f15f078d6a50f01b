#!/usr/bin/env bash
# Run the test suite: installs redis-server and rabbitmq-server (if missing)
# and a virtualenv (.venv), then runs pytest against servers and Celery workers
# of its own, twice: with Redis as the broker, then with RabbitMQ as the broker
# (the core, lifecycle, policy, pool and fault tests, and RabbitMQ's own faults).
#
#   bash scripts/test.sh                 # all tests, both brokers
#   bash scripts/test.sh -k queue_lock   # pytest arguments pass through, to both runs
#   BROKERS=redis bash scripts/test.sh   # one broker only
#
# QUEUE_TYPE chooses RabbitMQ's queue type for the RabbitMQ run: quorum (every
# queue quorum, on topic exchanges: Celery 5.5+ delays messages through
# RabbitMQ's native delayed delivery), classic, or auto (the default: quorum
# where the Celery under test has native delayed delivery, classic before 5.5).
#
# PYTHON, VENV and DEPS (extra pip requirements, e.g. "celery==5.0.5") choose
# the interpreter and the versions under test.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
BROKERS=${BROKERS:-redis amqp}
QUEUE_TYPE=${QUEUE_TYPE:-auto}
ensure_redis_server
case " $BROKERS " in *" amqp "*) ensure_rabbitmq_server ;; esac
ensure_chromium
ensure_topology_tools
# shellcheck disable=SC2086 # DEPS is a list of requirements
make_venv "$VENV" "$PYTHON" -e ".[dev]" ${DEPS:-}
"$VENV/bin/python" -c 'import sys, celery, kombu, redis; print(f"Python {sys.version.split()[0]}, Celery {celery.__version__}, kombu {kombu.__version__}, redis-py {redis.__version__}")'
if [ "$QUEUE_TYPE" = auto ]; then
    QUEUE_TYPE=$("$VENV/bin/python" -c 'import celery; print("quorum" if celery.VERSION[:2] >= (5, 5) else "classic")')
fi
status=0
ran=0
for broker in $BROKERS; do
    if [ "$broker" = amqp ]; then echo "== pytest, $broker as the broker ($QUEUE_TYPE queues)"; else echo "== pytest, $broker as the broker"; fi
    code=0
    ONCE_TEST_BROKER=$broker ONCE_TEST_QUEUE_TYPE=$QUEUE_TYPE "$VENV/bin/python" -m pytest "$@" || code=$?
    # 5: every test this run would take was deselected (pytest arguments that name other tests only).
    if [ "$code" = 0 ]; then ran=1; elif [ "$code" != 5 ]; then status=$code; fi
done
if [ "$status" = 0 ] && [ "$ran" = 0 ]; then
    echo "no test ran" >&2
    status=5
fi
exit "$status"
