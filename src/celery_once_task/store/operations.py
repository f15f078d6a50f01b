"""The lock store's round trips as telemetry names them: the lock, what the trip does, the command, the script.

Each is a ``telemetry.Operation``: its span is named ``<lock type> <verb>``,
and it carries the command (``db.operation.name``: ``SET`` for the queue
lock's ``SET ... NX GET``, ``EVALSHA`` for a script) and the script's name
(``db.stored_procedure.name``, from ``lua``). A round trip that sends more
than one command -- a pickup that also releases the queue lock, a release
that also takes the waiting copy -- is named by the lock's own command, as a
pipeline of as many (``telemetry.spans.operation_name``).
"""

from __future__ import annotations

from ..telemetry import Operation
from .lua.bursts import BURST_CALL, BURST_FORGET, BURST_TAKE, Called
from .lua.calls import CALL_ACQUIRE
from .lua.locks import ACQUIRE, COMPARE_AND_DELETE, RECORD_FINISHED, RELEASE_RUNNING
from .lua.slots import SLOT_ACQUIRE, SLOT_RELEASE
from .lua.throttles import THROTTLE_TAKE

#: A call's queue lock at publish: ``SET key value PX ttl NX GET``; a retry's renews its own with the script.
QUEUE_ACQUIRE = Operation("queue", "acquire", "SET", None)
QUEUE_RENEW = Operation("queue", "acquire", "EVALSHA", ACQUIRE.name)
#: A call whose task keeps a window (``unique_for``), its newest arguments (``"replace"``) or a call
#: option: its queue lock and window in one script (``windows``).
WINDOW_ACQUIRE = Operation("window", "acquire", "EVALSHA", CALL_ACQUIRE.name)
#: The pickup of a task without a running lock: its queue lock released.
QUEUE_RELEASE = Operation("queue", "release", "EVALSHA", COMPARE_AND_DELETE.name)

RUNNING_PICKUP = Operation("running", "pickup", "EVALSHA", ACQUIRE.name)
#: Becoming the key's waiting copy (``running_lock_conflict="wait"``).
RUNNING_WAIT = Operation("running", "wait", "EVALSHA", ACQUIRE.name)
#: The release that records the execution's end, and the one that has no end to record (eager).
RUNNING_RELEASE = Operation("running", "release", "EVALSHA", RELEASE_RUNNING.name)
RUNNING_DELETE = Operation("running", "release", "EVALSHA", COMPARE_AND_DELETE.name)
#: A rejected duplicate's finished record.
RUNNING_RECORD = Operation("running", "record", "EVALSHA", RECORD_FINISHED.name)

SLOT_PICKUP = Operation("slot", "pickup", "EVALSHA", SLOT_ACQUIRE.name)
#: Joining a limited key's line: no slot was free.
SLOT_JOIN = Operation("slot", "join", "EVALSHA", SLOT_ACQUIRE.name)
SLOT_FREE = Operation("slot", "release", "EVALSHA", SLOT_RELEASE.name)

#: A throttled execution's check of its key's log (with its queue lock's release, where it holds one).
THROTTLE_PICKUP = Operation("throttle", "pickup", "EVALSHA", THROTTLE_TAKE.name)

BURST_START = Operation("burst", "call", "EVALSHA", BURST_CALL.name)
BURST_DUE = Operation("burst", "take", "EVALSHA", BURST_TAKE.name)
BURST_END = Operation("burst", "forget", "EVALSHA", BURST_FORGET.name)
#: What a debounced call got, as ``celery_once.outcome``: it started a burst (published its message), joined
#: one, or found one whose message was lost and published it again.
BURST_OUTCOMES = {Called.STARTED: "acquired", Called.JOINED: "joined", Called.OVERDUE: "recovered"}
