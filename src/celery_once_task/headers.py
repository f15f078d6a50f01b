"""The library's message headers: their names, and reading them off a worker's request.

A call carries what the worker needs in headers of the library's own (its
digest, what kind of copy it is, when it was made). Celery 5.0 flattens a
message's custom headers onto the request and leaves ``request.headers``
empty; later releases keep them in ``request.headers`` too. ``header`` and
``message_headers`` read both, so that a copy the library publishes again
(deferred, waiting, handed over) carries every header of its own on every
supported release.
"""

from __future__ import annotations

from typing import Any

#: The digest of the call's arguments, from the publisher to the worker.
DIGEST_HEADER = "once_task_digest"
#: A deferred copy: the owner token its earlier pickup may have taken the lock with.
TAKEOVER_HEADER = "once_task_takeover"
#: A redelivered copy that waited: the owner token of the delivery it waited on.
AFTER_HEADER = "once_task_after"
#: A waiting copy's message.
WAITER_HEADER = "once_task_waiter"
#: A call that may wait in a line: when it was made, in microseconds (the line is in call order).
CALLED_HEADER = "once_task_called_at"
#: A call whose task id the caller fixed: which publish of that id it is.
CALL_HEADER = "once_task_call"
#: A burst's message: this message runs a debounced burst.
BURST_HEADER = "once_task_burst"

#: Every header the library puts on a message.
LIBRARY_HEADERS = (DIGEST_HEADER, TAKEOVER_HEADER, AFTER_HEADER, WAITER_HEADER, CALLED_HEADER, CALL_HEADER,
                   BURST_HEADER)


def header(request: Any, name: str) -> Any:
    """A message header: in ``request.headers``, or flattened onto the request."""
    headers = getattr(request, "headers", None)
    value = headers.get(name) if headers else None
    return value if value is not None else getattr(request, name, None)


def message_headers(request: Any) -> dict[str, Any]:
    """The headers of the message a request runs, the library's own included wherever Celery put them."""
    headers = dict(getattr(request, "headers", None) or {})
    for name in LIBRARY_HEADERS:
        if name not in headers:
            value = getattr(request, name, None)
            if value is not None:
                headers[name] = value
    return headers
