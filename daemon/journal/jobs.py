"""Processing jobs: journaled before they run, so a restart neither loses a queued job nor repeats a done one.

A job is keyed by a hash of its step, its inputs' checksums, its parameters and the code version
(:func:`daemon.processing.jobs.job_key`); one calibration sequence gets one job per step
(``jobs_sequence``). The calibration frames the scheduler groups are read from the catalog here too.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from daemon.journal import science as journal_science

CALIB_IMGTYPES = ("BIAS", "DARK", "FLAT")
"""IMGTYPEs of the frames that calibration sequences are made of."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CalibFrame:
    """One archived calibration frame as the catalog describes it."""

    name: str
    archive_path: str
    checksum: str
    instrument: str
    detector: str
    imgtype: str
    groupid: str
    filter: str | None
    curindex: int | None
    maxindex: int | None
    arrived_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRow:
    """A journaled job."""

    job_key: str
    step: str
    instrument: str
    detector: str
    sequence: str
    spec: dict[str, Any]
    state: str
    attempts: int
    product_id: str | None
    error: str | None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_CALIB_COLUMNS = (
    "name, archive_path, archived_checksum, instrument, detector, upper(imgtype) AS imgtype, summary, arrived_at"
)
_CALIB = f"status = 'archived' AND upper(imgtype) IN {CALIB_IMGTYPES!r}"


def _calib_frames(rows: Iterable[sqlite3.Row]) -> list[CalibFrame]:
    frames: list[CalibFrame] = []
    for row in rows:
        summary = json.loads(row["summary"])
        groupid = summary.get("groupid")
        if not isinstance(groupid, str) or not groupid or row["instrument"] is None or row["detector"] is None:
            continue
        filter_ = summary.get("filter")
        frames.append(
            CalibFrame(
                name=row["name"],
                archive_path=row["archive_path"],
                checksum=row["archived_checksum"],
                instrument=row["instrument"],
                detector=row["detector"],
                imgtype=row["imgtype"],
                groupid=groupid,
                filter=str(filter_) if filter_ is not None else None,
                curindex=_int(summary.get("curindex")),
                maxindex=_int(summary.get("maxindex")),
                arrived_at=float(row["arrived_at"]),
            )
        )
    return frames


@dataclass(frozen=True, slots=True, kw_only=True)
class CalibChanges:
    """Calibration frames catalogued since a reader's mark (see :func:`daemon.journal.science.changes`)."""

    epoch: int
    full: bool
    frames: list[CalibFrame]
    catalog_mark: int


def calib_changes(db: sqlite3.Connection, epoch: int | None, catalog_mark: int) -> CalibChanges:
    """Archived bias, dark and flat frames with a GROUPID catalogued after rowid ``catalog_mark``, oldest first,
    and the mark to pass next time; all of them when ``epoch`` is not the catalog's now."""
    now = journal_science.catalog_epoch(db)
    full = epoch != now
    query = f"SELECT {_CALIB_COLUMNS} FROM catalog WHERE {_CALIB} AND rowid > ? ORDER BY rowid"
    frames = _calib_frames(db.execute(query, (0 if full else catalog_mark,)))
    return CalibChanges(epoch=now, full=full, frames=frames, catalog_mark=journal_science.newest_rowid(db, "catalog"))


def earlier_calib_frames(
    db: sqlite3.Connection, groups: Iterable[tuple[str, str, str]], through: int
) -> dict[tuple[str, str, str], list[CalibFrame]]:
    """The calibration frames of each (instrument, detector, GROUPID) catalogued up to rowid ``through``."""
    found = journal_science.group_rows(db, _CALIB_COLUMNS, _CALIB, groups, through)
    return {key: [f for f in _calib_frames(rows) if f.groupid == key[2]] for key, rows in found.items()}


def _job(row: sqlite3.Row) -> JobRow:
    return JobRow(
        job_key=row["job_key"],
        step=row["step"],
        instrument=row["instrument"],
        detector=row["detector"],
        sequence=row["sequence"],
        spec=json.loads(row["spec"]),
        state=row["state"],
        attempts=int(row["attempts"]),
        product_id=row["product_id"],
        error=row["error"],
    )


def insert(
    db: sqlite3.Connection,
    *,
    job_key: str,
    step: str,
    instrument: str,
    detector: str,
    sequence: str,
    spec: dict[str, Any],
) -> bool:
    """Journal a queued job; False when this sequence already has a job of this step (nothing changes)."""
    cursor = db.execute(
        "INSERT OR IGNORE INTO jobs (job_key, step, instrument, detector, sequence, spec, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (job_key, step, instrument, detector, sequence, json.dumps(spec, sort_keys=True), time.time()),
    )
    return cursor.rowcount == 1


def claimed_of(db: sqlite3.Connection, keys: Iterable[tuple[str, str, str, str]]) -> set[tuple[str, str, str, str]]:
    """Which of these (step, instrument, detector, sequence) have a journaled job (by the unique index)."""
    query = "SELECT 1 FROM jobs WHERE step = ? AND instrument = ? AND detector = ? AND sequence = ?"
    return {key for key in keys if db.execute(query, key).fetchone() is not None}


def unfinished(db: sqlite3.Connection) -> list[JobRow]:
    """Queued jobs and jobs that were running when the daemon stopped (to be run again), oldest first."""
    rows = db.execute("SELECT * FROM jobs WHERE state IN ('queued', 'running') ORDER BY rowid").fetchall()
    return [_job(r) for r in rows]


def by_key(db: sqlite3.Connection, job_key: str) -> JobRow | None:
    """One job."""
    row = db.execute("SELECT * FROM jobs WHERE job_key = ?", (job_key,)).fetchone()
    return _job(row) if row is not None else None


def pending_steps(db: sqlite3.Connection, instrument: str, detector: str) -> set[str]:
    """Steps with a queued or running job for one detector."""
    rows = db.execute(
        "SELECT DISTINCT step FROM jobs WHERE instrument = ? AND detector = ? AND state IN ('queued', 'running')",
        (instrument, detector),
    )
    return {r["step"] for r in rows}


def mark_running(db: sqlite3.Connection, job_key: str) -> int:
    """The job starts (again): count the attempt; return the attempt number."""
    db.execute(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = ? WHERE job_key = ?",
        (time.time(), job_key),
    )
    return int(db.execute("SELECT attempts FROM jobs WHERE job_key = ?", (job_key,)).fetchone()[0])


def mark_done(db: sqlite3.Connection, job_key: str, product_id: str) -> None:
    """The job's product is catalogued (inside the product's transaction)."""
    db.execute(
        "UPDATE jobs SET state = 'done', product_id = ?, error = NULL, finished_at = ? WHERE job_key = ?",
        (product_id, time.time(), job_key),
    )


def mark_failed(db: sqlite3.Connection, job_key: str, error: str) -> None:
    """The processor refused the job (it will not be retried by itself)."""
    db.execute(
        "UPDATE jobs SET state = 'failed', error = ?, finished_at = ? WHERE job_key = ?",
        (error[:4000], time.time(), job_key),
    )


def counts(db: sqlite3.Connection) -> dict[str, int]:
    """Jobs by state."""
    return {r["state"]: r["n"] for r in db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")}
