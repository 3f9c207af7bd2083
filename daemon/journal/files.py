"""Files a site holds, their outgoing transfers, and its answers to incoming offers (inbound).

Every function takes the connection and runs on the journal thread; writes are called inside a
:meth:`Journal.transaction`.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


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
class Inbound:
    """How this site answered an offer (for idempotent re-acks)."""

    transfer_id: str
    sender: str
    file_key: str
    status: str
    checksum: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class AwaitingCustody:
    """A summit file without custody, with the route of its latest transfer (what the router keeps of it)."""

    file_key: str
    name: str
    route: str
    acked_at: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingOffer:
    """An outgoing transfer not yet acknowledged, as the summit's router keeps it until it goes: the rest of
    the transfer and its file are read back from the journal then (:func:`held_offers`)."""

    transfer_id: str
    file_key: str
    name: str
    route: str
    receiver: str


def _word(value: str | None) -> str | None:
    """The one shared copy of a value that every row repeats (a site, route or state name).

    A summit holding a night's backlog keeps a row object per file in memory (:mod:`daemon.sending.router`);
    each had its own copies of these strings, some 350 bytes a file."""
    return None if value is None else sys.intern(value)


@functools.lru_cache(maxsize=256)
def _sites(text: str) -> tuple[str, ...]:
    """A route's sites from their JSON column, one shared tuple per route (see :func:`_word`)."""
    return tuple(sys.intern(site) for site in json.loads(text))


def _file_row(row: sqlite3.Row) -> FileRow:
    return FileRow(
        file_key=row["file_key"],
        name=row["name"],
        size=row["size"],
        checksum=row["checksum"],
        closed_at=row["closed_at"],
        local_path=row["local_path"],
        source=sys.intern(row["source"]),
        upstream_transfer=row["upstream_transfer"],
        route=_word(row["route"]),
        route_sites=_sites(row["route_sites"]) if row["route_sites"] else None,
        hop=row["hop"],
        mtime_ns=row["mtime_ns"],
        state=sys.intern(row["state"]),
        custody_status=_word(row["custody_status"]),
        archive_path=row["archive_path"],
    )


def _transfer_row(row: sqlite3.Row, prefix: str = "") -> TransferRow:
    """A transfer from its row; ``prefix`` names its columns that a join with ``files`` had to rename."""
    return TransferRow(
        transfer_id=row["transfer_id"],
        file_key=row["file_key"],
        route=sys.intern(row[f"{prefix}route"]),
        route_sites=_sites(row[f"{prefix}route_sites"]),
        hop=row[f"{prefix}hop"],
        receiver=sys.intern(row["receiver"]),
        state=sys.intern(row[f"{prefix}state"]),
        created_at=row[f"{prefix}created_at"],
    )


# ---- reads -------------------------------------------------------------------------------------


def file(db: sqlite3.Connection, file_key: str) -> FileRow | None:
    """The file with this key, if held."""
    row = db.execute("SELECT * FROM files WHERE file_key = ?", (file_key,)).fetchone()
    return _file_row(row) if row else None


def inbox_versions(db: sqlite3.Connection) -> dict[str, tuple[int, int | None]]:
    """For the summit's rescans: name → (size, mtime_ns) of the newest record of each inbox file that retention
    has not deleted."""
    rows = db.execute(
        "SELECT name, size, mtime_ns FROM files WHERE source = 'inbox' AND state != 'expired' ORDER BY created_at"
    ).fetchall()
    return {r["name"]: (r["size"], r["mtime_ns"]) for r in rows}


def pending_transfers(db: sqlite3.Connection) -> list[tuple[TransferRow, FileRow]]:
    """Every outgoing transfer not yet acknowledged, with its file, oldest first."""
    rows = db.execute(
        "SELECT t.transfer_id, t.route AS t_route, t.route_sites AS t_route_sites, t.hop AS t_hop, t.receiver,"
        " t.state AS t_state, t.created_at AS t_created_at, f.* FROM transfers t JOIN files f USING (file_key)"
        " WHERE t.state = 'pending' ORDER BY t.created_at"
    ).fetchall()
    return [(_transfer_row(r, prefix="t_"), _file_row(r)) for r in rows]


def pending_offers(db: sqlite3.Connection) -> list[PendingOffer]:
    """Every outgoing transfer not yet acknowledged, oldest first: only what the router keeps of each."""
    rows = db.execute(
        "SELECT t.transfer_id, t.file_key, f.name, t.route, t.receiver FROM transfers t JOIN files f USING (file_key)"
        " WHERE t.state = 'pending' ORDER BY t.created_at"
    ).fetchall()
    return [
        PendingOffer(
            transfer_id=r["transfer_id"],
            file_key=r["file_key"],
            name=r["name"],
            route=sys.intern(r["route"]),
            receiver=sys.intern(r["receiver"]),
        )
        for r in rows
    ]


HELD_OFFERS_CHUNK = 500
"""Keys per ``IN (...)`` of :func:`held_offers` (SQLite's bound on host parameters is 999 in older builds)."""


def held_offers(
    db: sqlite3.Connection, wanted: Sequence[tuple[str, str]]
) -> dict[str, tuple[TransferRow | None, FileRow]]:
    """For ``(file_key, transfer_id)`` pairs: each file still held here (no custody), by key, with that transfer
    if it is still pending (None when something superseded it meanwhile)."""
    out: dict[str, tuple[TransferRow | None, FileRow]] = {}
    for start in range(0, len(wanted), HELD_OFFERS_CHUNK):
        chunk = wanted[start : start + HELD_OFFERS_CHUNK]
        marks = ",".join("?" * len(chunk))
        files = db.execute(
            f"SELECT * FROM files WHERE state = 'held' AND file_key IN ({marks})", [k for k, _ in chunk]
        ).fetchall()
        transfers = db.execute(
            f"SELECT * FROM transfers WHERE state = 'pending' AND transfer_id IN ({marks})", [t for _, t in chunk]
        ).fetchall()
        pending = {r["transfer_id"]: _transfer_row(r) for r in transfers}
        for row in files:
            file_row = _file_row(row)
            out[file_row.file_key] = (None, file_row)
        for key, transfer_id in chunk:
            found = out.get(key)
            transfer = pending.get(transfer_id)
            if found is not None and transfer is not None and transfer.file_key == key:
                out[key] = (transfer, found[1])
    return out


def transfers_of(db: sqlite3.Connection, file_key: str) -> list[TransferRow]:
    """All transfers ever made of one file."""
    rows = db.execute("SELECT * FROM transfers WHERE file_key = ? ORDER BY created_at", (file_key,)).fetchall()
    return [_transfer_row(r) for r in rows]


def transfer_source(db: sqlite3.Connection, transfer_id: str) -> FileRow | None:
    """The file an outgoing transfer serves, for the data server."""
    row = db.execute(
        "SELECT f.* FROM transfers t JOIN files f USING (file_key) WHERE t.transfer_id = ?", (transfer_id,)
    ).fetchone()
    return _file_row(row) if row else None


def transfer_with_source(db: sqlite3.Connection, transfer_id: str) -> tuple[TransferRow, FileRow] | None:
    """An outgoing transfer and the file it serves."""
    row = db.execute("SELECT * FROM transfers WHERE transfer_id = ?", (transfer_id,)).fetchone()
    if row is None:
        return None
    source = file(db, row["file_key"])
    return (_transfer_row(row), source) if source is not None else None


def inbound(db: sqlite3.Connection, transfer_id: str) -> Inbound | None:
    """How this site answered an earlier offer with this transfer id."""
    row = db.execute("SELECT * FROM inbound WHERE transfer_id = ?", (transfer_id,)).fetchone()
    if row is None:
        return None
    return Inbound(
        transfer_id=row["transfer_id"],
        sender=row["sender"],
        file_key=row["file_key"],
        status=row["status"],
        checksum=row["checksum"],
    )


def awaiting_custody(db: sqlite3.Connection) -> list[AwaitingCustody]:
    """Summit files still held (no custody), each with the route of its latest transfer."""
    rows = db.execute(
        "SELECT f.file_key, f.name, t.route AS t_route, t.state AS t_state, t.acked_at AS t_acked_at"
        " FROM files f JOIN transfers t USING (file_key)"
        " WHERE f.state = 'held' AND f.source = 'inbox' AND t.created_at ="
        " (SELECT MAX(created_at) FROM transfers WHERE file_key = f.file_key)"
    ).fetchall()
    return [
        AwaitingCustody(
            file_key=r["file_key"],
            name=r["name"],
            route=sys.intern(r["t_route"]),
            acked_at=float(r["t_acked_at"]) if r["t_state"] == "acked" and r["t_acked_at"] is not None else None,
        )
        for r in rows
    ]


def archived_unexpired(db: sqlite3.Connection, limit: int) -> list[tuple[str, str, float]]:
    """(file_key, local_path, custody_at) of files in custody whose local copy still exists, oldest first."""
    rows = db.execute(
        "SELECT file_key, local_path, custody_at FROM files WHERE state = 'archived'"
        " AND custody_at IS NOT NULL ORDER BY custody_at LIMIT ?",
        (limit,),
    ).fetchall()
    return [(str(r["file_key"]), str(r["local_path"]), float(r["custody_at"])) for r in rows]


def state_counts(db: sqlite3.Connection) -> dict[str, int]:
    """Files by state."""
    return {r["state"]: r["n"] for r in db.execute("SELECT state, COUNT(*) AS n FROM files GROUP BY state")}


# ---- writes (inside a transaction) -------------------------------------------------------------


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


def mark_acked(db: sqlite3.Connection, transfer_id: str, status: str) -> None:
    """The receiver acknowledged a pending transfer."""
    db.execute(
        "UPDATE transfers SET state = 'acked', acked_at = ?, last_status = ?"
        " WHERE transfer_id = ? AND state = 'pending'",
        (time.time(), status, transfer_id),
    )


def supersede(db: sqlite3.Connection, transfer_ids: Iterable[str], reason: str) -> None:
    """Stop transfers that another transfer of the same file replaces."""
    db.executemany(
        "UPDATE transfers SET state = 'superseded', last_reason = ? WHERE transfer_id = ?",
        [(reason[:500], t) for t in transfer_ids],
    )


def mark_archived(db: sqlite3.Connection, file_key: str, *, status: str, archive_path: str) -> None:
    """Custody arrived for a held file: it is archived and its pending transfers are done."""
    db.execute(
        "UPDATE files SET state = 'archived', custody_status = ?, archive_path = ?, custody_at = ?"
        " WHERE file_key = ? AND state = 'held'",
        (status, archive_path, time.time(), file_key),
    )
    db.execute("UPDATE transfers SET state = 'done' WHERE file_key = ? AND state = 'pending'", (file_key,))


def mark_expired(db: sqlite3.Connection, file_keys: Iterable[str]) -> None:
    """Local copies deleted after custody and retention."""
    db.executemany("UPDATE files SET state = 'expired' WHERE file_key = ?", [(k,) for k in file_keys])


def retire_replaced(db: sqlite3.Connection, *, name: str, keep: str) -> list[sqlite3.Row]:
    """Mark ``replaced`` the earlier inbox files of this name that no site ever took (no first-hop ack),
    and supersede their transfers; return them. A version a site did take stays: it is delivered from
    there, and the archive keeps both versions (the later one under quarantine/name_conflict)."""
    # By name: SQLite would otherwise take files_state, and in a backlog every file is 'held', so each
    # registration read the whole backlog (20,000 files: registration 3 -> 6 ms per file).
    rows = db.execute(
        "SELECT file_key, checksum, size FROM files f INDEXED BY files_name WHERE f.name = ? AND f.source = 'inbox'"
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


@dataclass(frozen=True, slots=True, kw_only=True)
class InFlight:
    """Summit files registered and not yet in custody: how many, since when, and which are overdue."""

    files: int
    oldest_registered_at: float | None
    overdue: int
    overdue_examples: tuple[str, ...]


def in_flight(db: sqlite3.Connection, *, overdue_before: float, examples: int = 10) -> InFlight:
    """Inbox files still held (no custody); overdue are those registered before ``overdue_before`` (wall time)."""
    row = db.execute(
        "SELECT COUNT(*) AS n, MIN(created_at) AS oldest,"
        " SUM(CASE WHEN created_at < ? THEN 1 ELSE 0 END) AS late"
        " FROM files WHERE state = 'held' AND source = 'inbox'",
        (overdue_before,),
    ).fetchone()
    names = db.execute(
        "SELECT name FROM files WHERE state = 'held' AND source = 'inbox' AND created_at < ?"
        " ORDER BY created_at LIMIT ?",
        (overdue_before, examples),
    ).fetchall()
    return InFlight(
        files=int(row["n"]),
        oldest_registered_at=float(row["oldest"]) if row["oldest"] is not None else None,
        overdue=int(row["late"] or 0),
        overdue_examples=tuple(str(r["name"]) for r in names),
    )
