"""Benchmarks of ``OnceTask`` against plain Celery ``Task``: run ``bash scripts/bench.sh``.

The modules, each with one concern:

``servers``     private redis-servers on free ports, and the machine description
``tasks``       the Celery app and the no-op tasks (plain and ``OnceTask``), also run by the workers
``counting``    counting Redis round trips per thread on a client's connections
``stats``       medians, percentiles, paired ratios, the interleaving order
``publish``     (a) publishing unique calls, (b) dropped duplicates
``throughput``  (c) worker throughput, solo and prefork, on real worker subprocesses
``round_trips`` (d) round trips of the lock client on each path
``locks``       (e) lock-operation latency with many locks held, (f) memory per held lock
``report``      the printed table, the targets, docs/benchmarks.md and its chart
``__main__``    the command line: one run measures everything
"""
