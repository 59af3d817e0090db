"""The orchestratord process's garbage-collector settings (ORCH-2825)."""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "settle"]

# ORCH-2825: net allocations between two collections of the youngest generation
# (Python's default is 700)
YOUNG_THRESHOLD = 10_000


def settle() -> None:
    """ORCH-2825: once the process listens, what startup made is moved into the
    permanent generation (never traversed again) and the youngest generation is
    collected every :data:`YOUNG_THRESHOLD` allocations; the older generations'
    thresholds stay."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, oldest)
