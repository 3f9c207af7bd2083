"""Exposures at the archive: the detectors expected and arrived, and whether each is complete or late."""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class ExposureRow:
    """One exposure's completeness."""

    instrument: str
    obsid: str
    dayobs: str | None
    seqnum: int | None
    expected: frozenset[str]
    arrived: frozenset[str]
    first_at: float
    state: str


def _row(r: sqlite3.Row) -> ExposureRow:
    return ExposureRow(
        instrument=r["instrument"],
        obsid=r["obsid"],
        dayobs=r["dayobs"],
        seqnum=r["seqnum"],
        expected=frozenset(json.loads(r["expected"])),
        arrived=frozenset(json.loads(r["detectors"])),
        first_at=float(r["first_at"]),
        state=r["state"],
    )


def get(db: sqlite3.Connection, instrument: str, obsid: str) -> ExposureRow | None:
    """One exposure, if any of its detectors arrived."""
    row = db.execute("SELECT * FROM exposures WHERE instrument = ? AND obsid = ?", (instrument, obsid)).fetchone()
    return _row(row) if row else None


def arrived(db: sqlite3.Connection, instrument: str, obsid: str) -> tuple[frozenset[str], str] | None:
    """The detectors of one exposure that arrived so far and its state (None before the first); what each
    arrival needs, without reading the expected detectors again."""
    row = db.execute(
        "SELECT detectors, state FROM exposures WHERE instrument = ? AND obsid = ?", (instrument, obsid)
    ).fetchone()
    return (frozenset(json.loads(row[0])), str(row[1])) if row else None


@functools.lru_cache(maxsize=64)
def _expected_json(expected: frozenset[str]) -> str:
    """The stored form of an instrument's expected detectors (the same few sets, written once per arrival)."""
    return json.dumps(sorted(expected))


def upsert(
    db: sqlite3.Connection,
    *,
    instrument: str,
    obsid: str,
    dayobs: str | None,
    seqnum: int | None,
    expected: Iterable[str],
    arrived: Iterable[str],
    now: float,
    state: str,
) -> None:
    """Record the detectors that arrived (the first arrival sets ``first_at``)."""
    db.execute(
        "INSERT INTO exposures (instrument, obsid, dayobs, seqnum, expected, detectors, first_at, last_at, state)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(instrument, obsid) DO UPDATE SET"
        " detectors = excluded.detectors, last_at = excluded.last_at, state = excluded.state",
        (
            instrument,
            obsid,
            dayobs,
            seqnum,
            _expected_json(frozenset(expected)),
            json.dumps(sorted(arrived)),
            now,
            now,
            state,
        ),
    )


def pending(db: sqlite3.Connection) -> list[ExposureRow]:
    """Exposures still waiting for detectors, not yet late."""
    return [_row(r) for r in db.execute("SELECT * FROM exposures WHERE state = 'pending'")]


def mark_late(db: sqlite3.Connection, instrument: str, obsid: str) -> bool:
    """A pending exposure is late; False when it was no longer pending."""
    cur = db.execute(
        "UPDATE exposures SET state = 'late' WHERE instrument = ? AND obsid = ? AND state = 'pending'",
        (instrument, obsid),
    )
    return cur.rowcount == 1


def of_day(db: sqlite3.Connection, dayobs: str) -> list[ExposureRow]:
    """Every exposure of an observing day, by instrument and sequence number."""
    rows = db.execute("SELECT * FROM exposures WHERE dayobs = ? ORDER BY instrument, seqnum, obsid", (dayobs,))
    return [_row(r) for r in rows]
