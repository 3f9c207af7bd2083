"""The archive's side of custody: ingest, catalog, notices, completeness, quarantine, verify.

Every state change is committed in one journal transaction with the notices and custody it
implies; publishing and sending follow from the journal, so a crash at any point repeats work
but never loses or duplicates a catalog entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from daemon import archive as archive_ops
from daemon import journal as jr
from daemon.aio import raise_if_cancelling
from daemon.config import SiteConfig, Tuning
from daemon.dataserver import bearer_ok
from daemon.journal import Journal
from daemon.mailbox import Mailbox
from daemon.report import Reporter
from daemon.sender import Outgoing, Sender
from processors.detectors import UnknownInstrument, expected_detectors
from processors.headers import verify_header
from protocol import topics
from protocol.arrival import ArrivalNotice, ExposureNotice
from protocol.custody import Custody
from protocol.transfer import FileIdentity, Offer

log = structlog.get_logger()

CustodyItem = Callable[[Custody], Outgoing]


def topic_segment(value: str) -> str:
    """A header value made safe as one MQTT topic segment."""
    cleaned = "".join(ch if ch.isalnum() or ch in "_.-" else "_" for ch in value)[:64]
    return cleaned or "unknown"


class Archivist:
    """Owns the archive's catalog and everything it promises subscribers."""

    def __init__(
        self,
        site: str,
        cfg: SiteConfig,
        tuning: Tuning,
        journal: Journal,
        mailbox: Mailbox,
        reporter: Reporter,
        sender: Sender,
        custody_item: CustodyItem,
        token: str,
        latency: Callable[..., Any] | None = None,
    ) -> None:
        assert cfg.archive_root is not None
        self.site = site
        self.root: Path = cfg.archive_root
        self.cfg = cfg
        self.tuning = tuning
        self.journal = journal
        self.mailbox = mailbox
        self.reporter = reporter
        self.sender = sender
        self.custody_item = custody_item
        self.token = token
        self._latency = latency
        self.incoming = self.root / ".incoming"
        self.notices_pending = asyncio.Event()
        self.completeness_wake = asyncio.Event()
        self.notices_published = 0
        self._release_lock = asyncio.Lock()

    # ---- receiving -------------------------------------------------------------------------

    async def already_archived(self, offer: Offer) -> Custody | None:
        """Custody for an offer of a file that is already catalogued, else None."""
        rows = await self.journal.query(
            "SELECT status, archive_path, arrived_at FROM catalog WHERE file_key = ?", (offer.identity.key,)
        )
        if not rows:
            return None
        return Custody(
            custody_id=jr.new_id("c"),
            sender=self.site,
            receiver=offer.sender,
            name=offer.name,
            size=offer.size,
            checksum=offer.checksum,
            status=rows[0]["status"],
            archive_path=rows[0]["archive_path"],
            archived_at=rows[0]["arrived_at"],
            route=offer.route,
        )

    async def ingest(self, offer: Offer, tmp: Path, computed: str) -> None:
        """Verify and fix the header, place the file, and commit catalog, notice and custody."""
        prepared = await self._prepare(tmp, offer.name, computed)
        prepared = await self._claim_path(prepared, tmp, computed, offer.identity.key)
        prepared = await asyncio.to_thread(archive_ops.place, prepared, tmp, self.root, computed)
        await self.commit(
            offer.identity,
            prepared,
            closed_at=offer.closed_at,
            route=offer.route,
            sender=offer.sender,
            transfer_id=offer.transfer_id,
        )

    async def _claim_path(
        self, prepared: archive_ops.Prepared, tmp: Path, checksum: str, key: str
    ) -> archive_ops.Prepared:
        """A path the catalog gives to another file (other name, or same name with other bytes) is
        not ours: the newcomer is quarantined as a name conflict, never overwriting the other."""
        if prepared.status != "archived":
            return prepared
        rows = await self.journal.query(
            "SELECT file_key, name FROM catalog WHERE archive_path = ?", (prepared.archive_path,)
        )
        if not rows or rows[0]["file_key"] == key:
            return prepared
        why = f"{prepared.archive_path} is already the archive copy of {rows[0]['name']}"
        if prepared.source != tmp:  # a header-fixed copy: the received bytes in tmp are what we keep
            await asyncio.to_thread(prepared.source.unlink, missing_ok=True)
        return await asyncio.to_thread(archive_ops.as_conflict, prepared, tmp, checksum, why)

    async def _prepare(self, tmp: Path, name: str, checksum: str) -> archive_ops.Prepared:
        return await asyncio.to_thread(self._prepare_blocking, tmp, name, checksum)

    def _prepare_blocking(self, tmp: Path, name: str, checksum: str) -> archive_ops.Prepared:
        """Read the header once, gather what sibling detectors agree on, decide the file's fate."""
        header, problem = archive_ops.read_primary_header(tmp)
        context: dict[str, object] | None = None
        if header is not None and verify_header(header):
            # Only a header with findings needs what its sibling detectors agree on.
            obsid = header.get("OBSID")
            context = archive_ops.exposure_context(self.journal.path, obsid if isinstance(obsid, str) else None)
        return archive_ops.prepare(
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
        prepared: archive_ops.Prepared,
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
        custody = Custody(
            custody_id=jr.new_id("c"),
            sender=self.site,
            receiver=sender,
            name=identity.name,
            size=identity.size,
            checksum=identity.checksum,
            status=prepared.status,  # type: ignore[arg-type]
            archive_path=prepared.archive_path,
            archived_at=arrived_at,
            route=route,
        )
        send_custody = sender in self.mailbox.peers and release_of is None

        def record(db: Any) -> ArrivalNotice | None:
            if release_of is not None:
                db.execute("DELETE FROM catalog WHERE rowid = ?", (release_of,))
            archive_ops.catalog_row(
                db,
                file_key=key,
                name=identity.name,
                size=identity.size,
                checksum=identity.checksum,
                prepared=prepared,
                closed_at=closed_at,
                arrived_at=arrived_at,
                route=route,
                sender=sender,
            )
            if release_of is not None:
                db.execute("UPDATE catalog SET released_at = ? WHERE file_key = ?", (arrived_at, key))
            if transfer_id is not None:
                jr.insert_inbound(
                    db,
                    transfer_id=transfer_id,
                    sender=sender,
                    file_key=key,
                    status="stored",
                    checksum=identity.checksum,
                )
            if send_custody:
                jr.queue_custody(db, custody, key)
            if prepared.status != "archived":
                return None
            instrument = str(summary.get("instrument"))
            complete, exposure_done = self._track_exposure(db, summary, arrived_at)
            notice = ArrivalNotice(
                notice_id=jr.new_id("n"),
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
            _insert_notice(
                db,
                notice.notice_id,
                key,
                topics.arrivals(topic_segment(instrument), topic_segment(notice.detector)),
                notice.to_json(),
                arrived_at,
            )
            if exposure_done is not None:  # after the arrival notice that completed the exposure
                self._exposure_notice(db, *exposure_done)
            return notice

        notice = await self.journal.transaction(record)
        if notice is not None and self._latency is not None:
            self._latency(site=self.site, route=route).observe(notice.latency_s)
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
            fixes=len(prepared.fixes),
            latency_s=round(arrived_at - closed_at, 3),
        )
        self.notices_pending.set()
        self.completeness_wake.set()
        if send_custody:
            self.sender.add(self.custody_item(custody))
        return notice

    def _track_exposure(
        self, db: Any, summary: dict[str, Any], now: float
    ) -> tuple[bool | None, tuple[Any, ...] | None]:
        """Add this detector to its exposure.

        Returns whether the exposure is complete, and the arguments of its exposure notice when this
        file completed it (the caller queues that notice after the file's own arrival notice).
        """
        instrument, obsid, detector = summary.get("instrument"), summary.get("obsid"), summary.get("detector")
        if not isinstance(instrument, str) or not isinstance(obsid, str) or not isinstance(detector, str):
            return None, None
        try:
            expected = expected_detectors(instrument)
        except UnknownInstrument:
            return None, None
        row = db.execute(
            "SELECT detectors, state FROM exposures WHERE instrument = ? AND obsid = ?", (instrument, obsid)
        ).fetchone()
        arrived = set(json.loads(row["detectors"])) if row else set()
        arrived.add(detector)
        complete = expected <= arrived
        state = "complete" if complete else (row["state"] if row else "pending")
        seqnum = summary.get("seqnum") if isinstance(summary.get("seqnum"), int) else None
        dayobs = str(summary["dayobs"]) if summary.get("dayobs") is not None else None
        db.execute(
            "INSERT INTO exposures (instrument, obsid, dayobs, seqnum, expected, detectors, first_at, last_at, state)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(instrument, obsid) DO UPDATE SET"
            " detectors = excluded.detectors, last_at = excluded.last_at, state = excluded.state",
            (
                instrument,
                obsid,
                dayobs,
                seqnum,
                json.dumps(sorted(expected)),
                json.dumps(sorted(arrived)),
                now,
                now,
                state,
            ),
        )
        if complete and (row is None or row["state"] != "complete"):
            return complete, (instrument, obsid, dayobs, seqnum, "complete", expected, arrived, now)
        return complete, None

    def _exposure_notice(
        self,
        db: Any,
        instrument: str,
        obsid: str,
        dayobs: str | None,
        seqnum: int | None,
        state: str,
        expected: set[str] | frozenset[str],
        arrived: set[str],
        now: float,
    ) -> ExposureNotice:
        notice = ExposureNotice(
            notice_id=jr.new_id("x"),
            obsid=obsid,
            instrument=instrument,
            dayobs=dayobs,
            seqnum=seqnum,
            state=state,  # type: ignore[arg-type]
            expected=len(expected),
            arrived=len(arrived & set(expected)),
            missing=tuple(sorted(set(expected) - arrived)),
            at=now,
        )
        _insert_notice(
            db,
            notice.notice_id,
            f"exposure/{instrument}/{obsid}/{state}",
            topics.exposures(topic_segment(instrument)),
            notice.to_json(),
            now,
        )
        return notice

    # ---- publishing and timers ---------------------------------------------------------------

    async def notice_loop(self) -> None:
        """Publish every journaled, unpublished notice; mark each once the broker has it (PUBACK)."""
        while True:
            raise_if_cancelling()
            await self.notices_pending.wait()
            self.notices_pending.clear()
            await self.mailbox.wait_local()
            rows = await self.journal.query(
                "SELECT notice_id, topic, payload FROM notices WHERE published_at IS NULL ORDER BY created_at, rowid"
            )
            published: list[str] = []
            for row in rows:
                if not await self.mailbox.publish_local(row["topic"], row["payload"].encode()):
                    # The broker is down; the mailbox reconnects with backoff. Wait the same way.
                    self.notices_pending.set()
                    await asyncio.sleep(self.tuning.backoff_initial_s)
                    break
                published.append(str(row["notice_id"]))
            if published:
                # One transaction for the batch: a crash before it repeats these notices (same ids).
                await self.journal.transaction(functools.partial(_mark_published, notice_ids=published))
                self.notices_published += len(published)

    async def completeness_loop(self) -> None:
        """Mark exposures late when a detector is still missing ``late_after_s`` after the first arrived."""
        late_after = self.tuning.late_after_s
        while True:
            raise_if_cancelling()
            self.completeness_wake.clear()
            now = time.time()
            rows = await self.journal.query("SELECT * FROM exposures WHERE state = 'pending'")
            next_deadline: float | None = None
            for row in rows:
                deadline = float(row["first_at"]) + late_after
                if deadline > now:
                    next_deadline = deadline if next_deadline is None else min(next_deadline, deadline)
                    continue
                await self._mark_late(row, now)
            timeout = None if next_deadline is None else max(0.05, next_deadline - time.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.completeness_wake.wait()

    async def _mark_late(self, row: Any, now: float) -> None:
        expected = set(json.loads(row["expected"]))
        arrived = set(json.loads(row["detectors"]))

        def record(db: Any) -> ExposureNotice:
            db.execute(
                "UPDATE exposures SET state = 'late' WHERE instrument = ? AND obsid = ? AND state = 'pending'",
                (row["instrument"], row["obsid"]),
            )
            return self._exposure_notice(
                db, row["instrument"], row["obsid"], row["dayobs"], row["seqnum"], "late", expected, arrived, now
            )

        notice = await self.journal.transaction(record)
        self.notices_pending.set()
        await self.reporter.problem(
            "exposure_late",
            f"{row['obsid']}: {len(notice.missing)} of {notice.expected} detectors missing "
            f"{self.tuning.late_after_s:.0f}s after the first arrived",
            obsid=row["obsid"],
            instrument=row["instrument"],
            missing=list(notice.missing),
        )

    # ---- operators ---------------------------------------------------------------------------

    async def quarantine_list(self) -> list[dict[str, Any]]:
        """Every quarantined file with its id and reason."""
        rows = await self.journal.query(
            "SELECT rowid AS id, name, checksum, size, archive_path, reason, arrived_at, dayobs, obsid FROM catalog"
            " WHERE status = 'quarantined' ORDER BY arrived_at"
        )
        return [dict(r) for r in rows]

    async def release(self, quarantine_id: int) -> dict[str, Any]:
        """Re-ingest a quarantined file through the normal path (after an operator fixed its cause).

        Returns the outcome; raises LookupError for an unknown id. A file that is still not
        acceptable stays in quarantine, with the new reason.
        """
        async with self._release_lock:
            rows = await self.journal.query(
                "SELECT * FROM catalog WHERE rowid = ? AND status = 'quarantined'", (quarantine_id,)
            )
            if not rows:
                raise LookupError(f"no quarantined file with id {quarantine_id}")
            row = rows[0]
            await asyncio.to_thread(self.incoming.mkdir, parents=True, exist_ok=True)
            tmp = await asyncio.to_thread(
                archive_ops.release_from_quarantine, self.root, row["archive_path"], self.incoming
            )
            prepared = await self._prepare(tmp, row["name"], row["checksum"])
            if prepared.status != "archived":
                await asyncio.to_thread(tmp.unlink, missing_ok=True)
                await self.journal.transaction(
                    lambda db: db.execute(
                        "UPDATE catalog SET reason = ? WHERE rowid = ?", (prepared.reason, quarantine_id)
                    )
                )
                return {"id": quarantine_id, "released": False, "reason": prepared.reason}
            prepared = await self._claim_path(prepared, tmp, row["checksum"], row["file_key"])
            if prepared.status != "archived":
                await asyncio.to_thread(tmp.unlink, missing_ok=True)
                return {"id": quarantine_id, "released": False, "reason": prepared.reason}
            placed = await asyncio.to_thread(archive_ops.place, prepared, tmp, self.root, row["checksum"])
            if placed.status != "archived":
                return {"id": quarantine_id, "released": False, "reason": placed.reason}
            identity = FileIdentity(name=row["name"], size=row["size"], checksum=row["checksum"])
            await self.commit(
                identity,
                placed,
                closed_at=row["closed_at"],
                route=row["route"],
                sender=row["sender"],
                transfer_id=None,
                release_of=quarantine_id,
            )
            await asyncio.to_thread((self.root / row["archive_path"]).unlink, missing_ok=True)
            await self.reporter.event(
                "released",
                f"{row['name']} released from quarantine to {placed.archive_path}",
                name=row["name"],
                archive_path=placed.archive_path,
                fixes=placed.fixes,
            )
            return {"id": quarantine_id, "released": True, "archive_path": placed.archive_path, "fixes": placed.fixes}

    async def verify(self, dayobs: str) -> dict[str, Any]:
        """Per exposure of a day: detectors expected, arrived, missing; sequence gaps; quarantine."""
        now = time.time()
        exposures = await self.journal.query(
            "SELECT * FROM exposures WHERE dayobs = ? ORDER BY instrument, seqnum, obsid", (dayobs,)
        )
        out_exposures = []
        seqnums: dict[str, set[int]] = {}
        for row in exposures:
            expected = json.loads(row["expected"])
            arrived = set(json.loads(row["detectors"]))
            missing = sorted(set(expected) - arrived)
            age = now - float(row["first_at"])
            out_exposures.append(
                {
                    "instrument": row["instrument"],
                    "obsid": row["obsid"],
                    "seqnum": row["seqnum"],
                    "state": row["state"],
                    "expected": len(expected),
                    "arrived": len(arrived & set(expected)),
                    "missing": missing,
                    "late": missing if row["state"] == "late" else [],
                    "first_arrival_age_s": round(age, 1),
                }
            )
            if row["seqnum"] is not None:
                seqnums.setdefault(row["instrument"], set()).add(int(row["seqnum"]))
        gaps = {inst: sorted(set(range(min(s), max(s) + 1)) - s) for inst, s in seqnums.items()}
        quarantined = [q for q in await self.quarantine_list() if q["dayobs"] in (dayobs, None)]
        # An exposure whose detectors are still arriving (within late_after_s of its first) is not
        # missing anything yet: it is reported as arriving and does not fail verify.
        arriving = [e for e in out_exposures if e["missing"] and e["state"] == "pending"]
        incomplete = [e for e in out_exposures if e["missing"] and e["state"] != "pending"]
        return {
            "dayobs": dayobs,
            "exposures": out_exposures,
            "gaps": {k: v for k, v in gaps.items() if v},
            "quarantined": quarantined,
            "complete": sum(1 for e in out_exposures if not e["missing"]),
            "incomplete": len(incomplete),
            "arriving": len(arriving),
            "ok": not incomplete and not any(gaps.values()),
        }

    def http_routes(self) -> list[web.RouteDef]:
        """``/v1/verify``, ``/v1/quarantine`` and ``/v1/quarantine/{id}/release`` (token required to release)."""

        async def verify(request: web.Request) -> web.Response:
            dayobs = request.query.get("dayobs", "")
            if not (len(dayobs) == 8 and dayobs.isdigit()):
                raise web.HTTPBadRequest(text="dayobs must be YYYYMMDD")
            return web.json_response(await self.verify(dayobs))

        async def quarantine(request: web.Request) -> web.Response:
            return web.json_response(await self.quarantine_list())

        async def release(request: web.Request) -> web.Response:
            if not bearer_ok(request, self.token):
                raise web.HTTPUnauthorized(text="missing or wrong bearer token")
            try:
                quarantine_id = int(request.match_info["qid"])
                result = await self.release(quarantine_id)
            except ValueError as exc:
                raise web.HTTPBadRequest(text="id must be an integer") from exc
            except LookupError as exc:
                raise web.HTTPNotFound(text=str(exc)) from exc
            return web.json_response(result, status=200 if result["released"] else 409)

        return [
            web.get("/v1/verify", verify),
            web.get("/v1/quarantine", quarantine),
            web.post("/v1/quarantine/{qid}/release", release),
        ]


def _insert_notice(db: Any, notice_id: str, key: str, topic: str, payload: bytes, now: float) -> None:
    db.execute(
        "INSERT INTO notices (notice_id, file_key, topic, payload, created_at) VALUES (?, ?, ?, ?, ?)",
        (notice_id, key, topic, payload.decode(), now),
    )


def _mark_published(db: Any, *, notice_ids: list[str]) -> None:
    now = time.time()
    db.executemany("UPDATE notices SET published_at = ? WHERE notice_id = ?", [(now, n) for n in notice_ids])
