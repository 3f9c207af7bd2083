"""Building a product from a journaled job: run the processor, place the file durably, catalogue and announce it.

The processor writes to a temporary name under ``archive_root/.incoming``; the file is fsynced and
renamed to ``products/<kind>/<instrument>/<detector>/<product_id>.fits``; then one journal
transaction catalogues it with its provenance, journals its notice and finishes its job. A crash
before that transaction leaves the job running in the journal, so it runs again and renames the same
bytes over the same path; after it, the job is done and is not run again.
"""

from __future__ import annotations

import asyncio
import math
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.fsutil import durable_rename, hash_file
from daemon.journal import jobs as journal_jobs
from daemon.journal import notices as journal_notices
from daemon.journal import products as journal_products
from daemon.journal.connection import Journal
from daemon.processing.executor import Executor
from daemon.processing.sequences import params_from, product_id, product_path
from processors.calib import MasterInput, MasterOutcome, MasterSpec, make_master
from protocol import topics
from protocol.products import ProductNotice


@dataclass(frozen=True, slots=True, kw_only=True)
class Built:
    """A product catalogued by :func:`build`."""

    product: journal_products.ProductRow
    outcome: MasterOutcome


@dataclass(frozen=True, slots=True, kw_only=True)
class Rebuilt:
    """What :func:`reprocess` found."""

    product_id: str
    recorded_checksum: str
    checksum: str

    @property
    def same(self) -> bool:
        """Whether the rebuild is byte-identical to the catalogued product."""
        return self.checksum == self.recorded_checksum

    def to_dict(self) -> dict[str, Any]:
        """As JSON."""
        return {
            "product_id": self.product_id,
            "recorded_checksum": self.recorded_checksum,
            "checksum": self.checksum,
            "same": self.same,
        }


def master_spec(spec: dict[str, Any], root: Path, output: Path, pid: str, key: str) -> MasterSpec:
    """The processor's input from a job's recorded spec (paths below the archive ``root``)."""
    provenance: dict[str, str | int | float | bool] = {
        "PRODID": pid,
        "JOBKEY": key[:32],
        "STEP": spec["step"],
        "CODEVER": spec["code_version"],
        "GROUPID": spec["groupid"],
        "DETECTOR": spec["detector"],
        "INSTRUME": spec["instrument"],
    }
    if spec.get("filter"):
        provenance["FILTER"] = spec["filter"]
    for kind in ("bias", "dark"):
        master = spec.get(kind)
        provenance[f"{kind.upper()}ID"] = master["product_id"] if master else "NONE"
    return MasterSpec(
        kind=spec["kind"],
        inputs=tuple(
            MasterInput(name=item["name"], path=str(root / item["archive_path"]), checksum=item["checksum"])
            for item in spec["inputs"]
        ),
        output_path=str(output),
        bias_path=str(root / spec["bias"]["archive_path"]) if spec.get("bias") else None,
        dark_path=str(root / spec["dark"]["archive_path"]) if spec.get("dark") else None,
        params=params_from(spec["params"]),
        provenance=provenance,
    )


def _number(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def stats_of(outcome: MasterOutcome) -> dict[str, Any]:
    """The notice's ``stats``: frames_used, and per amplifier (EXTNAME) mean, stdev, read noise, dark current."""
    amps: dict[str, dict[str, float | None]] = {}
    for amp in outcome.stats.amps:
        entry: dict[str, float | None] = {"mean": _number(amp.mean), "stdev": _number(amp.stdev)}
        if outcome.kind == "bias":
            entry["read_noise_adu"] = _number(amp.read_noise_adu)
        if outcome.kind == "dark":
            entry["dark_current_adu_per_s"] = _number(amp.dark_current_adu_per_s)
        amps[amp.name] = entry
    stats: dict[str, Any] = {
        "frames_used": outcome.stats.frames_used,
        "mean": _number(outcome.stats.mean),
        "stdev": _number(outcome.stats.stdev),
        "amps": amps,
    }
    if outcome.stats.flat_scatter is not None:
        stats["flat_scatter"] = _number(outcome.stats.flat_scatter)
    return stats


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _run(executor: Executor, spec: MasterSpec) -> tuple[MasterOutcome, str]:
    output = Path(spec.output_path)
    try:
        outcome = await executor.run(make_master, spec)
        await asyncio.to_thread(_fsync_file, output)
        checksum, _ = await asyncio.to_thread(hash_file, output)
    except BaseException:
        await asyncio.to_thread(output.unlink, missing_ok=True)
        raise
    return outcome, checksum


async def build(job: journal_jobs.JobRow, *, root: Path, journal: Journal, executor: Executor, attempt: int) -> Built:
    """Run a job's processor, place its product and commit row, notice and job state at once.

    Raises:
        CalibError: the processor refused (too few usable frames, unreadable input...).
        WorkerLost: its worker died.
    """
    spec = job.spec
    pid = product_id(spec, job.job_key)
    relative = product_path(spec, pid)
    incoming = root / ".incoming"
    await asyncio.to_thread(incoming.mkdir, parents=True, exist_ok=True)
    temporary = incoming / f"{pid}.{attempt}.fits.part"
    outcome, checksum = await _run(executor, master_spec(spec, root, temporary, pid, job.job_key))
    await asyncio.to_thread(durable_rename, temporary, root / relative)
    now = time.time()
    left_out = [{"name": name, "reason": reason} for name, reason in outcome.left_out]
    stats = stats_of(outcome)
    provenance = {
        **spec,
        "job_key": job.job_key,
        "left_out": left_out,
        "frames_used": list(outcome.frames_used),
        "warnings": list(outcome.warnings),
        "stats": stats,
        "executor": executor.name,
    }
    notice = ProductNotice(
        notice_id=f"pn-{pid}",
        product_id=pid,
        kind=spec["kind"],
        instrument=spec["instrument"],
        detector=spec["detector"],
        filter=spec.get("filter"),
        archive_path=relative,
        checksum=checksum,
        inputs=tuple({"name": item["name"], "checksum": item["checksum"]} for item in spec["inputs"]),
        left_out=tuple(left_out),
        stats=stats,
        created_at=now,
    )

    def record(db: sqlite3.Connection) -> journal_products.ProductRow:
        journal_products.insert(
            db,
            product_id=pid,
            job_key=job.job_key,
            kind=spec["kind"],
            instrument=spec["instrument"],
            detector=spec["detector"],
            filter_=spec.get("filter"),
            archive_path=relative,
            checksum=checksum,
            provenance=provenance,
            at=now,
        )
        journal_notices.insert(
            db,
            notice_id=notice.notice_id,
            file_key=f"product/{pid}",
            topic=topics.products(spec["instrument"]),
            payload=notice,
            at=now,
        )
        journal_jobs.mark_done(db, job.job_key, pid)
        row = journal_products.by_id(db, pid)
        assert row is not None
        return row

    return Built(product=await journal.transaction(record), outcome=outcome)


async def reprocess(product: journal_products.ProductRow, *, root: Path, executor: Executor) -> Rebuilt:
    """Rebuild a product from its recorded provenance into a temporary file; compare checksums; discard it.

    Raises:
        CalibError: the processor refused (an input or master is gone or changed).
        WorkerLost: its worker died.
    """
    incoming = root / ".incoming"
    await asyncio.to_thread(incoming.mkdir, parents=True, exist_ok=True)
    temporary = incoming / f"{product.product_id}.reprocess-{os.urandom(4).hex()}.fits.part"
    spec = master_spec(product.provenance, root, temporary, product.product_id, product.job_key)
    try:
        _, checksum = await _run(executor, spec)
    finally:
        await asyncio.to_thread(temporary.unlink, missing_ok=True)
    return Rebuilt(product_id=product.product_id, recorded_checksum=product.checksum, checksum=checksum)
