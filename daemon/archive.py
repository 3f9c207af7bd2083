"""The archive: verify and fix headers, store under ``raw/`` or ``quarantine/``, catalog, notify.

Ingest is idempotent: a file (name + checksum) is catalogued once, whatever route or attempt
brings it. The catalog lives in the archive's journal so that the catalog row, the arrival notice
and the custody message are committed in one transaction.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sqlite3
import uuid
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import blake3
import structlog
from astropy.io import fits

from daemon.corrections import correction_for
from daemon.fsutil import durable_rename, fsync_dir
from processors.headers import CorrectionFileError, HeaderReport, header_summary, repair_header, verify_header
from protocol.checksum import format_checksum

log = structlog.get_logger()

_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")
CONTEXT_KEYS = (
    "IMGTYPE",
    "FILTER",
    "EXPTIME",
    "DARKTIME",
    "DATE-OBS",
    "MJD-OBS",
    "TIMESYS",
    "DAYOBS",
    "SEQNUM",
    "INSTRUME",
    "GROUPID",
    "OBSID",
)


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


def hash_file(path: Path) -> tuple[str, int]:
    """blake3 and size of a file (blocking)."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    hasher.update_mmap(path)
    return format_checksum(hasher.hexdigest()), path.stat().st_size


def _segment(value: object) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text if _SEGMENT_RE.match(text) and text not in (".", "..") else None


def _data_bytes(header: fits.Header) -> int:
    """Bytes of an HDU's data as its header describes them (FITS standard 4.4.1), unpadded."""
    naxis = int(header.get("NAXIS", 0))
    if naxis == 0:
        return 0
    count = 1
    for axis in range(1, naxis + 1):
        count *= int(header.get(f"NAXIS{axis}", 0))
    bits = abs(int(header.get("BITPIX", 8)))
    return bits // 8 * int(header.get("GCOUNT", 1)) * (int(header.get("PCOUNT", 0)) + count)


def read_primary_header(path: Path) -> tuple[fits.Header | None, str | None]:
    """The primary header, or (None, reason) for a non-FITS or truncated file (blocking).

    Walks every HDU's header and checks that the file holds all the data those headers describe,
    without reading the data itself.
    """
    primary: fits.Header | None = None
    with open(path, "rb") as handle, warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        size = os.fstat(handle.fileno()).st_size
        offset = 0
        while offset < size:
            handle.seek(offset)
            try:
                header = fits.Header.fromfile(handle, padding=True)
            except (OSError, ValueError, EOFError, UnicodeDecodeError) as exc:
                if primary is None:
                    handle.seek(0)
                    if handle.read(30).startswith(b"SIMPLE  =                    T"):
                        return None, f"truncated: primary header cut short at {size} bytes ({exc})"
                    return None, f"not_fits: {exc}"
                return None, f"truncated: extension header at byte {offset} unreadable ({exc})"
            if primary is None:
                if header.get("SIMPLE") is not True:
                    return None, "not_fits: the first card is not SIMPLE = T"
                primary = header
            data_end = handle.tell() + _data_bytes(header)
            if data_end > size:
                return None, f"truncated: {size} bytes on disk, headers describe at least {data_end}"
            offset = handle.tell() + -(-_data_bytes(header) // 2880) * 2880
    if primary is None:
        return None, "not_fits: empty file"
    return primary, None


def early_findings(path: Path) -> list[dict[str, Any]]:
    """Read-only header verification at the summit, before the file travels (blocking)."""
    header, problem = read_primary_header(path)
    if header is None:
        kind, _, detail = (problem or "not_fits: unreadable").partition(": ")
        return [{"rule": kind, "keyword": None, "message": detail}]
    return [f.to_dict() for f in verify_header(header)]


def prepare(
    tmp: Path,
    *,
    name: str,
    received_checksum: str,
    correction_dirs: Sequence[Path],
    context: Mapping[str, object] | None,
    header: fits.Header | None,
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


def exposure_context(db_path: Path, obsid: str | None) -> dict[str, object]:
    """Values every sibling detector of the exposure agrees on, read from the catalog (blocking)."""
    if not obsid:
        return {}
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30) as db:
        rows = db.execute("SELECT summary FROM catalog WHERE obsid = ? AND status = 'archived'", (obsid,)).fetchall()
    agreed: dict[str, object] = {}
    summaries = [json.loads(r[0]) for r in rows]
    mapping = {
        "IMGTYPE": "imgtype",
        "FILTER": "filter",
        "EXPTIME": "exptime",
        "DAYOBS": "dayobs",
        "SEQNUM": "seqnum",
        "INSTRUME": "instrument",
        "GROUPID": "groupid",
        "OBSID": "obsid",
    }
    for key, field in mapping.items():
        values = {json.dumps(s.get(field)) for s in summaries if s.get(field) is not None}
        if len(values) == 1:
            agreed[key] = json.loads(values.pop())
    return agreed


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
    """Rename the prepared file into the archive durably; resolve name clashes (blocking).

    A different file already at the target path is never overwritten: the newcomer goes to
    ``quarantine/name_conflict/``. (Identical bytes there are a retry after a crash between the
    rename and the catalog commit; the caller has checked the catalog for the path.)
    """
    dest = archive_root / prepared.archive_path
    if prepared.status == "archived" and dest.exists():
        existing, _ = hash_file(dest)
        if existing != prepared.archived_checksum:
            prepared = as_conflict(prepared, tmp, checksum, f"{prepared.archive_path} holds other bytes")
            dest = archive_root / prepared.archive_path
    if prepared.status == "quarantined" and dest.exists():
        digest = checksum.split(":", 1)[1][:16]
        head, _, tail = prepared.archive_path.rpartition("/")
        prepared = dataclasses.replace(prepared, archive_path=f"{head}/{digest}-{tail}")
        dest = archive_root / prepared.archive_path
    if prepared.proof_path is not None:
        durable_rename(tmp, archive_root / prepared.proof_path)
    durable_rename(prepared.source, dest)
    if prepared.source != tmp and tmp.exists():
        tmp.unlink()
    return prepared


def release_from_quarantine(archive_root: Path, quarantined: str, incoming: Path) -> Path:
    """Copy a quarantined file back to the incoming area for re-ingest (blocking)."""
    target = incoming / f"release-{uuid.uuid4().hex}.part"
    shutil.copyfile(archive_root / quarantined, target)
    with open(target, "rb+") as handle:
        os.fsync(handle.fileno())
    fsync_dir(incoming)
    return target


def catalog_row(
    db: sqlite3.Connection,
    *,
    file_key: str,
    name: str,
    size: int,
    checksum: str,
    prepared: Prepared,
    closed_at: float,
    arrived_at: float,
    route: str,
    sender: str,
) -> None:
    """Insert the catalog row of an ingested file (inside the ingest transaction)."""
    summary = prepared.summary
    detector = summary.get("detector")
    db.execute(
        "INSERT INTO catalog (file_key, name, size, checksum, archived_checksum, archived_size, archive_path,"
        " status, reason, instrument, detector, obsid, dayobs, seqnum, imgtype, summary, fixes, closed_at,"
        " arrived_at, route, sender) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            file_key,
            name,
            size,
            checksum,
            prepared.archived_checksum,
            prepared.archived_size,
            prepared.archive_path,
            prepared.status,
            prepared.reason,
            summary.get("instrument"),
            detector,
            summary.get("obsid"),
            summary.get("dayobs"),
            summary.get("seqnum") if isinstance(summary.get("seqnum"), int) else None,
            summary.get("imgtype"),
            json.dumps(summary, default=str),
            json.dumps(
                {"fixes": prepared.fixes, "proof_path": prepared.proof_path, "findings": prepared.findings}, default=str
            ),
            closed_at,
            arrived_at,
            route,
            sender,
        ),
    )
