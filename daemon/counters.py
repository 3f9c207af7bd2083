"""The site's counters, in one place: files by outcome, deliveries, problems, events, notices, bytes, deletions."""

from __future__ import annotations

import collections
import dataclasses

FILE_OUTCOMES = ("stored", "duplicate", "checksum_mismatch", "failed", "rejected", "registered", "replaced", "custody")


@dataclasses.dataclass(slots=True)
class SiteCounters:
    """Monotonic counters since start-up; every part increments these and metrics/status read them."""

    files: collections.Counter[str] = dataclasses.field(
        default_factory=lambda: collections.Counter(dict.fromkeys(FILE_OUTCOMES, 0))
    )
    deliveries_acked: int = 0
    delivery_failures: int = 0
    problems: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    events: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    notices_published: int = 0
    bytes_moved: collections.Counter[tuple[str, str]] = dataclasses.field(default_factory=collections.Counter)
    """Bytes by (direction, peer): ``in`` pulled from the peer and stored, ``out`` served to the peer."""
    deleted_files: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    """Files deleted by retention, by what they were (``summit``, ``relay``, ``product:<kind>``)."""
    deleted_bytes: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    """Bytes freed by retention, by the same keys."""

    def moved(self, direction: str, peer: str, size: int) -> None:
        """``size`` bytes went ``in`` from or ``out`` to ``peer``."""
        self.bytes_moved[(direction, peer)] += size

    def file_outcomes(self, *, archive: bool) -> dict[str, int]:
        """Files by outcome, and at the archive the notices published."""
        values = dict(self.files)
        if archive:
            values["notices"] = self.notices_published
        return values
