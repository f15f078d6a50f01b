"""The targets, and the figures as a printed table, docs/benchmarks.md and its chart.

Every target is judged here, from the summaries the other modules return, so
the printed table, the document and the chart cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from . import report_compare, report_profile

#: The issue's targets (ratios are OnceTask / plain Celery, medians, same run).
PUBLISH_MAX = 1.25
DUPLICATE_MAX = 0.35
SOLO_MIN = 0.80
ROUND_TRIPS = {"publish": 1, "duplicate": 1, "pickup": 1, "end": 1}
#: Median latency with the most locks held / with the fewest; above this it is not flat.
FLAT_MAX = 1.10
MEMORY_MAX = 200.0

COMMAND = "bash scripts/bench.sh --docs"


@dataclass
class Target:
    name: str
    measured: str
    value: float
    target: str
    met: Optional[bool]  # None: reported, no target

    @property
    def verdict(self) -> str:
        return "-" if self.met is None else ("met" if self.met else "MISSED")


def _level(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k"


def targets(results: dict[str, Any]) -> list[Target]:
    pub, thr, rt = results["publish"], results["throughput"], results["round_trips"]
    lat, mem = results["latency"], results["memory"]
    out = [
        Target("publish a unique call (median latency)",
               f"{pub['once']['median_us']:.0f} us vs {pub['plain']['median_us']:.0f} us plain",
               pub["once_ratio"], f"<= {PUBLISH_MAX:.2f}x plain", pub["once_ratio"] <= PUBLISH_MAX),
        Target("drop a duplicate call (median latency)",
               f"{pub['duplicate']['median_us']:.0f} us vs {pub['plain']['median_us']:.0f} us plain publish",
               pub["duplicate_ratio"], f"<= {DUPLICATE_MAX:.2f}x plain publish",
               pub["duplicate_ratio"] <= DUPLICATE_MAX),
    ]
    for pool, minimum in (("solo", SOLO_MIN), ("prefork", None)):
        if pool in thr:
            t = thr[pool]
            out.append(Target(
                f"{pool} worker throughput (c={t['concurrency']})",
                f"{t['once_per_s']:.0f}/s vs {t['plain_per_s']:.0f}/s plain",
                t["ratio"], f">= {minimum:.2f}x plain" if minimum else "reported",
                t["ratio"] >= minimum if minimum else None,
            ))
    for path, expected in ROUND_TRIPS.items():
        got = rt[path]["locks"]
        out.append(Target(f"round trips: {path}", f"{got}", float(got), f"== {expected}", got == expected))
    levels = sorted(int(k) for k in lat if k != "flatness")
    low, high = str(levels[0]), str(levels[-1])
    for op, flat in lat["flatness"].items():
        out.append(Target(
            f"{op} latency, {_level(int(low))} -> {_level(int(high))} locks (median)",
            f"{lat[low][op]['median_us']:.0f} -> {lat[high][op]['median_us']:.0f} us "
            f"(p99 {lat[low][op]['p99_us']:.0f} -> {lat[high][op]['p99_us']:.0f})",
            flat["median_ratio"], f"flat: <= {FLAT_MAX:.2f}x", flat["median_ratio"] <= FLAT_MAX,
        ))
    for kind in ("queue", "running"):
        b = mem[kind]["bytes_per_lock"]
        out.append(Target(
            f"memory per held {kind} lock",
            f"{b:.0f} B (key {mem[kind]['key_length']} B, value {mem[kind]['value_length']} B)",
            b, f"<= {MEMORY_MAX:.0f} B", b <= MEMORY_MAX,
        ))
    return out


def table(results: dict[str, Any]) -> str:
    rows = [("target", "measured", "ratio/value", "wanted", "")]
    for t in targets(results):
        value = f"{t.value:.2f}" if t.value < 100 else f"{t.value:.0f}"
        rows.append((t.name, t.measured, value, t.target, t.verdict))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    text = "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
    if "compare" in results:
        text += "\n\nEvery implementation (min/median/max of the rounds; ratios to plain Celery, medians):\n"
        text += report_compare.table(results["compare"])
    if "profile" in results:
        text += "\n\n" + report_profile.text(results["profile"])
    return text


# -- chart ----------------------------------------------------------------------

_GREEN, _RED, _GREY, _INK = "#2e8b57", "#c0392b", "#8c8c8c", "#222222"


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pub, thr, rt = results["publish"], results["throughput"], results["round_trips"]
    lat, mem = results["latency"], results["memory"]
    compared = "compare" in results
    fig = plt.figure(figsize=(15, 10.4 if compared else 4.8))
    grid = fig.add_gridspec(2 if compared else 1, 3, width_ratios=[1.5, 1.1, 0.8],
                            height_ratios=[1, 1.15] if compared else [1])
    axes = [fig.add_subplot(grid[0, i]) for i in range(3)]
    if compared:
        report_compare.draw(fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1:]), results["compare"])

    # 1. Ratios to plain Celery, each with its target.
    ax = axes[0]
    levels = sorted(int(k) for k in lat if k != "flatness")
    trips = lat[str(levels[0])]["pickup"]["median_us"] + lat[str(levels[0])]["release"]["median_us"]
    plain_task = 1e6 / thr["solo"]["plain_per_s"] if "solo" in thr else 0.0
    # (label, ratio, target, kind of target, ratio were the round trips all OnceTask added)
    bars: list[tuple[str, float, Optional[float], str, Optional[float]]] = [
        ("publish a unique call\n(time, lower is better)", pub["once_ratio"], PUBLISH_MAX, "max",
         pub["floor_ratio"]),
        ("drop a duplicate call\n(time vs a plain publish)", pub["duplicate_ratio"], DUPLICATE_MAX, "max",
         pub["set"]["median_us"] / pub["plain"]["median_us"]),
    ]
    if "solo" in thr:
        bars.append(("solo worker\n(throughput, higher is better)", thr["solo"]["ratio"], SOLO_MIN, "min",
                     plain_task / (plain_task + trips)))
    if "prefork" in thr:
        bars.append((f"prefork worker, c={thr['prefork']['concurrency']}\n(throughput, no target)",
                     thr["prefork"]["ratio"], None, "min", None))
    bars.reverse()
    for y, (_label, value, target, kind, floor) in enumerate(bars):
        met = None if target is None else (value <= target if kind == "max" else value >= target)
        color = _GREY if met is None else (_GREEN if met else _RED)
        ax.barh(y, value, height=0.55, color=color)
        # At the bar's base: the target marks and the diamonds, near its end, stay clear of it.
        ax.text(0.02, y, f"{value:.2f}x", va="center", ha="left", fontsize=11, color="white", fontweight="bold")
        if floor is not None:
            ax.plot([floor], [y], marker="D", color="white", markeredgecolor=_INK, markersize=7, zorder=3,
                    linestyle="none", label="if OnceTask added nothing but its round trips" if y == len(bars) - 1
                    else None)
        if target is not None:
            ax.plot([target, target], [y - 0.4, y + 0.4], color=_INK, linewidth=2)
            sign = "<=" if kind == "max" else ">="
            ax.text(target, y + 0.45, f"target {sign} {target:.2f}", ha="center", fontsize=8, color=_INK)
    ax.axvline(1.0, color=_GREY, linestyle=":", linewidth=1)
    ax.set_yticks(range(len(bars)), [b[0] for b in bars], fontsize=9)
    ax.set_xlim(0, max(1.6, max(max(b[1], b[4] or 0.0) for b in bars) + 0.35))
    ax.set_ylim(-0.6, len(bars) - 0.2)
    ax.set_xlabel("OnceTask / plain Celery Task (medians, same run; 1.0 = plain)")
    ax.set_title("Cost relative to plain Celery", fontsize=11)
    ax.legend(fontsize=8, loc="lower right")

    # 2. Lock-operation latency against locks held.
    ax = axes[1]
    for op, color in (("acquire", "#1f77b4"), ("pickup", "#ff7f0e"), ("release", "#9467bd")):
        ax.plot(levels, [lat[str(n)][op]["median_us"] for n in levels], marker="o", color=color,
                label=f"{op} median")
        ax.plot(levels, [lat[str(n)][op]["p99_us"] for n in levels], marker=".", linestyle="--", color=color,
                alpha=0.5, label=f"{op} p99")
    ax.set_xscale("log")
    ax.set_xticks(levels, [_level(n) for n in levels])
    ax.set_ylim(0, None)
    ax.set_xlabel("locks held in Redis")
    ax.set_ylabel("microseconds per operation")
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    ax.set_title("Lock-operation latency (flat = good)", fontsize=11)

    # 3. Memory per held lock.
    ax = axes[2]
    kinds = ["queue", "running"]
    values = [mem[k]["bytes_per_lock"] for k in kinds]
    ax.bar(kinds, values, color=[_GREEN if v <= MEMORY_MAX else _RED for v in values], width=0.55)
    for x, v in enumerate(values):
        ax.text(x, v + 5, f"{v:.0f} B", ha="center", fontsize=10, fontweight="bold")
    ax.axhline(MEMORY_MAX, color=_INK, linewidth=2, label=f"target <= {MEMORY_MAX:.0f} B")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_ylim(0, max([*values, MEMORY_MAX]) * 1.3)
    ax.set_ylabel(f"bytes of used_memory per lock ({_level(mem['locks'])} held)")
    ax.set_title("Redis memory per held lock", fontsize=11)

    round_trips = ", ".join(f"{p} {rt[p]['locks']}" for p in ROUND_TRIPS)
    m = results["machine"]
    fig.suptitle(
        f"celery-once-task against plain Celery{' and the other implementations' if compared else ''}.  "
        f"Lock-store round trips: {round_trips}.\n"
        f"{m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, Celery {m['celery']}, redis-py {m['redis_py']}, "
        f"Redis {m['redis_server']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- document -------------------------------------------------------------------


def _us(value: float) -> str:
    return f"{value:.0f} µs"


def _p(*sentences: str) -> str:
    """A paragraph: one line, so that its figures never break across lines."""
    return " ".join(sentences)


def _value(t: Target) -> str:
    return f"{t.value:.2f}" if t.value < 100 else f"{t.value:.0f}"


def document(results: dict[str, Any], chart_name: str) -> str:
    m, cfg = results["machine"], results["config"]
    pub, thr, rt = results["publish"], results["throughput"], results["round_trips"]
    lat, mem = results["latency"], results["memory"]
    levels = sorted(int(k) for k in lat if k != "flatness")
    low, high = str(levels[0]), str(levels[-1])
    all_targets = targets(results)
    missed = [t for t in all_targets if t.met is False]
    plain_us, set_us = pub["plain"]["median_us"], pub["set"]["median_us"]
    added = pub["once"]["median_us"] - plain_us
    trips_us = lat[low]["pickup"]["median_us"] + lat[low]["release"]["median_us"]
    prof = results.get("profile")
    lib_publish, lib_duplicate, lib_worker = (
        (_us(prof[k]["library_us"]) for k in ("publish", "duplicate", "worker")) if prof else ("?", "?", "?")
    )

    out = [
        "# Benchmarks",
        "",
        _p("What `OnceTask` costs next to a plain Celery `Task`, measured in one run on one machine: publishing,",
           "dropping a duplicate, worker throughput, Redis round trips, lock-operation latency with up to",
           f"{_level(levels[-1])} locks held, and Redis memory per held lock; and, side by side, the other",
           "Celery de-duplication libraries (celery_once, celery-singleton, celery-once-task 1.0.0) and this",
           "project with hiredis and a unix socket ([part (g)](#g-every-implementation-side-by-side))."),
        "",
        f"![Ratios to plain Celery, lock latency against locks held, memory per lock]({chart_name})",
        "",
        "## Reproduce",
        "",
        "```bash",
        COMMAND,
        "bash scripts/bench.sh --quick     # a short run (about 2 minutes), rougher figures",
        "bash scripts/bench.sh --profile   # only the profile of \"Where the time goes\"",
        "bash scripts/bench.sh --memory    # only what the library keeps in Redis, beside a pre-release (part l)",
        "bash scripts/bench.sh --compare --variants plain,once-task,once-task-1.0.0 --rounds 30"
        "   # only the implementations side by side",
        "```",
        "",
        _p("It installs `redis-server` if it is missing (with apt-get, as root; otherwise it says how), builds",
           "`.venv-bench` and a virtualenv per other implementation (see (g)), starts redis-servers of its own on",
           "free ports (never the one on 6379) and Celery workers",
           "of its own, and prints the table below; `--docs` also rewrites this page, its chart and",
           "`benchmarks.json` (every figure of the run), and `--quick` makes a short, rougher run.",
           f"This run took {results['duration_s'] / 60:.1f} minutes."),
        "",
        _p("To check that a change to the library costs nothing, compare it with an earlier commit of itself in",
           "the same run: `bash scripts/bench.sh --compare --against REF` (any git ref, e.g. `--against bc1bb7c",
           "--variants plain,once-task,once-task@bc1bb7c`) exports the tree at REF with `git archive`, installs it",
           "(not editable, with the same Celery, kombu and redis-py releases) in `.venv-bench-against`, and",
           "measures it as the variant `once-task@REF`, taking turns with the others round by round. Besides its",
           "ratios to plain Celery, the run prints `once-task` / `once-task@REF` for each path (publish, duplicate,",
           "each pool's throughput): the ratio of the medians, the median of the ratios paired round by round, and",
           "their quartiles, the spread to judge a difference against."),
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| CPUs (nproc) | {m['nproc']} |",
        f"| CPU model | {m['cpu']} |",
        f"| OS | {m['os']}{' (a virtual machine)' if m.get('virtual') else ''} |",
        f"| Python | {m['python']} |",
        f"| Celery / kombu | {m['celery']} / {m['kombu']} |",
        f"| redis-py | {m['redis_py']} ({'hiredis ' + m['hiredis'] if m.get('hiredis') else 'no hiredis'}) |",
        f"| Redis server | {m['redis_server']} |",
        f"| load average at start / end | {m['loadavg_start'][0]:.2f} / {m['loadavg_end'][0]:.2f} |",
        "",
        _p("The machine is shared: other processes ran during the measurement. That is why the variants take",
           "turns (A B A B ..., the order rotating) and every figure is a median."),
        "",
        "## Targets",
        "",
        "Ratios are OnceTask / plain Celery, from medians of the same run.",
        "",
        "| target | measured | ratio / value | wanted | |",
        "|---|---|---|---|---|",
    ]
    for t in all_targets:
        out.append(f"| {t.name} | {t.measured.replace(' us', ' µs')} | {_value(t)} | {t.target} | {t.verdict} |")
    out += ["", f"{len(all_targets) - len(missed)} of {len(all_targets)} met."]
    if missed:
        out[-1] += " Why the others are missed, and what it would take: [Misses](#misses)."

    out += [
        "",
        "## (a) Publishing and (b) dropped duplicates",
        "",
        _p(f"{cfg['publish_rounds']} rounds of {cfg['publish_calls']} calls per variant, nothing consuming the queue.",
           "The variants take turns at every call, each call timed on its own; the latencies are over all rounds,",
           "calls per second the median of the rounds'."),
        "",
        "| variant | median | p99 | calls/s |",
        "|---|---|---|---|",
    ]
    for variant, label in (("plain", "plain `Task.delay()`, new arguments"),
                           ("once", "`OnceTask.delay()`, new arguments (published)"),
                           ("duplicate", "`OnceTask.delay()`, arguments already queued (dropped)"),
                           ("set", "the queue lock's `SET NX PX GET` alone, sent as the library sends it "
                                   "(the round trip OnceTask adds)")):
        v = pub[variant]
        out.append(f"| {label} | {_us(v['median_us'])} | {_us(v['p99_us'])} | {v['calls_per_s']:.0f} |")
    out += [
        "",
        _p("Ratios from each round's calls per second, paired within the round: publish",
           f"{pub['once_ratio_paired']:.2f}x, duplicate {pub['duplicate_ratio_paired']:.2f}x."),
        "",
        _p(f"A publish costs OnceTask {_us(added)} more than plain Celery. The SET NX it adds is one round trip,",
           f"which alone takes {_us(set_us)} here: were that all it added, a publish would cost",
           f"{pub['floor_ratio']:.2f}x plain and a dropped duplicate {set_us / plain_us:.2f}x a plain publish.",
           f"The rest, about {_us(added - set_us)} on a publish and {_us(pub['duplicate']['median_us'] - set_us)}",
           "on a duplicate, is the library's own Python (the call's digest, the settings, the task id) and the",
           f"machine's noise; profiled, the library's Python is {lib_publish} on a publish and {lib_duplicate} on",
           "a duplicate (see [Where the time goes](#where-the-time-goes))."),
        "",
        "## (c) Worker throughput",
        "",
        _p(f"No-op tasks (results ignored, worker log level WARNING, prefetch multiplier 4), {cfg['throughput_n']}",
           f"per drain, {cfg['throughput_rounds']} drains per variant and pool, the variants taking turns. Each",
           "drain is published to a staging queue first and then renamed into the worker's queue in one command,",
           "so that the worker starts on a full queue with no publisher beside it. Throughput is (N - 1) / (time",
           "the last task was done - time the first task was done), from times the tasks wrote themselves. Each",
           "variant has a worker process of its own per pool (the figures come from part (g), where the other",
           "implementations take turns with these two)."),
        "",
        "| pool | plain tasks/s | OnceTask tasks/s | ratio | ratio, paired by round |",
        "|---|---|---|---|---|",
    ]
    for pool, v in thr.items():
        out.append(f"| {pool} (concurrency {v['concurrency']}) | {v['plain_per_s']:.0f} | {v['once_per_s']:.0f} "
                   f"| {v['ratio']:.2f} | {v['ratio_paired']:.2f} |")
    if "solo" in thr:
        plain_task = 1e6 / thr["solo"]["plain_per_s"]
        once_cost = 1e6 / thr["solo"]["once_per_s"] - plain_task
        out += [
            "",
            _p(f"On the solo pool a plain task takes {_us(plain_task)} and an OnceTask task {_us(once_cost)} more.",
               f"Its two lock round trips alone take {_us(trips_us)} (`pickup` + `release` in (e)): were that all",
               f"it added, the solo throughput would be {plain_task / (plain_task + trips_us):.2f}x plain."),
        ]
    out += [
        "",
        "## (d) Round trips",
        "",
        _p("Counted by a `redis.Connection` subclass that counts `send_packed_command` calls (commands sent in",
           "one write are one),",
           "installed on the lock client's connection pool; connection handshakes are not counted. The worker",
           "paths run in an in-process solo worker (`celery.contrib.testing.worker.start_worker`): the pickup is",
           "what the worker thread sends between `task_prerun` and the task body, the end what it sends between",
           "the body and `task_postrun`. The broker's round trips on the publishing paths are there for",
           "comparison. `tests/test_round_trips.py` asserts the lock-client counts."),
        "",
        "| path | lock client | broker |",
        "|---|---|---|",
    ]
    for path, label in (("plain_publish", "plain `Task.delay()`"), ("publish", "OnceTask publish"),
                        ("duplicate", "OnceTask duplicate, dropped"), ("pickup", "OnceTask pickup (worker)"),
                        ("end", "OnceTask end (worker)")):
        out.append(f"| {label} | {rt[path]['locks']} | {rt[path].get('broker', '-')} |")
    out += [
        "",
        "## (e) Lock-operation latency with many locks held",
        "",
        _p("One redis-server, one database per level, each filled with locks as the library writes them (half",
           "queue locks, half running locks, all with a TTL), written by a Lua loop on the server. The levels",
           "take turns at every lock lifecycle, run through the library's `LockStore`: `acquire` (`SET ... NX PX GET`,",
           "the publish), `pickup` (release the queue lock and take the running lock, two scripts in one write)",
           "and `release`",
           f"(compare-and-delete), each timed on its own; {cfg['latency_rounds']} rounds of",
           f"{cfg['latency_per_round']} lifecycles per level. The server's own time per command is Redis's",
           "`usec_per_call` (`INFO commandstats`), from shorter batches of one level at a time. (Separate",
           "redis-server processes per level were tried first: identical servers differed from one another by up",
           "to 30% on this machine, more than any effect of the number of keys.)"),
        "",
        "| locks held | acquire median / p99 | pickup median / p99 | release median / p99 | in Redis: SET / EVALSHA |",
        "|---|---|---|---|---|",
    ]
    for n in levels:
        v = lat[str(n)]
        server = v["server_usec_per_call"]
        out.append(
            f"| {v['keys']:,} | {_us(v['acquire']['median_us'])} / {_us(v['acquire']['p99_us'])} "
            f"| {_us(v['pickup']['median_us'])} / {_us(v['pickup']['p99_us'])} "
            f"| {_us(v['release']['median_us'])} / {_us(v['release']['p99_us'])} "
            f"| {server.get('set', 0):.1f} / {server.get('evalsha', 0):.1f} µs |"
        )
    flat = lat["flatness"]
    out += [
        "",
        _p(f"From {_level(int(low))} to {_level(int(high))} locks the medians change by",
           ", ".join(f"{op} {100 * (f['median_ratio'] - 1):+.0f}%" for op, f in flat.items()) + ".",
           "Every operation reads or writes one key of Redis's hash table, O(1) whatever the number of keys;",
           "inside Redis a command takes a few microseconds (a cache miss more with more keys), the rest is",
           "the round trip and the client."),
    ]
    q, r = mem["queue"], mem["running"]
    out += [
        "",
        "## (f) Redis memory per held lock",
        "",
        f"`used_memory` before and after writing {mem['locks']:,} locks of one kind into an empty server.",
        "",
        "| lock | bytes per lock | key | value |",
        "|---|---|---|---|",
        f"| queue | {q['bytes_per_lock']:.0f} | `{q['sample_key']}` ({q['key_length']} B) "
        f"| a task id ({q['value_length']} B) |",
        f"| running | {r['bytes_per_lock']:.0f} | `{r['sample_key']}` ({r['key_length']} B) "
        f"| `{r['sample_value']}` ({r['value_length']} B) |",
        "",
        MEMORY_NOTE,
    ]
    if "compare" in results:
        out += ["", *report_compare.section(results["compare"], cfg)]
    out += [
        "",
        "## Where the time goes",
        "",
        *report_profile.section(results.get("profile")),
    ]
    if "limits" in results:
        out += ["", *limits_section(results["limits"])]
    if "bursts" in results:
        out += ["", *bursts_section(results["bursts"])]
    if "redis_memory" in results:
        from . import memory

        out += ["", *memory.section(results["redis_memory"], memory.before())]
    if missed:
        out += ["", "## Misses", ""]
        if pub["once_ratio"] > PUBLISH_MAX:
            out.append(_p(
                f"* **Publishing ({pub['once_ratio']:.2f}x, wanted <= {PUBLISH_MAX:.2f}x).** The SET NX round trip",
                f"alone is {_us(set_us)}, {100 * set_us / plain_us:.0f}% of a plain publish",
                f"({_us(plain_us)}) on this machine, so even a lock library that did nothing else would publish at",
                f"{pub['floor_ratio']:.2f}x. The round trip is already the only one (the floor); what is left is",
                f"the library's own Python, {lib_publish} profiled (see [Where the time goes](#where-the-time-goes)",
                "for where). On a machine where a loopback round trip is cheaper relative to Celery's own",
                "publish the same code comes closer to 1.0x.",
            ))
        if pub["duplicate_ratio"] > DUPLICATE_MAX:
            out.append(_p(
                f"* **Dropped duplicate ({pub['duplicate_ratio']:.2f}x, wanted <= {DUPLICATE_MAX:.2f}x).** It is",
                f"the SET NX round trip ({set_us / plain_us:.2f}x of a plain publish by itself) plus the library's",
                f"own Python ({lib_duplicate} profiled: the call's digest, the settings, the task id). The round trip",
                "cannot go; the Python is itemised under [Where the time goes](#where-the-time-goes).",
            ))
        if "solo" in thr and thr["solo"]["ratio"] < SOLO_MIN:
            out.append(_p(
                f"* **Solo worker ({thr['solo']['ratio']:.2f}x, wanted >= {SOLO_MIN:.2f}x).** A task costs two",
                "round trips more than in plain Celery, which does about three of its own per task (fetch, add",
                "to the unacked set, ack). Profiling the worker shows the extra time spent waiting for the replies,",
                f"and {lib_worker} per task in the library's Python; with the round trips measured in (e) the ratio",
                "could not pass",
                f"{1e6 / thr['solo']['plain_per_s'] / (1e6 / thr['solo']['plain_per_s'] + trips_us):.2f}x here.",
                "Under prefork the round trips of one process overlap the work of the other:",
                f"{thr.get('prefork', {}).get('ratio', float('nan')):.2f}x.",
            ))
        if any(mem[k]["bytes_per_lock"] > MEMORY_MAX for k in ("queue", "running")):
            out.append(_p(
                f"* **Memory ({q['bytes_per_lock']:.0f} B per queue lock, {r['bytes_per_lock']:.0f} B per running",
                f"lock, wanted <= {MEMORY_MAX:.0f} B).** See the breakdown in (f): about 115 B is what Redis spends on",
                "any key with a TTL, the key takes 64-80 B, and the running lock's value 96 B. By `MEMORY USAGE`,",
                "which leaves out the expiry entry and the tables' buckets, each is under 200 B (see (l)); (f) lists",
                "what would bring each under 200 B of `used_memory`.",
            ))
        flat_missed = [op for op, f in flat.items() if f["median_ratio"] > FLAT_MAX]
        if flat_missed:
            out.append(_p(
                f"* **Latency with many locks ({', '.join(flat_missed)}).** Redis's own time per command is in the",
                "table of (e); a difference beyond it is the machine's other load during the run.",
            ))
    out.append("")
    return "\n".join(out)


#: Why memory per lock is what it is (Redis 7, jemalloc, 64-bit).
MEMORY_NOTE = """\
Where the bytes go, for a string key with a TTL in Redis 7 (jemalloc rounds every allocation up to
its size class: 24 -> 32, 57..64 -> 64, 65..80 -> 80, 134 -> 160):

| | queue lock | running lock |
|---|---|---|
| hash-table entry (24 B) | 32 | 32 |
| key string (sds header + key + NUL) | 64 | 80 |
| value object (robj 16 B) + string | 64 (one allocation: values up to 44 B are embedded) | 16 + 80 |
| expiry entry (24 B) | 32 | 32 |
| bucket pointers, keys and expires tables (1M keys in 2^20 buckets) | ~17 | ~17 |
| **total** | **~209** | **~257** |

About 115 bytes of that is what Redis spends on any key with a TTL; the rest is the key and the value.
`MEMORY USAGE` leaves out the expiry entry and the tables' buckets: 152 B and 184 B by it (see (l)).
In 2.0 the running lock's value is compact, `<task id>\x1f<attempt>:<instance>:<worker>\x1f<since>`
(70 B with a heartbeat, which names the worker instead), not the 153-byte JSON of the pre-release builds (337 B a lock).
What would bring a lock under 200 bytes of `used_memory`, without changing Redis:

* **running lock:** a value of at most 44 bytes, which Redis embeds in the value object (saves 64 B):
  the task id as 22 base64 characters and no time taken, which operators read with `GET`.
* **queue lock:** it is 9 B over: a key of at most 44 bytes (jemalloc class 48) or a task id stored in
  at most 28 bytes (22 base64 characters: class 48 for the embedded value) brings it to about 193 B.
* Both change what deployed publishers compare (the task id) or key names; they are left as options."""


LIMITS_INTRO = (
    "`bash scripts/bench.sh --limits` (part (i) of a full run) times a limited key's pickup and release through the "
    "library's `LockStore`, each in the state that costs the most: at N = 1 the running lock (the queue lock's "
    "release and the running lock with its finished record, then the release writing the record); at N = 3 and "
    "100 the last free slot, the other N - 1 held, taken and freed again; at N = 100 with 1,000 calls waiting, a "
    "release that hands the freed slot to the head of the line, and that call claiming it. Round trips are counted "
    "on the connection."
)


def limits_section(cases: list[dict[str, Any]]) -> list[str]:
    from .limits import table as limits_table

    return [
        "## (i) Concurrency limits",
        "",
        LIMITS_INTRO,
        "",
        limits_table(cases),
        "",
        "One round trip each, whatever the limit and however many calls wait: a slot's pickup reads the key's slots "
        "(N of them) and nothing of the line but its head, and a waiting call is touched only when a slot frees.",
    ]


def bursts_section(burst: dict[str, Any]) -> list[str]:
    from .bursts import text as bursts_table

    return [
        "## (j) Debounce: a burst of 1,000 calls",
        "",
        "`bash scripts/bench.sh --debounce` calls a debounced task (`debounce=30`, its messages in a queue no worker "
        "consumes) 1,001 times for one document: the first call starts the burst and publishes its message; the "
        "1,000 after it join the burst. Each call is timed on its own; the lock client's round trips are counted on "
        "its connection and the messages in the broker's queue. Beside them, in the same run: a plain Celery publish "
        "of a call, and a `OnceTask` call dropped as a duplicate.",
        "",
        bursts_table(burst),
        "",
        "A call that joins a burst costs one round trip and publishes nothing. It costs more than a dropped "
        "duplicate, which sends a native `SET NX GET`: the burst's script also keeps the call's arguments (the last "
        "call's are the ones the execution runs with), written as JSON on every call.",
    ]
