"""Where a received file goes in the archive: header verified and fixed, placed under ``raw/`` or ``quarantine/``.

Everything here is blocking file work, run in a thread by :mod:`daemon.archive.ingest`. A file is
never placed over another: the rename into the archive refuses an existing target.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
from astropy.io import fits

from daemon.corrections import correction_for
from daemon.fsutil import durable_rename_new, fsync_dir, hash_file
from processors.headers import CorrectionFileError, HeaderReport, HeaderText, header_summary, repair_header

log = structlog.get_logger()

_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Prepared:
    """Where and how a received file will be archived, decided off the event loop."""

    status: str  # "archived" | "quarantined"
    reason: str | None
    source: Path  # the file to rename into place
    archive_path: str  # relative to archive_root
    proof_path: str | None  # where the received bytes are kept when the header was fixed
    archived_checksum: str
    archived_size: int
    summary: dict[str, Any]
    fixes: list[dict[str, Any]]
    findings: list[dict[str, Any]]


def _segment(value: object) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text if _SEGMENT_RE.match(text) and text not in (".", "..") else None


def prepare(
    tmp: Path,
    *,
    name: str,
    received_checksum: str,
    correction_dirs: Sequence[Path],
    context: Mapping[str, object] | None,
    header: fits.Header | HeaderText | None,
    problem: str | None,
) -> Prepared:
    """Decide the fate of a received, verified file and build its archived form (blocking).

    ``header``/``problem`` are :func:`read_primary_header`'s answer for ``tmp``. Verifies and repairs
    the header; a file whose header cannot be trusted, or that is not FITS,
    goes to ``quarantine/<reason>/``. A repaired file is rewritten with the corrected header and
    HISTORY cards, and the received bytes are kept under ``proof/`` as the custody proof.
    """
    size = tmp.stat().st_size
    basename = name.rsplit("/", 1)[-1]

    def quarantine(
        reason: str, detail: str, summary: dict[str, Any] | None = None, findings: list[dict[str, Any]] | None = None
    ) -> Prepared:
        return Prepared(
            status="quarantined",
            reason=f"{reason}: {detail}"[:2000],
            source=tmp,
            archive_path=f"quarantine/{reason}/{name}",
            proof_path=None,
            archived_checksum=received_checksum,
            archived_size=size,
            summary=summary or {},
            fixes=[],
            findings=findings or [],
        )

    if header is None:
        reason, _, detail = (problem or "not_fits: unreadable").partition(": ")
        return quarantine(reason, detail)
    try:
        correction = correction_for(correction_dirs, header, exposure_context=context)
        report: HeaderReport = repair_header(header, correction=correction, exposure_context=context)
    except CorrectionFileError as exc:
        return quarantine("bad_correction_file", str(exc), header_summary(header))
    summary = header_summary(report.header)
    findings = [f.to_dict() for f in report.findings]
    if not report.ok:
        detail = "; ".join(f"{f.rule}: {f.message}" for f in report.findings)
        return quarantine("header_invalid", detail, summary, findings)
    instrument = _segment(summary.get("instrument"))
    dayobs = _segment(summary.get("dayobs"))
    obsid = _segment(summary.get("obsid"))
    if instrument is None or dayobs is None or obsid is None:
        return quarantine("header_invalid", "INSTRUME, DAYOBS or OBSID cannot name an archive path", summary)
    archive_path = f"raw/{instrument}/{dayobs}/{obsid}/{basename}"
    fixes = [f.to_dict() for f in report.fixes]
    if not report.fixes:
        return Prepared(
            status="archived",
            reason=None,
            source=tmp,
            archive_path=archive_path,
            proof_path=None,
            archived_checksum=received_checksum,
            archived_size=size,
            summary=summary,
            fixes=[],
            findings=[],
        )
    fixed = tmp.with_name(tmp.name + ".fixed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        with fits.open(tmp, memmap=False) as hdul:
            hdul[0].header = report.header
            hdul.writeto(fixed, overwrite=True, output_verify="silentfix")
    with open(fixed, "rb+") as handle:
        os.fsync(handle.fileno())
    archived_checksum, archived_size = hash_file(fixed)
    return Prepared(
        status="archived",
        reason=None,
        source=fixed,
        archive_path=archive_path,
        proof_path=f"proof/{instrument}/{dayobs}/{obsid}/{basename}",
        archived_checksum=archived_checksum,
        archived_size=archived_size,
        summary=summary,
        fixes=fixes,
        findings=[],
    )


def as_conflict(prepared: Prepared, tmp: Path, checksum: str, why: str) -> Prepared:
    """Send a file whose archive path is taken by other bytes to ``quarantine/name_conflict/``."""
    digest = checksum.split(":", 1)[1][:16]
    return dataclasses.replace(
        prepared,
        status="quarantined",
        reason=f"name_conflict: {why}",
        source=tmp,
        archive_path=f"quarantine/name_conflict/{digest}/{prepared.archive_path}",
        proof_path=None,
        archived_checksum=checksum,
        archived_size=tmp.stat().st_size,
        fixes=[],
    )


def place(prepared: Prepared, tmp: Path, archive_root: Path, checksum: str) -> Prepared:
    """Rename the prepared file into the archive durably, never over another file (blocking).

    Identical bytes already at the target are a retry after a crash between the rename and the
    catalog commit: the copy in hand is dropped. Other bytes at an archive path send the newcomer
    to ``quarantine/name_conflict/``; a quarantine path that is taken gets the checksum as prefix.
    """
    while True:
        dest = archive_root / prepared.archive_path
        source = prepared.source
        try:
            durable_rename_new(source, dest)
            break
        except FileExistsError:
            existing, _ = hash_file(dest)
            if existing == prepared.archived_checksum:
                source.unlink(missing_ok=True)
                break
            if prepared.status == "archived":
                if prepared.source != tmp:
                    prepared.source.unlink(missing_ok=True)
                prepared = as_conflict(prepared, tmp, checksum, f"{prepared.archive_path} holds other bytes")
                continue
            digest = checksum.split(":", 1)[1][:16]
            head, _, tail = prepared.archive_path.rpartition("/")
            if tail.startswith(digest):
                raise
            prepared = dataclasses.replace(prepared, archive_path=f"{head}/{digest}-{tail}")
    if prepared.proof_path is not None:
        _place_once(tmp, archive_root / prepared.proof_path, checksum)
    if prepared.source != tmp and tmp.exists():
        tmp.unlink()
    return prepared


def _place_once(src: Path, dest: Path, checksum: str) -> None:
    """Keep ``src`` at ``dest`` unless the same bytes are already there (the proof of a retried ingest)."""
    try:
        durable_rename_new(src, dest)
    except FileExistsError:
        if hash_file(dest)[0] != checksum:
            raise
        src.unlink()  # the same received bytes are already kept


def release_from_quarantine(archive_root: Path, quarantined: str, incoming: Path) -> Path:
    """Copy a quarantined file back to the incoming area for re-ingest (blocking)."""
    target = incoming / f"release-{uuid.uuid4().hex}.part"
    shutil.copyfile(archive_root / quarantined, target)
    with open(target, "rb+") as handle:
        os.fsync(handle.fileno())
    fsync_dir(incoming)
    return target
