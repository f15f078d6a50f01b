"""Reading the lock store's replies leniently: a field that is missing or malformed is None, never an error.

Values written by older releases lack fields, and one odd lock must not keep
an operator from listing the others (``rows``, ``workers``).
"""

from __future__ import annotations

import json
from typing import Optional, Union

from ..store.values import text

#: A reply of the lock clients, which do not decode replies (a decoding client's replies are text).
Reply = Union[bytes, str]


def seconds(pttl: Optional[int]) -> Optional[float]:
    """A ``PTTL`` reply in seconds; None for no expiry (-1) and for no key (-2: gone between two commands)."""
    return None if pttl is None or int(pttl) < 0 else round(int(pttl) / 1000, 3)


def as_text(value: Reply) -> str:
    """A reply as text."""
    return str(text(value))


def json_object(value: str) -> dict[str, object]:
    """``value``'s JSON object; empty if ``value`` is not one (a queue lock's value is a bare task id)."""
    try:
        data = json.loads(value)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def optional_str(value: object) -> Optional[str]:
    """``value`` as text; None stays None."""
    return None if value is None else str(value)


def optional_int(value: object) -> Optional[int]:
    """``value`` as a whole number; None if it is none (JSON's booleans, ``null``, lists and objects are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str, bytes)):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def optional_float(value: object) -> Optional[float]:
    """``value`` as a number; None if it is none (JSON's booleans, ``null``, lists and objects are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str, bytes)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
