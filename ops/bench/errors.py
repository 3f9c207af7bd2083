"""The benchmark's one error: a workload or baseline could not be run."""

from __future__ import annotations

__all__ = ["BenchError"]


class BenchError(RuntimeError):
    """A workload or baseline could not be run."""
