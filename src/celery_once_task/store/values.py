"""How values cross to the lock store: seconds as whole milliseconds, and replies back as text."""

from __future__ import annotations

import math
from typing import Optional, Union


def ms(seconds: float) -> int:
    """``seconds`` as the whole milliseconds Redis takes (``PX``), rounded up, at least 1.

    Rounded to the microsecond first: ``0.3 * 1000`` is 300.00000000000006 in
    floating point, which is 300 milliseconds, not 301.
    """
    return max(1, math.ceil(round(seconds * 1000, 3)))


def text(value: Union[bytes, str, None]) -> Optional[str]:
    """A reply as text (the lock clients do not decode replies), or None for nil."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
