"""The documented import path of ``redact_url``, ``scan_keys`` and the client helpers: see ``store.connection``.

Every name in ``store.connection.__all__`` (the client helpers, and the URL
forms, parsing and redaction it re-exports from ``store.addresses``).
"""

from .store.connection import *  # noqa: F403
from .store.connection import __all__ as __all__
