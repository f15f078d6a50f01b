"""Part (g) of the report: every implementation side by side, as a printed table, a section of
docs/benchmarks.md and a row of its chart (from the summary ``compare`` returns)."""

from __future__ import annotations

from typing import Any

PATHS = ("publish", "duplicate")
POOLS = ("solo", "prefork")


def _spread(v: dict[str, float], unit: str, fmt: str = ".0f") -> str:
    return f"{v[f'min_{unit}']:{fmt}} / **{v[f'median_{unit}']:{fmt}}** / {v[f'max_{unit}']:{fmt}}"


def _ratio(entry: dict[str, Any], key: str, base: str = "plain") -> str:
    ratios = entry.get(f"ratio_to_{base}", {})
    return f"{ratios[key]:.2f}x" if key in ratios else "-"


def _trips(entry: dict[str, Any]) -> str:
    rt = entry["round_trips"]
    return " / ".join(f"{rt[p]:g}" if p in rt else "-" for p in ("publish", "duplicate", "solo_task"))


def table(summary: dict[str, Any]) -> str:
    """The printed table: min / median / max of the rounds' figures, and ratios to plain Celery."""
    rows = [("variant", "publish us min/med/max", "x plain", "duplicate us", "x plain pub", "solo/s min/med/max",
             "x plain", "prefork/s min/med/max", "x plain", "trips pub/dup/task", "locks left")]
    for name, e in summary["variants"].items():
        row = [name]
        for path in PATHS:
            row += [_spread(e[path], "us").replace("*", ""), _ratio(e, path)] if path in e else ["-", "-"]
        for pool in POOLS:
            row += [_spread(e[pool], "per_s").replace("*", ""), _ratio(e, pool)] if pool in e else ["-", "-"]
        row += [_trips(e), str(e["locks_left"])]
        rows.append(tuple(row))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    for name, e in summary["variants"].items():
        for check in e["publish_checks"]:
            lines.append(f"CHECK FAILED {name}: {check}")
    lines += against_table(summary)
    return "\n".join(lines)


def against_table(summary: dict[str, Any]) -> list[str]:
    """With ``--against REF``: this project over itself at REF, per path, and the spread of the paired rounds."""
    against = summary.get("against")
    if not against or not against["ratios"]:
        return []
    commit = f" ({against['commit'][:12]})" if against.get("commit") else ""
    rows = [("path", "x median", "x paired", "paired q1..q3", "rounds")]
    for path in (*PATHS, *POOLS):
        r = against["ratios"].get(path)
        if r:
            rows.append((path if path in PATHS else f"{path} tasks/s", f"{r['ratio']:.3f}x", f"{r['paired']:.3f}x",
                         f"{r['paired_q1']:.3f}x..{r['paired_q3']:.3f}x", str(r["rounds"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "",
        f"{against['of']} / {against['variant']}{commit}: ratios of medians, and medians of the ratios paired "
        "round by round",
        "(latency: below 1 is faster than at the ref; throughput: above 1 is faster)",
        *("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows),
    ]


def section(summary: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    """The markdown of part (g)."""
    variants = summary["variants"]
    conc = summary["concurrency"]
    out = [
        "## (g) Every implementation side by side",
        "",
        " ".join([
            "The same no-op task under each implementation, each installed in a virtualenv of its own with the same",
            "Celery, kombu and redis-py releases (`scripts/bench.sh` makes them; none is a dependency of the",
            "library): plain Celery (the baseline), `OnceTask` of this project, celery-once-task 1.0.0 (the earlier",
            "package of the same name on PyPI), celery_once 3.0.1 (`QueueOnce`, `once={\"graceful\": True}`) and",
            "celery-singleton 0.3.1 (`Singleton`, `singleton_lock_expiry` one hour: by default its locks never",
            "expire), each configured as its documentation says, all with one-hour lock timeouts. One redis-server",
            "is the broker (database 0) and the lock store (a database per variant). A driver process per variant",
            "publishes, and Celery worker subprocesses per variant run the tasks; the variants take turns round",
            f"by round, the order rotating: {cfg['compare_publish_rounds']} publishing rounds of",
            f"{cfg['compare_publish_calls']} new calls and {cfg['compare_publish_calls']} duplicates (taking turns",
            f"call by call) and {cfg['throughput_rounds']} drains of {cfg['throughput_n']} tasks per pool (solo, and",
            f"prefork with {conc.get('prefork', 2)} processes). Figures are min / **median** / max of the rounds'",
            "medians (latency) or of the rounds' throughput; ratios are median / median of plain Celery in the same",
            "run. A duplicate's ratio is to a plain publish.",
        ]),
        "",
        "| implementation | publish µs | x plain | duplicate µs | x plain publish | solo tasks/s | x plain "
        "| prefork tasks/s | x plain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in variants.values():
        cells = [e["label"]]
        for path in PATHS:
            cells += [_spread(e[path], "us"), _ratio(e, path)] if path in e else ["-", "-"]
        for pool in POOLS:
            cells += [_spread(e[pool], "per_s"), _ratio(e, pool)] if pool in e else ["-", "-"]
        out.append("| " + " | ".join(cells) + " |")
    out += [
        "",
        " ".join([
            "Round trips to the lock store, counted on every redis-py connection of the driver (per call) and of",
            "the solo worker's task thread (per task: all it sends between one task's body and the next), and the",
            "locks left once a drain was over (a lock any drain left behind, summed over the drains; the worker's",
            "heartbeat key of this project is not a lock):",
        ]),
        "",
        "| implementation | publish | duplicate | per task in the worker | locks left after the drains |",
        "|---|---|---|---|---|",
    ]
    for e in variants.values():
        rt = e["round_trips"]
        dup = f"{rt['duplicate']:g}" if "duplicate" in rt else "-"
        out.append(f"| {e['label']} | {rt.get('publish', 0):g} | {dup} | {rt.get('solo_task', 0):g} "
                   f"| {e['locks_left']} |")
    out += ["", "Installed in each variant's virtualenv:", ""]
    for e in variants.values():
        out.append(f"* {e['label']}: " + ", ".join(f"{k} {v}" for k, v in e.get("versions", {}).items()))
    checks = [f"{name}: {c}" for name, e in variants.items() for c in e["publish_checks"]]
    out += ["", "Every publishing round was checked: each new call published, each duplicate dropped, one lock",
            "held per published call: " + ("all checks passed." if not checks else "FAILED: " + "; ".join(checks))]
    fast = [e for e in variants.values() if e["hiredis"] or e["unix"]]
    if fast:
        out += [
            "",
            "### hiredis and a unix socket",
            "",
            " ".join([
                "The same, with redis-py's C reply parser (`pip install \"celery-once-task[hiredis]\"`) and the",
                "broker and the lock store reached over the server's unix socket (`redis+socket:///path/redis.sock`",
                "for the broker, `unix:///path/redis.sock?db=3` for the locks) instead of TCP on the loopback.",
                "Ratios to plain Celery over TCP without hiredis, and to plain Celery with the same client stack:",
            ]),
            "",
            "| implementation | publish x plain / x same stack | duplicate | solo | prefork |",
            "|---|---|---|---|---|",
        ]
        for e in [variants["plain"], variants.get("once-task", {}), *fast]:
            if not e:
                continue
            base = e["baseline"]
            cells = [e["label"]]
            for key in ("publish", "duplicate", "solo", "prefork"):
                same = _ratio(e, key, base) if base != "plain" else "-"
                cells.append(f"{_ratio(e, key)} / {same}" if key in e else "-")
            out.append("| " + " | ".join(cells) + " |")
    out += ["", GUARANTEES]
    return out


#: What each peer does not guarantee, read from its source (the versions measured).
GUARANTEES = """\
### What the others do not guarantee

Read from their source, the releases measured above; this project's guarantees are in the README.

* **celery_once 3.0.1 (`QueueOnce`).** One lock per call, taken at publish and held until the task
  *ends* (`after_return`), or dropped just before it runs with `unlock_before_run`: there is no running
  lock separate from the queue lock, so while a task runs a new call is dropped (nothing can be queued
  behind it), and with `unlock_before_run` two runs can overlap. Release is a plain `DEL` of the key,
  with no owner check: a task that outlived its lock's timeout deletes the lock of the next call. No
  liveness: a killed worker's lock stays until the timeout (one hour by default). A duplicate raises
  `AlreadyQueued` unless `graceful`, then returns an `EagerResult` (state `REJECTED`), and costs two round
  trips (`SET NX`, then `PTTL`). It imports `six` without declaring it.
* **celery-singleton 0.3.1 (`Singleton`).** One lock per call, taken at publish, released by `DEL`
  in `on_success`/`on_failure`, with no owner check and no running lock of its own; a revoked task, a
  killed worker or a task that never starts keeps its lock, by default *forever* (no expiry unless
  `singleton_lock_expiry` is set). A duplicate returns the existing task's `AsyncResult` after a second
  round trip (`GET`); `self.retry()` from inside the task is a duplicate of itself and is dropped. The key
  is the MD5 of the arguments' JSON: arguments JSON cannot encode fail at publish.
* **celery-once-task 1.0.0.** A queue lock and a running lock, but each released by `GET` then `DEL`
  (two round trips, not atomic: between them another owner's lock can be deleted), so a task costs five
  round trips in the worker. The key hashes `str()` of the arguments (a dict's order, an object's
  `repr` with its address change the key). When Redis is unreachable a call is silently dropped
  (returns `None`, as a duplicate would). No liveness: a killed worker's locks stay until the timeout."""


def draw(ax_latency: Any, ax_throughput: Any, summary: dict[str, Any]) -> None:
    """The chart's second row: latency of each path and worker throughput, per implementation."""
    variants = list(summary["variants"].values())
    labels = [e["label"].replace("`", "") for e in variants]
    ys = range(len(variants))
    for ax, keys, unit, title in (
        (ax_latency, PATHS, "us", "Publishing: µs per call (min-max of the rounds' medians; lower is better)"),
        (ax_throughput, POOLS, "per_s", "Worker throughput: tasks/s (min-max of the rounds; higher is better)"),
    ):
        height = 0.38
        labelled: set[str] = set()
        for k, (key, color) in enumerate(zip(keys, ("#1f77b4", "#ff7f0e"))):
            offset = (k - 0.5) * height
            for y, e in zip(ys, variants):
                if key not in e:
                    continue
                v = e[key]
                med = v[f"median_{unit}"]
                ax.barh(y + offset, med, height=height * 0.95, color=color, alpha=0.85,
                        label=None if key in labelled else key)
                labelled.add(key)
                ax.plot([v[f"min_{unit}"], v[f"max_{unit}"]], [y + offset] * 2, color="#222222", linewidth=1)
                ratio = e.get("ratio_to_plain", {}).get(key)
                ax.text(max(v[f"max_{unit}"], med) * 1.02, y + offset,
                        f"{med:.0f}" + (f"  ({ratio:.2f}x)" if ratio is not None else ""),
                        va="center", fontsize=7)
        ax.set_yticks(list(ys), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, ax.get_xlim()[1] * 1.18)
        ax.legend(fontsize=8, loc="lower right")
        ax.set_title(title, fontsize=10)
