"""The notice log: every notice the archive publishes, in order, with its publication state."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class NoticeRow:
    """A journaled notice and its position in the log."""

    position: int
    notice_id: str
    topic: str
    payload: str


def insert(db: sqlite3.Connection, *, notice_id: str, file_key: str, topic: str, payload: bytes, at: float) -> None:
    """Journal a notice (inside the transaction whose state it announces)."""
    db.execute(
        "INSERT INTO notices (notice_id, file_key, topic, payload, created_at) VALUES (?, ?, ?, ?, ?)",
        (notice_id, file_key, topic, payload.decode(), at),
    )


def unpublished(db: sqlite3.Connection, limit: int) -> list[NoticeRow]:
    """The oldest notices not yet acknowledged by the broker, at most ``limit``."""
    rows = db.execute(
        "SELECT rowid, notice_id, topic, payload FROM notices WHERE published_at IS NULL ORDER BY rowid LIMIT ?",
        (limit,),
    ).fetchall()
    return [NoticeRow(position=r[0], notice_id=r[1], topic=r[2], payload=r[3]) for r in rows]


def mark_published(db: sqlite3.Connection, notice_ids: Iterable[str]) -> None:
    """The broker acknowledged these notices."""
    now = time.time()
    db.executemany("UPDATE notices SET published_at = ? WHERE notice_id = ?", [(now, n) for n in notice_ids])
