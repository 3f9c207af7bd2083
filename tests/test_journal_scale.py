"""Questions the journal answers once per file cost the same however many files it holds.

The archive's science planner, which runs again after every archived file, asks the journal the same
number of times however many frames wait for one detector's master bias.

A night's backlog is some 200,000 files held at the summit; an archive's catalog grows without end. A
per-file query that SQLite answers through a low-cardinality index (``files.state``: every backlogged file
is 'held') or by a scan reads all of them, once per file: quadratic. These tests count the SQLite virtual
machine's steps (``set_progress_handler``), not time, for the same question over a small and a large
journal, so they neither depend on the machine's speed nor pass by luck.

Real SQLite files in ``tmp_path``, migrated by the daemon's own schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from parts import open_journal

from daemon.config import Processing
from daemon.counters import SiteCounters
from daemon.journal import catalog as journal_catalog
from daemon.journal import files as journal_files
from daemon.journal import schema
from daemon.journal import science as journal_science
from daemon.processing.executor import PoolExecutor
from daemon.processing.science import Science
from daemon.report import Reporter

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


def catalogued(db: sqlite3.Connection, files: int, *, detectors: int = 20) -> None:
    """``files`` archived OBJECT files of quads (GROUPID, CURINDEX, MAXINDEX), ``detectors`` to an exposure."""
    db.execute("BEGIN")
    for n in range(files):
        exposure, detector = divmod(n, detectors)
        obsid = f"MC_O_20261204_{exposure:06d}"
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
            summary={
                "obsid": obsid,
                "instrument": "LSSTCam",
                "detector": f"R22_S{detector:02d}",
                "imgtype": "OBJECT",
                "filter": "r",
                "groupid": f"quad-{exposure // 4}",
                "curindex": exposure % 4 + 1,
                "maxindex": 4,
            },
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


@pytest.mark.parametrize("frames", [8, 400])
async def test_a_planning_pass_asks_for_each_detectors_masters_once_however_many_frames_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, frames: int
) -> None:
    """Before a night's calibrations, every OBJECT frame waits for its detector's master bias; a pass asked
    the journal for it once per frame, so each pass over a backlog cost a journal read per archived frame."""
    asked: list[tuple[Any, ...]] = []
    newest_master = journal_science.newest_master

    def counted(db: sqlite3.Connection, *args: Any) -> Any:
        asked.append(args)
        return newest_master(db, *args)

    with migrated(tmp_path / "journal.sqlite") as db:
        catalogued(db, frames, detectors=2)
    journal = await open_journal(tmp_path / "journal.sqlite")
    science = Science(
        root=tmp_path / "archive",
        journal=journal,
        executor=PoolExecutor(1),  # (never started: nothing is ready to run)
        reporter=Reporter("archive", journal, SiteCounters()),
        processing=Processing(),
        notices_wake=asyncio.Event(),
    )
    monkeypatch.setattr(journal_science, "newest_master", counted)
    try:
        await science.plan()
        jobs = await journal.read(lambda db: db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])
    finally:
        await journal.close()
    assert sorted(asked) == [("bias", "LSSTCam", "R22_S00", None), ("bias", "LSSTCam", "R22_S01", None)]
    assert jobs == 0


def test_rows_of_a_held_backlog_share_their_site_route_and_state_names(tmp_path: Path) -> None:
    """The summit keeps a row per held file in memory (20,000 files: some 40 MiB of its RSS); the names every
    row repeats are one object each, not a copy per row."""
    with migrated(tmp_path / "journal.sqlite") as db:
        held_backlog(db, 3)
        files = [journal_files.file(db, f"raw/f{n:06d}.fits:100000:blake3:{n:064x}") for n in range(3)]
        pending = journal_files.pending_transfers(db)
    assert all(f is not None for f in files) and len(pending) == 3
    first, *others = [f for f in files if f is not None]
    for other in others:
        assert (other.source, other.state) == ("inbox", "held")
        assert other.source is first.source and other.state is first.state
    transfers = [t for t, _ in pending]
    for transfer in transfers[1:]:
        assert transfer.route_sites is transfers[0].route_sites and transfer.receiver is transfers[0].receiver
        assert transfer.route is transfers[0].route and transfer.state is transfers[0].state
