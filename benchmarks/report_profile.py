"""Part (h) of the report, "Where the time goes": the profile of ``hotpath`` as text and markdown."""

from __future__ import annotations

from typing import Any, Optional

PATHS = (
    ("publish", "publish a new call (`OnceTask.delay()`, published)"),
    ("duplicate", "drop a duplicate (`OnceTask.delay()`, already queued)"),
    ("worker", "run a task in a solo worker (`OnceTask`, pickup and end)"),
)
TOP = 12


def _rows(path: dict[str, Any], top: int) -> list[dict[str, Any]]:
    return [r for r in path["functions"] if r["us"] >= 0.05][:top]


def text(profile: dict[str, Any]) -> str:
    lines = [f"Where the time goes (py-spy, {profile['n']} operations per path; µs per operation):"]
    for key, label in PATHS:
        p = profile[key]
        lines.append(f"  {label}: library Python {p['library_us']:.1f} us, lock-store round trips "
                     f"{p['redis_us']:.1f} us, broker publish {p['publish_us']:.1f} us, wall {p['wall_us']:.0f} us "
                     f"({p['profiled_wall_us']:.0f} us profiled, {p['samples']} samples)")
        for r in _rows(p, 8):
            caller = "" if r["library"] else " (called by the library)"
            lines.append(f"      {r['us']:6.1f} us  {r['function']}{caller}")
    return "\n".join(lines)


def section(profile: Optional[dict[str, Any]]) -> list[str]:
    if profile is None:
        return ["Not profiled in this run: `bash scripts/bench.sh --profile`."]
    plain = profile["worker_plain"]
    out = [
        " ".join([
            "py-spy, sampling this project as it is from outside the process (1000 stacks a second, without",
            f"pausing it), {profile['n']:,} operations per path (`benchmarks/hotpath.py`; `bash scripts/bench.sh",
            "--profile` for the profile alone). Per path, µs per operation: the library's own Python, that is the",
            "time in the functions of `celery_once_task` and the whole time under what they call outside",
            "redis-py and outside Celery's `Task.apply_async`; next to it the time in redis-py (the lock store's",
            "round trips, with redis-py's packing and parsing) and in the broker publish. The worker runs",
            "in-process (`celery.contrib.testing.worker.start_worker`, solo pool), the task's body excluded.",
            "py-spy takes CPU time of its own, which slows the process it samples on this 2-CPU machine: the",
            "samples give each function's share of an operation, and the µs are that share of the operation's",
            "time measured without py-spy just before (\"unprofiled\" below, the median call of a publish loop or",
            "the mean task of a drain; \"profiled\" is with py-spy). On a machine this loaded the µs move from run",
            "to run by tens of percent; the ranking of the functions much less.",
        ]),
        "",
        "| path | library Python | lock store (redis-py) | broker publish | whole operation, unprofiled / profiled "
        "| samples |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in PATHS:
        p = profile[key]
        out.append(f"| {label} | **{p['library_us']:.1f} µs** | {p['redis_us']:.1f} µs | "
                   f"{p['publish_us']:.1f} µs | {p['wall_us']:.0f} / {p['profiled_wall_us']:.0f} µs "
                   f"| {p['samples']:,} |")
    out += [
        "",
        " ".join([
            f"For scale, a plain Celery task in the same in-process solo worker took {plain['wall_us']:.0f} µs",
            f"from one task's start to the next, an `OnceTask` task {profile['worker']['wall_us']:.0f} µs (both",
            "unprofiled).",
        ]),
    ]
    for key, label in PATHS:
        p = profile[key]
        out += [
            "",
            f"**{label[0].upper()}{label[1:]}**: {p['library_us']:.1f} µs of the library's Python per operation.",
            "",
            "| µs | function (`celery_once_task` module, or what the library calls) |",
            "|---|---|",
        ]
        for r in _rows(p, TOP):
            name = f"`{r['function']}`" if r["library"] else f"`{r['function']}` (called by the library)"
            out.append(f"| {r['us']:.1f} | {name} |")
    return out
