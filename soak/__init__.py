"""A fault-injection soak of celery-once-task: ``bash scripts/soak.sh [--short|--minutes N] [--policy reject|wait]``.

Real worker subprocesses run ``soak.app.work`` under steady calls from
publisher threads while workers, pool processes, the lock store and the
broker are killed, stalled and restarted at random. Afterwards it checks that
no two executions of one call ever ran at once, that every accepted call
reached a final state, that no lock was left behind, and that a killed
worker's running locks stopped blocking their keys soon after its heartbeat
timeout.

``__main__``  the driver: phases, collection, the figures and the exit status
``app``       the Celery app the workers run, and the task
``cluster``   the redis-servers and the worker subprocesses
``load``      the publisher threads
``faults``    the faults, and what the driver must know of them afterwards
``report``    the figures, computed from what the driver collected
"""
