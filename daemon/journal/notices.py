"""The notice log: every notice the archive publishes, in order, with its position and publication state.

A notice's position is its rowid: one more than the largest before it, and nothing is ever deleted,
so positions run 1, 2, 3, ... in the order the notices were journaled. The journal has one writer,
so a reader never sees position N+1 committed while N is still to come.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass

from protocol.arrival import positioned
from protocol.codec import Message


@dataclass(frozen=True, slots=True, kw_only=True)
class NoticeRow:
    """A journaled notice and its position in the log."""

    position: int
    notice_id: str
    topic: str
    payload: str


def insert(
    db: sqlite3.Connection, *, notice_id: str, file_key: str, topic: str, payload: bytes | Message, at: float
) -> int:
    """Journal a notice (inside the transaction whose state it announces) at the next position.

    The stored payload carries that position (``payload``, the notice or its JSON, is encoded with it),
    so what is published and what is replayed are the same bytes.

    Returns:
        The notice's position in the log.

    Raises:
        ProtocolError: ``payload`` is not a notice message.
    """
    position = int(db.execute("SELECT coalesce(max(rowid), 0) + 1 FROM notices").fetchone()[0])
    db.execute(
        "INSERT INTO notices (rowid, notice_id, file_key, topic, payload, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        (position, notice_id, file_key, topic, positioned(payload, position).decode(), at),
    )
    return position


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


def after(db: sqlite3.Connection, position: int, limit: int) -> list[NoticeRow]:
    """The notices after ``position``, oldest first, at most ``limit`` (published to the broker or not)."""
    rows = db.execute(
        "SELECT rowid, notice_id, topic, payload FROM notices WHERE rowid > ? ORDER BY rowid LIMIT ?",
        (position, limit),
    ).fetchall()
    return [NoticeRow(position=r[0], notice_id=r[1], topic=r[2], payload=r[3]) for r in rows]


def newest(db: sqlite3.Connection) -> int:
    """The position of the newest notice (0 when the log is empty)."""
    return int(db.execute("SELECT coalesce(max(rowid), 0) FROM notices").fetchone()[0])
