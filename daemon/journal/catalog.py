"""The archive's catalog: every file it holds (archived or quarantined), its checksums, header summary and fixes."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from daemon.journal import science as journal_science

CONTEXT_FIELDS = {
    "IMGTYPE": "imgtype",
    "FILTER": "filter",
    "EXPTIME": "exptime",
    "DAYOBS": "dayobs",
    "SEQNUM": "seqnum",
    "INSTRUME": "instrument",
    "GROUPID": "groupid",
    "OBSID": "obsid",
}
"""Header keyword → summary field that sibling detectors of one exposure must agree on."""


def insert(
    db: sqlite3.Connection,
    *,
    file_key: str,
    name: str,
    size: int,
    checksum: str,
    archived_checksum: str,
    archived_size: int,
    archive_path: str,
    status: str,
    reason: str | None,
    summary: Mapping[str, Any],
    fixes: Sequence[Mapping[str, Any]],
    proof_path: str | None,
    findings: Sequence[Mapping[str, Any]],
    closed_at: float,
    arrived_at: float,
    route: str,
    sender: str,
) -> None:
    """Insert the catalog row of an ingested file (inside the ingest transaction).

    Raises:
        sqlite3.IntegrityError: the key or the archive path is already catalogued.
    """
    db.execute(
        "INSERT INTO catalog (file_key, name, size, checksum, archived_checksum, archived_size, archive_path,"
        " status, reason, instrument, detector, obsid, dayobs, seqnum, imgtype, summary, fixes, closed_at,"
        " arrived_at, route, sender) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            file_key,
            name,
            size,
            checksum,
            archived_checksum,
            archived_size,
            archive_path,
            status,
            reason,
            summary.get("instrument"),
            summary.get("detector"),
            summary.get("obsid"),
            summary.get("dayobs"),
            summary.get("seqnum") if isinstance(summary.get("seqnum"), int) else None,
            summary.get("imgtype"),
            json.dumps(summary, default=str),
            json.dumps({"fixes": list(fixes), "proof_path": proof_path, "findings": list(findings)}, default=str),
            closed_at,
            arrived_at,
            route,
            sender,
        ),
    )


def by_key(db: sqlite3.Connection, file_key: str) -> sqlite3.Row | None:
    """The catalog row of a file (name + size + checksum), if catalogued."""
    row: sqlite3.Row | None = db.execute(
        "SELECT rowid AS id, * FROM catalog WHERE file_key = ?", (file_key,)
    ).fetchone()
    return row


def holder_of(db: sqlite3.Connection, archive_path: str) -> tuple[str, str] | None:
    """(file_key, name) of the file catalogued at ``archive_path``, if any."""
    row = db.execute("SELECT file_key, name FROM catalog WHERE archive_path = ?", (archive_path,)).fetchone()
    return (str(row["file_key"]), str(row["name"])) if row else None


def exposure_context(db: sqlite3.Connection, obsid: str | None) -> dict[str, object]:
    """Header values every archived sibling detector of the exposure agrees on (keyword → value)."""
    if not obsid:
        return {}
    rows = db.execute("SELECT summary FROM catalog WHERE obsid = ? AND status = 'archived'", (obsid,)).fetchall()
    summaries = [json.loads(r["summary"]) for r in rows]
    agreed: dict[str, object] = {}
    for key, field in CONTEXT_FIELDS.items():
        values = {json.dumps(s.get(field)) for s in summaries if s.get(field) is not None}
        if len(values) == 1:
            agreed[key] = json.loads(values.pop())
    return agreed


def quarantined(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every quarantined file with its id and reason, oldest first."""
    rows = db.execute(
        "SELECT rowid AS id, name, checksum, size, archive_path, reason, arrived_at, dayobs, obsid FROM catalog"
        " WHERE status = 'quarantined' ORDER BY arrived_at"
    ).fetchall()
    return [dict(r) for r in rows]


def quarantined_entry(db: sqlite3.Connection, quarantine_id: int) -> sqlite3.Row | None:
    """One quarantined file by its id."""
    row: sqlite3.Row | None = db.execute(
        "SELECT rowid AS id, * FROM catalog WHERE rowid = ? AND status = 'quarantined'", (quarantine_id,)
    ).fetchone()
    return row


def set_reason(db: sqlite3.Connection, quarantine_id: int, reason: str | None) -> None:
    """A release attempt found the file still unacceptable: record why."""
    db.execute("UPDATE catalog SET reason = ? WHERE rowid = ?", (reason, quarantine_id))


def remove(db: sqlite3.Connection, entry_id: int) -> None:
    """Drop a quarantine row that a release replaces (inside the release transaction); its rowid may be
    given again, so the science planner's mark is renewed (:data:`~daemon.journal.science.CATALOG_EPOCH`)."""
    db.execute("DELETE FROM catalog WHERE rowid = ?", (entry_id,))
    journal_science.bump_catalog_epoch(db)


def mark_released(db: sqlite3.Connection, file_key: str, at: float) -> None:
    """The file came out of quarantine at ``at``."""
    db.execute("UPDATE catalog SET released_at = ? WHERE file_key = ?", (at, file_key))


def status_counts(db: sqlite3.Connection) -> dict[str, int]:
    """Catalogued files by status."""
    return {r["status"]: r["n"] for r in db.execute("SELECT status, COUNT(*) AS n FROM catalog GROUP BY status")}
