"""What the app's broker needs of the library: how late it may deliver a finished task's message again.

Brokers deliver at least once, and the finished records (``redelivery``) must
outlive the latest copy a broker can hand out:

* Celery's Redis transport (``redis://``, ``rediss://``, ``sentinel://``) and
  its SQS transport hand an unacknowledged message out again once its
  ``visibility_timeout`` has passed (``broker_transport_options``; kombu's
  default is 3600 s on Redis, 1800 s on SQS). A copy can come that long after
  its delivery, so a record is kept that long, plus ``MARGIN`` for the
  execution's own time and the clocks of the workers.
* RabbitMQ (``amqp://``, ``pyamqp://``, ...) gives a consumer's unacknowledged
  messages back the moment its connection closes: the copy comes within the
  time a worker takes to notice a lost connection and reconnect, which
  ``AMQP_GUARD`` covers.
* Any other transport: an hour, the fixed default this replaces.

A ``redelivery_guard_timeout`` given by the user wins, but one shorter than the
visibility timeout is refused: a copy delivered after the record expired would run again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

__all__ = ["AMQP_GUARD", "MARGIN", "OTHER_GUARD", "check_guard", "default_guard", "guard_seconds", "transport",
           "visibility_timeout"]

#: Seconds a record outlives the visibility timeout.
MARGIN = 300
#: Seconds a record is kept where the broker is RabbitMQ.
AMQP_GUARD = 300
#: Seconds a record is kept where the broker's redelivery is not known.
OTHER_GUARD = 3600

_VISIBILITY_DEFAULTS = {"redis": 3600, "sqs": 1800}
_FAMILIES = {
    "redis": "redis", "rediss": "redis", "sentinel": "redis", "redis+socket": "redis", "socket": "redis",
    "sqs": "sqs",
    "amqp": "amqp", "amqps": "amqp", "pyamqp": "amqp", "librabbitmq": "amqp",
}


def transport(conf: Any) -> str:
    """The family of the app's broker transport: ``redis``, ``sqs``, ``amqp``, or the URL's scheme."""
    url = getattr(conf, "broker_url", None) or getattr(conf, "broker_transport", None) or "amqp"
    if isinstance(url, (list, tuple)):
        url = url[0] if url else "amqp"
    url = str(url).split(";", 1)[0].strip()
    scheme = url.partition("://")[0] if "://" in url else url
    return _FAMILIES.get(scheme.lower(), scheme.lower())


def visibility_timeout(conf: Any) -> Optional[float]:
    """Seconds after which the broker hands an unacknowledged message out again; None where it has no such timeout."""
    family = transport(conf)
    if family not in _VISIBILITY_DEFAULTS:
        return None
    options = getattr(conf, "broker_transport_options", None) or {}
    value = options.get("visibility_timeout") if isinstance(options, Mapping) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return float(_VISIBILITY_DEFAULTS[family])


def default_guard(conf: Any) -> float:
    """How long a finished record is kept by default for the app's broker (see the module)."""
    visibility = visibility_timeout(conf)
    if visibility is not None:
        return visibility + MARGIN
    return float(AMQP_GUARD if transport(conf) == "amqp" else OTHER_GUARD)


def check_guard(conf: Any, explicit: float) -> None:
    """Refuse an explicit ``redelivery_guard_timeout`` shorter than the broker's visibility timeout (``ValueError``)."""
    visibility = visibility_timeout(conf)
    if visibility is not None and explicit < visibility:
        raise ValueError(
            f"redelivery_guard_timeout={explicit:g} is shorter than the broker's visibility_timeout "
            f"({visibility:g} s, broker_transport_options): a copy of a finished task's message delivered after "
            f"its record expired would run again; set redelivery_guard_timeout to at least {visibility:g} "
            f"(or leave it unset: {visibility + MARGIN:g})"
        )


def guard_seconds(conf: Any, explicit: Optional[float]) -> float:
    """How long a finished record is kept: ``explicit`` if given (and allowed: ``check_guard``), else the default."""
    if explicit is None:
        return default_guard(conf)
    check_guard(conf, explicit)
    return float(explicit)
