"""``python -m benchmarks``: measure everything in one run and print (or write) the figures.

Run it through ``bash scripts/bench.sh``, which installs what it needs. The
parts run in this order: publishing (no worker running), every implementation
side by side (publishing and worker throughput, in virtualenvs of their own),
lock latency and memory (servers of their own), round trips (last: the
in-process worker reconfigures this process's logging).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .servers import RedisServer, machine

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


@dataclass(frozen=True)
class Config:
    publish_rounds: int
    publish_calls: int
    compare_publish_rounds: int
    compare_publish_calls: int
    throughput_rounds: int
    throughput_n: int
    latency_levels: tuple[int, ...]
    latency_rounds: int
    latency_per_round: int
    memory_locks: int
    profile_n: int
    limits_pairs: int
    telemetry_rounds: int
    telemetry_block: int


FULL = Config(
    publish_rounds=15, publish_calls=400,
    compare_publish_rounds=40, compare_publish_calls=40,
    throughput_rounds=7, throughput_n=1000,
    latency_levels=(1_000, 100_000, 1_000_000), latency_rounds=12, latency_per_round=250,
    memory_locks=1_000_000, profile_n=3000, limits_pairs=3000, telemetry_rounds=20, telemetry_block=100,
)
QUICK = Config(
    publish_rounds=4, publish_calls=200,
    compare_publish_rounds=10, compare_publish_calls=15,
    throughput_rounds=2, throughput_n=400,
    latency_levels=(1_000, 100_000), latency_rounds=3, latency_per_round=100,
    memory_locks=100_000, profile_n=400, limits_pairs=500, telemetry_rounds=4, telemetry_block=50,
)


#: The worker pools measured, and their concurrency.
POOLS = {"solo": 1, "prefork": 2}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure(config: Config) -> dict[str, Any]:
    started = time.monotonic()
    server = RedisServer()
    # Before importing the app: it reads the port at import, as the workers do.
    os.environ["BENCH_REDIS_PORT"] = str(server.port)
    from . import compare, hotpath, locks, publish, round_trips

    results: dict[str, Any] = {"config": asdict(config)}
    try:
        results["machine"] = machine(server)
        broker, lock_db = server.client(0), server.client(2)

        log(f"(a, b) publishing: {config.publish_rounds} rounds x {config.publish_calls} calls per variant ...")
        results["publish"] = publish.run(config.publish_rounds, config.publish_calls, broker, lock_db).summary()

        pools = POOLS
        log("(c, g) every implementation side by side, in virtualenvs of their own ...")
        results["compare"] = compare.run(
            config.compare_publish_rounds, config.compare_publish_calls, config.throughput_rounds,
            config.throughput_n, pools, log,
        ).summary()
        results["throughput"] = compare.throughput_summary(results["compare"], config.throughput_n)

        log(f"(e) lock latency with {', '.join(f'{n:,}' for n in config.latency_levels)} locks held ...")
        results["latency"] = locks.latency(
            list(config.latency_levels), config.latency_rounds, config.latency_per_round
        ).summary()

        log(f"(f) memory with {config.memory_locks:,} locks held ...")
        results["memory"] = locks.memory(config.memory_locks)

        log("(i) concurrency limits: pickup and release at N = 1, 3, 100 ...")
        from . import limits

        results["limits"] = limits.run(config.limits_pairs)

        log("(j) debounce: a burst of 1,000 calls ...")
        from . import bursts

        results["bursts"] = bursts.run(server=server)
        log("(l) what the library keeps in Redis ...")
        from . import memory

        results["redis_memory"] = memory.run(server)

        log("(d) round trips ...")
        results["round_trips"] = round_trips.run(broker)

        log(f"(h) profile of the publish, duplicate and worker paths, {config.profile_n} each ...")
        try:
            results["profile"] = hotpath.run(config.profile_n, broker, lock_db)
        except Exception as exc:  # the figures measured so far are kept
            log(f"    the profile failed, the report goes without it: {exc!r}")
    finally:
        server.stop()
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["duration_s"] = time.monotonic() - started
    return results


def profile_only(config: Config) -> dict[str, Any]:
    server = RedisServer()
    os.environ["BENCH_REDIS_PORT"] = str(server.port)
    from . import hotpath

    try:
        return {"profile": hotpath.run(config.profile_n, server.client(0), server.client(2))}
    finally:
        server.stop()


def telemetry_only(config: Config) -> dict[str, Any]:
    """Part (k) alone: the paths with telemetry off, sampled out and recording (on a server of its own)."""
    server = RedisServer()
    os.environ["BENCH_REDIS_PORT"] = str(server.port)
    from . import telemetry

    try:
        return telemetry.run(config.telemetry_rounds, config.telemetry_block, server.client(0), server.client(2))
    finally:
        server.stop()


def compare_only(config: Config, variants: list[str], rounds: int | None, pools: list[str],
                 against: str | None = None) -> dict[str, Any]:
    """Part (g) alone: the implementations side by side, ``rounds`` rounds of each path, workers of ``pools``;
    with ``against``, also this project at that git ref (``once-task@REF``)."""
    from . import compare

    started = time.monotonic()
    server = RedisServer()
    try:
        results: dict[str, Any] = {"machine": machine(server)}
    finally:
        server.stop()
    publish_rounds = rounds or config.compare_publish_rounds
    throughput_rounds = rounds or config.throughput_rounds
    results["compare"] = compare.run(
        publish_rounds, config.compare_publish_calls, throughput_rounds, config.throughput_n,
        {pool: concurrency for pool, concurrency in POOLS.items() if pool in pools}, log, only=variants,
        against=against,
    ).summary()
    results["duration_s"] = time.monotonic() - started
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short run with rougher figures")
    parser.add_argument("--docs", action="store_true",
                        help="write docs/benchmarks.md, docs/benchmarks.png and docs/benchmarks.json")
    parser.add_argument("--profile", action="store_true",
                        help="only profile the publish, duplicate and worker paths (docs: Where the time goes)")
    parser.add_argument("--compare", action="store_true",
                        help="only the implementations side by side (part g), e.g. "
                             "--compare --variants plain,once-task,once-task-1.0.0 --rounds 30")
    parser.add_argument("--variants", default="",
                        help="with --compare: the variants to measure, comma-separated (default: all)")
    parser.add_argument("--rounds", type=int, help="with --compare: rounds of each path per variant")
    parser.add_argument("--pools", default="solo,prefork",
                        help="with --compare: the worker pools to measure, comma-separated, or none")
    parser.add_argument("--against", metavar="REF",
                        help="with --compare: also this project at git ref REF, as variant once-task@REF "
                             "(scripts/bench.sh installs it in .venv-bench-against), and once-task / once-task@REF")
    parser.add_argument("--limits", action="store_true",
                        help="only the concurrency limits' pickup and release at N = 1, 3, 100 (part i)")
    parser.add_argument("--debounce", action="store_true",
                        help="only a burst of 1,000 debounced calls: round trips, messages, time per call (part j)")
    parser.add_argument("--throttle", action="store_true",
                        help="only the throttle: pickup at N = 1, 10, 1000, and the rate achieved on one key with "
                             "4 worker processes against plain Celery's rate_limit (part l)")
    parser.add_argument("--telemetry", action="store_true",
                        help="only the publish, duplicate and execution paths with telemetry off, on with a "
                             "sampled-out provider, and on recording (part k)")
    parser.add_argument("--memory", action="store_true",
                        help="only what the library keeps in Redis: memory per key of each kind, and at 1,000 "
                             "tasks a second for an hour, beside the release before (part l)")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--from-json", type=Path, help="measure nothing: report the figures of an earlier run")
    args = parser.parse_args(argv)
    if args.against and not args.compare:
        parser.error("--against goes with --compare")

    from . import report

    config = QUICK if args.quick else FULL
    if args.profile:
        from .report_profile import text

        profiled = profile_only(config)
        print(text(profiled["profile"]))
        if args.json:
            args.json.write_text(json.dumps(profiled, indent=1) + "\n")
        return 0
    if args.limits:
        from . import limits

        cases = limits.run(config.limits_pairs)
        print(limits.table(cases))
        if args.json:
            args.json.write_text(json.dumps({"limits": cases}, indent=1) + "\n")
        return 0
    if args.throttle:
        from . import throttle

        throttled = throttle.run(config.limits_pairs)
        print(throttle.text(throttled))
        if args.json:
            args.json.write_text(json.dumps({"throttle": throttled}, indent=1) + "\n")
        return 0
    if args.telemetry:
        figures = telemetry_only(config)
        from .telemetry import table as telemetry_table

        print(telemetry_table(figures))
        if args.json:
            args.json.write_text(json.dumps({"telemetry": figures}, indent=1) + "\n")
        return 0
    if args.memory:
        from . import memory

        kept = memory.run()
        print(memory.text(kept, memory.before()))
        if args.json:
            args.json.write_text(json.dumps({"memory": kept}, indent=1) + "\n")
        return 0
    if args.debounce:
        from . import bursts

        burst = bursts.run()
        print(bursts.text(burst))
        if args.json:
            args.json.write_text(json.dumps({"bursts": burst}, indent=1) + "\n")
        return 0
    if args.compare:
        from .report_compare import table

        pools = [p for p in args.pools.split(",") if p in POOLS]
        compared = compare_only(config, [v for v in args.variants.split(",") if v], args.rounds, pools,
                                args.against)
        print(table(compared["compare"]))
        if args.json:
            args.json.write_text(json.dumps(compared, indent=1) + "\n")
        return 0
    results = json.loads(args.from_json.read_text()) if args.from_json else measure(config)
    print(report.table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.docs:
        DOCS.mkdir(exist_ok=True)
        (DOCS / "benchmarks.json").write_text(json.dumps(results, indent=1) + "\n")
        report.chart(results, DOCS / "benchmarks.png")
        (DOCS / "benchmarks.md").write_text(report.document(results, "benchmarks.png"))
        log(f"wrote {DOCS / 'benchmarks.md'}, benchmarks.png and benchmarks.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
