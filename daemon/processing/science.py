"""Difference imaging on arrival: science frames become calexps, quads become pairs, pairs become diffs and alerts.

Per archived science frame (IMGTYPE OBJECT with GROUPID/CURINDEX/MAXINDEX) a ``calexp`` job is
journaled once a master bias of its detector exists; it applies the newest bias, dark and flat (of the
frame's filter) of the detector, records which, and measures the visit's PSF: a visit failing
``max_fwhm_arcsec`` (or with too few PSF stars) is reported and counts as lost for pairing. As calexps
are catalogued the quad is paired with :func:`processors.pairing.pairs_to_make` (2-1, 4-3, the
lost-visit mapping); ``chunk_end_s`` after the quad's last arrival its absent visits are lost and the
desperate pairs are made. Each pair is a ``diff`` job journaled under ``<GROUPID>/<sci>-<ref>`` (the
jobs table's unique sequence index: never a pair twice). A diff job writes the difference and the
visit's alerts (Avro) and, in one transaction, catalogues both, journals their product notices, one
:class:`~protocol.alerts.AlertNotice` per detection (notice id ``alert-<alertId>``) and finishes the
job; a crash before that transaction reruns the job, which gives the same alert ids.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog

from daemon.config import Processing
from daemon.fsutil import durable_rename, hash_file
from daemon.journal import jobs as journal_jobs
from daemon.journal import notices as journal_notices
from daemon.journal import products as journal_products
from daemon.journal import science as journal_science
from daemon.journal.connection import Journal
from daemon.processing.executor import Executor, WorkerLost
from daemon.processing.sequences import code_version, master_ref
from daemon.report import Reporter
from processors.calib import CalibError
from processors.pairing import MAX_INDEX, VisitState, pairs_to_make
from protocol import topics
from protocol.alerts import AlertNotice, ScienceProductNotice

log = structlog.get_logger()

STEPS = ("calexp", "diff")
"""Job steps this module plans and runs."""
MAX_ATTEMPTS = 3
DIFF_BACKGROUND_MESH_PX = 64
"""The difference settings the archive uses (DiffParams' defaults otherwise)."""


def _diff_params() -> Any:
    """The DiffParams of every difference (the science libraries load with the first science job)."""
    from processors.diffim import DiffParams

    return DiffParams(background_mesh_px=DIFF_BACKGROUND_MESH_PX)
"""Settings of every difference (part of the diff job's key)."""

T = TypeVar("T")


def _key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _mjd_tai_now() -> float:
    return time.time() / 86400.0 + 40587.0 + 37.0 / 86400.0


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Science:
    """Plans and runs the science jobs of the archive (called by the :class:`~daemon.processing.Scheduler`)."""

    def __init__(
        self,
        *,
        root: Path,
        journal: Journal,
        executor: Executor,
        reporter: Reporter,
        processing: Processing,
        notices_wake: asyncio.Event,
    ) -> None:
        self.root = root
        self.journal = journal
        self.executor = executor
        self.reporter = reporter
        self.processing = processing
        self.notices_wake = notices_wake
        self.alerts_published = asyncio.Event()
        """Set after each diff's alerts are journaled."""

    # ---- planning ----------------------------------------------------------------------------

    async def plan(self) -> float | None:
        """Journal calexp jobs for new frames and diff jobs for new pairs; return the next chunk end."""
        frames = await self.journal.read(journal_science.science_frames)
        calexp_jobs = await self.journal.read(journal_science.science_jobs, "calexp")
        for frame in frames:
            if (frame.detector, frame.obsid) not in calexp_jobs:
                await self._queue_calexp(frame)
        return await self._plan_pairs(frames)

    async def _queue_calexp(self, frame: journal_science.ScienceFrame) -> None:
        bias = await self.journal.read(journal_science.newest_master, "bias", frame.instrument, frame.detector)
        if bias is None:
            return  # woken again when the detector's master bias is built
        dark = await self.journal.read(journal_science.newest_master, "dark", frame.instrument, frame.detector)
        flat = await self.journal.read(
            journal_science.newest_master, "flat", frame.instrument, frame.detector, frame.filter
        )
        spec: dict[str, Any] = {
            "step": "calexp",
            "kind": "calexp",
            "instrument": frame.instrument,
            "detector": frame.detector,
            "obsid": frame.obsid,
            "groupid": frame.groupid,
            "curindex": frame.curindex,
            "maxindex": frame.maxindex,
            "filter": frame.filter,
            "inputs": [{"name": frame.name, "archive_path": frame.archive_path, "checksum": frame.checksum}],
            "bias": master_ref(bias),
            "dark": master_ref(dark),
            "flat": master_ref(flat),
            "max_fwhm_arcsec": self.processing.max_fwhm_arcsec,
            "code_version": code_version(),
        }
        key = _key({k: spec[k] for k in ("step", "inputs", "bias", "dark", "flat", "max_fwhm_arcsec", "code_version")})
        queued = await self.journal.write(
            journal_jobs.insert,
            job_key=key,
            step="calexp",
            instrument=frame.instrument,
            detector=frame.detector,
            sequence=frame.obsid,
            spec=spec,
        )
        if queued:
            log.info("job_queued", job_key=key, step="calexp", obsid=frame.obsid, groupid=frame.groupid)

    async def _plan_pairs(self, frames: list[journal_science.ScienceFrame]) -> float | None:
        calexps = await self.journal.read(journal_science.calexps)
        calexp_jobs = await self.journal.read(journal_science.science_jobs, "calexp")
        diff_jobs = await self.journal.read(journal_science.science_jobs, "diff")
        groups: dict[tuple[str, str, str], list[journal_science.ScienceFrame]] = {}
        for frame in frames:
            groups.setdefault((frame.instrument, frame.detector, frame.groupid), []).append(frame)
        now = time.time()
        deadline: float | None = None
        for (instrument, detector, groupid), members in groups.items():
            if any(f.maxindex != MAX_INDEX or not 1 <= f.curindex <= MAX_INDEX for f in members):
                continue
            visits: dict[int, VisitState] = {}
            products: dict[int, journal_products.ProductRow] = {}
            settled = True
            for frame in members:
                product = calexps.get((detector, frame.obsid))
                state = calexp_jobs.get((detector, frame.obsid))
                if product is not None:
                    ok = bool(product.provenance["quality"]["ok"])
                    visits.setdefault(frame.curindex, VisitState.OK if ok else VisitState.BAD)
                    if ok:
                        products.setdefault(frame.curindex, product)
                elif state == "failed":
                    visits.setdefault(frame.curindex, VisitState.LOST)
                else:
                    settled = False  # a calexp still to come: no chunk-end decision before it
            chunk_end = max(f.arrived_at for f in members) + self.processing.chunk_end_s
            chunk_ended = settled and now >= chunk_end
            if now < chunk_end and len(visits) < MAX_INDEX:
                # Past the chunk end but unsettled, the calexp still running wakes the scheduler when done.
                deadline = chunk_end if deadline is None else min(deadline, chunk_end)
            prefix = f"{groupid}/"
            done = set()
            for job_detector, sequence in diff_jobs:
                if job_detector == detector and sequence.startswith(prefix):
                    science, reference = sequence[len(prefix) :].split("-")
                    done.add((int(science), int(reference)))
            for pair in pairs_to_make(visits, chunk_ended=chunk_ended, done=done):
                await self._queue_diff(
                    instrument, detector, groupid, pair.reason, products[pair.science], products[pair.reference]
                )
        return deadline

    async def _queue_diff(
        self,
        instrument: str,
        detector: str,
        groupid: str,
        reason: str,
        science: journal_products.ProductRow,
        reference: journal_products.ProductRow,
    ) -> None:
        def ref(product: journal_products.ProductRow) -> dict[str, Any]:
            return {
                "product_id": product.product_id,
                "name": product.provenance["obsid"],
                "curindex": product.provenance["curindex"],
                "archive_path": product.archive_path,
                "checksum": product.checksum,
            }

        sci, rf = ref(science), ref(reference)
        spec: dict[str, Any] = {
            "step": "diff",
            "kind": "diff",
            "instrument": instrument,
            "detector": detector,
            "groupid": groupid,
            "reason": reason,
            "science": sci,
            "reference": rf,
            "inputs": [sci, rf],
            "params": repr(_diff_params()),
            "code_version": code_version(),
        }
        key = _key(
            {
                "step": "diff",
                "inputs": [sci["checksum"], rf["checksum"]],
                "params": spec["params"],
                "code_version": spec["code_version"],
            }
        )
        sequence = f"{groupid}/{sci['curindex']}-{rf['curindex']}"
        queued = await self.journal.write(
            journal_jobs.insert,
            job_key=key,
            step="diff",
            instrument=instrument,
            detector=detector,
            sequence=sequence,
            spec=spec,
        )
        if queued:
            log.info("job_queued", job_key=key, step="diff", pair=sequence, reason=reason)

    # ---- running -----------------------------------------------------------------------------

    async def run_job(self, job: journal_jobs.JobRow) -> None:
        """Run one science job to done or failed (a lost worker is retried up to :data:`MAX_ATTEMPTS`)."""
        from processors.diffim import DiffimError

        while True:
            if job.attempts >= MAX_ATTEMPTS:
                reason = f"given up after {job.attempts} attempts whose worker died"
                await self.journal.write(journal_jobs.mark_failed, job.job_key, reason)
                await self.reporter.problem("job_failed", f"{job.step} {job.sequence}: {reason}")
                return
            attempt = await self.journal.write(journal_jobs.mark_running, job.job_key)
            log.info("job_started", job_key=job.job_key, step=job.step, sequence=job.sequence, attempt=attempt)
            try:
                if job.step == "calexp":
                    await self._calexp(job, attempt)
                else:
                    await self._diff(job, attempt)
            except (CalibError, DiffimError) as exc:
                await self.journal.write(journal_jobs.mark_failed, job.job_key, str(exc))
                await self.reporter.problem("science_refused", f"{job.step} {job.sequence} ({job.detector}): {exc}")
                return
            except WorkerLost as exc:
                log.warning("job_worker_lost", job_key=job.job_key, attempt=attempt, error=str(exc))
                refreshed = await self.journal.read(journal_jobs.by_key, job.job_key)
                assert refreshed is not None
                job = refreshed
                continue
            self.notices_wake.set()
            return

    async def _execute(self, fn: Callable[[T], Any], task: T, outputs: list[Path]) -> Any:
        try:
            result = await self.executor.run(fn, task)
            for path in outputs:
                await asyncio.to_thread(_fsync, path)
        except BaseException:
            for path in outputs:
                await asyncio.to_thread(path.unlink, missing_ok=True)
            raise
        return result

    async def _place(self, temporary: Path, relative: str) -> str:
        checksum, _ = await asyncio.to_thread(hash_file, temporary)
        await asyncio.to_thread(durable_rename, temporary, self.root / relative)
        return checksum

    def _incoming(self) -> Path:
        incoming = self.root / ".incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        return incoming

    async def _calexp(self, job: journal_jobs.JobRow, attempt: int) -> None:
        from daemon.processing.science_tasks import CalexpOutcome, CalexpTask, make_calexp

        spec = job.spec
        pid = f"calexp-{job.detector}-{job.job_key[:16]}"
        relative = f"products/calexp/{job.instrument}/{job.detector}/{pid}.fits"
        temporary = await asyncio.to_thread(self._incoming) / f"{pid}.{attempt}.fits.part"

        def path_of(kind: str) -> str | None:
            master = spec.get(kind)
            return str(self.root / master["archive_path"]) if master else None

        task = CalexpTask(
            raw_path=str(self.root / spec["inputs"][0]["archive_path"]),
            output_path=str(temporary),
            bias_path=path_of("bias"),
            dark_path=path_of("dark"),
            flat_path=path_of("flat"),
            detector=job.detector,
            max_fwhm_arcsec=float(spec["max_fwhm_arcsec"]),
            provenance={
                "PRODID": pid,
                "JOBKEY": job.job_key[:32],
                **{f"{k.upper()}ID": (spec[k] or {}).get("product_id", "NONE") for k in ("bias", "dark", "flat")},
            },
        )
        outcome: CalexpOutcome = await self._execute(make_calexp, task, [temporary])
        checksum = await self._place(temporary, relative)
        quality = {
            "fwhm_arcsec": outcome.fwhm_arcsec,
            "n_psf_stars": outcome.n_psf_stars,
            "ok": outcome.ok,
            "reasons": list(outcome.reasons),
        }
        provenance = {**spec, "job_key": job.job_key, "quality": quality, "executor": self.executor.name}
        notice = ScienceProductNotice(
            notice_id=f"pn-{pid}",
            product_id=pid,
            kind="calexp",
            instrument=job.instrument,
            detector=job.detector,
            archive_path=relative,
            checksum=checksum,
            visits=(spec["obsid"],),
            inputs=tuple(
                [{"name": i["name"], "checksum": i["checksum"]} for i in spec["inputs"]]
                + [
                    {"product_id": spec[k]["product_id"], "checksum": spec[k]["checksum"]}
                    for k in ("bias", "dark", "flat")
                    if spec.get(k)
                ]
            ),
            stats=quality,
            created_at=time.time(),
        )

        def record(db: sqlite3.Connection) -> None:
            self._catalogue(db, job, pid, "calexp", relative, checksum, provenance, notice)
            journal_jobs.mark_done(db, job.job_key, pid)

        await self.journal.transaction(record)
        log.info("product_built", product_id=pid, kind="calexp", obsid=spec["obsid"], **quality)
        if not outcome.ok:
            await self.reporter.problem(
                "visit_bad_quality",
                f"{spec['obsid']} ({job.detector}, {spec['groupid']} v{spec['curindex']}) fails the quality cut "
                f"({', '.join(outcome.reasons)}; FWHM {outcome.fwhm_arcsec or float('nan'):.2f} arcsec, "
                f"max_fwhm_arcsec {spec['max_fwhm_arcsec']:g}): treated as lost for pairing",
                name=spec["inputs"][0]["name"],
                obsid=spec["obsid"],
                reasons=list(outcome.reasons),
            )

    def _catalogue(
        self,
        db: sqlite3.Connection,
        job: journal_jobs.JobRow,
        pid: str,
        kind: str,
        relative: str,
        checksum: str,
        provenance: dict[str, Any],
        notice: ScienceProductNotice,
    ) -> None:
        journal_products.insert(
            db,
            product_id=pid,
            job_key=job.job_key if kind != "alerts" else f"{job.job_key}/alerts",
            kind=kind,
            instrument=job.instrument,
            detector=job.detector,
            filter_=job.spec.get("filter"),
            archive_path=relative,
            checksum=checksum,
            provenance=provenance,
            at=notice.created_at,
        )
        journal_notices.insert(
            db,
            notice_id=notice.notice_id,
            file_key=f"product/{pid}",
            topic=topics.products(job.instrument),
            payload=notice.to_json(),
            at=notice.created_at,
        )

    async def _diff(self, job: journal_jobs.JobRow, attempt: int) -> None:
        from daemon.processing.science_tasks import DiffOutcome, DiffTask, make_diff

        spec = job.spec
        pid = f"diff-{job.detector}-{job.job_key[:16]}"
        aid = f"alerts-{job.detector}-{job.job_key[:16]}"
        relative = f"products/diff/{job.instrument}/{job.detector}/{pid}.fits"
        alerts_relative = f"products/alerts/{job.instrument}/{job.detector}/{aid}.avro"
        incoming = await asyncio.to_thread(self._incoming)
        temporary = incoming / f"{pid}.{attempt}.fits.part"
        alerts_temporary = incoming / f"{aid}.{attempt}.avro.part"
        science, reference = spec["science"], spec["reference"]
        task = DiffTask(
            science_path=str(self.root / science["archive_path"]),
            reference_path=str(self.root / reference["archive_path"]),
            output_path=str(temporary),
            alerts_path=str(alerts_temporary),
            time_processed_mjd_tai=_mjd_tai_now(),
            params=_diff_params(),
            provenance={
                "PRODID": pid,
                "JOBKEY": job.job_key[:32],
                "SCIID": science["product_id"],
                "REFID": reference["product_id"],
            },
        )
        outcome: DiffOutcome = await self._execute(make_diff, task, [temporary, alerts_temporary])
        checksum = await self._place(temporary, relative)
        alerts_checksum = await self._place(alerts_temporary, alerts_relative)
        visits = (science["name"], reference["name"])
        inputs = tuple(
            {"product_id": p["product_id"], "name": p["name"], "checksum": p["checksum"]} for p in (science, reference)
        )
        stats = {
            "alerts": len(outcome.alerts),
            "sources": outcome.n_sources,
            "flagged": outcome.flagged,
            "convolved": outcome.convolved,
            "kernel_stamps": outcome.kernel_stamps,
            "reason": spec["reason"],
        }
        now = time.time()
        diff_notice = ScienceProductNotice(
            notice_id=f"pn-{pid}",
            product_id=pid,
            kind="diff",
            instrument=job.instrument,
            detector=job.detector,
            archive_path=relative,
            checksum=checksum,
            visits=visits,
            inputs=inputs,
            stats=stats,
            created_at=now,
        )
        alerts_notice = ScienceProductNotice(
            notice_id=f"pn-{aid}",
            product_id=aid,
            kind="alerts",
            instrument=job.instrument,
            detector=job.detector,
            archive_path=alerts_relative,
            checksum=alerts_checksum,
            visits=visits,
            inputs=({"product_id": pid, "checksum": checksum},),
            stats={"alerts": len(outcome.alerts)},
            created_at=now,
        )
        alert_notices = [
            AlertNotice(
                notice_id=f"alert-{alert['alertId']}",
                alert_id=int(alert["alertId"]),
                instrument=job.instrument,
                detector=job.detector,
                diff_product_id=pid,
                visits=visits,
                alert=alert,
                created_at=now,
            )
            for alert in outcome.alerts
        ]
        provenance = {**spec, "job_key": job.job_key, "stats": stats, "executor": self.executor.name}

        def record(db: sqlite3.Connection) -> None:
            self._catalogue(db, job, pid, "diff", relative, checksum, provenance, diff_notice)
            alerts_provenance = {**provenance, "diff_product_id": pid, "alert_ids": [n.alert_id for n in alert_notices]}
            self._catalogue(db, job, aid, "alerts", alerts_relative, alerts_checksum, alerts_provenance, alerts_notice)
            for notice in alert_notices:
                journal_notices.insert(
                    db,
                    notice_id=notice.notice_id,
                    file_key=f"alert/{notice.alert_id}",
                    topic=topics.alerts(job.instrument),
                    payload=notice.to_json(),
                    at=now,
                )
            journal_jobs.mark_done(db, job.job_key, pid)

        await self.journal.transaction(record)
        log.info("product_built", product_id=pid, kind="diff", visits=list(visits), alerts=len(alert_notices))
        self.alerts_published.set()
