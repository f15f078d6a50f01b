"""The documented import path of the operators' lock API: see ``ops.locks``."""

from .ops.locks import *  # noqa: F403
