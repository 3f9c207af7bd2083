"""The archive's scheduler: woken by ingest commits, it turns calibration sequences into journaled jobs and runs them.

A sequence is ready when it is complete (CURINDEX 1..MAXINDEX archived) or has been quiet for
``quiet_s``; a dark waits for a master bias of its detector, a flat for a master bias and, when a
dark sequence of that detector is known, for its master dark (until the flat has been quiet for
``quiet_s``: then it is built without, and its provenance says so). Each job is journaled before it
runs; at start-up the journal's queued and running jobs run (again). At most ``workers`` jobs run at
once (:attr:`Scheduler.limiter`). Science frames are planned and run by :class:`~daemon.processing.science.Science`
in the same loop, under the same limit. The only timers are the next quiet deadline and the next chunk end:
no polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from pathlib import Path

import structlog

from daemon.aio import raise_if_cancelling
from daemon.config import Processing
from daemon.journal import jobs as journal_jobs
from daemon.journal import products as journal_products
from daemon.journal.connection import Journal
from daemon.processing import products
from daemon.processing.calibrations import OpenSequences
from daemon.processing.executor import Executor, WorkerLost
from daemon.processing.science import STEPS as SCIENCE_STEPS
from daemon.processing.science import Science
from daemon.processing.sequences import Sequence, job_key, job_spec, master_ref
from daemon.report import Reporter
from processors.calib import CalibError, CalibParams

log = structlog.get_logger()

MAX_ATTEMPTS = 3
"""A job whose worker died this many times is given up (reported as failed)."""
_SEGMENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")


PLAN_REST_FACTOR = 3.0
"""After a planning pass of d seconds the next starts no sooner than this times d later: every pass reads the
whole catalog, so during a backlog (one wake per archived file) planning takes at most a quarter of the loop,
however large the catalog; with a small catalog the rest is milliseconds."""


class Scheduler:
    """Plans jobs from the catalog and runs them on an :class:`Executor`."""

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
        self.params = CalibParams(min_frames=processing.min_frames)
        self.wake = asyncio.Event()
        self.wake.set()  # what the journal holds from before a restart goes first
        self.limiter = asyncio.Semaphore(processing.workers)
        """Jobs that run at once (a CapacityLimiter): ``[processing] workers``."""
        self._running: set[str] = set()
        self.product_built = asyncio.Event()
        """Set after each product is catalogued (tests and operators wait on it)."""
        self.calibrations = OpenSequences(journal)
        """The calibration sequences without a job yet (shared with the science planner)."""
        self.science = Science(
            calibrations=self.calibrations,
            root=root,
            journal=journal,
            executor=executor,
            reporter=reporter,
            processing=processing,
            notices_wake=notices_wake,
        )
        """Difference imaging on arrival: calexp, diff and template jobs."""
        self.science.wake = self.wake

    async def run(self) -> None:
        """Plan and run jobs until cancelled; the executor is closed on the way out."""
        try:
            async with asyncio.TaskGroup() as tg:
                while True:
                    raise_if_cancelling()
                    self.wake.clear()
                    began = time.monotonic()
                    deadline = await self._plan()
                    science_deadline = await self.science.plan()
                    if science_deadline is not None:
                        deadline = science_deadline if deadline is None else min(deadline, science_deadline)
                    for job in await self.journal.read(journal_jobs.unfinished):
                        if job.job_key not in self._running:
                            self._running.add(job.job_key)
                            tg.create_task(self._run_job(job), name=f"archive.job-{job.job_key[:12]}")
                    now = time.monotonic()
                    resume_at = now + (now - began) * PLAN_REST_FACTOR
                    timeout = None if deadline is None else max(0.0, deadline - time.time()) + 0.01
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timeout):
                            await self.wake.wait()
                    # (a timer, not a poll: wakes meanwhile are kept and taken by the next pass)
                    await asyncio.sleep(max(0.0, resume_at - time.monotonic()))
        finally:
            await self.executor.close()

    # ---- planning ----------------------------------------------------------------------------

    async def _plan(self) -> float | None:
        """Journal a job for every ready sequence; return when the next waiting one may become ready."""
        sequences = await self.calibrations.unclaimed()
        dark_known = self.calibrations.dark_known
        quiet_s = self.processing.quiet_s
        now = time.time()
        deadline: float | None = None
        order = {"bias": 0, "dark": 1, "flat": 2}
        for sequence in sorted(sequences, key=lambda s: order[s.kind]):
            if not (_SEGMENT.match(sequence.instrument) and _SEGMENT.match(sequence.detector)):
                continue
            quiet_at = sequence.last_arrival + quiet_s
            quiet = now >= quiet_at
            if not (sequence.complete or quiet):
                deadline = min(deadline or quiet_at, quiet_at)
                continue
            notes: list[str] = []
            bias = dark = None
            if sequence.kind in ("dark", "flat"):
                bias = await self._newest("bias", sequence)
                if bias is None:
                    continue  # woken again when the detector's master bias is built
            if sequence.kind == "flat":
                dark = await self._newest("dark", sequence)
                if dark is None and (sequence.instrument, sequence.detector) in dark_known:
                    if not quiet:
                        deadline = min(deadline or quiet_at, quiet_at)
                        continue
                    notes.append(
                        f"built without dark correction: no master dark of {sequence.detector} "
                        f"within quiet_s = {quiet_s:g} s of the flats' last frame"
                    )
            await self._queue(sequence, bias, dark, notes)
        return deadline

    async def _newest(self, kind: str, sequence: Sequence) -> journal_products.ProductRow | None:
        return await self.journal.read(journal_products.newest, kind, sequence.instrument, sequence.detector)

    async def _queue(
        self,
        sequence: Sequence,
        bias: journal_products.ProductRow | None,
        dark: journal_products.ProductRow | None,
        notes: list[str],
    ) -> None:
        spec = job_spec(sequence, params=self.params, bias=master_ref(bias), dark=master_ref(dark), notes=notes)
        key = job_key(spec)
        queued = await self.journal.write(
            journal_jobs.insert,
            job_key=key,
            step=sequence.step,
            instrument=sequence.instrument,
            detector=sequence.detector,
            sequence=sequence.name,
            spec=spec,
        )
        if not queued:
            return
        log.info(
            "job_queued",
            job_key=key,
            step=sequence.step,
            detector=sequence.detector,
            groupid=sequence.groupid,
            frames=len(sequence.frames),
            complete=sequence.complete,
        )
        if sequence.missing:
            await self.reporter.problem(
                "sequence_incomplete",
                f"{sequence.kind} sequence {sequence.groupid} of {sequence.detector}: CURINDEX "
                f"{', '.join(map(str, sequence.missing))} of {sequence.expected} missing after "
                f"{self.processing.quiet_s:g} s quiet; building from the {len(sequence.frames)} archived",
                groupid=sequence.groupid,
                detector=sequence.detector,
                missing=list(sequence.missing),
                expected=sequence.expected,
            )

    # ---- running -----------------------------------------------------------------------------

    async def _run_job(self, job: journal_jobs.JobRow) -> None:
        try:
            async with self.limiter:
                if job.step in SCIENCE_STEPS:
                    await self.science.run_job(job)
                else:
                    await self._attempt(job)
        finally:
            self._running.discard(job.job_key)
            self.wake.set()  # a finished master may unblock the detector's darks and flats

    async def _attempt(self, job: journal_jobs.JobRow) -> None:
        spec = job.spec
        while True:
            if job.attempts >= MAX_ATTEMPTS:
                reason = f"given up after {job.attempts} attempts whose worker died"
                await self.journal.write(journal_jobs.mark_failed, job.job_key, reason)
                await self.reporter.problem("job_failed", f"{job.step} of {spec['groupid']}: {reason}")
                return
            attempt = await self.journal.write(journal_jobs.mark_running, job.job_key)
            log.info(
                "job_started",
                job_key=job.job_key,
                step=job.step,
                detector=job.detector,
                attempt=attempt,
                executor=self.executor.name,
            )
            try:
                built = await products.build(
                    job, root=self.root, journal=self.journal, executor=self.executor, attempt=attempt
                )
            except CalibError as exc:
                await self.journal.write(journal_jobs.mark_failed, job.job_key, str(exc))
                await self.reporter.problem(
                    "master_refused", f"{job.step} of {spec['groupid']} ({job.detector}): {exc}"
                )
                return
            except WorkerLost as exc:
                log.warning("job_worker_lost", job_key=job.job_key, attempt=attempt, error=str(exc))
                refreshed = await self.journal.read(journal_jobs.by_key, job.job_key)
                assert refreshed is not None
                job = refreshed
                continue
            break
        self.notices_wake.set()
        product = built.product
        log.info(
            "product_built",
            product_id=product.product_id,
            kind=product.kind,
            detector=product.detector,
            archive_path=product.archive_path,
            frames_used=len(built.outcome.frames_used),
        )
        if built.outcome.left_out:
            names = [name for name, _ in built.outcome.left_out]
            await self.reporter.problem(
                "frames_left_out",
                f"{len(names)} frame(s) left out of {product.product_id}: "
                + "; ".join(f"{name} ({reason})" for name, reason in built.outcome.left_out),
                name=names[0],
                product_id=product.product_id,
                frames=names,
                reasons=[reason for _, reason in built.outcome.left_out],
            )
        for warning in built.outcome.warnings:
            await self.reporter.event("product_warning", warning, product_id=product.product_id)
        self.product_built.set()

    async def reprocess(self, product_id: str) -> products.Rebuilt:
        """Rebuild a catalogued product from its provenance and compare checksums.

        Raises:
            LookupError: no such product.
            CalibError: the processor refused (TemplateError for a template).
            WorkerLost: its worker died.
        """
        product = await self.journal.read(journal_products.by_id, product_id)
        if product is None:
            raise LookupError(f"no product {product_id!r}")
        async with self.limiter:
            if product.kind == "template":
                return await self.science.reprocess_template(product)
            return await products.reprocess(product, root=self.root, executor=self.executor)
