"""Retention: the base cache expires by age and by a free-space watermark, products expire per kind, nothing is
deleted before the archive's custody, and every deletion is journaled and shown.

The sweeps run on real SQLite journals and real files (short tests of one part); one cluster test shows the
whole: a summit with ``retention_s`` 0 deletes the camera's files once custody is back, and says so.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    MakeCluster,
    Subscribe,
    blake3_of,
    cli_ok,
    drop_into_inbox,
    operator_headers,
    query_journal,
    read_catalog,
    site_status,
    until,
    wait_settled,
    write_files,
)
from parts import open_journal

from daemon.config import Retention, load_topology
from daemon.counters import SiteCounters
from daemon.errors import TopologyError
from daemon.journal import Journal
from daemon.journal import files as journal_files
from daemon.journal import jobs as journal_jobs
from daemon.journal import products as journal_products
from daemon.journal import reports as journal_reports
from daemon.report import Reporter
from daemon.retention import CopyExpiry, ProductExpiry
from daemon.summit.registrar import forget_copies

pytestmark = pytest.mark.timeout(120)

DAY_S = 86400.0


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    """A real, migrated journal."""
    opened = await open_journal(tmp_path / "journal.sqlite")
    yield opened
    await opened.close()


async def _copy(journal: Journal, cache: Path, name: str, *, custody_age_s: float | None, size: int = 1000) -> Path:
    """A relay copy on disk and in the journal; in the archive's custody since ``custody_age_s`` (None: not yet)."""
    path = cache / "ComCam" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    key = f"blake3:{name}/{name}"

    def record(db: sqlite3.Connection) -> None:
        journal_files.insert_file(
            db, file_key=key, name=name, size=size, checksum=f"blake3:{name}", closed_at=time.time(),
            local_path=str(path), source="summit",
        )  # fmt: skip
        if custody_age_s is not None:
            journal_files.mark_archived(db, key, status="stored", archive_path=f"raw/{name}")
            db.execute("UPDATE files SET custody_at = ? WHERE file_key = ?", (time.time() - custody_age_s, key))

    await journal.transaction(record)
    return path


async def _events(journal: Journal) -> list[dict[str, Any]]:
    rows = await journal.read(journal_reports.recent, "event", 100)
    return [json.loads(r.payload) for r in rows if r.kind == "retention_deleted"]


async def _states(journal: Journal) -> dict[str, str]:
    def read(db: sqlite3.Connection) -> dict[str, str]:
        return {r["name"]: r["state"] for r in db.execute("SELECT name, state FROM files")}

    return await journal.read(read)


def _relay(journal: Journal, cache: Path, **kwargs: Any) -> tuple[CopyExpiry, SiteCounters]:
    counters = SiteCounters()
    reporter = Reporter("base", journal, counters)
    expiry = CopyExpiry(what="relay", journal=journal, reporter=reporter, counters=counters, cache_dir=cache, **kwargs)
    return expiry, counters


async def test_the_base_cache_expires_copies_by_age_after_custody_and_journals_each(
    journal: Journal, tmp_path: Path
) -> None:
    """With retention_s 100, a copy in custody for 1000 s is deleted (file, journal state, event, counters); one
    in custody for a moment and one not yet in custody stay, and the next sweep is due when the first does."""
    cache = tmp_path / "relay"
    old = await _copy(journal, cache, "old.fits", custody_age_s=1000, size=1234)
    recent = await _copy(journal, cache, "recent.fits", custody_age_s=1)
    held = await _copy(journal, cache, "held.fits", custody_age_s=None)
    expiry, counters = _relay(journal, cache, retention_s=100.0)

    due_at = await expiry.sweep()

    assert not old.exists() and not old.parent.joinpath("old.fits").exists()
    assert recent.exists() and held.exists()
    assert await _states(journal) == {"old.fits": "expired", "recent.fits": "archived", "held.fits": "held"}
    [event] = await _events(journal)
    assert event["details"]["files"] == ["old.fits"] and event["details"]["reason"] == "age"
    assert event["details"]["bytes"] == 1234 and event["site"] == "base"
    assert counters.deleted_files["relay"] == 1 and counters.deleted_bytes["relay"] == 1234
    assert due_at is not None and 95 < due_at - time.time() < 100


async def test_below_its_free_space_watermark_the_base_deletes_copies_in_custody_early_and_nothing_else(
    journal: Journal, tmp_path: Path
) -> None:
    """Above the watermark nothing young is deleted; below it (a watermark no disk meets) every copy in custody
    goes, oldest first, however young, and the copy not yet in custody stays."""
    cache = tmp_path / "relay"
    first = await _copy(journal, cache, "first.fits", custody_age_s=50)
    second = await _copy(journal, cache, "second.fits", custody_age_s=5)
    held = await _copy(journal, cache, "held.fits", custody_age_s=None)

    roomy, _ = _relay(journal, cache, retention_s=DAY_S, min_free_fraction=1e-9)
    await roomy.sweep()
    assert first.exists() and second.exists() and await _events(journal) == []

    full, counters = _relay(journal, cache, retention_s=DAY_S, min_free_fraction=0.999999)
    await full.sweep()
    assert not first.exists() and not second.exists() and held.exists()
    assert (await _states(journal))["held.fits"] == "held"
    [event] = await _events(journal)
    assert event["details"]["reason"] == "free_space" and event["details"]["files"] == ["first.fits", "second.fits"]
    assert counters.deleted_files["relay"] == 2


async def test_the_summit_deletes_the_cameras_file_only_once_custody_is_back(journal: Journal, tmp_path: Path) -> None:
    """With retention_s 0 the summit keeps a file that has no custody yet, however old, and deletes it at the
    first sweep after its receipt is recorded."""
    inbox = tmp_path / "inbox"
    path = await _copy(journal, inbox, "camera.fits", custody_age_s=None)
    await journal.write(lambda db: db.execute("UPDATE files SET created_at = 0, closed_at = 0"))
    counters = SiteCounters()
    expiry = CopyExpiry(
        what="summit", journal=journal, reporter=Reporter("summit", journal, counters), counters=counters,
        retention_s=0.0,
    )  # fmt: skip
    assert await expiry.sweep() is None
    assert path.exists()
    key = "blake3:camera.fits/camera.fits"
    await journal.write(journal_files.mark_archived, key, status="stored", archive_path="raw/camera.fits")
    await expiry.sweep()
    assert not path.exists() and counters.deleted_files["summit"] == 1
    assert path.parent.is_dir()  # the camera's folders are left alone


async def _camera_file(journal: Journal, inbox: Path, name: str, data: bytes, *, in_custody: bool) -> tuple[str, Path]:
    """Write a camera file into ``inbox`` and journal it as the registrar does (its size and mtime as read);
    in custody long ago, or held. Returns its file key and path."""
    path = inbox / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    st = path.stat()
    checksum = f"blake3:{len(data)}-{data[-1]}"
    key = f"{checksum}/{name}"

    def record(db: sqlite3.Connection) -> None:
        journal_files.insert_file(
            db, file_key=key, name=name, size=st.st_size, checksum=checksum, closed_at=st.st_mtime,
            local_path=str(path), source="inbox", mtime_ns=st.st_mtime_ns,
        )  # fmt: skip
        if in_custody:
            journal_files.mark_archived(db, key, status="stored", archive_path=f"raw/{name}")
            db.execute("UPDATE files SET custody_at = ? WHERE file_key = ?", (time.time() - DAY_S, key))

    await journal.transaction(record)
    return key, path


async def test_the_summit_leaves_a_camera_file_rewritten_since_the_version_in_custody(
    journal: Journal, tmp_path: Path
) -> None:
    """The camera rewrote a file (same name and size, new bytes) after its first version reached custody; the
    second version is not in custody yet. Retention expires the first version and must not delete the file,
    which is the second version now (it used to: the path is the same). A file not rewritten is deleted, and
    the summit forgets it (it would otherwise remember every file it ever registered)."""
    inbox = tmp_path / "inbox"
    counters = SiteCounters()
    expiry = CopyExpiry(
        what="summit", journal=journal, reporter=Reporter("summit", journal, counters), counters=counters,
        retention_s=0.0,
    )  # fmt: skip
    first_key, path = await _camera_file(journal, inbox, "raw/a.fits", b"a" * 2880, in_custody=True)
    plain_key, plain = await _camera_file(journal, inbox, "raw/b.fits", b"b" * 2880, in_custody=True)
    known: dict[str, tuple[int, int | None]] = {"raw/b.fits": (2880, plain.stat().st_mtime_ns)}
    await asyncio.sleep(0.01)  # (a later mtime)
    second_key, _ = await _camera_file(journal, inbox, "raw/a.fits", b"a" * 2879 + b"A", in_custody=False)
    known["raw/a.fits"] = (2880, path.stat().st_mtime_ns)
    expiry.expired_listeners.append(functools.partial(forget_copies, known))

    await expiry.sweep()

    assert path.read_bytes() == b"a" * 2879 + b"A", "the second version was deleted with the first"
    assert not plain.exists()
    states = await journal.read(lambda db: dict(db.execute("SELECT file_key, state FROM files").fetchall()))
    assert states == {first_key: "expired", plain_key: "expired", second_key: "held"}
    [event] = await _events(journal)
    assert event["details"]["files"] == ["raw/b.fits"], "only what was deleted is announced"
    assert counters.deleted_files["summit"] == 1
    assert known == {"raw/a.fits": (2880, path.stat().st_mtime_ns)}, "the deleted file is forgotten, not the new one"


async def _product(
    journal: Journal, root: Path, pid: str, kind: str, *, age_s: float, detector: str = "R22_S11"
) -> Path:
    relative = f"products/{kind}/ComCam/{detector}/{pid}.fits"
    (root / relative).parent.mkdir(parents=True, exist_ok=True)
    (root / relative).write_bytes(b"p" * 100)
    await journal.write(
        journal_products.insert,
        product_id=pid, job_key=f"job-{pid}", kind=kind, instrument="ComCam", detector=detector, filter_=None,
        archive_path=relative, checksum=f"blake3:{pid}", provenance={"inputs": [{"name": "raw.fits"}]},
        at=time.time() - age_s,
    )  # fmt: skip
    return root / relative


def _products(journal: Journal, root: Path, retention: Retention) -> tuple[ProductExpiry, SiteCounters]:
    counters = SiteCounters()
    reporter = Reporter("archive", journal, counters)
    expiry = ProductExpiry(root=root, journal=journal, reporter=reporter, counters=counters, retention=retention)
    return expiry, counters


async def test_products_expire_per_kind_and_keep_their_catalogue_rows(journal: Journal, tmp_path: Path) -> None:
    """diff_s one day and bias_s one hour: a two-day-old difference and an older master bias are deleted, their
    catalogue rows (provenance) stay and are marked expired; a fresh difference, a calexp (no rule: kept for
    ever) and the newest master bias, old as it is, stay."""
    root = tmp_path / "archive"
    old_diff = await _product(journal, root, "diff-old", "diff", age_s=2 * DAY_S)
    new_diff = await _product(journal, root, "diff-new", "diff", age_s=60)
    calexp = await _product(journal, root, "calexp-old", "calexp", age_s=30 * DAY_S)
    old_bias = await _product(journal, root, "bias-old", "bias", age_s=3 * DAY_S)
    newest_bias = await _product(journal, root, "bias-newest", "bias", age_s=2 * DAY_S)
    expiry, counters = _products(journal, root, Retention(products_s={"diff": DAY_S, "bias": 3600.0}))

    await expiry.sweep()

    assert not old_diff.exists() and not old_bias.exists()
    assert new_diff.exists() and calexp.exists() and newest_bias.exists()
    kept = await journal.read(journal_products.by_id, "diff-old")
    assert kept is not None and kept.provenance == {"inputs": [{"name": "raw.fits"}]}
    from daemon.journal import retention as journal_retention

    expired = await journal.read(journal_retention.expired_products)
    assert set(expired) == {"diff-old", "bias-old"} and expired["diff-old"]["kind"] == "diff"
    events = await _events(journal)
    assert sorted(e["details"]["product_id"] for e in events) == ["bias-old", "diff-old"]
    assert counters.deleted_files["product:diff"] == 1 and counters.deleted_files["product:bias"] == 1
    await expiry.sweep()
    assert len(await _events(journal)) == 2  # an expired product is not deleted (or journaled) twice


async def test_a_product_that_a_pending_job_reads_stays_until_the_job_is_done(journal: Journal, tmp_path: Path) -> None:
    """An old calexp named in a queued difference job is kept (the scheduler still needs it); once the job is
    done, the next sweep deletes it."""
    root = tmp_path / "archive"
    calexp = await _product(journal, root, "calexp-1", "calexp", age_s=10 * DAY_S)
    spec = {"step": "diff", "inputs": [{"product_id": "calexp-1", "archive_path": str(calexp.relative_to(root))}]}
    await journal.write(
        journal_jobs.insert, job_key="diff-job", step="diff", instrument="ComCam", detector="R22_S11",
        sequence="G/1-2", spec=spec,
    )  # fmt: skip
    expiry, _ = _products(journal, root, Retention(products_s={"calexp": DAY_S}))
    due_at = await expiry.sweep()
    assert calexp.exists() and due_at is not None and due_at < time.time()  # due, held back
    await journal.write(journal_jobs.mark_done, "diff-job", "diff-x")
    await expiry.sweep()
    assert not calexp.exists()


async def test_a_calexp_stays_while_its_quad_is_still_arriving(journal: Journal, tmp_path: Path) -> None:
    """A calexp older than calexp_s stays while a later frame of its quad arrived within calexp_s (the
    scheduler may still pair it); once that frame is older too, it is deleted."""
    from daemon.journal import catalog as journal_catalog

    root = tmp_path / "archive"
    calexp = await _product(journal, root, "calexp-v1", "calexp", age_s=3 * DAY_S)
    await journal.write(
        lambda db: db.execute(
            "UPDATE products SET provenance = ? WHERE product_id = 'calexp-v1'", (json.dumps({"groupid": "Q1"}),)
        )
    )
    summary = {"instrument": "ComCam", "detector": "R22_S11", "groupid": "Q1", "imgtype": "OBJECT"}
    await journal.write(
        journal_catalog.insert,
        file_key="k4", name="v4.fits", size=1, checksum="c", archived_checksum="c", archived_size=1,
        archive_path="raw/v4.fits", status="archived", reason=None, summary=summary, fixes=[], proof_path=None,
        findings=[], closed_at=time.time(), arrived_at=time.time() - 60, route="primary", sender="base",
    )  # fmt: skip
    expiry, _ = _products(journal, root, Retention(products_s={"calexp": DAY_S}))
    await expiry.sweep()
    assert calexp.exists()
    await journal.write(lambda db: db.execute("UPDATE catalog SET arrived_at = ?", (time.time() - 2 * DAY_S,)))
    await expiry.sweep()
    assert not calexp.exists()


def test_the_retention_section_is_read_and_every_mistake_reported(tmp_path: Path) -> None:
    """``[retention] diff_s = 86400`` loads (other kinds kept for ever); unknown keys, non-positive times, a
    calexp kept shorter than its chunk and a watermark outside 0..1 are all reported at once."""
    from test_deploy import _topology

    base = _topology(tmp_path).read_text()
    good = tmp_path / "good.toml"
    good.write_text(base + "\n[retention]\ndiff_s = 86400\ncache_min_free_fraction = 0.1\n")
    with pytest.raises(TopologyError) as loaded:  # not secured: only the keys are missing
        load_topology(good, check_dirs=False)
    assert all("public_key" in p for p in loaded.value.problems)
    bad = tmp_path / "bad.toml"
    bad.write_text(base + "\n[retention]\ndiff_s = -1\ncalexp_s = 60\nmaster_s = 5\ncache_min_free_fraction = 1.5\n")
    with pytest.raises(TopologyError) as failed:
        load_topology(bad, check_dirs=False)
    text = "\n".join(failed.value.problems)
    for expected in (
        "retention.diff_s: must be a positive number",
        "retention.calexp_s: 60 s is not longer than processing.chunk_end_s",
        "retention.master_s: unknown setting",
        "retention.cache_min_free_fraction: must be a number between 0 and 1",
    ):
        assert expected in text, text


async def test_a_summit_with_retention_0_deletes_the_exposure_after_custody_and_shows_it(
    make_cluster: MakeCluster, subscribe: Subscribe
) -> None:
    """End to end: with retention_s 0 at the summit, once custody of an exposure is back its files leave the
    inbox; retention_deleted events on events/summit name every file, and /v1/status and /metrics count them."""
    cluster = await make_cluster(retention={"summit": 0.0})
    events = await subscribe(cluster, "summit", "skyrelay/v1/events/summit")
    paths = await write_files(cluster, seqnum=1, size_bytes=32 * 1024, detectors=["R22_S00", "R22_S01", "R22_S02"])

    def deleted(messages: list[Any]) -> set[str]:
        return {f for m in messages if m.data.get("kind") == "retention_deleted" for f in m.data["details"]["files"]}

    await events.wait_for(lambda msgs: deleted(msgs) == {p.name for p in paths}, timeout_s=60)
    assert not any(p.exists() for p in paths)
    assert len(read_catalog(cluster)) == len(paths)  # deleted at the summit only once archived
    import aiohttp

    async with aiohttp.ClientSession() as session:
        status = await site_status(session, cluster, "summit")
    assert status["retention"]["deleted_files"] == {"summit": len(paths)}
    assert status["retention"]["copies"]["retention_s"] == 0.0
    request = urllib.request.Request(f"{cluster.http_url('summit')}/metrics", headers=operator_headers(cluster))
    metrics = await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=10).read().decode())
    assert f'skyrelay_retention_deleted_files_total{{site="summit",what="summit"}} {float(len(paths))}' in metrics


RETENTION_S = 10.0
"""The summit's retention in the rewrite test: time to disable the routes and rewrite the file before it ends."""


async def test_a_file_the_camera_rewrites_after_custody_of_its_first_version_is_not_lost_to_retention(
    make_cluster: MakeCluster, subscribe: Subscribe
) -> None:
    """End to end: the first version of a file reaches the archive; every route is disabled and the camera
    rewrites the file (same name and size, one byte changed), which the summit holds. Retention (RETENTION_S
    after custody) expires the first version and leaves the file in the inbox; with the routes back the second
    version reaches the archive with its own checksum (kept as a name conflict), and only then leaves the inbox."""
    cluster = await make_cluster(retention={"summit": RETENTION_S})
    arrivals = await subscribe(cluster, "archive", "skyrelay/v1/arrivals/#")
    [path] = await write_files(cluster, seqnum=1, size_bytes=32 * 1024, detectors=["R22_S00"])
    data = bytearray(path.read_bytes())
    first = blake3_of(path)
    await wait_settled(cluster, archived=1, wake=arrivals)
    workdir = str(cluster.workdir)
    for route in ("primary", "direct"):
        await cli_ok("routes", "disable", route, "--workdir", workdir, timeout_s=30)

    def summit_states() -> dict[str, str]:
        sql = "SELECT checksum, state FROM files WHERE name LIKE ?"
        rows = query_journal(cluster, "summit", sql, (f"%{path.name}",))
        return {r["checksum"]: r["state"] for r in rows}

    data[-1] ^= 0x01  # (the last pixel byte: still a good FITS file)
    drop_into_inbox(cluster, path.relative_to(cluster.inbox).as_posix(), bytes(data))
    second = blake3_of(path)
    assert summit_states()[first] == "archived", f"set up too slow: the first version expired within {RETENTION_S}s"

    await until(lambda: summit_states() == {first: "expired", second: "held"}, 30, "the first version expired")
    assert path.exists() and blake3_of(path) == second, "retention deleted the version not yet in custody"

    await cli_ok("routes", "auto", "--workdir", workdir, timeout_s=30)
    await until(lambda: {r["checksum"] for r in read_catalog(cluster)} == {first, second}, 60, "both archived")
    await until(lambda: summit_states() == {first: "expired", second: "expired"}, 30, "the second version expired")
    assert not path.exists()
