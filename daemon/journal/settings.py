"""Persisted settings of a site (the operator's route policy)."""

from __future__ import annotations

import sqlite3


def get(db: sqlite3.Connection, key: str) -> str | None:
    """A persisted setting, or None."""
    row = db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
    return str(row["value"]) if row else None


def put(db: sqlite3.Connection, key: str, value: str) -> None:
    """Persist a setting."""
    db.execute(
        "INSERT INTO settings(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, value),
    )
