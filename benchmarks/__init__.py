"""Benchmarks of ``OnceTask`` against plain Celery ``Task`` and the other libraries: ``bash scripts/bench.sh``.

The modules, each with one concern:

``servers``     private redis-servers on free ports, and the machine description
``tasks``       the Celery app and the no-op tasks (plain and ``OnceTask``), also run by the workers
``counting``    counting Redis round trips per thread on a client's connections
``stats``       medians, percentiles, paired ratios, the interleaving order
``publish``     (a) publishing unique calls, (b) dropped duplicates
``compare``     (c, g) every implementation side by side, each in its own virtualenv: publishing and
                worker throughput (solo, prefork) on real worker subprocesses, round trips, locks left
``peer_app``    the app and no-op task of one implementation (``BENCH_KIND``), for its driver and workers
``driver``      the publishing process of one implementation, driven over stdin/stdout
``hotpath``     (h) where the time goes: py-spy on the publish, duplicate and worker paths
``round_trips`` (d) round trips of the lock client on each path
``locks``       (e) lock-operation latency with many locks held, (f) memory per held lock
``report``      the printed table, the targets, docs/benchmarks.md and its chart
``report_compare``, ``report_profile``  the parts of the report for (g) and (h)
``__main__``    the command line: one run measures everything
"""
