"""What one ``skyrelay bench`` run does: the workloads it may run, its sizes, and the units it reports in."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Final

__all__ = ["INSTRUMENT", "MB", "MIB", "WORKLOADS", "BenchConfig"]


WORKLOADS: Final = ("direct", "primary", "https", "idle", "small", "small-primary", "backlog", "cpu", "headers")
INSTRUMENT: Final = "LSSTCam"
MB: Final = 1_000_000
MIB: Final = 1 << 20


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BenchConfig:
    """What one ``skyrelay bench`` run does."""

    parent: Path
    files: int
    size_bytes: int
    idle_files: int
    small_files: int
    small_size_bytes: int
    backlog_files: int
    idle_window_s: float
    workloads: tuple[str, ...]
    keep: bool
    quick: bool
