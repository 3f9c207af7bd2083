"""The journal's schema as ordered migrations, recorded in ``PRAGMA user_version``.

Version 1 is the schema of release 0.1.0, which set no user_version: a journal it wrote opens at
version 0 with every table present, and migration 1 (``CREATE ... IF NOT EXISTS``) changes nothing
in it. Each later migration runs in its own transaction together with the version bump, so a crash
mid-upgrade leaves the journal at the previous version, never half-migrated. A journal whose
version is newer than this code knows is refused, not touched.
"""

from __future__ import annotations

import sqlite3

from daemon.errors import JournalError

V1_RELEASE_0_1 = """
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

V2_REPORTS = """
-- Problems and events, journaled when reported and published by their own loop (as notices are),
-- so a slow or absent local broker never stalls the code that reports.
CREATE TABLE reports (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,          -- 'problem' | 'event'
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    at REAL NOT NULL,
    published_at REAL
);
CREATE INDEX reports_unpublished ON reports(published_at) WHERE published_at IS NULL;
CREATE INDEX reports_stream ON reports(stream, seq);
"""

V3_PROCESSING = """
-- Processing at the archive: each job journaled before it runs (one per calibration sequence and
-- step), and each product catalogued with its provenance in the transaction that journals its notice.
CREATE TABLE jobs (
    job_key TEXT PRIMARY KEY,      -- hash of step, input checksums, parameters and code version
    step TEXT NOT NULL,            -- 'master_bias' | 'master_dark' | 'master_flat'
    instrument TEXT NOT NULL,
    detector TEXT NOT NULL,
    sequence TEXT NOT NULL,        -- GROUPID (and filter, for flats)
    spec TEXT NOT NULL,            -- JSON: inputs, masters, parameters, code version, notes
    state TEXT NOT NULL DEFAULT 'queued',  -- queued | running | done | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    product_id TEXT,
    error TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE UNIQUE INDEX jobs_sequence ON jobs(step, instrument, detector, sequence);
CREATE INDEX jobs_state ON jobs(state);
CREATE TABLE products (
    product_id TEXT PRIMARY KEY,
    job_key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    instrument TEXT NOT NULL,
    detector TEXT NOT NULL,
    filter TEXT,
    archive_path TEXT NOT NULL UNIQUE,
    checksum TEXT NOT NULL,
    provenance TEXT NOT NULL,      -- JSON: inputs, left_out, masters, parameters, code version, stats
    created_at REAL NOT NULL
);
CREATE INDEX products_detector ON products(kind, instrument, detector, created_at);
"""

V4_OBSID_INDEX = """
-- The archive asks for an exposure's archived siblings by OBSID alone (the context that fixes a header with
-- findings); catalog_exposure leads with the instrument, so that question read the whole catalog.
CREATE INDEX catalog_obsid ON catalog(obsid);
"""

V5_GROUPID_INDEX = """
-- The science and calibration planners keep only unfinished quads and unclaimed sequences between passes and
-- read one back by its GROUPID when a late frame reopens it; the GROUPID is in the summary's JSON, so it is
-- indexed as that expression.
CREATE INDEX catalog_groupid ON catalog(json_extract(summary, '$.groupid'));
"""

MIGRATIONS: tuple[str, ...] = (V1_RELEASE_0_1, V2_REPORTS, V3_PROCESSING, V4_OBSID_INDEX, V5_GROUPID_INDEX)
"""Migration N (1-based) brings a journal from version N-1 to N. Append only; never edit a shipped one."""

LATEST = len(MIGRATIONS)


def version(db: sqlite3.Connection) -> int:
    """The journal's schema version."""
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def refuse_newer(db: sqlite3.Connection, path: object) -> None:
    """Refuse a journal written by a newer skyrelay; it only reads, so call it before anything writes.

    Raises:
        JournalError: the journal's version is above :data:`LATEST`.
    """
    current = version(db)
    if current > LATEST:
        raise JournalError(
            f"journal {path} has schema version {current}, newer than this skyrelay knows ({LATEST}); "
            "it was written by a later release: run that release, or restore a journal of this one. "
            "Nothing was changed."
        )


def migrate(db: sqlite3.Connection, path: object) -> list[int]:
    """Bring the journal to :data:`LATEST`; return the versions applied (empty when current).

    Raises:
        JournalError: the journal was written by a newer skyrelay.
    """
    refuse_newer(db, path)
    current = version(db)
    applied = []
    for number in range(current + 1, LATEST + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(MIGRATIONS[number - 1]):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {number}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        applied.append(number)
    return applied


def _statements(script: str) -> list[str]:
    """Split a migration into statements (``executescript`` would commit our transaction)."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
