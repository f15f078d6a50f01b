"""A ``OnceTask`` that celery beat schedules more often than it takes to run (``tests/beat_app.py``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT, Worker, records, wait_until

#: Ticks are due every second; two runs, a rejection and a duplicate take about 8 s.
TIMEOUT = 40.0


class Beat:
    """A ``celery beat`` subprocess running ``tests.beat_app``, with its schedule and log in a temp dir."""

    def __init__(self, port: int, tag: str, queue: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="once-task-beat-"))
        self.log_path = self.dir / "beat.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "ONCE_TEST_REDIS_PORT": str(port), "ONCE_TEST_BEAT_TAG": tag,
               "ONCE_TEST_BEAT_QUEUE": queue}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.beat_app", "beat", "-l", "info",
             "--schedule", str(self.dir / "schedule"), "--pidfile", str(self.dir / "beat.pid")],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )

    def alive(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"beat exited; log:\n{self.read_log()[-3000:]}")
        return True

    def read_log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()
        return self.process.returncode

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def scheduled(redis_server: Any, recs: Any) -> Iterator[tuple[str, str]]:
    """Beat and a two-process worker run until the tick has run twice, been rejected and been de-duplicated.

    The rejection shows that a tick tried to start while another ran; the
    de-duplication, that beat got ``None`` back from ``apply_async``. Yields
    the tag and beat's log.
    """
    tag = uuid.uuid4().hex
    queue = f"beat-{tag[:8]}"
    worker = Worker(redis_server.port, queue, concurrency=2, queues=queue).wait_ready()
    beat = Beat(redis_server.port, tag, queue)
    try:
        wait_until(
            lambda: (
                beat.alive()
                and len([record for record in records(recs, tag) if record["event"] == "end"]) >= 2
                and "execution rejected: running lock" in worker.read_log()
                and "duplicate call dropped" in beat.read_log()
            ),
            timeout=TIMEOUT, interval=0.2,
            what="two ticks to run, one to be rejected and one to be de-duplicated",
        )
    finally:
        beat.stop()
        log = beat.read_log()
        beat.remove()
        worker.stop()  # warm: a running tick finishes and records its end
    yield tag, log


def test_beat_scheduled_task_never_overlaps_with_itself(scheduled: Any, recs: Any) -> None:
    tag, _ = scheduled
    timeline = sorted(records(recs, tag), key=lambda record: record["t"])
    sequence = [record["event"] for record in timeline]
    assert sequence == ["start", "end"] * (len(sequence) // 2), timeline


def test_beat_logs_no_error_when_the_task_is_already_queued(scheduled: Any) -> None:
    """Celery beat up to 5.3.1 reads ``.id`` of what ``apply_async`` returns: ``None`` would stop it."""
    _, log = scheduled
    assert "duplicate call dropped" in log
    assert "ERROR" not in log and "Traceback" not in log, log[-3000:]
