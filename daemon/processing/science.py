"""Difference imaging on arrival: science frames become calexps, quads become pairs, pairs become diffs and alerts.

Per archived science frame (IMGTYPE OBJECT with GROUPID/CURINDEX/MAXINDEX) a ``calexp`` job is
journaled once a master bias of its detector exists and no dark or flat (of the frame's filter) of it
is still to come (its sequence archived, its master not yet built: the calexp waits, woken when the
master is); it applies the newest bias, dark and flat of the detector, records which (and, in its
``notes``, what it went without), and measures the visit's PSF: a visit failing
``max_fwhm_arcsec`` (or with too few PSF stars) is reported and counts as lost for pairing. As calexps
are catalogued the quad is paired with :func:`processors.pairing.pairs_to_make` (2-1, 4-3, the
lost-visit mapping); ``chunk_end_s`` after the quad's last arrival its absent visits are lost and the
desperate pairs are made. Each pair is a ``diff`` job journaled under ``<GROUPID>/<sci>-<ref>`` (the
jobs table's unique sequence index: never a pair twice). A diff job writes the difference and the
visit's alerts (Avro) and, in one transaction, catalogues both, journals their product notices, one
:class:`~protocol.alerts.AlertNotice` per detection (notice id ``alert-<alertId>``) and finishes the
job; a crash before that transaction reruns the job, which gives the same alert ids.

Templates: an operator's request (:meth:`Science.request_template`, ``POST /v1/templates``) journals
one ``template`` job per detector that has at least ``min_visits`` calexps of the field (their
``OBJECT``) and band passing the quality cut: the best-seeing ``max_visits`` are stacked
(:func:`processors.diffim.template.build_template`) into a ``template`` product naming its inputs.
Once a template exists, every calexp made after it (of that field, band and detector, not one of its
inputs) is also differenced against the newest such template: a ``diff_template`` job journaled under
``<OBSID>/<template id>`` (made once, like a pair), whose alerts carry the template's id as
``referenceObsid``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Mapping
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
from daemon.processing.calibrations import OpenSequences
from daemon.processing.executor import Executor, WorkerLost
from daemon.processing.products import Rebuilt
from daemon.processing.sequences import code_version, master_ref
from daemon.report import Reporter
from processors.calib import CalibError
from processors.pairing import MAX_INDEX, VisitState, pairs_to_make
from protocol import topics
from protocol.alerts import AlertNotice, ScienceProductNotice

log = structlog.get_logger()

STEPS = ("calexp", "diff", "template", "diff_template")
"""Job steps this module plans and runs."""
_Masters = dict[tuple[str, str, str, str | None], journal_products.ProductRow | None]
"""A planning pass's newest masters, by (kind, instrument, detector, filter of a flat)."""
MAX_ATTEMPTS = 3
DIFF_BACKGROUND_MESH_PX = 64
"""The difference settings the archive uses (DiffParams' defaults otherwise)."""


def _diff_params() -> Any:
    """The DiffParams of every difference (the science libraries load with the first science job)."""
    from processors.diffim import DiffParams

    return DiffParams(background_mesh_px=DIFF_BACKGROUND_MESH_PX)


"""Settings of every difference (part of the diff job's key)."""

T = TypeVar("T")

TEMPLATE_WAIT_S = 600.0
"""How long a template request waits for its jobs before answering that they still run."""


class TemplateRefused(ValueError):
    """A template cannot be built: no detector has enough usable visits of the field and band."""


def _template_params(min_visits: int) -> Any:
    from processors.diffim.template import TemplateParams

    return TemplateParams(min_inputs=min_visits)


def _band(filter_: object) -> str:
    return str(filter_ or "").split("_")[0]


def _key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _mjd_tai_now() -> float:
    return time.time() / 86400.0 + 40587.0 + 37.0 / 86400.0


GroupKey = tuple[str, str, str]
"""A quad on one detector: (instrument, detector, GROUPID)."""


@dataclasses.dataclass
class _Open:
    """What science planning keeps between passes: the marks of what it has read, the quads not finished (their
    frames by name) and those frames' newest calexps (by detector and OBSID), and the templates it has seen."""

    epoch: int | None = None
    catalog_mark: int = 0
    products_mark: int = 0
    groups: dict[GroupKey, dict[str, journal_science.ScienceFrame]] = dataclasses.field(default_factory=dict)
    calexps: dict[tuple[str, str], journal_products.ProductRow] = dataclasses.field(default_factory=dict)
    templates: tuple[str, ...] = ()
    resume_saved: tuple[int, int, tuple[str, ...]] | None = None
    resume_saved_at: float | None = None


RESUME_SAVE_S = 60.0
"""How often at most science planning journals its resume point (:func:`daemon.journal.science.save_resume`)."""


def _calexp_key(product: journal_products.ProductRow) -> tuple[str, str]:
    return (product.detector, str(product.provenance["obsid"]))


def _pairs_made(diff_jobs: Mapping[tuple[str, str], str]) -> dict[tuple[str, str], set[tuple[int, int]]]:
    """(science, reference) CURINDEX of the diff jobs journaled, by detector and GROUPID (a job's sequence is
    ``GROUPID/science-reference``). Each group used to scan every diff job: a pass over a day of quads took
    seconds of the event loop, and grew with the square of the catalog."""
    out: dict[tuple[str, str], set[tuple[int, int]]] = {}
    for detector, sequence in diff_jobs:
        groupid, _, pair = sequence.rpartition("/")
        science, _, reference = pair.partition("-")
        out.setdefault((detector, groupid), set()).add((int(science), int(reference)))
    return out


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ref(product: journal_products.ProductRow) -> dict[str, Any]:
    """A calexp as a difference's input."""
    return {
        "product_id": product.product_id,
        "name": product.provenance["obsid"],
        "curindex": product.provenance["curindex"],
        "archive_path": product.archive_path,
        "checksum": product.checksum,
    }


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
        calibrations: OpenSequences | None = None,
    ) -> None:
        self.root = root
        self.journal = journal
        self.calibrations = calibrations or OpenSequences(journal)
        """The calibration sequences without a job yet: masters still to come (the scheduler's, when it runs)."""
        self.executor = executor
        self.reporter = reporter
        self.processing = processing
        self.notices_wake = notices_wake
        self.alerts_published = asyncio.Event()
        """Set after each diff's alerts are journaled."""
        self.wake: asyncio.Event | None = None
        """The scheduler's wake-up (set when a template job is journaled outside the planning loop)."""
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._open = _Open()

    # ---- planning ----------------------------------------------------------------------------

    async def plan(self) -> float | None:
        """Journal calexp jobs for new frames and diff jobs for new pairs; return the next chunk end.

        A pass reads what changed since the last one: the science frames catalogued and the calexps made
        since (rowid marks), and the jobs of the quads it keeps, by index. It keeps only the quads not yet
        finished (:class:`_Open`); a quad whose chunk has ended, with every pair it can make journaled, is
        let go, and read back by its GROUPID if a late frame of it arrives. The first pass after start-up
        reads the whole catalog, as every pass used to (a day of 20,000 frames: about a second of the
        journal and the event loop per pass, for nothing new).
        """
        open_ = self._open
        if open_.epoch is None:  # (the first pass: from where the last run left off, if it saved that)
            changes = await self.journal.read(journal_science.resume)
        else:
            changes = await self.journal.read(
                journal_science.changes, open_.epoch, open_.catalog_mark, open_.products_mark
            )
        if changes.full or changes.resumed:
            open_ = self._open = _Open(epoch=changes.epoch, templates=changes.templates)
        new: dict[GroupKey, list[journal_science.ScienceFrame]] = {}
        for frame in changes.frames:
            new.setdefault((frame.instrument, frame.detector, frame.groupid), []).append(frame)
        # A new quad, or one let go that a late frame reopens: its earlier frames and their calexps.
        reopened = [key for key in new if key not in open_.groups and not changes.full]
        earlier = await self.journal.read(journal_science.earlier_frames, reopened, changes.since) if reopened else {}
        for key, frames in new.items():
            old_frames, products = earlier.get(key, ([], []))
            # Oldest first, as the catalog has them: a repeated CURINDEX keeps its first frame.
            members = open_.groups.setdefault(key, {f.name: f for f in old_frames})
            for frame in frames:
                members.setdefault(frame.name, frame)
            for product in products:
                open_.calexps[_calexp_key(product)] = product
        for product in changes.calexps:  # (after the earlier ones: the newest calexp of a visit counts)
            open_.calexps[_calexp_key(product)] = product
        open_.catalog_mark, open_.products_mark = changes.catalog_mark, changes.products_mark

        frames = [f for members in open_.groups.values() for f in members.values()]
        calexp_jobs = await self.journal.read(
            journal_science.job_states, "calexp", [(f.instrument, f.detector, f.obsid) for f in frames]
        )
        to_come: set[tuple[str, str, str, str | None]] | None = None
        masters: _Masters = {}  # (one read per detector and kind in a pass, not one per frame)
        for frame in frames:
            if (frame.detector, frame.obsid) not in calexp_jobs:
                if to_come is None:
                    to_come = await self._masters_to_come()
                await self._queue_calexp(frame, to_come, masters)
        deadline = await self._plan_pairs(open_, calexp_jobs)
        await self._plan_template_diffs(changes)
        await self._save_resume(open_)
        return deadline

    async def _save_resume(self, open_: _Open) -> None:
        """Journal where a planner started later may begin reading: the oldest frame of a quad kept, or what
        comes next. At most every :data:`RESUME_SAVE_S` (an older point is as good, only slower to resume)."""
        low = min((f.rowid for members in open_.groups.values() for f in members.values()), default=None)
        point = (open_.catalog_mark + 1 if low is None else low, open_.products_mark, open_.templates)
        now = time.monotonic()
        recent = open_.resume_saved_at is not None and now < open_.resume_saved_at + RESUME_SAVE_S
        if point == open_.resume_saved or recent or open_.epoch is None:
            return
        await self.journal.write(
            journal_science.save_resume,
            epoch=open_.epoch,
            catalog_low=point[0],
            products_mark=point[1],
            templates=point[2],
        )
        open_.resume_saved, open_.resume_saved_at = point, now

    async def _masters_to_come(self) -> set[tuple[str, str, str, str | None]]:
        """(kind, instrument, detector, filter for flats) of every master still to be built.

        A master is to come while its calibration sequence is archived but not yet a job (not complete
        nor quiet yet), or its job is queued or running; a refused sequence is not waited for.
        """
        to_come: set[tuple[str, str, str, str | None]] = {
            (s.kind, s.instrument, s.detector, s.filter) for s in await self.calibrations.unclaimed()
        }
        for job in await self.journal.read(journal_jobs.unfinished):
            if job.step.startswith("master_"):
                kind = job.step.removeprefix("master_")
                to_come.add((kind, job.instrument, job.detector, job.spec.get("filter") if kind == "flat" else None))
        return to_come

    async def _newest_master(
        self, masters: _Masters, kind: str, instrument: str, detector: str, filter_: str | None = None
    ) -> journal_products.ProductRow | None:
        """The newest master as this planning pass first read it. Each frame used to ask the journal, and
        before the day's calibrations every frame of a backlog waits for its detector's master bias."""
        key = (kind, instrument, detector, filter_)
        if key not in masters:
            masters[key] = await self.journal.read(journal_science.newest_master, kind, instrument, detector, filter_)
        return masters[key]

    async def _queue_calexp(
        self,
        frame: journal_science.ScienceFrame,
        to_come: set[tuple[str, str, str, str | None]],
        masters: _Masters,
    ) -> None:
        bias = await self._newest_master(masters, "bias", frame.instrument, frame.detector)
        if bias is None:
            return  # woken again when the detector's master bias is built
        dark = await self._newest_master(masters, "dark", frame.instrument, frame.detector)
        flat = await self._newest_master(masters, "flat", frame.instrument, frame.detector, frame.filter)
        notes: list[str] = []
        for kind, master, filter_ in (("dark", dark, None), ("flat", flat, frame.filter)):
            if master is not None:
                continue
            if (kind, frame.instrument, frame.detector, filter_) in to_come:
                # The scheduler wakes when that master is built (or its sequence refused): no timer here.
                log.debug("calexp_waits_for_master", obsid=frame.obsid, detector=frame.detector, master=kind)
                return
            notes.append(
                f"no master {kind} of {frame.detector}"
                + (f" in filter {filter_}" if kind == "flat" else "")
                + f" when {frame.obsid} arrived: ISR without {kind} correction"
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
            "notes": notes,
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

    async def _plan_pairs(self, open_: _Open, calexp_jobs: Mapping[tuple[str, str], str]) -> float | None:
        """Journal the pairs each kept quad can make now; let go of the quads that are finished; return the
        next chunk end. (A calexp job queued in this pass is not in ``calexp_jobs``: like a queued one, it is
        a calexp still to come.)"""
        calexps = open_.calexps
        made = _pairs_made(await self.journal.read(journal_science.diffs_of, list(open_.groups)))
        now = time.time()
        deadline: float | None = None
        finished: list[GroupKey] = []
        for key, by_name in open_.groups.items():
            instrument, detector, groupid = key
            members = list(by_name.values())
            if any(f.maxindex != MAX_INDEX or not 1 <= f.curindex <= MAX_INDEX for f in members):
                # Never a quad to pair (read back, and refused again, if a frame comes); let go once each frame
                # has its calexp job (one waiting for its masters is looked at again next pass).
                if all((detector, f.obsid) in calexp_jobs for f in members):
                    finished.append(key)
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
            done = made.get((detector, groupid), set())
            for pair in pairs_to_make(visits, chunk_ended=chunk_ended, done=done):
                await self._queue_diff(
                    instrument, detector, groupid, pair.reason, products[pair.science], products[pair.reference]
                )
            if chunk_ended:
                finished.append(key)  # every pair it will ever make is journaled now
        for key in finished:
            del open_.groups[key]
        kept = {(f.detector, f.obsid) for members in open_.groups.values() for f in members.values()}
        open_.calexps = {k: v for k, v in calexps.items() if k in kept}
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
        sci, rf = _ref(science), _ref(reference)
        sequence = f"{groupid}/{sci['curindex']}-{rf['curindex']}"
        await self._journal_diff("diff", instrument, detector, groupid, reason, sci, rf, sequence)

    async def _journal_diff(
        self,
        step: str,
        instrument: str,
        detector: str,
        groupid: str,
        reason: str,
        sci: dict[str, Any],
        rf: dict[str, Any],
        sequence: str,
    ) -> None:
        spec: dict[str, Any] = {
            "step": step,
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
                "step": step,
                "inputs": [sci["checksum"], rf["checksum"]],
                "params": spec["params"],
                "code_version": spec["code_version"],
            }
        )
        queued = await self.journal.write(
            journal_jobs.insert,
            job_key=key,
            step=step,
            instrument=instrument,
            detector=detector,
            sequence=sequence,
            spec=spec,
        )
        if queued:
            log.info("job_queued", job_key=key, step=step, pair=sequence, reason=reason)

    # ---- templates ---------------------------------------------------------------------------

    async def _plan_template_diffs(self, changes: journal_science.Changes) -> None:
        """Journal a template difference for each calexp made after the newest template of its field and band.

        The calexps made since the last pass are looked at; all of them when the templates have changed
        since (or on the first pass)."""
        templates = await self.journal.read(journal_science.templates)
        seen, self._open.templates = self._open.templates, tuple(t.product_id for t in templates)
        if not templates:
            return
        if changes.full or seen != self._open.templates:
            calexps = await self.journal.read(journal_science.calexps)
        else:
            calexps = {_calexp_key(p): p for p in changes.calexps}
        newest: dict[tuple[str, str, str | None, object], tuple[journal_products.ProductRow, frozenset[str]]] = {}
        for t in templates:  # newest first: the first of each field and band is kept, with its input names
            key = (t.instrument, t.detector, t.filter, t.provenance["field"])
            if key not in newest:
                newest[key] = (t, frozenset(i["name"] for i in t.provenance["inputs"]))
        wanted: list[tuple[journal_products.ProductRow, journal_products.ProductRow, str]] = []
        for (_, obsid), calexp in calexps.items():
            prov = calexp.provenance
            if not prov["quality"]["ok"] or not prov.get("field"):
                continue
            found = newest.get((calexp.instrument, calexp.detector, _band(prov.get("filter")), prov["field"]))
            if found is None:
                continue
            template, inputs = found
            if calexp.created_at <= template.created_at or obsid in inputs:
                continue
            wanted.append((calexp, template, f"{obsid}/{template.product_id}"))
        made = await self.journal.read(
            journal_science.job_states, "diff_template", [(c.instrument, c.detector, q) for c, _, q in wanted]
        )
        for calexp, template, sequence in wanted:
            prov = calexp.provenance
            if (calexp.detector, sequence) in made:
                continue
            rf = {
                "product_id": template.product_id,
                "name": template.product_id,
                "curindex": 0,
                "archive_path": template.archive_path,
                "checksum": template.checksum,
            }
            await self._journal_diff(
                "diff_template",
                calexp.instrument,
                calexp.detector,
                str(prov["groupid"]),
                "template",
                _ref(calexp),
                rf,
                sequence,
            )

    async def request_template(
        self, field: str, band: str, *, min_visits: int, max_visits: int
    ) -> list[dict[str, Any]]:
        """Journal a template job per detector with enough usable visits of ``field`` in ``band``; wait for them.

        Returns:
            Per detector: ``instrument``, ``detector``, ``state`` (``built``, ``existing``, ``failed``,
            ``running`` when still running after :data:`TEMPLATE_WAIT_S`, ``refused``), ``reason``, and
            the template ``product`` (with its provenance) when built.

        Raises:
            TemplateRefused: no detector has ``min_visits`` usable calexps of the field and band.
        """
        calexps = await self.journal.read(journal_science.calexps)
        found: dict[tuple[str, str], list[journal_products.ProductRow]] = {}
        for calexp in calexps.values():
            prov = calexp.provenance
            if prov.get("field") == field and _band(prov.get("filter")) == band:
                found.setdefault((calexp.instrument, calexp.detector), []).append(calexp)
        if not found:
            raise TemplateRefused(f"no calexp of field {field!r} in band {band!r} at this archive")
        outcomes: list[dict[str, Any]] = []
        waiting: dict[str, tuple[dict[str, Any], asyncio.Future[None]]] = {}
        loop = asyncio.get_running_loop()
        for (instrument, detector), rows in sorted(found.items()):
            usable = [r for r in rows if r.provenance["quality"]["ok"] and r.provenance["quality"]["fwhm_arcsec"]]
            if len(usable) < min_visits:
                outcomes.append(
                    {
                        "instrument": instrument,
                        "detector": detector,
                        "state": "refused",
                        "reason": f"{len(usable)} usable visit(s) of {len(rows)} (the others fail the quality cut); "
                        f"a template needs at least {min_visits}",
                    }
                )
                continue
            usable.sort(key=lambda r: (float(r.provenance["quality"]["fwhm_arcsec"]), r.provenance["obsid"]))
            chosen = usable[:max_visits]
            spec: dict[str, Any] = {
                "step": "template",
                "kind": "template",
                "instrument": instrument,
                "detector": detector,
                "field": field,
                "band": band,
                "filter": band,
                "inputs": [
                    {
                        "product_id": r.product_id,
                        "name": r.provenance["obsid"],
                        "archive_path": r.archive_path,
                        "checksum": r.checksum,
                        "fwhm_arcsec": r.provenance["quality"]["fwhm_arcsec"],
                    }
                    for r in chosen
                ],
                "candidates": len(rows),
                "params": repr(_template_params(min_visits)),
                "min_visits": min_visits,
                "code_version": code_version(),
            }
            key = _key(
                {
                    "step": "template",
                    "inputs": [i["checksum"] for i in spec["inputs"]],
                    "params": spec["params"],
                    "code_version": spec["code_version"],
                }
            )
            entry: dict[str, Any] = {"instrument": instrument, "detector": detector, "job_key": key}
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(key, []).append(future)
            queued = await self.journal.write(
                journal_jobs.insert,
                job_key=key,
                step="template",
                instrument=instrument,
                detector=detector,
                sequence=f"{field}/{band}/{key[:16]}",
                spec=spec,
            )
            if queued:
                log.info("job_queued", job_key=key, step="template", field=field, band=band, inputs=len(chosen))
            else:
                existing = await self.journal.read(journal_jobs.by_key, key)
                if existing is not None and existing.state in ("done", "failed"):
                    self._waiters[key].remove(future)
                    entry["existing"] = True
                    outcomes.append(entry)
                    continue
            waiting[key] = (entry, future)
            outcomes.append(entry)
        if not any("job_key" in o for o in outcomes):
            raise TemplateRefused(
                f"field {field!r} band {band!r}: " + "; ".join(f"{o['detector']}: {o['reason']}" for o in outcomes)
            )
        if self.wake is not None:
            self.wake.set()
        if waiting:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TEMPLATE_WAIT_S):
                    await asyncio.gather(*(f for _, f in waiting.values()))
        for entry in outcomes:
            if "job_key" not in entry:
                continue
            job = await self.journal.read(journal_jobs.by_key, entry["job_key"])
            assert job is not None
            if job.state == "done" and job.product_id:
                product = await self.journal.read(journal_products.by_id, job.product_id)
                entry["state"] = "existing" if entry.pop("existing", False) else "built"
                entry["product"] = product.to_dict() if product is not None else None
            elif job.state == "failed":
                entry.pop("existing", None)
                entry["state"] = "failed"
                entry["reason"] = job.error
            else:
                entry["state"] = "running"
        return outcomes

    # ---- running -----------------------------------------------------------------------------

    async def run_job(self, job: journal_jobs.JobRow) -> None:
        """Run one science job to done or failed (a lost worker is retried up to :data:`MAX_ATTEMPTS`)."""
        try:
            await self._run_job(job)
        finally:
            for future in self._waiters.pop(job.job_key, []):
                if not future.done():
                    future.set_result(None)

    async def _run_job(self, job: journal_jobs.JobRow) -> None:
        from processors.diffim import DiffimError
        from processors.diffim.template import TemplateError

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
                elif job.step == "template":
                    await self._template(job, attempt)
                else:
                    await self._diff(job, attempt)
            except (CalibError, DiffimError, TemplateError) as exc:
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
        provenance = {
            **spec,
            "job_key": job.job_key,
            "quality": quality,
            "field": outcome.field,
            "gains_e_per_adu": outcome.gains_e_per_adu,
            "units": "electron" if outcome.gains_e_per_adu else "adu",
            "executor": self.executor.name,
        }
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

    async def _template(self, job: journal_jobs.JobRow, attempt: int) -> None:
        from daemon.processing.science_tasks import TemplateTask, make_template
        from processors.diffim.template import TemplateResult

        spec = job.spec
        pid = f"template-{job.detector}-{job.job_key[:16]}"
        relative = f"products/template/{job.instrument}/{job.detector}/{pid}.fits"
        incoming = await asyncio.to_thread(self._incoming)
        temporary = incoming / f"{pid}.{attempt}.fits.part"
        # A worker killed mid-stack leaves its memory-mapped planes: an earlier attempt's are removed first.
        for stale in await asyncio.to_thread(lambda: list(incoming.glob(f"{pid}.*.scratch"))):
            await asyncio.to_thread(shutil.rmtree, stale, True)
        task = TemplateTask(
            calexp_paths=tuple(str(self.root / i["archive_path"]) for i in spec["inputs"]),
            output_path=str(temporary),
            template_id=pid,
            params=_template_params(int(spec["min_visits"])),
            provenance={"PRODID": pid, "JOBKEY": job.job_key[:32], "FIELD": spec["field"], "BAND": spec["band"]},
            scratch_dir=str(incoming / f"{pid}.{attempt}.scratch"),
        )
        outcome: TemplateResult = await self._execute(make_template, task, [temporary])
        checksum = await self._place(temporary, relative)
        seeing = {
            "fwhm_arcsec": outcome.fwhm_arcsec,
            "inputs_fwhm_arcsec": list(outcome.inputs_fwhm_arcsec),
        }
        stats = {
            "n_inputs": outcome.n_inputs,
            "fwhm_arcsec": outcome.fwhm_arcsec,
            "weights": [round(w, 6) for w in outcome.weights],
            "rejected_fraction": [round(r, 6) for r in outcome.rejected_fraction],
        }
        provenance = {
            **spec,
            "job_key": job.job_key,
            "obsid": pid,
            "seeing": seeing,
            "midpoint_mjd_tai": outcome.midpoint_mjd_tai,
            "stats": stats,
            "executor": self.executor.name,
        }
        notice = ScienceProductNotice(
            notice_id=f"pn-{pid}",
            product_id=pid,
            kind="template",
            instrument=job.instrument,
            detector=job.detector,
            archive_path=relative,
            checksum=checksum,
            visits=tuple(i["name"] for i in spec["inputs"]),
            inputs=tuple(
                {"product_id": i["product_id"], "name": i["name"], "checksum": i["checksum"]} for i in spec["inputs"]
            ),
            stats=stats,
            created_at=time.time(),
        )

        def record(db: sqlite3.Connection) -> None:
            self._catalogue(db, job, pid, "template", relative, checksum, provenance, notice)
            journal_jobs.mark_done(db, job.job_key, pid)

        await self.journal.transaction(record)
        log.info("product_built", product_id=pid, kind="template", field=spec["field"], **stats)

    async def reprocess_template(self, product: journal_products.ProductRow) -> Rebuilt:
        """Rebuild a template from its provenance into a temporary file; compare checksums; discard it.

        Raises:
            TemplateError: an input is gone or no longer fits.
            WorkerLost: its worker died.
        """
        from daemon.processing.science_tasks import TemplateTask, make_template

        spec = product.provenance
        pid = product.product_id
        incoming = await asyncio.to_thread(self._incoming)
        tag = os.urandom(4).hex()
        temporary = incoming / f"{pid}.reprocess-{tag}.fits.part"
        task = TemplateTask(
            calexp_paths=tuple(str(self.root / i["archive_path"]) for i in spec["inputs"]),
            output_path=str(temporary),
            template_id=pid,
            params=_template_params(int(spec["min_visits"])),
            provenance={"PRODID": pid, "JOBKEY": product.job_key[:32], "FIELD": spec["field"], "BAND": spec["band"]},
            scratch_dir=str(incoming / f"{pid}.reprocess-{tag}.scratch"),
        )
        try:
            await self.executor.run(make_template, task)
            checksum, _ = await asyncio.to_thread(hash_file, temporary)
        finally:
            await asyncio.to_thread(temporary.unlink, missing_ok=True)
        return Rebuilt(product_id=pid, recorded_checksum=product.checksum, checksum=checksum)

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
            payload=notice,
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
                    payload=notice,
                    at=now,
                )
            journal_jobs.mark_done(db, job.job_key, pid)

        await self.journal.transaction(record)
        log.info("product_built", product_id=pid, kind="diff", visits=list(visits), alerts=len(alert_notices))
        self.alerts_published.set()
