"""Summary statistics and the interleaving order of the variants."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: a value that was actually measured."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return float(ordered[rank - 1])


def rotation(variants: Sequence[str], round_index: int) -> list[str]:
    """The variants in the order round ``round_index`` runs them.

    Each round starts with a different variant, so that none always runs
    first (on a cold cache) or last (after the others heated the machine).
    """
    shift = round_index % len(variants)
    return [*variants[shift:], *variants[:shift]]
