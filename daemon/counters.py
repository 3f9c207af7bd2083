"""The site's counters, in one place: files by outcome, deliveries, problems, events, notices."""

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

    def file_outcomes(self, *, archive: bool) -> dict[str, int]:
        """Files by outcome, and at the archive the notices published."""
        values = dict(self.files)
        if archive:
            values["notices"] = self.notices_published
        return values
