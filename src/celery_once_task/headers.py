"""The library's message headers: their names, and reading them off a worker's request.

A call carries what the worker needs in headers of the library's own (its
digest, what kind of copy it is, when it was made). Celery 5.0 to 5.2 flatten
a message's custom headers onto the request and leave ``request.headers``
empty; 5.3 and later keep them in ``request.headers`` too. ``header`` and
``message_headers`` read both, so that a copy the library publishes again
(deferred, waiting, handed over) carries every header of the message it
copies -- the library's own and the user's -- on every supported release.
"""

from __future__ import annotations

from typing import Any

import celery
from celery.app.task import Context

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
#: A call made with ``once={...}``: the options it set for itself (``call_options``).
OPTIONS_HEADER = "once_task_options"
#: A postponed throttled call's reserved start (the store's clock, ms): it starts on it if on time.
THROTTLE_HEADER = "once_task_throttle"

#: A message put off with a countdown: its entry's token in the parked registry (``parking``).
PARKED_HEADER = "once_task_parked"

#: Every header the library puts on a message.
LIBRARY_HEADERS = (DIGEST_HEADER, TAKEOVER_HEADER, AFTER_HEADER, WAITER_HEADER, CALLED_HEADER, CALL_HEADER,
                   BURST_HEADER, OPTIONS_HEADER, PARKED_HEADER, THROTTLE_HEADER)


#: Celery 5.0 to 5.2 build a worker's request from the message's headers
#: (custom ones included), delivery info and properties, all as fields of the
#: request, and fill ``request.headers`` only for an eager call or a protocol 1
#: message. 5.3 (``Context._get_custom_headers``) sets it to the fields that are
#: none of Celery's own, which is what ``_flattened_headers`` does here.
_CUSTOM_HEADERS_FLATTENED = tuple(celery.VERSION[:3]) < (5, 3, 0)

#: Celery's own fields of a request, which are no custom header (and which
#: ``signature_from_request`` carries already): the fields the installed
#: ``Context`` declares and the names Celery 5.3+ leaves out beside them; and
#: ``shadow``, a message header of 5.0 its ``Context`` does not declare, and
#: the fields later releases declare, which a newer client's message carries
#: to an older worker.
_CELERY_FIELDS = frozenset({
    *vars(Context), "lang", "task", "argsrepr", "kwargsrepr", "compression", "shadow", "ignore_result",
    "properties", "replaced_task_nesting", "stamped_headers", "stamps", "time_limit", "soft_time_limit",
})

#: The library's namespace: its headers, and the state it keeps on a request it runs (``once_task_entered``,
#: ``once_task_telemetry``).
_NAMESPACE = "once_task_"


# Any, not object: each of the library's headers holds what its publisher put
# there (a digest, an owner token, a stamp), and its reader takes it as such.
def header(request: object, name: str) -> Any:
    """A message header: in ``request.headers``, or flattened onto the request."""
    headers = getattr(request, "headers", None)
    value = headers.get(name) if headers else None
    return value if value is not None else getattr(request, name, None)


def message_headers(request: object) -> dict[str, object]:
    """The headers of the message a request runs, the library's own included wherever Celery put them."""
    headers = dict(getattr(request, "headers", None) or {})
    if not headers and _CUSTOM_HEADERS_FLATTENED and isinstance(request, Context):
        # The release tells whether the fields hold custom headers: on 5.3+ an
        # empty ``request.headers`` means the message had none, and fields
        # beyond Celery's are state set on the request since. On 5.0-5.2 a
        # filled one (an eager call, a protocol 1 message) means none were
        # flattened. A worker's ``Request`` (the revoked signal's) is no
        # ``Context``: its fields are the worker's, never the message's.
        headers = _flattened_headers(request)
    for name in LIBRARY_HEADERS:
        if name not in headers:
            value = getattr(request, name, None)
            if value is not None:
                headers[name] = value
    return headers


def _flattened_headers(request: Context) -> dict[str, object]:
    """The custom headers Celery 5.0 to 5.2 flattened onto ``request``: its fields that are none of Celery's."""
    return {
        name: value for name, value in vars(request).items()
        if name not in _CELERY_FIELDS and not (name.startswith(_NAMESPACE) and name not in LIBRARY_HEADERS)
    }
