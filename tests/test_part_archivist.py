"""The archive's ingest on its own: one transaction for catalog, notice and custody; safe to repeat after a
crash; files that claim one archive path never overwrite each other.

A real journal and real FITS files (written by the camera simulator into ``tmp_path``); the Archivist is
called as the Receiver calls it once a pull is verified. Nothing is sent: the custody receipts it queues
stay in the journal's outbox and the sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from astropy.io import fits
from parts import PRIMARY, checksum_of, make_mailbox, open_journal, topology, trust

from daemon.archive import store as placing
from daemon.archive.ingest import Archivist
from daemon.config import SiteConfig
from daemon.counters import SiteCounters
from daemon.journal import Journal, new_id
from daemon.report import Reporter
from daemon.sending.items import ItemFactory
from daemon.sending.sender import Sender
from ops.camera import write_exposure
from protocol.transfer import Offer

pytestmark = pytest.mark.timeout(60)

DAYOBS = "20261201"


@dataclasses.dataclass
class Archive:
    """An archivist over a journal, and the archive root it fills."""

    archivist: Archivist
    journal: Journal
    sender: Sender
    cfg: SiteConfig

    @property
    def root(self) -> Path:
        assert self.cfg.archive_root is not None
        return self.cfg.archive_root

    async def rows(self, sql: str, *params: object) -> list[dict[str, Any]]:
        """Rows of a query on the archive's journal."""

        def query(db: sqlite3.Connection) -> list[dict[str, Any]]:
            return [dict(r) for r in db.execute(sql, params)]

        return await self.journal.read(query)

    async def received(self, source: Path) -> tuple[Offer, Path, str]:
        """A verified pull of ``source``: its offer from the base, the ``.part`` file and its checksum."""
        data = await asyncio.to_thread(source.read_bytes)
        checksum = checksum_of(data)
        transfer_id = new_id("t")
        tmp = self.root / ".incoming" / f"{transfer_id}.part"
        await asyncio.to_thread(tmp.parent.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(tmp.write_bytes, data)
        offer = Offer(
            transfer_id=transfer_id,
            sender="base",
            receiver="archive",
            name=source.name,
            size=len(data),
            checksum=checksum,
            closed_at=time.time() - 5.0,
            route=PRIMARY.name,
            route_sites=PRIMARY.sites,
            hop=1,
            source_path=f"/v1/transfers/{transfer_id}",
            attempt=1,
            sent_at=time.time(),
        )
        return offer, tmp, checksum


@contextlib.asynccontextmanager
async def archive(tmp_path: Path) -> AsyncIterator[Archive]:
    """An Archivist with its journal, reporter and (idle) sender, as the archive site wires them."""
    topo = topology(tmp_path)
    cfg = topo.sites["archive"]
    journal = await open_journal(cfg.state_dir / "journal.sqlite")
    try:
        yield build(topo.sites["archive"], journal, topo)
    finally:
        await journal.close()


def build(cfg: SiteConfig, journal: Journal, topo: Any) -> Archive:
    """The archive's parts over ``journal`` (a fresh set is a restarted daemon)."""
    counters = SiteCounters()
    reporter = Reporter("archive", journal, counters)

    async def ignore(topic: str, payload: bytes) -> None:
        return None

    mailbox = make_mailbox(topo, "archive", ignore)
    sender = Sender("archive", topo, mailbox, reporter, None, counters)
    items = ItemFactory("archive", journal)
    archivist = Archivist(
        "archive", cfg, journal, mailbox.peers, reporter, sender, items, counters, trust(topo, "archive")
    )
    return Archive(archivist=archivist, journal=journal, sender=sender, cfg=cfg)


def exposure(directory: Path, *, seqnum: int, seed: int) -> Path:
    """One LATISS detector file (a real FITS file, about 17 kB) written into ``directory``."""
    (path,) = write_exposure(directory, "LATISS", dayobs=DAYOBS, seqnum=seqnum, size_bytes=12_000, seed=seed)
    return path


def archive_path_of(source: Path) -> str:
    """Where the archive files an accepted file: ``raw/<INSTRUME>/<DAYOBS>/<OBSID>/<name>``."""
    header = fits.getheader(source)
    return f"raw/{header['INSTRUME']}/{header['DAYOBS']}/{header['OBSID']}/{source.name}"


def files_under(root: Path) -> list[str]:
    """Every file under ``root``, relative, sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def test_a_re_ingest_after_a_crash_between_place_and_commit_gives_one_entry_and_one_notice(
    tmp_path: Path,
) -> None:
    """The daemon died after the file was renamed into raw/ and before the commit; the base offers it again and
    the restarted archive ingests it: one catalog row, one arrival notice, one custody receipt, one copy."""
    source = exposure(tmp_path / "camera", seqnum=1, seed=1)
    async with archive(tmp_path) as first:
        offer, tmp, checksum = await first.received(source)
        prepared = await first.archivist.prepare(tmp, offer.name, checksum)
        async with first.archivist.path_lock(prepared.archive_path):
            prepared = await first.archivist.claim_path(prepared, tmp, checksum, offer.identity.key)
            placed = await asyncio.to_thread(placing.place, prepared, tmp, first.root, checksum)
        # -- the process dies here: nothing was committed --
        assert await first.rows("SELECT * FROM catalog") == []
    assert placed.archive_path == archive_path_of(source)

    restarted = build(first.cfg, await open_journal(first.journal.path), topology(tmp_path))
    try:
        again, tmp2, _ = await restarted.received(source)
        await restarted.archivist.ingest(again, tmp2, checksum)
        catalog = await restarted.rows("SELECT status, archive_path, checksum FROM catalog")
        notices = await restarted.rows("SELECT notice_id, payload FROM notices WHERE file_key = ?", again.identity.key)
        complete = await restarted.rows("SELECT file_key FROM notices WHERE file_key != ?", again.identity.key)
        custody = await restarted.rows("SELECT receiver FROM outbox WHERE kind = 'custody'")
    finally:
        await restarted.journal.close()
    assert catalog == [{"status": "archived", "archive_path": placed.archive_path, "checksum": checksum}]
    assert len(notices) == 1 and f'"notice_id":"{notices[0]["notice_id"]}"' in notices[0]["payload"]
    assert complete == [{"file_key": "exposure/LATISS/AT_O_20261201_000001/complete"}]  # one detector: complete
    assert custody == [{"receiver": "base"}]
    assert files_under(restarted.root) == [placed.archive_path]
    assert checksum_of((restarted.root / placed.archive_path).read_bytes()) == checksum


@pytest.mark.parametrize("together", [True, False], ids=["concurrently", "one after the other"])
async def test_two_files_claiming_one_archive_path_never_overwrite_each_other(tmp_path: Path, together: bool) -> None:
    """Two different files with the same name and header (same OBSID and detector, other bytes): exactly one
    is archived at the path, the other is quarantined as name_conflict with its own bytes kept; no error."""
    sources = [exposure(tmp_path / f"camera{seed}", seqnum=2, seed=seed) for seed in (1, 2)]
    assert sources[0].name == sources[1].name and sources[0].read_bytes() != sources[1].read_bytes()
    async with archive(tmp_path) as a:
        received = [await a.received(s) for s in sources]
        if together:
            await asyncio.gather(*(a.archivist.ingest(*r) for r in received))
        else:
            for r in received:
                await a.archivist.ingest(*r)
        catalog = await a.rows("SELECT status, reason, archive_path, checksum FROM catalog ORDER BY status")
        notices = await a.rows("SELECT file_key FROM notices ORDER BY rowid")
        problems = await a.rows("SELECT kind FROM reports WHERE stream = 'problem'")
        custody = await a.rows("SELECT payload FROM outbox WHERE kind = 'custody'")
        root = a.root
    archived, quarantined = catalog
    path = archive_path_of(sources[0])
    assert archived["status"] == "archived" and archived["archive_path"] == path
    assert quarantined["status"] == "quarantined" and quarantined["reason"].startswith("name_conflict")
    assert quarantined["archive_path"].startswith("quarantine/name_conflict/")
    assert {archived["checksum"], quarantined["checksum"]} == {r[2] for r in received}
    assert checksum_of((root / path).read_bytes()) == archived["checksum"]
    assert checksum_of((root / quarantined["archive_path"]).read_bytes()) == quarantined["checksum"]
    assert files_under(root) == sorted([path, quarantined["archive_path"]])
    assert notices == [
        {"file_key": f"{archived['checksum']}/{sources[0].name}"},
        {"file_key": "exposure/LATISS/AT_O_20261201_000002/complete"},
    ]
    assert problems == [{"kind": "quarantined"}]
    assert len(custody) == 2  # the base learns the fate of both


async def test_a_file_at_the_target_path_that_the_catalog_does_not_know_is_never_overwritten(
    tmp_path: Path,
) -> None:
    """Other bytes already at raw/.../name (put there by hand, not catalogued) stay; the newcomer is quarantined
    as a name_conflict."""
    stranger = exposure(tmp_path / "by-hand", seqnum=3, seed=7)
    source = exposure(tmp_path / "camera", seqnum=3, seed=8)
    async with archive(tmp_path) as a:
        target = a.root / archive_path_of(source)
        target.parent.mkdir(parents=True)
        shutil.copyfile(stranger, target)
        before = checksum_of(target.read_bytes())
        offer, tmp, checksum = await a.received(source)
        await a.archivist.ingest(offer, tmp, checksum)
        catalog: Sequence[dict[str, Any]] = await a.rows("SELECT status, reason, archive_path FROM catalog")
        notices = await a.rows("SELECT * FROM notices")
        root = a.root
    assert checksum_of(target.read_bytes()) == before != checksum
    ((status, reason, kept_at),) = [tuple(r.values()) for r in catalog]
    assert status == "quarantined" and str(reason).startswith("name_conflict")
    assert checksum_of((root / str(kept_at)).read_bytes()) == checksum
    assert notices == []
