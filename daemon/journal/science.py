"""Science frames, their calexps and the pairs made: what the archive's science scheduling reads from the journal.

Science jobs live in the ``jobs`` table like calibration jobs (step ``calexp`` keyed by OBSID, step
``diff`` keyed by ``<GROUPID>/<science>-<reference>``), so the unique ``(step, instrument, detector,
sequence)`` index is what makes a pair "made once": a pair is journaled before it runs and never again.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from daemon.journal.products import ProductRow
from daemon.journal.products import _row as _product


@dataclass(frozen=True, slots=True, kw_only=True)
class ScienceFrame:
    """One archived science frame (IMGTYPE OBJECT with GROUPID, CURINDEX and MAXINDEX)."""

    name: str
    archive_path: str
    checksum: str
    instrument: str
    detector: str
    obsid: str
    filter: str | None
    groupid: str
    curindex: int
    maxindex: int
    arrived_at: float


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def science_frames(db: sqlite3.Connection) -> list[ScienceFrame]:
    """Archived OBJECT frames that carry GROUPID, CURINDEX, MAXINDEX and OBSID, oldest first."""
    rows = db.execute(
        "SELECT name, archive_path, archived_checksum, instrument, detector, summary, arrived_at FROM catalog"
        " WHERE status = 'archived' AND upper(imgtype) = 'OBJECT' ORDER BY rowid"
    ).fetchall()
    out: list[ScienceFrame] = []
    for row in rows:
        summary = json.loads(row["summary"])
        groupid, obsid = summary.get("groupid"), summary.get("obsid")
        curindex, maxindex = _int(summary.get("curindex")), _int(summary.get("maxindex"))
        if not (isinstance(groupid, str) and groupid and isinstance(obsid, str) and obsid):
            continue
        if curindex is None or maxindex is None or row["instrument"] is None or row["detector"] is None:
            continue
        filter_ = summary.get("filter")
        out.append(
            ScienceFrame(
                name=row["name"],
                archive_path=row["archive_path"],
                checksum=row["archived_checksum"],
                instrument=row["instrument"],
                detector=row["detector"],
                obsid=obsid,
                filter=str(filter_) if filter_ is not None else None,
                groupid=groupid,
                curindex=curindex,
                maxindex=maxindex,
                arrived_at=float(row["arrived_at"]),
            )
        )
    return out


def newest_master(
    db: sqlite3.Connection, kind: str, instrument: str, detector: str, filter_: str | None = None
) -> ProductRow | None:
    """The newest master of one kind for a detector (of one filter, for flats)."""
    if filter_ is None:
        row = db.execute(
            "SELECT * FROM products WHERE kind = ? AND instrument = ? AND detector = ?"
            " ORDER BY created_at DESC LIMIT 1",
            (kind, instrument, detector),
        ).fetchone()
    else:
        row = db.execute(
            "SELECT * FROM products WHERE kind = ? AND instrument = ? AND detector = ? AND filter = ?"
            " ORDER BY created_at DESC LIMIT 1",
            (kind, instrument, detector, filter_),
        ).fetchone()
    return _product(row) if row is not None else None


def calexps(db: sqlite3.Connection) -> dict[tuple[str, str], ProductRow]:
    """Every calexp product, by the detector and OBSID of its visit (an exposure has one per detector)."""
    rows = db.execute("SELECT * FROM products WHERE kind = 'calexp' ORDER BY created_at").fetchall()
    out: dict[tuple[str, str], ProductRow] = {}
    for row in rows:
        product = _product(row)
        out[(product.detector, str(product.provenance["obsid"]))] = product
    return out


def science_jobs(db: sqlite3.Connection, step: str) -> dict[tuple[str, str], str]:
    """(detector, sequence) → state of every journaled job of one science step (``calexp`` or ``diff``).

    Work is per detector: the jobs of one exposure (calexp) or one quad's pair (diff) on different
    detectors share their sequence.
    """
    rows = db.execute("SELECT detector, sequence, state FROM jobs WHERE step = ?", (step,))
    return {(r["detector"], r["sequence"]): r["state"] for r in rows}


def alert_payload(db: sqlite3.Connection, alert_id: int) -> str | None:
    """The journaled AlertNotice of one alert (its JSON, with its position), or None."""
    row = db.execute("SELECT payload FROM notices WHERE notice_id = ?", (f"alert-{alert_id}",)).fetchone()
    return str(row[0]) if row is not None else None


def templates(db: sqlite3.Connection) -> list[ProductRow]:
    """Every template product, newest first."""
    rows = db.execute("SELECT * FROM products WHERE kind = 'template' ORDER BY created_at DESC").fetchall()
    return [_product(row) for row in rows]
