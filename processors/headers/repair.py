"""Repair a primary header: :func:`repair_header` fills and fixes what can be derived, and records why.

Fix rules (``Fix.source == "rule:<id>"``): ``obsid.from_imgname``, ``obsid.from_dayobs_seqnum``,
``instrument.from_obsid``, ``dayobs.from_obsid``, ``seqnum.from_obsid``, ``context.sibling_detectors``,
``time.timesys_rubin_tai``, ``time.mjd_from_date_obs``, ``time.date_obs_from_mjd``,
``detector.single_detector``, ``detector.from_filename``, ``detector.from_chipid``. Fixes read from a
correction file have ``Fix.source == "file:<path>"``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from astropy.io import fits
from astropy.io.fits.card import Undefined
from astropy.time import Time

from processors.detectors import expected_detectors, instrument_for_camera_code
from processors.headers.cards import (
    _MJD_TOLERANCE_S,
    _TIME_SCALES,
    _canonical_or_none,
    _is_real,
    _jsonable,
    _mjd_astropy,
    _parse_isot,
    _sibling_context,
    _value,
)
from processors.headers.model import Correction, Fix, HeaderReport
from processors.headers.obsid import _missing_obsid, parse_obsid
from processors.headers.text import HeaderText, as_astropy
from processors.headers.verify import verify_header

__all__ = ["repair_header"]

_FILENAME_DETECTOR_RE: Final = re.compile(r"_(R\d\d)_(S[A-Z0-9]{2})(?:_[A-Za-z0-9]+)?\.fits(?:\.fz)?$")
_CHIPID_RE: Final = re.compile(r"(R\d\d)_(S[A-Z0-9]{2})")
_FITS_KEYWORD_RE: Final = re.compile(r"[A-Z0-9_-]{1,8}")


class _Editor:
    """Reads a header and records changes as fixes, applying them to a copy made at the first change."""

    def __init__(self, header: fits.Header | HeaderText) -> None:
        self.source = header
        self.fixed: fits.Header | None = None
        self.fixes: list[Fix] = []

    @property
    def header(self) -> fits.Header | HeaderText:
        """The header as fixed so far: the input until the first change, then its (astropy) copy."""
        return self.source if self.fixed is None else self.fixed

    def get(self, key: str) -> object:
        return _value(self.header, key)

    def set(self, key: str, value: object, source: str) -> None:
        old = self.get(key)
        if old == value and type(old) is type(value):
            return
        if self.fixed is None:
            self.fixed = as_astropy(self.source).copy()
        if key in self.fixed or _FITS_KEYWORD_RE.fullmatch(key):
            self.fixed[key] = value
        else:
            self.fixed[f"HIERARCH {key}"] = value
        self.fixes.append(Fix(keyword=key, old=_jsonable(old), new=_jsonable(value), source=source))


def repair_header(
    header: fits.Header | HeaderText,
    *,
    correction: Correction | None = None,
    exposure_context: Mapping[str, object] | None = None,
) -> HeaderReport:
    """Return a fixed copy of a header, with a record of every fix and of what is still wrong.

    Order: the OBSID is derived when missing; the observation's correction (read by the caller from the
    file :func:`~processors.headers.obsid.correction_key` names), if any, overwrites cards; values agreed
    by the other detectors of the exposure (``exposure_context``) fill missing or null cards; then rules
    fill what is derivable: DAYOBS/SEQNUM from OBSID, INSTRUME from the OBSID's camera code, TIMESYS = TAI
    for Rubin cameras (the Rubin header service always writes TAI), MJD-OBS from DATE-OBS (DATE-OBS wins a
    disagreement), DATE-OBS from MJD-OBS when only the latter exists, and the detector from the instrument
    (LATISS has one), FILENAME or CHIPID. A HISTORY record of each fix is added to the copy. The input
    header is not modified; it is copied only when something is fixed, and a header with nothing to fix
    is the report's header itself.

    Args:
        header: The primary header as received (astropy's, or a :class:`HeaderText`; a fixed copy is
            always astropy's).
        correction: The cards of the observation's correction file, already read (see
            :mod:`daemon.corrections`); None when it has none.
        exposure_context: Keyword -> value agreed by the sibling detectors of the same exposure (e.g.
            IMGTYPE, FILTER, EXPTIME, DATE-OBS). Detector-specific keywords in it are ignored.

    Returns:
        The report; ``report.ok`` is True when no finding is left.
    """
    editor = _Editor(header)
    context = _sibling_context(exposure_context)

    def known(key: str) -> object:
        value = editor.get(key)
        return value if value is not None else _value(context, key)

    # 1. OBSID (it names the observation the correction belongs to).
    # A malformed OBSID is left alone (and reported): only a missing one is derived.
    if editor.get("OBSID") is None and (missing := _missing_obsid(editor.header, known)) is not None:
        editor.set("OBSID", *missing)

    # 2. The observation's correction file.
    if correction is not None:
        for key, value in correction.cards.items():
            editor.set(key, value, f"file:{correction.path}")
    obsid = editor.get("OBSID")
    parts = parse_obsid(obsid) if isinstance(obsid, str) else None

    # 3. Values agreed by the sibling detectors.
    for key, value in context.items():
        if value is not None and not isinstance(value, Undefined) and editor.get(key) is None:
            editor.set(key, value, "rule:context.sibling_detectors")

    # 4. Rules.
    if parts is not None:
        code, _, obs_day, obs_seq = parts
        if editor.get("DAYOBS") is None:
            editor.set("DAYOBS", obs_day, "rule:dayobs.from_obsid")
        if editor.get("SEQNUM") is None:
            editor.set("SEQNUM", obs_seq, "rule:seqnum.from_obsid")
        by_code = instrument_for_camera_code(code)
        if editor.get("INSTRUME") is None and by_code is not None:
            editor.set("INSTRUME", by_code, "rule:instrument.from_obsid")
    canonical = _canonical_or_none(editor.get("INSTRUME"))
    if editor.get("TIMESYS") is None and canonical is not None:
        editor.set("TIMESYS", "TAI", "rule:time.timesys_rubin_tai")
    _repair_times(editor)
    _repair_detector(editor, canonical)

    fixes = tuple(editor.fixes)
    if editor.fixed is not None:
        for fix in fixes:
            for text in fix.history_cards():
                editor.fixed.add_history(text)
    repaired = editor.header
    return HeaderReport(
        header=repaired,
        fixes=fixes,
        findings=tuple(verify_header(repaired)),
        correction_file=correction.path if correction is not None else None,
    )


def _repair_times(editor: _Editor) -> None:
    timesys = editor.get("TIMESYS")
    scale = _TIME_SCALES.get(timesys.strip().upper()) if isinstance(timesys, str) else None
    if scale is None:
        return
    date_obs, mjd_obs = editor.get("DATE-OBS"), editor.get("MJD-OBS")
    if isinstance(date_obs, str) and _parse_isot(date_obs) is not None:
        try:
            truth = _mjd_astropy(date_obs, scale)
        except ValueError:
            return
        if not _is_real(mjd_obs) or abs(truth - mjd_obs) * 86400.0 > _MJD_TOLERANCE_S:
            editor.set("MJD-OBS", truth, "rule:time.mjd_from_date_obs")
    elif date_obs is None and _is_real(mjd_obs):
        moment = Time(mjd_obs, format="mjd", scale=scale)
        editor.set("DATE-OBS", moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3], "rule:time.date_obs_from_mjd")


def _repair_detector(editor: _Editor, instrument: str | None) -> None:
    if editor.get("RAFTBAY") is not None and editor.get("CCDSLOT") is not None:
        return
    found: tuple[str, str, str] | None = None
    if instrument is not None and len(expected_detectors(instrument)) == 1:
        (only,) = expected_detectors(instrument)
        raft, slot = only.split("_")
        found = (raft, slot, "rule:detector.single_detector")
    else:
        filename, chipid = editor.get("FILENAME"), editor.get("CHIPID")
        if isinstance(filename, str) and (match := _FILENAME_DETECTOR_RE.search(filename)):
            found = (match.group(1), match.group(2), "rule:detector.from_filename")
        elif isinstance(chipid, str) and (match := _CHIPID_RE.fullmatch(chipid)):
            found = (match.group(1), match.group(2), "rule:detector.from_chipid")
    if found is None:
        return
    raft, slot, source = found
    # Fill only what is missing, and only when the other half (if present) agrees with the source.
    current_raft, current_slot = editor.get("RAFTBAY"), editor.get("CCDSLOT")
    if current_raft not in (None, raft) or current_slot not in (None, slot):
        return
    if current_raft is None:
        editor.set("RAFTBAY", raft, source)
    if current_slot is None:
        editor.set("CCDSLOT", slot, source)
