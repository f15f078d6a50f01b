"""``python -m benchmarks.driver``: publishes for one implementation, in that implementation's virtualenv.

The comparison (``benchmarks.compare``) runs one driver per variant and sends
it one command per line on stdin, a JSON object; the driver answers each with
one JSON line on stdout. The app, the task and the lock store come from
``benchmarks.peer_app`` (configured by the environment).

``{"op": "publish", "run": ..., "calls": n, "duplicates": bool}``
    ``n`` calls of ``noop.delay()`` with new arguments, and, for a lock library,
    ``n`` calls with the arguments of one call already queued, taking turns
    call by call, each timed on its own; answers the latencies (µs) and the
    lock-store round trips of each call.
``{"op": "stage", "run": ..., "n": n, "queue": q}``
    ``n`` calls of ``noop.apply_async((run, i, n), queue=q)``, untimed.
``{"op": "quit"}``
"""

from __future__ import annotations

import gc
import json
import sys
import time
from typing import Any

from . import counting, peer_app


def publish(run: str, calls: int, duplicates: bool) -> dict[str, Any]:
    clock = time.perf_counter_ns
    delay = peer_app.noop.delay
    held = (f"{run}-held", -1, calls)
    if duplicates:
        delay(*held)
    out: dict[str, list[float]] = {"publish_us": [], "publish_trips": []}
    if duplicates:
        out.update(duplicate_us=[], duplicate_trips=[])
    for i in range(calls):
        paths = ("publish", "duplicate") if duplicates else ("publish",)
        for path in paths if i % 2 == 0 else reversed(paths):
            args = held if path == "duplicate" else (run, i, calls)
            before = counting.count("locks")
            t0 = clock()
            delay(*args)
            out[f"{path}_us"].append((clock() - t0) / 1000)
            out[f"{path}_trips"].append(counting.count("locks") - before)
    gc.collect()  # every round starts with the same garbage: none
    return out


def stage(run: str, n: int, queue: str) -> dict[str, Any]:
    for i in range(n):
        peer_app.noop.apply_async((run, i, n), queue=queue)
    return {"staged": n}


def main() -> int:
    for line in sys.stdin:
        command = json.loads(line)
        op = command.pop("op")
        if op == "quit":
            break
        answer = publish(**command) if op == "publish" else stage(**command)
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
