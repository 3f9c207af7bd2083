"""The archive's ingest: verify and fix the header, place the file, and commit catalog, notice and custody at once.

Every state change is committed in one journal transaction with the notices and custody it
implies; publishing and sending follow from the journal, so a crash at any point repeats work
but never loses or duplicates a catalog entry. Files that map to one archive path are placed one at
a time (a lock per path), and a path the catalog gives to another file is a ``name_conflict``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from astropy.io import fits

from daemon.archive import store as placing
from daemon.archive.exposures import journal_exposure_notice, topic_segment, track
from daemon.config import SiteConfig
from daemon.counters import SiteCounters
from daemon.fitsfile import read_primary_header
from daemon.journal import FileRow, Journal, new_id
from daemon.journal import catalog as journal_catalog
from daemon.journal import files as journal_files
from daemon.journal import notices as journal_notices
from daemon.journal import outbox as journal_outbox
from daemon.logcontext import bound_obsid
from daemon.report import Reporter
from daemon.sending.items import ItemFactory
from daemon.sending.sender import Outgoing, Sender
from daemon.trust import Trust
from processors.headers import verify_header
from processors.headers.text import HeaderText
from protocol import topics
from protocol.arrival import ArrivalNotice
from protocol.custody import Custody, Receipt
from protocol.transfer import FileIdentity, Offer

log = structlog.get_logger()

LatencyObserver = Callable[[str, float], None]
"""Called with (route, seconds from summit close to archive stored) for each archived file."""


class Archivist:
    """Owns the archive's catalog and everything it promises subscribers; the archive's :class:`Store`."""

    keeps_cached = False  # (a received file's pages are dropped after its fsync: see Store.keeps_cached)

    def __init__(
        self,
        site: str,
        cfg: SiteConfig,
        journal: Journal,
        peers: tuple[str, ...],
        reporter: Reporter,
        sender: Sender,
        items: ItemFactory,
        counters: SiteCounters,
        trust: Trust,
    ) -> None:
        assert cfg.archive_root is not None
        self.site = site
        self.root: Path = cfg.archive_root
        self.cfg = cfg
        self.journal = journal
        self.peers = peers
        self.reporter = reporter
        self.sender = sender
        self.items = items
        self.counters = counters
        self.trust = trust
        self.incoming = self.root / ".incoming"
        self.notices_wake = asyncio.Event()
        self.committed: list[Callable[[], None]] = []
        self.latency: LatencyObserver | None = None
        self._path_locks: dict[str, tuple[asyncio.Lock, int]] = {}

    # ---- the Store protocol ------------------------------------------------------------------

    def held(self, db: sqlite3.Connection, offer: Offer) -> sqlite3.Row | None:
        """The file's catalog row, if it is catalogued already (on the journal thread)."""
        return journal_catalog.by_key(db, offer.identity.key)

    def custody_for_held(self, offer: Offer, held: sqlite3.Row | FileRow) -> Custody | None:
        """The custody of a catalogued file, for its offerer: a receipt signed now, from the catalog row."""
        assert isinstance(held, sqlite3.Row)
        row = held
        receipt = Receipt(
            receipt_id=new_id("r"),
            archive=self.site,
            name=offer.name,
            size=offer.size,
            checksum=offer.checksum,
            status=row["status"],
            archive_path=row["archive_path"],
            archived_at=row["arrived_at"],
            route=offer.route,
        )
        return self.custody_for(offer.sender, receipt)

    def custody_for(self, receiver: str, receipt: Receipt) -> Custody:
        """The first hop of custody: the archive's signed receipt, addressed to ``receiver``."""
        return Custody(
            custody_id=new_id("c"), sender=self.site, receiver=receiver, receipt=self.trust.sign_receipt(receipt)
        )

    async def store(self, offer: Offer, tmp: Path, computed: str) -> list[Outgoing]:
        """Ingest a verified file; custody is queued by the commit, nothing else is sent after the ack."""
        await self.ingest(offer, tmp, computed)
        return []

    # ---- ingest ------------------------------------------------------------------------------

    async def ingest(self, offer: Offer, tmp: Path, computed: str) -> None:
        """Verify and fix the header, place the file, and commit catalog, notice and custody."""
        prepared = await self.prepare(tmp, offer.name, computed)
        with bound_obsid(prepared.summary.get("obsid")):  # the header's word over the name's
            await self._place(offer, prepared, tmp, computed)

    async def _place(self, offer: Offer, prepared: placing.Prepared, tmp: Path, computed: str) -> None:
        async with self.path_lock(prepared.archive_path):
            prepared = await self.claim_path(prepared, tmp, computed, offer.identity.key)
            prepared = await asyncio.to_thread(placing.place, prepared, tmp, self.root, computed)
            await self.commit(
                offer.identity,
                prepared,
                closed_at=offer.closed_at,
                route=offer.route,
                sender=offer.sender,
                transfer_id=offer.transfer_id,
            )

    def path_lock(self, archive_path: str) -> _PathLock:
        """Held while a file is claimed, placed and committed at ``archive_path``."""
        return _PathLock(self._path_locks, archive_path)

    async def claim_path(self, prepared: placing.Prepared, tmp: Path, checksum: str, key: str) -> placing.Prepared:
        """A path the catalog gives to another file (other name, or same name with other bytes) is
        not ours: the newcomer is quarantined as a name conflict, never overwriting the other."""
        if prepared.status != "archived":
            return prepared
        holder = await self.journal.read(journal_catalog.holder_of, prepared.archive_path)
        if holder is None or holder[0] == key:
            return prepared
        why = f"{prepared.archive_path} is already the archive copy of {holder[1]}"
        if prepared.source != tmp:  # a header-fixed copy: the received bytes in tmp are what we keep
            await asyncio.to_thread(prepared.source.unlink, missing_ok=True)
        return await asyncio.to_thread(placing.as_conflict, prepared, tmp, checksum, why)

    async def prepare(self, tmp: Path, name: str, checksum: str) -> placing.Prepared:
        """Read the header once, gather what sibling detectors agree on, decide the file's fate.

        A header without findings (nearly every one) is read and decided in one thread hop; only one
        with findings waits for the journal's word on its exposure in between.
        """
        decided = await asyncio.to_thread(self._prepare_alone, tmp, name, checksum)
        if isinstance(decided, placing.Prepared):
            return decided
        header, obsid = decided
        context = await self.journal.read(journal_catalog.exposure_context, obsid)
        return await asyncio.to_thread(self._decide, tmp, name, checksum, header, None, context)

    def _prepare_alone(
        self, tmp: Path, name: str, checksum: str
    ) -> placing.Prepared | tuple[fits.Header | HeaderText, str | None]:
        """The file's fate when its header needs no sibling's word, else its header and OBSID (blocking)."""
        header, problem = read_primary_header(tmp)
        if header is not None and verify_header(header):
            # Only a header with findings needs what its sibling detectors agree on.
            obsid = header.get("OBSID")
            return header, obsid if isinstance(obsid, str) else None
        return self._decide(tmp, name, checksum, header, problem, None)

    def _decide(
        self,
        tmp: Path,
        name: str,
        checksum: str,
        header: fits.Header | HeaderText | None,
        problem: str | None,
        context: dict[str, object] | None,
    ) -> placing.Prepared:
        return placing.prepare(
            tmp,
            name=name,
            received_checksum=checksum,
            correction_dirs=self.cfg.correction_dirs,
            context=context,
            header=header,
            problem=problem,
        )

    async def commit(
        self,
        identity: FileIdentity,
        prepared: placing.Prepared,
        *,
        closed_at: float,
        route: str,
        sender: str,
        transfer_id: str | None,
        release_of: int | None = None,
    ) -> ArrivalNotice | None:
        """One transaction: catalog row, exposure state, arrival/exposure notices, custody upstream."""
        arrived_at = time.time()
        key = identity.key
        summary = prepared.summary
        receipt = Receipt(
            receipt_id=new_id("r"),
            archive=self.site,
            name=identity.name,
            size=identity.size,
            checksum=identity.checksum,
            status=prepared.status,  # type: ignore[arg-type]
            archive_path=prepared.archive_path,
            archived_at=arrived_at,
            route=route,
        )
        custody = self.custody_for(sender, receipt)
        send_custody = sender in self.peers and release_of is None

        def record(db: sqlite3.Connection) -> ArrivalNotice | None:
            if release_of is not None:
                journal_catalog.remove(db, release_of)
            journal_catalog.insert(
                db,
                file_key=key,
                name=identity.name,
                size=identity.size,
                checksum=identity.checksum,
                archived_checksum=prepared.archived_checksum,
                archived_size=prepared.archived_size,
                archive_path=prepared.archive_path,
                status=prepared.status,
                reason=prepared.reason,
                summary=summary,
                fixes=prepared.fixes,
                proof_path=prepared.proof_path,
                findings=prepared.findings,
                closed_at=closed_at,
                arrived_at=arrived_at,
                route=route,
                sender=sender,
            )
            if release_of is not None:
                journal_catalog.mark_released(db, key, arrived_at)
            if transfer_id is not None:
                journal_files.insert_inbound(
                    db,
                    transfer_id=transfer_id,
                    sender=sender,
                    file_key=key,
                    status="stored",
                    checksum=identity.checksum,
                )
            if send_custody:
                journal_outbox.queue_custody(db, custody, key)
            if prepared.status != "archived":
                return None
            return self._arrival(db, identity, prepared, closed_at=closed_at, arrived_at=arrived_at, route=route)

        notice = await self.journal.transaction(record)
        if notice is not None and self.latency is not None:
            self.latency(route, notice.latency_s)
        if prepared.status == "quarantined":
            await self.reporter.problem(
                "quarantined",
                prepared.reason or "quarantined",
                name=identity.name,
                transfer_id=transfer_id,
                archive_path=prepared.archive_path,
            )
        log.info(
            "file_archived",
            status=prepared.status,
            archive_path=prepared.archive_path,
            obsid=summary.get("obsid"),
            fixes=len(prepared.fixes),
            latency_s=round(arrived_at - closed_at, 3),
        )
        self.notices_wake.set()
        for listener in self.committed:
            listener()
        if send_custody:
            self.sender.add(self.items.custody(custody, receipt))
        return notice

    def _arrival(
        self,
        db: sqlite3.Connection,
        identity: FileIdentity,
        prepared: placing.Prepared,
        *,
        closed_at: float,
        arrived_at: float,
        route: str,
    ) -> ArrivalNotice:
        """Track the exposure and journal the arrival notice (then the exposure's, if this completed it)."""
        summary: dict[str, Any] = prepared.summary
        instrument = str(summary.get("instrument"))
        complete, exposure_done = track(db, summary, arrived_at)
        notice = ArrivalNotice(
            notice_id=new_id("n"),
            obsid=str(summary.get("obsid")),
            instrument=instrument,
            detector=str(summary.get("detector") or "unknown"),
            name=identity.name,
            size=identity.size,
            checksum=identity.checksum,
            archived_checksum=prepared.archived_checksum,
            archive_path=prepared.archive_path,
            arrived_at=arrived_at,
            closed_at=closed_at,
            latency_s=round(arrived_at - closed_at, 6),
            route=route,
            dayobs=str(summary["dayobs"]) if summary.get("dayobs") is not None else None,
            seqnum=summary["seqnum"] if isinstance(summary.get("seqnum"), int) else None,
            imgtype=str(summary["imgtype"]) if summary.get("imgtype") is not None else None,
            fixes=tuple(prepared.fixes),
            complete=complete,
        )
        journal_notices.insert(
            db,
            notice_id=notice.notice_id,
            file_key=identity.key,
            topic=topics.arrivals(topic_segment(instrument), topic_segment(notice.detector)),
            payload=notice,
            at=arrived_at,
        )
        if exposure_done is not None:  # after the arrival notice that completed the exposure
            journal_exposure_notice(db, exposure_done)
        return notice


class _PathLock:
    """One asyncio lock per archive path, dropped when nobody holds or waits for it."""

    def __init__(self, locks: dict[str, tuple[asyncio.Lock, int]], path: str) -> None:
        self._locks = locks
        self._path = path

    async def __aenter__(self) -> None:
        lock, users = self._locks.get(self._path, (asyncio.Lock(), 0))
        self._locks[self._path] = (lock, users + 1)
        await lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        lock, users = self._locks[self._path]
        lock.release()
        if users == 1:
            del self._locks[self._path]
        else:
            self._locks[self._path] = (lock, users - 1)
