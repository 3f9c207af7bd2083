"""The outbox: messages re-sent until their receiver acknowledges them (custody receipts)."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from protocol.custody import Custody


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxRow:
    """A message re-sent until its receiver acknowledges it."""

    msg_id: str
    kind: str
    receiver: str
    file_key: str
    payload: str


def pending(db: sqlite3.Connection) -> list[OutboxRow]:
    """Messages not yet acknowledged, oldest first."""
    rows = db.execute("SELECT * FROM outbox WHERE state = 'pending' ORDER BY created_at").fetchall()
    return [
        OutboxRow(
            msg_id=r["msg_id"], kind=r["kind"], receiver=r["receiver"], file_key=r["file_key"], payload=r["payload"]
        )
        for r in rows
    ]


def insert(db: sqlite3.Connection, *, msg_id: str, kind: str, receiver: str, file_key: str, payload: str) -> bool:
    """Queue a message for reliable delivery; False when one of this kind already went to receiver."""
    cur = db.execute(
        "INSERT OR IGNORE INTO outbox (msg_id, kind, receiver, file_key, payload, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (msg_id, kind, receiver, file_key, payload, time.time()),
    )
    return cur.rowcount == 1


def mark_acked(db: sqlite3.Connection, msg_id: str) -> None:
    """The receiver acknowledged the message."""
    db.execute("UPDATE outbox SET state = 'acked', acked_at = ? WHERE msg_id = ?", (time.time(), msg_id))


def queue_custody(db: sqlite3.Connection, custody: Custody, file_key: str) -> bool:
    """Journal a custody receipt for reliable delivery; False when one already went to that receiver."""
    return insert(
        db,
        msg_id=custody.custody_id,
        kind="custody",
        receiver=custody.receiver,
        file_key=file_key,
        payload=custody.to_json().decode(),
    )


def retire(db: sqlite3.Connection, msg_id: str) -> None:
    """Stop re-sending a message that cannot be sent under the current rules (kept for the record)."""
    db.execute("UPDATE outbox SET state = 'retired' WHERE msg_id = ? AND state = 'pending'", (msg_id,))


def replace_payload(db: sqlite3.Connection, msg_id: str, payload: str) -> None:
    """Rewrite a pending message in the current format (an upgrade)."""
    db.execute("UPDATE outbox SET payload = ? WHERE msg_id = ? AND state = 'pending'", (payload, msg_id))
