"""The tests' Celery app with a beat schedule: ``tick(tag)`` every second, though it runs for 2.5 s.

Each tick is sent with a 1.5 s countdown, so it waits in the worker with its
queue lock held when beat sends the next one: beat gets ``None`` back from
``apply_async`` every other second. The tick that starts after it finds the
previous one still running and is rejected by the running lock. The test
running beat sets the tag and the queue in the environment.
"""

from __future__ import annotations

import os

from tests.worker_app import app

TAG = os.environ.get("ONCE_TEST_BEAT_TAG", "beat")
QUEUE = os.environ.get("ONCE_TEST_BEAT_QUEUE", "beat")

app.conf.beat_schedule = {
    "tick": {
        "task": "tests.worker_app.tick",
        "schedule": 1.0,
        "args": (TAG,),
        "options": {"queue": QUEUE, "countdown": 1.5},
    },
}
