"""The documented import path of ``redact_url``, ``scan_keys`` and the client helpers: see ``store.connection``."""

from .store.connection import *  # noqa: F403
