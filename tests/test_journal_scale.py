"""Questions the journal answers once per file cost the same however many files it holds.

A night's backlog is some 200,000 files held at the summit; an archive's catalog grows without end. A
per-file query that SQLite answers through a low-cardinality index (``files.state``: every backlogged file
is 'held') or by a scan reads all of them, once per file: quadratic. These tests count the SQLite virtual
machine's steps (``set_progress_handler``), not time, for the same question over a small and a large
journal, so they neither depend on the machine's speed nor pass by luck.

Real SQLite files in ``tmp_path``, migrated by the daemon's own schema.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemon.journal import catalog as journal_catalog
from daemon.journal import files as journal_files
from daemon.journal import schema

SMALL, LARGE = 50, 5000
ROUTE = ("summit", "base", "archive")


@contextlib.contextmanager
def migrated(path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(path, isolation_level=None)
    db.row_factory = sqlite3.Row
    try:
        schema.migrate(db, path)
        yield db
    finally:
        db.close()


def steps(db: sqlite3.Connection, question: Callable[[sqlite3.Connection], object]) -> int:
    """Virtual-machine steps SQLite took to answer ``question`` (counted in units of 10)."""
    count = 0

    def tick() -> int:
        nonlocal count
        count += 1
        return 0

    db.set_progress_handler(tick, 10)
    try:
        question(db)
    finally:
        db.set_progress_handler(None, 0)
    return count


def held_backlog(db: sqlite3.Connection, files: int) -> None:
    """``files`` inbox files registered and held (no hop took them), each with its pending transfer."""
    db.execute("BEGIN")
    for n in range(files):
        key = f"raw/f{n:06d}.fits:100000:blake3:{n:064x}"
        journal_files.insert_file(
            db,
            file_key=key,
            name=f"raw/f{n:06d}.fits",
            size=100_000,
            checksum=f"blake3:{n:064x}",
            closed_at=1.0,
            local_path=f"/inbox/raw/f{n:06d}.fits",
            source="inbox",
            mtime_ns=n,
        )
        journal_files.insert_transfer(db, transfer_id=f"t{n}", file_key=key, route="primary", route_sites=ROUTE, hop=0)
    db.execute("COMMIT")


def catalogued(db: sqlite3.Connection, files: int) -> None:
    """``files`` archived files, 20 detectors to an exposure."""
    db.execute("BEGIN")
    for n in range(files):
        obsid = f"MC_O_20261204_{n // 20:06d}"
        journal_catalog.insert(
            db,
            file_key=f"k{n}",
            name=f"raw/f{n:06d}.fits",
            size=100_000,
            checksum=f"blake3:{n:064x}",
            archived_checksum=f"blake3:{n:064x}",
            archived_size=100_000,
            archive_path=f"raw/LSSTCam/20261204/{obsid}/f{n:06d}.fits",
            status="archived",
            reason=None,
            summary={"obsid": obsid, "instrument": "LSSTCam", "imgtype": "OBJECT", "filter": "r"},
            fixes=[],
            proof_path=None,
            findings=[],
            closed_at=1.0,
            arrived_at=2.0,
            route="primary",
            sender="base",
        )
    db.execute("COMMIT")


@pytest.mark.parametrize(
    ("fill", "question"),
    [
        pytest.param(
            held_backlog,
            lambda db: journal_files.retire_replaced(db, name="raw/new.fits", keep="raw/new.fits:1:blake3:0"),
            id="registration-replaced-check",
        ),
        pytest.param(
            catalogued,
            lambda db: journal_catalog.exposure_context(db, "MC_O_20261204_000001"),
            id="ingest-exposure-context",
        ),
    ],
)
def test_a_per_file_question_costs_the_same_with_a_hundred_times_more_files(
    tmp_path: Path,
    fill: Callable[[sqlite3.Connection, int], None],
    question: Callable[[sqlite3.Connection], object],
) -> None:
    """The question over 5,000 files takes at most a few more steps than over 50 (an index's depth), where
    reading every row took about a hundred times as many."""
    costs = {}
    for files in (SMALL, LARGE):
        with migrated(tmp_path / f"journal-{files}.sqlite") as db:
            fill(db, files)
            costs[files] = steps(db, question)
    assert costs[LARGE] <= costs[SMALL] * 2 + 20, costs
