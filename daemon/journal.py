"""The per-site journal: a SQLite file (WAL, synchronous=FULL) that outlives every crash.

State is written here before any message that depends on it is sent. All database work runs on
one dedicated thread, so the event loop never blocks on an fsync and SQLite sees one writer.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from daemon.errors import JournalError
from protocol.custody import Custody

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    file_key TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    checksum TEXT NOT NULL,
    closed_at REAL NOT NULL,
    local_path TEXT NOT NULL,
    source TEXT NOT NULL,
    upstream_transfer TEXT,
    route TEXT,
    route_sites TEXT,
    hop INTEGER,
    mtime_ns INTEGER,
    state TEXT NOT NULL DEFAULT 'held',
    custody_status TEXT,
    archive_path TEXT,
    custody_at REAL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS files_name ON files(name);
CREATE INDEX IF NOT EXISTS files_state ON files(state);
CREATE TABLE IF NOT EXISTS transfers (
    transfer_id TEXT PRIMARY KEY,
    file_key TEXT NOT NULL,
    route TEXT NOT NULL,
    route_sites TEXT NOT NULL,
    hop INTEGER NOT NULL,
    receiver TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    last_status TEXT,
    last_reason TEXT,
    created_at REAL NOT NULL,
    acked_at REAL
);
CREATE INDEX IF NOT EXISTS transfers_state ON transfers(state);
CREATE INDEX IF NOT EXISTS transfers_file ON transfers(file_key);
CREATE TABLE IF NOT EXISTS outbox (
    msg_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    receiver TEXT NOT NULL,
    file_key TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    created_at REAL NOT NULL,
    acked_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_state ON outbox(state);
CREATE UNIQUE INDEX IF NOT EXISTS outbox_once ON outbox(kind, receiver, file_key);
CREATE TABLE IF NOT EXISTS inbound (
    transfer_id TEXT PRIMARY KEY,
    sender TEXT NOT NULL,
    file_key TEXT NOT NULL,
    status TEXT NOT NULL,
    checksum TEXT,
    reason TEXT,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS catalog (
    file_key TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    checksum TEXT NOT NULL,
    archived_checksum TEXT NOT NULL,
    archived_size INTEGER NOT NULL,
    archive_path TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    reason TEXT,
    instrument TEXT,
    detector TEXT,
    obsid TEXT,
    dayobs TEXT,
    seqnum INTEGER,
    imgtype TEXT,
    summary TEXT NOT NULL DEFAULT '{}',
    fixes TEXT NOT NULL DEFAULT '[]',
    closed_at REAL NOT NULL,
    arrived_at REAL NOT NULL,
    route TEXT NOT NULL,
    sender TEXT NOT NULL,
    released_at REAL
);
CREATE INDEX IF NOT EXISTS catalog_exposure ON catalog(instrument, obsid);
CREATE INDEX IF NOT EXISTS catalog_dayobs ON catalog(dayobs);
CREATE TABLE IF NOT EXISTS notices (
    notice_id TEXT PRIMARY KEY,
    file_key TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    published_at REAL
);
CREATE INDEX IF NOT EXISTS notices_pending ON notices(published_at);
CREATE TABLE IF NOT EXISTS exposures (
    instrument TEXT NOT NULL,
    obsid TEXT NOT NULL,
    dayobs TEXT,
    seqnum INTEGER,
    expected TEXT NOT NULL,
    detectors TEXT NOT NULL DEFAULT '[]',
    first_at REAL NOT NULL,
    last_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    PRIMARY KEY (instrument, obsid)
);
CREATE INDEX IF NOT EXISTS exposures_state ON exposures(state);
CREATE INDEX IF NOT EXISTS exposures_dayobs ON exposures(dayobs);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class FileRow:
    """A file this site holds."""

    file_key: str
    name: str
    size: int
    checksum: str
    closed_at: float
    local_path: str
    source: str
    upstream_transfer: str | None
    route: str | None
    route_sites: tuple[str, ...] | None
    hop: int | None
    mtime_ns: int | None
    state: str
    custody_status: str | None
    archive_path: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferRow:
    """An outgoing hop of a file along a route."""

    transfer_id: str
    file_key: str
    route: str
    route_sites: tuple[str, ...]
    hop: int
    receiver: str
    state: str
    created_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxRow:
    """A message re-sent until its receiver acknowledges it (custody)."""

    msg_id: str
    kind: str
    receiver: str
    file_key: str
    payload: str


def _file_row(row: sqlite3.Row) -> FileRow:
    return FileRow(
        file_key=row["file_key"],
        name=row["name"],
        size=row["size"],
        checksum=row["checksum"],
        closed_at=row["closed_at"],
        local_path=row["local_path"],
        source=row["source"],
        upstream_transfer=row["upstream_transfer"],
        route=row["route"],
        route_sites=tuple(json.loads(row["route_sites"])) if row["route_sites"] else None,
        hop=row["hop"],
        mtime_ns=row["mtime_ns"],
        state=row["state"],
        custody_status=row["custody_status"],
        archive_path=row["archive_path"],
    )


def _transfer_row(row: sqlite3.Row) -> TransferRow:
    return TransferRow(
        transfer_id=row["transfer_id"],
        file_key=row["file_key"],
        route=row["route"],
        route_sites=tuple(json.loads(row["route_sites"])),
        hop=row["hop"],
        receiver=row["receiver"],
        state=row["state"],
        created_at=row["created_at"],
    )


class Journal:
    """Async facade over the site's SQLite journal; every call runs on the journal thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"journal-{path.stem}")
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        """Create or open the database and apply the schema."""
        await self._run(self._open)

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open journal {self.path}: {exc}") from exc
        self._db = db

    async def close(self) -> None:
        """Close the database and stop the journal thread."""
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    @property
    def db(self) -> sqlite3.Connection:
        """The connection; only for use on the journal thread."""
        if self._db is None:
            raise JournalError("journal is not open")
        return self._db

    async def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(db)`` inside one IMMEDIATE transaction on the journal thread."""

        def run() -> T:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

        try:
            return await self._run(run)
        except sqlite3.Error as exc:
            raise JournalError(f"journal write failed: {exc}") from exc

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Run a read query on the journal thread."""
        return await self._run(lambda: self.db.execute(sql, params).fetchall())

    # ---- files -------------------------------------------------------------------------

    async def file(self, file_key: str) -> FileRow | None:
        """The file with this key, if held."""
        rows = await self.query("SELECT * FROM files WHERE file_key = ?", (file_key,))
        return _file_row(rows[0]) if rows else None

    async def files_by_name(self) -> dict[str, tuple[int, int | None]]:
        """For the summit's rescans: name → (size, mtime_ns) of the newest record of each inbox file."""
        rows = await self.query("SELECT name, size, mtime_ns FROM files WHERE source = 'inbox' ORDER BY created_at")
        return {r["name"]: (r["size"], r["mtime_ns"]) for r in rows}

    async def pending_transfers(self) -> list[tuple[TransferRow, FileRow]]:
        """Every outgoing transfer not yet acknowledged, with its file."""
        rows = await self.query(
            "SELECT t.*, f.file_key AS f_key FROM transfers t JOIN files f USING (file_key) "
            "WHERE t.state = 'pending' ORDER BY t.created_at"
        )
        out = []
        for row in rows:
            file_row = await self.file(row["file_key"])
            if file_row is not None:
                out.append((_transfer_row(row), file_row))
        return out

    async def transfers_of(self, file_key: str) -> list[TransferRow]:
        """All transfers ever made of one file."""
        rows = await self.query("SELECT * FROM transfers WHERE file_key = ? ORDER BY created_at", (file_key,))
        return [_transfer_row(r) for r in rows]

    async def transfer_source(self, transfer_id: str) -> FileRow | None:
        """The file an outgoing transfer serves, for the data server."""
        rows = await self.query(
            "SELECT f.* FROM transfers t JOIN files f USING (file_key) WHERE t.transfer_id = ?", (transfer_id,)
        )
        return _file_row(rows[0]) if rows else None

    async def pending_outbox(self) -> list[OutboxRow]:
        """Custody messages not yet acknowledged."""
        rows = await self.query("SELECT * FROM outbox WHERE state = 'pending' ORDER BY created_at")
        return [
            OutboxRow(
                msg_id=r["msg_id"], kind=r["kind"], receiver=r["receiver"], file_key=r["file_key"], payload=r["payload"]
            )
            for r in rows
        ]

    async def inbound(self, transfer_id: str) -> sqlite3.Row | None:
        """How this site answered an earlier offer with this transfer id."""
        rows = await self.query("SELECT * FROM inbound WHERE transfer_id = ?", (transfer_id,))
        return rows[0] if rows else None

    async def get_setting(self, key: str) -> str | None:
        """A persisted setting (e.g. the operator's route policy)."""
        rows = await self.query("SELECT value FROM settings WHERE key = ?", (key,))
        return str(rows[0]["value"]) if rows else None

    async def set_setting(self, key: str, value: str) -> None:
        """Persist a setting."""
        await self.transaction(
            lambda db: db.execute(
                "INSERT INTO settings(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
        )


# ---- statements used inside transactions (run on the journal thread) ---------------------


def retire_replaced(db: sqlite3.Connection, *, name: str, keep: str) -> list[sqlite3.Row]:
    """Mark ``replaced`` the earlier inbox files of this name that no site ever took (no first-hop ack),
    and supersede their transfers; return them. A version a site did take stays: it is delivered from
    there, and the archive keeps both versions (the later one under quarantine/name_conflict)."""
    rows = db.execute(
        "SELECT file_key, checksum, size FROM files f WHERE f.name = ? AND f.source = 'inbox'"
        " AND f.state = 'held' AND f.file_key != ?"
        " AND NOT EXISTS (SELECT 1 FROM transfers t WHERE t.file_key = f.file_key AND t.acked_at IS NOT NULL)",
        (name, keep),
    ).fetchall()
    for row in rows:
        db.execute("UPDATE files SET state = 'replaced' WHERE file_key = ?", (row["file_key"],))
        db.execute(
            "UPDATE transfers SET state = 'superseded', last_reason = 'source rewritten'"
            " WHERE file_key = ? AND state = 'pending'",
            (row["file_key"],),
        )
    return rows


def revive_replaced(db: sqlite3.Connection, file_key: str, *, mtime_ns: int) -> bool:
    """A replaced file's content is back in the inbox: hold it again; False if it was not replaced."""
    cur = db.execute(
        "UPDATE files SET state = 'held', mtime_ns = ? WHERE file_key = ? AND state = 'replaced'", (mtime_ns, file_key)
    )
    return cur.rowcount > 0


def insert_file(
    db: sqlite3.Connection,
    *,
    file_key: str,
    name: str,
    size: int,
    checksum: str,
    closed_at: float,
    local_path: str,
    source: str,
    upstream_transfer: str | None = None,
    route: str | None = None,
    route_sites: Iterable[str] | None = None,
    hop: int | None = None,
    mtime_ns: int | None = None,
) -> bool:
    """Record a file; return False when the key was already held."""
    cur = db.execute(
        "INSERT OR IGNORE INTO files (file_key, name, size, checksum, closed_at, local_path, source,"
        " upstream_transfer, route, route_sites, hop, mtime_ns, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            file_key,
            name,
            size,
            checksum,
            closed_at,
            local_path,
            source,
            upstream_transfer,
            route,
            json.dumps(list(route_sites)) if route_sites is not None else None,
            hop,
            mtime_ns,
            time.time(),
        ),
    )
    return cur.rowcount == 1


def insert_transfer(
    db: sqlite3.Connection, *, transfer_id: str, file_key: str, route: str, route_sites: Sequence[str], hop: int
) -> TransferRow:
    """Record a new outgoing transfer (pending) and return it."""
    now = time.time()
    db.execute(
        "INSERT INTO transfers (transfer_id, file_key, route, route_sites, hop, receiver, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (transfer_id, file_key, route, json.dumps(list(route_sites)), hop, route_sites[hop + 1], now),
    )
    return TransferRow(
        transfer_id=transfer_id,
        file_key=file_key,
        route=route,
        route_sites=tuple(route_sites),
        hop=hop,
        receiver=route_sites[hop + 1],
        state="pending",
        created_at=now,
    )


def insert_inbound(
    db: sqlite3.Connection,
    *,
    transfer_id: str,
    sender: str,
    file_key: str,
    status: str,
    checksum: str | None,
    reason: str | None = None,
) -> None:
    """Record the final answer to an offer, for idempotent re-acks."""
    db.execute(
        "INSERT OR REPLACE INTO inbound (transfer_id, sender, file_key, status, checksum, reason, at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (transfer_id, sender, file_key, status, checksum, reason, time.time()),
    )


def new_id(prefix: str) -> str:
    """A fresh id for a transfer (``t-``), custody message (``c-``) or notice (``n-``, ``x-``)."""
    return f"{prefix}-{uuid.uuid4().hex}"


def queue_custody(db: sqlite3.Connection, custody: Custody, file_key: str) -> bool:
    """Queue a custody message for reliable delivery; False when one already went to that receiver."""
    return insert_outbox(
        db,
        msg_id=custody.custody_id,
        kind="custody",
        receiver=custody.receiver,
        file_key=file_key,
        payload=custody.to_json().decode(),
    )


def insert_outbox(
    db: sqlite3.Connection, *, msg_id: str, kind: str, receiver: str, file_key: str, payload: str
) -> bool:
    """Queue a message for reliable delivery; False when one of this kind already went to receiver."""
    cur = db.execute(
        "INSERT OR IGNORE INTO outbox (msg_id, kind, receiver, file_key, payload, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (msg_id, kind, receiver, file_key, payload, time.time()),
    )
    return cur.rowcount == 1
