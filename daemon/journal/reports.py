"""Problems and events as a journaled log: written when reported, published by their own loop."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass

KEEP_PUBLISHED = 20_000
"""Published reports kept for history; older ones are pruned."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportRow:
    """One journaled problem or event."""

    seq: int
    stream: str
    kind: str
    topic: str
    payload: str
    at: float


def _row(r: sqlite3.Row) -> ReportRow:
    return ReportRow(
        seq=r["seq"], stream=r["stream"], kind=r["kind"], topic=r["topic"], payload=r["payload"], at=r["at"]
    )


def insert(db: sqlite3.Connection, *, stream: str, kind: str, topic: str, payload: bytes, at: float) -> int:
    """Journal a report; return its sequence number."""
    cur = db.execute(
        "INSERT INTO reports (stream, kind, topic, payload, at) VALUES (?, ?, ?, ?, ?)",
        (stream, kind, topic, payload.decode(), at),
    )
    return int(cur.lastrowid or 0)


def unpublished(db: sqlite3.Connection, limit: int) -> list[ReportRow]:
    """The oldest reports not yet acknowledged by the broker."""
    rows = db.execute("SELECT * FROM reports WHERE published_at IS NULL ORDER BY seq LIMIT ?", (limit,))
    return [_row(r) for r in rows]


def mark_published(db: sqlite3.Connection, seqs: Iterable[int]) -> None:
    """The broker acknowledged these reports; prune old published history beyond :data:`KEEP_PUBLISHED`."""
    now = time.time()
    db.executemany("UPDATE reports SET published_at = ? WHERE seq = ?", [(now, s) for s in seqs])
    db.execute(
        "DELETE FROM reports WHERE published_at IS NOT NULL AND seq <= (SELECT MAX(seq) FROM reports) - ?",
        (KEEP_PUBLISHED,),
    )


def recent(db: sqlite3.Connection, stream: str, limit: int) -> list[ReportRow]:
    """The newest reports of one stream, oldest first."""
    rows = db.execute("SELECT * FROM reports WHERE stream = ? ORDER BY seq DESC LIMIT ?", (stream, limit)).fetchall()
    return [_row(r) for r in reversed(rows)]


def counts(db: sqlite3.Connection, stream: str) -> dict[str, int]:
    """Reports of one stream by kind (over the kept history)."""
    rows = db.execute("SELECT kind, COUNT(*) AS n FROM reports WHERE stream = ? GROUP BY kind", (stream,))
    return {r["kind"]: r["n"] for r in rows}
