"""The ``slow`` mode's bandwidth cap: a virtual-time token bucket shared by one direction of a link."""

from __future__ import annotations

from typing import Final

__all__ = ["Pacer"]


_PACING_SLICE_S: Final = 0.01  # a throttled chunk is written in slices of this many seconds of bandwidth
_MIN_SLICE_BYTES: Final = 1024


class Pacer:
    """A shared bandwidth budget for one direction of a link (virtual-time token bucket)."""

    def __init__(self, bytes_per_s: float) -> None:
        self._bytes_per_s = bytes_per_s
        self._next_free = 0.0
        self.slice_bytes = max(_MIN_SLICE_BYTES, int(bytes_per_s * _PACING_SLICE_S))

    def reserve(self, size: int, now: float) -> float:
        """Book ``size`` bytes of the link; returns how long to wait before sending them."""
        start = max(self._next_free, now)
        self._next_free = start + size / self._bytes_per_s
        return start - now
