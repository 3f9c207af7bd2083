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
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from parts import open_journal

from daemon.config import Processing
from daemon.counters import SiteCounters
from daemon.journal import Journal, schema
from daemon.journal import catalog as journal_catalog
from daemon.journal import files as journal_files
from daemon.journal import jobs as journal_jobs
from daemon.journal import products as journal_products
from daemon.journal import science as journal_science
from daemon.processing.calibrations import OpenSequences
from daemon.processing.executor import PoolExecutor
from daemon.processing.science import Science
from daemon.report import Reporter

SMALL, LARGE = 50, 5000
T = TypeVar("T")
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
        catalogue_frame(db, n, detectors=detectors)
    db.execute("COMMIT")


def frame_identity(n: int, detectors: int) -> tuple[str, str, str, int]:
    """(OBSID, detector, GROUPID, CURINDEX) of frame ``n``: exposure ``n // detectors``, four to a quad."""
    exposure, detector = divmod(n, detectors)
    return f"MC_O_20261204_{exposure:06d}", f"R22_S{detector:02d}", f"quad-{exposure // 4}", exposure % 4 + 1


def catalogue_frame(
    db: sqlite3.Connection, n: int, *, detectors: int, arrived_at: float = 2.0, maxindex: int = 4
) -> None:
    """Archived OBJECT file ``n`` (see :func:`frame_identity`)."""
    obsid, detector, groupid, curindex = frame_identity(n, detectors)
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
            "detector": detector,
            "imgtype": "OBJECT",
            "filter": "r",
            "groupid": groupid,
            "curindex": curindex,
            "maxindex": maxindex,
        },
        fixes=[],
        proof_path=None,
        findings=[],
        closed_at=1.0,
        arrived_at=arrived_at,
        route="primary",
        sender="base",
    )


def calexp_made(db: sqlite3.Connection, n: int, *, detectors: int) -> None:
    """Frame ``n``'s calexp job, done, and its calexp (of good quality), as a calexp job leaves them."""
    obsid, detector, groupid, curindex = frame_identity(n, detectors)
    journal_jobs.insert(
        db, job_key=f"calexp-{n}", step="calexp", instrument="LSSTCam", detector=detector, sequence=obsid, spec={}
    )
    db.execute("UPDATE jobs SET state = 'done' WHERE job_key = ?", (f"calexp-{n}",))
    journal_products.insert(
        db, product_id=f"p{n}", job_key=f"calexp-{n}", kind="calexp", instrument="LSSTCam", detector=detector,
        filter_="r", archive_path=f"products/calexp/{n}.fits", checksum=f"blake3:{n + 10**6:064x}",
        provenance={"obsid": obsid, "groupid": groupid, "curindex": curindex, "quality": {"ok": True}}, at=3.0,
    )  # fmt: skip


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
    planner = science(journal, tmp_path)
    monkeypatch.setattr(journal_science, "newest_master", counted)
    try:
        await planner.plan()
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


def science(journal: Journal, tmp_path: Path) -> Science:
    """The archive's science planner on ``journal`` (its executor never started: these tests only plan)."""
    return Science(
        root=tmp_path / "archive",
        journal=journal,
        executor=PoolExecutor(1),
        reporter=Reporter("archive", journal, SiteCounters()),
        processing=Processing(),
        notices_wake=asyncio.Event(),
    )


async def journal_steps(journal: Journal, work: Callable[[], Awaitable[T]]) -> tuple[int, T]:
    """SQLite VM steps (in units of 10) the journal took while ``work`` ran, and what it gave."""
    count = 0

    def tick() -> int:
        nonlocal count
        count += 1
        return 0

    await journal.read(lambda db: db.set_progress_handler(tick, 10))
    try:
        result = await work()
    finally:
        await journal.read(lambda db: db.set_progress_handler(None, 0))
    return count, result


async def diff_jobs(journal: Journal) -> list[str]:
    rows = await journal.read(lambda db: db.execute("SELECT sequence FROM jobs WHERE step = 'diff'").fetchall())
    return sorted(r[0] for r in rows)


def finished_frames(path: Path, files: int) -> None:
    """A journal at ``path`` with ``files`` frames of 10 detectors, long since archived, each with its calexp."""
    with migrated(path) as db:
        db.execute("BEGIN")
        for n in range(files):
            catalogue_frame(db, n, detectors=10)
            calexp_made(db, n, detectors=10)
        db.execute("COMMIT")


async def test_a_planning_pass_reads_what_changed_not_the_whole_catalog(tmp_path: Path) -> None:
    """Over a day of finished quads (each frame with its calexp, every pair journaled), a pass after the first
    costs the same with 4,000 frames as with 40: it reads the frames and calexps since the last pass, not the
    catalog. Every pass read every frame and calexp (and paired each quad against every diff job)."""
    costs = {}
    small, large = 40, 4000  # (whole quads: four exposures of 10 detectors)
    for files in (small, large):
        path = tmp_path / f"journal-{files}.sqlite"
        finished_frames(path, files)
        journal = await open_journal(path)
        try:
            planner = science(journal, tmp_path)
            await planner.plan()  # the first pass reads everything and journals the pairs
            assert len(await diff_jobs(journal)) == files // 2
            costs[files], _ = await journal_steps(journal, planner.plan)
            assert len(await diff_jobs(journal)) == files // 2, "a pair journaled twice"
        finally:
            await journal.close()
    assert costs[large] <= costs[small] * 2 + 20, costs


async def test_a_restarted_planner_reads_from_where_the_last_run_left_off(tmp_path: Path) -> None:
    """A planner started on a journal whose last planner saved its resume point reads the frames since the
    oldest quad it kept, not the history: the first pass of a restart costs the same over 4,000 finished
    frames as over 40. A quad still open when the last run stopped is taken up again and completed; after a
    release out of quarantine (a new catalog epoch) the first pass reads everything again."""
    costs = {}
    for files in (40, 4000):
        path = tmp_path / f"journal-{files}.sqlite"
        finished_frames(path, files)
        with migrated(path) as db:
            for n in (files, files + 1):  # visits 1 and 2 of one more quad on one detector, arriving now
                catalogue_frame(db, n * 10, detectors=10, arrived_at=time.time())
                calexp_made(db, n * 10, detectors=10)
        journal = await open_journal(path)
        try:
            await science(journal, tmp_path).plan()  # the last run: reads everything, keeps the open quad
            restarted = science(journal, tmp_path)
            costs[files], _ = await journal_steps(journal, restarted.plan)
            assert list(restarted._open.groups) == [("LSSTCam", "R22_S00", f"quad-{files // 4}")]
            if files == 40:

                def rest_of_the_quad(db: sqlite3.Connection, files: int = files) -> None:
                    for n in (files + 2, files + 3):
                        catalogue_frame(db, n * 10, detectors=10, arrived_at=time.time())
                        calexp_made(db, n * 10, detectors=10)

                await journal.transaction(rest_of_the_quad)
                await restarted.plan()
                made = [d for d in await diff_jobs(journal) if d.startswith("quad-10/")]
                assert made == ["quad-10/2-1", "quad-10/4-3"], "the open quad was not taken up again"
                await journal.transaction(journal_science.bump_catalog_epoch)
                again = science(journal, tmp_path)
                full, _ = await journal_steps(journal, again.plan)
                assert full > 5 * costs[files], "a new epoch must read everything"
        finally:
            await journal.close()
    assert costs[4000] <= costs[40] * 2 + 20, costs


async def test_a_late_frame_reopens_the_finished_quad_it_belongs_to(tmp_path: Path) -> None:
    """A quad's chunk ended with its third visit lost: 2-1 and the lost-visit pair 4-2 are made and the planner
    lets the quad go. The third visit then arrives (after an outage) and its calexp is made: the planner reads
    the quad back by its GROUPID and makes 4-3 with the calexp of visit 4, which it had let go."""
    path = tmp_path / "journal.sqlite"
    with migrated(path) as db:
        for n in (0, 1, 3):
            catalogue_frame(db, n, detectors=1)
            calexp_made(db, n, detectors=1)
    journal = await open_journal(path)
    try:
        planner = science(journal, tmp_path)
        await planner.plan()
        assert await diff_jobs(journal) == ["quad-0/2-1", "quad-0/4-2"]
        assert planner._open.groups == {}, "the finished quad was kept"

        def late(db: sqlite3.Connection) -> None:
            catalogue_frame(db, 2, detectors=1, arrived_at=1000.0)
            calexp_made(db, 2, detectors=1)

        await journal.transaction(late)
        await planner.plan()
        assert await diff_jobs(journal) == ["quad-0/2-1", "quad-0/4-2", "quad-0/4-3"]
    finally:
        await journal.close()


async def test_a_frame_of_no_quad_is_kept_until_its_calexp_is_journaled(tmp_path: Path) -> None:
    """A science frame whose group is no quad (MAXINDEX 1) is never paired, but it still gets its calexp: it
    waits for its detector's master bias across passes, and the planner lets its group go only once the
    calexp job is journaled."""
    path = tmp_path / "journal.sqlite"
    with migrated(path) as db:
        catalogue_frame(db, 0, detectors=1, maxindex=1)
    journal = await open_journal(path)
    try:
        planner = science(journal, tmp_path)
        await planner.plan()
        assert list(planner._open.groups) == [("LSSTCam", "R22_S00", "quad-0")], "let go while it waits"
        await journal.write(
            journal_products.insert, product_id="bias-1", job_key="master-bias-1", kind="bias",
            instrument="LSSTCam", detector="R22_S00", filter_=None, archive_path="products/bias/1.fits",
            checksum=f"blake3:{1:064x}", provenance={"inputs": []}, at=1.0,
        )  # fmt: skip
        await planner.plan()
        jobs = await journal.read(lambda db: db.execute("SELECT step, sequence FROM jobs").fetchall())
        assert [tuple(j) for j in jobs] == [("calexp", "MC_O_20261204_000000")]
        await planner.plan()
        assert planner._open.groups == {}
    finally:
        await journal.close()


def catalogue_bias(db: sqlite3.Connection, n: int, *, sequence: int, detector: int, curindex: int) -> None:
    """Archived BIAS file ``n``: CURINDEX ``curindex`` of 5 of sequence ``bias-<sequence>`` on a detector."""
    journal_catalog.insert(
        db, file_key=f"b{n}", name=f"raw/b{n:06d}.fits", size=100_000, checksum=f"blake3:{n:064x}",
        archived_checksum=f"blake3:{n:064x}", archived_size=100_000,
        archive_path=f"raw/LSSTCam/20261204/bias/b{n:06d}.fits", status="archived", reason=None,
        summary={"instrument": "LSSTCam", "detector": f"R22_S{detector:02d}", "imgtype": "BIAS",
                 "groupid": f"bias-{sequence}", "curindex": curindex, "maxindex": 5},
        fixes=[], proof_path=None, findings=[], closed_at=1.0, arrived_at=2.0, route="primary", sender="base",
    )  # fmt: skip


async def test_the_calibration_sequences_without_a_job_are_read_from_what_changed(tmp_path: Path) -> None:
    """Over a history of bias sequences (5 frames on each of 4 detectors) that all have their jobs, asking which
    are unclaimed costs the same with 4,000 frames as with 40 once asked before (every pass of the scheduler,
    and of the science planner waiting for masters, read every calibration frame and every job); a late frame
    of a claimed sequence reads it back and leaves it claimed; a new sequence is unclaimed until its job is."""
    costs = {}
    for files in (40, 4000):
        path = tmp_path / f"journal-{files}.sqlite"
        with migrated(path) as db:
            db.execute("BEGIN")
            for n in range(files):
                sequence, rest = divmod(n, 20)
                curindex, detector = divmod(rest, 4)
                catalogue_bias(db, n, sequence=sequence, detector=detector, curindex=curindex + 1)
            for sequence in range(files // 20):
                for detector in range(4):
                    journal_jobs.insert(
                        db, job_key=f"m{sequence}-{detector}", step="master_bias", instrument="LSSTCam",
                        detector=f"R22_S{detector:02d}", sequence=f"bias-{sequence}", spec={},
                    )  # fmt: skip
            db.execute("COMMIT")
        journal = await open_journal(path)
        try:
            sequences = OpenSequences(journal)
            assert await sequences.unclaimed() == []
            costs[files], unclaimed = await journal_steps(journal, sequences.unclaimed)
            assert unclaimed == []
        finally:
            await journal.close()
    journal = await open_journal(tmp_path / "journal-40.sqlite")
    try:
        sequences = OpenSequences(journal)
        assert await sequences.unclaimed() == []
        await journal.transaction(lambda db: catalogue_bias(db, 90, sequence=0, detector=0, curindex=3))  # (late)
        await journal.transaction(lambda db: catalogue_bias(db, 91, sequence=7, detector=1, curindex=1))  # (new)
        [new] = await sequences.unclaimed()
        assert (new.groupid, new.detector, [f.curindex for f in new.frames]) == ("bias-7", "R22_S01", [1])
        await journal.transaction(lambda db: catalogue_bias(db, 92, sequence=7, detector=1, curindex=2))
        [new] = await sequences.unclaimed()
        assert [f.curindex for f in new.frames] == [1, 2], "the sequence's earlier frame was let go"
        assert sequences.dark_known == set()
    finally:
        await journal.close()
    assert costs[4000] <= costs[40] * 2 + 20, costs
