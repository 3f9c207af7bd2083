"""Exposures and completeness: which detectors arrived, late exposures, and ``skyrelay verify`` for a day."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from typing import Any

import structlog

from daemon.aio import raise_if_cancelling
from daemon.config import Tuning
from daemon.journal import Journal, new_id
from daemon.journal import catalog as journal_catalog
from daemon.journal import exposures as journal_exposures
from daemon.journal import notices as journal_notices
from daemon.report import Reporter
from processors.detectors import UnknownInstrument, expected_detectors
from protocol import topics
from protocol.arrival import ExposureNotice

log = structlog.get_logger()


def topic_segment(value: str) -> str:
    """A header value made safe as one MQTT topic segment."""
    cleaned = "".join(ch if ch.isalnum() or ch in "_.-" else "_" for ch in value)[:64]
    return cleaned or "unknown"


def track(db: sqlite3.Connection, summary: dict[str, Any], now: float) -> tuple[bool | None, ExposureNotice | None]:
    """Add an archived file's detector to its exposure (inside the ingest transaction).

    Returns whether the exposure is complete, and the exposure notice to journal when this file
    completed it (the caller journals it after the file's own arrival notice).
    """
    instrument, obsid, detector = summary.get("instrument"), summary.get("obsid"), summary.get("detector")
    if not isinstance(instrument, str) or not isinstance(obsid, str) or not isinstance(detector, str):
        return None, None
    try:
        expected = expected_detectors(instrument)
    except UnknownInstrument:
        return None, None
    arrived_before, state_before = journal_exposures.arrived(db, instrument, obsid) or (frozenset(), None)
    arrived = {*arrived_before, detector}
    complete = expected <= arrived
    state = "complete" if complete else (state_before or "pending")
    seqnum = summary.get("seqnum") if isinstance(summary.get("seqnum"), int) else None
    dayobs = str(summary["dayobs"]) if summary.get("dayobs") is not None else None
    journal_exposures.upsert(
        db,
        instrument=instrument,
        obsid=obsid,
        dayobs=dayobs,
        seqnum=seqnum,
        expected=expected,
        arrived=arrived,
        now=now,
        state=state,
    )
    if complete and state_before != "complete":
        return True, exposure_notice(
            instrument=instrument,
            obsid=obsid,
            dayobs=dayobs,
            seqnum=seqnum,
            state="complete",
            expected=expected,
            arrived=arrived,
            now=now,
        )
    return complete, None


def exposure_notice(
    *,
    instrument: str,
    obsid: str,
    dayobs: str | None,
    seqnum: int | None,
    state: str,
    expected: frozenset[str] | set[str],
    arrived: frozenset[str] | set[str],
    now: float,
) -> ExposureNotice:
    """The notice of an exposure that became complete or late."""
    return ExposureNotice(
        notice_id=new_id("x"),
        obsid=obsid,
        instrument=instrument,
        dayobs=dayobs,
        seqnum=seqnum,
        state=state,  # type: ignore[arg-type]
        expected=len(expected),
        arrived=len(set(arrived) & set(expected)),
        missing=tuple(sorted(set(expected) - set(arrived))),
        at=now,
    )


def journal_exposure_notice(db: sqlite3.Connection, notice: ExposureNotice) -> None:
    """Journal an exposure notice (keyed by exposure and state, so it is made once)."""
    journal_notices.insert(
        db,
        notice_id=notice.notice_id,
        file_key=f"exposure/{notice.instrument}/{notice.obsid}/{notice.state}",
        topic=topics.exposures(topic_segment(notice.instrument)),
        payload=notice,
        at=notice.at,
    )


class Completeness:
    """Marks exposures late when a detector is still missing ``late_after_s`` after the first arrived."""

    def __init__(self, journal: Journal, tuning: Tuning, reporter: Reporter, notices_wake: asyncio.Event) -> None:
        self.journal = journal
        self.tuning = tuning
        self.reporter = reporter
        self.notices_wake = notices_wake
        self.wake = asyncio.Event()

    async def run(self) -> None:
        """Wake at the next deadline or when an exposure starts; mark and announce late ones."""
        late_after = self.tuning.late_after_s
        while True:
            raise_if_cancelling()
            self.wake.clear()
            now = time.time()
            next_deadline: float | None = None
            for row in await self.journal.read(journal_exposures.pending):
                deadline = row.first_at + late_after
                if deadline > now:
                    next_deadline = deadline if next_deadline is None else min(next_deadline, deadline)
                    continue
                await self._mark_late(row, now)
            timeout = None if next_deadline is None else max(0.05, next_deadline - time.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.wake.wait()

    async def _mark_late(self, row: journal_exposures.ExposureRow, now: float) -> None:
        notice = exposure_notice(
            instrument=row.instrument,
            obsid=row.obsid,
            dayobs=row.dayobs,
            seqnum=row.seqnum,
            state="late",
            expected=row.expected,
            arrived=row.arrived,
            now=now,
        )

        def record(db: sqlite3.Connection) -> bool:
            if not journal_exposures.mark_late(db, row.instrument, row.obsid):
                return False
            journal_exposure_notice(db, notice)
            return True

        if not await self.journal.transaction(record):
            return
        self.notices_wake.set()
        await self.reporter.problem(
            "exposure_late",
            f"{row.obsid}: {len(notice.missing)} of {notice.expected} detectors missing "
            f"{self.tuning.late_after_s:.0f}s after the first arrived",
            obsid=row.obsid,
            instrument=row.instrument,
            missing=list(notice.missing),
        )

    async def verify(self, dayobs: str) -> dict[str, Any]:
        """Per exposure of a day: detectors expected, arrived, missing; sequence gaps; quarantine."""
        now = time.time()
        out_exposures = []
        seqnums: dict[str, set[int]] = {}
        for row in await self.journal.read(journal_exposures.of_day, dayobs):
            missing = sorted(row.expected - row.arrived)
            out_exposures.append(
                {
                    "instrument": row.instrument,
                    "obsid": row.obsid,
                    "seqnum": row.seqnum,
                    "state": row.state,
                    "expected": len(row.expected),
                    "arrived": len(row.arrived & row.expected),
                    "missing": missing,
                    "late": missing if row.state == "late" else [],
                    "first_arrival_age_s": round(now - row.first_at, 1),
                }
            )
            if row.seqnum is not None:
                seqnums.setdefault(row.instrument, set()).add(int(row.seqnum))
        gaps = {inst: sorted(set(range(min(s), max(s) + 1)) - s) for inst, s in seqnums.items()}
        quarantined = [q for q in await self.journal.read(journal_catalog.quarantined) if q["dayobs"] in (dayobs, None)]
        # An exposure whose detectors are still arriving (within late_after_s of its first) is not
        # missing anything yet: it is reported as arriving and does not fail verify.
        arriving = [e for e in out_exposures if e["missing"] and e["state"] == "pending"]
        incomplete = [e for e in out_exposures if e["missing"] and e["state"] != "pending"]
        return {
            "dayobs": dayobs,
            "exposures": out_exposures,
            "gaps": {k: v for k, v in gaps.items() if v},
            "quarantined": quarantined,
            "complete": sum(1 for e in out_exposures if not e["missing"]),
            "incomplete": len(incomplete),
            "arriving": len(arriving),
            "ok": not incomplete and not any(gaps.values()),
        }
