"""Capped, jittered exponential backoff."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, *, initial_s: float, cap_s: float) -> float:
    """Delay before retry number ``attempt`` (1-based): exponential, capped, with jitter in [50%, 100%]."""
    base = min(cap_s, initial_s * (2 ** max(0, min(attempt - 1, 30))))
    return float(base * random.uniform(0.5, 1.0))
